//! Who is calling and what they ask for: the caller's cached key, team, membership and user
//! (`CallContext`), model allow-lists and aliases (§7.2 steps 3, 9.2–9.5, §7.4), and the parsed
//! OpenAI request (`CallRequest`) and its prompt count. Invariant: reads memory only; a large
//! body is counted on tokio's blocking pool, never on an async worker.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::access::{self, ALL_TEAM_MODELS, NO_DEFAULT_MODELS};
use serde_json::Value;

use crate::app::AppState;
use crate::error::Error;
use crate::service::cache::{MemberEntry, TeamEntry};
use crate::service::caller::{Caller, MASTER_KEY_ALIAS};
use crate::store::keys::KeyRow;
use crate::store::users::UserRow;
use crate::upstream::CallKind;
use crate::upstream::tokens::TokenCounter;

/// Completion tokens assumed for a reservation when the client sets no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;
/// Bodies larger than this are counted on the blocking pool: the BPE counts 17–35 MB/s
/// (`bench/reports/tokens.md`), so a body this size costs a worker at most about 4 ms.
pub const BLOCKING_COUNT_BYTES: usize = 64 * 1024;

/// Everything governance needs about the caller, all from the cache.
pub struct CallContext {
    pub master: bool,
    pub key: Option<Arc<KeyRow>>,
    pub team: Option<Arc<TeamEntry>>,
    pub member: Option<Arc<MemberEntry>>,
    pub user: Option<Arc<UserRow>>,
}

impl CallContext {
    pub async fn load(state: &AppState, caller: &Caller) -> Result<CallContext, Error> {
        let Some(key) = caller.key.clone() else {
            return Ok(CallContext {
                master: caller.is_master,
                key: None,
                team: None,
                member: None,
                user: None,
            });
        };
        let team = match &key.team_id {
            Some(t) => match state.cache.team(&state.db, t).await? {
                Some(e) => Some(e),
                None => {
                    return Err(Error::auth(format!(
                        "Authentication Error, Team={t} does not exist. The key's team was deleted."
                    )));
                }
            },
            None => None,
        };
        let member = match (&key.team_id, &key.user_id) {
            (Some(t), Some(u)) => state.cache.member(&state.db, t, u).await?,
            _ => None,
        };
        let user = match &key.user_id {
            Some(u) => state.cache.user(&state.db, u).await?,
            None => None,
        };
        Ok(CallContext {
            master: false,
            key: Some(key),
            team,
            member,
            user,
        })
    }

    /// The key's allow-list with `all-team-models` resolved to the team's list.
    pub(super) fn key_models(&self) -> Vec<String> {
        let Some(k) = &self.key else {
            return vec![];
        };
        if k.models.0.iter().any(|m| m == ALL_TEAM_MODELS) {
            return self
                .team
                .as_ref()
                .map(|t| t.team.models.0.clone())
                .unwrap_or_default();
        }
        k.models.0.clone()
    }

    /// Team aliases first, then key aliases (reference §7.4).
    pub fn resolve_alias(&self, model: &str) -> String {
        let mut target = model.to_string();
        if let Some(t) = &self.team
            && let Some(v) = t.model_aliases.get(&target).and_then(Value::as_str)
        {
            target = v.to_string();
        }
        if let Some(k) = &self.key
            && let Some(v) = k.aliases.0.get(&target).and_then(Value::as_str)
        {
            target = v.to_string();
        }
        target
    }

    pub(super) fn member_budget_max(&self, now: DateTime<Utc>) -> Option<i64> {
        let b = self.member.as_ref()?.budget.as_ref()?;
        let mut max = b.max_budget?;
        if let (Some(inc), Some(exp)) = (b.temp_budget_increase, b.temp_budget_expiry)
            && exp > now
        {
            max = max.saturating_add(inc);
        }
        (max > 0).then_some(max)
    }

    pub(super) fn key_label(&self) -> String {
        match &self.key {
            Some(k) => k
                .key_alias
                .clone()
                .or_else(|| k.key_name.clone())
                .unwrap_or_else(|| "unknown".into()),
            None => MASTER_KEY_ALIAS.into(),
        }
    }
}

pub(super) fn allows(list: &[String], requested: &str, target: &str, state: &AppState) -> bool {
    let groups = state.models.access_groups();
    if list.iter().any(|m| m == ALL_TEAM_MODELS) {
        return true;
    }
    access::list_allows(list, requested, groups) || access::list_allows(list, target, groups)
}

pub(super) fn model_denied(kind: &str, model: &str) -> Error {
    Error::proxy(
        StatusCode::FORBIDDEN,
        kind,
        format!(
            "The requested model '{model}' is not available for this API key, or the model name is invalid. \
             Check the models available to you and try again."
        ),
    )
    .with_param("model")
}

/// Model names (public) this caller may call, in config order (`/v1/models`).
pub fn callable_models(state: &AppState, ctx: &CallContext) -> Vec<String> {
    state
        .models
        .names()
        .iter()
        .filter(|m| ctx.master || check_model_lists(state, ctx, m, m).is_ok())
        .cloned()
        .collect()
}

/// Steps 3, 9.2, 9.3 and 9.5 of §7.2 (without the blocked check), for one requested name and
/// its dispatched target.
pub(super) fn check_model_lists(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), Error> {
    check_key_models(state, ctx, requested, target)?;
    check_scope_models(state, ctx, requested, target)
}

pub(super) fn check_key_models(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), Error> {
    if ctx.key.is_some() && !allows(&ctx.key_models(), requested, target, state) {
        return Err(model_denied("key_model_access_denied", requested));
    }
    Ok(())
}

pub(super) fn check_scope_models(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), Error> {
    if let Some(t) = &ctx.team
        && !allows(&t.team.models.0, requested, target, state)
    {
        return Err(model_denied("team_model_access_denied", requested));
    }
    if let Some(b) = ctx.member.as_ref().and_then(|m| m.budget.as_ref())
        && !b.allowed_models.0.is_empty()
        && !allows(&b.allowed_models.0, requested, target, state)
    {
        return Err(model_denied("team_model_access_denied", requested));
    }
    if ctx.team.is_none()
        && let Some(u) = &ctx.user
    {
        let list = &u.models.0;
        if list.iter().any(|m| m == NO_DEFAULT_MODELS) || !allows(list, requested, target, state) {
            return Err(model_denied("user_model_access_denied", requested));
        }
    }
    Ok(())
}

/// A parsed OpenAI request.
/// Which API the client speaks (what its answer must look like).
#[derive(Debug, Clone, Default)]
pub enum Inbound {
    #[default]
    OpenAi,
    /// `/v1/messages`: the client's Messages request as sent (forwarded as is to Anthropic
    /// deployments; `body` holds its OpenAI translation for everything else).
    Anthropic(Box<MessagesRequest>),
}

/// A `/v1/messages` request as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct MessagesRequest {
    pub body: serde_json::Map<String, Value>,
    /// The client's `anthropic-beta` header, forwarded to Anthropic deployments.
    pub beta: Option<String>,
}

pub struct CallRequest {
    pub kind: CallKind,
    pub inbound: Inbound,
    pub body: serde_json::Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Prompt tokens as counted for the called group (`counted`); 0 until then.
    pub prompt_tokens: u64,
    pub max_completion: u64,
    /// Size of the JSON body received.
    pub body_bytes: usize,
    /// When the request was read (the gateway's overhead is measured from here).
    pub received: std::time::Instant,
    /// Units billed per unit (images asked for, characters to speak); 0 for token-priced calls.
    pub units: u64,
    /// The reference's per-request routing fields, taken out of the body (they are not the
    /// provider's parameters).
    pub routing: RequestRouting,
    /// `/v1/audio/transcriptions`: the uploaded file and the form's other fields.
    pub upload: Option<Arc<AudioUpload>>,
}

/// A multipart transcription request: the audio and every other form field in order (`body`
/// holds the text fields too, for governance and logs).
#[derive(Debug)]
pub struct AudioUpload {
    pub file: axum::body::Bytes,
    pub filename: String,
    pub content_type: Option<String>,
    pub fields: Vec<(String, String)>,
}

impl AudioUpload {
    /// The form for one attempt, with `model` set to the deployment's name for it.
    pub fn form(&self, model: &str) -> Result<reqwest::multipart::Form, Error> {
        let mut form = reqwest::multipart::Form::new().text("model", model.to_string());
        for (k, v) in &self.fields {
            if k != "model" {
                form = form.text(k.clone(), v.clone());
            }
        }
        let mut part =
            reqwest::multipart::Part::bytes(self.file.to_vec()).file_name(self.filename.clone());
        if let Some(ct) = &self.content_type {
            part = part.mime_str(ct).map_err(|_| {
                Error::proxy(
                    StatusCode::BAD_REQUEST,
                    "bad_request_error",
                    "file: the part's Content-Type is not a media type",
                )
                .with_param("file")
            })?;
        }
        Ok(form.part("file", part))
    }
}

/// Per-request routing (`timeout`, `stream_timeout`, `num_retries`, `fallbacks`,
/// `disable_fallbacks` in the body; `x-litellm-timeout`, `x-litellm-stream-timeout`,
/// `x-litellm-num-retries` headers, which win).
#[derive(Debug, Clone, Default)]
pub struct RequestRouting {
    pub timeout: Option<std::time::Duration>,
    pub stream_timeout: Option<std::time::Duration>,
    pub num_retries: Option<u32>,
    /// Model groups to fall back to instead of the configured ones (allow-lists still apply).
    pub fallbacks: Option<Vec<String>>,
    pub disable_fallbacks: bool,
}

/// Reads the per-request routing fields out of a body, or the 400 naming the bad one.
fn take_routing(body: &mut serde_json::Map<String, Value>) -> Result<RequestRouting, Error> {
    let bad = |field: &str, m: &str| {
        Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!("{field} {m}"),
        )
        .with_param(field)
    };
    let seconds = |field: &str, v: Value| -> Result<Option<std::time::Duration>, Error> {
        match v {
            Value::Null => Ok(None),
            v => v
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                .map(|s| Some(std::time::Duration::from_secs_f64(s)))
                .ok_or_else(|| {
                    bad(
                        field,
                        "must be a positive number of seconds (at most 86400)",
                    )
                }),
        }
    };
    let mut r = RequestRouting::default();
    if let Some(v) = body.remove("timeout") {
        r.timeout = seconds("timeout", v)?;
    }
    if let Some(v) = body.remove("stream_timeout") {
        r.stream_timeout = seconds("stream_timeout", v)?;
    }
    if let Some(v) = body.remove("num_retries").filter(|v| !v.is_null()) {
        r.num_retries = Some(
            v.as_u64()
                .filter(|n| *n <= 10)
                .ok_or_else(|| bad("num_retries", "must be an integer from 0 to 10"))?
                as u32,
        );
    }
    if let Some(v) = body.remove("fallbacks").filter(|v| !v.is_null()) {
        let list = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|m| m.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
            })
            .ok_or_else(|| {
                bad(
                    "fallbacks",
                    "must be a list of model names (per-fallback parameters are not supported)",
                )
            })?;
        r.fallbacks = Some(list);
    }
    if let Some(v) = body.remove("disable_fallbacks").filter(|v| !v.is_null()) {
        r.disable_fallbacks = v
            .as_bool()
            .ok_or_else(|| bad("disable_fallbacks", "must be a boolean"))?;
    }
    Ok(r)
}

impl RequestRouting {
    /// The reference's headers, over the body's fields.
    pub fn apply_headers(&mut self, headers: &axum::http::HeaderMap) -> Result<(), Error> {
        let bad = |name: &str, m: &str| {
            Error::proxy(
                StatusCode::BAD_REQUEST,
                "bad_request_error",
                format!("{name} {m}"),
            )
            .with_param(name)
        };
        let num = |name: &str| -> Result<Option<f64>, Error> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|n| n.is_finite())
                    .map(Some)
                    .ok_or_else(|| bad(name, "must be a number")),
            }
        };
        for (name, slot) in [
            ("x-litellm-timeout", &mut self.timeout),
            ("x-litellm-stream-timeout", &mut self.stream_timeout),
        ] {
            if let Some(s) = num(name)? {
                if !(s > 0.0 && s <= 86_400.0) {
                    return Err(bad(
                        name,
                        "must be a positive number of seconds (at most 86400)",
                    ));
                }
                *slot = Some(std::time::Duration::from_secs_f64(s));
            }
        }
        if let Some(n) = num("x-litellm-num-retries")? {
            if !((0.0..=10.0).contains(&n) && n.fract() == 0.0) {
                return Err(bad(
                    "x-litellm-num-retries",
                    "must be an integer from 0 to 10",
                ));
            }
            self.num_retries = Some(n as u32);
        }
        Ok(())
    }
}

/// The body as a JSON object, or the reference's 400.
fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, Error> {
    let bad = |m: &str| Error::proxy(StatusCode::BAD_REQUEST, "bad_request_error", m);
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(&format!("Invalid JSON in request body: {e}")))?;
    match v {
        Value::Object(body) => Ok(body),
        _ => Err(bad("Request body must be a JSON object")),
    }
}

impl CallRequest {
    pub fn parse(kind: CallKind, bytes: &[u8]) -> Result<CallRequest, Error> {
        let body = json_object(bytes)?;
        Self::from_body(kind, body, bytes.len())
    }

    /// [`CallRequest::parse`] with the reference's routing headers applied.
    pub fn parse_with_headers(
        kind: CallKind,
        bytes: &[u8],
        headers: &axum::http::HeaderMap,
    ) -> Result<CallRequest, Error> {
        let mut req = Self::parse(kind, bytes)?;
        req.routing.apply_headers(headers)?;
        Ok(req)
    }

    /// The attempt timeout at `dep`: the request's, else the deployment's.
    pub fn timeout_at(&self, dep: &crate::upstream::Deployment) -> std::time::Duration {
        self.routing.timeout.unwrap_or(dep.timeout)
    }

    /// The idle timeout between streamed chunks at `dep`: the request's, else the deployment's.
    pub fn stream_timeout_at(&self, dep: &crate::upstream::Deployment) -> std::time::Duration {
        self.routing.stream_timeout.unwrap_or(dep.stream_timeout)
    }

    /// An Anthropic Messages request (`/v1/messages`), checked and translated to OpenAI chat for
    /// governance and for deployments that are not Anthropic.
    pub fn parse_messages(bytes: &[u8], beta: Option<String>) -> Result<CallRequest, Error> {
        let mut req = Self::messages(json_object(bytes)?, bytes.len())?;
        if let Inbound::Anthropic(m) = &mut req.inbound {
            m.beta = beta;
        }
        Ok(req)
    }

    /// A `/v1/messages/count_tokens` request (a Messages request without `max_tokens`).
    pub fn parse_messages_to_count(
        bytes: &[u8],
        beta: Option<String>,
    ) -> Result<CallRequest, Error> {
        let mut original = json_object(bytes)?;
        original.entry("max_tokens").or_insert(Value::from(1));
        let mut req = Self::messages(original, bytes.len())?;
        if let Inbound::Anthropic(m) = &mut req.inbound {
            m.beta = beta;
        }
        Ok(req)
    }

    fn messages(
        original: serde_json::Map<String, Value>,
        body_bytes: usize,
    ) -> Result<CallRequest, Error> {
        let body = crate::upstream::anthropic::from_messages_request(&original).map_err(|u| {
            Error::proxy(
                StatusCode::BAD_REQUEST,
                "bad_request_error",
                format!("{}: {}", u.field, u.reason),
            )
            .with_param(&u.field)
        })?;
        let mut req = Self::from_body(CallKind::Chat, body, body_bytes)?;
        req.inbound = Inbound::Anthropic(Box::new(MessagesRequest {
            body: original,
            beta: None,
        }));
        Ok(req)
    }

    fn from_body(
        kind: CallKind,
        mut body: serde_json::Map<String, Value>,
        body_bytes: usize,
    ) -> Result<CallRequest, Error> {
        let routing = take_routing(&mut body)?;
        let bad = |m: &str| Error::proxy(StatusCode::BAD_REQUEST, "bad_request_error", m);
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => {
                return Err(bad(
                    "Invalid model name passed in model=None. Call `/v1/models` to view available models for your key.",
                )
                .with_param("model"));
            }
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("stream must be a boolean").with_param("stream")),
        };
        match kind {
            CallKind::Chat => {
                if body
                    .get("messages")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                {
                    return Err(bad("messages must be a non-empty list of chat messages")
                        .with_param("messages"));
                }
            }
            CallKind::Embeddings | CallKind::Responses => {
                if !body
                    .get("input")
                    .is_some_and(|i| i.is_string() || i.is_array())
                {
                    return Err(bad("input must be a string or a list").with_param("input"));
                }
            }
            CallKind::Completions => {
                if !body
                    .get("prompt")
                    .is_some_and(|i| i.is_string() || i.is_array())
                {
                    return Err(bad("prompt must be a string or a list").with_param("prompt"));
                }
            }
            CallKind::Moderations => {
                if !body
                    .get("input")
                    .is_some_and(|i| i.is_string() || i.is_array())
                {
                    return Err(bad("input must be a string or a list").with_param("input"));
                }
            }
            CallKind::Images => {
                if body
                    .get("prompt")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p.trim().is_empty())
                {
                    return Err(bad("prompt must be a non-empty string").with_param("prompt"));
                }
            }
            CallKind::Rerank => {
                if body
                    .get("query")
                    .and_then(Value::as_str)
                    .is_none_or(|q| q.trim().is_empty())
                {
                    return Err(bad("query must be a non-empty string").with_param("query"));
                }
                let docs_ok = body
                    .get("documents")
                    .and_then(Value::as_array)
                    .is_some_and(|d| {
                        !d.is_empty()
                            && d.iter().all(|x| {
                                x.is_string() || x.get("text").is_some_and(Value::is_string)
                            })
                    });
                if !docs_ok {
                    return Err(bad(
                        "documents must be a non-empty list of strings or {\"text\": …} objects",
                    )
                    .with_param("documents"));
                }
                if let Some(n) = body.get("top_n").filter(|v| !v.is_null())
                    && n.as_u64().is_none_or(|n| n == 0)
                {
                    return Err(bad("top_n must be a positive integer").with_param("top_n"));
                }
            }
            // Checked by `parse_transcription` (a multipart form, not JSON).
            CallKind::Transcription => {}
            CallKind::Speech => {
                if !body.get("input").is_some_and(Value::is_string) {
                    return Err(bad("input must be a string").with_param("input"));
                }
                if !body
                    .get("voice")
                    .is_some_and(|v| v.is_string() || v.is_object())
                {
                    return Err(bad("voice is required").with_param("voice"));
                }
            }
        }
        if stream
            && matches!(
                kind,
                CallKind::Embeddings
                    | CallKind::Moderations
                    | CallKind::Images
                    | CallKind::Speech
                    | CallKind::Rerank
                    | CallKind::Transcription
            )
        {
            return Err(bad(&format!(
                "{} cannot be streamed through this gateway",
                kind.route()
            ))
            .with_param("stream"));
        }
        let units = match kind {
            CallKind::Images => match body.get("n").filter(|v| !v.is_null()) {
                None => 1,
                Some(n) => n
                    .as_u64()
                    .filter(|n| (1..=10).contains(n))
                    .ok_or_else(|| bad("n must be an integer from 1 to 10").with_param("n"))?,
            },
            CallKind::Speech => body
                .get("input")
                .and_then(Value::as_str)
                .map_or(0, |t| t.chars().count() as u64),
            // One search unit per call (up to 100 documents, as Cohere counts).
            CallKind::Rerank => body
                .get("documents")
                .and_then(Value::as_array)
                .map_or(1, |d| d.len().div_ceil(100) as u64),
            _ => 0,
        };
        let cap = |names: &[&'static str]| -> Result<u64, Error> {
            let field = names
                .iter()
                .find_map(|n| body.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)));
            match field {
                None => Ok(DEFAULT_COMPLETION_ESTIMATE),
                Some((name, v)) => v.as_u64().ok_or_else(|| {
                    bad(&format!("{name} must be a non-negative integer")).with_param(name)
                }),
            }
        };
        let max_completion = match kind {
            CallKind::Embeddings
            | CallKind::Moderations
            | CallKind::Images
            | CallKind::Speech
            | CallKind::Rerank
            | CallKind::Transcription => 0,
            CallKind::Chat => cap(&["max_completion_tokens", "max_tokens"])?,
            CallKind::Completions => cap(&["max_tokens"])?,
            CallKind::Responses => cap(&["max_output_tokens"])?,
        };
        Ok(CallRequest {
            kind,
            inbound: Inbound::OpenAi,
            body,
            model,
            stream,
            prompt_tokens: 0,
            max_completion,
            body_bytes,
            received: std::time::Instant::now(),
            units,
            routing,
            upload: None,
        })
    }

    /// A `/v1/audio/transcriptions` upload (`multipart/form-data` with a `file` and a `model`),
    /// or the 400 naming what is wrong. Budget is reserved for the file's length (exact for WAV,
    /// pessimistic otherwise) as milliseconds of audio.
    pub async fn parse_transcription(
        bytes: axum::body::Bytes,
        headers: &axum::http::HeaderMap,
    ) -> Result<CallRequest, Error> {
        let bad = |m: &str, param: &str| {
            Error::proxy(StatusCode::BAD_REQUEST, "bad_request_error", m).with_param(param)
        };
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multer::parse_boundary(content_type).map_err(|_| {
            bad(
                "/v1/audio/transcriptions takes multipart/form-data (a file and a model)",
                "file",
            )
        })?;
        let body_bytes = bytes.len();
        let mut form = multer::Multipart::new(
            futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes) }),
            boundary,
        );
        let malformed = |e: multer::Error| bad(&format!("malformed multipart body: {e}"), "file");
        let mut file = None;
        let mut fields: Vec<(String, String)> = Vec::new();
        while let Some(field) = form.next_field().await.map_err(malformed)? {
            let name = field.name().unwrap_or("").to_string();
            if name == "file" {
                if file.is_some() {
                    return Err(bad("file: only one file may be sent", "file"));
                }
                let filename = field
                    .file_name()
                    .filter(|f| !f.is_empty())
                    .unwrap_or("audio")
                    .to_string();
                let ct = field.content_type().map(|m| m.to_string());
                let data = field.bytes().await.map_err(malformed)?;
                if data.is_empty() {
                    return Err(bad("file is empty", "file"));
                }
                file = Some((data, filename, ct));
            } else if !name.is_empty() {
                let text = field.text().await.map_err(malformed)?;
                fields.push((name, text));
            }
        }
        let Some((file, filename, content_type)) = file else {
            return Err(bad("file is required (the audio to transcribe)", "file"));
        };
        if let Some((_, v)) = fields.iter().find(|(k, _)| k == "stream")
            && v.trim() == "true"
        {
            return Err(bad(
                "stream is not supported on /v1/audio/transcriptions yet",
                "stream",
            ));
        }
        if let Some((_, f)) = fields.iter().find(|(k, _)| k == "response_format")
            && ![
                "json",
                "text",
                "srt",
                "verbose_json",
                "vtt",
                "diarized_json",
            ]
            .contains(&f.as_str())
        {
            return Err(bad(
                "response_format must be json, text, srt, verbose_json, vtt or diarized_json",
                "response_format",
            ));
        }
        let mut body = serde_json::Map::new();
        for (k, v) in &fields {
            if k != "stream" {
                body.insert(k.clone(), Value::String(v.clone()));
            }
        }
        let mut req = Self::from_body(CallKind::Transcription, body, body_bytes)?;
        req.routing.apply_headers(headers)?;
        req.units = crate::upstream::audio::reserve_ms(&file);
        fields.retain(|(k, _)| k != "stream");
        req.upload = Some(Arc::new(AudioUpload {
            file,
            filename,
            content_type,
            fields,
        }));
        Ok(req)
    }

    /// Prompt tokens of the whole request by each of `counters` (the largest, so a group whose
    /// deployments tokenize differently reserves for the costliest).
    pub fn count_prompt(&self, counters: &[TokenCounter]) -> u64 {
        counters
            .iter()
            .map(|c| match self.kind {
                CallKind::Chat => c.chat_prompt(&self.body),
                CallKind::Embeddings => self.body.get("input").map_or(0, |i| c.embedding_input(i)),
                CallKind::Completions => {
                    self.body.get("prompt").map_or(0, |i| c.embedding_input(i))
                }
                CallKind::Responses => c.responses_prompt(&self.body),
                CallKind::Moderations => self.body.get("input").map_or(0, |i| c.embedding_input(i)),
                CallKind::Rerank => {
                    let q = self
                        .body
                        .get("query")
                        .and_then(Value::as_str)
                        .map_or(0, |t| c.text(t));
                    let docs: u64 =
                        self.body
                            .get("documents")
                            .and_then(Value::as_array)
                            .map_or(0, |d| {
                                d.iter()
                                    .filter_map(|x| x.as_str().or_else(|| x.get("text")?.as_str()))
                                    .map(|t| c.text(t))
                                    .sum()
                            });
                    q + docs
                }
                // Billed by the audio's length (or the tokens the model reports).
                CallKind::Transcription => 0,
                CallKind::Images | CallKind::Speech => {
                    let field = if self.kind == CallKind::Images {
                        "prompt"
                    } else {
                        "input"
                    };
                    self.body
                        .get(field)
                        .and_then(Value::as_str)
                        .map_or(0, |t| c.text(t))
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// The request with `prompt_tokens` counted; bodies above `BLOCKING_COUNT_BYTES` are
    /// counted on the blocking pool.
    pub async fn counted(mut self, counters: Arc<[TokenCounter]>) -> Result<CallRequest, Error> {
        if self.body_bytes <= BLOCKING_COUNT_BYTES {
            self.prompt_tokens = self.count_prompt(&counters);
            return Ok(self);
        }
        tokio::task::spawn_blocking(move || {
            self.prompt_tokens = self.count_prompt(&counters);
            self
        })
        .await
        .map_err(Error::internal)
    }
}
