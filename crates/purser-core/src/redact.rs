//! Keeping secrets out of logs and answers. Invariants: a virtual key (`sk-…`) never survives
//! [`virtual_keys`]; an upstream credential survives [`secret`] neither whole, in another case,
//! nor as a partly masked copy (any word sharing 8 consecutive characters with it, or the whole
//! secret when it is shorter).

/// Replaces every `sk-…` token (letters, digits, `-`, `_`) with `sk-***`: request URIs carry raw
/// keys (`/key/info?key=sk-…`, `/key/sk-…/regenerate`).
pub fn virtual_keys(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let at_key = bytes[i..].starts_with(b"sk-")
            && (i == 0 || !is_key_byte(bytes[i - 1]))
            && bytes.get(i + 3).is_some_and(|b| is_key_byte(*b));
        if at_key {
            out.push_str("sk-***");
            i += 3;
            while i < bytes.len() && is_key_byte(bytes[i]) {
                i += 1;
            }
        } else {
            // Copy one whole UTF-8 character.
            let ch = text[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
    }
    out
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Replaces every word of `text` that carries `secret` (any case), or 8 consecutive characters
/// of it (a masked copy such as `sk-upstr****123`), with `<redacted>`.
pub fn secret(text: &str, secret: &str) -> String {
    let secret: Vec<char> = secret.to_lowercase().chars().collect();
    if secret.is_empty() {
        return text.to_string();
    }
    let n = secret.len().min(8);
    let windows: Vec<String> = secret.windows(n).map(|w| w.iter().collect()).collect();
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let lower = word.to_lowercase();
        if !word.is_empty() && windows.iter().any(|w| lower.contains(w.as_str())) {
            out.push_str("<redacted>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for ch in text.chars() {
        if ch.is_whitespace()
            || matches!(
                ch,
                '"' | '\'' | ',' | ';' | '(' | ')' | '[' | ']' | '{' | '}'
            )
        {
            flush(&mut word, &mut out);
            out.push(ch);
        } else {
            word.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_keys_leave_no_trace() {
        assert_eq!(
            virtual_keys("/key/info?key=sk-AbC_12-x&x=1"),
            "/key/info?key=sk-***&x=1"
        );
        assert_eq!(
            virtual_keys("/key/sk-secret/regenerate"),
            "/key/sk-***/regenerate"
        );
        assert_eq!(virtual_keys("task-sk-1 risk-"), "task-sk-1 risk-");
        assert_eq!(virtual_keys("ünï sk-é"), "ünï sk-é");
    }

    #[test]
    fn secrets_in_any_case_and_masked_copies() {
        let s = "sk-upstream-secret-123";
        assert_eq!(
            secret("Incorrect API key provided: sk-upstream-secret-123.", s),
            "Incorrect API key provided: <redacted>"
        );
        assert_eq!(
            secret("key SK-UPSTREAM-SECRET-123 bad", s),
            "key <redacted> bad"
        );
        assert_eq!(
            secret("key 'sk-upstr**********-123' bad", s),
            "key '<redacted>' bad"
        );
        assert_eq!(secret("nothing to see", s), "nothing to see");
        assert_eq!(secret("short abc!", "abc"), "short <redacted>");
    }
}
