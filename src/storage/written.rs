//! Values the host writes, as the worker reads them: never trusted to be
//! text, never read whole.
//!
//! A host fills the outbox's text columns (and its own users table's) with
//! whatever its code has. On SQLite nothing stops a BLOB, or text whose
//! bytes are not UTF-8 (a legacy Latin-1 email); PostgreSQL checks text
//! against the database's encoding, and the worker refuses a database of
//! encoding SQL_ASCII, the one that checks nothing (`pg::migrate`). A value
//! that cannot be decoded is [`Written::NotText`] or [`Written::NotUtf8`]
//! for its own row, never an error of the statement that read it: that
//! error would fail every row read with it (a dispatcher's batch, a job's
//! users, a backfill's page), and they would be read again, and fail
//! again, forever.
//!
//! A host can also write megabytes where an email belongs. Each statement
//! reads at most one character more than the bound of its column
//! (`substr(x, 1, BOUND + 1)`: PostgreSQL then reads only the first
//! chunks of a large value), and a value that fills the read was longer
//! than the bound: refused with its column and the bound, never taken for
//! its prefix. The bounds sit here, and the SQL that reads each column
//! spells `BOUND + 1` beside a reference to them.

use std::fmt;

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Postgres, Sqlite, Type, TypeInfo, ValueRef};

use crate::domain::MAX_HOST_USER_ID_LEN;

/// The most characters of a host user id read (`substr(…, 1, 256)`): one
/// more than the longest id accepted, so that a longer one is refused as
/// too long.
pub const HOST_USER_ID_BOUND: usize = MAX_HOST_USER_ID_LEN;
/// Of a kind (`substr(…, 1, 65)`): far more than the longest kind.
pub const KIND_BOUND: usize = 64;
/// Of an email or a full name as written, white space included
/// (`substr(…, 1, 1025)`): four times the longest of either once trimmed.
pub const VALUE_BOUND: usize = 1024;

/// One text column as the host wrote it.
#[derive(Clone, PartialEq, Eq)]
pub enum Written {
    Text(String),
    /// A BLOB (SQLite), or any value that is not text.
    NotText,
    /// Text whose bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text may be an email or a name: its length only.
        match self {
            Self::Text(text) => write!(f, "Text(<{} characters>)", text.chars().count()),
            Self::NotText => f.write_str("NotText"),
            Self::NotUtf8 => f.write_str("NotUtf8"),
        }
    }
}

/// Why a column's value cannot be used as the host wrote it. Never holds
/// the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unusable {
    pub column: &'static str,
    pub problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    NotText,
    NotUtf8,
    /// Longer than this many characters, as written.
    LongerThan(usize),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = self.column;
        match self.problem {
            Problem::NotText => write!(f, "{column} is not text (the host wrote a BLOB)"),
            Problem::NotUtf8 => write!(
                f,
                "{column} is not valid UTF-8 (text in another encoding, such as Latin-1)"
            ),
            Problem::LongerThan(bound) => {
                write!(f, "{column} is longer than {bound} characters")
            }
        }
    }
}

impl Written {
    /// The text of `value` (a column named `column`, read up to `bound + 1`
    /// characters), or why it cannot be used. `None` is SQL's `NULL`.
    pub fn text(
        value: Option<Self>,
        column: &'static str,
        bound: usize,
    ) -> Result<Option<String>, Unusable> {
        let refused = |problem| Unusable { column, problem };
        match value {
            None => Ok(None),
            Some(Self::NotText) => Err(refused(Problem::NotText)),
            Some(Self::NotUtf8) => Err(refused(Problem::NotUtf8)),
            Some(Self::Text(text)) if text.chars().nth(bound).is_some() => {
                Err(refused(Problem::LongerThan(bound)))
            }
            Some(Self::Text(text)) => Ok(Some(text)),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => Self::NotUtf8,
        }
    }
}

impl Type<Sqlite> for Written {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    /// Any value: what it is, is decided when it is read.
    fn compatible(_: &SqliteTypeInfo) -> bool {
        true
    }
}

impl<'r> Decode<'r, Sqlite> for Written {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        // The type of the value itself, not of its column: SQLite keeps
        // whatever it was given.
        let kind = value.type_info().name().to_owned();
        Ok(match kind.as_str() {
            "TEXT" => Self::from_bytes(<&[u8] as Decode<Sqlite>>::decode(value)?),
            // A number in a column without TEXT affinity: its digits.
            "INTEGER" => Self::Text(<i64 as Decode<Sqlite>>::decode(value)?.to_string()),
            "REAL" => Self::Text(<f64 as Decode<Sqlite>>::decode(value)?.to_string()),
            _ => Self::NotText,
        })
    }
}

impl Type<Postgres> for Written {
    fn type_info() -> PgTypeInfo {
        <String as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <String as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Written {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self::from_bytes(value.as_bytes()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_fills_the_read_is_too_long_never_cut() {
        let exactly = "é".repeat(VALUE_BOUND);
        assert_eq!(
            Written::text(Some(Written::Text(exactly.clone())), "email", VALUE_BOUND),
            Ok(Some(exactly))
        );
        let over = "é".repeat(VALUE_BOUND + 1);
        let refused =
            Written::text(Some(Written::Text(over)), "email", VALUE_BOUND).expect_err("refused");
        assert_eq!(refused.to_string(), "email is longer than 1024 characters");
    }

    #[test]
    fn undecodable_values_say_what_they_are_not() {
        let blob = Written::text(Some(Written::NotText), "email", VALUE_BOUND).expect_err("a BLOB");
        assert!(blob.to_string().starts_with("email is not text"));
        assert_eq!(Written::from_bytes(b"caf\xe9"), Written::NotUtf8);
        assert_eq!(Written::text(None, "email", VALUE_BOUND), Ok(None));
        assert_eq!(
            format!("{:?}", Written::Text("ada@example.com".into())),
            "Text(<15 characters>)"
        );
    }
}
