//! What travels on the wire whatever the version: the answers every
//! version shapes alike (`{userId}` for a create, `{token}`), the reading
//! of a success body, and how a failed answer (its status, `Retry-After`
//! and message, or a broken transport) reads as an [`ApiError`]. Each
//! version's own shapes are its dialect's (`dialect/`).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, UnavailableCause};
use crate::domain::redact_emails;

#[derive(Deserialize)]
pub(super) struct WireCreated {
    #[serde(rename = "userId")]
    pub(super) user_id: String,
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

/// A success body read as `T`; anything else is a malformed answer.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|_| malformed())
}

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
