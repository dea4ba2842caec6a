//! Grids of images as 8-bit PNG files, to look at samples: [`grid_channels`] tiles n C×h×w
//! images (NCHW) in [−1, 1] row by row (the caller passes e.g. 100 digits, ten of each class,
//! for one row per digit), [`encode`] writes the PNG (gray for one channel, RGB for three; IHDR,
//! one zlib IDAT of unfiltered scanlines, IEND; CRC-32 of each chunk from flate2). [`grid`] and
//! [`encode_gray`] are the one-channel cases.

use std::io::Write;
use std::path::Path;

use flate2::Crc;
use flate2::write::ZlibEncoder;

use crate::error::EngineError;

/// Gray level of the padding between images and of empty cells.
pub const PAD_GRAY: u8 = 128;

/// The PNG file signature.
pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// [−1, 1] → 0..=255 (−1 → 0, 0 → 128, 1 → 255), clamped; NaN → 0.
pub fn to_gray(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// Tiles `n` h×w images (`pixels`: n×h×w row-major in [−1, 1]) into rows of `cols`, with
/// `pad` pixels of [`PAD_GRAY`] around and between them. Returns the gray levels row-major,
/// the width and the height: `cols·w + (cols+1)·pad` × `rows·h + (rows+1)·pad` with
/// rows = ⌈n/cols⌉ (at least one).
///
/// # Panics
/// If `pixels` holds fewer than n×h×w values or `cols` is 0.
pub fn grid(pixels: &[f32], n: usize, h: usize, w: usize, cols: usize, pad: usize) -> (Vec<u8>, usize, usize) {
    grid_channels(pixels, n, 1, h, w, cols, pad)
}

/// [`grid`] for images of `c` channels (`pixels`: n×c×h×w, channel-major per image): the
/// levels come out pixel-interleaved (c per pixel, as a PNG scanline holds them), padding
/// [`PAD_GRAY`] in every channel.
///
/// # Panics
/// If `pixels` holds fewer than n×c×h×w values or `cols` is 0.
pub fn grid_channels(pixels: &[f32], n: usize, c: usize, h: usize, w: usize, cols: usize, pad: usize) -> (Vec<u8>, usize, usize) {
    assert!(cols > 0, "a grid needs at least one column");
    assert!(pixels.len() >= n * c * h * w, "{} values for {n} images of {c}×{h}×{w}", pixels.len());
    let rows = n.div_ceil(cols).max(1);
    let (width, height) = (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad);
    let mut out = vec![PAD_GRAY; width * height * c];
    if c == 0 || h == 0 || w == 0 {
        return (out, width, height);
    }
    for (k, img) in pixels.chunks(c * h * w).take(n).enumerate() {
        let (top, left) = (pad + (k / cols) * (h + pad), pad + (k % cols) * (w + pad));
        for (ch, plane) in img.chunks_exact(h * w).enumerate() {
            for y in 0..h {
                let row = &mut out[((top + y) * width + left) * c..][..w * c];
                for (x, &v) in plane[y * w..(y + 1) * w].iter().enumerate() {
                    row[x * c + ch] = to_gray(v);
                }
            }
        }
    }
    (out, width, height)
}

/// One chunk: length, type, data, CRC-32 of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// An 8-bit grayscale PNG of `gray` (width×height row-major).
///
/// # Panics
/// If `gray.len()` is not width×height, or a side is 0 or above 2³¹−1 (PNG's limits).
pub fn encode_gray(gray: &[u8], width: usize, height: usize) -> Vec<u8> {
    encode(gray, 1, width, height)
}

/// An 8-bit PNG of `levels` (width×height pixels row-major, `channels` levels each: 1 = gray,
/// 3 = RGB).
///
/// # Panics
/// If `channels` is not 1 or 3, `levels.len()` is not width×height×channels, or a side is 0
/// or above 2³¹−1 (PNG's limits).
pub fn encode(levels: &[u8], channels: usize, width: usize, height: usize) -> Vec<u8> {
    let colour_type = match channels {
        1 => 0,
        3 => 2,
        _ => panic!("PNG of {channels} channels: 1 (gray) or 3 (RGB)"),
    };
    assert_eq!(levels.len(), width * height * channels, "{} levels for {width}×{height}×{channels}", levels.len());
    assert!((1..=i32::MAX as usize).contains(&width) && (1..=i32::MAX as usize).contains(&height), "PNG size {width}×{height}");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    // Bit depth 8, colour type 0 (grayscale) or 2 (RGB), deflate, filters of method 0, no
    // interlace.
    ihdr.extend_from_slice(&[8, colour_type, 0, 0, 0]);
    // Every scanline with filter type 0 (None).
    let mut z = ZlibEncoder::new(Vec::with_capacity(levels.len() / 2), flate2::Compression::default());
    for row in levels.chunks(width * channels) {
        z.write_all(&[0]).and_then(|_| z.write_all(row)).expect("writing to a Vec cannot fail");
    }
    let idat = z.finish().expect("writing to a Vec cannot fail");
    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(&SIGNATURE);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes [`encode_gray`] of `gray` to `path`.
pub fn write_gray(path: &Path, gray: &[u8], width: usize, height: usize) -> Result<(), EngineError> {
    std::fs::write(path, encode_gray(gray, width, height)).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320) bit by bit, independent of flate2.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
        }
        !c
    }

    /// The chunks of a PNG file (type, data), checking the signature and every CRC.
    fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(png[..8], SIGNATURE);
        let mut out = Vec::new();
        let mut at = 8;
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
            let data = png[at + 8..at + 8 + len].to_vec();
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]), "CRC of {}", String::from_utf8_lossy(&kind));
            out.push((kind, data));
            at += 12 + len;
        }
        out
    }

    #[test]
    fn crc_reference_value() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// Decoding by hand: IHDR says 8-bit gray w×h without interlace, the IDAT inflates to the
    /// filter-0 scanlines of the input, IEND is empty and last.
    #[test]
    fn png_decodes_back() {
        for (w, h) in [(1, 1), (3, 2), (7, 5), (300, 40)] {
            let gray: Vec<u8> = (0..w * h).map(|i| (i * 37 % 256) as u8).collect();
            let png = encode_gray(&gray, w, h);
            let ch = chunks(&png);
            let kinds: Vec<&[u8; 4]> = ch.iter().map(|(k, _)| k).collect();
            assert_eq!(kinds, [b"IHDR", b"IDAT", b"IEND"]);
            let ihdr = &ch[0].1;
            assert_eq!(u32::from_be_bytes(ihdr[0..4].try_into().unwrap()), w as u32);
            assert_eq!(u32::from_be_bytes(ihdr[4..8].try_into().unwrap()), h as u32);
            assert_eq!(ihdr[8..], [8, 0, 0, 0, 0]);
            let mut raw = Vec::new();
            flate2::read::ZlibDecoder::new(&ch[1].1[..]).read_to_end(&mut raw).unwrap();
            let expect: Vec<u8> = gray.chunks(w).flat_map(|r| std::iter::once(0).chain(r.iter().copied())).collect();
            assert_eq!(raw, expect, "{w}×{h}");
            assert!(ch[2].1.is_empty());
        }
    }

    /// Sizes and placement: (n, cols, pad) → width, height, and gray levels at chosen points.
    #[test]
    fn grid_layout() {
        // Image k (2×3) is filled with the value vals[k].
        let vals = [-1.0, 0.0, 1.0, 0.5, -2.0];
        let pixels: Vec<f32> = vals.iter().flat_map(|&v| [v; 6]).collect();
        // (n, cols, pad, (width, height), [((y, x), gray)])
        type Case<'a> = (usize, usize, usize, (usize, usize), &'a [((usize, usize), u8)]);
        let cases: [Case; 4] = [
            (5, 5, 0, (15, 2), &[((0, 0), 0), ((1, 3), 128), ((0, 6), 255), ((1, 9), 191), ((0, 14), 0)]),
            (5, 2, 1, (9, 10), &[((0, 0), PAD_GRAY), ((1, 1), 0), ((2, 3), 0), ((1, 4), PAD_GRAY), ((1, 5), 128), ((4, 1), 255), ((4, 5), 191), ((7, 1), 0), ((7, 5), PAD_GRAY)]),
            (1, 3, 2, (17, 6), &[((2, 2), 0), ((3, 4), 0), ((2, 7), PAD_GRAY)]),
            (0, 4, 1, (17, 4), &[((1, 1), PAD_GRAY)]),
        ];
        for (n, cols, pad, (width, height), probes) in cases {
            let (g, gw, gh) = grid(&pixels, n, 2, 3, cols, pad);
            assert_eq!((gw, gh), (width, height), "n {n}, cols {cols}, pad {pad}");
            assert_eq!(g.len(), gw * gh);
            for &((y, x), v) in probes {
                assert_eq!(g[y * gw + x], v, "n {n}, cols {cols}, pad {pad}: ({y}, {x})");
            }
        }
        assert_eq!([to_gray(-1.0), to_gray(0.0), to_gray(1.0), to_gray(3.0), to_gray(f32::NAN)], [0, 128, 255, 255, 0]);
    }

    /// Colour: each channel of each image lands in its own byte of the interleaved scanline
    /// (image 0 red, image 1 blue on a 2×1 grid with padding 1), and the RGB PNG inflates back to
    /// those scanlines with colour type 2.
    #[test]
    fn colour_grid_and_png() {
        let (h, w) = (2, 2);
        let red = [vec![1.0f32; h * w], vec![-1.0; h * w], vec![-1.0; h * w]].concat();
        let blue = [vec![-1.0f32; h * w], vec![-1.0; h * w], vec![1.0; h * w]].concat();
        let (g, gw, gh) = grid_channels(&[red, blue].concat(), 2, 3, h, w, 2, 1);
        assert_eq!((gw, gh, g.len()), (7, 4, 7 * 4 * 3));
        let px = |y: usize, x: usize| &g[(y * gw + x) * 3..][..3];
        assert_eq!(px(0, 0), [PAD_GRAY; 3]);
        assert_eq!(px(1, 1), [255, 0, 0]);
        assert_eq!(px(2, 2), [255, 0, 0]);
        assert_eq!(px(1, 3), [PAD_GRAY; 3]);
        assert_eq!(px(2, 4), [0, 0, 255]);
        let png = encode(&g, 3, gw, gh);
        let ch = chunks(&png);
        assert_eq!(ch[0].1[8..], [8, 2, 0, 0, 0]);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&ch[1].1[..]).read_to_end(&mut raw).unwrap();
        let expect: Vec<u8> = g.chunks(gw * 3).flat_map(|r| std::iter::once(0).chain(r.iter().copied())).collect();
        assert_eq!(raw, expect);
        // One channel is the gray grid.
        let gray: Vec<f32> = (0..12).map(|i| i as f32 / 6.0 - 1.0).collect();
        assert_eq!(grid_channels(&gray, 3, 1, 2, 2, 2, 1), grid(&gray, 3, 2, 2, 2, 1));
    }

    #[test]
    fn writes_a_file() {
        let path = std::env::temp_dir().join(format!("scoresweep-png-{}.png", std::process::id()));
        write_gray(&path, &[0, 255, 128, 7], 2, 2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), encode_gray(&[0, 255, 128, 7], 2, 2));
        std::fs::remove_file(&path).unwrap();
        let err = write_gray(Path::new("/nonexistent-dir/x.png"), &[0], 1, 1).unwrap_err().to_string();
        assert!(err.starts_with("failed to write /nonexistent-dir/x.png"), "{err}");
    }
}
