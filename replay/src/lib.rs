//! The frame replayer: measures a runner end to end, against the physical floor.
//!
//! A *corpus* ([`corpus`]) is a file of whole exchanges, frames exactly as on the wire. One is
//! *generated* from a scenario file ([`scenario`]) or *recorded* by a proxy between a gateway
//! and a runner ([`record`]). *Replaying* it ([`plan`], then [`drive`]) prepares its confs on
//! the target first (recorded conf tokens are remapped to the fresh ones), then drives its calls
//! over C connections, closed loop (depth 1 or k) or open loop at a fixed rate, answering the
//! runner's extra_info requests from the corpus and checking every reply against it
//! ([`check`]). [`echo`] is the floor: a server that writes each frame back unchanged;
//! [`compare`] runs the same frames against both and reports the ratio ([`report`]).
//! [`spawn`] starts a runner binary under test and reads its RSS. A scenario file may name
//! environment variables (`${NAME}`, [`placeholders`]) for what exists only at run time.
//!
//! The binary `ext-plugin-replay` is the command line over this module; `BENCHMARKS.md` says
//! how each published figure was produced with it.

use std::io;

pub mod check;
pub mod compare;
pub mod corpus;
pub mod drive;
pub mod echo;
pub mod memory;
pub mod placeholders;
pub mod plan;
pub mod record;
pub mod report;
pub mod scenario;
pub mod spawn;

/// Anything that stops a replay, for the command line.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Corpus(#[from] corpus::CorpusError),
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Drive(#[from] drive::DriveError),
}
