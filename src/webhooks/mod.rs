//! Webhooks to the host: signed `POST`s that tell it about conflicts,
//! erasures and failed events, as the Standard Webhooks specification
//! describes them.
//!
//! A webhook is written by the storage layer in the transaction of the
//! change it reports (a row of `user_sync.webhook_deliveries`, for a type
//! the deployment subscribed to), so that no change is reported that did
//! not commit, and none that committed goes unreported. From there it
//! belongs to this module: the [`Deliverer`] of every `user-sync run`
//! process claims due rows under a lease (several processes send each
//! webhook once in the normal case), signs the stored body afresh for
//! each attempt ([`sign`]), and records what came of it ([`send`]): 2xx
//! delivered; anything else retried with full jitter until
//! `webhooks.max_age_ms` after the change, then abandoned. Delivery is at
//! least once, under one `webhook-id`: a receiver dedupes on it.
//! `user-sync webhooks` lists what is not delivered and sends it again on
//! request ([`run_command`]).

mod command;
mod deliverer;
mod send;
mod sign;

pub use command::{ListFormat, render_waiting, run_command};
pub use deliverer::{Attempted, Deliverer, Redelivered};
pub use send::{Refusal, Sender};
pub use sign::signature;
