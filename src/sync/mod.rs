//! Sync: the pure decisions ([`plan`], and an erasure's next step in
//! `erasure`), the job that carries them out (run
//! by the queue with a [`SyncContext`]), and the one outcome type its steps
//! end in ([`Outcome`]). Each in a private file, re-exported here.

mod conflicts;
mod erasure;
mod job;
#[cfg(test)]
mod job_tests;
mod outcome;
mod plan;

pub(crate) use conflicts::reported;
pub use job::SyncContext;
pub use outcome::Outcome;
pub use plan::{SyncPlan, plan};
