//! An MLP denoiser on the flattened pixels, the CPU workhorse for image trials:
//! F = Linear(SiLU(… SiLU(Linear([c_in·x, Fourier(c_noise), class embedding])) …)) with `depth`
//! hidden layers of width `hidden`, behind EDM's preconditioning ([`super::ImageNet`]). The
//! class embedding has one extra row, the "no class" label of classifier-free guidance.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder, VarMap};
use schema::image::ImageMlpSpec;

use super::unet::NULL_CLASS;
use super::{ImageNet, Precond};

pub struct ImageMlp {
    precond: Precond,
    freq: Tensor,
    class_emb: Option<Embedding>,
    layers: Vec<Linear>,
    out: Linear,
}

impl ImageMlp {
    pub fn new(spec: &ImageMlpSpec, precond: Precond, dim: usize, varmap: &VarMap, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let half = spec.emb / 2;
        let class_emb = if spec.class_cond { Some(candle_nn::embedding(NULL_CLASS as usize + 1, spec.emb, vb.pp("class_emb"))?) } else { None };
        let mut width = dim + 2 * half + if spec.class_cond { spec.emb } else { 0 };
        let mut layers = Vec::new();
        for i in 0..spec.depth {
            layers.push(candle_nn::linear(width, spec.hidden, vb.pp(format!("layer{i}")))?);
            width = spec.hidden;
        }
        let out = candle_nn::linear(width, dim, vb.pp("out"))?;
        Ok(ImageMlp { precond, freq: super::frequencies(half, dev)?, class_emb, layers, out })
    }
}

impl ImageMlp {
    /// [x, Fourier(c_noise), E[label]] (N, D + 2K + E).
    fn input(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let mut parts = vec![x.flatten_from(1)?, super::fourier(c_noise, &self.freq)?];
        if let Some(ce) = &self.class_emb {
            let l = match labels {
                Some(l) => l.clone(),
                None => Tensor::full(NULL_CLASS, x.dim(0)?, x.device())?,
            };
            parts.push(ce.forward(&l)?);
        }
        Tensor::cat(&parts, 1)
    }
}

impl ImageNet for ImageMlp {
    fn precond(&self) -> Precond {
        self.precond
    }

    fn raw(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.input(x, c_noise, labels)?;
        for l in &self.layers {
            h = l.forward(&h)?.silu()?;
        }
        self.out.forward(&h)?.reshape(x.dims())
    }

    /// Forward mode alongside the forward pass: ḣ₀ = [v, 0, 0], ż = ḣ Wᵀ, ȧ = SiLU'(z) ⊙ ż with
    /// SiLU'(z) = s(1 + z(1 − s)), s = sigmoid(z); all candle ops, so the loss built on the
    /// tangent differentiates by autograd.
    fn raw_tangent(&self, x: &Tensor, v: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let mut h = self.input(x, c_noise, labels)?;
        let n = x.dim(0)?;
        let extra = h.dim(1)? - v.elem_count() / n;
        let mut t = Tensor::cat(&[v.flatten_from(1)?, Tensor::zeros((n, extra), v.dtype(), v.device())?], 1)?;
        for l in &self.layers {
            let z = l.forward(&h)?;
            let zt = t.matmul(&l.weight().t()?)?;
            let s = (z.neg()?.exp()? + 1.0)?.recip()?;
            let ds = (&s * ((&z * (1.0 - &s)?)? + 1.0)?)?;
            h = (&z * &s)?;
            t = (zt * ds)?;
        }
        let f = self.out.forward(&h)?.reshape(x.dims())?;
        let ft = t.matmul(&self.out.weight().t()?)?.reshape(x.dims())?;
        Ok((f, ft))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The forward tangent equals central differences of F along v: (F(x + hv) − F(x − hv))/2h
    /// with h = 1e-2 in f32 (truncation ~h² times F's third derivative ≈ 1e-4, rounding
    /// ~1e-7/h = 1e-5 of the outputs), so 2e-3 of the largest entry; a dropped factor is off by
    /// O(1). Its F equals `raw`.
    #[test]
    fn tangent_matches_finite_differences() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let spec = ImageMlpSpec { hidden: 32, depth: 2, emb: 8, class_cond: true };
        let net = ImageMlp::new(&spec, Precond::Score { sigma_data: 0.5 }, 12, &vm, &dev).unwrap();
        super::super::init_weights(&vm, &mut Rng::new(3)).unwrap();
        let mut rng = Rng::new(4);
        let x = Tensor::from_vec(rng.normals_f32(5 * 12), (5, 1, 3, 4), &dev).unwrap();
        let v = Tensor::from_vec(rng.normals_f32(5 * 12), (5, 1, 3, 4), &dev).unwrap();
        let c = Tensor::new(&[-0.5f32, 0.0, 0.3, 0.7, 1.1], &dev).unwrap();
        let labels = Tensor::new(&[0u32, 2, 9, NULL_CLASS, 5], &dev).unwrap();
        let (f, jv) = net.raw_tangent(&x, &v, &c, Some(&labels)).unwrap();
        let h = 1e-2;
        let plus = net.raw(&(&x + (&v * h).unwrap()).unwrap(), &c, Some(&labels)).unwrap();
        let minus = net.raw(&(&x - (&v * h).unwrap()).unwrap(), &c, Some(&labels)).unwrap();
        let fd = ((plus - minus).unwrap() / (2.0 * h)).unwrap();
        let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = max(&fd);
        let err = max(&(&jv - &fd).unwrap());
        assert!(err < 2e-3 * scale, "tangent vs finite differences: {err} (scale {scale})");
        assert!(max(&(f - net.raw(&x, &c, Some(&labels)).unwrap()).unwrap()) < 1e-5 * scale.max(1.0));
    }
}
