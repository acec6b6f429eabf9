//! Sync: the pure decision ([`plan`]), the job that carries it out
//! ([`job`]), and the one outcome type its steps end in ([`Outcome`]).

mod conflicts;
pub mod job;
#[cfg(test)]
mod job_tests;
mod outcome;
mod plan;

pub(crate) use conflicts::reported;
pub use outcome::Outcome;
pub use plan::{SyncPlan, plan};
