//! Prompt-token counts for budget reservations, and for billing when an upstream sends no usage
//! (the upstream's `usage` is always the truth when present). Each deployment's counter is
//! chosen once at startup from its model name (or `model_info.base_model`): OpenAI's BPE
//! (`o200k_base`, `cl100k_base`, each loaded only if a configured deployment needs it), or the
//! offline heuristic for unknown families. Whatever the counter, the whole request the upstream
//! sees is counted: messages and their parts, names, tool calls and results, tool definitions,
//! `response_format`; where the provider's accounting is unknown (tool-definition injection,
//! images without a size, audio, files) the count leans high. Invariants: counting never panics
//! (text the BPE cannot take is counted by the heuristic), and cost is linear in the body size.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

/// Framing tokens of each chat message (OpenAI cookbook, every current model).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra token of a message that carries a `name`.
pub const TOKENS_PER_NAME: u64 = 1;
/// `<|start|>assistant<|message|>` priming the reply, once per request.
pub const REPLY_PRIMING: u64 = 3;
/// Framing of each tool or function call in an assistant message (tiktoken-rs's figure).
pub const TOKENS_PER_TOOL_CALL: u64 = 1;
/// An image part at `detail: low` (fixed size on every tile-priced model).
pub const IMAGE_LOW_DETAIL_TOKENS: u64 = 85;
/// An image part at `high`/`auto` detail, whose size the gateway does not know: the tile rule's
/// maximum (scaled into 2048 px, shortest side 768 px → at most 4×2 tiles of 512 px:
/// 85 + 170·8). Patch-priced models (gpt-4.1-mini/nano, o4-mini) can bill more for a large image;
/// that gap is part of what the estimate misses (docs/reliability.md).
pub const IMAGE_HIGH_DETAIL_TOKENS: u64 = 85 + 170 * 8;
/// Audio bytes per input token: gpt-4o audio bills about one token per 100 ms, and audio below
/// 32 kbit/s (4 KB/s) is rare, so one token per 400 decoded bytes leans high.
pub const AUDIO_BYTES_PER_TOKEN: u64 = 400;
/// File parts (PDF): text plus page images; counted as if every decoded byte were text
/// (one token per 4 bytes), far above what real documents bill.
pub const FILE_BYTES_PER_TOKEN: u64 = 4;
/// Longest text handed to the BPE at once. Longer text is cut (at whitespace where possible)
/// and the pieces counted apart: the BPE's regex overflows its stack on megabyte-long runs, and
/// a cut changes a count by at most a token or two per piece (upward as a rule).
pub const BPE_SEGMENT_BYTES: usize = 8 * 1024;

/// How one deployment's prompts are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TokenCounter {
    /// `o200k_base`: gpt-4o*, gpt-4.1*, gpt-4.5*, o1*, o3*, o4-mini*, gpt-5*, gpt-oss-*.
    O200k,
    /// `cl100k_base`: gpt-4, gpt-4-turbo, gpt-3.5-turbo, the OpenAI embeddings.
    Cl100k,
    /// Unknown family: one token per 4 letters or digits of a run, one per other symbol.
    #[default]
    Heuristic,
}

impl TokenCounter {
    /// The counter for a model name (provider prefix and all: `azure/gpt-4o` and `gpt-4o`
    /// agree). Legacy completion encodings (p50k, r50k) are not worth their tables here and use
    /// the heuristic, like any unknown name.
    pub fn for_model(model: &str) -> TokenCounter {
        use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
        let name = model.rsplit('/').next().unwrap_or(model).trim();
        match get_tokenizer(name) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => TokenCounter::O200k,
            Some(Tokenizer::Cl100kBase) => TokenCounter::Cl100k,
            _ => TokenCounter::Heuristic,
        }
    }

    /// The counter of a deployment: its `base_model` when that names a known family (Azure
    /// deployment names say nothing), else its upstream model.
    pub fn for_deployment(upstream_model: &str, base_model: Option<&str>) -> TokenCounter {
        match base_model.map(TokenCounter::for_model) {
            Some(c) if c != TokenCounter::Heuristic => c,
            _ => TokenCounter::for_model(upstream_model),
        }
    }

    /// The BPE encoding's name, `None` for the heuristic.
    pub fn encoding(self) -> Option<&'static str> {
        match self {
            TokenCounter::O200k => Some("o200k_base"),
            TokenCounter::Cl100k => Some("cl100k_base"),
            TokenCounter::Heuristic => None,
        }
    }

    /// Loads the encoding's tables now (startup) rather than on the first request; once per
    /// process, shared by every deployment that uses it.
    pub fn load(self) {
        let _ = self.bpe();
    }

    fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            TokenCounter::O200k => Some(tiktoken_rs::o200k_base_singleton()),
            TokenCounter::Cl100k => Some(tiktoken_rs::cl100k_base_singleton()),
            TokenCounter::Heuristic => None,
        }
    }

    /// Tokens of a text as the model reads it (special-token text such as `<|endoftext|>` is
    /// ordinary text, as it is for OpenAI's API).
    pub fn text(self, text: &str) -> u64 {
        let Some(bpe) = self.bpe() else {
            return count_text(text);
        };
        segments(text, BPE_SEGMENT_BYTES)
            .map(|seg| {
                catch_unwind(AssertUnwindSafe(|| bpe.count_ordinary(seg) as u64))
                    .unwrap_or_else(|_| count_text(seg))
            })
            .sum()
    }

    /// Prompt tokens of a chat-completions body: its messages plus every request field that
    /// reaches the model's context (tools, functions, tool_choice, response_format).
    pub fn chat_prompt(self, body: &Map<String, Value>) -> u64 {
        let mut n = REPLY_PRIMING;
        if let Some(messages) = body.get("messages") {
            match messages {
                Value::Array(list) => n += list.iter().map(|m| self.message(m)).sum::<u64>(),
                other => n += self.any(other),
            }
        }
        for field in ["tools", "functions"] {
            if let Some(defs) = body.get(field).filter(|v| !v.is_null()) {
                n += self.json(defs);
            }
        }
        if let Some(choice @ Value::Object(_)) = body.get("tool_choice") {
            n += self.json(choice);
        }
        if let Some(Value::Object(call)) = body.get("function_call") {
            n += self.json(&Value::Object(call.clone()));
        }
        match body.get("response_format") {
            Some(Value::Object(f)) => {
                n += match f.get("json_schema") {
                    Some(schema) => self.json(schema),
                    None => self.any(&Value::Object(f.clone())),
                }
            }
            Some(Value::Null) | None => {}
            Some(other) => n += self.any(other),
        }
        n
    }

    /// Prompt tokens of a Responses API body: `instructions`, the `input` (a string, or items:
    /// messages counted as chat messages, other items — tool outputs, reasoning — by their
    /// strings) and the tool definitions.
    pub fn responses_prompt(self, body: &Map<String, Value>) -> u64 {
        let mut n = REPLY_PRIMING;
        if let Some(i) = body.get("instructions") {
            n += self.any(i);
        }
        match body.get("input") {
            Some(Value::Array(items)) => {
                n += items
                    .iter()
                    .map(|item| {
                        if item.get("content").is_some() {
                            self.message(item)
                        } else {
                            TOKENS_PER_MESSAGE + self.any(item)
                        }
                    })
                    .sum::<u64>()
            }
            Some(other) => n += self.any(other),
            None => {}
        }
        if let Some(defs) = body.get("tools").filter(|v| !v.is_null()) {
            n += self.json(defs);
        }
        n
    }

    /// Tokens of an embeddings `input`: a string, a list of strings, a token array (one token
    /// per id) or a list of token arrays; anything else has its strings and numbers counted.
    pub fn embedding_input(self, input: &Value) -> u64 {
        match input {
            Value::String(s) => self.text(s),
            Value::Array(items) => items.iter().map(|i| self.embedding_input(i)).sum(),
            Value::Number(_) => 1,
            other => self.any(other),
        }
    }

    /// One chat message: framing, role, name, content, tool calls, and a tool result's id.
    fn message(self, m: &Value) -> u64 {
        let Value::Object(obj) = m else {
            return TOKENS_PER_MESSAGE + self.any(m);
        };
        let mut n = TOKENS_PER_MESSAGE;
        for (k, v) in obj {
            n += match k.as_str() {
                "role" | "tool_call_id" | "refusal" => self.any(v),
                "name" => TOKENS_PER_NAME + self.any(v),
                "content" => self.content(v),
                "tool_calls" => match v {
                    Value::Array(calls) => calls.iter().map(|c| self.tool_call(c)).sum(),
                    other => self.any(other),
                },
                "function_call" => self.tool_call(&serde_json::json!({"function": v})),
                // `audio: {id}` of an earlier assistant turn replays audio the gateway cannot
                // size; other keys (ids, flags) are not read by the model.
                _ => 0,
            };
        }
        n
    }

    /// A `tool_calls` entry (or a legacy `function_call`): the function's name and arguments.
    fn tool_call(self, call: &Value) -> u64 {
        let f = call.get("function").unwrap_or(call);
        let Some(obj) = f.as_object() else {
            return TOKENS_PER_TOOL_CALL + self.any(f);
        };
        TOKENS_PER_TOOL_CALL
            + obj.get("name").map_or(0, |v| self.any(v))
            + obj.get("arguments").map_or(0, |v| self.any(v))
    }

    /// Message content: a string, or a list of content parts.
    fn content(self, v: &Value) -> u64 {
        match v {
            Value::String(s) => self.text(s),
            Value::Array(parts) => parts.iter().map(|p| self.part(p)).sum(),
            other => self.any(other),
        }
    }

    /// One content part by its `type`; an unknown part has all its strings counted.
    fn part(self, p: &Value) -> u64 {
        let Value::Object(o) = p else {
            return self.any(p);
        };
        let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" | "input_text" | "refusal" => o
                .get("text")
                .or_else(|| o.get("refusal"))
                .map_or(0, |t| self.any(t)),
            "image_url" | "input_image" => {
                let detail = o
                    .get("image_url")
                    .and_then(|i| i.get("detail"))
                    .or_else(|| o.get("detail"))
                    .and_then(Value::as_str);
                if detail == Some("low") {
                    IMAGE_LOW_DETAIL_TOKENS
                } else {
                    IMAGE_HIGH_DETAIL_TOKENS
                }
            }
            "input_audio" => {
                let data = o
                    .get("input_audio")
                    .and_then(|a| a.get("data"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                decoded_len(data).div_ceil(AUDIO_BYTES_PER_TOKEN)
            }
            "file" | "input_file" => {
                let file = o.get("file").unwrap_or(p);
                let data = file.get("file_data").and_then(Value::as_str).unwrap_or("");
                let name = file.get("filename").map_or(0, |f| self.any(f));
                name + decoded_len(data).div_ceil(FILE_BYTES_PER_TOKEN)
            }
            _ => self.any(p),
        }
    }

    /// A JSON value sent as-is (tool definitions, schemas): its compact serialisation, an
    /// upper-leaning stand-in for the provider's own (undocumented) rendering.
    fn json(self, v: &Value) -> u64 {
        self.text(&v.to_string())
    }

    /// A value of no known shape: its strings counted as text, other scalars one token each.
    /// Depth is bounded by the JSON parser's recursion limit (128).
    fn any(self, v: &Value) -> u64 {
        match v {
            Value::String(s) => self.text(s),
            Value::Array(items) => items.iter().map(|i| self.any(i)).sum(),
            Value::Object(o) => o.values().map(|i| self.any(i)).sum(),
            Value::Number(_) | Value::Bool(_) => 1,
            Value::Null => 0,
        }
    }
}

/// Bytes a base64 payload (or `data:` URL) decodes to, without decoding it.
fn decoded_len(data: &str) -> u64 {
    let payload = match data.split_once(";base64,") {
        Some((_, b64)) => b64,
        None => data,
    };
    (payload.len() as u64) * 3 / 4
}

/// Cuts `text` into pieces of at most `max` bytes (a single wider char excepted), each cut made
/// before the last whitespace of the window when there is one, else at a char boundary.
fn segments(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= max {
            return Some(std::mem::take(&mut rest));
        }
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let cut = rest[..end]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or(end);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// The offline heuristic: each run of letters or digits counts one token per 4 characters
/// (rounded up), every other non-space char counts one. Also counts completion text received
/// without usage (interrupted answers).
pub fn count_text(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut run = 0u64;
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            run += 1;
        } else {
            tokens += run.div_ceil(4);
            run = 0;
            if !ch.is_whitespace() {
                tokens += 1;
            }
        }
    }
    tokens + run.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const O: TokenCounter = TokenCounter::O200k;
    const C: TokenCounter = TokenCounter::Cl100k;
    const H: TokenCounter = TokenCounter::Heuristic;

    fn chat(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn heuristic_text() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello from the mock"), 2 + 1 + 1 + 1);
        assert_eq!(count_text("hi!"), 2);
        let body = chat(json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(H.chat_prompt(&body), 3 + 3 + 1 + 1);
    }

    #[test]
    fn model_families() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o-2024-08-06",
            "gpt-4.1-mini",
            "o1",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5-nano",
            "gpt-oss-120b",
            "azure/gpt-4o",
        ] {
            assert_eq!(TokenCounter::for_model(m), O, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "gpt-35-turbo",
            "text-embedding-3-small",
            "text-embedding-ada-002",
        ] {
            assert_eq!(TokenCounter::for_model(m), C, "{m}");
        }
        for m in ["fake-gpt", "llama-3-70b", "claude-sonnet-4", "davinci", ""] {
            assert_eq!(TokenCounter::for_model(m), H, "{m}");
        }
        // An Azure deployment name says nothing: base_model decides, else the name.
        assert_eq!(TokenCounter::for_deployment("prod-chat", Some("gpt-4o")), O);
        assert_eq!(TokenCounter::for_deployment("prod-chat", None), H);
        assert_eq!(TokenCounter::for_deployment("gpt-4", Some("unknown")), C);
    }

    /// Published tiktoken counts: "hello world" is 2 tokens in both encodings, the cookbook's
    /// "tiktoken is great!" 6, and cl100k "China is great!" 4.
    #[test]
    fn bpe_text_matches_tiktoken() {
        assert_eq!(O.text("hello world"), 2);
        assert_eq!(C.text("hello world"), 2);
        assert_eq!(C.text("tiktoken is great!"), 6);
        assert_eq!(O.text("tiktoken is great!"), 6);
        assert_eq!(C.text("China is great!"), 4);
        assert_eq!(O.text(""), 0);
    }

    fn cookbook_messages() -> Value {
        json!([
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
        ])
    }

    /// The cookbook's example conversation: 129 prompt tokens on gpt-4 / gpt-3.5-turbo-0125,
    /// 124 on gpt-4o (as the API reports them).
    #[test]
    fn cookbook_chat_counts() {
        let body = chat(json!({"messages": cookbook_messages()}));
        assert_eq!(C.chat_prompt(&body), 129);
        assert_eq!(O.chat_prompt(&body), 124);
    }

    /// tiktoken-rs's function-call example, validated against the OpenAI API: 78 on gpt-4.
    #[test]
    fn function_call_and_result() {
        let body = chat(json!({"messages": [
            {"role": "system", "content": "You are a friendly chatbot.\n"},
            {"role": "assistant", "content": "Hello, I am a friendly chatbot!\n"},
            {"role": "user", "content": "What is the weather in New York?"},
            {"role": "assistant", "content": "", "function_call":
                {"name": "get_weather", "arguments": "{\n  \"city\": \"New York\"\n}"}},
            {"role": "function", "name": "get_weather",
                "content": "{\"temperature\": 72, \"conditions\": \"partly_cloudy\"}"},
        ]}));
        assert_eq!(C.chat_prompt(&body), 78);
    }

    #[test]
    fn tool_calls_and_tool_results() {
        let args = "{\"city\": \"Paris\", \"unit\": \"celsius\"}";
        let result = "{\"temperature\": 21, \"sky\": \"clear\"}";
        let body = chat(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": args}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": result},
        ]}));
        let call = TOKENS_PER_TOOL_CALL + O.text("get_weather") + O.text(args);
        let expected = REPLY_PRIMING
            + (TOKENS_PER_MESSAGE + O.text("assistant") + 2 * call)
            + (TOKENS_PER_MESSAGE + O.text("tool") + O.text("call_1") + O.text(result));
        assert_eq!(O.chat_prompt(&body), expected);
        assert!(O.text(args) >= 10, "arguments are really counted");
    }

    #[test]
    fn tools_functions_and_response_format_count_as_their_json() {
        let tools = json!([{"type": "function", "function": {"name": "lookup",
            "description": "Look a customer up by id", "parameters": {"type": "object",
            "properties": {"id": {"type": "string"}}, "required": ["id"]}}}]);
        let schema = json!({"name": "answer", "strict": true, "schema": {"type": "object",
            "properties": {"reply": {"type": "string"}}}});
        let base = chat(json!({"messages": [{"role": "user", "content": "hi"}]}));
        let plain = O.chat_prompt(&base);
        let mut with = base.clone();
        with.insert("tools".into(), tools.clone());
        with.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": "lookup"}}),
        );
        with.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": schema}),
        );
        let expected = plain
            + O.text(&tools.to_string())
            + O.text(&json!({"type": "function", "function": {"name": "lookup"}}).to_string())
            + O.text(&schema.to_string());
        assert_eq!(O.chat_prompt(&with), expected);
        let mut legacy = base.clone();
        legacy.insert("functions".into(), json!([tools[0]["function"]]));
        assert_eq!(
            O.chat_prompt(&legacy),
            plain + O.text(&json!([tools[0]["function"]]).to_string())
        );
        let mut json_object = base;
        json_object.insert("response_format".into(), json!({"type": "json_object"}));
        assert_eq!(O.chat_prompt(&json_object), plain + O.text("json_object"));
        // The heuristic counts the same parts.
        assert!(
            H.chat_prompt(&with)
                > H.chat_prompt(&chat(
                    json!({"messages": [{"role": "user", "content": "hi"}]})
                )) + 40
        );
    }

    #[test]
    fn content_parts() {
        let msg = |parts: Value| chat(json!({"messages": [{"role": "user", "content": parts}]}));
        let framing = REPLY_PRIMING + TOKENS_PER_MESSAGE + O.text("user");
        let text = msg(json!([{"type": "text", "text": "describe this picture"}]));
        assert_eq!(
            O.chat_prompt(&text),
            framing + O.text("describe this picture")
        );
        let low = msg(
            json!([{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]),
        );
        assert_eq!(O.chat_prompt(&low), framing + 85);
        for detail in [json!("high"), json!("auto"), Value::Null] {
            let img = msg(
                json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": detail}}]),
            );
            assert_eq!(O.chat_prompt(&img), framing + 1445);
        }
        // 40 000 base64 chars → 30 000 bytes → 75 tokens at 400 bytes per token.
        let audio = msg(
            json!([{"type": "input_audio", "input_audio": {"data": "A".repeat(40_000), "format": "wav"}}]),
        );
        assert_eq!(O.chat_prompt(&audio), framing + 75);
        let file = msg(json!([{"type": "file", "file": {"filename": "a.pdf",
            "file_data": format!("data:application/pdf;base64,{}", "A".repeat(4_000))}}]));
        assert_eq!(O.chat_prompt(&file), framing + O.text("a.pdf") + 750);
    }

    #[test]
    fn embeddings_inputs() {
        assert_eq!(C.embedding_input(&json!("hello world")), 2);
        assert_eq!(
            C.embedding_input(&json!(["hello world", "China is great!"])),
            6
        );
        assert_eq!(C.embedding_input(&json!([15339, 1917, 0])), 3);
        assert_eq!(C.embedding_input(&json!([[15339, 1917], [1, 2, 3]])), 5);
        assert_eq!(H.embedding_input(&json!([[1, 2], [3]])), 3);
        assert_eq!(H.embedding_input(&json!("hello from the mock")), 5);
    }

    /// Hostile shapes are counted, never a panic: megabyte runs the BPE regex cannot take in one
    /// piece, non-string content, huge arrays.
    #[test]
    fn hostile_text_and_shapes() {
        for c in ["^", " ", "a", "\n", "é", "0"] {
            let big = c.repeat(1 << 20);
            let n = O.text(&big);
            assert!(n > 0, "{c:?}");
            assert!(n <= big.len() as u64, "{c:?}: {n}");
        }
        // A cut costs at most a token or two per piece.
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(2_000);
        let whole: u64 = tiktoken_rs::o200k_base_singleton().count_ordinary(&prose) as u64;
        let cut = O.text(&prose);
        let pieces = (prose.len() / BPE_SEGMENT_BYTES + 1) as u64;
        assert!(
            cut >= whole && cut <= whole + 2 * pieces,
            "{cut} vs {whole}"
        );
        let odd = chat(
            json!({"messages": [{"role": "user", "content": {"nested": [1, true, "x"]}},
            "not a message", 7], "tools": "weird", "response_format": 3}),
        );
        assert!(O.chat_prompt(&odd) > 0);
        let many: Vec<Value> = (0..100_000)
            .map(|_| json!({"type": "text", "text": "hi"}))
            .collect();
        let big = chat(json!({"messages": [{"role": "user", "content": many}]}));
        assert_eq!(
            O.chat_prompt(&big),
            REPLY_PRIMING + 3 + O.text("user") + 100_000
        );
    }

    #[test]
    fn segments_cover_the_text() {
        let text = "word ".repeat(5000) + &"x".repeat(20_000) + "ééé";
        let parts: Vec<&str> = segments(&text, 1000).collect();
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.len() <= 1000));
        assert!(parts[0].ends_with("word"), "cut before whitespace");
    }
}
