//! Amazon Bedrock's runtime for the mock upstream (`api_base: http://<addr>/<mode>`):
//! `POST /<mode>/model/<modelId>/{converse,converse-stream,invoke}`, as strict as AWS where it
//! matters to a gateway:
//! - **Authorization**: a Bedrock API key (`Bearer bedrock-api-key-mock`) or a SigV4 signature
//!   verified here from the spec (canonical request with the doubly-encoded path, string to sign,
//!   the HMAC key chain), independent of the gateway's signer. Keys: `AKIDMOCK` /
//!   [`SECRET`], and temporary `ASIAMOCK` / [`SECRET`] with [`SESSION_TOKEN`], which must then
//!   be sent and signed. A bad signature is a 403 `InvalidSignatureException`.
//! - **Converse bodies**: only Converse's top-level fields (a `model` field is refused),
//!   alternating turns starting with `user`, each block exactly one known member, images as
//!   base64 of png/jpeg/gif/webp, tool results answering a `toolUse` of the previous turn,
//!   `toolConfig` whenever tool blocks appear, `inferenceConfig` with its four fields only.
//! - **Answers**: "Hello from Bedrock." (usage: 8 input, 3 cache read, 1 cache write, 5 output),
//!   or a `toolUse` of the chosen tool (`{"answer": 42}`) when `toolChoice` is `any`/`tool`;
//!   streams as the binary event stream (CRC32-framed, padded with `p`, written in 11-byte
//!   pieces so frames straddle reads).
//! - **Embeddings** (`invoke`): Titan (`inputText`; 4 tokens per call, `dimensions` long) and
//!   Cohere (`texts` + `input_type`).
//! - Modes: `throttle` (429 `ThrottlingException`), `deny` (403 `AccessDeniedException`),
//!   `toolong` (400 "Input is too long"), `fail` (500 echoing the credentials it got),
//!   `broken` (a stream that ends in a `throttlingException` frame).
//!
//! Each call records `"<path> <sigv4:AKID:region|bearer>"` in `Seen::bedrock_calls`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::mock_upstream::Seen;

pub const SECRET: &str = "mock/Secret+Key0123456789";
pub const SESSION_TOKEN: &str = "mock-session-token-0123456789";
pub const API_KEY: &str = "bedrock-api-key-mock";

fn aws_error(status: u16, kind: &str, message: &str) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "message": message })),
    )
        .into_response();
    r.headers_mut()
        .insert("x-amzn-errortype", kind.parse().unwrap());
    r
}

fn validation(message: &str) -> Response {
    aws_error(400, "ValidationException", message)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&k, data.as_bytes()).as_ref().to_vec()
}

/// RFC 3986 encoding of everything but the unreserved characters (SigV4's `UriEncode`).
fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Checks a SigV4 `Authorization` against the request; on success the access key and region.
fn verify_sigv4(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(String, String), String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let auth = h("authorization");
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not SigV4")?;
    let mut credential = "";
    let mut signed = "";
    let mut signature = "";
    for part in rest.split(", ") {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, "aws4_request"] = scope[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    if service != "bedrock" {
        return Err(format!("signed for service {service}"));
    }
    let amz_date = h("x-amz-date");
    if !amz_date.starts_with(date) {
        return Err("x-amz-date does not match the scope".into());
    }
    let names: Vec<&str> = signed.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(format!("{required} is not signed"));
        }
    }
    match akid {
        "AKIDMOCK" => {}
        "ASIAMOCK" => {
            if h("x-amz-security-token") != SESSION_TOKEN
                || !names.contains(&"x-amz-security-token")
            {
                return Err("temporary credentials need their signed session token".into());
            }
        }
        _ => return Err("The security token included in the request is invalid.".into()),
    }
    // Non-S3 services encode each path segment again (`%3A` → `%253A`).
    let canonical_uri = uri
        .path()
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let canonical_headers: String = names
        .iter()
        .map(|n| format!("{n}:{}\n", h(n).trim()))
        .collect();
    let creq = format!(
        "POST\n{canonical_uri}\n{}\n{canonical_headers}\n{signed}\n{}",
        uri.query().unwrap_or(""),
        sha256_hex(body)
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(creq.as_bytes())
    );
    let mut key = hmac(format!("AWS4{SECRET}").as_bytes(), date);
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    if hex(&hmac(&key, &to_sign)) != signature {
        return Err(
            "The request signature we calculated does not match the signature you provided.".into(),
        );
    }
    Ok((akid.to_string(), region.to_string()))
}

const TOP_LEVEL: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "additionalModelRequestFields",
    "guardrailConfig",
    "performanceConfig",
    "promptVariables",
    "requestMetadata",
    "additionalModelResponseFieldPaths",
];
const BLOCKS: &[&str] = &[
    "text",
    "image",
    "document",
    "toolUse",
    "toolResult",
    "reasoningContent",
    "cachePoint",
    "video",
];

/// Why a Converse body would be refused, if it would.
fn converse_error(body: &Value) -> Option<String> {
    let obj = body.as_object()?;
    if let Some(k) = obj.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Some(format!(
            "Malformed input request: extraneous key [{k}] is not permitted"
        ));
    }
    let Some(messages) = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return Some("A conversation must start with a user message.".into());
    };
    let mut tool_blocks = false;
    let mut last_tool_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if role != expected {
            return Some("A conversation must alternate between user and assistant roles.".into());
        }
        let Some(content) = m["content"].as_array().filter(|c| !c.is_empty()) else {
            return Some(format!("messages.{i}.content: must not be empty"));
        };
        let mut uses = Vec::new();
        for b in content {
            let keys: Vec<&String> = b
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            if keys.len() != 1 || !BLOCKS.contains(&keys[0].as_str()) {
                return Some(format!(
                    "messages.{i}: a content block has exactly one known member"
                ));
            }
            match keys[0].as_str() {
                "text" if !b["text"].is_string() => return Some("text must be a string".into()),
                "image" => {
                    let f = b["image"]["format"].as_str().unwrap_or("");
                    if !["png", "jpeg", "gif", "webp"].contains(&f)
                        || !b["image"]["source"]["bytes"].is_string()
                    {
                        return Some("image: format and source.bytes are required".into());
                    }
                }
                "toolUse" => {
                    tool_blocks = true;
                    let t = &b["toolUse"];
                    if role != "assistant"
                        || !t["toolUseId"].is_string()
                        || !t["name"].is_string()
                        || !t["input"].is_object()
                    {
                        return Some("toolUse: toolUseId, name and an input object are required in assistant turns".into());
                    }
                    uses.push(t["toolUseId"].as_str().unwrap().to_string());
                }
                "toolResult" => {
                    tool_blocks = true;
                    let id = b["toolResult"]["toolUseId"].as_str().unwrap_or("");
                    if role != "user" || !last_tool_uses.iter().any(|u| u == id) {
                        return Some(format!(
                            "toolResult {id} does not answer a toolUse of the previous turn"
                        ));
                    }
                    if b["toolResult"]["content"]
                        .as_array()
                        .is_none_or(|c| c.is_empty())
                    {
                        return Some("toolResult.content must not be empty".into());
                    }
                }
                _ => {}
            }
        }
        last_tool_uses = uses;
    }
    if tool_blocks && obj.get("toolConfig").is_none() {
        return Some("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
    }
    if let Some(ic) = obj.get("inferenceConfig") {
        let ok = ic.as_object().is_some_and(|o| {
            o.keys().all(|k| {
                ["maxTokens", "temperature", "topP", "stopSequences"].contains(&k.as_str())
            })
        });
        if !ok
            || ic
                .get("maxTokens")
                .is_some_and(|n| n.as_u64().is_none_or(|n| n == 0))
        {
            return Some(format!("inferenceConfig is malformed: {ic}"));
        }
    }
    if let Some(tc) = obj.get("toolConfig") {
        for t in tc["tools"].as_array().into_iter().flatten() {
            if !t["toolSpec"]["name"].is_string()
                || !t["toolSpec"]["inputSchema"]["json"].is_object()
            {
                return Some("toolSpec needs a name and inputSchema.json".into());
            }
        }
        if let Some(choice) = tc.get("toolChoice") {
            let keys: Vec<&String> = choice
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            if keys.len() != 1 || !["auto", "any", "tool"].contains(&keys[0].as_str()) {
                return Some("toolChoice must be one of auto, any, tool".into());
            }
        }
    }
    for s in obj
        .get("system")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let keys: Vec<&String> = s
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if keys.len() != 1 || !["text", "cachePoint", "guardContent"].contains(&keys[0].as_str()) {
            return Some("system blocks are text, cachePoint or guardContent".into());
        }
    }
    None
}

/// CRC-32 (IEEE), as the event-stream framing uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One `application/vnd.amazon.eventstream` frame with string headers.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude = crc32(&out);
    out.extend_from_slice(&prelude.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let all = crc32(&out);
    out.extend_from_slice(&all.to_be_bytes());
    out
}

fn event(kind: &str, payload: Value) -> Vec<u8> {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn usage() -> Value {
    json!({"inputTokens": 8, "outputTokens": 5, "totalTokens": 17,
        "cacheReadInputTokens": 3, "cacheWriteInputTokens": 1})
}

/// The tool the request forces, if it forces one.
fn forced_tool(body: &Value) -> Option<String> {
    let tc = &body["toolConfig"];
    if let Some(name) = tc["toolChoice"]["tool"]["name"].as_str() {
        return Some(name.to_string());
    }
    if tc["toolChoice"].get("any").is_some() {
        return tc["tools"][0]["toolSpec"]["name"]
            .as_str()
            .map(str::to_string);
    }
    None
}

fn event_stream(frames: Vec<u8>) -> Response {
    let pieces: Vec<Result<Bytes, std::io::Error>> = frames
        .chunks(11)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(pieces);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        "content-type",
        "application/vnd.amazon.eventstream".parse().unwrap(),
    );
    r
}

pub async fn bedrock_runtime(
    State(seen): State<Arc<Seen>>,
    Path((mode, model, action)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    seen.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    seen.bodies.lock().unwrap().push(body.clone());
    let authz = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let who = if let Some(k) = authz.strip_prefix("Bearer ") {
        if k != API_KEY {
            return aws_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            );
        }
        "bearer".to_string()
    } else {
        match verify_sigv4(&uri, &headers, &raw) {
            Ok((akid, region)) => format!("sigv4:{akid}:{region}"),
            Err(e) => return aws_error(403, "InvalidSignatureException", &e),
        }
    };
    seen.bedrock_calls
        .lock()
        .unwrap()
        .push(format!("{} {who}", uri.path()));
    match mode.as_str() {
        "throttle" => {
            return aws_error(
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            );
        }
        "deny" => {
            return aws_error(
                403,
                "AccessDeniedException",
                "You don't have access to the model with the specified model ID.",
            );
        }
        "toolong" => return validation("Input is too long for requested model."),
        "fail" => {
            let token = headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return aws_error(
                500,
                "InternalServerException",
                &format!(
                    "internal error for {authz} {token} {}",
                    token.to_uppercase()
                ),
            );
        }
        _ => {}
    }
    match action.as_str() {
        "invoke" => invoke(&model, &body),
        "converse" | "converse-stream" => {
            if let Some(e) = converse_error(&body) {
                return validation(&e);
            }
            let tool = forced_tool(&body);
            if action == "converse" {
                let content = match &tool {
                    Some(name) => {
                        json!([{"toolUse": {"toolUseId": "tooluse_mock", "name": name, "input": {"answer": 42}}}])
                    }
                    None => json!([{"text": "Hello from Bedrock."}]),
                };
                return axum::Json(json!({
                    "output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": if tool.is_some() { "tool_use" } else { "end_turn" },
                    "usage": usage(), "metrics": {"latencyMs": 12},
                }))
                .into_response();
            }
            let mut frames = event(
                "messageStart",
                json!({"role": "assistant", "p": "abcdefgh"}),
            );
            match &tool {
                Some(name) => {
                    frames.extend(event("contentBlockStart", json!({"contentBlockIndex": 0,
                        "start": {"toolUse": {"toolUseId": "tooluse_mock", "name": name}}, "p": "ab"})));
                    for part in ["{\"answer\"", ": 42}"] {
                        frames.extend(event(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0,
                            "delta": {"toolUse": {"input": part}}, "p": "abc"}),
                        ));
                    }
                }
                None => {
                    for word in ["Hello", " from", " Bedrock."] {
                        frames.extend(event(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0,
                            "delta": {"text": word}, "p": "abcd"}),
                        ));
                    }
                }
            }
            if mode == "broken" {
                frames.extend(frame(
                    &[
                        (":exception-type", "throttlingException"),
                        (":content-type", "application/json"),
                        (":message-type", "exception"),
                    ],
                    br#"{"message":"Too many tokens, please wait before trying again."}"#,
                ));
                return event_stream(frames);
            }
            frames.extend(event("contentBlockStop", json!({"contentBlockIndex": 0})));
            frames.extend(event(
                "messageStop",
                json!({"stopReason": if tool.is_some() { "tool_use" } else { "end_turn" }}),
            ));
            frames.extend(event(
                "metadata",
                json!({"usage": usage(), "metrics": {"latencyMs": 9}, "p": "abcdefghij"}),
            ));
            event_stream(frames)
        }
        _ => validation("unknown operation"),
    }
}

fn invoke(model: &str, body: &Value) -> Response {
    let obj = body.as_object().cloned().unwrap_or_default();
    if model.starts_with("amazon.titan-embed-text-v2") {
        if let Some(k) = obj
            .keys()
            .find(|k| !["inputText", "dimensions", "normalize"].contains(&k.as_str()))
        {
            return validation(&format!(
                "Malformed input request: extraneous key [{k}] is not permitted"
            ));
        }
        let Some(_text) = obj.get("inputText").and_then(Value::as_str) else {
            return validation("Malformed input request: required key [inputText] not found");
        };
        let dims = obj.get("dimensions").and_then(Value::as_u64).unwrap_or(4) as usize;
        let v: Vec<f64> = (0..dims).map(|i| (i as f64 + 1.0) / 8.0).collect();
        return axum::Json(json!({"embedding": v, "inputTextTokenCount": 4})).into_response();
    }
    if model.starts_with("cohere.embed") {
        let Some(texts) = obj.get("texts").and_then(Value::as_array) else {
            return validation("Malformed input request: required key [texts] not found");
        };
        if obj.get("input_type").and_then(Value::as_str).is_none() {
            return validation("Malformed input request: required key [input_type] not found");
        }
        let e: Vec<Value> = texts.iter().map(|_| json!([0.5, 0.25])).collect();
        return axum::Json(json!({"embeddings": e, "id": "emb-mock", "response_type": "embeddings_floats", "texts": texts}))
            .into_response();
    }
    validation(&format!(
        "The provided model identifier is invalid: {model}"
    ))
}
