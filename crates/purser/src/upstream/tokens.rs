//! Offline token estimate (no BPE tables): used for budget reservations, mock deployments and
//! as the fallback when an upstream sends no usage (client disconnect mid-stream). The
//! upstream's `usage` is always the source of truth when present. Rule: each run of letters or
//! digits counts one token per 4 characters (rounded up), every other non-space char counts one;
//! chat messages add OpenAI's 3 tokens per message and 3 for the reply priming.

use serde_json::Value;

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

/// Prompt tokens of a chat request's `messages`.
pub fn count_messages(messages: &Value) -> u64 {
    let Some(list) = messages.as_array() else {
        return 0;
    };
    let mut n = 3;
    for m in list {
        n += 3;
        if let Some(obj) = m.as_object() {
            for (k, v) in obj {
                if k == "role" || k == "content" || k == "name" {
                    n += count_value(v);
                }
            }
        }
    }
    n
}

/// Tokens of an arbitrary content value (string, or OpenAI content parts).
pub fn count_value(v: &Value) -> u64 {
    match v {
        Value::String(s) => count_text(s),
        Value::Array(items) => items.iter().map(count_value).sum(),
        Value::Object(o) => o
            .get("text")
            .map(count_value)
            .unwrap_or_else(|| o.values().map(count_value).sum()),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello from the mock"), 2 + 1 + 1 + 1);
        assert_eq!(count_text("hi!"), 2);
        let m = serde_json::json!([{"role": "user", "content": "hi"}]);
        assert_eq!(count_messages(&m), 3 + 3 + 1 + 1);
    }
}
