//! The request path of the OpenAI-compatible routes: governance checks in the reference's order
//! (§7.2), budget reservation, rate limits, deployment choice, the upstream call and settlement.
//!
//! Invariants:
//! - Once a key is warm every check reads memory only (cache entries for key, team, member,
//!   user; ledger counters; limiter windows): no database round trip on the hot path.
//! - A denial never reaches the upstream and books nothing.
//! - Model aliases (team then key) rewrite the model, but every allow-list must allow the
//!   requested name or the dispatched target — an alias never widens a list (fixes §10 #22).
//! - Every admitted call settles exactly once: non-streaming calls run in a spawned task so a
//!   client disconnect cannot cancel the accounting; streams settle from a drop guard, billing
//!   counted tokens when the upstream's usage never arrived.
//!
//! Documented choices: team budgets refuse at `spend >= max_budget` (the reference uses `>` for
//! teams only; `>=` matches keys and members). Streams ask the upstream for
//! `stream_options.include_usage` and forward every byte unchanged, so a client that did not
//! ask for usage also receives the final usage-only chunk (OpenAI clients ignore it). Rate-limit
//! and budget messages name a key by its alias or abbreviated name, never by its hash.
//! Load benchmark: not here (the lead adds it); the hot path does no database round trip once
//! the key, team, member and user are cached.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use purser_core::access::{self, ALL_TEAM_MODELS, NO_DEFAULT_MODELS};
use purser_core::money::{Nanos, cost_of};
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::limiter::{LimitKind, RateDenied, RateLimit};
use crate::service::cache::{MemberEntry, TeamEntry};
use crate::service::caller::{Caller, MASTER_KEY_ALIAS};
use crate::service::spend::{BudgetCheck, OverBudget, Reservation, SpendScope};
use crate::store::keys::KeyRow;
use crate::store::spend::SpendLogRow;
use crate::store::users::UserRow;
use crate::upstream::sse::{SseTap, Usage};
use crate::upstream::tokens::{count_messages, count_text, count_value};
use crate::upstream::{CallKind, Deployment, Slot};

/// Completion tokens assumed for a reservation when the client sets no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;

/// Everything governance needs about the caller, all from the cache.
pub struct CallContext {
    pub master: bool,
    pub key: Option<Arc<KeyRow>>,
    pub team: Option<Arc<TeamEntry>>,
    pub member: Option<Arc<MemberEntry>>,
    pub user: Option<Arc<UserRow>>,
}

impl CallContext {
    pub async fn load(state: &AppState, caller: &Caller) -> Result<CallContext, ApiError> {
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
                    return Err(ApiError::auth(format!(
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
    fn key_models(&self) -> Vec<String> {
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

    fn member_budget_max(&self, now: DateTime<Utc>) -> Option<i64> {
        let b = self.member.as_ref()?.budget.as_ref()?;
        let mut max = b.max_budget?;
        if let (Some(inc), Some(exp)) = (b.temp_budget_increase, b.temp_budget_expiry)
            && exp > now
        {
            max = max.saturating_add(inc);
        }
        (max > 0).then_some(max)
    }

    fn key_label(&self) -> String {
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

fn allows(list: &[String], requested: &str, target: &str, state: &AppState) -> bool {
    let groups = state.models.access_groups();
    if list.iter().any(|m| m == ALL_TEAM_MODELS) {
        return true;
    }
    access::list_allows(list, requested, groups) || access::list_allows(list, target, groups)
}

fn model_denied(kind: &str, model: &str) -> ApiError {
    ApiError::proxy(
        StatusCode::FORBIDDEN,
        kind,
        format!(
            "The requested model '{model}' is not available for this API key, or the model name is invalid. \
             Check the models available to you and try again."
        ),
    )
    .with_param("model")
}

/// Python-like float rendering for messages (`0.5`, `1e-05`).
fn usd(n: i64) -> String {
    let s = format!("{:?}", Nanos(n).to_usd());
    match s.split_once("e-") {
        Some((m, e)) if e.len() == 1 => format!("{m}e-0{e}"),
        _ => s,
    }
}

fn budget_error(state: &AppState, ctx: &CallContext, o: &OverBudget) -> ApiError {
    let (spend, max) = (usd(o.spend), usd(o.max));
    let msg = match &o.scope {
        SpendScope::Key(_) => format!(
            "Budget has been exceeded! Key={} Current cost: {spend}, Max budget: {max}",
            ctx.key_label()
        ),
        SpendScope::Team(t) => {
            format!("Budget has been exceeded! Team={t} Current cost: {spend}, Max budget: {max}")
        }
        SpendScope::Member { team_id, user_id } => format!(
            "Budget has been exceeded! User={user_id} in Team={team_id} Current cost: {spend}, Max budget: {max}"
        ),
        SpendScope::User(u) => {
            format!("ExceededBudget: User={u} over budget. Spend={spend}, Budget={max}")
        }
    };
    let status = StatusCode::from_u16(state.settings.budget_exceeded_status)
        .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    ApiError::proxy(status, "budget_exceeded", msg)
}

fn rate_error(d: &RateDenied) -> ApiError {
    let (kind, limit, remaining) = match d.kind {
        LimitKind::Requests => ("requests", d.limit_requests, d.remaining_requests),
        LimitKind::Tokens => ("tokens", d.limit_tokens, d.remaining_tokens),
    };
    let reset = Utc::now() + chrono::Duration::seconds(d.retry_after as i64);
    let mut e = ApiError::proxy(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
            "Rate limit exceeded for {}: {}. Limit type: {kind}. Current limit: {}, Remaining: {}. Limit resets at: {}",
            d.scope,
            d.id,
            limit.unwrap_or(0),
            remaining.unwrap_or(0),
            reset.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    );
    for (name, v) in [
        ("retry-after", Some(d.retry_after)),
        ("x-ratelimit-limit-requests", d.limit_requests),
        ("x-ratelimit-remaining-requests", d.remaining_requests),
        ("x-ratelimit-limit-tokens", d.limit_tokens),
        ("x-ratelimit-remaining-tokens", d.remaining_tokens),
    ] {
        if let Some(v) = v {
            e = e.with_header(header::HeaderName::from_static(name), HeaderValue::from(v));
        }
    }
    e
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
fn check_model_lists(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), ApiError> {
    check_key_models(state, ctx, requested, target)?;
    check_scope_models(state, ctx, requested, target)
}

fn check_key_models(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), ApiError> {
    if ctx.key.is_some() && !allows(&ctx.key_models(), requested, target, state) {
        return Err(model_denied("key_model_access_denied", requested));
    }
    Ok(())
}

fn check_scope_models(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), ApiError> {
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
pub struct CallRequest {
    pub kind: CallKind,
    pub body: serde_json::Map<String, Value>,
    pub model: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub max_completion: u64,
}

impl CallRequest {
    pub fn parse(kind: CallKind, bytes: &[u8]) -> Result<CallRequest, ApiError> {
        let bad = |m: &str| ApiError::proxy(StatusCode::BAD_REQUEST, "bad_request_error", m);
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(&format!("Invalid JSON in request body: {e}")))?;
        let Value::Object(body) = v else {
            return Err(bad("Request body must be a JSON object"));
        };
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
        let prompt_tokens = match kind {
            CallKind::Chat => match body.get("messages") {
                Some(m) if m.as_array().is_some_and(|l| !l.is_empty()) => count_messages(m),
                _ => {
                    return Err(bad("messages must be a non-empty list of chat messages")
                        .with_param("messages"));
                }
            },
            CallKind::Embeddings => match body.get("input") {
                Some(i) if i.is_string() || i.is_array() => count_value(i),
                _ => return Err(bad("input must be a string or a list").with_param("input")),
            },
        };
        if kind == CallKind::Embeddings && stream {
            return Err(bad("embeddings cannot be streamed").with_param("stream"));
        }
        let max_completion = match kind {
            CallKind::Embeddings => 0,
            CallKind::Chat => {
                let field = body
                    .get("max_completion_tokens")
                    .filter(|v| !v.is_null())
                    .or_else(|| body.get("max_tokens").filter(|v| !v.is_null()));
                match field {
                    None => DEFAULT_COMPLETION_ESTIMATE,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        bad("max_tokens must be a non-negative integer").with_param("max_tokens")
                    })?,
                }
            }
        };
        Ok(CallRequest {
            kind,
            body,
            model,
            stream,
            prompt_tokens,
            max_completion,
        })
    }
}

/// What a settled call books.
struct Meter {
    state: AppState,
    reservation: Option<Reservation>,
    slot: Slot,
    limits: Vec<RateLimit>,
    prompt_estimate: u64,
    log: SpendLogRow,
}

impl Meter {
    fn settle(&mut self, usage: Usage, status: &str) {
        let Some(res) = self.reservation.take() else {
            return;
        };
        let dep = &self.slot.0;
        let cost = cost_of(
            usage.prompt_tokens,
            usage.completion_tokens,
            dep.input_pico,
            dep.output_pico,
        );
        self.state.limiter.add_tokens(&self.limits, usage.total());
        dep.add_tokens(usage.total());
        let mut log = self.log.clone();
        log.spend = cost.0;
        log.prompt_tokens = usage.prompt_tokens as i64;
        log.completion_tokens = usage.completion_tokens as i64;
        log.total_tokens = usage.total() as i64;
        log.end_time = crate::store::now();
        log.status = status.to_string();
        res.settle(cost.0, log);
    }
}

/// Settles a stream exactly once: with the upstream usage if it arrived, else with the counted
/// prompt plus the counted text produced so far (disconnect, upstream failure).
struct StreamMeter {
    meter: Meter,
    tap: SseTap,
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        let usage = self.tap.usage.unwrap_or(Usage {
            prompt_tokens: self.meter.prompt_estimate,
            completion_tokens: self.tap.produced_tokens,
        });
        let status = if self.tap.done { "success" } else { "partial" };
        self.meter.settle(usage, status);
    }
}

/// Runs one OpenAI call through governance and dispatch.
pub async fn handle(
    state: AppState,
    caller: Caller,
    req: CallRequest,
) -> Result<Response, ApiError> {
    // Backpressure: wait while the spend writer is a full queue behind (bounded memory).
    state.ledger.admit().await;
    let ctx = CallContext::load(&state, &caller).await?;
    let requested = req.model.clone();
    let target = ctx.resolve_alias(&requested);
    let now = Utc::now();

    // 3. key model access
    if !ctx.master {
        check_key_models(&state, &ctx, &requested, &target)?;
    }
    if !state.models.contains(&target) {
        return Err(ApiError::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "Invalid model name passed in model={requested}. Call `/v1/models` to view available models for your key."
            ),
        )
        .with_param("model"));
    }
    let (in_price, out_price) = state.models.max_prices(&target);
    let free = in_price == 0 && out_price == 0;

    // Budget scopes (tracked always; capped where a limit applies).
    let key = ctx.key.clone();
    let mut member_check = None;
    let mut key_check = None;
    let mut team_check = None;
    let mut user_check = None;
    if let Some(k) = &key {
        key_check = Some(BudgetCheck {
            scope: SpendScope::Key(k.token.clone()),
            seed: k.spend,
            max: k.max_budget,
        });
        if let Some(m) = &ctx.member {
            member_check = Some(BudgetCheck {
                scope: SpendScope::Member {
                    team_id: m.membership.team_id.clone(),
                    user_id: m.membership.user_id.clone(),
                },
                seed: m.membership.spend,
                max: ctx.member_budget_max(now),
            });
        }
        if let Some(t) = &ctx.team {
            team_check = Some(BudgetCheck {
                scope: SpendScope::Team(t.team.team_id.clone()),
                seed: t.team.spend,
                max: t.team.max_budget,
            });
        }
        if let Some(u) = &ctx.user {
            let applies = ctx.team.is_none()
                || state
                    .config
                    .general_settings
                    .apply_user_budget_to_team_keys
                    .unwrap_or(false);
            user_check = Some(BudgetCheck {
                scope: SpendScope::User(u.user_id.clone()),
                seed: u.spend,
                max: if applies { u.max_budget } else { None },
            });
        }
    }
    let first: Vec<BudgetCheck> = [member_check.clone(), key_check.clone()]
        .into_iter()
        .flatten()
        .collect();
    let later: Vec<BudgetCheck> = [team_check.clone(), user_check.clone()]
        .into_iter()
        .flatten()
        .collect();

    // 6 + 8. member and key budgets
    if !free && let Some(o) = state.ledger.first_exhausted(&first) {
        return Err(budget_error(&state, &ctx, &o));
    }
    // 9.1 team blocked
    if let Some(t) = &ctx.team
        && t.team.blocked
    {
        return Err(ApiError::auth(format!(
            "Authentication Error, Team={} is blocked. Update via `/team/unblock` if you're an admin.",
            t.team.team_id
        ))
        .with_param("None"));
    }
    // 9.2, 9.3, 9.5 team / member / user model access
    if !ctx.master {
        check_scope_models(&state, &ctx, &requested, &target)?;
    }
    // 9.6 team and user budgets
    if !free && let Some(o) = state.ledger.first_exhausted(&later) {
        return Err(budget_error(&state, &ctx, &o));
    }
    // 10. reservation (atomic across every scope)
    let estimate = cost_of(req.prompt_tokens, req.max_completion, in_price, out_price).0;
    let all: Vec<BudgetCheck> = first.into_iter().chain(later).collect();
    let reservation = state
        .ledger
        .reserve(&all, estimate, !free)
        .map_err(|o| budget_error(&state, &ctx, &o))?;
    // 11. rate limits
    let limits = rate_limits(&ctx);
    state.limiter.acquire(&limits).map_err(|d| rate_error(&d))?;
    // 12. routing
    let Some(slot) = state.models.pick(&target) else {
        // No deployment took the call: it must not count against the caller's RPM.
        state.limiter.refund(&limits);
        return Err(ApiError::proxy(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "No deployments available for selected model={target}. All deployments are at their rpm/tpm limit."
            ),
        ));
    };

    let start = crate::store::now();
    let log = SpendLogRow {
        request_id: uuid::Uuid::new_v4().to_string(),
        call_type: match req.kind {
            CallKind::Chat => "acompletion".into(),
            CallKind::Embeddings => "aembedding".into(),
        },
        api_key: caller.api_key_hash().to_string(),
        spend: 0,
        total_tokens: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        start_time: start,
        end_time: start,
        model: slot.0.upstream_model.clone(),
        model_id: Some(slot.0.id.clone()),
        model_group: Some(target.clone()),
        custom_llm_provider: Some(slot.0.provider.clone()),
        api_base: None,
        user_id: key
            .as_ref()
            .map(|k| k.user_id.clone())
            .unwrap_or(caller.user_id.clone()),
        team_id: key.as_ref().and_then(|k| k.team_id.clone()),
        end_user: req
            .body
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_string),
        status: "success".into(),
        metadata: sqlx::types::Json(json!({
            "user_api_key_alias": key.as_ref().and_then(|k| k.key_alias.clone()),
            "requested_model": requested,
        })),
    };
    let meter = Meter {
        state: state.clone(),
        reservation: Some(reservation),
        slot,
        limits,
        prompt_estimate: req.prompt_tokens,
        log,
    };
    // Spawned: a client disconnect drops the handler, not the accounting.
    tokio::spawn(dispatch(state, meter, req, requested))
        .await
        .map_err(ApiError::internal)?
}

fn rate_limits(ctx: &CallContext) -> Vec<RateLimit> {
    let u = |v: Option<i64>| v.and_then(|x| u64::try_from(x).ok());
    let mut out = Vec::new();
    if let Some(k) = &ctx.key {
        out.push(RateLimit {
            scope: "api_key",
            // Counters are per key hash; messages show the alias / abbreviated key instead.
            id: k.token.clone(),
            label: Some(ctx.key_label()),
            rpm: u(k.rpm_limit),
            tpm: u(k.tpm_limit),
        });
    }
    if let Some(user) = &ctx.user {
        out.push(RateLimit {
            scope: "user",
            label: None,
            id: user.user_id.clone(),
            rpm: u(user.rpm_limit),
            tpm: u(user.tpm_limit),
        });
    }
    if let Some(t) = &ctx.team {
        out.push(RateLimit {
            scope: "team",
            label: None,
            id: t.team.team_id.clone(),
            rpm: u(t.team.rpm_limit),
            tpm: u(t.team.tpm_limit),
        });
    }
    if let Some(m) = &ctx.member
        && let Some(b) = &m.budget
    {
        out.push(RateLimit {
            scope: "team_member",
            label: None,
            id: format!("{}:{}", m.membership.team_id, m.membership.user_id),
            rpm: u(b.rpm_limit),
            tpm: u(b.tpm_limit),
        });
    }
    out
}

async fn dispatch(
    state: AppState,
    mut meter: Meter,
    req: CallRequest,
    requested: String,
) -> Result<Response, ApiError> {
    let dep = Arc::clone(&meter.slot.0);
    if req.stream {
        let chunks: BoxStream<'static, Result<Bytes, std::io::Error>> = if dep.is_mock() {
            mock_stream(&dep, &requested, &req)
        } else {
            let mut body = req.body.clone();
            body.insert("model".into(), Value::String(dep.upstream_model.clone()));
            let opts = body.entry("stream_options").or_insert_with(|| json!({}));
            if !opts.is_object() {
                *opts = json!({});
            }
            opts["include_usage"] = Value::Bool(true);
            let resp = state
                .models
                .send(&dep, req.kind, &Value::Object(body), true)
                .await?;
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other))
                .boxed()
        };
        let body = pump_stream(
            chunks,
            StreamMeter {
                meter,
                tap: SseTap::default(),
            },
            dep.stream_timeout,
            dep.timeout,
        );
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }

    if dep.is_mock() {
        let (body, usage) = mock_body(&dep, &requested, &req);
        meter.settle(usage, "success");
        return Ok(axum::Json(body).into_response());
    }
    let mut body = req.body.clone();
    body.insert("model".into(), Value::String(dep.upstream_model.clone()));
    let resp = state
        .models
        .send(&dep, req.kind, &Value::Object(body), false)
        .await?;
    // Read the body as it arrives: an upstream that answered and then failed mid-body (or sent
    // something that is not JSON) still produced work: bill the counted prompt plus the text
    // received, like an interrupted stream, and keep the log row.
    let mut bytes = Vec::new();
    let mut body_stream = resp.bytes_stream();
    while let Some(part) = body_stream.next().await {
        match part {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(e) => {
                meter.settle(partial_usage(&req, &bytes), "failure");
                return Err(crate::upstream::transport_error(&dep, &e));
            }
        }
    }
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            meter.settle(partial_usage(&req, &bytes), "failure");
            return Err(ApiError::proxy(
                StatusCode::BAD_GATEWAY,
                "api_error",
                format!(
                    "litellm.APIError: upstream of model={} returned a body that is not JSON",
                    dep.model_name
                ),
            ));
        }
    };
    let usage = Usage::from_json(&parsed).unwrap_or_else(|| Usage {
        prompt_tokens: req.prompt_tokens,
        completion_tokens: produced_tokens(&parsed),
    });
    meter.settle(usage, "success");
    let mut out = Response::new(Body::from(Bytes::from(bytes)));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(out)
}

/// Usage billed for a non-streaming answer cut short or unreadable: the counted prompt and the
/// tokens of whatever text arrived.
fn partial_usage(req: &CallRequest, received: &[u8]) -> Usage {
    Usage {
        prompt_tokens: req.prompt_tokens,
        completion_tokens: count_text(&String::from_utf8_lossy(received)),
    }
}

/// Chunks buffered between the upstream and a slow client (backpressure beyond that).
const STREAM_BUFFER: usize = 16;

/// Runs a stream in its own task, which owns the upstream body and the meter, and hands the
/// chunks to the response body through a small channel. The task ends (settling the meter,
/// releasing the deployment slot and closing the upstream connection) when the upstream ends,
/// when no chunk arrives for `idle`, when the client goes away, or at the overall `deadline`
/// — also when the client stopped reading and the channel is full, which a body that is only
/// polled by the client could never notice.
fn pump_stream(
    mut chunks: BoxStream<'static, Result<Bytes, std::io::Error>>,
    mut meter: StreamMeter,
    idle: std::time::Duration,
    deadline: std::time::Duration,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_BUFFER);
    let end = tokio::time::Instant::now() + deadline;
    tokio::spawn(async move {
        let timed_out = |what: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("upstream stream {what}"),
            ))
        };
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, chunks.next()) => n,
                _ = tokio::time::sleep_until(end) => {
                    let _ = tx.try_send(timed_out("deadline exceeded"));
                    break;
                }
            };
            let item = match next {
                Ok(Some(Ok(b))) => {
                    meter.tap.feed(&b);
                    Ok(b)
                }
                Ok(Some(Err(e))) => Err(e),
                Ok(None) => break,
                Err(_) => timed_out("idle timeout"),
            };
            let failed = item.is_err();
            tokio::select! {
                sent = tx.send(item) => if sent.is_err() { break },
                _ = tokio::time::sleep_until(end) => break,
            }
            if failed {
                break;
            }
        }
        drop(chunks);
        drop(meter);
    });
    Body::from_stream(tokio_stream_of(rx))
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn produced_tokens(v: &Value) -> u64 {
    v.get("choices")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
                .map(count_text)
                .sum()
        })
        .unwrap_or(0)
}

fn created() -> i64 {
    Utc::now().timestamp()
}

/// In-process answer of a `mock_response` deployment (usage counted like a real call).
fn mock_body(dep: &Deployment, model: &str, req: &CallRequest) -> (Value, Usage) {
    let text = dep.mock_response.clone().unwrap_or_default();
    match req.kind {
        CallKind::Chat => {
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: count_text(&text),
            };
            (
                json!({
                    "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
                    "created": created(),
                    "model": model,
                    "object": "chat.completion",
                    "system_fingerprint": null,
                    "choices": [{
                        "finish_reason": "stop",
                        "index": 0,
                        "message": {"content": text, "role": "assistant"},
                    }],
                    "usage": {
                        "completion_tokens": usage.completion_tokens,
                        "prompt_tokens": usage.prompt_tokens,
                        "total_tokens": usage.total(),
                    }
                }),
                usage,
            )
        }
        CallKind::Embeddings => {
            let n = match req.body.get("input") {
                Some(Value::Array(a)) => a.len(),
                _ => 1,
            };
            let usage = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: 0,
            };
            let data: Vec<Value> = (0..n)
                .map(|i| json!({"object": "embedding", "index": i, "embedding": vec![0.0f64; 8]}))
                .collect();
            (
                json!({
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
                }),
                usage,
            )
        }
    }
}

/// SSE chunks of a mock deployment: one chunk per word, a finish chunk, the usage chunk, DONE.
fn mock_stream(
    dep: &Deployment,
    model: &str,
    req: &CallRequest,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let text = dep.mock_response.clone().unwrap_or_default();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = created();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events: Vec<Value> = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in text.split_inclusive(' ') {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let completion = count_text(&text);
    events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [], "usage": {"prompt_tokens": req.prompt_tokens, "completion_tokens": completion,
        "total_tokens": req.prompt_tokens + completion}}));
    let mut out: Vec<Result<Bytes, std::io::Error>> = events
        .into_iter()
        .map(|e| Ok(Bytes::from(format!("data: {e}\n\n"))))
        .collect();
    out.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    futures_util::stream::iter(out).boxed()
}

/// `/v1/models` body.
pub fn models_list(names: &[String]) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "created": 1677610602, "owned_by": "openai"}))
        .collect();
    json!({"data": data, "object": "list"})
}

/// `/model/info` body: deployments of the callable models, without upstream credentials.
pub fn model_info(state: &AppState, names: &[String]) -> Value {
    let pico_usd = |p: i64| p as f64 / 1e12;
    let mut data = Vec::new();
    for n in names {
        for d in state.models.deployments(n) {
            data.push(json!({
                "model_name": d.model_name,
                "litellm_params": {
                    "model": format!("{}/{}", d.provider, d.upstream_model),
                    "rpm": d.rpm,
                    "tpm": d.tpm,
                },
                "model_info": {
                    "id": d.id,
                    "mode": "chat",
                    "access_groups": d.access_groups,
                    "input_cost_per_token": pico_usd(d.input_pico),
                    "output_cost_per_token": pico_usd(d.output_pico),
                    "litellm_provider": d.provider,
                    "timeout": d.timeout.as_secs_f64(),
                    "mock": d.is_mock(),
                }
            }));
        }
    }
    json!({ "data": data })
}
