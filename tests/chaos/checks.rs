//! The end state, checked against the model: Embedded users, the worker's
//! tables, the Redis keyspace and every log line.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;
use user_sync_sandbox::SandboxUser;

use crate::model::{Model, Owner, username};

/// What the worker left behind, read once the run is quiet.
pub struct Observed {
    /// Users in Embedded now.
    pub embedded: Vec<SandboxUser>,
    /// Every user ever created through the API.
    pub created: Vec<SandboxUser>,
    /// Creates the API refused for a taken username, by username.
    pub refused_creates: std::collections::HashMap<String, u64>,
    /// `user_sync.users`: host id to (state, embedded id, username, name).
    pub rows: BTreeMap<String, UserRow>,
    pub conflicts: Vec<ConflictRow>,
    /// Every outbox row.
    pub events: Vec<EventRow>,
    pub erased_hosts: BTreeSet<String>,
    /// Host users with an erasure record missing a step's time, or with
    /// its times out of order (requested, logs, user, completed).
    pub incomplete_erasures: BTreeSet<String>,
    /// Users the sandbox saw deleted while they still had workflow logs.
    pub deleted_with_logs: u64,
    /// Every worker table as text, lower-cased.
    pub tables: String,
    /// Every key and value of the run's Redis.
    pub redis: String,
    /// (process, everything it wrote).
    pub logs: Vec<(String, String)>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub host_user_id: String,
    pub state: String,
    pub embedded_user_id: Option<String>,
    pub username: Option<String>,
    pub full_name: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub host_user_id: Option<String>,
    pub kind: Option<String>,
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct ConflictRow {
    pub host_user_id: String,
    pub username: String,
    pub reason: String,
    pub status: String,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
}

impl Observed {
    /// The database's part; the caller fills in the rest.
    pub async fn read(pool: &PgPool) -> Self {
        let rows: Vec<UserRow> = sqlx::query_as(
            "SELECT host_user_id, state, embedded_user_id, username, full_name FROM user_sync.users",
        )
        .fetch_all(pool)
        .await
        .expect("read users");
        let conflicts = sqlx::query_as(
            "SELECT host_user_id, username, reason, status, holder_host_user_id,
                    holder_embedded_user_id
             FROM user_sync.conflicts ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .expect("read conflicts");
        let events = sqlx::query_as(
            "SELECT id, host_user_id, kind, state, reason FROM user_sync.events ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .expect("read events");
        let erased_hosts: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT host_user_id FROM user_sync.erasures")
                .fetch_all(pool)
                .await
                .expect("read erasures");
        // A user deleted (deleted, already_absent) has both steps' times;
        // one never created has neither.
        let incomplete_erasures: Vec<String> = sqlx::query_scalar(
            "SELECT host_user_id FROM user_sync.erasures
             WHERE NOT (CASE WHEN outcome = 'never_created'
                             THEN logs_deleted_at IS NULL AND user_deleted_at IS NULL
                                  AND embedded_user_id IS NULL
                             ELSE logs_deleted_at IS NOT NULL AND user_deleted_at IS NOT NULL
                                  AND embedded_user_id IS NOT NULL
                                  AND requested_at <= logs_deleted_at
                                  AND logs_deleted_at <= user_deleted_at
                                  AND user_deleted_at <= completed_at
                        END)",
        )
        .fetch_all(pool)
        .await
        .expect("read erasure steps");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'user_sync' ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .expect("list worker tables");
        let mut dump = String::new();
        for table in tables {
            let text: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT string_agg(t::text, E'\\n') FROM user_sync.\"{table}\" t"
            )))
            .fetch_one(pool)
            .await
            .expect("dump a worker table");
            dump.push_str(&text.unwrap_or_default().to_lowercase());
            dump.push('\n');
        }
        Self {
            embedded: Vec::new(),
            created: Vec::new(),
            refused_creates: Default::default(),
            rows: rows
                .into_iter()
                .map(|r| (r.host_user_id.clone(), r))
                .collect(),
            conflicts,
            events,
            erased_hosts: erased_hosts.into_iter().collect(),
            incomplete_erasures: incomplete_erasures.into_iter().collect(),
            deleted_with_logs: 0,
            tables: dump,
            redis: String::new(),
            logs: Vec::new(),
        }
    }
}

/// Violations by check, each with the host ids (or other ids) at fault.
#[derive(Default)]
pub struct Verdict {
    pub violations: BTreeMap<&'static str, BTreeSet<String>>,
    pub figures: BTreeMap<&'static str, u64>,
}

impl Verdict {
    fn violate(&mut self, check: &'static str, who: impl Into<String>) {
        self.violations.entry(check).or_default().insert(who.into());
    }

    fn figure(&mut self, name: &'static str, value: u64) {
        self.figures.insert(name, value);
    }

    fn count(&self, checks: &[&str]) -> u64 {
        checks
            .iter()
            .filter_map(|c| self.violations.get(c))
            .map(|ids| ids.len() as u64)
            .sum()
    }
}

const DUPLICATE: &str = "created twice for one host user";
const ORPHAN: &str = "Embedded user that no open host user should have";
const LOST: &str = "open host user without its Embedded user";
const NOT_APPLIED: &str = "event not applied (pending or failed)";
const CONFLICT_FALSE: &str = "conflict reported that is not real";
const CONFLICT_MISSED: &str = "real conflict not reported exactly once";

/// Checks everything; `secrets` are strings no log may contain.
pub fn check(
    model: &Model,
    bad_ids: &BTreeSet<i64>,
    good_ids: &BTreeSet<i64>,
    seen: &Observed,
    secrets: &[&str],
) -> Verdict {
    let mut v = Verdict::default();
    let embedded: BTreeMap<String, &SandboxUser> = seen
        .embedded
        .iter()
        .map(|u| (u.username.to_lowercase(), u))
        .collect();
    let created_ids: BTreeSet<&str> = seen.created.iter().map(|u| u.user_id.as_str()).collect();

    // Who ever held each username.
    let mut owners: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for user in model.users.values() {
        for name in &user.usernames {
            owners.entry(name.clone()).or_default().insert(&user.id);
        }
    }
    let outside: BTreeSet<String> = model.outside.keys().map(|e| username(e)).collect();

    // Open users by the username they want.
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for user in model.users.values().filter(|u| u.open) {
        groups.entry(user.username()).or_default().push(&user.id);
    }
    // Username to the host user that must hold it.
    let mut winners: BTreeMap<&str, &str> = BTreeMap::new();
    // (host, username) that must have exactly one open conflict.
    let mut expected_conflicts: Vec<(&str, &str)> = Vec::new();
    for (name, members) in &groups {
        let row_holds = |host: &str| {
            seen.rows.get(host).is_some_and(|r| {
                r.state == "synced"
                    && r.username.as_deref() == Some(name.as_str())
                    && r.embedded_user_id.is_some()
                    && r.embedded_user_id.as_deref()
                        == embedded.get(name).map(|u| u.user_id.as_str())
            })
        };
        if outside.contains(name) {
            for member in members {
                if row_holds(member) {
                    v.violate(CONFLICT_MISSED, *member);
                }
                expected_conflicts.push((member, name));
            }
            continue;
        }
        let Some(user) = embedded.get(name) else {
            members.iter().for_each(|m| v.violate(LOST, *m));
            continue;
        };
        let holders: Vec<&str> = members.iter().copied().filter(|m| row_holds(m)).collect();
        let [winner] = holders[..] else {
            members.iter().for_each(|m| v.violate(LOST, *m));
            continue;
        };
        let any_protected = members.iter().any(|m| model.users[*m].protected);
        if any_protected && !model.users[winner].protected {
            v.violate("username given to a later account", winner);
        }
        if user.username != *name {
            v.violate("wrong username", winner);
        }
        let want_name = model.users[winner].name.trim();
        if user.full_name.as_deref() != Some(want_name)
            || seen.rows[winner].full_name.as_deref() != Some(want_name)
        {
            v.violate("wrong fullName", winner);
        }
        winners.insert(name, winner);
        for member in members.iter().filter(|m| **m != winner) {
            expected_conflicts.push((member, name));
        }
    }

    // An account in conflict because it changed its email into a taken one
    // keeps the Embedded user it had, if any, under an older username.
    let mut kept: BTreeMap<&str, &str> = BTreeMap::new();
    for (host, _) in &expected_conflicts {
        let user = &model.users[*host];
        let Some(row) = seen.rows.get(*host) else {
            continue;
        };
        if let (Some(name), Some(id)) = (row.username.as_deref(), row.embedded_user_id.as_deref())
            && row.state == "synced"
            && name != user.username()
            && user.usernames.contains(name)
            && embedded.get(name).is_some_and(|u| u.user_id == id)
        {
            kept.insert(name, &user.id);
        }
    }

    // Users made outside the worker: still there, untouched.
    for (email, seeded_name) in &model.outside {
        let name = username(email);
        let intact = embedded.get(&name).is_some_and(|user| {
            !created_ids.contains(user.user_id.as_str()) && user.full_name == *seeded_name
        });
        if !intact {
            let who = owners
                .get(&name)
                .map(|o| o.iter().copied().collect::<Vec<_>>().join("+"))
                .unwrap_or_else(|| {
                    // Its token, not the email itself.
                    let token = tokens(&name).into_iter().next().unwrap_or_default();
                    format!("outside:{token}")
                });
            v.violate("user made outside the worker changed or deleted", who);
        }
    }

    // Every Embedded user belongs to a group or was made outside.
    for (name, user) in &embedded {
        if !groups.contains_key(name)
            && !outside.contains(name)
            && !kept.contains_key(name.as_str())
        {
            let who = owners
                .get(name)
                .map(|o| {
                    o.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .unwrap_or_else(|| format!("embedded:{}", user.user_id));
            v.violate(ORPHAN, who);
        }
    }

    // Closed users: erased, with proof.
    for user in model.users.values().filter(|u| !u.open && u.lives > 0) {
        match seen.rows.get(&user.id) {
            Some(r)
                if r.state == "erased"
                    && r.username.is_none()
                    && r.full_name.is_none()
                    && r.embedded_user_id.is_none() => {}
            _ => v.violate("closed host user not erased", &user.id),
        }
        if !seen.erased_hosts.contains(&user.id) {
            v.violate("closed host user without erasure record", &user.id);
        }
    }
    for host in &seen.incomplete_erasures {
        v.violate("erasure record without the time of each step", host);
    }
    if seen.deleted_with_logs > 0 {
        v.violate(
            "Embedded user deleted before its workflow logs",
            seen.deleted_with_logs.to_string(),
        );
    }
    for ghost in &model.ghosts {
        if seen
            .rows
            .get(ghost)
            .is_some_and(|r| r.state == "synced" || r.state == "creating")
        {
            v.violate("user made from a bad event", ghost);
        }
    }

    // No Embedded user created twice: per host user, at most one create a
    // life; a username several host users held, at most one create.
    let mut creates_by_host: BTreeMap<&str, u32> = BTreeMap::new();
    let mut creates_by_shared: BTreeMap<String, u32> = BTreeMap::new();
    for created in &seen.created {
        let name = created.username.to_lowercase();
        match owners.get(&name) {
            Some(o) if o.len() == 1 => {
                let host = o.iter().next().copied().unwrap_or_default();
                *creates_by_host.entry(host).or_default() += 1;
            }
            Some(_) => *creates_by_shared.entry(name).or_default() += 1,
            None => v.violate(DUPLICATE, format!("embedded:{}", created.user_id)),
        }
    }
    for (host, creates) in &creates_by_host {
        if *creates > model.users[*host].lives {
            v.violate(DUPLICATE, *host);
        }
    }
    for (name, creates) in &creates_by_shared {
        if *creates > 1 {
            let who = owners[name].iter().copied().collect::<Vec<_>>().join("+");
            v.violate(DUPLICATE, who);
        }
    }

    // Conflicts: every reported one real, every real one open once (an
    // account that leaves a conflict and comes back to it has a resolved
    // row and a new open one).
    let mut reported: BTreeMap<(&str, &str), Vec<&ConflictRow>> = BTreeMap::new();
    for row in &seen.conflicts {
        if row.status == "open" {
            reported
                .entry((&row.host_user_id, &row.username))
                .or_default()
                .push(row);
        }
        let held = model
            .users
            .get(&row.host_user_id)
            .is_some_and(|u| u.usernames.contains(&row.username));
        let contested = outside.contains(&row.username)
            || owners.get(&row.username).is_some_and(|o| o.len() > 1);
        let is_winner = winners.get(row.username.as_str()) == Some(&row.host_user_id.as_str());
        if !held || !contested || is_winner {
            v.violate(CONFLICT_FALSE, &row.host_user_id);
        }
    }
    for rows in reported.values() {
        if rows.len() > 1 {
            v.violate("conflict reported twice", &rows[0].host_user_id);
        }
    }
    // Unconfirmed creates: (after a refused create, with no create sent).
    let mut unconfirmed = (0u64, 0u64);
    for (host, name) in &expected_conflicts {
        let rows = reported
            .get(&(*host, *name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let [row] = rows else {
            v.violate(CONFLICT_MISSED, *host);
            continue;
        };
        let holder_ok = match row.reason.as_str() {
            "taken_by_host_user" => {
                row.holder_host_user_id.as_deref() == winners.get(*name).copied()
            }
            "taken_in_embedded" => {
                row.holder_embedded_user_id.as_deref()
                    == embedded.get(*name).map(|u| u.user_id.as_str())
            }
            // A claim whose create's outcome the worker never learnt met
            // the outside holder: a refusal that never reached it (a cut
            // answer, a killed worker: the sandbox refused a create of the
            // name), or no create at all (a worker killed, or its database
            // gone, between the claim and the call). The user found is
            // older than the claim, so never adopted.
            "unconfirmed_create" => {
                if seen.refused_creates.get(*name).copied().unwrap_or(0) > 0 {
                    unconfirmed.0 += 1;
                } else {
                    unconfirmed.1 += 1;
                }
                outside.contains(*name)
                    && row.holder_embedded_user_id.as_deref()
                        == embedded.get(*name).map(|u| u.user_id.as_str())
            }
            _ => false,
        };
        if !holder_ok {
            v.violate("conflict names the wrong holder or reason", *host);
        }
    }

    // Events: nothing lost, every bad one refused with a reason.
    let mut failed_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for EventRow {
        id,
        host_user_id,
        state,
        reason,
        ..
    } in &seen.events
    {
        let who = host_user_id
            .clone()
            .unwrap_or_else(|| format!("event:{id}"));
        match state.as_str() {
            "pending" => v.violate(NOT_APPLIED, who),
            "failed" => {
                *failed_reasons
                    .entry(reason.clone().unwrap_or_default())
                    .or_default() += 1;
                v.violate(NOT_APPLIED, who);
            }
            "invalid" if reason.as_deref().is_none_or(|r| r.trim().is_empty()) => {
                v.violate("bad event without a reason", who)
            }
            "invalid" if good_ids.contains(id) => v.violate("good event refused", who),
            other if bad_ids.contains(id) && other != "invalid" => {
                v.violate("bad event not refused", who)
            }
            _ => {}
        }
    }
    for (reason, n) in failed_reasons {
        eprintln!("chaos: {n} events failed: {reason}");
    }

    // Personal data: none of an erased user in the tables; none of anyone
    // in Redis or in any log; no API key in any log.
    let in_tables = tokens(&seen.tables);
    if in_tables.is_empty() || seen.logs.iter().all(|(_, log)| log.is_empty()) {
        v.violate("leak checks saw nothing to check", "run");
    }
    for token in &in_tables {
        if let Some(Owner::Host(host)) = model.tokens.get(token)
            && model
                .users
                .get(host)
                .is_some_and(|u| !u.open && u.lives > 0)
        {
            v.violate("erased user's data left in a worker table", host);
        }
    }
    for token in tokens(&seen.redis.to_lowercase()) {
        v.violate("personal data in Redis", owner_label(model, &token));
    }
    for (process, log) in &seen.logs {
        for token in tokens(&log.to_lowercase()) {
            v.violate(
                "personal data in a log",
                format!("{process}:{}", owner_label(model, &token)),
            );
        }
        if secrets.iter().any(|key| log.contains(key)) {
            v.violate("API key in a log", process.clone());
        }
    }

    v.figure("embedded users", seen.embedded.len() as u64);
    for (figure, state) in [
        ("events applied", "applied"),
        ("events superseded", "superseded"),
        ("events in conflict", "conflict"),
        ("events invalid", "invalid"),
    ] {
        v.figure(
            figure,
            seen.events.iter().filter(|e| e.state == state).count() as u64,
        );
    }
    v.figure(
        "closures applied",
        seen.events
            .iter()
            .filter(|e| e.kind.as_deref() == Some("account_closure") && e.state == "applied")
            .count() as u64,
    );
    v.figure(
        "log lines checked",
        seen.logs
            .iter()
            .map(|(_, log)| log.lines().count() as u64)
            .sum(),
    );
    v.figure("redis keys checked", seen.redis.lines().count() as u64);
    v.figure("creates", seen.created.len() as u64);
    v.figure(
        "open conflicts",
        seen.conflicts.iter().filter(|c| c.status == "open").count() as u64,
    );
    v.figure("expected conflicts", expected_conflicts.len() as u64);
    v.figure(
        "of them unconfirmed creates after a refusal that never reached the worker",
        unconfirmed.0,
    );
    v.figure(
        "of them unconfirmed creates whose create was never sent (claim, then a crash)",
        unconfirmed.1,
    );
    v.figure("duplicates", v.count(&[DUPLICATE, ORPHAN]));
    v.figure("lost", v.count(&[LOST, NOT_APPLIED]));
    v.figure("false conflicts", v.count(&[CONFLICT_FALSE]));
    v.figure("missed conflicts", v.count(&[CONFLICT_MISSED]));
    v
}

fn owner_label(model: &Model, token: &str) -> String {
    match model.tokens.get(token) {
        Some(Owner::Host(host)) => host.clone(),
        Some(Owner::Nobody) => format!("nobody:{token}"),
        None => format!("unknown:{token}"),
    }
}

/// Every `q_` + 7 digits + `_x` in lower-cased `text`.
pub fn tokens(text: &str) -> BTreeSet<String> {
    const LEN: usize = 11;
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i + LEN <= bytes.len() {
        if bytes[i..i + 2] == *b"q_"
            && bytes[i + 9..i + LEN] == *b"_x"
            && bytes[i + 2..i + 9].iter().all(u8::is_ascii_digit)
        {
            found.insert(String::from_utf8_lossy(&bytes[i..i + LEN]).into_owned());
            i += LEN;
        } else {
            i += 1;
        }
    }
    found
}

/// For a failed run: what the model, the tables and the sandbox say about
/// each host user at fault (written to a file beside the logs, not printed:
/// it holds the run's made-up emails and names).
pub fn diagnose(model: &Model, seen: &Observed, verdict: &Verdict) -> String {
    let mut out = String::new();
    let hosts: BTreeSet<&str> = verdict
        .violations
        .values()
        .flatten()
        .flat_map(|who| who.split(['+', ':']))
        .filter(|id| model.users.contains_key(*id))
        .collect();
    for host in hosts {
        out.push_str(&format!("== {host}\nmodel: {:?}\n", model.users[host]));
        out.push_str(&format!("row: {:?}\n", seen.rows.get(host)));
        for c in seen.conflicts.iter().filter(|c| c.host_user_id == host) {
            out.push_str(&format!("conflict: {c:?}\n"));
        }
        for e in seen
            .events
            .iter()
            .filter(|e| e.host_user_id.as_deref() == Some(host))
        {
            out.push_str(&format!("event: {e:?}\n"));
        }
        for name in &model.users[host].usernames {
            for u in seen
                .created
                .iter()
                .filter(|u| u.username.to_lowercase() == *name)
            {
                out.push_str(&format!("created: {} {}\n", u.user_id, u.username));
            }
            for u in seen
                .embedded
                .iter()
                .filter(|u| u.username.to_lowercase() == *name)
            {
                out.push_str(&format!(
                    "embedded now: {} {} {:?}\n",
                    u.user_id, u.username, u.full_name
                ));
            }
            if model.outside.contains_key(name) {
                out.push_str(&format!("outside-held: {name}\n"));
            }
        }
    }
    out
}
