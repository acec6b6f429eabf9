//! The host's own users table ([`table`], as `[source]` in the settings
//! describes it): the [`backfill`] of historical accounts, and the
//! [`triggers`] that write the outbox for hosts that cannot.

pub mod backfill;
pub mod table;
pub mod triggers;
