//! Reads a COPY of a streamed SSE body (the original bytes are forwarded untouched): collects
//! the final `usage` object and counts the produced text for the no-usage fallback. Lines may be
//! split across chunks, so partial lines are buffered.

use serde_json::Value;

use super::tokens::count_text;

/// Token usage of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The `usage` object of an OpenAI response, if it carries token counts.
    pub fn from_json(v: &Value) -> Option<Usage> {
        let u = v.get("usage")?;
        let p = u.get("prompt_tokens")?.as_u64()?;
        let c = u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
        })
    }
}

#[derive(Debug, Default)]
pub struct SseTap {
    buf: Vec<u8>,
    pub usage: Option<Usage>,
    /// Estimated tokens of the text produced so far.
    pub produced_tokens: u64,
    pub done: bool,
}

impl SseTap {
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
        if let Some(u) = Usage::from_json(&v) {
            self.usage = Some(u);
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for c in choices {
                if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                    self.produced_tokens += count_text(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                completion_tokens: 2
            })
        );
        assert!(t.done);
    }
}
