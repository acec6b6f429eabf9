//! The Embedded Users API: client, typed outcomes, and the local sandbox.

pub mod client;
pub mod error;
pub mod sandbox;

pub use client::{
    BatchOutcome, EmbeddedClient, EmbeddedUser, InvalidBatchUser, MAX_BATCH, NewUser, UserRef,
    UserUpdate,
};
pub use error::{ApiError, UnavailableCause};
