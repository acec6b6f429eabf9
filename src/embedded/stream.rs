//! The user stream of `GET /users`: the API documents no pagination, so
//! one answer may hold every user of the account; [`UserStream`] parses
//! them one at a time as their bytes arrive, with an incremental reader of
//! the answer's `data` array. Every version wraps its list in `data`; each
//! element is read by the version's dialect.

use std::sync::Arc;
use std::time::Duration;

use super::dialect::Dialect;
use super::error::{ApiError, UnavailableCause};
use super::users::EmbeddedUser;
use super::wire::{malformed, transport_error};

/// The users of a `GET /users` answer, one at a time.
pub struct UserStream {
    response: reqwest::Response,
    /// Reads each element, in the shape of the version that sent it.
    dialect: Arc<dyn Dialect>,
    read_timeout: Duration,
    scanner: ListScanner,
    ready: std::collections::VecDeque<Result<EmbeddedUser, ApiError>>,
    done: bool,
}

impl UserStream {
    /// The users of a successful answer; `read_timeout` bounds each read.
    pub(super) fn new(
        response: reqwest::Response,
        dialect: Arc<dyn Dialect>,
        read_timeout: Duration,
    ) -> Self {
        Self {
            response,
            dialect,
            read_timeout,
            scanner: ListScanner::default(),
            ready: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// The next user; `None` at the end of a complete answer. A cut or
    /// truncated answer ends in an error, never in a silent short list.
    pub async fn next(&mut self) -> Option<Result<EmbeddedUser, ApiError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                if item.is_err() {
                    self.done = true;
                    self.ready.clear();
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            let chunk = match tokio::time::timeout(self.read_timeout, self.response.chunk()).await {
                Err(_) => Err(ApiError::Unavailable {
                    cause: UnavailableCause::Timeout,
                }),
                Ok(Err(e)) => Err(transport_error(e)),
                Ok(Ok(chunk)) => Ok(chunk),
            };
            match chunk {
                Ok(Some(bytes)) => {
                    let ready = &mut self.ready;
                    let dialect = &self.dialect;
                    if let Err(e) = self.scanner.feed(&bytes, &mut |element| {
                        ready.push_back(dialect.read_user(element));
                    }) {
                        self.ready.push_back(Err(e));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    if !self.scanner.complete() {
                        return Some(Err(malformed()));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The users of a whole `GET /users` answer already read: the same
/// reading as the stream's, all at once.
pub(super) fn read_list(dialect: &dyn Dialect, body: &[u8]) -> Result<Vec<EmbeddedUser>, ApiError> {
    let mut scanner = ListScanner::default();
    let mut users = Vec::new();
    scanner.feed(body, &mut |element| users.push(dialect.read_user(element)))?;
    if !scanner.complete() {
        return Err(malformed());
    }
    users.into_iter().collect()
}

/// An incremental reader of `{"data": [ {...}, {...} ], ...}`: hands over
/// the bytes of each element of the top-level `data` array as soon as the
/// element is complete, and skips every other member whatever it holds.
#[derive(Default)]
struct ListScanner {
    /// Bytes of the element being read (only inside `data`).
    element: Vec<u8>,
    /// Open `{`/`[` count; the top-level object is depth 1.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The last string read at depth 1, to know which member comes next.
    key: Vec<u8>,
    /// Reading a depth-1 string (a key or a value).
    reading_key: bool,
    /// Inside the `data` array (depth 2 is its level).
    in_data: bool,
    /// `data` was seen and closed.
    data_seen: bool,
    /// The top-level object closed.
    closed: bool,
}

impl ListScanner {
    fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&[u8])) -> Result<(), ApiError> {
        for &b in bytes {
            if self.closed {
                if b.is_ascii_whitespace() {
                    continue;
                }
                return Err(malformed());
            }
            let capturing = self.in_data && self.depth >= 3;
            if capturing {
                self.element.push(b);
            }
            if self.in_string {
                if self.reading_key && !self.escaped && b != b'"' && b != b'\\' {
                    self.key.push(b);
                }
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    self.reading_key = false;
                }
                continue;
            }
            match b {
                b'"' => {
                    if self.in_data && self.depth == 2 {
                        return Err(malformed());
                    }
                    self.in_string = true;
                    if self.depth == 1 {
                        self.reading_key = true;
                        self.key.clear();
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 0 && b != b'{' {
                        return Err(malformed());
                    }
                    self.depth += 1;
                    if self.depth == 2 && b == b'[' && self.key == b"data" {
                        self.in_data = true;
                    }
                    if self.in_data && self.depth == 3 {
                        if b != b'{' {
                            return Err(malformed());
                        }
                        self.element.clear();
                        self.element.push(b);
                    }
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(malformed());
                    }
                    self.depth -= 1;
                    if self.in_data && self.depth == 2 {
                        emit(&self.element);
                        self.element.clear();
                    } else if self.in_data && self.depth == 1 {
                        self.in_data = false;
                        self.data_seen = true;
                    } else if self.depth == 0 {
                        self.closed = true;
                    }
                }
                _ => {
                    let element_level = self.in_data && self.depth == 2;
                    if (self.depth == 0 || element_level) && !b.is_ascii_whitespace() && b != b',' {
                        // Only objects are users; nothing stands outside
                        // the top-level object.
                        return Err(malformed());
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the answer was a whole object with a `data` array.
    fn complete(&self) -> bool {
        self.closed && self.data_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&str]) -> (Vec<String>, Result<(), ApiError>, bool) {
        let mut scanner = ListScanner::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let result = scanner.feed(chunk.as_bytes(), &mut |e| {
                out.push(String::from_utf8_lossy(e).into_owned())
            });
            if result.is_err() {
                return (out, result, false);
            }
        }
        let complete = scanner.complete();
        (out, Ok(()), complete)
    }

    #[test]
    fn a_list_is_read_element_by_element_across_chunk_boundaries() {
        let body = r#" {"meta": {"data": [1]}, "data" : [ {"userId":"u1","username":"a\"}[{@x.io","fullName":null},
            {"userId":"u2","username":"b@x.io","extra":{"k":[1,{"z":"]"}]}} ], "next": "[{"} "#;
        // Every split point must give the same elements.
        for cut in 0..body.len() {
            if !body.is_char_boundary(cut) {
                continue;
            }
            let (elements, result, complete) = scan(&[&body[..cut], &body[cut..]]);
            assert_eq!(result, Ok(()));
            assert!(complete, "cut at {cut}");
            assert_eq!(elements.len(), 2, "cut at {cut}: {elements:?}");
            let first: serde_json::Value = serde_json::from_str(&elements[0]).unwrap();
            assert_eq!(first["username"], "a\"}[{@x.io");
            let second: serde_json::Value = serde_json::from_str(&elements[1]).unwrap();
            assert_eq!(second["userId"], "u2");
        }
    }

    #[test]
    fn a_truncated_or_foreign_list_is_not_complete() {
        let (elements, _, complete) = scan(&[r#"{"data":[{"userId":"u1","username":"a"}"#]);
        assert_eq!(elements.len(), 1);
        assert!(!complete, "the array never closed");
        let (_, _, complete) = scan(&[r#"{"items":[]}"#]);
        assert!(!complete, "no data member");
        let (_, result, _) = scan(&[r#"{"data":[1,2]}"#]);
        assert!(result.is_err(), "elements must be objects");
        let (_, result, _) = scan(&[r#"[{"data":[]}]"#]);
        assert!(result.is_err());
    }
}
