//! The hand-derived DSM step against candle's autograd: same loss, same gradients, same Adam
//! update, for conditional and unconditional nets and every activation.

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use engine::models::{Activation, Arch, MlpScore, Probes};
use engine::objectives;
use engine::rng::Rng;
use engine::train::fast::{FastDsm, FastForward, FastIsm, FastSsm, exp_f32};

/// Each layer's hand-derived (weight, bias) gradients equal autograd's to 1e-4 of the largest
/// entry of each tensor.
fn assert_grads_match<'a>(ci: usize, model: &MlpScore, grads: &candle_core::backprop::GradStore, fast: impl Fn(usize) -> (&'a [f32], &'a [f32])) {
    for (li, layer) in model.layers.iter().chain(std::iter::once(&model.out)).enumerate() {
        let (gw, gb) = fast(li);
        for (fastg, t) in [(gw, &layer.w), (gb, &layer.b)] {
            let reference: Vec<f32> = grads.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let scale = reference.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
            for (a, b) in fastg.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-4 * scale, "case {ci} layer {li}: {a} vs {b} (max {scale})");
            }
        }
    }
}

#[test]
fn fast_exp_is_accurate() {
    // Relative error of the degree-6 polynomial is < 2e-7 on the reduced range, so 1e-6 bounds
    // it with f32 rounding of the 2^n scaling included.
    for i in -8000..8000 {
        let x = i as f32 * 0.01;
        let (a, b) = (exp_f32(x), (x as f64).exp());
        assert!(((a as f64 - b) / b).abs() < 1e-6, "exp({x}) = {a} vs {b}");
    }
}

/// f32 sums in another order and the polynomial exp differ from candle's kernels by ~1e-6
/// relative, so gradients must agree to 1e-4 relative to the largest entry of each tensor (a
/// wrong derivative is off by O(1)).
#[test]
fn fast_dsm_matches_candle_autograd() {
    let cases = [
        (Activation::Silu, true, true, 2),
        (Activation::Silu, false, false, 2),
        (Activation::Softplus, true, false, 3),
        (Activation::Tanh, true, true, 1),
        (Activation::Relu, false, false, 2),
    ];
    for (ci, &(act, cond, scale, depth)) in cases.iter().enumerate() {
        let dev = Device::Cpu;
        let dim = 2;
        let arch = Arch { dim, hidden: 32, depth, activation: act, conditional: cond, scale_by_sigma: scale };
        let vm = VarMap::new();
        let mut rng = Rng::new(ci as u64);
        let model = MlpScore::new(arch, &vm, &mut rng, &dev).unwrap();
        let n = 64;
        let xt: Vec<f32> = (0..n * dim).map(|_| 3.0 * rng.normal() as f32).collect();
        let eps: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
        let sig: Vec<f32> = (0..n).map(|i| if cond { 0.2 + 0.1 * (i % 7) as f32 } else { 0.5 }).collect();
        let mut fast = FastDsm::new(&model, n, 1e-2).unwrap();
        let fast_loss = fast.loss_and_grad(&xt, &eps, &sig);

        let x = Tensor::from_slice(&xt, (n, dim), &dev).unwrap();
        let e = Tensor::from_slice(&eps, (n, dim), &dev).unwrap();
        let s = Tensor::from_slice(&sig, (n, 1), &dev).unwrap();
        let score = model.score(&x, if cond { Some(&s) } else { None }).unwrap();
        let loss = (objectives::dsm_terms(&score, &e, &s).unwrap() * s.sqr().unwrap().squeeze(1).unwrap()).unwrap().mean_all().unwrap();
        let l: f32 = loss.to_scalar().unwrap();
        assert!((fast_loss - l as f64).abs() < 1e-5 * (1.0 + l.abs() as f64), "case {ci}: loss {fast_loss} vs {l}");
        let grads = loss.backward().unwrap();
        let layers: Vec<_> = model.layers.iter().chain(std::iter::once(&model.out)).collect();
        assert_grads_match(ci, &model, &grads, |l| fast.grads(l));
        // One Adam step on both sides; parameters agree afterwards.
        let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW { lr: 1e-2, weight_decay: 0.0, ..Default::default() }).unwrap();
        opt.step(&grads).unwrap();
        fast.adam_step();
        let vm2 = VarMap::new();
        let model2 = MlpScore::new(model.arch.clone(), &vm2, &mut Rng::new(99), &dev).unwrap();
        fast.store(&model2, &vm2).unwrap();
        for (a, b) in layers.iter().zip(model2.layers.iter().chain(std::iter::once(&model2.out))) {
            let d = (&a.w - &b.w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // Adam moves each weight by ≤ lr = 1e-2; a sign flip of a tiny gradient could move it
            // by 2e-2, so 1e-3 catches any real mismatch.
            assert!(d < 1e-3, "case {ci}: weights differ by {d} after one step");
        }
    }
}

/// The hand-derived SSM / SSM-VR step against candle autograd through the forward tangents
/// (objectives::ssm_terms), with K = 1 and K = 3 probes, with and without a ladder; tolerance as
/// for DSM (1e-4 of each tensor's largest gradient).
#[test]
fn fast_ssm_matches_candle_autograd() {
    let cases = [
        (Activation::Silu, false, false, 2, 1, true),
        (Activation::Silu, true, true, 2, 3, false),
        (Activation::Softplus, true, false, 1, 2, true),
        (Activation::Tanh, false, false, 3, 1, false),
    ];
    for (ci, &(act, cond, scale, depth, k, vr)) in cases.iter().enumerate() {
        let dev = Device::Cpu;
        let dim = 3;
        let arch = Arch { dim, hidden: 24, depth, activation: act, conditional: cond, scale_by_sigma: scale };
        let vm = VarMap::new();
        let mut rng = Rng::new(50 + ci as u64);
        let model = MlpScore::new(arch, &vm, &mut rng, &dev).unwrap();
        let n = 40;
        let x: Vec<f32> = (0..n * dim).map(|_| 2.0 * rng.normal() as f32).collect();
        let v: Vec<f32> = (0..k * n * dim).map(|_| rng.rademacher() as f32).collect();
        let sig: Vec<f32> = (0..n).map(|i| 0.3 + 0.2 * (i % 5) as f32).collect();
        let mut fast = FastSsm::new(&model, vr, 1e-2).unwrap();
        let fast_loss = fast.loss_and_grad(&x, &v, if cond { Some(&sig) } else { None });

        let xt = Tensor::from_slice(&x, (n, dim), &dev).unwrap();
        let vt = Tensor::from_slice(&v, (k, n, dim), &dev).unwrap();
        let st = Tensor::from_slice(&sig, (n, 1), &dev).unwrap();
        let tg = model.tangents(&xt, if cond { Some(&st) } else { None }, &Probes::Vectors(&vt)).unwrap();
        let terms = objectives::ssm_terms(&tg, &vt, vr).unwrap();
        let loss = if cond { (terms * st.sqr().unwrap().squeeze(1).unwrap()).unwrap().mean_all().unwrap() } else { terms.mean_all().unwrap() };
        let l: f32 = loss.to_scalar().unwrap();
        assert!((fast_loss - l as f64).abs() < 1e-4 * (1.0 + l.abs() as f64), "case {ci}: loss {fast_loss} vs {l}");
        let grads = loss.backward().unwrap();
        assert_grads_match(ci, &model, &grads, |l| fast.grads(l));
    }
}

/// The samplers' plain forward pass equals candle's S(x, σ) (f32 rounding and the polynomial
/// exp: 1e-5 of the largest output).
#[test]
fn fast_forward_matches_candle_score() {
    for (ci, &(act, cond, scale, depth)) in [(Activation::Silu, true, true, 2), (Activation::Softplus, false, false, 3), (Activation::Tanh, true, false, 1)].iter().enumerate() {
        let dev = Device::Cpu;
        let arch = Arch { dim: 2, hidden: 32, depth, activation: act, conditional: cond, scale_by_sigma: scale };
        let vm = VarMap::new();
        let mut rng = Rng::new(7 + ci as u64);
        let model = MlpScore::new(arch, &vm, &mut rng, &dev).unwrap();
        let x: Vec<f32> = (0..2 * 100).map(|_| 4.0 * rng.normal() as f32).collect();
        let sigma = 0.7f32;
        let mut out = vec![0.0f32; x.len()];
        FastForward::new(&model).unwrap().score(&x, cond.then_some(sigma), &mut out);
        let st = Tensor::full(sigma, (100, 1), &dev).unwrap();
        let reference: Vec<f32> = model.score(&Tensor::from_slice(&x, (100, 2), &dev).unwrap(), cond.then_some(&st)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let scale = reference.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
        for (a, b) in out.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-5 * scale, "case {ci}: {a} vs {b}");
        }
    }
}

/// Loss and every gradient of two trainers agree to `tol` (relative to the largest entry).
fn assert_same(what: &str, l1: f64, lt: f64, tol: f64, nlayers: usize, g1: impl Fn(usize) -> (Vec<f32>, Vec<f32>), gt: impl Fn(usize) -> (Vec<f32>, Vec<f32>)) {
    assert!((l1 - lt).abs() <= tol * l1.abs().max(1e-12), "{what}: loss {l1} vs {lt}");
    for l in 0..nlayers {
        let ((w1, b1), (wt, bt)) = (g1(l), gt(l));
        for (a, b) in [(w1, wt), (b1, bt)] {
            let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= tol as f32 * scale, "{what}, layer {l}: {x} vs {y}");
            }
        }
    }
}

/// SSM/SSM-VR split over threads equals the one-slice step (f32 rounding), for uneven splits
/// and several probes; buffers reused across steps of different sizes leave no trace (a
/// trainer that ran a bigger batch first gives the same bits as a fresh one).
#[test]
fn fast_ssm_slices_match_single_thread_and_reuse_buffers() {
    let dev = Device::Cpu;
    let dim = 3;
    for (ci, &(vr, cond, k)) in [(false, true, 2usize), (true, false, 1), (false, false, 3)].iter().enumerate() {
        let arch = Arch { dim, hidden: 48, depth: 2, activation: Activation::Silu, conditional: cond, scale_by_sigma: cond };
        let vm = VarMap::new();
        let mut rng = Rng::new(300 + ci as u64);
        let model = MlpScore::new(arch, &vm, &mut rng, &dev).unwrap();
        let batch = |n: usize, rng: &mut Rng| {
            let x: Vec<f32> = (0..n * dim).map(|_| 2.0 * rng.normal() as f32).collect();
            let v: Vec<f32> = (0..k * n * dim).map(|_| rng.rademacher() as f32).collect();
            let sig: Vec<f32> = (0..n).map(|i| 0.2 + 0.1 * (i % 7) as f32).collect();
            (x, v, sig)
        };
        let (x, v, sig) = batch(777, &mut rng);
        let s = if cond { Some(&sig[..]) } else { None };
        let mut one = FastSsm::with_slices(&model, vr, 1e-3, 1).unwrap();
        let l1 = one.loss_and_grad(&x, &v, s);
        for threads in [2, 3] {
            let mut many = FastSsm::with_slices(&model, vr, 1e-3, threads).unwrap();
            let lt = many.loss_and_grad(&x, &v, s);
            assert_same(
                &format!("case {ci}, {threads} threads"),
                l1,
                lt,
                1e-5,
                3,
                |l| (one.grads(l).0.to_vec(), one.grads(l).1.to_vec()),
                |l| (many.grads(l).0.to_vec(), many.grads(l).1.to_vec()),
            );
        }
        // Reuse: after the 777-point step, a 300-point step equals a fresh trainer's, bit for bit.
        let (x2, v2, sig2) = batch(300, &mut rng);
        let s2 = if cond { Some(&sig2[..]) } else { None };
        let mut fresh = FastSsm::with_slices(&model, vr, 1e-3, 2).unwrap();
        let mut used = FastSsm::with_slices(&model, vr, 1e-3, 2).unwrap();
        used.loss_and_grad(&x, &v, s);
        let (lf, lu) = (fresh.loss_and_grad(&x2, &v2, s2), used.loss_and_grad(&x2, &v2, s2));
        assert_eq!(lf.to_bits(), lu.to_bits(), "case {ci}: reused buffers changed the loss");
        assert_eq!(fresh.grads(0).0, used.grads(0).0, "case {ci}: reused buffers changed the gradients");
        assert_eq!(fresh.grads(2).1, used.grads(2).1, "case {ci}: reused buffers changed the gradients");
    }
}

/// Splitting the batch over threads changes only the order of the gradient sums: loss and
/// gradients equal the single-slice step to f32 rounding, for even and uneven splits and for
/// a partial last batch, and the same thread count gives the same bits twice.
#[test]
fn fast_dsm_slices_match_single_thread() {
    let dev = Device::Cpu;
    let dim = 2;
    let arch = Arch { dim, hidden: 64, depth: 2, activation: Activation::Silu, conditional: true, scale_by_sigma: true };
    let vm = VarMap::new();
    let mut rng = Rng::new(7);
    let model = MlpScore::new(arch, &vm, &mut rng, &dev).unwrap();
    let batch = 1000;
    for (threads, n) in [(2, 1000), (3, 1000), (4, 1000), (2, 777)] {
        let xt: Vec<f32> = (0..n * dim).map(|_| 3.0 * rng.normal() as f32).collect();
        let eps: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
        let sig: Vec<f32> = (0..n).map(|i| 0.1 + 0.05 * (i % 11) as f32).collect();
        let mut one = FastDsm::with_slices(&model, batch, 1e-3, 1).unwrap();
        let mut many = FastDsm::with_slices(&model, batch, 1e-3, threads).unwrap();
        let (l1, lt) = (one.loss_and_grad(&xt, &eps, &sig), many.loss_and_grad(&xt, &eps, &sig));
        assert!((l1 - lt).abs() < 1e-6 * l1.abs(), "threads {threads}, n {n}: loss {l1} vs {lt}");
        for l in 0..3 {
            let ((w1, b1), (wt, bt)) = (one.grads(l), many.grads(l));
            for (a, b) in [(w1, wt), (b1, bt)] {
                let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() < 1e-5 * scale, "threads {threads}, n {n}, layer {l}: {x} vs {y}");
                }
            }
        }
        let again = FastDsm::with_slices(&model, batch, 1e-3, threads).unwrap().loss_and_grad(&xt, &eps, &sig);
        assert_eq!(again.to_bits(), lt.to_bits(), "threads {threads}: not deterministic");
        let mut again = FastDsm::with_slices(&model, batch, 1e-3, threads).unwrap();
        again.loss_and_grad(&xt, &eps, &sig);
        assert_eq!(again.grads(0).0, many.grads(0).0, "threads {threads}: gradients not deterministic");
    }
}

/// The hand-derived exact-ISM step (closed-form trace, depth 2) against candle's autograd of
/// the same loss: ‖S‖² + 2 tr J with the trace from `score_and_trace_closed` (itself pinned to
/// the D-tangent trace), σ²-weighted with a ladder. Same loss, same gradients, for every
/// activation, with and without σ conditioning and scaling; other depths are declined.
#[test]
fn fast_ism_matches_candle_autograd() {
    let cases = [
        (Activation::Silu, true, true, 3),
        (Activation::Silu, false, false, 2),
        (Activation::Softplus, true, false, 5),
        (Activation::Tanh, false, false, 4),
        (Activation::Relu, true, true, 2),
    ];
    for (ci, &(act, cond, scale, dim)) in cases.iter().enumerate() {
        let dev = Device::Cpu;
        let arch = Arch { dim, hidden: 20, depth: 2, activation: act, conditional: cond, scale_by_sigma: scale };
        let vm = VarMap::new();
        let mut rng = Rng::new(700 + ci as u64);
        let model = MlpScore::new(arch, &vm, &mut rng, &dev).unwrap();
        let n = 50;
        let x: Vec<f32> = (0..n * dim).map(|_| 2.0 * rng.normal() as f32).collect();
        let sig: Vec<f32> = (0..n).map(|i| 0.3 + 0.15 * (i % 6) as f32).collect();
        let mut fast = FastIsm::new(&model, 1e-2).unwrap().expect("depth 2");
        let fast_loss = fast.loss_and_grad(&x, if cond { Some(&sig) } else { None });

        let xt = Tensor::from_slice(&x, (n, dim), &dev).unwrap();
        let st = Tensor::from_slice(&sig, (n, 1), &dev).unwrap();
        let (s, tr) = model.score_and_trace_closed(&xt, if cond { Some(&st) } else { None }).unwrap().unwrap();
        let terms = objectives::ism_terms(&s, &tr).unwrap();
        let loss = if cond { (terms * st.sqr().unwrap().squeeze(1).unwrap()).unwrap().mean_all().unwrap() } else { terms.mean_all().unwrap() };
        let l: f32 = loss.to_scalar().unwrap();
        assert!((fast_loss - l as f64).abs() < 1e-4 * (1.0 + l.abs() as f64), "case {ci}: loss {fast_loss} vs {l}");
        let grads = loss.backward().unwrap();
        assert_grads_match(ci, &model, &grads, |l| fast.grads(l));
    }
    for depth in [1, 3] {
        let arch = Arch { dim: 2, hidden: 8, depth, activation: Activation::Silu, conditional: false, scale_by_sigma: false };
        let model = MlpScore::new(arch, &VarMap::new(), &mut Rng::new(1), &Device::Cpu).unwrap();
        assert!(FastIsm::new(&model, 1e-3).unwrap().is_none(), "depth {depth} has no closed-form step");
    }
}

/// The hand-derived image-MLP step against candle's autograd of `images::objective::edm_losses`
/// (EDM's preconditioning and weighting; NCSN's S = F/σ and VP's ε-prediction with DSM's
/// weight 1/σ²): loss,
/// every gradient (the class embedding's rows included: labels with the null class, classes
/// that do not occur), one AdamW step and one EMA update. Tolerances as for DSM (f32 sums in
/// another order, the polynomial exp in SiLU): 1e-4 of each tensor's largest gradient.
#[test]
fn fast_image_mlp_matches_candle_autograd() {
    use engine::images::{self, Precond, objective::edm_losses};
    use engine::train::fast::image::{FastImageMlp, Rows};
    use schema::image::{ImageMlpSpec, ImageModel};
    let dev = Device::Cpu;
    let (h, w) = (4, 5);
    let dim = h * w;
    let cases = [
        (ImageMlpSpec { hidden: 32, depth: 2, emb: 8, class_cond: true }, Precond::Edm { sigma_data: 0.5 }, 3),
        (ImageMlpSpec { hidden: 24, depth: 1, emb: 12, class_cond: false }, Precond::Edm { sigma_data: 0.7 }, 1),
        (ImageMlpSpec { hidden: 16, depth: 3, emb: 8, class_cond: true }, Precond::Score { sigma_data: 0.5 }, 2),
        (ImageMlpSpec { hidden: 20, depth: 2, emb: 10, class_cond: true }, Precond::Eps, 1),
    ];
    for (ci, (spec, precond, slices)) in cases.into_iter().enumerate() {
        let vm = VarMap::new();
        let net = images::build(&ImageModel::Mlp(spec.clone()), precond, 1, h, w, &vm, &dev).unwrap();
        let mut rng = Rng::new(40 + ci as u64);
        images::init_weights(&vm, &mut rng).unwrap();
        let n = 37;
        let x0: Vec<f32> = (0..n * dim).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
        let eps = rng.normals_f32(n * dim);
        let labels: Vec<u32> = (0..n).map(|i| [0, 3, 3, 7, 10][i % 5]).collect();
        let sigma: Vec<f32> = (0..n).map(|_| (-1.2 + 1.2 * rng.normal()).exp() as f32).collect();
        let weight: Vec<f32> = sigma
            .iter()
            .map(|&s| match precond {
                Precond::Edm { sigma_data: sd } => images::objective::edm_weight(s as f64, sd) as f32,
                _ => 1.0 / (s * s),
            })
            .collect();
        let mut fast = FastImageMlp::with_slices(&spec, dim, &vm, n, 1e-2, 0.9, slices).unwrap();
        let fast_loss = fast.loss_and_grad(&x0, &eps, &labels, &Rows::new(&precond, sigma.clone(), weight.clone()));

        let t = |v: &[f32]| Tensor::from_slice(v, (n, 1, h, w), &dev).unwrap();
        let lab = if spec.class_cond { Some(Tensor::from_slice(&labels, n, &dev).unwrap()) } else { None };
        let loss = edm_losses(net.as_ref(), &t(&x0), &t(&eps), &Tensor::from_slice(&sigma, n, &dev).unwrap(), &Tensor::from_slice(&weight, n, &dev).unwrap(), lab.as_ref())
            .unwrap()
            .mean_all()
            .unwrap();
        let l: f32 = loss.to_scalar().unwrap();
        assert!((fast_loss - l as f64).abs() < 1e-5 * (1.0 + l.abs() as f64), "case {ci}: loss {fast_loss} vs {l}");
        let grads = loss.backward().unwrap();
        let vars: Vec<(String, candle_core::Var)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(vars.len(), 2 * (spec.depth + 1) + spec.class_cond as usize, "case {ci}: every variable is trained");
        for (name, var) in &vars {
            let reference: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got = fast.grad(name).unwrap_or_else(|| panic!("case {ci}: no gradient for {name}"));
            let scale = reference.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
            for (a, b) in got.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-4 * scale, "case {ci} {name}: {a} vs {b} (max {scale})");
            }
            if name == "class_emb.weight" {
                // Rows of classes absent from the batch get no gradient on either side.
                assert!(got[e_row(1, spec.emb)].iter().all(|&g| g == 0.0) && got[e_row(3, spec.emb)].iter().any(|&g| g != 0.0));
            }
        }
        // One AdamW step and one EMA update on both sides: the same weights afterwards.
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
            for (a, b) in got.iter().zip(&after[i]) {
                // Adam moves each weight by ≤ lr = 1e-2; 1e-3 catches any real mismatch.
                assert!((a - b).abs() < 1e-3, "case {ci} {name}: {a} vs {b} after one step");
            }
        }
        fast.store_ema(&vm).unwrap();
        for (i, (name, var)) in vars.iter().enumerate() {
            let got: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for ((a, w0), w1) in got.iter().zip(&before[i]).zip(&after[i]) {
                let want = d_ema * w0 + (1.0 - d_ema) * w1;
                assert!((a - want).abs() < 1e-3, "case {ci} {name}: EMA {a} vs {want}");
            }
        }
    }
}

fn e_row(c: usize, e: usize) -> std::ops::Range<usize> {
    c * e..(c + 1) * e
}

/// The image step split into slices equals the one-slice step to f32 rounding (uneven splits
/// included), and the same split gives the same bits twice.
#[test]
fn fast_image_mlp_slices_match_one_slice() {
    use engine::images::{self, Precond};
    use engine::train::fast::image::{FastImageMlp, Rows};
    use schema::image::{ImageMlpSpec, ImageModel};
    let dev = Device::Cpu;
    let spec = ImageMlpSpec { hidden: 48, depth: 2, emb: 8, class_cond: true };
    let vm = VarMap::new();
    images::build(&ImageModel::Mlp(spec.clone()), Precond::Edm { sigma_data: 0.5 }, 1, 6, 6, &vm, &dev).unwrap();
    let mut rng = Rng::new(9);
    images::init_weights(&vm, &mut rng).unwrap();
    let n = 131;
    let x0: Vec<f32> = (0..n * 36).map(|_| rng.uniform() as f32).collect();
    let eps = rng.normals_f32(n * 36);
    let labels: Vec<u32> = (0..n).map(|i| (i % 11) as u32).collect();
    let sigma: Vec<f32> = (0..n).map(|i| 0.05 * (1 + i % 40) as f32).collect();
    let rows = || Rows::new(&Precond::Edm { sigma_data: 0.5 }, sigma.clone(), vec![1.0; n]);
    let mut one = FastImageMlp::with_slices(&spec, 36, &vm, n, 1e-3, 0.0, 1).unwrap();
    let l1 = one.loss_and_grad(&x0, &eps, &labels, &rows());
    for slices in [2, 3] {
        let mut many = FastImageMlp::with_slices(&spec, 36, &vm, n, 1e-3, 0.0, slices).unwrap();
        let lt = many.loss_and_grad(&x0, &eps, &labels, &rows());
        assert!((l1 - lt).abs() < 1e-5 * l1, "{slices} slices: loss {l1} vs {lt}");
        for name in ["layer0.weight", "layer1.bias", "out.weight", "class_emb.weight"] {
            let (a, b) = (one.grad(name).unwrap(), many.grad(name).unwrap());
            let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale), "{slices} slices: {name}");
        }
        let again = many.loss_and_grad(&x0, &eps, &labels, &rows());
        assert_eq!(lt.to_bits(), again.to_bits());
    }
}

/// A one-slice batch threads its products (gemm splits output tiles; each entry's sum keeps its
/// order) and its Adam update: the bits equal the one-thread step's, at the shape
/// (784 + 64 + 64 → 1024 → 1024 → 784, batch 128), gradients and updated weights alike.
#[test]
fn fast_image_mlp_bits_do_not_depend_on_threads() {
    use engine::images::{self, Precond};
    use engine::train::fast::image::{FastImageMlp, Rows, image_slices_for};
    use schema::image::{ImageMlpSpec, ImageModel};
    let dev = Device::Cpu;
    let spec = ImageMlpSpec { hidden: 1024, depth: 2, emb: 64, class_cond: true };
    let vm = VarMap::new();
    images::build(&ImageModel::Mlp(spec.clone()), Precond::Edm { sigma_data: 0.5 }, 1, 28, 28, &vm, &dev).unwrap();
    let mut rng = Rng::new(11);
    images::init_weights(&vm, &mut rng).unwrap();
    let n = 128;
    assert_eq!(image_slices_for(n), 1);
    let x0: Vec<f32> = (0..n * 784).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let eps = rng.normals_f32(n * 784);
    let labels: Vec<u32> = (0..n).map(|i| (i % 11) as u32).collect();
    let sigma: Vec<f32> = (0..n).map(|_| (-1.2 + 1.2 * rng.normal()).exp() as f32).collect();
    let rows = || Rows::new(&Precond::Edm { sigma_data: 0.5 }, sigma.clone(), vec![1.0; n]);
    let run = |threads: usize| {
        let mut f = FastImageMlp::with_threads(&spec, 784, &vm, n, 1e-3, 0.99, 1, threads).unwrap();
        let l = f.loss_and_grad(&x0, &eps, &labels, &rows());
        let grads: Vec<Vec<f32>> = ["layer0.weight", "layer1.weight", "out.weight", "out.bias", "class_emb.weight"].iter().map(|k| f.grad(k).unwrap().to_vec()).collect();
        f.adam_step();
        let out = VarMap::new();
        images::build(&ImageModel::Mlp(spec.clone()), Precond::Edm { sigma_data: 0.5 }, 1, 28, 28, &out, &dev).unwrap();
        f.store(&out).unwrap();
        let w: Vec<f32> = out.data().lock().unwrap()["layer1.weight"].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        (l.to_bits(), grads, w)
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0, two.0, "loss bits");
    assert!(one.1 == two.1, "gradient bits differ between 1 and 2 threads");
    assert!(one.2 == two.2, "updated weights differ between 1 and 2 threads");
}

/// The image MLP's plain-buffer forward pass equals candle's D(x; σ, c) for every
/// parametrisation, one σ per row and labels with the null class (f32 sums in another order
/// and the polynomial exp in SiLU: 1e-5 of the largest output).
#[test]
fn image_forward_matches_candle_denoiser() {
    use engine::images::{self, Precond};
    use engine::train::fast::image::ImageForward;
    use schema::image::{ImageMlpSpec, ImageModel};
    let dev = Device::Cpu;
    for (ci, (spec, precond)) in [
        (ImageMlpSpec { hidden: 40, depth: 2, emb: 8, class_cond: true }, Precond::Edm { sigma_data: 0.5 }),
        (ImageMlpSpec { hidden: 24, depth: 1, emb: 6, class_cond: false }, Precond::Score { sigma_data: 0.5 }),
        (ImageMlpSpec { hidden: 32, depth: 3, emb: 8, class_cond: true }, Precond::Eps),
    ]
    .into_iter()
    .enumerate()
    {
        let vm = VarMap::new();
        let net = images::build(&ImageModel::Mlp(spec.clone()), precond, 1, 3, 5, &vm, &dev).unwrap();
        let mut rng = Rng::new(60 + ci as u64);
        images::init_weights(&vm, &mut rng).unwrap();
        let n = 23;
        let x: Vec<f32> = rng.normals_f32(n * 15).into_iter().map(|v| 3.0 * v).collect();
        let sigma: Vec<f32> = (0..n).map(|i| 0.01 * 2f32.powi(i as i32 % 13)).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % 11) as u32).collect();
        let mut out = vec![0.0f32; x.len()];
        ImageForward::new(&spec, 15, precond, &vm).unwrap().denoise(&x, &sigma, &labels, &mut out);
        let lab = Tensor::from_slice(&labels, n, &dev).unwrap();
        let reference: Vec<f32> = net
            .denoise(&Tensor::from_slice(&x, (n, 1, 3, 5), &dev).unwrap(), &Tensor::from_slice(&sigma, n, &dev).unwrap(), spec.class_cond.then_some(&lab))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = reference.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
        for (a, b) in out.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-5 * scale, "case {ci}: {a} vs {b}");
        }
    }
}

/// `step`'s fused AdamW + EMA pass gives the bits of `loss_and_grad`, `adam_step` and
/// `ema_update` run one after the other, weights and EMA alike, on one and two threads.
#[test]
fn fast_image_mlp_fused_update_matches_separate_passes() {
    use engine::images::{self, Precond};
    use engine::train::fast::image::{FastImageMlp, Rows};
    use schema::image::{ImageMlpSpec, ImageModel};
    let dev = Device::Cpu;
    let spec = ImageMlpSpec { hidden: 300, depth: 2, emb: 16, class_cond: true };
    let vm = VarMap::new();
    images::build(&ImageModel::Mlp(spec.clone()), Precond::Edm { sigma_data: 0.5 }, 1, 12, 12, &vm, &dev).unwrap();
    let mut rng = Rng::new(21);
    images::init_weights(&vm, &mut rng).unwrap();
    let (n, d) = (40, 144);
    let x0: Vec<f32> = (0..n * d).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let eps = rng.normals_f32(n * d);
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let sigma: Vec<f32> = (0..n).map(|_| (-1.2 + 1.2 * rng.normal()).exp() as f32).collect();
    let rows = || Rows::new(&Precond::Edm { sigma_data: 0.5 }, sigma.clone(), vec![1.0; n]);
    let values = |f: &FastImageMlp, ema: bool| {
        let out = VarMap::new();
        images::build(&ImageModel::Mlp(spec.clone()), Precond::Edm { sigma_data: 0.5 }, 1, 12, 12, &out, &dev).unwrap();
        if ema {
            f.store_ema(&out).unwrap()
        } else {
            f.store(&out).unwrap()
        }
        let data = out.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        names.into_iter().flat_map(|k| data[k].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).map(f32::to_bits).collect::<Vec<u32>>()
    };
    for threads in [1, 2] {
        let mut fused = FastImageMlp::with_threads(&spec, d, &vm, n, 1e-3, 0.95, 1, threads).unwrap();
        let mut apart = FastImageMlp::with_threads(&spec, d, &vm, n, 1e-3, 0.95, 1, threads).unwrap();
        for step in 0..3 {
            let l1 = fused.step(&x0, &eps, &labels, &rows(), step);
            let l2 = apart.loss_and_grad(&x0, &eps, &labels, &rows());
            apart.adam_step();
            apart.ema_update(step);
            assert_eq!(l1.to_bits(), l2.to_bits(), "{threads} threads, step {step}: loss");
        }
        assert!(values(&fused, false) == values(&apart, false), "{threads} threads: weights");
        assert!(values(&fused, true) == values(&apart, true), "{threads} threads: EMA");
    }
}
