//! Where work comes from: the outbox [`dispatcher`] (LISTEN/NOTIFY wake-up,
//! slow poll, `FOR UPDATE SKIP LOCKED` batches on PostgreSQL; a short poll
//! on SQLite), the [`sweeper`] that
//! re-dispatches events whose job was lost, and the host's own users table
//! ([`host`], as `[source]` describes it): the [`backfill`] of historical
//! accounts and the [`triggers`] that write the outbox for hosts that
//! cannot.

pub mod backfill;
pub mod dispatcher;
pub mod host;
pub mod sweeper;
pub mod triggers;
