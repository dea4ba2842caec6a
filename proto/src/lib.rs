//! Wire types and gRPC stubs of the coordinator/worker protocol, generated from
//! `proto/sweep.proto`, plus the conversions between wire and domain types (the status enum
//! and the little-endian `Points` blobs). Only the coordinator's gRPC adapter and the worker's
//! agent use the wire types; everything else works on domain types ([`schema::Status`]).

/// Version both sides must speak; checked at registration.
/// 3: typed `Status`, samples as `Points` bytes, `UploadArtifact`.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest `data` of one `ArtifactChunk`.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("scoresweep.v1");
}

/// A wire value that has no domain meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("status {0} is not a known status value")]
    UnknownStatus(i32),
    #[error("status is unspecified")]
    UnspecifiedStatus,
    #[error("points: {0} bytes is not a whole number of f32 points of dimension {1}")]
    RaggedPoints(usize, u32),
}

impl From<schema::Status> for pb::Status {
    fn from(s: schema::Status) -> pb::Status {
        use schema::Status as S;
        match s {
            S::Queued => pb::Status::Queued,
            S::Running => pb::Status::Running,
            S::Done => pb::Status::Done,
            S::Diverged => pb::Status::Diverged,
            S::Failed => pb::Status::Failed,
            S::Timeout => pb::Status::Timeout,
            S::Expired => pb::Status::Expired,
            S::Cancelled => pb::Status::Cancelled,
            S::Ignored => pb::Status::Ignored,
            S::Pruned => pb::Status::Pruned,
        }
    }
}

impl TryFrom<pb::Status> for schema::Status {
    type Error = WireError;
    fn try_from(s: pb::Status) -> Result<schema::Status, WireError> {
        use schema::Status as S;
        Ok(match s {
            pb::Status::Unspecified => return Err(WireError::UnspecifiedStatus),
            pb::Status::Queued => S::Queued,
            pb::Status::Running => S::Running,
            pb::Status::Done => S::Done,
            pb::Status::Diverged => S::Diverged,
            pb::Status::Failed => S::Failed,
            pb::Status::Timeout => S::Timeout,
            pb::Status::Expired => S::Expired,
            pb::Status::Cancelled => S::Cancelled,
            pb::Status::Ignored => S::Ignored,
            pb::Status::Pruned => S::Pruned,
        })
    }
}

/// The domain status of a wire status field (prost keeps enum fields as `i32`).
pub fn status_from_wire(v: i32) -> Result<schema::Status, WireError> {
    pb::Status::try_from(v).map_err(|_| WireError::UnknownStatus(v))?.try_into()
}

/// The wire value of a domain status, for a message's `status` field.
pub fn status_to_wire(s: schema::Status) -> i32 {
    pb::Status::from(s) as i32
}

impl pb::Points {
    /// Row-major points of dimension `dim` as little-endian f32 bytes.
    pub fn from_f32(dim: u32, values: &[f32]) -> pb::Points {
        let mut f32_le = Vec::with_capacity(values.len() * 4);
        for v in values {
            f32_le.extend_from_slice(&v.to_le_bytes());
        }
        pb::Points { dim, f32_le }
    }

    /// The values back (row-major); refused unless they form whole points.
    pub fn to_f32(&self) -> Result<Vec<f32>, WireError> {
        let bytes = &self.f32_le;
        let whole = bytes.len().is_multiple_of(4) && (bytes.is_empty() || (self.dim > 0 && (bytes.len() / 4).is_multiple_of(self.dim as usize)));
        if !whole {
            return Err(WireError::RaggedPoints(bytes.len(), self.dim));
        }
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Number of points (0 when the dimension is 0).
    pub fn len(&self) -> usize {
        if self.dim == 0 { 0 } else { self.f32_le.len() / 4 / self.dim as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_the_wire() {
        for s in schema::Status::ALL {
            assert_eq!(status_from_wire(status_to_wire(s)), Ok(s));
        }
        assert_eq!(status_from_wire(0), Err(WireError::UnspecifiedStatus));
        assert_eq!(status_from_wire(99), Err(WireError::UnknownStatus(99)));
    }

    #[test]
    fn points_round_trip_and_ragged_ones_are_refused() {
        let p = pb::Points::from_f32(2, &[1.0, -2.5, 3.25, 4.0]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.to_f32().unwrap(), [1.0, -2.5, 3.25, 4.0]);
        let ragged = pb::Points { dim: 3, f32_le: p.f32_le.clone() };
        assert!(ragged.to_f32().is_err());
        assert!(pb::Points::default().to_f32().unwrap().is_empty());
    }
}
