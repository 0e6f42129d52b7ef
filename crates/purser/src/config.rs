//! The LiteLLM-compatible `config.yaml`: `model_list`, `general_settings`, `litellm_settings`,
//! `router_settings`. Values written `os.environ/NAME` are read from the environment before
//! typing. Unknown keys are kept and logged as ignored, never fatal — except an alerting channel
//! Purser does not deliver to (`general_settings.alerting: [slack]`), which is refused. Invariant:
//! a `Config` that exists has passed [`Config::validate`]; the gateway never starts
//! half-configured.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use yaml_serde::Value;

/// A config problem, naming the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub model_list: Vec<ModelEntry>,
    pub general_settings: GeneralSettings,
    pub litellm_settings: LitellmSettings,
    pub router_settings: RouterSettings,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub model_name: String,
    pub litellm_params: LitellmParams,
    #[serde(default)]
    pub model_info: ModelInfo,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LitellmParams {
    /// `provider/model`, e.g. `openai/gpt-4o-mini`; the provider prefix selects the client.
    pub model: String,
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// Price of a prompt token read from the provider's cache (else the input price).
    #[serde(default)]
    pub cache_read_input_token_cost: Option<f64>,
    /// Price of a prompt token written to the provider's cache (else the input price).
    #[serde(default)]
    pub cache_creation_input_token_cost: Option<f64>,
    /// Price of one image made (`/v1/images/generations`).
    #[serde(default)]
    pub output_cost_per_image: Option<f64>,
    /// Price of one character of text spoken (`/v1/audio/speech`).
    #[serde(default)]
    pub input_cost_per_character: Option<f64>,
    /// Price of one search (`/v1/rerank`; Cohere's search units).
    #[serde(default)]
    pub input_cost_per_query: Option<f64>,
    /// Price of one second of audio transcribed (`/v1/audio/transcriptions`).
    #[serde(default)]
    pub input_cost_per_second: Option<f64>,
    /// When set, Purser answers itself with this text (offline quickstart, tests).
    #[serde(default)]
    pub mock_response: Option<String>,
    /// Whole-request timeout in seconds for non-streaming calls.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Idle timeout in seconds between streamed chunks.
    #[serde(default)]
    pub stream_timeout: Option<f64>,
    /// Seconds this deployment is skipped after failing (else `router_settings.cooldown_time`).
    #[serde(default)]
    pub cooldown_time: Option<f64>,
    /// Azure OpenAI `api-version` (`v1`, `latest`, `preview`: the v1 surface).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure OpenAI: an Entra ID bearer token, sent instead of `api-key`.
    #[serde(default)]
    pub azure_ad_token: Option<String>,
    /// Share of the group's calls under `simple-shuffle` (over `rpm`, then `tpm`).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Priority tier: the lowest `order` with a deployment available takes the call.
    #[serde(default)]
    pub order: Option<u32>,
    /// Calls this deployment serves at once; further calls go to others of the group.
    #[serde(default)]
    pub max_parallel_requests: Option<u64>,
    /// Vertex AI: the project (else `VERTEXAI_PROJECT`, else the key file's `project_id`).
    #[serde(default, alias = "vertex_ai_project")]
    pub vertex_project: Option<String>,
    /// Vertex AI: the region (else `VERTEXAI_LOCATION`, else `us-central1`; `global` too).
    #[serde(default, alias = "vertex_ai_location")]
    pub vertex_location: Option<String>,
    /// Vertex AI: a service-account key as JSON text, a mapping, or a file path (else the file
    /// `GOOGLE_APPLICATION_CREDENTIALS` names).
    #[serde(default, alias = "vertex_ai_credentials")]
    pub vertex_credentials: Option<Value>,
    /// Bedrock: AWS credentials (else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`), the region (else `AWS_REGION`, `AWS_DEFAULT_REGION`, `us-west-2`)
    /// and a runtime endpoint replacing `bedrock-runtime.{region}.amazonaws.com`.
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    #[serde(default)]
    pub aws_secret_access_key: Option<String>,
    #[serde(default)]
    pub aws_session_token: Option<String>,
    #[serde(default)]
    pub aws_region_name: Option<String>,
    #[serde(default)]
    pub aws_bedrock_runtime_endpoint: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub access_groups: Vec<String>,
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// The OpenAI model a deployment runs when its name does not say (Azure deployment names):
    /// picks the tokenizer its prompts are counted with.
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GeneralSettings {
    pub master_key: Option<String>,
    pub database_url: Option<String>,
    /// Seconds between batched spend writes (LiteLLM default 10).
    pub proxy_batch_write_at: Option<f64>,
    /// Bounds in seconds of the budget reset job's tick.
    pub proxy_budget_rescheduler_min_time: Option<f64>,
    pub proxy_budget_rescheduler_max_time: Option<f64>,
    pub disable_reset_budget: Option<bool>,
    pub disable_auto_add_proxy_admin_to_teams: Option<bool>,
    pub apply_user_budget_to_team_keys: Option<bool>,
    /// Fields team admins may change through `/team/update`.
    pub team_admin_editable_team_fields: Option<Vec<String>>,
    /// Request body limit in MiB (default 10).
    pub max_request_size_mb: Option<f64>,
    /// Purser: settled calls that may wait for the spend writer before new calls wait
    /// (backpressure; default 8192). See docs/reliability.md.
    pub spend_queue_capacity: Option<usize>,
    /// Purser: settled calls written per transaction (default 1000).
    pub spend_write_chunk_rows: Option<usize>,
    /// Seconds to receive a complete request head (default 10; see `server::Timeouts`).
    pub http_header_read_timeout: Option<f64>,
    /// Seconds allowed between two reads of a request body (default 60).
    pub http_body_read_timeout: Option<f64>,
    /// Seconds an idle kept-alive connection stays open (default 75).
    pub http_keepalive_timeout: Option<f64>,
    /// Alert channels. Purser implements `webhook` only; any other channel is a config error
    /// (an operator who asked for Slack must not believe alerts reach Slack).
    pub alerting: Option<Vec<String>>,
    /// Alert types to send (reference: absent = all). Budget alerts go out only when this is
    /// absent or lists `budget_alerts`.
    pub alert_types: Option<Vec<String>>,
    pub alerting_args: Option<AlertingArgs>,
    /// Purser: a cost map file in the reference's JSON format replacing the embedded one
    /// (`PURSER_MODEL_COST_MAP` when unset).
    pub model_cost_map: Option<String>,
    /// Purser: the webhook's URL (the reference reads only `WEBHOOK_URL`, which still applies
    /// when this is absent). May be `os.environ/NAME`.
    pub webhook_url: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Alerting channels Purser can deliver to.
pub const ALERTING_CHANNELS: &[&str] = &["webhook"];

/// Alert types Purser emits (the reference's names).
pub const EMITTED_ALERT_TYPES: &[&str] = &["budget_alerts"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AlertingArgs {
    /// Seconds a `budget_crossed` alert of one entity is not repeated (reference default 24 h).
    pub budget_alert_ttl: Option<f64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LitellmSettings {
    pub default_internal_user_params: Option<DefaultInternalUserParams>,
    #[serde(flatten)]
    pub routing: Routing,
    /// HTTP status of budget-exceeded errors (default 422).
    pub budget_exceeded_status_code: Option<u16>,
    pub max_internal_user_budget: Option<f64>,
    pub internal_user_budget_duration: Option<String>,
    /// `/metrics` only for proxy admins (and viewers) when true; public otherwise.
    pub require_auth_for_metrics_endpoint: Option<bool>,
    /// Per metric, the labels it keeps (`[{group, metrics: [...], include_labels: [...]}]`).
    pub prometheus_metrics_config: Option<Vec<PrometheusMetricsGroup>>,
    /// Whether metrics carry the request's `user` as `end_user` (off: cardinality).
    pub enable_end_user_cost_tracking_prometheus_only: Option<bool>,
    /// Purser: distinct keys (and end users) with their own label values before the rest read
    /// `other` (default 1000).
    pub prometheus_key_label_limit: Option<usize>,
    /// Logging callbacks. Metrics are always on (`prometheus` is accepted and changes nothing);
    /// any other callback is a config error: nothing would be sent to it.
    pub callbacks: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One entry of `litellm_settings.prometheus_metrics_config`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PrometheusMetricsGroup {
    pub group: Option<String>,
    pub metrics: Vec<String>,
    pub include_labels: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DefaultInternalUserParams {
    /// Teams any internal user may join by themselves as role `user`.
    pub available_teams: Vec<String>,
    pub user_role: Option<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RouterSettings {
    pub redis_host: Option<String>,
    pub redis_port: Option<u16>,
    pub redis_password: Option<String>,
    #[serde(flatten)]
    pub routing: Routing,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Failover settings, read from `router_settings` and (the reference accepts both)
/// `litellm_settings`; `router_settings` wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Routing {
    /// Retries within a model group for retryable failures (default 2).
    pub num_retries: Option<u32>,
    /// `[{"group": ["fallback", …]}]`, tried in order once retries are spent; key `*`: any group.
    pub fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    /// Used when `fallbacks` has no entry for the group.
    pub default_fallbacks: Option<Vec<String>>,
    /// Only for prompts too long for the model (not retried).
    pub context_window_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    /// Only for content-policy refusals (not retried).
    pub content_policy_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    /// Failures in a minute a deployment may have before it cools down (default 3).
    pub allowed_fails: Option<u32>,
    /// Seconds a failing deployment is skipped (default 5).
    pub cooldown_time: Option<f64>,
    /// Minimum seconds between retries (default 0).
    pub retry_after: Option<f64>,
    /// How a deployment of a group is chosen (default `simple-shuffle`).
    pub routing_strategy: Option<String>,
    /// Seconds a call may take at a deployment that sets no `timeout`.
    pub timeout: Option<f64>,
    /// Seconds between streamed chunks at a deployment that sets no `stream_timeout`.
    pub stream_timeout: Option<f64>,
    /// The overall default (reference: 6000 s); caps `timeout` when both are set.
    pub request_timeout: Option<f64>,
    /// The reference's switch for `order` and rpm/tpm filtering: Purser always checks both, so
    /// only `true` (or absent) is accepted.
    pub enable_pre_call_checks: Option<bool>,
    /// Retries per error class (`RateLimitErrorRetries: 3`…), over `num_retries`.
    pub retry_policy: Option<BTreeMap<String, u32>>,
    /// `retry_policy` per model group.
    pub model_group_retry_policy: Option<BTreeMap<String, BTreeMap<String, u32>>>,
    /// Failures per minute of one class a deployment may have before it cools down
    /// (`RateLimitErrorAllowedFails: 10`…), over `allowed_fails` and the at-once rules.
    pub allowed_fails_policy: Option<BTreeMap<String, u32>>,
}

/// The error classes of `retry_policy` (`<Class>Retries`) and `allowed_fails_policy`
/// (`<Class>AllowedFails`), the reference's names.
pub const ERROR_CLASSES: &[&str] = &[
    "BadRequestError",
    "AuthenticationError",
    "TimeoutError",
    "RateLimitError",
    "ContentPolicyViolationError",
    "InternalServerError",
    "ServiceUnavailableError",
    "NotFoundError",
];

/// The `routing_strategy` values (the reference's names).
pub const ROUTING_STRATEGIES: &[&str] = &[
    "simple-shuffle",
    "least-busy",
    "usage-based-routing",
    "usage-based-routing-v2",
    "latency-based-routing",
    "cost-based-routing",
];

impl Config {
    /// Reads, resolves `os.environ/` references, types and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses config text; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |key: String, problem: String| ConfigError {
            file: file.to_string(),
            key,
            problem,
        };
        let mut raw: Value =
            yaml_serde::from_str(text).map_err(|e| err("(document)".into(), e.to_string()))?;
        if raw.is_null() {
            raw = Value::Mapping(Default::default());
        }
        resolve_env(&mut raw, "").map_err(|(k, p)| err(k, p))?;
        let config: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." {
                    "(document)".into()
                } else {
                    path
                },
                e.into_inner().to_string(),
            )
        })?;
        config.validate().map_err(|(k, p)| err(k, p))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        self.validate_metrics()?;
        for (i, m) in self.model_list.iter().enumerate() {
            let at = |k: &str| format!("model_list[{i}].{k}");
            if m.model_name.trim().is_empty() {
                return Err((at("model_name"), "must not be empty".into()));
            }
            if m.litellm_params.model.trim().is_empty() {
                return Err((at("litellm_params.model"), "must not be empty".into()));
            }
            for (k, v) in [
                (
                    "litellm_params.input_cost_per_token",
                    m.litellm_params.input_cost_per_token,
                ),
                (
                    "litellm_params.output_cost_per_token",
                    m.litellm_params.output_cost_per_token,
                ),
                (
                    "litellm_params.cache_read_input_token_cost",
                    m.litellm_params.cache_read_input_token_cost,
                ),
                (
                    "litellm_params.cache_creation_input_token_cost",
                    m.litellm_params.cache_creation_input_token_cost,
                ),
                (
                    "litellm_params.output_cost_per_image",
                    m.litellm_params.output_cost_per_image,
                ),
                (
                    "litellm_params.input_cost_per_character",
                    m.litellm_params.input_cost_per_character,
                ),
                (
                    "litellm_params.input_cost_per_query",
                    m.litellm_params.input_cost_per_query,
                ),
                (
                    "model_info.input_cost_per_token",
                    m.model_info.input_cost_per_token,
                ),
                (
                    "model_info.output_cost_per_token",
                    m.model_info.output_cost_per_token,
                ),
            ] {
                if let Some(v) = v
                    && purser_core::money::price_per_token_pico(v).is_err()
                {
                    return Err((
                        at(k),
                        format!("must be a non-negative finite price, got {v}"),
                    ));
                }
            }
            for (k, v) in [
                ("litellm_params.timeout", m.litellm_params.timeout),
                (
                    "litellm_params.stream_timeout",
                    m.litellm_params.stream_timeout,
                ),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v > 0.0)
                {
                    return Err((
                        at(k),
                        format!("must be a positive number of seconds, got {v}"),
                    ));
                }
            }
            let unit_prices = [
                m.litellm_params.output_cost_per_image,
                m.litellm_params.input_cost_per_character,
                m.litellm_params.input_cost_per_query,
            ];
            if unit_prices.iter().filter(|p| p.is_some()).count() > 1 {
                return Err((
                    at("litellm_params"),
                    "a deployment makes images, speech or rankings: set one of output_cost_per_image, input_cost_per_character, input_cost_per_query".into(),
                ));
            }
            if m.model_name.matches('*').count() > 1 {
                return Err((
                    at("model_name"),
                    "a wildcard model_name takes one '*' (e.g. 'anthropic/*')".into(),
                ));
            }
            match m.litellm_params.model.matches('*').count() {
                0 => {}
                1 if m.model_name.contains('*') => {}
                _ => {
                    return Err((
                        at("litellm_params.model"),
                        "a '*' here stands for what the model_name's '*' matched: one, and only when the model_name has one".into(),
                    ));
                }
            }
            if m.litellm_params.mock_response.is_none() && !m.litellm_params.model.contains('/') {
                return Err((
                    at("litellm_params.model"),
                    format!(
                        "'{}' needs a provider prefix such as 'openai/'",
                        m.litellm_params.model
                    ),
                ));
            }
        }
        let g = &self.general_settings;
        if let Some(k) = &g.master_key
            && !k.starts_with("sk-")
        {
            return Err((
                "general_settings.master_key".into(),
                "must start with 'sk-'".into(),
            ));
        }
        for (k, v) in [
            (
                "general_settings.proxy_batch_write_at",
                g.proxy_batch_write_at,
            ),
            (
                "general_settings.proxy_budget_rescheduler_min_time",
                g.proxy_budget_rescheduler_min_time,
            ),
            (
                "general_settings.proxy_budget_rescheduler_max_time",
                g.proxy_budget_rescheduler_max_time,
            ),
            (
                "general_settings.max_request_size_mb",
                g.max_request_size_mb,
            ),
            (
                "general_settings.http_header_read_timeout",
                g.http_header_read_timeout,
            ),
            (
                "general_settings.http_body_read_timeout",
                g.http_body_read_timeout,
            ),
            (
                "general_settings.http_keepalive_timeout",
                g.http_keepalive_timeout,
            ),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err((k.into(), format!("must be a positive number, got {v}")));
            }
        }
        for (k, v) in [
            (
                "general_settings.spend_queue_capacity",
                g.spend_queue_capacity,
            ),
            (
                "general_settings.spend_write_chunk_rows",
                g.spend_write_chunk_rows,
            ),
        ] {
            if v == Some(0) {
                return Err((k.into(), "must be at least 1".into()));
            }
        }
        validate_alerting(g)?;
        self.validate_routing()?;
        if let (Some(min), Some(max)) = (
            g.proxy_budget_rescheduler_min_time,
            g.proxy_budget_rescheduler_max_time,
        ) && min > max
        {
            return Err((
                "general_settings.proxy_budget_rescheduler_max_time".into(),
                "must be >= min_time".into(),
            ));
        }
        if let Some(code) = self.litellm_settings.budget_exceeded_status_code
            && !(400..600).contains(&code)
        {
            return Err((
                "litellm_settings.budget_exceeded_status_code".into(),
                format!("must be an HTTP error status, got {code}"),
            ));
        }
        if let Some(d) = &self.litellm_settings.internal_user_budget_duration
            && let Err(e) = purser_core::budget::BudgetDuration::parse(d)
        {
            return Err((
                "litellm_settings.internal_user_budget_duration".into(),
                e.to_string(),
            ));
        }
        Ok(())
    }

    /// The failover settings in effect (`router_settings` over `litellm_settings`).
    pub fn routing(&self) -> Routing {
        let r = &self.router_settings.routing;
        let l = &self.litellm_settings.routing;
        Routing {
            num_retries: r.num_retries.or(l.num_retries),
            fallbacks: r.fallbacks.clone().or_else(|| l.fallbacks.clone()),
            default_fallbacks: r
                .default_fallbacks
                .clone()
                .or_else(|| l.default_fallbacks.clone()),
            context_window_fallbacks: r
                .context_window_fallbacks
                .clone()
                .or_else(|| l.context_window_fallbacks.clone()),
            content_policy_fallbacks: r
                .content_policy_fallbacks
                .clone()
                .or_else(|| l.content_policy_fallbacks.clone()),
            allowed_fails: r.allowed_fails.or(l.allowed_fails),
            cooldown_time: r.cooldown_time.or(l.cooldown_time),
            retry_after: r.retry_after.or(l.retry_after),
            routing_strategy: r
                .routing_strategy
                .clone()
                .or_else(|| l.routing_strategy.clone()),
            timeout: r.timeout.or(l.timeout),
            stream_timeout: r.stream_timeout.or(l.stream_timeout),
            request_timeout: r.request_timeout.or(l.request_timeout),
            enable_pre_call_checks: r.enable_pre_call_checks.or(l.enable_pre_call_checks),
            retry_policy: r.retry_policy.clone().or_else(|| l.retry_policy.clone()),
            model_group_retry_policy: r
                .model_group_retry_policy
                .clone()
                .or_else(|| l.model_group_retry_policy.clone()),
            allowed_fails_policy: r
                .allowed_fails_policy
                .clone()
                .or_else(|| l.allowed_fails_policy.clone()),
        }
    }

    /// Fallback lists name model groups of this config; times are non-negative.
    fn validate_routing(&self) -> Result<(), (String, String)> {
        let known = |g: &str| self.model_list.iter().any(|m| m.model_name == g);
        for (section, r) in [
            ("router_settings", &self.router_settings.routing),
            ("litellm_settings", &self.litellm_settings.routing),
        ] {
            for (name, lists) in [
                ("fallbacks", &r.fallbacks),
                ("context_window_fallbacks", &r.context_window_fallbacks),
                ("content_policy_fallbacks", &r.content_policy_fallbacks),
            ] {
                for (i, entry) in lists.iter().flatten().enumerate() {
                    for (from, to) in entry {
                        if from != "*" && !known(from) {
                            return Err((
                                format!("{section}.{name}[{i}]"),
                                format!("'{from}' is not a model_name of model_list"),
                            ));
                        }
                        if let Some(t) = to.iter().find(|t| !known(t)) {
                            return Err((
                                format!("{section}.{name}[{i}].{from}"),
                                format!("'{t}' is not a model_name of model_list"),
                            ));
                        }
                    }
                }
            }
            if let Some(t) = r.default_fallbacks.iter().flatten().find(|t| !known(t)) {
                return Err((
                    format!("{section}.default_fallbacks"),
                    format!("'{t}' is not a model_name of model_list"),
                ));
            }
            if let Some(st) = &r.routing_strategy
                && !ROUTING_STRATEGIES.contains(&st.as_str())
            {
                return Err((
                    format!("{section}.routing_strategy"),
                    format!(
                        "'{st}' is not a routing strategy this gateway has (one of: {})",
                        ROUTING_STRATEGIES.join(", ")
                    ),
                ));
            }
            let check_policy = |at: String,
                                policy: &BTreeMap<String, u32>,
                                suffix: &str,
                                extra: &[&str]|
             -> Result<(), (String, String)> {
                for k in policy.keys() {
                    let known = k
                        .strip_suffix(suffix)
                        .is_some_and(|c| ERROR_CLASSES.contains(&c))
                        || extra.contains(&k.as_str());
                    if !known {
                        return Err((
                            format!("{at}.{k}"),
                            format!(
                                "not a class this gateway tells apart (one of {}{suffix}{})",
                                ERROR_CLASSES.join(&format!("{suffix}, ")),
                                extra.iter().map(|e| format!(", {e}")).collect::<String>()
                            ),
                        ));
                    }
                }
                Ok(())
            };
            if let Some(p) = &r.retry_policy {
                check_policy(
                    format!("{section}.retry_policy"),
                    p,
                    "Retries",
                    &["DefaultRetries"],
                )?;
            }
            for (group, p) in r.model_group_retry_policy.iter().flatten() {
                if !known(group) {
                    return Err((
                        format!("{section}.model_group_retry_policy"),
                        format!("'{group}' is not a model_name of model_list"),
                    ));
                }
                check_policy(
                    format!("{section}.model_group_retry_policy.{group}"),
                    p,
                    "Retries",
                    &["DefaultRetries"],
                )?;
            }
            if let Some(p) = &r.allowed_fails_policy {
                check_policy(
                    format!("{section}.allowed_fails_policy"),
                    p,
                    "AllowedFails",
                    &[],
                )?;
            }
            if r.enable_pre_call_checks == Some(false) {
                return Err((
                    format!("{section}.enable_pre_call_checks"),
                    "Purser always filters deployments by rpm/tpm, parallel slots and order before a call; it cannot be turned off".into(),
                ));
            }
            for (k, v) in [
                ("timeout", r.timeout),
                ("stream_timeout", r.stream_timeout),
                ("request_timeout", r.request_timeout),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v > 0.0)
                {
                    return Err((
                        format!("{section}.{k}"),
                        format!("must be a positive number of seconds, got {v}"),
                    ));
                }
            }
            for (k, v) in [
                ("cooldown_time", r.cooldown_time),
                ("retry_after", r.retry_after),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err((
                        format!("{section}.{k}"),
                        format!("must be a non-negative number of seconds, got {v}"),
                    ));
                }
            }
        }
        for (i, m) in self.model_list.iter().enumerate() {
            if let Some(w) = m.litellm_params.weight
                && !(w.is_finite() && w >= 0.0)
            {
                return Err((
                    format!("model_list[{i}].litellm_params.weight"),
                    format!("must be a non-negative number, got {w}"),
                ));
            }
            if m.litellm_params.max_parallel_requests == Some(0) {
                return Err((
                    format!("model_list[{i}].litellm_params.max_parallel_requests"),
                    "must be at least 1".into(),
                ));
            }
            if let Some(v) = m.litellm_params.cooldown_time
                && !(v.is_finite() && v >= 0.0)
            {
                return Err((
                    format!("model_list[{i}].litellm_params.cooldown_time"),
                    format!("must be a non-negative number of seconds, got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// Every key the config carried that Purser does not act on, as dotted paths.
    pub fn ignored_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |prefix: &str, extra: &BTreeMap<String, Value>| {
            out.extend(extra.keys().map(|k| {
                if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                }
            }));
        };
        add("", &self.extra);
        add("general_settings", &self.general_settings.extra);
        add("litellm_settings", &self.litellm_settings.extra);
        add("router_settings", &self.router_settings.extra);
        if let Some(a) = &self.general_settings.alerting_args {
            add("general_settings.alerting_args", &a.extra);
        }
        if let Some(p) = &self.litellm_settings.default_internal_user_params {
            add("litellm_settings.default_internal_user_params", &p.extra);
        }
        for (i, m) in self.model_list.iter().enumerate() {
            add(&format!("model_list[{i}]"), &m.extra);
            add(
                &format!("model_list[{i}].litellm_params"),
                &m.litellm_params.extra,
            );
            add(&format!("model_list[{i}].model_info"), &m.model_info.extra);
        }
        out
    }

    pub fn available_teams(&self) -> &[String] {
        self.litellm_settings
            .default_internal_user_params
            .as_ref()
            .map(|p| p.available_teams.as_slice())
            .unwrap_or(&[])
    }

    pub fn budget_exceeded_status(&self) -> u16 {
        self.litellm_settings
            .budget_exceeded_status_code
            .unwrap_or(422)
    }

    /// Redis URL from `router_settings`, if configured there.
    pub fn redis_url(&self) -> Option<String> {
        let r = &self.router_settings;
        let host = r.redis_host.as_ref()?;
        let port = r.redis_port.unwrap_or(6379);
        Some(match &r.redis_password {
            Some(p) => format!("redis://:{p}@{host}:{port}"),
            None => format!("redis://{host}:{port}"),
        })
    }
}

impl Config {
    /// `prometheus_metrics_config` names metrics and labels that exist; `callbacks` only ones
    /// Purser delivers to.
    fn validate_metrics(&self) -> Result<(), (String, String)> {
        let l = &self.litellm_settings;
        for (i, c) in l.callbacks.iter().flatten().enumerate() {
            if c != "prometheus" {
                return Err((
                    format!("litellm_settings.callbacks[{i}]"),
                    format!(
                        "'{c}' is not supported (Purser serves Prometheus metrics at /metrics, always on; remove the callback)"
                    ),
                ));
            }
        }
        for (i, g) in l.prometheus_metrics_config.iter().flatten().enumerate() {
            let at = format!("litellm_settings.prometheus_metrics_config[{i}]");
            if let Some(k) = g.extra.keys().next() {
                return Err((
                    format!("{at}.{k}"),
                    "is not a field of a metrics group".into(),
                ));
            }
            for (j, m) in g.metrics.iter().enumerate() {
                let Some((_, labels)) = crate::metrics::LABELS.iter().find(|(n, _)| n == m) else {
                    return Err((
                        format!("{at}.metrics[{j}]"),
                        format!("'{m}' is not a metric Purser serves"),
                    ));
                };
                for (k, label) in g.include_labels.iter().enumerate() {
                    if !labels.contains(&label.as_str()) {
                        return Err((
                            format!("{at}.include_labels[{k}]"),
                            format!(
                                "'{label}' is not a label of {m} (its labels: {})",
                                labels.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if l.prometheus_key_label_limit == Some(0) {
            return Err((
                "litellm_settings.prometheus_key_label_limit".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The label bounds of `/metrics`.
    pub fn metrics_policy(&self) -> crate::metrics::LabelPolicy {
        let l = &self.litellm_settings;
        let mut include: std::collections::HashMap<String, Vec<String>> = Default::default();
        for g in l.prometheus_metrics_config.iter().flatten() {
            for m in &g.metrics {
                include.insert(m.clone(), g.include_labels.clone());
            }
        }
        crate::metrics::LabelPolicy {
            include,
            key_label_limit: l
                .prometheus_key_label_limit
                .unwrap_or(crate::metrics::DEFAULT_KEY_LABEL_LIMIT),
            end_user_labels: l.enable_end_user_cost_tracking_prometheus_only == Some(true),
        }
    }
}

/// `alerting` names only channels Purser delivers to, `alerting_args` values are usable and a
/// configured `webhook_url` is an http(s) URL. (Whether a webhook has a URL at all depends on
/// the environment too: `app::Settings::resolve` checks that.)
fn validate_alerting(g: &GeneralSettings) -> Result<(), (String, String)> {
    for (i, channel) in g.alerting.iter().flatten().enumerate() {
        if !ALERTING_CHANNELS.contains(&channel.as_str()) {
            return Err((
                format!("general_settings.alerting[{i}]"),
                format!(
                    "'{channel}' is not an alerting channel this gateway delivers to (supported: {}); \
                     remove it rather than expect alerts there",
                    ALERTING_CHANNELS.join(", ")
                ),
            ));
        }
    }
    if let Some(ttl) = g.alerting_args.as_ref().and_then(|a| a.budget_alert_ttl)
        && !(ttl.is_finite() && ttl > 0.0)
    {
        return Err((
            "general_settings.alerting_args.budget_alert_ttl".into(),
            format!("must be a positive number of seconds, got {ttl}"),
        ));
    }
    if let Some(url) = &g.webhook_url {
        parse_webhook_url(url).map_err(|p| ("general_settings.webhook_url".into(), p))?;
    }
    Ok(())
}

/// An http(s) webhook URL, or why not. The problem never repeats the URL (it may carry a token).
pub fn parse_webhook_url(url: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(u),
        Ok(u) => Err(format!(
            "must be an http:// or https:// URL with a host, got scheme '{}'",
            u.scheme()
        )),
        Err(e) => Err(format!("is not a valid URL: {e}")),
    }
}

/// Replaces every string `os.environ/NAME` with the variable's value; an unset variable is an
/// error naming the key that referenced it.
fn resolve_env(v: &mut Value, path: &str) -> Result<(), (String, String)> {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("os.environ/") {
                let value = std::env::var(name).map_err(|_| {
                    (
                        path.to_string(),
                        format!("environment variable {name} is not set"),
                    )
                })?;
                *s = value;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_env(item, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                resolve_env(item, &child)?;
            }
        }
        Value::Tagged(t) => resolve_env(&mut t.value, path)?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_litellm_config() {
        let text = r#"
model_list:
  - model_name: fake-gpt
    litellm_params:
      model: openai/fake
      api_base: http://127.0.0.1:1/v1
      api_key: sk-upstream
      rpm: 100
      input_cost_per_token: 0.000001
    model_info:
      access_groups: [beta]
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 1
  alerting: [webhook]
  alerting_args:
    budget_alert_ttl: 60
    daily_report_frequency: 3600
litellm_settings:
  budget_exceeded_status_code: 400
  default_internal_user_params:
    available_teams: [t1]
  drop_params: true
"#;
        let c = Config::parse(text, "x.yaml").unwrap();
        assert_eq!(c.model_list[0].litellm_params.rpm, Some(100));
        assert_eq!(c.available_teams(), ["t1".to_string()]);
        assert_eq!(c.budget_exceeded_status(), 400);
        let ignored = c.ignored_keys();
        assert!(!ignored.iter().any(|k| k == "general_settings.alerting"));
        assert!(
            ignored.contains(&"general_settings.alerting_args.daily_report_frequency".to_string())
        );
        assert!(ignored.contains(&"litellm_settings.drop_params".to_string()));
    }

    #[test]
    fn routing_settings_are_read_and_checked() {
        let models = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, mock_response: x}\n  \
                      - model_name: b\n    litellm_params: {model: openai/b, mock_response: x}\n";
        let c = Config::parse(
            &format!(
                "{models}router_settings:\n  num_retries: 1\n  fallbacks: [{{a: [b]}}]\n  cooldown_time: 2\n\
                 litellm_settings:\n  num_retries: 4\n  allowed_fails: 7\n"
            ),
            "c.yaml",
        )
        .unwrap();
        let r = c.routing();
        assert_eq!(r.num_retries, Some(1), "router_settings wins");
        assert_eq!(r.allowed_fails, Some(7), "litellm_settings fills in");
        assert_eq!(r.cooldown_time, Some(2.0));
        let ignored = c.ignored_keys();
        assert!(
            !ignored
                .iter()
                .any(|k| k.contains("num_retries") || k.contains("fallbacks")),
            "{ignored:?}"
        );
        for (yaml, key) in [
            (
                "router_settings:\n  fallbacks: [{a: [zzz]}]\n",
                "router_settings.fallbacks[0].a",
            ),
            (
                "router_settings:\n  fallbacks: [{zzz: [a]}]\n",
                "router_settings.fallbacks[0]",
            ),
            (
                "litellm_settings:\n  default_fallbacks: [zzz]\n",
                "litellm_settings.default_fallbacks",
            ),
            (
                "router_settings:\n  cooldown_time: -1\n",
                "router_settings.cooldown_time",
            ),
        ] {
            let e = Config::parse(&format!("{models}{yaml}"), "c.yaml").unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn spend_queue_sizes_must_be_positive() {
        for key in ["spend_queue_capacity", "spend_write_chunk_rows"] {
            let e =
                Config::parse(&format!("general_settings:\n  {key}: 0\n"), "c.yaml").unwrap_err();
            assert_eq!(e.key, format!("general_settings.{key}"));
            let e =
                Config::parse(&format!("general_settings:\n  {key}: -3\n"), "c.yaml").unwrap_err();
            assert!(e.key.contains(key), "{e}");
            assert!(Config::parse(&format!("general_settings:\n  {key}: 5\n"), "c.yaml").is_ok());
        }
    }

    #[test]
    fn alerting_refuses_what_it_cannot_deliver() {
        for (yaml, key, says) in [
            (
                "alerting: [slack]",
                "general_settings.alerting[0]",
                "'slack'",
            ),
            (
                "alerting: [webhook, email]",
                "general_settings.alerting[1]",
                "'email'",
            ),
            ("alerting: webhook", "general_settings.alerting", ""),
            (
                "alerting_args:\n    budget_alert_ttl: -5",
                "general_settings.alerting_args.budget_alert_ttl",
                "positive",
            ),
            (
                "webhook_url: ftp://hooks.example.com/x",
                "general_settings.webhook_url",
                "http",
            ),
            (
                "webhook_url: not a url",
                "general_settings.webhook_url",
                "valid URL",
            ),
        ] {
            let e = Config::parse(&format!("general_settings:\n  {yaml}\n"), "c.yaml").unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(e.problem.contains(says), "{yaml}: {e}");
        }
        let c = Config::parse(
            "general_settings:\n  alerting: [webhook]\n  webhook_url: https://h.example.com/hook?token=s3cret\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(
            c.general_settings.alerting,
            Some(vec!["webhook".to_string()])
        );
        assert!(Config::parse("general_settings:\n  alerting: []\n", "c.yaml").is_ok());
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      rpm: lots\n", "c.yaml")
            .unwrap_err();
        assert_eq!(e.file, "c.yaml");
        assert!(e.key.contains("rpm"), "{e}");
        let e = Config::parse(
            "general_settings:\n  master_key: os.environ/PURSER_TEST_SURELY_UNSET\n",
            "c.yaml",
        )
        .unwrap_err();
        assert_eq!(e.key, "general_settings.master_key");
        assert!(e.problem.contains("PURSER_TEST_SURELY_UNSET"));
        let e = Config::parse("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      input_cost_per_token: -1\n", "c.yaml")
            .unwrap_err();
        assert!(e.key.ends_with("input_cost_per_token"));
        assert!(Config::parse("general_settings: [", "c.yaml").is_err());
        assert!(Config::parse("", "c.yaml").is_ok());
    }
}
