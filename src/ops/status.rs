//! `user-sync status` and `user-sync conflicts`: what an operator asks of the
//! worker's tables.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A snapshot of the pipeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// Events not applied yet (waiting, in the queue, or snoozed).
    pub pending_events: i64,
    /// Events that ended in a permanent failure (see their reason).
    pub failed_events: i64,
    /// Events refused before any call (bad kind, id, email or name).
    pub invalid_events: i64,
    /// Events that ended in a conflict.
    pub conflict_events: i64,
    /// Host users with an Embedded user.
    pub synced_users: i64,
    pub open_conflicts: i64,
    pub completed_erasures: i64,
    /// Age of the oldest pending event, in seconds (0 when none is pending).
    pub outbox_lag_seconds: f64,
}

impl Status {
    pub async fn load(pool: &PgPool) -> sqlx::Result<Self> {
        let row: (i64, i64, i64, i64, f64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'failed'),
                    count(*) FILTER (WHERE state = 'invalid'),
                    count(*) FILTER (WHERE state = 'conflict'),
                    COALESCE(EXTRACT(EPOCH FROM now() - min(occurred_at) FILTER (WHERE state = 'pending')), 0)::float8
             FROM user_sync.events",
        )
        .fetch_one(pool)
        .await?;
        let (synced_users, open_conflicts, completed_erasures): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM user_sync.users WHERE state = 'synced'),
                    (SELECT count(*) FROM user_sync.conflicts WHERE status = 'open'),
                    (SELECT count(*) FROM user_sync.erasures)",
        )
        .fetch_one(pool)
        .await?;
        Ok(Self {
            pending_events: row.0,
            failed_events: row.1,
            invalid_events: row.2,
            conflict_events: row.3,
            synced_users,
            open_conflicts,
            completed_erasures,
            outbox_lag_seconds: row.4.max(0.0),
        })
    }

    pub fn table(&self) -> String {
        let rows = [
            ("pending events", self.pending_events.to_string()),
            ("failed events", self.failed_events.to_string()),
            ("invalid events", self.invalid_events.to_string()),
            ("conflict events", self.conflict_events.to_string()),
            ("synced users", self.synced_users.to_string()),
            ("open conflicts", self.open_conflicts.to_string()),
            ("completed erasures", self.completed_erasures.to_string()),
            ("outbox lag", format!("{:.1}s", self.outbox_lag_seconds)),
        ];
        rows.iter()
            .map(|(k, v)| format!("{k:<20} {v:>12}\n"))
            .collect()
    }
}

/// One open conflict, with what an operator needs to resolve it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct ConflictRow {
    pub id: i64,
    pub host_user_id: String,
    pub username: String,
    pub reason: String,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
    pub event_id: Option<i64>,
    pub detected_at: DateTime<Utc>,
}

pub async fn open_conflicts(pool: &PgPool) -> sqlx::Result<Vec<ConflictRow>> {
    sqlx::query_as(
        "SELECT id, host_user_id, username, reason, holder_host_user_id,
                holder_embedded_user_id, event_id, detected_at
         FROM user_sync.conflicts WHERE status = 'open' ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// The output formats of `user-sync conflicts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConflictFormat {
    Table,
    Json,
    Csv,
}

pub fn render_conflicts(rows: &[ConflictRow], format: ConflictFormat) -> anyhow::Result<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(match format {
        ConflictFormat::Json => serde_json::to_string_pretty(rows)? + "\n",
        ConflictFormat::Csv => {
            let mut out = String::from(
                "id,host_user_id,username,reason,holder_host_user_id,holder_embedded_user_id,event_id,detected_at\n",
            );
            for r in rows {
                let fields = [
                    r.id.to_string(),
                    r.host_user_id.clone(),
                    r.username.clone(),
                    r.reason.clone(),
                    opt(&r.holder_host_user_id),
                    opt(&r.holder_embedded_user_id),
                    r.event_id.map(|e| e.to_string()).unwrap_or_default(),
                    r.detected_at.to_rfc3339(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out
        }
        ConflictFormat::Table => {
            if rows.is_empty() {
                return Ok("no open conflicts\n".into());
            }
            let mut out = format!(
                "{:<8} {:<20} {:<32} {:<20} {}\n",
                "ID", "HOST USER", "USERNAME", "REASON", "HELD BY"
            );
            for r in rows {
                let holder = match (&r.holder_host_user_id, &r.holder_embedded_user_id) {
                    (Some(h), _) => format!("host user {h}"),
                    (None, Some(e)) => format!("Embedded user {e}"),
                    (None, None) => "-".into(),
                };
                out.push_str(&format!(
                    "{:<8} {:<20} {:<32} {:<20} {}\n",
                    r.id, r.host_user_id, r.username, r.reason, holder
                ));
            }
            out
        }
    })
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
