//! user-sync keeps a host product's users in step with its Embedded iPaaS
//! account.
//!
//! # Layout
//!
//! The folders follow the data flow: the host writes events into the outbox
//! (`store`), the `source` dispatches them into the `queue`, `sync` jobs
//! carry them out against the `embedded` API through the `ratelimit` gate,
//! and `ops` lets operators see it all.
//!
//! - [`config`]: typed settings loaded in layers; secrets never print.
//! - [`telemetry`]: tracing set-up (JSON in production, readable on a terminal).
//! - [`domain`]: the vocabulary (`HostUserId`, `Username`, `EmbeddedUserId`, ...),
//!   parsed once at the edge.
//! - [`embedded`]: the Embedded Users API: a typed client whose every answer is
//!   an outcome the caller can act on.
//! - [`store`]: the worker's tables in the host database (outbox, users,
//!   conflicts, erasures), their migrations, and the small traits through
//!   which the pipeline reaches them (PostgreSQL in [`store::postgres`],
//!   a SQLite file in [`store::sqlite`]).
//! - [`source`]: where events come from: the dispatcher (outbox → queue,
//!   woken by NOTIFY, or polling on SQLite), the sweeper (re-dispatches what the queue lost), the
//!   backfill of historical users, and triggers on the host's users table.
//! - [`queue`]: the apalis job queue, on Redis or in the SQLite file; jobs
//!   carry ids only.
//! - [`sync`]: the pure `plan` and the job that carries it out.
//! - [`ratelimit`]: the gate every API call passes (rate limit, 429 and
//!   401 pauses, backoff).
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, `status` and `conflicts`.
//! - [`app`]: one `user-sync run` process, assembled from the parts above.
//! - [`demo`]: `user-sync demo`, the whole job on one machine: SQLite, the
//!   sandbox, a backfill and live traffic, then a checked summary.
//! - [`cli`]: the `user-sync` command line; `main.rs` only calls it.
//!
//! The sandbox, a faithful local simulator of the Embedded API that `user-sync
//! sandbox`, the demo, the tests and the benchmarks run, is a crate of its
//! own in this workspace: `user_sync_sandbox`, in `sandbox/`.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod embedded;
pub mod ops;
pub mod queue;
pub mod ratelimit;
pub mod host;
pub mod outbox;
pub mod storage;
pub mod sync;
pub mod telemetry;
