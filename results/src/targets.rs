//! The digit targets of image trials, judged with their uncertainty (issue 19): a target
//! counts as met only when its 95% interval clears it, not when the point estimate does.
//!
//! | target | judged on | met when |
//! |---|---|---|
//! | `class_match` ≥ 0.97 with guidance (`sampler.guidance` > 1) | Wilson interval | `class_match_lo` ≥ 0.97 |
//! | `which_digit_accuracy` ≥ 0.95 | Wilson interval | `which_digit_accuracy_lo` ≥ 0.95 |
//! | FID ≤ 4 × the floor at equal n | bootstrap interval of the ratio | `fid_over_floor_hi` ≤ 4 |
//!
//! Memorisation and the judge's own held-out accuracy are reported beside them with their
//! intervals, and where the judge comes from (its own part of the split, or the training part).

use std::fmt::Write as _;

use serde_json::Value;

use crate::claims::fmt_num;
use crate::state::{State, Trial};
use schema::image::IMAGE_PRESETS;

/// `class_match` target (with guidance).
pub const CLASS_MATCH_TARGET: f64 = 0.97;
/// `which_digit_accuracy` target.
pub const WHICH_DIGIT_TARGET: f64 = 0.95;
/// Largest FID as a multiple of the equal-n real-data floor.
pub const FID_OVER_FLOOR_TARGET: f64 = 4.0;

/// A target's verdict for one trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    Met,
    NotMet,
    /// The trial lacks the metric or its interval, or the target does not apply to it.
    NotJudged,
}

impl Met {
    pub fn as_str(self) -> &'static str {
        match self {
            Met::Met => "met",
            Met::NotMet => "**not met**",
            Met::NotJudged => "—",
        }
    }
}

/// Whether a trial's `name` target is met: at least `target` at the interval's lower end
/// `name_lo` (the point estimate alone never counts).
pub fn at_least(t: &Trial, name: &str, target: f64) -> Met {
    match t.metric(&format!("{name}_lo")) {
        Some(lo) if lo >= target => Met::Met,
        Some(_) => Met::NotMet,
        None => Met::NotJudged,
    }
}

/// Whether the FID target is met: the ratio's upper end at most [`FID_OVER_FLOOR_TARGET`].
pub fn fid_met(t: &Trial) -> Met {
    match t.metric("fid_over_floor_hi") {
        Some(hi) if hi <= FID_OVER_FLOOR_TARGET => Met::Met,
        Some(_) => Met::NotMet,
        None => Met::NotJudged,
    }
}

/// Whether the trial samples with classifier-free guidance (s > 1).
fn guided(t: &Trial) -> bool {
    t.config.get("sampler.guidance").and_then(Value::as_f64).is_some_and(|s| s > 1.0)
}

/// `p [lo, hi]` of a proportion metric, or "—".
fn interval(t: &Trial, name: &str) -> String {
    match (t.metric(name), t.metric(&format!("{name}_lo")), t.metric(&format!("{name}_hi"))) {
        (Some(p), Some(lo), Some(hi)) => format!("{} [{}, {}]", fmt_num(p), fmt_num(lo), fmt_num(hi)),
        (Some(p), _, _) => fmt_num(p),
        _ => "—".into(),
    }
}

/// `x ± se` of a metric with its `_se`, or "—".
fn pm(t: &Trial, name: &str, se: &str) -> String {
    match (t.metric(name), t.metric(se)) {
        (Some(v), Some(s)) => format!("{} ± {}", fmt_num(v), fmt_num(s)),
        (Some(v), None) => fmt_num(v),
        _ => "—".into(),
    }
}

fn is_image_trial(t: &Trial) -> bool {
    t.config.get("data.preset").and_then(Value::as_str).is_some_and(|p| IMAGE_PRESETS.contains(&p))
}

/// Where the trial's judge was trained, in words.
fn judge_origin(t: &Trial) -> String {
    match (t.metric("judge_disjoint"), t.metric("judge_n")) {
        (Some(d), Some(n)) if d > 0.5 => format!("own part ({} images)", fmt_num(n)),
        (Some(_), Some(n)) => format!("training part ({} images)", fmt_num(n)),
        _ => "—".into(),
    }
}

/// The "Digit targets" section: one row per finished image trial of the sweep, then how many
/// trials meet each target. Nothing when the sweep has no image trial with digit metrics.
pub fn targets_section(md: &mut String, state: &State) {
    let trials: Vec<&Trial> = state.in_sweep().filter(|t| is_image_trial(t) && t.metric("classifier_accuracy").is_some()).collect();
    if trials.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Digit targets\n");
    let _ = writeln!(
        md,
        "Each target is judged on its 95% interval, never on the point estimate: `class_match` ≥ {} with guidance (s > 1) and \
         `which_digit_accuracy` ≥ {} are met when the Wilson interval's lower end clears them; FID ≤ {} × the real-data floor at \
         the same n is met when the upper end of the ratio's bootstrap interval is at most {}. Memorisation (the fraction of samples \
         nearer a training image than the 1st percentile of held-out images' nearest-training distances: ≈ 0.01 for fresh digits, \
         1 for copies) and the judge's own held-out accuracy are shown with their Wilson intervals. The judge (a small CNN) is trained \
         on its own part of the split, never on the score model's training images, unless `data.judge = 0`.\n",
        fmt_num(CLASS_MATCH_TARGET),
        fmt_num(WHICH_DIGIT_TARGET),
        fmt_num(FID_OVER_FLOOR_TARGET),
        fmt_num(FID_OVER_FLOOR_TARGET)
    );
    let _ = writeln!(
        md,
        "| trial | sampler | s | class_match [95%] | target | which_digit_accuracy [95%] | target | FID ± SE | floor ± SE (n) | FID / floor [95%] | target | memorisation [95%] | judge: accuracy [95%] | judge trained on |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut counts = [(0usize, 0usize); 3];
    for t in &trials {
        let cm = if guided(t) { at_least(t, "class_match", CLASS_MATCH_TARGET) } else { Met::NotJudged };
        let wd = at_least(t, "which_digit_accuracy", WHICH_DIGIT_TARGET);
        let fd = fid_met(t);
        for (c, m) in counts.iter_mut().zip([cm, wd, fd]) {
            if m != Met::NotJudged {
                c.1 += 1;
                c.0 += (m == Met::Met) as usize;
            }
        }
        let ratio = match (t.metric("fid_over_floor"), t.metric("fid_over_floor_lo"), t.metric("fid_over_floor_hi")) {
            (Some(r), Some(lo), Some(hi)) => format!("{} [{}, {}]", fmt_num(r), fmt_num(lo), fmt_num(hi)),
            _ => "—".into(),
        };
        let floor = match t.metric("fid_n") {
            Some(n) => format!("{} ({})", pm(t, "fid_real_floor", "fid_real_floor_se"), fmt_num(n)),
            None => pm(t, "fid_real_floor", "fid_real_floor_se"),
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.short_hash(),
            t.config_display("sampler.kind").unwrap_or_default(),
            t.config_display("sampler.guidance").unwrap_or_else(|| "1".into()),
            interval(t, "class_match"),
            cm.as_str(),
            interval(t, "which_digit_accuracy"),
            wd.as_str(),
            pm(t, "fid", "fid_se"),
            floor,
            ratio,
            fd.as_str(),
            interval(t, "memorisation"),
            interval(t, "classifier_accuracy"),
            judge_origin(t),
        );
    }
    md.push('\n');
    for ((met, judged), what) in counts.iter().zip([
        format!("`class_match` ≥ {} with guidance", fmt_num(CLASS_MATCH_TARGET)),
        format!("`which_digit_accuracy` ≥ {}", fmt_num(WHICH_DIGIT_TARGET)),
        format!("FID ≤ {} × floor", fmt_num(FID_OVER_FLOOR_TARGET)),
    ]) {
        let _ = writeln!(md, "- {what}: met by {met} of {judged} trial(s) judged.");
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TrialResult;
    use schema::Status;
    use std::collections::BTreeMap;

    fn trial(metrics: &[(&str, f64)], guidance: f64) -> Trial {
        let config: BTreeMap<String, Value> = [("data.preset".to_string(), Value::from("mnist")), ("sampler.guidance".to_string(), Value::from(guidance))].into();
        Trial {
            hash: "abcdef0123456789".into(),
            idx: 0,
            config,
            in_sweep: true,
            status: Status::Done,
            attempts: 1,
            result: Some(TrialResult {
                status: Status::Done,
                diverged_step: None,
                metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                wall_seconds: 1.0,
                worker: String::new(),
                device: String::new(),
            }),
            curve: vec![],
            samples: None,
            artifacts: vec![],
            last_error: None,
        }
    }

    #[test]
    fn a_target_is_met_only_by_the_interval() {
        // The case: 0.959 of 1,000 is above 0.95, its Wilson lower end (0.9451) is not.
        let t = trial(&[("which_digit_accuracy", 0.959), ("which_digit_accuracy_lo", 0.9451), ("which_digit_accuracy_hi", 0.97)], 1.0);
        assert_eq!(at_least(&t, "which_digit_accuracy", WHICH_DIGIT_TARGET), Met::NotMet);
        let t = trial(&[("which_digit_accuracy", 0.97), ("which_digit_accuracy_lo", 0.9594)], 1.0);
        assert_eq!(at_least(&t, "which_digit_accuracy", WHICH_DIGIT_TARGET), Met::Met);
        // A point estimate without its interval is not judged.
        assert_eq!(at_least(&trial(&[("class_match", 0.99)], 2.0), "class_match", 0.97), Met::NotJudged);
        // FID: the ratio's upper end decides.
        assert_eq!(fid_met(&trial(&[("fid_over_floor", 3.5), ("fid_over_floor_hi", 4.2)], 1.0)), Met::NotMet);
        assert_eq!(fid_met(&trial(&[("fid_over_floor", 3.5), ("fid_over_floor_hi", 3.9)], 1.0)), Met::Met);
    }

    #[test]
    fn the_section_shows_intervals_and_counts() {
        let common = [
            ("classifier_accuracy", 0.97),
            ("classifier_accuracy_lo", 0.962),
            ("classifier_accuracy_hi", 0.977),
            ("judge_n", 2000.0),
            ("judge_disjoint", 1.0),
            ("fid", 12.0),
            ("fid_se", 0.5),
            ("fid_real_floor", 4.0),
            ("fid_real_floor_se", 0.2),
            ("fid_n", 1000.0),
            ("fid_over_floor", 3.0),
            ("fid_over_floor_lo", 2.7),
            ("fid_over_floor_hi", 3.3),
        ];
        let mut guided_ok: Vec<(&str, f64)> = common.to_vec();
        guided_ok.extend([("class_match", 0.985), ("class_match_lo", 0.9755), ("class_match_hi", 0.99)]);
        let mut plain: Vec<(&str, f64)> = common.to_vec();
        plain.extend([("class_match", 0.96), ("class_match_lo", 0.947), ("class_match_hi", 0.97)]);
        let state = State {
            trials: vec![trial(&guided_ok, 2.0), trial(&plain, 1.0)],
            path: std::path::PathBuf::new(),
            sweep: None,
            decisions: vec![],
            adaptive: Default::default(),
            events: vec![],
            workers: vec![],
        };
        let mut md = String::new();
        targets_section(&mut md, &state);
        assert!(md.contains("## Digit targets"), "{md}");
        assert!(md.contains("0.985 [0.9755, 0.99]"), "{md}");
        assert!(md.contains("12 ± 0.5"), "{md}");
        assert!(md.contains("own part (2000 images)"), "{md}");
        // Only the guided trial is judged on class_match; both on FID.
        assert!(md.contains("with guidance: met by 1 of 1 trial(s)"), "{md}");
        assert!(md.contains("floor: met by 2 of 2 trial(s)"), "{md}");
        // No image trial, no section.
        let mut none = String::new();
        targets_section(
            &mut none,
            &State { trials: vec![], path: std::path::PathBuf::new(), sweep: None, decisions: vec![], adaptive: Default::default(), events: vec![], workers: vec![] },
        );
        assert!(none.is_empty());
    }
}
