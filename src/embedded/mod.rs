//! The Embedded Users API: the client and its typed outcomes. The local
//! simulator of the API is a crate of its own, `user_sync_sandbox`.
//!
//! The client's parts are private files re-exported by [`client`]: the
//! dialects of the API's versions, the users the calls take and give back,
//! the JSON shapes on the wire, and the stream of `GET /users`.

pub mod client;
mod dialect;
pub mod error;
mod stream;
mod users;
mod wire;

pub use client::{
    BatchOutcome, EmbeddedClient, EmbeddedUser, InvalidBatchUser, MAX_BATCH, NewUser, UserRef,
    UserUpdate,
};
pub use error::{ApiError, UnavailableCause};
