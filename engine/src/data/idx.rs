//! IDX image sets (MNIST, Fashion-MNIST): a reader for the format (gzip or raw, by its magic
//! bytes) and a loader over a directory holding any of the four standard files
//! (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`, each optionally `.gz`). Present splits are concatenated, training
//! split first, so the last images are the test split's: a held-out tail taken from the end is
//! never trained on. When the directory has an `MD5SUMS` file, every file it lists that is
//! used is checked before anything is parsed. Every error names the file.
//!
//! MNIST's test split (the repository's `data/mnist/`, 1.7 MB) is also compiled into the
//! binary: [`load_embedded_mnist`] is the `mnist` preset's default, so trials, tests and sweeps
//! need no file outside the checkout and a worker on another machine needs no copy.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The standard file stems, (images, labels) per split, in load order.
pub const SPLITS: [(&str, &str); 2] = [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")];

/// Largest file accepted after decompression (the 60k MNIST training images are 47 MB).
const MAX_BYTES: u64 = 1 << 31;

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{}: no IDX image file (expected any of train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz])", dir.display())]
    Empty { dir: PathBuf },
    #[error("{}: {message}", path.display())]
    Missing { path: PathBuf, message: String },
    #[error("failed to read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: corrupt IDX file: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{}: MD5 checksum mismatch: expected {expected}, got {got} (listed in {})", path.display(), sums.display())]
    Checksum { path: PathBuf, sums: PathBuf, expected: String, got: String },
}

/// One IDX array: its dimensions and its unsigned-byte payload.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Labelled images of shape (C, H, W): bytes 0..=255 (0 = background), each image
/// channel-major (C planes of H rows of W), as the nets take them. IDX sets are grayscale
/// (C = 1); a generated set ([`super::shapes`]) may be colour.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub n: usize,
    /// Channels per image (1: grayscale, 3: RGB).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    /// The files read, in order (empty for a generated set).
    pub files: Vec<PathBuf>,
    /// Whether the digit judge's metrics apply (`eval::digits`: a classifier of ten classes of
    /// grayscale images trained on the judge part): true for the IDX sets, false for a set
    /// whose classes are not the judge's to tell apart.
    pub digit_judge: bool,
}

impl ImageSet {
    /// Bytes per image: C·H·W.
    pub fn dim(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The image shape (C, H, W).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.c, self.h, self.w)
    }

    /// The number of classes: one more than the largest label.
    pub fn classes(&self) -> usize {
        self.labels.iter().copied().max().map_or(0, |m| m as usize + 1)
    }
}

/// `raw` itself, or its decompression when it starts with the gzip magic (`path` names it in
/// errors).
fn gunzip_if_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, IdxError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| IdxError::Corrupt { path: path.to_path_buf(), message: format!("gzip stream: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The format: two zero bytes, the type code, the rank, then one big-endian u32 per dimension
/// and the payload.
pub fn parse_idx(bytes: &[u8], rank: usize) -> Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!("{} bytes is shorter than the 4-byte magic", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!("bad magic {:02x}{:02x}{:02x}{:02x} (not an IDX file)", bytes[0], bytes[1], bytes[2], bytes[3]));
    }
    if bytes[2] != 0x08 {
        return Err(format!("element type 0x{:02x}; only unsigned bytes (0x08) are supported", bytes[2]));
    }
    if bytes[3] as usize != rank {
        return Err(format!("rank {} where {rank} was expected", bytes[3]));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(format!("truncated header ({} bytes, need {header})", bytes.len()));
    }
    let dims: Vec<usize> = (0..rank).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize).collect();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("dimensions overflow")?;
    let have = bytes.len() - header;
    if have != want {
        return Err(format!("dimensions {dims:?} need {want} payload bytes, the file has {have} (truncated or padded)"));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// `dir/stem.gz` or `dir/stem`, whichever exists.
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// An `MD5SUMS` file and its (hex digest, file name) lines.
type Sums = (PathBuf, Vec<(String, String)>);

/// Checksums from `dir/MD5SUMS` (`<hex>  <file name>` per line), if the file exists.
fn md5sums(dir: &Path) -> Result<Option<Sums>, IdxError> {
    let path = dir.join("MD5SUMS");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| IdxError::Io { path: path.clone(), source })?;
    Ok(Some((path, parse_md5sums(&text))))
}

/// The (hex digest, file name) lines of an `MD5SUMS` text.
fn parse_md5sums(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let hex = it.next()?.to_ascii_lowercase();
            let name = it.next()?.trim_start_matches('*').to_string();
            Some((hex, name))
        })
        .collect()
}

/// Checks `bytes`, read from `file`, against its line in `sums` (if listed).
fn check_md5(file: &Path, bytes: &[u8], sums: &Option<Sums>) -> Result<(), IdxError> {
    let Some((sums_path, list)) = sums else { return Ok(()) };
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some((expected, _)) = list.iter().find(|(_, n)| n == name) else { return Ok(()) };
    let got = md5_hex(bytes);
    if &got != expected {
        return Err(IdxError::Checksum { path: file.to_path_buf(), sums: sums_path.clone(), expected: expected.clone(), got });
    }
    Ok(())
}

/// One file of a set in memory: where it came from (for messages) and its raw bytes.
type RawFile = (PathBuf, Vec<u8>);

/// Loads every split present in `dir` (training first), checking `MD5SUMS` when present.
pub fn load_dir(dir: &Path) -> Result<ImageSet, IdxError> {
    if !dir.is_dir() {
        return Err(IdxError::Missing { path: dir.to_path_buf(), message: "no such directory".into() });
    }
    let sums = md5sums(dir)?;
    let read = |path: PathBuf| -> Result<RawFile, IdxError> {
        let bytes = std::fs::read(&path).map_err(|source| IdxError::Io { path: path.clone(), source })?;
        Ok((path, bytes))
    };
    let mut splits = Vec::new();
    for (img_stem, lab_stem) in SPLITS {
        let Some(img_path) = find(dir, img_stem) else { continue };
        let lab_path = find(dir, lab_stem).ok_or_else(|| IdxError::Missing { path: dir.join(lab_stem), message: format!("labels for {} are missing", img_path.display()) })?;
        splits.push((read(img_path)?, read(lab_path)?));
    }
    assemble(dir, splits, &sums)
}

/// MNIST's test split as shipped in `data/mnist/` (images, labels, checksums).
const EMBEDDED_MNIST: [(&str, &[u8]); 2] = [
    ("t10k-images-idx3-ubyte.gz", include_bytes!("../../../data/mnist/t10k-images-idx3-ubyte.gz")),
    ("t10k-labels-idx1-ubyte.gz", include_bytes!("../../../data/mnist/t10k-labels-idx1-ubyte.gz")),
];
const EMBEDDED_MNIST_SUMS: &str = include_str!("../../../data/mnist/MD5SUMS");

/// Where the embedded copy says it comes from, in `ImageSet::files` and in errors.
pub const EMBEDDED_MNIST_ORIGIN: &str = "<embedded>/mnist";

/// MNIST's test split compiled into the binary (10,000 digits), checked against its MD5SUMS
/// like a directory.
pub fn load_embedded_mnist() -> Result<ImageSet, IdxError> {
    let origin = Path::new(EMBEDDED_MNIST_ORIGIN);
    let sums = Some((origin.join("MD5SUMS"), parse_md5sums(EMBEDDED_MNIST_SUMS)));
    let [img, lab] = EMBEDDED_MNIST.map(|(name, bytes)| (origin.join(name), bytes.to_vec()));
    assemble(origin, vec![(img, lab)], &sums)
}

/// Checks, parses and concatenates (images, labels) file pairs in order; `origin` names the
/// set when it is empty.
fn assemble(origin: &Path, splits: Vec<(RawFile, RawFile)>, sums: &Option<Sums>) -> Result<ImageSet, IdxError> {
    let mut set = ImageSet { n: 0, c: 1, h: 0, w: 0, pixels: Vec::new(), labels: Vec::new(), files: Vec::new(), digit_judge: true };
    for ((img_path, img_raw), (lab_path, lab_raw)) in splits {
        check_md5(&img_path, &img_raw, sums)?;
        check_md5(&lab_path, &lab_raw, sums)?;
        let parse = |path: &Path, raw: Vec<u8>, rank: usize| -> Result<IdxArray, IdxError> {
            let bytes = gunzip_if_gz(path, raw)?;
            parse_idx(&bytes, rank).map_err(|message| IdxError::Corrupt { path: path.to_path_buf(), message })
        };
        let img = parse(&img_path, img_raw, 3)?;
        let lab = parse(&lab_path, lab_raw, 1)?;
        let (n, h, w) = (img.dims[0], img.dims[1], img.dims[2]);
        if lab.dims[0] != n {
            return Err(IdxError::Corrupt { path: lab_path, message: format!("{} labels for {n} images in {}", lab.dims[0], img_path.display()) });
        }
        if set.n > 0 && (h, w) != (set.h, set.w) {
            return Err(IdxError::Corrupt { path: img_path, message: format!("{h}×{w} images where the other split has {}×{}", set.h, set.w) });
        }
        if h == 0 || w == 0 {
            return Err(IdxError::Corrupt { path: img_path, message: "zero-sized images".into() });
        }
        if let Some(bad) = lab.data.iter().find(|&&l| l > 99) {
            return Err(IdxError::Corrupt { path: lab_path, message: format!("label {bad} is not a class index") });
        }
        (set.h, set.w) = (h, w);
        set.n += n;
        set.pixels.extend_from_slice(&img.data);
        set.labels.extend_from_slice(&lab.data);
        set.files.push(img_path);
        set.files.push(lab_path);
    }
    if set.n == 0 {
        return Err(IdxError::Empty { dir: origin.to_path_buf() });
    }
    Ok(set)
}

/// MD5 (RFC 1321) of `data` as lowercase hex: the checksum published with MNIST.
pub fn md5_hex(data: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16,
        23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64).map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32).collect();
    let (mut a0, mut b0, mut c0, mut d0) = (0x6745_2301u32, 0xefcd_ab89u32, 0x98ba_dcfeu32, 0x1032_5476u32);
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk.chunks(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    [a0, b0, c0, d0].iter().flat_map(|v| v.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded copy is the repository's `data/mnist/` byte for byte, and MNIST's test split
    /// as published: 10,000 images of 28×28 with the official per-digit counts.
    #[test]
    fn embedded_mnist_is_the_shipped_test_split() {
        let embedded = load_embedded_mnist().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
        let on_disk = load_dir(&dir).unwrap();
        assert_eq!((embedded.n, embedded.h, embedded.w), (10_000, 28, 28));
        assert_eq!((&embedded.pixels, &embedded.labels), (&on_disk.pixels, &on_disk.labels));
        let mut counts = [0usize; 10];
        for &l in &embedded.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
        assert!(embedded.files.iter().all(|f| f.starts_with(EMBEDDED_MNIST_ORIGIN)));
    }

    #[test]
    fn md5_matches_rfc_1321_vectors() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("12345678901234567890123456789012345678901234567890123456789012345678901234567890", "57edf4a22be3c955ac49da2e2107b67a"),
        ] {
            assert_eq!(md5_hex(input.as_bytes()), want, "md5({input:?})");
        }
    }

    fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn parses_well_formed_and_refuses_malformed_headers() {
        let ok = idx_bytes(&[2, 2, 3], &[1; 12]);
        assert_eq!(parse_idx(&ok, 3).unwrap().dims, [2, 2, 3]);
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (vec![0, 0], 3, "shorter than"),
            (vec![1, 2, 3, 4, 5], 3, "bad magic"),
            (idx_bytes(&[2], &[0, 0]).into_iter().enumerate().map(|(i, b)| if i == 2 { 0x0d } else { b }).collect(), 1, "element type"),
            (idx_bytes(&[2], &[0, 0]), 3, "rank 1"),
            (idx_bytes(&[2, 2, 3], &[1; 11]), 3, "truncated or padded"),
            (idx_bytes(&[2, 2, 3], &[1; 13]), 3, "truncated or padded"),
            (vec![0, 0, 8, 3, 0, 0], 3, "truncated header"),
        ];
        for (bytes, rank, want) in cases {
            let err = parse_idx(&bytes, rank).unwrap_err();
            assert!(err.contains(want), "{bytes:?}: {err}");
        }
    }
}
