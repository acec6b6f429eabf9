//! The outbox feed: the [`dispatcher`] moves due events of
//! `user_sync.events` into the queue (LISTEN/NOTIFY wake-up and a slow poll
//! on PostgreSQL, `FOR UPDATE SKIP LOCKED` batches; a short poll on SQLite),
//! and the [`sweeper`] dispatches again the events whose job was lost.

pub mod dispatcher;
pub mod sweeper;
