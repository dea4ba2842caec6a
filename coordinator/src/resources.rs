//! Resource matching: which trials a worker may run, from what the trial needs (the sweep's
//! `gpu = true|false`) and what the worker offers (its registration: cores, and the GPUs it
//! runs trials on — `RegisterRequest.gpus` / `gpu_devices`). Pure functions, no state: the
//! scheduler (`state`) asks [`fits`] when it picks a trial for a worker, and [`preference`] to
//! order candidates.
//!
//! The rules:
//! - a trial that needs a GPU goes only to a worker with one (and, where the trial names a
//!   minimum, with at least that much memory on it);
//! - a trial that does not need one runs anywhere (a GPU worker runs it on its GPU), but a CPU
//!   worker is preferred for it, so that GPU workers stay free for the trials that need them.

/// A GPU a worker runs trials on, as it registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
}

/// What a worker offers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    pub cores: u32,
    pub gpus: Vec<Gpu>,
}

/// What a trial needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    pub gpu: bool,
    /// The least memory the GPU must have (None: any GPU).
    pub min_gpu_memory_bytes: Option<u64>,
}

/// Why a worker cannot run a trial (a fragment that reads well after "not leased: ").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the trial needs a GPU and the worker has none")]
    NoGpu,
    #[error("the trial needs a GPU with {need} bytes and the worker's largest has {have}")]
    GpuMemory { need: u64, have: u64 },
}

/// Whether a worker offering `offer` may run a trial needing `need`.
pub fn fits(need: &Need, offer: &Offer) -> Result<(), Mismatch> {
    if !need.gpu {
        return Ok(());
    }
    let have = offer.gpus.iter().map(|g| g.memory_bytes).max().ok_or(Mismatch::NoGpu)?;
    match need.min_gpu_memory_bytes {
        Some(need) if have < need => Err(Mismatch::GpuMemory { need, have }),
        _ => Ok(()),
    }
}

/// How well a trial suits a worker, higher first (None: it does not fit): a GPU trial on a GPU
/// worker and a CPU trial on a CPU worker are exact matches (2); a CPU trial on a GPU worker
/// is allowed but second best (1).
pub fn preference(need: &Need, offer: &Offer) -> Option<u8> {
    fits(need, offer).ok()?;
    let has_gpu = !offer.gpus.is_empty();
    Some(if need.gpu == has_gpu { 2 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn worker(gpu_memory_gib: &[u64]) -> Offer {
        let gpus = gpu_memory_gib.iter().enumerate().map(|(i, &m)| Gpu { index: i as u32, name: format!("GPU {i}"), memory_bytes: m * GIB }).collect();
        Offer { cores: 16, gpus }
    }

    fn need(gpu: bool, min_gib: Option<u64>) -> Need {
        Need { gpu, min_gpu_memory_bytes: min_gib.map(|m| m * GIB) }
    }

    #[test]
    fn matching_table() {
        // (trial needs, worker's GPUs in GiB, fits → preference, or the refusal's words)
        let table: &[(Need, &[u64], Result<u8, &str>)] = &[
            (need(false, None), &[], Ok(2)),
            (need(false, None), &[80], Ok(1)),
            (need(true, None), &[], Err("the trial needs a GPU and the worker has none")),
            (need(true, None), &[80], Ok(2)),
            (need(true, Some(40)), &[80], Ok(2)),
            (need(true, Some(80)), &[80], Ok(2)),
            (need(true, Some(100)), &[80], Err("the trial needs a GPU with 107374182400 bytes and the worker's largest has 85899345920")),
            (need(true, Some(100)), &[80, 140], Ok(2)),
            (need(true, Some(100)), &[], Err("the trial needs a GPU and the worker has none")),
            // A memory minimum without `gpu` asks for nothing.
            (need(false, Some(100)), &[], Ok(2)),
        ];
        for (i, (n, gpus, want)) in table.iter().enumerate() {
            let offer = worker(gpus);
            match want {
                Ok(p) => {
                    assert_eq!(fits(n, &offer), Ok(()), "row {i}");
                    assert_eq!(preference(n, &offer), Some(*p), "row {i}");
                }
                Err(words) => {
                    assert_eq!(fits(n, &offer).unwrap_err().to_string(), *words, "row {i}");
                    assert_eq!(preference(n, &offer), None, "row {i}");
                }
            }
        }
    }
}
