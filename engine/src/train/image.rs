//! The image trainers: candle's autograd ([`ImageAutograd`], with its EMA of the weights) and
//! the hand-derived steps of the image MLP ([`FastImageMlp`]) and the U-Net ([`FastUnet`]),
//! which keep their own weights and EMA. All of them draw the same numbers per batch
//! ([`ImageDraws`]), so the hand-derived step trains exactly what autograd would.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use schema::image::{ImageModel, ImageObjectiveKind};

use super::Trainer;
use super::fast::image::{FastImageMlp, Rows};
use super::fast::unet::FastUnet;
use crate::data::Batch;
use crate::images::objective::{Objective, edm_losses, ssm_losses};
use crate::images::unet::NULL_CLASS;
use crate::images::{ImageNet, tensor};
use crate::rng::Rng;

/// What an image trainer is built from.
pub struct ImageSetup<'a> {
    pub model: &'a ImageModel,
    /// The candle net (autograd trains it; the hand-derived steps read its initial weights
    /// from `varmap`).
    pub net: &'a dyn ImageNet,
    pub varmap: &'a VarMap,
    pub objective: Objective,
    /// The probability of replacing a label by the null class (classifier-free guidance).
    pub label_dropout: f64,
    /// The image shape (C, H, W).
    pub shape: (usize, usize, usize),
    pub batch: usize,
    pub lr: f64,
    /// The EMA decay.
    pub ema: f64,
    pub device: Device,
}

/// The hand-derived step for the net on CPU under a denoising objective, else candle's
/// autograd (the registry of image trainers).
pub fn build<'a>(s: ImageSetup<'a>) -> Result<Box<dyn Trainer + 'a>> {
    let (c, h, w) = s.shape;
    let draws = ImageDraws { objective: s.objective.clone(), label_dropout: s.label_dropout, dim: c * h * w };
    if crate::device::fast_paths(&s.device) && s.objective.is_denoising() {
        let precond = s.objective.precond();
        match s.model {
            ImageModel::Mlp(spec) => return Ok(Box::new(FastImage { step: FastImageMlp::new(spec, c * h * w, s.varmap, s.batch, s.lr, s.ema)?, varmap: s.varmap, draws })),
            ImageModel::Unet(spec) => {
                return Ok(Box::new(FastImage { step: FastUnet::trainer(spec, precond, c, h, w, s.varmap, s.batch, s.lr, s.ema)?, varmap: s.varmap, draws }));
            }
        }
    }
    Ok(Box::new(ImageAutograd::new(s, draws)?))
}

/// The draws of one image training step from the training stream, in this order: label
/// dropout (one uniform per label, only when the rate is positive), one σ per image from the
/// objective, one noise image per image.
pub struct ImageDraws {
    pub objective: Objective,
    pub label_dropout: f64,
    /// Pixels per image.
    pub dim: usize,
}

/// One batch's draws.
pub struct Drawn {
    pub x: Vec<f32>,
    pub labels: Vec<u32>,
    pub sigmas: Vec<f32>,
    /// The loss weight w(σ) of each image.
    pub weights: Vec<f32>,
    pub eps: Vec<f32>,
}

impl ImageDraws {
    pub fn draw(&self, batch: &Batch, rng: &mut Rng) -> Drawn {
        let b = batch.labels.len();
        let mut labels = batch.labels.clone();
        for l in &mut labels {
            if self.label_dropout > 0.0 && rng.uniform() < self.label_dropout {
                *l = NULL_CLASS;
            }
        }
        let sigmas: Vec<f32> = (0..b).map(|_| self.objective.draw_sigma(rng) as f32).collect();
        let weights: Vec<f32> = sigmas.iter().map(|&s| self.objective.weight(s as f64) as f32).collect();
        let eps = rng.normals_f32(b * self.dim);
        Drawn { x: batch.x.iter().map(|&v| v as f32).collect(), labels, sigmas, weights, eps }
    }
}

/// A hand-derived image step over plain buffers, with its own weights and their EMA.
pub trait ImageStep {
    const NAME: &'static str;
    /// Loss, gradients, AdamW and the EMA (warmed up by the 1-based `step`) when the loss is
    /// finite; returns the loss before the update.
    fn train(&mut self, d: &Drawn, rows: &Rows, step: u64) -> f64;
    /// Writes the EMA weights into the VarMap's variables.
    fn store_ema(&self, varmap: &VarMap) -> Result<()>;
    /// The AdamW learning rate of the next updates.
    fn set_lr(&mut self, lr: f64);
}

impl ImageStep for FastImageMlp {
    const NAME: &'static str = "fast_image_mlp";
    fn train(&mut self, d: &Drawn, rows: &Rows, step: u64) -> f64 {
        self.step(&d.x, &d.eps, &d.labels, rows, step)
    }
    fn store_ema(&self, varmap: &VarMap) -> Result<()> {
        FastImageMlp::store_ema(self, varmap)
    }
    fn set_lr(&mut self, lr: f64) {
        FastImageMlp::set_lr(self, lr)
    }
}

impl ImageStep for FastUnet {
    const NAME: &'static str = "fast_unet";
    fn train(&mut self, d: &Drawn, rows: &Rows, step: u64) -> f64 {
        self.step(&d.x, &d.eps, &d.labels, rows, step)
    }
    fn store_ema(&self, varmap: &VarMap) -> Result<()> {
        FastUnet::store_ema(self, varmap)
    }
    fn set_lr(&mut self, lr: f64) {
        FastUnet::set_lr(self, lr)
    }
}

/// An [`ImageStep`] and the VarMap its EMA weights go to (training never reads the VarMap, so
/// there is nothing to resume).
struct FastImage<'a, S> {
    step: S,
    varmap: &'a VarMap,
    draws: ImageDraws,
}

impl<S: ImageStep> Trainer for FastImage<'_, S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn step(&mut self, batch: &Batch, rng: &mut Rng, step: u64) -> Result<f64> {
        let mut d = self.draws.draw(batch, rng);
        let rows = Rows::new(&self.draws.objective.precond(), std::mem::take(&mut d.sigmas), std::mem::take(&mut d.weights));
        Ok(self.step.train(&d, &rows, step))
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.step.set_lr(lr);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.step.store_ema(self.varmap)
    }
}

/// The EMA of the trainable variables.
struct Ema {
    decay: f64,
    shadow: Vec<(Var, Tensor)>,
}

impl Ema {
    fn new(vars: &[Var], decay: f64) -> Result<Self> {
        Ok(Ema { decay, shadow: vars.iter().map(|v| Ok((v.clone(), v.as_tensor().detach().copy()?))).collect::<Result<_>>()? })
    }

    /// shadow ← d·shadow + (1 − d)·w with d warmed up as min(decay, (1 + step)/(10 + step)).
    fn update(&mut self, step: u64) -> Result<()> {
        let d = crate::kernels::optim::ema_decay(self.decay, step);
        for (v, s) in &mut self.shadow {
            // Detached: otherwise each shadow keeps the previous one (and the weights) alive
            // through candle's graph, and memory grows by a model's size every step.
            *s = ((&*s * d)? + (v.as_tensor().detach() * (1.0 - d))?)?.detach();
        }
        Ok(())
    }

    /// Swaps the shadow weights into the variables (call twice to swap back).
    fn swap(&mut self) -> Result<()> {
        for (v, s) in &mut self.shadow {
            let cur = v.as_tensor().detach().copy()?;
            v.set(s)?;
            *s = cur;
        }
        Ok(())
    }
}

/// candle's autograd on the image net: the objective's loss (EDM-style denoising, or sliced
/// score matching with one Rademacher probe per image drawn after the noise), AdamW (no weight
/// decay) over the VarMap and the EMA; `sync` swaps the EMA weights in, `resume` back out.
pub struct ImageAutograd<'a> {
    net: &'a dyn ImageNet,
    opt: AdamW,
    ema: Ema,
    /// Whether the EMA weights are in the variables now.
    swapped: bool,
    draws: ImageDraws,
    cond: bool,
    /// The image shape (C, H, W).
    shape: (usize, usize, usize),
    device: Device,
}

impl<'a> ImageAutograd<'a> {
    fn new(s: ImageSetup<'a>, draws: ImageDraws) -> Result<Self> {
        let vars = s.varmap.all_vars();
        let opt = AdamW::new(vars.clone(), ParamsAdamW { lr: s.lr, weight_decay: 0.0, ..Default::default() })?;
        let ema = Ema::new(&vars, s.ema)?;
        Ok(ImageAutograd { net: s.net, opt, ema, swapped: false, draws, cond: s.model.class_cond(), shape: s.shape, device: s.device })
    }
}

impl Trainer for ImageAutograd<'_> {
    fn name(&self) -> &'static str {
        "autograd"
    }

    fn step(&mut self, batch: &Batch, rng: &mut Rng, step: u64) -> Result<f64> {
        let (shape, dev) = (self.shape, &self.device);
        let d = self.draws.draw(batch, rng);
        let b = d.labels.len();
        let x = tensor(&d.x, shape, dev)?;
        let e = tensor(&d.eps, shape, dev)?;
        let sig = Tensor::from_vec(d.sigmas, b, dev)?;
        let lab = if self.cond { Some(Tensor::from_vec(d.labels, b, dev)?) } else { None };
        let loss = match self.draws.objective.kind {
            ImageObjectiveKind::Ssm { vr, .. } => {
                let v: Vec<f32> = (0..b * self.draws.dim).map(|_| rng.rademacher() as f32).collect();
                let xt = (&x + e.broadcast_mul(&sig.reshape((b, 1, 1, 1))?)?)?;
                ssm_losses(self.net, &xt, &tensor(&v, shape, dev)?, &sig, vr, lab.as_ref())?.mean_all()?
            }
            _ => edm_losses(self.net, &x, &e, &sig, &Tensor::from_vec(d.weights, b, dev)?, lab.as_ref())?.mean_all()?,
        };
        let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if lv.is_finite() {
            self.opt.backward_step(&loss)?;
            self.ema.update(step)?;
        }
        Ok(lv)
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.opt.set_learning_rate(lr);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if !self.swapped {
            self.ema.swap()?;
            self.swapped = true;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        if self.swapped {
            self.ema.swap()?;
            self.swapped = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use schema::image::{ImageMlpSpec, ImageObjectiveKind};

    use super::*;
    use crate::images::{self, Precond};

    /// The image MLP's hand-derived trainer and candle's autograd, built from the same
    /// weights and fed the same batches and stream, draw the same numbers (the streams stay
    /// in step), report the same losses and end with the same EMA weights: on grayscale
    /// images, and on colour ones whose 48 values outnumber the 16 hidden units (with the odd
    /// depth, the case whose second step once indexed a buffer of the hidden width) — also
    /// when the learning rate changes between steps (`set_lr`, as a decaying schedule does),
    /// which a third trainer left at the constant rate shows to matter.
    #[test]
    fn the_fast_image_step_and_autograd_draw_and_train_alike() {
        for c in [1, 3] {
            fast_and_autograd_alike(c);
        }
    }

    fn fast_and_autograd_alike(c: usize) {
        let (h, w, b) = (4, 4, 6);
        let spec = ImageMlpSpec { hidden: 16, depth: 1, emb: 8, class_cond: true };
        let model = ImageModel::Mlp(spec);
        let objective = Objective { kind: ImageObjectiveKind::Edm { p_mean: -1.2, p_std: 1.2 }, sigma_data: 0.5, ladder: vec![] };
        let dev = Device::Cpu;
        let net_for = |varmap: &VarMap| {
            let net = images::build(&model, Precond::Edm { sigma_data: 0.5 }, c, h, w, varmap, &dev).unwrap();
            images::init_weights(varmap, &mut Rng::new(11)).unwrap();
            net
        };
        let (vm_fast, vm_auto, vm_plain) = (VarMap::new(), VarMap::new(), VarMap::new());
        let (net_fast, net_auto, net_plain) = (net_for(&vm_fast), net_for(&vm_auto), net_for(&vm_plain));
        let setup = |net, varmap| ImageSetup {
            model: &model,
            net,
            varmap,
            objective: objective.clone(),
            label_dropout: 0.5,
            shape: (c, h, w),
            batch: b,
            lr: 1e-2,
            ema: 0.9,
            device: Device::Cpu,
        };
        let mut fast = build(setup(net_fast.as_ref(), &vm_fast)).unwrap();
        assert_eq!(fast.name(), "fast_image_mlp", "the CPU picks the hand-derived step");
        let s = setup(net_auto.as_ref(), &vm_auto);
        let draws = ImageDraws { objective: s.objective.clone(), label_dropout: s.label_dropout, dim: c * h * w };
        let mut auto: Box<dyn Trainer> = Box::new(ImageAutograd::new(s, draws).unwrap());
        let mut plain = build(setup(net_plain.as_ref(), &vm_plain)).unwrap();

        let mut data = Rng::new(5);
        let (mut rf, mut ra, mut rp) = (Rng::new(9), Rng::new(9), Rng::new(9));
        for step in 1..=4 {
            let batch = Batch { x: (0..b * c * h * w).map(|_| (2.0 * data.uniform() - 1.0) as f32 as f64).collect(), labels: (0..b).map(|i| (i % 10) as u32).collect() };
            let lr = 1e-2 * [1.0, 0.5, 0.25, 0.1][step as usize - 1];
            fast.set_lr(lr).unwrap();
            auto.set_lr(lr).unwrap();
            plain.step(&batch, &mut rp, step).unwrap();
            let (lf, la) = (fast.step(&batch, &mut rf, step).unwrap(), auto.step(&batch, &mut ra, step).unwrap());
            assert!((lf - la).abs() <= 1e-4 * la.abs().max(1.0), "step {step}: fast {lf} autograd {la}");
        }
        assert_eq!(rf.next_u64(), ra.next_u64(), "both trainers drew the same count of numbers");
        fast.sync().unwrap();
        auto.sync().unwrap();
        let values = |vm: &VarMap| -> Vec<(String, Vec<f32>)> {
            let data = vm.data().lock().unwrap();
            let mut v: Vec<_> = data.iter().map(|(k, var)| (k.clone(), var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let (wf, wa) = (values(&vm_fast), values(&vm_auto));
        assert_eq!(wf.len(), wa.len());
        let init = {
            let vm = VarMap::new();
            let _net = net_for(&vm);
            values(&vm)
        };
        for (((name, f), (_, a)), (_, i)) in wf.iter().zip(&wa).zip(&init) {
            let moved = f.iter().zip(i).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let diff = f.iter().zip(a).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 1e-4 + 1e-2 * moved, "{name}: EMA weights differ by {diff} (training moved them by {moved})");
        }
        assert!(wf.iter().zip(&init).any(|((_, f), (_, i))| f != i), "training moved the EMA weights");
        plain.sync().unwrap();
        let wp = values(&vm_plain);
        let gap = wf.iter().zip(&wp).map(|((_, f), (_, p))| f.iter().zip(p).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)).fold(0.0f32, f32::max);
        assert!(gap > 1e-3, "the decayed rates changed the weights (largest difference to the constant rate {gap})");
        // resume swaps autograd's training weights back in; sync again returns the EMA.
        auto.resume().unwrap();
        assert_ne!(values(&vm_auto), wa);
        auto.sync().unwrap();
        auto.sync().unwrap();
        assert_eq!(values(&vm_auto), wa, "sync is idempotent");
    }
}
