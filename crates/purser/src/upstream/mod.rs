//! Deployments from `model_list` and the ONE pooled upstream client. Deployments are grouped by
//! `model_name`; a call takes a deployment of its group by the router's strategy, order tier and
//! per-deployment rpm/tpm/parallel room ([`Registry::pick_avoiding`]). Invariants: upstream
//! credentials (`api_key`, tokens) are private to this module and never appear in an error message
//! or a response; of `api_base` only scheme, host, port and path may be shown
//! (`x-litellm-model-api-base`); prices are converted once to pico-USD per token at startup, and
//! each deployment's token counter is chosen (and its BPE encoding loaded) at startup too.

pub mod anthropic;
pub mod audio;
pub mod bedrock;
pub mod cost_map;
pub mod gemini;
pub mod sse;
pub mod tokens;
pub mod vertex;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use purser_core::access::AccessGroups;
use purser_core::money::price_per_token_pico;
use purser_core::provider::{self, Provider, Wire};
use serde_json::Value;

use crate::config::Config;
use crate::error::Error;
use crate::limiter::WINDOW_SECS;
use tokens::TokenCounter;

/// The Messages API version Vertex AI serves Claude under (sent in the body).
const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Default whole-request timeout: 600 s, not the reference's 6000 s, which would let a stalled
/// client hold a stream's reservation and slot for 100 minutes (`request_timeout` changes it).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One upstream deployment of a model group.
pub struct Deployment {
    pub id: String,
    pub model_name: String,
    /// Provider prefix (`openai`) and the model sent upstream.
    pub provider: String,
    pub upstream_model: String,
    /// How requests are shaped (the provider's wire).
    wire: Wire,
    /// `api_base` from the config, else the provider's default (required for some).
    api_base: String,
    /// What of `api_base` a response may show (see [`Deployment::public_api_base`]).
    public_api_base: Option<String>,
    /// The key: `api_key`, else the provider's variable (see [`resolve_key`]).
    api_key: Option<String>,
    /// Azure: the `api-version`, and an Entra bearer token used instead of `api-key`.
    api_version: String,
    azure_ad_token: Option<String>,
    /// Vertex AI: the OAuth token source (the Gemini wire, authorized by a bearer token).
    vertex: Option<Arc<vertex::VertexAuth>>,
    /// Bedrock: SigV4 credentials and region, or an API key (every call is signed by `send_with`).
    bedrock: Option<Arc<bedrock::BedrockAuth>>,
    pub mock_response: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// `weight` (simple-shuffle's share), `order` (priority tier; unset: last) and
    /// `max_parallel_requests` (calls at once).
    weight: Option<f64>,
    order: u32,
    max_parallel: Option<u64>,
    /// Whether any price applies (config or cost map): cost-based routing ranks unpriced
    /// deployments last, as the reference does ($1 a token).
    priced: bool,
    /// Moving average of nanoseconds per produced token (0: not measured yet), for
    /// latency-based routing.
    latency_ns: AtomicU64,
    /// Whether `add_tokens` counts (a `tpm` limit, or usage-based routing reads the count).
    track_tokens: bool,
    /// All four prices, cache reads and writes included (`TokenPrices`).
    pub prices: purser_core::money::TokenPrices,
    pub timeout: Duration,
    pub stream_timeout: Duration,
    pub access_groups: Vec<String>,
    /// How this deployment's prompts are counted (reservations, billing without usage).
    pub tokens: TokenCounter,
    in_flight: AtomicU64,
    /// (window start, requests, tokens) for the deployment's own rpm/tpm.
    window: Mutex<(u64, u64, u64)>,
    /// `litellm_params.cooldown_time`, over the router's.
    cooldown: Option<Duration>,
    /// Unix ms until which the deployment is skipped.
    cooling_until: AtomicU64,
    /// (minute, failures in it, of them per error class of `config::ERROR_CLASSES`).
    fails: Mutex<(u64, u32, [u32; 8])>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("model_name", &self.model_name)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// Whether it answers in-process (`mock_response`).
    pub fn is_mock(&self) -> bool {
        self.mock_response.is_some()
    }

    /// True when calls cost nothing (free models skip budget checks, reference §7.2-5).
    pub fn is_free(&self) -> bool {
        self.prices.input == 0 && self.prices.output == 0 && self.prices.per_unit == 0
    }

    /// `api_base` as the `x-litellm-model-api-base` header shows it: scheme, host, port and path,
    /// never a user, password or query (where keys may sit). None for in-process mocks.
    pub fn public_api_base(&self) -> Option<&str> {
        self.public_api_base.as_deref()
    }

    /// Puts a Messages body in this deployment's form: the model named (Anthropic's API), or,
    /// for Claude on Vertex AI, no model (it is in the path) and Vertex's `anthropic_version`.
    pub fn shape_messages_body(&self, body: &mut serde_json::Map<String, Value>) {
        if self.vertex.is_some() {
            body.remove("model");
            body.insert(
                "anthropic_version".into(),
                Value::String(VERTEX_ANTHROPIC_VERSION.into()),
            );
        } else {
            body.remove("anthropic_version");
            body.insert("model".into(), Value::String(self.upstream_model.clone()));
        }
    }

    /// Whether it is a Vertex AI deployment (its embeddings speak `:predict`).
    pub fn is_vertex(&self) -> bool {
        self.vertex.is_some()
    }

    /// The provider wire this deployment speaks.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    fn url(&self, endpoint: &str, stream: bool) -> String {
        let base = self.api_base.trim_end_matches('/');
        match self.wire {
            Wire::Gemini if endpoint == "embeddings" => {
                // AI Studio batches inputs in one call; Vertex predicts over instances.
                let action = if self.vertex.is_some() {
                    "predict"
                } else {
                    "batchEmbedContents"
                };
                provider::gemini_action_url(base, &self.upstream_model, action)
            }
            Wire::Gemini => provider::gemini_url(base, &self.upstream_model, stream),
            Wire::Bedrock => provider::bedrock_url(
                base,
                &self.upstream_model,
                match (endpoint, stream) {
                    ("embeddings", _) => "invoke",
                    (_, true) => "converse-stream",
                    (_, false) => "converse",
                },
            ),
            Wire::OpenAi => format!("{base}/{endpoint}"),
            // Claude on Vertex: the model is in the path, the stream a different action.
            Wire::Anthropic if self.vertex.is_some() => provider::gemini_action_url(
                base,
                &self.upstream_model,
                if stream {
                    "streamRawPredict"
                } else {
                    "rawPredict"
                },
            ),
            Wire::Anthropic => provider::anthropic_messages_url(base),
            Wire::Azure => format!(
                "{base}/{}",
                provider::azure_path(&self.upstream_model, &self.api_version, endpoint)
            ),
        }
    }

    /// The request with this deployment's credentials: a Bearer key (OpenAI wire), or Azure's
    /// `api-key` header (an Entra token goes as Bearer instead).
    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.wire {
            Wire::OpenAi => match &self.api_key {
                Some(k) => req.bearer_auth(k),
                None => req,
            },
            Wire::Azure => match (&self.azure_ad_token, &self.api_key) {
                (Some(t), _) => req.bearer_auth(t),
                (None, Some(k)) => req.header("api-key", k),
                (None, None) => req,
            },
            // Vertex's bearer token is added by `send_with` (it may have to be fetched).
            Wire::Gemini => match &self.api_key {
                Some(k) => req.header("x-goog-api-key", k),
                None => req,
            },
            // Signed (or given its API key) by `send_with`, over the exact body bytes.
            Wire::Bedrock => req,
            // Vertex: the version goes in the body, the bearer token is added by `send_with`.
            Wire::Anthropic if self.vertex.is_some() => req,
            Wire::Anthropic => {
                let req = req.header("anthropic-version", anthropic::API_VERSION);
                match &self.api_key {
                    Some(k) => req.header("x-api-key", k),
                    None => req,
                }
            }
        }
    }

    /// Removes this deployment's secrets from upstream text: the key and token in any case and
    /// as partly masked copies, the api_base verbatim.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in [&self.api_key, &self.azure_ad_token].into_iter().flatten() {
            if !secret.is_empty() {
                out = purser_core::redact::secret(&out, secret);
            }
        }
        for secret in self.bedrock.iter().flat_map(|b| b.secrets()) {
            if !secret.is_empty() {
                out = purser_core::redact::secret(&out, &secret);
            }
        }
        if !self.api_base.is_empty() {
            out = out.replace(&self.api_base, "<redacted>");
        }
        out
    }

    fn now_window() -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        now - now % WINDOW_SECS
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Whether the deployment is cooling down after failures (skipped by the router).
    pub fn cooling(&self) -> bool {
        self.cooling_until.load(Ordering::Relaxed) > Self::now_ms()
    }

    /// Takes one request of the deployment's rpm and one of its parallel slots if its rpm/tpm
    /// window and `max_parallel_requests` have room (under the window's lock, so two callers
    /// cannot both take the last slot).
    fn try_take(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let start = Self::now_window();
        if w.0 != start {
            *w = (start, 0, 0);
        }
        if self.rpm.is_some_and(|r| w.1 >= r) || self.tpm.is_some_and(|t| w.2 >= t) {
            return false;
        }
        if self
            .max_parallel
            .is_some_and(|m| self.in_flight.load(Ordering::Acquire) >= m)
        {
            return false;
        }
        w.1 += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Tokens counted in the deployment's current minute (usage-based routing).
    fn minute_tokens(&self) -> u64 {
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0 == Self::now_window() { w.2 } else { 0 }
    }

    /// Folds one answered call into the latency average: `elapsed` over the tokens it produced.
    pub fn record_latency(&self, elapsed: Duration, produced_tokens: u64) {
        let sample = (elapsed.as_nanos() / u128::from(produced_tokens.max(1))) as u64;
        let old = self.latency_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            // The weight of the reference's 10-sample window, without keeping the samples.
            (old - old / 5 + sample / 5).max(1)
        };
        self.latency_ns.store(new, Ordering::Relaxed);
    }

    pub fn add_tokens(&self, tokens: u64) {
        if !self.track_tokens {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let start = Self::now_window();
        if w.0 != start {
            *w = (start, 0, 0);
        }
        w.2 = w.2.saturating_add(tokens);
    }
}

/// The deployments of a group: borrowed from the config's, or shared with the wildcard map.
enum Group<'a> {
    Fixed(&'a [Arc<Deployment>]),
    Built(Arc<Built>),
}

impl std::ops::Deref for Group<'_> {
    type Target = [Arc<Deployment>];
    fn deref(&self) -> &[Arc<Deployment>] {
        match self {
            Group::Fixed(d) => d,
            Group::Built(b) => &b.deps,
        }
    }
}

/// A deployment chosen for one call; dropping it frees its in-flight slot.
pub struct Slot(pub Arc<Deployment>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which OpenAI endpoint a call targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Chat,
    Embeddings,
    /// The legacy text completions (`/v1/completions`).
    Completions,
    /// OpenAI's Responses API (`/v1/responses`).
    Responses,
    /// `/v1/moderations`.
    Moderations,
    /// `/v1/images/generations` (billed per image made, or by its tokens).
    Images,
    /// `/v1/audio/speech` (billed per character spoken; the answer is audio).
    Speech,
    /// `/v1/rerank` (Cohere's shape; billed per search unit and by reported tokens).
    Rerank,
    /// `/v1/audio/transcriptions` (a multipart upload; billed per millisecond of audio, or by
    /// the tokens the model reports).
    Transcription,
}

impl CallKind {
    fn path(self) -> &'static str {
        match self {
            CallKind::Chat => "chat/completions",
            CallKind::Embeddings => "embeddings",
            CallKind::Completions => "completions",
            CallKind::Responses => "responses",
            CallKind::Moderations => "moderations",
            CallKind::Images => "images/generations",
            CallKind::Speech => "audio/speech",
            CallKind::Rerank => "rerank",
            CallKind::Transcription => "audio/transcriptions",
        }
    }

    /// The route a client calls, for messages.
    pub fn route(self) -> &'static str {
        match self {
            CallKind::Chat => "/v1/chat/completions",
            CallKind::Embeddings => "/v1/embeddings",
            CallKind::Completions => "/v1/completions",
            CallKind::Responses => "/v1/responses",
            CallKind::Moderations => "/v1/moderations",
            CallKind::Images => "/v1/images/generations",
            CallKind::Speech => "/v1/audio/speech",
            CallKind::Rerank => "/v1/rerank",
            CallKind::Transcription => "/v1/audio/transcriptions",
        }
    }

    /// The spend log's `call_type` (the reference's names).
    pub fn call_type(self) -> &'static str {
        match self {
            CallKind::Chat => "acompletion",
            CallKind::Embeddings => "aembedding",
            CallKind::Completions => "atext_completion",
            CallKind::Responses => "aresponses",
            CallKind::Moderations => "amoderation",
            CallKind::Images => "aimage_generation",
            CallKind::Speech => "aspeech",
            CallKind::Rerank => "arerank",
            CallKind::Transcription => "atranscription",
        }
    }
}

/// The models this gateway serves.
pub struct Registry {
    /// Model names in config order.
    names: Vec<String>,
    groups: HashMap<String, Vec<Arc<Deployment>>>,
    access_groups: AccessGroups,
    /// Per group, the distinct counters of its deployments (a call is counted before routing);
    /// shared, so a call takes them without allocating.
    counters: HashMap<String, Arc<[TokenCounter]>>,
    client: reqwest::Client,
    rr: AtomicUsize,
    policy: RouterPolicy,
    /// Wildcard groups, most specific first; the map that prices their concrete names (empty
    /// when there are none); the template deployments `/model/info` lists under the pattern.
    wildcards: Vec<Wildcard>,
    cost_map: cost_map::CostMap,
    listing: HashMap<String, Vec<Arc<Deployment>>>,
    /// Concrete names served through a wildcard so far (bounded by [`MAX_BUILT`]).
    built: dashmap::DashMap<String, Arc<Built>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn from_config(config: &Config) -> anyhow::Result<Registry> {
        Self::from_config_with_env(config, &|name| std::env::var(name).ok())
    }

    /// [`Registry::from_config`] reading provider variables (`GROQ_API_KEY`, `AZURE_API_VERSION`…)
    /// through `env`.
    pub fn from_config_with_env(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Registry> {
        let mut names = Vec::new();
        let mut groups: HashMap<String, Vec<Arc<Deployment>>> = HashMap::new();
        let mut access_groups = AccessGroups::new();
        let mut counters: HashMap<String, Vec<TokenCounter>> = HashMap::new();
        let mut listing: HashMap<String, Vec<Arc<Deployment>>> = HashMap::new();
        let policy = RouterPolicy::from_config(config);
        let map_path = config
            .general_settings
            .model_cost_map
            .clone()
            .or_else(|| env("PURSER_MODEL_COST_MAP"));
        let cost_map = match &map_path {
            Some(path) => cost_map::CostMap::from_file(path)?,
            None => cost_map::CostMap::embedded(),
        };
        let mut wildcards: Vec<Wildcard> = Vec::new();
        for (i, m) in config.model_list.iter().enumerate() {
            let p = &m.litellm_params;
            let (provider, mut upstream_model) = match p.model.split_once('/') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => ("openai".to_string(), p.model.clone()),
            };
            let at = format!("model_list[{i}].litellm_params");
            if provider == "bedrock" {
                // `bedrock/converse/<id>` forces Converse, which is how Purser calls every chat
                // model; `bedrock/invoke/<id>` (InvokeModel's per-model bodies) only for embeddings.
                if let Some(id) = upstream_model.strip_prefix("converse/") {
                    upstream_model = id.to_string();
                } else if let Some(id) = upstream_model.strip_prefix("invoke/") {
                    if bedrock::embed_family(id).is_none() {
                        anyhow::bail!(
                            "{at}.model: bedrock/invoke/ chat models are not supported; use bedrock/{id} or bedrock/converse/{id} (Converse)"
                        );
                    }
                    upstream_model = id.to_string();
                }
            }
            let conn = if p.mock_response.is_some() {
                Connection::default()
            } else {
                let Some(prov) = provider::provider(&provider) else {
                    anyhow::bail!(
                        "{at}.model: provider '{provider}' is not supported; served prefixes: {} \
                         (any OpenAI-compatible server works as 'openai/<model>' with api_base)",
                        provider::served_prefixes()
                    );
                };
                connection(prov, p, &at, env)?
            };
            let template = Template {
                index: i,
                entry: m.clone(),
                provider,
                upstream_model,
                conn,
            };
            if m.model_name.contains('*') {
                // Served for the concrete names it matches, built on first use (`Registry::built`).
                let listed = template.build(
                    &m.model_name,
                    &template.upstream_model,
                    &cost_map,
                    &policy,
                    false,
                )?;
                if !groups.contains_key(&m.model_name) {
                    names.push(m.model_name.clone());
                }
                listing
                    .entry(m.model_name.clone())
                    .or_default()
                    .push(Arc::new(listed));
                match wildcards.iter_mut().find(|w| w.pattern == m.model_name) {
                    Some(w) => w.templates.push(template),
                    None => wildcards.push(Wildcard {
                        pattern: m.model_name.clone(),
                        templates: vec![template],
                    }),
                }
                continue;
            }
            let dep = template.build(
                &m.model_name,
                &template.upstream_model,
                &cost_map,
                &policy,
                true,
            )?;
            let tokens = dep.tokens;
            for g in &dep.access_groups {
                access_groups
                    .entry(g.clone())
                    .or_default()
                    .insert(m.model_name.clone());
            }
            if !groups.contains_key(&m.model_name) {
                names.push(m.model_name.clone());
            }
            let group_counters: &mut Vec<TokenCounter> =
                counters.entry(m.model_name.clone()).or_default();
            if !group_counters.contains(&tokens) {
                group_counters.push(tokens);
            }
            groups
                .entry(m.model_name.clone())
                .or_default()
                .push(Arc::new(dep));
        }
        // The most specific pattern first (`anthropic/claude-*` before `anthropic/*` before `*`).
        wildcards.sort_by_key(|w| std::cmp::Reverse(w.pattern.len()));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .build()?;
        let registry = Registry {
            names,
            groups,
            access_groups,
            counters: counters.into_iter().map(|(k, v)| (k, v.into())).collect(),
            client,
            rr: AtomicUsize::new(0),
            policy,
            cost_map: if wildcards.is_empty() {
                cost_map::CostMap::default()
            } else {
                cost_map
            },
            wildcards,
            listing,
            built: dashmap::DashMap::new(),
        };
        // Loaded here, once per process, so no request pays for the tables.
        for counter in registry.bpe_counters() {
            counter.load();
            tracing::info!(
                encoding = counter.encoding(),
                "token counting with tiktoken"
            );
        }
        Ok(registry)
    }

    /// The distinct BPE counters of the configured deployments: a config of unknown or mock
    /// models has none, and loads no tables.
    fn bpe_counters(&self) -> Vec<TokenCounter> {
        let mut out: Vec<TokenCounter> = self
            .counters
            .values()
            .flat_map(|cs| cs.iter().copied())
            .filter(|c| c.encoding().is_some())
            .collect();
        out.sort_by_key(|c| c.encoding());
        out.dedup();
        out
    }

    /// Names of the BPE encodings this registry loaded.
    pub fn encodings(&self) -> Vec<&'static str> {
        self.bpe_counters()
            .into_iter()
            .filter_map(TokenCounter::encoding)
            .collect()
    }

    /// The counters a call of the group is counted with (one per distinct tokenizer of its
    /// deployments; the reservation takes the largest count).
    pub fn counters(&self, name: &str) -> Arc<[TokenCounter]> {
        if let Some(c) = self.counters.get(name) {
            return Arc::clone(c);
        }
        match self.built(name) {
            Ok(b) => Arc::clone(&b.counters),
            Err(_) => Arc::new([TokenCounter::Heuristic]),
        }
    }

    /// Public model names in config order (wildcard patterns as written).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether calls of `name` are served: a group, or a priced name a wildcard matches.
    pub fn contains(&self, name: &str) -> bool {
        self.groups.contains_key(name) || self.built(name).is_ok()
    }

    /// Why `name` is not served, when it is not.
    pub fn unserved(&self, name: &str) -> Option<Unserved> {
        if self.groups.contains_key(name) {
            return None;
        }
        self.built(name).err()
    }

    /// The deployments of a model as configured, for listings (`/model/info`): a wildcard's are
    /// its templates under the pattern.
    pub fn deployments(&self, name: &str) -> &[Arc<Deployment>] {
        self.groups
            .get(name)
            .or_else(|| self.listing.get(name))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The deployments a call of `name` may go to: its group, else those its wildcard built for
    /// it (none when it is not served).
    fn routable(&self, name: &str) -> Group<'_> {
        match self.groups.get(name) {
            Some(g) => Group::Fixed(g),
            None => match self.built(name) {
                Ok(b) => Group::Built(b),
                Err(_) => Group::Fixed(&[]),
            },
        }
    }

    /// The deployments of a concrete name a wildcard matches, built on first use. A name whose
    /// deployment would be unpriced is not served (a wildcard must not open a way around every
    /// budget); one the cost map prices, or a wildcard that sets prices, is.
    fn built(&self, name: &str) -> Result<Arc<Built>, Unserved> {
        if self.wildcards.is_empty() {
            return Err(Unserved::Unknown);
        }
        if let Some(b) = self.built.get(name) {
            return Ok(Arc::clone(b.value()));
        }
        let (w, part) = self
            .wildcards
            .iter()
            .find_map(|w| w.capture(name).map(|part| (w, part)))
            .ok_or(Unserved::Unknown)?;
        let mut deps = Vec::with_capacity(w.templates.len());
        let mut counters: Vec<TokenCounter> = Vec::new();
        for t in &w.templates {
            let upstream = t.upstream_model.replacen('*', part, 1);
            let Ok(dep) = t.build(name, &upstream, &self.cost_map, &self.policy, false) else {
                return Err(Unserved::Unknown);
            };
            if !dep.priced && !dep.is_mock() {
                return Err(Unserved::Unpriced(w.pattern.clone()));
            }
            if !counters.contains(&dep.tokens) {
                counters.push(dep.tokens);
            }
            deps.push(Arc::new(dep));
        }
        if self.built.len() >= MAX_BUILT {
            self.built.clear();
        }
        let b = Arc::new(Built {
            deps,
            counters: counters.into(),
        });
        // Two first calls racing keep one entry: both then use the same deployments.
        Ok(Arc::clone(
            self.built.entry(name.to_string()).or_insert(b).value(),
        ))
    }

    pub fn access_groups(&self) -> &AccessGroups {
        &self.access_groups
    }

    /// Whether every deployment of the group is free (free calls skip budget checks).
    pub fn is_free(&self, name: &str) -> bool {
        self.routable(name).iter().all(|d| d.is_free())
    }

    /// The highest per-unit price (image, character) of a group, for reservations.
    pub fn max_unit_price(&self, name: &str) -> i64 {
        self.routable(name)
            .iter()
            .map(|d| d.prices.per_unit)
            .max()
            .unwrap_or(0)
    }

    /// The highest (input, output) prices of a group, for pessimistic reservations.
    pub fn max_prices(&self, name: &str) -> (i64, i64) {
        self.routable(name).iter().fold((0, 0), |acc, d| {
            (acc.0.max(d.prices.input), acc.1.max(d.prices.output))
        })
    }

    /// The first Anthropic-wire deployment of a group (count_tokens asks it).
    pub fn anthropic_deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.routable(name)
            .iter()
            .find(|d| d.wire == Wire::Anthropic && !d.is_mock() && !d.cooling() && !d.is_vertex())
            .cloned()
    }

    /// Anthropic's own count of a Messages request (`/v1/messages/count_tokens` at the
    /// deployment, with its credentials and the client's `anthropic-beta`); `None` when it
    /// cannot be had (the caller then estimates). Ten seconds at most: it is a side question.
    pub async fn anthropic_count_tokens(
        &self,
        dep: &Deployment,
        body: &Value,
        beta: Option<&str>,
    ) -> Option<u64> {
        let url = format!(
            "{}/count_tokens",
            provider::anthropic_messages_url(&dep.api_base)
        );
        let mut req = dep
            .authorize(self.client.post(url).json(body))
            .timeout(Duration::from_secs(10));
        if let Some(b) = beta {
            req = req.header("anthropic-beta", b);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            tracing::debug!(deployment = %dep.id, status = resp.status().as_u16(), "count_tokens: the deployment did not count; estimating");
            return None;
        }
        resp.json::<Value>()
            .await
            .ok()?
            .get("input_tokens")?
            .as_u64()
    }

    /// The router's failover rules.
    pub fn policy(&self) -> &RouterPolicy {
        &self.policy
    }

    /// A deployment of the group for one call, by the router's strategy (see [`Strategy`]).
    pub fn pick(&self, name: &str) -> Option<Slot> {
        self.pick_avoiding(name, &[])
    }

    /// [`Registry::pick`] preferring deployments this call has not tried yet. Deployments cooling
    /// down are skipped; of the rest, the untried come first, then the lowest `order`; within
    /// one such tier the strategy chooses, and a deployment whose rpm, tpm or parallel slots
    /// are full passes the call to the next choice, then to the next tier.
    pub fn pick_avoiding(&self, name: &str, tried: &[String]) -> Option<Slot> {
        let group = self.routable(name);
        let deps: &[Arc<Deployment>] = &group;
        if let [only] = deps {
            // The common group of one: nothing to rank.
            return (!only.cooling() && only.try_take()).then(|| Slot(Arc::clone(only)));
        }
        let mut open: Vec<&Arc<Deployment>> = deps.iter().filter(|d| !d.cooling()).collect();
        let tier = |d: &Deployment| (tried.contains(&d.id), d.order);
        open.sort_by_key(|d| tier(d));
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        while let Some(first) = open.first() {
            let t = tier(first);
            let end = open.iter().position(|d| tier(d) != t).unwrap_or(open.len());
            let mut band: Vec<&Arc<Deployment>> = open.drain(..end).collect();
            while !band.is_empty() {
                let i = self.policy.strategy.choose(&band, start);
                let d = band.swap_remove(i);
                if d.try_take() {
                    return Some(Slot(Arc::clone(d)));
                }
            }
        }
        None
    }

    /// Whether the group has a deployment other than `id` that is not cooling down.
    pub fn others_healthy(&self, name: &str, id: &str) -> bool {
        self.routable(name)
            .iter()
            .any(|d| d.id != id && !d.cooling())
    }

    /// Counts a failed attempt against its deployment and cools it down when the reference's
    /// rules say so: at once for 401/403/404 and for a 429 in a group with other deployments;
    /// otherwise once its failures this minute exceed `allowed_fails`. The cooldown lasts the
    /// deployment's `cooldown_time`, else the upstream's `retry-after`, else the router's.
    pub fn record_failure(&self, dep: &Deployment, f: &Failure) {
        let class_limit = self.policy.allowed_fails_for(f);
        if class_limit.is_none()
            && matches!(
                f.class,
                FailureClass::Request | FailureClass::ContextWindow | FailureClass::ContentPolicy
            )
        {
            return;
        }
        let minute = Deployment::now_ms() / 60_000;
        let class_index = crate::config::ERROR_CLASSES
            .iter()
            .position(|c| *c == f.error_class())
            .unwrap_or(0);
        let (fails, class_fails) = {
            let mut w = dep.fails.lock().unwrap_or_else(|p| p.into_inner());
            if w.0 != minute {
                *w = (minute, 0, [0; 8]);
            }
            w.1 += 1;
            w.2[class_index] += 1;
            (w.1, w.2[class_index])
        };
        let cool = match class_limit {
            // A class with its own threshold follows only it (the reference's rule).
            Some(limit) => class_fails > limit,
            None => {
                let group_size = self.routable(&dep.model_name).len();
                let at_once = f.class == FailureClass::Deployment
                    || (f.status == Some(429) && group_size > 1);
                at_once || fails > self.policy.allowed_fails
            }
        };
        if cool {
            let d = dep
                .cooldown
                .or(f.retry_after.filter(|d| !d.is_zero()))
                .unwrap_or(self.policy.cooldown);
            if !d.is_zero() {
                dep.cooling_until.store(
                    Deployment::now_ms() + d.as_millis() as u64,
                    Ordering::Relaxed,
                );
                tracing::warn!(deployment = %dep.id, model = %dep.model_name, seconds = d.as_secs_f64(), "deployment cooling down after failures");
            }
        }
    }

    /// Sends a call upstream and returns the response once its headers arrived. Non-streaming
    /// calls are bounded by the deployment `timeout` as a whole (body included); streaming calls
    /// by `timeout` up to the headers and then by `stream_timeout` between chunks.
    pub async fn send(
        &self,
        dep: &Deployment,
        kind: CallKind,
        body: &Value,
        stream: bool,
        timeout: Duration,
    ) -> Result<reqwest::Response, Failure> {
        self.send_with(dep, kind, body, stream, &[], timeout).await
    }

    /// [`Registry::send`] with extra request headers (a client's `anthropic-beta`). `timeout`:
    /// the attempt's (the request's, else the deployment's).
    pub async fn send_with(
        &self,
        dep: &Deployment,
        kind: CallKind,
        body: &Value,
        stream: bool,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<reqwest::Response, Failure> {
        let url = dep.url(kind.path(), stream);
        let mut req = match &dep.bedrock {
            // SigV4 signs the exact bytes sent, so they are made here rather than by reqwest.
            Some(auth) => {
                let bytes = serde_json::to_vec(body).map_err(|e| Failure {
                    error: Error::internal(format!("cannot encode the request: {e}")),
                    class: FailureClass::Request,
                    retry_after: None,
                    status: None,
                })?;
                let signed = auth.headers(&url, &bytes).map_err(|e| Failure {
                    error: Error::proxy(
                        StatusCode::BAD_GATEWAY,
                        "api_error",
                        format!(
                            "litellm.APIError: Bedrock request for model={} not signed: {e}",
                            dep.model_name
                        ),
                    ),
                    class: FailureClass::Deployment,
                    retry_after: None,
                    status: None,
                })?;
                let mut r = self
                    .client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bytes);
                for (k, v) in signed {
                    r = r.header(k, v);
                }
                r
            }
            None => dep.authorize(self.client.post(url).json(body)),
        };
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send_request(dep, req, stream, timeout).await
    }

    /// A multipart upload (`/v1/audio/transcriptions`) to an OpenAI-wire or Azure deployment.
    pub async fn send_form(
        &self,
        dep: &Deployment,
        kind: CallKind,
        form: reqwest::multipart::Form,
        timeout: Duration,
    ) -> Result<reqwest::Response, Failure> {
        let req = dep.authorize(
            self.client
                .post(dep.url(kind.path(), false))
                .multipart(form),
        );
        self.send_request(dep, req, false, timeout).await
    }

    /// Sends a request built for `dep` (a Vertex token added first) and maps what comes back.
    async fn send_request(
        &self,
        dep: &Deployment,
        mut req: reqwest::RequestBuilder,
        stream: bool,
        timeout: Duration,
    ) -> Result<reqwest::Response, Failure> {
        if let Some(v) = &dep.vertex {
            match v.token(&self.client).await {
                Ok(t) => req = req.bearer_auth(&t.0),
                Err(e) => {
                    return Err(Failure {
                        error: Error::proxy(
                            StatusCode::BAD_GATEWAY,
                            "api_error",
                            format!(
                                "litellm.APIError: no Vertex AI access token for model={}: {}",
                                dep.model_name, e.message
                            ),
                        ),
                        class: if e.refused {
                            FailureClass::Deployment
                        } else {
                            FailureClass::Retryable
                        },
                        retry_after: None,
                        status: None,
                    });
                }
            }
        }
        if !stream {
            req = req.timeout(timeout);
        }
        let unanswered = |error: Error| Failure {
            error,
            class: FailureClass::Retryable,
            retry_after: None,
            status: None,
        };
        let resp = match tokio::time::timeout(timeout, req.send()).await {
            Err(_) => return Err(unanswered(timeout_error_after(dep, timeout))),
            Ok(Err(e)) if e.is_timeout() => {
                return Err(unanswered(timeout_error_after(dep, timeout)));
            }
            Ok(Err(e)) => return Err(unanswered(transport_error(dep, &e))),
            Ok(Ok(r)) => r,
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        Err(Failure {
            error: status_error(dep, status, &text),
            class: classify(status.as_u16(), &text),
            retry_after: after,
            status: Some(status.as_u16()),
        })
    }
}

/// Why an upstream call failed before it answered, for the router's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Connect errors, timeouts, 429, 5xx: retried, then fallbacks.
    Retryable,
    /// The prompt is too long for the model: `context_window_fallbacks`, never retried.
    ContextWindow,
    /// A content-policy refusal: `content_policy_fallbacks`, never retried.
    ContentPolicy,
    /// Upstream 401/403/404: the deployment is misconfigured; cooled down, general fallbacks.
    Deployment,
    /// Any other client error: the caller's request; answered as is.
    Request,
}

/// A failed upstream attempt: the error the caller gets if nothing else is tried.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub class: FailureClass,
    /// The upstream's `retry-after` / `retry-after-ms`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The upstream status (None: no answer).
    pub status: Option<u16>,
}

impl Failure {
    /// The reference's error class of this failure (the `retry_policy` / `allowed_fails_policy`
    /// key without its suffix; one of `config::ERROR_CLASSES`).
    pub fn error_class(&self) -> &'static str {
        if self.class == FailureClass::ContentPolicy {
            return "ContentPolicyViolationError";
        }
        match self.status {
            Some(401 | 403) => "AuthenticationError",
            Some(404) => "NotFoundError",
            Some(408) => "TimeoutError",
            Some(429) => "RateLimitError",
            Some(503) => "ServiceUnavailableError",
            Some(s) if s >= 500 => "InternalServerError",
            Some(_) => "BadRequestError",
            // No answer: timed out, or could not connect (answered 503 to the caller).
            None if self.error.status() == StatusCode::GATEWAY_TIMEOUT => "TimeoutError",
            None => "ServiceUnavailableError",
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        f.error
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(Duration::from_secs_f64))
}

fn classify(status: u16, body: &str) -> FailureClass {
    let lower = body.to_ascii_lowercase();
    match status {
        408 | 409 | 429 | 500..=599 => FailureClass::Retryable,
        401 | 403 | 404 => FailureClass::Deployment,
        400 | 413 | 422
            if lower.contains("context_length_exceeded")
                || lower.contains("maximum context length")
                || lower.contains("prompt is too long")
                || lower.contains("context window")
                || lower.contains("input is too long")
                || lower.contains("too many input tokens") =>
        {
            FailureClass::ContextWindow
        }
        400 if lower.contains("content_filter")
            || lower.contains("content_policy")
            || lower.contains("content management policy") =>
        {
            FailureClass::ContentPolicy
        }
        _ => FailureClass::Request,
    }
}

/// How one deployment is chosen among several of equal standing (`routing_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The reference's default: random, weighted by `weight`, else `rpm`, else `tpm`, else even.
    SimpleShuffle,
    /// Fewest calls in flight.
    LeastBusy,
    /// Fewest tokens this minute (`usage-based-routing`, `-v2`).
    UsageBased,
    /// Lowest moving average of time per produced token; unmeasured deployments first.
    LatencyBased,
    /// Cheapest input + output price per token; unpriced last.
    CostBased,
}

impl Strategy {
    /// The strategy a validated config names (`simple-shuffle` when none).
    pub fn from_name(name: Option<&str>) -> Strategy {
        match name {
            Some("least-busy") => Strategy::LeastBusy,
            Some("usage-based-routing" | "usage-based-routing-v2") => Strategy::UsageBased,
            Some("latency-based-routing") => Strategy::LatencyBased,
            Some("cost-based-routing") => Strategy::CostBased,
            _ => Strategy::SimpleShuffle,
        }
    }

    /// The index in `band` (not empty) of the deployment to try next; ties go round robin from
    /// `start`.
    fn choose(self, band: &[&Arc<Deployment>], start: usize) -> usize {
        let n = band.len();
        let lowest = |rank: &dyn Fn(&Deployment) -> u64| {
            (0..n)
                .map(|k| (start + k) % n)
                .min_by_key(|&i| rank(band[i]))
                .unwrap_or(0)
        };
        match self {
            Strategy::SimpleShuffle => {
                let share: fn(&Deployment) -> Option<f64> =
                    if band.iter().any(|d| d.weight.is_some()) {
                        |d| d.weight
                    } else if band.iter().any(|d| d.rpm.is_some()) {
                        |d| d.rpm.map(|r| r as f64)
                    } else {
                        |d| d.tpm.map(|t| t as f64)
                    };
                let weights: Vec<f64> = band.iter().map(|d| share(d).unwrap_or(0.0)).collect();
                let total: f64 = weights.iter().sum();
                if total.is_nan() || total <= 0.0 {
                    return fastrand::usize(..n);
                }
                let mut x = fastrand::f64() * total;
                for (i, w) in weights.iter().enumerate() {
                    if x < *w {
                        return i;
                    }
                    x -= w;
                }
                weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
            }
            Strategy::LeastBusy => lowest(&|d| d.in_flight.load(Ordering::Acquire)),
            Strategy::UsageBased => lowest(&|d| d.minute_tokens()),
            Strategy::LatencyBased => lowest(&|d| d.latency_ns.load(Ordering::Relaxed)),
            Strategy::CostBased => lowest(&|d| {
                if d.priced {
                    (d.prices.input.saturating_add(d.prices.output)) as u64
                } else {
                    u64::MAX
                }
            }),
        }
    }
}

/// The router's rules (`router_settings` / `litellm_settings`): choice, timeouts, failover.
#[derive(Debug, Clone)]
pub struct RouterPolicy {
    pub strategy: Strategy,
    /// Per attempt, for deployments that set none (`timeout`, capped by `request_timeout`).
    pub timeout: Duration,
    pub stream_timeout: Option<Duration>,
    pub num_retries: u32,
    pub allowed_fails: u32,
    pub cooldown: Duration,
    pub retry_after: Duration,
    fallbacks: HashMap<String, Vec<String>>,
    default_fallbacks: Vec<String>,
    context_window: HashMap<String, Vec<String>>,
    content_policy: HashMap<String, Vec<String>>,
    /// `retry_policy` (`RateLimitErrorRetries` → n) and `model_group_retry_policy`.
    retry_policy: BTreeMap<String, u32>,
    group_retry_policy: BTreeMap<String, BTreeMap<String, u32>>,
    /// `allowed_fails_policy` (`RateLimitErrorAllowedFails` → n).
    allowed_fails_policy: BTreeMap<String, u32>,
}

/// At most this many fallback groups per call (the reference's `max_fallbacks`).
pub const MAX_FALLBACKS: usize = 5;

impl RouterPolicy {
    fn from_config(config: &Config) -> RouterPolicy {
        let r = config.routing();
        let table = |lists: &Option<Vec<std::collections::BTreeMap<String, Vec<String>>>>| {
            let mut out: HashMap<String, Vec<String>> = HashMap::new();
            for entry in lists.iter().flatten() {
                for (from, to) in entry {
                    out.entry(from.clone())
                        .or_default()
                        .extend(to.iter().cloned());
                }
            }
            out
        };
        let secs = |v: Option<f64>| v.map(Duration::from_secs_f64);
        let timeout = match (secs(r.timeout), secs(r.request_timeout)) {
            (Some(t), Some(cap)) => t.min(cap),
            (t, cap) => t.or(cap).unwrap_or(DEFAULT_TIMEOUT),
        };
        RouterPolicy {
            strategy: Strategy::from_name(r.routing_strategy.as_deref()),
            timeout,
            stream_timeout: secs(r.stream_timeout),
            num_retries: r.num_retries.unwrap_or(2),
            allowed_fails: r.allowed_fails.unwrap_or(3),
            cooldown: Duration::from_secs_f64(r.cooldown_time.unwrap_or(5.0)),
            retry_after: Duration::from_secs_f64(r.retry_after.unwrap_or(0.0)),
            fallbacks: table(&r.fallbacks),
            default_fallbacks: r.default_fallbacks.clone().unwrap_or_default(),
            context_window: table(&r.context_window_fallbacks),
            content_policy: table(&r.content_policy_fallbacks),
            retry_policy: r.retry_policy.clone().unwrap_or_default(),
            group_retry_policy: r.model_group_retry_policy.clone().unwrap_or_default(),
            allowed_fails_policy: r.allowed_fails_policy.clone().unwrap_or_default(),
        }
    }

    /// Retries a failure in `group` gets: the group's `model_group_retry_policy` else
    /// `retry_policy` for its class (or their `DefaultRetries`); without an entry,
    /// `num_retries` for retryable failures and none for the rest.
    pub fn retries_for(&self, group: &str, f: &Failure) -> u32 {
        let table = self
            .group_retry_policy
            .get(group)
            .unwrap_or(&self.retry_policy);
        table
            .get(&format!("{}Retries", f.error_class()))
            .or_else(|| table.get("DefaultRetries"))
            .copied()
            .unwrap_or(if f.class == FailureClass::Retryable {
                self.num_retries
            } else {
                0
            })
    }

    /// `allowed_fails_policy`'s threshold for a failure's class, if it names one.
    fn allowed_fails_for(&self, f: &Failure) -> Option<u32> {
        self.allowed_fails_policy
            .get(&format!("{}AllowedFails", f.error_class()))
            .copied()
    }

    /// The groups a failure of `class` in `group` falls back to, in order.
    pub fn fallbacks(&self, group: &str, class: FailureClass) -> Vec<String> {
        let pick = |t: &HashMap<String, Vec<String>>| {
            t.get(group)
                .or_else(|| Self::wildcard_entry(t, group))
                .or_else(|| t.get("*"))
                .cloned()
                .unwrap_or_default()
        };
        let list = match class {
            FailureClass::Retryable | FailureClass::Deployment => {
                let l = pick(&self.fallbacks);
                if l.is_empty() {
                    self.default_fallbacks.clone()
                } else {
                    l
                }
            }
            FailureClass::ContextWindow => pick(&self.context_window),
            FailureClass::ContentPolicy => pick(&self.content_policy),
            FailureClass::Request => Vec::new(),
        };
        list.into_iter().filter(|g| g != group).collect()
    }

    /// Whether any fallback at all is configured for `group` (the hot path skips the rest).
    pub fn has_fallbacks(&self, group: &str) -> bool {
        [&self.fallbacks, &self.context_window, &self.content_policy]
            .iter()
            .any(|t| {
                t.contains_key(group)
                    || t.contains_key("*")
                    || Self::wildcard_entry(t, group).is_some()
            })
            || !self.default_fallbacks.is_empty()
    }

    /// The entry of a wildcard group (`anthropic/*`) that a concrete name it serves falls under.
    fn wildcard_entry<'t>(
        t: &'t HashMap<String, Vec<String>>,
        group: &str,
    ) -> Option<&'t Vec<String>> {
        t.iter()
            .filter(|(k, _)| k.as_str() != "*" && k.contains('*'))
            .find(|(k, _)| purser_core::access::wildcard_match(k, group))
            .map(|(_, v)| v)
    }

    /// How long to wait before retry number `n` (0-based) in a group: nothing while another
    /// healthy deployment remains; else the upstream's `retry-after` (up to 60 s), else
    /// exponential from 0.5 s up to 8 s; never less than `retry_after`.
    pub fn backoff(&self, n: u32, others_healthy: bool, upstream: Option<Duration>) -> Duration {
        let wait = if others_healthy {
            Duration::ZERO
        } else if let Some(d) = upstream.filter(|d| !d.is_zero() && *d <= Duration::from_secs(60)) {
            d
        } else {
            Duration::from_millis(500)
                .saturating_mul(1u32 << n.min(4))
                .min(Duration::from_secs(8))
        };
        wait.max(self.retry_after)
    }
}

/// A wildcard group (`model_name: "anthropic/*"`): its deployments for one concrete name are
/// built from these templates the first time the name is called.
struct Wildcard {
    pattern: String,
    templates: Vec<Template>,
}

impl Wildcard {
    /// The part of `name` the pattern's `*` stands for, if it matches.
    fn capture<'n>(&self, name: &'n str) -> Option<&'n str> {
        let (prefix, suffix) = self.pattern.split_once('*')?;
        let rest = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
        (!rest.is_empty()).then_some(rest)
    }
}

/// The deployments of one concrete name served through a wildcard, and their counters.
pub struct Built {
    deps: Vec<Arc<Deployment>>,
    counters: Arc<[TokenCounter]>,
}

/// Why a name is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Unserved {
    /// No group and no wildcard has it.
    Unknown,
    /// It matches this wildcard, but neither the deployment nor the cost map prices it: served,
    /// its calls would cost $0 and no budget would hold them.
    Unpriced(String),
}

/// Concrete names kept at once; past this the map starts over (their cooldowns and minute
/// windows are forgotten, nothing else).
const MAX_BUILT: usize = 4096;

/// One `model_list` entry, its provider and connection checked at start-up.
#[derive(Clone)]
struct Template {
    index: usize,
    entry: crate::config::ModelEntry,
    provider: String,
    /// The model as the config writes it (a wildcard's may hold `*`).
    upstream_model: String,
    conn: Connection,
}

impl Template {
    /// The deployment of `model_name` calling `upstream_model`, priced by its own prices, else
    /// the cost map's. `at_startup`: log how it is priced.
    fn build(
        &self,
        model_name: &str,
        upstream_model: &str,
        cost_map: &cost_map::CostMap,
        policy: &RouterPolicy,
        at_startup: bool,
    ) -> anyhow::Result<Deployment> {
        let (i, m, p) = (self.index, &self.entry, &self.entry.litellm_params);
        let provider = &self.provider;
        let own_in = p.input_cost_per_token.or(m.model_info.input_cost_per_token);
        let own_out = p
            .output_cost_per_token
            .or(m.model_info.output_cost_per_token);
        // A deployment that names no price is priced from the cost map; one that is in no
        // map costs $0, said loudly (budgets cannot limit it).
        let mut cache_read = p.cache_read_input_token_cost;
        let mut cache_write = p.cache_creation_input_token_cost;
        // Audio is billed per millisecond, so the per-second price is kept per millisecond.
        let mut per_unit = p
            .output_cost_per_image
            .or(p.input_cost_per_character)
            .or(p.input_cost_per_query)
            .or(p.input_cost_per_second.map(|s| s / 1000.0));
        let (own_in, own_out) = if own_in.is_none()
            && own_out.is_none()
            && per_unit.is_none()
            && p.mock_response.is_none()
        {
            match cost_map.lookup(provider, upstream_model, m.model_info.base_model.as_deref()) {
                Some((key, prices)) => {
                    if at_startup {
                        tracing::info!(model = %model_name, cost_map_key = %key, "deployment priced from the cost map");
                    }
                    cache_read = cache_read.or(prices.cache_read);
                    cache_write = cache_write.or(prices.cache_write);
                    per_unit = prices.per_unit;
                    (Some(prices.input), Some(prices.output))
                }
                None => {
                    if at_startup {
                        tracing::warn!(
                            model = %model_name,
                            "model_list[{i}] sets no prices and '{provider}/{upstream_model}' is not in the cost map: its calls cost $0 and budgets do not limit them (set input_cost_per_token / output_cost_per_token, or model_info.base_model)"
                        );
                    }
                    (None, None)
                }
            }
        } else {
            (own_in, own_out)
        };
        let price =
            |a: Option<f64>| -> anyhow::Result<i64> { Ok(price_per_token_pico(a.unwrap_or(0.0))?) };
        let timeout = p
            .timeout
            .map(Duration::from_secs_f64)
            .unwrap_or(policy.timeout);
        let tokens =
            TokenCounter::for_deployment(upstream_model, m.model_info.base_model.as_deref());
        let priced = own_in.is_some() || own_out.is_some() || per_unit.is_some();
        let conn = self.conn.clone();
        let dep = Deployment {
            id: m
                .model_info
                .id
                .clone()
                .unwrap_or_else(|| format!("{}-{i}", m.model_name)),
            model_name: model_name.to_string(),
            provider: provider.clone(),
            upstream_model: upstream_model.to_string(),
            wire: conn.wire,
            public_api_base: public_base(&conn.api_base),
            api_base: conn.api_base,
            api_key: conn.api_key,
            api_version: conn.api_version,
            azure_ad_token: conn.azure_ad_token,
            vertex: conn.vertex,
            bedrock: conn.bedrock,
            mock_response: p.mock_response.clone(),
            rpm: p.rpm,
            tpm: p.tpm,
            weight: p.weight,
            order: p.order.unwrap_or(u32::MAX),
            max_parallel: p.max_parallel_requests,
            priced,
            latency_ns: AtomicU64::new(0),
            track_tokens: p.tpm.is_some() || policy.strategy == Strategy::UsageBased,
            prices: purser_core::money::TokenPrices {
                input: price(own_in)?,
                output: price(own_out)?,
                cache_read: cache_read.map(|c| price(Some(c))).transpose()?,
                cache_write: cache_write.map(|c| price(Some(c))).transpose()?,
                per_unit: price(per_unit)?,
            },
            timeout,
            stream_timeout: p
                .stream_timeout
                .map(Duration::from_secs_f64)
                .or(policy.stream_timeout)
                .unwrap_or(timeout),
            access_groups: m.model_info.access_groups.clone(),
            tokens,
            in_flight: AtomicU64::new(0),
            window: Mutex::new((0, 0, 0)),
            cooldown: p.cooldown_time.map(Duration::from_secs_f64),
            cooling_until: AtomicU64::new(0),
            fails: Mutex::new((0, 0, [0; 8])),
        };
        Ok(dep)
    }
}

/// Where and how a deployment's calls go.
#[derive(Clone)]
struct Connection {
    wire: Wire,
    api_base: String,
    api_key: Option<String>,
    api_version: String,
    azure_ad_token: Option<String>,
    /// Vertex AI: the service account whose OAuth token authorizes each call.
    vertex: Option<Arc<vertex::VertexAuth>>,
    /// Bedrock: how each call is signed or authorized.
    bedrock: Option<Arc<bedrock::BedrockAuth>>,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            wire: Wire::OpenAi,
            api_base: String::new(),
            api_key: None,
            api_version: String::new(),
            azure_ad_token: None,
            vertex: None,
            bedrock: None,
        }
    }
}

/// Scheme, host, port and path of a URL (no userinfo, query or fragment); None if unparsable.
fn public_base(api_base: &str) -> Option<String> {
    let u = reqwest::Url::parse(api_base).ok()?;
    let host = u.host_str()?;
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!(
        "{}://{host}{port}{}",
        u.scheme(),
        u.path().trim_end_matches('/')
    ))
}

/// The key a deployment calls with: its `api_key`, else the provider's variable. An empty value
/// counts as none.
pub fn resolve_key(
    api_key: Option<&str>,
    prov: &Provider,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    api_key
        .map(str::to_string)
        .or_else(|| prov.key_env.and_then(env))
        .filter(|k| !k.is_empty())
}

/// A deployment's connection from its `litellm_params`, or a start-up error naming the field
/// (never its value: it may be a secret).
fn connection(
    prov: &Provider,
    p: &crate::config::LitellmParams,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Connection> {
    if prov.prefix == "vertex_ai" {
        return vertex_connection(p, at, env);
    }
    if prov.wire == Wire::Bedrock {
        return bedrock_connection(p, at, env);
    }
    for (k, set) in [
        ("aws_access_key_id", p.aws_access_key_id.is_some()),
        ("aws_secret_access_key", p.aws_secret_access_key.is_some()),
        ("aws_session_token", p.aws_session_token.is_some()),
        ("aws_region_name", p.aws_region_name.is_some()),
        (
            "aws_bedrock_runtime_endpoint",
            p.aws_bedrock_runtime_endpoint.is_some(),
        ),
    ] {
        if set {
            anyhow::bail!("{at}.{k}: only bedrock/ deployments take it");
        }
    }
    for (k, set) in [
        ("vertex_project", p.vertex_project.is_some()),
        ("vertex_location", p.vertex_location.is_some()),
        ("vertex_credentials", p.vertex_credentials.is_some()),
    ] {
        if set {
            anyhow::bail!("{at}.{k}: only vertex_ai/ deployments take it");
        }
    }
    let api_key = resolve_key(p.api_key.as_deref(), prov, env);
    let api_base = p
        .api_base
        .clone()
        .or_else(|| {
            (prov.wire == Wire::Azure)
                .then(|| env("AZURE_API_BASE"))
                .flatten()
        })
        .or_else(|| prov.default_api_base.map(str::to_string));
    let Some(api_base) = api_base.filter(|b| !b.is_empty()) else {
        anyhow::bail!(
            "{at}.api_base: required for '{}/' deployments{}",
            prov.prefix,
            if prov.wire == Wire::Azure {
                " (https://<resource>.openai.azure.com, or AZURE_API_BASE)"
            } else {
                ""
            }
        );
    };
    if reqwest::Url::parse(&api_base).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        anyhow::bail!("{at}.api_base: must be an http:// or https:// URL");
    }
    let mut c = Connection {
        wire: prov.wire,
        api_base,
        api_key,
        api_version: String::new(),
        azure_ad_token: None,
        vertex: None,
        bedrock: None,
    };
    if prov.wire == Wire::Azure {
        c.azure_ad_token = p.azure_ad_token.clone().filter(|t| !t.is_empty());
        c.api_version = p
            .api_version
            .clone()
            .or_else(|| env("AZURE_API_VERSION"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| provider::AZURE_DEFAULT_API_VERSION.to_string());
        if c.api_key.is_none() && c.azure_ad_token.is_none() {
            anyhow::bail!(
                "{at}: an Azure deployment needs api_key (or AZURE_API_KEY) or azure_ad_token"
            );
        }
    } else {
        if p.api_version.is_some() {
            anyhow::bail!("{at}.api_version: only Azure deployments take an api_version");
        }
        if p.azure_ad_token.is_some() {
            anyhow::bail!("{at}.azure_ad_token: only Azure deployments take an azure_ad_token");
        }
        if prov.key_required && c.api_key.is_none() && p.api_base.is_none() {
            anyhow::bail!(
                "{at}.api_key: '{}/' calls {} and need a key: set api_key (os.environ/NAME works) or {}",
                prov.prefix,
                prov.default_api_base.unwrap_or("the provider"),
                prov.key_env.unwrap_or("the provider's key variable")
            );
        }
    }
    Ok(c)
}

/// A Vertex AI deployment's connection: its service account (checked by signing once), project
/// and location, and the base URL they make (Gemini's wire; Claude models: Anthropic's). Errors name the field, never a secret.
fn vertex_connection(
    p: &crate::config::LitellmParams,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Connection> {
    // Claude models are Anthropic's publisher on Vertex, spoken in Anthropic's Messages API.
    let claude = p
        .model
        .trim_start_matches("vertex_ai/")
        .starts_with("claude");
    if p.api_key.is_some() {
        anyhow::bail!(
            "{at}.api_key: Vertex AI calls are authorized by vertex_credentials (a service-account key), not an api_key"
        );
    }
    let text = match &p.vertex_credentials {
        Some(yaml_serde::Value::String(s)) if s.trim_start().starts_with('{') => s.clone(),
        Some(yaml_serde::Value::String(path)) => std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("{at}.vertex_credentials: cannot read the key file: {e}")
        })?,
        Some(v @ yaml_serde::Value::Mapping(_)) => serde_json::to_string(v)
            .map_err(|_| anyhow::anyhow!("{at}.vertex_credentials: not a key file's fields"))?,
        Some(_) => {
            anyhow::bail!(
                "{at}.vertex_credentials: give the key as JSON text, a mapping or a file path"
            )
        }
        None => match env("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
            Some(path) => std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!("{at}: cannot read GOOGLE_APPLICATION_CREDENTIALS: {e}")
            })?,
            None => anyhow::bail!(
                "{at}.vertex_credentials: required (a service-account key; or set GOOGLE_APPLICATION_CREDENTIALS). Credentials from the metadata server are not supported yet"
            ),
        },
    };
    let (auth, key_project) = vertex::VertexAuth::from_json(&text)
        .map_err(|e| anyhow::anyhow!("{at}.vertex_credentials: {e}"))?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let Some(project) = nonempty(p.vertex_project.clone())
        .or_else(|| nonempty(env("VERTEXAI_PROJECT")))
        .or(nonempty(key_project))
    else {
        anyhow::bail!(
            "{at}.vertex_project: required (or VERTEXAI_PROJECT, or project_id in the key)"
        );
    };
    let location = nonempty(p.vertex_location.clone())
        .or_else(|| nonempty(env("VERTEXAI_LOCATION")))
        .unwrap_or_else(|| "us-central1".into());
    if !location
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        anyhow::bail!("{at}.vertex_location: '{location}' is not a region name");
    }
    let publisher = if claude { "anthropic" } else { "google" };
    let api_base = vertex::base_url(p.api_base.as_deref(), &project, &location, publisher);
    if reqwest::Url::parse(&api_base).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        anyhow::bail!("{at}.api_base: must be an http:// or https:// URL");
    }
    Ok(Connection {
        wire: if claude {
            Wire::Anthropic
        } else {
            Wire::Gemini
        },
        api_base,
        api_key: None,
        api_version: String::new(),
        azure_ad_token: None,
        vertex: Some(Arc::new(auth)),
        bedrock: None,
    })
}

/// AWS credential sources of the reference that Purser does not implement yet: refused, so a
/// deployment never silently signs with other credentials than the ones configured.
const BEDROCK_UNSUPPORTED_CREDENTIALS: &[&str] = &[
    "aws_profile_name",
    "aws_role_name",
    "aws_session_name",
    "aws_web_identity_token",
    "aws_sts_endpoint",
    "aws_external_id",
];

/// A Bedrock deployment's connection: its region and runtime endpoint, and its credentials —
/// a Bedrock API key (`api_key`, else `AWS_BEARER_TOKEN_BEDROCK`), else AWS keys from the config
/// (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`), else from the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`. Errors name the field.
fn bedrock_connection(
    p: &crate::config::LitellmParams,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Connection> {
    if let Some(k) = BEDROCK_UNSUPPORTED_CREDENTIALS
        .iter()
        .find(|k| p.extra.contains_key(**k))
    {
        anyhow::bail!(
            "{at}.{k}: not supported yet; give aws_access_key_id / aws_secret_access_key (and aws_session_token), the AWS_* environment variables, or a Bedrock api_key"
        );
    }
    for (k, set) in [
        ("api_version", p.api_version.is_some()),
        ("azure_ad_token", p.azure_ad_token.is_some()),
        ("vertex_project", p.vertex_project.is_some()),
        ("vertex_location", p.vertex_location.is_some()),
        ("vertex_credentials", p.vertex_credentials.is_some()),
    ] {
        if set {
            anyhow::bail!("{at}.{k}: not a Bedrock setting");
        }
    }
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    // The reference's default region when none is configured.
    let region = nonempty(p.aws_region_name.clone())
        .or_else(|| nonempty(env("AWS_REGION")))
        .or_else(|| nonempty(env("AWS_DEFAULT_REGION")))
        .unwrap_or_else(|| "us-west-2".into());
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        anyhow::bail!("{at}.aws_region_name: '{region}' is not a region name");
    }
    let api_base = nonempty(p.api_base.clone())
        .or_else(|| nonempty(p.aws_bedrock_runtime_endpoint.clone()))
        .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
    if reqwest::Url::parse(&api_base).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        anyhow::bail!("{at}.api_base: must be an http:// or https:// URL");
    }
    let key = nonempty(p.api_key.clone()).or_else(|| nonempty(env("AWS_BEARER_TOKEN_BEDROCK")));
    let auth = match key {
        Some(k) => bedrock::BedrockAuth::ApiKey(k),
        None => {
            let from_config = p.aws_access_key_id.is_some() || p.aws_secret_access_key.is_some();
            let (id, secret, token) = if from_config {
                (
                    nonempty(p.aws_access_key_id.clone()),
                    nonempty(p.aws_secret_access_key.clone()),
                    nonempty(p.aws_session_token.clone()),
                )
            } else {
                (
                    nonempty(env("AWS_ACCESS_KEY_ID")),
                    nonempty(env("AWS_SECRET_ACCESS_KEY")),
                    nonempty(p.aws_session_token.clone())
                        .or_else(|| nonempty(env("AWS_SESSION_TOKEN"))),
                )
            };
            match (id, secret) {
                (Some(id), Some(secret)) => {
                    bedrock::BedrockAuth::sigv4(&id, &secret, token, &region)
                }
                (None, Some(_)) => {
                    anyhow::bail!("{at}.aws_access_key_id: required with aws_secret_access_key")
                }
                (Some(_), None) => {
                    anyhow::bail!("{at}.aws_secret_access_key: required with aws_access_key_id")
                }
                (None, None) => anyhow::bail!(
                    "{at}: a Bedrock deployment needs credentials: aws_access_key_id and aws_secret_access_key (os.environ/NAME works), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a Bedrock api_key (AWS_BEARER_TOKEN_BEDROCK)"
                ),
            }
        }
    };
    Ok(Connection {
        wire: Wire::Bedrock,
        api_base,
        api_key: None,
        api_version: String::new(),
        azure_ad_token: None,
        vertex: None,
        bedrock: Some(Arc::new(auth)),
    })
}

/// 504: the upstream did not answer within the deployment's timeout.
pub fn timeout_error(dep: &Deployment) -> Error {
    timeout_error_after(dep, dep.timeout)
}

/// 504: the upstream did not answer within `after`.
pub fn timeout_error_after(dep: &Deployment, after: Duration) -> Error {
    Error::proxy(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "litellm.Timeout: Request to model={} timed out after {}s",
            dep.model_name,
            after.as_secs_f64()
        ),
    )
}

/// 503 (cannot connect) / 504 (timed out) / 502 (broken response) from a transport error. The
/// reqwest error text is not used: it embeds the URL.
pub fn transport_error(dep: &Deployment, e: &reqwest::Error) -> Error {
    if e.is_timeout() {
        return timeout_error(dep);
    }
    if e.is_connect() {
        return Error::proxy(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            format!(
                "litellm.ServiceUnavailableError: could not connect to the upstream of model={}",
                dep.model_name
            ),
        );
    }
    Error::proxy(
        StatusCode::BAD_GATEWAY,
        "api_connection_error",
        format!(
            "litellm.APIConnectionError: the upstream of model={} failed mid-response",
            dep.model_name
        ),
    )
}

/// Maps an upstream error status: client errors the caller can fix (400/404/413/422) and 429 pass
/// through with the upstream message (scrubbed); everything else (5xx, upstream auth) is 502.
fn status_error(dep: &Deployment, status: reqwest::StatusCode, body: &str) -> Error {
    let upstream_msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                // Bedrock's errors are `{"message": …}`.
                .or_else(|| bedrock::error_message(&v))
                .map(str::to_string)
        })
        .map(|m| dep.scrub(&m))
        .unwrap_or_default();
    let code = status.as_u16();
    let (out, kind) = match code {
        400 | 404 | 413 | 422 => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            "bad_request_error",
        ),
        429 => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        _ => (StatusCode::BAD_GATEWAY, "api_error"),
    };
    let mut message = format!(
        "litellm.APIError: upstream of model={} returned HTTP {code}",
        dep.model_name
    );
    if !upstream_msg.is_empty() {
        message.push_str(": ");
        message.push_str(&upstream_msg);
    }
    Error::proxy(out, kind, message)
}
