//! `/key/*` routes (reference §6.1–6.3): thin handlers over `service::keys`. Every write commits
//! and then evicts the changed tokens from the cache before answering, so the very next request
//! with a blocked, deleted or rotated key is refused.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::Shape;
use super::extract::{JsonBody, PagedQuery, QueryParams, null_as_default, parse_json};
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::service::caller::Caller;
use crate::service::keys::{self, GenerateKeyRequest, UpdateKeyRequest};
use crate::service::paging::{PageRules, Paged};
use crate::service::views;
use crate::store::{self, keys::KeyFilter};
use purser_core::unenforced;

pub fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/key/generate",
            Gate::InternalUser,
            "key management",
            "Create a virtual key",
            key_generate,
        )
        .answers(Shape::Wrapped)
        .refuses(unenforced::KEY),
        Route::get(
            "/key/info",
            Gate::InternalUser,
            "key management",
            "Read a key (default: the caller's own)",
            key_info,
        )
        .answers(Shape::Wrapped),
        Route::get(
            "/key/list",
            Gate::InternalUser,
            "key management",
            "List keys (non-admins: their own)",
            key_list,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/key/update",
            Gate::InternalUser,
            "key management",
            "Update a key (only sent fields change)",
            key_update,
        )
        .answers(Shape::Wrapped)
        .refuses(unenforced::KEY),
        Route::post(
            "/key/delete",
            Gate::InternalUser,
            "key management",
            "Delete keys by key or alias",
            key_delete,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/key/block",
            Gate::Admin,
            "key management",
            "Block a key",
            key_block,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/key/unblock",
            Gate::Admin,
            "key management",
            "Unblock a key",
            key_unblock,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/key/regenerate",
            Gate::InternalUser,
            "key management",
            "Rotate a key's secret",
            key_regenerate,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/key/{key}/regenerate",
            Gate::InternalUser,
            "key management",
            "Rotate a key's secret (key in the path)",
            key_regenerate_path,
        )
        .answers(Shape::Wrapped),
    ]
}

pub async fn key_generate(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<GenerateKeyRequest>,
) -> Result<Json<Value>> {
    let (raw, row) = keys::generate(&state, &caller, &req).await?;
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
) -> Result<Json<Value>> {
    let (shown, row, forecast) = keys::info(&state, &caller, q.key.as_deref()).await?;
    let mut info = views::key_json(&row, false);
    info["status"] = json!(views::key_status(&row, store::now()));
    Ok(Json(
        json!({ "key": shown, "info": info, "spend_forecast": forecast }),
    ))
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
) -> Result<Json<Value>> {
    let filter = KeyFilter {
        user_id: q.user_id.clone(),
        team_id: q.team_id.clone(),
        key_alias: q.key_alias.clone(),
    };
    let (rows, total) = keys::list(&state, &caller, filter, paging).await?;
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
        "current_page": paging.number,
        "total_pages": (total + paging.size - 1) / paging.size,
    })))
}

pub async fn key_update(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UpdateKeyRequest>,
) -> Result<Json<Value>> {
    let after = keys::update(&state, &caller, &req).await?;
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
) -> Result<Json<Value>> {
    keys::delete(&state, &caller, &req.keys, &req.key_aliases).await?;
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
) -> Result<Json<Value>> {
    let row = keys::set_blocked(&state, &caller, key, blocked).await?;
    Ok(Json(views::key_json(&row, true)))
}

pub async fn key_block(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<KeyRef>,
) -> Result<Json<Value>> {
    set_blocked(state, caller, &req.key, true).await
}

pub async fn key_unblock(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<KeyRef>,
) -> Result<Json<Value>> {
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
) -> Result<Json<Value>> {
    let (raw, row) = keys::regenerate(&state, &caller, key, new_key).await?;
    Ok(Json(keys::generate_response(Some(&raw), &row, None)))
}

pub async fn key_regenerate(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<RegenerateRequest>,
) -> Result<Json<Value>> {
    let Some(key) = req.key.as_deref() else {
        return Err(Error::validation(
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
) -> Result<Json<Value>> {
    // The body is optional here, so it is read as bytes; keep JsonBody's error shapes.
    let body = body.map_err(|r| {
        let status = r.status();
        Error::proxy(status, super::error::type_for_status(status), r.body_text())
    })?;
    let req: RegenerateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RegenerateRequest::default()
    } else {
        parse_json(&body)?
    };
    regenerate(state.clone(), caller, &key, req.new_key.as_deref()).await
}
