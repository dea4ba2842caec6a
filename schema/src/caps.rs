//! Capabilities: what a data source and a score model can compute, and what each objective
//! needs of them. Validation refuses a trial whose objective the model or the data cannot
//! serve, with the key to change; the engine's registry tests pin each model kind's declared
//! capabilities to what its implementation really offers. Toy and image trials both check
//! through [`check`] (`trial::ObjectiveKind::needs`, `image`'s objective kinds and
//! `ImageModel::caps`).

use crate::validate::FieldError;

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
    pub exact_score: bool,
    pub exact_trace: bool,
    pub tangents: bool,
    pub noise_ladder: bool,
}

/// Refuses a combination that cannot run, naming the key to change.
pub fn check(objective: &str, needs: Needs, model: &str, mc: ModelCaps, data: &str, dc: DataCaps, has_ladder: bool) -> Result<(), FieldError> {
    let bad = |key: &str, msg: String| Err(FieldError { key: key.into(), message: msg });
    if needs.exact_score && !dc.exact_score {
        return bad("objective.kind", format!("`{objective}` needs the exact score of the data, and data `{data}` has none (use dsm, ssm or ism)"));
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
        let none = Needs { exact_score: false, exact_trace: false, tangents: false, noise_ladder: false };
        let full = ModelCaps { tangents: true, closed_trace: true };
        let bare = ModelCaps { tangents: false, closed_trace: false };
        let toy = DataCaps { exact_score: true, labels: false };
        let images = DataCaps { exact_score: false, labels: true };
        let cases = [
            (Needs { exact_score: true, ..none }, full, images, false, Some("objective.kind")),
            (Needs { exact_score: true, ..none }, full, toy, false, None),
            (Needs { exact_trace: true, ..none }, bare, toy, false, Some("objective.kind")),
            (Needs { exact_trace: true, ..none }, ModelCaps { tangents: false, closed_trace: true }, toy, false, None),
            (Needs { tangents: true, ..none }, ModelCaps { tangents: false, closed_trace: true }, toy, false, Some("objective.kind")),
            (Needs { noise_ladder: true, ..none }, bare, images, false, Some("objective.noise")),
            (Needs { noise_ladder: true, ..none }, bare, images, true, None),
        ];
        for (i, (needs, mc, dc, ladder, want)) in cases.into_iter().enumerate() {
            let got = check("obj", needs, "m", mc, "d", dc, ladder).err().map(|e| e.key);
            assert_eq!(got.as_deref(), want, "case {i}");
        }
    }
}
