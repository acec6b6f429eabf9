//! The checks of the loaded values: each bad value is refused with one line
//! that names its key, and what passes becomes the typed [`Settings`].
//!
//! Apart from the settings themselves so that their file reads as what the
//! worker can be told, and this one as what it refuses.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::raw::{Raw, RawSource};
use super::{
    ApiVersion, ConfigError, ConflictSettings, ConsoleSettings, DatabaseSettings,
    DispatcherSettings, EmbeddedSettings, GdprSettings, HttpSettings, LogSettings,
    RateLimitSettings, RedisSettings, Settings, SourceSettings, SourceTable, SourceTarget,
    SweeperSettings, SyncSettings, WorkerSettings, database_kind, invalid,
};

impl Settings {
    pub(super) fn check(raw: Raw) -> Result<Self, ConfigError> {
        let database_url = non_empty(raw.database.url);
        if let Some(url) = &database_url
            && database_kind(url.expose_secret()).is_none()
        {
            return Err(invalid(
                "database.url",
                "expected a postgres://, postgresql:// or sqlite: URL",
            ));
        }
        positive(
            "database.max_connections",
            u64::from(raw.database.max_connections),
        )?;

        let redis_url = raw.redis.url;
        if !(redis_url.expose_secret().starts_with("redis://")
            || redis_url.expose_secret().starts_with("rediss://"))
        {
            return Err(invalid("redis.url", "expected a redis:// or rediss:// URL"));
        }
        let namespace_ok = !raw.redis.namespace.is_empty()
            && raw
                .redis
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !namespace_ok {
            // The queue's wake-up channel is split on ':', so no ':' here.
            return Err(invalid(
                "redis.namespace",
                "use only letters, digits, '-', '_' and '.'",
            ));
        }

        let api_version = ApiVersion::parse(&raw.embedded.api_version).ok_or_else(|| {
            invalid(
                "embedded.api_version",
                format!("supported versions: {}", ApiVersion::supported()),
            )
        })?;
        let base_url = check_base_url(&raw.embedded.base_url, api_version)?;
        let timeout = millis("embedded.timeout_ms", raw.embedded.timeout_ms)?;
        let connect_timeout = millis(
            "embedded.connect_timeout_ms",
            raw.embedded.connect_timeout_ms,
        )?;

        positive("worker.concurrency", raw.worker.concurrency as u64)?;
        positive("worker.max_attempts", u64::from(raw.worker.max_attempts))?;
        let backoff_base = millis("worker.backoff_base_ms", raw.worker.backoff_base_ms)?;
        let backoff_cap = millis("worker.backoff_cap_ms", raw.worker.backoff_cap_ms)?;
        if backoff_cap < backoff_base {
            return Err(invalid(
                "worker.backoff_cap_ms",
                "must not be below worker.backoff_base_ms",
            ));
        }
        positive(
            "dispatcher.batch_size",
            u64::from(raw.dispatcher.batch_size),
        )?;
        positive(
            "dispatcher.users_per_job",
            raw.dispatcher.users_per_job as u64,
        )?;
        positive(
            "rate_limit.requests_per_second",
            u64::from(raw.rate_limit.requests_per_second),
        )?;
        positive("rate_limit.burst", u64::from(raw.rate_limit.burst))?;
        if raw.rate_limit.adaptive
            && raw.rate_limit.max_requests_per_second < raw.rate_limit.requests_per_second
        {
            return Err(invalid(
                "rate_limit.max_requests_per_second",
                "must be at least rate_limit.requests_per_second",
            ));
        }
        let bind = raw
            .http
            .bind
            .parse()
            .map_err(|_| invalid("http.bind", "expected an address such as 127.0.0.1:9090"))?;
        if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
            return Err(invalid(
                "log.level",
                "expected a level such as info or debug",
            ));
        }

        let source = check_source(raw.source)?;

        Ok(Self {
            database: DatabaseSettings {
                url: database_url,
                max_connections: raw.database.max_connections,
            },
            redis: RedisSettings {
                url: redis_url,
                namespace: raw.redis.namespace,
            },
            embedded: EmbeddedSettings {
                base_url,
                api_version,
                api_key: header_safe("embedded.api_key", non_empty(raw.embedded.api_key))?,
                timeout,
                connect_timeout,
            },
            worker: WorkerSettings {
                concurrency: raw.worker.concurrency,
                max_attempts: raw.worker.max_attempts,
                backoff_base,
                backoff_cap,
                auth_retry_interval: millis(
                    "worker.auth_retry_interval_ms",
                    raw.worker.auth_retry_interval_ms,
                )?,
                shutdown_timeout: millis(
                    "worker.shutdown_timeout_ms",
                    raw.worker.shutdown_timeout_ms,
                )?,
            },
            sync: SyncSettings {
                lookup_before_create: raw.sync.lookup_before_create,
                clock_skew_margin: Duration::from_millis(raw.sync.clock_skew_margin_ms),
                create_window: SyncSettings::create_window_for(timeout),
                delete_workflow_logs: raw.gdpr.delete_workflow_logs,
            },
            dispatcher: DispatcherSettings {
                batch_size: raw.dispatcher.batch_size,
                users_per_job: raw.dispatcher.users_per_job,
                poll_interval: millis(
                    "dispatcher.poll_interval_ms",
                    raw.dispatcher.poll_interval_ms,
                )?,
            },
            sweeper: SweeperSettings {
                interval: millis("sweeper.interval_ms", raw.sweeper.interval_ms)?,
                redispatch_after: millis(
                    "sweeper.redispatch_after_ms",
                    raw.sweeper.redispatch_after_ms,
                )?,
            },
            conflicts: ConflictSettings {
                recheck_interval: millis(
                    "conflicts.recheck_interval_ms",
                    raw.conflicts.recheck_interval_ms,
                )?,
            },
            rate_limit: RateLimitSettings {
                requests_per_second: raw.rate_limit.requests_per_second,
                burst: raw.rate_limit.burst,
                scope: raw.rate_limit.scope,
                adaptive: raw.rate_limit.adaptive,
                max_requests_per_second: raw.rate_limit.max_requests_per_second,
            },
            http: HttpSettings {
                bind,
                header_read_timeout: millis(
                    "http.header_read_timeout_ms",
                    raw.http.header_read_timeout_ms,
                )?,
                request_timeout: millis("http.request_timeout_ms", raw.http.request_timeout_ms)?,
                max_connections: usize::try_from(raw.http.max_connections)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid("http.max_connections", "must be at least 1"))?,
                database_connections: {
                    positive(
                        "http.database_connections",
                        u64::from(raw.http.database_connections),
                    )?;
                    raw.http.database_connections
                },
                api_check_interval: millis(
                    "http.api_check_interval_ms",
                    raw.http.api_check_interval_ms,
                )?,
            },
            log: LogSettings {
                format: raw.log.format,
                level: raw.log.level,
            },
            fingerprint_key: raw.log.fingerprint_key.and_then(non_empty),
            source,
            webhooks: super::webhooks::check(raw.webhooks)?,
            console: ConsoleSettings {
                enabled: raw.console.enabled,
                token: header_safe("console.token", raw.console.token.and_then(non_empty))?,
            },
            gdpr: check_gdpr(&raw.gdpr)?,
            retention: super::retention::check(&raw.retention)?,
        })
    }
}

fn check_gdpr(raw: &super::raw::RawGdpr) -> Result<GdprSettings, ConfigError> {
    if raw.alert_after_s == 0 {
        return Err(invalid("gdpr.alert_after_s", "must be at least 1"));
    }
    if raw.deadline_s < raw.alert_after_s {
        return Err(invalid(
            "gdpr.deadline_s",
            "must be at least gdpr.alert_after_s: the alert comes before the deadline",
        ));
    }
    Ok(GdprSettings {
        alert_after: Duration::from_secs(raw.alert_after_s),
        deadline: Duration::from_secs(raw.deadline_s),
    })
}

/// The most host users one page may hold.
const MAX_PAGE_SIZE: u32 = 10_000;

fn check_source(raw: RawSource) -> Result<SourceSettings, ConfigError> {
    if raw.page_size == 0 || raw.page_size > MAX_PAGE_SIZE {
        return Err(invalid(
            "source.page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    let optional = |value: String| {
        let value = value.trim().to_owned();
        (!value.is_empty()).then_some(value)
    };
    let table = optional(raw.table);
    let query = optional(raw.query);
    let target = match (table, query) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "source.query",
                "set either source.table or source.query, not both",
            ));
        }
        (None, None) => None,
        (None, Some(query)) => Some(SourceTarget::Query(
            query.trim_end_matches(';').trim_end().to_owned(),
        )),
        (Some(table), None) => {
            let column = |key: &'static str, value: String| match optional(value) {
                Some(name) if name.chars().any(char::is_control) => {
                    Err(invalid(key, "contains control characters"))
                }
                Some(name) => Ok(name),
                None => Err(invalid(key, "is required with source.table")),
            };
            if table.chars().any(char::is_control) {
                return Err(invalid("source.table", "contains control characters"));
            }
            Some(SourceTarget::Table(SourceTable {
                table,
                id_column: column("source.id_column", raw.id_column)?,
                email_column: column("source.email_column", raw.email_column)?,
                name_column: optional(raw.name_column),
                closed_condition: optional(raw.closed_condition),
            }))
        }
    };
    Ok(SourceSettings {
        target,
        page_size: raw.page_size,
    })
}

/// A secret that goes into an HTTP header as it is: anything but visible
/// ASCII there (an inner newline, a non-ASCII letter) would make every
/// request fail to build, so it is refused at start, by its key.
fn header_safe(
    key: &'static str,
    secret: Option<SecretString>,
) -> Result<Option<SecretString>, ConfigError> {
    match secret {
        Some(s) if !s.expose_secret().chars().all(|c| c.is_ascii_graphic()) => Err(invalid(
            key,
            "must be printable ASCII without spaces, as an HTTP header carries it",
        )),
        other => Ok(other),
    }
}

/// A secret without the white space around it (a key mounted from a file
/// usually ends in a newline, which no HTTP header may carry), or `None`
/// when nothing is left.
fn non_empty(secret: SecretString) -> Option<SecretString> {
    let trimmed = secret.expose_secret().trim();
    (!trimmed.is_empty()).then(|| SecretString::from(trimmed))
}

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

fn millis(key: &'static str, value: u64) -> Result<Duration, ConfigError> {
    positive(key, value)?;
    Ok(Duration::from_millis(value))
}

/// `embedded.base_url`: scheme and host, with any prefix of the caller's
/// own (a proxy's path); empty means the version's documented host. The
/// version's path is the client's to add, so a base URL that ends in it
/// (copied from an old client's configuration) is refused rather than
/// doubled.
fn check_base_url(raw: &str, version: ApiVersion) -> Result<Url, ConfigError> {
    let raw = raw.trim();
    let text = if raw.is_empty() {
        version.default_base_url()
    } else {
        raw
    };
    let url =
        Url::parse(text).map_err(|e| invalid("embedded.base_url", format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(invalid(
            "embedded.base_url",
            "expected an http:// or https:// URL",
        ));
    }
    let last = url
        .path_segments()
        .and_then(|mut segments| segments.rfind(|s| !s.is_empty()));
    if last.is_some_and(|segment| ApiVersion::parse(segment).is_some()) {
        return Err(invalid(
            "embedded.base_url",
            format!("give the scheme and host only: the client adds the path of version {version}"),
        ));
    }
    Ok(url)
}
