//! What travels on the wire: the JSON bodies the Embedded API takes and
//! sends, and how a failed answer (its status, `Retry-After` and message,
//! or a broken transport) reads as an [`ApiError`].
//!
//! Kept apart from the client so that the calls speak only in the crate's
//! types, and the stream of `GET /users` parses its users with the same
//! shapes as the calls.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, UnavailableCause};
use super::users::{EmbeddedUser, NewUser};
use crate::domain::{EmbeddedUserId, FullName, Username, redact_emails};

#[derive(Serialize)]
pub(super) struct WireNewUser<'a> {
    username: &'a str,
    #[serde(rename = "fullName", skip_serializing_if = "Option::is_none")]
    full_name: Option<&'a str>,
}

impl<'a> From<&'a NewUser> for WireNewUser<'a> {
    fn from(user: &'a NewUser) -> Self {
        Self {
            username: user.username.as_str(),
            full_name: user.full_name.as_ref().map(FullName::as_str),
        }
    }
}

#[derive(Serialize)]
pub(super) struct WireUpdate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<&'a str>,
    #[serde(rename = "fullName", skip_serializing_if = "Option::is_none")]
    pub(super) full_name: Option<&'a str>,
}

#[derive(Deserialize)]
pub(super) struct WireUser {
    #[serde(rename = "userId")]
    pub(super) user_id: String,
    pub(super) username: String,
    #[serde(rename = "fullName", default)]
    pub(super) full_name: Option<String>,
}

impl TryFrom<WireUser> for EmbeddedUser {
    type Error = ApiError;
    fn try_from(wire: WireUser) -> Result<Self, ApiError> {
        Ok(Self {
            user_id: EmbeddedUserId::parse(&wire.user_id).map_err(|_| malformed())?,
            username: Username::from_api(&wire.username),
            full_name: wire.full_name.as_deref().map(FullName::from_api),
        })
    }
}

#[derive(Deserialize)]
pub(super) struct WireCreated {
    #[serde(rename = "userId")]
    pub(super) user_id: String,
}

#[derive(Deserialize)]
pub(super) struct WireList {
    pub(super) data: Vec<WireUser>,
}

#[derive(Deserialize)]
pub(super) struct WireBatch {
    #[serde(rename = "invalidUsers", default)]
    pub(super) invalid_users: Vec<WireInvalid>,
}

#[derive(Deserialize)]
pub(super) struct WireInvalid {
    #[serde(default)]
    pub(super) username: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireToken {
    pub(super) token: String,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    message: Option<String>,
}

/// Any JSON body, for calls whose answer carries nothing we need.
#[derive(Deserialize)]
pub(super) struct Ignored {}

pub(super) fn malformed() -> ApiError {
    ApiError::Unavailable {
        cause: UnavailableCause::MalformedAnswer,
    }
}

pub(super) fn transport_error(error: reqwest::Error) -> ApiError {
    let cause = if error.is_timeout() {
        UnavailableCause::Timeout
    } else if error.is_connect() {
        UnavailableCause::Connect
    } else {
        UnavailableCause::ConnectionCut
    };
    ApiError::Unavailable { cause }
}

pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// Maps a non-2xx answer to its outcome.
pub(super) fn error_for(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ApiError {
    match status.as_u16() {
        429 => ApiError::RateLimited { retry_after },
        401 | 403 => ApiError::Unauthorized {
            status: status.as_u16(),
        },
        404 => ApiError::NotFound,
        500..=599 => ApiError::Unavailable {
            cause: UnavailableCause::ServerError(status.as_u16()),
        },
        code => {
            let message = serde_json::from_slice::<WireMessage>(body)
                .ok()
                .and_then(|m| m.message)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
            let message: String = redact_emails(&message).chars().take(200).collect();
            ApiError::Rejected {
                status: code,
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping() {
        let e = error_for(
            StatusCode::CONFLICT,
            None,
            br#"{"message":"ada@example.com is taken"}"#,
        );
        match e {
            ApiError::Rejected { status, message } => {
                assert_eq!(status, 409);
                assert!(!message.contains("ada@example.com"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error_for(StatusCode::FORBIDDEN, None, b""),
            ApiError::Unauthorized { status: 403 }
        );
        assert_eq!(
            error_for(StatusCode::BAD_GATEWAY, None, b"<html>"),
            ApiError::Unavailable {
                cause: UnavailableCause::ServerError(502)
            }
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
