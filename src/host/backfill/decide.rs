//! What the backfill does for one host user, as a pure function of what is
//! known about it: its row in `user_sync.users`, who else holds its
//! username (another host user, or an Embedded user in the `GET /users`
//! snapshot), and whether a closure is on its way.
//!
//! The dry run and both modes of the real run decide here, so that the dry
//! run's counts are what the real run then does.

use crate::domain::{
    ClaimCheck, ConflictReason, EmbeddedUserId, FullName, HostUserId, Intent, Profile, Username,
};
use crate::embedded::EmbeddedUser;

/// What is known of one host user when it is decided.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Its row's state in `user_sync.users`, if it has one.
    pub state: Option<String>,
    /// What its row's claim recorded, when the row is `creating`.
    pub claim: Intent,
    /// The Embedded user holding the username a `creating` row claimed: the
    /// create of an earlier run (or of a job) happened.
    pub claimed_found: Option<EmbeddedUser>,
    /// The host user already mapped to that Embedded user, if another (it
    /// was renamed to the claimed username since).
    pub claimed_found_mapped_to: Option<HostUserId>,
    /// Another host user holding or claiming the username.
    pub holder: Option<HostUserId>,
    /// The Embedded user holding the username, in the snapshot.
    pub in_embedded: Option<EmbeddedUser>,
    /// The host user already mapped to that Embedded user, if another.
    pub in_embedded_mapped_to: Option<HostUserId>,
    /// Dry run only: an earlier host user of this run would create the
    /// username.
    pub planned_by: Option<HostUserId>,
    /// An `account_closure` of this host user waits in the outbox.
    pub closing: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already has its Embedded user.
    InSync,
    /// Closed as far as the worker knows (erased, or a closure pending):
    /// never created here; the pipeline owns it.
    Closed,
    /// Link the host user to an Embedded user that holds its username:
    /// `resumed` when it is the result of an unconfirmed create (a run
    /// killed after its call), otherwise one created outside the worker
    /// (`--adopt-existing`).
    Adopt { user: EmbeddedUser, resumed: bool },
    /// The username cannot be had: reported, nothing created.
    Conflict(ConflictFound),
    /// Create the user.
    Create,
}

/// A conflict as the backfill finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictFound {
    pub username: Username,
    /// The host's name for the user, kept with the conflict's event (an
    /// operator's retry applies it).
    pub full_name: Option<FullName>,
    pub reason: ConflictReason,
    pub holder_host_user_id: Option<HostUserId>,
    pub holder_embedded_user_id: Option<EmbeddedUserId>,
}

/// `check` is what a user found for a `creating` row is held against: the
/// claim may be a job's, made without looking the username up first.
pub fn decide(
    host: &HostUserId,
    want: &Profile,
    known: &Known,
    adopt_existing: bool,
    check: &ClaimCheck,
) -> Decision {
    if known.closing {
        return Decision::Closed;
    }
    match known.state.as_deref() {
        Some("synced") => return Decision::InSync,
        Some("erased") => return Decision::Closed,
        Some("creating") => {
            if let Some(user) = &known.claimed_found {
                if let Some(other) = &known.claimed_found_mapped_to {
                    // Never a second mapping of one Embedded user.
                    return Decision::Conflict(ConflictFound {
                        username: want.username.clone(),
                        full_name: want.full_name.clone(),
                        reason: ConflictReason::TakenByHostUser,
                        holder_host_user_id: Some(other.clone()),
                        holder_embedded_user_id: Some(user.user_id.clone()),
                    });
                }
                if !known
                    .claim
                    .provenance_of(&user.user_id, check)
                    .is_the_creates()
                {
                    // Not proven that claim's create: never adopted.
                    return Decision::Conflict(ConflictFound {
                        username: want.username.clone(),
                        full_name: want.full_name.clone(),
                        reason: ConflictReason::UnconfirmedCreate,
                        holder_host_user_id: None,
                        holder_embedded_user_id: Some(user.user_id.clone()),
                    });
                }
                return Decision::Adopt {
                    user: user.clone(),
                    resumed: true,
                };
            }
            // Not in Embedded: that create never happened. Decide afresh.
        }
        _ => {}
    }
    let conflict =
        |reason, holder_host: Option<&HostUserId>, holder_embedded: Option<&EmbeddedUser>| {
            Decision::Conflict(ConflictFound {
                username: want.username.clone(),
                full_name: want.full_name.clone(),
                reason,
                holder_host_user_id: holder_host.cloned(),
                holder_embedded_user_id: holder_embedded.map(|u| u.user_id.clone()),
            })
        };
    if let Some(holder) = known.holder.as_ref().or(known.planned_by.as_ref()) {
        return conflict(ConflictReason::TakenByHostUser, Some(holder), None);
    }
    if let Some(user) = &known.in_embedded {
        return match &known.in_embedded_mapped_to {
            Some(other) if other != host => {
                conflict(ConflictReason::TakenByHostUser, Some(other), Some(user))
            }
            _ if adopt_existing => Decision::Adopt {
                user: user.clone(),
                resumed: false,
            },
            _ => conflict(ConflictReason::TakenInEmbedded, None, Some(user)),
        };
    }
    Decision::Create
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FullName;

    fn host(s: &str) -> HostUserId {
        HostUserId::parse(s).unwrap()
    }

    fn want(email: &str) -> Profile {
        Profile {
            username: Username::from_email(email).unwrap(),
            full_name: FullName::parse_optional(Some("N")).unwrap(),
        }
    }

    fn embedded(id: &str, email: &str) -> EmbeddedUser {
        EmbeddedUser {
            user_id: EmbeddedUserId::parse(id).unwrap(),
            username: Username::from_api(email),
            full_name: None,
        }
    }

    /// Decides at a fixed time, with no margin.
    fn judge(host: &HostUserId, want: &Profile, known: &Known, adopt_existing: bool) -> Decision {
        let check = ClaimCheck {
            now: chrono::DateTime::from_timestamp(0x6155_b200, 0).unwrap(),
            margin: std::time::Duration::ZERO,
            window: std::time::Duration::from_secs(22),
        };
        decide(host, want, known, adopt_existing, &check)
    }

    fn state(s: &str) -> Known {
        Known {
            state: Some(s.into()),
            ..Known::default()
        }
    }

    #[test]
    fn a_new_user_is_created_and_a_synced_one_left_alone() {
        let h = host("h1");
        let w = want("a@x.io");
        assert_eq!(judge(&h, &w, &Known::default(), false), Decision::Create);
        for s in ["failed", "conflict"] {
            assert_eq!(judge(&h, &w, &state(s), false), Decision::Create, "{s}");
        }
        assert_eq!(judge(&h, &w, &state("synced"), false), Decision::InSync);
    }

    #[test]
    fn closed_users_are_never_created() {
        let h = host("h1");
        let w = want("a@x.io");
        assert_eq!(judge(&h, &w, &state("erased"), true), Decision::Closed);
        let closing = Known {
            closing: true,
            ..Known::default()
        };
        assert_eq!(judge(&h, &w, &closing, true), Decision::Closed);
    }

    #[test]
    fn an_unconfirmed_create_is_adopted_when_found_and_redone_when_not() {
        let h = host("h1");
        let w = want("a@x.io");
        let found = Known {
            state: Some("creating".into()),
            // This run's own claim: the snapshot saw the username free.
            claim: Intent {
                at: None,
                seen_free: true,
            },
            claimed_found: Some(embedded("e1", "a@x.io")),
            // The snapshot holds it too: still no conflict.
            in_embedded: Some(embedded("e1", "a@x.io")),
            ..Known::default()
        };
        assert_eq!(
            judge(&h, &w, &found, false),
            Decision::Adopt {
                user: embedded("e1", "a@x.io"),
                resumed: true
            }
        );
        assert_eq!(judge(&h, &w, &state("creating"), false), Decision::Create);
        // Found, but mapped to another host user (renamed to this username
        // since): a conflict with them, never a second mapping.
        let mapped = Known {
            claimed_found_mapped_to: Some(host("h0")),
            ..found
        };
        assert_eq!(
            judge(&h, &w, &mapped, true),
            Decision::Conflict(ConflictFound {
                username: w.username.clone(),
                full_name: w.full_name.clone(),
                reason: ConflictReason::TakenByHostUser,
                holder_host_user_id: Some(host("h0")),
                holder_embedded_user_id: Some(EmbeddedUserId::parse("e1").unwrap()),
            })
        );
    }

    #[test]
    fn a_username_held_elsewhere_is_a_conflict_or_adopted_on_request() {
        let h = host("h1");
        let w = want("a@x.io");
        let by_host = Known {
            holder: Some(host("h0")),
            in_embedded: Some(embedded("e0", "a@x.io")),
            ..Known::default()
        };
        for adopt in [false, true] {
            match judge(&h, &w, &by_host, adopt) {
                Decision::Conflict(c) => {
                    assert_eq!(c.reason, ConflictReason::TakenByHostUser);
                    assert_eq!(c.holder_host_user_id, Some(host("h0")));
                }
                other => panic!("{other:?}"),
            }
        }
        let planned = Known {
            planned_by: Some(host("h0")),
            ..Known::default()
        };
        assert!(matches!(
            judge(&h, &w, &planned, true),
            Decision::Conflict(ConflictFound {
                reason: ConflictReason::TakenByHostUser,
                ..
            })
        ));
        let outside = Known {
            in_embedded: Some(embedded("e9", "a@x.io")),
            ..Known::default()
        };
        assert_eq!(
            judge(&h, &w, &outside, false),
            Decision::Conflict(ConflictFound {
                username: w.username.clone(),
                full_name: w.full_name.clone(),
                reason: ConflictReason::TakenInEmbedded,
                holder_host_user_id: None,
                holder_embedded_user_id: Some(EmbeddedUserId::parse("e9").unwrap()),
            })
        );
        assert_eq!(
            judge(&h, &w, &outside, true),
            Decision::Adopt {
                user: embedded("e9", "a@x.io"),
                resumed: false
            }
        );
        let mapped = Known {
            in_embedded: Some(embedded("e9", "a@x.io")),
            in_embedded_mapped_to: Some(host("h7")),
            ..Known::default()
        };
        assert!(matches!(
            judge(&h, &w, &mapped, true),
            Decision::Conflict(ConflictFound {
                reason: ConflictReason::TakenByHostUser,
                ..
            })
        ));
    }

    #[test]
    fn a_jobs_unconfirmed_create_is_adopted_only_when_its_id_proves_it() {
        let h = host("h1");
        let w = want("a@x.io");
        // A job's claim, made without a lookup, at 0x6155b192.
        let claim = Intent {
            at: chrono::DateTime::from_timestamp(0x6155_b192, 0),
            seen_free: false,
        };
        let found = |id: &str| Known {
            state: Some("creating".into()),
            claim,
            claimed_found: Some(embedded(id, "a@x.io")),
            ..Known::default()
        };
        let made_after = embedded("6155b193a3fa1e5e1f3a8d0c", "a@x.io");
        assert_eq!(
            judge(&h, &w, &found("6155b193a3fa1e5e1f3a8d0c"), false),
            Decision::Adopt {
                user: made_after,
                resumed: true
            }
        );
        for id in ["6155b100a3fa1e5e1f3a8d0c", "e1"] {
            assert_eq!(
                judge(&h, &w, &found(id), true),
                Decision::Conflict(ConflictFound {
                    username: w.username.clone(),
                    full_name: w.full_name.clone(),
                    reason: ConflictReason::UnconfirmedCreate,
                    holder_host_user_id: None,
                    holder_embedded_user_id: Some(EmbeddedUserId::parse(id).unwrap()),
                }),
                "{id}"
            );
        }
    }
}
