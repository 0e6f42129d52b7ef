//! Credential → [`Caller`] (reference §1.1, §1.4, §2.2). The master key is compared in constant
//! time; virtual keys are looked up by sha256 through the cache, so a warm key costs no database
//! round trip. Blocked and expired keys are refused here, on every route.

use axum::http::StatusCode;
use chrono::Utc;
use purser_core::keys::{abbreviate, hash_key};
use purser_core::roles::UserRole;
use purser_core::routes;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;

/// Refuses a virtual key whose `allowed_routes` (set directly or by its `key_type`) do not cover
/// the request `path` (route-table template `template`). Applies to every role, proxy admins'
/// keys too; the master key has no list.
pub fn check_allowed_routes(caller: &Caller, path: &str, template: &str) -> Result<(), Error> {
    let Some(key) = &caller.key else {
        return Ok(());
    };
    let allowed = &key.allowed_routes.0;
    if routes::allows(allowed, path, template) {
        return Ok(());
    }
    let listed: Vec<String> = allowed.iter().map(|r| format!("'{r}'")).collect();
    Err(Error::proxy(
        StatusCode::FORBIDDEN,
        "auth_error",
        format!(
            "Virtual key is not allowed to call this route. Only allowed to call routes: [{}]. Tried to call route: {path}",
            listed.join(", ")
        ),
    )
    .with_param("None"))
}

/// A blocked team stops its keys on every route, not only on model calls (the request path
/// checks it there, in the reference's order after budgets).
pub async fn check_team_not_blocked(state: &AppState, caller: &Caller) -> Result<(), Error> {
    let Some(team_id) = caller.key.as_ref().and_then(|k| k.team_id.as_deref()) else {
        return Ok(());
    };
    match state.cache.team(&state.db, team_id).await? {
        Some(t) if t.team.blocked => Err(Error::auth(format!(
            "Authentication Error, Team={team_id} is blocked. Update via `/team/unblock` if you're an admin."
        ))
        .with_param("None")),
        _ => Ok(()),
    }
}

/// Resolves the raw credential presented by a client.
pub async fn resolve(state: &AppState, credential: &str) -> Result<Caller, Error> {
    let master = state.settings.master_key.as_bytes();
    if bool::from(credential.as_bytes().ct_eq(master)) {
        return Ok(Caller::master());
    }
    if !credential.starts_with("sk-") {
        return Err(Error::auth(format!(
            "Authentication Error, LiteLLM Virtual Key expected. Received={}, expected to start with 'sk-'.",
            abbreviate(credential)
        )));
    }
    let token = hash_key(credential);
    let Some(key) = state.cache.key(&state.db, &token).await? else {
        return Err(Error::proxy(
            StatusCode::UNAUTHORIZED,
            "token_not_found_in_db",
            "Authentication Error, Invalid API key provided.",
        )
        .with_param("key"));
    };
    if key.blocked == Some(true) {
        return Err(Error::auth(
            "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
        ));
    }
    if let Some(expires) = key.expires {
        let now = Utc::now();
        if expires < now {
            return Err(Error::proxy(
                StatusCode::UNAUTHORIZED,
                "expired_key",
                format!("Authentication Error - Expired Key. Key Expiry time {expires} and current time {now}"),
            )
            .with_param(abbreviate(credential)));
        }
    }
    let role = match &key.user_id {
        Some(uid) => match state.cache.user(&state.db, uid).await? {
            Some(u) => UserRole::from_stored(Some(&u.user_role)),
            None => UserRole::InternalUser,
        },
        None => UserRole::InternalUser,
    };
    Ok(Caller {
        user_id: key.user_id.clone(),
        role,
        is_master: false,
        key: Some(key),
    })
}
