//! The metric keys the schema says every `done` result must carry
//! ([`schema::metrics::required_metrics`], which the coordinator enforces on reports) are
//! produced by real trials of the engine, for each kind of trial the list distinguishes: a
//! sleep trial; exact data without a ladder or a sampler; SSM with a plain sampler; DSM with a
//! ladder and annealed Langevin; an energy model. A key added to the list that the engine does
//! not produce, or a key the engine stops producing, fails here. Likewise the metrics each
//! checkpoint reports ([`schema::metrics::checkpoint_metrics`], what `[early_stop]` may use).

use std::sync::atomic::AtomicBool;

use engine::outcome::TrialStatus;
use engine::trial::run_trial;
use schema::TrialConfig;

const TRAIN: &str =
    "seed = 3\n[data]\npreset = \"seed1d\"\n[model]\nkind = \"mlp\"\nhidden = 16\n[train]\nsteps = 20\nbatch = 32\neval_every = 10\n[eval]\nn = 500\nc_samples = 1000\n";

/// Runs `src` to completion and checks its metrics against the required keys.
fn check(src: &str) {
    let cfg = TrialConfig::from_value(&toml::from_str(src).unwrap()).unwrap_or_else(|e| panic!("{e}\n{src}"));
    // The keys of every checkpoint's progress report (what an `[early_stop]` rule reads).
    let mut checkpoints: Vec<Vec<String>> = Vec::new();
    let mut on_progress = |p: &engine::outcome::Progress| {
        if !p.latest.is_empty() && !p.latest.iter().any(|(k, _)| k == "sampling_step") {
            checkpoints.push(p.latest.iter().map(|(k, _)| k.clone()).collect());
        }
    };
    let out = run_trial(&cfg, &engine::device::open(None).unwrap(), &mut on_progress, &AtomicBool::new(false)).unwrap();
    for keys in &checkpoints {
        for key in cfg.checkpoint_metrics() {
            assert!(key == "train_loss" || keys.iter().any(|k| k == key), "checkpoint metric `{key}` not reported at a checkpoint of:\n{src}\n(got {keys:?})");
        }
    }
    let is_sleep = matches!(cfg, TrialConfig::Sleep(_));
    assert_eq!(checkpoints.is_empty(), is_sleep, "{src}");
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
