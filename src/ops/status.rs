//! `user-sync status` and `user-sync conflicts`: what an operator asks of the
//! worker's tables.

use crate::domain::{ConflictRow, Status};

/// `user-sync status` as a table of two columns.
pub fn status_table(status: &Status) -> String {
    let rows = [
        ("pending events", status.pending_events.to_string()),
        ("failed events", status.failed_events.to_string()),
        ("invalid events", status.invalid_events.to_string()),
        ("conflict events", status.conflict_events.to_string()),
        ("synced users", status.synced_users.to_string()),
        ("open conflicts", status.open_conflicts.to_string()),
        ("completed erasures", status.completed_erasures.to_string()),
        ("outbox lag", format!("{:.1}s", status.outbox_lag_seconds)),
    ];
    rows.iter()
        .map(|(k, v)| format!("{k:<20} {v:>12}\n"))
        .collect()
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
