//! Devices: which GPUs this process can see ([`detect`]), which device a trial runs on
//! ([`DeviceChoice`] → [`select`]), and which code paths a device gets ([`fast_paths`]).
//!
//! GPUs exist only in a build with the `cuda` feature (candle's CUDA backend) and with a driver
//! at run time; anything else — no feature, a stub or missing driver, no device — is "0 GPUs"
//! with a note saying why, never a crash, and trials then run on the CPU. Detection asks the
//! driver for the count, names and memory only: it creates no CUDA context.
//!
//! The hand-derived training steps and the plain forward pass (`train::fast`,
//! `samplers::FastForward`) are CPU code over host buffers: [`fast_paths`] is true on the CPU
//! only, and a CUDA device always trains and samples through candle.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// Whether this build has candle's CUDA backend (the `cuda` feature).
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The CUDA device ordinal (`cuda:INDEX`).
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub gpus: Vec<GpuInfo>,
    /// Why there are no GPUs (not compiled in, no driver, no device), None when there are.
    pub note: Option<String>,
}

/// The GPUs visible to this process; never fails (a failure is "0 GPUs" with a note).
pub fn detect() -> Detected {
    match detect_cuda() {
        Ok(gpus) if gpus.is_empty() => Detected { gpus, note: Some("the CUDA driver reports no device".into()) },
        Ok(gpus) => Detected { gpus, note: None },
        Err(note) => Detected { gpus: Vec::new(), note: Some(note) },
    }
}

#[cfg(not(feature = "cuda"))]
fn detect_cuda() -> Result<Vec<GpuInfo>, String> {
    Err("built without the `cuda` feature".into())
}

#[cfg(feature = "cuda")]
fn detect_cuda() -> Result<Vec<GpuInfo>, String> {
    use candle_core::cuda::cudarc::driver::result::{self, DriverError};
    // The error's name only: its description needs the driver, which may be the stub.
    let name = |e: DriverError| format!("{:?}", e.0);
    // Without a driver (the stub libcuda, or CUDA_ERROR_NO_DEVICE) cuInit fails: 0 GPUs.
    result::init().map_err(|e| format!("no usable CUDA driver (cuInit: {})", name(e)))?;
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {}", name(e)))?;
    (0..count)
        .map(|i| {
            let dev = result::device::get(i).map_err(|e| format!("cuDeviceGet({i}): {}", name(e)))?;
            let gpu = result::device::get_name(dev).map_err(|e| format!("cuDeviceGetName({i}): {}", name(e)))?;
            // Safety: `dev` comes from cuDeviceGet above.
            let memory = unsafe { result::device::total_mem(dev) }.map_err(|e| format!("cuDeviceTotalMem({i}): {}", name(e)))?;
            Ok(GpuInfo { index: i as u32, name: gpu, memory_bytes: memory as u64 })
        })
        .collect()
}

/// The device asked for on the command line: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto`
/// (the first GPU if there is one, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda(u32),
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "auto" => Ok(DeviceChoice::Auto),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Ok(DeviceChoice::Cuda(i)),
                None => Err(DeviceError::Unknown(s.to_string())),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Auto => f.write_str("auto"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (expected cpu, cuda, cuda:N or auto)")]
    Unknown(String),
    #[error("cannot use cuda:{index}: {reason}")]
    NoSuchGpu { index: u32, reason: String },
    #[error("failed to open cuda:{index}: {source}")]
    Open { index: u32, source: candle_core::Error },
}

/// Where a choice lands, given what [`detect`] found: the ordinal to open (None: the CPU).
pub fn resolve(choice: DeviceChoice, found: &Detected) -> Result<Option<u32>, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Auto => Ok(found.gpus.first().map(|g| g.index)),
        DeviceChoice::Cuda(index) => {
            if found.gpus.iter().any(|g| g.index == index) {
                Ok(Some(index))
            } else {
                let reason = match &found.note {
                    Some(note) => note.clone(),
                    None => format!("{} GPU(s) found", found.gpus.len()),
                };
                Err(DeviceError::NoSuchGpu { index, reason })
            }
        }
    }
}

/// Opens the device a choice lands on (a CUDA device creates its context here).
pub fn select(choice: DeviceChoice, found: &Detected) -> Result<Device, DeviceError> {
    open(resolve(choice, found)?)
}

/// Opens the CPU (None) or `cuda:INDEX`, on the calling thread (a CUDA device's stream is the
/// thread's: open it on the thread that runs the trial).
pub fn open(ordinal: Option<u32>) -> Result<Device, DeviceError> {
    match ordinal {
        None => Ok(Device::Cpu),
        Some(index) => Device::new_cuda(index as usize).map_err(|source| DeviceError::Open { index, source }),
    }
}

/// The device's name in outputs: `cpu`, `cuda:N`, `metal:N`.
pub fn label(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Whether the hand-derived CPU paths (training steps, forward pass) apply on `device`: on the
/// CPU only.
pub fn fast_paths(device: &Device) -> bool {
    device.is_cpu()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(n: u32) -> Detected {
        let gpus: Vec<GpuInfo> = (0..n).map(|index| GpuInfo { index, name: format!("GPU {index}"), memory_bytes: 80 << 30 }).collect();
        let note = (n == 0).then(|| "no usable CUDA driver".to_string());
        Detected { gpus, note }
    }

    #[test]
    fn choices_parse_and_print() {
        for (text, choice) in [("cpu", DeviceChoice::Cpu), ("auto", DeviceChoice::Auto), ("cuda", DeviceChoice::Cuda(0)), ("cuda:3", DeviceChoice::Cuda(3))] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice, "{text}");
        }
        assert_eq!(DeviceChoice::Cuda(0).to_string(), "cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.to_string().contains("expected cpu, cuda, cuda:N or auto"), "{bad}: {e}");
        }
    }

    #[test]
    fn choices_resolve_against_what_was_found() {
        // (choice, GPUs found, ordinal or the error's words)
        type Row = (DeviceChoice, u32, Result<Option<u32>, &'static str>);
        let table: [Row; 7] = [
            (DeviceChoice::Cpu, 0, Ok(None)),
            (DeviceChoice::Cpu, 2, Ok(None)),
            (DeviceChoice::Auto, 0, Ok(None)),
            (DeviceChoice::Auto, 2, Ok(Some(0))),
            (DeviceChoice::Cuda(1), 2, Ok(Some(1))),
            (DeviceChoice::Cuda(0), 0, Err("cannot use cuda:0: no usable CUDA driver")),
            (DeviceChoice::Cuda(2), 2, Err("cannot use cuda:2: 2 GPU(s) found")),
        ];
        for (choice, n, want) in table {
            let got = resolve(choice, &found(n)).map_err(|e| e.to_string());
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w, "{choice} with {n} GPUs"),
                Err(words) => assert_eq!(got.unwrap_err(), words, "{choice} with {n} GPUs"),
            }
        }
    }

    #[test]
    fn without_the_cuda_feature_there_are_no_gpus() {
        let d = detect();
        if !CUDA_COMPILED {
            assert!(d.gpus.is_empty());
            assert_eq!(d.note.as_deref(), Some("built without the `cuda` feature"));
            assert!(select(DeviceChoice::Auto, &d).unwrap().is_cpu());
            assert!(select(DeviceChoice::Cuda(0), &d).is_err());
        }
        // Whatever the build, detection answers (0 GPUs comes with its reason).
        assert_eq!(d.gpus.is_empty(), d.note.is_some());
    }

    #[test]
    fn fast_paths_only_on_the_cpu() {
        assert!(fast_paths(&Device::Cpu));
        assert_eq!(label(&Device::Cpu), "cpu");
        #[cfg(feature = "cuda")]
        if let Some(g) = detect().gpus.first() {
            let dev = Device::new_cuda(g.index as usize).unwrap();
            assert!(!fast_paths(&dev));
            assert_eq!(label(&dev), format!("cuda:{}", g.index));
        }
    }
}
