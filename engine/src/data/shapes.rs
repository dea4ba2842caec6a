//! `shapes3`: a generated colour image set, made by this code (no files): 16×16 RGB images of
//! one coloured shape each on a black background, six classes — filled square, disc,
//! triangle, cross, horizontal bar, vertical bar — with a random size, position and colour
//! from a seeded [`Rng`], so the same seed gives the same bytes on every machine. Pixels are
//! bytes as the IDX sets' (0 = background), channel-major per image, so the image trials'
//! scaling, split and nets take it as they take the digits. Its classes are not digits: the
//! digit judge's metrics are skipped ([`ImageSet::digit_judge`] is false).

use super::idx::ImageSet;
use crate::rng::Rng;

/// The `shapes3` preset: images, side, seed.
pub const SHAPES3_N: usize = 6000;
pub const SHAPES3_SIDE: usize = 16;
pub const SHAPES3_SEED: u64 = 0x5348_4150_4533;

/// The classes, in label order.
pub const CLASSES: [&str; 6] = ["square", "disc", "triangle", "cross", "hbar", "vbar"];

/// The `shapes3` preset's set: [`generate`]`(SHAPES3_N, SHAPES3_SIDE, SHAPES3_SEED)`.
pub fn shapes3() -> ImageSet {
    generate(SHAPES3_N, SHAPES3_SIDE, SHAPES3_SEED)
}

/// Whether the point (u, v) of the unit box (0 top-left) lies in shape `class`.
fn inside(class: usize, u: f64, v: f64) -> bool {
    let (du, dv) = ((u - 0.5).abs(), (v - 0.5).abs());
    match class {
        0 => true,
        1 => du * du + dv * dv <= 0.25,
        2 => du <= v / 2.0,
        3 => du <= 0.17 || dv <= 0.17,
        4 => dv <= 0.2,
        _ => du <= 0.2,
    }
}

/// `n` images of side × side × 3 (side ≥ 8), labels cycling through the six classes (so every
/// class has ⌊n/6⌋ or one more). Per image, from `Rng::new(seed)` in this order: the box's
/// side s uniform in [side/3, 2·side/3], its top-left corner uniform where the box fits, and
/// the colour: three channel levels uniform in [40, 255], the brightest raised to at least 160.
pub fn generate(n: usize, side: usize, seed: u64) -> ImageSet {
    let (c, h, w) = (3, side, side);
    let d = c * h * w;
    let mut rng = Rng::new(seed);
    let mut pixels = vec![0u8; n * d];
    let mut labels = Vec::with_capacity(n);
    let (lo, hi) = (side / 3, 2 * side / 3);
    for (i, img) in pixels.chunks_exact_mut(d).enumerate() {
        let class = i % CLASSES.len();
        labels.push(class as u8);
        let s = lo + rng.below(hi - lo + 1);
        let (x0, y0) = (rng.below(w - s + 1), rng.below(h - s + 1));
        let mut colour: [u8; 3] = std::array::from_fn(|_| 40 + rng.below(216) as u8);
        let top = (0..3).max_by_key(|&k| colour[k]).unwrap_or(0);
        colour[top] = colour[top].max(160);
        for y in 0..s {
            for x in 0..s {
                let (u, v) = ((x as f64 + 0.5) / s as f64, (y as f64 + 0.5) / s as f64);
                if inside(class, u, v) {
                    for (k, &level) in colour.iter().enumerate() {
                        img[k * h * w + (y0 + y) * w + x0 + x] = level;
                    }
                }
            }
        }
    }
    ImageSet { n, c, h, w, pixels, labels, files: Vec::new(), digit_judge: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed gives the same bytes, another seed others; six classes in equal numbers,
    /// every image a shape of one colour on black (its lit pixels share one RGB triple), and
    /// each class's mean lit area in the order its geometry implies (the square fills its box;
    /// a bar is about 0.4 of it).
    #[test]
    fn shapes3_is_deterministic_and_has_six_classes() {
        let a = generate(600, 16, 7);
        assert_eq!(a, generate(600, 16, 7));
        assert_ne!(a.pixels, generate(600, 16, 8).pixels);
        assert_eq!((a.n, a.c, a.h, a.w, a.dim(), a.classes()), (600, 3, 16, 16, 768, 6));
        assert_eq!(a.pixels.len(), 600 * 768);
        assert!(!a.digit_judge);
        let mut area = [0.0f64; 6];
        for c in 0..6u8 {
            assert_eq!(a.labels.iter().filter(|&&l| l == c).count(), 100);
        }
        for (img, &l) in a.pixels.chunks(768).zip(&a.labels) {
            let lit: Vec<[u8; 3]> = (0..256).map(|p| [img[p], img[256 + p], img[512 + p]]).filter(|rgb| rgb.iter().any(|&v| v > 0)).collect();
            assert!(!lit.is_empty(), "class {l}: an empty image");
            assert!(lit.iter().all(|rgb| *rgb == lit[0]), "class {l}: one colour per shape");
            assert!(lit[0].iter().all(|&v| v >= 40) && lit[0].iter().any(|&v| v >= 160));
            area[l as usize] += lit.len() as f64 / 100.0;
        }
        // Square > disc > cross > triangle, bars alike.
        assert!(area[0] > area[1] && area[1] > area[3] && area[3] > area[2], "{area:?}");
        assert!((area[4] - area[5]).abs() < 0.1 * area[4], "{area:?}");
        let full = shapes3();
        assert_eq!((full.n, full.c, full.h, full.w), (SHAPES3_N, 3, SHAPES3_SIDE, SHAPES3_SIDE));
        assert_eq!(full.pixels[..768 * 10], generate(10, 16, SHAPES3_SEED).pixels[..]);
    }
}
