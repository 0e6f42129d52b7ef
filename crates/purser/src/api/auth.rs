//! Authentication middleware and route gate. Reads the credential (reference §1.1 order:
//! `x-litellm-api-key`, `Authorization: Bearer`, `api-key`, `x-api-key`, then `x-goog-api-key`),
//! resolves the caller,
//! applies the route's [`Gate`] and hands the [`Caller`] to the handler via request extensions.
//! A refusal is decided from the headers; the unread body is drained (bounded) before answering
//! so the client's kept-alive connection survives the 401/403.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use purser_core::roles::UserRole;

use super::Gate;
use crate::app::AppState;
use crate::error::Error;
use crate::service::auth;
use crate::service::caller::Caller;

pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let gate = state.gates.get(req.method(), &path).unwrap_or(Gate::Admin);
    if gate == Gate::Public {
        return next.run(req).await;
    }
    let resolved = match credential(req.headers()) {
        Err(e) => Err(e),
        Ok(cred) => auth::resolve(&state, &cred).await,
    };
    let mut checked = resolved.and_then(|caller| {
        auth::check_allowed_routes(&caller, req.uri().path(), &path)?;
        check_gate(gate, req.method(), &path, &caller)?;
        Ok(caller)
    });
    // Model calls check a blocked team themselves, after budgets (the reference's order).
    let governed = matches!(
        path.as_str(),
        "/v1/chat/completions"
            | "/chat/completions"
            | "/v1/embeddings"
            | "/embeddings"
            | "/v1/completions"
            | "/completions"
            | "/v1/responses"
            | "/responses"
            | "/v1/moderations"
            | "/moderations"
            | "/v1/images/generations"
            | "/images/generations"
            | "/v1/audio/speech"
            | "/audio/speech"
            | "/v1/audio/transcriptions"
            | "/audio/transcriptions"
            | "/v1/rerank"
            | "/rerank"
            | "/v2/rerank"
            | "/v1/messages"
    );
    if !governed
        && let Ok(caller) = &checked
        && let Err(e) = auth::check_team_not_blocked(&state, caller).await
    {
        checked = Err(e);
    }
    match checked {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => refuse(req, e, path.starts_with("/v1/messages")).await,
    }
}

/// Answers `e` after draining the request body, or, if it could not be drained within bounds,
/// with `Connection: close`: hyper closes a connection whose body was left unread, and the
/// header tells the client so instead of leaving it to find out on its next request. HTTP/2
/// needs neither: an unread body only resets its own stream.
async fn refuse(req: Request, e: Error, anthropic: bool) -> Response {
    let draw = |e: Error| {
        if anthropic {
            super::error::render_anthropic(&e)
        } else {
            e.into_response()
        }
    };
    if req.version() >= axum::http::Version::HTTP_2 {
        return draw(e);
    }
    let drained = super::extract::discard_body(req).await;
    let mut response = draw(e);
    if !drained {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Extracts the presented credential, or the reference's 401 for a missing/malformed one.
fn credential(headers: &HeaderMap) -> Result<String, Error> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::trim).unwrap_or(""))
    };
    if let Some(v) = text("x-litellm-api-key") {
        return non_empty(v.strip_prefix("Bearer ").unwrap_or(v));
    }
    if let Some(v) = text("authorization") {
        return match v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            Some(k) => non_empty(k.trim()),
            None => Err(Error::auth(
                "Malformed API Key passed in. Ensure Key has `Bearer ` prefix.",
            )),
        };
    }
    // `x-goog-api-key`: Gemini-style clients.
    for h in ["api-key", "x-api-key", "x-goog-api-key"] {
        if let Some(v) = text(h) {
            return non_empty(v);
        }
    }
    Err(Error::auth("Authentication Error, No api key passed in."))
}

fn non_empty(k: &str) -> Result<String, Error> {
    if k.is_empty() {
        Err(Error::auth("Authentication Error, No api key passed in."))
    } else {
        Ok(k.to_string())
    }
}

/// Route-level check for callers that are not proxy admins (reference §2.3).
pub fn check_gate(gate: Gate, method: &Method, path: &str, caller: &Caller) -> Result<(), Error> {
    if caller.is_proxy_admin() {
        return Ok(());
    }
    let read = method == Method::GET || method == Method::HEAD;
    let role = caller.role;
    let allowed = match gate {
        Gate::Public | Gate::SelfManaged => true,
        Gate::Llm => {
            if role == UserRole::ProxyAdminViewer {
                return Err(Error::proxy(
                    StatusCode::FORBIDDEN,
                    "auth_error",
                    format!(
                        "user not allowed to access this OpenAI routes, role= {}",
                        role.as_str()
                    ),
                ));
            }
            true
        }
        Gate::InternalUser => match role {
            UserRole::InternalUser => true,
            UserRole::InternalUserViewer | UserRole::ProxyAdminViewer => read,
            UserRole::ProxyAdmin => true,
        },
        Gate::Admin => role == UserRole::ProxyAdminViewer && read,
    };
    if allowed {
        return Ok(());
    }
    if role == UserRole::ProxyAdminViewer {
        return Err(Error::proxy(
            StatusCode::FORBIDDEN,
            "auth_error",
            format!(
                "user not allowed to access this route, role= {}. Trying to access: {path}",
                role.as_str()
            ),
        ));
    }
    Err(Error::auth(format!(
        "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. \
         Route={path}. Your role={}. Your user_id={}",
        role.as_str(),
        caller
            .user_id
            .as_deref()
            .map(purser_core::keys::abbreviate)
            .unwrap_or_else(|| "None".into())
    )))
}

/// The authenticated caller, put in place by [`authenticate`].
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::auth("Authentication Error, No api key passed in."))
    }
}
