//! The split of an image set into a held-out part (every metric's reference, never trained
//! on), a judge part (the digit classifier's training images, never seen by the score model)
//! and the training part (the score model's), by a fixed permutation seeded per data set.
//!
//! IDX files are ordered (MNIST's test file: the cleaner writers first; the 70k set: the
//! training file first), so a tail is a different population. Here the split is **stratified
//! by class**: each class's images are shuffled by the [`Stream::Split`] stream of the data
//! set's seed ([`split_seed`]: a hash of the image count, size and labels, so the same files
//! give the same split on every machine and in every trial), and each part takes from every
//! class its largest-remainder share of the part's size ([`apportion`]), so the class
//! proportions of the held-out, judge and training parts match the set's to within one image
//! per class. Within a part, images are in a seeded random order, so any prefix (the
//! evaluation subset `eval.n`, the "which digit" images) is a uniform draw; `data.limit` takes a
//! stratified subset of the training part the same way.

use crate::rng::{Rng, Stream};

/// Image indices of the three parts and the seed of the permutation.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitIndices {
    pub seed: u32,
    pub held: Vec<usize>,
    pub judge: Vec<usize>,
    pub train: Vec<usize>,
}

/// The judge part's size when `data.judge` is not given: 10,000 images (a disjoint 10k) for a
/// set of at least 50,000 (the full 70k MNIST or Fashion-MNIST), else a fifth of the set (2,000
/// of the 10k test split, which leaves 6,000 to train on beside 2,000 held out).
pub fn default_judge(n: usize) -> usize {
    if n >= 50_000 { 10_000 } else { n / 5 }
}

/// The data set's split seed: FNV-1a (64 bits) of a tag, the image count, shape (C, H, W) and
/// every label, folded to 32 bits (so it is exact as a metric). The channel count enters only
/// when it is not 1, so grayscale sets keep the seeds they always had.
pub fn split_seed(n: usize, (c, h, w): (usize, usize, usize), labels: &[u8]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(b"scoresweep split v1");
    for v in [n as u64, h as u64, w as u64] {
        eat(&v.to_le_bytes());
    }
    if c != 1 {
        eat(b"channels");
        eat(&(c as u64).to_le_bytes());
    }
    eat(labels);
    (hash ^ (hash >> 32)) as u32
}

/// Largest-remainder apportionment of `k` among groups of sizes `counts` (k ≤ Σ counts): each
/// group gets ⌊k·c/N⌋, and the leftover units go to the largest fractional parts (ties: the
/// lower index). No group gets more than its size.
pub fn apportion(counts: &[usize], k: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return vec![0; counts.len()];
    }
    let k = k.min(total);
    let mut quota: Vec<usize> = counts.iter().map(|&c| (k as u128 * c as u128 / total as u128) as usize).collect();
    let left = k - quota.iter().sum::<usize>();
    // Remainders k·c mod N, compared exactly.
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse((k as u128 * counts[i] as u128) % total as u128), i));
    for &i in order.iter().take(left) {
        quota[i] += 1;
    }
    quota
}

/// Splits images with these labels: `held` held out, `judge` for the judge, the rest (at most
/// `limit` of it) to train on, stratified by class (see the module). Errors name the sizes.
pub fn stratified(labels: &[u8], held: usize, judge: usize, limit: Option<usize>, seed: u32) -> Result<SplitIndices, String> {
    let n = labels.len();
    if held == 0 {
        return Err("held_out must be at least 1".into());
    }
    if n <= held + judge {
        return Err(format!("{n} images: too few to hold out {held}, keep {judge} for the judge and train on the rest"));
    }
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = Rng::stream(seed as u64, Stream::Split);
    for list in &mut by_class {
        shuffle(list, &mut rng);
    }
    // Take each part's quota from the front of every class's remaining list.
    let mut take = |size: usize, rng: &mut Rng| -> Vec<usize> {
        let counts: Vec<usize> = by_class.iter().map(Vec::len).collect();
        let quota = apportion(&counts, size);
        let mut part: Vec<usize> = Vec::with_capacity(size);
        for (list, q) in by_class.iter_mut().zip(quota) {
            part.extend(list.drain(..q));
        }
        shuffle(&mut part, rng);
        part
    };
    let held_idx = take(held, &mut rng);
    let judge_idx = take(judge, &mut rng);
    let rest = n - held - judge;
    let train_idx = take(limit.map_or(rest, |l| l.min(rest)), &mut rng);
    Ok(SplitIndices { seed, held: held_idx, judge: judge_idx, train: train_idx })
}

/// Fisher–Yates.
fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// The RMS of pixel values, √(mean x²) accumulated in f64: σ_d of `sigma_data = "data"`
/// (EDM's coefficients assume data of second moment σ_d²). NaN for no pixels.
pub fn pixel_rms(pixels: &[f32]) -> f64 {
    (pixels.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / pixels.len() as f64).sqrt()
}

/// Images per class (0 to `classes` − 1) among `labels`.
pub fn class_counts(labels: &[u8], classes: usize) -> Vec<usize> {
    let mut c = vec![0; classes];
    for &l in labels {
        if (l as usize) < classes {
            c[l as usize] += 1;
        }
    }
    c
}

/// The split as metrics: `split_seed`, `split_judge_n`, and per class c the counts
/// `split_train_c`, `split_held_c`, `split_judge_c`.
pub fn split_metrics(seed: u32, classes: usize, train: &[u8], held: &[u8], judge: &[u8]) -> Vec<(String, f64)> {
    let mut m = vec![("split_seed".to_string(), seed as f64), ("split_judge_n".to_string(), judge.len() as f64)];
    for (part, labels) in [("train", train), ("held", held), ("judge", judge)] {
        for (c, k) in class_counts(labels, classes).into_iter().enumerate() {
            m.push((format!("split_{part}_{c}"), k as f64));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ordered set like MNIST's test file: class c has 100 + 30c images, all of one class
    /// before the next.
    fn ordered_labels() -> Vec<u8> {
        (0..10u8).flat_map(|c| std::iter::repeat_n(c, 100 + 30 * c as usize)).collect()
    }

    #[test]
    fn apportion_matches_brute_force() {
        // Brute force: among all quota vectors summing to k with q ≤ c, the largest-remainder
        // one minimises max |q − k·c/N| and is within one of every exact share.
        for (counts, k) in [(vec![3usize, 3, 4], 5usize), (vec![1, 1, 1], 2), (vec![10, 0, 7, 2], 9), (vec![5, 5], 10), (vec![980, 1135, 1032], 2000)] {
            let q = apportion(&counts, k);
            let total: usize = counts.iter().sum();
            assert_eq!(q.iter().sum::<usize>(), k.min(total));
            for (qi, ci) in q.iter().zip(&counts) {
                let exact = k as f64 * *ci as f64 / total as f64;
                assert!(*qi <= *ci && (*qi as f64 - exact).abs() < 1.0, "{counts:?} {k}: {q:?}");
            }
        }
        // Exact case from the definition: 5 of (3, 3, 4): shares 1.5, 1.5, 2 → floors 1, 1, 2,
        // one left for the first of the tied remainders.
        assert_eq!(apportion(&[3, 3, 4], 5), vec![2, 1, 2]);
    }

    #[test]
    fn stratified_parts_are_disjoint_and_proportional() {
        let labels = ordered_labels();
        let n = labels.len();
        let seed = split_seed(n, (1, 28, 28), &labels);
        let s = stratified(&labels, 400, 300, None, seed).unwrap();
        assert_eq!((s.held.len(), s.judge.len(), s.train.len()), (400, 300, n - 700));
        let mut all: Vec<usize> = s.held.iter().chain(&s.judge).chain(&s.train).copied().collect();
        all.sort();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "parts cover the set exactly once");
        let counts = class_counts(&labels, 10);
        for (part, size) in [(&s.held, 400usize), (&s.judge, 300)] {
            let got = class_counts(&part.iter().map(|&i| labels[i]).collect::<Vec<_>>(), 10);
            for c in 0..10 {
                let exact = size as f64 * counts[c] as f64 / n as f64;
                // Within one image of the share (the judge's share is of what the held-out part left,
                // itself within one per class of proportional: a hair more).
                assert!((got[c] as f64 - exact).abs() <= 1.5, "class {c}: {} vs {exact}", got[c]);
            }
        }
        // The held-out part is not the tail: its images span the whole file.
        let tail_share = s.held.iter().filter(|&&i| i >= n - 400).count();
        assert!(tail_share < 100, "{tail_share} of 400 held-out images from the last 400");
        // Same seed, same split; another seed, another one.
        assert_eq!(stratified(&labels, 400, 300, None, seed).unwrap(), s);
        assert_ne!(stratified(&labels, 400, 300, None, seed ^ 1).unwrap().held, s.held);
        // A limit takes a stratified subset of the training part.
        let l = stratified(&labels, 400, 300, Some(500), seed).unwrap();
        assert_eq!(l.held, s.held);
        assert_eq!(l.train.len(), 500);
        assert!(l.train.iter().all(|i| s.train.contains(i)));
        assert!(stratified(&labels, 1000, n - 1000, None, seed).is_err());
        assert!(stratified(&labels, 0, 10, None, seed).is_err());
    }

    #[test]
    fn held_order_is_a_uniform_draw() {
        // Any prefix of the held-out part is a random subset: the first 200 of 1,000 held-out
        // images of a two-class set (half each, ordered) hold 100 ± 4·√50 of class 0.
        let labels: Vec<u8> = (0..4000).map(|i| (i >= 2000) as u8).collect();
        let s = stratified(&labels, 1000, 0, None, 7).unwrap();
        let zeros = s.held[..200].iter().filter(|&&i| labels[i] == 0).count() as f64;
        assert!((zeros - 100.0).abs() < 4.0 * 50f64.sqrt(), "{zeros}");
    }

    #[test]
    fn seed_depends_on_the_data_set() {
        let labels = ordered_labels();
        let a = split_seed(labels.len(), (1, 28, 28), &labels);
        assert_eq!(a, split_seed(labels.len(), (1, 28, 28), &labels));
        let mut other = labels.clone();
        other.swap(0, labels.len() - 1);
        assert_ne!(a, split_seed(labels.len(), (1, 28, 28), &other));
        assert_ne!(a, split_seed(labels.len(), (1, 27, 28), &labels));
        assert_ne!(a, split_seed(labels.len(), (3, 28, 28), &labels));
        let m = split_metrics(a, 10, &[0, 1, 1], &[2], &[]);
        assert_eq!(m[0], ("split_seed".to_string(), a as f64));
        assert!(m.contains(&("split_train_1".to_string(), 2.0)) && m.contains(&("split_held_2".to_string(), 1.0)));
        assert_eq!(default_judge(10_000), 2_000);
        assert!((pixel_rms(&[3.0, -4.0]) - 12.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(default_judge(70_000), 10_000);
    }
}
