//! Operating the worker: the HTTP endpoints of `user-sync run` ([`http`]),
//! Prometheus metrics ([`metrics`]) and the `status`/`conflicts` reports
//! ([`status`]).

pub mod http;
pub mod metrics;
pub mod status;
