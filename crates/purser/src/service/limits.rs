//! Per-model rate limits (`model_rpm_limit`, `model_tpm_limit`) as keys and teams take them: an
//! object of model group → non-negative integer, stored in the entity's `metadata` as the
//! reference stores it, read by the request path's limiter (`proxy::governance::rate_limits`).

use axum::http::StatusCode;
use chrono::{DateTime, NaiveDateTime, Utc};
use purser_core::money::Nanos;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::store::keys::KeyRow;

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
    if let Some(v) = raw.get("model_max_budget") {
        check_model_max_budget(v)?;
    }
    Ok(())
}

/// A 400 naming `model_max_budget` unless every entry has a `budget_limit` and a `time_period`
/// (`service::model_budget`).
pub fn check_model_max_budget(v: &Value) -> Result<(), Error> {
    crate::service::model_budget::validate("model_max_budget", v)
        .map_err(|m| Error::http(StatusCode::BAD_REQUEST, m))
}

/// A key's `max_budget`, raised by `metadata.temp_budget_increase` (USD) until
/// `metadata.temp_budget_expiry`, where the reference keeps both.
pub fn key_budget_max(k: &KeyRow, now: DateTime<Utc>) -> Option<i64> {
    let max = k.max_budget?;
    let (inc, exp) = temp_budget_of(&k.metadata.0);
    Some(match (inc, exp) {
        (Some(i), Some(e)) if e > now => max.saturating_add(i),
        _ => max,
    })
}

/// The temporary increase (nano-USD) and its expiry recorded in a key's metadata.
fn temp_budget_of(md: &Value) -> (Option<i64>, Option<DateTime<Utc>>) {
    let inc = md
        .get("temp_budget_increase")
        .and_then(Value::as_f64)
        .and_then(|v| Nanos::from_usd(v).ok())
        .map(|n| n.0);
    let exp = md
        .get("temp_budget_expiry")
        .and_then(Value::as_str)
        .and_then(parse_instant);
    (inc, exp)
}

/// RFC 3339, or a naive `YYYY-MM-DDTHH:MM:SS[.f]` read as UTC (what Python's `isoformat` writes).
pub fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// Validates a temporary budget increase sent with its expiry, for the key's metadata: both or
/// neither, a non-negative amount, an instant.
pub fn temp_budget(inc: Option<f64>, exp: Option<&str>) -> Result<Option<(Value, Value)>, Error> {
    let bad = |m: &str| Error::http(StatusCode::BAD_REQUEST, m.to_string());
    match (inc, exp) {
        (None, None) => Ok(None),
        (Some(i), Some(e)) => {
            if Nanos::from_usd(i).is_err() {
                return Err(bad(
                    "temp_budget_increase must be a non-negative finite number",
                ));
            }
            let Some(at) = parse_instant(e) else {
                return Err(bad(
                    "temp_budget_expiry must be an ISO 8601 instant, e.g. 2026-12-31T23:59:59Z",
                ));
            };
            Ok(Some((
                serde_json::json!(i),
                Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            )))
        }
        _ => Err(bad(
            "temp_budget_increase and temp_budget_expiry must be set together",
        )),
    }
}

/// The first model whose limit `after` raises or removes compared with `before` (metadata
/// objects), for the owner-may-only-tighten rule.
pub fn loosened(before: &Value, after: &Value) -> Option<&'static str> {
    let (bi, be) = temp_budget_of(before);
    let (ai, ae) = temp_budget_of(after);
    if ai.unwrap_or(0) > bi.unwrap_or(0) || (ai.unwrap_or(0) > 0 && ae > be) {
        return Some("temp_budget_increase");
    }
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
