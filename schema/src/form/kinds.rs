//! The kinds a trial file can name in `model.kind` and `objective.kind`: one list for both
//! families, parsed by both raw forms, so a kind of the other family (a U-Net on mixture data,
//! `edm` on a score net, `esm` on images) reaches the capability checks (`caps`) and is refused
//! there with what it needs, not as an unknown word. A leaf module.

use serde::Deserialize;

use crate::caps::{Needs, Net};
use crate::trial::ObjectiveKind;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ModelKind {
    /// A score MLP on vectors, a denoiser MLP on images.
    Mlp,
    EnergyMlp,
    Unet,
}

impl ModelKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::EnergyMlp => "energy_mlp",
            ModelKind::Unet => "unet",
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ObjectiveName {
    Esm,
    Ism,
    Ssm,
    SsmVr,
    Dsm,
    Edm,
    Ve,
    Vp,
}

impl ObjectiveName {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ObjectiveName::Esm => "esm",
            ObjectiveName::Ism => "ism",
            ObjectiveName::Ssm => "ssm",
            ObjectiveName::SsmVr => "ssm_vr",
            ObjectiveName::Dsm => "dsm",
            ObjectiveName::Edm => "edm",
            ObjectiveName::Ve => "ve",
            ObjectiveName::Vp => "vp",
        }
    }

    /// As a score net's objective: None for the denoiser-only kinds (edm, ve, vp).
    pub(crate) fn score_kind(self) -> Option<ObjectiveKind> {
        match self {
            ObjectiveName::Esm => Some(ObjectiveKind::Esm),
            ObjectiveName::Ism => Some(ObjectiveKind::Ism),
            ObjectiveName::Ssm => Some(ObjectiveKind::Ssm),
            ObjectiveName::SsmVr => Some(ObjectiveKind::SsmVr),
            ObjectiveName::Dsm => Some(ObjectiveKind::Dsm),
            ObjectiveName::Edm | ObjectiveName::Ve | ObjectiveName::Vp => None,
        }
    }

    /// What it needs on mixture data: a score net's objective's needs, or a denoiser.
    pub(crate) fn needs_on_vectors(self) -> Needs {
        self.score_kind().map_or(Needs { net: Net::Denoiser, exact_score: false, exact_trace: false, tangents: false, noise_ladder: false }, ObjectiveKind::needs)
    }

    /// What it needs on images: every denoising objective a denoiser (SSM its forward tangents
    /// too, DSM and SSM a ladder); ESM and ISM are a score net's.
    pub(crate) fn needs_on_images(self) -> Needs {
        let denoiser = Needs { net: Net::Denoiser, exact_score: false, exact_trace: false, tangents: false, noise_ladder: false };
        match self {
            ObjectiveName::Edm | ObjectiveName::Ve | ObjectiveName::Vp => denoiser,
            ObjectiveName::Dsm => Needs { noise_ladder: true, ..denoiser },
            ObjectiveName::Ssm | ObjectiveName::SsmVr => Needs { tangents: true, noise_ladder: true, ..denoiser },
            ObjectiveName::Esm | ObjectiveName::Ism => self.needs_on_vectors(),
        }
    }
}
