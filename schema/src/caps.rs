//! Capabilities: what a data source and a model offer, and what each model and objective
//! needs of them, for both families (vectors from a Gaussian mixture, images). Validation
//! refuses a trial whose model the data cannot feed ([`check_points`]: a U-Net on mixture data,
//! an energy MLP on images) or whose objective the model or the data cannot serve ([`check`]:
//! a denoiser's objective on a score net, a score net's on a denoiser, ESM without an exact
//! score, SSM without tangents), with the key to change; the engine's registry tests pin each
//! model kind's declared capabilities to what its implementation really offers.

use crate::validate::FieldError;

/// What a data set's points are, and what a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Points {
    /// Points in R^D (the Gaussian mixtures).
    Vectors,
    /// Images of shape (C, H, W) with class labels.
    Images,
}

impl Points {
    fn describe(self) -> &'static str {
        match self {
            Points::Vectors => "vectors (a Gaussian mixture)",
            Points::Images => "images",
        }
    }
}

/// What a net computes, which fixes the objectives that can train it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// A score S(x, σ) (the vector models: `mlp`, `energy_mlp` on mixture data).
    Score,
    /// A denoiser D(x; σ, c) with its preconditioning (the image nets: `mlp`, `unet`).
    Denoiser,
}

impl Net {
    fn describe(self) -> &'static str {
        match self {
            Net::Score => "a score net S(x, σ)",
            Net::Denoiser => "a denoiser D(x; σ, c)",
        }
    }
}

/// What a data source offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataCaps {
    /// The exact score ∇log p (and log-density): toy densities have it, images do not. The
    /// ESM objective and the ESM/ISM gap columns exist only with it.
    pub exact_score: bool,
    /// Class labels with every point.
    pub labels: bool,
}

/// What a score model offers beyond S(x, σ, label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCaps {
    /// Forward-mode tangents J·v (needed by SSM and by the basis-tangent exact trace).
    pub tangents: bool,
    /// tr(∂S/∂x) in closed form (depth-2 MLP score nets).
    pub closed_trace: bool,
    /// What it computes.
    pub net: Net,
}

impl ModelCaps {
    /// The exact trace, by closed form or by D basis tangents.
    pub fn exact_trace(self) -> bool {
        self.tangents || self.closed_trace
    }
}

/// What an objective needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The net it trains.
    pub net: Net,
    pub exact_score: bool,
    pub exact_trace: bool,
    pub tangents: bool,
    pub noise_ladder: bool,
}

/// Refuses a model kind that takes other points than the data's (`model.kind`).
pub fn check_points(model: &str, takes: Points, data: &str, has: Points) -> Result<(), FieldError> {
    if takes == has {
        return Ok(());
    }
    Err(FieldError { key: "model.kind".into(), message: format!("model `{model}` takes {}, and data `{data}` is {}", takes.describe(), has.describe()) })
}

/// Refuses an objective the model or the data cannot serve, naming the key to change.
pub fn check(objective: &str, needs: Needs, model: &str, mc: ModelCaps, data: &str, dc: DataCaps, has_ladder: bool) -> Result<(), FieldError> {
    let bad = |key: &str, msg: String| Err(FieldError { key: key.into(), message: msg });
    if needs.exact_score && !dc.exact_score {
        return bad("objective.kind", format!("`{objective}` needs the exact score of the data, and data `{data}` has none (use dsm, ssm or ism)"));
    }
    if needs.net != mc.net {
        return bad("objective.kind", format!("`{objective}` trains {}, and model `{model}` on data `{data}` is {}", needs.net.describe(), mc.net.describe()));
    }
    if needs.exact_trace && !mc.exact_trace() {
        return bad("objective.kind", format!("`{objective}` needs tr(∂S/∂x), and model `{model}` computes neither tangents nor a closed-form trace"));
    }
    if needs.tangents && !mc.tangents {
        return bad("objective.kind", format!("`{objective}` needs forward-mode tangents J·v, and model `{model}` has none"));
    }
    if needs.noise_ladder && !has_ladder {
        return bad("objective.noise", format!("{objective} needs a noise ladder (e.g. noise = {{ ladder = \"list\", sigmas = [0.5] }})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: (needs, model caps, data caps, ladder, key of the refusal or None).
    #[test]
    fn refusals_name_the_key() {
        let none = Needs { net: Net::Score, exact_score: false, exact_trace: false, tangents: false, noise_ladder: false };
        let full = ModelCaps { tangents: true, closed_trace: true, net: Net::Score };
        let bare = ModelCaps { tangents: false, closed_trace: false, net: Net::Score };
        let toy = DataCaps { exact_score: true, labels: false };
        let images = DataCaps { exact_score: false, labels: true };
        let cases = [
            (Needs { exact_score: true, ..none }, full, images, false, Some("objective.kind")),
            (Needs { exact_score: true, ..none }, full, toy, false, None),
            (Needs { exact_trace: true, ..none }, bare, toy, false, Some("objective.kind")),
            (Needs { exact_trace: true, ..none }, ModelCaps { closed_trace: true, ..bare }, toy, false, None),
            (Needs { tangents: true, ..none }, ModelCaps { closed_trace: true, ..bare }, toy, false, Some("objective.kind")),
            (Needs { net: Net::Denoiser, ..none }, full, toy, false, Some("objective.kind")),
            (none, ModelCaps { net: Net::Denoiser, ..full }, images, false, Some("objective.kind")),
            (Needs { net: Net::Denoiser, ..none }, ModelCaps { net: Net::Denoiser, ..bare }, images, false, None),
            (Needs { noise_ladder: true, ..none }, bare, images, false, Some("objective.noise")),
            (Needs { noise_ladder: true, ..none }, bare, images, true, None),
        ];
        for (i, (needs, mc, dc, ladder, want)) in cases.into_iter().enumerate() {
            let got = check("obj", needs, "m", mc, "d", dc, ladder).err().map(|e| e.key);
            assert_eq!(got.as_deref(), want, "case {i}");
        }
        assert!(check_points("unet", Points::Images, "ncsn2d", Points::Vectors).is_err_and(|e| e.key == "model.kind"));
        assert!(check_points("mlp", Points::Vectors, "ncsn2d", Points::Vectors).is_ok());
    }
}
