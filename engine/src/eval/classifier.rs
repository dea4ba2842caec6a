//! A small convolutional digit classifier, the judge of generated digits: its predictions
//! give per-class sample counts and accuracy of conditional samples, its penultimate features
//! feed the Fréchet distance ([`super::fid`]). Trained once per machine and data set and cached
//! ([`load_or_train`]), so every trial on a machine is judged by the same network.
//!
//! The net, on C×h×w images in [−1, 1] (C = `ClassifierConfig::in_channels`, 1 for digits;
//! channel-major per image, as the nets' images; h, w multiples of 4), NHWC inside:
//! conv3×3 (C→c₁, pad 1) → maxpool 2 → ReLU → conv3×3 (c₁→c₂, pad 1) → maxpool 2 → ReLU →
//! flatten → linear (→ hidden) → ReLU (the features) → linear (→ 10). Convolutions are im2col
//! with candle ops (nine shifted views of the padded input, concatenated, then one matmul), so
//! training and inference are gemm-bound: candle's CPU `conv2d` backward goes through a direct
//! `conv_transpose2d`, several times slower. Weights are drawn from the judge's own [`Rng`]
//! stream of its seed ([`Stream::JudgeInit`]) and batches are shuffled from another
//! ([`Stream::JudgeTrain`]), so training is deterministic given the seed and its draws never
//! coincide with a trial's (whose streams have other identifiers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use sha2::{Digest, Sha256};

use crate::rng::{Rng, Stream};

mod ops;

/// Number of classes (digits).
pub const CLASSES: usize = 10;

/// Version of the network and of its file layout: part of the cache key and of the file, so a
/// changed net never loads an old file.
const FORMAT: u32 = 2;

/// Images per forward pass at inference.
const INFER_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("failed to {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} is not a classifier file of format {FORMAT}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("invalid input: {0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ClassifierError>;

/// Training settings and layer widths; all of it is part of the cache key.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate of Adam, decayed by a cosine to 5% of it over the run.
    pub lr: f64,
    pub seed: u64,
    /// Output channels of the two convolutions.
    pub channels: [usize; 2],
    /// Width of the penultimate layer: the feature dimension.
    pub hidden: usize,
    /// Channels of the images (1: grayscale, 3: colour).
    pub in_channels: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig { epochs: 4, batch: 64, lr: 2e-3, seed: 0, channels: [16, 32], hidden: 128, in_channels: 1 }
    }
}

/// 3×3 convolution with padding 1 as im2col + matmul; `w` is (9·c_in, c_out), rows ordered
/// (dy, dx, c_in).
struct Conv {
    w: Tensor,
    b: Tensor,
}

impl Conv {
    /// (B, H, W, C_in) → (B, H, W, C_out).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, _) = x.dims4()?;
        let cols = if x.device().is_cpu() { x.contiguous()?.apply_op1(ops::Im2Col)? } else { im2col_candle(x)? };
        let c_out = self.w.dim(1)?;
        cols.matmul(&self.w)?.broadcast_add(&self.b)?.reshape((n, h, w, c_out))
    }
}

/// [`ops::Im2Col`] made of candle ops (any device, 10–20× slower on CPU).
fn im2col_candle(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let p = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut views = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            views.push(p.narrow(1, dy, h)?.narrow(2, dx, w)?);
        }
    }
    Tensor::cat(&views, 3)?.reshape((n * h * w, 9 * c))
}

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.w)?.broadcast_add(&self.b)
    }
}

/// 2×2 max pooling of (B, H, W, C) with even H, W.
fn pool(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() { x.contiguous()?.apply_op1(ops::MaxPool2) } else { pool_candle(x) }
}

/// [`ops::MaxPool2`] made of candle ops (any device).
fn pool_candle(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h / 2, 2, w / 2, 2, c))?.max(4)?.max(2)
}

/// Parameter names, in the order of [`Classifier::tensors`].
const NAMES: [&str; 8] = ["conv1.w", "conv1.b", "conv2.w", "conv2.b", "fc.w", "fc.b", "out.w", "out.b"];

/// A trained classifier of h×w images into [`CLASSES`] classes.
pub struct Classifier {
    c: usize,
    h: usize,
    w: usize,
    conv1: Conv,
    conv2: Conv,
    fc: Linear,
    out: Linear,
    device: Device,
}

/// Number of images in `pixels`, checking the sizes.
fn count(pixels: &[f32], c: usize, h: usize, w: usize) -> Result<usize> {
    if c == 0 || h == 0 || w == 0 || !pixels.len().is_multiple_of(c * h * w) {
        return Err(ClassifierError::Input(format!("{} values are not a whole number of {c}×{h}×{w} images", pixels.len())));
    }
    Ok(pixels.len() / (c * h * w))
}

/// The shapes of the parameters, in the order of [`NAMES`].
fn shapes(h: usize, w: usize, cfg: &ClassifierConfig) -> [Vec<usize>; 8] {
    let [c1, c2] = cfg.channels;
    let flat = (h / 4) * (w / 4) * c2;
    [vec![9 * cfg.in_channels, c1], vec![c1], vec![9 * c1, c2], vec![c2], vec![flat, cfg.hidden], vec![cfg.hidden], vec![cfg.hidden, CLASSES], vec![CLASSES]]
}

impl Classifier {
    fn from_tensors(h: usize, w: usize, t: [Tensor; 8], device: &Device) -> Self {
        let [w1, b1, w2, b2, wf, bf, wo, bo] = t;
        let c = w1.dims()[0] / 9;
        Classifier { c, h, w, conv1: Conv { w: w1, b: b1 }, conv2: Conv { w: w2, b: b2 }, fc: Linear { w: wf, b: bf }, out: Linear { w: wo, b: bo }, device: device.clone() }
    }

    fn tensors(&self) -> [&Tensor; 8] {
        [&self.conv1.w, &self.conv1.b, &self.conv2.w, &self.conv2.b, &self.fc.w, &self.fc.b, &self.out.w, &self.out.b]
    }

    /// Image height and width.
    pub fn image_size(&self) -> (usize, usize) {
        (self.h, self.w)
    }

    /// Image channels.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// Width of [`Classifier::features`].
    pub fn feature_dim(&self) -> usize {
        self.fc.w.dims()[1]
    }

    /// Trains on `labels.len()` images (`pixels`: n×C×h×w in [−1, 1], C = `cfg.in_channels`) with Adam on the cross
    /// entropy, `cfg.epochs` passes over shuffled batches.
    pub fn train(pixels: &[f32], labels: &[u8], h: usize, w: usize, cfg: &ClassifierConfig, device: &Device) -> Result<Classifier> {
        let n = count(pixels, cfg.in_channels, h, w)?;
        if n != labels.len() || n == 0 {
            return Err(ClassifierError::Input(format!("{n} images but {} labels", labels.len())));
        }
        if !h.is_multiple_of(4) || !w.is_multiple_of(4) {
            return Err(ClassifierError::Input(format!("image size {h}×{w} is not a multiple of 4 (two 2×2 poolings)")));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= CLASSES) {
            return Err(ClassifierError::Input(format!("label {l} is not below {CLASSES}")));
        }
        if cfg.batch == 0 || cfg.epochs == 0 {
            return Err(ClassifierError::Input("batch and epochs must be positive".into()));
        }
        // He-normal weights (the output layer: LeCun-normal), zero biases.
        let mut init = Rng::stream(cfg.seed, Stream::JudgeInit);
        let vars = shapes(h, w, cfg)
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let len: usize = shape.iter().product();
                let t = if i % 2 == 1 {
                    Tensor::zeros(shape.as_slice(), DType::F32, device)?
                } else {
                    let gain = if i == 6 { 1.0 } else { 2.0 };
                    let std = (gain / shape[0] as f64).sqrt();
                    let v: Vec<f32> = (0..len).map(|_| (init.normal() * std) as f32).collect();
                    Tensor::from_vec(v, shape.as_slice(), device)?
                };
                Var::from_tensor(&t)
            })
            .collect::<candle_core::Result<Vec<Var>>>()?;
        let params: [Tensor; 8] = std::array::from_fn(|i| vars[i].as_tensor().clone());
        let net = Classifier::from_tensors(h, w, params, device);
        let mut opt = AdamW::new(vars.clone(), ParamsAdamW { lr: cfg.lr, weight_decay: 0.0, ..Default::default() })?;

        let hw = cfg.in_channels * h * w;
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::stream(cfg.seed, Stream::JudgeTrain);
        let steps = cfg.epochs * n.div_ceil(cfg.batch);
        let mut step = 0;
        let mut xb = Vec::with_capacity(cfg.batch * hw);
        let mut yb = Vec::with_capacity(cfg.batch);
        for _ in 0..cfg.epochs {
            for i in (1..n).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for idx in order.chunks(cfg.batch) {
                let progress = step as f64 / steps as f64;
                opt.set_learning_rate(cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())));
                xb.clear();
                yb.clear();
                for &i in idx {
                    xb.extend_from_slice(&pixels[i * hw..(i + 1) * hw]);
                    yb.push(labels[i] as u32);
                }
                let x = Tensor::from_slice(&xb, (idx.len(), hw), device)?;
                let y = Tensor::from_slice(&yb, idx.len(), device)?;
                let loss = candle_nn::loss::cross_entropy(&net.logits(&x)?, &y)?;
                opt.backward_step(&loss)?;
                step += 1;
            }
        }
        // Detached copies for inference: no graph is recorded any more.
        let trained = net.tensors().map(|t| t.detach());
        Ok(Classifier::from_tensors(h, w, trained, device))
    }

    /// Penultimate features of a batch (B, C·h·w) → (B, hidden).
    fn features_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let x = if self.c == 1 { x.reshape((n, self.h, self.w, 1))? } else { x.reshape((n, self.c, self.h, self.w))?.permute((0, 2, 3, 1))?.contiguous()? };
        let x = pool(&self.conv1.forward(&x)?)?.relu()?;
        let x = pool(&self.conv2.forward(&x)?)?.relu()?;
        let x = x.reshape((n, ()))?;
        self.fc.forward(&x)?.relu()
    }

    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.out.forward(&self.features_t(x)?)
    }

    /// Runs `f` on batches of at most [`INFER_BATCH`] images and concatenates its rows.
    fn batched(&self, pixels: &[f32], f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Vec<f32>> {
        let hw = self.c * self.h * self.w;
        count(pixels, self.c, self.h, self.w)?;
        let mut out = Vec::new();
        for chunk in pixels.chunks(INFER_BATCH * hw) {
            let x = Tensor::from_slice(chunk, (chunk.len() / hw, hw), &self.device)?;
            out.extend(f(&x)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Penultimate features (after the ReLU), n×hidden row-major.
    pub fn features(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.batched(pixels, |x| self.features_t(x))
    }

    /// Class probabilities, n×[`CLASSES`] row-major.
    pub fn probs(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.batched(pixels, |x| candle_nn::ops::softmax_last_dim(&self.logits(x)?))
    }

    /// The most probable class of each image.
    pub fn predict(&self, pixels: &[f32]) -> Result<Vec<u8>> {
        let classes = self.batched(pixels, |x| self.logits(x)?.argmax(D::Minus1)?.to_dtype(DType::F32))?;
        Ok(classes.into_iter().map(|c| c as u8).collect())
    }

    /// Fraction of images whose prediction is their label.
    pub fn accuracy(&self, pixels: &[f32], labels: &[u8]) -> Result<f64> {
        let pred = self.predict(pixels)?;
        if pred.len() != labels.len() || pred.is_empty() {
            return Err(ClassifierError::Input(format!("{} images but {} labels", pred.len(), labels.len())));
        }
        Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64)
    }

    /// Writes the weights and the image size as safetensors, atomically: a temporary file in
    /// the same directory renamed over `path`, so a concurrent reader sees the old file or the
    /// new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (h, w) = (self.h as u32, self.w as u32);
        let mut map: HashMap<String, Tensor> = NAMES.iter().zip(self.tensors()).map(|(n, t)| (n.to_string(), t.clone())).collect();
        // [format, h, w] for grayscale (the files written before colour), [format, h, w, C] else.
        let meta: Vec<u32> = if self.c == 1 { vec![FORMAT, h, w] } else { vec![FORMAT, h, w, self.c as u32] };
        map.insert("meta".into(), Tensor::new(meta.as_slice(), &Device::Cpu)?);
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.{nonce}.tmp", std::process::id()));
        candle_core::safetensors::save(&map, &tmp).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            ClassifierError::Io { action: "rename a temporary file onto", path: path.to_path_buf(), source }
        })
    }

    /// Reads a file written by [`Classifier::save`], checking the format, names and shapes.
    pub fn load(path: &Path, device: &Device) -> Result<Classifier> {
        let bad = |reason: String| ClassifierError::Format { path: path.to_path_buf(), reason };
        let mut map = candle_core::safetensors::load(path, device).map_err(|e| bad(e.to_string()))?;
        let meta = map.remove("meta").ok_or_else(|| bad("no meta tensor".into()))?.to_vec1::<u32>().map_err(|e| bad(e.to_string()))?;
        let (format, h, w, c) = match meta[..] {
            [format, h, w] => (format, h, w, 1),
            [format, h, w, c] if c > 1 => (format, h, w, c as usize),
            _ => return Err(bad(format!("meta {meta:?}"))),
        };
        if format != FORMAT || h % 4 != 0 || w % 4 != 0 || h == 0 || w == 0 {
            return Err(bad(format!("format {format}, image size {h}×{w}")));
        }
        let mut take = |name: &str| map.remove(name).ok_or_else(|| bad(format!("no tensor {name}")));
        let t: [Tensor; 8] = [take(NAMES[0])?, take(NAMES[1])?, take(NAMES[2])?, take(NAMES[3])?, take(NAMES[4])?, take(NAMES[5])?, take(NAMES[6])?, take(NAMES[7])?];
        let c1 = t[0].dims().get(1).copied().unwrap_or(0);
        let c2 = t[2].dims().get(1).copied().unwrap_or(0);
        let hidden = t[4].dims().get(1).copied().unwrap_or(0);
        let cfg = ClassifierConfig { channels: [c1, c2], hidden, in_channels: c, ..Default::default() };
        for ((name, tensor), shape) in NAMES.iter().zip(&t).zip(shapes(h as usize, w as usize, &cfg)) {
            if tensor.dims() != shape.as_slice() || tensor.dtype() != DType::F32 {
                return Err(bad(format!("{name} is {:?} {:?}, expected F32 {shape:?}", tensor.dtype(), tensor.dims())));
            }
        }
        Ok(Classifier::from_tensors(h as usize, w as usize, t, device))
    }
}

/// The cache key of a classifier: sha256 of the format, image size, configuration, pixels and
/// labels (hex, 128 bits).
pub fn cache_key(pixels: &[f32], labels: &[u8], h: usize, w: usize, cfg: &ClassifierConfig) -> String {
    let mut hash = Sha256::new();
    hash.update(b"scoresweep digit classifier");
    for v in [
        FORMAT as u64,
        h as u64,
        w as u64,
        cfg.epochs as u64,
        cfg.batch as u64,
        cfg.lr.to_bits(),
        cfg.seed,
        cfg.channels[0] as u64,
        cfg.channels[1] as u64,
        cfg.hidden as u64,
        pixels.len() as u64,
    ] {
        hash.update(v.to_le_bytes());
    }
    // Grayscale keys stay those of the files written before colour.
    if cfg.in_channels != 1 {
        hash.update((cfg.in_channels as u64).to_le_bytes());
    }
    for chunk in pixels.chunks(4096) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
        hash.update(&bytes);
    }
    hash.update(labels);
    hash.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where classifiers are cached: `$SCORESWEEP_CACHE`, else `$XDG_CACHE_HOME/scoresweep`, else
/// `~/.cache/scoresweep` (the system temporary directory when there is no home).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SCORESWEEP_CACHE") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("scoresweep");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("scoresweep"),
        None => std::env::temp_dir().join("scoresweep"),
    }
}

/// The path under `cache_dir` of the classifier of this data and configuration.
pub fn cache_path(cache_dir: &Path, pixels: &[f32], labels: &[u8], h: usize, w: usize, cfg: &ClassifierConfig) -> PathBuf {
    cache_dir.join(format!("classifier-{}.safetensors", cache_key(pixels, labels, h, w, cfg)))
}

/// The classifier of this data and configuration from `cache_dir`, or trained and written
/// there (atomically) when missing. A file that does not load (truncated, corrupt, another
/// format) is retrained and replaced. Concurrent workers may both train; the last rename wins
/// and both files are the same network (training is deterministic).
pub fn load_or_train(cache_dir: &Path, pixels: &[f32], labels: &[u8], h: usize, w: usize, cfg: &ClassifierConfig, device: &Device) -> Result<Classifier> {
    let path = cache_path(cache_dir, pixels, labels, h, w, cfg);
    if path.is_file()
        && let Ok(c) = Classifier::load(&path, device)
        && c.image_size() == (h, w)
        && c.channels() == cfg.in_channels
        && c.feature_dim() == cfg.hidden
    {
        return Ok(c);
    }
    let c = Classifier::train(pixels, labels, h, w, cfg, device)?;
    std::fs::create_dir_all(cache_dir).map_err(|source| ClassifierError::Io { action: "create the cache directory", path: cache_dir.to_path_buf(), source })?;
    c.save(&path)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8×8 images: class c is a bright 2×2 block at one of ten places on a dark background,
    /// plus N(0, 0.3²) pixel noise.
    fn blocks(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = Rng::new(seed);
        let mut px = Vec::with_capacity(n * 64);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i % CLASSES) as u8;
            let (by, bx) = (2 * (c as usize / 4), 2 * (c as usize % 4));
            for y in 0..8 {
                for x in 0..8 {
                    let on = (by..by + 2).contains(&y) && (bx..bx + 2).contains(&x);
                    px.push(if on { 1.0 } else { -1.0 } + 0.3 * rng.normal() as f32);
                }
            }
            labels.push(c);
        }
        (px, labels)
    }

    fn small() -> ClassifierConfig {
        ClassifierConfig { epochs: 8, batch: 16, lr: 1e-2, seed: 11, channels: [4, 8], hidden: 16, in_channels: 1 }
    }

    /// A fresh directory under the system temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scoresweep-classifier-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The custom CPU kernels against the same steps made of candle ops: values and input
    /// gradients of Σ wᵢ·outᵢ for random weights. Both compute the same sums of the same f32
    /// products in possibly different order, so they agree to rounding (1e-5 absolute on
    /// values of order 1); pooling picks distinct maxima (continuous random input: no ties).
    #[test]
    fn kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        for (n, h, w, c) in [(1, 2, 2, 1), (2, 4, 6, 3), (3, 8, 8, 5)] {
            let xs: Vec<f32> = (0..n * h * w * c).map(|_| rng.normal() as f32).collect();
            let x = Var::from_tensor(&Tensor::from_vec(xs, (n, h, w, c), &dev).unwrap()).unwrap();
            type Op = fn(&Tensor) -> candle_core::Result<Tensor>;
            let pairs: [(&str, Op, Op); 2] = [("im2col", |x| x.apply_op1(ops::Im2Col), im2col_candle), ("pool", |x| x.apply_op1(ops::MaxPool2), pool_candle)];
            for (name, fast, reference) in pairs {
                let (yf, yr) = (fast(x.as_tensor()).unwrap(), reference(x.as_tensor()).unwrap());
                assert_eq!(yf.dims(), yr.dims(), "{name}");
                let weights = Tensor::from_vec((0..yf.elem_count()).map(|_| rng.normal() as f32).collect::<Vec<_>>(), yf.shape(), &dev).unwrap();
                let grad = |y: &Tensor| y.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let flat = |y: &Tensor| y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-5);
                assert!(close(&flat(&yf), &flat(&yr)), "{name} values, {n}×{h}×{w}×{c}");
                assert!(close(&grad(&yf), &grad(&yr)), "{name} gradients, {n}×{h}×{w}×{c}");
            }
        }
    }

    /// The synthetic classes are learnt (held-out accuracy 1 at this noise level: the block
    /// lifts 4 pixels by 2, twenty noise standard deviations in total), the same seed gives the
    /// same network bit for bit, another seed another one; outputs have the documented shapes.
    #[test]
    fn learns_deterministically() {
        let dev = Device::Cpu;
        let (x, y) = blocks(400, 1);
        let (xt, yt) = blocks(100, 2);
        let c = Classifier::train(&x, &y, 8, 8, &small(), &dev).unwrap();
        assert_eq!(c.accuracy(&xt, &yt).unwrap(), 1.0);
        let again = Classifier::train(&x, &y, 8, 8, &small(), &dev).unwrap();
        assert_eq!(c.probs(&xt).unwrap(), again.probs(&xt).unwrap());
        let other = Classifier::train(&x, &y, 8, 8, &ClassifierConfig { seed: 12, ..small() }, &dev).unwrap();
        assert_ne!(c.probs(&xt).unwrap(), other.probs(&xt).unwrap());

        let p = c.probs(&xt).unwrap();
        assert_eq!(p.len(), 100 * CLASSES);
        assert!(p.chunks(CLASSES).all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
        assert_eq!(c.features(&xt).unwrap().len(), 100 * 16);
        assert_eq!(c.feature_dim(), 16);
        assert_eq!(c.predict(&xt).unwrap(), yt);
        assert!(c.predict(&[]).unwrap().is_empty());
    }

    /// Colour: 3×8×8 images (channel-major) where class k is a bright 2×2 block at place k % 2
    /// in channel k / 2 only (the channels' sum, all a grayscale view keeps, is the same for
    /// classes 0, 2, 4 and for 1, 3, 5: at most 1/3 of them could be told apart without the
    /// channels). The classifier tells all six apart on fresh images, and a saved colour
    /// classifier loads back with its channel count and the same outputs.
    #[test]
    fn learns_colour() {
        let colour = |n: usize, seed: u64| {
            let mut rng = Rng::new(seed);
            let (mut px, mut labels) = (Vec::new(), Vec::new());
            for i in 0..n {
                let k = i % 6;
                let (by, bx) = if k % 2 == 0 { (1, 1) } else { (5, 5) };
                for ch in 0..3 {
                    for y in 0..8 {
                        for x in 0..8 {
                            let on = ch == k / 2 && (by..by + 2).contains(&y) && (bx..bx + 2).contains(&x);
                            px.push(if on { 1.0 } else { -1.0 } + 0.3 * rng.normal() as f32);
                        }
                    }
                }
                labels.push(k as u8);
            }
            (px, labels)
        };
        let dev = Device::Cpu;
        let cfg = ClassifierConfig { in_channels: 3, ..small() };
        let (x, y) = colour(360, 3);
        let (xt, yt) = colour(120, 4);
        let c = Classifier::train(&x, &y, 8, 8, &cfg, &dev).unwrap();
        assert_eq!(c.channels(), 3);
        assert_eq!(c.predict(&xt).unwrap(), yt);
        assert!(Classifier::train(&x[..100], &y, 8, 8, &cfg, &dev).is_err(), "a partial colour image is refused");
        let dir = scratch("colour");
        let path = cache_path(&dir, &x, &y, 8, 8, &cfg);
        assert_ne!(path, cache_path(&dir, &x, &y, 8, 8, &ClassifierConfig { in_channels: 1, ..cfg.clone() }));
        let trained = load_or_train(&dir, &x, &y, 8, 8, &cfg, &dev).unwrap();
        let loaded = Classifier::load(&path, &dev).unwrap();
        assert_eq!(loaded.channels(), 3);
        assert_eq!(loaded.probs(&xt).unwrap(), trained.probs(&xt).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Bad inputs, each with the message that names the problem.
    #[test]
    fn refuses_bad_input() {
        let dev = Device::Cpu;
        let (x, y) = blocks(10, 1);
        // (pixels, labels, h, w, message)
        type Case<'a> = (&'a [f32], &'a [u8], usize, usize, &'a str);
        let cases: [Case; 5] = [
            (&x[..63], &y[..1], 8, 8, "63 values are not a whole number of 1×8×8 images"),
            (&x, &y[..9], 8, 8, "10 images but 9 labels"),
            (&x[..64], &[10], 8, 8, "label 10 is not below 10"),
            (&x[..60], &y[..1], 6, 10, "image size 6×10 is not a multiple of 4"),
            (&[], &[], 8, 8, "0 images but 0 labels"),
        ];
        for (px, labels, h, w, msg) in cases {
            let err = Classifier::train(px, labels, h, w, &small(), &dev).err().expect(msg).to_string();
            assert!(err.contains(msg), "{err}");
        }
    }

    /// Save/load round trip; `load_or_train` trains and writes once, then reads the file back;
    /// a corrupt file is retrained and replaced; files of another net or garbage are refused by
    /// `load` with a format error; no temporary file is left behind.
    #[test]
    fn caches_on_disk() {
        let dev = Device::Cpu;
        let dir = scratch("cache");
        let (x, y) = blocks(200, 1);
        let cfg = small();
        let path = cache_path(&dir, &x, &y, 8, 8, &cfg);
        let c = load_or_train(&dir, &x, &y, 8, 8, &cfg, &dev).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cached = load_or_train(&dir, &x, &y, 8, 8, &cfg, &dev).unwrap();
        assert_eq!(c.probs(&x).unwrap(), cached.probs(&x).unwrap());
        assert_eq!(Classifier::load(&path, &dev).unwrap().probs(&x).unwrap(), c.probs(&x).unwrap());

        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = Classifier::load(&path, &dev).err().unwrap();
        assert!(matches!(err, ClassifierError::Format { .. }), "{err}");
        let retrained = load_or_train(&dir, &x, &y, 8, 8, &cfg, &dev).unwrap();
        assert_eq!(retrained.probs(&x).unwrap(), c.probs(&x).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        let garbage = dir.join("garbage.safetensors");
        std::fs::write(&garbage, b"not a safetensors file").unwrap();
        assert!(matches!(Classifier::load(&garbage, &dev), Err(ClassifierError::Format { .. })));
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("meta".into(), Tensor::new(&[FORMAT + 1, 8, 8], &dev).unwrap());
        candle_core::safetensors::save(&map, &garbage).unwrap();
        let err = Classifier::load(&garbage, &dev).err().unwrap().to_string();
        assert!(err.contains(&format!("format {}, image size 8×8", FORMAT + 1)), "{err}");

        // Other data or settings, other files.
        assert_ne!(cache_key(&x, &y, 8, 8, &cfg), cache_key(&x, &y, 8, 8, &ClassifierConfig { seed: 1, ..small() }));
        assert_ne!(cache_key(&x, &y, 8, 8, &cfg), cache_key(&x[64..], &y[1..], 8, 8, &cfg));
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cache_directory_precedence() {
        let tmp = std::env::temp_dir().join("scoresweep");
        let cases: [(&[(&str, &str)], PathBuf); 5] = [
            (&[("SCORESWEEP_CACHE", "/c"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")], "/c".into()),
            (&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")], "/x/scoresweep".into()),
            (&[("SCORESWEEP_CACHE", ""), ("HOME", "/h")], "/h/.cache/scoresweep".into()),
            (&[("HOME", "/h")], "/h/.cache/scoresweep".into()),
            (&[], tmp),
        ];
        for (vars, expect) in cases {
            let got = cache_dir_from(|k| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.into()));
            assert_eq!(got, expect, "{vars:?}");
        }
    }
}
