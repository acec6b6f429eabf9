//! The worker's vocabulary, parsed at the edge.
//!
//! Every value that enters from the outbox, the host's users table or the
//! Embedded API is turned into one of these types once; past that point a
//! value of the type is valid by construction. Types that carry personal data
//! (`Username`, `FullName`) never print their content through `Debug`, so a
//! stray `{:?}` in a log line or an error cannot leak an email or a name.

mod profile;
mod provenance;
mod report;
mod state;

pub use profile::{Desired, Profile, Synced};
pub use provenance::{ClaimCheck, Intent, Provenance};
pub use report::{
    ConflictRow, ConflictStatus, ErasureRow, EventFilter, EventRow, FinishedInMinute, MappingRow,
    Pause, Retained, RetryTarget, Status, UserRecord,
};
pub use state::{
    ConflictReason, ErasureOutcome, EventKind, EventState, LogsSkipped, RESOLVED_BY_WORKER,
    Resolution, UserState, WebhookKind,
};

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Longest username the worker sends. The API documents no limit; 254 is the
/// longest valid email address, and the username is the email.
pub const MAX_USERNAME_LEN: usize = 254;
/// Longest full name the worker sends. The API documents no limit; anything
/// longer is almost certainly bad data, and is rejected as a permanent error.
pub const MAX_FULL_NAME_LEN: usize = 255;
/// Longest host user id accepted from the outbox.
pub const MAX_HOST_USER_ID_LEN: usize = 255;

/// Why a value from outside was refused. Messages never repeat the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("host_user_id is missing")]
    MissingHostUserId,
    #[error("host_user_id is longer than {MAX_HOST_USER_ID_LEN} characters")]
    HostUserIdTooLong,
    #[error("host_user_id contains control characters")]
    HostUserIdControl,
    #[error("email is missing")]
    MissingEmail,
    #[error("email is not an email address")]
    EmailMalformed,
    #[error("email is longer than {MAX_USERNAME_LEN} characters")]
    EmailTooLong,
    #[error("email contains control characters or white space")]
    EmailControl,
    #[error(
        "email contains a character that lower-cases into another letter (such as the Kelvin sign), which would take another address's username"
    )]
    EmailLookAlike,
    #[error("full_name is longer than {MAX_FULL_NAME_LEN} characters")]
    FullNameTooLong,
    #[error("full_name contains control characters")]
    FullNameControl,
    #[error("embedded user id is empty")]
    EmptyEmbeddedUserId,
    #[error(
        "the Embedded userId is not one the worker can send back: a path separator, a dot segment, white space or a control character"
    )]
    UnsafeEmbeddedUserId,
}

/// The host product's id for one of its users, as written into the outbox.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostUserId(String);

impl HostUserId {
    /// The id exactly as the host wrote it: every query compares it with
    /// what the host wrote in its rows, so a trimmed copy (`"42"` for
    /// `"42 "`) would match none of them, and its events would be
    /// dispatched again forever. Blank is missing.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.trim().is_empty() {
            return Err(InvalidValue::MissingHostUserId);
        }
        if raw.chars().count() > MAX_HOST_USER_ID_LEN {
            return Err(InvalidValue::HostUserIdTooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue::HostUserIdControl);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostUserId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HostUserId> for String {
    fn from(value: HostUserId) -> Self {
        value.0
    }
}

impl fmt::Debug for HostUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostUserId({})", self.0)
    }
}

impl fmt::Display for HostUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Embedded username: the user's email, trimmed and lower-cased.
///
/// Personal data: `Debug` prints a fingerprint, and there is no `Display`.
/// Use [`Username::as_str`] only where the value must leave the process for
/// the API or the worker's own tables.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    /// Normalises an email into a username and checks that it is an email.
    pub fn from_email(raw: &str) -> Result<Self, InvalidValue> {
        // A character that lower-cases into plain ASCII (the Kelvin sign
        // `K` into `k`, `İ` into `i` and a dot) would fold one address
        // onto another's username: refused, never folded.
        let look_alike = |c: char| !c.is_ascii() && c.to_lowercase().any(|l| l.is_ascii());
        if raw.chars().any(look_alike) {
            return Err(InvalidValue::EmailLookAlike);
        }
        let normalised = raw.trim().to_lowercase();
        if normalised.is_empty() {
            return Err(InvalidValue::MissingEmail);
        }
        if normalised.chars().count() > MAX_USERNAME_LEN {
            return Err(InvalidValue::EmailTooLong);
        }
        if normalised
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(InvalidValue::EmailControl);
        }
        let Some((local, domain)) = normalised.rsplit_once('@') else {
            return Err(InvalidValue::EmailMalformed);
        };
        let domain_ok = !domain.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || local.contains('@') || !domain_ok {
            return Err(InvalidValue::EmailMalformed);
        }
        Ok(Self(normalised))
    }

    /// Wraps a username the API returned. It is stored as the API spells it,
    /// lower-cased for comparison, without the email check: users created
    /// outside the worker may hold any username.
    pub fn from_api(raw: &str) -> Self {
        Self(raw.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short, stable, non-reversible tag for correlating log lines.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }

    /// The username with most of each part hidden (`j***@e***.com`), for
    /// summaries shown to an operator.
    pub fn masked(&self) -> String {
        mask_email(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username(#{})", self.fingerprint())
    }
}

/// The user's display name, optional in the API.
///
/// Personal data: `Debug` hides it and there is no `Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FullName(String);

impl FullName {
    /// Parses an optional name: blank becomes `None`.
    pub fn parse_optional(raw: Option<&str>) -> Result<Option<Self>, InvalidValue> {
        let Some(raw) = raw else { return Ok(None) };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.chars().count() > MAX_FULL_NAME_LEN {
            return Err(InvalidValue::FullNameTooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(InvalidValue::FullNameControl);
        }
        Ok(Some(Self(trimmed.to_owned())))
    }

    /// Wraps a name the API returned, as it is.
    pub fn from_api(raw: &str) -> Self {
        Self(raw.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FullName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FullName(<redacted>)")
    }
}

/// The opaque id the Embedded API assigns to a user.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmbeddedUserId(String);

impl EmbeddedUserId {
    /// An id as the API returned it. The id goes back into request paths
    /// (`PUT /users/{userId}`), so one that would change the path (a `/`,
    /// `.` or `..`, a `?`, `#` or `%`) or a terminal (control characters,
    /// white space) is refused here, at the edge: `DELETE /users/..` must
    /// never become `DELETE /users`.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.trim().is_empty() {
            return Err(InvalidValue::EmptyEmbeddedUserId);
        }
        let unsafe_char = |c: char| c.is_control() || c.is_whitespace() || "/\\?#%".contains(c);
        if raw == "." || raw == ".." || raw.chars().any(unsafe_char) {
            return Err(InvalidValue::UnsafeEmbeddedUserId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmbeddedUserId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmbeddedUserId> for String {
    fn from(value: EmbeddedUserId) -> Self {
        value.0
    }
}

impl fmt::Debug for EmbeddedUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmbeddedUserId({})", self.0)
    }
}

impl fmt::Display for EmbeddedUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of this process's fingerprints: the deployment's, once set
/// ([`set_fingerprint_key`]); until then one drawn at random for this
/// process, so that no fingerprint is ever unkeyed.
static FINGERPRINT_KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Keys every fingerprint of this process with the deployment's key (the
/// same in every process of the deployment, so that their logs correlate).
/// The first key set stays; returns whether this one was taken.
pub fn set_fingerprint_key(key: &[u8]) -> bool {
    FINGERPRINT_KEY.set(key.to_vec()).is_ok()
}

/// A short hex tag of `value` for correlating log lines: an HMAC-SHA256
/// under the deployment's key, cut to 12 hex digits. Without the key,
/// nobody can tell whether a candidate email is the one behind it.
pub fn fingerprint(value: &str) -> String {
    let key = FINGERPRINT_KEY.get_or_init(|| {
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        key
    });
    keyed_fingerprint(key, value)
}

/// [`fingerprint`] under `key`.
pub fn keyed_fingerprint(key: &[u8], value: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Hides most of an email: the first character of the local part and of the
/// domain stay, and the top-level domain.
pub fn mask_email(value: &str) -> String {
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    match value.rsplit_once('@') {
        Some((local, domain)) => match domain.rsplit_once('.') {
            Some((_, tld)) => format!("{}***@{}***.{tld}", first(local), first(domain)),
            None => format!("{}***@{}***", first(local), first(domain)),
        },
        None => format!("{}***", first(value)),
    }
}

/// Replaces everything that looks like an email in free text (an API error
/// message that may echo a username) with its masked form.
pub fn redact_emails(text: &str) -> String {
    text.split_inclusive(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .map(|piece| {
            let trimmed =
                piece.trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
            if trimmed.contains('@') {
                let tail = &piece[trimmed.len()..];
                format!("{}{}", mask_email(trimmed), tail)
            } else {
                piece.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_that_lower_case_into_another_address_are_refused() {
        // The Kelvin sign lower-cases to `k`: "\u{212A}ate@x.io" would take
        // kate@x.io's username.
        for email in ["\u{212A}ate@example.com", "\u{130}da@example.com"] {
            assert_eq!(
                Username::from_email(email),
                Err(InvalidValue::EmailLookAlike),
                "{email:?}"
            );
        }
        assert_eq!(
            Username::from_email("ÄDA@Example.com").unwrap().as_str(),
            "äda@example.com",
            "letters that stay themselves lower-cased are fine"
        );
        assert_eq!(
            Username::from_email("Kate@example.com").unwrap().as_str(),
            "kate@example.com"
        );
    }

    #[test]
    fn embedded_user_ids_that_would_change_a_request_path_are_refused() {
        for id in ["61ab8f99e4b0c1a2b3c4d5e6", "user_123-abc", "a.b", "..a"] {
            assert!(EmbeddedUserId::parse(id).is_ok(), "{id}");
        }
        for id in [
            "..",
            ".",
            "a/b",
            "/",
            "a\\b",
            "a?b=1",
            "a#b",
            "%2e%2e",
            "a b",
            "a\nb",
            "a\u{1b}[2J",
            "",
        ] {
            assert!(EmbeddedUserId::parse(id).is_err(), "{id:?} must be refused");
        }
        let refused = EmbeddedUserId::parse("../x").expect_err("refused");
        assert!(
            !refused.to_string().contains("../x"),
            "the reason never repeats the id"
        );
    }

    #[test]
    fn username_is_trimmed_and_lower_cased() {
        let u = Username::from_email("  Ada.Lovelace@Example.COM ").unwrap();
        assert_eq!(u.as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn username_refuses_what_is_not_an_email() {
        for bad in [
            "",
            "   ",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@.com",
            "ada@example.",
            "a b@example.com",
            "ada@exa\u{7}mple.com",
            "ada@@example.com",
            "ada@example..com",
        ] {
            assert!(Username::from_email(bad).is_err(), "accepted {bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Username::from_email(&long), Err(InvalidValue::EmailTooLong));
    }

    #[test]
    fn personal_data_never_prints_through_debug() {
        let u = Username::from_email("ada@example.com").unwrap();
        let n = FullName::parse_optional(Some("Ada Lovelace"))
            .unwrap()
            .unwrap();
        let printed = format!("{u:?} {n:?}");
        assert!(!printed.contains("ada"), "{printed}");
        assert!(!printed.contains("Ada"), "{printed}");
    }

    #[test]
    fn full_name_rules() {
        assert_eq!(FullName::parse_optional(None), Ok(None));
        assert_eq!(FullName::parse_optional(Some("  ")), Ok(None));
        assert_eq!(
            FullName::parse_optional(Some("a\u{0}b")),
            Err(InvalidValue::FullNameControl)
        );
        assert_eq!(
            FullName::parse_optional(Some(&"x".repeat(256))),
            Err(InvalidValue::FullNameTooLong)
        );
        assert_eq!(
            FullName::parse_optional(Some(" Ada "))
                .unwrap()
                .unwrap()
                .as_str(),
            "Ada"
        );
    }

    #[test]
    fn host_user_id_rules() {
        assert_eq!(HostUserId::parse(" "), Err(InvalidValue::MissingHostUserId));
        assert_eq!(
            HostUserId::parse("a\nb"),
            Err(InvalidValue::HostUserIdControl)
        );
        assert_eq!(
            HostUserId::parse(" 42 ").unwrap().as_str(),
            " 42 ",
            "kept as the host wrote it, to match its rows"
        );
    }

    #[test]
    fn masking_and_redaction_hide_emails() {
        assert_eq!(mask_email("ada@example.com"), "a***@e***.com");
        let text = "username \"ada@example.com\" already exists";
        let redacted = redact_emails(text);
        assert!(!redacted.contains("ada@example.com"), "{redacted}");
        assert!(redacted.contains("already exists"));
        assert_eq!(fingerprint("x").len(), 12);
    }

    #[test]
    fn fingerprints_are_keyed() {
        let email = "ada@example.com";
        let a = keyed_fingerprint(b"deployment a", email);
        assert_eq!(a, keyed_fingerprint(b"deployment a", email), "stable");
        assert_eq!(a.len(), 12);
        assert_ne!(a, keyed_fingerprint(b"deployment b", email), "another key");
        assert_ne!(a, keyed_fingerprint(b"deployment a", "bob@example.com"));
        use sha2::Digest;
        let unkeyed: String = Sha256::digest(email.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(
            a, unkeyed,
            "a plain digest of a candidate email does not match"
        );
        // RFC 4231, test case 2: HMAC-SHA256("Jefe", "what do ya want ...").
        assert_eq!(
            keyed_fingerprint(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60"
        );
    }
}
