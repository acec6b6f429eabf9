//! What the backfill tells its operator: a progress bar on a terminal or
//! periodic log lines otherwise, the conflicts of a dry run as they are
//! found, and the summary at the end.
//!
//! Log lines carry counts and host ids only. The dry run's conflict list is
//! a report for the people who reconcile (like `user-sync conflicts`), so it
//! names usernames; it goes to the output, never to the logs.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::decide::ConflictFound;
use crate::domain::HostUserId;

/// How the list and the summary are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
    Csv,
}

/// What a run did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub mode: &'static str,
    /// Open accounts read from the source.
    pub scanned: u64,
    /// Closed accounts the source holds, skipped (table sources only).
    pub closed_skipped: Option<u64>,
    /// Open in the source but closed as far as the worker knows (erased, or
    /// a closure waiting in the outbox): left to the pipeline.
    pub closing: u64,
    /// Already had their Embedded user.
    pub in_sync: u64,
    /// Embedded users created (would be, in a dry run).
    pub created: u64,
    /// Linked to the Embedded user of an earlier run's unconfirmed create.
    pub resumed: u64,
    /// Linked to an Embedded user created outside the worker
    /// (`--adopt-existing`).
    pub adopted: u64,
    /// Usernames that could not be had, each one reported.
    pub conflicts: u64,
    /// Rows whose email or name the API would refuse, or without an id.
    pub invalid: u64,
    /// Creates refused by the API for another reason than a taken name,
    /// or given up after retries.
    pub failed: u64,
    /// Being handled by a job of `user-sync run` whenever the backfill came
    /// to them, or still unconfirmed at the end: run the backfill again.
    pub unresolved: u64,
    /// Stopped before the end (Ctrl-C, SIGTERM).
    pub interrupted: bool,
    pub elapsed_seconds: f64,
}

impl Summary {
    /// Whether anything failed: the exit status is non-zero then.
    /// Conflicts are reported for reconciliation, not failures.
    pub fn failed_anything(&self) -> bool {
        self.invalid > 0 || self.failed > 0 || self.unresolved > 0 || self.interrupted
    }

    /// Users with their Embedded user at the end of the run.
    pub fn mapped(&self) -> u64 {
        self.in_sync + self.created + self.resumed + self.adopted
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("mode", self.mode.to_owned()),
            ("dry_run", self.dry_run.to_string()),
            ("scanned", self.scanned.to_string()),
        ];
        if let Some(closed) = self.closed_skipped {
            rows.push(("closed_skipped", closed.to_string()));
        }
        rows.extend([
            ("closing", self.closing.to_string()),
            ("in_sync", self.in_sync.to_string()),
            ("created", self.created.to_string()),
            ("resumed", self.resumed.to_string()),
            ("adopted", self.adopted.to_string()),
            ("conflicts", self.conflicts.to_string()),
            ("invalid", self.invalid.to_string()),
            ("failed", self.failed.to_string()),
            ("unresolved", self.unresolved.to_string()),
            ("interrupted", self.interrupted.to_string()),
            ("elapsed_seconds", format!("{:.1}", self.elapsed_seconds)),
        ]);
        rows
    }
}

/// One conflict of a dry run, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictLine {
    pub host_user_id: String,
    pub username: String,
    pub reason: &'static str,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
}

impl ConflictLine {
    pub fn new(host: &HostUserId, c: &ConflictFound) -> Self {
        Self {
            host_user_id: host.as_str().to_owned(),
            username: c.username.as_str().to_owned(),
            reason: c.reason.as_str(),
            holder_host_user_id: c
                .holder_host_user_id
                .as_ref()
                .map(|h| h.as_str().to_owned()),
            holder_embedded_user_id: c
                .holder_embedded_user_id
                .as_ref()
                .map(|e| e.as_str().to_owned()),
        }
    }

    fn holder(&self) -> String {
        match (&self.holder_host_user_id, &self.holder_embedded_user_id) {
            (Some(h), _) => format!("host user {h}"),
            (None, Some(e)) => format!("Embedded user {e}"),
            (None, None) => "-".into(),
        }
    }
}

/// Writes the dry run's conflicts as they are found, then the summary, in
/// one format; memory holds one line, however many conflicts there are.
pub struct Output<'w> {
    out: &'w mut (dyn Write + Send),
    format: OutputFormat,
    lines: u64,
}

impl<'w> Output<'w> {
    pub fn new(out: &'w mut (dyn Write + Send), format: OutputFormat) -> Self {
        Self {
            out,
            format,
            lines: 0,
        }
    }

    pub fn conflict(&mut self, line: &ConflictLine) -> std::io::Result<()> {
        let first = self.lines == 0;
        self.lines += 1;
        match self.format {
            OutputFormat::Text => {
                if first {
                    writeln!(self.out, "conflicts (host user, username, reason, holder):")?;
                }
                writeln!(
                    self.out,
                    "  {}\t{}\t{}\t{}",
                    line.host_user_id,
                    line.username,
                    line.reason,
                    line.holder()
                )
            }
            OutputFormat::Csv => {
                if first {
                    writeln!(
                        self.out,
                        "host_user_id,username,reason,holder_host_user_id,holder_embedded_user_id"
                    )?;
                }
                writeln!(
                    self.out,
                    "{},{},{},{},{}",
                    csv(&line.host_user_id),
                    csv(&line.username),
                    line.reason,
                    csv(line.holder_host_user_id.as_deref().unwrap_or("")),
                    csv(line.holder_embedded_user_id.as_deref().unwrap_or("")),
                )
            }
            OutputFormat::Json => {
                let json = serde_json::to_string(line).map_err(std::io::Error::other)?;
                if first {
                    write!(self.out, "{{\"conflicts\":[\n{json}")
                } else {
                    write!(self.out, ",\n{json}")
                }
            }
        }
    }

    /// The summary; with `--format csv` a dry run's summary goes to
    /// stderr, so that the output stays one CSV table.
    pub fn finish(self, summary: &Summary) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Text => {
                let title = if summary.dry_run {
                    "backfill dry run (nothing was changed):"
                } else {
                    "backfill summary:"
                };
                writeln!(self.out, "{title}")?;
                for (key, value) in summary.rows() {
                    writeln!(self.out, "  {key:<16}{value}")?;
                }
                if !summary.dry_run && summary.conflicts > 0 {
                    writeln!(
                        self.out,
                        "  see `user-sync conflicts` for the {} conflict(s)",
                        summary.conflicts
                    )?;
                }
            }
            OutputFormat::Json => {
                let json = serde_json::to_string(summary).map_err(std::io::Error::other)?;
                if self.lines == 0 {
                    write!(self.out, "{{\"conflicts\":[")?;
                }
                writeln!(self.out, "],\"summary\":{json}}}")?;
            }
            OutputFormat::Csv => {
                if summary.dry_run {
                    if self.lines == 0 {
                        writeln!(
                            self.out,
                            "host_user_id,username,reason,holder_host_user_id,holder_embedded_user_id"
                        )?;
                    }
                    let rows: Vec<String> = summary
                        .rows()
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    eprintln!("{}", rows.join(" "));
                } else {
                    writeln!(self.out, "key,value")?;
                    for (key, value) in summary.rows() {
                        writeln!(self.out, "{key},{value}")?;
                    }
                }
            }
        }
        self.out.flush()
    }
}

fn csv(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Progress: a bar when stderr is a terminal, a log line every few seconds
/// otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
    total: u64,
}

/// Between two progress log lines.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(total: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scanned ({per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
            total,
        }
    }

    pub fn update(&mut self, s: &Summary, phase: &'static str) {
        if let Some(bar) = &self.bar {
            bar.set_position(s.scanned);
            bar.set_message(format!(
                "{phase}: created {} · adopted {} · conflicts {} · failed {}",
                s.created,
                s.adopted + s.resumed,
                s.conflicts,
                s.failed + s.invalid
            ));
            return;
        }
        if self.last_log.elapsed() < LOG_EVERY {
            return;
        }
        self.last_log = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            phase,
            scanned = s.scanned,
            total = self.total,
            created = s.created,
            adopted = s.adopted + s.resumed,
            in_sync = s.in_sync,
            conflicts = s.conflicts,
            failed = s.failed + s.invalid,
            users_per_second = (s.scanned as f64 / seconds).round() as u64,
            "backfill progress"
        );
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
