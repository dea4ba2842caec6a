//! Energy models on exact data in 1-2D: log Z by Simpson quadrature of e^q over the data box,
//! then the held-out NLL and KL(p‖p_θ).

use candle_core::{Device, Tensor};

use super::samples::simpson_nodes;
use crate::data::Mixture;
use crate::data::mixture::logsumexp;
use crate::models::EnergyModel;
use crate::models::layers::points;

/// Points per chunk of a quadrature grid.
const CHUNK: usize = 8192;

/// `log_z`, `nll` on `held_out` and `kl`.
pub fn energy_metrics(net: &dyn EnergyModel, mix: &Mixture, sigma: Option<f64>, held_out: &[f64], dev: &Device) -> candle_core::Result<Vec<(&'static str, f64)>> {
    let d = mix.dim;
    let e = mix.extent();
    let (nodes, w) = simpson_nodes(e, if d == 1 { 4000 } else { 400 });
    let (grid, weights): (Vec<f64>, Vec<f64>) = if d == 1 {
        (nodes.clone(), w.clone())
    } else {
        let mut g = Vec::new();
        let mut ww = Vec::new();
        for (a, wa) in nodes.iter().zip(&w) {
            for (b, wb) in nodes.iter().zip(&w) {
                g.extend([*a, *b]);
                ww.push(wa * wb);
            }
        }
        (g, ww)
    };
    let q_of = |pts: &[f64]| -> candle_core::Result<Vec<f64>> {
        let mut out = Vec::new();
        for c in pts.chunks(CHUNK * d) {
            let x = points(c, d, dev)?;
            let n = x.dim(0)?;
            let sig = sigma.map(|s| Tensor::full(s as f32, (n, 1), dev)).transpose()?;
            out.extend(net.energy(&x, sig.as_ref())?.squeeze(1)?.to_vec1::<f32>()?.into_iter().map(f64::from));
        }
        Ok(out)
    };
    let qg = q_of(&grid)?;
    let terms: Vec<f64> = qg.iter().zip(&weights).map(|(q, w)| q + w.ln()).collect();
    let log_z = logsumexp(&terms);
    let qh = q_of(held_out)?;
    let nll = -qh.iter().map(|q| q - log_z).sum::<f64>() / qh.len() as f64;
    let mut kl = 0.0;
    for ((x, q), w) in grid.chunks(d).zip(&qg).zip(&weights) {
        let lp = mix.log_prob(x);
        kl += w * lp.exp() * (lp - (q - log_z));
    }
    Ok(vec![("log_z", log_z), ("nll", nll), ("kl", kl)])
}
