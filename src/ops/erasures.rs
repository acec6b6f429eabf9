//! `user-sync erase` and `user-sync erasures`: erasure requests filed by
//! hand (a support ticket, a data-protection officer's list), and the proof
//! of deletion exported for whoever asked. Ids and times only: an erasure
//! record holds no email or name, and neither does anything printed here.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::GdprSettings;
use crate::domain::{ErasureRow, HostUserId};
use crate::ops::ListFormat;
use crate::ops::status::spreadsheet_safe;
use crate::storage::{ErasureFilter, ErasureRequests, Filed, PendingErasure};

/// The host user ids of a request: those given, then one a line of `text`
/// (blank lines skipped), each trimmed. `Err` says which one is not an id.
pub fn parse_ids(given: &[String], text: Option<&str>) -> Result<Vec<HostUserId>, String> {
    let lines = text.into_iter().flat_map(str::lines).enumerate();
    let mut ids = Vec::new();
    for (i, raw) in given.iter().enumerate() {
        ids.push(HostUserId::parse(raw.trim()).map_err(|e| format!("id {}: {e}", i + 1))?);
    }
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        ids.push(HostUserId::parse(line.trim()).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    if ids.is_empty() {
        return Err("no host user id given (as arguments, or with --file)".into());
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.as_str().to_owned()));
    Ok(ids)
}

/// How `user-sync erase` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseEnd {
    /// Every request is filed (without `--wait`) or complete.
    Done,
    /// Some request was still pending at the timeout.
    Pending,
}

/// Files an erasure request for each of `hosts` and, with `wait`, waits up
/// to that long for each to complete, printing its record.
pub async fn erase(
    store: &dyn ErasureRequests,
    hosts: &[HostUserId],
    wait: Option<Duration>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<EraseEnd> {
    let filed = store.request_erasures(hosts).await?;
    for (host, answer) in hosts.iter().zip(&filed) {
        let what = match answer {
            Filed::New(_) => "requested",
            Filed::Pending(_) => "already requested, pending",
            Filed::AlreadyErased(_) => "already erased",
        };
        writeln!(
            out,
            "{}: {what} (event {})",
            host.as_str(),
            answer.event_id()
        )?;
    }
    let Some(wait) = wait else {
        return Ok(EraseEnd::Done);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut done: Vec<Option<ErasureRow>> = vec![None; hosts.len()];
    loop {
        for ((host, answer), record) in hosts.iter().zip(&filed).zip(done.iter_mut()) {
            if record.is_some() {
                continue;
            }
            let filter = ErasureFilter {
                host_user_id: Some(host.as_str().to_owned()),
                ..ErasureFilter::default()
            };
            // The request's closure, or a later one of the same user that
            // replaced it.
            *record = store
                .erasure_records(&filter)
                .await?
                .into_iter()
                .find(|r| r.event_id >= answer.event_id());
        }
        if done.iter().all(Option::is_some) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let complete: Vec<ErasureRow> = done.iter().flatten().cloned().collect();
    write!(out, "{}", render_records(&complete, ListFormat::Table)?)?;
    let pending: Vec<&str> = hosts
        .iter()
        .zip(&done)
        .filter(|(_, r)| r.is_none())
        .map(|(h, _)| h.as_str())
        .collect();
    if pending.is_empty() {
        return Ok(EraseEnd::Done);
    }
    writeln!(
        out,
        "still pending after {}s: {}",
        wait.as_secs(),
        pending.join(", ")
    )?;
    Ok(EraseEnd::Pending)
}

/// The columns of the proof, in this order, for every format.
pub const PROOF_COLUMNS: [&str; 8] = [
    "host_user_id",
    "embedded_user_id",
    "outcome",
    "requested_at",
    "logs_deleted_at",
    "logs_skipped",
    "user_deleted_at",
    "completed_at",
];

/// One line of the proof: ids and times (RFC 3339, UTC) only.
#[derive(Debug, Serialize)]
struct Proof<'a> {
    host_user_id: &'a str,
    embedded_user_id: Option<&'a str>,
    outcome: &'a str,
    requested_at: String,
    logs_deleted_at: Option<String>,
    /// Why the logs of a user that existed were not deleted: `disabled`,
    /// or `no_logs_call` (an API version without that call).
    logs_skipped: Option<&'a str>,
    user_deleted_at: Option<String>,
    completed_at: String,
}

fn utc(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl<'a> Proof<'a> {
    fn of(r: &'a ErasureRow) -> Self {
        Self {
            host_user_id: &r.host_user_id,
            embedded_user_id: r.embedded_user_id.as_deref(),
            outcome: &r.outcome,
            requested_at: utc(r.requested_at),
            logs_deleted_at: r.logs_deleted_at.map(utc),
            logs_skipped: r.logs_skipped.as_deref(),
            user_deleted_at: r.user_deleted_at.map(utc),
            completed_at: utc(r.completed_at),
        }
    }

    fn cells(&self) -> [String; 8] {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            self.host_user_id.to_owned(),
            self.embedded_user_id.unwrap_or_default().to_owned(),
            self.outcome.to_owned(),
            self.requested_at.clone(),
            text(&self.logs_deleted_at),
            self.logs_skipped.unwrap_or_default().to_owned(),
            text(&self.user_deleted_at),
            self.completed_at.clone(),
        ]
    }
}

/// `user-sync erasures` in `format`.
pub fn render_records(rows: &[ErasureRow], format: ListFormat) -> anyhow::Result<String> {
    let proofs: Vec<Proof<'_>> = rows.iter().map(Proof::of).collect();
    let cells: Vec<[String; 8]> = proofs.iter().map(Proof::cells).collect();
    Ok(match format {
        ListFormat::Json => serde_json::to_string_pretty(&proofs)? + "\n",
        ListFormat::Csv => csv_of(&PROOF_COLUMNS, &cells)?,
        ListFormat::Table if rows.is_empty() => "no erasures\n".into(),
        ListFormat::Table => table_of(&PROOF_COLUMNS, &cells),
    })
}

/// The proofs of erasure as CSV (ids, outcome and times: no personal data
/// is left to put in it), safe to open in a spreadsheet.
pub fn erasures_csv(rows: &[ErasureRow]) -> anyhow::Result<String> {
    render_records(rows, ListFormat::Csv)
}

/// The columns of `erasures --pending`.
const PENDING_COLUMNS: [&str; 8] = [
    "host_user_id",
    "embedded_user_id",
    "state",
    "requested_at",
    "logs_deleted_at",
    "age_s",
    "overdue",
    "due_by",
];

/// One request not complete yet, with its age against `[gdpr]`.
#[derive(Debug, Serialize)]
struct Waiting<'a> {
    host_user_id: &'a str,
    embedded_user_id: Option<&'a str>,
    /// `pending` (being worked on) or `failed` (given up: `retry` it).
    state: &'a str,
    requested_at: String,
    logs_deleted_at: Option<String>,
    age_s: u64,
    /// Older than `gdpr.alert_after_s`.
    overdue: bool,
    /// `requested_at` plus `gdpr.deadline_s`.
    due_by: String,
}

/// `user-sync erasures --pending` in `format`, ages at `now`.
pub fn render_pending(
    rows: &[PendingErasure],
    format: ListFormat,
    now: DateTime<Utc>,
    gdpr: &GdprSettings,
) -> anyhow::Result<String> {
    let deadline = chrono::Duration::from_std(gdpr.deadline).unwrap_or(chrono::Duration::MAX);
    let waiting: Vec<Waiting<'_>> = rows
        .iter()
        .map(|p| Waiting {
            host_user_id: &p.host_user_id,
            embedded_user_id: p.embedded_user_id.as_deref(),
            state: &p.state,
            requested_at: utc(p.requested_at),
            logs_deleted_at: p.logs_deleted_at.map(utc),
            age_s: p.age(now).as_secs(),
            overdue: p.age(now) >= gdpr.alert_after,
            due_by: p
                .requested_at
                .checked_add_signed(deadline)
                .map(utc)
                .unwrap_or_default(),
        })
        .collect();
    let cells: Vec<[String; 8]> = waiting
        .iter()
        .map(|w| {
            [
                w.host_user_id.to_owned(),
                w.embedded_user_id.unwrap_or_default().to_owned(),
                w.state.to_owned(),
                w.requested_at.clone(),
                w.logs_deleted_at.clone().unwrap_or_default(),
                w.age_s.to_string(),
                w.overdue.to_string(),
                w.due_by.clone(),
            ]
        })
        .collect();
    Ok(match format {
        ListFormat::Json => serde_json::to_string_pretty(&waiting)? + "\n",
        ListFormat::Csv => csv_of(&PENDING_COLUMNS, &cells)?,
        ListFormat::Table if rows.is_empty() => "no pending erasures\n".into(),
        ListFormat::Table => table_of(&PENDING_COLUMNS, &cells),
    })
}

fn csv_of<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> anyhow::Result<String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(header)?;
    for row in rows {
        out.write_record(row.iter().map(|f| spreadsheet_safe(f).into_owned()))?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

fn table_of<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let text: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        text.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        out.push_str(&line(&mut row.iter().cloned()));
    }
    out
}

/// How often an overdue request is alerted again while it stays pending.
const ALERT_AGAIN_AFTER: Duration = Duration::from_secs(3600);

/// Watches the deadline: every request pending longer than
/// `gdpr.alert_after_s` is logged `alert=erasure_overdue` with its host
/// user id, once per [`ALERT_AGAIN_AFTER`] across every process, until it
/// completes. Looks as often as the alert's own delay allows, at most once
/// a minute.
pub async fn watch_erasures(
    store: std::sync::Arc<dyn ErasureRequests>,
    gdpr: GdprSettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let every = gdpr
        .alert_after
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let overdue = match store
            .claim_overdue(gdpr.alert_after, ALERT_AGAIN_AFTER)
            .await
        {
            Ok(overdue) => overdue,
            Err(error) => {
                tracing::warn!(%error, "reading the pending erasures failed; read again later");
                continue;
            }
        };
        let now = Utc::now();
        for request in overdue {
            let age = request.age(now);
            tracing::error!(
                alert = "erasure_overdue",
                host_user_id = %request.host_user_id,
                event_id = request.event_id,
                state = %request.state,
                age_s = age.as_secs(),
                alert_after_s = gdpr.alert_after.as_secs(),
                deadline_s = gdpr.deadline.as_secs(),
                overdue_by_deadline = age >= gdpr.deadline,
                "an erasure request is pending longer than gdpr.alert_after_s"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_erasures_csv_neutralises_formulas_too() {
        let row = ErasureRow {
            id: 1,
            host_user_id: "=1+1".into(),
            embedded_user_id: None,
            event_id: 9,
            outcome: "never_created".into(),
            requested_at: Utc::now(),
            logs_deleted_at: None,
            user_deleted_at: None,
            completed_at: Utc::now(),
            logs_skipped: None,
        };
        let out = erasures_csv(&[row]).expect("csv");
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let record = reader.records().next().expect("a row").expect("parses");
        assert_eq!(&record[0], "'=1+1");
        assert_eq!(&record[1], "");
        assert_eq!(&record[2], "never_created");
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn row(host: &str) -> ErasureRow {
        ErasureRow {
            id: 1,
            host_user_id: host.into(),
            embedded_user_id: Some("e1".into()),
            event_id: 9,
            outcome: "deleted".into(),
            requested_at: at("2026-01-01T00:00:00Z"),
            logs_deleted_at: Some(at("2026-01-01T00:00:01Z")),
            user_deleted_at: Some(at("2026-01-01T00:00:02Z")),
            completed_at: at("2026-01-01T00:00:02.5Z"),
            logs_skipped: None,
        }
    }

    #[test]
    fn the_proof_has_its_columns_in_order_in_every_format() {
        let csv = render_records(&[row("=cmd")], ListFormat::Csv).expect("csv");
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(PROOF_COLUMNS.join(",").as_str()));
        assert_eq!(
            lines.next(),
            Some(
                "'=cmd,e1,deleted,2026-01-01T00:00:00.000Z,2026-01-01T00:00:01.000Z,,\
                 2026-01-01T00:00:02.000Z,2026-01-01T00:00:02.500Z"
            ),
            "a formula-like id is neutralised"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_records(&[row("u1")], ListFormat::Json).expect("json"))
                .expect("valid JSON");
        let keys: Vec<&str> = json[0]
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = PROOF_COLUMNS.to_vec();
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        let table = render_records(&[row("u1")], ListFormat::Table).expect("table");
        assert!(table.starts_with("HOST_USER_ID"), "{table}");
    }

    #[test]
    fn ids_come_from_arguments_and_lines_trimmed_once_each() {
        let ids = parse_ids(&["a".into(), " b ".into()], Some("c\n\n b\r\nd\n")).expect("ids");
        let ids: Vec<&str> = ids.iter().map(HostUserId::as_str).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert!(parse_ids(&[], None).is_err());
        assert!(parse_ids(&[], Some("\n  \n")).is_err());
        let bad = parse_ids(&[], Some("ok\nbad\u{7}id\n")).expect_err("a control character");
        assert!(bad.starts_with("line 2"), "{bad}");
    }

    #[test]
    fn a_pending_request_is_overdue_after_alert_after_and_due_by_the_deadline() {
        let pending = PendingErasure {
            host_user_id: "u1".into(),
            event_id: 3,
            state: "pending".into(),
            requested_at: at("2026-01-01T00:00:00Z"),
            embedded_user_id: None,
            logs_deleted_at: None,
            reason: None,
        };
        let gdpr = GdprSettings {
            alert_after: Duration::from_secs(3600),
            deadline: Duration::from_secs(86_400),
        };
        let csv = render_pending(
            std::slice::from_ref(&pending),
            ListFormat::Csv,
            at("2026-01-01T02:00:00Z"),
            &gdpr,
        )
        .expect("csv");
        assert_eq!(
            csv.lines().nth(1),
            Some("u1,,pending,2026-01-01T00:00:00.000Z,,7200,true,2026-01-02T00:00:00.000Z")
        );
        let early = render_pending(
            &[pending],
            ListFormat::Csv,
            at("2026-01-01T00:30:00Z"),
            &gdpr,
        )
        .expect("csv");
        assert!(early.contains(",1800,false,"), "{early}");
    }
}
