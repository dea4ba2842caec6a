//! Engine micro-benchmarks, run side by side with `benches/torch_bench.py` (same cases, same
//! JSON lines): a DSM, SSM, SSM-VR or exact-ISM training step, and annealed Langevin sampling.
//! Timing is the median over iterations after a warm-up; peak memory is the process's VmHWM.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

use crate::data::{Mixture, MixtureSource};
use crate::models::{Activation, Arch, MlpScore};
use crate::objectives::{self, ObjectiveKind, ProbeDist, TrainObjective};
use crate::rng::Rng;
use crate::samplers;
use crate::train::fast::{FastDsm, FastIsm, FastSsm};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Dsm,
    Ssm,
    SsmVr,
    Ism,
    Sample,
}

impl Case {
    pub fn parse(s: &str) -> Option<Case> {
        Some(match s {
            "dsm" => Case::Dsm,
            "ssm" => Case::Ssm,
            "ssm_vr" => Case::SsmVr,
            "ism" => Case::Ism,
            "sample" => Case::Sample,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Case::Dsm => "dsm",
            Case::Ssm => "ssm",
            Case::SsmVr => "ssm_vr",
            Case::Ism => "ism",
            Case::Sample => "sample",
        }
    }
}

pub struct BenchResult {
    pub case: Case,
    pub dim: usize,
    pub batch: usize,
    pub ms: f64,
    pub peak_mib: f64,
}

impl BenchResult {
    pub fn json(&self, threads: usize) -> String {
        format!(
            "{{\"side\":\"rust\",\"case\":\"{}\",\"threads\":{threads},\"dim\":{},\"batch\":{},\"ms\":{:.4},\"peak_mib\":{:.1}}}",
            self.case.name(),
            self.dim,
            self.batch,
            self.ms,
            self.peak_mib
        )
    }
}

/// Peak resident memory of this process in MiB (Linux VmHWM; 0 elsewhere).
pub fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median_ms(mut f: impl FnMut() -> Result<()>, warmup: usize, iters: usize) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < iters || start.elapsed().as_secs_f64() < 2.0 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if times.len() >= 10 * iters.max(1) && start.elapsed().as_secs_f64() >= 2.0 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs one case; `dim` only applies to `ism`.
pub fn run(case: Case, dim: usize, iters: usize) -> Result<BenchResult> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let (dim, hidden, batch) = match case {
        Case::Ism => (dim, 256, 128),
        Case::Sample => (2, 128, 10_000),
        _ => (2, 128, 1024),
    };
    let mix = if dim == 2 { Mixture::ncsn2d() } else { Mixture::new(dim, vec![1.0], vec![vec![0.0; dim]], vec![1.0]) };
    let arch = Arch { dim, hidden, depth: 2, activation: Activation::Silu, conditional: case == Case::Sample, scale_by_sigma: false };
    let varmap = VarMap::new();
    let m = MlpScore::new(arch, &varmap, &mut rng, &dev)?;
    if case == Case::Sample {
        let sigmas = crate::ladder::geometric(20.0, 1.0, 10);
        let ms = median_ms(
            || {
                let mut x = samplers::uniform_box(batch, 2, 8.0, &mut rng);
                let mut scorer = samplers::scorer_for(&m, &dev)?;
                samplers::annealed_langevin(scorer.as_mut(), &mut x, &sigmas, 0.1, 100, false, &mut rng, &mut || {})
            },
            1,
            iters.max(1),
        )?;
        return Ok(BenchResult { case, dim, batch, ms, peak_mib: peak_mib() });
    }
    if case == Case::Dsm {
        // The hand-derived step the trials use for DSM on MLPs.
        let mut fast = FastDsm::new(&m, batch, 1e-3)?;
        let sigma = vec![0.5f32; batch];
        let ms = median_ms(
            || {
                let x0 = mix.sample(batch, &mut rng);
                let p = objectives::perturb(&x0, dim, &[0.5], &mut rng);
                fast.step(&p.xt, &p.eps, &sigma);
                Ok(())
            },
            3,
            iters,
        )?;
        return Ok(BenchResult { case, dim, batch, ms, peak_mib: peak_mib() });
    }
    if matches!(case, Case::Ssm | Case::SsmVr) {
        let mut fast = FastSsm::new(&m, case == Case::SsmVr, 1e-3)?;
        let ms = median_ms(
            || {
                let x: Vec<f32> = mix.sample(batch, &mut rng).into_iter().map(|v| v as f32).collect();
                let v = objectives::probe_values(1, batch, dim, ProbeDist::Rademacher, &mut rng);
                fast.step(&x, &v, None);
                Ok(())
            },
            3,
            iters,
        )?;
        return Ok(BenchResult { case, dim, batch, ms, peak_mib: peak_mib() });
    }
    if case == Case::Ism {
        // The hand-derived exact-ISM step the trials use for depth-2 MLPs.
        if let Some(mut fast) = FastIsm::new(&m, 1e-3)? {
            let ms = median_ms(
                || {
                    let x: Vec<f32> = mix.sample(batch, &mut rng).into_iter().map(|v| v as f32).collect();
                    fast.step(&x, None);
                    Ok(())
                },
                3,
                iters,
            )?;
            return Ok(BenchResult { case, dim, batch, ms, peak_mib: peak_mib() });
        }
    }
    // Exact ISM through candle's autograd (closed-form trace), for other depths.
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() })?;
    let obj = TrainObjective { kind: ObjectiveKind::Ism, sigmas: None, probes: 1, probe: ProbeDist::Rademacher, trace_chunk: 64 };
    let data = MixtureSource { label: "bench".into(), mixture: mix.clone() };
    let ms = median_ms(
        || {
            let x0 = mix.sample(batch, &mut rng);
            let mut grads = None;
            objectives::loss_pieces(&m, &obj, &data, &x0, &mut rng, &dev, &mut |piece: Tensor| {
                grads = Some(piece.backward()?);
                Ok(())
            })?;
            opt.step(grads.as_ref().expect("one piece"))
        },
        3,
        iters,
    )?;
    Ok(BenchResult { case, dim, batch, ms, peak_mib: peak_mib() })
}
