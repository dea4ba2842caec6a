//! Building blocks of the score models: activations with their derivatives as candle ops,
//! dense layers, the architecture of an MLP, the forward-mode tangents J·v, and conversions
//! from plain buffers to tensors.
//!
//! candle has no second-order autograd, so every model computes, besides S(x, σ), the
//! directional derivatives J·v (J = ∂S/∂x) as ordinary candle ops: tangents are pushed forward
//! through each layer (Linear: W·dx; activation: a'(z)⊙dz). One reverse pass of any objective
//! built from S and J·v then gives ∇θ.
//!
//! Both MLP models end in a linear map, so the tangent output factors as J·V = T·Pᵀ with T of
//! shape (K, N, H) and P of shape (D, H). This lets the exact trace use only the diagonal
//! entries (J e_k)_k = T_k · P_k, never forming the D×D Jacobian (see [`Tangents::diag`]).

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;

use crate::rng::Rng;
pub use schema::trial::Activation;

/// The activation's values and derivatives as candle ops.
pub trait ActivationOps {
    /// a(z) and, if asked, a'(z) and a''(z), sharing intermediate results.
    fn eval(self, z: &Tensor, order: usize) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)>;
}

impl ActivationOps for Activation {
    fn eval(self, z: &Tensor, order: usize) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        match self {
            Activation::Silu => {
                let s = candle_nn::ops::sigmoid(z)?;
                let a = (z * &s)?;
                if order == 0 {
                    return Ok((a, None, None));
                }
                let oms = s.affine(-1.0, 1.0)?; // 1 − s
                let zoms = (z * &oms)?;
                let d1 = (&s * zoms.affine(1.0, 1.0)?)?; // s(1 + z(1−s))
                let d2 = if order >= 2 {
                    // s(1−s)(2 + z(1−2s))
                    let one_m_2s = s.affine(-2.0, 1.0)?;
                    let inner = (z * one_m_2s)?.affine(1.0, 2.0)?;
                    Some(((&s * &oms)? * inner)?)
                } else {
                    None
                };
                Ok((a, Some(d1), d2))
            }
            Activation::Softplus => {
                // log(1 + e^z) = relu(z) + log(1 + e^{−|z|})
                let a = (z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
                if order == 0 {
                    return Ok((a, None, None));
                }
                let s = candle_nn::ops::sigmoid(z)?;
                let d2 = if order >= 2 { Some((&s * s.affine(-1.0, 1.0)?)?) } else { None };
                Ok((a, Some(s), d2))
            }
            Activation::Tanh => {
                let t = z.tanh()?;
                if order == 0 {
                    return Ok((t, None, None));
                }
                let d1 = t.sqr()?.affine(-1.0, 1.0)?;
                let d2 = if order >= 2 { Some((&t * &d1)?.affine(-2.0, 0.0)?) } else { None };
                Ok((t, Some(d1), d2))
            }
            Activation::Relu => {
                let a = z.relu()?;
                if order == 0 {
                    return Ok((a, None, None));
                }
                let d1 = z.ge(0.0)?.to_dtype(z.dtype())?;
                let d2 = if order >= 2 { Some(d1.zeros_like()?) } else { None };
                Ok((a, Some(d1), d2))
            }
        }
    }
}

/// Which tangent directions to push forward.
pub enum Probes<'a> {
    /// Explicit directions, shape (K, N, D).
    Vectors(&'a Tensor),
    /// Standard basis vectors e_start … e_{start+len−1}, shared by every point.
    Basis { start: usize, len: usize },
}

/// Score and tangents: J·V = (T·Pᵀ) ⊙ scale.
pub struct Tangents {
    /// S(x, σ), shape (N, D).
    pub score: Tensor,
    /// (K, N, H).
    pub t: Tensor,
    /// (D, H).
    pub p: Tensor,
    /// Optional per-point factor (N, 1) applied to S and J (1/σ for `scale_by_sigma`).
    pub scale: Option<Tensor>,
}

impl Tangents {
    /// J·V, shape (K, N, D).
    pub fn jv(&self) -> Result<Tensor> {
        let (k, n, h) = self.t.dims3()?;
        let d = self.p.dim(0)?;
        let out = self.t.reshape((k * n, h))?.matmul(&self.p.t()?)?.reshape((k, n, d))?;
        match &self.scale {
            Some(s) => out.broadcast_mul(s),
            None => Ok(out),
        }
    }

    /// For `Probes::Basis { start, len }`: the diagonal entries (J e_k)_k, shape (len, N).
    pub fn diag(&self, start: usize, len: usize) -> Result<Tensor> {
        let pk = self.p.narrow(0, start, len)?.unsqueeze(1)?; // (len, 1, H)
        let out = self.t.broadcast_mul(&pk)?.sum(D::Minus1)?; // (len, N)
        match &self.scale {
            Some(s) => out.broadcast_mul(&s.t()?),
            None => Ok(out),
        }
    }
}

/// A dense layer y = x Wᵀ + b, initialised like PyTorch's `nn.Linear` (U(±1/√fan_in)).
#[derive(Clone)]
pub struct Dense {
    pub w: Tensor,
    pub b: Tensor,
}

impl Dense {
    fn new(varmap: &VarMap, name: &str, fan_in: usize, fan_out: usize, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect() };
        let w = Var::from_tensor(&Tensor::from_vec(draw(fan_in * fan_out), (fan_out, fan_in), dev)?)?;
        let b = Var::from_tensor(&Tensor::from_vec(draw(fan_out), fan_out, dev)?)?;
        let mut data = varmap.data().lock().expect("varmap lock");
        data.insert(format!("{name}.weight"), w.clone());
        data.insert(format!("{name}.bias"), b.clone());
        Ok(Dense { w: w.as_tensor().clone(), b: b.as_tensor().clone() })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.w.t()?)?.broadcast_add(&self.b)
    }
}

/// Architecture shared by both model kinds.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    pub dim: usize,
    pub hidden: usize,
    pub depth: usize,
    pub activation: Activation,
    /// Feed log σ as an extra input (noise-conditional model).
    pub conditional: bool,
    /// Multiply the score by 1/σ (NCSNv2's s(x)/σ).
    pub scale_by_sigma: bool,
}

/// Builds the input [x, log σ] and the per-point 1/σ factor.
pub(crate) fn inputs(arch: &Arch, x: &Tensor, sigma: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
    match (arch.conditional, sigma) {
        (true, Some(s)) => {
            let h0 = Tensor::cat(&[x, &s.log()?], 1)?;
            let scale = if arch.scale_by_sigma { Some(s.recip()?) } else { None };
            Ok((h0, scale))
        }
        (true, None) => candle_core::bail!("noise-conditional model called without σ"),
        (false, _) => Ok((x.clone(), None)),
    }
}

/// Hidden layers `l0…` and an output layer `out` of width `out_dim`, registered in `varmap`.
pub(crate) fn build_layers(arch: &Arch, out_dim: usize, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<(Vec<Dense>, Dense)> {
    let mut layers = Vec::with_capacity(arch.depth);
    let mut fan_in = arch.dim + arch.conditional as usize;
    for l in 0..arch.depth {
        layers.push(Dense::new(varmap, &format!("l{l}"), fan_in, arch.hidden, rng, dev)?);
        fan_in = arch.hidden;
    }
    Ok((layers, Dense::new(varmap, "out", fan_in, out_dim, rng, dev)?))
}

/// W₁ₓ, the first layer's weights on x (its first `dim` columns), as a contiguous (H, D)
/// matrix: candle's CUDA matmul (cuBLAS) refuses a matrix whose row stride is not its width,
/// which a column slice of W₁ = [W₁ₓ | W₁σ] is.
pub(crate) fn input_weights(w1: &Tensor, dim: usize) -> Result<Tensor> {
    w1.narrow(1, 0, dim)?.contiguous()
}

/// dz₁ for the given probes: V·W₁ₓᵀ, or columns of W₁ₓ for basis probes.
pub(crate) fn first_tangent(w1: &Tensor, dim: usize, probes: &Probes) -> Result<Tensor> {
    let w1x = input_weights(w1, dim)?; // (H, D)
    match probes {
        Probes::Vectors(v) => {
            let (k, n, d) = v.dims3()?;
            let h = w1.dim(0)?;
            v.reshape((k * n, d))?.matmul(&w1x.t()?)?.reshape((k, n, h))
        }
        Probes::Basis { start, len } => w1x.narrow(1, *start, *len)?.t()?.unsqueeze(1),
    }
}

/// Row-major f64 points to an (N, D) f32 tensor.
pub fn points(xs: &[f64], dim: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, (xs.len() / dim, dim), dev)?.to_dtype(DType::F32)
}
