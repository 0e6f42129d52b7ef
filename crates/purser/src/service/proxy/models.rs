//! `/v1/models` and `/model/info` bodies (no upstream credentials).

use serde_json::{Value, json};

use crate::app::AppState;

/// `/v1/models` body.
pub fn models_list(names: &[String]) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "created": 1677610602, "owned_by": "openai"}))
        .collect();
    json!({"data": data, "object": "list"})
}

/// `/model/info` body: deployments of the callable models, without upstream credentials.
pub fn model_info(state: &AppState, names: &[String]) -> Value {
    let pico_usd = |p: i64| p as f64 / 1e12;
    let mut data = Vec::new();
    for n in names {
        for d in state.models.deployments(n) {
            data.push(json!({
                "model_name": d.model_name,
                "litellm_params": {
                    "model": format!("{}/{}", d.provider, d.upstream_model),
                    "rpm": d.rpm,
                    "tpm": d.tpm,
                },
                "model_info": {
                    "id": d.id,
                    "mode": "chat",
                    "access_groups": d.access_groups,
                    "input_cost_per_token": pico_usd(d.input_pico),
                    "output_cost_per_token": pico_usd(d.output_pico),
                    "litellm_provider": d.provider,
                    "timeout": d.timeout.as_secs_f64(),
                    "mock": d.is_mock(),
                }
            }));
        }
    }
    json!({ "data": data })
}
