//! The upstream providers a `litellm_params.model` prefix names: which wire each speaks, its
//! default `api_base` and the environment variable its key is read from when the config gives
//! none (the reference's table). Invariant: a prefix is either served here or refused at start-up
//! with the list of the ones that are; none is silently treated as another.

/// How requests to a provider are shaped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's REST surface (`{api_base}/chat/completions`, Bearer key).
    OpenAi,
    /// Azure OpenAI: `{api_base}/openai/deployments/{deployment}/…?api-version=…` (or the v1
    /// surface), `api-key` header or an Entra bearer token.
    Azure,
    /// Anthropic's Messages API (`{api_base}/v1/messages`, `x-api-key`), translated from and to
    /// OpenAI chat.
    Anthropic,
    /// Google AI Studio's Gemini API (`{api_base}/models/{model}:generateContent`,
    /// `x-goog-api-key`), translated from and to OpenAI chat.
    Gemini,
    /// Amazon Bedrock's Converse API (`{endpoint}/model/{modelId}/converse`, SigV4 or a Bedrock
    /// API key), translated from and to OpenAI chat; embeddings through `InvokeModel`.
    Bedrock,
}

/// One provider prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    pub prefix: &'static str,
    pub wire: Wire,
    /// Where calls go when the deployment sets no `api_base` (`None`: `api_base` is required).
    pub default_api_base: Option<&'static str>,
    /// The variable the key is read from when the deployment sets no `api_key`.
    pub key_env: Option<&'static str>,
    /// Whether a call without any key is a configuration error (hosted APIs) or normal
    /// (self-hosted servers).
    pub key_required: bool,
}

const fn openai_compatible(
    prefix: &'static str,
    base: Option<&'static str>,
    key_env: &'static str,
    key_required: bool,
) -> Provider {
    Provider {
        prefix,
        wire: Wire::OpenAi,
        default_api_base: base,
        key_env: Some(key_env),
        key_required,
    }
}

/// Every prefix Purser serves. The OpenAI-compatible families share one client: only the base
/// URL and the key's variable differ (reference `providers.md` §1).
pub const PROVIDERS: &[Provider] = &[
    openai_compatible(
        "openai",
        Some("https://api.openai.com/v1"),
        "OPENAI_API_KEY",
        false,
    ),
    Provider {
        prefix: "azure",
        wire: Wire::Azure,
        default_api_base: None,
        key_env: Some("AZURE_API_KEY"),
        key_required: true,
    },
    Provider {
        prefix: "anthropic",
        wire: Wire::Anthropic,
        default_api_base: Some("https://api.anthropic.com"),
        key_env: Some("ANTHROPIC_API_KEY"),
        key_required: true,
    },
    Provider {
        // Gemini's wire at `{region}-aiplatform.googleapis.com`, with a service account's OAuth
        // token (the base URL is built from the project and location).
        prefix: "vertex_ai",
        wire: Wire::Gemini,
        default_api_base: None,
        key_env: None,
        key_required: false,
    },
    Provider {
        prefix: "gemini",
        wire: Wire::Gemini,
        default_api_base: Some("https://generativelanguage.googleapis.com/v1beta"),
        key_env: Some("GEMINI_API_KEY"),
        key_required: true,
    },
    Provider {
        // The endpoint is built from the region (`bedrock-runtime.{region}.amazonaws.com`);
        // calls are signed with AWS credentials, or carry a Bedrock API key.
        prefix: "bedrock",
        wire: Wire::Bedrock,
        default_api_base: None,
        key_env: Some("AWS_BEARER_TOKEN_BEDROCK"),
        key_required: false,
    },
    openai_compatible("hosted_vllm", None, "HOSTED_VLLM_API_KEY", false),
    openai_compatible(
        "lm_studio",
        Some("http://localhost:1234/v1"),
        "LM_STUDIO_API_KEY",
        false,
    ),
    openai_compatible(
        "groq",
        Some("https://api.groq.com/openai/v1"),
        "GROQ_API_KEY",
        true,
    ),
    openai_compatible(
        "mistral",
        Some("https://api.mistral.ai/v1"),
        "MISTRAL_API_KEY",
        true,
    ),
    openai_compatible(
        "deepseek",
        Some("https://api.deepseek.com/beta"),
        "DEEPSEEK_API_KEY",
        true,
    ),
    openai_compatible(
        "openrouter",
        Some("https://openrouter.ai/api/v1"),
        "OPENROUTER_API_KEY",
        true,
    ),
    openai_compatible(
        "together_ai",
        Some("https://api.together.ai/v1"),
        "TOGETHERAI_API_KEY",
        true,
    ),
    openai_compatible("xai", Some("https://api.x.ai/v1"), "XAI_API_KEY", true),
    openai_compatible(
        "fireworks_ai",
        Some("https://api.fireworks.ai/inference/v1"),
        "FIREWORKS_AI_API_KEY",
        true,
    ),
    openai_compatible(
        "deepinfra",
        Some("https://api.deepinfra.com/v1/openai"),
        "DEEPINFRA_API_KEY",
        true,
    ),
    openai_compatible(
        "cerebras",
        Some("https://api.cerebras.ai/v1"),
        "CEREBRAS_API_KEY",
        true,
    ),
    openai_compatible(
        "perplexity",
        Some("https://api.perplexity.ai"),
        "PERPLEXITYAI_API_KEY",
        true,
    ),
    openai_compatible(
        "nvidia_nim",
        Some("https://integrate.api.nvidia.com/v1"),
        "NVIDIA_NIM_API_KEY",
        true,
    ),
];

/// The provider a prefix names, if Purser serves it.
pub fn provider(prefix: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.prefix == prefix)
}

/// The served prefixes, for error messages.
pub fn served_prefixes() -> String {
    PROVIDERS
        .iter()
        .map(|p| format!("{}/", p.prefix))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Azure `api-version` a deployment uses: its own, else `AZURE_API_VERSION`, else the
/// reference's default.
pub const AZURE_DEFAULT_API_VERSION: &str = "2025-02-01-preview";

/// Whether an Azure `api_version` selects the v1 surface (`/openai/v1/…`, deployment in `model`)
/// rather than the dated one (`/openai/deployments/{deployment}/…?api-version=`).
pub fn azure_is_v1(api_version: &str) -> bool {
    matches!(api_version, "v1" | "latest" | "preview")
}

/// `s` percent-encoded as one URL path segment or query value (RFC 3986 unreserved kept).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path (and query) of an Azure OpenAI call below `api_base`, for an endpoint such as
/// `chat/completions`. The deployment name is percent-encoded as a path segment.
pub fn azure_path(deployment: &str, api_version: &str, endpoint: &str) -> String {
    if endpoint == "responses" && !azure_is_v1(api_version) {
        // The Responses API is not below a deployment: the body's `model` names it.
        return format!(
            "openai/responses?api-version={}",
            encode_component(api_version)
        );
    }
    if azure_is_v1(api_version) {
        if api_version == "v1" {
            format!("openai/v1/{endpoint}")
        } else {
            format!("openai/v1/{endpoint}?api-version={api_version}")
        }
    } else {
        format!(
            "openai/deployments/{}/{endpoint}?api-version={}",
            encode_component(deployment),
            encode_component(api_version)
        )
    }
}

/// The Messages endpoint below an Anthropic `api_base` (with or without a trailing `/v1`).
pub fn anthropic_messages_url(api_base: &str) -> String {
    let base = api_base.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

/// The `generateContent` (or streaming) endpoint of a Gemini model below `api_base`; the model
/// is percent-encoded as one path segment.
/// `{api_base}/models/{model}:{action}` (`batchEmbedContents`, Vertex's `predict`,
/// `rawPredict`). `@` stays as written: Vertex names model versions `claude-…@20250929`, and a
/// path segment may hold it (RFC 3986 `pchar`).
pub fn gemini_action_url(api_base: &str, model: &str, action: &str) -> String {
    format!(
        "{}/models/{}:{action}",
        api_base.trim_end_matches('/'),
        encode_component(model).replace("%40", "@")
    )
}

/// `{api_base}/model/{modelId}/{action}` of Bedrock's runtime (`converse`, `converse-stream`,
/// `invoke`): the model id, an inference profile or an ARN, percent-encoded whole as one
/// segment (`:` and `/` included), as AWS's SDKs send it.
pub fn bedrock_url(api_base: &str, model: &str, action: &str) -> String {
    format!(
        "{}/model/{}/{action}",
        api_base.trim_end_matches('/'),
        encode_component(model)
    )
}

pub fn gemini_url(api_base: &str, model: &str, stream: bool) -> String {
    let seg = encode_component(model);
    let base = api_base.trim_end_matches('/');
    if stream {
        format!("{base}/models/{seg}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/models/{seg}:generateContent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_is_listed_once_and_hosted_ones_have_a_base() {
        for (i, p) in PROVIDERS.iter().enumerate() {
            assert!(
                PROVIDERS[i + 1..].iter().all(|q| q.prefix != p.prefix),
                "{} twice",
                p.prefix
            );
            if p.key_required && p.wire != Wire::Azure {
                assert!(p.default_api_base.is_some(), "{} has no base", p.prefix);
            }
        }
        assert_eq!(
            provider("groq").unwrap().default_api_base,
            Some("https://api.groq.com/openai/v1")
        );
        assert_eq!(provider("azure").unwrap().wire, Wire::Azure);
        assert_eq!(provider("anthropic").unwrap().wire, Wire::Anthropic);
        assert_eq!(provider("bedrock").unwrap().wire, Wire::Bedrock);
        assert_eq!(
            bedrock_url(
                "https://bedrock-runtime.us-east-1.amazonaws.com/",
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "converse"
            ),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
        );
        assert_eq!(
            bedrock_url(
                "http://h",
                "arn:aws:bedrock:us-east-1:1:inference-profile/x",
                "invoke"
            ),
            "http://h/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/invoke"
        );
        assert_eq!(
            gemini_url("https://g/v1beta/", "gemini-2.5-flash", true),
            "https://g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            gemini_url("https://g", "a/b", false),
            "https://g/models/a%2Fb:generateContent"
        );
        assert!(provider("").is_none());
        assert!(served_prefixes().contains("together_ai/"));
    }

    #[test]
    fn azure_paths_follow_the_api_version() {
        assert_eq!(
            azure_path("gpt-4o-prod", "2024-10-21", "chat/completions"),
            "openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            azure_path("my dep/x", "2024-10-21", "embeddings"),
            "openai/deployments/my%20dep%2Fx/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            azure_path("d", "v1", "chat/completions"),
            "openai/v1/chat/completions"
        );
        assert_eq!(
            azure_path("d", "preview", "chat/completions"),
            "openai/v1/chat/completions?api-version=preview"
        );
        assert_eq!(
            azure_path("d", "2025-01-01&x=1", "chat/completions"),
            "openai/deployments/d/chat/completions?api-version=2025-01-01%26x%3D1"
        );
        assert!(azure_is_v1("latest") && !azure_is_v1("2024-10-21"));
        assert_eq!(
            anthropic_messages_url("https://api.anthropic.com/"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            anthropic_messages_url("http://h/proxy/v1"),
            "http://h/proxy/v1/messages"
        );
    }
}
