//! A U-Net denoiser in candle, with EDM's preconditioning (Karras et al. 2022):
//! D(x; σ, c) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ), c), where
//! c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²) and
//! c_noise = ln(σ)/4. The score is (D − x)/σ².
//!
//! F is the layer program of [`arch::Arch`] (the one description of the architecture, shared
//! with the plain-buffer `train::fast::unet::FastUnet`), run here op by op with candle modules:
//! [`Conv`] for convolutions, [`GroupNormSilu`] for GroupNorm + SiLU (+ the embedding shift),
//! candle_nn's linear layers and class embedding. The class embedding has one extra row, the
//! "no class" label that classifier-free guidance trains with label dropout.

use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::{Embedding, Linear, VarBuilder, VarMap};
use schema::image::UnetSpec;

use super::conv::Conv;
use super::norm::GroupNormSilu;
use super::{ImageNet, Precond};

pub mod arch;

use arch::{Arch, GN_EPS, Op};

/// The label that means "no class" (unconditional), one past the ten digits.
pub const NULL_CLASS: u32 = 10;

/// The candle module of one op of the program (none for the parameter-free ops).
enum Layer {
    None,
    Conv(Conv),
    Lin(Linear),
    Gn(GroupNormSilu),
    Class(Embedding),
}

/// The U-Net F with EDM's preconditioning around it.
pub struct Unet {
    spec: UnetSpec,
    precond: Precond,
    arch: Arch,
    freq: Tensor,
    layers: Vec<Layer>,
}

impl Unet {
    /// The net of `spec` on h×w images of `channels` channels, its weights in `varmap`.
    pub fn new(spec: &UnetSpec, precond: Precond, channels: usize, h: usize, w: usize, varmap: &VarMap, dev: &Device) -> Result<Self> {
        let arch = Arch::new(spec, channels, h, w).map_err(candle_core::Error::Msg)?;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let (bufs, params) = (&arch.bufs, &arch.params);
        let layers = arch
            .ops
            .iter()
            .map(|op| {
                Ok(match *op {
                    Op::Conv { src, dst, k, stride, w, .. } => Layer::Conv(Conv::new(bufs[src].c, bufs[dst].c, k, stride, vb.pp(params[w].layer()))?),
                    Op::Lin { src, dst, w, .. } => Layer::Lin(candle_nn::linear(bufs[src].c, bufs[dst].c, vb.pp(params[w].layer()))?),
                    Op::Gn { src, gamma, groups, .. } => Layer::Gn(GroupNormSilu::new(groups, bufs[src].c, GN_EPS as f64, true, vb.pp(params[gamma].layer()))?),
                    Op::ClassAdd { src, table, .. } => {
                        let e = bufs[src].c;
                        Layer::Class(candle_nn::embedding(params[table].len / e, e, vb.pp(params[table].layer()))?)
                    }
                    Op::Silu { .. } | Op::AddScale { .. } | Op::Concat { .. } | Op::Up { .. } => Layer::None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let freq = super::frequencies(arch.frequencies, dev)?;
        Ok(Unet { spec: spec.clone(), precond, arch, freq, layers })
    }

    pub fn spec(&self) -> &UnetSpec {
        &self.spec
    }

    /// The architecture this net runs.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }
}

impl ImageNet for Unet {
    fn precond(&self) -> Precond {
        self.precond
    }

    fn raw(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let arch = &self.arch;
        let mut bufs: Vec<Option<Tensor>> = vec![None; arch.bufs.len()];
        bufs[arch.input] = Some(x.clone());
        bufs[arch.fourier] = Some(super::fourier(c_noise, &self.freq)?);
        fn get(bufs: &[Option<Tensor>], i: usize) -> Result<&Tensor> {
            bufs[i].as_ref().ok_or_else(|| candle_core::Error::Msg(format!("U-Net: buffer {i} read before it is written")))
        }
        for (op, layer) in arch.ops.iter().zip(&self.layers) {
            let b = &bufs;
            let (dst, t) = match (*op, layer) {
                (Op::Conv { src, dst, .. }, Layer::Conv(c)) => (dst, c.forward(get(b, src)?)?),
                (Op::Lin { src, dst, .. }, Layer::Lin(l)) => (dst, l.forward(get(b, src)?)?),
                (Op::Silu { src, dst }, _) => (dst, get(b, src)?.silu()?),
                (Op::ClassAdd { src, dst, .. }, Layer::Class(e)) => match labels {
                    Some(l) => (dst, (get(b, src)? + e.forward(l)?)?),
                    None => (dst, get(b, src)?.clone()),
                },
                (Op::Gn { src, shift, dst, .. }, Layer::Gn(g)) => match shift {
                    Some(s) => (dst, g.forward_shifted(get(b, src)?, get(b, s)?)?),
                    None => (dst, g.forward(get(b, src)?)?),
                },
                (Op::AddScale { a, b: r, dst, scale }, _) => (dst, ((get(b, a)? + get(b, r)?)? * scale as f64)?),
                (Op::Concat { a, b: r, dst }, _) => (dst, Tensor::cat(&[get(b, a)?, get(b, r)?], 1)?),
                (Op::Up { src, dst, like }, _) => {
                    let (_, _, h, w) = get(b, like)?.dims4()?;
                    (dst, get(b, src)?.upsample_nearest2d(h, w)?)
                }
                (op, _) => bail!("U-Net: no module for {op:?}"),
            };
            bufs[dst] = Some(t);
        }
        bufs[arch.output].take().ok_or_else(|| candle_core::Error::Msg("U-Net: no output".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes through every level configuration, and the preconditioning's limits: as σ → 0
    /// the denoiser returns its input (c_skip → 1, c_out → 0).
    #[test]
    fn shapes_and_small_sigma_limit() {
        let dev = Device::Cpu;
        for mults in [vec![1], vec![1, 2], vec![1, 2, 2]] {
            let spec = UnetSpec { channels: 8, mults: mults.clone(), blocks: 1, emb: 16, groups: 4, class_cond: true };
            let vm = VarMap::new();
            let net = Unet::new(&spec, Precond::Edm { sigma_data: 0.5 }, 1, 28, 28, &vm, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (3, 1, 28, 28), &dev).unwrap();
            let labels = Tensor::new(&[0u32, 7, NULL_CLASS], &dev).unwrap();
            let sigma = Tensor::new(&[1e-6f32, 1e-6, 1e-6], &dev).unwrap();
            let d = net.denoise(&x, &sigma, Some(&labels)).unwrap();
            assert_eq!(d.dims(), &[3, 1, 28, 28], "{mults:?}");
            let err = (d - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-4, "{mults:?}: D(x; σ→0) − x = {err}");
            assert!(super::super::parameters(&vm) > 1000);
        }
    }
}
