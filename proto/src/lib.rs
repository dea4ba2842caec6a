//! Wire types and gRPC stubs of the coordinator/worker protocol, generated from
//! `proto/sweep.proto`. Only the coordinator's gRPC adapter and the worker's agent use them;
//! everything else works on domain types.

/// Version both sides must speak; checked at registration.
pub const PROTOCOL_VERSION: u32 = 2;

#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("scoresweep.v1");
}
