//! Engine micro-benchmarks, run side by side with `benches/torch_bench.py` (same cases, same
//! JSON lines): a DSM, SSM, SSM-VR or exact-ISM training step, and annealed Langevin sampling;
//! for images, the image MLP's and the U-Net's EDM training steps and Heun sampling.
//! Timing is the median over iterations after a warm-up; peak memory is the process's VmHWM.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

use crate::data::{Mixture, MixtureSource};
use crate::images::guided::{BufferDenoiser, FastGuided};
use crate::images::{self, Precond};
use crate::models::{Activation, Arch, MlpScore};
use crate::objectives::{self, ObjectiveKind, ProbeDist, TrainObjective};
use crate::rng::Rng;
use crate::samplers;
use crate::train::fast::image::{FastImageMlp, ImageForward, Rows};
use crate::train::fast::unet::FastUnet;
use crate::train::fast::{FastDsm, FastIsm, FastSsm};
use schema::image::{ImageMlpSpec, ImageModel, UnetSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Dsm,
    Ssm,
    SsmVr,
    Ism,
    Sample,
    /// The image MLP's EDM training step (784 + 64 Fourier + 64 class → 1024 → 1024 → 784,
    /// batch 128): the hand-derived step the CPU trials use.
    ImageMlp,
    /// The same step through candle's autograd.
    ImageMlpCandle,
    /// The default U-Net's EDM training step (1.21 M parameters), batch 32: the hand-derived
    /// step the CPU trials use.
    Unet,
    /// The same step through candle's autograd.
    UnetCandle,
    /// 18 Heun steps (35 evaluations) for 500 images with the image MLP.
    ImageMlpSample,
    /// 18 Heun steps (35 evaluations) for 50 images with the default U-Net.
    UnetSample,
}

impl Case {
    pub fn parse(s: &str) -> Option<Case> {
        Some(match s {
            "dsm" => Case::Dsm,
            "ssm" => Case::Ssm,
            "ssm_vr" => Case::SsmVr,
            "ism" => Case::Ism,
            "sample" => Case::Sample,
            "image_mlp" => Case::ImageMlp,
            "image_mlp_candle" => Case::ImageMlpCandle,
            "unet" => Case::Unet,
            "unet_candle" => Case::UnetCandle,
            "image_mlp_sample" => Case::ImageMlpSample,
            "unet_sample" => Case::UnetSample,
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
            Case::ImageMlp => "image_mlp",
            Case::ImageMlpCandle => "image_mlp_candle",
            Case::Unet => "unet",
            Case::UnetCandle => "unet_candle",
            Case::ImageMlpSample => "image_mlp_sample",
            Case::UnetSample => "unet_sample",
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
    if matches!(case, Case::ImageMlp | Case::ImageMlpCandle | Case::Unet | Case::UnetCandle | Case::ImageMlpSample | Case::UnetSample) {
        return run_image(case, iters);
    }
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
                // ε small enough that the untrained net's chains stay finite: a run stopped at the
                // first non-finite value would time nothing.
                let s = samplers::AnnealedLangevin { sigmas: sigmas.clone(), eps: 1e-4, steps_per_level: 100, denoise: false, start: samplers::Start::Box(8.0) };
                let mut x = samplers::start(&s, batch, 2, &mut rng);
                let mut scorer = samplers::scorer_for(&m, &dev)?;
                match samplers::sample(&s, scorer.as_mut(), &mut x, &mut rng, &mut || {})?.diverged {
                    Some(at) => Err(candle_core::Error::Msg(format!("the bench's chains diverged at step {}", at.step))),
                    None => Ok(()),
                }
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

/// A plain-buffer forward pass with fixed labels.
/// The image cases, mirrored by `benches/torch_bench.py` (nets of `benches/image_torch.py`):
/// fixed images in [−1, 1] and labels, σ ~ exp(N(−1.2, 1.2²)) and ε drawn inside each step,
/// EDM's weighted loss, AdamW (lr 1e-3, no weight decay, no EMA).
fn run_image(case: Case, iters: usize) -> Result<BenchResult> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let (h, w) = (28, 28);
    let d = h * w;
    let precond = Precond::Edm { sigma_data: 0.5 };
    let mlp_spec = ImageMlpSpec { hidden: 1024, depth: 2, emb: 64, class_cond: true };
    let unet_spec = UnetSpec { channels: 40, mults: vec![1, 2, 2], blocks: 1, emb: 160, groups: 8, class_cond: true };
    let model = match case {
        Case::Unet | Case::UnetCandle | Case::UnetSample => ImageModel::Unet(unet_spec.clone()),
        _ => ImageModel::Mlp(mlp_spec.clone()),
    };
    let varmap = VarMap::new();
    let net = images::build(&model, precond, 1, h, w, &varmap, &dev)?;
    images::init_weights(&varmap, &mut rng)?;
    if matches!(case, Case::ImageMlpSample | Case::UnetSample) {
        let n = if case == Case::UnetSample { 50 } else { 500 };
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        // Both nets sample through their plain-buffer forward passes, as CPU trials do.
        let fwd: Box<dyn BufferDenoiser> = match case {
            Case::ImageMlpSample => Box::new(ImageForward::new(&mlp_spec, d, precond, &varmap)?),
            _ => Box::new(FastUnet::inference(&unet_spec, precond, 1, h, w, &varmap, n)?),
        };
        let mut fwd = fwd;
        let heun = samplers::heun::Heun { sigmas: [samplers::rho_schedule(80.0, 0.002, 18, 7.0), vec![0.0]].concat() };
        let ms = median_ms(
            || {
                let mut den = FastGuided { fwd: fwd.as_mut(), labels: labels.clone(), s: 1.0 };
                let mut x = samplers::start(&heun, n, d, &mut rng);
                samplers::sample(&heun, &mut den, &mut x, &mut rng, &mut || {})?;
                Ok(())
            },
            1,
            iters.max(1),
        )?;
        return Ok(BenchResult { case, dim: d, batch: n, ms, peak_mib: peak_mib() });
    }
    let batch = if matches!(case, Case::Unet | Case::UnetCandle) { 32 } else { 128 };
    let x0: Vec<f32> = (0..batch * d).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let draw = |rng: &mut Rng| {
        let sigma: Vec<f32> = (0..batch).map(|_| (-1.2 + 1.2 * rng.normal()).exp() as f32).collect();
        let weight: Vec<f32> = sigma.iter().map(|&s| images::objective::edm_weight(s as f64, 0.5) as f32).collect();
        (sigma, weight, rng.normals_f32(batch * d))
    };
    if case == Case::ImageMlp {
        let mut fast = FastImageMlp::new(&mlp_spec, d, &varmap, batch, 1e-3, 0.0)?;
        let ms = median_ms(
            || {
                let (sigma, weight, eps) = draw(&mut rng);
                fast.loss_and_grad(&x0, &eps, &labels, &Rows::new(&precond, sigma, weight));
                fast.adam_step();
                Ok(())
            },
            3,
            iters,
        )?;
        return Ok(BenchResult { case, dim: d, batch, ms, peak_mib: peak_mib() });
    }
    if case == Case::Unet {
        let mut fast = FastUnet::trainer(&unet_spec, precond, 1, h, w, &varmap, batch, 1e-3, 0.0)?;
        let ms = median_ms(
            || {
                let (sigma, weight, eps) = draw(&mut rng);
                fast.loss_and_grad(&x0, &eps, &labels, &Rows::new(&precond, sigma, weight));
                fast.adam_step();
                Ok(())
            },
            3,
            iters,
        )?;
        return Ok(BenchResult { case, dim: d, batch, ms, peak_mib: peak_mib() });
    }
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() })?;
    let xt = images::tensor(&x0, (1, h, w), &dev)?;
    let lt = Tensor::from_vec(labels, batch, &dev)?;
    let ms = median_ms(
        || {
            let (sigma, weight, eps) = draw(&mut rng);
            let loss = images::objective::edm_losses(
                net.as_ref(),
                &xt,
                &images::tensor(&eps, (1, h, w), &dev)?,
                &Tensor::from_vec(sigma, batch, &dev)?,
                &Tensor::from_vec(weight, batch, &dev)?,
                Some(&lt),
            )?
            .mean_all()?;
            opt.backward_step(&loss)
        },
        3,
        iters,
    )?;
    Ok(BenchResult { case, dim: d, batch, ms, peak_mib: peak_mib() })
}
