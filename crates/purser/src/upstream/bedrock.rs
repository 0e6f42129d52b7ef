//! Amazon Bedrock: OpenAI chat ⇄ Converse / ConverseStream (the binary event stream turned into
//! `chat.completion.chunk` SSE as frames arrive), OpenAI embeddings ⇄ `InvokeModel` for Titan and
//! Cohere embedding models, and the credentials that authorize each call (SigV4 by `aws-sigv4`,
//! or a Bedrock API key as a bearer token). Translation is pure; signing reads only the clock.
//! Invariants: the chat request goes through Anthropic's Messages form first, so role merging,
//! tool ids, images and JSON mode follow one set of rules on both Claude paths; what Converse
//! cannot carry is refused with a 400 naming it; usage is normalised to OpenAI's meaning
//! (`prompt_tokens` = input + cache reads + cache writes, which Bedrock's `inputTokens` excludes)
//! before it is billed; no secret appears in `Debug` output or in an error.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::BytesMut;
use serde_json::{Map, Value, json};

use super::anthropic::{self, Unsupported};

/// The SigV4 service name of Bedrock's runtime.
const SERVICE: &str = "bedrock";

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Unsupported {
    Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How a Bedrock deployment's calls are authorized.
pub enum BedrockAuth {
    /// A Bedrock API key (`api_key`, `AWS_BEARER_TOKEN_BEDROCK`), sent as a bearer token.
    ApiKey(String),
    /// AWS credentials (with a session token when temporary): every call is SigV4-signed for
    /// the region.
    SigV4 { identity: Identity, region: String },
}

impl std::fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BedrockAuth::ApiKey(_) => f.write_str("BedrockAuth::ApiKey(<redacted>)"),
            BedrockAuth::SigV4 { region, .. } => write!(f, "BedrockAuth::SigV4({region})"),
        }
    }
}

impl BedrockAuth {
    /// SigV4 credentials for `region`.
    pub fn sigv4(
        access_key_id: &str,
        secret: &str,
        session_token: Option<String>,
        region: &str,
    ) -> BedrockAuth {
        let creds = Credentials::new(access_key_id, secret, session_token, None, "purser-config");
        BedrockAuth::SigV4 {
            identity: creds.into(),
            region: region.to_string(),
        }
    }

    /// The headers that authorize a `POST` of `body` (JSON) to `url`: `authorization` and
    /// `x-amz-date` (and `x-amz-security-token`) for SigV4, or the bearer token.
    pub fn headers(&self, url: &str, body: &[u8]) -> Result<Vec<(String, String)>, String> {
        let (identity, region) = match self {
            BedrockAuth::ApiKey(k) => {
                return Ok(vec![("authorization".into(), format!("Bearer {k}"))]);
            }
            BedrockAuth::SigV4 { identity, region } => (identity, region),
        };
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign: {e}"))?
            .into();
        let signed = [("content-type", "application/json")];
        let request =
            SignableRequest::new("POST", url, signed.into_iter(), SignableBody::Bytes(body))
                .map_err(|e| format!("cannot sign the request: {e}"))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| format!("cannot sign: {e}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The secrets in it, for scrubbing upstream text.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            BedrockAuth::ApiKey(k) => vec![k.clone()],
            BedrockAuth::SigV4 { identity, .. } => identity
                .data::<Credentials>()
                .map(|c| {
                    let mut s = vec![c.secret_access_key().to_string()];
                    s.extend(c.session_token().map(str::to_string));
                    s
                })
                .unwrap_or_default(),
        }
    }
}

/// Whether a tool name is one Bedrock takes (`[a-zA-Z0-9_-]{1,64}`).
fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A Messages content block as a Converse content block (a cache mark becomes a `cachePoint`
/// after it, so a block may become two).
fn block(b: &Value, out: &mut Vec<Value>) -> Result<(), Unsupported> {
    match b.get("type").and_then(Value::as_str) {
        Some("text") => {
            out.push(json!({"text": b.get("text").cloned().unwrap_or_else(|| json!(""))}));
        }
        Some("image") => {
            let src = b.get("source").unwrap_or(&Value::Null);
            if src.get("type").and_then(Value::as_str) != Some("base64") {
                return Err(bad(
                    "messages",
                    "Bedrock takes images inline: send them as data: URLs (base64), not links",
                ));
            }
            let media = src.get("media_type").and_then(Value::as_str).unwrap_or("");
            let format = match media.strip_prefix("image/") {
                Some("jpg") | Some("jpeg") => "jpeg",
                Some(f @ ("png" | "gif" | "webp")) => f,
                _ => {
                    return Err(bad(
                        "messages",
                        format!(
                            "'{media}' is not an image type Bedrock takes (png, jpeg, gif, webp)"
                        ),
                    ));
                }
            };
            out.push(json!({"image": {"format": format, "source": {"bytes": src.get("data").cloned().unwrap_or(Value::Null)}}}));
        }
        Some("tool_use") => out.push(json!({"toolUse": {
            "toolUseId": b.get("id").cloned().unwrap_or(Value::Null),
            "name": b.get("name").cloned().unwrap_or(Value::Null),
            "input": b.get("input").cloned().unwrap_or_else(|| json!({})),
        }})),
        Some("tool_result") => {
            let mut content = Vec::new();
            match b.get("content") {
                Some(Value::String(s)) => content.push(json!({"text": s})),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        block(p, &mut content)?;
                    }
                }
                _ => {}
            }
            content.retain(|c| c.get("cachePoint").is_none());
            if content
                .iter()
                .all(|c| c.get("text").and_then(Value::as_str) == Some(""))
            {
                // Bedrock refuses an empty result; the reference sends a placeholder too.
                content = vec![json!({"text": "."})];
            }
            out.push(json!({"toolResult": {
                "toolUseId": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                "content": content,
            }}));
        }
        other => {
            return Err(bad(
                "messages",
                format!(
                    "a {} block cannot be sent to Bedrock",
                    other.unwrap_or("typeless")
                ),
            ));
        }
    }
    if b.get("cache_control").is_some_and(|c| !c.is_null()) {
        out.push(json!({"cachePoint": {"type": "default"}}));
    }
    Ok(())
}

/// The Converse request for an OpenAI chat request `body`.
pub fn to_converse_request(body: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    if body
        .get("user")
        .is_some_and(|u| !u.is_null() && !u.is_string())
    {
        return Err(bad("user", "must be a string"));
    }
    let messages_form = anthropic::to_messages_request(body, "").map_err(|u| Unsupported {
        field: u.field,
        reason: u.reason.replace("Anthropic", "Bedrock"),
    })?;
    let caller_max = ["max_completion_tokens", "max_tokens"]
        .iter()
        .any(|k| body.get(*k).is_some_and(|v| !v.is_null()));
    let mut out = Map::new();
    let mut inference = Map::new();
    let mut additional = Map::new();
    let mut tools: Vec<Value> = Vec::new();
    let mut tool_choice: Option<Value> = None;
    let mut used_tools: Vec<String> = Vec::new();
    for (k, v) in messages_form {
        match k.as_str() {
            "model" | "stream" => {}
            // `user` goes to metadata.user_id for Anthropic; Bedrock has no such field (the
            // gateway keeps it for its own logs).
            "metadata" => {}
            "system" => {
                let mut system = Vec::new();
                for b in v.as_array().into_iter().flatten() {
                    block(b, &mut system)?;
                }
                out.insert("system".into(), Value::Array(system));
            }
            "messages" => {
                let mut turns = Vec::new();
                for m in v.as_array().into_iter().flatten() {
                    let mut content = Vec::new();
                    for b in m
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if b.get("type").and_then(Value::as_str) == Some("tool_use")
                            && let Some(n) = b.get("name").and_then(Value::as_str)
                            && !used_tools.iter().any(|u| u == n)
                        {
                            used_tools.push(n.to_string());
                        }
                        block(b, &mut content)?;
                    }
                    turns.push(json!({"role": m.get("role").cloned().unwrap_or(Value::Null), "content": content}));
                }
                out.insert("messages".into(), Value::Array(turns));
            }
            "max_tokens" if caller_max => {
                inference.insert("maxTokens".into(), v);
            }
            "max_tokens" => {}
            "stop_sequences" => {
                let seqs: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s.as_str().is_some_and(|s| !s.is_empty()))
                    .cloned()
                    .collect();
                if !seqs.is_empty() {
                    inference.insert("stopSequences".into(), Value::Array(seqs));
                }
            }
            "temperature" => {
                inference.insert("temperature".into(), v);
            }
            "top_p" => {
                inference.insert("topP".into(), v);
            }
            "tools" => {
                for (i, t) in v.as_array().into_iter().flatten().enumerate() {
                    let name = t.get("name").and_then(Value::as_str).unwrap_or("");
                    if !valid_tool_name(name) {
                        return Err(bad(
                            format!("tools[{i}].function.name"),
                            "must be 1 to 64 letters, digits, '_' or '-' for Bedrock models",
                        ));
                    }
                    let mut spec = Map::new();
                    spec.insert("name".into(), json!(name));
                    if let Some(d) = t.get("description").filter(|d| d.is_string()) {
                        spec.insert("description".into(), d.clone());
                    }
                    spec.insert(
                        "inputSchema".into(),
                        json!({"json": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))}),
                    );
                    tools.push(json!({"toolSpec": spec}));
                }
            }
            "tool_choice" => {
                if v.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                    return Err(bad(
                        "parallel_tool_calls",
                        "false is not supported by Bedrock models (Converse has no such switch)",
                    ));
                }
                tool_choice = match v.get("type").and_then(Value::as_str) {
                    Some("auto") => Some(json!({"auto": {}})),
                    Some("any") => Some(json!({"any": {}})),
                    Some("tool") => Some(
                        json!({"tool": {"name": v.get("name").cloned().unwrap_or(Value::Null)}}),
                    ),
                    _ => {
                        return Err(bad(
                            "tool_choice",
                            "'none' is not supported by Bedrock models",
                        ));
                    }
                };
            }
            // top_k, thinking and whatever else the model takes: Converse carries a model's own
            // fields in additionalModelRequestFields, and Bedrock judges them.
            _ => {
                additional.insert(k, v);
            }
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !additional.is_empty() {
        out.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    // Converse refuses toolUse/toolResult blocks without a toolConfig: a conversation that used
    // tools and offers none now gets a placeholder spec per tool it used (the reference's way).
    if tools.is_empty() {
        for name in &used_tools {
            tools.push(
                json!({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}}),
            );
        }
    }
    if !tools.is_empty() {
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = tool_choice {
            config.insert("toolChoice".into(), tc);
        }
        out.insert("toolConfig".into(), Value::Object(config));
    } else if tool_choice.is_some() {
        return Err(bad("tool_choice", "needs tools"));
    }
    Ok(out)
}

/// Anthropic's `stop_reason` for Converse's `stopReason` (guardrails and filters are refusals).
fn stop_reason(r: Option<&str>) -> &str {
    match r {
        Some("guardrail_intervened") | Some("content_filtered") => "refusal",
        Some(r) => r,
        None => "end_turn",
    }
}

/// Anthropic's usage for Converse's (`inputTokens` excludes cache reads and writes there too).
fn anthropic_usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    json!({
        "input_tokens": n("inputTokens"),
        "output_tokens": n("outputTokens"),
        "cache_read_input_tokens": n("cacheReadInputTokens"),
        "cache_creation_input_tokens": n("cacheWriteInputTokens"),
    })
}

/// A fresh OpenAI-style id (Converse answers carry none).
fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// The `chat.completion` for a Converse answer of `model`. `created` in Unix seconds.
pub fn to_chat_completion(raw: &Value, model: &str, json_mode: bool, created: u64) -> Value {
    let mut content = Vec::new();
    for b in raw
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = b.get("text") {
            content.push(json!({"type": "text", "text": t}));
        } else if let Some(t) = b.get("toolUse") {
            content.push(
                json!({"type": "tool_use", "id": t.get("toolUseId"), "name": t.get("name"),
                "input": t.get("input").cloned().unwrap_or_else(|| json!({}))}),
            );
        } else if let Some(t) = b.pointer("/reasoningContent/reasoningText/text") {
            content.push(json!({"type": "thinking", "thinking": t}));
        }
    }
    let msg = json!({
        "id": completion_id(),
        "model": model,
        "content": content,
        "stop_reason": stop_reason(raw.get("stopReason").and_then(Value::as_str)),
        "usage": anthropic_usage(raw.get("usage").unwrap_or(&Value::Null)),
    });
    anthropic::to_chat_completion(&msg, json_mode, created)
}

/// What a content block of the stream is, by its Converse index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Tool(usize),
    Json,
}

/// Turns ConverseStream's event-stream frames into OpenAI `chat.completion.chunk` SSE as they
/// arrive (a frame may be split across reads). The finish chunk is held until `metadata`
/// brings the usage, which Bedrock sends after `messageStop`.
pub struct StreamTranslator {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    json_mode: bool,
    created: u64,
    id: String,
    model: String,
    blocks: Vec<Option<BlockKind>>,
    tool_calls: usize,
    stop: Option<String>,
    finished: bool,
    broken: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, json_mode: bool, created: u64) -> StreamTranslator {
        StreamTranslator {
            buf: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            json_mode,
            created,
            id: completion_id(),
            model: model.to_string(),
            blocks: Vec::new(),
            tool_calls: 0,
            stop: None,
            finished: false,
            broken: false,
        }
    }

    /// The OpenAI SSE bytes for `bytes` of Bedrock's event stream (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.broken {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(m)) => self.on_message(&m, &mut out),
                Ok(DecodedFrame::Incomplete) => break,
                Err(e) => {
                    // A corrupt frame (bad CRC, absurd length): nothing after it can be trusted.
                    self.broken = true;
                    self.error(
                        "api_error",
                        &format!("Bedrock sent a malformed event stream: {e}"),
                        &mut out,
                    );
                    break;
                }
            }
        }
        out
    }

    /// What is still owed at the end of the upstream body: a finish that came without its
    /// usage (the meter then counts the tokens itself).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.finished
            && !self.broken
            && let Some(stop) = self.stop.take()
        {
            self.chunk(json!({}), Some(&stop), &mut out);
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.finished = true;
        }
        out
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        super::sse::write_chunk(out, &self.id, self.created, &self.model, delta, finish);
    }

    fn error(&self, kind: &str, message: &str, out: &mut Vec<u8>) {
        let v = json!({"error": {"message": message, "type": kind, "code": null, "param": null}});
        out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
    }

    fn header<'m>(m: &'m Message, name: &str) -> Option<&'m str> {
        m.headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| match h.value() {
                HeaderValue::String(s) => Some(s.as_str()),
                _ => None,
            })
    }

    fn block_kind(&mut self, index: usize, kind: BlockKind) {
        if self.blocks.len() <= index {
            self.blocks.resize(index + 1, None);
        }
        self.blocks[index] = Some(kind);
    }

    fn on_message(&mut self, m: &Message, out: &mut Vec<u8>) {
        let payload: Value = serde_json::from_slice(m.payload()).unwrap_or(Value::Null);
        if Self::header(m, ":message-type") == Some("exception") {
            let kind = Self::header(m, ":exception-type").unwrap_or("exception");
            let message = payload
                .get("message")
                .or_else(|| payload.get("Message"))
                .and_then(Value::as_str)
                .unwrap_or("Bedrock stream failed");
            let openai_kind = match kind {
                "throttlingException" => "rate_limit_error",
                "validationException" => "invalid_request_error",
                _ => "api_error",
            };
            self.error(openai_kind, &format!("{kind}: {message}"), out);
            return;
        }
        let index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        match Self::header(m, ":event-type").unwrap_or("") {
            "messageStart" => self.chunk(json!({"role": "assistant", "content": ""}), None, out),
            "contentBlockStart" => {
                if let Some(t) = payload.pointer("/start/toolUse") {
                    let name = t.get("name").and_then(Value::as_str).unwrap_or("");
                    if self.json_mode && name == "json_tool_call" {
                        self.block_kind(index, BlockKind::Json);
                    } else {
                        let i = self.tool_calls;
                        self.tool_calls += 1;
                        self.chunk(
                            json!({"tool_calls": [{"index": i, "id": t.get("toolUseId"), "type": "function",
                                "function": {"name": name, "arguments": ""}}]}),
                            None,
                            out,
                        );
                        self.block_kind(index, BlockKind::Tool(i));
                    }
                } else {
                    self.block_kind(index, BlockKind::Text);
                }
            }
            "contentBlockDelta" => {
                let d = payload.get("delta").unwrap_or(&Value::Null);
                let kind = self.blocks.get(index).copied().flatten();
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    self.chunk(json!({"content": t}), None, out);
                } else if let Some(frag) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    match kind {
                        Some(BlockKind::Json) => self.chunk(json!({"content": frag}), None, out),
                        Some(BlockKind::Tool(i)) => self.chunk(
                            json!({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}),
                            None,
                            out,
                        ),
                        _ => {}
                    }
                } else if let Some(t) = d.pointer("/reasoningContent/text").and_then(Value::as_str)
                {
                    self.chunk(json!({"reasoning_content": t}), None, out);
                }
            }
            "messageStop" => {
                let stop = stop_reason(payload.get("stopReason").and_then(Value::as_str));
                self.stop = Some(anthropic::finish_reason(Some(stop), self.json_mode).to_string());
            }
            "metadata" => {
                let stop = self.stop.take().unwrap_or_else(|| "stop".into());
                self.chunk(json!({}), Some(&stop), out);
                let u = anthropic::usage(&anthropic_usage(
                    payload.get("usage").unwrap_or(&Value::Null),
                ));
                let v = json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": u,
                });
                out.extend_from_slice(format!("data: {v}\n\ndata: [DONE]\n\n").as_bytes());
                self.finished = true;
            }
            _ => {} // contentBlockStop, unknown events
        }
    }
}

/// The embedding families Bedrock serves through `InvokeModel`, by model id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedFamily {
    /// `amazon.titan-embed-text-v2:0`: one text per call, `dimensions` and `normalize`.
    TitanV2,
    /// `amazon.titan-embed-text-v1`, `amazon.titan-embed-g1-text-02`: one text per call.
    TitanV1,
    /// `cohere.embed-*`: a batch of texts per call, `input_type` required.
    Cohere,
}

/// The family of an embedding model id (an inference profile's region prefix allowed).
pub fn embed_family(model: &str) -> Option<EmbedFamily> {
    let id = model
        .split_once('.')
        .filter(|(p, _)| matches!(*p, "us" | "eu" | "apac" | "global" | "us-gov"))
        .map_or(model, |(_, rest)| rest);
    if id.starts_with("amazon.titan-embed-text-v2") {
        Some(EmbedFamily::TitanV2)
    } else if id.starts_with("amazon.titan-embed-text-v1")
        || id.starts_with("amazon.titan-embed-g1-text")
    {
        Some(EmbedFamily::TitanV1)
    } else if id.starts_with("cohere.embed") {
        Some(EmbedFamily::Cohere)
    } else {
        None
    }
}

/// Cohere's `input_type` values.
const COHERE_INPUT_TYPES: &[&str] = &[
    "search_document",
    "search_query",
    "classification",
    "clustering",
];

/// The `InvokeModel` bodies for an OpenAI embeddings request: one per text for Titan, one for
/// the batch for Cohere. Refuses what the family cannot carry, naming it.
pub fn to_embed_requests(
    body: &Map<String, Value>,
    family: EmbedFamily,
) -> Result<Vec<Value>, Unsupported> {
    let texts: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 2048 => items
            .iter()
            .map(|i| {
                i.as_str().ok_or_else(|| {
                    bad(
                        "input",
                        "must be text (Bedrock does not embed token arrays)",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(
                "input",
                "must be a string or a list of 1 to 2048 strings",
            ));
        }
    };
    for (k, v) in body {
        let known = match family {
            EmbedFamily::TitanV2 => matches!(k.as_str(), "dimensions" | "normalize"),
            EmbedFamily::TitanV1 => false,
            EmbedFamily::Cohere => matches!(k.as_str(), "input_type" | "truncate"),
        };
        let gateway = matches!(
            k.as_str(),
            "model" | "input" | "encoding_format" | "user" | "metadata"
        );
        if !known && !gateway && !v.is_null() {
            return Err(bad(
                k.clone(),
                "is not supported by this Bedrock embedding model",
            ));
        }
    }
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") | Some("base64") => {}
        Some(_) => return Err(bad("encoding_format", "must be float or base64")),
    }
    Ok(match family {
        EmbedFamily::TitanV2 => {
            if let Some(d) = body.get("dimensions").filter(|d| !d.is_null())
                && !matches!(d.as_u64(), Some(256 | 512 | 1024))
            {
                return Err(bad("dimensions", "must be 256, 512 or 1024 for Titan v2"));
            }
            texts
                .iter()
                .map(|t| {
                    let mut b = json!({"inputText": t});
                    for k in ["dimensions", "normalize"] {
                        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
                            b[k] = v.clone();
                        }
                    }
                    b
                })
                .collect()
        }
        EmbedFamily::TitanV1 => texts.iter().map(|t| json!({"inputText": t})).collect(),
        EmbedFamily::Cohere => {
            let input_type = body
                .get("input_type")
                .and_then(Value::as_str)
                .unwrap_or("search_document");
            if !COHERE_INPUT_TYPES.contains(&input_type) {
                return Err(bad(
                    "input_type",
                    "must be search_document, search_query, classification or clustering",
                ));
            }
            let mut b = json!({"texts": texts, "input_type": input_type});
            if let Some(t) = body.get("truncate").filter(|v| !v.is_null()) {
                b["truncate"] = t.clone();
            }
            vec![b]
        }
    })
}

/// Vectors and the tokens reported for them.
pub type Embedded = (Vec<Vec<f64>>, Option<u64>);

/// The vectors of one `InvokeModel` answer and the tokens it reports (Titan does; Cohere not).
pub fn embeddings_of(raw: &Value, family: EmbedFamily) -> Option<Embedded> {
    let vector =
        |v: &Value| -> Option<Vec<f64>> { v.as_array()?.iter().map(Value::as_f64).collect() };
    match family {
        EmbedFamily::TitanV1 | EmbedFamily::TitanV2 => Some((
            vec![vector(raw.get("embedding")?)?],
            raw.get("inputTextTokenCount").and_then(Value::as_u64),
        )),
        EmbedFamily::Cohere => {
            let e = raw.get("embeddings")?;
            // `embedding_types` answers {"float": [[…]]}; the default a bare list.
            let list = e.get("float").unwrap_or(e).as_array()?;
            Some((list.iter().map(vector).collect::<Option<_>>()?, None))
        }
    }
}

/// The message of a Bedrock error body (`{"message": …}`, some services `Message`).
pub fn error_message(body: &Value) -> Option<&str> {
    body.get("message")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn chat_becomes_a_converse_request() {
        let out = to_converse_request(&req(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            ],
            "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop": ["END", ""],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required", "user": "u1", "stream": true,
        })))
        .unwrap();
        assert_eq!(out["system"], json!([{"text": "be brief"}]));
        assert_eq!(
            out["messages"][0]["content"],
            json!([{"text": "look"}, {"image": {"format": "png", "source": {"bytes": "iVBO"}}}])
        );
        assert_eq!(
            out["messages"][1]["content"][0]["toolUse"],
            json!({"toolUseId": "t1", "name": "get_weather", "input": {"city": "Oslo"}})
        );
        assert_eq!(
            out["messages"][2]["content"][0]["toolResult"],
            json!({"toolUseId": "t1", "content": [{"text": "sunny"}]})
        );
        assert_eq!(
            out["inferenceConfig"],
            json!({"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert_eq!(out["additionalModelRequestFields"], json!({"top_k": 5}));
        assert_eq!(out["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"],
            json!({"type": "string"})
        );
        assert!(out.get("stream").is_none() && out.get("metadata").is_none());
    }

    #[test]
    fn what_converse_cannot_carry_is_refused_by_name() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            to_converse_request(&req(b)).unwrap_err()
        };
        assert_eq!(with("tool_choice", json!("none")).field, "tool_choice");
        let e = with("frequency_penalty", json!(0.5));
        assert_eq!(e.field, "frequency_penalty");
        assert!(e.reason.contains("Bedrock"), "{}", e.reason);
        let mut b = base.clone();
        b["tools"] = json!([{"type": "function", "function": {"name": "has space"}}]);
        assert_eq!(
            to_converse_request(&req(b)).unwrap_err().field,
            "tools[0].function.name"
        );
        let mut b = base.clone();
        b["messages"] = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]);
        assert!(
            to_converse_request(&req(b))
                .unwrap_err()
                .reason
                .contains("data: URLs")
        );
        // No max_tokens from the caller: Bedrock's model default, not Anthropic's 4096.
        assert!(
            to_converse_request(&req(base))
                .unwrap()
                .get("inferenceConfig")
                .is_none()
        );
    }

    #[test]
    fn tool_history_without_tools_gets_placeholder_specs() {
        let out = to_converse_request(&req(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": ""},
        ]})))
        .unwrap();
        assert_eq!(out["toolConfig"]["tools"][0]["toolSpec"]["name"], "f");
        assert_eq!(
            out["messages"][2]["content"][0]["toolResult"]["content"],
            json!([{"text": "."}])
        );
    }

    #[test]
    fn answers_and_usage_are_normalised() {
        let raw = json!({"output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
            {"text": "It is "}, {"text": "sunny."},
            {"toolUse": {"toolUseId": "tu1", "name": "f", "input": {"a": 1}}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 3}});
        let c = to_chat_completion(&raw, "anthropic.claude", false, 7);
        assert_eq!(c["model"], "anthropic.claude");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], "It is sunny.");
        assert_eq!(c["choices"][0]["message"]["reasoning_content"], "hmm");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(c["usage"]["prompt_tokens"], 113);
        assert_eq!(c["usage"]["completion_tokens"], 5);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        let filtered =
            json!({"output": {"message": {"content": []}}, "stopReason": "guardrail_intervened"});
        assert_eq!(
            to_chat_completion(&filtered, "m", false, 0)["choices"][0]["finish_reason"],
            "content_filter"
        );
    }

    #[test]
    fn sigv4_signs_for_bedrock_and_the_region() {
        let auth = BedrockAuth::sigv4(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("tok".into()),
            "eu-west-1",
        );
        let h = auth
            .headers(
                "https://bedrock-runtime.eu-west-1.amazonaws.com/model/a%3A0/converse",
                b"{}",
            )
            .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let authz = get("authorization").unwrap();
        assert!(
            authz.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{authz}"
        );
        assert!(authz.contains("/eu-west-1/bedrock/aws4_request"), "{authz}");
        assert!(
            authz.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
            "{authz}"
        );
        assert_eq!(get("x-amz-security-token").as_deref(), Some("tok"));
        assert!(get("x-amz-date").is_some());
        assert!(!format!("{auth:?}").contains("wJalr"));
        assert!(auth.secrets().contains(&"tok".to_string()));
        let key = BedrockAuth::ApiKey("bedrock-key".into());
        assert_eq!(
            key.headers("http://h", b"").unwrap()[0].1,
            "Bearer bedrock-key"
        );
        assert!(!format!("{key:?}").contains("bedrock-key"));
    }

    #[test]
    fn embedding_families_and_their_bodies() {
        assert_eq!(
            embed_family("amazon.titan-embed-text-v2:0"),
            Some(EmbedFamily::TitanV2)
        );
        assert_eq!(
            embed_family("us.cohere.embed-english-v3"),
            Some(EmbedFamily::Cohere)
        );
        assert_eq!(embed_family("anthropic.claude-3"), None);
        let b = to_embed_requests(
            &req(json!({"input": ["a", "b"], "dimensions": 256})),
            EmbedFamily::TitanV2,
        )
        .unwrap();
        assert_eq!(
            b,
            vec![
                json!({"inputText": "a", "dimensions": 256}),
                json!({"inputText": "b", "dimensions": 256})
            ]
        );
        assert_eq!(
            to_embed_requests(
                &req(json!({"input": "a", "dimensions": 7})),
                EmbedFamily::TitanV2
            )
            .unwrap_err()
            .field,
            "dimensions"
        );
        assert_eq!(
            to_embed_requests(
                &req(json!({"input": "a", "dimensions": 256})),
                EmbedFamily::TitanV1
            )
            .unwrap_err()
            .field,
            "dimensions"
        );
        let c = to_embed_requests(&req(json!({"input": ["x"]})), EmbedFamily::Cohere).unwrap();
        assert_eq!(
            c,
            vec![json!({"texts": ["x"], "input_type": "search_document"})]
        );
        assert_eq!(
            embeddings_of(
                &json!({"embedding": [0.5, 1.0], "inputTextTokenCount": 3}),
                EmbedFamily::TitanV2
            ),
            Some((vec![vec![0.5, 1.0]], Some(3)))
        );
        assert_eq!(
            embeddings_of(
                &json!({"embeddings": {"float": [[1.0]]}}),
                EmbedFamily::Cohere
            ),
            Some((vec![vec![1.0]], None))
        );
    }

    fn frame(event: &str, payload: Value) -> Vec<u8> {
        use aws_smithy_types::event_stream::Header;
        let m = Message::new(serde_json::to_vec(&payload).unwrap())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(event.to_string().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&m, &mut out).unwrap();
        out
    }

    fn events(sse: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(sse)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn the_event_stream_becomes_chunks_across_split_reads() {
        let mut wire = Vec::new();
        wire.extend(frame(
            "messageStart",
            json!({"role": "assistant", "p": "abc"}),
        ));
        wire.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        ));
        wire.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        ));
        wire.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
        wire.extend(frame(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu", "name": "f"}}}),
        ));
        wire.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
        ));
        wire.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
        ));
        wire.extend(frame("messageStop", json!({"stopReason": "tool_use"})));
        wire.extend(frame("metadata", json!({"usage": {"inputTokens": 7, "outputTokens": 4, "cacheReadInputTokens": 2}, "metrics": {"latencyMs": 5}})));
        let mut t = StreamTranslator::new("m", false, 1);
        let mut sse = Vec::new();
        for piece in wire.chunks(7) {
            sse.extend(t.push(piece));
        }
        sse.extend(t.finish());
        let text = String::from_utf8_lossy(&sse).to_string();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let ev = events(&sse);
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        let content: String = ev
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello");
        let args: String = ev
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"a\":1}");
        let finish: Vec<&Value> = ev
            .iter()
            .filter(|e| !e["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "tool_calls");
        let last = ev.last().unwrap();
        assert_eq!(last["usage"]["prompt_tokens"], 9);
        assert_eq!(last["usage"]["completion_tokens"], 4);
    }

    #[test]
    fn exceptions_and_corrupt_frames_end_as_errors() {
        use aws_smithy_types::event_stream::Header;
        let m = Message::new(&b"{\"message\":\"slow down\"}"[..])
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("exception".into()),
            ))
            .add_header(Header::new(
                ":exception-type",
                HeaderValue::String("throttlingException".into()),
            ));
        let mut wire = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&m, &mut wire).unwrap();
        let mut t = StreamTranslator::new("m", false, 1);
        let ev = events(&t.push(&wire));
        assert_eq!(ev[0]["error"]["type"], "rate_limit_error");
        assert!(
            ev[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("slow down")
        );
        let mut bad = frame("messageStart", json!({}));
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let mut t = StreamTranslator::new("m", false, 1);
        let ev = events(&t.push(&bad));
        assert!(
            ev[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("malformed")
        );
        assert!(t.push(&frame("messageStart", json!({}))).is_empty());
        // A stop without its usage still finishes (the meter counts the tokens).
        let mut t = StreamTranslator::new("m", false, 1);
        t.push(&frame("messageStop", json!({"stopReason": "max_tokens"})));
        let ev = events(&t.finish());
        assert_eq!(ev[0]["choices"][0]["finish_reason"], "length");
    }
}
