//! Sync: the pure decision ([`plan`]) and the job that carries it out ([`job`]).

pub mod job;
#[cfg(test)]
mod job_tests;
pub mod outcome;
pub mod plan;
