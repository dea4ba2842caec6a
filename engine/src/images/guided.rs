//! The image nets as the samplers' [`Field`]: a denoiser D(x; σ, c) with fixed labels c (or
//! none), guided with the classifier-free scale s when the model has the null class:
//! D = D(x, ∅) + s (D(x, c) − D(x, ∅)), so s = 0 is the unconditional model, s = 1 the
//! conditional one, s > 1 guided (Ho & Salimans' w = s − 1). Two implementations: candle's
//! ([`Guided`], any device) and the CPU's plain-buffer passes ([`FastGuided`] over a
//! [`BufferDenoiser`]).

use candle_core::{Device, Result, Tensor};

use super::ImageNet;
use super::unet::NULL_CLASS;
use crate::samplers::{Field, score_from_denoised};

/// A class-conditional denoiser on plain buffers (the CPU inference passes of the image MLP and
/// the U-Net): D(x; σ_i, c_i) of the images x (N × D) into `out` (N × D).
pub trait BufferDenoiser {
    fn denoise(&mut self, x: &[f32], sigma: &[f32], labels: &[u32], out: &mut [f32]);
}

impl BufferDenoiser for crate::train::fast::image::ImageForward {
    fn denoise(&mut self, x: &[f32], sigma: &[f32], labels: &[u32], out: &mut [f32]) {
        crate::train::fast::image::ImageForward::denoise(self, x, sigma, labels, out)
    }
}

impl BufferDenoiser for crate::train::fast::unet::FastUnet {
    fn denoise(&mut self, x: &[f32], sigma: &[f32], labels: &[u32], out: &mut [f32]) {
        crate::train::fast::unet::FastUnet::denoise(self, x, sigma, labels, out)
    }
}

/// Network passes per guided evaluation with classifier-free guidance scale `s`: the
/// conditional one (s ≠ 0), the unconditional one (s ≠ 1).
pub fn guided_passes(s: f64) -> usize {
    usize::from(s != 0.0) + usize::from(s != 1.0)
}

/// A candle net on images of `shape` (N, C, H, W) with fixed labels (or none) and guidance `s`.
pub struct Guided<'a> {
    pub net: &'a dyn ImageNet,
    pub shape: [usize; 4],
    pub labels: Option<Tensor>,
    pub null: Option<Tensor>,
    pub s: f64,
    pub device: Device,
}

impl Guided<'_> {
    fn denoise_tensor(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let n = x.dim(0)?;
        let s = Tensor::full(sigma as f32, n, x.device())?;
        // Detached: a sampler chains dozens of evaluations, and candle would otherwise keep
        // every one's activations alive for a backward pass that never comes.
        let null = match &self.null {
            Some(null) if self.s != 1.0 => null,
            _ => return Ok(self.net.denoise(x, &s, self.labels.as_ref())?.detach()),
        };
        let uncond = self.net.denoise(x, &s, Some(null))?.detach();
        if self.s == 0.0 {
            return Ok(uncond);
        }
        let cond = self.net.denoise(x, &s, self.labels.as_ref())?.detach();
        (cond * self.s)? + (uncond * (1.0 - self.s))?
    }
}

impl Field for Guided<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()> {
        let sigma = sigma.ok_or_else(|| candle_core::Error::Msg("an image denoiser needs a noise level".into()))?;
        self.denoise(x, sigma, out)?;
        score_from_denoised(x, sigma, out);
        Ok(())
    }
    fn denoise(&mut self, x: &[f32], sigma: f64, out: &mut [f32]) -> Result<()> {
        let xt = Tensor::from_slice(x, &self.shape, &self.device)?;
        let d = self.denoise_tensor(&xt, sigma)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        out.copy_from_slice(&d);
        Ok(())
    }
}

/// A plain-buffer forward pass (the MLP's or the U-Net's) with fixed labels and guidance `s`,
/// as [`Guided`] (the unconditional pass with the null class).
pub struct FastGuided<'a> {
    pub fwd: &'a mut dyn BufferDenoiser,
    pub labels: Vec<u32>,
    pub s: f64,
}

impl Field for FastGuided<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()> {
        let sigma = sigma.ok_or_else(|| candle_core::Error::Msg("an image denoiser needs a noise level".into()))?;
        self.denoise(x, sigma, out)?;
        score_from_denoised(x, sigma, out);
        Ok(())
    }
    fn denoise(&mut self, x: &[f32], sigma: f64, out: &mut [f32]) -> Result<()> {
        let sig = vec![sigma as f32; self.labels.len()];
        if self.s == 0.0 {
            self.fwd.denoise(x, &sig, &vec![NULL_CLASS; self.labels.len()], out);
        } else {
            self.fwd.denoise(x, &sig, &self.labels, out);
        }
        if self.s != 0.0 && self.s != 1.0 {
            let mut un = vec![0.0f32; x.len()];
            self.fwd.denoise(x, &sig, &vec![NULL_CLASS; self.labels.len()], &mut un);
            let (a, b) = (self.s as f32, (1.0 - self.s) as f32);
            out.iter_mut().zip(&un).for_each(|(o, u)| *o = a * *o + b * u);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{Precond, init_weights};
    use crate::rng::Rng;
    use crate::train::fast::image::ImageForward;
    use candle_nn::VarMap;
    use schema::image::{ImageMlpSpec, ImageModel};

    /// Classifier-free guidance, both denoisers (candle's and the plain-buffer pass): scale 0 is
    /// the unconditional model, 1 the conditional one, and any s gives
    /// s D(x, c) + (1 − s) D(x, ∅) exactly, with the passes it needs.
    #[test]
    fn guidance_zero_is_the_unconditional_model_and_s_mixes_linearly() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let spec = ImageMlpSpec { hidden: 16, depth: 1, emb: 8, class_cond: true };
        let net = super::super::build(&ImageModel::Mlp(spec.clone()), Precond::Edm { sigma_data: 0.5 }, 1, 4, 4, &vm, &dev).unwrap();
        init_weights(&vm, &mut Rng::new(1)).unwrap();
        let xs = Rng::new(2).normals_f32(3 * 16);
        let x = Tensor::from_vec(xs.clone(), (3, 1, 4, 4), &dev).unwrap();
        let labels = Tensor::new(&[1u32, 4, 9], &dev).unwrap();
        let null = Tensor::full(NULL_CLASS, 3, &dev).unwrap();
        let sigma = Tensor::full(0.7f32, 3, &dev).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let cond = flat(net.denoise(&x, &sigma, Some(&labels)).unwrap());
        let uncond = flat(net.denoise(&x, &sigma, Some(&null)).unwrap());
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        assert!(max_diff(&cond, &uncond) > 1e-4, "the class must change the output");
        let mut fwd = ImageForward::new(&spec, 16, Precond::Edm { sigma_data: 0.5 }, &vm).unwrap();
        let guided = |s: f64| Guided { net: net.as_ref(), shape: [3, 1, 4, 4], labels: Some(labels.clone()), null: Some(null.clone()), s, device: dev.clone() };
        let mut out = vec![0.0f32; 48];
        for (s, passes) in [(0.0, 1), (1.0, 1), (2.5, 2), (0.4, 2)] {
            let want: Vec<f32> = cond.iter().zip(&uncond).map(|(c, u)| (*c as f64 * s + *u as f64 * (1.0 - s)) as f32).collect();
            guided(s).denoise(&xs, 0.7, &mut out).unwrap();
            assert!(max_diff(&out, &want) < 1e-5, "s = {s}");
            FastGuided { fwd: &mut fwd, labels: vec![1, 4, 9], s }.denoise(&xs, 0.7, &mut out).unwrap();
            assert!(max_diff(&out, &want) < 1e-4, "s = {s}, plain buffers");
            assert_eq!(guided_passes(s), passes);
        }
        guided(0.0).denoise(&xs, 0.7, &mut out).unwrap();
        assert_eq!(max_diff(&out, &uncond), 0.0, "scale 0 is the unconditional model");
        guided(1.0).denoise(&xs, 0.7, &mut out).unwrap();
        assert_eq!(max_diff(&out, &cond), 0.0, "scale 1 is the conditional one");
        // The score a sampler sees is (D − x)/σ².
        guided(1.0).score(&xs, Some(0.7), &mut out).unwrap();
        let want: Vec<f32> = cond.iter().zip(&xs).map(|(d, x)| ((*d as f64 - *x as f64) / 0.49) as f32).collect();
        assert!(max_diff(&out, &want) < 1e-4);
    }
}
