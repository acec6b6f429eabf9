//! The users the client's calls take and give back, in the crate's own
//! types: what the API's JSON holds is parsed into these at the edge
//! ([`super::wire`]), so no caller sees a wire shape.

use crate::domain::{EmbeddedUserId, FullName, Profile, Username};

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: Username,
    pub full_name: Option<FullName>,
}

impl From<&Profile> for NewUser {
    fn from(profile: &Profile) -> Self {
        Self {
            username: profile.username.clone(),
            full_name: profile.full_name.clone(),
        }
    }
}

/// A change to an existing user: what differs from what it holds, and
/// only that (`None` leaves a field as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    /// What the user holds before the change, as the worker last synced
    /// it: a version whose update takes the user whole (Forge's `PATCH`)
    /// sends these for the fields that do not change.
    pub held: Profile,
    pub username: Option<Username>,
    pub full_name: Option<FullName>,
}

impl UserUpdate {
    /// No field changes: no call is owed.
    pub fn changes_nothing(&self) -> bool {
        self.username.is_none() && self.full_name.is_none()
    }

    /// What the user holds once the update is applied.
    pub fn result(&self) -> Profile {
        Profile {
            username: self
                .username
                .clone()
                .unwrap_or_else(|| self.held.username.clone()),
            full_name: self
                .full_name
                .clone()
                .or_else(|| self.held.full_name.clone()),
        }
    }
}

/// A user as the API holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedUser {
    pub user_id: EmbeddedUserId,
    pub username: Username,
    pub full_name: Option<FullName>,
}

impl EmbeddedUser {
    /// What the user holds, as the worker compares it with what it wants.
    pub fn profile(&self) -> Profile {
        Profile {
            username: self.username.clone(),
            full_name: self.full_name.clone(),
        }
    }
}

/// How to name a user in a lookup.
#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    Id(&'a EmbeddedUserId),
    Username(&'a Username),
}

impl<'a> UserRef<'a> {
    pub(super) fn segment(self) -> &'a str {
        match self {
            UserRef::Id(id) => id.as_str(),
            UserRef::Username(u) => u.as_str(),
        }
    }
}

/// One entry of a batch's `invalidUsers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidBatchUser {
    /// The API named the username: taken, or otherwise refused.
    Username(Username),
    /// The API gave no username (the docs show `{"fullName": "Missing Username"}`).
    Unnamed,
}

/// What a batch create answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub invalid: Vec<InvalidBatchUser>,
}
