//! Score models with forward-mode tangents.
//!
//! candle has no second-order autograd, so every model computes, besides S(x, σ), the
//! directional derivatives J·v (J = ∂S/∂x) as ordinary candle ops: tangents are pushed forward
//! through each layer (Linear: W·dx; activation: a'(z)⊙dz). One reverse pass of any objective
//! built from S and J·v then gives ∇θ.
//!
//! Both models end in a linear map, so the tangent output factors as J·V = T·Pᵀ with T of shape
//! (K, N, H) and P of shape (D, H). This lets the exact trace use only the diagonal entries
//! (J e_k)_k = T_k · P_k, never forming the D×D Jacobian (see [`Tangents::diag`]).
//!
//! - [`MlpScore`]: S(x, σ) = W_out·h_L + b (optionally / σ, as in NCSNv2), input [x, log σ].
//! - [`EnergyNet`]: a scalar q(x, σ; θ) whose score ∇ₓq is computed in closed form (a hand-written
//!   backward through the MLP, as candle ops so it stays differentiable in θ); its tangents are
//!   Hessian-vector products, which need a''.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::VarMap;

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    Softplus,
    Tanh,
    Relu,
}

impl Activation {
    /// True if a' is continuous (needed by ISM/SSM and by energy nets).
    pub fn is_smooth(self) -> bool {
        !matches!(self, Activation::Relu)
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Softplus => "softplus",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
        }
    }

    /// a(z) and, if asked, a'(z) and a''(z), sharing intermediate results.
    pub fn eval(self, z: &Tensor, order: usize) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
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
fn inputs(arch: &Arch, x: &Tensor, sigma: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
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
fn build_layers(arch: &Arch, out_dim: usize, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<(Vec<Dense>, Dense)> {
    let mut layers = Vec::with_capacity(arch.depth);
    let mut fan_in = arch.dim + arch.conditional as usize;
    for l in 0..arch.depth {
        layers.push(Dense::new(varmap, &format!("l{l}"), fan_in, arch.hidden, rng, dev)?);
        fan_in = arch.hidden;
    }
    Ok((layers, Dense::new(varmap, "out", fan_in, out_dim, rng, dev)?))
}

/// dz₁ for the given probes: V·W₁ₓᵀ, or columns of W₁ₓ for basis probes.
fn first_tangent(w1: &Tensor, dim: usize, probes: &Probes) -> Result<Tensor> {
    let w1x = w1.narrow(1, 0, dim)?; // (H, D)
    match probes {
        Probes::Vectors(v) => {
            let (k, n, d) = v.dims3()?;
            let h = w1.dim(0)?;
            v.reshape((k * n, d))?.matmul(&w1x.t()?)?.reshape((k, n, h))
        }
        Probes::Basis { start, len } => w1x.narrow(1, *start, *len)?.t()?.unsqueeze(1),
    }
}

/// The noise-conditional MLP score net.
pub struct MlpScore {
    pub arch: Arch,
    pub layers: Vec<Dense>,
    pub out: Dense,
}

impl MlpScore {
    pub fn new(arch: Arch, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let (layers, out) = build_layers(&arch, arch.dim, varmap, rng, dev)?;
        Ok(MlpScore { arch, layers, out })
    }

    pub fn score(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        for l in &self.layers {
            h = self.arch.activation.eval(&l.forward(&h)?, 0)?.0;
        }
        let s = self.out.forward(&h)?;
        match scale {
            Some(c) => s.broadcast_mul(&c),
            None => Ok(s),
        }
    }

    /// S and the exact trace in closed form for depth ≤ 2, using the cyclic property:
    /// tr(W_out D₂ W₂ D₁ W₁ₓ) = d₂ᵀ (W₂ ⊙ Mᵀ) d₁ with M = W₁ₓ W_out (H×H, parameters only) and
    /// d_l = a'(z_l); depth 1: d₁ · diag(M). Cost N·H² instead of D·N·H² for D tangents.
    /// None for deeper nets (use tangents).
    pub fn score_and_trace_closed(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Option<(Tensor, Tensor)>> {
        if self.arch.depth > 2 {
            return Ok(None);
        }
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        let mut d1s = Vec::with_capacity(2);
        for l in &self.layers {
            let (a, d1, _) = self.arch.activation.eval(&l.forward(&h)?, 1)?;
            d1s.push(d1.expect("order 1"));
            h = a;
        }
        let mut s = self.out.forward(&h)?;
        let w1x = self.layers[0].w.narrow(1, 0, self.arch.dim)?;
        let m = w1x.matmul(&self.out.w)?; // (H, H)
        let mut tr = if self.arch.depth == 1 {
            let n = m.dim(0)?;
            let diag = (m * Tensor::eye(n, x.dtype(), x.device())?)?.sum(1)?; // (H,)
            d1s[0].broadcast_mul(&diag)?.sum(1)?
        } else {
            let a = (&self.layers[1].w * m.t()?)?; // (H, H)
            (d1s[0].matmul(&a.t()?)? * &d1s[1])?.sum(1)?
        };
        if let Some(c) = &scale {
            s = s.broadcast_mul(c)?;
            tr = (tr * c.squeeze(1)?)?;
        }
        Ok(Some((s, tr)))
    }

    pub fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        let mut dz = first_tangent(&self.layers[0].w, self.arch.dim, probes)?;
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                let (k, n, hd) = dz.dims3()?;
                dz = dz.reshape((k * n, hd))?.matmul(&l.w.t()?)?.reshape((k, n, l.w.dim(0)?))?;
            }
            let (a, d1, _) = self.arch.activation.eval(&l.forward(&h)?, 1)?;
            dz = dz.broadcast_mul(&d1.expect("order 1"))?; // dh_l
            h = a;
        }
        let mut s = self.out.forward(&h)?;
        if let Some(c) = &scale {
            s = s.broadcast_mul(c)?;
        }
        Ok(Tangents { score: s, t: dz, p: self.out.w.clone(), scale })
    }
}

/// The energy net q(x, σ; θ): p_θ ∝ e^q, S = ∇ₓq in closed form.
pub struct EnergyNet {
    pub arch: Arch,
    pub layers: Vec<Dense>,
    pub out: Dense,
}

impl EnergyNet {
    pub fn new(arch: Arch, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let (layers, out) = build_layers(&arch, 1, varmap, rng, dev)?;
        Ok(EnergyNet { arch, layers, out })
    }

    /// q(x, σ) (N, 1), including the 1/σ factor when `scale_by_sigma`.
    pub fn energy(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        for l in &self.layers {
            h = self.arch.activation.eval(&l.forward(&h)?, 0)?.0;
        }
        let q = self.out.forward(&h)?;
        match scale {
            Some(c) => q.broadcast_mul(&c),
            None => Ok(q),
        }
    }

    /// Forward pass keeping z_l, a'(z_l), a''(z_l); then δz_l = ∂q/∂z_l backwards.
    fn backward_pass(&self, x: &Tensor, sigma: Option<&Tensor>, order: usize) -> Result<Pass> {
        let (mut h, scale) = inputs(&self.arch, x, sigma)?;
        let mut d1s = Vec::new();
        let mut d2s = Vec::new();
        for l in &self.layers {
            let (a, d1, d2) = self.arch.activation.eval(&l.forward(&h)?, order)?;
            d1s.push(d1.expect("order ≥ 1"));
            d2s.push(d2);
            h = a;
        }
        // δh_L = w_out (1, H); δz_l = a'(z_l) ⊙ δh_l; δh_{l−1} = δz_l W_l.
        let mut dh = self.out.w.clone();
        let mut dzs = vec![None; self.layers.len()];
        for l in (0..self.layers.len()).rev() {
            let dz = d1s[l].broadcast_mul(&dh)?;
            if l > 0 {
                dh = dz.matmul(&self.layers[l].w)?;
            }
            dzs[l] = Some((dz, dh.clone()));
        }
        let dz1 = dzs[0].as_ref().expect("depth ≥ 1").0.clone();
        let w1x = self.layers[0].w.narrow(1, 0, self.arch.dim)?;
        let mut s = dz1.matmul(&w1x)?;
        if let Some(c) = &scale {
            s = s.broadcast_mul(c)?;
        }
        Ok(Pass { score: s, scale, d1s, d2s, dzs: dzs.into_iter().map(|v| v.expect("filled")).collect() })
    }

    pub fn score(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.backward_pass(x, sigma, 1)?.score)
    }

    /// Hessian-vector products of q by forward-mode through the closed-form score.
    pub fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        let pass = self.backward_pass(x, sigma, 2)?;
        let nl = self.layers.len();
        // Forward tangents dz_l.
        let mut dzs = Vec::with_capacity(nl);
        let mut dz = first_tangent(&self.layers[0].w, self.arch.dim, probes)?;
        for l in 0..nl {
            if l > 0 {
                let dh = dz.broadcast_mul(&pass.d1s[l - 1])?;
                let (k, n, hd) = dh.dims3()?;
                dz = dh.reshape((k * n, hd))?.matmul(&self.layers[l].w.t()?)?.reshape((k, n, self.arch.hidden))?;
            }
            dzs.push(dz.clone());
        }
        // Backward tangents: dδz_l = a''(z_l)⊙dz_l⊙δh_l + a'(z_l)⊙dδh_l; dδh_{l−1} = dδz_l W_l.
        let mut ddh: Option<Tensor> = None;
        let mut ddz = None;
        for l in (0..nl).rev() {
            let d2 = pass.d2s[l].as_ref().expect("order 2");
            let dh_l = if l + 1 < nl { pass.dzs[l + 1].1.clone() } else { self.out.w.clone() };
            let mut v = dzs[l].broadcast_mul(&(d2.broadcast_mul(&dh_l))?)?;
            if let Some(ddh) = &ddh {
                v = (v + ddh.broadcast_mul(&pass.d1s[l])?)?;
            }
            if l > 0 {
                let (k, n, hd) = v.dims3()?;
                ddh = Some(v.reshape((k * n, hd))?.matmul(&self.layers[l].w)?.reshape((k, n, self.arch.hidden))?);
            }
            ddz = Some(v);
        }
        let w1x = self.layers[0].w.narrow(1, 0, self.arch.dim)?;
        Ok(Tangents { score: pass.score, t: ddz.expect("depth ≥ 1"), p: w1x.t()?, scale: pass.scale })
    }
}

struct Pass {
    score: Tensor,
    scale: Option<Tensor>,
    d1s: Vec<Tensor>,
    d2s: Vec<Option<Tensor>>,
    /// (δz_l, δh_{l−1}) per layer; δh_{l−1} is unused for l = 0.
    dzs: Vec<(Tensor, Tensor)>,
}

/// Either model kind.
pub enum Model {
    Mlp(MlpScore),
    Energy(EnergyNet),
}

impl Model {
    pub fn arch(&self) -> &Arch {
        match self {
            Model::Mlp(m) => &m.arch,
            Model::Energy(m) => &m.arch,
        }
    }

    pub fn score(&self, x: &Tensor, sigma: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Model::Mlp(m) => m.score(x, sigma),
            Model::Energy(m) => m.score(x, sigma),
        }
    }

    pub fn tangents(&self, x: &Tensor, sigma: Option<&Tensor>, probes: &Probes) -> Result<Tangents> {
        match self {
            Model::Mlp(m) => m.tangents(x, sigma, probes),
            Model::Energy(m) => m.tangents(x, sigma, probes),
        }
    }

    /// S and the exact trace tr(∂S/∂x) per point: in closed form where the model has one
    /// (MLP score nets of depth ≤ 2), else from D basis tangents in chunks of `chunk`.
    pub fn score_and_trace(&self, x: &Tensor, sigma: Option<&Tensor>, chunk: usize) -> Result<(Tensor, Tensor)> {
        if let Model::Mlp(m) = self {
            if let Some(st) = m.score_and_trace_closed(x, sigma)? {
                return Ok(st);
            }
        }
        self.score_and_trace_tangents(x, sigma, chunk)
    }

    /// The exact trace from D basis tangents in chunks of `chunk` (the reference method).
    pub fn score_and_trace_tangents(&self, x: &Tensor, sigma: Option<&Tensor>, chunk: usize) -> Result<(Tensor, Tensor)> {
        let d = self.arch().dim;
        let mut score = None;
        let mut trace: Option<Tensor> = None;
        let mut start = 0;
        while start < d {
            let len = chunk.min(d - start);
            let tg = self.tangents(x, sigma, &Probes::Basis { start, len })?;
            let part = tg.diag(start, len)?.sum(0)?;
            trace = Some(match trace {
                Some(t) => (t + part)?,
                None => part,
            });
            score.get_or_insert(tg.score);
            start += len;
        }
        Ok((score.expect("dim ≥ 1"), trace.expect("dim ≥ 1")))
    }
}

/// A (N, 1) column of σ values.
pub fn sigma_column(sigmas: &[f32], dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(sigmas, (sigmas.len(), 1), dev)
}

/// Row-major f64 points to an (N, D) f32 tensor.
pub fn points(xs: &[f64], dim: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, (xs.len() / dim, dim), dev)?.to_dtype(DType::F32)
}
