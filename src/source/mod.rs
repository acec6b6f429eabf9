//! Where work comes from: the outbox [`dispatcher`] (LISTEN/NOTIFY wake-up,
//! slow poll, `FOR UPDATE SKIP LOCKED` batches) and the [`sweeper`] that
//! re-dispatches events whose job was lost.

pub mod dispatcher;
pub mod sweeper;
