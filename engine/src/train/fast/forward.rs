//! Inference-only forward pass of the MLP score net over plain buffers (the samplers' hot loop).

use candle_core::Result;
use gemm::Parallelism;

use super::*;

/// Inference-only forward pass of the MLP score net over plain buffers (the samplers' hot loop).
pub struct FastForward {
    act: Activation,
    dims: Vec<usize>,
    conditional: bool,
    scale_by_sigma: bool,
    params: Vec<(Vec<f32>, Vec<f32>)>,
    par: Parallelism,
    bufs: [Vec<f32>; 3],
}

impl FastForward {
    pub fn new(model: &MlpScore) -> Result<Self> {
        let arch = &model.arch;
        let dims = layer_widths(model);
        let mut params = Vec::new();
        for l in model.layers.iter().chain(std::iter::once(&model.out)) {
            // Stored transposed (fan_in × fan_out) so the product streams contiguous rows.
            params.push((l.w.t()?.contiguous()?.flatten_all()?.to_vec1()?, l.b.flatten_all()?.to_vec1()?));
        }
        Ok(FastForward {
            act: arch.activation,
            dims,
            conditional: arch.conditional,
            scale_by_sigma: arch.scale_by_sigma,
            params,
            par: parallelism(),
            bufs: [Vec::new(), Vec::new(), Vec::new()],
        })
    }

    /// S(x, σ) for row-major points `x` into `out` (same shape).
    pub fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) {
        let d = *self.dims.last().expect("dims");
        let n = x.len() / d;
        let w0 = self.dims[0];
        let [h, z, dd] = &mut self.bufs;
        h.resize(n * w0, 0.0);
        for i in 0..n {
            h[i * w0..i * w0 + d].copy_from_slice(&x[i * d..(i + 1) * d]);
            if let (true, Some(s)) = (self.conditional, sigma) {
                h[i * w0 + d] = s.ln();
            }
        }
        let nl = self.params.len();
        for l in 0..nl {
            let (fi, fo) = (self.dims[l], self.dims[l + 1]);
            let (w, b) = &self.params[l];
            z.resize(n * fo, 0.0);
            super::affine(z, h, w, b, n, fo, fi, false, self.par);
            if l + 1 < nl {
                h.resize(n * fo, 0.0);
                dd.resize(n * fo, 0.0);
                activate(self.act, &z[..n * fo], &mut h[..n * fo], &mut dd[..n * fo]);
            }
        }
        let c = match (self.conditional && self.scale_by_sigma, sigma) {
            (true, Some(s)) => 1.0 / s,
            _ => 1.0,
        };
        for (o, v) in out.iter_mut().zip(&z[..n * d]) {
            *o = c * v;
        }
    }
}
