//! The samplers a trial can name (`sampler.kind`): one list for both families, parsed by both
//! raw forms; validation then builds the family's settings (`trial::LadderSampler` walks the
//! noise ladder of mixture data, `image::ImageSampler` EDM's ρ schedule) and refuses the kinds
//! it has no use for.
//! A leaf module: it imports no other schema module.

use serde::Deserialize;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    AnnealedLangevin,
    Langevin,
    ScoreAscent,
    Heun,
    EulerMaruyama,
    Pc,
    Ddim,
    None,
}

impl SamplerKind {
    /// The name a trial file uses.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::AnnealedLangevin => "annealed_langevin",
            SamplerKind::Langevin => "langevin",
            SamplerKind::ScoreAscent => "score_ascent",
            SamplerKind::Heun => "heun",
            SamplerKind::EulerMaruyama => "euler_maruyama",
            SamplerKind::Pc => "pc",
            SamplerKind::Ddim => "ddim",
            SamplerKind::None => "none",
        }
    }
}
