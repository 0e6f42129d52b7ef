//! `/v1/models` (with the reference's query flags), `/v1/models/{model}` and `/model/info`
//! bodies. Invariants: a listing never names a model the caller could not call (except with
//! `scope=expand` for admins, or `team_id` for a team the caller belongs to), and never carries
//! upstream credentials.

use axum::http::StatusCode;
use purser_core::access::{ALL_PROXY_MODELS, NO_DEFAULT_MODELS};
use purser_core::roles::TeamRole;
use serde_json::{Value, json};

use super::context::{CallContext, allows, callable_models};
use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;
use crate::store;

/// The reference's fallback kinds (`router_settings.fallbacks`, `context_window_fallbacks`,
/// `content_policy_fallbacks`).
pub const FALLBACK_TYPES: [&str; 3] = ["general", "context_window", "content_policy"];

/// The query flags of `/v1/models`, as the reference names them.
#[derive(Debug, Default, Clone)]
pub struct ModelListQuery {
    /// Also list the wildcard patterns (`openai/*`) of the caller's allow-list.
    pub return_wildcard_routes: bool,
    /// List the models of this team (the caller must be able to read it).
    pub team_id: Option<String>,
    /// Also list the access groups the caller may use.
    pub include_model_access_groups: bool,
    /// List only the access groups the caller may use.
    pub only_model_access_groups: bool,
    /// Add `metadata.fallbacks` to each entry.
    pub include_metadata: bool,
    pub fallback_type: Option<String>,
    /// `expand`: admins (proxy admins, team admins) see every configured model.
    pub scope: Option<String>,
    /// Hide models whose deployments are all unhealthy.
    pub healthy_only: bool,
}

/// The allow-lists a listing is computed from.
enum Lists {
    /// Every configured model (master key, `scope=expand`).
    Everything,
    /// The caller's own chain: key, then team (and member) or user.
    Caller(Vec<Vec<String>>),
}

/// `/v1/models` body for this caller and query.
pub async fn model_list(
    state: &AppState,
    caller: &Caller,
    ctx: &CallContext,
    q: &ModelListQuery,
) -> Result<Value, Error> {
    let bad = |m: String| Error::proxy(StatusCode::BAD_REQUEST, "bad_request_error", m);
    if let Some(s) = q.scope.as_deref()
        && s != "expand"
    {
        return Err(bad(format!(
            "Invalid scope parameter. Only 'expand' is currently supported. Received: {s}"
        ))
        .with_param("scope"));
    }
    if let Some(f) = q.fallback_type.as_deref()
        && !FALLBACK_TYPES.contains(&f)
    {
        return Err(bad(format!(
            "Invalid fallback_type. Must be one of: ['general', 'context_window', 'content_policy']. Received: {f}"
        ))
        .with_param("fallback_type"));
    }

    let expand = q.scope.is_some() && has_admin_privileges(state, caller).await?;
    let (names, lists) = if expand {
        (state.models.names().to_vec(), Lists::Everything)
    } else if let Some(team_id) = q.team_id.as_deref() {
        let team_models = team_models_for(state, caller, team_id).await?;
        let names = configured_allowed_by(state, &team_models);
        (names, Lists::Caller(vec![team_models]))
    } else if ctx.master {
        (state.models.names().to_vec(), Lists::Everything)
    } else {
        (
            callable_models(state, ctx),
            Lists::Caller(caller_lists(ctx)),
        )
    };

    let groups = visible_access_groups(state, &lists);
    let mut out: Vec<String> = Vec::new();
    let mut push = |n: &String| {
        if !out.contains(n) {
            out.push(n.clone());
        }
    };
    if q.only_model_access_groups {
        groups.iter().for_each(&mut push);
    } else {
        names.iter().for_each(&mut push);
        if q.include_model_access_groups {
            groups.iter().for_each(&mut push);
        }
        if q.return_wildcard_routes {
            wildcard_routes(&lists).iter().for_each(&mut push);
        }
    }
    // `healthy_only`: a model is hidden only when every deployment of it is cooling down after
    // failures (Purser runs no background health checks).
    let data: Vec<Value> = out
        .iter()
        .filter(|n| {
            let deps = state.models.deployments(n);
            !q.healthy_only || deps.is_empty() || deps.iter().any(|d| !d.cooling())
        })
        .map(|n| {
            let mut e = entry(n);
            if q.include_metadata {
                let class = match q.fallback_type.as_deref() {
                    Some("context_window") => crate::upstream::FailureClass::ContextWindow,
                    Some("content_policy") => crate::upstream::FailureClass::ContentPolicy,
                    _ => crate::upstream::FailureClass::Retryable,
                };
                e["metadata"] = json!({"fallbacks": state.models.policy().fallbacks(n, class)});
            }
            e
        })
        .collect();
    Ok(json!({"data": data, "object": "list"}))
}

/// `/v1/models/{model}`: the entry of one model the caller may call, else 404.
pub fn model_retrieve(state: &AppState, ctx: &CallContext, model: &str) -> Result<Value, Error> {
    if callable_models(state, ctx).iter().any(|n| n == model) {
        return Ok(entry(model));
    }
    Err(Error::proxy(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("The model '{model}' does not exist or you do not have access to it."),
    )
    .with_param("model"))
}

fn entry(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 1677610602, "owned_by": "openai"})
}

/// The reference's `_user_has_admin_privileges`: proxy admins, and admins of any team.
async fn has_admin_privileges(state: &AppState, caller: &Caller) -> Result<bool, Error> {
    if caller.is_proxy_admin() {
        return Ok(true);
    }
    if caller.is_viewer() {
        return Ok(false);
    }
    let Some(user) = caller.user_id.as_deref() else {
        return Ok(false);
    };
    let mut h = state.db.conn().await?;
    let memberships = store::members::list_by_user(&mut h, user).await?;
    Ok(memberships
        .iter()
        .any(|m| m.role == TeamRole::Admin.as_str()))
}

/// The allow-list of `team_id`, for a caller who may read that team: proxy admins and viewers,
/// or a member of it.
async fn team_models_for(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
) -> Result<Vec<String>, Error> {
    let not_found = || {
        Error::proxy(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("Team not found, passed team_id={team_id}"),
        )
        .with_param("team_id")
    };
    let member = match caller.user_id.as_deref() {
        Some(u) => state.cache.member(&state.db, team_id, u).await?.is_some(),
        None => false,
    };
    // Membership first, so a caller cannot learn which teams exist.
    if !(caller.can_read_all() || member) {
        return Err(Error::proxy(
            StatusCode::FORBIDDEN,
            "team_model_access_denied",
            format!(
                "User={} is not a member of team={team_id}",
                caller.user_id.as_deref().unwrap_or("unknown")
            ),
        )
        .with_param("team_id"));
    }
    let Some(team) = state.cache.team(&state.db, team_id).await? else {
        return Err(not_found());
    };
    Ok(team.team.models.0.clone())
}

fn configured_allowed_by(state: &AppState, list: &[String]) -> Vec<String> {
    state
        .models
        .names()
        .iter()
        .filter(|n| allows(list, n, n, state))
        .cloned()
        .collect()
}

/// The caller's allow-lists that all must allow a model (key, then team and member, or user).
fn caller_lists(ctx: &CallContext) -> Vec<Vec<String>> {
    let mut lists = Vec::new();
    if ctx.key.is_some() {
        lists.push(ctx.key_models());
    }
    if let Some(t) = &ctx.team {
        lists.push(t.team.models.0.clone());
        if let Some(b) = ctx.member.as_ref().and_then(|m| m.budget.as_ref()) {
            lists.push(b.allowed_models.0.clone());
        }
    } else if let Some(u) = &ctx.user {
        lists.push(u.models.0.clone());
    }
    lists
}

/// Access groups, in config order, that every list grants whole: the list is unrestricted or
/// names the group.
fn visible_access_groups(state: &AppState, lists: &Lists) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for n in state.models.names() {
        for d in state.models.deployments(n) {
            for g in &d.access_groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
    }
    match lists {
        Lists::Everything => groups,
        Lists::Caller(lists) => groups
            .into_iter()
            .filter(|g| lists.iter().all(|l| grants_group(l, g)))
            .collect(),
    }
}

fn grants_group(list: &[String], group: &str) -> bool {
    if list.iter().any(|m| m == NO_DEFAULT_MODELS) {
        return false;
    }
    list.is_empty()
        || list
            .iter()
            .any(|m| m == group || m == ALL_PROXY_MODELS || m == "*")
}

/// The wildcard patterns of the caller's first restricting list (the key's, else the team's),
/// as the reference returns them with `return_wildcard_routes`.
fn wildcard_routes(lists: &Lists) -> Vec<String> {
    let Lists::Caller(lists) = lists else {
        return vec![];
    };
    lists
        .iter()
        .find(|l| !l.is_empty())
        .map(|l| l.iter().filter(|m| m.contains('*')).cloned().collect())
        .unwrap_or_default()
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
                    "input_cost_per_token": pico_usd(d.prices.input),
                    "output_cost_per_token": pico_usd(d.prices.output),
                    "litellm_provider": d.provider,
                    "timeout": d.timeout.as_secs_f64(),
                    "mock": d.is_mock(),
                }
            }));
        }
    }
    json!({ "data": data })
}
