//! The outbox feed: the dispatcher ([`Dispatcher`]) moves due events of
//! `user_sync.events` into the queue (LISTEN/NOTIFY wake-up and a slow poll
//! on PostgreSQL, batches claimed by one process at a time; a short poll on
//! SQLite),
//! and the sweeper ([`run_sweeper`]) dispatches again the events whose job was
//! lost. Each in a private file, re-exported here.

mod dispatcher;
mod sweeper;

pub use dispatcher::Dispatcher;
pub use sweeper::{Swept, UNQUEUED_AFTER, run as run_sweeper, sweep_and_report, sweep_once};
