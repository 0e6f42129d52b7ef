//! Draws `crate::error::Error` in the reference's two wire shapes (§1.2). A refusal
//! (`Error::Http`) reads as FastAPI's `{"detail": …}` on plain routes and as a converted
//! ProxyException `{"error": {"message", "type", "param", "code"}}` on wrapped ones; which one a route
//! uses is recorded in the route table (`Route::answers`). ProxyExceptions and 422 validation lists
//! read the same on every route. Storage and upstream failures are 5xx without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::{Detail, Error};

/// How a route draws a refusal (`Error::Http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// FastAPI's default: `{"detail": {"error": msg}}` or `{"detail": msg}`.
    Detail,
    /// A handler behind the reference's "convert any exception" wrapper (keys, users, LLM
    /// routes): a ProxyException whose message is Python's `str()` of the detail and whose type
    /// follows the status.
    Wrapped,
    /// The team write wrapper (`/team/new`, `/team/update`, PATCH, `/team/info`): as `Wrapped`,
    /// but the type is `internal_server_error` whatever the status except 401/403 `auth_error`
    /// (recorded: duplicate team id → 400 `internal_server_error`).
    TeamWrapped,
}

/// The error a handler returned, kept on its response so the route's shape layer can redraw it.
#[derive(Debug, Clone)]
pub struct Raised(pub Error);

/// The body and status of `e` on a route of shape `shape`.
pub fn render(e: &Error, shape: Shape) -> Response {
    match e {
        Error::Proxy {
            status,
            message,
            kind,
            param,
            headers,
        } => proxy_body(*status, kind, message, param.as_deref(), headers.as_deref()),
        Error::Validation { loc, kind, msg } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "detail": [{ "type": kind, "loc": loc, "msg": msg, "input": Value::Null }]
            })),
        )
            .into_response(),
        Error::Http { status, detail } => match shape {
            Shape::Detail => {
                let detail = match detail {
                    Detail::Error(m) => json!({ "error": m }),
                    Detail::Text(m) => Value::String(m.clone()),
                };
                (*status, Json(json!({ "detail": detail }))).into_response()
            }
            Shape::Wrapped | Shape::TeamWrapped => {
                let message = match detail {
                    Detail::Error(m) => format!("{{'error': {}}}", py_str_repr(m)),
                    Detail::Text(m) => m.clone(),
                };
                let auth = *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN;
                let kind = if shape == Shape::TeamWrapped && !auth {
                    "internal_server_error"
                } else {
                    type_for_status(*status)
                };
                proxy_body(*status, kind, &message, None, None)
            }
        },
    }
}

fn proxy_body(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
    headers: Option<&axum::http::HeaderMap>,
) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": param, "code": status.as_u16().to_string() }
    });
    (status, headers.cloned().unwrap_or_default(), Json(body)).into_response()
}

/// `e` as Anthropic's API answers errors (`/v1/messages`): `{"type": "error", "error": {"type",
/// "message"}}`, the type following the status, the headers (`retry-after`…) kept.
pub fn render_anthropic(e: &Error) -> Response {
    let (status, message, headers) = match e {
        Error::Proxy {
            status,
            message,
            headers,
            ..
        } => (*status, message.clone(), headers.as_deref().cloned()),
        Error::Validation { loc, msg, .. } => {
            let at: Vec<String> = loc
                .iter()
                .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
                .collect();
            (
                StatusCode::BAD_REQUEST,
                format!("{}: {msg}", at.join(".")),
                None,
            )
        }
        Error::Http { status, detail } => (
            *status,
            match detail {
                Detail::Error(m) | Detail::Text(m) => m.clone(),
            },
            None,
        ),
    };
    let kind = match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, headers.unwrap_or_default(), Json(body)).into_response()
}

/// Draws the error in the `Detail` shape and keeps it on the response for the route's layer.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = render(&self, Shape::Detail);
        if matches!(self, Error::Http { .. }) {
            response.extensions_mut().insert(Raised(self));
        }
        response
    }
}

/// The route layer's step: redraws a refusal in the route's shape.
pub fn redraw(shape: Shape, mut response: Response) -> Response {
    match response.extensions_mut().remove::<Raised>() {
        Some(Raised(e)) if shape != Shape::Detail => render(&e, shape),
        _ => response,
    }
}

/// OpenAI error type derived from an HTTP status.
pub fn type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request_error",
        401 | 403 => "auth_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "request_too_large",
        422 => "validation_error",
        429 => "rate_limit_error",
        _ => "internal_server_error",
    }
}

/// Python's `repr()` of a str: single quotes unless the text holds `'` and no `"`.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn one_refusal_in_each_shape() {
        let e = Error::http(StatusCode::NOT_FOUND, "User u1 not found");
        assert_eq!(
            body(render(&e, Shape::Detail)).await,
            json!({"detail": {"error": "User u1 not found"}})
        );
        let wrapped = json!({"error": {
            "message": "{'error': 'User u1 not found'}", "type": "not_found_error",
            "param": null, "code": "404"}});
        assert_eq!(body(render(&e, Shape::Wrapped)).await, wrapped);
        let team = body(render(&e, Shape::TeamWrapped)).await;
        assert_eq!(team["error"]["type"], "internal_server_error");
        let denied = Error::http_text(StatusCode::FORBIDDEN, "no");
        assert_eq!(
            body(render(&denied, Shape::Detail)).await,
            json!({"detail": "no"})
        );
        let team = body(render(&denied, Shape::TeamWrapped)).await;
        assert_eq!(team["error"]["type"], "auth_error");
        assert_eq!(team["error"]["message"], "no");
        // The handler's default drawing is redrawn by the route's layer, once.
        let redrawn = redraw(Shape::Wrapped, e.clone().into_response());
        assert_eq!(body(redrawn).await, wrapped);
        let proxy = Error::auth("bad key").with_param("None");
        let p = body(redraw(Shape::Wrapped, proxy.clone().into_response())).await;
        assert_eq!(p, body(render(&proxy, Shape::Detail)).await);
        assert_eq!(p["error"]["param"], "None");
    }

    #[test]
    fn python_repr() {
        assert_eq!(
            py_str_repr("Team id = x already exists."),
            "'Team id = x already exists.'"
        );
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        assert_eq!(py_str_repr("a'b\"c"), "'a\\'b\"c'");
    }
}
