//! Samplers against exact scores: NCSNv2's automatic step size gives the annealed sampler an
//! end-of-level variance equal to the target's, and the samplers count their network
//! evaluations.

use engine::ladder;
use engine::rng::Rng;
use engine::samplers::{self, Field, Sampler};

/// The exact score of p_σ = N(0, σ²) (data at a single point, NCSNv2's analysis).
struct PointMass;

impl Field for PointMass {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> candle_core::Result<()> {
        let s2 = sigma.expect("conditional").powi(2) as f32;
        out.iter_mut().zip(x).for_each(|(o, v)| *o = -v / s2);
        Ok(())
    }
}

/// Chains that start a level with variance γ²σ² (the previous level's) end it with variance
/// σ² when ε follows the rule: the ratio at the last level is within 2% of 1 (the rule's own
/// optimum here is f = 1.0095; the Monte Carlo error of the variance over 100k chains is
/// 0.45%). Half that ε gives f = 1.039.
#[test]
fn auto_step_size_gives_unit_variance_ratio() {
    let (sigma_max, levels, steps) = (1.0, 10, 200);
    let sigmas = ladder::geometric(sigma_max, 0.05, levels);
    let gamma = sigmas[0] / sigmas[1];
    let eps = ladder::ncsnv2_step_size(*sigmas.last().unwrap(), gamma, steps);
    let ratio = |eps: f64| {
        let n = 100_000;
        let mut rng = Rng::new(7);
        let mut x: Vec<f32> = (0..n).map(|_| (gamma * sigma_max * rng.normal()) as f32).collect();
        let s = samplers::AnnealedLangevin { sigmas: sigmas.clone(), eps, steps_per_level: steps, denoise: false, start: samplers::Start::Noise };
        let nfe = samplers::sample(&s, &mut PointMass, &mut x, &mut rng, &mut || {}).unwrap().nfe;
        assert_eq!(nfe, (levels * steps) as u64, "one evaluation per step");
        let var = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        var / sigmas.last().unwrap().powi(2)
    };
    let r = ratio(eps);
    assert!((r - 1.0).abs() < 0.02, "variance ratio {r} with the rule's ε = {eps}");
    let r_half = ratio(eps / 2.0);
    assert!(r_half > 1.025, "half the step gives {r_half}: the test would not see the factor 2");
}

#[test]
fn samplers_report_their_evaluations() {
    let sigmas = vec![1.0, 0.5];
    let cases: Vec<(Box<dyn Sampler>, u64)> = vec![
        (Box::new(samplers::AnnealedLangevin { sigmas: sigmas.clone(), eps: 0.01, steps_per_level: 3, denoise: true, start: samplers::Start::Box(1.0) }), 2 * 3 + 1),
        (Box::new(samplers::Langevin { sigma: Some(0.5), alpha: 0.01, steps: 5, start: samplers::Start::Box(1.0) }), 5),
        (Box::new(samplers::ScoreAscent { sigma: Some(0.5), alpha: 0.01, steps: 4, start: samplers::Start::Box(1.0) }), 4),
    ];
    for (s, want) in cases {
        let mut x = vec![0.5f32; 10];
        let nfe = samplers::sample(s.as_ref(), &mut PointMass, &mut x, &mut Rng::new(1), &mut || {}).unwrap().nfe;
        assert_eq!(nfe, want, "{}", s.name());
    }
}

/// The exact score of a Gaussian mixture perturbed by N(0, σ²I): the mixture with every
/// component's variance raised by σ².
struct ExactMixture(engine::data::Mixture);

impl Field for ExactMixture {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> candle_core::Result<()> {
        let mix = self.0.perturbed(sigma.expect("a level"));
        let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        out.iter_mut().zip(mix.scores(&xs)).for_each(|(o, s)| *o = s as f32);
        Ok(())
    }
}

/// The samplers that toys gained (probability-flow ODE by Heun and by DDIM, reverse SDE,
/// predictor–corrector) and annealed Langevin, driven by the exact perturbed score of NCSN's
/// 0.8·N((5,5), I) + 0.2·N((−5,−5), I): each recovers the mode weights and the data's
/// variance, which plain Langevin from the same start cannot (it keeps about half the chains
/// in each mode: checked last, so the test can tell). 4,000 chains: the SE of a mode weight is √(0.16/4000) = 0.006, so 0.03 is 5 SE;
/// the variance of the first coordinate (0.16·100 + 1 = 17) within 5%.
#[test]
fn every_sampler_recovers_a_mixture_from_its_exact_perturbed_score() {
    let mix = engine::data::Mixture::ncsn2d();
    for (name, levels) in [("heun", 40), ("ddim", 200), ("euler_maruyama", 400), ("pc", 200), ("annealed_langevin", 10)] {
        let sigmas = if name == "annealed_langevin" { ladder::geometric(20.0, 1.0, levels) } else { samplers::rho_schedule(20.0, 0.01, levels, 7.0) };
        // NCSN's toy settings: 100 steps per level, ε = 0.05 at σ_L = 1.
        let p = samplers::Params { sigmas: Some(sigmas), eps: 0.05, steps: 0, steps_per_level: 100, denoise: true, snr: 0.16, start: samplers::Start::Noise };
        let s = samplers::build(name, &p).unwrap();
        let mut rng = Rng::new(11);
        // The ODE/SDE samplers start from the exact p_σmax (their own start, σ_max z, misses its
        // mean (3, 3) by 0.15 σ_max, which moves the mode weights by about 0.04); annealed
        // Langevin mixes at its first level from σ_max z.
        let mut x = match name {
            "annealed_langevin" => samplers::start(s.as_ref(), 4000, 2, &mut rng),
            _ => mix.perturbed(20.0).sample(4000, &mut rng).into_iter().map(|v| v as f32).collect(),
        };
        let out = samplers::sample(s.as_ref(), &mut ExactMixture(mix.clone()), &mut x, &mut rng, &mut || {}).unwrap();
        assert_eq!(out.diverged, None, "{name}");
        let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let w = engine::eval::samples::mode_weights(&xs, &mix);
        assert!((w[0] - mix.weights[0]).abs() < 0.03, "{name}: mode weights {w:?}");
        let (mean, var) = engine::eval::samples::sample_moments(&xs, 2);
        let want = 0.8 * 0.2 * 100.0 + 1.0;
        assert!((var[0] / want - 1.0).abs() < 0.05, "{name}: var {} vs {want} (mean {mean:?})", var[0]);
    }
    let p = samplers::Params { sigmas: Some(vec![1.0]), eps: 0.05, steps: 1000, steps_per_level: 1, denoise: false, snr: 0.0, start: samplers::Start::Box(8.0) };
    let s = samplers::build("langevin", &p).unwrap();
    let mut rng = Rng::new(11);
    let mut x = samplers::start(s.as_ref(), 4000, 2, &mut rng);
    samplers::sample(s.as_ref(), &mut ExactMixture(mix.clone()), &mut x, &mut rng, &mut || {}).unwrap();
    let w = engine::eval::samples::mode_weights(&x.iter().map(|&v| v as f64).collect::<Vec<f64>>(), &mix);
    assert!((w[0] - 0.5).abs() < 0.05, "plain Langevin: mode weights {w:?}");
}

/// The registry builds every sampler a trial file can name, toy or image, from the parameters
/// of its validated spec (a schema variant without its registry line would make a trial skip
/// sampling).
#[test]
fn the_registry_builds_every_sampler_the_schema_accepts() {
    use schema::trial::TrialConfig;
    let toy = |kind: &str| {
        format!(
            "[data]\npreset = \"ncsn2d\"\n[model]\nkind = \"mlp\"\n[objective]\nkind = \"dsm\"\nnoise = {{ ladder = \"geometric\", sigma_max = 2.0, sigma_min = 1.0, levels = 2 }}\n[train]\nsteps = 1\n[sampler]\nkind = \"{kind}\"\n"
        )
    };
    let image = |kind: &str| {
        format!("[data]\npreset = \"mnist\"\ndir = \"/nonexistent\"\n[model]\nkind = \"mlp\"\n[objective]\nkind = \"edm\"\n[train]\nsteps = 1\n[sampler]\nkind = \"{kind}\"\n")
    };
    let kinds = ["annealed_langevin", "langevin", "score_ascent", "heun", "euler_maruyama", "pc", "ddim"];
    let mut seen = 0;
    for src in kinds.iter().map(|k| toy(k)).chain(kinds.iter().map(|k| image(k))) {
        let spec = match TrialConfig::from_str_at(&src, std::path::Path::new("t.toml")) {
            Ok(TrialConfig::Train(t)) => t.sampler.expect("a sampler"),
            _ => continue, // a kind this family does not offer (score ascent for images)
        };
        let name = spec.name();
        let s = samplers::build(name, &samplers::Params::of(&spec, Some(&[2.0, 1.0]), 0.1)).unwrap_or_else(|| panic!("no registry line for {name}"));
        assert_eq!(s.name(), name);
        seen += 1;
    }
    assert_eq!(seen, 13, "7 toy samplers and 6 image ones");
}
