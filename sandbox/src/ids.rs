//! User ids and user tokens, shaped like the API's.
//!
//! The API's user ids are MongoDB ObjectIds: 24 hex digits, the first 8
//! the creation time in whole seconds (the documentation's example ids
//! decode to the dates of the pages they appear in). The sandbox mints them
//! the same way, or version-4 UUIDs ([`IdFormat::Uuid`]) for a client that
//! must cope with ids it cannot read a time from.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// The documented lifetime of a user token.
const TOKEN_LIFETIME_SECS: u64 = 30 * 60;

/// How the sandbox mints user ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdFormat {
    /// 24 hex digits: creation time (seconds, 8 digits), 10 random digits
    /// fixed per sandbox, a 6-digit counter. As the API mints them.
    #[default]
    ObjectId,
    /// Random version-4 UUIDs: no time can be read from them.
    Uuid,
}

impl IdFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "objectid" | "object_id" => Some(Self::ObjectId),
            "uuid" => Some(Self::Uuid),
            _ => None,
        }
    }
}

/// Mints the user ids of one sandbox.
pub(crate) struct IdMint {
    format: IdFormat,
    /// The ObjectId's middle part: random, fixed for this sandbox.
    process: u64,
    counter: u32,
}

impl IdMint {
    pub(crate) fn new(format: IdFormat, rng: &mut StdRng) -> Self {
        Self {
            format,
            process: rng.random::<u64>() & 0xff_ffff_ffff,
            counter: rng.random::<u32>() & 0xff_ffff,
        }
    }

    /// A new id for a user created at `created` (seconds since the epoch).
    pub(crate) fn mint(&mut self, rng: &mut StdRng, created: u64) -> String {
        match self.format {
            IdFormat::Uuid => uuid_like(rng),
            IdFormat::ObjectId => {
                self.counter = (self.counter + 1) & 0xff_ffff;
                // Four bytes of seconds, as MongoDB's: good until 2106.
                let seconds = created & 0xffff_ffff;
                format!("{seconds:08x}{:010x}{:06x}", self.process, self.counter)
            }
        }
    }
}

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random version-4 UUID, as text.
pub(crate) fn uuid_like(rng: &mut StdRng) -> String {
    let bits: u128 = rng.random();
    let bits = (bits & !(0xf << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xffff,
        (bits >> 64) & 0xffff,
        (bits >> 48) & 0xffff,
        bits & 0xffff_ffff_ffff
    )
}

/// Base64url without padding, for JWT-shaped tokens.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A token shaped like the API's (a JWT naming the user, valid 30 minutes),
/// with a random signature: nothing verifies it.
pub(crate) fn user_token(rng: &mut StdRng, user_id: &str) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
        iss: &'static str,
    }
    let now = now_secs();
    let claims = Claims {
        sub: user_id,
        iat: now,
        exp: now + TOKEN_LIFETIME_SECS,
        iss: "user-sync-sandbox",
    };
    let signature: [u8; 32] = rng.random();
    format!(
        "{}.{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url(&serde_json::to_vec(&claims).unwrap_or_default()),
        base64url(&signature)
    )
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn base64url_matches_known_values() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(
            base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        );
    }

    #[test]
    fn object_ids_carry_their_creation_second() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut mint = IdMint::new(IdFormat::ObjectId, &mut rng);
        let first = mint.mint(&mut rng, 0x6155_b192);
        let second = mint.mint(&mut rng, 0x6155_b192);
        assert_eq!(first.len(), 24, "{first}");
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert!(first.starts_with("6155b192"), "{first}");
        assert_eq!(first[8..18], second[8..18], "one sandbox, one middle part");
        assert_ne!(first, second, "the counter moves");
    }

    #[test]
    fn ids_look_like_uuids() {
        let mut rng = StdRng::seed_from_u64(7);
        let id = uuid_like(&mut rng);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "{id}");
        assert!(
            matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
    }
}
