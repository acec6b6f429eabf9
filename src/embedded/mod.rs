//! The Embedded Users API: the client and its typed outcomes. The local
//! simulator of the API is a crate of its own, `user_sync_sandbox`.

pub mod client;
pub mod error;

pub use client::{
    BatchOutcome, EmbeddedClient, EmbeddedUser, InvalidBatchUser, MAX_BATCH, NewUser, UserRef,
    UserUpdate,
};
pub use error::{ApiError, UnavailableCause};
