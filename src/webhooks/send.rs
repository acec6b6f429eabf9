//! One attempt at a webhook: a signed `POST` of its stored body to the
//! host's receiver, and what came of it.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use url::Url;

use super::sign::signature;
use crate::config::{WebhookSecret, WebhookTarget};
use crate::storage::Delivery;

/// Sends webhooks to one receiver. Cheap to clone: clones share one
/// connection pool.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    url: Url,
    secret: WebhookSecret,
}

/// Why an attempt did not deliver, said without anything the receiver
/// wrote: its body is never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A status other than 2xx (a redirect is not followed).
    Status(u16),
    /// No answer within `webhooks.timeout_ms`.
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// Anything else between us and the receiver (a cut connection, TLS).
    Transport,
}

impl Refusal {
    /// What `last_error` records: `status 503`, `timeout`, ….
    pub fn describe(self) -> String {
        match self {
            Self::Status(status) => format!("status {status}"),
            Self::Timeout => "timeout".into(),
            Self::Connect => "connect".into(),
            Self::Transport => "transport".into(),
        }
    }

    /// A label of few values, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Status(status) if status >= 500 => "status_5xx",
            Self::Status(status) if status >= 400 => "status_4xx",
            Self::Status(_) => "status_other",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Transport => "transport",
        }
    }
}

impl Sender {
    pub fn new(target: &WebhookTarget, timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context;
        // reqwest is built without a bundled crypto provider; the process
        // uses ring. A second install attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .user_agent(concat!("user-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhooks' HTTP client")?;
        Ok(Self {
            http,
            url: target.url.clone(),
            secret: target.secret.clone(),
        })
    }

    /// One attempt: the stored body, signed for this attempt's time.
    pub async fn send(&self, delivery: &Delivery) -> Result<(), Refusal> {
        let timestamp = chrono::Utc::now().timestamp();
        let signed = signature(
            &self.secret,
            &delivery.webhook_id,
            timestamp,
            &delivery.payload,
        );
        let answer = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signed)
            .body(delivery.payload.clone())
            .send()
            .await;
        match answer {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(Refusal::Status(answer.status().as_u16())),
            Err(error) if error.is_timeout() => Err(Refusal::Timeout),
            Err(error) if error.is_connect() => Err(Refusal::Connect),
            Err(_) => Err(Refusal::Transport),
        }
    }
}
