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
        CallKind::Completions => {
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: count_text(&text),
                ..Usage::default()
            };
            (
                json!({
                    "id": format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
                    "object": "text_completion",
                    "created": created(),
                    "model": model,
                    "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
                    "usage": {
                        "completion_tokens": usage.completion_tokens,
                        "prompt_tokens": usage.prompt_tokens,
                        "total_tokens": usage.total(),
                    }
                }),
                usage,
            )
        }
        CallKind::Responses => {
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: count_text(&text),
                ..Usage::default()
            };
            let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
            (
                response_object(&id, model, &text, "completed", Some(usage)),
                usage,
            )
        }
        CallKind::Moderations => {
            let n = match req.body.get("input") {
                Some(Value::Array(a)) => a.len(),
                _ => 1,
            };
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                ..Usage::default()
            };
            let results: Vec<Value> = (0..n)
                .map(|_| json!({"flagged": false, "categories": {}, "category_scores": {}}))
                .collect();
            (
                json!({"id": format!("modr-{}", uuid::Uuid::new_v4().simple()), "model": model, "results": results}),
                usage,
            )
        }
        CallKind::Images => {
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                units: req.units,
                ..Usage::default()
            };
            let data: Vec<Value> = (0..req.units)
                .map(|i| json!({"url": format!("https://images.invalid/mock-{i}.png"), "revised_prompt": text}))
                .collect();
            (json!({"created": created(), "data": data}), usage)
        }
        CallKind::Rerank => {
            let n = req
                .body
                .get("documents")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let top = req
                .body
                .get("top_n")
                .and_then(Value::as_u64)
                .map_or(n, |t| (t as usize).min(n));
            let results: Vec<Value> = (0..top)
                .map(|i| json!({"index": i, "relevance_score": 1.0 / (i as f64 + 1.0)}))
                .collect();
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                units: req.units,
                ..Usage::default()
            };
            (
                json!({"id": format!("rerank-{}", uuid::Uuid::new_v4().simple()), "results": results,
                       "meta": {"billed_units": {"search_units": req.units}}}),
                usage,
            )
        }
        // Answered by `dispatch_transcription` (it bills the upload's length); kept whole here.
        CallKind::Transcription => (
            json!({ "text": text }),
            Usage {
                units: req.units,
                ..Usage::default()
            },
        ),
        // Audio is answered by `mock_speech`; this arm only bills.
        CallKind::Speech => (
            Value::Null,
            Usage {
                prompt_tokens: req.prompt_tokens,
                units: req.units,
                ..Usage::default()
            },
        ),
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

/// What a `mock_response` deployment says for `/v1/audio/speech`: a valid WAV of a tenth of a
/// second of silence (16 kHz, 16-bit mono), whatever the text.
pub(super) fn mock_speech() -> Vec<u8> {
    let samples: u32 = 1600;
    let data_len = samples * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.resize(44 + data_len as usize, 0);
    wav
}

/// A Responses API `response` object holding one assistant message of `text`.
fn response_object(id: &str, model: &str, text: &str, status: &str, usage: Option<Usage>) -> Value {
    let output = if status == "completed" {
        json!([{"type": "message", "id": format!("msg_{id}"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}])
    } else {
        json!([])
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created(),
        "status": status,
        "model": model,
        "output": output,
        "usage": usage.map(|u| json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total(),
        })),
    })
}

/// A mock deployment's stream for `/v1/responses`: Responses API events, one text delta per word,
/// ending with `response.completed` carrying the usage.
fn mock_responses_stream(text: &str, model: &str, req: &CallRequest) -> Vec<String> {
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let item = format!("msg_{id}");
    let usage = Usage {
        prompt_tokens: req.prompt_tokens,
        completion_tokens: count_text(text),
        ..Usage::default()
    };
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": response_object(&id, model, "", "in_progress", None)}),
        json!({"type": "response.in_progress", "response": response_object(&id, model, "", "in_progress", None)}),
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "id": item, "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": item, "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    for word in text.split_inclusive(' ') {
        events.push(
            json!({"type": "response.output_text.delta", "item_id": item, "output_index": 0,
                           "content_index": 0, "delta": word}),
        );
    }
    let done = response_object(&id, model, text, "completed", Some(usage));
    events.push(
        json!({"type": "response.output_text.done", "item_id": item, "output_index": 0,
                       "content_index": 0, "text": text}),
    );
    events.push(
        json!({"type": "response.content_part.done", "item_id": item, "output_index": 0,
                       "content_index": 0, "part": done["output"][0]["content"][0]}),
    );
    events.push(
        json!({"type": "response.output_item.done", "output_index": 0, "item": done["output"][0]}),
    );
    events.push(json!({"type": "response.completed", "response": done}));
    events
        .into_iter()
        .enumerate()
        .map(|(n, mut e)| {
            e["sequence_number"] = json!(n);
            format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or(""))
        })
        .collect()
}

/// SSE chunks of a mock deployment: one chunk per word, a finish chunk, the usage chunk, DONE
/// (`/v1/completions` chunks carry `text`; `/v1/responses` gets its own events).
pub(super) fn mock_stream(
    dep: &Deployment,
    model: &str,
    req: &CallRequest,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let text = dep.mock_response.clone().unwrap_or_default();
    if req.kind == CallKind::Responses {
        let out: Vec<Result<Bytes, std::io::Error>> = mock_responses_stream(&text, model, req)
            .into_iter()
            .map(|e| Ok(Bytes::from(e)))
            .collect();
        return futures_util::stream::iter(out).boxed();
    }
    let completions = req.kind == CallKind::Completions;
    let (id, object) = if completions {
        (
            format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
            "text_completion",
        )
    } else {
        (
            format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            "chat.completion.chunk",
        )
    };
    let created = created();
    let chunk = |delta: Value, finish: Value| {
        let choice = if completions {
            json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                   "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        };
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
    };
    let mut events: Vec<Value> = Vec::new();
    if !completions {
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
    }
    for word in text.split_inclusive(' ') {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let completion = count_text(&text);
    events.push(json!({"id": id, "object": object, "created": created, "model": model,
        "choices": [], "usage": {"prompt_tokens": req.prompt_tokens, "completion_tokens": completion,
        "total_tokens": req.prompt_tokens + completion}}));
    let mut out: Vec<Result<Bytes, std::io::Error>> = events
        .into_iter()
        .map(|e| Ok(Bytes::from(format!("data: {e}\n\n"))))
        .collect();
    out.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    futures_util::stream::iter(out).boxed()
}
