//! `[webhooks]`: where the worker tells the host about conflicts, erasures
//! and failed events, which of them, and the secret it signs them with.
//!
//! In a file of its own, settings and checks together, as the one section
//! whose values become a ready object (a [`WebhookTarget`]: an address
//! and its key) rather than plain values.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use url::Url;

use super::raw::RawWebhooks;
use super::{ConfigError, invalid};
use crate::domain::WebhookKind;

/// What `[webhooks]` says.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Where webhooks go and what signs them; `None` when `webhooks.url`
    /// is empty: webhooks are off.
    target: Option<WebhookTarget>,
    /// The types the deployment sends while webhooks are on
    /// (`webhooks.events`).
    pub events: Vec<WebhookKind>,
    /// How long a webhook is tried before it is abandoned, counted from
    /// the change it reports.
    pub max_age: Duration,
    /// The whole-request timeout of one attempt.
    pub timeout: Duration,
}

/// A receiver and the key its webhooks are signed with: one cannot be
/// configured without the other.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: Url,
    pub secret: WebhookSecret,
}

/// The signing key: the bytes of `whsec_<base64>`, decoded. Never printed.
#[derive(Clone)]
pub struct WebhookSecret(SecretSlice<u8>);

impl WebhookSecret {
    /// Parses `whsec_<base64>` (surrounding white space ignored). The error
    /// says what is wrong without repeating the value.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or("expected whsec_ followed by base64")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not base64")?;
        if key.is_empty() {
            return Err("the part after whsec_ decodes to nothing");
        }
        Ok(Self(SecretSlice::from(key)))
    }

    /// The key, for signing only.
    pub fn key(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A receiver's path or query may carry a token of its own: the
        // origin alone says where webhooks go.
        f.debug_struct("WebhookTarget")
            .field("origin", &self.url.origin().ascii_serialization())
            .field("secret", &self.secret)
            .finish()
    }
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("target", &self.target)
            .field("events", &self.events)
            .field("max_age", &self.max_age)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookSettings {
    /// Where webhooks go; `None` when they are off.
    pub fn target(&self) -> Option<&WebhookTarget> {
        self.target.as_ref()
    }

    /// The types this deployment sends: `webhooks.events`, or none when
    /// webhooks are off.
    pub fn subscribed(&self) -> &[WebhookKind] {
        if self.target.is_some() {
            &self.events
        } else {
            &[]
        }
    }

    /// Settings sending `events` to `target`, for tests and tools.
    pub fn new(target: Option<WebhookTarget>, events: Vec<WebhookKind>) -> Self {
        Self {
            target,
            events,
            max_age: Duration::from_millis(259_200_000),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The checks of `[webhooks]`.
pub(super) fn check(raw: RawWebhooks) -> Result<WebhookSettings, ConfigError> {
    let mut events = Vec::new();
    for name in raw.events.names() {
        let kind = WebhookKind::parse(name).ok_or_else(|| {
            let valid: Vec<&str> = WebhookKind::ALL.iter().map(|k| k.as_str()).collect();
            invalid(
                "webhooks.events",
                format!("unknown type {name:?}; valid: {}", valid.join(", ")),
            )
        })?;
        if !events.contains(&kind) {
            events.push(kind);
        }
    }
    for (key, value) in [
        ("webhooks.max_age_ms", raw.max_age_ms),
        ("webhooks.timeout_ms", raw.timeout_ms),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    let url = raw.url.trim();
    let target = if url.is_empty() {
        None
    } else {
        let url =
            Url::parse(url).map_err(|e| invalid("webhooks.url", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(invalid(
                "webhooks.url",
                "expected an http:// or https:// URL",
            ));
        }
        if events.is_empty() {
            return Err(invalid(
                "webhooks.events",
                "lists no type: name at least one, or leave webhooks.url empty",
            ));
        }
        Some(WebhookTarget {
            url,
            secret: secret(&raw.secret)?,
        })
    };
    Ok(WebhookSettings {
        target,
        events,
        max_age: Duration::from_millis(raw.max_age_ms),
        timeout: Duration::from_millis(raw.timeout_ms),
    })
}

fn secret(raw: &SecretString) -> Result<WebhookSecret, ConfigError> {
    if raw.expose_secret().trim().is_empty() {
        return Err(ConfigError::Missing {
            key: "webhooks.secret",
            hint: "USER_SYNC_WEBHOOK_SECRET (whsec_<base64>; required with webhooks.url)",
        });
    }
    WebhookSecret::parse(raw.expose_secret()).map_err(|reason| {
        invalid(
            "webhooks.secret",
            format!("{reason} (USER_SYNC_WEBHOOK_SECRET; the value is not shown)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Settings;
    use super::*;

    /// `whsec_` and the base64 of "a test key of 24 bytes!!".
    const SECRET: &str = "whsec_YSB0ZXN0IGtleSBvZiAyNCBieXRlcyEh";

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        Settings::load_from(dir.path(), &env)
    }

    #[test]
    fn off_by_default_with_every_type_listed() {
        let s = load(&[]).unwrap().webhooks;
        assert!(s.target().is_none());
        assert!(s.subscribed().is_empty(), "off: nothing is written");
        assert_eq!(s.events, WebhookKind::ALL);
        assert_eq!(s.max_age, Duration::from_secs(3 * 24 * 3600));
        assert_eq!(s.timeout, Duration::from_secs(10));
    }

    #[test]
    fn variables_set_the_url_the_types_and_the_secret() {
        let s = load(&[
            ("USER_SYNC__WEBHOOKS__URL", "https://host.example/hooks"),
            (
                "USER_SYNC__WEBHOOKS__EVENTS",
                "event.failed, erasure.completed",
            ),
            ("USER_SYNC_WEBHOOK_SECRET", &format!("{SECRET}\n")),
            ("USER_SYNC__WEBHOOKS__MAX_AGE_MS", "60000"),
            ("USER_SYNC__WEBHOOKS__TIMEOUT_MS", "1500"),
        ])
        .unwrap()
        .webhooks;
        let target = s.target().expect("on");
        assert_eq!(target.url.as_str(), "https://host.example/hooks");
        assert_eq!(target.secret.key(), b"a test key of 24 bytes!!");
        assert_eq!(
            s.subscribed(),
            [WebhookKind::EventFailed, WebhookKind::ErasureCompleted]
        );
        assert_eq!(s.max_age, Duration::from_secs(60));
        assert_eq!(s.timeout, Duration::from_millis(1500));

        // The key of the section works as well as the variable.
        let s = load(&[
            ("USER_SYNC__WEBHOOKS__URL", "http://127.0.0.1:1/"),
            ("USER_SYNC__WEBHOOKS__SECRET", SECRET),
        ])
        .unwrap()
        .webhooks;
        assert_eq!(s.subscribed(), WebhookKind::ALL);
    }

    #[test]
    fn a_bad_value_names_its_key_and_never_shows_the_secret() {
        let url = ("USER_SYNC__WEBHOOKS__URL", "https://host.example/hooks");
        // (variables, the key named, what the line says)
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: [Case; 8] = [
            (vec![url], "webhooks.secret", "USER_SYNC_WEBHOOK_SECRET"),
            (
                vec![url, ("USER_SYNC_WEBHOOK_SECRET", "s3cr3t-without-prefix")],
                "webhooks.secret",
                "whsec_",
            ),
            (
                vec![url, ("USER_SYNC_WEBHOOK_SECRET", "whsec_not*base64!")],
                "webhooks.secret",
                "base64",
            ),
            (
                vec![url, ("USER_SYNC_WEBHOOK_SECRET", "whsec_")],
                "webhooks.secret",
                "nothing",
            ),
            (
                vec![(
                    "USER_SYNC__WEBHOOKS__EVENTS",
                    "erasure.completed,user.created",
                )],
                "webhooks.events",
                "conflict.opened, conflict.resolved, erasure.completed, event.failed",
            ),
            (
                vec![
                    url,
                    ("USER_SYNC_WEBHOOK_SECRET", SECRET),
                    ("USER_SYNC__WEBHOOKS__EVENTS", " "),
                ],
                "webhooks.events",
                "no type",
            ),
            (
                vec![("USER_SYNC__WEBHOOKS__URL", "ftp://host.example/")],
                "webhooks.url",
                "http",
            ),
            (
                vec![("USER_SYNC__WEBHOOKS__MAX_AGE_MS", "0")],
                "webhooks.max_age_ms",
                "at least 1",
            ),
        ];
        for (vars, key, says) in cases {
            let line = load(&vars).unwrap_err().to_string();
            assert!(line.starts_with(key), "{vars:?}: {line}");
            assert!(line.contains(says), "{vars:?}: {line}");
            assert!(!line.contains('\n'), "{line}");
            for (_, value) in &vars {
                if value.contains("s3cr3t") || value.contains("not*base64") {
                    assert!(!line.contains(value), "the secret was shown: {line}");
                }
            }
        }
    }

    #[test]
    fn debug_never_shows_the_secret_nor_the_receivers_path() {
        let s = load(&[
            (
                "USER_SYNC__WEBHOOKS__URL",
                "https://host.example/hooks/token-in-path?key=token-in-query",
            ),
            ("USER_SYNC_WEBHOOK_SECRET", SECRET),
        ])
        .unwrap();
        let printed = format!("{s:?}");
        let encoded = SECRET.trim_start_matches("whsec_");
        for hidden in [encoded, "a test key", "token-in-path", "token-in-query"] {
            assert!(!printed.contains(hidden), "{hidden} printed: {printed}");
        }
        assert!(printed.contains("https://host.example"), "{printed}");
        // The key's bytes, as Debug of a byte slice would print them.
        let bytes = format!("{:?}", b"a test key of 24 bytes!!".as_slice());
        assert!(!printed.contains(&bytes[1..20]), "{printed}");
    }
}
