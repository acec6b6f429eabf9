//! `user-sync install-triggers`: for hosts that cannot write the outbox from
//! their application code, triggers on the host's users table write it for
//! them, in the same transaction as the change.
//!
//! One row trigger, `user_sync_events`, calls one function in schema
//! `user_sync` generated from `[source]`:
//!
//! - a row inserted open: `signup`;
//! - an open row whose email or name changed: `profile_change` (any other
//!   change writes nothing);
//! - a row closed (the closed condition became true) or deleted:
//!   `account_closure`, without email or name;
//! - a closed row opened again: `signup`;
//! - an open row whose id changed: a closure of the old id and a signup of
//!   the new one.
//!
//! Installing again replaces both (idempotent); `--drop` removes them. On
//! SQLite, three triggers do the same (`sqlite`).

mod sqlite;

use sqlx::{Connection, PgConnection};

use super::table::{CheckedTable, Dialect, HostTable};
use crate::config::SourceTarget;
use crate::storage::Database;

/// The trigger's name on the host table.
const TRIGGER: &str = "user_sync_events";

/// `install-triggers`: checks that `[source]` (`target`) is a table of
/// `database`, then installs the triggers on it (or, with `remove`, removes
/// them). Returns what was done, in a line for the operator.
pub async fn install_triggers(
    database: &Database,
    target: &SourceTarget,
    remove: bool,
) -> anyhow::Result<String> {
    match database {
        Database::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            let source = HostTable::check(&mut conn, target).await?;
            let table = source.checked_table()?;
            Ok(if remove {
                let done = drop(&mut conn, table).await?;
                format!(
                    "triggers removed from {} ({}() dropped)",
                    done.table, done.function
                )
            } else {
                let done = install(&mut conn, table).await?;
                format!(
                    "triggers installed on {}: {TRIGGER} calls {}()",
                    done.table, done.function
                )
            })
        }
        Database::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            let source = HostTable::check_sqlite(&mut conn, target).await?;
            let table = source.checked_table()?;
            Ok(if remove {
                let done = sqlite::drop(&mut conn, table).await?;
                format!("triggers removed from {} ({})", done.table, done.function)
            } else {
                let done = sqlite::install(&mut conn, table).await?;
                format!("triggers installed on {}: {}", done.table, done.function)
            })
        }
    }
}

/// What `install-triggers` did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    table: String,
    function: String,
}

/// Creates (or replaces) the trigger and its function on `table`.
async fn install(conn: &mut PgConnection, table: &CheckedTable) -> anyhow::Result<Installed> {
    let outbox: Option<String> = sqlx::query_scalar("SELECT to_regclass('user_sync.events')::text")
        .fetch_one(&mut *conn)
        .await?;
    anyhow::ensure!(
        outbox.is_some(),
        "schema user_sync has no outbox yet: run `user-sync migrate` first"
    );
    let function = function_name(table);
    let body = function_body(table);
    in_one_transaction(
        conn,
        [
            format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $user_sync$\n{body}\n$user_sync$"
            ),
            drop_trigger(table),
            format!(
                "CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {} \
                 FOR EACH ROW EXECUTE FUNCTION {function}()",
                table.qualified
            ),
        ],
    )
    .await?;
    Ok(Installed {
        table: table.qualified.clone(),
        function,
    })
}

/// Removes the trigger and its function; nothing to remove is fine.
async fn drop(conn: &mut PgConnection, table: &CheckedTable) -> anyhow::Result<Installed> {
    let function = function_name(table);
    in_one_transaction(
        conn,
        [
            drop_trigger(table),
            format!("DROP FUNCTION IF EXISTS {function}()"),
        ],
    )
    .await?;
    Ok(Installed {
        table: table.qualified.clone(),
        function,
    })
}

/// Removes the trigger from `table`, if it is there.
fn drop_trigger(table: &CheckedTable) -> String {
    format!("DROP TRIGGER IF EXISTS {TRIGGER} ON {}", table.qualified)
}

/// Runs `statements` in one transaction: all of them, or none.
async fn in_one_transaction<C>(
    conn: &mut C,
    statements: impl IntoIterator<Item = String>,
) -> anyhow::Result<()>
where
    C: Connection,
    for<'c> &'c mut <C::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
{
    let mut tx = conn.begin().await?;
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `user_sync.events_from_<schema>_<table>`, sanitised.
fn function_name(table: &CheckedTable) -> String {
    format!(
        "user_sync.{}",
        sanitised(&format!("events_from_{}_{}", table.schema, table.name))
    )
}

/// `raw` as an identifier: every character that is not a letter, a digit
/// or `_` replaced, cut to 63 bytes, with a fingerprint of `raw` when it
/// had to change (two names that sanitise alike must not collide).
fn sanitised(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > 63 || name != raw.to_ascii_lowercase() {
        let tag = crate::domain::fingerprint(raw);
        name.truncate(63 - tag.len() - 1);
        name = format!("{name}_{tag}");
    }
    name
}

/// The PL/pgSQL of the trigger function. The row is read through
/// `SELECT ... FROM (SELECT (NEW).*)` so that the configured closed
/// condition, written over the table's columns, applies to it unchanged.
fn function_body(table: &CheckedTable) -> String {
    let id = &table.id;
    let email = &table.email;
    let (name, open) = (table.name(Dialect::Postgres), table.open(Dialect::Postgres));
    let read = |row: &str, prefix: &str| {
        format!(
            "SELECT {id}::text, {email}::text, {name}, {open}
             INTO us_{prefix}_id, us_{prefix}_email, us_{prefix}_name, us_{prefix}_open
             FROM (SELECT ({row}).*) AS us_row;"
        )
    };
    let read_old = read("OLD", "old");
    let read_new = read("NEW", "new");
    format!(
        "#variable_conflict use_column
DECLARE
    us_old_id text; us_old_email text; us_old_name text; us_old_open boolean := false;
    us_new_id text; us_new_email text; us_new_name text; us_new_open boolean := false;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {read_old}
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {read_new}
    END IF;
    IF us_old_open AND (NOT us_new_open OR us_new_id IS DISTINCT FROM us_old_id) THEN
        INSERT INTO user_sync.events (host_user_id, kind)
        VALUES (us_old_id, 'account_closure');
    END IF;
    IF us_new_open AND (NOT us_old_open OR us_new_id IS DISTINCT FROM us_old_id) THEN
        INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
        VALUES (us_new_id, 'signup', us_new_email, us_new_name);
    ELSIF us_new_open AND (us_new_email IS DISTINCT FROM us_old_email
                           OR us_new_name IS DISTINCT FROM us_old_name) THEN
        INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
        VALUES (us_new_id, 'profile_change', us_new_email, us_new_name);
    END IF;
    RETURN NULL;
END"
    )
}
