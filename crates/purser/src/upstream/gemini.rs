//! OpenAI chat ⇄ Gemini `generateContent` (Google AI Studio, and Vertex AI below a project): the
//! request, the answer and the stream (`streamGenerateContent?alt=sse` events turned into
//! `chat.completion.chunk` SSE as they arrive); OpenAI embeddings ⇄ `batchEmbedContents` (Vertex:
//! `predict`). Pure translation, no I/O. Invariants: OpenAI parameters Gemini cannot honour are
//! refused with a 400 naming them; completion tokens include Gemini's thinking tokens (billed as
//! output); a stream that finished ends with one usage chunk and `data: [DONE]`.

use serde_json::{Map, Value, json};

use super::anthropic::Unsupported;

const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "functions",
    "function_call",
];

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Unsupported {
    Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

fn parts_of(content: &Value, at: &str) -> Result<Vec<Value>, Unsupported> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, p) in items.iter().enumerate() {
                let at = format!("{at}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.is_empty() {
                            out.push(json!({"text": t}));
                        }
                    }
                    Some("image_url") => {
                        let (url, inline) = super::anthropic::image_url(p, &at)?;
                        if let Some((mime, data)) = inline {
                            out.push(json!({"inline_data": {"mime_type": mime, "data": data}}));
                        } else if url.starts_with("gs://") || url.starts_with("https://") {
                            let mime = if url.ends_with(".png") {
                                "image/png"
                            } else {
                                "image/jpeg"
                            };
                            out.push(json!({"file_data": {"mime_type": mime, "file_uri": url}}));
                        } else {
                            return Err(bad(
                                format!("{at}.image_url.url"),
                                "must be a data:, gs:// or https:// URL",
                            ));
                        }
                    }
                    _ => return Err(bad(at, "must be a text or image_url part")),
                }
            }
            Ok(out)
        }
        _ => Err(bad(at, "must be a string or a list of parts")),
    }
}

/// The `generateContent` request for an OpenAI chat request `body`.
pub fn to_generate_request(body: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    for f in UNSUPPORTED {
        if body.get(*f).is_some_and(|v| !v.is_null()) {
            return Err(bad(*f, "is not supported by Gemini models"));
        }
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "must be a list"))?;
    let mut system = Vec::new();
    let mut contents: Vec<(String, Vec<Value>)> = Vec::new();
    // Gemini's functionResponse names the function; OpenAI's tool message names the call.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, parts) = match role {
            "system" | "developer" => {
                system.extend(parts_of(content, &format!("{at}.content"))?);
                continue;
            }
            "user" => ("user", parts_of(content, &format!("{at}.content"))?),
            "assistant" => {
                let mut parts = parts_of(content, &format!("{at}.content"))?;
                for (j, c) in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            bad(format!("{at}.tool_calls[{j}].function.name"), "is required")
                        })?;
                    let args = c
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let args: Value = if args.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args).map_err(|_| {
                            bad(
                                format!("{at}.tool_calls[{j}].function.arguments"),
                                "must be a JSON object",
                            )
                        })?
                    };
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        call_names.push((id.to_string(), name.to_string()));
                    }
                    parts.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                ("model", parts)
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = call_names
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| {
                        bad(
                            format!("{at}.tool_call_id"),
                            "must answer a tool call of an earlier assistant message",
                        )
                    })?;
                let text = match content {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // Gemini wants an object: JSON objects go as they are, anything else wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            other => {
                return Err(bad(
                    format!("{at}.role"),
                    format!("'{other}' is not a role Gemini models take"),
                ));
            }
        };
        match contents.last_mut() {
            Some((r, p)) if r == role => p.extend(parts),
            _ => contents.push((role.to_string(), parts)),
        }
    }
    let mut out = Map::new();
    out.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, mut parts)| {
                    if parts.is_empty() {
                        parts.push(json!({"text": " "}));
                    }
                    json!({"role": role, "parts": parts})
                })
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("system_instruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    let max = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_tokens").filter(|v| !v.is_null()));
    if let Some(v) = max {
        let n = v
            .as_u64()
            .ok_or_else(|| bad("max_tokens", "must be a non-negative integer"))?;
        config.insert("maxOutputTokens".into(), json!(n));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(bad("stop", "must be a string or a list of strings")),
    }
    if let Some(f) = body.get("response_format").filter(|v| !v.is_null()) {
        match f.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = f.pointer("/json_schema/schema") {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {
                return Err(bad(
                    "response_format",
                    "must be text, json_object or json_schema",
                ));
            }
        }
    }
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        let budget = match effort {
            "none" => 0,
            "low" | "minimal" => 1024,
            "medium" => 2048,
            "high" => 4096,
            _ => return Err(bad("reasoning_effort", "must be none, low, medium or high")),
        };
        config.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": budget > 0}),
        );
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(ts) = body.get("tools").and_then(Value::as_array) {
        let mut decls = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            let f = t
                .get("function")
                .ok_or_else(|| bad(format!("tools[{i}]"), "must be a function tool"))?;
            let mut d = Map::new();
            d.insert(
                "name".into(),
                f.get("name")
                    .cloned()
                    .ok_or_else(|| bad(format!("tools[{i}].function.name"), "is required"))?,
            );
            if let Some(desc) = f.get("description") {
                d.insert("description".into(), desc.clone());
            }
            if let Some(p) = f.get("parameters").filter(|p| p.is_object()) {
                d.insert("parameters".into(), p.clone());
            }
            decls.push(Value::Object(d));
        }
        if !decls.is_empty() {
            out.insert("tools".into(), json!([{"function_declarations": decls}]));
        }
    }
    if let Some(tc) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let cfg = match tc {
            Value::String(s) => match s.as_str() {
                "auto" => json!({"mode": "AUTO"}),
                "required" => json!({"mode": "ANY"}),
                "none" => json!({"mode": "NONE"}),
                _ => {
                    return Err(bad(
                        "tool_choice",
                        "must be auto, required, none or a function",
                    ));
                }
            },
            v => {
                let name = v
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("tool_choice", "must name a function"))?;
                json!({"mode": "ANY", "allowed_function_names": [name]})
            }
        };
        out.insert(
            "tool_config".into(),
            json!({"function_calling_config": cfg}),
        );
    }
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false))
        && body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| t.len() > 1)
    {
        return Err(bad(
            "parallel_tool_calls",
            "false is not supported by Gemini models with more than one tool",
        ));
    }
    Ok(out)
}

/// OpenAI's `finish_reason` for Gemini's `finishReason`.
fn finish_reason(reason: Option<&str>, has_calls: bool) -> &'static str {
    if has_calls {
        return "tool_calls";
    }
    match reason {
        Some("MAX_TOKENS") => "length",
        Some("SAFETY")
        | Some("RECITATION")
        | Some("BLOCKLIST")
        | Some("PROHIBITED_CONTENT")
        | Some("SPII") => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's `usage` for Gemini's `usageMetadata` (thinking tokens are output; cached tokens are
/// part of the prompt count, as in OpenAI's).
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt = n("promptTokenCount");
    let completion = n("candidatesTokenCount") + n("thoughtsTokenCount");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": n("cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": n("thoughtsTokenCount")},
    })
}

/// A tool-call id for a Gemini function call (Gemini gives none): `call_` + 24 hex digits.
fn call_id(n: usize, salt: u64) -> String {
    format!("call_{:016x}{:08x}", salt, n)
}

/// Text, reasoning and calls of a candidate's parts.
fn read_parts(parts: &[Value], salt: u64, first_call: usize) -> (String, String, Vec<Value>) {
    let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    for p in parts {
        if let Some(fc) = p.get("functionCall") {
            calls.push(json!({
                "id": call_id(first_call + calls.len(), salt),
                "type": "function",
                "function": {"name": fc.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": fc.get("args").cloned().unwrap_or_else(|| json!({})).to_string()},
            }));
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought") == Some(&Value::Bool(true)) {
                reasoning.push_str(t);
            } else {
                text.push_str(t);
            }
        }
    }
    (text, reasoning, calls)
}

/// The `chat.completion` for a `generateContent` answer.
/// The inputs of an OpenAI embeddings request (a string or a list of strings; token arrays are
/// refused: Gemini embeds text).
fn embedding_texts(body: &Map<String, Value>) -> Result<Vec<&str>, Unsupported> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str().ok_or_else(|| {
                    bad("input", "must be text (Gemini does not embed token arrays)")
                })
            })
            .collect(),
        _ => Err(bad(
            "input",
            "must be a string or a non-empty list of strings",
        )),
    }
}

/// Gemini's (`vertex`: Vertex AI's `predict`) request for an OpenAI embeddings request; `dimensions`
/// becomes `outputDimensionality`. Refuses what it cannot carry, naming it.
pub fn to_embed_request(
    body: &Map<String, Value>,
    model: &str,
    vertex: bool,
) -> Result<Map<String, Value>, Unsupported> {
    for (k, v) in body {
        let known = matches!(
            k.as_str(),
            "model" | "input" | "dimensions" | "encoding_format" | "user"
        );
        if !known && !v.is_null() {
            return Err(bad(k.clone(), "is not supported by Gemini embeddings"));
        }
    }
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") | Some("base64") => {}
        Some(_) => return Err(bad("encoding_format", "must be float or base64")),
    }
    let dims = match body.get("dimensions").filter(|v| !v.is_null()) {
        None => None,
        Some(d) => Some(
            d.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("dimensions", "must be a positive integer"))?,
        ),
    };
    let texts = embedding_texts(body)?;
    let mut out = Map::new();
    if vertex {
        let instances: Vec<Value> = texts.iter().map(|t| json!({"content": t})).collect();
        out.insert("instances".into(), Value::Array(instances));
        if let Some(d) = dims {
            out.insert("parameters".into(), json!({"outputDimensionality": d}));
        }
    } else {
        let requests: Vec<Value> = texts
            .iter()
            .map(|t| {
                let mut r = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": t}]}});
                if let Some(d) = dims {
                    r["outputDimensionality"] = json!(d);
                }
                r
            })
            .collect();
        out.insert("requests".into(), Value::Array(requests));
    }
    Ok(out)
}

/// The OpenAI embeddings answer for Gemini's (`embeddings[].values`) or Vertex's
/// (`predictions[].embeddings.values`, with `statistics.token_count`), vectors as floats or, when
/// the client asked (`encoding_format: base64`, the OpenAI SDK's default), as base64 of
/// little-endian f32. Returns it with the token count the provider reported (Vertex), if any;
/// `None` when the answer holds no vectors.
pub fn to_embeddings_response(
    raw: &Value,
    model: &str,
    base64: bool,
    prompt_tokens: u64,
) -> Option<(Value, Option<u64>)> {
    let vectors: Vec<&Vec<Value>> =
        if let Some(p) = raw.get("predictions").and_then(Value::as_array) {
            p.iter()
                .map(|e| e.pointer("/embeddings/values").and_then(Value::as_array))
                .collect::<Option<_>>()?
        } else {
            raw.get("embeddings")
                .and_then(Value::as_array)?
                .iter()
                .map(|e| e.get("values").and_then(Value::as_array))
                .collect::<Option<_>>()?
        };
    let reported: Option<u64> = raw.get("predictions").and_then(Value::as_array).map(|p| {
        p.iter()
            .filter_map(|e| {
                e.pointer("/embeddings/statistics/token_count")
                    .and_then(Value::as_f64)
            })
            .map(|n| n as u64)
            .sum()
    });
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let floats: Vec<f64> = v.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect();
                base64_f32(&floats)
            } else {
                Value::Array((*v).clone())
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = reported.filter(|n| *n > 0).unwrap_or(prompt_tokens);
    Some((
        json!({"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        reported.filter(|n| *n > 0),
    ))
}

/// A vector as OpenAI's `encoding_format: base64` sends it: base64 of little-endian f32.
pub fn base64_f32(v: &[f64]) -> Value {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn to_chat_completion(resp: &Value, model: &str, created: u64) -> Value {
    let cand = resp.pointer("/candidates/0");
    let parts = cand
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (text, reasoning, calls) = read_parts(&parts, created, 0);
    let blocked = cand.is_none() && resp.pointer("/promptFeedback/blockReason").is_some();
    let mut message = json!({"role": "assistant",
        "content": if blocked || (text.is_empty() && !calls.is_empty()) { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.clone());
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let finish = if blocked {
        "content_filter"
    } else {
        finish_reason(
            cand.and_then(|c| c.get("finishReason"))
                .and_then(Value::as_str),
            !calls.is_empty(),
        )
    };
    json!({
        "id": format!("chatcmpl-{}", resp.get("responseId").and_then(Value::as_str).unwrap_or("gemini")),
        "object": "chat.completion",
        "created": created,
        "model": resp.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage(resp.get("usageMetadata").unwrap_or(&Value::Null)),
    })
}

/// Turns Gemini's SSE stream (each event a partial `GenerateContentResponse`, usage cumulative)
/// into OpenAI chunks as it arrives.
#[derive(Debug)]
pub struct StreamTranslator {
    buf: Vec<u8>,
    model: String,
    created: u64,
    started: bool,
    calls: usize,
    finish: Option<&'static str>,
    usage: Option<Value>,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, created: u64) -> StreamTranslator {
        StreamTranslator {
            buf: Vec::new(),
            model: model.to_string(),
            created,
            started: false,
            calls: 0,
            finish: None,
            usage: None,
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let id = format!("chatcmpl-gemini-{}", self.created);
        super::sse::write_chunk(out, &id, self.created, &self.model, delta, finish);
    }

    /// The OpenAI SSE bytes for `bytes` of Gemini's stream (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                let v = json!({"error": {"message": e.get("message").cloned().unwrap_or(json!("upstream error")),
                    "type": "api_error", "code": null, "param": null}});
                out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
                continue;
            }
            if !self.started {
                self.started = true;
                self.chunk(json!({"role": "assistant", "content": ""}), None, &mut out);
            }
            if let Some(u) = v.get("usageMetadata") {
                self.usage = Some(usage(u));
            }
            let cand = v.pointer("/candidates/0");
            let parts = cand
                .and_then(|c| c.pointer("/content/parts"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let (text, reasoning, calls) = read_parts(&parts, self.created, self.calls);
            if !reasoning.is_empty() {
                self.chunk(json!({"reasoning_content": reasoning}), None, &mut out);
            }
            if !text.is_empty() {
                self.chunk(json!({"content": text}), None, &mut out);
            }
            for mut c in calls {
                c["index"] = json!(self.calls);
                self.calls += 1;
                self.chunk(json!({"tool_calls": [c]}), None, &mut out);
            }
            if let Some(r) = cand
                .and_then(|c| c.get("finishReason"))
                .and_then(Value::as_str)
            {
                self.finish = Some(finish_reason(Some(r), self.calls > 0));
            }
            if cand.is_none() && v.pointer("/promptFeedback/blockReason").is_some() {
                self.finish = Some("content_filter");
            }
        }
        out
    }

    /// At the end of Gemini's body: the finish chunk, the usage chunk and `[DONE]` if Gemini
    /// said it finished (a finish reason arrived).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        let Some(f) = self.finish else {
            return out; // cut short: no [DONE], billed as partial
        };
        self.finished = true;
        self.chunk(json!({}), Some(f), &mut out);
        let u = self.usage.clone().unwrap_or_else(|| json!({}));
        let v = json!({"id": format!("chatcmpl-gemini-{}", self.created), "object": "chat.completion.chunk",
            "created": self.created, "model": self.model, "choices": [], "usage": u});
        out.extend_from_slice(format!("data: {v}\n\ndata: [DONE]\n\n").as_bytes());
        out
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
        let body = obj(
            json!({"model": "g", "max_tokens": 50, "temperature": 0.3, "stop": "END",
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}],
            "tool_choice": "required"}),
        );
        let out = Value::Object(to_generate_request(&body).unwrap());
        assert_eq!(
            out["system_instruction"],
            json!({"parts": [{"text": "be brief"}]})
        );
        let c = out["contents"].as_array().unwrap();
        assert_eq!(c[0], json!({"role": "user", "parts": [{"text": "hi"}]}));
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[1]["parts"][0]["functionCall"],
            json!({"name": "get", "args": {"q": 1}})
        );
        assert_eq!(
            c[2]["parts"][0]["functionResponse"],
            json!({"name": "get", "response": {"content": "42"}})
        );
        assert_eq!(
            c[2]["parts"][1]["inline_data"]["mime_type"], "image/png",
            "merged user turn"
        );
        let g = &out["generationConfig"];
        assert_eq!(g["maxOutputTokens"], 50);
        assert_eq!(g["stopSequences"], json!(["END"]));
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(out["tools"][0]["function_declarations"][0]["name"], "get");
        assert_eq!(out["tool_config"]["function_calling_config"]["mode"], "ANY");
        for (field, v) in [("logit_bias", json!({"1": 1})), ("stop", json!(3))] {
            let mut b = body.clone();
            b.insert(field.into(), v);
            assert_eq!(to_generate_request(&b).unwrap_err().field, field);
        }
        let b =
            obj(json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}));
        assert_eq!(
            to_generate_request(&b).unwrap_err().field,
            "messages[0].tool_call_id"
        );
    }

    #[test]
    fn answers_and_streams_are_translated() {
        let r = json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking…", "thought": true}, {"text": "Hi"},
                {"functionCall": {"name": "get", "args": {"q": 2}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2,
                "totalTokenCount": 12}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
        let c = to_chat_completion(&r, "g", 1);
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], "Hi");
        assert_eq!(c["choices"][0]["message"]["reasoning_content"], "thinking…");
        assert_eq!(c["usage"]["completion_tokens"], 5, "thinking is output");
        assert_eq!(c["usage"]["prompt_tokens"], 7);
        let blocked = to_chat_completion(
            &json!({"promptFeedback": {"blockReason": "SAFETY"}}),
            "g",
            1,
        );
        assert_eq!(blocked["choices"][0]["finish_reason"], "content_filter");

        let events = [
            json!({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}], "usageMetadata": {"promptTokenCount": 4}}),
            json!({"candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}}),
        ];
        let mut sse = String::new();
        for e in &events {
            sse.push_str(&format!("data: {e}\r\n\r\n"));
        }
        let mut t = StreamTranslator::new("g", 1);
        let mut out = Vec::new();
        for piece in sse.as_bytes().chunks(9) {
            out.extend(t.push(piece));
        }
        out.extend(t.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains("\"content\":\"Hel\"") && text.contains("\"content\":\"lo\""));
        assert!(text.contains("\"finish_reason\":\"stop\""));
        assert!(text.contains("\"completion_tokens\":2") && text.contains("\"prompt_tokens\":4"));
        // cut short: no finish reason, no [DONE]
        let mut t = StreamTranslator::new("g", 1);
        t.push(format!("data: {}\n\n", events[0]).as_bytes());
        assert!(t.finish().is_empty());
    }
}
