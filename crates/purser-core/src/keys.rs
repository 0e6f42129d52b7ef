//! Virtual key rules: generation (`sk-` + 16 random bytes URL-safe base64), the stored form
//! (lowercase sha256 hex of the whole raw key, as LiteLLM's `hash_token`), and display names.
//! Invariant: a raw key is never needed after creation; lookups use the hash.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Minimum length of a caller-chosen key (LiteLLM `MINIMUM_CUSTOM_KEY_LENGTH`).
pub const MIN_CUSTOM_KEY_LEN: usize = 16;

/// Generates a new raw key: `sk-` followed by 16 OS-random bytes, URL-safe base64 without padding.
pub fn generate_key() -> String {
    let bytes: [u8; 16] = rand::random();
    format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// sha256 hex of the raw key: the only form ever stored.
pub fn hash_key(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// Accepts either a raw `sk-` key or an already-hashed token, as LiteLLM lookup APIs do.
pub fn token_of(raw_or_hash: &str) -> String {
    if raw_or_hash.starts_with("sk-") {
        hash_key(raw_or_hash)
    } else {
        raw_or_hash.to_ascii_lowercase()
    }
}

/// Display form stored as `key_name`: `sk-...` plus the last four characters.
pub fn key_name(raw: &str) -> String {
    let tail: String = raw
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

/// Why a caller-chosen key is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CustomKeyError {
    #[error("Invalid key format. LiteLLM Virtual Key must start with 'sk-'. Received: {0}")]
    Prefix(String),
    #[error("Custom key must be at least {MIN_CUSTOM_KEY_LEN} characters long")]
    TooShort,
    #[error("Custom key may only contain printable ASCII without whitespace")]
    Charset,
}

/// Validates a key supplied by the caller in `/key/generate` (`key`) or `/key/regenerate` (`new_key`).
pub fn validate_custom_key(raw: &str) -> Result<(), CustomKeyError> {
    if !raw.starts_with("sk-") {
        return Err(CustomKeyError::Prefix(abbreviate(raw)));
    }
    if raw.len() < MIN_CUSTOM_KEY_LEN {
        return Err(CustomKeyError::TooShort);
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CustomKeyError::Charset);
    }
    Ok(())
}

/// Masks a secret for messages and logs: never more than the first 3 and last 4 characters.
pub fn abbreviate(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len().min(8));
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_litellm_shape() {
        let k = generate_key();
        assert!(k.starts_with("sk-"));
        assert_eq!(k.len(), 3 + 22);
        assert_ne!(k, generate_key());
    }

    #[test]
    fn hash_matches_litellm_hash_token() {
        // hashlib.sha256(b"sk-1234").hexdigest()
        assert_eq!(hash_key("sk-1234").len(), 64);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_of("sk-x"), hash_key("sk-x"));
        assert_eq!(token_of("ABCDEF"), "abcdef");
    }

    #[test]
    fn custom_keys() {
        assert!(validate_custom_key("sk-0123456789abcdef").is_ok());
        assert_eq!(
            validate_custom_key("sk-short"),
            Err(CustomKeyError::TooShort)
        );
        assert!(matches!(
            validate_custom_key("pk-0123456789abcdef"),
            Err(CustomKeyError::Prefix(_))
        ));
        assert_eq!(
            validate_custom_key("sk-0123456789 abcdef"),
            Err(CustomKeyError::Charset)
        );
        assert_eq!(key_name("sk-abcdefgh"), "sk-...efgh");
        assert_eq!(abbreviate("sk-abcdefghijkl"), "sk-****ijkl");
    }
}
