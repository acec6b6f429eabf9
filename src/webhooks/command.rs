//! `user-sync webhooks`: the deliveries not delivered, as a table or as
//! JSON, or sent again now.

use std::io::Write;

use super::Deliverer;
use crate::config::{ConfigError, Settings};
use crate::storage::{Database, WaitingDelivery};

/// Lists the undelivered webhooks on `out`, or with `redeliver` sends them
/// again and says how many were delivered. Returns whether nothing is left
/// failed (always, for the list). `--redeliver` without `webhooks.url` is
/// a [`ConfigError`].
pub async fn run_command(
    settings: &Settings,
    format: ListFormat,
    redeliver: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    if redeliver && settings.webhooks.target().is_none() {
        return Err(ConfigError::Missing {
            key: "webhooks.url",
            hint: "the host's receiver (USER_SYNC__WEBHOOKS__URL) to redeliver to",
        }
        .into());
    }
    let database = Database::connect(&settings.database, 1).await?;
    database.check_current().await?;
    let deliveries = database.deliveries();
    let deliverer = match Deliverer::new(deliveries.clone(), &settings.webhooks)? {
        Some(deliverer) if redeliver => deliverer,
        _ => {
            let rows = deliveries.waiting_deliveries().await?;
            write!(out, "{}", render_waiting(&rows, format)?)?;
            return Ok(true);
        }
    };
    let done = deliverer.redeliver().await?;
    writeln!(
        out,
        "redelivered: {} delivered, {} failed",
        done.delivered, done.failed
    )?;
    Ok(done.failed == 0)
}

/// The output formats of `user-sync webhooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub fn render_waiting(rows: &[WaitingDelivery], format: ListFormat) -> anyhow::Result<String> {
    Ok(match format {
        ListFormat::Json => serde_json::to_string_pretty(rows)? + "\n",
        ListFormat::Table => {
            if rows.is_empty() {
                return Ok("no undelivered webhooks\n".into());
            }
            let mut out = format!(
                "{:<8} {:<36} {:<18} {:<10} {:>8} {:>6}  {}\n",
                "ID", "WEBHOOK ID", "TYPE", "STATE", "ATTEMPTS", "AGE", "LAST ERROR"
            );
            for r in rows {
                out.push_str(&format!(
                    "{:<8} {:<36} {:<18} {:<10} {:>8} {:>6}  {}\n",
                    r.id,
                    r.webhook_id,
                    r.kind,
                    r.state,
                    r.attempts,
                    age(r.age_seconds),
                    r.last_error.as_deref().unwrap_or("-")
                ));
            }
            out
        }
    })
}

/// An age in its largest whole unit: `42s`, `5m`, `3h`, `2d`.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &'static str, last_error: Option<&str>) -> WaitingDelivery {
        WaitingDelivery {
            id: 7,
            webhook_id: "msg_0123456789abcdef0123456789abcdef".into(),
            kind: "event.failed".into(),
            state,
            attempts: 3,
            created_at: chrono::DateTime::UNIX_EPOCH,
            age_seconds: 7300.0,
            last_error: last_error.map(str::to_owned),
        }
    }

    #[test]
    fn a_table_row_per_delivery_and_json_with_every_field() {
        let rows = [row("pending", Some("status 503")), row("abandoned", None)];
        let table = render_waiting(&rows, ListFormat::Table).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].contains("msg_0123456789abcdef0123456789abcdef"));
        assert!(lines[1].contains("pending") && lines[1].contains("status 503"));
        assert!(lines[1].contains(" 2h "), "{table}");
        assert!(lines[2].contains("abandoned") && lines[2].ends_with(" -"));

        let json: serde_json::Value =
            serde_json::from_str(&render_waiting(&rows, ListFormat::Json).unwrap()).unwrap();
        assert_eq!(json[0]["type"], "event.failed");
        assert_eq!(json[0]["state"], "pending");
        assert_eq!(json[0]["attempts"], 3);
        assert_eq!(json[0]["last_error"], "status 503");
        assert_eq!(json[1]["state"], "abandoned");
        assert!(json[1]["last_error"].is_null());
        assert_eq!(
            render_waiting(&[], ListFormat::Table).unwrap(),
            "no undelivered webhooks\n"
        );
    }

    #[test]
    fn ages_in_their_largest_unit() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(60.0), "1m");
        assert_eq!(age(7300.0), "2h");
        assert_eq!(age(3.0 * 86400.0), "3d");
    }
}
