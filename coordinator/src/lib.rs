//! scoresweep's coordinator: sweep expansion (`sweep`, validated by the `schema` crate), durable
//! state (`state`, layout from `results::layout`) behind group commit (`store`), the gRPC
//! service (`service`), uploaded files (`artifacts`), worker launchers (`launch`), resource
//! matching of trials to workers (`resources`: GPU trials to GPU workers) and the run
//! loop (`run`), the address workers dial (`address`), optional TLS (`tls`), the Kubernetes
//! manifest (`k8s`), the read-only web page of a run (`dashboard`), the limits on what workers
//! send and hold (`limits`) and the checks of launcher settings and path names a sweep file
//! carries (`launch_checks`). The `coordinator` binary is glue over these. Nothing here depends
//! on the engine or candle; workers are the separate `worker` executable.

pub mod address;
pub mod artifacts;
pub mod auth;
pub mod bench;
pub mod dashboard;
pub mod early_stop;
pub mod k8s;
pub mod launch;
pub mod launch_checks;
pub mod limits;
pub mod resources;
pub mod run;
pub mod search;
pub mod service;
pub mod state;
pub mod store;
pub mod sweep;
pub mod tls;
