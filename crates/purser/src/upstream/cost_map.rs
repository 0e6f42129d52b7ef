//! Prices out of the box: the reference's cost map (per-token USD prices by model name), a trimmed
//! copy embedded from `data/model_prices.json` (its `_source` says where and when it came from;
//! `scripts/refresh-cost-map.sh` rebuilds it), or an operator's own map in the same JSON format.
//! Invariant: a deployment's own prices always win; the map only fills in deployments that set none.

use std::collections::HashMap;

use serde::Deserialize;

const EMBEDDED: &str = include_str!("../../../../data/model_prices.json");

#[derive(Debug, Clone, Deserialize)]
struct Entry {
    #[serde(default)]
    input_cost_per_token: Option<f64>,
    #[serde(default)]
    output_cost_per_token: Option<f64>,
}

/// Model name → (input, output) USD per token.
#[derive(Debug, Default)]
pub struct CostMap(HashMap<String, (f64, f64)>);

impl CostMap {
    fn parse(text: &str, what: &str) -> anyhow::Result<CostMap> {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{what}: not a cost map (JSON object of models): {e}"))?;
        let mut out = HashMap::with_capacity(raw.len());
        for (name, v) in raw {
            // Entries that are not models (`_source`, the reference's `sample_spec`) are skipped.
            let Ok(e) = serde_json::from_value::<Entry>(v) else {
                continue;
            };
            if let (Some(i), o) = (e.input_cost_per_token, e.output_cost_per_token)
                && i.is_finite()
                && i >= 0.0
            {
                let o = o.filter(|o| o.is_finite() && *o >= 0.0).unwrap_or(0.0);
                out.insert(name, (i, o));
            }
        }
        Ok(CostMap(out))
    }

    /// The embedded map.
    pub fn embedded() -> CostMap {
        Self::parse(EMBEDDED, "data/model_prices.json").expect("the embedded cost map parses")
    }

    /// An operator's map (the reference's `model_prices_and_context_window.json` format).
    pub fn from_file(path: &str) -> anyhow::Result<CostMap> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("model cost map {path}: cannot read: {e}"))?;
        Self::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The prices of a deployment, looked up as the reference does: `base_model` first (with and
    /// without the provider prefix), then the deployment's model. Returns the key that matched.
    pub fn lookup(
        &self,
        provider: &str,
        model: &str,
        base_model: Option<&str>,
    ) -> Option<(String, f64, f64)> {
        let mut candidates = Vec::with_capacity(4);
        if let Some(b) = base_model {
            candidates.push(format!("{provider}/{b}"));
            candidates.push(b.to_string());
        }
        candidates.push(format!("{provider}/{model}"));
        candidates.push(model.to_string());
        candidates
            .into_iter()
            .find_map(|k| self.0.get(&k).map(|(i, o)| (k.clone(), *i, *o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_map_prices_the_common_models() {
        let m = CostMap::embedded();
        assert!(m.len() > 500, "{}", m.len());
        let (k, i, o) = m.lookup("anthropic", "claude-sonnet-4-5", None).unwrap();
        assert_eq!(k, "claude-sonnet-4-5");
        assert_eq!((i, o), (3e-6, 1.5e-5));
        let (_, i, _) = m.lookup("openai", "gpt-4o", None).unwrap();
        assert_eq!(i, 2.5e-6);
        // Azure: the deployment name says nothing, base_model does.
        let (k, _, _) = m
            .lookup("azure", "my-prod-deployment", Some("gpt-4o"))
            .unwrap();
        assert_eq!(k, "azure/gpt-4o");
        let (k, _, _) = m.lookup("gemini", "gemini-2.5-flash", None).unwrap();
        assert_eq!(k, "gemini/gemini-2.5-flash");
        assert!(m.lookup("hosted_vllm", "my-llama", None).is_none());
    }

    #[test]
    fn an_operator_map_replaces_it() {
        let m = CostMap::parse(
            r#"{"sample_spec": {"input_cost_per_token": "x"}, "my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                "bad": {"input_cost_per_token": -1}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            m.lookup("openai", "my-model", None),
            Some(("my-model".into(), 1e-6, 2e-6))
        );
        assert!(CostMap::parse("[1]", "t").is_err());
    }
}
