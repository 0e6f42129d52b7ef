//! OpenAI chat ⇄ Anthropic Messages: the request body, the answer and the stream (Anthropic's
//! events turned into `chat.completion.chunk` SSE as they arrive). Pure translation, no I/O.
//! Invariants: an OpenAI parameter Anthropic cannot honour is refused with a 400 naming it, never
//! dropped; usage is normalised to OpenAI's meaning (`prompt_tokens` includes cache reads and
//! writes, which Anthropic's `input_tokens` excludes) so billing and limits see every token; a
//! translated stream always ends with one usage chunk and `data: [DONE]` when Anthropic finished.

use serde_json::{Map, Value, json};

/// `anthropic-version` sent with every call.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the caller sets none (Anthropic requires it; the reference's fallback).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The forced tool that carries JSON mode (`response_format`), as the reference names it.
const JSON_TOOL: &str = "json_tool_call";

/// OpenAI parameters Anthropic has no equivalent for.
const UNSUPPORTED: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "audio",
    "modalities",
    "prediction",
    "functions",
    "function_call",
];

/// Fields Purser itself reads and never forwards.
const GATEWAY_FIELDS: &[&str] = &["metadata", "stream_options", "n"];

/// A request Anthropic cannot be asked: the field and why (a 400 for the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Unsupported {
    Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether the request asks for JSON mode (answered through the forced [`JSON_TOOL`]).
pub fn json_mode(body: &Map<String, Value>) -> bool {
    body.get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema")
}

/// The Messages request for an OpenAI chat request `body` to `model`.
pub fn to_messages_request(
    body: &Map<String, Value>,
    model: &str,
) -> Result<Map<String, Value>, Unsupported> {
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    for f in UNSUPPORTED {
        if body.get(*f).is_some_and(|v| !v.is_null()) {
            return Err(bad(*f, "is not supported by Anthropic models"));
        }
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(bad("n", "Anthropic models return one choice; n must be 1"));
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "must be a list"))?;
    let (system, turns) = translate_messages(messages)?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(turns));
    let max = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_tokens").filter(|v| !v.is_null()));
    let max_tokens = match max {
        None => DEFAULT_MAX_TOKENS,
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("max_tokens", "must be a positive integer"))?,
    };
    out.insert("max_tokens".into(), json!(max_tokens));
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(bad("stop", "must be a string or a list of strings")),
    }
    if let Some(user) = body.get("user").and_then(Value::as_str)
        && !user.contains('@')
    {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let mut tools: Vec<Value> = Vec::new();
    if let Some(ts) = body.get("tools").filter(|v| !v.is_null()) {
        let ts = ts
            .as_array()
            .ok_or_else(|| bad("tools", "must be a list"))?;
        for (i, t) in ts.iter().enumerate() {
            let f = t
                .get("function")
                .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| bad(format!("tools[{i}]"), "must be a function tool"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("tools[{i}].function.name"), "is required"))?;
            let mut tool = Map::new();
            tool.insert("name".into(), json!(name));
            if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                tool.insert("description".into(), d.clone());
            }
            tool.insert(
                "input_schema".into(),
                f.get("parameters")
                    .filter(|p| p.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            );
            tools.push(Value::Object(tool));
        }
    }
    let mut tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => {
                return Err(bad(
                    "tool_choice",
                    "must be auto, required, none or a function",
                ));
            }
        }),
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice", "must name a function"))?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if json_mode(body) {
        let schema = body
            .get("response_format")
            .and_then(|f| f.pointer("/json_schema/schema"))
            .filter(|s| s.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        tools.push(
            json!({"name": JSON_TOOL, "description": "Respond with a JSON object.",
            "input_schema": schema}),
        );
        tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
    } else if let Some(f) = body.get("response_format").filter(|v| !v.is_null())
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(bad(
            "response_format",
            "must be text, json_object or json_schema",
        ));
    }
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let tc = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        tc["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = tool_choice {
        out.insert("tool_choice".into(), tc);
    }
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        let budget = match effort {
            "low" | "minimal" => 1024,
            "medium" => 2048,
            "high" => 4096,
            _ => return Err(bad("reasoning_effort", "must be low, medium or high")),
        };
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
    for (k, v) in body {
        let handled = matches!(
            k.as_str(),
            "model"
                | "messages"
                | "max_tokens"
                | "max_completion_tokens"
                | "stop"
                | "user"
                | "tools"
                | "tool_choice"
                | "parallel_tool_calls"
                | "response_format"
                | "reasoning_effort"
        ) || GATEWAY_FIELDS.contains(&k.as_str());
        if !handled && !v.is_null() {
            // temperature, top_p, top_k, stream and Anthropic's own fields (thinking, …):
            // Anthropic judges them.
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// Text of an OpenAI content value (string, or the text parts of a list).
fn text_blocks(content: &Value, at: &str) -> Result<Vec<Value>, Unsupported> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let at = format!("{at}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                        if t.is_empty() {
                            continue;
                        }
                        let mut b = json!({"type": "text", "text": t});
                        if let Some(c) = p.get("cache_control") {
                            b["cache_control"] = c.clone();
                        }
                        out.push(b);
                    }
                    Some("image_url") => out.push(image_block(p, &at)?),
                    _ => return Err(bad(at, "must be a text or image_url part")),
                }
            }
            Ok(out)
        }
        _ => Err(bad(at, "must be a string or a list of parts")),
    }
}

/// An image's URL, and for a data URL its media type and base64 data.
pub(super) type ImageUrl<'a> = (&'a str, Option<(&'a str, &'a str)>);

/// An OpenAI `image_url` part: its URL, and for a data URL its media type and base64 data.
pub(super) fn image_url<'a>(part: &'a Value, at: &str) -> Result<ImageUrl<'a>, Unsupported> {
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.image_url.url"), "is required"))?;
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok((url, None));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad(format!("{at}.image_url.url"), "is not a data URL"))?;
    let media = meta
        .strip_suffix(";base64")
        .ok_or_else(|| bad(format!("{at}.image_url.url"), "must be base64-encoded"))?;
    Ok((url, Some((media, data))))
}

fn image_block(part: &Value, at: &str) -> Result<Value, Unsupported> {
    let (url, inline) = image_url(part, at)?;
    if let Some((media, data)) = inline {
        Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        )
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    } else {
        Err(bad(
            format!("{at}.image_url.url"),
            "must be a data: or http(s) URL",
        ))
    }
}

/// System blocks and the alternating user/assistant turns of an OpenAI message list.
fn translate_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{at}.role"), "is required"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &format!("{at}.content"))?);
                continue;
            }
            "user" => ("user", text_blocks(content, &format!("{at}.content"))?),
            "assistant" => {
                let mut blocks = text_blocks(content, &format!("{at}.content"))?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, c) in calls.iter().enumerate() {
                        let at = format!("{at}.tool_calls[{j}]");
                        let id = c
                            .get("id")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad(format!("{at}.id"), "is required"))?;
                        let name = c
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad(format!("{at}.function.name"), "is required"))?;
                        let args = c
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let input: Value = if args.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(args).map_err(|_| {
                                bad(format!("{at}.function.arguments"), "must be a JSON object")
                            })?
                        };
                        blocks.push(
                            json!({"type": "tool_use", "id": id, "name": name, "input": input}),
                        );
                    }
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}.tool_call_id"), "is required"))?;
                let inner = match content {
                    Value::String(s) => json!(s),
                    other => Value::Array(text_blocks(other, &format!("{at}.content"))?),
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": inner})],
                )
            }
            other => {
                return Err(bad(
                    format!("{at}.role"),
                    format!("'{other}' is not a role Anthropic models take"),
                ));
            }
        };
        match turns.last_mut() {
            Some((r, b)) if r == role => b.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    if turns.first().is_some_and(|(r, _)| r == "assistant") {
        turns.insert(0, ("user".into(), Vec::new()));
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if blocks.is_empty() {
                // Anthropic refuses empty turns; the reference sends a placeholder too.
                blocks.push(json!({"type": "text", "text": "."}));
            }
            json!({"role": role, "content": blocks})
        })
        .collect();
    Ok((system, turns))
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub fn finish_reason(stop_reason: Option<&str>, json_mode: bool) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") if json_mode => "stop",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's `usage` for Anthropic's: cache reads and writes count as prompt tokens.
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (n("input_tokens"), n("output_tokens"));
    let (write, read) = (
        n("cache_creation_input_tokens"),
        n("cache_read_input_tokens"),
    );
    let prompt = input + write + read;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    })
}

/// The `chat.completion` for an Anthropic message answer. `created` in Unix seconds.
pub fn to_chat_completion(msg: &Value, json_mode: bool, created: u64) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for b in msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""))
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                if json_mode && b.get("name").and_then(Value::as_str) == Some(JSON_TOOL) {
                    text.push_str(&input.to_string());
                    continue;
                }
                calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": b.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": input.to_string()},
                }));
            }
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let stop = msg.get("stop_reason").and_then(Value::as_str);
    json!({
        "id": msg.get("id").cloned().unwrap_or_else(|| json!("chatcmpl-anthropic")),
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stop, json_mode)}],
        "usage": usage(msg.get("usage").unwrap_or(&Value::Null)),
    })
}

/// Turns Anthropic's stream events into OpenAI `chat.completion.chunk` SSE, event by event as
/// the bytes arrive (lines may be split across reads).
#[derive(Debug)]
pub struct StreamTranslator {
    buf: Vec<u8>,
    event: Option<String>,
    json_mode: bool,
    created: u64,
    id: String,
    model: String,
    /// Usage from `message_start` (input side) and `message_delta` (cumulative output).
    start_usage: Value,
    output_tokens: u64,
    /// Per content block index: the OpenAI tool-call index, or `JSON` for the JSON-mode tool.
    blocks: Vec<BlockKind>,
    tool_calls: usize,
    finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
    Tool(usize),
    Json,
    Other,
}

impl StreamTranslator {
    pub fn new(json_mode: bool, created: u64) -> StreamTranslator {
        StreamTranslator {
            buf: Vec::new(),
            event: None,
            json_mode,
            created,
            id: "chatcmpl-anthropic".into(),
            model: String::new(),
            start_usage: json!({}),
            output_tokens: 0,
            blocks: Vec::new(),
            tool_calls: 0,
            finished: false,
        }
    }

    /// Whether Anthropic's `message_stop` arrived (the stream is complete).
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The OpenAI SSE bytes for `bytes` of Anthropic's stream (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(e) = line.strip_prefix("event:") {
                self.event = Some(e.trim().to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str::<Value>(d.trim()) {
                    self.on_event(&v, &mut out);
                }
            } else if line.is_empty() {
                self.event = None;
            }
        }
        out
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        super::sse::write_chunk(out, &self.id, self.created, &self.model, delta, finish);
    }

    fn on_event(&mut self, v: &Value, out: &mut Vec<u8>) {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.event.clone())
            .unwrap_or_default();
        match kind.as_str() {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    self.id = id.to_string();
                }
                if let Some(model) = m.get("model").and_then(Value::as_str) {
                    self.model = model.to_string();
                }
                self.start_usage = m
                    .get("usage")
                    .filter(|u| u.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                if let Some(o) = self
                    .start_usage
                    .get("output_tokens")
                    .and_then(Value::as_u64)
                {
                    self.output_tokens = o;
                }
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let block = v.get("content_block").unwrap_or(&Value::Null);
                let kind = match block.get("type").and_then(Value::as_str) {
                    Some("text") => BlockKind::Text,
                    Some("thinking") => BlockKind::Thinking,
                    Some("tool_use")
                        if self.json_mode
                            && block.get("name").and_then(Value::as_str) == Some(JSON_TOOL) =>
                    {
                        BlockKind::Json
                    }
                    Some("tool_use") => {
                        let i = self.tool_calls;
                        self.tool_calls += 1;
                        self.chunk(
                            json!({"tool_calls": [{"index": i,
                                "id": block.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": block.get("name").cloned().unwrap_or(Value::Null),
                                    "arguments": ""}}]}),
                            None,
                            out,
                        );
                        BlockKind::Tool(i)
                    }
                    _ => BlockKind::Other,
                };
                if self.blocks.len() <= index {
                    self.blocks.resize(index + 1, BlockKind::Other);
                }
                self.blocks[index] = kind;
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let d = v.get("delta").unwrap_or(&Value::Null);
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                match (self.blocks.get(index).copied(), d.get("type").and_then(Value::as_str)) {
                    (_, Some("text_delta")) => self.chunk(json!({"content": s("text")}), None, out),
                    (_, Some("thinking_delta")) => {
                        self.chunk(json!({"reasoning_content": s("thinking")}), None, out)
                    }
                    (Some(BlockKind::Json), Some("input_json_delta")) => {
                        self.chunk(json!({"content": s("partial_json")}), None, out)
                    }
                    (Some(BlockKind::Tool(i)), Some("input_json_delta")) => self.chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": s("partial_json")}}]}),
                        None,
                        out,
                    ),
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(o) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.output_tokens = o;
                }
                // Newer streams repeat the (cumulative) input side here; they win.
                for k in [
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                ] {
                    if let Some(n) = v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64)
                        && n > 0
                    {
                        self.start_usage[k] = json!(n);
                    }
                }
                let stop = v.pointer("/delta/stop_reason").and_then(Value::as_str);
                if stop.is_some() {
                    self.chunk(json!({}), Some(finish_reason(stop, self.json_mode)), out);
                }
            }
            "message_stop" => {
                let mut u = self.start_usage.clone();
                u["output_tokens"] = json!(self.output_tokens);
                let v = json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage(&u),
                });
                out.extend_from_slice(format!("data: {v}\n\ndata: [DONE]\n\n").as_bytes());
                self.finished = true;
            }
            "error" => {
                let e = v.get("error").unwrap_or(&Value::Null);
                let v = json!({"error": {
                    "message": e.get("message").cloned().unwrap_or_else(|| json!("upstream stream error")),
                    "type": e.get("type").cloned().unwrap_or_else(|| json!("api_error")),
                    "code": null, "param": null}});
                out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
            }
            _ => {} // ping, content_block_stop, unknown events
        }
    }
}

// ------------------------------------------------ inbound: Anthropic clients (`/v1/messages`)

/// The OpenAI chat request for an Anthropic Messages request (a client of `/v1/messages` in front
/// of a deployment that is not Anthropic; also what governance counts and checks).
pub fn from_messages_request(body: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    let mut out = Map::new();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| bad("model", "is required"))?;
    out.insert("model".into(), json!(model));
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            messages.push(json!({"role": "system", "content": text.join("\n")}));
        }
        Some(_) => return Err(bad("system", "must be a string or a list of text blocks")),
    }
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("messages", "must be a non-empty list"))?;
    for (i, m) in turns.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(bad(format!("{at}.role"), "must be user or assistant"));
        }
        let content = m.get("content").unwrap_or(&Value::Null);
        let blocks: Vec<Value> = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b.clone(),
            _ => {
                return Err(bad(
                    format!("{at}.content"),
                    "must be a string or a list of blocks",
                ));
            }
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("{at}.content[{j}]");
            match b.get("type").and_then(Value::as_str) {
                Some("text") => parts.push(json!({"type": "text",
                    "text": b.get("text").and_then(Value::as_str).unwrap_or("")})),
                Some("image") => {
                    let src = b.get("source").unwrap_or(&Value::Null);
                    let url = match src.get("type").and_then(Value::as_str) {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            src.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                            src.get("data").and_then(Value::as_str).unwrap_or("")
                        ),
                        Some("url") => src
                            .get("url")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        _ => return Err(bad(format!("{at}.source"), "must be base64 or url")),
                    };
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                Some("tool_use") if role == "assistant" => calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": b.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})).to_string()},
                })),
                Some("tool_result") if role == "user" => {
                    let text = match b.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(inner)) => inner
                            .iter()
                            .filter_map(|x| x.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        _ => String::new(),
                    };
                    messages.push(json!({"role": "tool",
                        "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                        "content": text}));
                }
                // Earlier reasoning is the model's own; an OpenAI upstream takes none back.
                Some("thinking") | Some("redacted_thinking") if role == "assistant" => {}
                _ => return Err(bad(at, "is not a block this gateway can send to an OpenAI-style model")),
            }
        }
        if role == "assistant" {
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            let mut msg = json!({"role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
        } else if !parts.is_empty() {
            let all_text = parts.iter().all(|p| p["type"] == "text");
            let content = if all_text {
                json!(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            } else {
                Value::Array(parts)
            };
            messages.push(json!({"role": "user", "content": content}));
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    let max = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("max_tokens", "is required and must be a positive integer"))?;
    out.insert("max_tokens".into(), json!(max));
    if let Some(stop) = body.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    for k in ["temperature", "top_p", "stream"] {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(u) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(u));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let mut ts = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("tools[{i}].name"), "is required"))?;
            if is_server_tool(t) {
                continue; // refused by `native_only` unless the deployment is Anthropic
            }
            ts.push(json!({"type": "function", "function": {"name": name,
                "description": t.get("description").cloned().unwrap_or(json!("")),
                "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))}}));
        }
        out.insert("tools".into(), Value::Array(ts));
    }
    if let Some(tc) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => return Err(bad("tool_choice", "must be auto, any, none or tool")),
        };
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    if let Some(t) = body.get("thinking").filter(|v| !v.is_null())
        && t.get("type").and_then(Value::as_str) == Some("enabled")
    {
        let budget = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
        let effort = match budget {
            0..=1024 => "low",
            1025..=2048 => "medium",
            _ => "high",
        };
        out.insert("reasoning_effort".into(), json!(effort));
    }
    Ok(out)
}

fn is_server_tool(t: &Value) -> bool {
    t.get("type")
        .and_then(Value::as_str)
        .is_some_and(|ty| ty != "custom")
}

/// What a Messages request asks that only an Anthropic deployment can do (checked when it is
/// routed to another one, before anything is sent).
pub fn native_only(body: &Map<String, Value>) -> Option<Unsupported> {
    if body.get("top_k").is_some_and(|v| !v.is_null()) {
        return Some(bad("top_k", "is supported by Anthropic models only"));
    }
    let tools = body.get("tools").and_then(Value::as_array)?;
    tools.iter().position(is_server_tool).map(|i| {
        bad(
            format!("tools[{i}].type"),
            "server tools run only on Anthropic models",
        )
    })
}

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` for an OpenAI one (cached prompt tokens reported apart, as Anthropic does).
pub fn anthropic_usage(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("/prompt_tokens_details/cached_tokens");
    json!({
        "input_tokens": n("/prompt_tokens").saturating_sub(cached),
        "output_tokens": n("/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// The Messages answer for an OpenAI `chat.completion` (first choice).
pub fn to_message(completion: &Value, model: &str) -> Value {
    let choice = completion.pointer("/choices/0").unwrap_or(&Value::Null);
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(
            json!({"type": "tool_use", "id": c.get("id").cloned().unwrap_or(Value::Null),
            "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": input}),
        );
    }
    let id = completion.get("id").and_then(Value::as_str).unwrap_or("");
    json!({
        "id": format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": anthropic_usage(completion.get("usage").unwrap_or(&Value::Null)),
    })
}

/// Turns an OpenAI `chat.completion.chunk` stream into Anthropic's event sequence, as it arrives.
#[derive(Debug)]
pub struct ToMessagesStream {
    buf: Vec<u8>,
    model: String,
    started: bool,
    /// The open content block: its index and whether it is text (else a tool call).
    open: Option<(usize, bool)>,
    next_index: usize,
    /// OpenAI tool-call index → Anthropic block index.
    tools: Vec<(u64, usize)>,
    stop: Option<&'static str>,
    usage: Option<Value>,
    ended: bool,
}

impl ToMessagesStream {
    pub fn new(model: &str) -> ToMessagesStream {
        ToMessagesStream {
            buf: Vec::new(),
            model: model.to_string(),
            started: false,
            open: None,
            next_index: 0,
            tools: Vec::new(),
            stop: None,
            usage: None,
            ended: false,
        }
    }

    fn event(out: &mut Vec<u8>, v: Value) {
        let name = v["type"].as_str().unwrap_or("event").to_string();
        out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((i, _)) = self.open.take() {
            Self::event(out, json!({"type": "content_block_stop", "index": i}));
        }
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        Self::event(
            out,
            json!({"type": "message_start", "message": {
                "id": format!("msg_{}", id.trim_start_matches("chatcmpl-")), "type": "message",
                "role": "assistant", "model": self.model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    /// The Anthropic SSE bytes for `bytes` of the OpenAI stream (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                self.end(&mut out);
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                Self::event(
                    &mut out,
                    json!({"type": "error", "error": {"type": "api_error",
                        "message": e.get("message").cloned().unwrap_or(json!("upstream error"))}}),
                );
                continue;
            }
            self.start(v.get("id").and_then(Value::as_str).unwrap_or(""), &mut out);
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                self.usage = Some(u.clone());
            }
            let Some(choice) = v.pointer("/choices/0") else {
                continue;
            };
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(t) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                if !matches!(self.open, Some((_, true))) {
                    self.close(&mut out);
                    let i = self.next_index;
                    self.next_index += 1;
                    self.open = Some((i, true));
                    Self::event(
                        &mut out,
                        json!({"type": "content_block_start", "index": i,
                            "content_block": {"type": "text", "text": ""}}),
                    );
                }
                let i = self.open.map(|o| o.0).unwrap_or(0);
                Self::event(
                    &mut out,
                    json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": t}}),
                );
            }
            for c in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ti = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = match self.tools.iter().find(|(t, _)| *t == ti) {
                    Some((_, b)) => *b,
                    None => {
                        self.close(&mut out);
                        let b = self.next_index;
                        self.next_index += 1;
                        self.tools.push((ti, b));
                        self.open = Some((b, false));
                        Self::event(
                            &mut out,
                            json!({"type": "content_block_start", "index": b,
                                "content_block": {"type": "tool_use",
                                    "id": c.get("id").cloned().unwrap_or(Value::Null),
                                    "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
                                    "input": {}}}),
                        );
                        b
                    }
                };
                if let Some(a) = c
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    Self::event(
                        &mut out,
                        json!({"type": "content_block_delta", "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": a}}),
                    );
                }
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop = Some(stop_reason(Some(f)));
            }
        }
        out
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.start("", out);
        self.close(out);
        let u = anthropic_usage(self.usage.as_ref().unwrap_or(&Value::Null));
        Self::event(
            out,
            json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": u}),
        );
        Self::event(out, json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn requests_are_translated() {
        let body = obj(json!({
            "model": "claude", "temperature": 0.2, "stop": "END", "user": "u-1",
            "stream_options": {"include_usage": true}, "metadata": {"tags": ["x"]},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "really", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                {"role": "assistant", "content": ""}
            ],
            "tools": [{"type": "function", "function": {"name": "get", "description": "d",
                "parameters": {"type": "object", "properties": {"q": {"type": "integer"}}}}}],
            "tool_choice": "required", "parallel_tool_calls": false
        }));
        let out = Value::Object(to_messages_request(&body, "claude-sonnet-4-5").unwrap());
        assert_eq!(out["model"], "claude-sonnet-4-5");
        assert_eq!(out["max_tokens"], 4096);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "be brief"},
                {"type": "text", "text": "really", "cache_control": {"type": "ephemeral"}}])
        );
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4, "{out}");
        assert_eq!(m[0]["role"], "user");
        assert_eq!(
            m[0]["content"].as_array().unwrap().len(),
            4,
            "merged user turns"
        );
        assert_eq!(m[0]["content"][2]["source"]["media_type"], "image/png");
        assert_eq!(m[0]["content"][3]["source"]["type"], "url");
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "get", "input": {"q": 1}})
        );
        assert_eq!(m[2]["content"][0]["type"], "tool_result");
        assert_eq!(m[2]["content"][0]["content"], "42");
        assert_eq!(
            m[3]["content"][0]["text"], ".",
            "empty turn gets a placeholder"
        );
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["q"]["type"],
            "integer"
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert!(out.get("stream_options").is_none() && out.get("n").is_none());
    }

    #[test]
    fn unsupported_requests_name_the_field() {
        let base = json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]});
        for (field, value) in [
            ("presence_penalty", json!(0.5)),
            ("n", json!(2)),
            ("max_tokens", json!(0)),
            ("stop", json!(5)),
            ("tool_choice", json!("sometimes")),
            ("response_format", json!({"type": "xml"})),
            ("reasoning_effort", json!("max")),
        ] {
            let mut b = obj(base.clone());
            b.insert(field.into(), value);
            let e = to_messages_request(&b, "c").unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
        }
        let b = obj(json!({"messages": [{"role": "function", "content": "x"}]}));
        assert_eq!(
            to_messages_request(&b, "c").unwrap_err().field,
            "messages[0].role"
        );
        let b = obj(json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}]}));
        assert_eq!(
            to_messages_request(&b, "c").unwrap_err().field,
            "messages[0].tool_calls[0].function.arguments"
        );
        // an assistant first turn gets a user placeholder before it
        let b = obj(json!({"messages": [{"role": "assistant", "content": "hello"}]}));
        let out = to_messages_request(&b, "c").unwrap();
        assert_eq!(out["messages"][0]["role"], "user");
    }

    #[test]
    fn answers_are_translated_with_normalised_usage() {
        let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": 1}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 3,
                "cache_read_input_tokens": 7}});
        let c = to_chat_completion(&msg, false, 9);
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], "Hi");
        assert_eq!(c["choices"][0]["message"]["reasoning_content"], "hmm");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(c["usage"]["prompt_tokens"], 20);
        assert_eq!(c["usage"]["completion_tokens"], 5);
        assert_eq!(c["usage"]["total_tokens"], 25);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
        // JSON mode: the forced tool's input is the content
        let msg = json!({"content": [{"type": "tool_use", "id": "t", "name": "json_tool_call",
            "input": {"a": 1}}], "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
        let c = to_chat_completion(&msg, true, 9);
        assert_eq!(c["choices"][0]["message"]["content"], "{\"a\":1}");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert!(c["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(finish_reason(Some("max_tokens"), false), "length");
    }

    #[test]
    fn streams_are_translated_as_they_arrive() {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_9","model":"claude-x","usage":{"input_tokens":12,"cache_read_input_tokens":4,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_2","name":"get","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"2}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut sse = String::new();
        for e in events {
            let v: Value = serde_json::from_str(e).unwrap();
            sse.push_str(&format!(
                "event: {}\ndata: {e}\n\n",
                v["type"].as_str().unwrap()
            ));
        }
        let mut t = StreamTranslator::new(false, 5);
        let mut out = Vec::new();
        // fed in awkward pieces
        for piece in sse.as_bytes().chunks(7) {
            out.extend(t.push(piece));
        }
        assert!(t.finished());
        let text = String::from_utf8(out).unwrap();
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["id"], "msg_9");
        let content: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(content, "Hello");
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(args, "{\"q\":2}");
        let first_call = chunks
            .iter()
            .find(|c| c.pointer("/choices/0/delta/tool_calls/0/id").is_some())
            .unwrap();
        assert_eq!(
            first_call["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "get"
        );
        let fin = chunks
            .iter()
            .find(|c| {
                c.pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null())
            })
            .unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "tool_calls");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 16);
        assert_eq!(last["usage"]["completion_tokens"], 9);
    }

    #[test]
    fn messages_requests_become_chat_requests() {
        let body = obj(
            json!({"model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "S"}],
            "stop_sequences": ["X"], "metadata": {"user_id": "u"}, "stream": true,
            "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AA"}}]}
            ]}),
        );
        let out = Value::Object(from_messages_request(&body).unwrap());
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stop"], json!(["X"]));
        assert_eq!(out["user"], "u");
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "S"}));
        assert_eq!(m[1], json!({"role": "user", "content": "hi"}));
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"q\":1}");
        assert_eq!(m[2]["content"], "calling");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "42"})
        );
        assert_eq!(
            m[4]["content"][0]["image_url"]["url"],
            "data:image/jpeg;base64,AA"
        );
        for (field, patch) in [
            ("max_tokens", json!({"max_tokens": null})),
            (
                "messages[0].role",
                json!({"messages": [{"role": "system", "content": "x"}]}),
            ),
        ] {
            let mut b = body.clone();
            for (k, v) in patch.as_object().unwrap() {
                b.insert(k.clone(), v.clone());
            }
            assert_eq!(from_messages_request(&b).unwrap_err().field, field);
        }
    }

    #[test]
    fn anthropic_only_fields_are_named() {
        let b = obj(json!({"top_k": 3}));
        assert_eq!(native_only(&b).unwrap().field, "top_k");
        let b = obj(json!({"tools": [{"name": "f", "input_schema": {}},
            {"type": "web_search_20250305", "name": "web_search"}]}));
        assert_eq!(native_only(&b).unwrap().field, "tools[1].type");
        assert!(native_only(&obj(json!({"tools": [{"name": "f", "type": "custom"}]}))).is_none());
    }

    #[test]
    fn chat_answers_and_streams_become_messages() {
        let c = json!({"id": "chatcmpl-9", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "ok", "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get", "arguments": "{\"q\":2}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}});
        let m = to_message(&c, "gpt");
        assert_eq!(m["id"], "msg_9");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["content"][0], json!({"type": "text", "text": "ok"}));
        assert_eq!(m["content"][1]["input"], json!({"q": 2}));
        assert_eq!(m["usage"]["input_tokens"], 6);
        assert_eq!(m["usage"]["cache_read_input_tokens"], 4);
        let chunks = [
            json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"content": "He"}}]}),
            json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"content": "y"}}]}),
            json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                "id": "call_2", "type": "function", "function": {"name": "get", "arguments": ""}}]}}]}),
            json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": "{}"}}]}}]}),
            json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-7", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ];
        let mut sse = String::new();
        for c in &chunks {
            sse.push_str(&format!("data: {c}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        let mut t = ToMessagesStream::new("gpt");
        let mut out = Vec::new();
        for piece in sse.as_bytes().chunks(5) {
            out.extend(t.push(piece));
        }
        let text = String::from_utf8(out).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
        assert!(text.contains("\"output_tokens\":2"), "{text}");
        // Anthropic's own events read back through the other translator bill the same usage.
        let mut back = StreamTranslator::new(false, 1);
        let openai = String::from_utf8(back.push(text.as_bytes())).unwrap();
        assert!(back.finished());
        assert!(openai.contains("\"prompt_tokens\":5"), "{openai}");
    }

    #[test]
    fn a_stream_error_event_becomes_an_error_chunk() {
        let mut t = StreamTranslator::new(false, 5);
        let out = t.push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("overloaded_error") && text.contains("Overloaded"),
            "{text}"
        );
        assert!(!t.finished());
    }
}
