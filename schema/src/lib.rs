//! scoresweep's schema: what a trial file means, checked before any work, and the few types
//! every crate agrees on. Nothing here knows about candle, tonic or SQLite (Architecture
//! Invariant), so the coordinator validates trials with exactly the rules the engine runs by
//! without building the engine.
//!
//! - [`trial`]: the one validated trial type of both families ([`trial::TrialConfig`],
//!   [`trial::Trial`]: data, model, objective, train, eval and sampler sections, each one type
//!   or tagged enum spanning mixtures and images);
//! - [`form`]: the trial file: its raw serde forms (mixtures, images) and their validation into
//!   a `Trial`, errors located at file:line:column;
//! - [`image`]: the image variants of the sections (image sets, denoiser nets, denoising
//!   objectives);
//! - [`data`]: data-set presets as plain numbers ([`data::MixtureSpec`]);
//! - [`caps`]: what each data set and model kind offers and what each model and objective
//!   needs of them ("X needs Y", across both families);
//! - [`metrics`]: the metric keys every successful result of a trial must carry;
//! - [`status`]: the one status enum of trials and attempts shared by the proto, the
//!   coordinator and the results;
//! - [`noise`]: the noise ladder (`objective.noise`) of toy and image trials;
//! - [`lr`]: the learning-rate schedule (`train.lr_schedule`, `train.warmup`) of both families;
//! - [`sampler`]: the sampler kinds (`sampler.kind`) and the one validated sampler of toy and
//!   image trials ([`sampler::Sampler`]: a method per kind, its chains, start, levels, guidance);
//! - [`validate`]: the helpers every module validates with ([`validate::FieldError`] on a dotted
//!   key, range checks); a leaf, as are `noise`, `lr`, `sampler` and `data`, so the others
//!   never import one another in a cycle (tests/tidy.rs checks);
//! - [`locate`]: line and column of a dotted key in TOML source.

pub mod caps;
pub mod data;
pub mod form;
pub mod image;
pub mod locate;
pub mod lr;
pub mod metrics;
pub mod noise;
pub mod sampler;
pub mod status;
pub mod trial;
pub mod validate;

pub use form::ConfigError;
pub use status::Status;
pub use trial::{Trial, TrialConfig};
pub use validate::FieldError;
