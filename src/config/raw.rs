//! What the files and variables hold before it is checked: the shapes
//! `config` deserialises the layered sources into, one per section, with
//! the defaults of `[source]`, the one section that may be left out.
//!
//! Apart from the typed settings so that no unchecked value can reach a
//! caller: [`super::checks`] turns these into [`super::Settings`].

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConsoleMode, LogFormat, LookupBeforeCreate, RateLimitScope};
use crate::domain::WebhookKind;

#[derive(Deserialize)]
pub(super) struct Raw {
    pub database: RawDatabase,
    pub redis: RawRedis,
    pub embedded: RawEmbedded,
    pub worker: RawWorker,
    #[serde(default)]
    pub sync: RawSync,
    pub dispatcher: RawDispatcher,
    pub sweeper: RawSweeper,
    pub rate_limit: RawRateLimit,
    pub http: RawHttp,
    pub log: RawLog,
    #[serde(default)]
    pub source: RawSource,
    #[serde(default)]
    pub conflicts: RawConflicts,
    #[serde(default)]
    pub webhooks: RawWebhooks,
    #[serde(default)]
    pub console: RawConsole,
    #[serde(default)]
    pub gdpr: RawGdpr,
    #[serde(default)]
    pub retention: RawRetention,
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawRetention {
    pub events_days: u32,
    pub conflicts_days: u32,
    pub erasures_days: u32,
    pub interval_ms: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            events_days: 7,
            conflicts_days: 90,
            erasures_days: 0,
            interval_ms: 3_600_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawGdpr {
    pub delete_workflow_logs: bool,
    pub alert_after_s: u64,
    pub deadline_s: u64,
}

impl Default for RawGdpr {
    fn default() -> Self {
        Self {
            delete_workflow_logs: true,
            alert_after_s: 86_400,
            deadline_s: 2_592_000,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RawDatabase {
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Deserialize)]
pub(super) struct RawRedis {
    pub url: SecretString,
    pub namespace: String,
}

#[derive(Deserialize)]
pub(super) struct RawEmbedded {
    pub base_url: String,
    pub api_version: String,
    pub api_key: SecretString,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Deserialize)]
pub(super) struct RawWorker {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub auth_retry_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawSync {
    pub lookup_before_create: LookupBeforeCreate,
    /// May be 0: the clocks are taken to agree.
    pub clock_skew_margin_ms: u64,
}

impl Default for RawSync {
    fn default() -> Self {
        Self {
            lookup_before_create: LookupBeforeCreate::AfterLostAnswer,
            clock_skew_margin_ms: 1000,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RawDispatcher {
    pub batch_size: u32,
    pub users_per_job: usize,
    pub poll_interval_ms: u64,
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawConflicts {
    pub recheck_interval_ms: u64,
}

impl Default for RawConflicts {
    fn default() -> Self {
        Self {
            recheck_interval_ms: 3_600_000,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RawSweeper {
    pub interval_ms: u64,
    pub redispatch_after_ms: u64,
}

#[derive(Deserialize)]
pub(super) struct RawRateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
    pub scope: RateLimitScope,
    pub adaptive: bool,
    pub max_requests_per_second: u32,
}

#[derive(Deserialize)]
pub(super) struct RawHttp {
    pub bind: String,
    pub header_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_connections: u64,
    pub database_connections: u32,
    pub api_check_interval_ms: u64,
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawSource {
    pub table: String,
    pub id_column: String,
    pub email_column: String,
    pub name_column: String,
    pub closed_condition: String,
    pub query: String,
    pub page_size: u32,
}

impl Default for RawSource {
    fn default() -> Self {
        Self {
            table: String::new(),
            id_column: "id".into(),
            email_column: "email".into(),
            name_column: String::new(),
            closed_condition: String::new(),
            query: String::new(),
            page_size: 1000,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RawLog {
    pub format: LogFormat,
    pub level: String,
    #[serde(default)]
    pub fingerprint_key: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawWebhooks {
    pub url: String,
    /// A TOML list, or a comma-separated string (as a variable gives it).
    pub events: RawList,
    pub secret: SecretString,
    pub max_age_ms: u64,
    pub timeout_ms: u64,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: RawList::List(
                WebhookKind::ALL
                    .iter()
                    .map(|k| k.as_str().to_owned())
                    .collect(),
            ),
            secret: SecretString::from(""),
            max_age_ms: 259_200_000,
            timeout_ms: 10_000,
        }
    }
}

/// A list of names as a file writes it (`["a", "b"]`) or as a variable
/// does (`a,b`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawList {
    List(Vec<String>),
    Text(String),
}

impl RawList {
    /// The names, trimmed, empty ones left out.
    pub fn names(&self) -> Vec<&str> {
        let names: Vec<&str> = match self {
            Self::List(list) => list.iter().map(String::as_str).collect(),
            Self::Text(text) => text.split(',').collect(),
        };
        names
            .into_iter()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct RawConsole {
    pub enabled: ConsoleMode,
    pub token: Option<SecretString>,
}

impl Default for RawConsole {
    fn default() -> Self {
        Self {
            enabled: ConsoleMode::Auto,
            token: None,
        }
    }
}
