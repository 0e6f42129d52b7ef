//! Request extractors that turn every malformed input into a FastAPI-shaped 4xx JSON error
//! naming the offending field: JSON bodies and query strings; and the bounded draining of a body
//! that will not be used, so an early answer does not reset the client's connection. The
//! three-state `Patch` field that update routes need lives in `service::patch` (request types are
//! service types) and is re-exported here.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use purser_core::validate;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Error;
use crate::service::paging::{Page, Paged};
pub use crate::service::patch::{Patch, null_as_default};

/// How much of an over-limit body is still read (and dropped) after deciding on 413, and for how
/// long: a client that is still sending when the server closes gets a connection reset instead
/// of the answer, so the gateway listens a little longer (nginx calls this lingering close).
const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// How much of a body is read and dropped after a refusal decided from the headers alone (401,
/// 403). Small enough that an unauthenticated client cannot make the gateway read much; large
/// enough for ordinary LLM requests, whose connection then survives. Larger bodies: the answer
/// says `Connection: close` and hyper closes, as before.
const REFUSED_DRAIN_MAX_BYTES: u64 = 1024 * 1024;

/// A request body read whole, up to `max_request_size_mb`. Larger bodies are refused with 413
/// in the proxy error shape before they are buffered (by `Content-Length` when it is sent).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_limited(req, state.settings.body_limit_bytes)
            .await
            .map(RawBody)
    }
}

async fn read_limited(req: Request, limit: usize) -> Result<Bytes, Error> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = req.into_body().into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(stream, DRAIN_MAX_BYTES).await;
        return Err(too_large());
    }
    // Trust the declared size only so far: a client declaring 10 MiB and sending nothing
    // must not make the gateway reserve 10 MiB per connection.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(1024 * 1024) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if is_timeout(&e) {
                // The rest of the body is never read, so hyper closes the connection after this.
                return Error::proxy(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout_error",
                    "Timed out reading the request body: the client stopped sending",
                );
            }
            Error::proxy(
                StatusCode::BAD_REQUEST,
                "bad_request_error",
                format!("Could not read request body: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > limit {
            drain(stream, DRAIN_MAX_BYTES).await;
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and drops up to `max` bytes for at most `DRAIN_MAX_TIME`; true if the body ended.
async fn drain(
    mut stream: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    max: usize,
) -> bool {
    tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut seen = 0usize;
        loop {
            match stream.next().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(chunk)) => {
                    seen += chunk.len();
                    if seen > max {
                        return false;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Consumes the body of a request refused before its handler ran, so that hyper can keep the
/// connection (it closes one whose body was left unread). Bounded by
/// `REFUSED_DRAIN_MAX_BYTES` and `DRAIN_MAX_TIME`; false when the body was not read to its end
/// (too large, too slow, or `Expect: 100-continue`, where the client waits for a go-ahead and
/// reading would invite the upload) and the connection should close.
pub async fn discard_body(req: Request) -> bool {
    use axum::body::HttpBody;
    let headers = req.headers();
    if headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        return req.body().is_end_stream();
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > REFUSED_DRAIN_MAX_BYTES) {
        return false;
    }
    let body = req.into_body();
    if body.is_end_stream() {
        return true;
    }
    drain(body.into_data_stream(), REFUSED_DRAIN_MAX_BYTES as usize).await
}

/// Whether a body error is the read timeout of `RequestBodyTimeoutLayer`.
fn is_timeout(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn too_large() -> Error {
    Error::proxy(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        "Request body is larger than the configured limit",
    )
}

/// A JSON request body. Syntax errors, wrong types and missing required fields become 422
/// `{"detail": [{"type", "loc": ["body", …], "msg"}]}`; a body over the limit becomes 413.
/// The Content-Type header is not required (LiteLLM clients and curl users often omit it).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let refused = req.extensions().get::<Refused>().copied();
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            check_fields(&v, &mut vec![json!("body")])?;
            if let Some(Refused(fields)) = refused {
                refuse_unenforced(&v, fields)?;
            }
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// The body fields a route refuses (set by the route table, read by [`JsonBody`]).
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub &'static [&'static str]);

/// A 400 naming the first refused field that carries a value: never stored and ignored.
fn refuse_unenforced(v: &Value, fields: &[&str]) -> Result<(), Error> {
    let Some(map) = v.as_object() else {
        return Ok(());
    };
    for f in fields {
        let set = match map.get(*f) {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(Error::http(
                StatusCode::BAD_REQUEST,
                purser_core::unenforced::message(f),
            ));
        }
    }
    Ok(())
}

/// Fields of management bodies that name something (ids, aliases, emails), wherever they sit.
const ID_FIELDS: &[&str] = &[
    "team_id",
    "user_id",
    "key_alias",
    "team_alias",
    "user_alias",
    "user_email",
    "organization_id",
    "budget_id",
    "key",
    "new_key",
];
/// Lists of names: each entry is bounded like an id.
const ID_LISTS: &[&str] = &[
    "models",
    "team_ids",
    "user_ids",
    "keys",
    "key_aliases",
    "teams",
    "team_member_permissions",
    "allowed_routes",
];

/// Bounds every id, alias, email and model name of a management body (no control characters,
/// at most `MAX_ID_CHARS`) and every `metadata` object (`MAX_METADATA_BYTES` serialized), with a
/// 422 naming the field. Stored names stay printable and distinct, and no field grows a row
/// without limit.
fn check_fields(v: &Value, loc: &mut Vec<Value>) -> Result<(), Error> {
    let id = |s: &str, loc: &[Value]| match validate::identifier(s) {
        Ok(()) => Ok(()),
        Err(validate::IdError::TooLong) => Err(Error::validation(
            loc.to_vec(),
            "string_too_long",
            format!(
                "String should have at most {} characters",
                validate::MAX_ID_CHARS
            ),
        )),
        Err(validate::IdError::ControlChar) => Err(Error::validation(
            loc.to_vec(),
            "string_pattern_mismatch",
            "String must not contain control characters",
        )),
    };
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                loc.push(json!(k));
                if ID_FIELDS.contains(&k.as_str())
                    && let Value::String(s) = child
                {
                    id(s, loc)?;
                }
                if ID_LISTS.contains(&k.as_str())
                    && let Value::Array(items) = child
                {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::String(s) = item {
                            loc.push(json!(i));
                            id(s, loc)?;
                            loc.pop();
                        }
                    }
                }
                if k == "metadata" && child.to_string().len() > validate::MAX_METADATA_BYTES {
                    return Err(Error::validation(
                        loc.clone(),
                        "too_long",
                        format!(
                            "metadata must be at most {} bytes as JSON",
                            validate::MAX_METADATA_BYTES
                        ),
                    ));
                }
                check_fields(child, loc)?;
                loc.pop();
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                loc.push(json!(i));
                check_fields(item, loc)?;
                loc.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses JSON bytes into `T` with FastAPI-shaped errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::validation(
            vec![json!("body")],
            "missing",
            "Field required",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        let mut loc = vec![json!("body")];
        if inner.is_syntax() || inner.is_eof() {
            loc.push(json!(inner.column()));
            return Error::validation(loc, "json_invalid", format!("JSON decode error: {inner}"));
        }
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => loc.push(json!(index)),
                serde_path_to_error::Segment::Map { key } => loc.push(json!(key)),
                serde_path_to_error::Segment::Enum { variant } => loc.push(json!(variant)),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        let kind = if msg.starts_with("missing field") {
            "missing"
        } else {
            "type_error"
        };
        let field = e.path().to_string();
        Error::validation(
            loc,
            kind,
            if field == "." {
                msg
            } else {
                format!("{field}: {msg}")
            },
        )
    })
}

/// Query parameters with FastAPI-shaped 422 errors naming the parameter.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let field = e.path().to_string();
                let msg = e.inner().to_string();
                let kind = if msg.starts_with("missing field") {
                    "missing"
                } else {
                    "type_error"
                };
                let loc = if field == "." {
                    vec![json!("query"), json!(msg.split('`').nth(1).unwrap_or(""))]
                } else {
                    vec![json!("query"), json!(field)]
                };
                Error::validation(loc, kind, msg)
            })
    }
}

/// The query of a listing route, parsed as [`QueryParams`] does, with its paging parameters
/// checked by the route's [`Paged`] rules.
pub struct PagedQuery<T>(pub T, pub Page);

impl<S: Send + Sync, T: DeserializeOwned + Paged> FromRequestParts<S> for PagedQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let QueryParams(q) = QueryParams::<T>::from_request_parts(parts, state).await?;
        let page = Page::of(&q)?;
        Ok(PagedQuery(q, page))
    }
}

/// Serialises an absent `Value` as `null` (helper for echo responses).
pub fn or_null<T: serde::Serialize>(v: &Option<T>) -> Value {
    v.as_ref()
        .map(|x| serde_json::to_value(x).unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Req {
        #[allow(dead_code)]
        team_id: String,
        #[serde(default)]
        max_budget: Patch<f64>,
        #[serde(default)]
        models: Option<Vec<String>>,
    }

    #[test]
    fn patch_states() {
        let r: Req = parse_json(br#"{"team_id":"t"}"#).unwrap();
        assert_eq!(r.max_budget, Patch::Absent);
        let r: Req = parse_json(br#"{"team_id":"t","max_budget":null}"#).unwrap();
        assert_eq!(r.max_budget, Patch::Null);
        let r: Req = parse_json(br#"{"team_id":"t","max_budget":5}"#).unwrap();
        assert_eq!(r.max_budget, Patch::Value(5.0));
        assert!(r.models.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Req>(br#"{"team_id":"t","models":[1]}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let Error::Validation { loc, .. } = e else {
            panic!()
        };
        assert_eq!(loc, vec![json!("body"), json!("models"), json!(0)]);
        let Error::Validation { kind, msg, .. } = parse_json::<Req>(b"{}").unwrap_err() else {
            panic!()
        };
        assert_eq!(kind, "missing");
        assert!(msg.contains("team_id"));
        let Error::Validation { kind, .. } = parse_json::<Req>(b"{not json").unwrap_err() else {
            panic!()
        };
        assert_eq!(kind, "json_invalid");
        assert!(parse_json::<Req>(b"").is_err());
    }
}

/// A boolean query parameter read as FastAPI reads one (`true/false`, `1/0`, `yes/no`, `on/off`,
/// `t/f`, `y/n`, any case); anything else is a 422 naming the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryBool(pub bool);

impl<'de> serde::Deserialize<'de> for QueryBool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Ok(QueryBool(true)),
            "false" | "0" | "no" | "off" | "f" | "n" => Ok(QueryBool(false)),
            _ => Err(serde::de::Error::custom(
                "Input should be a valid boolean, unable to interpret input",
            )),
        }
    }
}

impl QueryBool {
    /// The flag's value, `default` when the parameter was not sent.
    pub fn or(flag: Option<QueryBool>, default: bool) -> bool {
        flag.map_or(default, |f| f.0)
    }
}
