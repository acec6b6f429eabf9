//! `user-sync status` and `user-sync conflicts`: what an operator asks of the
//! worker's tables.

use chrono::{DateTime, Utc};

use crate::domain::{ConflictRow, EventRow, Pause, Status, UserRecord};
use crate::ops::{Done, FullNameFix};

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
        ("pending erasures", status.pending_erasures.to_string()),
        (
            "oldest pending erasure",
            format!("{:.0}s", status.oldest_pending_erasure_seconds),
        ),
        ("outbox lag", format!("{:.1}s", status.outbox_lag_seconds)),
        ("events removed", status.retention.events.to_string()),
        ("conflicts removed", status.retention.conflicts.to_string()),
        ("erasures removed", status.retention.erasures.to_string()),
        ("webhooks removed", status.retention.webhooks.to_string()),
        ("last removal", when(status.retention.last_removed_at)),
        ("last retention pass", when(status.retention.last_pass_at)),
        (
            "paused",
            status
                .paused
                .as_ref()
                .map_or_else(|| "no".into(), describe_pause),
        ),
    ];
    rows.iter()
        .map(|(k, v)| format!("{k:<20} {v:>12}\n"))
        .collect()
}

/// A time to the second, or `never`.
fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "never".into(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The output formats of the listings (`conflicts`, `events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
    Csv,
}

/// `user-sync events` in `format`: ids, states and reasons only (an
/// event's email and name are never shown).
pub fn render_events(rows: &[EventRow], format: ListFormat) -> anyhow::Result<String> {
    let at = |v: &Option<DateTime<Utc>>| v.map(|at| at.to_rfc3339()).unwrap_or_default();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(match format {
        ListFormat::Json => serde_json::to_string_pretty(rows)? + "\n",
        ListFormat::Csv => {
            let mut out = csv::Writer::from_writer(Vec::new());
            out.write_record([
                "id",
                "host_user_id",
                "kind",
                "state",
                "attempts",
                "reason",
                "occurred_at",
                "available_at",
                "dispatched_at",
                "finished_at",
            ])?;
            for r in rows {
                let fields = [
                    r.id.to_string(),
                    text(&r.host_user_id),
                    text(&r.kind),
                    r.state.clone(),
                    r.attempts.to_string(),
                    text(&r.reason),
                    r.occurred_at.to_rfc3339(),
                    r.available_at.to_rfc3339(),
                    at(&r.dispatched_at),
                    at(&r.finished_at),
                ];
                out.write_record(fields.iter().map(|f| spreadsheet_safe(f).into_owned()))?;
            }
            String::from_utf8(out.into_inner()?)?
        }
        ListFormat::Table => {
            if rows.is_empty() {
                return Ok("no events\n".into());
            }
            let mut out = format!(
                "{:<10} {:<20} {:<16} {:<11} {:<8} {:<25} {}\n",
                "ID", "HOST USER", "KIND", "STATE", "ATTEMPTS", "OCCURRED", "REASON"
            );
            for r in rows {
                out.push_str(&format!(
                    "{:<10} {:<20} {:<16} {:<11} {:<8} {:<25} {}\n",
                    r.id,
                    r.host_user_id.as_deref().unwrap_or("-"),
                    r.kind.as_deref().unwrap_or("-"),
                    r.state,
                    r.attempts,
                    r.occurred_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.reason.as_deref().unwrap_or("")
                ));
            }
            out
        }
    })
}

/// A username with most of it hidden, for screens that need not show it:
/// `a***@e***.com` (the domain's masking, as everywhere else).
pub use crate::domain::mask_email as mask_username;

/// `user-sync show` as text. The username is masked unless `reveal`.
pub fn render_user(record: &UserRecord, reveal: bool) -> String {
    let mut out = format!("host user {}\n", record.host_user_id);
    match &record.mapping {
        Some(m) => {
            let username = m.username.as_deref().map_or_else(
                || "-".to_owned(),
                |u| {
                    if reveal {
                        u.to_owned()
                    } else {
                        mask_username(u)
                    }
                },
            );
            out.push_str(&format!(
                "  state        {}\n  userId       {}\n  username     {}\n  updated      {}\n",
                m.state,
                m.embedded_user_id.as_deref().unwrap_or("-"),
                username,
                m.updated_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        None => out.push_str("  no row in user_sync.users: the worker has not acted on it\n"),
    }
    out.push_str("\nevents (newest first)\n");
    if record.events.is_empty() {
        out.push_str("  none\n");
    }
    for e in &record.events {
        out.push_str(&format!(
            "  {:<10} {:<16} {:<11} attempts {:<3} {}  {}\n",
            e.id,
            e.kind.as_deref().unwrap_or("-"),
            e.state,
            e.attempts,
            e.occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.reason.as_deref().unwrap_or("")
        ));
    }
    out.push_str("\nconflicts\n");
    if record.conflicts.is_empty() {
        out.push_str("  none\n");
    }
    for c in &record.conflicts {
        let username = if reveal {
            c.username.clone()
        } else {
            mask_username(&c.username)
        };
        out.push_str(&format!(
            "  {:<8} {:<20} {:<10} {:<8} {}\n",
            c.id,
            c.reason,
            c.status,
            c.resolution.as_deref().unwrap_or("-"),
            username
        ));
    }
    out.push_str("\nerasures\n");
    if record.erasures.is_empty() {
        out.push_str("  none\n");
    }
    for e in &record.erasures {
        out.push_str(&format!(
            "  {:<8} {:<15} userId {:<26} requested {}  completed {}\n",
            e.id,
            e.outcome,
            e.embedded_user_id.as_deref().unwrap_or("-"),
            e.requested_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.completed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    out
}

/// [`UserRecord`] for JSON: the usernames masked unless `reveal`.
pub fn user_json(record: &UserRecord, reveal: bool) -> UserRecord {
    let mut record = record.clone();
    if !reveal {
        if let Some(m) = &mut record.mapping {
            m.username = m.username.as_deref().map(mask_username);
        }
        for c in &mut record.conflicts {
            c.username = mask_username(&c.username);
        }
    }
    record
}

/// A pause in words: since when, by whom, why.
pub fn describe_pause(pause: &Pause) -> String {
    let mut text = format!(
        "since {}",
        pause
            .paused_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if let Some(by) = &pause.paused_by {
        text.push_str(&format!(" by {by}"));
    }
    if let Some(reason) = &pause.reason {
        text.push_str(&format!(": {reason}"));
    }
    text
}

/// `user-sync conflicts` in `format`, ages as of `now`.
pub fn render_conflicts(
    rows: &[ConflictRow],
    format: ListFormat,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    Ok(match format {
        ListFormat::Json => serde_json::to_string_pretty(rows)? + "\n",
        ListFormat::Csv => conflicts_csv(rows)?,
        ListFormat::Table => conflicts_table(rows, now),
    })
}

/// The columns of the CSV, in order.
const CSV_HEADER: [&str; 15] = [
    "id",
    "host_user_id",
    "username",
    "reason",
    "status",
    "resolution",
    "holder_host_user_id",
    "holder_embedded_user_id",
    "event_id",
    "detected_at",
    "resolved_at",
    "resolved_by",
    "note",
    "checks",
    "checked_at",
];

fn conflicts_csv(rows: &[ConflictRow]) -> anyhow::Result<String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER)?;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let at = |v: &Option<DateTime<Utc>>| v.map(|at| at.to_rfc3339()).unwrap_or_default();
    for r in rows {
        let fields = [
            r.id.to_string(),
            r.host_user_id.clone(),
            r.username.clone(),
            r.reason.clone(),
            r.status.clone(),
            text(&r.resolution),
            text(&r.holder_host_user_id),
            text(&r.holder_embedded_user_id),
            r.event_id.map(|e| e.to_string()).unwrap_or_default(),
            r.detected_at.to_rfc3339(),
            at(&r.resolved_at),
            text(&r.resolved_by),
            text(&r.note),
            r.checks.to_string(),
            at(&r.checked_at),
        ];
        out.write_record(fields.iter().map(|f| spreadsheet_safe(f).into_owned()))?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// A cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, or a
/// tab or carriage return before one) is prefixed with `'`, which makes it
/// text: a host id or a note written by anyone cannot run in the sheet of
/// the person who opens the export.
pub(super) fn spreadsheet_safe(value: &str) -> std::borrow::Cow<'_, str> {
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{value}").into(),
        _ => value.into(),
    }
}

fn conflicts_table(rows: &[ConflictRow], now: DateTime<Utc>) -> String {
    if rows.is_empty() {
        return "no conflicts\n".into();
    }
    let mut out = format!(
        "{:<8} {:<6} {:<20} {:<32} {:<20} {:<16} {}\n",
        "ID", "AGE", "HOST USER", "USERNAME", "REASON", "STATUS", "HELD BY"
    );
    for r in rows {
        let holder = match (&r.holder_host_user_id, &r.holder_embedded_user_id) {
            (Some(h), _) => format!("host user {h}"),
            (None, Some(e)) => format!("Embedded user {e}"),
            (None, None) => "-".into(),
        };
        let status = match &r.resolution {
            Some(resolution) => resolution.clone(),
            None => r.status.clone(),
        };
        out.push_str(&format!(
            "{:<8} {:<6} {:<20} {:<32} {:<20} {:<16} {}\n",
            r.id,
            age(now - r.detected_at),
            r.host_user_id,
            r.username,
            r.reason,
            status,
            holder
        ));
    }
    out
}

/// An age in its largest unit: `45s`, `12m`, `5h`, `3d`.
fn age(elapsed: chrono::TimeDelta) -> String {
    let seconds = elapsed.num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

/// One line saying how an operator's action on conflict `id` ended.
pub fn describe_done(id: i64, done: &Done) -> String {
    match done {
        Done::Adopted { user, full_name } => {
            let name = match full_name {
                FullNameFix::AlreadyInLine => String::new(),
                FullNameFix::Updated => "; its fullName was brought in line".into(),
                FullNameFix::Failed(error) => format!(
                    "; its fullName could not be brought in line ({error}): the user's next \
                     event will"
                ),
            };
            format!("conflict {id} adopted: the host user is linked to Embedded user {user}{name}")
        }
        Done::Retried { resolution } => {
            format!("conflict {id} resolved ({resolution}): the user is synced")
        }
        Done::StillOpen { reason, checks } => format!(
            "conflict {id} is still open: the retry met {reason} again (checked {checks} times)"
        ),
        Done::Pending { reason } => format!(
            "conflict {id} is still open: the retried event waits to be tried again ({}); the \
             workers will",
            reason.as_deref().unwrap_or("no reason given")
        ),
        Done::Ended { state, reason } => format!(
            "conflict {id} is still open: the retried event ended {state} ({})",
            reason.as_deref().unwrap_or("no reason given")
        ),
        Done::Ignored => format!(
            "conflict {id} ignored: the host user stays without an Embedded user under this \
             username"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, note: Option<&str>) -> ConflictRow {
        ConflictRow {
            id: 7,
            host_user_id: host.into(),
            username: "a,b@example.com".into(),
            reason: "taken_in_embedded".into(),
            status: "open".into(),
            resolution: None,
            holder_host_user_id: None,
            holder_embedded_user_id: Some("6155b19200000000000000aa".into()),
            event_id: Some(3),
            detected_at: Utc::now(),
            resolved_at: None,
            resolved_by: None,
            note: note.map(Into::into),
            checks: 0,
            checked_at: None,
        }
    }

    #[test]
    fn csv_neutralises_formulas_and_quotes_what_needs_quoting() {
        let rows = [
            row("=HYPERLINK(\"http://x\")", Some("+1 call")),
            row("@SUM(A1)", Some("-2")),
            row("42", Some("say \"hi\"")),
        ];
        let out = conflicts_csv(&rows).expect("csv");
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(&records[0][1], "'=HYPERLINK(\"http://x\")");
        assert_eq!(&records[0][12], "'+1 call");
        assert_eq!(&records[1][1], "'@SUM(A1)");
        assert_eq!(&records[1][12], "'-2");
        assert_eq!(&records[2][1], "42", "a plain cell is left as it is");
        assert_eq!(
            &records[2][2], "a,b@example.com",
            "a comma is quoted, not lost"
        );
        assert_eq!(&records[2][12], "say \"hi\"");
        for record in &records {
            for cell in record {
                assert!(
                    !cell.starts_with(['=', '+', '-', '@']),
                    "{cell} would run as a formula"
                );
            }
        }
    }

    #[test]
    fn usernames_are_masked_down_to_their_first_letters() {
        assert_eq!(mask_username("ada@example.com"), "a***@e***.com");
        assert_eq!(mask_username("x@localhost"), "x***@l***");
        assert_eq!(mask_username("noat"), "n***");
        assert_eq!(mask_username(""), "***");
    }

    #[test]
    fn ages_read_in_their_largest_unit() {
        let s = chrono::TimeDelta::seconds;
        assert_eq!(age(s(-3)), "0s");
        assert_eq!(age(s(59)), "59s");
        assert_eq!(age(s(61)), "1m");
        assert_eq!(age(s(7200)), "2h");
        assert_eq!(age(s(90000)), "1d");
    }
}
