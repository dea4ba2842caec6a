//! Search spaces of a sweep file (`[search]`): configurations drawn from ranges and lists,
//! crossed with the `[grid]`/`[[zip]]` points and the seeds like any other axis.
//!
//! ```toml
//! [search]
//! kind = "random"          # "grid" (default) | "random" | "sobol" (scrambled, reproducible)
//! trials = 64              # configurations drawn (each × seeds); random and sobol only
//! seed = 0                 # the draw: same file, same configurations, same trial hashes
//! [search.space]
//! "train.lr"     = { log_uniform = [1e-4, 1e-2] }
//! "sampler.eps"  = { uniform = [0.01, 0.1] }
//! "model.hidden" = { choice = [32, 64, 128] }
//! "model.depth"  = { int_uniform = [1, 3] }
//! ```
//!
//! `random` draws every key independently (splitmix64 from `seed`); `sobol` takes the first
//! `trials` points of a Sobol sequence (Joe–Kuo direction numbers, at most [`MAX_SOBOL_DIMS`]
//! keys) scrambled by a random linear matrix scramble and digital shift drawn from `seed`
//! (Matoušek 1998): each one-dimensional projection of the first 2^k points still has exactly
//! one point in each interval [i/2^k, (i+1)/2^k). `grid` crosses every key's values (`choice`
//! lists and `int_uniform` ranges only). A unit coordinate u maps to a value as: uniform
//! lo + u(hi − lo), log_uniform exp(ln lo + u(ln hi − ln lo)), int_uniform lo + ⌊u(hi − lo + 1)⌋,
//! choice the ⌊u·n⌋-th item. Floats are rounded to 6 significant digits (readable labels,
//! the same hash on every machine).

use std::collections::BTreeMap;

/// Most keys a `sobol` space may have (the direction numbers below).
pub const MAX_SOBOL_DIMS: usize = 16;

/// How configurations are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grid,
    Random,
    Sobol,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grid => "grid",
            Kind::Random => "random",
            Kind::Sobol => "sobol",
        }
    }
}

/// The distribution of one searched key.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
    Choice(Vec<toml::Value>),
}

impl Dist {
    /// The value at unit coordinate `u` ∈ [0, 1).
    pub fn at(&self, u: f64) -> toml::Value {
        let u = u.clamp(0.0, 1.0);
        match self {
            Dist::Uniform(lo, hi) => toml::Value::Float(round6((lo + u * (hi - lo)).clamp(*lo, *hi))),
            Dist::LogUniform(lo, hi) => toml::Value::Float(round6((lo.ln() + u * (hi.ln() - lo.ln())).exp().clamp(*lo, *hi))),
            Dist::IntUniform(lo, hi) => {
                let n = (hi - lo + 1) as f64;
                toml::Value::Integer((lo + (u * n).floor() as i64).min(*hi))
            }
            Dist::Choice(items) => items[((u * items.len() as f64).floor() as usize).min(items.len() - 1)].clone(),
        }
    }

    /// Whether a plot of this key wants a log axis.
    pub fn is_log(&self) -> bool {
        matches!(self, Dist::LogUniform(..))
    }

    /// Every value, for a grid (None for a continuous range).
    fn values(&self) -> Option<Vec<toml::Value>> {
        match self {
            Dist::Choice(items) => Some(items.clone()),
            Dist::IntUniform(lo, hi) => Some((*lo..=*hi).map(toml::Value::Integer).collect()),
            _ => None,
        }
    }

    /// Its number of values on a grid.
    fn grid_len(&self) -> u128 {
        match self {
            Dist::Choice(items) => items.len() as u128,
            Dist::IntUniform(lo, hi) => (*hi as i128 - *lo as i128 + 1) as u128,
            _ => 1,
        }
    }
}

/// A parsed `[search]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    pub kind: Kind,
    pub trials: usize,
    pub seed: u64,
    /// Dotted trial key → its distribution (sorted by key).
    pub keys: Vec<(String, Dist)>,
}

/// A refusal: the key path (segments for `schema::locate::locate_path`) and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceError {
    pub segs: Vec<String>,
    pub message: String,
}

fn err(segs: &[&str], message: impl Into<String>) -> SpaceError {
    SpaceError { segs: segs.iter().map(|s| s.to_string()).collect(), message: message.into() }
}

/// Rounds to 6 significant digits.
fn round6(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    format!("{v:.5e}").parse().unwrap_or(v)
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// Parses a `[search]` table; every refusal names the key that is wrong.
pub fn parse(t: &toml::Table) -> Result<Space, SpaceError> {
    for k in t.keys() {
        if !["kind", "trials", "seed", "space"].contains(&k.as_str()) {
            return Err(err(&["search", k], format!("unknown key `{k}` (expected kind, trials, seed, space)")));
        }
    }
    let kind = match t.get("kind") {
        None => Kind::Grid,
        Some(toml::Value::String(s)) if s == "grid" => Kind::Grid,
        Some(toml::Value::String(s)) if s == "random" => Kind::Random,
        Some(toml::Value::String(s)) if s == "sobol" => Kind::Sobol,
        Some(other) => return Err(err(&["search", "kind"], format!("must be \"grid\", \"random\" or \"sobol\" (got {other})"))),
    };
    let trials = match (t.get("trials"), kind) {
        (None, Kind::Grid) => 0,
        (None, _) => return Err(err(&["search", "kind"], format!("a {} search needs `trials` (how many configurations to draw)", kind.as_str()))),
        (Some(_), Kind::Grid) => return Err(err(&["search", "trials"], "`trials` is for random and sobol searches; a grid search takes every combination")),
        (Some(toml::Value::Integer(n)), _) if *n >= 1 && *n <= crate::sweep::MAX_TRIALS as i64 => *n as usize,
        (Some(other), _) => return Err(err(&["search", "trials"], format!("must be an integer from 1 to {} (got {other})", crate::sweep::MAX_TRIALS))),
    };
    let seed = match t.get("seed") {
        None => 0,
        Some(toml::Value::Integer(n)) if *n >= 0 => *n as u64,
        Some(other) => return Err(err(&["search", "seed"], format!("must be a non-negative integer (got {other})"))),
    };
    let space = match t.get("space") {
        Some(toml::Value::Table(s)) if !s.is_empty() => s,
        Some(toml::Value::Table(_)) | None => return Err(err(&["search"], "[search.space] needs at least one key")),
        Some(other) => return Err(err(&["search", "space"], format!("must be a table of dotted keys (got {other})"))),
    };
    let mut keys = Vec::new();
    for (k, v) in space {
        keys.push((k.clone(), dist(k, v)?));
    }
    if kind == Kind::Grid
        && let Some((k, _)) = keys.iter().find(|(_, d)| d.values().is_none())
    {
        return Err(err(&["search", "space", k], "a grid search takes `choice` lists and `int_uniform` ranges only (use kind = \"random\" or \"sobol\" for a continuous range)"));
    }
    if kind == Kind::Sobol && keys.len() > MAX_SOBOL_DIMS {
        return Err(err(&["search", "space"], format!("a sobol search takes at most {MAX_SOBOL_DIMS} keys (got {})", keys.len())));
    }
    Ok(Space { kind, trials, seed, keys })
}

/// One key's distribution: an inline table with exactly one of uniform, log_uniform,
/// int_uniform, choice.
fn dist(key: &str, v: &toml::Value) -> Result<Dist, SpaceError> {
    let here = ["search", "space", key];
    let expected = "uniform = [lo, hi], log_uniform = [lo, hi], int_uniform = [lo, hi] or choice = [...]";
    let toml::Value::Table(t) = v else { return Err(err(&here, format!("must be a table: one of {expected} (got {v})"))) };
    if t.len() != 1 {
        return Err(err(&here, format!("give exactly one of {expected}")));
    }
    let (name, val) = t.iter().next().expect("one entry");
    let at = ["search", "space", key, name.as_str()];
    let list = val.as_array().ok_or_else(|| err(&at, format!("must be a list (got {val})")))?;
    let pair = || -> Result<(f64, f64), SpaceError> {
        match list.as_slice() {
            [a, b] => match (number(a), number(b)) {
                (Some(a), Some(b)) if a.is_finite() && b.is_finite() => Ok((a, b)),
                _ => Err(err(&at, "both bounds must be finite numbers")),
            },
            _ => Err(err(&at, format!("must be [lo, hi] (got {} items)", list.len()))),
        }
    };
    match name.as_str() {
        "uniform" => {
            let (lo, hi) = pair()?;
            if lo >= hi {
                return Err(err(&at, format!("the range [{lo}, {hi}] is empty or inverted (lo must be below hi)")));
            }
            Ok(Dist::Uniform(lo, hi))
        }
        "log_uniform" => {
            let (lo, hi) = pair()?;
            if lo <= 0.0 {
                return Err(err(&at, format!("the log of {lo} is undefined: a log_uniform range must be positive")));
            }
            if lo >= hi {
                return Err(err(&at, format!("the range [{lo}, {hi}] is empty or inverted (lo must be below hi)")));
            }
            Ok(Dist::LogUniform(lo, hi))
        }
        "int_uniform" => match list.as_slice() {
            [toml::Value::Integer(lo), toml::Value::Integer(hi)] => {
                if lo > hi {
                    return Err(err(&at, format!("the range [{lo}, {hi}] is inverted (lo must not be above hi)")));
                }
                if (*hi as i128 - *lo as i128) >= crate::sweep::MAX_TRIALS as i128 * 1000 {
                    return Err(err(&at, "the range is too wide"));
                }
                Ok(Dist::IntUniform(*lo, *hi))
            }
            _ => Err(err(&at, "must be [lo, hi] with integer bounds")),
        },
        "choice" => {
            if list.is_empty() {
                return Err(err(&at, "the list is empty"));
            }
            Ok(Dist::Choice(list.clone()))
        }
        other => Err(err(&at, format!("unknown distribution `{other}`: one of {expected}"))),
    }
}

impl Space {
    /// How many configurations the space gives (before the product with the grid and seeds).
    pub fn len(&self) -> u128 {
        match self.kind {
            Kind::Grid => self.keys.iter().fold(1u128, |p, (_, d)| p.saturating_mul(d.grid_len())),
            _ => self.trials as u128,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configurations, each as (key, value) in key order. Call after [`Space::len`] is
    /// known to be bounded.
    pub fn draw(&self) -> Vec<Vec<(String, toml::Value)>> {
        match self.kind {
            Kind::Grid => {
                let mut out: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
                for (k, d) in &self.keys {
                    let vals = d.values().unwrap_or_default();
                    out = out
                        .into_iter()
                        .flat_map(|p| {
                            vals.iter().map(move |v| {
                                let mut q = p.clone();
                                q.push((k.clone(), v.clone()));
                                q
                            })
                        })
                        .collect();
                }
                out
            }
            Kind::Random | Kind::Sobol => {
                let units = unit_points(self.kind, self.trials, self.keys.len(), self.seed);
                units.iter().map(|u| self.keys.iter().zip(u).map(|((k, d), &x)| (k.clone(), d.at(x))).collect()).collect()
            }
        }
    }
}

/// `n` points of dimension `dims` in [0, 1)^dims: independent uniform draws (`Random`) or a
/// scrambled Sobol sequence (`Sobol`), reproducible from `seed`.
pub fn unit_points(kind: Kind, n: usize, dims: usize, seed: u64) -> Vec<Vec<f64>> {
    match kind {
        Kind::Sobol => Sobol::new(dims, seed).take(n).collect(),
        _ => {
            let mut rng = SplitMix(seed ^ 0x5eed_5a5e_0000_0001);
            (0..n).map(|_| (0..dims).map(|_| rng.unit()).collect()).collect()
        }
    }
}

/// splitmix64 (Steele, Lea & Flood 2014): small, fast, and the same on every machine.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Joe & Kuo's (2008, new-joe-kuo-6.21201) primitive polynomials and initial direction numbers
/// for dimensions 2..=16, as (s, a, m_1..m_s); dimension 1 is van der Corput's.
const JOE_KUO: [(u32, u32, &[u32]); MAX_SOBOL_DIMS - 1] = [
    (1, 0, &[1]),
    (2, 1, &[1, 3]),
    (3, 1, &[1, 3, 1]),
    (3, 2, &[1, 1, 1]),
    (4, 1, &[1, 1, 3, 3]),
    (4, 4, &[1, 3, 5, 13]),
    (5, 2, &[1, 1, 5, 5, 17]),
    (5, 4, &[1, 1, 5, 5, 5]),
    (5, 7, &[1, 1, 7, 11, 19]),
    (5, 11, &[1, 1, 5, 1, 1]),
    (5, 13, &[1, 1, 1, 3, 11]),
    (5, 14, &[1, 3, 5, 5, 31]),
    (6, 1, &[1, 3, 3, 9, 7, 49]),
    (6, 13, &[1, 1, 1, 15, 21, 21]),
    (6, 16, &[1, 3, 1, 13, 27, 49]),
];

const BITS: usize = 32;

/// The Sobol sequence in Gray-code order with a linear matrix scramble and a digital shift per
/// dimension (seed 0 and `scramble = false` in [`Sobol::plain`] give the textbook points).
pub struct Sobol {
    /// Direction numbers per dimension, as 32-bit fractions.
    v: Vec<[u32; BITS]>,
    x: Vec<u32>,
    index: u64,
}

impl Sobol {
    /// Scrambled from `seed`.
    pub fn new(dims: usize, seed: u64) -> Sobol {
        Self::build(dims, Some(seed))
    }

    /// Unscrambled (the textbook sequence, starting at 0).
    pub fn plain(dims: usize) -> Sobol {
        Self::build(dims, None)
    }

    fn build(dims: usize, seed: Option<u64>) -> Sobol {
        assert!(dims <= MAX_SOBOL_DIMS, "at most {MAX_SOBOL_DIMS} Sobol dimensions");
        let mut v = Vec::with_capacity(dims);
        for d in 0..dims {
            let mut dir = [0u32; BITS];
            if d == 0 {
                for (k, slot) in dir.iter_mut().enumerate() {
                    *slot = 1u32 << (BITS - 1 - k);
                }
            } else {
                let (s, a, m) = JOE_KUO[d - 1];
                let s = s as usize;
                for k in 0..BITS {
                    dir[k] = if k < s {
                        m[k] << (BITS - 1 - k)
                    } else {
                        let mut x = dir[k - s] ^ (dir[k - s] >> s);
                        for j in 1..s {
                            if (a >> (s - 1 - j)) & 1 == 1 {
                                x ^= dir[k - j];
                            }
                        }
                        x
                    };
                }
            }
            v.push(dir);
        }
        let mut shift = vec![0u32; dims];
        if let Some(seed) = seed {
            let mut rng = SplitMix(seed ^ 0x50b0_1000_0000_0002);
            for (d, dir) in v.iter_mut().enumerate() {
                // A random lower-triangular binary matrix with a unit diagonal (row i: which
                // input bits, counted from the most significant, output bit i takes).
                let rows: Vec<u32> = (0..BITS).map(|i| ((rng.next_u64() as u32) & mask_above(i)) | (1u32 << (BITS - 1 - i))).collect();
                for col in dir.iter_mut() {
                    let mut out = 0u32;
                    for (i, row) in rows.iter().enumerate() {
                        if (row & *col).count_ones() % 2 == 1 {
                            out |= 1u32 << (BITS - 1 - i);
                        }
                    }
                    *col = out;
                }
                shift[d] = rng.next_u64() as u32;
            }
        }
        Sobol { x: shift, v, index: 0 }
    }
}

/// Bits 0..=i counted from the most significant (those row i may take).
fn mask_above(i: usize) -> u32 {
    if i + 1 >= BITS { u32::MAX } else { !(u32::MAX >> (i + 1)) }
}

impl Iterator for Sobol {
    type Item = Vec<f64>;
    fn next(&mut self) -> Option<Vec<f64>> {
        let out: Vec<f64> = self.x.iter().map(|&x| x as f64 / (1u64 << BITS) as f64).collect();
        // Gray code: the next point flips the direction number of the lowest zero bit.
        let c = (!self.index).trailing_zeros() as usize;
        if c >= BITS {
            return None;
        }
        for (x, dir) in self.x.iter_mut().zip(&self.v) {
            *x ^= dir[c];
        }
        self.index += 1;
        Some(out)
    }
}

/// The searched keys and their distributions, by key (for reports: log axes).
pub fn log_keys(space: &Space) -> BTreeMap<String, bool> {
    space.keys.iter().map(|(k, d)| (k.clone(), d.is_log())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sobol_matches_the_textbook_points() {
        let pts: Vec<Vec<f64>> = Sobol::plain(3).take(8).collect();
        let d0: Vec<f64> = pts.iter().map(|p| p[0]).collect();
        let d1: Vec<f64> = pts.iter().map(|p| p[1]).collect();
        let d2: Vec<f64> = pts.iter().map(|p| p[2]).collect();
        // Gray-code order (Bratley & Fox / Joe & Kuo's reference points, reordered).
        assert_eq!(d0, [0.0, 0.5, 0.75, 0.25, 0.375, 0.875, 0.625, 0.125]);
        assert_eq!(d1, [0.0, 0.5, 0.25, 0.75, 0.375, 0.875, 0.125, 0.625]);
        assert_eq!(d2, [0.0, 0.5, 0.25, 0.75, 0.625, 0.125, 0.875, 0.375]);
    }

    /// Every one-dimensional projection of the first 2^k points (scrambled or not) has one
    /// point in each interval of width 2^-k.
    #[test]
    fn sobol_projections_are_stratified() {
        for seed in [None, Some(0), Some(7)] {
            for k in [4u32, 7] {
                let n = 1usize << k;
                let pts: Vec<Vec<f64>> = Sobol::build(MAX_SOBOL_DIMS, seed).take(n).collect();
                for d in 0..MAX_SOBOL_DIMS {
                    let mut cells: Vec<usize> = pts.iter().map(|p| (p[d] * n as f64) as usize).collect();
                    cells.sort();
                    assert_eq!(cells, (0..n).collect::<Vec<_>>(), "seed {seed:?}, dim {d}, 2^{k} points");
                }
            }
        }
        // The scramble changes the points; the seed fixes them.
        let a: Vec<Vec<f64>> = Sobol::new(4, 1).take(16).collect();
        let b: Vec<Vec<f64>> = Sobol::new(4, 1).take(16).collect();
        let c: Vec<Vec<f64>> = Sobol::new(4, 2).take(16).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, Sobol::plain(4).take(16).collect::<Vec<_>>());
    }

    #[test]
    fn values_map_from_the_unit_interval() {
        assert_eq!(Dist::Uniform(1.0, 3.0).at(0.25), toml::Value::Float(1.5));
        assert_eq!(Dist::LogUniform(1e-4, 1e-2).at(0.5), toml::Value::Float(1e-3));
        let ints: Vec<toml::Value> = [0.0, 0.33, 0.34, 0.99].iter().map(|&u| Dist::IntUniform(1, 3).at(u)).collect();
        assert_eq!(ints, [1, 1, 2, 3].map(toml::Value::Integer));
        assert_eq!(Dist::Choice(vec![toml::Value::Integer(32), toml::Value::Integer(64)]).at(0.7), toml::Value::Integer(64));
        assert_eq!(round6(0.0012345678), 0.00123457);
    }
}
