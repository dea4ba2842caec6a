//! The metrics every successful (`done`) result of a trial must carry, derived from the
//! validated trial alone (no engine): the coordinator refuses to record a `done` report that
//! lacks one of them, or carries one that is not a finite number, so nothing malformed ever
//! becomes a result.
//!
//! The list is conservative: only keys the engine produces on every successful run of such a
//! trial (`engine::trial::run_training` / `sleep_trial`). Keys that depend on the run itself
//! (sample metrics, which need enough finite samples; `eps_used`, which may be undefined) are
//! left out. `worker/tests/required_metrics.rs` runs real trials and checks that their metrics
//! contain every key listed here, so the list cannot drift from the engine.

use crate::trial::{DataSpec, TrialConfig};

/// Of a sleep trial.
pub const SLEEP: &[&str] = &["slept_seconds"];
/// Of every training trial.
pub const TRAIN: &[&str] = &["steps_done", "train_seconds", "eval_seconds", "sample_seconds"];
/// The ESM/ISM gap checkpoint (data with an exact score), from the last checkpoint.
pub const GAPS: &[&str] = &["l_esm", "l_ism", "gap", "gap_se", "c_true", "c_se"];
/// The DSM gap checkpoint (data with an exact score and a noise ladder).
pub const DSM_GAPS: &[&str] = &["l_dsm", "l_esm_sigma", "dsm_gap", "dsm_gap_se", "c_dsm", "c_dsm_se", "dsm_sigma"];
/// The SSM loss checkpoint (objective `ssm` or `ssm_vr`).
pub const SSM: &[&str] = &["l_ssm", "l_ssm_se"];
/// The resolved noise ladder.
pub const LADDER: &[&str] = &["levels", "sigma_max_used", "sigma_min_used"];
/// A sampler run.
pub const SAMPLER: &[&str] = &["nfe", "samples_nonfinite"];

/// Of every image trial (`engine::images::run`).
pub const IMAGE: &[&str] = &["steps_done", "eval_loss", "train_seconds", "eval_seconds", "parameters"];
/// An image sampler run.
pub const IMAGE_SAMPLER: &[&str] = &["nfe", "sample_seconds"];

/// The metric keys every `done` result of `cfg` contains, each a finite number.
pub fn required_metrics(cfg: &TrialConfig) -> Vec<&'static str> {
    let t = match cfg {
        TrialConfig::Sleep(_) => return SLEEP.to_vec(),
        TrialConfig::Train(t) => t,
    };
    if let DataSpec::Images(_) = t.data {
        let mut keys = IMAGE.to_vec();
        if t.sampler.is_some() {
            keys.extend_from_slice(IMAGE_SAMPLER);
        }
        return keys;
    }
    let mut keys = TRAIN.to_vec();
    let exact = t.data.caps().exact_score;
    if exact {
        keys.extend_from_slice(GAPS);
        if t.conditional() {
            keys.extend_from_slice(DSM_GAPS);
        }
    }
    if t.objective.is_score_ssm() {
        keys.extend_from_slice(SSM);
    }
    if t.conditional() {
        keys.extend_from_slice(LADDER);
    }
    if t.sampler.is_some() {
        keys.extend_from_slice(SAMPLER);
    }
    keys
}

/// The metrics every checkpoint of `cfg` reports (the curve's columns but `step`, as the
/// engine's checkpoint evaluators name them), which an `[early_stop]` rule may compare trials
/// by. `train_loss` is the mean loss of the last training step (not defined at step 0).
pub fn checkpoint_metrics(cfg: &TrialConfig) -> Vec<&'static str> {
    let t = match cfg {
        TrialConfig::Sleep(_) => return vec![],
        TrialConfig::Train(t) => t,
    };
    if let DataSpec::Images(_) = t.data {
        return vec!["train_loss", "eval_loss"];
    }
    let mut keys = vec!["train_loss"];
    if t.data.caps().exact_score {
        keys.extend_from_slice(&["l_esm", "l_esm_se", "l_ism", "l_ism_se", "gap", "gap_se", "c_true", "c_se"]);
        if t.conditional() {
            keys.extend_from_slice(&["l_dsm", "l_esm_sigma", "dsm_gap", "dsm_gap_se", "dsm_gap_se_raw", "c_dsm", "c_dsm_se", "dsm_sigma"]);
        }
    }
    if t.objective.is_score_ssm() {
        keys.extend_from_slice(&["l_ssm", "l_ssm_se"]);
    }
    keys
}

impl TrialConfig {
    /// See [`checkpoint_metrics`].
    pub fn checkpoint_metrics(&self) -> Vec<&'static str> {
        checkpoint_metrics(self)
    }

    /// See [`required_metrics`].
    pub fn required_metrics(&self) -> Vec<&'static str> {
        required_metrics(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(src: &str) -> TrialConfig {
        TrialConfig::from_value(&toml::from_str(src).unwrap()).unwrap()
    }

    #[test]
    fn the_list_follows_the_data_objective_ladder_and_sampler() {
        let train = "[data]\npreset = \"seed1d\"\n[model]\nkind = \"mlp\"\n[train]\nsteps = 1\n";
        // (trial, the lists it requires, keys it must not require)
        type Case = (String, &'static [&'static [&'static str]], &'static [&'static str]);
        let cases: [Case; 4] = [
            ("[sleep]\nseconds = 1\n".into(), &[SLEEP], &["steps_done"]),
            (format!("{train}[objective]\nkind = \"ism\"\n[sampler]\nkind = \"none\"\n"), &[TRAIN, GAPS], &["l_dsm", "levels", "nfe", "l_ssm"]),
            (format!("{train}[objective]\nkind = \"ssm_vr\"\n[sampler]\nkind = \"langevin\"\n"), &[TRAIN, GAPS, SSM, SAMPLER], &["l_dsm", "levels"]),
            (
                format!("{train}[objective]\nkind = \"dsm\"\nnoise = {{ ladder = \"list\", sigmas = [1.0, 0.5] }}\n[sampler]\nkind = \"annealed_langevin\"\n"),
                &[TRAIN, GAPS, DSM_GAPS, LADDER, SAMPLER],
                &["l_ssm"],
            ),
        ];
        for (src, want, absent) in &cases {
            let got = cfg(src).required_metrics();
            let want: Vec<&str> = want.iter().flat_map(|k| k.iter().copied()).collect();
            assert_eq!(got, want, "{src}");
            for a in *absent {
                assert!(!got.contains(a), "{a} listed for {src}");
            }
        }
    }

    #[test]
    fn image_trials_require_the_image_lists() {
        let image = |sampler: &str| {
            cfg(&format!("[data]\npreset = \"mnist\"\n[model]\nkind = \"mlp\"\n[objective]\nkind = \"edm\"\n[train]\nsteps = 1\n[sampler]\nkind = \"{sampler}\"\n"))
        };
        let with_sampler: Vec<&str> = IMAGE.iter().chain(IMAGE_SAMPLER).copied().collect();
        assert_eq!(image("heun").required_metrics(), with_sampler);
        assert_eq!(image("none").required_metrics(), IMAGE.to_vec());
        assert_eq!(image("heun").checkpoint_metrics(), vec!["train_loss", "eval_loss"]);
    }
}
