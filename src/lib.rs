//! user-sync keeps a host product's users in step with its Embedded iPaaS
//! account.
//!
//! # Layout
//!
//! - [`config`]: typed settings loaded in layers; secrets never print.
//! - [`telemetry`]: tracing set-up (JSON in production, readable on a terminal).
//! - [`domain`]: the vocabulary (`HostUserId`, `Username`, `EmbeddedUserId`, ...),
//!   parsed once at the edge.
//! - [`embedded`]: the Embedded Users API: a typed client whose every answer is
//!   an outcome the caller can act on, and `sandbox`, a faithful local simulator.
//! - [`cli`]: the `user-sync` command line; `main.rs` only calls it.

pub mod cli;
pub mod config;
pub mod domain;
pub mod embedded;
pub mod telemetry;
