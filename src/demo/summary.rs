//! The demo's closing report: what happened, what it cost in API calls,
//! the conflicts to reconcile (usernames masked: a demo's output gets
//! pasted around), and checks of the outcome against the database and the
//! sandbox.

use std::collections::HashSet;

use sqlx::SqlitePool;
use user_sync_sandbox::Sandbox;

use crate::config::ApiVersion;
use crate::domain::ConflictRow;
use crate::host::Summary;
use crate::storage::{Reports, SqliteStore};

use super::seed::{Burst, Seeded};

/// What the report is made from.
pub(super) struct Gathered<'a> {
    pub api_version: ApiVersion,
    pub store: &'a SqliteStore,
    pub pool: &'a SqlitePool,
    pub sandbox: &'a Sandbox,
    pub seeded: &'a Seeded,
    pub backfilled: &'a Summary,
    pub burst: &'a Burst,
    pub backfill_seconds: f64,
    pub live_seconds: f64,
    pub elapsed_seconds: f64,
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct Report {
    /// The version the worker spoke.
    pub api_version: ApiVersion,
    pub accounts: i64,
    pub backfill_created: u64,
    pub backfill_conflicts: u64,
    /// Linked to an existing Embedded user (an earlier create's, or one
    /// created outside the worker).
    pub adopted: u64,
    pub closed_skipped: u64,
    pub signups: i64,
    pub profile_changes: i64,
    pub closures: usize,
    pub synced_users: i64,
    pub erasures: i64,
    pub api_calls: u64,
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub conflicts: Vec<ConflictRow>,
    /// (passed, what was checked).
    pub checks: Vec<(bool, String)>,
    pub backfill_seconds: f64,
    pub live_seconds: f64,
    pub elapsed_seconds: f64,
}

impl Report {
    pub(super) async fn gather(g: Gathered<'_>) -> anyhow::Result<Self> {
        let status = g.store.status().await?;
        let conflicts = g.store.open_conflicts().await?;
        let stats = g.sandbox.stats();
        let in_embedded: HashSet<String> =
            g.sandbox.users().into_iter().map(|u| u.user_id).collect();

        let unaccounted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM accounts a
             WHERE a.closed_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM user_sync_users u
                               WHERE u.host_user_id = CAST(a.id AS TEXT) AND u.state = 'synced')
               AND NOT EXISTS (SELECT 1 FROM user_sync_conflicts c
                               WHERE c.host_user_id = CAST(a.id AS TEXT) AND c.status = 'open')",
        )
        .fetch_one(g.pool)
        .await?;
        let mapped: Vec<String> = sqlx::query_scalar(
            "SELECT embedded_user_id FROM user_sync_users
             WHERE state = 'synced' AND embedded_user_id IS NOT NULL",
        )
        .fetch_all(g.pool)
        .await?;
        let dangling = mapped
            .iter()
            .filter(|id| !in_embedded.contains(*id))
            .count();
        let reported: HashSet<&str> = conflicts.iter().map(|c| c.host_user_id.as_str()).collect();
        let expected: Vec<&String> = g
            .seeded
            .conflicts
            .iter()
            .chain(&g.burst.conflicting_signups)
            .collect();
        let missing = expected
            .iter()
            .filter(|h| !reported.contains(h.as_str()))
            .count();
        let closures = serde_json::to_string(&g.burst.closures)?;
        let deleted: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT e.host_user_id) FROM user_sync_erasures e
             JOIN user_sync_users u ON u.host_user_id = e.host_user_id
             WHERE e.outcome = 'deleted' AND u.state = 'erased' AND u.username IS NULL
               AND e.host_user_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&closures)
        .fetch_one(g.pool)
        .await?;
        let checks = vec![
            (
                unaccounted == 0 && dangling == 0,
                format!(
                    "every open account has its Embedded user or a reported conflict \
                     ({unaccounted} without, {dangling} mapped to a user Embedded does not have)"
                ),
            ),
            (
                missing == 0,
                format!(
                    "every seeded conflict is reported ({} of {})",
                    expected.len() - missing,
                    expected.len()
                ),
            ),
            (
                deleted == g.burst.closures.len() as i64,
                format!(
                    "every closure is deleted in Embedded and erased here ({deleted} of {})",
                    g.burst.closures.len()
                ),
            ),
        ];
        Ok(Self {
            api_version: g.api_version,
            accounts: g.seeded.accounts,
            backfill_created: g.backfilled.created,
            backfill_conflicts: g.backfilled.conflicts,
            adopted: g.backfilled.adopted + g.backfilled.resumed,
            closed_skipped: g.backfilled.closed_skipped.unwrap_or(0),
            signups: g.burst.signups + g.burst.conflicting_signups.len() as i64,
            profile_changes: g.burst.profile_changes,
            closures: g.burst.closures.len(),
            synced_users: status.synced_users,
            erasures: status.completed_erasures,
            api_calls: stats.total_requests,
            creates: stats.creates,
            updates: stats.count("PUT /users/{id}", 200),
            deletes: stats.count("DELETE /users/{id}", 200),
            rate_limited: stats.rate_limited,
            server_errors: stats.failed,
            conflicts,
            checks,
            backfill_seconds: g.backfill_seconds,
            live_seconds: g.live_seconds,
            elapsed_seconds: g.elapsed_seconds,
        })
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(ok, _)| *ok)
    }

    pub fn render(&self) -> String {
        let mut out = String::from("Summary\n");
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("  {label:<34} {value:>10}\n"));
        };
        line("API version", self.api_version.to_string());
        line("host accounts seeded", self.accounts.to_string());
        line("Embedded users created", self.creates.to_string());
        line("  by the backfill", self.backfill_created.to_string());
        line("Embedded users updated", self.updates.to_string());
        line("Embedded users deleted", self.deletes.to_string());
        line("existing users adopted", self.adopted.to_string());
        line("conflicts reported", self.conflicts.len().to_string());
        line("closed accounts skipped", self.closed_skipped.to_string());
        line("synced users now", self.synced_users.to_string());
        line("erasures recorded", self.erasures.to_string());
        line("API calls", self.api_calls.to_string());
        line("429s absorbed", self.rate_limited.to_string());
        line("server errors retried", self.server_errors.to_string());
        line("backfill", format!("{:.1} s", self.backfill_seconds));
        line("live burst", format!("{:.1} s", self.live_seconds));
        line("elapsed", format!("{:.1} s", self.elapsed_seconds));
        out.push_str("\nConflicts to reconcile (usernames masked)\n");
        for c in &self.conflicts {
            let holder = match (&c.holder_host_user_id, &c.holder_embedded_user_id) {
                (Some(h), _) => format!("held by host user {h}"),
                (None, Some(_)) => "held by a user created outside the worker".into(),
                (None, None) => String::new(),
            };
            out.push_str(&format!(
                "  host user {:<8} {:<34} {:<20} {holder}\n",
                c.host_user_id,
                mask(&c.username),
                c.reason
            ));
        }
        out.push_str("\nChecks\n");
        for (ok, what) in &self.checks {
            out.push_str(&format!(
                "  [{}] {what}\n",
                if *ok { "ok" } else { "FAILED" }
            ));
        }
        out.push_str(if self.passed() {
            "\nall checks passed\n"
        } else {
            "\nsome checks FAILED\n"
        });
        out
    }
}

/// `ada.lovelace@example.com` → `a***@e***.com`: enough to tell rows apart
/// on a screen, not enough to identify anyone.
pub fn mask(username: &str) -> String {
    let (local, domain) = username.split_once('@').unwrap_or((username, ""));
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let tld = domain.rsplit_once('.').map(|(_, t)| t).unwrap_or("");
    format!("{}***@{}***.{tld}", first(local), first(domain))
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_keep_only_first_letters_and_the_top_level_domain() {
        assert_eq!(mask("ada.lovelace.12@example.com"), "a***@e***.com");
        assert_eq!(mask("x@mail.example"), "x***@m***.example");
        assert_eq!(mask("no-at-sign"), "n***@***.");
    }
}
