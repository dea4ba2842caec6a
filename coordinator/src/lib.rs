//! scoresweep's coordinator: sweep expansion (`sweep`), durable state (`state`) behind a group-commit
//! thread (`store`), the gRPC
//! service (`service`) and the run loop (`run`). The `coordinator` binary is glue over these.

pub mod bench;
pub mod run;
pub mod service;
pub mod state;
pub mod store;
pub mod sweep;
