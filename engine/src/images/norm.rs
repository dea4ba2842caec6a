//! The U-Net's GroupNorm (with its per-channel affine) and the SiLU after it as one fused CPU
//! op. candle_nn's GroupNorm is a dozen separate elementwise ops (mean, subtract, square, sum,
//! divide, sqrt, scale, shift) plus SiLU, each allocating its output and each with its own
//! backward node; here the forward is one pass over the statistics and one over the output,
//! and the backward two passes, per image on rayon's pool (the kernels: `kernels::norm`).
//!
//! Per image n and group g of M = (C/G)·H·W values: μ, σ² (biased), r = 1/√(σ² + ε),
//! x̂ = (x − μ) r, y = γ_c x̂ + β_c, out = SiLU(y) = y s(y) (or y without the SiLU). Backward,
//! from ḡ = ∂L/∂out: ȳ = ḡ s (1 + y (1 − s)); ∂β_c = Σ ȳ; ∂γ_c = Σ ȳ x̂; with x̄̂ = γ_c ȳ,
//! ∂x = r (x̄̂ − mean(x̄̂) − x̂ mean(x̄̂ x̂)), the means over the group. The per-channel sums are
//! taken per image and then added in image order, so the result does not depend on the number
//! of threads. [`GroupNormSilu::forward_shifted`] normalises x + s for a per-(image, channel)
//! shift s (the U-Net's embedding), x̂ = (x + s − μ) r, with ∂s[n, c] = Σ ∂x over the channel.
//! On other devices [`GroupNormSilu`] is candle_nn's GroupNorm (then SiLU). Pinned to that
//! composition (values and the gradients of x, s, γ, β) by `fused_matches_candles_ops`.

use candle_core::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::{GroupNorm, VarBuilder};

use crate::kernels::norm as kernels;

/// GroupNorm over `groups` groups with a learnt per-channel scale and shift (named `weight` and
/// `bias` as candle_nn's), followed by SiLU when `silu`.
pub struct GroupNormSilu {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
}

impl GroupNormSilu {
    pub fn new(groups: usize, channels: usize, eps: f64, silu: bool, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            bail!("GroupNorm: {channels} channels in {groups} groups");
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        Ok(GroupNormSilu { weight, bias, groups, eps, silu })
    }

    /// candle's composition: candle_nn's GroupNorm, then SiLU.
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let gn = GroupNorm::new(self.weight.clone(), self.bias.clone(), self.weight.dim(0)?, self.groups, self.eps)?;
        let y = gn.forward(x)?;
        if self.silu { y.silu() } else { Ok(y) }
    }
}

impl GroupNormSilu {
    /// The norm (then SiLU) of x + s, s (N, C) added to every value of channel c of image n
    /// (the U-Net's embedding): one op on the CPU.
    pub fn forward_shifted(&self, x: &Tensor, shift: &Tensor) -> Result<Tensor> {
        if !crate::device::fast_paths(x.device()) || x.dtype() != candle_core::DType::F32 {
            let (n, c) = shift.dims2()?;
            let mut dims = vec![n, c];
            dims.resize(x.rank(), 1);
            return self.composed(&x.broadcast_add(&shift.reshape(dims)?)?);
        }
        self.fused(x, shift, true)
    }

    fn fused(&self, x: &Tensor, shift: &Tensor, shifted: bool) -> Result<Tensor> {
        let op = Fused { groups: self.groups, eps: self.eps as f32, silu: self.silu, shifted };
        let params = Tensor::cat(&[&self.weight, &self.bias], 0)?;
        x.contiguous()?.apply_op3(&shift.contiguous()?, &params, op)
    }
}

impl Module for GroupNormSilu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !crate::device::fast_paths(x.device()) || x.dtype() != candle_core::DType::F32 {
            return self.composed(x);
        }
        // No shift: a zero (N, C) stands in (the op takes three tensors) and gets no gradient.
        let zero = Tensor::zeros((x.dim(0)?, x.dim(1)?), x.dtype(), x.device())?;
        self.fused(x, &zero, false)
    }
}

/// The contiguous f32 data of a storage.
fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{op}: expects a contiguous f32 tensor"),
    }
}

#[derive(Clone, Copy)]
struct Fused {
    groups: usize,
    eps: f32,
    silu: bool,
    /// Whether the shift's gradient is wanted.
    shifted: bool,
}

impl Fused {
    /// (N, channels, values per channel) of an input of shape (N, C, …), checked against γ's.
    fn dims(&self, shape: &Shape, channels: usize) -> Result<(usize, usize, usize)> {
        let d = shape.dims();
        if d.len() < 3 || d[1] != channels || !channels.is_multiple_of(self.groups) {
            bail!("group-norm-silu: input {d:?} for {channels} channels in {} groups", self.groups);
        }
        Ok((d[0], d[1], d[2..].iter().product()))
    }
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, shift, params) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?, data(s3, l3, self.name())?);
        let (gamma, beta) = params.split_at(params.len() / 2);
        let (n, c, hw) = self.dims(l1.shape(), gamma.len())?;
        if shift.len() != n * c {
            bail!("group-norm-silu: {} shifts for {n}×{c} channels", shift.len());
        }
        let mut out = vec![0f32; n * c * hw];
        kernels::nchw_forward(x, shift, gamma, beta, c, hw, self.groups, self.eps, self.silu, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, shift: &Tensor, params: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // x and the shift travel as one tensor [x; s] (the backward op also takes three).
        let xs = Tensor::cat(&[&x.flatten_all()?, &shift.flatten_all()?], 0)?;
        let all = xs.apply_op3_no_bwd(&grad.contiguous()?, &params.contiguous()?, &Backward { f: *self, shape: x.shape().clone() })?;
        let (len, ns) = (x.elem_count(), shift.elem_count());
        let dx = all.narrow(0, 0, len)?.reshape(x.shape())?;
        let ds = if self.shifted { Some(all.narrow(0, len, ns)?.reshape(shift.shape())?) } else { None };
        let dparams = all.narrow(0, len + ns, params.elem_count())?;
        Ok((Some(dx), ds, Some(dparams)))
    }
}

/// The backward of [`Fused`] on ([x; s], ∂L/∂out, [γ; β]): one flat tensor [∂x; ∂s; ∂γ; ∂β]
/// (∂s[n, c] = Σ ∂x over channel c of image n).
struct Backward {
    f: Fused,
    /// x's shape.
    shape: Shape,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "group-norm-silu-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let f = self.f;
        let (xs, dout, params) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?, data(s3, l3, self.name())?);
        let c = params.len() / 2;
        let (gamma, beta) = params.split_at(c);
        let (n, c, hw) = f.dims(&self.shape, c)?;
        if xs.len() != n * c * hw + n * c {
            bail!("group-norm-silu-bwd: {} values for {:?} and its shift", xs.len(), self.shape);
        }
        let (x, shift) = xs.split_at(n * c * hw);
        if dout.len() != x.len() {
            bail!("group-norm-silu-bwd: {} gradients for {} values", dout.len(), x.len());
        }
        let img = c * hw;
        let mut dx = vec![0f32; n * img];
        // Per image: ∂s, then its ∂γ and ∂β partial sums.
        let mut partial = vec![0f32; n * 3 * c];
        kernels::nchw_backward(x, shift, dout, gamma, beta, c, hw, f.groups, f.eps, f.silu, &mut dx, &mut partial);
        let mut out = dx;
        out.resize(n * img + n * c + 2 * c, 0.0);
        let (_, rest) = out.split_at_mut(n * img);
        let (ds, sums) = rest.split_at_mut(n * c);
        for (ds, part) in ds.chunks_mut(c.max(1)).zip(partial.chunks(3 * c.max(1))) {
            ds.copy_from_slice(&part[..c]);
            for (s, p) in sums.iter_mut().zip(&part[c..]) {
                *s += p;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n * img + n * c + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Values and the gradients of x, γ and β (and of the shift s) equal candle_nn's GroupNorm
    /// (then SiLU, or not) of x (and of x + s) with random γ and β, for one and several groups and 4-d and 3-d inputs: the same sums in
    /// another order, so 1e-4 of the largest entry. The loss weights every output differently
    /// so that no gradient term cancels.
    #[test]
    fn fused_matches_candles_ops() {
        let dev = Device::Cpu;
        for (silu, groups, shape) in [(true, 4, vec![3, 8, 7, 6]), (false, 4, vec![3, 8, 7, 6]), (true, 1, vec![2, 6, 5, 5]), (true, 2, vec![2, 4, 9])] {
            let c = shape[1];
            let vm = VarMap::new();
            let norm = GroupNormSilu::new(groups, c, 1e-5, silu, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
            for v in vm.all_vars() {
                v.set(&Tensor::randn(0.5f32, 1.0, v.shape(), &dev).unwrap()).unwrap();
            }
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape.as_slice(), &dev).unwrap() + 0.7).unwrap()).unwrap();
            let s = Var::from_tensor(&Tensor::randn(0f32, 1.5, (shape[0], c), &dev).unwrap()).unwrap();
            let mut sdims = vec![shape[0], c];
            sdims.resize(shape.len(), 1);
            let w = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev).unwrap();
            let target = |y: &Tensor| (y * &w).unwrap().sum_all().unwrap();
            let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            for shifted in [false, true] {
                let (ours, theirs) = if shifted {
                    (norm.forward_shifted(&x, &s).unwrap(), norm.composed(&x.broadcast_add(&s.reshape(sdims.as_slice()).unwrap()).unwrap()).unwrap())
                } else {
                    (norm.forward(&x).unwrap(), norm.composed(&x).unwrap())
                };
                assert_eq!(ours.dims(), theirs.dims());
                let what = format!("silu {silu}, shifted {shifted}, {groups} groups, {shape:?}");
                assert!(max(&(&ours - &theirs).unwrap()) < 1e-4 * max(&theirs), "{what}: values");
                let (g1, g2) = (target(&ours).backward().unwrap(), target(&theirs).backward().unwrap());
                let mut wrt = vec![x.as_tensor(), &norm.weight, &norm.bias];
                if shifted {
                    wrt.push(s.as_tensor());
                }
                for t in wrt {
                    let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
                    assert!(max(&(a - b).unwrap()) < 1e-4 * max(b), "{what}: gradient of {:?}", t.dims());
                }
            }
        }
    }

    /// The same values and gradients, to the bit, on a 1-thread and a 2-thread pool.
    #[test]
    fn fused_is_thread_count_independent() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let norm = GroupNormSilu::new(4, 8, 1e-5, true, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 8, 6, 6), &dev).unwrap()).unwrap();
        let s = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap()).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = norm.forward_shifted(&x, &s).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                [y, g.get(&x).unwrap().clone(), g.get(&s).unwrap().clone(), g.get(&norm.weight).unwrap().clone(), g.get(&norm.bias).unwrap().clone()]
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            })
        };
        assert_eq!(run(1), run(2));
    }
}
