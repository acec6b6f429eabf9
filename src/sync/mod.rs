//! Sync: the pure decision ([`plan`]) and the job that carries it out ([`job`]).

pub mod job;
pub mod outcome;
pub mod plan;
