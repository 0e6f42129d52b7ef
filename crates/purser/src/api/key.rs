//! `/key/*` routes (reference §6.1–6.3): thin handlers over `service::keys`. Every write commits
//! and then evicts the changed tokens from the cache before answering, so the very next request
//! with a blocked, deleted or rotated key is refused.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, PagedQuery, QueryParams, null_as_default, parse_json};
use super::{Gate, Route};
use crate::app::AppState;
use crate::service::caller::Caller;
use crate::service::keys::{self, GenerateKeyRequest, UpdateKeyRequest};
use crate::service::paging::{PageRules, Paged};
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::store::{self, keys::KeyFilter};

pub fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/key/generate",
            Gate::InternalUser,
            "key management",
            "Create a virtual key",
            key_generate,
        ),
        Route::get(
            "/key/info",
            Gate::InternalUser,
            "key management",
            "Read a key (default: the caller's own)",
            key_info,
        ),
        Route::get(
            "/key/list",
            Gate::InternalUser,
            "key management",
            "List keys (non-admins: their own)",
            key_list,
        ),
        Route::post(
            "/key/update",
            Gate::InternalUser,
            "key management",
            "Update a key (only sent fields change)",
            key_update,
        ),
        Route::post(
            "/key/delete",
            Gate::InternalUser,
            "key management",
            "Delete keys by key or alias",
            key_delete,
        ),
        Route::post(
            "/key/block",
            Gate::Admin,
            "key management",
            "Block a key",
            key_block,
        ),
        Route::post(
            "/key/unblock",
            Gate::Admin,
            "key management",
            "Unblock a key",
            key_unblock,
        ),
        Route::post(
            "/key/regenerate",
            Gate::InternalUser,
            "key management",
            "Rotate a key's secret",
            key_regenerate,
        ),
        Route::post(
            "/key/{key}/regenerate",
            Gate::InternalUser,
            "key management",
            "Rotate a key's secret (key in the path)",
            key_regenerate_path,
        ),
    ]
}

pub async fn key_generate(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<GenerateKeyRequest>,
) -> ApiResult<Json<Value>> {
    let mut h = state.db.begin_write().await?;
    let (raw, row) = keys::generate_tx(&mut h, &state, &caller, &req).await?;
    h.commit().await?;
    // A negative cache entry for this hash may exist (someone tried the key before it existed).
    state.cache.evict_key(&row.token).await;
    Ok(Json(keys::generate_response(
        Some(&raw),
        &row,
        req.duration.as_deref(),
    )))
}

#[derive(Debug, Deserialize)]
pub struct KeyInfoQuery {
    key: Option<String>,
}

pub async fn key_info(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<KeyInfoQuery>,
) -> ApiResult<Json<Value>> {
    let mut h = state.db.conn().await?;
    let (shown, row) = match &q.key {
        Some(k) => (k.clone(), keys::find(&mut h, k).await?),
        None => match &caller.key {
            Some(own) => (
                own.token.clone(),
                store::keys::get(&mut h, &own.token).await?,
            ),
            None => return Err(keys::key_not_found()),
        },
    };
    let Some(row) = row else {
        return Err(keys::key_not_found());
    };
    keys::authorize_read(&mut h, &caller, &row).await?;
    let mut info = views::key_json(&row, false);
    info["status"] = json!(views::key_status(&row, store::now()));
    Ok(Json(json!({ "key": shown, "info": info })))
}

#[derive(Debug, Deserialize)]
pub struct KeyListQuery {
    page: Option<i64>,
    size: Option<i64>,
    user_id: Option<String>,
    team_id: Option<String>,
    key_alias: Option<String>,
    return_full_object: Option<bool>,
}

impl Paged for KeyListQuery {
    const RULES: PageRules = PageRules::between("size", 10, 100);
    fn paging(&self) -> (Option<i64>, Option<i64>) {
        (self.page, self.size)
    }
}

pub async fn key_list(
    State(state): State<AppState>,
    caller: Caller,
    PagedQuery(q, paging): PagedQuery<KeyListQuery>,
) -> ApiResult<Json<Value>> {
    let (page, size) = (paging.number, paging.size);
    let mut filter = KeyFilter {
        user_id: q.user_id.clone(),
        team_id: q.team_id.clone(),
        key_alias: q.key_alias.clone(),
    };
    if !caller.can_read_all() {
        match (&q.user_id, &caller.user_id) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(ApiError::wrapped(
                    StatusCode::FORBIDDEN,
                    &format!("Only admins can list other users' keys. Your user_id={own}"),
                ));
            }
            (_, Some(own)) => filter.user_id = Some(own.clone()),
            (_, None) => {
                return Ok(Json(
                    json!({"keys": [], "total_count": 0, "current_page": page, "total_pages": 0}),
                ));
            }
        }
    }
    let mut h = state.db.conn().await?;
    let (rows, total) = store::keys::list(&mut h, &filter, size, (page - 1) * size).await?;
    let keys: Vec<Value> = rows
        .iter()
        .map(|k| {
            if q.return_full_object.unwrap_or(false) {
                views::key_json(k, true)
            } else {
                json!(k.token)
            }
        })
        .collect();
    Ok(Json(json!({
        "keys": keys,
        "total_count": total,
        "current_page": page,
        "total_pages": (total + size - 1) / size,
    })))
}

pub async fn key_update(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UpdateKeyRequest>,
) -> ApiResult<Json<Value>> {
    let mut h = state.db.begin_write().await?;
    let (before, after) = keys::update_tx(&mut h, &caller, &req).await?;
    h.commit().await?;
    state.cache.evict_key(&before.token).await;
    let mut v = views::key_json(&after, true);
    v["key"] = json!(req.key);
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
pub struct KeyDeleteRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    keys: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    key_aliases: Vec<String>,
}

pub async fn key_delete(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<KeyDeleteRequest>,
) -> ApiResult<Json<Value>> {
    if req.keys.is_empty() && req.key_aliases.is_empty() {
        return Err(keys::bad_request(
            "Either keys or key_aliases must be provided",
        ));
    }
    let mut h = state.db.begin_write().await?;
    let tokens = keys::delete_tx(&mut h, &caller, &req.keys, &req.key_aliases).await?;
    h.commit().await?;
    state.cache.evict_keys(&tokens).await;
    for t in &tokens {
        // A custom key re-created later hashes to the same token: it starts from zero.
        state.ledger.on_spend_set(&SpendScope::Key(t.clone()), 0);
    }
    let mut deleted = req.keys.clone();
    deleted.extend(req.key_aliases.iter().cloned());
    Ok(Json(json!({ "deleted_keys": deleted })))
}

#[derive(Debug, Deserialize)]
pub struct KeyRef {
    key: String,
}

async fn set_blocked(
    state: AppState,
    caller: Caller,
    key: &str,
    blocked: bool,
) -> ApiResult<Json<Value>> {
    let mut h = state.db.begin_write().await?;
    let row = keys::set_blocked_tx(&mut h, &caller, key, blocked).await?;
    h.commit().await?;
    state.cache.evict_key(&row.token).await;
    Ok(Json(views::key_json(&row, true)))
}

pub async fn key_block(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<KeyRef>,
) -> ApiResult<Json<Value>> {
    set_blocked(state, caller, &req.key, true).await
}

pub async fn key_unblock(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<KeyRef>,
) -> ApiResult<Json<Value>> {
    set_blocked(state, caller, &req.key, false).await
}

#[derive(Debug, Default, Deserialize)]
pub struct RegenerateRequest {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    new_key: Option<String>,
}

async fn regenerate(
    state: AppState,
    caller: Caller,
    key: &str,
    new_key: Option<&str>,
) -> ApiResult<Json<Value>> {
    // Spend follows the key: the spend writer is held off while the row changes token, then
    // the counter, the unwritten costs and the calls in flight move to the new token, so a key
    // cannot shed its spend by regenerating itself.
    let spend_write = state.ledger.spend_write().await;
    let mut h = state.db.begin_write().await?;
    let (old, raw, row) = keys::regenerate_tx(&mut h, &state, &caller, key, new_key).await?;
    h.commit().await?;
    state
        .cache
        .evict_keys(&[old.clone(), row.token.clone()])
        .await;
    spend_write.rename(&SpendScope::Key(old), &SpendScope::Key(row.token.clone()));
    drop(spend_write);
    Ok(Json(keys::generate_response(Some(&raw), &row, None)))
}

pub async fn key_regenerate(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<RegenerateRequest>,
) -> ApiResult<Json<Value>> {
    let Some(key) = req.key.as_deref() else {
        return Err(ApiError::validation(
            vec![json!("body"), json!("key")],
            "missing",
            "Field required",
        ));
    };
    regenerate(state.clone(), caller, key, req.new_key.as_deref()).await
}

pub async fn key_regenerate_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    // The body is optional here, so it is read as bytes; keep JsonBody's error shapes.
    let body = body.map_err(|r| {
        let status = r.status();
        ApiError::proxy(status, super::error::type_for_status(status), r.body_text())
    })?;
    let req: RegenerateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RegenerateRequest::default()
    } else {
        parse_json(&body)?
    };
    regenerate(state.clone(), caller, &key, req.new_key.as_deref()).await
}
