//! Whose create made an Embedded user: the rule that settles a create whose
//! answer was lost.
//!
//! The API's user ids are MongoDB ObjectIds: 24 hex digits whose first 8
//! are the second the user was created (the documentation's ids decode to
//! the dates of the pages they appear in, and an error-log entry's `_id`
//! to the same second as its `createdAt`). Before it sends a create, the
//! worker records its intent (the claim, state `creating`) with the time.
//! A user found under the username afterwards was made by that create when
//! its id's second is no earlier than the claim less a clock-skew margin
//! (the database's and the API's clocks differ a little), and no later
//! than the create could have been made: the claim plus the longest a
//! create's request can take to leave and be answered (`window`), or now
//! if that is sooner, plus the margin. A user made under the username
//! while the event waited to try again (after a create that made nothing)
//! is then not taken for its own.
//!
//! A claim made right after the username was seen free in Embedded (a
//! lookup before the create, with `sync.lookup_before_create = "always"`,
//! or the backfill's snapshot of `GET /users`) needs no id to read: what
//! holds the username afterwards is that create's user.
//!
//! Anything else is not proof, and is never adopted silently: the job
//! reports an `unconfirmed_create` conflict for an operator to settle.
//! The failure modes, both rare because both need a lost answer: a user
//! made outside the worker under the same username less than the margin
//! (plus the second the id rounds down to) before the claim is taken for
//! the worker's own; and with clocks further apart than the margin, the
//! worker's own user is reported instead of adopted.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::EmbeddedUserId;

/// The intent to create that a claim (state `creating`) recorded before
/// its create was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Intent {
    /// When it was recorded, if known.
    pub at: Option<DateTime<Utc>>,
    /// The username was seen free in Embedded right before the claim.
    pub seen_free: bool,
}

/// What a found user's id is held against: the time of the check, how far
/// the clocks may differ, and how long after its claim a create can have
/// been made.
#[derive(Debug, Clone, Copy)]
pub struct ClaimCheck {
    pub now: DateTime<Utc>,
    pub margin: Duration,
    pub window: Duration,
}

impl ClaimCheck {
    pub fn now(margin: Duration, window: Duration) -> Self {
        Self {
            now: Utc::now(),
            margin,
            window,
        }
    }
}

impl Intent {
    /// Who made `found`, the user holding the username this intent
    /// claimed.
    pub fn provenance_of(&self, found: &EmbeddedUserId, check: &ClaimCheck) -> Provenance {
        if self.seen_free {
            return Provenance::SeenFree;
        }
        let latest = self
            .at
            .and_then(|at| at.checked_add_signed(chrono::Duration::from_std(check.window).ok()?))
            .map_or(check.now, |end| end.min(check.now));
        found.provenance(self.at, latest, check.margin)
    }
}

/// What an Embedded user's id says about who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// The username was free right before the claim: the claim's create
    /// made whatever holds it now.
    SeenFree,
    /// Made at or after the claim: the claim's create made it.
    Claimed,
    /// Made before the claim (less the margin): someone else made it.
    Earlier,
    /// Made after the claim's create can have been made (or a time in the
    /// future): not that create's.
    Later,
    /// No time can be read from the id, or no claim time was recorded.
    Unreadable,
}

impl Provenance {
    /// Whether this proves the user the claim's own create.
    pub fn is_the_creates(self) -> bool {
        matches!(self, Self::SeenFree | Self::Claimed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeenFree => "seen_free",
            Self::Claimed => "claimed",
            Self::Earlier => "earlier",
            Self::Later => "later",
            Self::Unreadable => "unreadable",
        }
    }
}

impl EmbeddedUserId {
    /// The second the user was created, when the id is an ObjectId (24 hex
    /// digits, the first 8 the creation time); `None` for any other id.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        let id = self.as_str();
        if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let seconds = u32::from_str_radix(id.get(..8)?, 16).ok()?;
        DateTime::from_timestamp(i64::from(seconds), 0)
    }

    /// Who made this user, given the time of the claim whose create may
    /// have made it and the latest that create can have been made (see the
    /// module docs).
    pub fn provenance(
        &self,
        claimed_at: Option<DateTime<Utc>>,
        latest: DateTime<Utc>,
        margin: Duration,
    ) -> Provenance {
        let (Some(created), Some(claimed)) = (self.created_at(), claimed_at) else {
            return Provenance::Unreadable;
        };
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
        // The id holds whole seconds, rounded down: compare in seconds.
        let earliest = claimed
            .checked_sub_signed(margin)
            .map_or(i64::MIN, |t| t.timestamp());
        let latest = latest
            .checked_add_signed(margin)
            .map_or(i64::MAX, |t| t.timestamp());
        if created.timestamp() < earliest {
            Provenance::Earlier
        } else if created.timestamp() > latest {
            Provenance::Later
        } else {
            Provenance::Claimed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> EmbeddedUserId {
        EmbeddedUserId::parse(text).expect("a valid id")
    }

    fn at(seconds: i64, millis: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, millis * 1_000_000).expect("a valid time")
    }

    #[test]
    fn the_documentations_ids_decode_to_their_dates() {
        let created = id("6155b192a3fa1e5e1f3a8d0c").created_at();
        assert_eq!(
            created,
            DateTime::parse_from_rfc3339("2021-09-30T12:46:10Z")
                .ok()
                .map(|t| t.to_utc())
        );
        assert!(id("61ab8f99c2ae4a2f7c0e4c11").created_at().is_some());
        assert_eq!(
            id("61AB8F99C2AE4A2F7C0E4C11").created_at(),
            id("61ab8f99c2ae4a2f7c0e4c11").created_at()
        );
    }

    #[test]
    fn ids_that_are_not_object_ids_carry_no_time() {
        for text in [
            "8c2d7a3e-93f1-4b5e-a0c2-7d9e1f3b5a6c",
            "6155b192a3fa1e5e1f3a8d0",
            "6155b192a3fa1e5e1f3a8d0c0",
            "6155b192a3fa1e5e1f3a8dzz",
            "user-42",
        ] {
            assert_eq!(id(text).created_at(), None, "{text}");
        }
    }

    #[test]
    fn a_user_made_after_the_claim_is_the_claims() {
        let claimed = at(0x6155_b192, 700);
        let now = at(0x6155_b192 + 5, 0);
        let margin = Duration::from_secs(1);
        // The same second as the claim, rounded down, is after it.
        for made in ["6155b192", "6155b193", "6155b197"] {
            let user = id(&format!("{made}a3fa1e5e1f3a8d0c"));
            assert_eq!(
                user.provenance(Some(claimed), now, margin),
                Provenance::Claimed,
                "{made}"
            );
        }
        // Within the margin before it: the clocks may differ that much.
        let user = id("6155b191a3fa1e5e1f3a8d0c");
        assert_eq!(
            user.provenance(Some(claimed), now, margin),
            Provenance::Claimed
        );
    }

    #[test]
    fn a_user_made_before_the_claim_is_not_the_claims() {
        let claimed = at(0x6155_b192, 700);
        let now = at(0x6155_b192 + 5, 0);
        let user = id("6155b190a3fa1e5e1f3a8d0c");
        assert_eq!(
            user.provenance(Some(claimed), now, Duration::from_secs(1)),
            Provenance::Earlier
        );
        assert_eq!(
            id("6155b191a3fa1e5e1f3a8d0c").provenance(Some(claimed), now, Duration::ZERO),
            Provenance::Earlier
        );
    }

    #[test]
    fn a_username_seen_free_before_the_claim_needs_no_time() {
        let check = ClaimCheck {
            now: at(0x6155_b192, 0),
            margin: Duration::ZERO,
            window: Duration::from_secs(20),
        };
        let intent = Intent {
            at: None,
            seen_free: true,
        };
        for found in [
            "8c2d7a3e-93f1-4b5e-a0c2-7d9e1f3b5a6c",
            "00000001a3fa1e5e1f3a8d0c",
        ] {
            let provenance = intent.provenance_of(&id(found), &check);
            assert_eq!(provenance, Provenance::SeenFree, "{found}");
            assert!(provenance.is_the_creates());
        }
        let unseen = Intent {
            at: Some(at(0x6155_b192, 0)),
            seen_free: false,
        };
        let older = unseen.provenance_of(&id("00000001a3fa1e5e1f3a8d0c"), &check);
        assert_eq!(older, Provenance::Earlier);
        assert!(!older.is_the_creates());
    }

    #[test]
    fn a_user_made_after_the_create_can_have_been_made_is_not_the_claims() {
        let claimed = at(0x6155_b192, 0);
        let intent = Intent {
            at: Some(claimed),
            seen_free: false,
        };
        // Confirmed ten minutes later, after the event waited to retry.
        let check = ClaimCheck {
            now: at(0x6155_b192 + 600, 0),
            margin: Duration::from_secs(1),
            window: Duration::from_secs(22),
        };
        let within = id(&format!("{:08x}a3fa1e5e1f3a8d0c", 0x6155_b192 + 20));
        assert_eq!(intent.provenance_of(&within, &check), Provenance::Claimed);
        let during_the_wait = id(&format!("{:08x}a3fa1e5e1f3a8d0c", 0x6155_b192 + 60));
        assert_eq!(
            intent.provenance_of(&during_the_wait, &check),
            Provenance::Later
        );
    }

    #[test]
    fn a_time_after_now_or_no_claim_time_proves_nothing() {
        let claimed = at(0x6155_b192, 0);
        let now = at(0x6155_b192 + 5, 0);
        let margin = Duration::from_secs(1);
        let later = id("6155b199a3fa1e5e1f3a8d0c");
        assert_eq!(
            later.provenance(Some(claimed), now, margin),
            Provenance::Later
        );
        let random = id("ffffffffa3fa1e5e1f3a8d0c");
        assert_eq!(
            random.provenance(Some(claimed), now, margin),
            Provenance::Later
        );
        let user = id("6155b193a3fa1e5e1f3a8d0c");
        assert_eq!(user.provenance(None, now, margin), Provenance::Unreadable);
        let uuid = id("8c2d7a3e-93f1-4b5e-a0c2-7d9e1f3b5a6c");
        assert_eq!(
            uuid.provenance(Some(claimed), now, margin),
            Provenance::Unreadable
        );
    }
}
