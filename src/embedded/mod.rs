//! The Embedded Users API: the client and its typed outcomes. The local
//! simulator of the API is a crate of its own, `user_sync_sandbox`.
//!
//! Its parts are private files, and what the layers above use is
//! re-exported here: the client's calls, their typed errors, the users the
//! calls take and give back, and the stream of `GET /users`. The dialects
//! of the API's versions and the JSON shapes on the wire stay inside.

mod client;
mod dialect;
mod error;
mod stream;
mod users;
mod wire;

pub use client::{EmbeddedClient, MAX_BATCH};
pub use dialect::Offers;
pub use error::{ApiError, UnavailableCause};
pub use stream::UserStream;
pub use users::{BatchOutcome, EmbeddedUser, InvalidBatchUser, NewUser, UserRef, UserUpdate};
