//! A trial's outputs on disk (`worker trial FILE --out DIR`): metrics.json, curve.csv,
//! samples.csv, model.safetensors and the trial's other files (sample grids), each written to a temporary name and renamed, so a crash
//! never leaves a half-written file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::EngineError;
use crate::outcome::{TrialOutcome, TrialStatus};

fn write_file(path: &Path, contents: &[u8]) -> Result<(), EngineError> {
    // Write to a temporary name and rename, so a crash never leaves a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).and_then(|_| std::fs::rename(&tmp, path)).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
}

/// A JSON number, or null for NaN/inf (JSON has no such numbers).
pub fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
}

/// Writes metrics.json, curve.csv, samples.csv and model.safetensors into `dir`.
pub fn write_outputs(outcome: &TrialOutcome, dir: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.to_path_buf(), source })?;
    let mut m = serde_json::Map::new();
    m.insert("status".into(), outcome.status.to_string().into());
    m.insert("device".into(), outcome.device.clone().into());
    if !outcome.trainer.is_empty() {
        m.insert("trainer".into(), outcome.trainer.clone().into());
    }
    if let TrialStatus::Diverged { step } = outcome.status {
        m.insert("diverged_step".into(), step.into());
    }
    for (k, v) in &outcome.metrics {
        m.insert(k.clone(), json_number(*v));
    }
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(m)).expect("json of numbers");
    write_file(&dir.join("metrics.json"), json.as_bytes())?;

    let mut csv = outcome.curve_columns.join(",") + "\n";
    for r in &outcome.curve_rows {
        csv += &r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
        csv.push('\n');
    }
    write_file(&dir.join("curve.csv"), csv.as_bytes())?;

    let dim = outcome.samples.first().map_or(0, |s| s.len());
    let mut s = (0..dim).map(|j| format!("x{j}")).collect::<Vec<_>>().join(",") + "\n";
    for p in &outcome.samples {
        s += &p.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
        s.push('\n');
    }
    write_file(&dir.join("samples.csv"), s.as_bytes())?;

    for (name, _, bytes) in &outcome.files {
        write_file(&dir.join(name), bytes)?;
    }
    if !outcome.weights.is_empty() {
        let map: HashMap<String, Tensor> = outcome.weights.iter().cloned().collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&map, &path).map_err(|e| EngineError::Io { path, source: std::io::Error::other(e.to_string()) })?;
    }
    Ok(())
}

/// The trained parameters as a safetensors file's bytes (the checkpoint artifact a worker
/// sends to the coordinator); None for trials without weights.
pub fn weights_safetensors(weights: &[(String, Tensor)]) -> Result<Option<Vec<u8>>, EngineError> {
    if weights.is_empty() {
        return Ok(None);
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("scoresweep-weights-{}-{n}.safetensors", std::process::id()));
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    let io = |path: &Path, e: String| EngineError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) };
    candle_core::safetensors::save(&map, &path).map_err(|e| io(&path, e.to_string()))?;
    let bytes = std::fs::read(&path).map_err(|source| EngineError::Io { path: path.clone(), source });
    let _ = std::fs::remove_file(&path);
    bytes.map(Some)
}
