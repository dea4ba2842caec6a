//! The U-Net's convolutions on the CPU as im2col + one matrix product: candle's own CPU conv2d
//! (and the conv-transpose its backward pass uses) loops directly over pixels, channels and
//! taps, several times slower than PyTorch's. Here a k×k convolution (padding k/2, any
//! stride) is an [`Im2Col`] custom op (NCHW → rows of C·k·k taps, backward = its adjoint
//! col2im) followed by candle's matmul (gemm) against the (O, C·k·k) weight, so candle's
//! autograd differentiates everything but the gather, whose adjoint is written here. On other
//! devices [`Conv`] is candle's conv2d. The product's (pixel, channel) rows become NCHW with the
//! bias added in one op ([`ToNchw`], its backward written here too). Pinned to candle's conv2d (values and gradients) by
//! `conv_matches_candles_conv2d`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::kernels::conv::{Geometry, col2im_nchw, im2col_nchw};

/// A k×k convolution with padding k/2 and the given stride (weights named as candle_nn's).
pub struct Conv {
    inner: Conv2d,
    k: usize,
    stride: usize,
}

impl Conv {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let inner = candle_nn::conv2d(cin, cout, k, Conv2dConfig { padding: k / 2, stride, ..Default::default() }, vb)?;
        Ok(Conv { inner, k, stride })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !crate::device::fast_paths(x.device()) {
            return self.inner.forward(x);
        }
        let n = x.dim(0)?;
        let geo = Geometry::new(x.dims4()?, self.k, self.stride);
        let cols = x.contiguous()?.apply_op1(Im2Col(geo))?;
        let wt = self.inner.weight();
        let o = wt.dim(0)?;
        let y = cols.matmul(&wt.reshape((o, geo.taps()))?.t()?)?;
        let (ho, wo) = geo.out_hw();
        match self.inner.bias() {
            Some(b) => y.contiguous()?.apply_op2(&b.contiguous()?, ToNchw { n, hw: ho * wo, o })?.reshape((n, o, ho, wo)),
            None => y.reshape((n, ho, wo, o))?.permute((0, 3, 1, 2)),
        }
    }
}

/// The contiguous f32 data of a storage.
fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{op}: expects a contiguous f32 tensor"),
    }
}

/// (N, C, H, W) → (N·Ho·Wo, C·k·k) (`kernels::conv::im2col_nchw`): row (n, oy, ox) holds the
/// k×k neighbourhood of the output pixel with zero padding, ordered (c, ky, kx) as the weight
/// (O, C, k, k).
struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let src = data(s, l, self.name())?;
        let (ho, wo) = g.out_hw();
        let mut out = vec![0f32; g.n * ho * wo * g.taps()];
        im2col_nchw(g, src, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((g.n * ho * wo, g.taps()))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`] (`kernels::conv::col2im_nchw`): each entry summed back to the
/// pixel it was copied from.
struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let src = data(s, l, self.name())?;
        let (ho, wo) = g.out_hw();
        let (img, rows) = (g.c * g.h * g.w, ho * wo * g.taps());
        if src.len() != g.n * rows {
            bail!("col2im: {} values for {g:?}", src.len());
        }
        let mut out = vec![0f32; g.n * img];
        col2im_nchw(g, src, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// The product's rows (N·P, O), P = Ho·Wo pixels per image, plus the bias (O) → (N, O, P):
/// the transpose to channels-first and the bias add in one pass (candle would run a strided
/// copy and a broadcast add, and their backward a copy and a reduction).
#[derive(Clone, Copy)]
struct ToNchw {
    n: usize,
    hw: usize,
    o: usize,
}

impl CustomOp2 for ToNchw {
    fn name(&self) -> &'static str {
        "to-nchw-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let (img, hw, o) = (self.hw * self.o, self.hw, self.o);
        if y.len() != self.n * img || b.len() != o {
            bail!("to-nchw-bias: {} values and {} biases for {} images of {hw}×{o}", y.len(), b.len(), self.n);
        }
        let mut out = vec![0f32; y.len()];
        if img > 0 {
            out.par_chunks_mut(img).zip(y.par_chunks(img)).for_each(|(dst, y)| {
                for (c, (dst, &b)) in dst.chunks_mut(hw).zip(b).enumerate() {
                    for (p, d) in dst.iter_mut().enumerate() {
                        *d = y[p * o + c] + b;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n, o, hw))))
    }

    fn bwd(&self, _y: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let all = grad.contiguous()?.apply_op1_no_bwd(&FromNchw(*self))?;
        let len = self.n * self.hw * self.o;
        let dy = all.narrow(0, 0, len)?.reshape((self.n * self.hw, self.o))?;
        let db = all.narrow(0, len, self.o)?;
        Ok((Some(dy), Some(db)))
    }
}

/// The backward of [`ToNchw`]: ∂L/∂out (N, O, P) → one flat tensor [∂y (N·P, O); ∂b (O)], the
/// bias's sums taken per image and added in image order (the same bits on any thread count).
struct FromNchw(ToNchw);

impl CustomOp1 for FromNchw {
    fn name(&self) -> &'static str {
        "from-nchw-bias"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ToNchw { n, hw, o } = self.0;
        let g = data(s, l, self.name())?;
        let img = hw * o;
        if g.len() != n * img {
            bail!("from-nchw-bias: {} gradients for {n} images of {hw}×{o}", g.len());
        }
        let mut out = vec![0f32; n * img + o];
        let mut partial = vec![0f32; n * o];
        if img > 0 {
            let (dy, _) = out.split_at_mut(n * img);
            dy.par_chunks_mut(img).zip(partial.par_chunks_mut(o)).zip(g.par_chunks(img)).for_each(|((dy, db), g)| {
                for (c, (g, db)) in g.chunks(hw).zip(db.iter_mut()).enumerate() {
                    let mut s = 0f32;
                    for (p, &v) in g.iter().enumerate() {
                        dy[p * o + c] = v;
                        s += v;
                    }
                    *db = s;
                }
            });
        }
        let db = &mut out[n * img..];
        for part in partial.chunks(o.max(1)) {
            db.iter_mut().zip(part).for_each(|(d, p)| *d += p);
        }
        Ok((CpuStorage::F32(out), Shape::from(n * img + o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Values and gradients (input, weight, bias) equal candle's conv2d for 3×3 stride 1 and 2
    /// (odd and even sizes) and 1×1: the same sums in another order, so 1e-4 of the largest
    /// entry.
    #[test]
    fn conv_matches_candles_conv2d() {
        let dev = Device::Cpu;
        for (k, stride, (h, w)) in [(3, 1, (7, 6)), (3, 2, (7, 7)), (3, 2, (8, 6)), (1, 1, (5, 4))] {
            let vm = VarMap::new();
            let conv = Conv::new(3, 5, k, stride, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap()).unwrap();
            let target = |y: &Tensor| y.sqr().unwrap().sum_all().unwrap();
            let ours = conv.forward(&x).unwrap();
            let theirs = x.conv2d(conv.inner.weight(), k / 2, stride, 1, 1).unwrap().broadcast_add(&conv.inner.bias().unwrap().reshape((1, 5, 1, 1)).unwrap()).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "k {k} stride {stride}");
            let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(max(&(&ours - &theirs).unwrap()) < 1e-4 * max(&theirs), "k {k} stride {stride}: values");
            let (g1, g2) = (target(&ours).backward().unwrap(), target(&theirs).backward().unwrap());
            for t in [x.as_tensor(), conv.inner.weight(), conv.inner.bias().unwrap()] {
                let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
                assert!(max(&(a - b).unwrap()) < 1e-4 * max(b), "k {k} stride {stride}: gradient of {:?}", t.dims());
            }
        }
    }
}
