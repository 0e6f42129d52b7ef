//! The request pipeline (`handle`): governance checks in the reference's order, budget
//! reservation, rate limits, deployment choice, then dispatch; and the wire messages of budget
//! and rate-limit refusals. Invariant: a denial never reaches the upstream and books nothing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use purser_core::budget::BudgetDuration;
use purser_core::money::{Nanos, cost_of};
use serde_json::{Value, json};

use super::context::{CallContext, CallRequest, check_key_models, check_scope_models};
use super::dispatch::{Meter, dispatch};
use crate::app::AppState;
use crate::cluster::counters::Refused;
use crate::error::Error;
use crate::limiter::{Held, LimitKind, Limiter, RateDenied, RateLimit};
use crate::service::alerts::{SoftBudgetWatch, WebhookEvent};
use crate::service::caller::Caller;
use crate::service::metrics::BudgetWatch;
use crate::service::model_budget::{ModelBudgetCheck, ModelReservation, resolve};
use crate::service::spend::{BudgetCheck, OverBudget, Reservation, SpendScope};
use crate::store::spend::{SpendColumn, SpendLogRow};

/// Python-like float rendering for messages (`0.5`, `1e-05`).
pub(super) fn usd(n: i64) -> String {
    let s = format!("{:?}", Nanos(n).to_usd());
    match s.split_once("e-") {
        Some((m, e)) if e.len() == 1 => format!("{m}e-0{e}"),
        _ => s,
    }
}

/// A `budget_exceeded` refusal: alerts (`budget_crossed`, deduplicated per entity for the
/// alert TTL) and returns the error.
pub(super) fn over_budget(state: &AppState, ctx: &CallContext, o: &OverBudget) -> Error {
    let (group, prefix, id) = match &o.scope {
        SpendScope::Key(t) => ("key", "Key Budget: ", t.clone()),
        SpendScope::Team(t) => ("team", "Team Budget: ", t.clone()),
        SpendScope::Member { team_id, user_id } => (
            "team_member",
            "Team Member Budget: ",
            format!("{team_id}:{user_id}"),
        ),
        SpendScope::User(u) => ("user", "User Budget: ", u.clone()),
    };
    let soft_budget = match &o.scope {
        SpendScope::Key(_) => ctx.key.as_ref().and_then(|k| k.soft_budget),
        SpendScope::Team(_) => ctx.team.as_ref().and_then(|t| t.team.soft_budget),
        _ => None,
    };
    let event = WebhookEvent {
        spend: Nanos(o.spend).to_usd(),
        max_budget: Some(Nanos(o.max).to_usd()),
        soft_budget: soft_budget.map(|n| Nanos(n).to_usd()),
        event: "budget_crossed",
        event_group: group,
        event_message: format!("{prefix}Budget Crossed\n Total Budget:`{}`", usd(o.max)),
        ..call_info(ctx)
    };
    state.alerts.budget_exceeded(&id, event);
    state.metrics.rejected("budget", group);
    budget_error(state, ctx, o)
}

/// The reference's `CallInfo` of the calling key: who the event is about.
fn call_info(ctx: &CallContext) -> WebhookEvent {
    let key = ctx.key.as_deref();
    WebhookEvent {
        token: key.map(|k| k.token.clone()),
        user_id: key.and_then(|k| k.user_id.clone()),
        team_id: key.and_then(|k| k.team_id.clone()),
        team_alias: ctx.team.as_ref().and_then(|t| t.team.team_alias.clone()),
        user_email: ctx.user.as_ref().and_then(|u| u.user_email.clone()),
        key_alias: key.and_then(|k| k.key_alias.clone()),
        organization_id: key.and_then(|k| k.organization_id.clone()),
        ..Default::default()
    }
}

/// The soft budgets of the caller's key and team, checked once the call has settled. One whose
/// cooldown is already on was crossed this period: nothing is built for it.
fn soft_budget_watches(ctx: &CallContext) -> Vec<SoftBudgetWatch> {
    let Some(k) = &ctx.key else {
        return Vec::new();
    };
    let watch = |scope, soft: i64, reset_at: Option<DateTime<Utc>>, max: Option<i64>, group| {
        SoftBudgetWatch {
            scope,
            soft,
            period: reset_at.map(|t| t.timestamp()),
            event: WebhookEvent {
                max_budget: max.map(|n| Nanos(n).to_usd()),
                soft_budget: Some(Nanos(soft).to_usd()),
                event: "soft_budget_crossed",
                event_group: group,
                event_message: format!("Soft Budget Crossed: Total Soft Budget:`{}`", usd(soft)),
                ..call_info(ctx)
            },
            key: Some(k.clone()),
        }
    };
    let mut out = Vec::new();
    if let Some(soft) = k.soft_budget
        && !k.soft_budget_cooldown
    {
        let scope = SpendScope::Key(k.token.clone());
        out.push(watch(scope, soft, k.budget_reset_at, k.max_budget, "key"));
    }
    if let Some(t) = ctx.team.as_ref().map(|t| &t.team)
        && let Some(soft) = t.soft_budget
        && !t.soft_budget_cooldown
    {
        let scope = SpendScope::Team(t.team_id.clone());
        out.push(watch(scope, soft, t.budget_reset_at, t.max_budget, "team"));
    }
    out
}

pub(super) fn budget_error(state: &AppState, ctx: &CallContext, o: &OverBudget) -> Error {
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
    Error::proxy(status, "budget_exceeded", msg)
}

pub(super) fn rate_error(state: &AppState, d: &RateDenied) -> Error {
    state.metrics.rejected("rate_limit", d.scope);
    let (kind, limit, remaining) = match d.kind {
        LimitKind::Requests => ("requests", d.limit_requests, d.remaining_requests),
        LimitKind::Tokens => ("tokens", d.limit_tokens, d.remaining_tokens),
        LimitKind::TokensPerDay => (
            "tokens_per_day",
            d.limit_tokens_per_day,
            d.remaining_tokens_per_day,
        ),
        LimitKind::Parallel => ("max_parallel_requests", d.limit_parallel, Some(0)),
    };
    let reset = Utc::now() + chrono::Duration::seconds(d.retry_after as i64);
    let mut e = Error::proxy(
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

/// Runs one OpenAI call through governance and dispatch.
/// Step 3 (key model access) and the model's existence, shared by calls and token counts.
fn check_model_callable(
    state: &AppState,
    ctx: &CallContext,
    requested: &str,
    target: &str,
) -> Result<(), Error> {
    if !ctx.master {
        check_key_models(state, ctx, requested, target)?;
    }
    if let Some(crate::upstream::Unserved::Unpriced(pattern)) = state.models.unserved(target) {
        return Err(Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "model={requested} matches the wildcard model '{pattern}', but its deployment sets no prices and the cost map has none for it: Purser does not serve unpriced models through a wildcard (its calls would cost $0 and no budget would hold them). Set input_cost_per_token / output_cost_per_token on the wildcard deployment, or add the model to model_list."
            ),
        )
        .with_param("model"));
    }
    if !state.models.contains(target) {
        return Err(Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "Invalid model name passed in model={requested}. Call `/v1/models` to view available models for your key."
            ),
        )
        .with_param("model"));
    }
    Ok(())
}

/// Prompt tokens of a request as its model group would count them (`/v1/messages/count_tokens`):
/// the caller must be allowed the model, as for a call; nothing is reserved or billed. A group
/// with an Anthropic deployment asks Anthropic's own counter (exact); otherwise, or when it does
/// not answer, the group's tokenizer estimates.
pub async fn count_tokens(state: AppState, caller: Caller, req: CallRequest) -> Result<u64, Error> {
    let ctx = CallContext::load(&state, &caller).await?;
    let requested = req.model.clone();
    let target = ctx.resolve_alias(&requested);
    check_model_callable(&state, &ctx, &requested, &target)?;
    if let super::context::Inbound::Anthropic(m) = &req.inbound
        && let Some(dep) = state.models.anthropic_deployment(&target)
    {
        let mut body = m.body.clone();
        // Counting takes no max_tokens (the parser gave it one to check the request).
        body.remove("max_tokens");
        body.insert("model".into(), Value::String(dep.upstream_model.clone()));
        if let Some(n) = state
            .models
            .anthropic_count_tokens(&dep, &Value::Object(body), m.beta.as_deref())
            .await
        {
            return Ok(n);
        }
    }
    Ok(req
        .counted(state.models.counters(&target))
        .await?
        .prompt_tokens)
}

pub async fn handle(state: AppState, caller: Caller, req: CallRequest) -> Result<Response, Error> {
    let requested = req.model.clone();
    let end_user = req
        .body
        .get("user")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut team_alias = String::new();
    let answer = handle_call(state.clone(), &caller, req, &mut team_alias).await;
    let (status, class) = match &answer {
        Ok(r) => (r.status().as_u16(), None),
        Err(e) => (e.status().as_u16(), Some(e.kind().to_string())),
    };
    let key = caller.key.as_deref();
    let team = key.and_then(|k| k.team_id.clone()).unwrap_or_default();
    let labels = crate::metrics::CallLabels {
        hashed_api_key: caller.api_key_hash().to_string(),
        api_key_alias: key.and_then(|k| k.key_alias.clone()).unwrap_or_default(),
        team,
        team_alias,
        user: key
            .and_then(|k| k.user_id.clone())
            .or(caller.user_id.clone())
            .unwrap_or_default(),
        end_user: end_user.unwrap_or_default(),
        requested_model: requested,
        ..Default::default()
    };
    state.metrics.request(&labels, status, class.as_deref());
    answer
}

/// [`handle`] without the request metrics; `team_alias` is set once the caller's team is known.
async fn handle_call(
    state: AppState,
    caller: &Caller,
    req: CallRequest,
    team_alias: &mut String,
) -> Result<Response, Error> {
    // Backpressure: wait while the spend writer is a full queue behind (bounded memory).
    state.ledger.admit().await;
    let ctx = CallContext::load(&state, caller).await?;
    if let Some(a) = ctx.team.as_ref().and_then(|t| t.team.team_alias.as_ref()) {
        team_alias.clone_from(a);
    }
    let requested = req.model.clone();
    let target = ctx.resolve_alias(&requested);
    let now = Utc::now();

    // 3. key model access (and the model exists)
    check_model_callable(&state, &ctx, &requested, &target)?;
    // The request's own fallback list replaces the configured one; each entry must be a model
    // this caller may call (checked now, before anything is reserved: an unknown or forbidden
    // one is refused rather than silently never tried).
    let own_fallbacks = match &req.routing.fallbacks {
        Some(asked) if !req.routing.disable_fallbacks => {
            let mut out: Vec<String> = Vec::new();
            for g in asked {
                if g == &target || out.contains(g) {
                    continue;
                }
                let allowed = state.models.contains(g)
                    && (ctx.master
                        || (check_key_models(&state, &ctx, g, g).is_ok()
                            && check_scope_models(&state, &ctx, g, g).is_ok()));
                if !allowed {
                    return Err(Error::proxy(
                        StatusCode::BAD_REQUEST,
                        "bad_request_error",
                        format!("fallbacks: '{g}' is not a model this key may call"),
                    )
                    .with_param("fallbacks"));
                }
                out.push(g.clone());
            }
            Some(out)
        }
        _ => None,
    };
    let req = req.counted(state.models.counters(&target)).await?;
    let (in_price, out_price) = state.models.max_prices(&target);
    let free = state.models.is_free(&target);

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
            max: crate::service::limits::key_budget_max(k, now),
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
        return Err(over_budget(&state, &ctx, &o));
    }
    // 9.1 team blocked
    if let Some(t) = &ctx.team
        && t.team.blocked
    {
        return Err(Error::auth(format!(
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
        return Err(over_budget(&state, &ctx, &o));
    }
    // 10. reservation (atomic across every scope)
    let estimate = cost_of(req.prompt_tokens, req.max_completion, in_price, out_price)
        .0
        .saturating_add(
            purser_core::money::cost_of_units(req.units, state.models.max_unit_price(&target)).0,
        );
    let all: Vec<BudgetCheck> = first.into_iter().chain(later).collect();
    let reservation = state
        .ledger
        .reserve(&all, estimate, !free)
        .map_err(|o| over_budget(&state, &ctx, &o))?;
    // 10b. per-model budgets, reserved the same way
    let mut model_checks = Vec::new();
    let mut model_reservation = if free {
        None
    } else {
        let mut checks = model_budget_checks(&ctx, &requested, &target, now);
        let has_windows = ctx.key.as_ref().is_some_and(|k| k.budget_limits.is_some())
            || ctx
                .team
                .as_ref()
                .is_some_and(|t| t.team.budget_limits.is_some());
        if has_windows {
            // Boxed, and only built when needed: its first-use database read is a large future
            // that would otherwise sit in (and be copied with) every call's future.
            checks.extend(Box::pin(budget_window_checks(&state, &ctx, now)).await?);
        }
        if checks.is_empty() {
            None
        } else {
            let status = StatusCode::from_u16(state.settings.budget_exceeded_status)
                .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            let held = state
                .model_budgets
                .reserve(checks.clone(), estimate)
                .map_err(|o| {
                    Error::proxy(status, "budget_exceeded", o.check.refusal(o.spend, usd))
                })?;
            model_checks = checks;
            Some(held)
        }
    };
    // 11. rate limits
    let limits = rate_limits(&ctx, &target);
    let mut reservation = reservation;
    let held = Box::pin(admit(
        &state,
        &ctx,
        Admission {
            reservation: &mut reservation,
            checks: &all,
            model_reservation: model_reservation.as_mut(),
            model_checks: &model_checks,
            limits: &limits,
            enforce: !free,
        },
    ))
    .await?;
    // 12. routing
    let Some(slot) = state.models.pick(&target) else {
        // No deployment took the call: it must not count against the caller's RPM.
        state.limiter.refund(&limits, held);
        return Err(Error::proxy(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "No deployments available for selected model={target}. All deployments are at their rpm/tpm limit or cooling down after failures."
            ),
        ));
    };

    let start = crate::store::now();
    let log = SpendLogRow {
        request_id: crate::store::spend::new_request_id(),
        call_type: req.kind.call_type().into(),
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
            "user_api_key_team_alias": ctx.team.as_ref().and_then(|t| t.team.team_alias.clone()),
            "requested_model": requested,
        })),
    };
    // Fallback groups this caller may reach: every allow-list applies to them as to the
    // requested model (a fallback never widens access).
    let policy = state.models.policy();
    let may_call = |g: &str| {
        ctx.master
            || (check_key_models(&state, &ctx, g, g).is_ok()
                && check_scope_models(&state, &ctx, g, g).is_ok())
    };
    let fallbacks = if req.routing.disable_fallbacks {
        Vec::new()
    } else if let Some(own) = own_fallbacks {
        own
    } else if policy.has_fallbacks(&target) {
        let mut all: Vec<String> = Vec::new();
        for class in [
            crate::upstream::FailureClass::Retryable,
            crate::upstream::FailureClass::ContextWindow,
            crate::upstream::FailureClass::ContentPolicy,
        ] {
            for g in policy.fallbacks(&target, class) {
                if !all.contains(&g) && may_call(&g) {
                    all.push(g);
                }
            }
        }
        all
    } else {
        Vec::new()
    };
    // The budgets whose gauges follow this call (those with a cap).
    let mut budgets = Vec::new();
    if let (Some(k), Some(c)) = (&key, &key_check)
        && let Some(max) = c.max
    {
        budgets.push(BudgetWatch {
            scope: c.scope.clone(),
            alias: k.key_alias.clone().unwrap_or_default(),
            max,
            reset_at: k.budget_reset_at,
        });
    }
    if let (Some(t), Some(c)) = (&ctx.team, &team_check)
        && let Some(max) = c.max
    {
        budgets.push(BudgetWatch {
            scope: c.scope.clone(),
            alias: t.team.team_alias.clone().unwrap_or_default(),
            max,
            reset_at: t.team.budget_reset_at,
        });
    }
    let meter = Meter {
        budgets,
        received: req.received,
        fallbacks,
        state: state.clone(),
        soft_budgets: soft_budget_watches(&ctx),
        reservation: Some(reservation),
        model_reservation,
        slot,
        limits,
        held,
        prompt_estimate: req.prompt_tokens,
        log,
        attempt_started: std::time::Instant::now(),
    };
    // Spawned: a client disconnect drops the handler, not the accounting.
    tokio::spawn(dispatch(state, meter, req, requested))
        .await
        .map_err(Error::internal)?
}

/// What a call holds and is checked against when it is admitted on the shared counters.
struct Admission<'a> {
    reservation: &'a mut Reservation,
    checks: &'a [BudgetCheck],
    model_reservation: Option<&'a mut ModelReservation>,
    model_checks: &'a [ModelBudgetCheck],
    limits: &'a [RateLimit],
    enforce: bool,
}

/// Steps 10 and 11 on the counters every instance shares: one Redis script run reserves the
/// call's budgets and spend windows and counts its rate limits, all or nothing. Without Redis
/// (or while it is down, or when it fails mid-call) the local reservations govern the call and
/// the in-process limiter counts it.
async fn admit(state: &AppState, ctx: &CallContext, a: Admission<'_>) -> Result<Held, Error> {
    if let Some(r) = state.cluster.shared() {
        let (scopes, budgets) = state.ledger.shared_budgets(r, a.checks);
        let spend_windows: Vec<_> = a.model_checks.iter().map(|c| c.shared(r)).collect();
        let (idx, windows) = Limiter::shared_windows(r, a.limits);
        if budgets.is_empty() && spend_windows.is_empty() && windows.is_empty() {
            // Nothing counted or capped (the master key): no round trip.
            return Ok(Held::Local);
        }
        let now = state.limiter.now();
        let estimate = a.reservation.estimate();
        match r
            .admit(&budgets, &spend_windows, estimate, a.enforce, &windows, now)
            .await
        {
            Ok(None) => {
                a.reservation
                    .share(r.clone(), budgets.into_iter().map(|b| b.key).collect());
                if let Some(m) = a.model_reservation {
                    m.share(
                        r.clone(),
                        spend_windows.into_iter().map(|w| w.key).collect(),
                    );
                }
                return Ok(Held::Shared);
            }
            Ok(Some(Refused::Budget { index, spend })) => {
                let (scope, max) = scopes[index].clone();
                return Err(over_budget(
                    state,
                    ctx,
                    &OverBudget {
                        scope,
                        spend,
                        max: max.unwrap_or(0),
                    },
                ));
            }
            Ok(Some(Refused::SpendWindow { index, spend })) => {
                state.metrics.rejected("budget", "model");
                let status = StatusCode::from_u16(state.settings.budget_exceeded_status)
                    .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
                return Err(Error::proxy(
                    status,
                    "budget_exceeded",
                    a.model_checks[index].refusal(spend, usd),
                ));
            }
            Ok(Some(Refused::Window(full))) => {
                return Err(rate_error(
                    state,
                    &Limiter::denied_at(&a.limits[idx[full.index]], full, now),
                ));
            }
            // Marked down: this instance's counters govern the call.
            Err(_) => {}
        }
    }
    state
        .limiter
        .acquire_local(a.limits)
        .map_err(|d| rate_error(state, &d))
}

/// The per-model budget windows a call of `target` (requested as `requested`) is checked
/// against: the key's, the team's unless the key budgets this model itself (the reference's
/// override), the user's and the member's. Messages are the reference's where it has one.
fn model_budget_checks(
    ctx: &CallContext,
    requested: &str,
    target: &str,
    now: DateTime<Utc>,
) -> Vec<ModelBudgetCheck> {
    let find = |map: &Value| resolve(map, requested).or_else(|| resolve(map, target));
    let mut out = Vec::new();
    let mut key_budgets_model = false;
    if let Some(k) = &ctx.key
        && let Some(b) = find(&k.model_max_budget.0)
    {
        key_budgets_model = true;
        let alias = k.key_alias.as_deref().unwrap_or("None");
        let msg = format!(
            "LiteLLM Virtual Key: {}, key_alias: {alias}, exceeded budget for model={requested}",
            k.token
        );
        out.push(ModelBudgetCheck::new("key", &k.token, b, msg, now));
    }
    if let Some(t) = &ctx.team
        && !key_budgets_model
        && let Some(b) = find(&t.team.model_max_budget.0)
    {
        let id = &t.team.team_id;
        let msg = format!("LiteLLM Team: {id}, exceeded budget for model={requested}");
        out.push(ModelBudgetCheck::new("team", id, b, msg, now));
    }
    if let Some(u) = &ctx.user
        && let Some(b) = find(&u.model_max_budget.0)
    {
        let id = &u.user_id;
        let msg = format!("LiteLLM User: {id}, exceeded budget for model={requested}");
        out.push(ModelBudgetCheck::new("user", id, b, msg, now));
    }
    if let Some(m) = &ctx.member
        && let Some(map) = m.budget.as_ref().and_then(|b| b.model_max_budget.as_ref())
        && let Some(b) = find(&map.0)
    {
        let (t, u) = (&m.membership.team_id, &m.membership.user_id);
        let msg =
            format!("LiteLLM Team Member: {u} in Team={t}, exceeded budget for model={requested}");
        out.push(ModelBudgetCheck::new(
            "member",
            &format!("{t}:{u}"),
            b,
            msg,
            now,
        ));
    }
    out
}

/// The `budget_limits` windows of the key and the team: each entry (`budget_duration`,
/// `max_budget`, `reset_at`) is a calendar window ending at its `reset_at` (rolled forward on
/// the entry's own schedule once passed). A window this instance has not opened yet starts from
/// the spend the spend log already holds for it, so the window's spend survives restarts up to
/// the spend writer's batch window.
async fn budget_window_checks(
    state: &AppState,
    ctx: &CallContext,
    now: DateTime<Utc>,
) -> Result<Vec<ModelBudgetCheck>, Error> {
    let mut out = Vec::new();
    let mut scopes: Vec<(SpendColumn, String, String, &Value)> = Vec::new();
    if let Some(k) = &ctx.key
        && let Some(l) = &k.budget_limits
    {
        scopes.push((
            SpendColumn::ApiKey,
            k.token.clone(),
            format!("Key={}", ctx.key_label()),
            &l.0,
        ));
    }
    if let Some(t) = &ctx.team
        && let Some(l) = &t.team.budget_limits
    {
        let id = t.team.team_id.clone();
        scopes.push((SpendColumn::Team, id.clone(), format!("Team={id}"), &l.0));
    }
    for (column, id, who, list) in scopes {
        for e in list.as_array().into_iter().flatten() {
            let Some(period) = e.get("budget_duration").and_then(Value::as_str) else {
                continue;
            };
            let (Ok(d), Some(max)) = (
                BudgetDuration::parse(period),
                e.get("max_budget")
                    .and_then(Value::as_f64)
                    .and_then(|v| Nanos::from_usd(v).ok()),
            ) else {
                continue;
            };
            let reset = e
                .get("reset_at")
                .and_then(Value::as_str)
                .and_then(crate::service::limits::parse_instant)
                .unwrap_or_else(|| d.next_reset(now));
            let end = if reset > now {
                reset
            } else {
                d.next_reset_after(reset, now)
            };
            let mut c = ModelBudgetCheck {
                counter: format!("window:{}:{id}:{period}", column.name()),
                max: max.0,
                ends_at: end.timestamp(),
                fixed_end: true,
                seed: 0,
                message: format!("ExceededBudget: {who} over {period} budget."),
                show_spend: true,
            };
            if !state.model_budgets.is_open(&c) {
                let mut h = state.db.conn().await?;
                c.seed =
                    crate::store::spend::window_spend(&mut h, column, &id, d.window_start(end))
                        .await?;
            }
            out.push(c);
        }
    }
    Ok(out)
}

pub(super) fn rate_limits(ctx: &CallContext, model: &str) -> Vec<RateLimit> {
    let u = |v: Option<i64>| v.and_then(|x| u64::try_from(x).ok());
    // `model_rpm_limit` / `model_tpm_limit` live in the key's and the team's metadata (as in the
    // reference), keyed by the model group called; each has its own counters, so a per-model
    // 429 leaves the other models alone.
    let per_model = |md: &Value, field: &str| {
        md.get(field)
            .and_then(|m| m.get(model))
            .and_then(Value::as_u64)
    };
    let mut out = Vec::new();
    if let Some(k) = &ctx.key {
        out.push(RateLimit {
            scope: "api_key",
            // Counters are per key hash; messages show the alias / abbreviated key instead.
            id: k.token.clone(),
            label: Some(ctx.key_label()),
            rpm: u(k.rpm_limit),
            tpm: u(k.tpm_limit),
            tpd: u(k.tpd_limit),
            parallel: u(k.max_parallel_requests),
        });
    }
    if let Some(k) = &ctx.key {
        let (rpm, tpm) = (
            per_model(&k.metadata.0, "model_rpm_limit"),
            per_model(&k.metadata.0, "model_tpm_limit"),
        );
        if rpm.is_some() || tpm.is_some() {
            out.push(RateLimit {
                scope: "model_per_key",
                id: format!("{}:{model}", k.token),
                label: Some(format!("{}:{model}", ctx.key_label())),
                rpm,
                tpm,
                tpd: None,
                parallel: None,
            });
        }
    }
    if let Some(user) = &ctx.user {
        out.push(RateLimit {
            scope: "user",
            label: None,
            id: user.user_id.clone(),
            rpm: u(user.rpm_limit),
            tpm: u(user.tpm_limit),
            tpd: None,
            parallel: u(user.max_parallel_requests),
        });
    }
    if let Some(t) = &ctx.team {
        out.push(RateLimit {
            scope: "team",
            label: None,
            id: t.team.team_id.clone(),
            rpm: u(t.team.rpm_limit),
            tpm: u(t.team.tpm_limit),
            tpd: u(t.team.tpd_limit),
            parallel: u(t.team.max_parallel_requests),
        });
    }
    if let Some(t) = &ctx.team {
        let (rpm, tpm) = (
            per_model(&t.team.metadata.0, "model_rpm_limit"),
            per_model(&t.team.metadata.0, "model_tpm_limit"),
        );
        if rpm.is_some() || tpm.is_some() {
            out.push(RateLimit {
                scope: "model_per_team",
                label: None,
                id: format!("{}:{model}", t.team.team_id),
                rpm,
                tpm,
                tpd: None,
                parallel: None,
            });
        }
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
            tpd: None,
            parallel: u(b.max_parallel_requests),
        });
    }
    out
}
