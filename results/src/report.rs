//! `report.md`: the claims, the tolerances behind them, the digit targets judged on their
//! intervals ([`crate::targets`]), key tables (the metrics the trials
//! carry, toy and image alike, against the σ ladder, the sampler's step size, the objective,
//! …), links to the plots, each image trial's sample grid, the artifacts each
//! trial uploaded, the trials that no longer belong to the sweep, the failed trials (every
//! status [`schema::Status::is_unusable`] classifies so) with their errors, and the local
//! workers that died and were respawned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::claims::{ClaimRow, TOLERANCES, fmt_num};
use crate::escape::{link_target, md_text};
use crate::plots::Plot;
use crate::state::{Artifact, State, Trial};
use schema::image::IMAGE_PRESETS;

/// Metrics that lead the key tables' columns, in this order: the toy trials' score-matching
/// losses, gaps and sample metrics, then the image trials' loss, sample quality and evaluations.
/// Every other metric the trials carry follows in name order, `train_seconds` last; a metric no
/// trial of the table carries gets no column.
const LEAD_METRICS: [&str; 19] = [
    "l_esm",
    "l_ism",
    "gap",
    "c_true",
    "l_dsm",
    "dsm_gap",
    "fd",
    "swd",
    "mmd",
    "mode_weight_err",
    "nll",
    "kl",
    "eval_loss",
    "fid",
    "fid_over_floor",
    "class_match",
    "which_digit_accuracy",
    "memorisation",
    "nfe",
];

/// Metrics left out of the key tables (`trials.csv` has them all): what describes how a trial
/// ran rather than what it reached (counts, the resolved ladder and step size, throughput), and
/// reference values of the data rather than of the model (the real images' pixel statistics,
/// the FID of real against real images, the classifier's accuracy on real images, a mixture's
/// true weights), and the flag of an image set without the digit judge (`digit_metrics_skipped`:
/// its trials simply lack the judge's columns). Standard errors (`*_se`), interval ends and counts (`*_lo`, `*_hi`, `*_n`),
/// the split's and the judge's description (`split_*`, `judge_*`), per-component weights
/// (`mode_w_*`, `true_w_*`), rates (`*_per_second*`) and timings other than `train_seconds`
/// are left out by name too.
const CONTEXT_METRICS: [&str; 18] = [
    "steps_done",
    "n_train",
    "n_held_out",
    "levels",
    "sigma_max_used",
    "sigma_min_used",
    "ladder_levels",
    "ladder_sigma_max",
    "gamma",
    "data_diameter",
    "eps_used",
    "dsm_sigma",
    "fid_real_floor",
    "real_pixel_mean",
    "real_pixel_std",
    "classifier_accuracy",
    "sigma_data",
    "digit_metrics_skipped",
];

/// Whether `name` gets a column in the key tables (see [`CONTEXT_METRICS`]).
fn is_table_metric(name: &str) -> bool {
    let timing = name.ends_with("_seconds") && name != "train_seconds";
    let per_part = name.starts_with("mode_w_") || name.starts_with("true_w_");
    let se = name.ends_with("_se") || name.contains("_se_");
    // Interval ends and counts are per trial (the digit targets section shows them); the
    // split's per-class counts and the judge's description are context.
    let interval = name.ends_with("_lo") || name.ends_with("_hi") || name.ends_with("_n");
    let split = name.starts_with("split_") || name.starts_with("judge_") || name == "n_judge" || name == "memorisation_threshold";
    !(CONTEXT_METRICS.contains(&name) || timing || per_part || se || interval || split || name.contains("per_second"))
}

/// The key tables' metric columns: every metric some trial of `trials` carries (finite) and
/// [`is_table_metric`] admits, ordered as [`LEAD_METRICS`] says.
fn table_metrics(trials: &[&Trial]) -> Vec<String> {
    let carried: BTreeSet<&String> = trials.iter().filter_map(|t| t.result.as_ref()).flat_map(|r| r.metrics.iter().filter(|(_, v)| v.is_finite()).map(|(k, _)| k)).collect();
    let mut names: Vec<String> = carried.into_iter().filter(|m| is_table_metric(m)).cloned().collect();
    let rank = |m: &str| (m == "train_seconds", LEAD_METRICS.iter().position(|l| *l == m).unwrap_or(LEAD_METRICS.len()));
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    names
}

/// Config prefixes whose varying keys get a key table, in report order: the σ ladder first,
/// then the sampler (step size, steps), the objective and the model.
const TABLE_PREFIXES: [&str; 4] = ["objective.noise.", "sampler.", "objective.", "model."];

/// Renders the whole report.
pub fn render(state: &State, claims: &[ClaimRow], plots: &[Plot], files: &[&str]) -> String {
    let mut md = String::new();
    let name = state.sweep.as_ref().map_or("(unnamed sweep)", |s| s.name.as_str());
    let _ = writeln!(md, "# Sweep report: {name}\n");
    if let Some(s) = &state.sweep {
        let _ = writeln!(md, "Sweep file: `{}` · last update: {}\n", s.file, fmt_utc(s.updated_at));
    }
    let _ = writeln!(md, "State database: `{}`\n", state.path.display());
    trials_section(&mut md, state);
    early_stop_section(&mut md, state);
    claims_section(&mut md, claims);
    crate::targets::targets_section(&mut md, state);
    key_tables(&mut md, state);
    plots_section(&mut md, plots);
    sample_grids_section(&mut md, state);
    artifacts_section(&mut md, state);
    out_of_sweep_section(&mut md, state);
    failed_section(&mut md, state);
    workers_section(&mut md, state);
    let _ = writeln!(md, "## Files\n");
    for f in files {
        let _ = writeln!(md, "- [`{f}`]({f})");
    }
    md
}

fn trials_section(md: &mut String, state: &State) {
    let in_sweep: Vec<&Trial> = state.in_sweep().collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &in_sweep {
        *counts.entry(t.status.as_str()).or_default() += 1;
    }
    let _ = writeln!(md, "## Trials\n");
    let by_status: Vec<String> = counts.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let _ = writeln!(
        md,
        "{} trial(s) in the sweep ({}); {} more in the database no longer belong to it.\n",
        in_sweep.len(),
        if by_status.is_empty() { "none".to_string() } else { by_status.join(", ") },
        state.trials.len() - in_sweep.len(),
    );
    let _ = writeln!(md, "One row per trial: [`trials.csv`](trials.csv), [`trials.parquet`](trials.parquet); per checkpoint: [`curves.parquet`](curves.parquet).\n");
}

/// The early-stopping rule, how many trials reached each rung and were stopped there, and the
/// training steps spent against training every trial to the end.
fn early_stop_section(md: &mut String, state: &State) {
    let Some((kind, metric, mode)) = &state.adaptive.early_stop else {
        return;
    };
    let _ = writeln!(
        md,
        "## Early stopping
"
    );
    let in_sweep: Vec<&Trial> = state.in_sweep().collect();
    let pruned = in_sweep.iter().filter(|t| t.status == schema::Status::Pruned).count();
    let _ = writeln!(
        md,
        "Rule: `{}` on `{}` ({mode}); {pruned} of {} trial(s) pruned. Every decision (trial, rung, value, the cutoff it was compared with, decision, time) is in [`decisions.csv`](decisions.csv). A pruned trial keeps its curve and its last checkpoint's metrics: the offset claims use its checkpoints (each is a valid θ); the claims about final quality use finished trials only.\n",
        kind.replace('`', "'"),
        metric.replace('`', "'"),
        in_sweep.len()
    );
    let mut rungs: BTreeMap<i64, (BTreeSet<i64>, usize, usize)> = BTreeMap::new();
    for d in &state.decisions {
        let e = rungs.entry(d.rung).or_default();
        e.0.insert(d.checkpoint);
        e.1 += 1;
        if d.decision == "stop" {
            e.2 += 1;
        }
    }
    if !rungs.is_empty() {
        let _ = writeln!(md, "| rung | at checkpoint(s) | reached | stopped | continued |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for (rung, (cks, reached, stopped)) in &rungs {
            let cks: Vec<String> = cks.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(md, "| {rung} | {} | {reached} | {stopped} | {} |", cks.join(", "), reached - stopped);
        }
        let _ = writeln!(md);
    }
    let planned: f64 = in_sweep.iter().filter(|t| t.status.is_finished()).filter_map(|t| t.config.get("train.steps").and_then(|v| v.as_f64())).sum();
    let spent: f64 = in_sweep.iter().filter(|t| t.status.is_finished()).filter_map(|t| t.metric("steps_done")).sum();
    if planned > 0.0 {
        let _ = writeln!(md, "Training steps spent: {} of the {} that training every finished trial to the end takes ({:.1}%).\n", spent, planned, 100.0 * spent / planned);
    }
}

fn claims_section(md: &mut String, claims: &[ClaimRow]) {
    let _ = writeln!(md, "## Claims\n");
    let _ = writeln!(md, "Evaluated on the trials that belong to the sweep, per data distribution (its `data.*` keys). Also in [`claims.csv`](claims.csv).\n");
    let _ = writeln!(md, "| claim | scope | verdict | value vs expected (± SE, z) | statistic | tolerance | expected | details |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for c in claims {
        let verdict = match c.verdict.as_str() {
            "pass" => "**pass**".to_string(),
            "fail" => "**FAIL**".to_string(),
            other => other.to_string(),
        };
        let numbers = match (c.value, c.expected_value) {
            (Some(v), Some(e)) => {
                let mut t = format!("{} vs {}", fmt_num(v), fmt_num(e));
                if let Some(se) = c.se {
                    t.push_str(&format!(" (± {}", fmt_num(se)));
                    t.push_str(&c.z.map_or(")".to_string(), |z| format!(", z = {})", fmt_num(z))));
                }
                t
            }
            _ => "—".to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.claim,
            cell(&c.scope),
            verdict,
            numbers,
            c.statistic.map_or("—".to_string(), fmt_num),
            fmt_num(c.tolerance),
            cell(&c.expected),
            cell(&c.details),
        );
    }
    let _ = writeln!(md, "\n### Tolerances\n");
    let _ = writeln!(md, "| name | value | why |\n|---|---|---|");
    for (name, value, why) in TOLERANCES {
        let _ = writeln!(md, "| `{name}` | {} | {} |", fmt_num(value), cell(why));
    }
    let _ = writeln!(
        md,
        "\n`value`, `expected_value`, `se` and `z` in `claims.csv` are the numbers behind each verdict: \
         for an offset claim, the worst θ's gap against its constant; for `ism_at_best`, the best \
         θ's L_ISM against −C (since L_ISM = L_ESM − C, the excess is the ESM the net has left, \
         reported with it); for the Langevin claim, each side's mean weight of component 0 against \
         the true one. The DSM constant is D/σ² − E‖∇log p_σ‖²; its gap is measured with the \
         control variate (‖ε‖² − D)/σ² subtracted (column `dsm_gap_se_raw` keeps the SE without it).\n"
    );
}

/// Keys whose value differs between in-sweep trials, ordered by [`TABLE_PREFIXES`].
fn table_keys(trials: &[&Trial]) -> Vec<String> {
    let keys: BTreeSet<String> = trials.iter().flat_map(|t| t.config.keys().cloned()).collect();
    let varying: Vec<String> = keys
        .into_iter()
        .filter(|k| {
            let values: BTreeSet<Option<String>> = trials.iter().map(|t| t.config.get(k).map(Value::to_string)).collect();
            values.len() > 1
        })
        .collect();
    let mut out = Vec::new();
    for prefix in TABLE_PREFIXES {
        for k in &varying {
            if k.starts_with(prefix) && !out.contains(k) {
                out.push(k.clone());
            }
        }
    }
    out
}

fn key_tables(md: &mut String, state: &State) {
    let trials: Vec<&Trial> = state.in_sweep().filter(|t| t.result.is_some()).collect();
    let _ = writeln!(md, "## Key tables\n");
    let keys = table_keys(&trials);
    if keys.is_empty() {
        let _ = writeln!(md, "No sweep key varies between finished trials.\n");
        return;
    }
    let _ = writeln!(
        md,
        "Means over the finished trials of the sweep, per data distribution and value of one swept key, of the metrics the trials carry \
         (toy and image trials alike; standard errors, timings and reference values of the data are in [`trials.csv`](trials.csv)).\n"
    );
    let metrics = table_metrics(&trials);
    for key in keys {
        key_table(md, &trials, &key, &metrics);
    }
}

fn key_table(md: &mut String, trials: &[&Trial], key: &str, metrics: &[String]) {
    // Group by (scope, value); numeric values sort numerically.
    let mut groups: BTreeMap<(String, SortKey), Vec<&Trial>> = BTreeMap::new();
    for t in trials {
        let value = t.config.get(key);
        groups.entry((t.scope(), SortKey::of(value))).or_default().push(t);
    }
    let _ = writeln!(md, "### Metrics vs `{key}`\n");
    let _ = write!(md, "| scope | {key} | n |");
    for m in metrics {
        let _ = write!(md, " {m} |");
    }
    let _ = write!(md, "\n|---|---|---|");
    for _ in metrics {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for ((scope, value), group) in &groups {
        let _ = write!(md, "| {} | {} | {} |", cell(scope), cell(&value.label), group.len());
        for m in metrics {
            let xs: Vec<f64> = group.iter().filter_map(|t| t.metric(m)).collect();
            let mean = (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
            let _ = write!(md, " {} |", mean.map_or("—".to_string(), fmt_num));
        }
        md.push('\n');
    }
    md.push('\n');
}

/// Orders config values: numbers by value, then strings, with absent last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    rank: u8,
    num: OrdF64,
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl SortKey {
    fn of(value: Option<&Value>) -> SortKey {
        match value {
            Some(v) if v.is_number() => SortKey { rank: 0, num: OrdF64(v.as_f64().unwrap_or(f64::NAN)), label: v.to_string() },
            Some(v) => SortKey { rank: 1, num: OrdF64(0.0), label: crate::state::display_value(v) },
            None => SortKey { rank: 2, num: OrdF64(0.0), label: "(absent)".to_string() },
        }
    }
}

fn plots_section(md: &mut String, plots: &[Plot]) {
    let _ = writeln!(md, "## Plots\n");
    if plots.is_empty() {
        let _ = writeln!(md, "No plot: no trial has checkpoint gaps, 2D samples or a σ_max with a sample metric.\n");
        return;
    }
    for p in plots {
        let _ = writeln!(md, "- [{}]({})", p.title, p.rel_path);
    }
    md.push('\n');
}

fn artifacts_section(md: &mut String, state: &State) {
    let _ = writeln!(md, "## Artifacts\n");
    let with: Vec<&Trial> = state.trials.iter().filter(|t| !t.artifacts.is_empty()).collect();
    if with.is_empty() {
        let _ = writeln!(md, "None: no trial uploaded an artifact.\n");
        return;
    }
    let _ = writeln!(md, "Files uploaded by the attempt that produced each result, under `artifacts/<hash>/`.\n");
    let _ = writeln!(md, "| hash | name | bytes | path | sha256 |\n|---|---|---|---|---|");
    for t in with {
        for a in &t.artifacts {
            // The name is the worker's: shown as plain text, linked percent-encoded.
            let _ =
                writeln!(md, "| `{}` | {} | {} | [{}]({}) | `{}` |", t.short_hash(), md_text(&a.name), a.bytes, md_text(&a.rel_path), link_target(&a.rel_path), md_text(&a.sha256));
        }
    }
    md.push('\n');
}

/// Whether `a` is a picture the report can show (a sample grid).
fn is_image(a: &Artifact) -> bool {
    a.media_type == "image/png" || a.name.ends_with(".png")
}

/// Each image trial of the sweep (its `data.preset` is an image set) with its sample grid
/// shown, or why it has none; then any other trial's picture. Nothing when the sweep has
/// neither.
fn sample_grids_section(md: &mut String, state: &State) {
    let trials: Vec<&Trial> = state.in_sweep().collect();
    let image_trial = |t: &Trial| t.config.get("data.preset").and_then(Value::as_str).is_some_and(|p| IMAGE_PRESETS.contains(&p));
    let shown: Vec<&Trial> = trials.iter().copied().filter(|t| image_trial(t) || t.artifacts.iter().any(is_image)).collect();
    if shown.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Sample grids\n");
    let _ = writeln!(md, "The samples each image trial drew (`samples.png`, uploaded by its worker), with the keys that vary in the sweep.\n");
    let varying = table_keys(&trials);
    for t in shown {
        let label: Vec<String> = varying.iter().filter_map(|k| Some(format!("{k}={}", t.config_display(k)?))).collect();
        let _ = writeln!(md, "**`{}`** {}\n", t.short_hash(), label.join(", "));
        let grids: Vec<&Artifact> = t.artifacts.iter().filter(|a| is_image(a)).collect();
        for a in &grids {
            let _ = writeln!(md, "![{} of {}]({})\n", md_text(&a.name), t.short_hash(), link_target(&a.rel_path));
        }
        if grids.is_empty() {
            let why = if !t.status.is_success() {
                format!("the trial is {}", t.status)
            } else if t.config_display("sampler.kind").as_deref() == Some("none") {
                "`sampler.kind = \"none\"` draws no samples".to_string()
            } else {
                "its worker uploaded none".to_string()
            };
            let _ = writeln!(md, "No sample grid: {why}.\n");
        }
    }
}

fn out_of_sweep_section(md: &mut String, state: &State) {
    let _ = writeln!(md, "## Trials no longer in the sweep\n");
    let old: Vec<&Trial> = state.trials.iter().filter(|t| !t.in_sweep).collect();
    if old.is_empty() {
        let _ = writeln!(md, "None: every trial in the database belongs to the current sweep.\n");
        return;
    }
    let _ = writeln!(
        md,
        "These trials were in an earlier version of the sweep file. They stay in the tables \
         (`in_sweep = false`) but take no part in the claims.\n"
    );
    let _ = writeln!(md, "| hash | idx | status | scope | config |\n|---|---|---|---|---|");
    for t in old {
        let config: Vec<String> = t.config.iter().filter(|(k, _)| !k.starts_with("data.")).map(|(k, v)| format!("{k}={}", crate::state::display_value(v))).collect();
        let _ = writeln!(md, "| `{}` | {} | {} | {} | {} |", t.hash, t.idx, t.status, cell(&t.scope()), cell(&truncate(&config.join(", "), 300)));
    }
    md.push('\n');
}

/// Events listed in the workers section at most.
const MAX_EVENTS_LISTED: usize = 50;

/// Workers listed in the workers section at most.
const MAX_WORKERS_LISTED: usize = 50;

/// Which worker, on which device, produced the results (every row of `trials.csv` names its
/// own), and the local workers that died and were replaced (`coordinator run
/// --max-respawns`); nothing when no worker is known.
fn workers_section(md: &mut String, state: &State) {
    let respawns: Vec<_> = state.events.iter().filter(|e| e.kind == "respawn").collect();
    let mut by_worker: BTreeMap<&str, (usize, BTreeSet<&str>)> = BTreeMap::new();
    let mut by_device: BTreeMap<&str, usize> = BTreeMap::new();
    for r in state.in_sweep().filter_map(|t| t.result.as_ref()) {
        let device = if r.device.is_empty() { "unknown" } else { r.device.as_str() };
        let w = by_worker.entry(r.worker.as_str()).or_default();
        w.0 += 1;
        w.1.insert(device);
        *by_device.entry(device).or_default() += 1;
    }
    if respawns.is_empty() && state.workers.is_empty() && by_device.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Workers\n");
    if !by_device.is_empty() {
        let devices: Vec<String> = by_device.iter().map(|(d, n)| format!("{n} on {}", md_text(d))).collect();
        let _ = writeln!(md, "Results by device: {}. The `worker` and `device` columns of [`trials.csv`](trials.csv) say which produced each row.", devices.join(", "));
        if by_device.keys().any(|d| d.starts_with("cuda")) && by_device.len() > 1 {
            let _ = writeln!(md, "GPU results are not bit-identical run to run, nor to the CPU's; the claims pool rows of every device under the same tolerances.");
        }
        let _ = writeln!(md);
    }
    if !state.workers.is_empty() {
        let _ = writeln!(md, "| worker | device | cores | results |\n|---|---|---:|---:|");
        for w in state.workers.iter().take(MAX_WORKERS_LISTED) {
            let n = by_worker.get(w.name.as_str()).map_or(0, |(n, _)| *n);
            let _ = writeln!(md, "| {} | {} | {} | {n} |", md_text(&w.name), md_text(&w.device), w.cores);
        }
        if state.workers.len() > MAX_WORKERS_LISTED {
            let _ = writeln!(md, "\n… and {} more workers.", state.workers.len() - MAX_WORKERS_LISTED);
        }
        let _ = writeln!(md);
    }
    if !respawns.is_empty() {
        let _ = writeln!(md, "{} local worker(s) died before the sweep was over and were respawned:\n", respawns.len());
        for e in respawns.iter().take(MAX_EVENTS_LISTED) {
            let _ = writeln!(md, "- {}: {}", fmt_utc(e.at), e.detail);
        }
        if respawns.len() > MAX_EVENTS_LISTED {
            let _ = writeln!(md, "- … and {} more", respawns.len() - MAX_EVENTS_LISTED);
        }
        let _ = writeln!(md);
    }
}

fn failed_section(md: &mut String, state: &State) {
    let _ = writeln!(md, "## Failed trials\n");
    let failed: Vec<&Trial> = state.trials.iter().filter(|t| t.status.is_unusable()).collect();
    if failed.is_empty() {
        let _ = writeln!(md, "None.\n");
        return;
    }
    let _ = writeln!(md, "| hash | idx | in sweep | status | attempts | diverged at step | last error |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for t in failed {
        let error = t.last_error.as_ref().map_or("—".to_string(), |(outcome, e)| format!("{outcome}: {}", md_text(&truncate(e, 400))));
        let diverged = t.result.as_ref().and_then(|r| r.diverged_step).map_or("—".to_string(), |s| s.to_string());
        let _ = writeln!(md, "| `{}` | {} | {} | {} | {} | {} | {} |", t.hash, t.idx, if t.in_sweep { "yes" } else { "no" }, t.status, t.attempts, diverged, error);
    }
    md.push('\n');
}

/// Makes text of the sweep file (configs, claims) safe inside a Markdown table cell; text a
/// worker chose goes through [`md_text`] instead.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let head: String = s.chars().take(max_chars).collect();
        format!("{head}…")
    }
}

/// A unix time as a UTC date and time, e.g. "2023-11-14 22:13:20 UTC" (proleptic Gregorian;
/// days to civil date by Howard Hinnant's algorithm).
pub fn fmt_utc(unix: f64) -> String {
    if !unix.is_finite() {
        return "unknown".to_string();
    }
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::fmt_utc;

    #[test]
    fn unix_times_read_as_utc_dates() {
        for (t, want) in [
            (0.0, "1970-01-01 00:00:00 UTC"),
            (1_700_000_000.0, "2023-11-14 22:13:20 UTC"),
            (1_795_558_030.0, "2026-11-24 22:07:10 UTC"),
            (951_782_400.0, "2000-02-29 00:00:00 UTC"),
            (-1.0, "1969-12-31 23:59:59 UTC"),
            (f64::NAN, "unknown"),
        ] {
            assert_eq!(fmt_utc(t), want, "fmt_utc({t})");
        }
    }
}
