//! The U-Net's architecture as data: the one description both implementations are built
//! from. [`Arch::new`] turns a [`UnetSpec`] (and the images' channels and size) into a fixed
//! program of layers ([`Op`]) over numbered activation buffers, with the name and shape of
//! every parameter (as candle's VarMap names them). The candle net (`images::unet::Unet`)
//! interprets it with candle modules (autograd, any device); the plain-buffer net
//! (`train::fast::unet::FastUnet`) with the CPU kernels and a backward pass written out.
//!
//! F: conv 3×3 in → per level, `blocks` residual blocks (GroupNorm, SiLU, conv 3×3, plus the
//! embedding of σ and class added per channel before the second GroupNorm, (h + skip)/√2) and a
//! stride-2 conv down (28 → 14 → 7); two middle blocks; the mirror path up with the level's skip
//! concatenated, nearest upsampling and a conv; GroupNorm, SiLU, conv 3×3 out. The embedding:
//! Fourier features of c_noise (K = channels/2 frequencies 10000^(−k/K), sin then cos) →
//! linear → SiLU → linear (+ the class row) → SiLU.

use schema::image::UnetSpec;

pub use crate::kernels::conv::Grid;

use super::NULL_CLASS;

/// GroupNorm's ε.
pub const GN_EPS: f32 = 1e-5;

/// A parameter: its VarMap name, its number of values, and for a convolution weight its
/// (O, C, k) (candle's (O, C, k, k) layout).
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub len: usize,
    pub conv: Option<(usize, usize, usize)>,
}

impl ParamSpec {
    /// The layer's name (the VarMap prefix): `down0.block0.conv1` of `down0.block0.conv1.weight`.
    pub fn layer(&self) -> &str {
        self.name.rsplit_once('.').map_or(&self.name, |(l, _)| l)
    }
}

/// One layer of the program; `usize` fields name buffers (`src`, `dst`, …) or parameters
/// (`w`, `b`, `gamma`, `beta`, `table`).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// k×k convolution, padding k/2, with bias; W stored (k·k·C)×O, rows (ky, kx, c).
    Conv {
        src: usize,
        dst: usize,
        k: usize,
        stride: usize,
        w: usize,
        b: usize,
    },
    /// y = x Wᵀ + b on vectors, W (out × in) as candle stores it.
    Lin {
        src: usize,
        dst: usize,
        w: usize,
        b: usize,
    },
    Silu {
        src: usize,
        dst: usize,
    },
    /// y = x + E[label].
    ClassAdd {
        src: usize,
        dst: usize,
        table: usize,
    },
    /// SiLU(GroupNorm(x + s)) with s the vector buffer `shift` per (image, channel).
    Gn {
        src: usize,
        shift: Option<usize>,
        dst: usize,
        gamma: usize,
        beta: usize,
        groups: usize,
        stat: usize,
    },
    /// y = (a + b)·scale.
    AddScale {
        a: usize,
        b: usize,
        dst: usize,
        scale: f32,
    },
    /// Channels of `a` then of `b`.
    Concat {
        a: usize,
        b: usize,
        dst: usize,
    },
    /// Nearest upsampling to the destination's size (candle's index rule), which is the size
    /// of the buffer `like` (the skip of the level above).
    Up {
        src: usize,
        dst: usize,
        like: usize,
    },
}

/// The layer program of a spec and the names and shapes of its parameters.
#[derive(Clone, Debug)]
pub struct Arch {
    /// Every activation's shape per image (the input, the Fourier features, each layer's output).
    pub bufs: Vec<Grid>,
    /// The layers in execution order.
    pub ops: Vec<Op>,
    pub params: Vec<ParamSpec>,
    /// The groups of each GroupNorm layer, in order (`Op::Gn::stat` indexes this).
    pub gn_groups: Vec<usize>,
    /// The network input (C channels), the Fourier features of c_noise, the output.
    pub input: usize,
    pub fourier: usize,
    pub output: usize,
    /// Fourier frequencies (sin and cos of each).
    pub frequencies: usize,
}

impl Arch {
    fn buf(&mut self, h: usize, w: usize, c: usize) -> usize {
        self.bufs.push(Grid { h, w, c });
        self.bufs.len() - 1
    }

    fn param(&mut self, name: String, len: usize, conv: Option<(usize, usize, usize)>) -> usize {
        self.params.push(ParamSpec { name, len, conv });
        self.params.len() - 1
    }

    fn conv(&mut self, name: &str, src: usize, cout: usize, k: usize, stride: usize) -> usize {
        let s = self.bufs[src];
        let Grid { h, w, .. } = s.conv_out(cout, k, stride);
        let wi = self.param(format!("{name}.weight"), cout * s.c * k * k, Some((cout, s.c, k)));
        let bi = self.param(format!("{name}.bias"), cout, None);
        let dst = self.buf(h, w, cout);
        self.ops.push(Op::Conv { src, dst, k, stride, w: wi, b: bi });
        dst
    }

    fn lin(&mut self, name: &str, src: usize, out: usize) -> usize {
        let fin = self.bufs[src].c;
        let w = self.param(format!("{name}.weight"), out * fin, None);
        let b = self.param(format!("{name}.bias"), out, None);
        let dst = self.buf(1, 1, out);
        self.ops.push(Op::Lin { src, dst, w, b });
        dst
    }

    fn gn(&mut self, name: &str, src: usize, shift: Option<usize>, groups: usize) -> usize {
        let s = self.bufs[src];
        let gamma = self.param(format!("{name}.weight"), s.c, None);
        let beta = self.param(format!("{name}.bias"), s.c, None);
        let dst = self.buf(s.h, s.w, s.c);
        self.gn_groups.push(groups);
        self.ops.push(Op::Gn { src, shift, dst, gamma, beta, groups, stat: self.gn_groups.len() - 1 });
        dst
    }

    /// `images::unet::ResBlock`.
    fn block(&mut self, name: &str, x: usize, emb: usize, cout: usize, groups: usize) -> usize {
        let cin = self.bufs[x].c;
        let n1 = self.gn(&format!("{name}.norm1"), x, None, groups);
        let h1 = self.conv(&format!("{name}.conv1"), n1, cout, 3, 1);
        let e = self.lin(&format!("{name}.emb"), emb, cout);
        let n2 = self.gn(&format!("{name}.norm2"), h1, Some(e), groups);
        let h2 = self.conv(&format!("{name}.conv2"), n2, cout, 3, 1);
        let skip = if cin != cout { self.conv(&format!("{name}.skip"), x, cout, 1, 1) } else { x };
        let s = self.bufs[h2];
        let dst = self.buf(s.h, s.w, s.c);
        self.ops.push(Op::AddScale { a: h2, b: skip, dst, scale: std::f32::consts::FRAC_1_SQRT_2 });
        dst
    }

    /// The program of `spec` on h×w images of `channels` channels.
    pub fn new(spec: &UnetSpec, channels: usize, h: usize, w: usize) -> std::result::Result<Self, String> {
        let (c, g) = (spec.channels, spec.groups);
        if spec.mults.is_empty() || c < 2 || g == 0 || channels == 0 || h == 0 || w == 0 {
            return Err(format!("U-Net spec {spec:?}: needs levels, at least 2 channels and a group"));
        }
        for &m in &spec.mults {
            if !(c * m).is_multiple_of(g) || !c.is_multiple_of(g) {
                return Err(format!("U-Net: {} channels in {g} groups", c * m));
            }
        }
        let half = c / 2;
        let mut p = Arch { bufs: Vec::new(), ops: Vec::new(), params: Vec::new(), gn_groups: Vec::new(), input: 0, fourier: 0, output: 0, frequencies: half };
        p.input = p.buf(h, w, channels);
        p.fourier = p.buf(1, 1, 2 * half);
        let conv_in = p.conv("conv_in", p.input, c, 3, 1);
        let e1 = p.lin("emb1", p.fourier, spec.emb);
        let e1s = p.buf(1, 1, spec.emb);
        p.ops.push(Op::Silu { src: e1, dst: e1s });
        let mut e2 = p.lin("emb2", e1s, spec.emb);
        if spec.class_cond {
            let table = p.param("class_emb.weight".into(), (NULL_CLASS as usize + 1) * spec.emb, None);
            let dst = p.buf(1, 1, spec.emb);
            p.ops.push(Op::ClassAdd { src: e2, dst, table });
            e2 = dst;
        }
        let emb = p.buf(1, 1, spec.emb);
        p.ops.push(Op::Silu { src: e2, dst: emb });
        let mut hb = conv_in;
        let mut skips = Vec::new();
        let levels = spec.mults.len();
        for (i, &m) in spec.mults.iter().enumerate() {
            for b in 0..spec.blocks {
                hb = p.block(&format!("down{i}.block{b}"), hb, emb, c * m, g);
            }
            skips.push(hb);
            if i + 1 < levels {
                let ch = p.bufs[hb].c;
                hb = p.conv(&format!("down{i}.down"), hb, ch, 3, 2);
            }
        }
        for name in ["mid0", "mid1"] {
            let ch = p.bufs[hb].c;
            hb = p.block(name, hb, emb, ch, g);
        }
        for (i, &m) in spec.mults.iter().enumerate().rev() {
            let skip = skips.pop().expect("one skip per level");
            for b in 0..spec.blocks {
                let x = if b == 0 {
                    let (s, k) = (p.bufs[hb], p.bufs[skip]);
                    if (s.h, s.w) != (k.h, k.w) {
                        return Err(format!("U-Net: level {i} is {}×{} on the way up, {}×{} on the way down", s.h, s.w, k.h, k.w));
                    }
                    let dst = p.buf(s.h, s.w, s.c + k.c);
                    p.ops.push(Op::Concat { a: hb, b: skip, dst });
                    dst
                } else {
                    hb
                };
                hb = p.block(&format!("up{i}.block{b}"), x, emb, c * m, g);
            }
            if i > 0 {
                let like = *skips.last().expect("a level above");
                let target = p.bufs[like];
                let ch = p.bufs[hb].c;
                let dst = p.buf(target.h, target.w, ch);
                p.ops.push(Op::Up { src: hb, dst, like });
                hb = p.conv(&format!("up{i}.up"), dst, ch, 3, 1);
            }
        }
        let n = p.gn("norm_out", hb, None, g);
        p.output = p.conv("conv_out", n, channels, 3, 1);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter count of a small spec against its closed form, and the shapes along the
    /// way (28 → 14 → 7 and back; the output has the input's channels).
    #[test]
    fn parameters_and_shapes() {
        let spec = UnetSpec { channels: 8, mults: vec![1, 2], blocks: 1, emb: 16, groups: 4, class_cond: true };
        for ch in [1usize, 3] {
            let a = Arch::new(&spec, ch, 28, 28).unwrap();
            let conv = |ci: usize, co: usize, k: usize| ci * co * k * k + co;
            let gn = |c: usize| 2 * c;
            let lin = |i: usize, o: usize| i * o + o;
            let block = |ci: usize, co: usize| gn(ci) + conv(ci, co, 3) + lin(16, co) + gn(co) + conv(co, co, 3) + if ci != co { conv(ci, co, 1) } else { 0 };
            let want = conv(ch, 8, 3) + lin(8, 16) + lin(16, 16) + 11 * 16 // stem, embedding, class table
                + block(8, 8) + conv(8, 8, 3) + block(8, 16) // down
                + 2 * block(16, 16) // middle
                + block(32, 16) + conv(16, 16, 3) + block(24, 8) // up: level 1 and its up conv, level 0
                + gn(8) + conv(8, ch, 3);
            assert_eq!(a.params.iter().map(|p| p.len).sum::<usize>(), want, "{ch} channels");
            assert_eq!(a.bufs[a.input], Grid { h: 28, w: 28, c: ch });
            assert_eq!(a.bufs[a.output], Grid { h: 28, w: 28, c: ch });
            assert!(a.bufs.iter().any(|b| (b.h, b.w) == (14, 14)));
        }
        assert!(Arch::new(&spec, 1, 0, 28).is_err());
        assert!(Arch::new(&UnetSpec { groups: 3, ..spec.clone() }, 1, 28, 28).is_err());
    }
}
