//! `install-triggers` on SQLite: three triggers (insert, update, delete) on
//! the host's table write `user_sync_events` in the same transaction as the
//! change, with the same rules as the PostgreSQL function (see the parent
//! module).
//!
//! SQLite triggers see the row only as `NEW.column` and `OLD.column`, while
//! the configured closed condition is written over bare column names: each
//! trigger rebuilds the row as a one-row subquery with the table's own
//! column names, and reads the id, email, name and condition from it.

use sqlx::SqliteConnection;

use super::{Installed, in_one_transaction};
use crate::host::table::{CheckedTable, Dialect, quote_sqlite};

/// The triggers' names: `user_sync_events_<operation>_<table>`.
fn trigger_names(table: &CheckedTable) -> [String; 3] {
    let tag = super::sanitised(&table.name);
    ["insert", "update", "delete"].map(|op| format!("user_sync_events_{op}_{tag}"))
}

/// Creates (or replaces) the triggers on `table`.
pub(super) async fn install(
    conn: &mut SqliteConnection,
    table: &CheckedTable,
) -> anyhow::Result<Installed> {
    let outbox: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_sync_events')",
    )
    .fetch_one(&mut *conn)
    .await?;
    anyhow::ensure!(
        outbox,
        "the database has no outbox yet: run `user-sync migrate` first"
    );
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
        .bind(&table.name)
        .fetch_all(&mut *conn)
        .await?;
    let row = |of: &str| {
        let fields: Vec<String> = columns
            .iter()
            .map(|c| {
                let quoted = quote_sqlite(c);
                format!("{of}.{quoted} AS {quoted}")
            })
            .collect();
        let (name, open) = (table.name(Dialect::Sqlite), table.open(Dialect::Sqlite));
        format!(
            "(SELECT CAST({id} AS TEXT) AS id, CAST({email} AS TEXT) AS email, {name} AS name,
                     {open} AS open
              FROM (SELECT {fields}) AS us_row)",
            id = table.id,
            email = table.email,
            fields = fields.join(", "),
        )
    };
    let (new, old) = (row("NEW"), row("OLD"));
    let [on_insert, on_update, on_delete] = trigger_names(table);
    let qualified = &table.qualified;
    let statements = [
        format!("DROP TRIGGER IF EXISTS {on_insert}"),
        format!("DROP TRIGGER IF EXISTS {on_update}"),
        format!("DROP TRIGGER IF EXISTS {on_delete}"),
        format!(
            "CREATE TRIGGER {on_insert} AFTER INSERT ON {qualified} BEGIN
                 INSERT INTO user_sync_events (host_user_id, kind, email, full_name)
                 SELECT n.id, 'signup', n.email, n.name FROM {new} AS n WHERE n.open;
             END"
        ),
        format!(
            "CREATE TRIGGER {on_update} AFTER UPDATE ON {qualified} BEGIN
                 INSERT INTO user_sync_events (host_user_id, kind)
                 SELECT o.id, 'account_closure' FROM {old} AS o, {new} AS n
                 WHERE o.open AND (NOT n.open OR n.id IS NOT o.id);
                 INSERT INTO user_sync_events (host_user_id, kind, email, full_name)
                 SELECT n.id, 'signup', n.email, n.name FROM {old} AS o, {new} AS n
                 WHERE n.open AND (NOT o.open OR n.id IS NOT o.id);
                 INSERT INTO user_sync_events (host_user_id, kind, email, full_name)
                 SELECT n.id, 'profile_change', n.email, n.name FROM {old} AS o, {new} AS n
                 WHERE n.open AND o.open AND n.id IS o.id
                   AND (n.email IS NOT o.email OR n.name IS NOT o.name);
             END"
        ),
        format!(
            "CREATE TRIGGER {on_delete} AFTER DELETE ON {qualified} BEGIN
                 INSERT INTO user_sync_events (host_user_id, kind)
                 SELECT o.id, 'account_closure' FROM {old} AS o WHERE o.open;
             END"
        ),
    ];
    in_one_transaction(conn, statements).await?;
    Ok(Installed {
        table: table.qualified.clone(),
        function: format!("{on_insert}, {on_update}, {on_delete}"),
    })
}

/// Removes the triggers; nothing to remove is fine.
pub(super) async fn drop(
    conn: &mut SqliteConnection,
    table: &CheckedTable,
) -> anyhow::Result<Installed> {
    let names = trigger_names(table);
    let statements = names
        .iter()
        .map(|name| format!("DROP TRIGGER IF EXISTS {name}"));
    in_one_transaction(conn, statements).await?;
    Ok(Installed {
        table: table.qualified.clone(),
        function: names.join(", "),
    })
}
