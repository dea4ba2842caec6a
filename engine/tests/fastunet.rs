//! The U-Net's hand-derived step and inference pass (`train::fast::unet`) against candle's
//! autograd of the same net (`images::unet::Unet`): same loss, every gradient, one AdamW step
//! and an EMA update; the inference pass against candle's denoiser; bits independent of the
//! thread count. Shapes cover odd image sizes (7 → 4 → 7 on the way up), several blocks per
//! level, no class embedding, every preconditioning, and both convolution paths (im2col, and
//! the padded grid for wide images with many channels), and 3-channel (colour) images.

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use engine::images::{self, Precond, objective::edm_losses, unet::NULL_CLASS};
use engine::rng::Rng;
use engine::train::fast::image::Rows;
use engine::train::fast::unet::FastUnet;
use schema::image::{ImageModel, UnetSpec};

struct Case {
    spec: UnetSpec,
    precond: Precond,
    /// Image channels.
    ch: usize,
    h: usize,
    w: usize,
    n: usize,
}

fn cases() -> Vec<Case> {
    let spec = |channels, mults: &[usize], blocks, emb, groups, class_cond| UnetSpec { channels, mults: mults.to_vec(), blocks, emb, groups, class_cond };
    vec![
        Case { spec: spec(8, &[1, 2], 1, 16, 4, true), precond: Precond::Edm { sigma_data: 0.5 }, ch: 1, h: 8, w: 8, n: 5 },
        Case { spec: spec(6, &[1, 2, 2], 2, 12, 2, true), precond: Precond::Edm { sigma_data: 0.5 }, ch: 1, h: 12, w: 12, n: 3 },
        Case { spec: spec(8, &[1, 2], 1, 8, 4, false), precond: Precond::Score { sigma_data: 0.7 }, ch: 1, h: 7, w: 6, n: 4 },
        Case { spec: spec(4, &[1], 1, 8, 2, true), precond: Precond::Eps, ch: 1, h: 5, w: 5, n: 2 },
        Case { spec: spec(8, &[1, 2], 1, 8, 4, true), precond: Precond::Score { sigma_data: 0.5 }, ch: 1, h: 10, w: 6, n: 3 },
        // ≥ 16 channels on images ≥ 16 wide: the convolutions without im2col (and 17 rows).
        Case { spec: spec(16, &[1, 2], 1, 16, 4, true), precond: Precond::Edm { sigma_data: 0.5 }, ch: 1, h: 18, w: 16, n: 2 },
        // Colour images: 3 channels in and out (NCHW outside, NHWC inside), both conv paths.
        Case { spec: spec(8, &[1, 2], 1, 16, 4, true), precond: Precond::Edm { sigma_data: 0.5 }, ch: 3, h: 8, w: 6, n: 3 },
        Case { spec: spec(16, &[1], 1, 8, 4, false), precond: Precond::Score { sigma_data: 0.5 }, ch: 3, h: 5, w: 16, n: 2 },
    ]
}

struct Batch {
    x0: Vec<f32>,
    eps: Vec<f32>,
    labels: Vec<u32>,
    sigma: Vec<f32>,
    weight: Vec<f32>,
}

fn batch(c: &Case, rng: &mut Rng) -> Batch {
    let d = c.ch * c.h * c.w;
    let n = c.n;
    let sigma: Vec<f32> = (0..n).map(|_| (-1.2 + 1.2 * rng.normal()).exp() as f32).collect();
    Batch {
        x0: (0..n * d).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect(),
        eps: rng.normals_f32(n * d),
        labels: (0..n).map(|i| [0, 3, 3, 7, 10][i % 5]).collect(),
        weight: sigma
            .iter()
            .map(|&s| match c.precond {
                Precond::Edm { sigma_data: sd } => images::objective::edm_weight(s as f64, sd) as f32,
                _ => 1.0 / (s * s),
            })
            .collect(),
        sigma,
    }
}

fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{name}[{i}]: {a} vs {b} (max {scale})");
    }
}

#[test]
fn fast_unet_matches_candle_autograd() {
    let dev = Device::Cpu;
    for (ci, c) in cases().into_iter().enumerate() {
        if c.spec.mults.len() > 1 && (c.h % 2 == 1 || c.w % 2 == 1) {
            // candle has no backward for non-integer upsampling (7 → 4 → 7): that shape is
            // checked by the inference test only.
            continue;
        }
        let vm = VarMap::new();
        let net = images::build(&ImageModel::Unet(c.spec.clone()), c.precond, c.ch, c.h, c.w, &vm, &dev).unwrap();
        let mut rng = Rng::new(70 + ci as u64);
        images::init_weights(&vm, &mut rng).unwrap();
        // Non-trivial GroupNorm affines, so γ and β enter every gradient.
        for (name, var) in vm.data().lock().unwrap().iter() {
            if name.contains("norm") {
                let n = var.elem_count();
                let v: Vec<f32> = (0..n).map(|_| (if name.ends_with("weight") { 1.0 } else { 0.0 }) + 0.3 * rng.normal() as f32).collect();
                var.set(&Tensor::from_vec(v, n, &dev).unwrap()).unwrap();
            }
        }
        let b = batch(&c, &mut rng);
        let n = c.n;
        let mut fast = FastUnet::trainer(&c.spec, c.precond, c.ch, c.h, c.w, &vm, n, 1e-2, 0.9).unwrap();
        let fast_loss = fast.loss_and_grad(&b.x0, &b.eps, &b.labels, &Rows::new(&c.precond, b.sigma.clone(), b.weight.clone()));

        let t = |v: &[f32]| Tensor::from_slice(v, (n, c.ch, c.h, c.w), &dev).unwrap();
        let lab = if c.spec.class_cond { Some(Tensor::from_slice(&b.labels, n, &dev).unwrap()) } else { None };
        let loss = edm_losses(net.as_ref(), &t(&b.x0), &t(&b.eps), &Tensor::from_slice(&b.sigma, n, &dev).unwrap(), &Tensor::from_slice(&b.weight, n, &dev).unwrap(), lab.as_ref())
            .unwrap()
            .mean_all()
            .unwrap();
        let l: f32 = loss.to_scalar().unwrap();
        assert!((fast_loss - l as f64).abs() < 1e-4 * (1.0 + l.abs() as f64), "case {ci}: loss {fast_loss} vs {l}");
        let grads = loss.backward().unwrap();
        let mut vars: Vec<(String, candle_core::Var)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(fast.names().count(), vars.len(), "case {ci}: every variable is trained");
        for (name, var) in &vars {
            let reference: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got = fast.grad(name).unwrap_or_else(|| panic!("case {ci}: no gradient for {name}"));
            close(&format!("case {ci} ∂{name}"), &got, &reference, 2e-4);
        }
        // One AdamW step and one EMA update on both sides.
        let before: Vec<Vec<f32>> = vars.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), ParamsAdamW { lr: 1e-2, weight_decay: 0.0, ..Default::default() }).unwrap();
        opt.step(&grads).unwrap();
        fast.adam_step();
        fast.ema_update(5);
        let after: Vec<Vec<f32>> = vars.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        fast.store(&vm).unwrap();
        let d_ema = 0.9f32.min(6.0 / 15.0);
        for (i, (name, var)) in vars.iter().enumerate() {
            let got: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            // AdamW's first step moves a weight by about lr·sign(g): equal steps up to rounding,
            // except where a gradient is so close to 0 that its sign is rounding (≤ 1%).
            assert!(got.iter().zip(&after[i]).all(|(a, b)| (a - b).abs() < 2.1e-2), "case {ci} {name}: a step larger than lr");
            let moved = got.iter().zip(&after[i]).filter(|(a, b)| (*a - *b).abs() >= 1e-3).count();
            assert!(moved * 100 <= got.len().max(100), "case {ci} {name}: {moved} of {} weights differ after one step", got.len());
        }
        fast.store_ema(&vm).unwrap();
        for (i, (name, var)) in vars.iter().enumerate() {
            let got: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let want: Vec<f32> = before[i].iter().zip(&after[i]).map(|(w0, w1)| d_ema * w0 + (1.0 - d_ema) * w1).collect();
            let bad = got.iter().zip(&want).filter(|(a, b)| (*a - *b).abs() >= 1e-3).count();
            assert!(bad * 100 <= got.len().max(100), "case {ci} {name}: EMA off in {bad} of {}", got.len());
        }
    }
}

#[test]
fn fast_unet_inference_matches_candle_denoiser() {
    let dev = Device::Cpu;
    for (ci, c) in cases().into_iter().enumerate() {
        let vm = VarMap::new();
        let net = images::build(&ImageModel::Unet(c.spec.clone()), c.precond, c.ch, c.h, c.w, &vm, &dev).unwrap();
        let mut rng = Rng::new(90 + ci as u64);
        images::init_weights(&vm, &mut rng).unwrap();
        let b = batch(&c, &mut rng);
        let n = c.n;
        let d = c.ch * c.h * c.w;
        // Capacity 2: the batch goes in several passes (the last one partial for odd n).
        let mut fwd = FastUnet::inference(&c.spec, c.precond, c.ch, c.h, c.w, &vm, 2).unwrap();
        let mut out = vec![0.0f32; n * d];
        fwd.denoise(&b.x0, &b.sigma, &b.labels, &mut out);
        let lab = if c.spec.class_cond { Some(Tensor::from_slice(&b.labels, n, &dev).unwrap()) } else { None };
        let want: Vec<f32> = net
            .denoise(&Tensor::from_slice(&b.x0, (n, c.ch, c.h, c.w), &dev).unwrap(), &Tensor::from_slice(&b.sigma, n, &dev).unwrap(), lab.as_ref())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        close(&format!("case {ci} D"), &out, &want, 1e-4);
        // The null class is the unconditional model: different from a digit's output.
        if c.spec.class_cond {
            let mut un = vec![0.0f32; n * d];
            fwd.denoise(&b.x0, &b.sigma, &vec![NULL_CLASS; n], &mut un);
            assert!(un.iter().zip(&out).any(|(a, b)| (a - b).abs() > 1e-4), "case {ci}: labels change nothing");
        }
    }
}

#[test]
fn fast_unet_bits_do_not_depend_on_threads() {
    let dev = Device::Cpu;
    // The wide case: both convolution paths, and runs of images in the weight gradients.
    let all = cases();
    let c = all.iter().find(|c| c.w >= 16).expect("a case with images 16 wide");
    let vm = VarMap::new();
    images::build(&ImageModel::Unet(c.spec.clone()), c.precond, c.ch, c.h, c.w, &vm, &dev).unwrap();
    let mut rng = Rng::new(5);
    images::init_weights(&vm, &mut rng).unwrap();
    let n = 24;
    let big = Case { spec: c.spec.clone(), precond: c.precond, ch: c.ch, h: c.h, w: c.w, n };
    let b = batch(&big, &mut rng);
    let rows = || Rows::new(&c.precond, b.sigma.clone(), b.weight.clone());
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        let mut fast = FastUnet::trainer_with_threads(&c.spec, c.precond, c.ch, c.h, c.w, &vm, n, 1e-3, 0.99, threads).unwrap();
        let mut losses = Vec::new();
        for step in 1..=3 {
            losses.push(fast.step(&b.x0, &b.eps, &b.labels, &rows(), step).to_bits());
        }
        let grads: Vec<u32> = fast.names().map(|s| s.to_string()).collect::<Vec<_>>().iter().flat_map(|name| fast.grad(name).unwrap()).map(f32::to_bits).collect();
        results.push((losses, grads));
    }
    assert_eq!(results[0], results[1], "1 vs 2 threads");
    assert_eq!(results[0], results[2], "1 vs 3 threads");
}
