//! The demo's host product: a users table of a small SaaS, seeded the same
//! way on every run, and the live traffic it sends through the outbox.
//!
//! Every value is made up from the account number (no randomness), so two
//! runs of the demo tell the same story and a test can check it.

use sqlx::SqlitePool;

const FIRST: [&str; 24] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "Leslie",
    "Hedy",
    "John",
    "Katherine",
    "Tim",
    "Sophie",
    "Linus",
    "Annie",
    "Niklaus",
    "Jean",
    "Bjarne",
    "Shafi",
    "Guido",
];
const LAST: [&str; 20] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Lamport",
    "Lamarr",
    "Backus",
    "Johnson",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Easley",
    "Wirth",
];
const DOMAINS: [&str; 5] = [
    "example.com",
    "example.org",
    "mail.example",
    "corp.example",
    "example.net",
];

/// Every this-many-th historical account is closed (the backfill skips it).
const CLOSED_EVERY: i64 = 40;
/// Historical accounts that repeat the email of accounts 1..=this in another
/// letter case: each is a conflict with the first.
pub const DUPLICATE_EMAILS: i64 = 4;
/// Historical accounts whose username someone already holds in Embedded
/// (created outside the worker): each is a conflict.
pub const HELD_IN_EMBEDDED: [i64; 3] = [7, 11, 13];

/// The name of account `id`.
fn full_name(id: i64) -> String {
    let first = FIRST[(id as usize * 7) % FIRST.len()];
    let last = LAST[(id as usize * 11) % LAST.len()];
    format!("{first} {last}")
}

/// The email of account `id`, as a host keeps it (some in mixed case: the
/// username is the email trimmed and lower-cased).
pub fn email(id: i64) -> String {
    let name = full_name(id).to_lowercase().replace([' ', '-'], ".");
    let domain = DOMAINS[(id as usize) % DOMAINS.len()];
    let email = format!("{name}.{id}@{domain}");
    if id % 9 == 0 {
        email.to_uppercase()
    } else {
        email
    }
}

pub fn is_closed(id: i64) -> bool {
    id % CLOSED_EVERY == 0
}

/// What was seeded, for the summary and the checks.
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    pub accounts: i64,
    pub open: i64,
    pub closed: i64,
    /// Host ids that must end in a reported conflict.
    pub conflicts: Vec<String>,
}

/// Creates `accounts` with `n` historical users (plus the duplicates).
pub async fn accounts(pool: &SqlitePool, n: i64) -> sqlx::Result<Seeded> {
    sqlx::query(
        "CREATE TABLE accounts (
             id INTEGER PRIMARY KEY, email TEXT NOT NULL, full_name TEXT,
             plan TEXT NOT NULL DEFAULT 'free', closed_at TEXT)",
    )
    .execute(pool)
    .await?;
    let mut seeded = Seeded::default();
    let mut tx = pool.begin().await?;
    let mut add = async |id: i64, email: &str, closed: bool| {
        sqlx::query(
            "INSERT INTO accounts (id, email, full_name, closed_at)
             VALUES (?1, ?2, ?3, CASE WHEN ?4 THEN datetime('now') END)",
        )
        .bind(id)
        .bind(email)
        .bind(full_name(id))
        .bind(closed)
        .execute(&mut *tx)
        .await
    };
    for id in 1..=n {
        add(id, &email(id), is_closed(id)).await?;
    }
    for k in 1..=DUPLICATE_EMAILS {
        let id = n + k;
        add(id, &format!(" {} ", email(k).to_uppercase()), false).await?;
    }
    tx.commit().await?;
    seeded.accounts = n + DUPLICATE_EMAILS;
    seeded.closed = (1..=n).filter(|id| is_closed(*id)).count() as i64;
    seeded.open = seeded.accounts - seeded.closed;
    seeded.conflicts = (1..=DUPLICATE_EMAILS)
        .map(|k| (n + k).to_string())
        .chain(HELD_IN_EMBEDDED.iter().map(i64::to_string))
        .collect();
    Ok(seeded)
}

/// The live traffic, after the backfill.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    pub signups: i64,
    /// Signups whose email another account already has: conflicts.
    pub conflicting_signups: Vec<String>,
    pub profile_changes: i64,
    /// Host ids closed (each must end deleted and erased).
    pub closures: Vec<String>,
}

/// Accounts the burst changes or closes: open and synced after the backfill.
fn live(n: i64) -> impl Iterator<Item = i64> {
    (DUPLICATE_EMAILS + 1..=n).filter(|id| !is_closed(*id) && !HELD_IN_EMBEDDED.contains(id))
}

/// Signups, profile changes and closures, each one host transaction that
/// changes `accounts` and writes the outbox, as the outbox contract asks.
pub async fn burst(pool: &SqlitePool, n: i64, size: i64) -> sqlx::Result<Burst> {
    let mut burst = Burst::default();
    let first_new = n + DUPLICATE_EMAILS + 1;
    let changes: Vec<i64> = live(n).take(size as usize * 2 / 3).collect();
    let closures: Vec<i64> = live(n)
        .skip(changes.len())
        .take(size as usize / 3)
        .collect();
    for step in 0..size {
        // Interleaved, as real traffic is.
        let id = first_new + step;
        signup(pool, id, &email(id)).await?;
        burst.signups += 1;
        if let Some(&id) = changes.get(step as usize) {
            let email = if id % 5 == 0 {
                email(id).replace('@', ".new@")
            } else {
                email(id)
            };
            change(pool, id, &email, &format!("{} (renamed)", full_name(id))).await?;
            burst.profile_changes += 1;
        }
        if let Some(&id) = closures.get(step as usize) {
            close(pool, id).await?;
            burst.closures.push(id.to_string());
        }
    }
    // Two signups with emails other accounts hold (accounts the burst does
    // not touch).
    for (k, taken) in [(size, n - 1), (size + 1, n - 3)] {
        let id = first_new + k;
        signup(pool, id, &email(taken).to_uppercase()).await?;
        burst.conflicting_signups.push(id.to_string());
    }
    Ok(burst)
}

async fn signup(pool: &SqlitePool, id: i64, email: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO accounts (id, email, full_name) VALUES (?1, ?2, ?3)")
        .bind(id)
        .bind(email)
        .bind(full_name(id))
        .execute(&mut *tx)
        .await?;
    let name = full_name(id);
    outbox(&mut tx, id, "signup", Some(email), Some(&name)).await?;
    tx.commit().await
}

async fn change(pool: &SqlitePool, id: i64, email: &str, name: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE accounts SET email = ?2, full_name = ?3 WHERE id = ?1")
        .bind(id)
        .bind(email)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    outbox(&mut tx, id, "profile_change", Some(email), Some(name)).await?;
    tx.commit().await
}

async fn close(pool: &SqlitePool, id: i64) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE accounts SET closed_at = datetime('now') WHERE id = ?1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    outbox(&mut tx, id, "account_closure", None, None).await?;
    tx.commit().await
}

/// The outbox contract's one statement, in the host's transaction.
async fn outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    kind: &str,
    email: Option<&str>,
    name: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync_events (host_user_id, kind, email, full_name)
         VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(id.to_string())
    .bind(kind)
    .bind(email)
    .bind(name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
