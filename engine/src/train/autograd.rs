//! The reference toy trainer: the objective's loss built as candle ops, back-propagated piece by
//! piece (the exact trace comes in chunks of basis tangents, so the graph never holds more than
//! one chunk), gradients summed, one AdamW step (no weight decay).

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::{TrainSetup, Trainer};
use crate::data::{Batch, DataSource};
use crate::models::ScoreModel;
use crate::objectives::{self, TrainObjective};
use crate::rng::Rng;

pub struct Autograd<'a> {
    model: &'a dyn ScoreModel,
    data: &'a dyn DataSource,
    objective: TrainObjective,
    vars: Vec<Var>,
    opt: AdamW,
    device: Device,
}

impl<'a> Autograd<'a> {
    pub fn new(s: TrainSetup<'a>) -> Result<Self> {
        let vars = s.varmap.all_vars();
        let opt = AdamW::new(vars.clone(), ParamsAdamW { lr: s.lr, weight_decay: 0.0, ..Default::default() })?;
        Ok(Autograd { model: s.model, data: s.data, objective: s.objective, vars, opt, device: s.device })
    }
}

impl Trainer for Autograd<'_> {
    fn name(&self) -> &'static str {
        "autograd"
    }

    fn step(&mut self, batch: &Batch, rng: &mut Rng, _step: u64) -> Result<f64> {
        let x0 = &batch.x[..];
        let mut loss = 0.0;
        let mut grads: Option<GradStore> = None;
        let vars = &self.vars;
        objectives::loss_pieces(self.model, &self.objective, self.data, x0, rng, &self.device, &mut |piece| {
            loss += piece.to_scalar::<f32>()? as f64;
            let g = piece.backward()?;
            match &mut grads {
                None => grads = Some(g),
                Some(acc) => {
                    for v in vars {
                        if let Some(gv) = g.get(v.as_tensor()) {
                            let sum = match acc.get(v.as_tensor()) {
                                Some(a) => (a + gv)?,
                                None => gv.clone(),
                            };
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                }
            }
            Ok(())
        })?;
        // A non-finite loss is reported before any update (the trial stops as diverged).
        if loss.is_finite()
            && let Some(g) = grads.as_ref()
        {
            self.opt.step(g)?;
        }
        Ok(loss)
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.opt.set_learning_rate(lr);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}
