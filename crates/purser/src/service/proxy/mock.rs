//! In-process answers of `mock_response` deployments, counted and priced like real calls.

use axum::body::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use super::context::CallRequest;
use crate::upstream::sse::Usage;
use crate::upstream::tokens::count_text;
use crate::upstream::{CallKind, Deployment};

pub(super) fn created() -> i64 {
    Utc::now().timestamp()
}

/// In-process answer of a `mock_response` deployment (usage counted like a real call).
pub(super) fn mock_body(dep: &Deployment, model: &str, req: &CallRequest) -> (Value, Usage) {
    let text = dep.mock_response.clone().unwrap_or_default();
    match req.kind {
        CallKind::Chat => {
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: count_text(&text),
                ..Usage::default()
            };
            (
                json!({
                    "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
                    "created": created(),
                    "model": model,
                    "object": "chat.completion",
                    "system_fingerprint": null,
                    "choices": [{
                        "finish_reason": "stop",
                        "index": 0,
                        "message": {"content": text, "role": "assistant"},
                    }],
                    "usage": {
                        "completion_tokens": usage.completion_tokens,
                        "prompt_tokens": usage.prompt_tokens,
                        "total_tokens": usage.total(),
                    }
                }),
                usage,
            )
        }
        CallKind::Embeddings => {
            let n = match req.body.get("input") {
                Some(Value::Array(a)) => a.len(),
                _ => 1,
            };
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: 0,
                ..Usage::default()
            };
            let data: Vec<Value> = (0..n)
                .map(|i| json!({"object": "embedding", "index": i, "embedding": vec![0.0f64; 8]}))
                .collect();
            (
                json!({
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
                }),
                usage,
            )
        }
    }
}

/// SSE chunks of a mock deployment: one chunk per word, a finish chunk, the usage chunk, DONE.
pub(super) fn mock_stream(
    dep: &Deployment,
    model: &str,
    req: &CallRequest,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let text = dep.mock_response.clone().unwrap_or_default();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = created();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events: Vec<Value> = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in text.split_inclusive(' ') {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let completion = count_text(&text);
    events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [], "usage": {"prompt_tokens": req.prompt_tokens, "completion_tokens": completion,
        "total_tokens": req.prompt_tokens + completion}}));
    let mut out: Vec<Result<Bytes, std::io::Error>> = events
        .into_iter()
        .map(|e| Ok(Bytes::from(format!("data: {e}\n\n"))))
        .collect();
    out.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    futures_util::stream::iter(out).boxed()
}
