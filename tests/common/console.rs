//! A client of a worker's operator API, with or without the token.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// The token the console tests serve the console with.
pub const TOKEN: &str = "console-test-token-7f3a91c2";

/// What a worker with the console on runs with, over the test's variables.
pub const WITH_TOKEN: [(&str, &str); 1] = [("USER_SYNC_CONSOLE_TOKEN", TOKEN)];

pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// One answer: its status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The message of a JSON error.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {} {}", self.status, self.text))
            .to_owned()
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

impl Api {
    pub fn at(addr: SocketAddr) -> Self {
        // reqwest is built without a bundled crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            base: format!("http://{addr}"),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the ops server answers");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.expect("a body"),
        }
    }

    /// `GET path` with the token.
    pub async fn get(&self, path: &str) -> Answer {
        self.get_with(path, Some(&format!("Bearer {TOKEN}"))).await
    }

    /// `GET path` with this `Authorization` header, or none.
    pub async fn get_with(&self, path: &str, authorization: Option<&str>) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        self.send(request).await
    }

    /// `POST path` with the token and `body` as JSON.
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .json(&body),
        )
        .await
    }

    /// `POST path` with the token and a body of another type.
    pub async fn post_as(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .header("Content-Type", content_type)
                .body(body.to_owned()),
        )
        .await
    }

    /// A request of any method, with the token.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> Answer {
        self.send(
            self.http
                .request(method, format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {TOKEN}")),
        )
        .await
    }
}
