//! The decision, as a pure function: what to do to bring the Embedded user of
//! one host user from its last synced state to the desired one.
//!
//! No I/O here. The job around it loads both states, carries out the plan and
//! records the result; everything it must decide is decided here and tested
//! exhaustively below.

use crate::domain::{Desired, EmbeddedUserId, Intent, Synced, Username};
use crate::embedded::{NewUser, UserUpdate};

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncPlan {
    /// Nothing the API holds would change: no call.
    Nothing,
    /// Create the user.
    Create(NewUser),
    /// Look the username up first, to learn whether an unconfirmed create
    /// happened; then plan again with what was found. A user found is held
    /// against the claim's `intent` (see `domain::Provenance`).
    Confirm { username: Username, intent: Intent },
    /// Change what differs, and only that.
    Update {
        id: EmbeddedUserId,
        update: UserUpdate,
    },
    /// Erase the user: delete it when there is one, and record the erasure
    /// either way.
    Erase { id: Option<EmbeddedUserId> },
}

pub fn plan(desired: &Desired, synced: &Synced) -> SyncPlan {
    match (desired, synced) {
        (_, Synced::Unconfirmed { username, intent }) => SyncPlan::Confirm {
            username: username.clone(),
            intent: *intent,
        },
        (Desired::Absent, Synced::Nothing) => SyncPlan::Erase { id: None },
        (Desired::Absent, Synced::Present { id, .. }) => SyncPlan::Erase {
            id: Some(id.clone()),
        },
        (Desired::Present(profile), Synced::Nothing) => SyncPlan::Create(NewUser::from(profile)),
        (Desired::Present(want), Synced::Present { id, profile: have }) => {
            let update = UserUpdate {
                held: have.clone(),
                username: (want.username != have.username).then(|| want.username.clone()),
                // A name removed on the host side is left as it is: the API
                // has no documented way to clear it.
                full_name: match &want.full_name {
                    Some(name) if have.full_name.as_ref() != Some(name) => Some(name.clone()),
                    _ => None,
                },
            };
            if update.changes_nothing() {
                SyncPlan::Nothing
            } else {
                SyncPlan::Update {
                    id: id.clone(),
                    update,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FullName, Profile};

    fn profile(email: &str, name: Option<&str>) -> Profile {
        Profile {
            username: Username::from_email(email).unwrap(),
            full_name: FullName::parse_optional(name).unwrap(),
        }
    }

    fn id(s: &str) -> EmbeddedUserId {
        EmbeddedUserId::parse(s).unwrap()
    }

    fn present(email: &str, name: Option<&str>) -> Synced {
        Synced::Present {
            id: id("u1"),
            profile: profile(email, name),
        }
    }

    #[test]
    fn a_new_user_is_created() {
        let want = profile("a@x.io", Some("A"));
        assert_eq!(
            plan(&Desired::Present(want.clone()), &Synced::Nothing),
            SyncPlan::Create(NewUser::from(&want))
        );
    }

    #[test]
    fn an_unconfirmed_create_is_looked_up_whatever_is_desired() {
        let intent = Intent {
            at: chrono::DateTime::from_timestamp(1_700_000_000, 0),
            seen_free: false,
        };
        let synced = Synced::Unconfirmed {
            username: Username::from_email("a@x.io").unwrap(),
            intent,
        };
        let confirm = SyncPlan::Confirm {
            username: Username::from_email("a@x.io").unwrap(),
            intent,
        };
        for desired in [
            Desired::Absent,
            Desired::Present(profile("a@x.io", None)),
            Desired::Present(profile("b@x.io", Some("B"))),
        ] {
            assert_eq!(plan(&desired, &synced), confirm);
        }
    }

    #[test]
    fn nothing_changed_costs_no_call() {
        let cases = [
            (profile("a@x.io", Some("A")), present("a@x.io", Some("A"))),
            (profile("A@X.io", Some("A")), present("a@x.io", Some("A"))),
            (profile("a@x.io", None), present("a@x.io", None)),
            // A name cleared on the host is not sent (no way to clear it).
            (profile("a@x.io", None), present("a@x.io", Some("A"))),
        ];
        for (want, have) in cases {
            assert_eq!(plan(&Desired::Present(want), &have), SyncPlan::Nothing);
        }
    }

    #[test]
    fn only_what_differs_is_updated() {
        let rename = plan(
            &Desired::Present(profile("b@x.io", Some("A"))),
            &present("a@x.io", Some("A")),
        );
        assert_eq!(
            rename,
            SyncPlan::Update {
                id: id("u1"),
                update: UserUpdate {
                    held: profile("a@x.io", Some("A")),
                    username: Some(Username::from_email("b@x.io").unwrap()),
                    full_name: None,
                },
            }
        );
        let rename_and_name = plan(
            &Desired::Present(profile("b@x.io", Some("B"))),
            &present("a@x.io", None),
        );
        assert_eq!(
            rename_and_name,
            SyncPlan::Update {
                id: id("u1"),
                update: UserUpdate {
                    held: profile("a@x.io", None),
                    username: Some(Username::from_email("b@x.io").unwrap()),
                    full_name: FullName::parse_optional(Some("B")).unwrap(),
                },
            }
        );
        let name_only = plan(
            &Desired::Present(profile("a@x.io", Some("B"))),
            &present("a@x.io", Some("A")),
        );
        assert_eq!(
            name_only,
            SyncPlan::Update {
                id: id("u1"),
                update: UserUpdate {
                    held: profile("a@x.io", Some("A")),
                    username: None,
                    full_name: FullName::parse_optional(Some("B")).unwrap(),
                },
            }
        );
    }

    #[test]
    fn a_closure_erases_with_or_without_a_user() {
        assert_eq!(
            plan(&Desired::Absent, &Synced::Nothing),
            SyncPlan::Erase { id: None }
        );
        assert_eq!(
            plan(&Desired::Absent, &present("a@x.io", Some("A"))),
            SyncPlan::Erase { id: Some(id("u1")) }
        );
    }

    #[test]
    fn only_a_closure_ever_deletes() {
        let desired = [
            Desired::Present(profile("a@x.io", None)),
            Desired::Present(profile("b@x.io", Some("B"))),
        ];
        let synced = [
            Synced::Nothing,
            Synced::Unconfirmed {
                username: Username::from_email("a@x.io").unwrap(),
                intent: Intent::default(),
            },
            present("a@x.io", None),
            present("c@x.io", Some("C")),
        ];
        for d in &desired {
            for s in &synced {
                assert!(!matches!(plan(d, s), SyncPlan::Erase { .. }), "{d:?} {s:?}");
            }
        }
    }
}
