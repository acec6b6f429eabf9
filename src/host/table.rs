//! The host's users, as `[source]` describes them: checked against the
//! database once, then read in keyset pages.
//!
//! A page is `WHERE id > $last ORDER BY id LIMIT n` on the id column's own
//! type (so the table's index serves it), never `OFFSET`, and never more
//! than one page in memory. A custom query is paged the same way on its
//! `host_user_id` column, as text.
//!
//! The host's rows are read as they are, not as they should be (see
//! `storage::written`): values decoded whatever they hold and bounded in
//! the SQL, so that a Latin-1 email or a name of megabytes is one row
//! reported and skipped, never an error that stops the run at the same
//! page every time. Where a page ends is the last row's id as the database
//! holds it ([`PageKey`]: on SQLite an integer, text or a BLOB, and text
//! whose bytes are not UTF-8), bound back in its own kind, so that the next
//! page starts right after it. Rows without an id are in no page (SQLite
//! sorts them first, and a first page of them alone ended the run): they
//! are counted apart ([`HostTable::count_without_id`]) and reported.
//!
//! The table, the columns and the closed-account condition come from the
//! operator's configuration, not from users: identifiers are quoted by
//! PostgreSQL itself (`regclass`, `quote_ident`), and the condition and the
//! query are SQL by design.

use std::future::Future;

use sqlx::{PgConnection, SqliteConnection};

use crate::config::{SourceTable, SourceTarget};
use crate::storage::Written;

/// One host user as the source holds it, before any parsing: each value
/// read up to its bound (`storage::written`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostRow {
    pub host_user_id: Option<Written>,
    pub email: Option<Written>,
    pub full_name: Option<Written>,
    /// The row's id as the database holds it: where the next page starts.
    pub page_key: PageKey,
}

/// An id as the database holds it, to start the next page after it.
#[derive(Debug, Clone, PartialEq)]
pub enum PageKey {
    Integer(i64),
    Real(f64),
    /// Text, its bytes as stored (on SQLite they need not be UTF-8).
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl PageKey {
    /// The key as text: what PostgreSQL's keys are (`id::text`, UTF-8 in a
    /// database the worker runs on).
    fn as_text(&self) -> String {
        match self {
            Self::Integer(n) => n.to_string(),
            Self::Real(x) => x.to_string(),
            Self::Text(bytes) | Self::Blob(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

impl sqlx::Type<sqlx::Sqlite> for PageKey {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <Vec<u8> as sqlx::Type<sqlx::Sqlite>>::type_info()
    }

    fn compatible(_: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        true
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for PageKey {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::{Decode, TypeInfo, ValueRef};
        let kind = value.type_info().name().to_owned();
        Ok(match kind.as_str() {
            "INTEGER" => Self::Integer(<i64 as Decode<sqlx::Sqlite>>::decode(value)?),
            "REAL" => Self::Real(<f64 as Decode<sqlx::Sqlite>>::decode(value)?),
            "TEXT" => Self::Text(<Vec<u8> as Decode<sqlx::Sqlite>>::decode(value)?),
            _ => Self::Blob(<Vec<u8> as Decode<sqlx::Sqlite>>::decode(value)?),
        })
    }
}

impl sqlx::Type<sqlx::Postgres> for PageKey {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

/// On PostgreSQL a page key is the id as text (`id::text`).
impl<'r> sqlx::Decode<'r, sqlx::Postgres> for PageKey {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Self::Text(value.as_bytes()?.to_vec()))
    }
}

/// Why the source cannot be read, naming the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source.table: no table or view named {0:?} in the database")]
    UnknownTable(String),
    #[error("{key}: table {table} has no column {column:?}")]
    UnknownColumn {
        key: &'static str,
        table: String,
        column: String,
    },
    #[error("source.closed_condition is not a valid condition on {table}: {reason}")]
    BadCondition { table: String, reason: String },
    #[error("source.query does not run: {0}")]
    BadQuery(String),
    #[error("source.query must return the columns host_user_id, email and full_name; {0}")]
    QueryColumns(String),
    #[error("install-triggers needs source.table: triggers cannot be put on a query")]
    NotATable,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A `[source]` checked against the database: its SQL, ready to page.
#[derive(Debug, Clone)]
pub struct HostTable {
    /// The first page: no lower bound.
    first_page: String,
    /// Every later page: `$1` rows from the last id of the page before
    /// (`$2`, and its kind `$3` on SQLite), that id included.
    next_page: String,
    /// Open accounts, for the progress bar.
    count_open: String,
    /// Closed accounts, skipped (`None` for a query, which returns open
    /// accounts only).
    count_closed: Option<String>,
    /// Open accounts without an id, in no page.
    count_without_id: String,
    /// The table and its quoted columns, for the triggers.
    pub table: Option<CheckedTable>,
}

/// A host table whose names PostgreSQL has quoted.
#[derive(Debug, Clone)]
pub struct CheckedTable {
    /// Schema-qualified and quoted, e.g. `public.accounts`.
    pub qualified: String,
    /// Schema and table name, unquoted, for naming the triggers.
    pub schema: String,
    pub name: String,
    pub id: String,
    pub email: String,
    pub name_column: Option<String>,
    pub closed_condition: Option<String>,
}

/// The backend a statement over the host's table is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl CheckedTable {
    /// Whether a row of the table is open (the closed condition does not
    /// hold), over its bare columns.
    pub fn open(&self, dialect: Dialect) -> String {
        match (&self.closed_condition, dialect) {
            (Some(condition), Dialect::Postgres) => format!("NOT COALESCE(({condition}), false)"),
            (Some(condition), Dialect::Sqlite) => format!("NOT COALESCE(({condition}), 0)"),
            (None, Dialect::Postgres) => "true".to_owned(),
            (None, Dialect::Sqlite) => "1".to_owned(),
        }
    }

    /// A row's name as text (`NULL` without a name column).
    pub fn name(&self, dialect: Dialect) -> String {
        match (self.name_column.as_deref(), dialect) {
            (Some(n), Dialect::Postgres) => format!("{n}::text"),
            (Some(n), Dialect::Sqlite) => format!("CAST({n} AS TEXT)"),
            (None, Dialect::Postgres) => "NULL::text".to_owned(),
            (None, Dialect::Sqlite) => "NULL".to_owned(),
        }
    }
}

impl HostTable {
    /// Checks the configured source against the database: the table and its
    /// columns exist, the condition and the query run. Errors name the key.
    pub async fn check(
        conn: &mut PgConnection,
        target: &SourceTarget,
    ) -> Result<Self, SourceError> {
        match target {
            SourceTarget::Table(table) => Self::check_table(conn, table).await,
            SourceTarget::Query(query) => Self::check_query(conn, query).await,
        }
    }

    async fn check_table(
        conn: &mut PgConnection,
        config: &SourceTable,
    ) -> Result<Self, SourceError> {
        let found: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT c.oid::bigint, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                    n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)",
        )
        .bind(&config.table)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((oid, qualified, schema, name)) = found else {
            return Err(SourceError::UnknownTable(config.table.clone()));
        };
        let column = async |conn: &mut PgConnection, key: &'static str, column: &str| {
            let found: Option<(String, String)> = sqlx::query_as(
                "SELECT quote_ident(attname), format_type(atttypid, atttypmod) FROM pg_attribute
                 WHERE attrelid = $1::bigint::oid AND attname = $2 AND attnum > 0
                   AND NOT attisdropped",
            )
            .bind(oid)
            .bind(column)
            .fetch_optional(conn)
            .await?;
            found.ok_or_else(|| SourceError::UnknownColumn {
                key,
                table: qualified.clone(),
                column: column.to_owned(),
            })
        };
        let (id, id_type) = column(&mut *conn, "source.id_column", &config.id_column).await?;
        let (email, _) = column(&mut *conn, "source.email_column", &config.email_column).await?;
        let name_column = match &config.name_column {
            Some(name) => Some(column(&mut *conn, "source.name_column", name).await?.0),
            None => None,
        };
        let table = CheckedTable {
            qualified: qualified.clone(),
            schema,
            name,
            id,
            email,
            name_column,
            closed_condition: config.closed_condition.clone(),
        };
        let (open, name_expr) = (table.open(Dialect::Postgres), table.name(Dialect::Postgres));
        // Each value up to its bound (`storage::written`).
        let select = format!(
            "SELECT substr({id}::text, 1, 256) AS host_user_id,
                    substr({email}::text, 1, 1025) AS email,
                    substr({name_expr}, 1, 1025) AS full_name, {id}::text AS page_key
             FROM {qualified}",
            id = table.id,
            email = table.email,
        );
        let after = format!("$2::text::{id_type}");
        let source = Self::of_table(table, &select, &open, ("$1", &after));
        // The condition is the operator's SQL: see that it runs before
        // anything else does.
        let probe = format!("{} LIMIT 0", source.count_open);
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(probe))
            .execute(&mut *conn)
            .await
        {
            return Err(SourceError::BadCondition {
                table: qualified,
                reason: database_message(&e),
            });
        }
        Ok(source)
    }

    async fn check_query(conn: &mut PgConnection, query: &str) -> Result<Self, SourceError> {
        let select = format!(
            "SELECT substr(q.host_user_id::text, 1, 256) AS host_user_id,
                    substr(q.email::text, 1, 1025) AS email,
                    substr(q.full_name::text, 1, 1025) AS full_name,
                    q.host_user_id::text AS page_key
             FROM ({query}) AS q"
        );
        let probe = format!("{select} LIMIT 0");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(probe))
            .execute(&mut *conn)
            .await
        {
            let message = database_message(&e);
            return Err(if message.contains("column") && message.contains("q.") {
                SourceError::QueryColumns(message)
            } else {
                SourceError::BadQuery(message)
            });
        }
        let key = "q.host_user_id::text COLLATE \"C\"";
        Ok(Self::of_query(
            query,
            &select,
            key,
            ("$1", "$2"),
            "q.host_user_id",
        ))
    }

    /// The statements of a table source: `select` (its rows' columns)
    /// where `open`, in a dialect's (limit, lower bound) parameters.
    fn of_table(
        table: CheckedTable,
        select: &str,
        open: &str,
        (limit, after): (&str, &str),
    ) -> Self {
        let (id, qualified) = (&table.id, &table.qualified);
        Self {
            first_page: format!(
                "{select} WHERE {id} IS NOT NULL AND {open} ORDER BY {id} LIMIT {limit}"
            ),
            next_page: format!(
                "{select} WHERE {id} >= {after} AND {open} ORDER BY {id} LIMIT {limit}"
            ),
            count_open: format!("SELECT count(*) FROM {qualified} WHERE {open}"),
            count_closed: table
                .closed_condition
                .as_ref()
                .map(|_| format!("SELECT count(*) FROM {qualified} WHERE NOT ({open})")),
            count_without_id: format!(
                "SELECT count(*) FROM {qualified} WHERE {id} IS NULL AND {open}"
            ),
            table: Some(table),
        }
    }

    /// The statements of a query source: `select` over `query`, paged on
    /// `key`, in a dialect's (limit, lower bound) parameters; `id` is the
    /// query's id column.
    fn of_query(
        query: &str,
        select: &str,
        key: &str,
        (limit, after): (&str, &str),
        id: &str,
    ) -> Self {
        Self {
            first_page: format!("{select} WHERE {id} IS NOT NULL ORDER BY {key} LIMIT {limit}"),
            next_page: format!("{select} WHERE {key} >= {after} ORDER BY {key} LIMIT {limit}"),
            count_open: format!("SELECT count(*) FROM ({query}) AS q"),
            count_closed: None,
            count_without_id: format!("SELECT count(*) FROM ({query}) AS q WHERE {id} IS NULL"),
            table: None,
        }
    }

    /// [`Self::check`] on a SQLite database: the table (`[main.]name`) and
    /// its columns exist (`pragma_table_info`), the condition and the query
    /// run. Identifiers are quoted here, as SQLite quotes them.
    pub async fn check_sqlite(
        conn: &mut SqliteConnection,
        target: &SourceTarget,
    ) -> Result<Self, SourceError> {
        let source = match target {
            SourceTarget::Table(config) => {
                let name = config.table.strip_prefix("main.").unwrap_or(&config.table);
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
                        .bind(name)
                        .fetch_all(&mut *conn)
                        .await?;
                if columns.is_empty() {
                    return Err(SourceError::UnknownTable(config.table.clone()));
                }
                let qualified = quote_sqlite(name);
                let column = |key: &'static str, column: &str| {
                    if columns.iter().any(|c| c == column) {
                        Ok(quote_sqlite(column))
                    } else {
                        Err(SourceError::UnknownColumn {
                            key,
                            table: qualified.clone(),
                            column: column.to_owned(),
                        })
                    }
                };
                let id = column("source.id_column", &config.id_column)?;
                let email = column("source.email_column", &config.email_column)?;
                let name_column = config
                    .name_column
                    .as_deref()
                    .map(|n| column("source.name_column", n))
                    .transpose()?;
                let table = CheckedTable {
                    qualified: qualified.clone(),
                    schema: "main".into(),
                    name: name.to_owned(),
                    id,
                    email,
                    name_column,
                    closed_condition: config.closed_condition.clone(),
                };
                let (open, name_expr) = (table.open(Dialect::Sqlite), table.name(Dialect::Sqlite));
                // Each value up to its bound (`storage::written`); the id
                // as the table holds it too, where the next page starts.
                let select = format!(
                    "SELECT substr(CAST({id} AS TEXT), 1, 256) AS host_user_id,
                            substr(CAST({email} AS TEXT), 1, 1025) AS email,
                            substr({name_expr}, 1, 1025) AS full_name, {id} AS page_key
                     FROM {qualified}",
                    id = table.id,
                    email = table.email,
                );
                // The last id, bound in its own kind ([`PageKey`]): ids
                // compare as the column holds them, in the order of its
                // index.
                Self::of_table(table, &select, &open, ("?1", SQLITE_AFTER))
            }
            SourceTarget::Query(query) => {
                let select = format!(
                    "SELECT substr(CAST(q.host_user_id AS TEXT), 1, 256) AS host_user_id,
                            substr(CAST(q.email AS TEXT), 1, 1025) AS email,
                            substr(CAST(q.full_name AS TEXT), 1, 1025) AS full_name,
                            CAST(q.host_user_id AS TEXT) AS page_key
                     FROM ({query}) AS q"
                );
                let key = "CAST(q.host_user_id AS TEXT)";
                Self::of_query(query, &select, key, ("?1", SQLITE_AFTER), "q.host_user_id")
            }
        };
        // The operator's SQL: see that it runs before anything else does.
        let probe = format!("{} LIMIT 0", source.first_page.replace("LIMIT ?1", ""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(probe))
            .execute(&mut *conn)
            .await
        {
            let reason = database_message(&e);
            return Err(match &source.table {
                Some(table) => SourceError::BadCondition {
                    table: table.qualified.clone(),
                    reason,
                },
                None if reason.contains("no such column") => SourceError::QueryColumns(reason),
                None => SourceError::BadQuery(reason),
            });
        }
        Ok(source)
    }

    /// Up to `limit` host users with an id from `after` on (the last id of
    /// the page before, whose rows come again first; `None` for the first
    /// page), in id order.
    pub async fn page(
        &self,
        conn: &mut impl SourceConnection,
        after: Option<&PageKey>,
        limit: u32,
    ) -> sqlx::Result<Vec<HostRow>> {
        let sql = match after {
            None => &self.first_page,
            Some(_) => &self.next_page,
        };
        conn.rows(sql, limit, after).await
    }

    /// Open accounts.
    pub async fn count_open(&self, conn: &mut impl SourceConnection) -> sqlx::Result<u64> {
        conn.count(&self.count_open).await
    }

    /// Open accounts without an id: in no page, each one invalid.
    pub async fn count_without_id(&self, conn: &mut impl SourceConnection) -> sqlx::Result<u64> {
        conn.count(&self.count_without_id).await
    }

    /// Closed accounts of a table source; `None` for a query.
    pub async fn count_closed(
        &self,
        conn: &mut impl SourceConnection,
    ) -> sqlx::Result<Option<u64>> {
        match &self.count_closed {
            Some(sql) => Ok(Some(conn.count(sql).await?)),
            None => Ok(None),
        }
    }

    /// The checked table, for the triggers.
    pub fn checked_table(&self) -> Result<&CheckedTable, SourceError> {
        self.table.as_ref().ok_or(SourceError::NotATable)
    }
}

/// A connection the host's users are read on, PostgreSQL's or SQLite's:
/// it runs a [`HostTable`]'s statements, which are written in its dialect.
pub trait SourceConnection: Send {
    /// The rows of a page statement, `limit` bound first and `after` (when
    /// there is one) after it, as the dialect's statements take it.
    fn rows<'a>(
        &'a mut self,
        sql: &'a str,
        limit: u32,
        after: Option<&'a PageKey>,
    ) -> impl Future<Output = sqlx::Result<Vec<HostRow>>> + Send;
    /// The number a counting statement returns.
    fn count<'a>(&'a mut self, sql: &'a str) -> impl Future<Output = sqlx::Result<u64>> + Send;
}

/// Where SQLite's next page starts: after `?2` in the kind `?3` says. Text
/// is bound as its bytes and made text again here (its bytes need not be
/// UTF-8, which a bound text must be); an integer, a real and a BLOB are
/// bound as themselves.
const SQLITE_AFTER: &str = "(CASE ?3 WHEN 'text' THEN CAST(?2 AS TEXT) ELSE ?2 END)";

impl SourceConnection for PgConnection {
    async fn rows(
        &mut self,
        sql: &str,
        limit: u32,
        after: Option<&PageKey>,
    ) -> sqlx::Result<Vec<HostRow>> {
        let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(i64::from(limit));
        match after {
            Some(key) => query.bind(key.as_text()),
            None => query,
        }
        .fetch_all(self)
        .await
    }

    async fn count(&mut self, sql: &str) -> sqlx::Result<u64> {
        count(self, sql).await
    }
}

impl SourceConnection for SqliteConnection {
    async fn rows(
        &mut self,
        sql: &str,
        limit: u32,
        after: Option<&PageKey>,
    ) -> sqlx::Result<Vec<HostRow>> {
        let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(i64::from(limit));
        match after {
            Some(PageKey::Integer(n)) => query.bind(*n).bind("integer"),
            Some(PageKey::Real(x)) => query.bind(*x).bind("real"),
            Some(PageKey::Text(bytes)) => query.bind(bytes.clone()).bind("text"),
            Some(PageKey::Blob(bytes)) => query.bind(bytes.clone()).bind("blob"),
            None => query,
        }
        .fetch_all(self)
        .await
    }

    async fn count(&mut self, sql: &str) -> sqlx::Result<u64> {
        count(self, sql).await
    }
}

async fn count<C>(conn: &mut C, sql: &str) -> sqlx::Result<u64>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    (i64,): for<'r> sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// An identifier as SQLite quotes it.
pub(super) fn quote_sqlite(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The server's message for a failed statement, in one line.
fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}
