//! A small OpenAI-compatible upstream on 127.0.0.1:0 for proxy tests. The first path segment
//! picks the behaviour (`api_base: http://<addr>/<mode>/v1`):
//! - `ok`: canned completion with usage (prompt 9, completion 6); streams `STREAM_WORDS` chunks
//!   50 ms apart, then a usage chunk when `stream_options.include_usage` was asked, then DONE;
//! - `nousage`: like `ok` without any usage;
//! - `fail`: HTTP 500 whose message echoes the Authorization header it received, also upper-cased
//!   and partly masked;
//! - `slow`: answers after 3 s (tests set a shorter deployment timeout);
//! - `long`: streams 200 chunks 20 ms apart (client disconnect tests);
//! - `cut`: starts a 200 answer, sends part of a JSON body, then breaks the connection;
//! - `notjson`: a 200 answer whose body is not JSON;
//! - `endless`: streams a chunk every 50 ms and never ends (deadline tests);
//! - `flood`: streams 16 KiB chunks as fast as the client takes them, forever (a client that
//!   stops reading);
//! - `toolong`: 400 `context_length_exceeded` (context-window fallbacks);
//! - `busy`: 429 with `retry-after: 0.1` (retries and cooldowns);
//! - `counted`: bills the whole request: `prompt_tokens` is the o200k_base count of the entire
//!   JSON body as received (keys, quotes and escapes included: at least what any upstream could
//!   bill), and the completion uses the whole `max_tokens` (6 without it); while `hold()` is on
//!   it keeps every call waiting until `release()`.
//!
//! Azure OpenAI paths (`api_base: http://<addr>/<mode>`): `/<mode>/openai/deployments/<dep>/
//! {chat/completions,embeddings}` and `/<mode>/openai/v1/…` answer as above (streams start with
//! Azure's `choices: []` prompt-filter chunk); mode `fail` echoes the `api-key` header it got,
//! mode `filter` answers Azure's 400 content-filter error. Each call's path with query and its
//! `api-key` header are recorded.
//!
//! Anthropic's Messages API at `/<mode>/v1/messages` (`api_base: http://<addr>/<mode>`): mode `ok`
//! answers "Hello from Claude." (usage: 5 input, 2 cache read, 1 cache write, 6 output) or, when
//! the request forces a tool, a `tool_use` of it; streams send that text in three deltas; mode
//! `fail` answers 529 `overloaded_error` echoing the `x-api-key` it got; mode `broken` streams a
//! delta then an `error` event. The `x-api-key` and `anthropic-version` headers are recorded.
//!
//! Gemini's API at `/<mode>/models/<model>:generateContent` and `…:streamGenerateContent?alt=sse`
//! (`api_base: http://<addr>/<mode>`): "Hello from Gemini." (usage: 7 prompt, 4 candidates, 2
//! thoughts), streamed in two events; the `x-goog-api-key` header is recorded in `api_keys`.
//!
//! `/<mode>/v1/completions` (text completions, "Hello from completions.", usage 5 + 4) and
//! `/<mode>/v1/responses` (+ Azure's `/<mode>/openai/responses` and `/<mode>/openai/v1/responses`):
//! "Hello from responses." (11 input tokens, 3 cached, 4 output), streamed as the Responses API's
//! full event sequence; each refuses bodies the real API would (no `prompt` / `input`, `messages`,
//! `stream_options.include_usage` on responses); mode `fail` answers 500.
//!
//! Amazon Bedrock's runtime at `/<mode>/model/<modelId>/{converse,converse-stream,invoke}`: see
//! `mock_bedrock`.
//!
//! Every call counts a hit, so tests can assert that denials never reach the upstream.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};

pub const STREAM_WORDS: &[&str] = &["Hello", " from", " the", " mock", " stream", "."];

#[derive(Default)]
pub struct Seen {
    pub hits: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    pub auth: Mutex<Vec<String>>,
    /// Azure routes: path and query of each call, and its `api-key` header.
    pub azure_paths: Mutex<Vec<String>>,
    pub api_keys: Mutex<Vec<String>>,
    /// Anthropic routes: `x-api-key`, `anthropic-version` and `anthropic-beta` of each call.
    pub anthropic_headers: Mutex<Vec<(String, String, String)>>,
    /// Bedrock routes: each call's path and how it was authorized (see `mock_bedrock`).
    pub bedrock_calls: Mutex<Vec<String>>,
    /// Chunks of `long` streams actually written.
    pub long_chunks_sent: AtomicUsize,
    /// OAuth tokens the `/<mode>/token` endpoint granted (or refused).
    pub tokens_granted: AtomicUsize,
    /// `host:port` the mock listens on (token audiences are checked against it).
    pub host: Mutex<String>,
    /// `counted` calls wait while this is set.
    holding: AtomicBool,
    released: tokio::sync::Notify,
}

impl Seen {
    async fn wait_while_held(&self) {
        loop {
            // Created before the check, so a release in between still wakes it.
            let released = self.released.notified();
            if !self.holding.load(Ordering::SeqCst) {
                return;
            }
            released.await;
        }
    }
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/{mode}/v1/chat/completions", post(chat))
            .route("/{mode}/v1/embeddings", post(embeddings))
            .route("/{mode}/v1/completions", post(text_completions))
            .route("/{mode}/v1/moderations", post(moderations))
            .route("/{mode}/v1/images/generations", post(images))
            .route("/{mode}/v1/audio/speech", post(speech))
            .route("/{mode}/v1/rerank", post(rerank))
            .route("/{mode}/v1/audio/transcriptions", post(transcriptions))
            .route(
                "/{mode}/openai/deployments/{dep}/audio/transcriptions",
                post(azure_transcriptions),
            )
            .route(
                "/{mode}/openai/deployments/{dep}/images/generations",
                post(azure_images),
            )
            .route("/{mode}/v1/responses", post(responses))
            .route("/{mode}/openai/responses", post(azure_responses))
            .route("/{mode}/openai/v1/responses", post(azure_responses))
            .route(
                "/{mode}/openai/deployments/{dep}/chat/completions",
                post(azure_chat),
            )
            .route("/{mode}/openai/v1/chat/completions", post(azure_chat_v1))
            .route("/{mode}/v1/messages", post(anthropic_messages))
            .route("/{mode}/v1/messages/count_tokens", post(anthropic_count_tokens))
            .route("/{mode}/models/{action}", post(gemini_generate))
            .route(
                "/{mode}/v1/projects/{project}/locations/{location}/publishers/google/models/{action}",
                post(vertex_generate),
            )
            .route("/{mode}/token", post(oauth_token))
            .route(
                "/{mode}/model/{model}/{action}",
                post(crate::mock_bedrock::bedrock_runtime),
            )
            .route(
                "/{mode}/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{action}",
                post(vertex_claude),
            )
            .route(
                "/{mode}/openai/deployments/{dep}/embeddings",
                post(azure_embeddings),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *seen.host.lock().unwrap() = addr.to_string();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream { addr, seen, task }
    }

    pub fn base(&self, mode: &str) -> String {
        format!("http://{}/{mode}/v1", self.addr)
    }

    /// Keeps `counted` calls waiting (they still count their hit on arrival).
    pub fn hold(&self) {
        self.seen.holding.store(true, Ordering::SeqCst);
    }

    /// Lets every waiting `counted` call answer.
    pub fn release(&self) {
        self.seen.holding.store(false, Ordering::SeqCst);
        self.seen.released.notify_waiters();
    }

    pub fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }

    pub fn last_body(&self) -> Value {
        self.seen
            .bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(seen: &Seen, headers: &HeaderMap, body: &Value) {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    seen.bodies.lock().unwrap().push(body.clone());
    seen.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
}

/// `/v1/completions` (legacy text completions): "Hello from completions." (usage 5 + 4), or its
/// text in three chunks, then a usage chunk when asked for, then DONE. A body without `prompt`
/// is refused as OpenAI does; mode `fail` answers 500.
async fn text_completions(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    if mode == "fail" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "boom", "type": "server_error"}})),
        )
            .into_response();
    }
    if body.get("prompt").is_none() || body.get("messages").is_some() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "you must provide a prompt (and no messages)", "type": "invalid_request_error", "param": "prompt"}}))).into_response();
    }
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9});
    if body["stream"] == true {
        let chunk = |text: &str, finish: Value| {
            json!({"id": "cmpl-mock", "object": "text_completion", "created": 1700000000, "model": "upstream-model",
                   "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
        };
        let mut out: Vec<String> = ["Hello ", "from ", "completions."]
            .iter()
            .map(|t| format!("data: {}\n\n", chunk(t, Value::Null)))
            .collect();
        out.push(format!("data: {}\n\n", chunk("", json!("stop"))));
        if body["stream_options"]["include_usage"] == true {
            let u = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1700000000,
                           "model": "upstream-model", "choices": [], "usage": usage});
            out.push(format!("data: {u}\n\n"));
        }
        out.push("data: [DONE]\n\n".into());
        return sse(out, Duration::from_millis(5), None);
    }
    axum::Json(
        json!({"id": "cmpl-mock", "object": "text_completion", "created": 1700000000,
        "model": "upstream-model", "choices": [{"text": "Hello from completions.", "index": 0,
        "logprobs": null, "finish_reason": "stop"}], "usage": usage}),
    )
    .into_response()
}

/// `/v1/moderations`: one unflagged result per input (a body without `input` is refused).
async fn moderations(
    State(seen): State<Arc<Seen>>,
    Path(_mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    let n = match &body["input"] {
        Value::Array(a) => a.len(),
        Value::String(_) => 1,
        _ => {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "input is required", "type": "invalid_request_error", "param": "input"}}))).into_response();
        }
    };
    let results: Vec<Value> = (0..n)
        .map(|_| json!({"flagged": false, "categories": {"violence": false}, "category_scores": {"violence": 0.001}}))
        .collect();
    axum::Json(json!({"id": "modr-mock", "model": "omni-moderation-latest", "results": results}))
        .into_response()
}

/// `/v1/images/generations`: `n` image URLs; mode `fewer` makes one whatever `n` is; mode
/// `tokens` answers like gpt-image-1 (base64 images and token `usage`: 50 in, 1000 out).
async fn images(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    images_answer(&mode, &body)
}

async fn azure_images(
    State(seen): State<Arc<Seen>>,
    Path((mode, _dep)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record_azure(&seen, &uri, &headers);
    record(&seen, &headers, &body);
    images_answer(&mode, &body)
}

fn images_answer(mode: &str, body: &Value) -> Response {
    if !body["prompt"].is_string() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "prompt is required", "type": "invalid_request_error", "param": "prompt"}}))).into_response();
    }
    let n = if mode == "fewer" {
        1
    } else {
        body["n"].as_u64().unwrap_or(1)
    };
    if mode == "tokens" {
        let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": "aW1hZ2U="})).collect();
        return axum::Json(json!({"created": 1700000000, "data": data,
            "usage": {"input_tokens": 50, "output_tokens": 1000, "total_tokens": 1050,
                      "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}}))
        .into_response();
    }
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"url": format!("https://images.example/{i}.png"), "revised_prompt": "a cat"}))
        .collect();
    axum::Json(json!({"created": 1700000000, "data": data})).into_response()
}

/// `/v1/rerank` (Cohere's shape, as vLLM serves it): documents scored in reverse order, `top_n`
/// kept, `meta.billed_units.search_units` 1 and `usage.total_tokens` 30; refuses a body without
/// `query` or `documents`.
async fn rerank(
    State(seen): State<Arc<Seen>>,
    Path(_mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    let Some(docs) = body["documents"]
        .as_array()
        .filter(|_| body["query"].is_string())
    else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "query and documents are required", "type": "invalid_request_error", "param": null}}))).into_response();
    };
    let n = docs.len();
    let top = body["top_n"].as_u64().map_or(n, |t| (t as usize).min(n));
    let results: Vec<Value> = (0..top)
        .map(|i| json!({"index": n - 1 - i, "relevance_score": 0.9 - 0.1 * i as f64}))
        .collect();
    axum::Json(json!({"id": "rerank-mock", "results": results,
        "meta": {"billed_units": {"search_units": 1}}, "usage": {"total_tokens": 30}}))
    .into_response()
}

/// `/v1/audio/speech`: MP3-ish bytes (`audio/mpeg`); refuses a body without `input` or `voice`.
async fn speech(
    State(seen): State<Arc<Seen>>,
    Path(_mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    if !body["input"].is_string() || body.get("voice").is_none() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "input and voice are required", "type": "invalid_request_error", "param": null}}))).into_response();
    }
    Response::builder()
        .header("content-type", "audio/mpeg")
        .body(Body::from(&b"ID3\x04mock-mp3-audio"[..]))
        .unwrap()
}

/// Milliseconds of a PCM WAV file, read from its header here (independently of the gateway).
fn wav_ms(file: &[u8]) -> Option<f64> {
    if file.get(..4)? != b"RIFF" || file.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut rate = 0u32;
    while at + 8 <= file.len() {
        let size = u32::from_le_bytes(file[at + 4..at + 8].try_into().ok()?) as usize;
        match &file[at..at + 4] {
            b"fmt " => rate = u32::from_le_bytes(file.get(at + 16..at + 20)?.try_into().ok()?),
            b"data" if rate > 0 => return Some(size as f64 * 1000.0 / rate as f64),
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    None
}

/// OpenAI's `/v1/audio/transcriptions`: a multipart form with a `file` (with a filename) and a
/// `model`, only the API's own fields. Answers "Hello from whisper." with `usage` of type
/// `duration` (the WAV's length) or, for `gpt-4o*` models, of type `tokens` (20 in, 6 out);
/// `verbose_json` carries `duration`, `text`/`srt`/`vtt` plain text and no usage. Mode
/// `nousage` accepts any file and reports nothing; mode `fail` answers 500. The form is
/// recorded as a JSON object (`file_len`, `filename` and the text fields).
async fn transcriptions(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    transcription_answer(seen, mode, headers, body).await
}

async fn azure_transcriptions(
    State(seen): State<Arc<Seen>>,
    Path((mode, _dep)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record_azure(&seen, &uri, &headers);
    transcription_answer(seen, mode, headers, body).await
}

async fn transcription_answer(
    seen: Arc<Seen>,
    mode: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = |m: String| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"message": m, "type": "invalid_request_error", "param": null}}),
            ),
        )
            .into_response()
    };
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(boundary) = multer::parse_boundary(ct) else {
        return refuse(format!("expected multipart/form-data, got {ct}"));
    };
    let mut form = multer::Multipart::new(
        futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) }),
        boundary,
    );
    let mut seen_form = serde_json::Map::new();
    let mut file: Option<Bytes> = None;
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            let Some(filename) = field.file_name().map(str::to_string) else {
                return refuse("file must have a filename".into());
            };
            seen_form.insert("filename".into(), json!(filename));
            let data = field.bytes().await.unwrap();
            seen_form.insert("file_len".into(), json!(data.len()));
            file = Some(data);
        } else {
            const KNOWN: &[&str] = &[
                "model",
                "language",
                "prompt",
                "response_format",
                "temperature",
                "timestamp_granularities[]",
                "include[]",
                "chunking_strategy",
            ];
            if !KNOWN.contains(&name.as_str()) {
                return refuse(format!("Unrecognized request argument supplied: {name}"));
            }
            let text = field.text().await.unwrap();
            seen_form.insert(name, json!(text));
        }
    }
    record(&seen, &headers, &Value::Object(seen_form.clone()));
    if mode == "fail" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "boom", "type": "server_error"}})),
        )
            .into_response();
    }
    let Some(model) = seen_form
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return refuse("you must provide a model parameter".into());
    };
    let Some(file) = file else {
        return refuse("file is required".into());
    };
    let text = "Hello from whisper.";
    let format = seen_form
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("json")
        .to_string();
    if mode == "nousage" {
        return axum::Json(json!({"text": text})).into_response();
    }
    let Some(ms) = wav_ms(&file) else {
        return refuse("Invalid file format. Supported formats: ['wav']".into());
    };
    match format.as_str() {
        "text" | "srt" | "vtt" => Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(Body::from(format!("{text}\n")))
            .unwrap(),
        "verbose_json" => axum::Json(json!({"task": "transcribe", "language": "english",
            "duration": ms / 1000.0, "text": text,
            "segments": [{"id": 0, "start": 0.0, "end": ms / 1000.0, "text": text}]}))
        .into_response(),
        _ if model.starts_with("gpt-4o") => {
            axum::Json(json!({"text": text, "usage": {"type": "tokens",
            "input_tokens": 20, "input_token_details": {"audio_tokens": 18, "text_tokens": 2},
            "output_tokens": 6, "total_tokens": 26}}))
            .into_response()
        }
        _ => {
            axum::Json(json!({"text": text, "usage": {"type": "duration", "seconds": ms / 1000.0}}))
                .into_response()
        }
    }
}

/// The Responses API `response` the mock answers (usage: 11 input of which 3 cached, 4 output).
pub fn response_object(status: &str) -> Value {
    let done = status == "completed";
    json!({"id": "resp_mock", "object": "response", "created_at": 1700000000, "status": status,
        "model": "upstream-model",
        "output": if done { json!([{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello from responses.", "annotations": []}]}]) } else { json!([]) },
        "usage": if done { json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 3},
            "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 15}) } else { Value::Null }})
}

/// `/v1/responses`: the response above, or its events (`response.created`, text deltas,
/// `response.completed` with usage). Refuses `stream_options.include_usage` and `messages`, as
/// the real API does; mode `fail` answers 500.
async fn responses(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    responses_answer(&mode, &body)
}

async fn azure_responses(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record_azure(&seen, &uri, &headers);
    record(&seen, &headers, &body);
    responses_answer(&mode, &body)
}

fn responses_answer(mode: &str, body: &Value) -> Response {
    if mode == "fail" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "boom", "type": "server_error"}})),
        )
            .into_response();
    }
    if body.get("input").is_none()
        || body.get("messages").is_some()
        || body.pointer("/stream_options/include_usage").is_some()
    {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "Unknown parameter or missing input", "type": "invalid_request_error", "param": null}}))).into_response();
    }
    if body["stream"] == true {
        let done = response_object("completed");
        let item = done["output"][0].clone();
        let part = item["content"][0].clone();
        let mut events = vec![
            json!({"type": "response.created", "response": response_object("in_progress")}),
            json!({"type": "response.in_progress", "response": response_object("in_progress")}),
            json!({"type": "response.output_item.added", "output_index": 0,
                   "item": {"type": "message", "id": "msg_mock", "status": "in_progress", "role": "assistant", "content": []}}),
            json!({"type": "response.content_part.added", "item_id": "msg_mock", "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ];
        for d in ["Hello ", "from ", "responses."] {
            events.push(json!({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0,
                               "content_index": 0, "delta": d, "logprobs": []}));
        }
        events.push(
            json!({"type": "response.output_text.done", "item_id": "msg_mock", "output_index": 0,
                           "content_index": 0, "text": "Hello from responses.", "logprobs": []}),
        );
        events.push(
            json!({"type": "response.content_part.done", "item_id": "msg_mock", "output_index": 0,
                           "content_index": 0, "part": part}),
        );
        events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
        events.push(json!({"type": "response.completed", "response": done}));
        let out = events
            .into_iter()
            .enumerate()
            .map(|(n, mut e)| {
                e["sequence_number"] = json!(n);
                format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())
            })
            .collect();
        return sse(out, Duration::from_millis(5), None);
    }
    axum::Json(response_object("completed")).into_response()
}

/// The exact SSE bytes the `ok`/`nousage` streams send, chunk by chunk.
pub fn stream_chunks(with_usage: bool) -> Vec<String> {
    let mut out = Vec::new();
    for w in STREAM_WORDS {
        let v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "upstream-model", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
        out.push(format!("data: {v}\n\n"));
    }
    let fin = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "upstream-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    out.push(format!("data: {fin}\n\n"));
    if with_usage {
        let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "upstream-model", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}});
        out.push(format!("data: {u}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

fn sse(chunks: Vec<String>, delay: Duration, counter: Option<Arc<Seen>>) -> Response {
    let s = futures_util::stream::iter(chunks).then(move |c| {
        let counter = counter.clone();
        async move {
            tokio::time::sleep(delay).await;
            if let Some(s) = counter {
                s.long_chunks_sent.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<Bytes, std::io::Error>(Bytes::from(c))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(s))
        .unwrap()
}

async fn chat(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    let stream = body["stream"] == true;
    let wants_usage = body["stream_options"]["include_usage"] == true;
    match mode.as_str() {
        "fail" => {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                // Providers echo keys in other cases and partly masked, too.
                axum::Json(json!({"error": {"message": format!(
                    "internal boom; you sent {auth}; upper {}; masked {}****{}",
                    auth.to_uppercase(),
                    auth.chars().skip(7).take(8).collect::<String>(),
                    auth.chars().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<String>()
                ), "type": "server_error"}})),
            )
                .into_response()
        }
        "toolong" => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})),
        )
            .into_response(),
        "busy" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0.1")],
            axum::Json(json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}})),
        )
            .into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(completion(true)).into_response()
        }
        "long" => {
            let chunks: Vec<String> = (0..200)
                .map(|i| {
                    let v = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
                        "model": "m", "choices": [{"index": 0, "delta": {"content": format!("word{i} ")}, "finish_reason": null}]});
                    format!("data: {v}\n\n")
                })
                .collect();
            sse(chunks, Duration::from_millis(20), Some(seen.clone()))
        }
        "cut" => {
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(
                    br#"{"id":"chatcmpl-cut","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"partial answer that never"#,
                )),
                Err(std::io::Error::other("upstream died mid-body")),
            ];
            let s = futures_util::stream::iter(parts).then(|p| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                p
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(s))
                .unwrap()
        }
        "notjson" => Response::builder()
            .header("content-type", "application/json")
            .body(Body::from("<html>bad gateway page from a proxy</html>"))
            .unwrap(),
        "endless" => {
            let s = futures_util::stream::unfold(0u64, |i| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let v = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}, "finish_reason": null}]});
                Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(format!("data: {v}\n\n"))),
                    i + 1,
                ))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(s))
                .unwrap()
        }
        "flood" => {
            let word = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": "x".repeat(16 * 1024)}, "finish_reason": null}]});
            let chunk = Bytes::from(format!("data: {word}\n\n"));
            let counter = seen.clone();
            let s = futures_util::stream::repeat_with(move || {
                counter.long_chunks_sent.fetch_add(1, Ordering::SeqCst);
                Ok::<Bytes, std::io::Error>(chunk.clone())
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(s))
                .unwrap()
        }
        "counted" => {
            seen.wait_while_held().await;
            let prompt = tiktoken_rs::o200k_base_singleton().count_ordinary(&body.to_string());
            let completion_tokens = body["max_tokens"].as_u64().unwrap_or(6) as usize;
            let mut v = completion(true);
            v["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens});
            axum::Json(v).into_response()
        }
        "nousage" if stream => sse(stream_chunks(false), Duration::from_millis(50), None),
        "nousage" => axum::Json(completion(false)).into_response(),
        _ if stream => sse(stream_chunks(wants_usage), Duration::from_millis(50), None),
        _ => axum::Json(completion(true)).into_response(),
    }
}

/// The canned completion (the reference's recorded answer).
pub fn completion(with_usage: bool) -> Value {
    let mut v = json!({
        "id": "chatcmpl-mock123",
        "created": 1700000000,
        "model": "upstream-model",
        "object": "chat.completion",
        "system_fingerprint": "fp_mock",
        "choices": [{"finish_reason": "stop", "index": 0,
            "message": {"content": "Hello from the mock upstream.", "role": "assistant"}}],
    });
    if with_usage {
        v["usage"] = json!({"completion_tokens": 6, "prompt_tokens": 9, "total_tokens": 15});
    }
    v
}

async fn embeddings(
    State(seen): State<Arc<Seen>>,
    Path(_mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    record(&seen, &headers, &body.0);
    axum::Json(json!({"object": "list", "model": "emb",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4}}))
    .into_response()
}

fn record_azure(seen: &Seen, uri: &axum::http::Uri, headers: &HeaderMap) {
    seen.azure_paths.lock().unwrap().push(
        uri.path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    );
    seen.api_keys.lock().unwrap().push(
        headers
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
}

async fn azure_chat(
    State(seen): State<Arc<Seen>>,
    Path((mode, _dep)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    azure_answer(seen, mode, uri, headers, body.0).await
}

async fn azure_chat_v1(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    azure_answer(seen, mode, uri, headers, body.0).await
}

async fn azure_answer(
    seen: Arc<Seen>,
    mode: String,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Value,
) -> Response {
    record_azure(&seen, &uri, &headers);
    let api_key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match mode.as_str() {
        "fail" => {
            record(&seen, &headers, &body);
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"code": "401", "message": format!(
                    "Access denied due to invalid subscription key {api_key} (upper {}) or wrong API endpoint.",
                    api_key.to_uppercase()
                )}})),
            )
                .into_response()
        }
        "filter" => {
            record(&seen, &headers, &body);
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                    "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                    "innererror": {"code": "ResponsibleAIPolicyViolation",
                        "content_filter_result": {"hate": {"filtered": true, "severity": "high"}}}}})),
            )
                .into_response()
        }
        "ok" if body["stream"] == true => {
            record(&seen, &headers, &body);
            let filter = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                    "hate": {"filtered": false, "severity": "safe"}}}]});
            let mut chunks = vec![format!("data: {filter}\n\n")];
            chunks.extend(stream_chunks(
                body["stream_options"]["include_usage"] == true,
            ));
            sse(chunks, Duration::from_millis(20), None)
        }
        _ => chat(State(seen), Path(mode), headers, axum::Json(body)).await,
    }
}

async fn azure_embeddings(
    State(seen): State<Arc<Seen>>,
    Path((mode, _dep)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    record_azure(&seen, &uri, &headers);
    embeddings(State(seen), Path(mode), headers, body).await
}

/// Anthropic's token counter: 42 for any valid request; refuses `max_tokens` (not a counting
/// parameter) as the real API does; mode `fail` answers 529. Counts a hit and records the
/// `x-api-key` and `anthropic-beta` it got.
async fn anthropic_count_tokens(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    seen.anthropic_headers.lock().unwrap().push((
        h("x-api-key"),
        h("anthropic-version"),
        h("anthropic-beta"),
    ));
    if mode == "fail" {
        return (
            StatusCode::from_u16(529).unwrap(),
            axum::Json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        )
            .into_response();
    }
    if body.get("max_tokens").is_some() || body["messages"].as_array().is_none_or(Vec::is_empty) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Extra inputs are not permitted"}})),
        )
            .into_response();
    }
    axum::Json(json!({"input_tokens": 42})).into_response()
}

async fn anthropic_messages(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    record(&seen, &headers, &body);
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    seen.anthropic_headers.lock().unwrap().push((
        h("x-api-key"),
        h("anthropic-version"),
        h("anthropic-beta"),
    ));
    let usage = json!({"input_tokens": 5, "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": 1, "output_tokens": 6});
    let event = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let start = event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": "claude-mock", "content": [],
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 2,
                "cache_creation_input_tokens": 1, "output_tokens": 1}}}),
    );
    let delta = |t: &str| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": t}}),
        )
    };
    match mode.as_str() {
        "fail" => (
            StatusCode::from_u16(529).unwrap(),
            axum::Json(
                json!({"type": "error", "error": {"type": "overloaded_error",
                "message": format!("Overloaded (key {})", h("x-api-key"))}}),
            ),
        )
            .into_response(),
        "broken" => sse(
            vec![
                start,
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
                ),
                delta("Hello"),
                event(
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ),
            ],
            Duration::from_millis(10),
            None,
        ),
        _ if body["stream"] == true => sse(
            vec![
                start,
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
                ),
                event("ping", json!({"type": "ping"})),
                delta("Hello"),
                delta(" from"),
                delta(" Claude."),
                event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": 6}}),
                ),
                event("message_stop", json!({"type": "message_stop"})),
            ],
            Duration::from_millis(10),
            None,
        ),
        _ => {
            let forced = body["tool_choice"]["type"] == "tool";
            let content = if forced {
                json!([{"type": "tool_use", "id": "toolu_mock", "name": body["tool_choice"]["name"],
                    "input": {"answer": 42}}])
            } else {
                json!([{"type": "text", "text": "Hello from Claude."}])
            };
            axum::Json(
                json!({"id": "msg_mock", "type": "message", "role": "assistant",
                "model": "claude-mock", "content": content,
                "stop_reason": if forced { "tool_use" } else { "end_turn" },
                "stop_sequence": null, "usage": usage}),
            )
            .into_response()
        }
    }
}

async fn gemini_generate(
    State(seen): State<Arc<Seen>>,
    Path((_mode, action)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    gemini_answer(seen, action, uri, headers, body.0)
}

/// Vertex AI's generateContent (the Gemini wire below a project and location), answered as
/// Gemini's; the call's `Authorization` (the OAuth token) is recorded in `auth`.
async fn vertex_generate(
    State(seen): State<Arc<Seen>>,
    Path((_mode, _project, _location, action)): Path<(String, String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bearer.starts_with("Bearer ya29.mock-") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})),
        )
            .into_response();
    }
    gemini_answer(seen, action, uri, headers, body.0)
}

/// Claude on Vertex AI (`…/publishers/anthropic/models/{model}:rawPredict` and
/// `:streamRawPredict`): as strict as Vertex — a bearer token, `anthropic_version:
/// vertex-2023-10-16` in the body, no `model` in it, `stream: true` exactly for the stream action —
/// then answered as Anthropic's Messages API (mode `ok`). The path is recorded in `azure_paths`.
async fn vertex_claude(
    State(seen): State<Arc<Seen>>,
    Path((mode, _project, _location, action)): Path<(String, String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    seen.azure_paths.lock().unwrap().push(
        uri.path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    );
    let bearer_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ya29.mock-"));
    let streaming = action.ends_with(":streamRawPredict");
    let refuse = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": m}}),
            ),
        )
            .into_response()
    };
    if !bearer_ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})),
        )
            .into_response();
    }
    if body["anthropic_version"] != "vertex-2023-10-16" {
        return refuse("anthropic_version: vertex-2023-10-16 is required");
    }
    if body.get("model").is_some() {
        return refuse("model: Extra inputs are not permitted");
    }
    if (body["stream"] == true) != streaming {
        return refuse("stream must be true for streamRawPredict only");
    }
    anthropic_messages(State(seen), Path(mode), headers, axum::Json(body)).await
}

/// Google's OAuth token endpoint for service-account JWTs: checks the grant and the assertion's
/// shape (RS256, issuer, audience, scope, a 2048-bit signature) and answers `ya29.mock-<n>`;
/// mode `brief` grants tokens that are already due for refresh, mode `deny` refuses the grant.
async fn oauth_token(
    State(seen): State<Arc<Seen>>,
    Path(mode): Path<String>,
    uri: axum::http::Uri,
    form: String,
) -> Response {
    use base64::Engine;
    let n = seen.tokens_granted.fetch_add(1, Ordering::SeqCst) + 1;
    let pairs: std::collections::HashMap<String, String> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    let bad = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": m})),
        )
            .into_response()
    };
    if mode == "deny" {
        return bad("Invalid JWT Signature.");
    }
    if pairs.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return bad("grant_type");
    }
    let jwt = pairs.get("assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = jwt.split('.').collect();
    let decode = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap_or_default()
    };
    let header: Value = serde_json::from_slice(&decode(parts.first().copied().unwrap_or("")))
        .unwrap_or(Value::Null);
    let claims: Value =
        serde_json::from_slice(&decode(parts.get(1).copied().unwrap_or(""))).unwrap_or(Value::Null);
    let sig = decode(parts.get(2).copied().unwrap_or(""));
    let aud = format!("http://{}{}", seen.host.lock().unwrap(), uri.path());
    if parts.len() != 3
        || header["alg"] != "RS256"
        || claims["iss"] != "purser-test@purser-tests.iam.gserviceaccount.com"
        || claims["aud"] != aud.as_str()
        || claims["scope"] != "https://www.googleapis.com/auth/cloud-platform"
        || sig.len() != 256
    {
        return bad(&format!("bad assertion: {header} {claims} (aud {aud})"));
    }
    let expires_in = if mode == "brief" { 60 } else { 3599 };
    axum::Json(json!({"access_token": format!("ya29.mock-{n}"), "expires_in": expires_in, "token_type": "Bearer"}))
        .into_response()
}

fn gemini_answer(
    seen: Arc<Seen>,
    action: String,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Value,
) -> Response {
    record(&seen, &headers, &body);
    seen.azure_paths.lock().unwrap().push(
        uri.path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    );
    seen.api_keys.lock().unwrap().push(
        headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    let invalid = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "message": m, "status": "INVALID_ARGUMENT"}})),
        )
            .into_response()
    };
    // Embeddings: one vector of 3 values (or `outputDimensionality`) per input; Vertex reports
    // 2 tokens per instance, AI Studio none.
    let vector = |dims: Option<u64>, i: usize| -> Value {
        let n = dims.unwrap_or(3) as usize;
        json!(
            (0..n)
                .map(|k| (i as f64) + 0.25 * (k as f64 + 1.0))
                .collect::<Vec<f64>>()
        )
    };
    if action.ends_with(":batchEmbedContents") {
        let Some(reqs) = body["requests"].as_array().filter(|r| !r.is_empty()) else {
            return invalid("requests is not specified");
        };
        let model = action.trim_end_matches(":batchEmbedContents");
        if reqs.iter().any(|r| {
            r["model"] != format!("models/{model}").as_str()
                || r.pointer("/content/parts/0/text").is_none()
        }) {
            return invalid("each request needs its model and text content");
        }
        let embeddings: Vec<Value> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"values": vector(r["outputDimensionality"].as_u64(), i)}))
            .collect();
        return axum::Json(json!({"embeddings": embeddings})).into_response();
    }
    if action.ends_with(":predict") {
        let Some(instances) = body["instances"].as_array().filter(|r| !r.is_empty()) else {
            return invalid("instances is not specified");
        };
        if instances.iter().any(|i| !i["content"].is_string()) {
            return invalid("each instance needs content");
        }
        let dims = body
            .pointer("/parameters/outputDimensionality")
            .and_then(Value::as_u64);
        let predictions: Vec<Value> = (0..instances.len())
            .map(|i| json!({"embeddings": {"values": vector(dims, i), "statistics": {"token_count": 2.0, "truncated": false}}}))
            .collect();
        return axum::Json(json!({"predictions": predictions})).into_response();
    }
    // Gemini refuses requests without contents, as the real API does.
    if body["contents"].as_array().is_none_or(Vec::is_empty) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "message": "contents is not specified", "status": "INVALID_ARGUMENT"}})),
        )
            .into_response();
    }
    let usage = json!({"promptTokenCount": 7, "candidatesTokenCount": 4, "thoughtsTokenCount": 2, "totalTokenCount": 13});
    if action.ends_with(":streamGenerateContent") {
        let first = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello from"}]}}],
            "usageMetadata": {"promptTokenCount": 7}});
        let last = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " Gemini."}]},
            "finishReason": "STOP"}], "usageMetadata": usage, "modelVersion": "gemini-mock"});
        return sse(
            vec![
                format!("data: {first}\r\n\r\n"),
                format!("data: {last}\r\n\r\n"),
            ],
            Duration::from_millis(10),
            None,
        );
    }
    axum::Json(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello from Gemini."}]},
        "finishReason": "STOP"}], "usageMetadata": usage, "modelVersion": "gemini-mock", "responseId": "g1"}))
    .into_response()
}
