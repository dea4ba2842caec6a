//! The metric keys the schema says every `done` result must carry
//! ([`schema::metrics::required_metrics`], which the coordinator enforces on reports) are
//! produced by real trials of the engine, for each kind of trial the list distinguishes: a
//! sleep trial; exact data without a ladder or a sampler; SSM with a plain sampler; DSM with a
//! ladder and annealed Langevin; an energy model. A key added to the list that the engine does
//! not produce, or a key the engine stops producing, fails here.

use std::sync::atomic::AtomicBool;

use engine::outcome::TrialStatus;
use engine::trial::run_trial;
use schema::TrialConfig;

const TRAIN: &str =
    "seed = 3\n[data]\npreset = \"seed1d\"\n[model]\nkind = \"mlp\"\nhidden = 16\n[train]\nsteps = 20\nbatch = 32\neval_every = 10\n[eval]\nn = 500\nc_samples = 1000\n";

/// Runs `src` to completion and checks its metrics against the required keys.
fn check(src: &str) {
    let cfg = TrialConfig::from_value(&toml::from_str(src).unwrap()).unwrap_or_else(|e| panic!("{e}\n{src}"));
    let out = run_trial(&cfg, &engine::device::open(None).unwrap(), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(out.status, TrialStatus::Ok, "{src}");
    for key in cfg.required_metrics() {
        let v = out.metric(key).unwrap_or_else(|| panic!("required metric `{key}` not produced by:\n{src}\n(got {:?})", out.metrics));
        assert!(v.is_finite(), "required metric `{key}` = {v} for:\n{src}");
    }
}

#[test]
fn real_trials_produce_every_required_metric() {
    let cases = [
        "seed = 1\n[sleep]\nseconds = 0.01\n".to_string(),
        format!("{TRAIN}[objective]\nkind = \"ism\"\n[sampler]\nkind = \"none\"\n"),
        format!("{TRAIN}[objective]\nkind = \"ssm_vr\"\n[sampler]\nkind = \"langevin\"\nsteps = 10\nn = 50\n"),
        format!(
            "{}[objective]\nkind = \"dsm\"\nnoise = {{ ladder = \"geometric\", sigma_max = 4.0, sigma_min = 0.2, levels = 3 }}\n[sampler]\nkind = \"annealed_langevin\"\nsteps_per_level = 5\nn = 50\n",
            TRAIN.replace("seed1d", "ring8")
        ),
        format!("{}[objective]\nkind = \"esm\"\n[sampler]\nkind = \"score_ascent\"\nsteps = 5\nn = 50\n", TRAIN.replace("kind = \"mlp\"", "kind = \"energy_mlp\"")),
    ];
    for src in &cases {
        check(src);
    }
}
