//! The digit metrics on real data: MNIST's test split (10,000 digits, gzip IDX) read by a tiny
//! reader of its own (the engine's loader is elsewhere), a classifier trained on the first
//! 8,000 digits and judged on the last 2,000, the Fréchet distance in its feature space between
//! real subsets versus real against noise, and a PNG grid of real digits. Timings are printed
//! (`--nocapture`).
//!
//! The data: the repository's `data/mnist/` (or `$SCORESWEEP_MNIST`).

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use engine::eval::classifier::{self, ClassifierConfig};
use engine::eval::{fid, png};
use engine::rng::Rng;

fn mnist_dir() -> PathBuf {
    std::env::var_os("SCORESWEEP_MNIST").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/mnist"), PathBuf::from)
}

/// The payload and dimensions of a gzip IDX file whose magic is `magic`.
fn read_idx(path: &PathBuf, magic: u32) -> (Vec<usize>, Vec<u8>) {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    assert_eq!(word(0), magic, "{}: magic", path.display());
    let dims: Vec<usize> = (1..=(magic & 0xff) as usize).map(|i| word(i) as usize).collect();
    let start = 4 * (1 + dims.len());
    assert_eq!(bytes.len() - start, dims.iter().product::<usize>(), "{}: payload size", path.display());
    (dims, bytes[start..].to_vec())
}

/// Images in [−1, 1] (n×28×28) and labels.
fn mnist_test() -> (Vec<f32>, Vec<u8>) {
    let dir = mnist_dir();
    let (dims, px) = read_idx(&dir.join("t10k-images-idx3-ubyte.gz"), 0x0000_0803);
    assert_eq!(dims, [10_000, 28, 28]);
    let (ldims, labels) = read_idx(&dir.join("t10k-labels-idx1-ubyte.gz"), 0x0000_0801);
    assert_eq!(ldims, [10_000]);
    (px.iter().map(|&p| p as f32 / 127.5 - 1.0).collect(), labels)
}

/// Trains on the first 8,000 digits (through `load_or_train`, in a fresh cache directory, so
/// the second call reads the file back), then: held-out accuracy on the last 2,000 ≥ 0.97;
/// FID between the held-out digits and 2,000 other real ones of the same writers is small,
/// larger against other writers, and some 200× larger against uniform noise images (measured
/// 5, 31 and 1,000: 2,000 points in 128 dimensions leave a plug-in bias of a few units); a
/// 10×10 grid of real digits (one row per class) encodes to a PNG of the expected size. About
/// 15 s on 2 idle cores, most of it training.
#[test]
fn classifier_and_fid_on_mnist() {
    let (x, y) = mnist_test();
    let (h, w) = (28, 28);
    let hw = h * w;
    let n_train = 8000;
    let dev = Device::Cpu;
    let cfg = ClassifierConfig::default();
    let cache = std::env::temp_dir().join(format!("scoresweep-digits-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);

    let t = Instant::now();
    let c = classifier::load_or_train(&cache, &x[..n_train * hw], &y[..n_train], h, w, &cfg, &dev).unwrap();
    let train_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cached = classifier::load_or_train(&cache, &x[..n_train * hw], &y[..n_train], h, w, &cfg, &dev).unwrap();
    let cached_s = t.elapsed().as_secs_f64();

    let (held_out, held_labels) = (&x[n_train * hw..], &y[n_train..]);
    let acc = c.accuracy(held_out, held_labels).unwrap();
    assert_eq!(cached.predict(held_out).unwrap(), c.predict(held_out).unwrap(), "the cached classifier differs");
    let t = Instant::now();
    let pred = c.predict(&x).unwrap();
    let predict_s = t.elapsed().as_secs_f64();
    assert_eq!(pred.len(), 10_000);
    let t = Instant::now();
    let feats = c.features(&x).unwrap();
    let features_s = t.elapsed().as_secs_f64();
    let dim = c.feature_dim();
    assert_eq!(feats.len(), 10_000 * dim);

    // Uniform noise images in [−1, 1], as many as the held-out set.
    let mut rng = Rng::new(7);
    let noise: Vec<f32> = (0..2000 * hw).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let noise_feats = c.features(&noise).unwrap();
    // MNIST's test split is two populations: "the first 5000 are cleaner and easier than the
    // last 5000" (its documentation). The held-out digits (the last 2,000) against 2,000 others
    // of their population, against 2,000 of the other one, and against noise.
    let held_feats = &feats[n_train * dim..];
    let t = Instant::now();
    let fid_real = fid::frechet_distance(held_feats, &feats[6000 * dim..8000 * dim], dim);
    let fid_s = t.elapsed().as_secs_f64();
    let fid_other = fid::frechet_distance(held_feats, &feats[..2000 * dim], dim);
    let fid_noise = fid::frechet_distance(held_feats, &noise_feats, dim);

    // One row per class: the first ten digits of each.
    let mut rows = Vec::with_capacity(100 * hw);
    for digit in 0..10u8 {
        for i in y.iter().enumerate().filter(|(_, l)| **l == digit).map(|(i, _)| i).take(10) {
            rows.extend_from_slice(&x[i * hw..(i + 1) * hw]);
        }
    }
    let (gray, gw, gh) = png::grid(&rows, 100, h, w, 10, 2);
    assert_eq!((gw, gh), (302, 302));
    let file = cache.join("real-digits.png");
    png::write_gray(&file, &gray, gw, gh).unwrap();
    let png_bytes = std::fs::metadata(&file).unwrap().len();
    std::fs::remove_dir_all(&cache).unwrap();

    eprintln!(
        "{cfg:?}\n  train {train_s:.1} s (8,000 digits), cached load {cached_s:.2} s, held-out accuracy {acc:.4}\n  predict 10k {predict_s:.2} s, features 10k {features_s:.2} s (dim {dim})\n  FID real/real {fid_real:.2} ({fid_s:.3} s), other writers {fid_other:.2}, noise {fid_noise:.1}; grid PNG {png_bytes} bytes"
    );
    assert!(acc >= 0.97, "held-out accuracy {acc}");
    assert!(fid_real < fid_other && 10.0 * fid_other < fid_noise && 50.0 * fid_real < fid_noise, "FID real/real {fid_real}, other writers {fid_other}, noise {fid_noise}");
}
