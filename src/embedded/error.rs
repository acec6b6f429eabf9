//! Every way a call to the Embedded API can end other than success, as a value
//! the caller can act on. Whether an error is worth retrying is decided here,
//! once, from the answer, never guessed at a call site.

use std::time::Duration;

/// Why the API could not be reached or did not finish answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnavailableCause {
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// The connection broke after the request was sent: the API may have
    /// applied the change without our seeing the answer.
    ConnectionCut,
    /// A 5xx answer.
    ServerError(u16),
    /// A 2xx whose body was not what the API documents (a truncated answer
    /// looks like this too).
    MalformedAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 429. `retry_after` is the server's hint when it gave one.
    #[error("rate limited by the Embedded API (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// 401 or 403: the key is missing, wrong or revoked. Retrying each job
    /// would not help; the caller pauses all calls instead.
    #[error("the Embedded API refused the API key (status {status})")]
    Unauthorized { status: u16 },
    /// 404 on a user route.
    #[error("no such Embedded user")]
    NotFound,
    /// Any other 4xx: the request itself was refused. For a create this may
    /// mean the username is taken, which the caller must confirm.
    /// `message` has emails masked.
    #[error("the Embedded API refused the request (status {status}): {message}")]
    Rejected { status: u16, message: String },
    /// Network failure, timeout or 5xx: worth retrying.
    #[error("the Embedded API is unavailable: {cause:?}")]
    Unavailable { cause: UnavailableCause },
    /// The request could not be built (a value the client refuses to send).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ApiError {
    /// True when the same call may succeed later without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable { .. })
    }

    /// True when the answer may have been lost after the API applied the
    /// change: a retried create must check before creating again.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Unavailable {
                cause: UnavailableCause::Timeout
                    | UnavailableCause::ConnectionCut
                    | UnavailableCause::MalformedAnswer
                    | UnavailableCause::ServerError(_)
            }
        )
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Unauthorized { .. } => "unauthorized",
            Self::NotFound => "not_found",
            Self::Rejected { .. } => "rejected",
            Self::Unavailable { .. } => "unavailable",
            Self::InvalidRequest(_) => "invalid_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_is_a_property_of_the_error() {
        assert!(ApiError::RateLimited { retry_after: None }.is_retryable());
        assert!(
            ApiError::Unavailable {
                cause: UnavailableCause::ServerError(503)
            }
            .is_retryable()
        );
        assert!(!ApiError::Unauthorized { status: 401 }.is_retryable());
        assert!(!ApiError::NotFound.is_retryable());
        assert!(
            !ApiError::Rejected {
                status: 409,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !ApiError::Unavailable {
                cause: UnavailableCause::Connect
            }
            .outcome_unknown(),
            "a request that never left cannot have been applied"
        );
    }
}
