//! Deterministic score ascent x ← x + α S(x; σ) at one level: Langevin without its noise, so
//! the points pile up at the modes.

use candle_core::Result;

use super::{Field, Params, Sampler, Start, Steps};
use crate::rng::Rng;

pub struct ScoreAscent {
    pub sigma: Option<f64>,
    pub alpha: f64,
    pub steps: usize,
    pub start: Start,
}

impl ScoreAscent {
    pub fn new(p: &Params) -> Option<Self> {
        Some(ScoreAscent { sigma: p.clean(), alpha: p.eps, steps: p.steps, start: p.start })
    }
}

impl Sampler for ScoreAscent {
    fn name(&self) -> &'static str {
        "score_ascent"
    }
    fn steps(&self) -> u64 {
        self.steps as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigma
    }
    fn start(&self) -> Start {
        self.start
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], _rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        let mut s = vec![0.0f32; x.len()];
        for _ in 0..self.steps {
            field.score(x, self.sigma, &mut s)?;
            x.iter_mut().zip(&s).for_each(|(xi, si)| *xi += self.alpha as f32 * si);
            if !steps.step(x, self.sigma) {
                break;
            }
        }
        Ok(())
    }
}
