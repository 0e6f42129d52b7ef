//! Reads a COPY of a streamed SSE body (the original bytes are forwarded untouched): collects
//! the final `usage` object and counts the produced text for the no-usage fallback. Lines may be
//! split across chunks, so partial lines are buffered.

use serde_json::Value;

use super::tokens::TokenCounter;

/// Token usage of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those read from the provider's prompt cache (OpenAI
    /// `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`).
    pub cache_read: u64,
    /// Of `prompt_tokens`, those written to the cache (Anthropic `cache_creation_input_tokens`).
    pub cache_write: u64,
    /// Units billed at the deployment's `per_unit` price (images made, characters spoken).
    pub units: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The `usage` object of an OpenAI response, if it carries token counts.
    pub fn from_json(v: &Value) -> Option<Usage> {
        Usage::from_usage(v.get("usage")?)
    }

    /// From a `usage` object: `prompt_tokens` required, `completion_tokens` 0 when absent; cache
    /// counts from OpenAI's or Anthropic's fields (both are part of `prompt_tokens`, clamped so).
    pub fn from_usage(u: &Value) -> Option<Usage> {
        let p = u.get("prompt_tokens")?.as_u64()?;
        let c = u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let n = |ptr: &str| u.pointer(ptr).and_then(Value::as_u64).unwrap_or(0);
        let read = n("/prompt_tokens_details/cached_tokens").max(n("/cache_read_input_tokens"));
        let write = n("/cache_creation_input_tokens");
        let read = read.min(p);
        let write = write.min(p - read);
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cache_read: read,
            cache_write: write,
            units: 0,
        })
    }

    /// From a Responses API `usage` (`input_tokens`, `output_tokens`, cached tokens in
    /// `input_tokens_details`). Not for Anthropic's same-named fields, whose input excludes the
    /// cache: those go through `anthropic::usage`.
    pub fn from_responses_usage(u: &Value) -> Option<Usage> {
        let p = u.get("input_tokens")?.as_u64()?;
        let c = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
        let read = u
            .pointer("/input_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(p);
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cache_read: read,
            cache_write: 0,
            units: 0,
        })
    }

    /// The cost in nano-USD at per-token pico-USD prices; cache reads and writes at their own
    /// prices when the deployment has them, else at the input price.
    pub fn cost(&self, p: &purser_core::money::TokenPrices) -> purser_core::money::Nanos {
        let tokens = purser_core::money::cost_with_cache(
            self.prompt_tokens,
            self.completion_tokens,
            self.cache_read,
            self.cache_write,
            p,
        );
        let units = purser_core::money::cost_of_units(self.units, p.per_unit);
        purser_core::money::Nanos(tokens.0.saturating_add(units.0))
    }
}

#[derive(Debug, Default)]
pub struct SseTap {
    buf: Vec<u8>,
    pub usage: Option<Usage>,
    /// Estimated tokens of the text produced so far, by `counter`.
    pub produced_tokens: u64,
    /// The deployment's counter (the heuristic by default).
    pub counter: TokenCounter,
    pub done: bool,
}

impl SseTap {
    /// A tap counting produced text with `counter`.
    pub fn new(counter: TokenCounter) -> SseTap {
        SseTap {
            counter,
            ..SseTap::default()
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.line(&line);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        let Some(data) = text.trim_end().strip_prefix("data:") else {
            return;
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        // Responses API events name their type: the text deltas, and the final response's usage
        // (`response.completed`, or `.incomplete` / `.failed` with what was used).
        if let Some(kind) = v.get("type").and_then(Value::as_str)
            && let Some(event) = kind.strip_prefix("response.")
        {
            if event == "output_text.delta"
                && let Some(t) = v.get("delta").and_then(Value::as_str)
            {
                self.produced_tokens += self.counter.text(t);
            }
            if let Some(u) = v
                .pointer("/response/usage")
                .and_then(Usage::from_responses_usage)
            {
                self.usage = Some(u);
            }
            return;
        }
        if let Some(u) = Usage::from_json(&v) {
            self.usage = Some(u);
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for c in choices {
                // Chat chunks carry `delta.content`; text-completion chunks `text`.
                let text = c
                    .pointer("/delta/content")
                    .or_else(|| c.get("text"))
                    .and_then(Value::as_str);
                if let Some(t) = text {
                    self.produced_tokens += self.counter.text(t);
                }
            }
        }
    }
}

/// Drops the final usage-only chunk (`"choices": []` with `usage`) from a stream whose client
/// did not ask for it (`stream_options.include_usage`): the gateway always asks the upstream
/// for it to bill exactly, and much client code indexes `choices[0]` of every chunk. Events are
/// forwarded whole, as soon as their blank line arrives; everything else passes unchanged.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    buf: Vec<u8>,
}

impl UsageChunkFilter {
    /// The complete events of `bytes` (with what was buffered) to forward, possibly empty.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end).collect();
            if !is_usage_only(&event) {
                out.extend_from_slice(&event);
            }
        }
        out
    }

    /// What is left at the end of the stream (an event without its blank line).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// The length of the first complete event (through its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_only(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    let Ok(v) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && v.get("usage").is_some_and(Value::is_object)
}

/// Appends one OpenAI `chat.completion.chunk` SSE event (the translators' common frame).
pub(super) fn write_chunk(
    out: &mut Vec<u8>,
    id: &str,
    created: u64,
    model: &str,
    delta: serde_json::Value,
    finish: Option<&str>,
) {
    let v = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_only_chunk_is_dropped_whole_events_pass() {
        let mut f = UsageChunkFilter::default();
        let a = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let mut out = f.push(&a[..10]);
        assert!(out.is_empty(), "half an event waits");
        out.extend(f.push(&a[10..]));
        assert_eq!(out, a.to_vec());
        let usage =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\r\n\r\ndata: [DONE]\n\n";
        assert_eq!(f.push(usage), b"data: [DONE]\n\n".to_vec());
        // A chunk with choices and usage is content: it passes.
        let both = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":3}}\n\n";
        assert_eq!(f.push(both), both.to_vec());
        assert_eq!(f.push(b"data: tail"), Vec::<u8>::new());
        assert_eq!(f.finish(), b"data: tail".to_vec());
    }

    #[test]
    fn split_lines_and_usage() {
        let mut t = SseTap::default();
        t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\nda");
        t.feed(b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(t.produced_tokens, 2);
        assert_eq!(
            t.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                ..Usage::default()
            })
        );
        assert!(t.done);
    }

    #[test]
    fn responses_events_and_completion_chunks() {
        let mut t = SseTap::default();
        t.feed(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hello\"}\n\n");
        t.feed(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":3,\"input_tokens_details\":{\"cached_tokens\":2}}}}\n\n");
        assert_eq!(t.produced_tokens, 2);
        assert_eq!(
            t.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                cache_read: 2,
                cache_write: 0,
                units: 0,
            })
        );
        let mut t = SseTap::default();
        t.feed(b"data: {\"choices\":[{\"text\":\"hello\",\"index\":0}]}\n\n");
        assert_eq!(t.produced_tokens, 2);
    }
}
