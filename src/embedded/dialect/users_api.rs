//! Versions 2025-09, 2024-03 and 2023-12: one set of routes and shapes
//! (`/users`, `{username, fullName}`, `PUT` to update), the version said in
//! an `x-api-version` header (2025-09) or as the first segment of the path
//! (the two older ones, which send no header).

use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{Call, Dialect, Offers, Request, under};
use crate::config::ApiVersion;
use crate::domain::{EmbeddedUserId, FullName, Username};
use crate::embedded::error::ApiError;
use crate::embedded::users::{BatchOutcome, EmbeddedUser, InvalidBatchUser, NewUser, UserUpdate};
use crate::embedded::wire::{malformed, parse};

/// Where a version of this family says which version it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// `x-api-version: <version>`, no version in the path.
    InHeader,
    /// `/<version>/users...`, no header.
    InPath,
}

/// A version of the `/users` family.
#[derive(Debug, Clone, Copy)]
pub struct UsersApi {
    version: ApiVersion,
    said: Said,
}

impl UsersApi {
    pub const V2025_09: Self = Self {
        version: ApiVersion::V2025_09,
        said: Said::InHeader,
    };
    pub const V2024_03: Self = Self {
        version: ApiVersion::V2024_03,
        said: Said::InPath,
    };
    pub const V2023_12: Self = Self {
        version: ApiVersion::V2023_12,
        said: Said::InPath,
    };

    fn url(&self, base: &Url, route: &[&str]) -> Url {
        match self.said {
            Said::InHeader => under(base, route),
            Said::InPath => {
                let mut segments = vec![self.version.as_str()];
                segments.extend_from_slice(route);
                under(base, &segments)
            }
        }
    }
}

#[derive(Serialize)]
struct WireNewUser<'a> {
    username: &'a str,
    #[serde(rename = "fullName", skip_serializing_if = "Option::is_none")]
    full_name: Option<&'a str>,
}

impl<'a> From<&'a NewUser> for WireNewUser<'a> {
    fn from(user: &'a NewUser) -> Self {
        Self {
            username: user.username.as_str(),
            full_name: user.full_name.as_ref().map(FullName::as_str),
        }
    }
}

/// Only what changes: a field left out stays as it is.
#[derive(Serialize)]
struct WireUpdate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(rename = "fullName", skip_serializing_if = "Option::is_none")]
    full_name: Option<&'a str>,
}

#[derive(Deserialize)]
pub(in crate::embedded) struct WireUser {
    #[serde(rename = "userId")]
    pub(in crate::embedded) user_id: String,
    pub(in crate::embedded) username: String,
    #[serde(rename = "fullName", default)]
    full_name: Option<String>,
}

impl TryFrom<WireUser> for EmbeddedUser {
    type Error = ApiError;
    fn try_from(wire: WireUser) -> Result<Self, ApiError> {
        Ok(Self {
            user_id: EmbeddedUserId::parse(&wire.user_id).map_err(|_| malformed())?,
            username: Username::from_api(&wire.username),
            full_name: wire.full_name.as_deref().map(FullName::from_api),
        })
    }
}

#[derive(Deserialize)]
struct WireBatch {
    #[serde(rename = "invalidUsers", default)]
    invalid_users: Vec<WireInvalid>,
}

#[derive(Deserialize)]
struct WireInvalid {
    #[serde(default)]
    username: Option<String>,
}

fn json<T: Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

impl Dialect for UsersApi {
    fn version(&self) -> ApiVersion {
        self.version
    }

    fn offers(&self) -> Offers {
        Offers {
            lookup_by_username: true,
            batch_create: true,
            delete_logs: true,
        }
    }

    fn request(&self, base: &Url, call: &Call<'_>) -> Option<Request> {
        let (method, route, template, body): (_, Vec<&str>, _, _) = match *call {
            // Documented with a trailing slash in 2025-09; the older
            // versions' paths have none.
            Call::Create(user) => match self.said {
                Said::InHeader => (
                    Method::POST,
                    vec!["users", ""],
                    "/users/",
                    json(&WireNewUser::from(user)),
                ),
                Said::InPath => (
                    Method::POST,
                    vec!["users"],
                    "/users",
                    json(&WireNewUser::from(user)),
                ),
            },
            Call::CreateBatch(users) => {
                #[derive(Serialize)]
                struct Body<'a> {
                    users: Vec<WireNewUser<'a>>,
                }
                let body = Body {
                    users: users.iter().map(WireNewUser::from).collect(),
                };
                (
                    Method::POST,
                    vec!["users", "batch"],
                    "/users/batch",
                    json(&body),
                )
            }
            Call::List => (Method::GET, vec!["users"], "/users", None),
            Call::Get(user) => (
                Method::GET,
                vec!["users", user.segment()],
                "/users/{id}",
                None,
            ),
            Call::Update(id, update) => {
                let body = WireUpdate {
                    username: update.username.as_ref().map(Username::as_str),
                    full_name: update.full_name.as_ref().map(FullName::as_str),
                };
                (
                    Method::PUT,
                    vec!["users", id.as_str()],
                    "/users/{id}",
                    json(&body),
                )
            }
            Call::Delete(id) => (
                Method::DELETE,
                vec!["users", id.as_str()],
                "/users/{id}",
                None,
            ),
            Call::Token(id) => (
                Method::GET,
                vec!["users", id.as_str(), "token"],
                "/users/{id}/token",
                None,
            ),
            Call::DeleteLogs(id) => (
                Method::DELETE,
                vec!["users", id.as_str(), "logs"],
                "/users/{id}/logs",
                None,
            ),
        };
        Some(Request {
            method,
            url: self.url(base, &route),
            template,
            body,
        })
    }

    fn decorate(&self, request: RequestBuilder) -> RequestBuilder {
        match self.said {
            Said::InHeader => request.header("x-api-version", self.version.as_str()),
            Said::InPath => request,
        }
    }

    fn read_user(&self, body: &[u8]) -> Result<EmbeddedUser, ApiError> {
        EmbeddedUser::try_from(parse::<WireUser>(body)?)
    }

    fn read_updated(
        &self,
        body: &[u8],
        _id: &EmbeddedUserId,
        _update: &UserUpdate,
    ) -> Result<EmbeddedUser, ApiError> {
        // Documented: the updated user.
        self.read_user(body)
    }

    fn read_batch(&self, body: &[u8]) -> Result<BatchOutcome, ApiError> {
        let answer: WireBatch = parse(body)?;
        Ok(BatchOutcome {
            invalid: answer
                .invalid_users
                .into_iter()
                .map(|u| match u.username {
                    Some(name) if !name.trim().is_empty() => {
                        InvalidBatchUser::Username(Username::from_api(&name))
                    }
                    _ => InvalidBatchUser::Unnamed,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Profile;
    use crate::embedded::users::UserRef;

    fn new_user(email: &str, name: Option<&str>) -> NewUser {
        NewUser {
            username: Username::from_email(email).unwrap(),
            full_name: FullName::parse_optional(name).unwrap(),
        }
    }

    fn spelled(dialect: &UsersApi, base: &str, call: &Call<'_>) -> (String, String) {
        let request = dialect
            .request(&Url::parse(base).unwrap(), call)
            .expect("every call is offered");
        (request.method.to_string(), request.url.to_string())
    }

    #[test]
    fn urls_of_version_2025_09() {
        let d = UsersApi::V2025_09;
        let base = "https://production.runalloy.com";
        let ada = new_user("ada@example.com", None);
        assert_eq!(
            spelled(&d, base, &Call::Create(&ada)),
            (
                "POST".into(),
                "https://production.runalloy.com/users/".into()
            )
        );
        assert_eq!(
            spelled(&d, base, &Call::List).1,
            "https://production.runalloy.com/users"
        );
        let username = Username::from_email("ada+x@example.com").unwrap();
        assert_eq!(
            spelled(&d, base, &Call::Get(UserRef::Username(&username))).1,
            "https://production.runalloy.com/users/ada+x@example.com"
        );
        let id = EmbeddedUserId::parse("u1").unwrap();
        assert_eq!(
            spelled(&d, "http://127.0.0.1:8787/prefix/", &Call::Token(&id)).1,
            "http://127.0.0.1:8787/prefix/users/u1/token"
        );
    }

    #[test]
    fn the_older_versions_put_the_version_in_the_path() {
        let id = EmbeddedUserId::parse("u1").unwrap();
        let ada = new_user("ada@example.com", Some("Ada"));
        let users = [ada.clone()];
        for (d, v) in [
            (UsersApi::V2024_03, "2024-03"),
            (UsersApi::V2023_12, "2023-12"),
        ] {
            let base = "https://embedded.runalloy.com";
            let at = |path: &str| format!("https://embedded.runalloy.com/{v}{path}");
            assert_eq!(
                spelled(&d, base, &Call::Create(&ada)),
                ("POST".into(), at("/users"))
            );
            assert_eq!(
                spelled(&d, base, &Call::CreateBatch(&users)).1,
                at("/users/batch")
            );
            assert_eq!(spelled(&d, base, &Call::List).1, at("/users"));
            assert_eq!(
                spelled(&d, base, &Call::Delete(&id)),
                ("DELETE".into(), at("/users/u1"))
            );
            assert_eq!(
                spelled(&d, base, &Call::DeleteLogs(&id)).1,
                at("/users/u1/logs")
            );
            assert_eq!(
                spelled(&d, base, &Call::Token(&id)).1,
                at("/users/u1/token")
            );
            assert_eq!(
                spelled(&d, "http://127.0.0.1:9/p/", &Call::List).1,
                format!("http://127.0.0.1:9/p/{v}/users")
            );
        }
    }

    #[test]
    fn an_update_sends_only_what_changes() {
        let held = Profile {
            username: Username::from_email("ada@example.com").unwrap(),
            full_name: FullName::parse_optional(Some("Ada")).unwrap(),
        };
        let update = UserUpdate {
            held,
            username: None,
            full_name: FullName::parse_optional(Some("Ada King")).unwrap(),
        };
        let id = EmbeddedUserId::parse("u1").unwrap();
        let request = UsersApi::V2025_09
            .request(
                &Url::parse("https://production.runalloy.com").unwrap(),
                &Call::Update(&id, &update),
            )
            .unwrap();
        assert_eq!(request.method, Method::PUT);
        assert_eq!(
            request.body,
            Some(serde_json::json!({"fullName": "Ada King"}))
        );
    }

    #[test]
    fn answers_read_into_the_crates_types() {
        let d = UsersApi::V2024_03;
        let user = d
            .read_user(br#"{"userId":"u1","username":"Ada@Example.com","fullName":null}"#)
            .unwrap();
        assert_eq!(user.user_id.as_str(), "u1");
        assert_eq!(user.username.as_str(), "ada@example.com");
        assert_eq!(user.full_name, None);
        assert_eq!(
            d.read_created(br#"{"userId":"u2"}"#).unwrap().as_str(),
            "u2"
        );
        assert!(d.read_created(br#"{"_id":"u2"}"#).is_err());
        let batch = d
            .read_batch(br#"{"message":"success","invalidUsers":[{"username":"a@x.io"},{"fullName":"Missing Username"}]}"#)
            .unwrap();
        assert_eq!(batch.invalid.len(), 2);
        assert_eq!(batch.invalid[1], InvalidBatchUser::Unnamed);
    }
}
