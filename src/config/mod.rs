//! Typed settings, loaded in layers.
//!
//! Order, later wins: the built-in defaults (this repository's
//! `config/default.toml`, compiled in), `config/default.toml` on disk,
//! `config/$USER_SYNC_ENV.toml` when that variable is set (it must exist then),
//! the conventional `DATABASE_URL`, `REDIS_URL`, `EMBEDDED_API_KEY` and
//! `USER_SYNC_WEBHOOK_SECRET`, and last `USER_SYNC__SECTION__KEY` variables. The folder is `config/` under the
//! working directory unless `USER_SYNC_CONFIG_DIR` names another.
//!
//! Values are checked once, here. A bad value fails at start with one line that
//! names its key; secrets (the API key, the webhook secret, and the database
//! and Redis URLs, which may carry passwords) are `secrecy` types that never
//! print.
//!
//! This file holds the typed settings and their loading; the shapes the
//! files and variables are read into are in `raw`, and the checks that turn
//! them into settings in `checks` (`[webhooks]`, settings and checks, in
//! `webhooks`).

mod api_version;
mod checks;
mod raw;
mod retention;
mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::domain::ClaimCheck;
use raw::Raw;

pub use api_version::ApiVersion;
pub use retention::RetentionSettings;
pub use webhooks::{WebhookSecret, WebhookSettings, WebhookTarget};

/// The compiled-in defaults: a binary copied alone still starts.
const BUILT_IN_DEFAULTS: &str = include_str!("../../config/default.toml");

/// A configuration problem, said in one line that names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} is empty: set {hint}")]
    Missing {
        key: &'static str,
        hint: &'static str,
    },
    #[error("{key} is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("configuration: {0}")]
    Load(String),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Everything the worker can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub embedded: EmbeddedSettings,
    pub worker: WorkerSettings,
    pub sync: SyncSettings,
    pub dispatcher: DispatcherSettings,
    pub sweeper: SweeperSettings,
    pub conflicts: ConflictSettings,
    pub rate_limit: RateLimitSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    /// `log.fingerprint_key`: the key of the usernames' fingerprints in
    /// logs; unset, the deployment's own key (made by `migrate`) is used.
    pub fingerprint_key: Option<SecretString>,
    pub source: SourceSettings,
    pub webhooks: WebhookSettings,
    pub console: ConsoleSettings,
    pub gdpr: GdprSettings,
    pub retention: RetentionSettings,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `None` when unset; commands that need a database ask [`Self::url`].
    url: Option<SecretString>,
    pub max_connections: u32,
}

/// Which database a URL names; it decides the storage and queue backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Sqlite,
}

impl DatabaseSettings {
    pub fn url(&self) -> Result<&SecretString, ConfigError> {
        self.url.as_ref().ok_or(ConfigError::Missing {
            key: "database.url",
            hint: "DATABASE_URL",
        })
    }

    pub fn kind(&self) -> Result<DatabaseKind, ConfigError> {
        Ok(database_kind(self.url()?.expose_secret()).unwrap_or(DatabaseKind::Postgres))
    }

    /// A copy pointing at another database, for commands that are handed one.
    pub fn with_url(&self, url: SecretString) -> Self {
        Self {
            url: Some(url),
            max_connections: self.max_connections,
        }
    }
}

fn database_kind(url: &str) -> Option<DatabaseKind> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(DatabaseKind::Postgres)
    } else if url.starts_with("sqlite:") {
        Some(DatabaseKind::Sqlite)
    } else {
        None
    }
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    url: SecretString,
    /// Prefix of every key the worker writes.
    pub namespace: String,
}

impl RedisSettings {
    pub fn url(&self) -> &SecretString {
        &self.url
    }

    pub fn new(url: SecretString, namespace: String) -> Self {
        Self { url, namespace }
    }
}

#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// Scheme and host (and any path prefix before the API's own paths):
    /// the client adds the version's path. Defaults to the version's.
    pub base_url: Url,
    pub api_version: ApiVersion,
    /// `None` when unset; commands that call the API ask [`Self::api_key`].
    api_key: Option<SecretString>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl EmbeddedSettings {
    pub fn api_key(&self) -> Result<&SecretString, ConfigError> {
        self.api_key.as_ref().ok_or(ConfigError::Missing {
            key: "embedded.api_key",
            hint: "EMBEDDED_API_KEY",
        })
    }

    /// Settings for a client of a local API (the sandbox, tests).
    pub fn local(base_url: Url, api_key: SecretString) -> Self {
        Self {
            base_url,
            api_version: ApiVersion::default(),
            api_key: Some(api_key),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub auth_retry_interval: Duration,
    pub shutdown_timeout: Duration,
}

/// When a job looks a username up in Embedded before it creates the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupBeforeCreate {
    /// Only to confirm a create whose answer was lost: one call per signup.
    AfterLostAnswer,
    /// Before every create too: two calls per signup, and a taken username
    /// found before the create rather than after it.
    Always,
}

/// How a job settles what it cannot see (`[sync]`).
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub lookup_before_create: LookupBeforeCreate,
    /// How far the database's clock and the API's may differ: a user found
    /// after a lost answer is the worker's own when its id says it was made
    /// no earlier than the claim less this (see `domain::Provenance`).
    pub clock_skew_margin: Duration,
    /// How long after its claim a create can have been made: a call slot,
    /// the rate gate's longest wait and the request itself (twice
    /// `embedded.timeout_ms`, plus 2 s).
    pub create_window: Duration,
    /// `gdpr.delete_workflow_logs`: a closure deletes the user's workflow
    /// logs before the user. Kept here, with the rest of what a job
    /// decides by, so that every job runner (worker, backfill, operator
    /// commands) honours it.
    pub delete_workflow_logs: bool,
}

impl SyncSettings {
    /// What a user found after a lost answer is held against, now.
    pub fn claim_check(&self) -> ClaimCheck {
        ClaimCheck::now(self.clock_skew_margin, self.create_window)
    }

    /// The window for requests that time out after `timeout`.
    pub fn create_window_for(timeout: Duration) -> Duration {
        timeout * 2 + Duration::from_secs(2)
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            lookup_before_create: LookupBeforeCreate::AfterLostAnswer,
            clock_skew_margin: Duration::from_secs(1),
            create_window: Self::create_window_for(Duration::from_secs(10)),
            delete_workflow_logs: true,
        }
    }
}

/// `[gdpr]`: how long an erasure request may wait (the job's part,
/// `delete_workflow_logs`, is in [`SyncSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdprSettings {
    /// A request pending longer is logged `alert=erasure_overdue`.
    pub alert_after: Duration,
    /// The deadline the deployment promises (GDPR Art. 17: one month at
    /// most); shown beside the alert, not enforced.
    pub deadline: Duration,
}

impl Default for GdprSettings {
    fn default() -> Self {
        Self {
            alert_after: Duration::from_secs(86_400),
            deadline: Duration::from_secs(2_592_000),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub batch_size: u32,
    /// Host users per queue job.
    pub users_per_job: usize,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct SweeperSettings {
    pub interval: Duration,
    pub redispatch_after: Duration,
}

#[derive(Debug, Clone)]
pub struct ConflictSettings {
    /// How often the worker looks again at a username held outside the
    /// worker, for each open conflict.
    pub recheck_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    Process,
    Global,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub requests_per_second: u32,
    pub burst: u32,
    pub scope: RateLimitScope,
    pub adaptive: bool,
    /// The ceiling of an adaptive rate (`requests_per_second` is its start).
    pub max_requests_per_second: u32,
}

/// The ops server of `user-sync run`, and what any one client, or many,
/// can hold of it.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    /// A connection that has not sent a whole request head within this is
    /// closed (a client sending headers a byte at a time, or nothing).
    pub header_read_timeout: Duration,
    /// A request not answered within this is answered `503`.
    pub request_timeout: Duration,
    /// Connections served at once; one more is closed at once.
    pub max_connections: usize,
    /// The ops server's own database connections (`/metrics`, `/readyz`,
    /// the console's API): apart from the pipeline's, so that scrapes can
    /// never take the connections jobs wait for.
    pub database_connections: u32,
    /// How long `/readyz` keeps its answer about the Embedded API (a request
    /// that can be built and gets an answer) before asking again.
    pub api_check_interval: Duration,
}

/// Where the host's users are, for `backfill` and `install-triggers`.
///
/// Either a table (with its id, email and name columns and the condition
/// that marks a closed account) or a query for hosts whose users span
/// tables. Checked here for shape; whether the table and columns exist is
/// checked against the database when a command that needs them starts.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// `None` when neither `source.table` nor `source.query` is set: only
    /// the commands that read the host's users need one.
    target: Option<SourceTarget>,
    /// Host users read per keyset page (and per batch in batch mode).
    pub page_size: u32,
}

/// What `[source]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceTarget {
    Table(SourceTable),
    /// A query returning `host_user_id, email, full_name` of open accounts.
    Query(String),
}

/// A host users table and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// As configured, possibly schema-qualified (`public.accounts`).
    pub table: String,
    pub id_column: String,
    pub email_column: String,
    /// `None`: the host keeps no name; users are created without one.
    pub name_column: Option<String>,
    /// An SQL condition over the table's columns, true for a closed
    /// account. `None`: every row is an open account.
    pub closed_condition: Option<String>,
}

impl SourceSettings {
    /// The configured source, or an error naming the keys to set.
    pub fn target(&self) -> Result<&SourceTarget, ConfigError> {
        self.target.as_ref().ok_or(ConfigError::Missing {
            key: "source.table",
            hint: "source.table (or source.query) in the [source] section, or USER_SYNC__SOURCE__TABLE",
        })
    }

    /// Settings reading `target`, for tests and tools.
    pub fn new(target: SourceTarget, page_size: u32) -> Self {
        Self {
            target: Some(target),
            page_size,
        }
    }
}

/// Whether `user-sync run` serves the operator API and the console
/// (`console.enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleMode {
    /// Served when a token is set.
    Auto,
    /// Wanted: a non-loopback `http.bind` without a token refuses to start.
    On,
    Off,
}

/// The operator API under `/api/v1` and the page at `/console` (`[console]`).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub enabled: ConsoleMode,
    /// The bearer token every API request carries; `None` when unset.
    /// Never printed (its `Debug` is redacted).
    token: Option<SecretString>,
}

impl ConsoleSettings {
    /// The token to serve the console with on `bind`, or `None` when it is
    /// off. An operator who turned it on for an address other than loopback
    /// without a token is refused, by the keys to fix: an API that pauses
    /// the deployment is never open to a network.
    pub fn token_for(&self, bind: SocketAddr) -> Result<Option<&SecretString>, ConfigError> {
        match (self.enabled, &self.token) {
            (ConsoleMode::Off, _) => Ok(None),
            (_, Some(token)) => Ok(Some(token)),
            (ConsoleMode::On, None) if !bind.ip().is_loopback() => Err(invalid(
                "console.enabled",
                format!(
                    "\"on\" with http.bind {bind} (not loopback) needs a token: set \
                     USER_SYNC_CONSOLE_TOKEN (or console.token), or console.enabled = \"off\""
                ),
            )),
            (_, None) => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// Loads from the process environment and the working directory.
    pub fn load() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let dir = env
            .get("USER_SYNC_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        Self::load_from(&dir, &env)
    }

    /// Loads from a given folder and a given set of variables (tests use this
    /// so that they never touch the process environment).
    pub fn load_from(dir: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let mut builder = Config::builder()
            .add_source(File::from_str(BUILT_IN_DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false));
        if let Some(name) = env.get("USER_SYNC_ENV").filter(|n| !n.is_empty()) {
            let path = dir.join(format!("{name}.toml"));
            if !path.is_file() {
                return Err(invalid(
                    "USER_SYNC_ENV",
                    format!("no configuration file {}", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path));
        }

        // The conventional variables, renamed to their keys.
        let conventional: HashMap<String, String> = [
            ("DATABASE_URL", "DATABASE__URL"),
            ("REDIS_URL", "REDIS__URL"),
            ("EMBEDDED_API_KEY", "EMBEDDED__API_KEY"),
            ("USER_SYNC_WEBHOOK_SECRET", "WEBHOOKS__SECRET"),
            ("USER_SYNC_CONSOLE_TOKEN", "CONSOLE__TOKEN"),
        ]
        .into_iter()
        .filter_map(|(var, key)| env.get(var).map(|v| (key.to_owned(), v.clone())))
        .collect();
        builder = builder.add_source(
            Environment::default()
                .separator("__")
                .source(Some(conventional)),
        );
        let prefixed: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("USER_SYNC__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("USER_SYNC")
                .prefix_separator("__")
                .separator("__")
                .source(Some(prefixed)),
        );

        let raw: Raw = builder
            .build()
            .and_then(Config::try_deserialize)
            .map_err(load_error)?;
        Self::check(raw)
    }
}

/// A configuration that could not be read, said without repeating any of
/// it: a file that does not parse is named with its line and column (the
/// line itself could hold a secret), a value of the wrong type by its key.
fn load_error(error: config::ConfigError) -> ConfigError {
    use config::ConfigError as E;
    ConfigError::Load(match error {
        E::FileParse { uri, cause } => {
            let cause = cause.to_string();
            let at = cause.lines().next().unwrap_or("a parse error");
            format!(
                "{} does not parse: {}; the line is not shown, as it may hold a secret",
                uri.as_deref().unwrap_or("a configuration file"),
                one_line(at)
            )
        }
        E::Type { key, expected, .. } => format!(
            "{} has a value of the wrong type: expected {expected}",
            key.as_deref().unwrap_or("a key")
        ),
        other => one_line(&other.to_string()),
    })
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn empty_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn built_in_defaults_load_without_any_file() {
        let dir = empty_dir();
        let s = Settings::load_from(dir.path(), &env(&[])).unwrap();
        assert_eq!(s.worker.concurrency, 16);
        assert_eq!(s.rate_limit.scope, RateLimitScope::Process);
        assert_eq!(
            s.sync.lookup_before_create,
            LookupBeforeCreate::AfterLostAnswer
        );
        assert_eq!(s.sync.clock_skew_margin, Duration::from_secs(1));
        assert_eq!(s.embedded.api_version, ApiVersion::V2025_09);
        assert_eq!(
            s.embedded.base_url.as_str(),
            "https://production.runalloy.com/"
        );
    }

    #[test]
    fn file_then_env_file_then_variables() {
        let dir = empty_dir();
        std::fs::write(
            dir.path().join("default.toml"),
            "[worker]\nconcurrency = 2\nmax_attempts = 3\n[dispatcher]\nbatch_size = 7\n[rate_limit]\nburst = 5\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("staging.toml"),
            "[worker]\nconcurrency = 4\n[dispatcher]\nbatch_size = 8\n",
        )
        .unwrap();
        let s = Settings::load_from(
            dir.path(),
            &env(&[
                ("USER_SYNC_ENV", "staging"),
                ("USER_SYNC__WORKER__CONCURRENCY", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 9, "variable beats both files");
        assert_eq!(s.dispatcher.batch_size, 8, "env file beats default file");
        assert_eq!(s.worker.max_attempts, 3, "default file beats built-in");
        assert_eq!(s.rate_limit.burst, 5);
    }

    #[test]
    fn conventional_variables_set_the_secrets_and_prefixed_ones_win() {
        let dir = empty_dir();
        let s = Settings::load_from(
            dir.path(),
            &env(&[
                ("DATABASE_URL", "postgres://a@localhost/db"),
                ("EMBEDDED_API_KEY", "k-123"),
                ("REDIS_URL", "redis://127.0.0.1:6380"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.database.url().unwrap().expose_secret(),
            "postgres://a@localhost/db"
        );
        assert_eq!(s.embedded.api_key().unwrap().expose_secret(), "k-123");
        assert_eq!(s.redis.url().expose_secret(), "redis://127.0.0.1:6380");
        assert_eq!(s.database.kind().unwrap(), DatabaseKind::Postgres);

        let s = Settings::load_from(
            dir.path(),
            &env(&[
                ("DATABASE_URL", "postgres://a@localhost/db"),
                ("USER_SYNC__DATABASE__URL", "sqlite:x.db"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.kind().unwrap(), DatabaseKind::Sqlite);
    }

    #[test]
    fn missing_required_keys_name_the_key_and_the_variable() {
        let dir = empty_dir();
        let s = Settings::load_from(dir.path(), &env(&[])).unwrap();
        assert_eq!(
            s.embedded.api_key().unwrap_err().to_string(),
            "embedded.api_key is empty: set EMBEDDED_API_KEY"
        );
        assert_eq!(
            s.database.url().unwrap_err().to_string(),
            "database.url is empty: set DATABASE_URL"
        );
        let s = Settings::load_from(dir.path(), &env(&[("EMBEDDED_API_KEY", "  ")])).unwrap();
        assert!(s.embedded.api_key().is_err(), "blank is as good as missing");
    }

    #[test]
    fn secrets_mounted_from_files_lose_their_trailing_newline() {
        let dir = empty_dir();
        let s = Settings::load_from(
            dir.path(),
            &env(&[
                ("EMBEDDED_API_KEY", "k-123\n"),
                ("DATABASE_URL", " postgres://h/db\r\n"),
            ]),
        )
        .unwrap();
        assert_eq!(s.embedded.api_key().unwrap().expose_secret(), "k-123");
        assert_eq!(s.database.url().unwrap().expose_secret(), "postgres://h/db");

        // What trimming cannot mend is refused at start, by its key.
        for key in ["k-1\nk-2", "k 2", "schlüssel"] {
            let error = Settings::load_from(dir.path(), &env(&[("EMBEDDED_API_KEY", key)]))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("embedded.api_key is invalid"), "{error}");
            assert!(!error.contains(key), "the key is never shown: {error}");
        }
    }

    #[test]
    fn a_configuration_file_that_does_not_parse_never_shows_its_lines() {
        let dir = empty_dir();
        std::fs::write(
            dir.path().join("default.toml"),
            "[database]\nurl = \"postgres://u:PASSWORD@h/db\nmax_connections = 4\n",
        )
        .unwrap();
        let error = Settings::load_from(dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("PASSWORD"), "a secret was printed: {error}");
        assert!(error.contains("default.toml"), "names the file: {error}");
        assert!(error.contains("line 2"), "names the line: {error}");

        // A value of the wrong type is named by its key, never shown.
        std::fs::write(
            dir.path().join("default.toml"),
            "[worker]\nmax_attempts = \"SECRET-LOOKING\"\n",
        )
        .unwrap();
        let error = Settings::load_from(dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("SECRET-LOOKING"),
            "a value was printed: {error}"
        );
        assert!(error.contains("max_attempts"), "names the key: {error}");
    }

    #[test]
    fn the_base_url_follows_the_version_unless_set() {
        let dir = empty_dir();
        for (version, url) in [
            ("2025-09", "https://production.runalloy.com/"),
            ("2024-03", "https://embedded.runalloy.com/"),
            ("2023-12", "https://embedded.runalloy.com/"),
            ("2021-12", "https://api.runalloy.com/"),
        ] {
            let vars = env(&[("USER_SYNC__EMBEDDED__API_VERSION", version)]);
            let s = Settings::load_from(dir.path(), &vars).unwrap();
            assert_eq!(s.embedded.api_version.as_str(), version);
            assert_eq!(s.embedded.base_url.as_str(), url, "{version}");
        }
        // Set, it wins, with its path prefix.
        let vars = env(&[
            ("USER_SYNC__EMBEDDED__API_VERSION", "2021-12"),
            (
                "USER_SYNC__EMBEDDED__BASE_URL",
                "http://127.0.0.1:8787/proxy/",
            ),
        ]);
        let s = Settings::load_from(dir.path(), &vars).unwrap();
        assert_eq!(s.embedded.base_url.as_str(), "http://127.0.0.1:8787/proxy/");
        // An unknown version names every supported one.
        let vars = env(&[("USER_SYNC__EMBEDDED__API_VERSION", "2019-01")]);
        let line = Settings::load_from(dir.path(), &vars)
            .unwrap_err()
            .to_string();
        assert!(
            line.contains("embedded.api_version")
                && line.contains("2025-09, 2024-03, 2023-12, 2021-12"),
            "{line}"
        );
        // The version's own path is the client's to add, not the base URL's.
        for (version, url) in [
            ("2024-03", "https://embedded.runalloy.com/2024-03"),
            ("2021-12", "https://api.runalloy.com/forge/2021-12/"),
        ] {
            let vars = env(&[
                ("USER_SYNC__EMBEDDED__API_VERSION", version),
                ("USER_SYNC__EMBEDDED__BASE_URL", url),
            ]);
            let line = Settings::load_from(dir.path(), &vars)
                .unwrap_err()
                .to_string();
            assert!(line.contains("embedded.base_url"), "{line}");
        }
    }

    #[test]
    fn invalid_values_fail_with_one_line_naming_the_key() {
        let dir = empty_dir();
        let cases = [
            ("USER_SYNC__WORKER__CONCURRENCY", "0", "worker.concurrency"),
            (
                "USER_SYNC__WORKER__CONCURRENCY",
                "many",
                "worker.concurrency",
            ),
            (
                "USER_SYNC__EMBEDDED__BASE_URL",
                "not a url",
                "embedded.base_url",
            ),
            (
                "USER_SYNC__EMBEDDED__BASE_URL",
                "ftp://x",
                "embedded.base_url",
            ),
            (
                "USER_SYNC__EMBEDDED__API_VERSION",
                "2022-01",
                "embedded.api_version",
            ),
            (
                "USER_SYNC__EMBEDDED__BASE_URL",
                "https://embedded.runalloy.com/2025-09/",
                "embedded.base_url",
            ),
            (
                "USER_SYNC__RATE_LIMIT__SCOPE",
                "cluster",
                "rate_limit.scope",
            ),
            (
                "USER_SYNC__SYNC__LOOKUP_BEFORE_CREATE",
                "sometimes",
                "sync.lookup_before_create",
            ),
            (
                "USER_SYNC__SYNC__CLOCK_SKEW_MARGIN_MS",
                "-1",
                "sync.clock_skew_margin_ms",
            ),
            ("USER_SYNC__HTTP__BIND", "nowhere", "http.bind"),
            ("USER_SYNC__LOG__FORMAT", "xml", "log.format"),
            ("DATABASE_URL", "mysql://x", "database.url"),
            ("REDIS_URL", "localhost:6379", "redis.url"),
            ("USER_SYNC_ENV", "nope", "USER_SYNC_ENV"),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(dir.path(), &env(&[(var, value)])).unwrap_err();
            let line = err.to_string();
            assert!(line.contains(key), "{var}={value}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn source_is_optional_and_checked_for_shape() {
        let dir = empty_dir();
        let s = Settings::load_from(dir.path(), &env(&[])).unwrap();
        assert!(
            s.source
                .target()
                .unwrap_err()
                .to_string()
                .contains("source.table")
        );
        let s = Settings::load_from(
            dir.path(),
            &env(&[
                ("USER_SYNC__SOURCE__TABLE", "public.accounts"),
                ("USER_SYNC__SOURCE__NAME_COLUMN", "display_name"),
                (
                    "USER_SYNC__SOURCE__CLOSED_CONDITION",
                    "closed_at IS NOT NULL",
                ),
            ]),
        )
        .unwrap();
        match s.source.target().unwrap() {
            SourceTarget::Table(t) => {
                assert_eq!(t.table, "public.accounts");
                assert_eq!(t.id_column, "id");
                assert_eq!(t.email_column, "email");
                assert_eq!(t.name_column.as_deref(), Some("display_name"));
                assert_eq!(t.closed_condition.as_deref(), Some("closed_at IS NOT NULL"));
            }
            other => panic!("{other:?}"),
        }
        let s = Settings::load_from(
            dir.path(),
            &env(&[("USER_SYNC__SOURCE__QUERY", "SELECT 1;")]),
        )
        .unwrap();
        assert_eq!(
            s.source.target().unwrap(),
            &SourceTarget::Query("SELECT 1".into())
        );
        for (vars, key) in [
            (
                vec![
                    ("USER_SYNC__SOURCE__TABLE", "a"),
                    ("USER_SYNC__SOURCE__QUERY", "SELECT 1"),
                ],
                "source.query",
            ),
            (
                vec![
                    ("USER_SYNC__SOURCE__TABLE", "a"),
                    ("USER_SYNC__SOURCE__EMAIL_COLUMN", " "),
                ],
                "source.email_column",
            ),
            (
                vec![("USER_SYNC__SOURCE__PAGE_SIZE", "0")],
                "source.page_size",
            ),
        ] {
            let err = Settings::load_from(dir.path(), &env(&vars)).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let dir = empty_dir();
        let s = Settings::load_from(
            dir.path(),
            &env(&[
                ("EMBEDDED_API_KEY", "super-secret-key"),
                ("DATABASE_URL", "postgres://u:db-password@h/db"),
                ("REDIS_URL", "redis://:redis-password@h:6379"),
                ("USER_SYNC_CONSOLE_TOKEN", "console-token-never-shown"),
            ]),
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(printed.contains("ConsoleSettings"), "{printed}");
        for secret in [
            "super-secret-key",
            "db-password",
            "redis-password",
            "console-token-never-shown",
        ] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
    }

    #[test]
    fn the_console_follows_its_token_and_refuses_an_open_bind_without_one() {
        let dir = empty_dir();
        let loopback: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let open: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        let load = |vars: &[(&str, &str)]| Settings::load_from(dir.path(), &env(vars)).unwrap();

        let s = load(&[]);
        assert_eq!(s.console.enabled, ConsoleMode::Auto);
        assert!(
            s.console.token_for(open).unwrap().is_none(),
            "auto: off without a token"
        );
        let s = load(&[("USER_SYNC_CONSOLE_TOKEN", " t-1\n")]);
        let token = s.console.token_for(open).unwrap().expect("served");
        assert_eq!(token.expose_secret(), "t-1", "trimmed like every secret");
        let s = load(&[
            ("USER_SYNC__CONSOLE__TOKEN", "t-2"),
            ("USER_SYNC__CONSOLE__ENABLED", "off"),
        ]);
        assert!(
            s.console.token_for(loopback).unwrap().is_none(),
            "off wins over a token"
        );
        let s = load(&[("USER_SYNC_CONSOLE_TOKEN", "   ")]);
        assert!(
            s.console.token_for(open).unwrap().is_none(),
            "blank is unset"
        );

        let s = load(&[("USER_SYNC__CONSOLE__ENABLED", "on")]);
        assert!(
            s.console.token_for(loopback).unwrap().is_none(),
            "on loopback it stays off"
        );
        let error = s.console.token_for(open).unwrap_err().to_string();
        for key in [
            "console.enabled",
            "http.bind",
            "USER_SYNC_CONSOLE_TOKEN",
            "console.token",
        ] {
            assert!(error.contains(key), "{key} named: {error}");
        }

        for bad in ["two words", "zw\u{f6}lf"] {
            let error = Settings::load_from(dir.path(), &env(&[("USER_SYNC_CONSOLE_TOKEN", bad)]))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("console.token is invalid"), "{error}");
            assert!(!error.contains(bad), "the token is never shown: {error}");
        }
        let error =
            Settings::load_from(dir.path(), &env(&[("USER_SYNC__CONSOLE__ENABLED", "yes")]))
                .unwrap_err()
                .to_string();
        assert!(error.contains("console.enabled"), "{error}");
    }
}
