//! What a sandbox is started with ([`SandboxOptions`]), what changes its
//! faults at run time ([`FaultUpdate`]), and the checks of their values.

use std::fmt;
use std::io;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::IdFormat;

/// How a sandbox behaves when it starts. See the crate docs for the order
/// in which faults apply.
#[derive(Clone)]
pub struct SandboxOptions {
    /// The key clients must send as `Authorization: Bearer <key>`.
    pub api_key: String,
    /// Requests admitted in any sliding one-second window; beyond, `429`.
    /// `None`: no limit.
    pub rate_limit: Option<u32>,
    /// Whether a `429` carries `Retry-After` (whole seconds, at least 1). The
    /// API documents none, so the client must cope both ways.
    pub retry_after: bool,
    /// Probability of answering `500`, `502` or `503` before doing anything.
    pub fail_rate: f64,
    /// Probability, for creates, updates and deletes, of applying the change
    /// and then cutting the connection without answering.
    pub drop_rate: f64,
    /// A delay before each API request is handled.
    pub latency: Duration,
    /// The status of a taken username: 400, 409 or 422 (undocumented).
    pub duplicate_status: u16,
    /// Refuse (`400`) any `PUT` that changes a username, as one of the API's
    /// guides says it does.
    pub refuse_rename: bool,
    /// Seed of the fault draws and user ids; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// How user ids are minted: ObjectIds as the API's (the default), or
    /// UUIDs that carry no creation time.
    pub id_format: IdFormat,
    /// When set, every `/_admin/` route asks for it as
    /// `Authorization: Bearer <token>` (`401` otherwise).
    pub admin_token: Option<String>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            api_key: "sandbox-key".into(),
            rate_limit: None,
            retry_after: true,
            fail_rate: 0.0,
            drop_rate: 0.0,
            latency: Duration::ZERO,
            duplicate_status: 409,
            refuse_rename: false,
            seed: None,
            id_format: IdFormat::default(),
            admin_token: None,
        }
    }
}

impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field("api_key", &"<redacted>")
            .field("rate_limit", &self.rate_limit)
            .field("retry_after", &self.retry_after)
            .field("fail_rate", &self.fail_rate)
            .field("drop_rate", &self.drop_rate)
            .field("latency", &self.latency)
            .field("duplicate_status", &self.duplicate_status)
            .field("refuse_rename", &self.refuse_rename)
            .field("seed", &self.seed)
            .field("id_format", &self.id_format)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A change of faults at run time; `None` leaves a setting as it is.
///
/// As JSON (for `PUT /_admin/faults`) the fields keep their Rust names;
/// `"rate_limit": null` removes the limit, an absent field changes nothing.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    /// A new key: rotation, or revocation of the key clients hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// `Some(None)` removes the limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limit: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_rename: Option<bool>,
    /// Answers every request `429` for this many seconds from now, each with
    /// `Retry-After` saying how many remain (a long throttle of the whole
    /// key, as an API under maintenance gives); `0` ends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_secs: Option<u64>,
    /// Revokes the key clients hold once this many more requests have been
    /// accepted (`1`: the next one goes through, the one after meets `401`),
    /// to land a revocation between two calls; `api_key` restores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_key_after: Option<u64>,
    /// Refuses every create as if its username were taken, though nobody
    /// holds it (a lookup finds no one): an API that refuses for a reason
    /// it does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_creates: Option<bool>,
}

impl fmt::Debug for FaultUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultUpdate")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("rate_limit", &self.rate_limit)
            .field("retry_after", &self.retry_after)
            .field("fail_rate", &self.fail_rate)
            .field("drop_rate", &self.drop_rate)
            .field("latency_ms", &self.latency_ms)
            .field("duplicate_status", &self.duplicate_status)
            .field("refuse_rename", &self.refuse_rename)
            .field("throttle_secs", &self.throttle_secs)
            .field("revoke_key_after", &self.revoke_key_after)
            .field("refuse_creates", &self.refuse_creates)
            .finish()
    }
}

/// Deserializes a field that is present (even as `null`) into `Some`, so an
/// absent field (`#[serde(default)]`, `None`) differs from `null`.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

pub(crate) fn check_probability(name: &str, p: f64) -> io::Result<f64> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid_input(format!(
            "{name} must be a probability between 0 and 1, not {p}"
        )))
    }
}

pub(crate) fn check_duplicate_status(status: u16) -> io::Result<StatusCode> {
    match status {
        400 => Ok(StatusCode::BAD_REQUEST),
        409 => Ok(StatusCode::CONFLICT),
        422 => Ok(StatusCode::UNPROCESSABLE_ENTITY),
        other => Err(invalid_input(format!(
            "duplicate_status must be 400, 409 or 422, not {other}"
        ))),
    }
}

pub(crate) fn check_api_key(key: &str) -> io::Result<()> {
    if key.trim().is_empty() {
        return Err(invalid_input("api_key must not be empty".into()));
    }
    Ok(())
}
