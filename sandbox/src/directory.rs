//! The users the sandbox holds: [`SandboxUser`], in the API's JSON shape,
//! and the directory that finds them by id or by username in any letter case.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A user as the sandbox holds it, in the API's JSON shape.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUser {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// As given at creation; unique compared case-insensitively.
    pub username: String,
    #[serde(rename = "fullName", default)]
    pub full_name: Option<String>,
}

impl fmt::Debug for SandboxUser {
    // Personal data stays out of `Debug`, as for the domain types.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxUser")
            .field("user_id", &self.user_id)
            .field(
                "username",
                &format_args!("#{}", fingerprint(&self.username)),
            )
            .field("full_name", &self.full_name.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A short hex tag of a SHA-256 digest: enough to tell the sandbox's users
/// apart in a test's output, too short to recover the input. (The worker's
/// log fingerprints are keyed with the deployment's key, which the sandbox
/// does not know: the two tags differ.)
fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) struct Stored {
    /// Creation order, so listings are stable.
    seq: u64,
    /// When the create reached the sandbox, for latency benchmarks.
    pub(crate) created: Instant,
    pub(crate) user: SandboxUser,
}

/// The users, by id and by lower-cased username.
#[derive(Default)]
pub(crate) struct Directory {
    pub(crate) by_id: HashMap<String, Stored>,
    /// Lower-cased username to id: uniqueness and lookups ignore case.
    pub(crate) by_username: HashMap<String, String>,
    next_seq: u64,
}

impl Directory {
    pub(crate) fn id_of(&self, username: &str) -> Option<&String> {
        self.by_username.get(&username.to_lowercase())
    }

    /// By id, or else by username in any letter case.
    pub(crate) fn find(&self, id_or_username: &str) -> Option<&SandboxUser> {
        self.by_id
            .get(id_or_username)
            .or_else(|| {
                self.id_of(id_or_username)
                    .and_then(|id| self.by_id.get(id.as_str()))
            })
            .map(|stored| &stored.user)
    }

    /// Inserts a user whose username the caller checked is free.
    pub(crate) fn insert(&mut self, user_id: String, username: &str, full_name: Option<String>) {
        self.by_username
            .insert(username.to_lowercase(), user_id.clone());
        self.by_id.insert(
            user_id.clone(),
            Stored {
                seq: self.next_seq,
                created: Instant::now(),
                user: SandboxUser {
                    user_id,
                    username: username.to_owned(),
                    full_name,
                },
            },
        );
        self.next_seq += 1;
    }

    pub(crate) fn remove(&mut self, user_id: &str) -> bool {
        match self.by_id.remove(user_id) {
            Some(stored) => {
                self.by_username
                    .remove(&stored.user.username.to_lowercase());
                true
            }
            None => false,
        }
    }

    /// Every user, in creation order.
    pub(crate) fn ordered(&self) -> Vec<&SandboxUser> {
        let mut stored: Vec<&Stored> = self.by_id.values().collect();
        stored.sort_unstable_by_key(|s| s.seq);
        stored.into_iter().map(|s| &s.user).collect()
    }
}
