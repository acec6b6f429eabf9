//! Version 2021-12, "Forge": `/forge/2021-12/user` (singular), no version
//! header. A user is `{_id, email, fullName}` and is named by its email,
//! which is the worker's username (the normalised email); it is created
//! with `{name, email}`, both required, and changed with a `PATCH` of both
//! fields.
//!
//! What Forge lacks, as its [`Offers`] say: a lookup by email (the client
//! reads the list instead), a batch create (the backfill creates one user
//! at a time) and the workflow-logs call (an erasure deletes the user only,
//! and its record says why).

use reqwest::Method;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{Call, Dialect, Offers, Request, under};
use crate::config::ApiVersion;
use crate::domain::{EmbeddedUserId, FullName, Username};
use crate::embedded::error::ApiError;
use crate::embedded::users::{BatchOutcome, EmbeddedUser, UserRef, UserUpdate};
use crate::embedded::wire::{malformed, parse};

/// The path of every Forge route, under the base URL.
const ROOT: [&str; 3] = ["forge", "2021-12", "user"];

/// Version 2021-12.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forge;

impl Forge {
    fn url(base: &Url, rest: &[&str]) -> Url {
        let mut segments = ROOT.to_vec();
        segments.extend_from_slice(rest);
        under(base, &segments)
    }
}

/// `name` is required: a user without a full name is sent an empty one,
/// which reads back as none.
#[derive(Serialize)]
struct WireNewUser<'a> {
    name: &'a str,
    email: &'a str,
}

/// Both fields, always: Forge's `PATCH` takes the user whole.
#[derive(Serialize)]
struct WireUpdate<'a> {
    email: &'a str,
    #[serde(rename = "fullName")]
    full_name: &'a str,
}

/// The user of a get (which adds `workflows`, ignored) and of a list.
#[derive(Deserialize)]
struct WireUser {
    #[serde(rename = "_id")]
    id: String,
    email: String,
    #[serde(rename = "fullName", default)]
    full_name: Option<String>,
}

impl TryFrom<WireUser> for EmbeddedUser {
    type Error = ApiError;
    fn try_from(wire: WireUser) -> Result<Self, ApiError> {
        Ok(Self {
            user_id: EmbeddedUserId::parse(&wire.id).map_err(|_| malformed())?,
            username: Username::from_api(&wire.email),
            full_name: read_name(wire.full_name.as_deref()),
        })
    }
}

/// A name as Forge holds it: the empty name a create without one was sent
/// is none.
fn read_name(name: Option<&str>) -> Option<FullName> {
    name.filter(|n| !n.trim().is_empty())
        .map(FullName::from_api)
}

fn json<T: Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

impl Dialect for Forge {
    fn version(&self) -> ApiVersion {
        ApiVersion::V2021_12
    }

    fn offers(&self) -> Offers {
        Offers {
            lookup_by_username: false,
            batch_create: false,
            delete_logs: false,
        }
    }

    fn request(&self, base: &Url, call: &Call<'_>) -> Option<Request> {
        let (method, url, template, body) = match *call {
            Call::Create(user) => {
                let body = WireNewUser {
                    name: user.full_name.as_ref().map_or("", FullName::as_str),
                    email: user.username.as_str(),
                };
                (Method::POST, Self::url(base, &[]), "/user", json(&body))
            }
            Call::List => (Method::GET, Self::url(base, &[]), "/user", None),
            Call::Get(UserRef::Id(id)) => (
                Method::GET,
                Self::url(base, &[id.as_str()]),
                "/user/{id}",
                None,
            ),
            Call::Update(id, update) => {
                // The field that does not change is sent as the worker last
                // synced it.
                let username = update.username.as_ref().unwrap_or(&update.held.username);
                let full_name = update.full_name.as_ref().or(update.held.full_name.as_ref());
                let body = WireUpdate {
                    email: username.as_str(),
                    full_name: full_name.map_or("", FullName::as_str),
                };
                (
                    Method::PATCH,
                    Self::url(base, &[id.as_str()]),
                    "/user/{id}",
                    json(&body),
                )
            }
            Call::Delete(id) => (
                Method::DELETE,
                Self::url(base, &[id.as_str()]),
                "/user/{id}",
                None,
            ),
            Call::Token(id) => (
                Method::GET,
                Self::url(base, &[id.as_str(), "token"]),
                "/user/{id}/token",
                None,
            ),
            Call::Get(UserRef::Username(_)) | Call::CreateBatch(_) | Call::DeleteLogs(_) => {
                return None;
            }
        };
        Some(Request {
            method,
            url,
            template,
            body,
        })
    }

    fn read_user(&self, body: &[u8]) -> Result<EmbeddedUser, ApiError> {
        EmbeddedUser::try_from(parse::<WireUser>(body)?)
    }

    fn read_updated(
        &self,
        body: &[u8],
        id: &EmbeddedUserId,
        update: &UserUpdate,
    ) -> Result<EmbeddedUser, ApiError> {
        // The answer to a `PATCH` is undocumented: the user when it is one,
        // else what was sent, which is the whole user.
        if let Ok(user) = self.read_user(body) {
            return Ok(user);
        }
        let profile = update.result();
        Ok(EmbeddedUser {
            user_id: id.clone(),
            username: profile.username,
            full_name: profile.full_name,
        })
    }

    fn read_batch(&self, _body: &[u8]) -> Result<BatchOutcome, ApiError> {
        // Never sent: `request` offers no batch.
        Err(malformed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Profile;
    use crate::embedded::users::NewUser;

    fn base() -> Url {
        Url::parse("https://api.runalloy.com").unwrap()
    }

    fn profile(email: &str, name: Option<&str>) -> Profile {
        Profile {
            username: Username::from_email(email).unwrap(),
            full_name: FullName::parse_optional(name).unwrap(),
        }
    }

    #[test]
    fn routes_are_singular_under_forge() {
        let id = EmbeddedUserId::parse("u1").unwrap();
        let ada = NewUser::from(&profile("ada@example.com", Some("Ada")));
        let spelled = |call: Call<'_>| {
            let r = Forge.request(&base(), &call).expect("offered");
            (r.method.to_string(), r.url.to_string())
        };
        let at = |path: &str| format!("https://api.runalloy.com/forge/2021-12/user{path}");
        assert_eq!(spelled(Call::Create(&ada)), ("POST".into(), at("")));
        assert_eq!(spelled(Call::List), ("GET".into(), at("")));
        assert_eq!(
            spelled(Call::Get(UserRef::Id(&id))),
            ("GET".into(), at("/u1"))
        );
        assert_eq!(spelled(Call::Delete(&id)), ("DELETE".into(), at("/u1")));
        assert_eq!(spelled(Call::Token(&id)), ("GET".into(), at("/u1/token")));
        let nested = Url::parse("http://127.0.0.1:9/p/").unwrap();
        assert_eq!(
            Forge.request(&nested, &Call::List).unwrap().url.as_str(),
            "http://127.0.0.1:9/p/forge/2021-12/user"
        );
    }

    #[test]
    fn what_forge_lacks_is_never_spelled() {
        let id = EmbeddedUserId::parse("u1").unwrap();
        let username = Username::from_email("ada@example.com").unwrap();
        let users = [NewUser::from(&profile("ada@example.com", None))];
        for call in [
            Call::Get(UserRef::Username(&username)),
            Call::CreateBatch(&users),
            Call::DeleteLogs(&id),
        ] {
            assert!(Forge.request(&base(), &call).is_none(), "{call:?}");
        }
        let offers = Forge.offers();
        assert!(!offers.lookup_by_username && !offers.batch_create && !offers.delete_logs);
    }

    #[test]
    fn a_create_sends_name_and_email_always() {
        let with = NewUser::from(&profile("Ada@Example.com", Some("Ada")));
        let without = NewUser::from(&profile("bob@example.com", None));
        let body = |user: &NewUser| Forge.request(&base(), &Call::Create(user)).unwrap().body;
        assert_eq!(
            body(&with),
            Some(serde_json::json!({"name": "Ada", "email": "ada@example.com"}))
        );
        assert_eq!(
            body(&without),
            Some(serde_json::json!({"name": "", "email": "bob@example.com"}))
        );
    }

    #[test]
    fn a_patch_sends_both_fields_the_unchanged_one_as_last_synced() {
        let id = EmbeddedUserId::parse("u1").unwrap();
        let body = |update: &UserUpdate| {
            let r = Forge.request(&base(), &Call::Update(&id, update)).unwrap();
            assert_eq!(r.method, Method::PATCH);
            assert_eq!(
                r.url.as_str(),
                "https://api.runalloy.com/forge/2021-12/user/u1"
            );
            r.body
        };
        let rename = UserUpdate {
            held: profile("ada@example.com", Some("Ada")),
            username: Some(Username::from_email("ada@lovelace.org").unwrap()),
            full_name: None,
        };
        assert_eq!(
            body(&rename),
            Some(serde_json::json!({"email": "ada@lovelace.org", "fullName": "Ada"}))
        );
        let named = UserUpdate {
            held: profile("bob@example.com", None),
            username: None,
            full_name: FullName::parse_optional(Some("Bob")).unwrap(),
        };
        assert_eq!(
            body(&named),
            Some(serde_json::json!({"email": "bob@example.com", "fullName": "Bob"}))
        );
    }

    #[test]
    fn answers_read_into_the_crates_types() {
        let user = Forge
            .read_user(br#"{"_id":"u1","fullName":"","email":"Ada@Example.com","workflows":[]}"#)
            .unwrap();
        assert_eq!(user.user_id.as_str(), "u1");
        assert_eq!(user.username.as_str(), "ada@example.com");
        assert_eq!(user.full_name, None, "an empty name is none");
        assert!(
            Forge
                .read_user(br#"{"userId":"u1","username":"a@x.io"}"#)
                .is_err()
        );
        assert_eq!(
            Forge.read_created(br#"{"userId":"u2"}"#).unwrap().as_str(),
            "u2"
        );
        // An update answered with anything but a user is the user sent.
        let id = EmbeddedUserId::parse("u1").unwrap();
        let update = UserUpdate {
            held: profile("ada@example.com", None),
            username: None,
            full_name: FullName::parse_optional(Some("Ada")).unwrap(),
        };
        let updated = Forge
            .read_updated(br#"{"success":true}"#, &id, &update)
            .unwrap();
        assert_eq!(updated.profile(), profile("ada@example.com", Some("Ada")));
        assert_eq!(updated.user_id, id);
    }
}
