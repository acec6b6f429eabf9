//! What travels through the queue: a [`SyncJob`] of event ids and host
//! user ids, never an email or a name.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What travels through the queue: ids only, never an email or a name.
///
/// One job carries the events of up to `dispatcher.users_per_job` host
/// users, all of one user's events in the same job; the job works on its
/// users at once, and on PostgreSQL their statements share round trips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireJob")]
pub struct SyncJob {
    pub events: Vec<JobEvent>,
}

/// One event of a [`SyncJob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub event_id: i64,
    /// `None` when the outbox row had no host user id; the job then only
    /// records the event as invalid.
    pub host_user_id: Option<String>,
}

/// A job as found in the queue: jobs pushed before jobs carried several
/// events held one event each, and are still understood.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireJob {
    Batch { events: Vec<JobEvent> },
    One(JobEvent),
}

impl From<WireJob> for SyncJob {
    fn from(wire: WireJob) -> Self {
        match wire {
            WireJob::Batch { events } => Self { events },
            WireJob::One(event) => Self {
                events: vec![event],
            },
        }
    }
}

impl SyncJob {
    /// Packs `events` into jobs of at most `users_per_job` host users each,
    /// every event of one user in the same job, in the order given.
    pub fn pack(events: Vec<JobEvent>, users_per_job: usize) -> Vec<Self> {
        let users_per_job = users_per_job.max(1);
        let mut jobs: Vec<Self> = Vec::new();
        let mut job_of: HashMap<String, usize> = HashMap::new();
        let mut users_in_last = 0;
        for event in events {
            if let Some(job) = event.host_user_id.as_ref().and_then(|h| job_of.get(h)) {
                jobs[*job].events.push(event);
                continue;
            }
            if jobs.is_empty() || users_in_last == users_per_job {
                jobs.push(Self { events: Vec::new() });
                users_in_last = 0;
            }
            let last = jobs.len() - 1;
            if let Some(host) = &event.host_user_id {
                job_of.insert(host.clone(), last);
            }
            users_in_last += 1;
            jobs[last].events.push(event);
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, host: Option<&str>) -> JobEvent {
        JobEvent {
            event_id: id,
            host_user_id: host.map(str::to_owned),
        }
    }

    fn hosts(job: &SyncJob) -> Vec<(i64, Option<&str>)> {
        job.events
            .iter()
            .map(|e| (e.event_id, e.host_user_id.as_deref()))
            .collect()
    }

    #[test]
    fn packs_users_per_job_with_every_event_of_a_user_in_its_job() {
        let events = vec![
            event(1, Some("a")),
            event(2, Some("b")),
            event(3, Some("a")),
            event(4, None),
            event(5, Some("c")),
            event(6, Some("b")),
            event(7, Some("d")),
        ];
        let jobs = SyncJob::pack(events, 2);
        let packed: Vec<_> = jobs.iter().map(hosts).collect();
        assert_eq!(
            packed,
            [
                vec![
                    (1, Some("a")),
                    (2, Some("b")),
                    (3, Some("a")),
                    (6, Some("b"))
                ],
                vec![(4, None), (5, Some("c"))],
                vec![(7, Some("d"))],
            ]
        );
        assert!(SyncJob::pack(Vec::new(), 32).is_empty());
    }

    #[test]
    fn reads_jobs_of_both_shapes_and_writes_ids_only() {
        let job = SyncJob {
            events: vec![event(7, Some("host-1")), event(8, None)],
        };
        let json = serde_json::to_string(&job).expect("serialise");
        assert_eq!(
            json,
            r#"{"events":[{"event_id":7,"host_user_id":"host-1"},{"event_id":8,"host_user_id":null}]}"#
        );
        assert_eq!(
            serde_json::from_str::<SyncJob>(&json).expect("a job of several events"),
            job
        );
        let old: SyncJob = serde_json::from_str(r#"{"event_id":3,"host_user_id":"h"}"#)
            .expect("a job of one event, as pushed before");
        assert_eq!(old.events, [event(3, Some("h"))]);
    }
}
