//! What a host user's Embedded user should be, and what the worker last
//! knew it to be: the two inputs of the plan.

use super::{EmbeddedUserId, FullName, Intent, Username};

/// What an Embedded user should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub username: Username,
    pub full_name: Option<FullName>,
}

/// The state the newest event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// Signup or profile change: the user exists with this profile.
    Present(Profile),
    /// Account closure: the user is deleted.
    Absent,
}

/// What the worker last knew of the Embedded user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// No Embedded user: never created, erased, or never obtained (conflict).
    Nothing,
    /// A create of this username was sent and its answer never arrived: the
    /// user may or may not exist. `intent` is what the claim recorded.
    Unconfirmed { username: Username, intent: Intent },
    /// The Embedded user exists, as last synced.
    Present {
        id: EmbeddedUserId,
        profile: Profile,
    },
}
