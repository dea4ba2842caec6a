//! scoresweep's engine: data sources, score models, objectives, trainers, samplers and
//! evaluators, and the runner of one trial. It knows nothing of gRPC, tokio or the coordinator
//! (Architecture Invariant, checked by `tests/tidy.rs`): the `worker` binary puts a gRPC agent
//! and a command line on top of it. Trials come in validated by the `schema` crate.
//!
//! The seams, each a trait with a registry function naming every implementation once:
//! - [`data`]: [`data::DataSource`] (training points, optional labels, optional exact density);
//! - [`models`]: [`models::ScoreModel`] (S(x, σ, label), optional tangents / closed-form trace /
//!   energy);
//! - [`train`]: [`train::Trainer`] (autograd, or a hand-derived step chosen automatically, toy
//!   and image models alike) and the one train loop [`train::run`];
//! - [`samplers`]: [`samplers::Sampler`] (chains moved by a [`samplers::Field`]: a score or a
//!   denoiser, toy and image models alike; network evaluations counted, divergence caught);
//! - [`eval`]: [`eval::Checkpoint`] evaluators (loss gaps with exact scores) and sample metrics.
//!
//! [`kernels`] holds the CPU kernels (gemm, convolutions, GroupNorm + SiLU, Adam, EMA) that the
//! candle custom ops and the plain-buffer passes share.
//! [`device`] detects GPUs and picks the device (the hand-derived fast paths are CPU only);
//! [`plan`] resolves what the file alone could not (ladder, step size, evaluation σ, device);
//! [`trial`] runs the plan; [`outcome`] is what a run reports; [`outputs`] writes a standalone
//! trial's files.

pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod images;
pub mod kernels;
pub mod ladder;
pub mod models;
pub mod objectives;
pub mod outcome;
pub mod outputs;
pub mod plan;
pub mod rng;
pub mod samplers;
pub mod train;
pub mod trial;
