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
    #[serde(default)]
    cache_read_input_token_cost: Option<f64>,
    #[serde(default)]
    cache_creation_input_token_cost: Option<f64>,
    #[serde(default)]
    output_cost_per_image: Option<f64>,
    #[serde(default)]
    input_cost_per_character: Option<f64>,
    #[serde(default)]
    input_cost_per_query: Option<f64>,
    #[serde(default)]
    input_cost_per_second: Option<f64>,
}

/// One model's prices, USD per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    /// Per image made, per character spoken, per search or per millisecond of audio (the
    /// entry's `output_cost_per_image` / `input_cost_per_character` / `input_cost_per_query` /
    /// `input_cost_per_second` ÷ 1000).
    pub per_unit: Option<f64>,
}

/// Model name → prices.
#[derive(Debug, Default)]
pub struct CostMap(HashMap<String, Prices>);

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
            let ok = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
            let per_unit = ok(e.output_cost_per_image)
                .or(ok(e.input_cost_per_character))
                .or(ok(e.input_cost_per_query))
                // Per millisecond: transcriptions are billed by the millisecond.
                .or(ok(e.input_cost_per_second).map(|s| s / 1000.0));
            let input = ok(e.input_cost_per_token);
            if input.is_some() || per_unit.is_some() {
                out.insert(
                    name,
                    Prices {
                        input: input.unwrap_or(0.0),
                        output: ok(e.output_cost_per_token).unwrap_or(0.0),
                        cache_read: ok(e.cache_read_input_token_cost),
                        cache_write: ok(e.cache_creation_input_token_cost),
                        per_unit,
                    },
                );
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
    ) -> Option<(String, Prices)> {
        let mut candidates = Vec::with_capacity(4);
        if let Some(b) = base_model {
            candidates.push(format!("{provider}/{b}"));
            candidates.push(b.to_string());
        }
        candidates.push(format!("{provider}/{model}"));
        candidates.push(model.to_string());
        candidates
            .into_iter()
            .find_map(|k| self.0.get(&k).map(|p| (k.clone(), *p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_map_prices_the_common_models() {
        let m = CostMap::embedded();
        assert!(m.len() > 500, "{}", m.len());
        let (k, p) = m.lookup("anthropic", "claude-sonnet-4-5", None).unwrap();
        assert_eq!(k, "claude-sonnet-4-5");
        assert_eq!((p.input, p.output), (3e-6, 1.5e-5));
        assert_eq!((p.cache_read, p.cache_write), (Some(3e-7), Some(3.75e-6)));
        let (_, p) = m.lookup("openai", "gpt-4o", None).unwrap();
        assert_eq!(p.input, 2.5e-6);
        // Azure: the deployment name says nothing, base_model does.
        let (k, _) = m
            .lookup("azure", "my-prod-deployment", Some("gpt-4o"))
            .unwrap();
        assert_eq!(k, "azure/gpt-4o");
        let (k, _) = m.lookup("gemini", "gemini-2.5-flash", None).unwrap();
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
        let (_, p) = m.lookup("openai", "my-model", None).unwrap();
        assert_eq!((p.input, p.output, p.cache_read), (1e-6, 2e-6, None));
        assert!(CostMap::parse("[1]", "t").is_err());
    }
}
