//! Numerical checks of the engine against independent computations: finite differences of the
//! models, the Hyvärinen identity L_ESM − L_ISM = C and the DSM identity at many θ, unbiased
//! SSM traces, and mode weights recovered by annealed versus plain Langevin dynamics.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use engine::models::layers::Dense;
use engine::models::{self, Activation, Arch, EnergyNet, MlpScore, Probes, ScoreModel};
use engine::objectives::{self, ProbeDist};
use engine::outcome::{TrialOutcome, TrialStatus};
use engine::rng::Rng;
use engine::trial;
use schema::TrialConfig;

type Model = Box<dyn ScoreModel>;

fn f64_dense(d: &Dense) -> Dense {
    Dense { w: d.w.to_dtype(DType::F64).unwrap(), b: d.b.to_dtype(DType::F64).unwrap() }
}

/// A model with random weights, cast to f64 so finite differences are accurate.
fn model_f64(energy: bool, act: Activation, dim: usize, conditional: bool, scale: bool, seed: u64) -> Model {
    model_f64_depth(energy, act, dim, 2, conditional, scale, seed)
}

fn model_f64_depth(energy: bool, act: Activation, dim: usize, depth: usize, conditional: bool, scale: bool, seed: u64) -> Model {
    let arch = Arch { dim, hidden: 16, depth, activation: act, conditional, scale_by_sigma: scale };
    let vm = VarMap::new();
    let mut rng = Rng::new(seed);
    let dev = Device::Cpu;
    if energy {
        let m = EnergyNet::new(arch, &vm, &mut rng, &dev).unwrap();
        Box::new(EnergyNet { arch: m.arch, layers: m.layers.iter().map(f64_dense).collect(), out: f64_dense(&m.out) })
    } else {
        Box::new(mlp_f64(arch, seed))
    }
}

fn mlp_f64(arch: Arch, seed: u64) -> MlpScore {
    let m = MlpScore::new(arch, &VarMap::new(), &mut Rng::new(seed), &Device::Cpu).unwrap();
    MlpScore { arch: m.arch, layers: m.layers.iter().map(f64_dense).collect(), out: f64_dense(&m.out) }
}

fn mlp_f64_depth(act: Activation, dim: usize, depth: usize, conditional: bool, scale: bool, seed: u64) -> MlpScore {
    mlp_f64(Arch { dim, hidden: 16, depth, activation: act, conditional, scale_by_sigma: scale }, seed)
}

fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f64>>(), shape, &Device::Cpu).unwrap()
}

/// J·v from forward tangents against central differences (S(x+hv) − S(x−hv))/2h in f64, and
/// the exact trace against the sum of finite-difference diagonal entries. With h = 1e-5 the
/// truncation error is ~h²·|S'''| ≈ 1e-10 and rounding ~1e-16/h ≈ 1e-11, so 1e-7 (relative to
/// 1 + |Jv|) can only fail on a wrong derivative. Energy nets also check S = ∇ₓq itself.
#[test]
fn tangents_match_finite_differences() {
    let cases = [
        (false, Activation::Silu, 2, false, false),
        (false, Activation::Softplus, 3, true, true),
        (false, Activation::Tanh, 1, true, false),
        (true, Activation::Silu, 2, true, false),
        (true, Activation::Softplus, 3, false, false),
        (true, Activation::Tanh, 2, true, true),
    ];
    let h = 1e-5;
    for (i, &(energy, act, dim, cond, scale)) in cases.iter().enumerate() {
        let model = model_f64(energy, act, dim, cond, scale, 100 + i as u64);
        let mut rng = Rng::new(i as u64);
        let n = 7;
        let x = randn(&[n, dim], &mut rng);
        let sig = if cond { Some(Tensor::from_vec((0..n).map(|k| 0.3 + 0.2 * k as f64).collect::<Vec<_>>(), (n, 1), &Device::Cpu).unwrap()) } else { None };
        let v = randn(&[3, n, dim], &mut rng);
        let tg = model.tangents().unwrap().tangents(&x, sig.as_ref(), &Probes::Vectors(&v)).unwrap();
        let jv: Vec<Vec<Vec<f64>>> = tg.jv().unwrap().to_vec3().unwrap();
        for k in 0..3 {
            let vk = v.get(k).unwrap();
            let sp = model.score(&(&x + vk.affine(h, 0.0).unwrap()).unwrap(), sig.as_ref(), None).unwrap();
            let sm = model.score(&(&x - vk.affine(h, 0.0).unwrap()).unwrap(), sig.as_ref(), None).unwrap();
            let fd: Vec<Vec<f64>> = ((sp - sm).unwrap() / (2.0 * h)).unwrap().to_vec2().unwrap();
            for p in 0..n {
                for j in 0..dim {
                    let (a, b) = (jv[k][p][j], fd[p][j]);
                    assert!((a - b).abs() < 1e-7 * (1.0 + b.abs()), "case {i} probe {k} point {p} dim {j}: tangent {a} vs fd {b}");
                }
            }
        }
        // Exact trace (chunk 1, so chunking is exercised) against finite-difference diagonals.
        let (_, tr) = models::score_and_trace(model.as_ref(), &x, sig.as_ref(), 1).unwrap();
        let tr: Vec<f64> = tr.to_vec1().unwrap();
        let mut fd_tr = vec![0.0; n];
        for j in 0..dim {
            let mut e = vec![0.0; n * dim];
            for p in 0..n {
                e[p * dim + j] = h;
            }
            let e = Tensor::from_vec(e, (n, dim), &Device::Cpu).unwrap();
            let sp: Vec<Vec<f64>> = model.score(&(&x + &e).unwrap(), sig.as_ref(), None).unwrap().to_vec2().unwrap();
            let sm: Vec<Vec<f64>> = model.score(&(&x - &e).unwrap(), sig.as_ref(), None).unwrap().to_vec2().unwrap();
            for p in 0..n {
                fd_tr[p] += (sp[p][j] - sm[p][j]) / (2.0 * h);
            }
        }
        for p in 0..n {
            assert!((tr[p] - fd_tr[p]).abs() < 1e-7 * (1.0 + fd_tr[p].abs()), "case {i} trace {} vs {}", tr[p], fd_tr[p]);
        }
        if let Some(net) = model.as_any().downcast_ref::<EnergyNet>() {
            let s: Vec<Vec<f64>> = net.score(&x, sig.as_ref()).unwrap().to_vec2().unwrap();
            for j in 0..dim {
                let mut e = vec![0.0; n * dim];
                for p in 0..n {
                    e[p * dim + j] = h;
                }
                let e = Tensor::from_vec(e, (n, dim), &Device::Cpu).unwrap();
                let qp: Vec<Vec<f64>> = net.energy(&(&x + &e).unwrap(), sig.as_ref()).unwrap().to_vec2().unwrap();
                let qm: Vec<Vec<f64>> = net.energy(&(&x - &e).unwrap(), sig.as_ref()).unwrap().to_vec2().unwrap();
                for p in 0..n {
                    let fd = (qp[p][0] - qm[p][0]) / (2.0 * h);
                    assert!((s[p][j] - fd).abs() < 1e-7 * (1.0 + fd.abs()), "case {i}: ∇q {} vs fd {fd}", s[p][j]);
                }
            }
        }
    }
}

/// The closed-form MLP trace (cyclic trace on the hidden width) equals the plain D-tangent
/// trace to f64 rounding (1e-10 relative), for depth 1 and 2, conditional or not; deeper nets
/// have no closed form and fall back to tangents.
#[test]
fn closed_form_trace_matches_tangent_trace() {
    for (i, &(depth, dim, cond, scale, act)) in
        [(1, 3, false, false, Activation::Silu), (2, 5, true, true, Activation::Softplus), (2, 1, true, false, Activation::Tanh), (2, 7, false, false, Activation::Silu)]
            .iter()
            .enumerate()
    {
        let m = mlp_f64_depth(act, dim, depth, cond, scale, 40 + i as u64);
        let mut rng = Rng::new(i as u64);
        let x = randn(&[9, dim], &mut rng);
        let sig = if cond { Some(Tensor::from_vec((0..9).map(|k| 0.1 + 0.3 * k as f64).collect::<Vec<_>>(), (9, 1), &Device::Cpu).unwrap()) } else { None };
        let (s1, t1) = m.score_and_trace_closed(&x, sig.as_ref()).unwrap().expect("depth ≤ 2 has a closed form");
        let (s2, t2) = models::score_and_trace_tangents(&m, &x, sig.as_ref(), 2).unwrap();
        let (t1, t2): (Vec<f64>, Vec<f64>) = (t1.to_vec1().unwrap(), t2.to_vec1().unwrap());
        for (a, b) in t1.iter().zip(&t2) {
            assert!((a - b).abs() < 1e-10 * (1.0 + b.abs()), "case {i}: closed {a} vs tangents {b}");
        }
        let ds = (s1 - s2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(ds < 1e-12);
    }
    let deep = mlp_f64_depth(Activation::Silu, 2, 3, false, false, 1);
    assert!(deep.score_and_trace_closed(&randn(&[2, 2], &mut Rng::new(0)), None).unwrap().is_none());
}

/// vᵀJv averaged over many probes estimates tr J without bias, for Rademacher and Gaussian
/// probes and for SSM's (vᵀS)² estimating ‖S‖². 4000 probes per point; the bound is 4 standard
/// errors of the probe mean, computed from the probes themselves.
#[test]
fn ssm_trace_estimate_is_unbiased() {
    for (energy, dist) in [(false, ProbeDist::Rademacher), (true, ProbeDist::Gaussian), (false, ProbeDist::Gaussian)] {
        let model = model_f64(energy, Activation::Silu, 4, false, false, 9);
        let mut rng = Rng::new(3);
        let (n, k) = (5, 4000);
        let x = randn(&[n, 4], &mut rng);
        let v = objectives::probes(k, n, 4, dist, &mut rng, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let tg = model.tangents().unwrap().tangents(&x, None, &Probes::Vectors(&v)).unwrap();
        let vjv: Vec<Vec<f64>> = (&v * tg.jv().unwrap()).unwrap().sum(2).unwrap().to_vec2().unwrap(); // (K, N)
        let vs: Vec<Vec<f64>> = v.broadcast_mul(&tg.score.unsqueeze(0).unwrap()).unwrap().sum(2).unwrap().sqr().unwrap().to_vec2().unwrap();
        let (_, tr) = models::score_and_trace(model.as_ref(), &x, None, 4).unwrap();
        let tr: Vec<f64> = tr.to_vec1().unwrap();
        let s2: Vec<f64> = tg.score.sqr().unwrap().sum(1).unwrap().to_vec1().unwrap();
        for p in 0..n {
            for (est, exact) in [((0..k).map(|i| vjv[i][p]).collect::<Vec<_>>(), tr[p]), ((0..k).map(|i| vs[i][p]).collect(), s2[p])] {
                let (m, se) = engine::data::mixture::mean_se(&est);
                assert!((m - exact).abs() < 4.0 * se + 1e-9, "{dist:?}: probe mean {m} ± {se} vs exact {exact}");
            }
        }
    }
}

fn run(src: &str) -> TrialOutcome {
    run_on(src, &Device::Cpu)
}

fn run_on(src: &str, device: &Device) -> TrialOutcome {
    let cfg = TrialConfig::from_str_at(src, std::path::Path::new("test.toml")).unwrap();
    trial::run_trial(&cfg, device, &mut |_| {}, &AtomicBool::new(false)).unwrap()
}

fn col(o: &TrialOutcome, name: &str) -> Vec<f64> {
    let j = o.curve_columns.iter().position(|c| c == name).unwrap_or_else(|| panic!("no column {name}"));
    o.curve_rows.iter().map(|r| r[j]).collect()
}

/// Asserts every checkpoint's gap equals the constant within 4 combined standard errors.
fn assert_offset(o: &TrialOutcome, gap: &str, se: &str, c: &str, c_se: &str) -> usize {
    let (g, s, c, cs) = (col(o, gap), col(o, se), col(o, c), col(o, c_se));
    for i in 0..g.len() {
        let tol = 4.0 * (s[i] * s[i] + cs[i] * cs[i]).sqrt();
        assert!((g[i] - c[i]).abs() < tol, "{gap} at row {i}: {} vs {} (4 SE = {tol})", g[i], c[i]);
        assert!(s[i] < 0.02 * c[i].abs().max(0.05), "{gap} standard error {} too large to test anything", s[i]);
    }
    g.len()
}

fn trial_src(preset: &str, model: &str, objective: &str, steps: u64, every: u64, extra: &str) -> String {
    format!(
        "seed = 1\n[data]\npreset = \"{preset}\"\n[model]\nkind = \"{model}\"\nhidden = 64\n[objective]\nkind = \"{objective}\"\n{extra}\n[train]\nsteps = {steps}\nbatch = 256\nlr = 3e-3\neval_every = {every}\n[eval]\nn = 100000\n[sampler]\nkind = \"none\"\n"
    )
}

/// Hyvärinen: L_ESM − L_ISM = C = E‖∇log p‖² for every θ. Each checkpoint of each trial is one θ
/// (untrained, partly and fully trained), two architectures, 1D and 2D: 16 θ in all. C comes
/// from quadrature of the exact mixture score, independent of the model. Trained to the ISM
/// optimum, L_ISM(θ*) ≈ −C < 0 (L_ESM small against C).
#[test]
fn esm_minus_ism_is_the_constant_at_every_theta() {
    let mut thetas = 0;
    for (preset, model, objective) in [("seed1d", "mlp", "ism"), ("seed1d", "energy_mlp", "ism"), ("ncsn2d", "mlp", "ssm_vr"), ("ring8", "energy_mlp", "esm")] {
        let o = run(&trial_src(preset, model, objective, 600, 200, ""));
        assert_eq!(o.status, TrialStatus::Ok);
        thetas += assert_offset(&o, "gap", "gap_se", "c_true", "c_se");
        let (l_ism, c, l_esm) = (o.metric("l_ism").unwrap(), o.metric("c_true").unwrap(), o.metric("l_esm").unwrap());
        assert!(l_ism < 0.0, "{preset}/{model}: trained L_ISM {l_ism} should be negative");
        assert!(l_esm < 0.25 * c, "{preset}/{model}: trained L_ESM {l_esm} vs C {c}");
        let l_esm0 = col(&o, "l_esm")[0];
        assert!(l_esm < 0.5 * l_esm0, "{preset}/{model}: training did not reduce ESM ({l_esm0} → {l_esm})");
    }
    assert!(thetas >= 5);
}

/// Vincent: L_DSM(σ) − L_ESM_σ = C_DSM(σ) = D/σ² − E_{p_σ}‖∇log p_σ‖² for every θ, on both
/// model kinds, at the middle level of a ladder and at an explicit σ.
#[test]
fn dsm_minus_esm_sigma_is_the_constant_at_every_theta() {
    let ladder = "noise = { ladder = \"geometric\", sigma_max = 5.0, sigma_min = 0.2, levels = 5 }";
    for (preset, model, extra) in
        [("seed1d", "mlp", ladder.to_string()), ("ncsn2d", "energy_mlp", ladder.to_string()), ("ring8", "mlp", format!("{ladder}\n[eval]\ndsm_sigma = 0.3"))]
    {
        let src = trial_src(preset, model, "dsm", 400, 200, "").replace("kind = \"dsm\"\n", &format!("kind = \"dsm\"\n{}\n", ladder));
        let src = if extra.contains("dsm_sigma") { src.replace("[eval]\n", "[eval]\ndsm_sigma = 0.3\n") } else { src };
        let o = run(&src);
        assert_eq!(o.status, TrialStatus::Ok);
        assert_offset(&o, "dsm_gap", "dsm_gap_se", "c_dsm", "c_dsm_se");
        // The variate's coefficient is fitted, so it never costs precision (here σ ≥ 0.3).
        for (se, raw) in col(&o, "dsm_gap_se").into_iter().zip(col(&o, "dsm_gap_se_raw")) {
            assert!(se <= raw * 1.0001, "{preset}: control variate SE {se} above raw {raw}");
        }
    }
}

/// At small σ the DSM − ESM_σ per-point difference is dominated by ‖ε‖²/σ² (SD √(2D)/σ²);
/// subtracting the control variate (‖ε‖² − D)/σ² keeps the mean (the offset still holds) and
/// leaves an SE of order 2√E‖S‖²/(σ√n): in 1D at σ = 0.1 it must shrink several-fold.
#[test]
fn dsm_control_variate_shrinks_the_standard_error_at_small_sigma() {
    let ladder = "noise = { ladder = \"geometric\", sigma_max = 2.0, sigma_min = 0.1, levels = 4 }";
    let src = trial_src("seed1d", "mlp", "dsm", 300, 300, "").replace("kind = \"dsm\"\n", &format!("kind = \"dsm\"\n{ladder}\n")).replace("[eval]\n", "[eval]\ndsm_sigma = 0.1\n");
    let o = run(&src);
    assert_eq!(o.status, TrialStatus::Ok);
    assert_offset(&o, "dsm_gap", "dsm_gap_se", "c_dsm", "c_dsm_se");
    let (se, raw) = (o.metric("dsm_gap_se").unwrap(), o.metric("dsm_gap_se_raw").unwrap());
    // √2/σ²/√n with n = 1e5: the raw SE is about 0.45 whatever the model.
    assert!((raw - 2f64.sqrt() / 0.01 / 1e5f64.sqrt()).abs() < 0.1, "raw SE {raw}");
    assert!(se * 4.0 < raw, "control variate SE {se} vs raw {raw}");
}

fn ncsn_src(sampler: &str) -> String {
    format!(
        "seed = 0\n[data]\npreset = \"ncsn2d\"\n[model]\nkind = \"mlp\"\nscale_by_sigma = true\n[objective]\nkind = \"dsm\"\nnoise = {{ ladder = \"geometric\", sigma_max = 20.0, sigma_min = 1.0, levels = 10 }}\n[train]\nsteps = 5000\nbatch = 256\nlr = 1e-3\n[eval]\nn = 2000\n[sampler]\nkind = \"{sampler}\"\nsteps_per_level = 100\neps = 0.05\nn = 4000\n"
    )
}

/// NCSN's toy: with a DSM-learned score, annealed Langevin recovers the 0.8 weight of the (5,5)
/// mode (±0.03: 4000 samples have a binomial standard error of 0.006, the rest is the learned
/// score's error), while plain Langevin from uniform points stays at the initial ~50/50 split.
/// The same seed gives the same trained model for both runs (determinism on CPU).
#[test]
fn annealed_langevin_recovers_mode_weights_plain_does_not() {
    let annealed = run(&ncsn_src("annealed_langevin"));
    let plain = run(&ncsn_src("langevin"));
    let (wa, wp) = (annealed.metric("mode_w_0").unwrap(), plain.metric("mode_w_0").unwrap());
    assert!((wa - 0.8).abs() <= 0.03, "annealed mode weight {wa}");
    assert!((wp - 0.5).abs() < 0.1 && (wp - 0.8).abs() > 0.2, "plain Langevin mode weight {wp}");
    let bits = |o: &TrialOutcome| o.curve_rows.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&annealed), bits(&plain), "same seed, same training");
}

/// A sampler that produces a non-finite value ends the trial `diverged`, saying where, with
/// no sample metrics: plain Langevin with α = 10⁴ on a clean-score model (no ladder, so no
/// stability bound at validation) multiplies a chain's distance to the modes by about α per
/// step, past f32's range within a few steps.
#[test]
fn a_sampler_that_diverges_ends_the_trial_diverged_saying_where() {
    let src = trial_src("ncsn2d", "mlp", "esm", 20, 20, "").replace("kind = \"none\"", "kind = \"langevin\"\nsteps = 50\neps = 1e4\nn = 100").replace("n = 100000", "n = 2000");
    let o = run(&src);
    assert_eq!(o.status, TrialStatus::Diverged { step: 20 }, "the step is training's last");
    let at = o.metric("sampler_diverged_step").unwrap();
    assert!((1.0..=50.0).contains(&at), "diverged at sampler step {at}");
    assert!(o.metric("sampler_diverged_sigma").unwrap().is_nan(), "a clean-score model has no σ");
    assert!(o.metric("fd").is_none() && o.samples.is_empty(), "no sample metrics from non-finite samples");
}

/// A toy trial sampled by the probability-flow ODE (Heun) over its ladder's ends, with the DSM
/// model of `annealed_langevin_recovers_mode_weights_plain_does_not` (same seed and training).
/// The ODE transports its start σ_max z = N(0, 400 I), not p_σmax, whose mean is (3, 3): along
/// u = (1, 1)/√2 the flow keeps the order of the chains, so the (5, 5) mode gets
/// P(20 z_u > q) = 0.746 where q = −13.24 is the 0.2 quantile of p_σmax along u (0.8 N(7.07,
/// 401) + 0.2 N(−7.07, 401)). Within 0.03: 4000 samples have a binomial SE of 0.007, the rest
/// is the learned score's error; plain Langevin would give about 0.5, the data 0.8.
#[test]
fn a_toy_trial_samples_with_the_probability_flow_ode() {
    let src = ncsn_src("heun").replace("steps_per_level = 100\neps = 0.05\n", "steps = 40\n");
    let o = run(&src);
    assert_eq!(o.status, TrialStatus::Ok);
    assert_eq!(o.metric("nfe"), Some(79.0));
    let w = o.metric("mode_w_0").unwrap();
    assert!((w - 0.746).abs() < 0.03, "heun mode weight {w}");
}

/// Deterministic score ascent collapses samples onto the modes (mean distance to the nearest
/// mean ≪ 1 = the data's own spread scale), as the write-up describes.
#[test]
fn score_ascent_collapses_onto_modes() {
    let src =
        trial_src("ncsn2d", "mlp", "esm", 800, 800, "").replace("kind = \"none\"", "kind = \"score_ascent\"\nsteps = 300\neps = 0.1\nn = 500").replace("n = 100000", "n = 2000");
    let o = run(&src);
    let d = o.metric("dist_to_mode").unwrap();
    assert!(d < 0.3, "score ascent spread {d}");
}

/// The same trial twice gives identical metrics (timings aside).
#[test]
fn same_seed_same_metrics() {
    let src = trial_src("ring8", "mlp", "ssm", 50, 25, "probes = 2")
        .replace("n = 100000", "n = 3000")
        .replace("kind = \"none\"", "kind = \"annealed_langevin\"\nn = 200\nsteps_per_level = 5")
        .replace("probes = 2", "probes = 2\nnoise = { ladder = \"auto\", sigma_min = 0.05 }");
    let (a, b) = (run(&src), run(&src));
    let strip = |o: &TrialOutcome| o.metrics.iter().filter(|(k, _)| !k.ends_with("_seconds")).cloned().collect::<Vec<_>>();
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(a.samples, b.samples);
}

/// Energy nets in 1D: Z by quadrature gives a normalised p_θ, so the held-out NLL must equal the
/// entropy H(p) (quadrature of the exact mixture) plus KL(p‖p_θ) up to the Monte Carlo error of
/// the 100k held-out points (std of log p_θ ≈ 1.5 → SE ≈ 0.005; bound 0.03), and a trained
/// energy net is close to p (KL < 0.05 nats).
#[test]
fn energy_net_likelihood_is_normalised() {
    let o = run(&trial_src("seed1d", "energy_mlp", "ism", 1500, 1500, ""));
    let (nll, kl) = (o.metric("nll").unwrap(), o.metric("kl").unwrap());
    let mix = engine::data::mixture::Mixture::seed1d();
    let entropy = mix.quadrature(|m, x| -m.log_prob(x));
    assert!((-1e-6..0.05).contains(&kl), "KL {kl}");
    assert!((nll - (entropy + kl)).abs() < 0.03, "NLL {nll} vs H + KL = {}", entropy + kl);
}

/// `train_seconds` counts training only: with a few cheap steps between expensive checkpoints
/// (200k evaluation points, exact trace), training is a small part of the evaluation time.
/// (It once included the checkpoints, which made it about equal to `eval_seconds`.)
#[test]
fn train_seconds_exclude_evaluation() {
    let o = run(
        "seed = 1\n[data]\npreset = \"ncsn2d\"\n[model]\nkind = \"mlp\"\nhidden = 64\n[objective]\nkind = \"ism\"\n[train]\nsteps = 4\nbatch = 64\neval_every = 1\n[eval]\nn = 200000\nc_samples = 1000\n[sampler]\nkind = \"none\"\n",
    );
    let (train, eval) = (o.metric("train_seconds").unwrap(), o.metric("eval_seconds").unwrap());
    assert!(eval > 0.0 && train >= 0.0);
    assert!(train < 0.3 * eval, "train_seconds {train} vs eval_seconds {eval}");
}

/// A small DSM trial on an MLP score net with a sampler: the case the hand-derived CPU step and
/// forward pass cover.
fn dsm_mlp_src(steps: u64) -> String {
    format!(
        "seed = 3\n[data]\npreset = \"ring8\"\n[model]\nkind = \"mlp\"\nhidden = 32\n[objective]\nkind = \"dsm\"\nnoise = {{ ladder = \"geometric\", sigma_max = 4.0, sigma_min = 0.1, levels = 5 }}\n[train]\nsteps = {steps}\nbatch = 128\neval_every = {steps}\n[eval]\nn = 2000\nc_samples = 2000\n[sampler]\nkind = \"annealed_langevin\"\nsteps_per_level = 20\neps = 0.005\nn = 500\n"
    )
}

#[test]
fn the_cpu_records_its_device_and_takes_the_fast_paths() {
    let o = run(&dsm_mlp_src(20));
    assert_eq!(o.status, TrialStatus::Ok);
    assert_eq!((o.device.as_str(), o.trainer.as_str()), ("cpu", "fast_dsm"));
    // An objective without a hand-derived step goes through autograd, still on the CPU.
    let o = run(&trial_src("ring8", "mlp", "esm", 4, 4, ""));
    assert_eq!((o.device.as_str(), o.trainer.as_str()), ("cpu", "autograd"));
}

/// The same trial on the first GPU (a build with `--features cuda` on a machine with a driver):
/// candle's autograd instead of the hand-derived step, the same random draws (every one comes
/// from the host's `rng` streams), so the metrics agree up to f32 rounding, which the reduction
/// order on the GPU changes and 200 Adam steps amplify a little.
#[cfg(feature = "cuda")]
#[test]
fn a_gpu_trial_matches_the_cpu_one() {
    let Some(gpu) = engine::device::detect().gpus.first().cloned() else {
        eprintln!("no GPU: skipped");
        return;
    };
    let dev = Device::new_cuda(gpu.index as usize).unwrap();
    let src = dsm_mlp_src(200);
    let (cpu, cuda) = (run(&src), run_on(&src, &dev));
    assert_eq!((cuda.device.as_str(), cuda.trainer.as_str()), (format!("cuda:{}", gpu.index).as_str(), "autograd"));
    // Losses at the trained θ: 5 %. The sliced W1 of 500 Langevin samples: 30 % (the chains
    // themselves drift apart once their scores differ in the last bits).
    for (key, rel) in [("l_esm", 0.05), ("l_dsm", 0.05), ("swd", 0.3)] {
        let (a, b) = (cpu.metric(key).unwrap(), cuda.metric(key).unwrap());
        assert!((a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-3, "{key}: cpu {a} vs cuda {b}");
    }
}

/// `train.lr_schedule`: with a large rate, a constant schedule ends where the noise of the
/// steps leaves it; cosine decay lets the same trial (same draws) settle closer to the optimum
/// (lower L_ESM), through the hand-derived step and through autograd alike; warm-up alone
/// changes the run too.
#[test]
fn a_decaying_learning_rate_settles_where_a_constant_one_stays_noisy() {
    let l_esm = |objective: &str, schedule: &str| {
        let src = format!(
            "seed = 2\n[data]\npreset = \"ncsn2d\"\n[model]\nkind = \"mlp\"\nhidden = 64\nscale_by_sigma = true\n[objective]\nkind = \"{objective}\"\nnoise = {{ ladder = \"geometric\", sigma_max = 10.0, sigma_min = 0.5, levels = 8 }}\n[train]\nsteps = 1500\nbatch = 256\nlr = 6e-3\n{schedule}\n[eval]\nn = 20000\n[sampler]\nkind = \"none\"\n"
        );
        let o = run(&src);
        assert_eq!(o.status, TrialStatus::Ok, "{objective} {schedule}");
        (o.trainer.clone(), o.metric("l_esm").unwrap())
    };
    for objective in ["dsm", "ssm_vr"] {
        let (trainer, constant) = l_esm(objective, "");
        let (_, cosine) = l_esm(objective, "lr_schedule = \"cosine\"");
        let (_, warm) = l_esm(objective, "warmup = 100");
        assert!(trainer.starts_with("fast_"), "{trainer}");
        eprintln!("{objective}: L_ESM constant {constant}, cosine {cosine}, warm-up {warm}");
        assert!(cosine < 0.85 * constant, "{objective}: cosine L_ESM {cosine} vs constant {constant}");
        assert_ne!(warm, constant, "{objective}: the warm-up changed nothing");
    }
    // Autograd (ESM has no hand-derived step): the rate reaches candle's optimiser too.
    let (trainer, constant) = l_esm("esm", "");
    let (_, cosine) = l_esm("esm", "lr_schedule = \"linear\"");
    assert_eq!(trainer, "autograd");
    eprintln!("esm: L_ESM constant {constant}, linear {cosine}");
    assert!(cosine < constant, "esm: linear-decay L_ESM {cosine} vs constant {constant}");
}
