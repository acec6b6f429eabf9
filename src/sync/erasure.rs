//! An erasure's next step and its outcome, as pure decisions: the job in
//! `job.rs` reads the steps already taken (`storage::ErasureSteps`), makes
//! the call decided here, and records what it learnt.
//!
//! The order: the workflow logs, then the user. The API's
//! `DELETE /users/{id}` "only deletes the user's account – not any
//! corresponding workflow logs", and once the user is gone its id may no
//! longer reach them, so the logs go first, while the id still names a
//! user. Each call's intent is recorded before it is sent, which is what
//! lets these decisions tell a `404` of the worker's own earlier delete
//! from a user someone else deleted.
//!
//! The logs are skipped when `gdpr.delete_workflow_logs` is off, or when
//! the API version has no workflow-logs call (2021-12): the erasure deletes
//! the user only, and its record says why the logs were not deleted.

use crate::domain::{ErasureOutcome, LogsSkipped};
use crate::retry::Stop;
use crate::storage::ErasureSteps;

/// The next call of an erasure whose user exists (or did, as far as the
/// worker knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureCall {
    /// `DELETE /users/{id}/logs`.
    DeleteLogs,
    /// `DELETE /users/{id}`: the last call; the erasure completes after it.
    DeleteUser,
}

/// Why an erasure does not delete the logs, from `gdpr.delete_workflow_logs`
/// and whether the API version offers the call; `None` when it does.
pub fn logs_skipped(delete_logs: bool, offered: bool) -> Option<LogsSkipped> {
    match (delete_logs, offered) {
        (false, _) => Some(LogsSkipped::Disabled),
        (true, false) => Some(LogsSkipped::NoLogsCall),
        (true, true) => None,
    }
}

/// What to call next, given the steps already taken and why the logs are
/// skipped, if they are ([`logs_skipped`]).
pub fn next_call(steps: ErasureSteps, skipped: Option<LogsSkipped>) -> ErasureCall {
    if skipped.is_none() && !steps.logs_deleted {
        ErasureCall::DeleteLogs
    } else {
        ErasureCall::DeleteUser
    }
}

/// What the erasure's record says of the logs: why they were skipped,
/// unless an earlier attempt deleted them after all (its time is then in
/// the record).
pub fn recorded_skip(steps: ErasureSteps, skipped: Option<LogsSkipped>) -> Option<LogsSkipped> {
    skipped.filter(|_| !steps.logs_deleted)
}

/// How an erasure ends when its user delete is answered: `deleted`
/// (`true`) for a `200`, and for a `404` when a delete had already been
/// sent before this one (its answer lost, or its worker gone before it was
/// recorded: the worker's own delete went through); `already_absent` for a
/// `404` to the first delete sent.
pub fn outcome_of_user_delete(answered_ok: bool, sent_before: bool) -> ErasureOutcome {
    if answered_ok || sent_before {
        ErasureOutcome::Deleted
    } else {
        ErasureOutcome::AlreadyAbsent
    }
}

/// Whether a call that stopped with `stop` certainly did nothing (the gate
/// held it back, or the API refused it: 429, 401, another 4xx), so that
/// its recorded intent is taken back. A call whose outcome is unknown (a
/// lost answer, a 5xx) keeps it.
pub fn did_nothing(stop: &Stop) -> bool {
    !matches!(stop, Stop::Api(error) if error.outcome_unknown())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{ApiError, UnavailableCause};
    use crate::ratelimit::GateRefusal;
    use std::time::Duration;

    fn steps(logs_deleted: bool, user_delete_sent: bool) -> ErasureSteps {
        ErasureSteps {
            logs_deleted,
            user_delete_sent,
        }
    }

    #[test]
    fn the_logs_go_first_unless_turned_off_not_offered_or_done() {
        for sent in [false, true] {
            let delete = logs_skipped(true, true);
            assert_eq!(delete, None);
            assert_eq!(
                next_call(steps(false, sent), delete),
                ErasureCall::DeleteLogs
            );
            assert_eq!(
                next_call(steps(true, sent), delete),
                ErasureCall::DeleteUser
            );
            for (setting, offered, why) in [
                (false, true, LogsSkipped::Disabled),
                (false, false, LogsSkipped::Disabled),
                (true, false, LogsSkipped::NoLogsCall),
            ] {
                let skipped = logs_skipped(setting, offered);
                assert_eq!(skipped, Some(why));
                assert_eq!(
                    next_call(steps(false, sent), skipped),
                    ErasureCall::DeleteUser
                );
                assert_eq!(
                    next_call(steps(true, sent), skipped),
                    ErasureCall::DeleteUser
                );
            }
        }
    }

    #[test]
    fn the_record_says_why_the_logs_stayed_unless_they_went_earlier() {
        let no_call = Some(LogsSkipped::NoLogsCall);
        assert_eq!(recorded_skip(steps(false, false), no_call), no_call);
        assert_eq!(recorded_skip(steps(true, false), no_call), None);
        assert_eq!(recorded_skip(steps(false, true), None), None);
    }

    #[test]
    fn a_404_after_the_workers_own_delete_is_deleted() {
        assert_eq!(outcome_of_user_delete(true, false), ErasureOutcome::Deleted);
        assert_eq!(outcome_of_user_delete(true, true), ErasureOutcome::Deleted);
        assert_eq!(outcome_of_user_delete(false, true), ErasureOutcome::Deleted);
        assert_eq!(
            outcome_of_user_delete(false, false),
            ErasureOutcome::AlreadyAbsent
        );
    }

    #[test]
    fn only_a_call_of_unknown_outcome_keeps_its_intent() {
        let nothing = [
            Stop::Gate(GateRefusal::Backoff(Duration::from_secs(1))),
            Stop::Api(ApiError::RateLimited { retry_after: None }),
            Stop::Api(ApiError::Unauthorized { status: 401 }),
            Stop::Api(ApiError::Rejected {
                status: 400,
                message: "no".into(),
            }),
        ];
        for stop in &nothing {
            assert!(did_nothing(stop), "{stop:?}");
        }
        for cause in [
            UnavailableCause::Timeout,
            UnavailableCause::ConnectionCut,
            UnavailableCause::ServerError(503),
        ] {
            let stop = Stop::Api(ApiError::Unavailable { cause });
            assert!(!did_nothing(&stop), "{stop:?}");
        }
    }
}
