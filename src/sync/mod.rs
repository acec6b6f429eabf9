//! Sync: the pure decision ([`plan`]), the job that carries it out (run
//! by the queue with a [`SyncContext`]), and the one outcome type its steps
//! end in ([`Outcome`]). Each in a private file, re-exported here.

mod conflicts;
mod job;
#[cfg(test)]
mod job_tests;
mod outcome;
mod plan;

pub(crate) use conflicts::reported;
pub use job::SyncContext;
pub use outcome::Outcome;
pub use plan::{SyncPlan, plan};
