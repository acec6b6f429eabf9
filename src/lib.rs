//! user-sync keeps a host product's users in step with its Embedded iPaaS
//! account.
//!
//! # Layout
//!
//! The host writes events into the outbox, the outbox feed dispatches them
//! into the queue, sync jobs carry them out against the Embedded API
//! through the rate gate, and ops lets operators see it all. The modules
//! are layers, lowest first: each imports only from the layers above it in
//! this list, never from one below it, so a change to a layer can break
//! only the layers after it. `tests/layers.rs` reads this list and the
//! sources, and fails on an import that goes the wrong way.
//!
//! 1. [`domain`]: the vocabulary (`HostUserId`, `Username`, `Profile`, the
//!    states of events, users and conflicts, the report rows), parsed once
//!    at the edge; nothing in it can print personal data.
//! 2. [`config`]: typed settings loaded in layers; secrets never print.
//! 3. [`telemetry`]: tracing set-up (JSON in production, readable on a
//!    terminal).
//! 4. [`embedded`]: the Embedded Users API: a typed client whose every
//!    answer is an outcome the caller can act on.
//! 5. [`ratelimit`]: the gate every API call passes (rate limit, 429 and
//!    401 pauses), in one process or shared through Redis.
//! 6. [`retry`]: the one retry policy and jittered backoff, for API calls
//!    and for every loop that restarts.
//! 7. [`storage`]: the worker's tables in the host database (outbox, users,
//!    conflicts, erasures), their migrations, and the small traits the
//!    pipeline reaches them through: PostgreSQL in [`storage::PgStore`], a
//!    SQLite file in [`storage::SqliteStore`].
//! 8. [`queue`]: the apalis job queue, on Redis or in the SQLite file; jobs
//!    carry ids only, and the queue runs whatever handler it is given.
//! 9. [`sync`]: the pure `plan`, the job that carries it out, and the one
//!    outcome type its steps end in.
//! 10. [`outbox`]: the outbox feed: the dispatcher (claim, push, confirm)
//!     and the sweeper (dispatches again what the queue lost).
//! 11. [`webhooks`]: the webhooks to the host: the deliverer that signs and
//!     sends what the storage layer wrote beside each change, and the
//!     listing and redelivery of `user-sync webhooks`.
//! 12. [`host`]: the host's own users table: the backfill of historical
//!     accounts and the triggers that write the outbox for hosts that
//!     cannot.
//! 13. [`ops`]: `/healthz`, `/readyz`, `/metrics`, `status` and
//!     `conflicts`.
//! 14. [`app`]: one `user-sync run` process, assembled from the layers
//!     above; the backend is chosen here.
//! 15. [`demo`]: `user-sync demo`, the whole job on one machine: SQLite, the
//!     sandbox, a backfill and live traffic, then a checked summary.
//! 16. [`cli`]: the `user-sync` command line; `main.rs` only calls it.
//!
//! The sandbox, a faithful local simulator of the Embedded API that `user-sync
//! sandbox`, the demo, the tests and the benchmarks run, is a crate of its
//! own in this workspace (`user_sync_sandbox`, in `sandbox/`); the worker's
//! library uses it only for those two commands.

// In layer order (see `# Layout`); one group each, so that rustfmt keeps it.
pub mod domain;

pub mod config;

pub mod telemetry;

pub mod embedded;

pub mod ratelimit;

pub mod retry;

pub mod storage;

pub mod queue;

pub mod sync;

pub mod outbox;

pub mod webhooks;

pub mod host;

pub mod ops;

pub mod app;

pub mod demo;

pub mod cli;
