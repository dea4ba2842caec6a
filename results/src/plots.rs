//! SVG plots of a sweep (plotters' SVG backend: text is left to the viewer, so no system font
//! is needed): the ESM−ISM gap per checkpoint with C as a horizontal line, samples against
//! the data for a few 2D trials, and a sample-quality metric against σ_max.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::ResultsError;
use crate::state::{State, Trial};

/// At most this many 2D trials get a scatter plot.
const MAX_SCATTER: usize = 4;
/// At most this many points per cloud in a scatter plot (the first ones; samples are i.i.d.).
const MAX_POINTS: usize = 2000;
/// Legends with more entries than this are left out (the lines are still drawn).
const MAX_LEGEND: usize = 12;

/// A plot that was written: a title for the report and its path relative to the output dir.
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    pub rel_path: String,
}

type DrawResult = Result<bool, Box<dyn std::error::Error>>;

/// Writes every plot the data allows into `out_dir/plots/` and returns them in report order.
pub fn write_plots(state: &State, out_dir: &Path) -> Result<Vec<Plot>, ResultsError> {
    let dir = out_dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|source| ResultsError::Io { path: dir.clone(), source })?;
    let mut by_scope: BTreeMap<String, Vec<&Trial>> = BTreeMap::new();
    for t in state.in_sweep() {
        by_scope.entry(t.scope()).or_default().push(t);
    }
    let mut names = FileNames::default();
    let mut plots = Vec::new();
    for (scope, trials) in &by_scope {
        let file = names.unique(&format!("gap_vs_checkpoint_{}", slug(scope)));
        if draw_or_skip(&dir, &file, |p| gap_vs_checkpoint(p, scope, trials))? {
            plots.push(Plot { title: format!("ESM − ISM gap per checkpoint, {scope}"), rel_path: rel(&file) });
        }
    }
    for t in scatter_trials(state) {
        let file = names.unique(&format!("samples_{}", t.short_hash()));
        if draw_or_skip(&dir, &file, |p| scatter(p, t))? {
            plots.push(Plot { title: format!("samples vs data, trial {} ({})", t.short_hash(), describe(t)), rel_path: rel(&file) });
        }
    }
    for (scope, trials) in &by_scope {
        let Some(metric) = ["fd", "mode_weight_err"].into_iter().find(|m| trials.iter().any(|t| t.metric(m).is_some() && sigma_max(t).is_some())) else {
            continue;
        };
        let file = names.unique(&format!("{metric}_vs_sigma_max_{}", slug(scope)));
        if draw_or_skip(&dir, &file, |p| metric_vs_sigma(p, scope, metric, trials))? {
            plots.push(Plot { title: format!("{metric} vs σ_max, {scope}"), rel_path: rel(&file) });
        }
    }
    adaptive_plots(state, &dir, &mut names, &mut plots)?;
    Ok(plots)
}

/// The metric the adaptive plots show: the early-stopping rule's, else the first of a few
/// quality metrics the trials carry.
pub fn adaptive_metric(state: &State) -> Option<String> {
    if let Some((_, m, _)) = &state.adaptive.early_stop {
        return Some(m.clone());
    }
    ["l_esm", "eval_loss", "fd"].into_iter().find(|m| state.in_sweep().any(|t| t.metric(m).is_some())).map(String::from)
}

/// Plots of searched keys and of early stopping: the rule's metric per checkpoint for pruned
/// and surviving trials; the metric against each searched key (log axis where the space is
/// log); a parallel-coordinates plot of the searched keys coloured by the metric.
fn adaptive_plots(state: &State, dir: &Path, names: &mut FileNames, plots: &mut Vec<Plot>) -> Result<(), ResultsError> {
    let Some(metric) = adaptive_metric(state) else { return Ok(()) };
    let trials: Vec<&Trial> = state.in_sweep().collect();
    if state.adaptive.early_stop.is_some() {
        let file = names.unique(&format!("{metric}_per_checkpoint_pruned_vs_surviving"));
        if draw_or_skip(dir, &file, |p| pruned_vs_surviving(p, &metric, &trials))? {
            plots.push(Plot { title: format!("{metric} per checkpoint: pruned (grey) vs surviving trials"), rel_path: rel(&file) });
        }
    }
    for (key, log) in &state.adaptive.search {
        let file = names.unique(&format!("{metric}_vs_{}", slug(key)));
        if draw_or_skip(dir, &file, |p| metric_vs_key(p, &metric, key, *log, &trials))? {
            plots.push(Plot { title: format!("{metric} vs `{key}`{}", if *log { " (log axis)" } else { "" }), rel_path: rel(&file) });
        }
    }
    if state.adaptive.search.len() >= 2 {
        let file = names.unique(&format!("parallel_coordinates_{metric}"));
        if draw_or_skip(dir, &file, |p| parallel_coordinates(p, &metric, &state.adaptive.search, &trials))? {
            plots.push(Plot { title: format!("searched keys, one line per finished trial, coloured by {metric} (blue: best)"), rel_path: rel(&file) });
        }
    }
    Ok(())
}

/// A config value as a number on its axis (log10 for log keys); None when not a positive
/// number on a log axis or not a number at all.
fn axis_value(t: &Trial, key: &str, log: bool) -> Option<f64> {
    let v = t.config.get(key)?.as_f64()?;
    if log { (v > 0.0).then(|| v.log10()) } else { v.is_finite().then_some(v) }
}

fn pruned_vs_surviving(path: &Path, metric: &str, trials: &[&Trial]) -> DrawResult {
    let lines: Vec<(bool, Vec<(f64, f64)>)> = trials
        .iter()
        .filter(|t| t.status.has_checkpoints())
        .map(|t| {
            let pts: Vec<(f64, f64)> = t.curve.iter().filter_map(|r| Some((*r.get("step")?, r.get(metric).copied().filter(|v| v.is_finite())?))).collect();
            (t.status == schema::Status::Pruned, pts)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let all = || lines.iter().flat_map(|(_, p)| p.iter().copied());
    let (Some((x0, x1)), Some((y0, y1))) = (padded(all().map(|p| p.0)), padded(all().map(|p| p.1))) else { return Ok(false) };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{metric} per checkpoint"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc("training step").y_desc(metric).draw()?;
    let grey = RGBColor(150, 150, 150).mix(0.7);
    let blue = RGBColor(30, 90, 200);
    let (mut pruned_label, mut kept_label) = (false, false);
    for (pruned, pts) in &lines {
        let style = if *pruned { grey.stroke_width(1) } else { blue.stroke_width(2) };
        let series = chart.draw_series(LineSeries::new(pts.iter().copied(), style))?;
        if *pruned && !pruned_label {
            pruned_label = true;
            series.label(format!("pruned ({})", lines.iter().filter(|l| l.0).count())).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
        } else if !*pruned && !kept_label {
            kept_label = true;
            series
                .label(format!("ran to the end ({})", lines.iter().filter(|l| !l.0).count()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(true)
}

fn metric_vs_key(path: &Path, metric: &str, key: &str, log: bool, trials: &[&Trial]) -> DrawResult {
    // Finished trials with their final value; pruned ones (hollow) with their last checkpoint's.
    let pts: Vec<(bool, f64, f64)> = trials.iter().filter_map(|t| Some((t.status == schema::Status::Pruned, axis_value(t, key, log)?, t.metric(metric)?))).collect();
    let (Some((x0, x1)), Some((y0, y1))) = (padded(pts.iter().map(|p| p.1)), padded(pts.iter().map(|p| p.2))) else { return Ok(false) };
    let root = SVGBackend::new(path, (700, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{metric} vs {key}"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let fmt = move |v: &f64| if log { crate::claims::fmt_num(10f64.powf(*v)) } else { crate::claims::fmt_num(*v) };
    chart.configure_mesh().x_desc(if log { format!("{key} (log scale)") } else { key.to_string() }).y_desc(metric).x_label_formatter(&fmt).draw()?;
    let blue = RGBColor(30, 90, 200);
    let grey = RGBColor(130, 130, 130);
    chart
        .draw_series(pts.iter().filter(|p| !p.0).map(|p| Circle::new((p.1, p.2), 4, blue.filled())))?
        .label("final value")
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, blue.filled()));
    chart
        .draw_series(pts.iter().filter(|p| p.0).map(|p| Circle::new((p.1, p.2), 4, grey.stroke_width(1))))?
        .label("pruned: last checkpoint")
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, grey.stroke_width(1)));
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(true)
}

fn parallel_coordinates(path: &Path, metric: &str, keys: &[(String, bool)], trials: &[&Trial]) -> DrawResult {
    // Each key's axis spans its values among the finished trials (log10 for log keys).
    let finished: Vec<(&Trial, f64)> = trials.iter().filter(|t| t.status.is_success()).filter_map(|t| Some((*t, t.metric(metric)?))).collect();
    let spans: Vec<Option<(f64, f64)>> = keys
        .iter()
        .map(|(k, log)| {
            let vs: Vec<f64> = finished.iter().filter_map(|(t, _)| axis_value(t, k, *log)).collect();
            let (lo, hi) = vs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            (lo <= hi).then_some((lo, hi))
        })
        .collect();
    let (m0, m1) = finished.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, m)| (lo.min(*m), hi.max(*m)));
    if finished.is_empty() || spans.iter().all(Option::is_none) {
        return Ok(false);
    }
    let n = keys.len();
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("searched keys coloured by {metric} ({} = blue … {} = red)", crate::claims::fmt_num(m0), crate::claims::fmt_num(m1)), ("sans-serif", 16))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(40)
        .build_cartesian_2d(-0.2..(n as f64 - 0.8), -0.05..1.05)?;
    let labels: Vec<String> = keys.iter().map(|(k, log)| if *log { format!("{k} (log)") } else { k.clone() }).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| labels.get(v.round().max(0.0) as usize).filter(|_| (v - v.round()).abs() < 1e-6).cloned().unwrap_or_default())
        .y_desc("position on each key's range (min … max)")
        .draw()?;
    for i in 0..n {
        chart.draw_series(LineSeries::new(vec![(i as f64, 0.0), (i as f64, 1.0)], BLACK.stroke_width(1)))?;
    }
    // Worst first, so the best lines are drawn on top.
    let mut order = finished.clone();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (t, m) in order {
        let f = if m1 > m0 { (m - m0) / (m1 - m0) } else { 0.0 };
        let color = RGBColor((40.0 + 200.0 * f) as u8, 60, (240.0 - 200.0 * f) as u8);
        let pts: Vec<(f64, f64)> = keys
            .iter()
            .zip(&spans)
            .enumerate()
            .filter_map(|(i, ((k, log), span))| {
                let (lo, hi) = (*span)?;
                let v = axis_value(t, k, *log)?;
                Some((i as f64, if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }))
            })
            .collect();
        chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
    }
    root.present()?;
    Ok(true)
}

fn rel(file: &str) -> String {
    format!("plots/{file}")
}

/// Runs `draw` on `dir/file`; `Ok(false)` when it had nothing to draw (no file is left).
fn draw_or_skip(dir: &Path, file: &str, draw: impl FnOnce(&Path) -> DrawResult) -> Result<bool, ResultsError> {
    let path: PathBuf = dir.join(file);
    match draw(&path) {
        Ok(drawn) => Ok(drawn),
        Err(e) => Err(ResultsError::Plot { path, message: e.to_string() }),
    }
}

/// File names made unique within one output directory.
#[derive(Default)]
struct FileNames(Vec<String>);

impl FileNames {
    fn unique(&mut self, stem: &str) -> String {
        let mut name = format!("{stem}.svg");
        let mut n = 2;
        while self.0.contains(&name) {
            name = format!("{stem}_{n}.svg");
            n += 1;
        }
        self.0.push(name.clone());
        name
    }
}

/// A file-name-safe form of a scope (`data.preset=ncsn2d` → `data.preset-ncsn2d`).
pub fn slug(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' }).collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').chars().take(80).collect()
}

fn sigma_max(t: &Trial) -> Option<f64> {
    t.config.get("objective.noise.sigma_max").and_then(|v| v.as_f64()).filter(|s| *s > 0.0)
}

/// A short description of the knobs that distinguish trials in a legend.
fn describe(t: &Trial) -> String {
    ["objective.kind", "sampler.kind", "model.kind", "seed"]
        .iter()
        .filter_map(|k| t.config_display(k).map(|v| format!("{}={v}", k.split('.').next().unwrap_or(k))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// (min, max) padded by 5% (or ±0.5 when flat) so points are not drawn on the frame.
fn padded(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5f64.max(0.05 * lo.abs()) };
    Some((lo - pad, hi + pad))
}

fn gap_vs_checkpoint(path: &Path, scope: &str, trials: &[&Trial]) -> DrawResult {
    let lines: Vec<(&Trial, Vec<(f64, f64)>)> = trials
        .iter()
        .map(|t| {
            let pts = t
                .curve
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let gap = r.get("gap").copied().filter(|g| g.is_finite())?;
                    Some((r.get("step").copied().unwrap_or(i as f64), gap))
                })
                .collect();
            (*t, pts)
        })
        .filter(|(_, pts): &(_, Vec<_>)| !pts.is_empty())
        .collect();
    let cs: Vec<f64> = trials.iter().flat_map(|t| t.curve.iter().filter_map(|r| r.get("c_true").copied()).chain(t.metric("c_true"))).filter(|c| c.is_finite()).collect();
    if lines.is_empty() {
        return Ok(false);
    }
    let c = (!cs.is_empty()).then(|| cs.iter().sum::<f64>() / cs.len() as f64);
    let all = || lines.iter().flat_map(|(_, p)| p.iter().copied());
    let (x0, x1) = padded(all().map(|p| p.0)).expect("lines are not empty");
    let (y0, y1) = padded(all().map(|p| p.1).chain(c)).expect("lines are not empty");

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("ESM − ISM gap per checkpoint ({scope})"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc("training step").y_desc("L_ESM − L_ISM").draw()?;
    let legend = lines.len() <= MAX_LEGEND;
    for (i, (t, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        let series = chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?;
        if legend {
            series.label(format!("{} {}", t.short_hash(), describe(t))).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    if let Some(c) = c {
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, c), (x1, c)], 8, 5, BLACK.stroke_width(2)))?
            .label(format!("C = E‖∇log p‖² = {}", crate::claims::fmt_num(c)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(true)
}

/// Up to [`MAX_SCATTER`] 2D in-sweep trials with samples, preferring distinct
/// (scope, sampler, objective) combinations so the plots show different things.
fn scatter_trials(state: &State) -> Vec<&Trial> {
    let candidates: Vec<&Trial> = state.in_sweep().filter(|t| t.samples.as_ref().is_some_and(|s| s.dim == 2 && !s.samples.is_empty())).collect();
    let key = |t: &Trial| (t.scope(), t.config_display("sampler.kind"), t.config_display("objective.kind"));
    let mut seen = Vec::new();
    let mut picked: Vec<&Trial> = Vec::new();
    for t in &candidates {
        let k = key(t);
        if !seen.contains(&k) && picked.len() < MAX_SCATTER {
            seen.push(k);
            picked.push(t);
        }
    }
    for t in &candidates {
        if picked.len() >= MAX_SCATTER {
            break;
        }
        if !picked.iter().any(|p| p.hash == t.hash) {
            picked.push(t);
        }
    }
    picked.sort_by_key(|t| t.idx);
    picked
}

fn scatter(path: &Path, t: &Trial) -> DrawResult {
    let Some(s) = &t.samples else {
        return Ok(false);
    };
    let xy = |pts: &[Vec<f64>]| -> Vec<(f64, f64)> { pts.iter().filter(|p| p.len() >= 2 && p[0].is_finite() && p[1].is_finite()).take(MAX_POINTS).map(|p| (p[0], p[1])).collect() };
    let (samples, data) = (xy(&s.samples), xy(&s.data));
    // Axes follow the data (plus a margin) so a few runaway samples do not squash the plot.
    let frame = if data.is_empty() { &samples } else { &data };
    let (Some((x0, x1)), Some((y0, y1))) = (padded(frame.iter().map(|p| p.0)), padded(frame.iter().map(|p| p.1))) else {
        return Ok(false);
    };
    let (wx, wy) = (x1 - x0, y1 - y0);
    let (x0, x1, y0, y1) = (x0 - 0.25 * wx, x1 + 0.25 * wx, y0 - 0.25 * wy, y1 + 0.25 * wy);
    let inside = |p: &&(f64, f64)| p.0 >= x0 && p.0 <= x1 && p.1 >= y0 && p.1 <= y1;

    let root = SVGBackend::new(path, (620, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("samples vs data: {} {}", t.short_hash(), describe(t)), ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc("x0").y_desc("x1").draw()?;
    let grey = RGBColor(120, 120, 120).mix(0.5);
    chart
        .draw_series(data.iter().filter(inside).map(|p| Circle::new(*p, 2, grey.filled())))?
        .label(format!("data ({})", data.len()))
        .legend(move |(x, y)| Circle::new((x + 10, y), 3, grey.filled()));
    let red = RED.mix(0.6);
    let outside = samples.len() - samples.iter().filter(inside).count();
    chart
        .draw_series(samples.iter().filter(inside).map(|p| Circle::new(*p, 2, red.filled())))?
        .label(format!("samples ({}, {outside} outside the frame)", samples.len()))
        .legend(move |(x, y)| Circle::new((x + 10, y), 3, red.filled()));
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(true)
}

fn metric_vs_sigma(path: &Path, scope: &str, metric: &str, trials: &[&Trial]) -> DrawResult {
    // One series per (objective, sampler): points per trial, a line through the per-σ means.
    let mut groups: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for t in trials {
        let (Some(s), Some(m)) = (sigma_max(t), t.metric(metric)) else {
            continue;
        };
        let label = ["objective.kind", "sampler.kind"].iter().filter_map(|k| t.config_display(k)).collect::<Vec<_>>().join(" + ");
        groups.entry(label).or_default().entry(s.to_bits()).or_default().push(m);
    }
    let points = || groups.values().flat_map(|by_sigma| by_sigma.iter().flat_map(|(bits, ms)| ms.iter().map(move |m| (f64::from_bits(*bits).log10(), *m))));
    let (Some((x0, x1)), Some((y0, y1))) = (padded(points().map(|p| p.0)), padded(points().map(|p| p.1))) else {
        return Ok(false);
    };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{metric} vs σ_max ({scope})"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc("objective.noise.sigma_max (log scale)").y_desc(metric).x_label_formatter(&|v| crate::claims::fmt_num(10f64.powf(*v))).draw()?;
    let legend = groups.len() <= MAX_LEGEND;
    for (i, (label, by_sigma)) in groups.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let means: Vec<(f64, f64)> = by_sigma.iter().map(|(bits, ms)| (f64::from_bits(*bits).log10(), ms.iter().sum::<f64>() / ms.len() as f64)).collect();
        chart.draw_series(by_sigma.iter().flat_map(|(bits, ms)| ms.iter().map(move |m| Circle::new((f64::from_bits(*bits).log10(), *m), 4, color.filled()))))?;
        let series = chart.draw_series(LineSeries::new(means, color.stroke_width(2)))?;
        if legend {
            let label = if label.is_empty() { "trials".to_string() } else { label.clone() };
            series.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_are_file_names() {
        for (scope, want) in [("data.preset=ncsn2d", "data.preset-ncsn2d"), ("data.dim=16, data.preset=gmm", "data.dim-16-data.preset-gmm"), ("all", "all")] {
            assert_eq!(slug(scope), want);
        }
    }
}
