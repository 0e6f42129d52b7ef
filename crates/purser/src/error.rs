//! The one error type of every layer below `api/` (service, upstream) and of the HTTP layer itself:
//! what went wrong and its status, never how it is drawn. A refusal is raised the way the
//! reference's handlers raise FastAPI's `HTTPException`; `api::error` draws it in the wire shape the
//! route table gives the route (`{"detail": …}` or a converted ProxyException), so one service
//! function answers correctly on every route that calls it.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Error {
    /// A handler's refusal (`HTTPException(status, detail)`): its body depends on the route.
    Http { status: StatusCode, detail: Detail },
    /// A ProxyException raised with its own OpenAI error type (auth, budgets, limits, upstream
    /// failures): the same body on every route.
    Proxy {
        status: StatusCode,
        kind: String,
        message: String,
        param: Option<String>,
        headers: Option<Box<HeaderMap>>,
    },
    /// A request-validation failure (FastAPI's 422 list naming the field by `loc`): raised before
    /// the handler in the reference, so the same body on every route.
    Validation {
        loc: Vec<Value>,
        kind: String,
        msg: String,
    },
}

/// The `detail` of an `HTTPException`: most handlers pass `{"error": msg}`, a few a bare string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    Error(String),
    Text(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `HTTPException(status, detail={"error": msg})`.
    pub fn http(status: StatusCode, message: impl Into<String>) -> Error {
        Error::Http {
            status,
            detail: Detail::Error(message.into()),
        }
    }

    /// `HTTPException(status, detail=msg)`.
    pub fn http_text(status: StatusCode, message: impl Into<String>) -> Error {
        Error::Http {
            status,
            detail: Detail::Text(message.into()),
        }
    }

    /// A ProxyException with an explicit error type.
    pub fn proxy(status: StatusCode, kind: &str, message: impl Into<String>) -> Error {
        Error::Proxy {
            status,
            message: message.into(),
            kind: kind.to_string(),
            param: None,
            headers: None,
        }
    }

    /// 422 request validation failure, naming the field by `loc`.
    pub fn validation(loc: Vec<Value>, kind: &str, msg: impl Into<String>) -> Error {
        Error::Validation {
            loc,
            kind: kind.to_string(),
            msg: msg.into(),
        }
    }

    /// 401 `auth_error`.
    pub fn auth(message: impl Into<String>) -> Error {
        Error::proxy(StatusCode::UNAUTHORIZED, "auth_error", message)
    }

    /// 500 with a generic message; the cause is logged here, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Error {
        tracing::error!(error = %cause, "internal error");
        Error::proxy(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "Internal Server Error",
        )
    }

    /// Sets a ProxyException's `param`; other kinds have none.
    pub fn with_param(mut self, p: impl Into<String>) -> Error {
        if let Error::Proxy { param, .. } = &mut self {
            *param = Some(p.into());
        }
        self
    }

    /// Adds a response header to a ProxyException (e.g. `retry-after`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Error {
        if let Error::Proxy { headers, .. } = &mut self {
            headers
                .get_or_insert_with(Default::default)
                .insert(name, value);
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Http { status, .. } | Error::Proxy { status, .. } => *status,
            Error::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The OpenAI error type of a ProxyException (`budget_exceeded`, `rate_limit_error`…);
    /// `http_error` / `validation_error` for the others (metrics label it).
    pub fn kind(&self) -> &str {
        match self {
            Error::Proxy { kind, .. } => kind,
            Error::Http { .. } => "http_error",
            Error::Validation { .. } => "validation_error",
        }
    }

    /// The human-readable text, without any wire framing (bulk results embed it).
    pub fn message(&self) -> &str {
        match self {
            Error::Http {
                detail: Detail::Error(m) | Detail::Text(m),
                ..
            } => m,
            Error::Proxy { message, .. } => message,
            Error::Validation { msg, .. } => msg,
        }
    }
}

impl From<sqlx::Error> for Error {
    /// A database that cannot be reached is a 503 (nothing was changed; retry later), any
    /// other database failure a 500.
    fn from(e: sqlx::Error) -> Error {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %e, "database unreachable");
                Error::proxy(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "Database unavailable: nothing was changed. Retry later.",
                )
            }
            e => Error::internal(format_args!("database: {e}")),
        }
    }
}
