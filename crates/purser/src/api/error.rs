//! The two LiteLLM error shapes (reference §1.2) and the status each carries.
//! `Proxy` renders `{"error": {"message", "type", "param", "code"}}` with `code` as a string;
//! `Detail` renders FastAPI's `{"detail": …}`. Every failure a client can cause maps to a 4xx
//! here; storage and upstream failures map to 5xx without leaking internals.

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub enum ApiError {
    /// OpenAI-style ProxyException.
    Proxy {
        status: StatusCode,
        message: String,
        kind: String,
        param: Option<String>,
        headers: Option<Box<HeaderMap>>,
    },
    /// FastAPI `HTTPException`: `{"detail": <value>}`.
    Detail { status: StatusCode, detail: Value },
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A ProxyException with an explicit error type.
    pub fn proxy(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::Proxy {
            status,
            message: message.into(),
            kind: kind.to_string(),
            param: None,
            headers: None,
        }
    }

    /// A ProxyException raised from an `HTTPException(detail={"error": msg})` inside a wrapped
    /// handler: the message is the Python repr of the dict, as the reference renders it.
    pub fn wrapped(status: StatusCode, message: &str) -> ApiError {
        ApiError::proxy(
            status,
            type_for_status(status),
            format!("{{'error': {}}}", py_str_repr(message)),
        )
    }

    /// `{"detail": {"error": msg}}` (unwrapped handlers).
    pub fn detail_error(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Detail {
            status,
            detail: json!({ "error": message.into() }),
        }
    }

    /// `{"detail": msg}`.
    pub fn detail(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Detail {
            status,
            detail: Value::String(message.into()),
        }
    }

    /// 422 request validation failure in FastAPI's list shape, naming the field by `loc`.
    pub fn validation(loc: Vec<Value>, kind: &str, msg: impl Into<String>) -> ApiError {
        ApiError::Detail {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: json!([{ "type": kind, "loc": loc, "msg": msg.into(), "input": Value::Null }]),
        }
    }

    /// 401 `auth_error`.
    pub fn auth(message: impl Into<String>) -> ApiError {
        ApiError::proxy(StatusCode::UNAUTHORIZED, "auth_error", message)
    }

    /// 500 with a generic message; the cause is logged, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::proxy(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "Internal Server Error",
        )
    }

    pub fn with_param(mut self, p: impl Into<String>) -> ApiError {
        if let ApiError::Proxy { param, .. } = &mut self {
            *param = Some(p.into());
        }
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        if let ApiError::Proxy { headers, .. } = &mut self {
            headers
                .get_or_insert_with(Default::default)
                .insert(name, value);
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Proxy { status, .. } | ApiError::Detail { status, .. } => *status,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::internal(format_args!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Proxy {
                status,
                message,
                kind,
                param,
                headers,
            } => {
                let body = json!({
                    "error": { "message": message, "type": kind, "param": param, "code": status.as_u16().to_string() }
                });
                (status, headers.map(|h| *h).unwrap_or_default(), Json(body)).into_response()
            }
            ApiError::Detail { status, detail } => {
                (status, Json(json!({ "detail": detail }))).into_response()
            }
        }
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
