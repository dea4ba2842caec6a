//! AdamW (weight decay 0, as the autograd path) and the EMA of the weights of [`FastUnet`],
//! threaded over fixed chunks of every parameter (`kernels::optim`).

use rayon::prelude::*;

use super::FastUnet;
use crate::kernels::optim::{adam_slices, ema_blend, ema_coefs};

/// Elements per task of the threaded AdamW and EMA updates.
const UPDATE_CHUNK: usize = 1 << 15;

/// One task of the threaded AdamW update: matching slices of (weights, m, v, gradient).
type UpdateChunk<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32], &'a [f32]);

impl FastUnet {
    /// One AdamW step (weight decay 0, as the autograd path) on the last gradients.
    pub fn adam_step(&mut self) {
        self.t += 1;
        let (t, lr) = (self.t, self.lr);
        let mut chunks: Vec<UpdateChunk> = Vec::new();
        for p in &mut self.params {
            let parts = p.w.chunks_mut(UPDATE_CHUNK).zip(p.m.chunks_mut(UPDATE_CHUNK)).zip(p.v.chunks_mut(UPDATE_CHUNK)).zip(p.g.chunks(UPDATE_CHUNK));
            chunks.extend(parts.map(|(((w, m), v), g)| (w, m, v, g)));
        }
        chunks.into_par_iter().for_each(|(w, m, v, g)| adam_slices(w, m, v, g, t, lr));
    }

    /// shadow ← d·shadow + (1 − d)·w, d = min(decay, (1 + step)/(10 + step)) (the autograd
    /// path's EMA).
    pub fn ema_update(&mut self, step: u64) {
        let coefs = ema_coefs(self.ema_decay, step);
        let mut chunks: Vec<(&mut [f32], &[f32])> = Vec::new();
        for (s, p) in self.ema.iter_mut().zip(&self.params) {
            chunks.extend(s.chunks_mut(UPDATE_CHUNK).zip(p.w.chunks(UPDATE_CHUNK)));
        }
        chunks.into_par_iter().for_each(|(s, w)| ema_blend(s, w, coefs));
    }
}
