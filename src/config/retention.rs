//! `[retention]`: how long finished rows are kept before the worker
//! deletes them, in days (0: kept for good), and how often it looks.

use std::time::Duration;

use super::raw::RawRetention;
use super::{ConfigError, invalid};

/// The longest a retention may be, in days (about a hundred years): a
/// larger number is a mistake, not a wish to keep rows longer than 0 does.
pub const MAX_DAYS: u32 = 36_500;

/// What `[retention]` says. A period of `None` keeps those rows for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `events_days`: finished events the worker no longer needs go this
    /// long after they finished.
    pub events: Option<Duration>,
    /// `conflicts_days`: resolved conflicts (but ignored ones) go this
    /// long after they were resolved.
    pub conflicts: Option<Duration>,
    /// `erasures_days`: erasure records (the proof) go this long after the
    /// erasure completed. Default: kept for good.
    pub erasures: Option<Duration>,
    /// `interval_ms`: how often the deployment runs a pass.
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            events: Some(days(7)),
            conflicts: Some(days(90)),
            erasures: None,
            interval: Duration::from_secs(3600),
        }
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

pub(super) fn check(raw: &RawRetention) -> Result<RetentionSettings, ConfigError> {
    let period = |key: &'static str, n: u32| {
        if n > MAX_DAYS {
            return Err(invalid(
                key,
                format!("must be at most {MAX_DAYS} days (0 keeps the rows for good)"),
            ));
        }
        Ok((n > 0).then(|| days(n)))
    };
    if raw.interval_ms == 0 || raw.interval_ms > 86_400_000 {
        return Err(invalid(
            "retention.interval_ms",
            "must be between 1 and 86400000 (a day)",
        ));
    }
    Ok(RetentionSettings {
        events: period("retention.events_days", raw.events_days)?,
        conflicts: period("retention.conflicts_days", raw.conflicts_days)?,
        erasures: period("retention.erasures_days", raw.erasures_days)?,
        interval: Duration::from_millis(raw.interval_ms),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(dir.path(), &env)
    }

    #[test]
    fn the_defaults_keep_events_a_week_conflicts_90_days_and_erasures_for_good() {
        let settings = load(&[]).expect("the defaults load");
        assert_eq!(settings.retention, RetentionSettings::default());
        assert_eq!(settings.retention.events, Some(days(7)));
        assert_eq!(settings.retention.conflicts, Some(days(90)));
        assert_eq!(settings.retention.erasures, None);
        assert_eq!(settings.retention.interval, Duration::from_secs(3600));
    }

    #[test]
    fn the_repository_defaults_file_says_the_same_as_the_built_in_defaults() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load_from(&dir, &HashMap::new()).expect("config/ loads");
        assert_eq!(settings.retention, RetentionSettings::default());
    }

    #[test]
    fn zero_keeps_rows_for_good_and_other_days_are_taken_as_given() {
        let settings = load(&[
            ("USER_SYNC__RETENTION__EVENTS_DAYS", "0"),
            ("USER_SYNC__RETENTION__CONFLICTS_DAYS", "1"),
            ("USER_SYNC__RETENTION__ERASURES_DAYS", "3650"),
            ("USER_SYNC__RETENTION__INTERVAL_MS", "250"),
        ])
        .expect("valid retention");
        assert_eq!(settings.retention.events, None);
        assert_eq!(settings.retention.conflicts, Some(days(1)));
        assert_eq!(settings.retention.erasures, Some(days(3650)));
        assert_eq!(settings.retention.interval, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_refused_naming_their_key() {
        for (var, value, key) in [
            (
                "USER_SYNC__RETENTION__EVENTS_DAYS",
                "-1",
                "retention.events_days",
            ),
            (
                "USER_SYNC__RETENTION__EVENTS_DAYS",
                "7.5",
                "retention.events_days",
            ),
            (
                "USER_SYNC__RETENTION__EVENTS_DAYS",
                "36501",
                "retention.events_days",
            ),
            (
                "USER_SYNC__RETENTION__CONFLICTS_DAYS",
                "a week",
                "retention.conflicts_days",
            ),
            (
                "USER_SYNC__RETENTION__CONFLICTS_DAYS",
                "100000",
                "retention.conflicts_days",
            ),
            (
                "USER_SYNC__RETENTION__ERASURES_DAYS",
                "-30",
                "retention.erasures_days",
            ),
            (
                "USER_SYNC__RETENTION__ERASURES_DAYS",
                "99999999",
                "retention.erasures_days",
            ),
            (
                "USER_SYNC__RETENTION__INTERVAL_MS",
                "0",
                "retention.interval_ms",
            ),
            (
                "USER_SYNC__RETENTION__INTERVAL_MS",
                "86400001",
                "retention.interval_ms",
            ),
        ] {
            let line = load(&[(var, value)])
                .expect_err("a bad retention value is refused")
                .to_string();
            assert!(line.contains(key), "{var}={value}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
