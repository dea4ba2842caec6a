//! scoresweep's engine: Gaussian-mixture data with exact densities, score models with
//! forward-mode tangents, score-matching objectives, noise ladders, samplers, metrics, and the
//! runner of one trial. Nothing here knows about gRPC (see ARCHITECTURE.md) except `agent`,
//! the client loop of a worker process, which sits on top of the engine.

pub mod agent;
pub mod bench;
pub mod config;
pub mod fastmlp;
pub mod ladder;
pub mod metrics;
pub mod mixture;
pub mod nets;
pub mod objectives;
pub mod rng;
pub mod samplers;
pub mod trial;
