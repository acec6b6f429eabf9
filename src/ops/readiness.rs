//! What `/readyz` says of the Embedded API: that a request can be built
//! with the configured key and base URL, that the key is not known to be
//! refused, and that the API answers.
//!
//! Probes come every few seconds, from every orchestrator watching every
//! process, and the API's rate limit is the pipeline's. So the answer
//! about the API is kept for `http.api_check_interval_ms`, and any call of
//! the pipeline that got (or did not get) an answer within it counts as
//! one: a busy worker never probes. Only an idle one asks, once per
//! interval, with a harmless read (`GET /users/{id}` of an id nobody has:
//! a `404` is an answer), and only when the rate gate has budget to spare,
//! one request at a time however many probes arrive.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::EmbeddedUserId;
use crate::embedded::{EmbeddedClient, UserRef};
use crate::ratelimit::ApiGate;

/// How long the gate must have been free of waiting callers before a
/// probe spends one of its requests.
const SPARE_FOR: Duration = Duration::from_secs(1);

/// The API as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiReadiness {
    /// A request can be built with the key, and the API has not refused it.
    pub api_key: bool,
    /// The API answered within the interval (or last time it was asked).
    pub api: bool,
}

/// Answers `/readyz` about the API, calling it at most once per interval.
pub struct ApiCheck {
    api: EmbeddedClient,
    gate: Arc<ApiGate>,
    interval: Duration,
    /// Held while a probe is under way: probes that arrive meanwhile wait
    /// for its answer instead of sending their own.
    probing: tokio::sync::Mutex<()>,
}

impl ApiCheck {
    pub fn new(api: EmbeddedClient, gate: Arc<ApiGate>, interval: Duration) -> Self {
        Self {
            api,
            gate,
            interval,
            probing: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn readiness(&self) -> ApiReadiness {
        if self.api.check_request().is_err() {
            return ApiReadiness {
                api_key: false,
                api: false,
            };
        }
        let api = self.answers().await;
        ApiReadiness {
            api_key: !self.gate.auth_paused(),
            api,
        }
    }

    /// Whether the API answers: the last call's outcome while it is recent,
    /// else one probe.
    async fn answers(&self) -> bool {
        if let Some(answered) = self.recent() {
            return answered;
        }
        let _probing = self.probing.lock().await;
        // A probe that ended while this one waited answers for it.
        if let Some(answered) = self.recent() {
            return answered;
        }
        // Paused by an operator, the key refused, the limit reached: no
        // call now. The last outcome stands (paused is not broken).
        if self.gate.acquire_spare(SPARE_FOR).await.is_err() {
            return self.api.last_answer().is_none_or(|(_, answered)| answered);
        }
        let Ok(probe) = EmbeddedUserId::parse("user-sync-readiness-probe") else {
            return false;
        };
        if let Err(error) = self.api.get_user(UserRef::Id(&probe)).await {
            // A `401` pauses every call, as any call's would.
            self.gate.observe(&error);
        }
        // The probe's outcome, as the client noted it.
        self.recent().unwrap_or(false)
    }

    fn recent(&self) -> Option<bool> {
        self.api
            .last_answer()
            .filter(|(at, _)| at.elapsed() < self.interval)
            .map(|(_, answered)| answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of an address nobody listens on.
    fn unreachable() -> EmbeddedClient {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = listener.local_addr().expect("its address");
        drop(listener);
        let url = url::Url::parse(&format!("http://{addr}")).expect("a URL");
        let settings = crate::config::EmbeddedSettings::local(url, "key".to_owned().into());
        EmbeddedClient::new(&settings).expect("a client")
    }

    fn gate() -> Arc<ApiGate> {
        Arc::new(ApiGate::new(&crate::config::RateLimitSettings {
            requests_per_second: 100,
            burst: 10,
            scope: crate::config::RateLimitScope::Process,
            adaptive: false,
            max_requests_per_second: 100,
        }))
    }

    #[tokio::test]
    async fn an_api_nobody_answers_is_not_ready_and_is_asked_once_per_interval() {
        let check = ApiCheck::new(unreachable(), gate(), Duration::from_secs(60));
        let first = check.readiness().await;
        assert_eq!(
            first,
            ApiReadiness {
                api_key: true,
                api: false
            }
        );
        let (at, _) = check.api.last_answer().expect("asked");
        assert_eq!(check.readiness().await, first);
        assert_eq!(check.api.last_answer().map(|(t, _)| t), Some(at), "kept");
    }
}
