//! Credential → [`Caller`] (reference §1.1, §1.4, §2.2). The master key is compared in constant
//! time; virtual keys are looked up by sha256 through the cache, so a warm key costs no database
//! round trip. Blocked and expired keys are refused here, on every route.

use axum::http::StatusCode;
use chrono::Utc;
use purser_core::keys::{abbreviate, hash_key};
use purser_core::roles::UserRole;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;

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
