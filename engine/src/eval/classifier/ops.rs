//! CPU kernels of the classifier as candle custom ops with their backward passes: im2col of a
//! 3×3 padded convolution (NHWC → rows of 9·C, backward col2im; `kernels::conv`'s) and 2×2 max pooling (backward
//! to the first maximum of each window). Made of candle's own ops (pad, nine narrows, cat,
//! reshape; reductions over a non-last axis) the same steps were 10–20× slower than the matmul
//! they feed. Images are independent, so every kernel splits them over rayon's pool.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::kernels::conv::{self, Grid};

/// The contiguous f32 data of a storage.
fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{op}: expects a contiguous f32 tensor"),
    }
}

/// (N, H, W, C) → (N·H·W, 9·C): row (n, y, x) holds the 3×3 neighbourhood of (y, x) with zero
/// padding, ordered (dy, dx, c).
pub(super) struct Im2Col;

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l.shape().dims4()?;
        let src = data(s, l, self.name())?;
        let mut out = vec![0f32; n * h * w * 9 * c];
        let g = Grid { h, w, c };
        if n > 0 && c > 0 {
            out.par_chunks_mut(h * w * 9 * c).zip(src.par_chunks(h * w * c)).for_each(|(dst, img)| conv::im2col_rows(img, dst, g, g, 3, 1, 0));
        }
        Ok((CpuStorage::F32(out), Shape::from((n * h * w, 9 * c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, h, w, c) = arg.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im { n, h, w, c })?))
    }
}

/// The adjoint of [`Im2Col`]: (N·H·W, 9·C) → (N, H, W, C), each entry summed back to the pixel
/// it was copied from.
struct Col2Im {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Col2Im { n, h, w, c } = *self;
        let src = data(s, l, self.name())?;
        if src.len() != n * h * w * 9 * c {
            bail!("col2im3x3: {} values for {n}×{h}×{w}×{c}", src.len());
        }
        let mut out = vec![0f32; n * h * w * c];
        if n > 0 && c > 0 {
            let g = Grid { h, w, c };
            conv::col2im(src, &mut out, g, g, 3, 1);
        }
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// 2×2 max pooling (N, H, W, C) → (N, H/2, W/2, C) for even H, W.
pub(super) struct MaxPool2;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "maxpool2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l.shape().dims4()?;
        if h % 2 != 0 || w % 2 != 0 {
            bail!("maxpool2: odd image size {h}×{w}");
        }
        let src = data(s, l, self.name())?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * ho * wo * c];
        if n > 0 && c > 0 {
            out.par_chunks_mut(ho * wo * c).zip(src.par_chunks(h * w * c)).for_each(|(dst, img)| {
                for y in 0..ho {
                    for x in 0..wo {
                        let at = |dy: usize, dx: usize| &img[((2 * y + dy) * w + 2 * x + dx) * c..][..c];
                        let (a, b, e, f) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                        for (k, o) in dst[(y * wo + x) * c..][..c].iter_mut().enumerate() {
                            *o = a[k].max(b[k]).max(e[k]).max(f[k]);
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, ho, wo, c))))
    }

    /// The gradient goes to the first maximum of each window (row-major), as the forward pass
    /// chose it.
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, h, w, c) = arg.dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let x = arg.flatten_all()?.to_vec1::<f32>()?;
        let m = res.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * h * w * c];
        if n > 0 && c > 0 {
            out.par_chunks_mut(h * w * c).enumerate().for_each(|(b, dst)| {
                let img = &x[b * h * w * c..][..h * w * c];
                for y in 0..ho {
                    for xo in 0..wo {
                        let o = ((b * ho + y) * wo + xo) * c;
                        for k in 0..c {
                            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                                let i = ((2 * y + dy) * w + 2 * xo + dx) * c + k;
                                if img[i] == m[o + k] {
                                    dst[i] = g[o + k];
                                    break;
                                }
                            }
                        }
                    }
                }
            });
        }
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}
