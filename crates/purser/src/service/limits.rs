//! Per-model rate limits (`model_rpm_limit`, `model_tpm_limit`) as keys and teams take them: an
//! object of model group → non-negative integer, stored in the entity's `metadata` as the
//! reference stores it, read by the request path's limiter (`proxy::governance::rate_limits`).

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error::Error;

pub const PER_MODEL_FIELDS: [&str; 2] = ["model_rpm_limit", "model_tpm_limit"];

/// A 400 naming the field unless `v` maps model names to non-negative integers.
pub fn check_per_model(field: &str, v: &Value) -> Result<(), Error> {
    let bad = |what: String| {
        Error::http(
            StatusCode::BAD_REQUEST,
            format!("{field} must map model names to non-negative integers: {what}"),
        )
    };
    let Some(map) = v.as_object() else {
        return Err(bad(format!("got {v}")));
    };
    for (model, limit) in map {
        if limit.as_u64().is_none() {
            return Err(bad(format!("{model} has {limit}")));
        }
    }
    Ok(())
}

/// Checks the per-model fields of a raw request body (absent and `null` pass).
pub fn check_body(raw: &Map<String, Value>) -> Result<(), Error> {
    for f in PER_MODEL_FIELDS {
        if let Some(v) = raw.get(f).filter(|v| !v.is_null()) {
            check_per_model(f, v)?;
        }
    }
    Ok(())
}

/// The first model whose limit `after` raises or removes compared with `before` (metadata
/// objects), for the owner-may-only-tighten rule.
pub fn loosened(before: &Value, after: &Value) -> Option<&'static str> {
    for f in PER_MODEL_FIELDS {
        let Some(b) = before.get(f).and_then(Value::as_object) else {
            continue;
        };
        let a = after.get(f).and_then(Value::as_object);
        for (model, limit) in b {
            let old = limit.as_u64().unwrap_or(u64::MAX);
            match a.and_then(|a| a.get(model)).and_then(Value::as_u64) {
                Some(new) if new <= old => {}
                _ => return Some(f),
            }
        }
    }
    None
}
