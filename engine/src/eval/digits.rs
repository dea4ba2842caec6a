//! The digit metrics of an image trial, after sampling (called by `images::run`):
//!
//! - **the judge** ([`super::classifier`], cached per machine and data): trained on the split's
//!   `judge` part, images the score model never trains on (`judge_disjoint` = 1; with
//!   `data.judge = 0` on the training part instead, `judge_disjoint` = 0), from its own random
//!   streams; `judge_n` images, `judge_epochs` passes. Its held-out `classifier_accuracy` and,
//!   for class-conditional samples, `class_match` (the fraction it reads as the requested
//!   digit), each with a Wilson 95% interval;
//! - **FID at equal n** in the judge's features against the held-out evaluation images, next
//!   to the floor: as many training images drawn uniformly from the training part, against the
//!   same reference; bootstrap standard errors and the ratio's 95% interval
//!   ([`super::fid_bootstrap`]). When there are more samples than training images, a uniform
//!   subset of the samples enters;
//! - **memorisation** ([`super::memorisation`]);
//! - **which digit** by the score model itself ([`super::by_denoising`]), Wilson interval.
//!
//! Only sets whose classes the judge is for ([`Split::digit_judge`]: the IDX sets) get them;
//! every image trial gets [`memorisation`] and the sample grid [`sample_grid`] (`samples.png`,
//! one row per class, gray or RGB by the channel count).
//!
//! Draws: the FID's subsets from the trial seed's [`Stream::FidDraw`], its bootstrap from
//! [`Stream::Bootstrap`], the "which digit" noise from [`Stream::Metrics`].

use candle_core::{Device, Tensor};
use schema::trial::Trial;

use super::classifier::{self, ClassifierConfig};
use super::interval::proportion_metrics;
use super::{by_denoising, fid_bootstrap, memorisation, png};
use crate::error::EngineError;
use crate::images::guided::BufferDenoiser;
use crate::images::{ImageNet, Split, tensor};
use crate::rng::{Rng, Stream};

/// σ levels and draws per level of the "which digit" test (antithetic noise pairs).
pub const WHICH_SIGMAS: [f32; 3] = [0.2, 0.5, 1.0];
const WHICH_PER_SIGMA: usize = 2;
/// Held-out images the "which digit" test classifies (10 conditional passes per draw each).
pub const WHICH_IMAGES: usize = 1000;
/// Held-out images whose nearest-training distances make the memorisation reference.
pub const MEMORISATION_REFERENCE: usize = 2000;
/// Images per forward pass of candle's networks.
const CHUNK: usize = 500;

/// The judge's training settings for `n` images: the default network and batch, with enough
/// passes for at least about 500 steps (4 passes over 8,000 or more images; 16 over the 2,000
/// of the test split's judge part).
pub fn judge_config(n: usize) -> ClassifierConfig {
    let base = ClassifierConfig::default();
    let epochs = (32_000 / n.max(1)).clamp(base.epochs, 40);
    ClassifierConfig { epochs, ..base }
}

/// The judge's part of the split: (images on [−1, 1], labels, disjoint from training).
fn judge_part(split: &Split, to_sym: &dyn Fn(&[f32]) -> Vec<f32>) -> (Vec<f32>, Vec<u8>, bool) {
    if split.judge_labels.is_empty() {
        (to_sym(&split.to_floats(&split.train_pixels)), split.train_labels.clone(), false)
    } else {
        (to_sym(&split.to_floats(&split.judge_pixels)), split.judge_labels.clone(), true)
    }
}

/// `k` distinct indices below `n`, uniformly (a partial Fisher–Yates), in draw order.
fn choose(n: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        idx.swap(i, i + rng.below(n - i));
    }
    idx.truncate(k.min(n));
    idx
}

fn rows(x: &[f32], idx: &[usize], d: usize) -> Vec<f32> {
    idx.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect()
}

/// The digit metrics (see the module): `held` are the held-out evaluation images on the
/// trial's pixel scale with `held_labels`, `samples` one image each with their requested
/// `labels`.
#[allow(clippy::too_many_arguments)]
pub fn digit_metrics(
    cfg: &Trial,
    split: &Split,
    net: &dyn ImageNet,
    mut fast_forward: Option<&mut dyn BufferDenoiser>,
    held: &[f32],
    held_labels: &[u32],
    samples: &[Vec<f32>],
    labels: &[u32],
    dev: &Device,
) -> Result<Vec<(String, f64)>, EngineError> {
    let (h, w, d) = (split.h, split.w, split.dim());
    let shape = split.shape();
    // The classifier works on [−1, 1] pixels.
    let to_sym = |v: &[f32]| -> Vec<f32> { to_symmetric(split, v) };
    let train = to_sym(&split.to_floats(&split.train_pixels));
    let held_sym = to_sym(held);
    let held_u8: Vec<u8> = held_labels.iter().map(|&l| l as u8).collect();
    let cls_err = |e: classifier::ClassifierError| EngineError::Metric(e.to_string());
    let (judge_x, judge_y, disjoint) = judge_part(split, &to_sym);
    let jcfg = ClassifierConfig { in_channels: split.c, ..judge_config(judge_y.len()) };
    let clf = classifier::load_or_train(&classifier::default_cache_dir(), &judge_x, &judge_y, h, w, &jcfg, &Device::Cpu).map_err(cls_err)?;
    let mut m: Vec<(String, f64)> =
        vec![("judge_n".into(), judge_y.len() as f64), ("judge_disjoint".into(), if disjoint { 1.0 } else { 0.0 }), ("judge_epochs".into(), jcfg.epochs as f64)];
    let accuracy = clf.accuracy(&held_sym, &held_u8).map_err(cls_err)?;
    m.extend(proportion_metrics("classifier_accuracy", (accuracy * held_u8.len() as f64).round() as usize, held_u8.len()));
    let held_feat = clf.features(&held_sym).map_err(cls_err)?;
    let fd = clf.feature_dim();

    if !samples.is_empty() {
        let flat: Vec<f32> = to_sym(&samples.iter().flatten().copied().collect::<Vec<f32>>()).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let pred = clf.predict(&flat).map_err(cls_err)?;
        if cfg.model.class_cond() {
            let hit = pred.iter().zip(labels).filter(|(p, l)| **p as u32 == **l).count();
            m.extend(proportion_metrics("class_match", hit, pred.len()));
        }
        // FID at equal n: k samples (all of them unless the training part is smaller) and k
        // training images drawn uniformly, against the same held-out reference.
        let mut frng = Rng::stream(cfg.seed, Stream::FidDraw);
        let k = samples.len().min(split.n_train());
        let pick = if k < samples.len() { choose(samples.len(), k, &mut frng) } else { (0..k).collect() };
        let real = rows(&train, &choose(split.n_train(), k, &mut frng), d);
        let feat = clf.features(&rows(&flat, &pick, d)).map_err(cls_err)?;
        let real_feat = clf.features(&real).map_err(cls_err)?;
        let est = fid_bootstrap::fid_with_floor(&feat, &real_feat, &held_feat, fd, fid_bootstrap::BOOTSTRAP_REPS, &mut Rng::stream(cfg.seed, Stream::Bootstrap));
        m.extend(est.metrics());
        // Memorisation: nearest training images of the samples and of held-out images.
        m.extend(memorisation_of(&flat, &held_sym, &train, d));
    }

    if cfg.model.class_cond() {
        let n = held_labels.len().min(WHICH_IMAGES);
        // The test sees an image as its C·H·W values: C·H rows of W (H×W for grayscale).
        let draws = by_denoising::draws(&WHICH_SIGMAS, WHICH_PER_SIGMA, split.c * h, w, &mut Rng::stream(cfg.seed, Stream::Metrics));
        let score = |x: &[f32], sig: &[f32], lab: &[u8]| -> candle_core::Result<Vec<f32>> {
            if let Some(fwd) = fast_forward.as_deref_mut() {
                let labels: Vec<u32> = lab.iter().map(|&l| l as u32).collect();
                let mut out = vec![0.0f32; x.len()];
                fwd.denoise(x, sig, &labels, &mut out);
                for (i, &s) in sig.iter().enumerate() {
                    for (o, &xv) in out[i * d..(i + 1) * d].iter_mut().zip(&x[i * d..(i + 1) * d]) {
                        *o = (*o - xv) / (s * s);
                    }
                }
                return Ok(out);
            }
            let mut out = Vec::with_capacity(x.len());
            for start in (0..lab.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(lab.len());
                let xt = tensor(&x[start * d..end * d], shape, dev)?;
                let st = Tensor::from_slice(&sig[start..end], end - start, dev)?;
                let lt = Tensor::from_vec(lab[start..end].iter().map(|&l| l as u32).collect::<Vec<u32>>(), end - start, dev)?;
                let den = net.denoise(&xt, &st, Some(&lt))?.detach();
                let sc = (den - &xt)?.broadcast_div(&st.sqr()?.reshape((end - start, 1, 1, 1))?)?;
                out.extend(sc.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(out)
        };
        let pred = by_denoising::classify_by_denoising(10, &held[..n * d], split.c * h, w, &draws, score)?;
        let hit = pred.iter().zip(held_labels).filter(|(p, l)| **p as u32 == **l).count();
        m.extend(proportion_metrics("which_digit_accuracy", hit, n));
    }
    Ok(m)
}

/// Pixels on the trial's scale mapped to [−1, 1] (the judge's and the grid's scale).
fn to_symmetric(split: &Split, v: &[f32]) -> Vec<f32> {
    if split.symmetric { v.to_vec() } else { v.iter().map(|x| 2.0 * x - 1.0).collect() }
}

/// Memorisation of `samples` (clamped to [−1, 1]) against the training images `train`, with
/// up to [`MEMORISATION_REFERENCE`] of the held-out images `held` as the reference (all on
/// [−1, 1], `d` values per image).
fn memorisation_of(samples: &[f32], held: &[f32], train: &[f32], d: usize) -> Vec<(String, f64)> {
    let n_ref = (held.len() / d.max(1)).min(MEMORISATION_REFERENCE);
    memorisation::memorisation_metrics(samples, &held[..n_ref * d], train, d)
}

/// The memorisation metrics ([`super::memorisation`]) of an image trial's samples, for any
/// image set: `held` are the held-out evaluation images on the trial's pixel scale; nothing
/// without samples.
pub fn memorisation(split: &Split, held: &[f32], samples: &[Vec<f32>]) -> Vec<(String, f64)> {
    if samples.is_empty() {
        return Vec::new();
    }
    let flat: Vec<f32> = to_symmetric(split, &samples.iter().flatten().copied().collect::<Vec<f32>>()).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let train = to_symmetric(split, &split.to_floats(&split.train_pixels));
    memorisation_of(&flat, &to_symmetric(split, held), &train, split.dim())
}

/// `samples.png`: up to 10 samples of each class, one row per class in class order (the first
/// 100 in order for an unconditional model), 10 per row, gray for 1 channel and RGB for 3
/// (None without samples or for another channel count).
pub fn sample_grid(split: &Split, class_cond: bool, samples: &[Vec<f32>], labels: &[u32]) -> Option<(String, &'static str, Vec<u8>)> {
    let (c, h, w) = split.shape();
    if samples.is_empty() || !matches!(c, 1 | 3) {
        return None;
    }
    let mut pick: Vec<f32> = Vec::new();
    let mut count = 0;
    if class_cond {
        for class in 0..split.classes as u32 {
            for (s, _) in samples.iter().zip(labels).filter(|(_, l)| **l == class).take(10) {
                pick.extend(to_symmetric(split, s));
                count += 1;
            }
        }
    } else {
        for s in samples.iter().take(100) {
            pick.extend(to_symmetric(split, s));
            count += 1;
        }
    }
    let (levels, gw, gh) = png::grid_channels(&pick, count, c, h, w, 10, 2);
    Some(("samples.png".into(), "image/png", png::encode(&levels, c, gw, gh)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_is_uniform_and_distinct() {
        // Each of 10 indices is among 3 chosen with probability 0.3: counts over 20,000 draws
        // within 4 SE of 6,000.
        let mut rng = Rng::new(2);
        let mut hits = [0usize; 10];
        for _ in 0..20_000 {
            let c = choose(10, 3, &mut rng);
            let mut s = c.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3);
            for i in c {
                hits[i] += 1;
            }
        }
        let se = (20_000.0f64 * 0.3 * 0.7).sqrt();
        assert!(hits.iter().all(|&h| (h as f64 - 6000.0).abs() < 4.0 * se), "{hits:?}");
        assert_eq!(judge_config(2000).epochs, 16);
        assert_eq!(judge_config(10_000).epochs, 4);
    }
}
