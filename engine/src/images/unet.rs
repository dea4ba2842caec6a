//! A U-Net denoiser for 1-channel images in candle, with EDM's preconditioning (Karras et al.
//! 2022): D(x; σ, c) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ), c), where
//! c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²) and
//! c_noise = ln(σ)/4. The score is (D − x)/σ².
//!
//! F: conv 3×3 in → per level, `blocks` residual blocks (GroupNorm, SiLU, conv 3×3, plus the
//! embedding of σ and class added per channel) and a stride-2 conv down (28 → 14 → 7); two
//! middle blocks; the mirror path up with the level's skip concatenated, nearest upsampling and
//! a conv; GroupNorm, SiLU, conv 3×3 out. The class embedding has one extra row, the "no class"
//! label that classifier-free guidance trains with label dropout.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder, VarMap};
use schema::image::UnetSpec;

use super::conv::Conv;
use super::norm::GroupNormSilu;
use super::{ImageNet, Precond};

/// The label that means "no class" (unconditional), one past the ten digits.
pub const NULL_CLASS: u32 = 10;

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv> {
    Conv::new(cin, cout, k, stride, vb)
}

struct ResBlock {
    norm1: GroupNormSilu,
    conv1: Conv,
    emb: Linear,
    norm2: GroupNormSilu,
    conv2: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    fn new(vb: VarBuilder, cin: usize, cout: usize, emb: usize, groups: usize) -> Result<Self> {
        Ok(ResBlock {
            norm1: GroupNormSilu::new(groups, cin, 1e-5, true, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), cin, cout, 3, 1)?,
            emb: candle_nn::linear(emb, cout, vb.pp("emb"))?,
            norm2: GroupNormSilu::new(groups, cout, 1e-5, true, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), cout, cout, 3, 1)?,
            skip: if cin != cout { Some(conv(vb.pp("skip"), cin, cout, 1, 1)?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?)?;
        let e = self.emb.forward(emb)?;
        let h = self.conv2.forward(&self.norm2.forward_shifted(&h, &e)?)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        (h + skip)? * std::f64::consts::FRAC_1_SQRT_2
    }
}

/// The U-Net F with EDM's preconditioning around it.
pub struct Unet {
    spec: UnetSpec,
    precond: Precond,
    conv_in: Conv,
    freq: Tensor,
    emb1: Linear,
    emb2: Linear,
    class_emb: Option<Embedding>,
    down: Vec<(Vec<ResBlock>, Option<Conv>)>,
    mid: [ResBlock; 2],
    up: Vec<(Vec<ResBlock>, Option<Conv>)>,
    norm_out: GroupNormSilu,
    conv_out: Conv,
}

impl Unet {
    pub fn new(spec: &UnetSpec, precond: Precond, varmap: &VarMap, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let c = spec.channels;
        let g = spec.groups;
        let conv_in = conv(vb.pp("conv_in"), 1, c, 3, 1)?;
        // Fourier features of c_noise: `c` frequencies 10000^(−k/(c/2)) (sin and cos).
        let half = c / 2;
        let freq = super::frequencies(half, dev)?;
        let emb1 = candle_nn::linear(2 * half, spec.emb, vb.pp("emb1"))?;
        let emb2 = candle_nn::linear(spec.emb, spec.emb, vb.pp("emb2"))?;
        let class_emb = if spec.class_cond { Some(candle_nn::embedding(NULL_CLASS as usize + 1, spec.emb, vb.pp("class_emb"))?) } else { None };
        let levels = spec.mults.len();
        let mut down = Vec::new();
        let mut ch = c;
        let mut skips = Vec::new();
        for (i, &m) in spec.mults.iter().enumerate() {
            let vbl = vb.pp(format!("down{i}"));
            let mut blocks = Vec::new();
            for b in 0..spec.blocks {
                blocks.push(ResBlock::new(vbl.pp(format!("block{b}")), ch, c * m, spec.emb, g)?);
                ch = c * m;
            }
            skips.push(ch);
            let ds = if i + 1 < levels { Some(conv(vbl.pp("down"), ch, ch, 3, 2)?) } else { None };
            down.push((blocks, ds));
        }
        let mid = [ResBlock::new(vb.pp("mid0"), ch, ch, spec.emb, g)?, ResBlock::new(vb.pp("mid1"), ch, ch, spec.emb, g)?];
        let mut up = Vec::new();
        for (i, &m) in spec.mults.iter().enumerate().rev() {
            let vbl = vb.pp(format!("up{i}"));
            let mut blocks = Vec::new();
            for b in 0..spec.blocks {
                let cin = if b == 0 { ch + skips[i] } else { ch };
                blocks.push(ResBlock::new(vbl.pp(format!("block{b}")), cin, c * m, spec.emb, g)?);
                ch = c * m;
            }
            let us = if i > 0 { Some(conv(vbl.pp("up"), ch, ch, 3, 1)?) } else { None };
            up.push((blocks, us));
        }
        let norm_out = GroupNormSilu::new(g, ch, 1e-5, true, vb.pp("norm_out"))?;
        let conv_out = conv(vb.pp("conv_out"), ch, 1, 3, 1)?;
        Ok(Unet { spec: spec.clone(), precond, conv_in, freq, emb1, emb2, class_emb, down, mid, up, norm_out, conv_out })
    }

    pub fn spec(&self) -> &UnetSpec {
        &self.spec
    }
}

impl ImageNet for Unet {
    fn precond(&self) -> Precond {
        self.precond
    }

    fn raw(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let four = super::fourier(c_noise, &self.freq)?;
        let mut emb = self.emb2.forward(&self.emb1.forward(&four)?.silu()?)?;
        if let (Some(ce), Some(l)) = (&self.class_emb, labels) {
            emb = (emb + ce.forward(l)?)?;
        }
        let emb = emb.silu()?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = Vec::new();
        for (blocks, ds) in &self.down {
            for b in blocks {
                h = b.forward(&h, &emb)?;
            }
            skips.push(h.clone());
            if let Some(d) = ds {
                h = d.forward(&h)?;
            }
        }
        for b in &self.mid {
            h = b.forward(&h, &emb)?;
        }
        for (blocks, us) in &self.up {
            let skip = skips.pop().expect("one skip per level");
            for (k, b) in blocks.iter().enumerate() {
                h = if k == 0 { b.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb)? } else { b.forward(&h, &emb)? };
            }
            if let Some(u) = us {
                let target = skips.last().expect("a level above").dims4()?;
                h = u.forward(&h.upsample_nearest2d(target.2, target.3)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?)
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
            let net = Unet::new(&spec, Precond::Edm { sigma_data: 0.5 }, &vm, &dev).unwrap();
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
