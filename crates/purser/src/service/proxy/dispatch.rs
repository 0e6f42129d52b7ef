//! Calling the deployment and settling the call (`Meter`): non-streaming answers are read as
//! they arrive and billed even when the upstream breaks mid-body or answers something that is
//! not JSON. Invariant: every admitted call settles exactly once, and the soft budgets of its
//! key and team are looked at right after (`service::alerts`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use super::context::{CallRequest, Inbound, MessagesRequest};
use super::mock::{mock_body, mock_stream};
use super::stream::{Relay, StreamMeter, pump_stream};
use crate::app::AppState;
use crate::error::Error;
use crate::limiter::{Held, RateLimit};
use crate::service::alerts::{Alerts, SoftBudgetWatch};
use crate::service::model_budget::ModelReservation;
use crate::service::spend::Reservation;
use crate::store::spend::SpendLogRow;
use crate::upstream::sse::{SseTap, Usage, UsageChunkFilter};
use crate::upstream::{self, FailureClass, anthropic, bedrock, gemini};
use crate::upstream::{CallKind, Deployment, Failure, MAX_FALLBACKS, Slot};
use purser_core::provider::Wire;

/// What a settled call books.
pub(super) struct Meter {
    pub(super) state: AppState,
    pub(super) reservation: Option<Reservation>,
    /// The call's hold on its per-model budget windows (`model_max_budget`), if any.
    pub(super) model_reservation: Option<ModelReservation>,
    pub(super) slot: Slot,
    pub(super) limits: Vec<RateLimit>,
    /// Where `limits` were counted (released there).
    pub(super) held: Held,
    pub(super) prompt_estimate: u64,
    pub(super) log: SpendLogRow,
    /// Soft budgets of the key and team, looked at once the cost is booked.
    pub(super) soft_budgets: Vec<SoftBudgetWatch>,
    /// Model groups the caller may be failed over to (allow-lists applied; empty: none).
    pub(super) fallbacks: Vec<String>,
    /// When the current attempt began (latency-based routing learns from it).
    pub(super) attempt_started: Instant,
    /// When the request was read (the total latency metric).
    pub(super) received: Instant,
    /// The capped key and team budgets, whose gauges follow the call.
    pub(super) budgets: Vec<crate::service::metrics::BudgetWatch>,
}

impl Meter {
    /// The call moves to another deployment (a retry or fallback): the old slot is freed and the
    /// log names the deployment that will answer.
    fn move_to(&mut self, slot: Slot) {
        let d = &slot.0;
        self.log.model = d.upstream_model.clone();
        self.log.model_id = Some(d.id.clone());
        self.log.model_group = Some(d.model_name.clone());
        self.log.custom_llm_provider = Some(d.provider.clone());
        self.slot = slot;
        self.attempt_started = Instant::now();
    }

    /// A call refused before anything was sent upstream (its request cannot be put to this
    /// deployment's provider): gives back its request and slots and its reservations, books
    /// nothing — it changes nothing, like any refusal.
    /// The first byte of the answer's stream arrived (time to first token).
    pub(super) fn first_byte(&self) {
        self.state.metrics.first_token(
            &crate::service::metrics::labels(&self.log, &self.slot.0),
            self.attempt_started.elapsed(),
        );
    }

    fn refund(mut self) {
        self.reservation.take(); // released at its drop, cost 0
        self.model_reservation.take();
        self.state.limiter.refund(&self.limits, self.held);
        self.limits.clear(); // the drop's release has nothing left to free
    }
}

/// The call's parallel slots are freed when its meter goes, however the call ended: answered,
/// failed, stream finished, client gone (the stream task drops it) or the overall deadline.
impl Drop for Meter {
    fn drop(&mut self) {
        self.state.limiter.release(&self.limits, self.held);
    }
}

impl Meter {
    /// Books the call once; the cost in nano-USD (`None`: it was booked already).
    pub(super) fn settle(&mut self, usage: Usage, status: &str) -> Option<i64> {
        let res = self.reservation.take()?;
        let dep = &self.slot.0;
        let cost = usage.cost(&dep.prices);
        if let Some(m) = self.model_reservation.take() {
            m.settle(cost.0);
        }
        self.state
            .limiter
            .add_tokens(&self.limits, usage.total(), self.held);
        dep.add_tokens(usage.total());
        if status == "success" {
            dep.record_latency(self.attempt_started.elapsed(), usage.completion_tokens);
        }
        let mut log = self.log.clone();
        log.spend = cost.0;
        log.prompt_tokens = usage.prompt_tokens as i64;
        log.completion_tokens = usage.completion_tokens as i64;
        log.total_tokens = usage.total() as i64;
        log.end_time = crate::store::now();
        log.status = status.to_string();
        let labels = crate::service::metrics::labels(&log, dep);
        res.settle(cost.0, log);
        self.state.metrics.settled(
            &labels,
            &crate::metrics::Outcome {
                spend_usd: purser_core::money::Nanos(cost.0).to_usd(),
                input: usage.prompt_tokens,
                output: usage.completion_tokens,
                total: self.received.elapsed(),
                upstream: self.attempt_started.elapsed(),
                success: status == "success",
            },
        );
        if !self.budgets.is_empty() {
            crate::service::metrics::watch_budgets(&self.state, &self.budgets);
        }
        if !self.soft_budgets.is_empty() {
            Alerts::after_settle(&self.state, std::mem::take(&mut self.soft_budgets));
        }
        Some(cost.0)
    }
}

/// True when the client asked for the final usage chunk itself.
fn client_wants_usage(req: &CallRequest) -> bool {
    req.body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true)
}

/// How one attempt at a deployment ended when it did not answer.
pub(super) enum Attempt {
    /// The caller's answer (nothing else is tried).
    Failed(Error),
    /// The deployment failed before answering: the call, intact, may go elsewhere.
    Retry(Box<Retry>),
}

pub(super) struct Retry {
    failure: Failure,
    meter: Meter,
    req: CallRequest,
}

impl Attempt {
    fn retry(failure: Failure, meter: Meter, req: CallRequest) -> Attempt {
        Attempt::Retry(Box::new(Retry {
            failure,
            meter,
            req,
        }))
    }
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Attempt {
        Attempt::Failed(e)
    }
}

/// Runs the call on its deployment and, when that fails before answering, on others: retries
/// in the group (`num_retries`, backoff, cooling deployments skipped), then the fallback groups
/// the caller may call, each with its own retries (`fallbacks`, `context_window_fallbacks`,
/// `content_policy_fallbacks`, `default_fallbacks`). Governance was decided once, for the
/// requested model; the reservation and slots move with the call; the answer is billed once, at
/// the prices of the deployment that gave it.
pub(super) async fn dispatch(
    state: AppState,
    mut meter: Meter,
    mut req: CallRequest,
    requested: String,
) -> Result<Response, Error> {
    // Nothing here allocates unless an attempt fails (the hot path is one attempt).
    let mut group = String::new();
    let mut tried: Vec<String> = Vec::new();
    let mut retries: u32 = 0;
    let mut total_retries: u32 = 0;
    let mut fallbacks_used: usize = 0;
    let mut remaining_fallbacks: Option<Vec<String>> = None;
    // The request's own routing: its retry count, and its fallback list (already checked
    // against the caller's allow-lists, in `meter.fallbacks`) instead of the configured one.
    let retries_asked = req.routing.num_retries;
    let own_fallbacks = req.routing.fallbacks.is_some() && !req.routing.disable_fallbacks;
    // What failed on the way, for `x-litellm-fallback-errors` (only built when something did).
    let mut errors: Vec<Value> = Vec::new();
    loop {
        let answering = Arc::clone(&meter.slot.0);
        let call_id = meter.log.request_id.clone();
        let received = req.received;
        let attempt = Box::pin(attempt(state.clone(), meter, req, requested.clone())).await;
        let r = match attempt {
            Ok(mut resp) => {
                if fallbacks_used > 0
                    && let Ok(v) = HeaderValue::from_str(&Value::Array(errors).to_string())
                {
                    resp.headers_mut().insert("x-litellm-fallback-errors", v);
                }
                return Ok(with_route_headers(
                    resp,
                    &answering,
                    Route {
                        call_id: &call_id,
                        retries: total_retries,
                        max_retries: state.models.policy().num_retries,
                        fallbacks: fallbacks_used,
                        received,
                    },
                ));
            }
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Retry(r)) => r,
        };
        let Retry {
            failure,
            meter: m,
            req: q,
        } = *r;
        (meter, req) = (m, q);
        let policy = state.models.policy();
        state.models.record_failure(&meter.slot.0, &failure);
        state
            .metrics
            .attempt_failed(&crate::service::metrics::labels(&meter.log, &meter.slot.0));
        if errors.len() < 8 {
            // Messages are already scrubbed of credentials; kept short for a header.
            let msg: String = failure.error.message().chars().take(200).collect();
            errors.push(json!({
                "model_group": meter.slot.0.model_name,
                "model_id": meter.slot.0.id,
                "exception_type": failure.error_class(),
                "exception_string": msg,
            }));
        }
        let failed_id = meter.slot.0.id.clone();
        if group.is_empty() {
            group = meter.slot.0.model_name.clone();
        }
        tried.push(failed_id.clone());
        // 1. another try in this group
        let allowed_retries = retries_asked.unwrap_or_else(|| policy.retries_for(&group, &failure));
        if retries < allowed_retries {
            let others = state.models.others_healthy(&group, &failed_id);
            let wait = policy.backoff(retries, others, failure.retry_after);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if let Some(slot) = state.models.pick_avoiding(&group, &tried) {
                retries += 1;
                total_retries += 1;
                meter.move_to(slot);
                continue;
            }
        }
        // 2. the next fallback group that has a deployment free
        let list = remaining_fallbacks.get_or_insert_with(|| {
            let allowed = &meter.fallbacks;
            if own_fallbacks {
                // The caller's own error is its own: a request the provider refused as bad is
                // not sent elsewhere.
                return if failure.class == crate::upstream::FailureClass::Request {
                    Vec::new()
                } else {
                    allowed.clone()
                };
            }
            policy
                .fallbacks(&group, failure.class)
                .into_iter()
                .filter(|g| allowed.contains(g))
                .collect()
        });
        let mut next = None;
        while fallbacks_used < MAX_FALLBACKS && !list.is_empty() {
            let g = list.remove(0);
            if let Some(slot) = state.models.pick(&g) {
                next = Some((g, slot));
                break;
            }
        }
        match next {
            Some((g, slot)) => {
                fallbacks_used += 1;
                retries = 0;
                group = g;
                meter.move_to(slot);
            }
            None => return Err(failure.error),
        }
    }
}

/// `x-litellm-response-cost` (USD) on a non-streaming answer whose cost is known.
fn with_cost(mut resp: Response, cost: Option<i64>) -> Response {
    if let Some(c) = cost
        && let Ok(v) = HeaderValue::from_str(&purser_core::money::Nanos(c).to_usd().to_string())
    {
        resp.headers_mut().insert("x-litellm-response-cost", v);
    }
    resp
}

/// Time spent waiting for the upstream (to its last byte, or to a stream's headers), carried
/// on the answer so the overhead header can leave it out.
#[derive(Clone, Copy)]
struct UpstreamTime(Duration);

fn upstream_took(mut resp: Response, sent: Instant) -> Response {
    resp.extensions_mut().insert(UpstreamTime(sent.elapsed()));
    resp
}

/// What the routing headers say about a call.
struct Route<'a> {
    call_id: &'a str,
    retries: u32,
    max_retries: u32,
    fallbacks: usize,
    received: Instant,
}

fn ms(d: Duration) -> HeaderValue {
    let v = (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// The reference's routing headers on an answer: which deployment answered (and where: its
/// `api_base` without credentials or query), the call's id (its spend log's `request_id`), the
/// retries and fallbacks it took, and the time the call took in all and in the gateway itself.
fn with_route_headers(mut resp: Response, answered: &Deployment, route: Route<'_>) -> Response {
    let upstream = resp
        .extensions()
        .get::<UpstreamTime>()
        .map_or(Duration::ZERO, |u| u.0);
    let total = route.received.elapsed();
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-litellm-model-id", answered.id.as_str()),
        ("x-litellm-model-group", answered.model_name.as_str()),
        ("x-litellm-call-id", route.call_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    if let Some(base) = answered.public_api_base()
        && let Ok(v) = HeaderValue::from_str(base)
    {
        h.insert("x-litellm-model-api-base", v);
    }
    h.insert(
        "x-litellm-attempted-retries",
        HeaderValue::from(route.retries),
    );
    h.insert(
        "x-litellm-max-retries",
        HeaderValue::from(route.max_retries),
    );
    h.insert(
        "x-litellm-attempted-fallbacks",
        HeaderValue::from(route.fallbacks as u64),
    );
    h.insert("x-litellm-response-duration-ms", ms(total));
    h.insert(
        "x-litellm-overhead-duration-ms",
        ms(total.saturating_sub(upstream)),
    );
    resp
}

/// One attempt at the meter's deployment, by the wire it speaks and the API the client speaks.
async fn attempt(
    state: AppState,
    meter: Meter,
    req: CallRequest,
    requested: String,
) -> Result<Response, Attempt> {
    let wire = if meter.slot.0.is_mock() {
        Wire::OpenAi
    } else {
        meter.slot.0.wire()
    };
    let messages = matches!(req.inbound, Inbound::Anthropic(_));
    if let Inbound::Anthropic(original) = &req.inbound
        && wire != Wire::Anthropic
        && let Some(u) = anthropic::native_only(&original.body)
    {
        meter.refund();
        return Err(Attempt::Failed(
            Error::proxy(
                StatusCode::BAD_REQUEST,
                "bad_request_error",
                format!("{}: {} (model={requested})", u.field, u.reason),
            )
            .with_param(u.field),
        ));
    }
    if req.kind == CallKind::Transcription {
        return Box::pin(dispatch_transcription(state, meter, req, wire)).await;
    }
    match wire {
        Wire::Anthropic if messages => Box::pin(dispatch_messages_native(state, meter, req)).await,
        Wire::Anthropic | Wire::Gemini | Wire::Bedrock => {
            Box::pin(dispatch_translated(state, meter, req, requested, messages)).await
        }
        Wire::OpenAi | Wire::Azure => {
            Box::pin(dispatch_openai(state, meter, req, requested, messages)).await
        }
    }
}

/// A `/v1/messages` call to an Anthropic deployment: the client's request goes as sent (only the
/// model is the deployment's) and the answer comes back as Anthropic wrote it; the meter reads
/// Anthropic's usage (cache tokens included) through the stream translator.
async fn dispatch_messages_native(
    state: AppState,
    mut meter: Meter,
    mut req: CallRequest,
) -> Result<Response, Attempt> {
    let dep = Arc::clone(&meter.slot.0);
    let Inbound::Anthropic(original) = std::mem::take(&mut req.inbound) else {
        return Err(Attempt::Failed(Error::internal(
            "a Messages call without its request",
        )));
    };
    let beta = original.beta.clone();
    let extra: Vec<(&str, &str)> = beta
        .as_deref()
        .map(|b| ("anthropic-beta", b))
        .into_iter()
        .collect();
    let mut body = original.body;
    dep.shape_messages_body(&mut body);
    let body = Value::Object(body);
    // What a retry elsewhere needs back: the client's request (req.body keeps its translation).
    let restore = |req: &mut CallRequest, body: Value| {
        if let Value::Object(body) = body {
            req.inbound = Inbound::Anthropic(Box::new(MessagesRequest {
                body,
                beta: beta.clone(),
            }));
        }
    };
    let sent = Instant::now();
    let resp = match state
        .models
        .send_with(
            &dep,
            req.kind,
            &body,
            req.stream,
            &extra,
            req.timeout_at(&dep),
        )
        .await
    {
        Ok(r) => r,
        Err(failure) => {
            restore(&mut req, body);
            return Err(Attempt::retry(failure, meter, req));
        }
    };
    if req.stream {
        let tap = Some(anthropic::StreamTranslator::new(false, 0));
        let out = streamed(meter, &dep, &req, body_chunks(resp), tap, Relay::AsIs);
        return Ok(upstream_took(out, sent));
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Err(Attempt::Failed(broke_mid_body(&mut meter, &dep, &req, &e))),
    };
    let usage = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|m| m.get("usage").map(anthropic::usage))
        .and_then(|u| Usage::from_usage(&u));
    let Some(usage) = usage else {
        meter.settle(partial_usage(&dep, &req, &bytes), "failure");
        return Err(Attempt::Failed(Error::proxy(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!(
                "litellm.APIError: upstream of model={} returned a body that is not a message",
                dep.model_name
            ),
        )));
    };
    let upstream = sent.elapsed();
    let cost = meter.settle(usage, "success");
    let mut out = Response::new(Body::from(bytes));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out.extensions_mut().insert(UpstreamTime(upstream));
    Ok(with_cost(out, cost))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A provider's stream, turned into OpenAI chunks as it arrives.
enum WireStream {
    Anthropic(anthropic::StreamTranslator),
    Gemini(gemini::StreamTranslator),
    Bedrock(Box<bedrock::StreamTranslator>),
}

impl WireStream {
    fn push(&mut self, b: &[u8]) -> Vec<u8> {
        match self {
            WireStream::Anthropic(t) => t.push(b),
            WireStream::Gemini(t) => t.push(b),
            WireStream::Bedrock(t) => t.push(b),
        }
    }

    /// What the translator still holds at the end of the upstream body (Anthropic's holds
    /// nothing worth sending: an unterminated line is not an event).
    fn finish(&mut self) -> Vec<u8> {
        match self {
            WireStream::Anthropic(_) => Vec::new(),
            WireStream::Gemini(t) => t.finish(),
            WireStream::Bedrock(t) => t.finish(),
        }
    }
}

/// The upstream body translated chunk by chunk, with what the translator holds at its end.
fn translated(
    resp: reqwest::Response,
    translator: WireStream,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(
        (resp.bytes_stream().boxed(), translator, false),
        |(mut body, mut t, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match body.next().await {
                    Some(Ok(b)) => {
                        let out = t.push(&b);
                        if !out.is_empty() {
                            return Some((Ok(Bytes::from(out)), (body, t, false)));
                        }
                    }
                    Some(Err(e)) => {
                        return Some((Err(std::io::Error::other(e)), (body, t, true)));
                    }
                    None => {
                        let rest = t.finish();
                        if rest.is_empty() {
                            return None;
                        }
                        return Some((Ok(Bytes::from(rest)), (body, t, true)));
                    }
                }
            }
        },
    )
    .boxed()
}

/// A call to a deployment whose wire is not OpenAI's (Anthropic, Gemini): the OpenAI request
/// translated to the provider's, the answer (or each stream event) translated back, usage
/// normalised before it is billed; `messages`: the client is a `/v1/messages` one, so the OpenAI
/// answer is turned into Anthropic's shape last.
async fn dispatch_translated(
    state: AppState,
    mut meter: Meter,
    req: CallRequest,
    requested: String,
    messages: bool,
) -> Result<Response, Attempt> {
    let dep = Arc::clone(&meter.slot.0);
    let wire = dep.wire();
    let provider = match wire {
        Wire::Gemini => "Gemini",
        Wire::Bedrock => "Bedrock",
        _ => "Anthropic",
    };
    if req.kind == CallKind::Embeddings && wire == Wire::Gemini {
        return Box::pin(dispatch_gemini_embeddings(state, meter, req)).await;
    }
    if req.kind == CallKind::Embeddings && wire == Wire::Bedrock {
        return Box::pin(dispatch_bedrock_embeddings(state, meter, req)).await;
    }
    if req.kind != CallKind::Chat {
        meter.refund();
        return Err(Attempt::Failed(Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "litellm.BadRequestError: model={} is served by {provider}; {} is served for {} deployments only",
                dep.model_name,
                req.kind.route(),
                if req.kind == CallKind::Embeddings {
                    "OpenAI, Azure, Gemini, Vertex AI and Bedrock"
                } else {
                    "OpenAI and Azure"
                }
            ),
        )));
    }
    // Anthropic's and Bedrock's JSON mode is a forced tool (the Converse body is made from the
    // Messages one).
    let json_mode =
        matches!(wire, Wire::Anthropic | Wire::Bedrock) && anthropic::json_mode(&req.body);
    let translated_body = match wire {
        Wire::Gemini => gemini::to_generate_request(&req.body),
        Wire::Bedrock => bedrock::to_converse_request(&req.body),
        _ => anthropic::to_messages_request(&req.body, &dep.upstream_model),
    };
    let mut body = match translated_body {
        Ok(b) => b,
        Err(u) => return Err(unsupported(meter, &dep, u)),
    };
    let now = unix_now();
    if wire == Wire::Anthropic {
        dep.shape_messages_body(&mut body);
    }
    if req.stream && wire == Wire::Anthropic {
        body.insert("stream".into(), Value::Bool(true));
    } else {
        body.remove("stream");
    }
    let sent = Instant::now();
    let resp = match state
        .models
        .send(
            &dep,
            req.kind,
            &Value::Object(body),
            req.stream,
            req.timeout_at(&dep),
        )
        .await
    {
        Ok(r) => r,
        Err(failure) => return Err(Attempt::retry(failure, meter, req)),
    };
    if req.stream {
        let translator = match wire {
            Wire::Gemini => {
                WireStream::Gemini(gemini::StreamTranslator::new(&dep.upstream_model, now))
            }
            Wire::Bedrock => WireStream::Bedrock(Box::new(bedrock::StreamTranslator::new(
                &dep.upstream_model,
                json_mode,
                now,
            ))),
            _ => WireStream::Anthropic(anthropic::StreamTranslator::new(json_mode, now)),
        };
        let relay = relay_for(&req, &requested, messages);
        let chunks = translated(resp, translator);
        let out = streamed(meter, &dep, &req, chunks, None, relay);
        return Ok(upstream_took(out, sent));
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Err(Attempt::Failed(broke_mid_body(&mut meter, &dep, &req, &e))),
    };
    let upstream = UpstreamTime(sent.elapsed());
    let Ok(raw) = serde_json::from_slice::<Value>(&bytes) else {
        meter.settle(partial_usage(&dep, &req, &bytes), "failure");
        return Err(Attempt::Failed(Error::proxy(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!(
                "litellm.APIError: upstream of model={} returned a body that is not JSON",
                dep.model_name
            ),
        )));
    };
    let (answer, has_usage) = match wire {
        Wire::Gemini => (
            gemini::to_chat_completion(&raw, &dep.upstream_model, now),
            raw.get("usageMetadata").is_some(),
        ),
        Wire::Bedrock => (
            bedrock::to_chat_completion(&raw, &dep.upstream_model, json_mode, now),
            raw.get("usage").is_some(),
        ),
        _ => (
            anthropic::to_chat_completion(&raw, json_mode, now),
            raw.get("usage").is_some(),
        ),
    };
    let usage = Usage::from_json(&answer)
        .filter(|_| has_usage)
        .unwrap_or_else(|| Usage {
            prompt_tokens: req.prompt_tokens,
            completion_tokens: produced_tokens(&dep, &answer),
            ..Usage::default()
        });
    let cost = meter.settle(usage, "success");
    let mut out = if messages {
        axum::Json(anthropic::to_message(&answer, &requested)).into_response()
    } else {
        axum::Json(answer).into_response()
    };
    out.extensions_mut().insert(upstream);
    Ok(with_cost(out, cost))
}

/// Embeddings through a Gemini or Vertex AI deployment: translated to `batchEmbedContents` /
/// `predict` and back; billed by Vertex's reported token count, else by the counted input (Gemini
/// reports none).
async fn dispatch_gemini_embeddings(
    state: AppState,
    mut meter: Meter,
    req: CallRequest,
) -> Result<Response, Attempt> {
    let dep = Arc::clone(&meter.slot.0);
    let body = match gemini::to_embed_request(&req.body, &dep.upstream_model, dep.is_vertex()) {
        Ok(b) => Value::Object(b),
        Err(u) => return Err(unsupported(meter, &dep, u)),
    };
    let sent = Instant::now();
    let resp = match state
        .models
        .send(&dep, req.kind, &body, false, req.timeout_at(&dep))
        .await
    {
        Ok(r) => r,
        Err(failure) => return Err(Attempt::retry(failure, meter, req)),
    };
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Err(Attempt::Failed(broke_mid_body(&mut meter, &dep, &req, &e))),
    };
    let upstream = UpstreamTime(sent.elapsed());
    let base64 = req.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let answer = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|raw| {
            gemini::to_embeddings_response(&raw, &req.model, base64, req.prompt_tokens)
        });
    let Some((answer, reported)) = answer else {
        meter.settle(
            Usage {
                prompt_tokens: req.prompt_tokens,
                ..Usage::default()
            },
            "failure",
        );
        return Err(Attempt::Failed(Error::proxy(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!(
                "litellm.APIError: upstream of model={} returned no embeddings",
                dep.model_name
            ),
        )));
    };
    let cost = meter.settle(
        Usage {
            prompt_tokens: reported.unwrap_or(req.prompt_tokens),
            ..Usage::default()
        },
        "success",
    );
    let mut out = axum::Json(answer).into_response();
    out.extensions_mut().insert(upstream);
    Ok(with_cost(out, cost))
}

/// Embeddings through a Bedrock deployment (`InvokeModel`): Titan takes one text per call, so a
/// list is sent as concurrent calls (eight at a time); Cohere takes the batch. Billed by Titan's
/// reported token counts, else by the counted input; a call that fails part-way bills the
/// inputs the upstream had already embedded.
async fn dispatch_bedrock_embeddings(
    state: AppState,
    mut meter: Meter,
    req: CallRequest,
) -> Result<Response, Attempt> {
    let dep = Arc::clone(&meter.slot.0);
    let Some(family) = bedrock::embed_family(&dep.upstream_model) else {
        meter.refund();
        return Err(Attempt::Failed(Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "litellm.BadRequestError: model={} is not a Bedrock embedding model Purser speaks (amazon.titan-embed-*, cohere.embed-*)",
                dep.model_name
            ),
        )));
    };
    let bodies = match bedrock::to_embed_requests(&req.body, family) {
        Ok(b) => b,
        Err(u) => return Err(unsupported(meter, &dep, u)),
    };
    let sent = Instant::now();
    let timeout = req.timeout_at(&dep);
    let results: Vec<Result<bedrock::Embedded, Failure>> =
        futures_util::stream::iter(bodies.into_iter().map(|b| {
            bedrock_embed_one(
                state.clone(),
                Arc::clone(&dep),
                req.kind,
                b,
                timeout,
                family,
            )
        }))
        .buffered(8)
        .collect()
        .await;
    let upstream = UpstreamTime(sent.elapsed());
    let texts = results.len().max(1) as u64;
    let mut vectors = Vec::new();
    let mut reported: Option<u64> = None;
    let mut failure = None;
    let mut embedded = 0u64;
    for r in results {
        match r {
            Ok((v, tokens)) => {
                embedded += 1;
                vectors.extend(v);
                if let Some(t) = tokens {
                    reported = Some(reported.unwrap_or(0) + t);
                }
            }
            Err(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    if let Some(f) = failure {
        if embedded == 0 {
            return Err(Attempt::retry(f, meter, req));
        }
        // Part of the batch was embedded (and charged by AWS): bill that share of the input.
        let share = reported.unwrap_or(req.prompt_tokens * embedded / texts);
        meter.settle(
            Usage {
                prompt_tokens: share,
                ..Usage::default()
            },
            "failure",
        );
        return Err(Attempt::Failed(f.error));
    }
    let base64 = req.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let tokens = reported.unwrap_or(req.prompt_tokens);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                gemini::base64_f32(&v)
            } else {
                Value::from(v)
            };
            serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let answer = serde_json::json!({
        "object": "list", "data": data, "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    let cost = meter.settle(
        Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        },
        "success",
    );
    let mut out = axum::Json(answer).into_response();
    out.extensions_mut().insert(upstream);
    Ok(with_cost(out, cost))
}

/// One `InvokeModel` call of a Bedrock embeddings request: its vectors and reported tokens.
async fn bedrock_embed_one(
    state: AppState,
    dep: Arc<Deployment>,
    kind: CallKind,
    body: Value,
    timeout: Duration,
    family: bedrock::EmbedFamily,
) -> Result<bedrock::Embedded, Failure> {
    let resp = state.models.send(&dep, kind, &body, false, timeout).await?;
    let bytes = resp.bytes().await.map_err(|e| Failure {
        error: upstream::transport_error(&dep, &e),
        class: FailureClass::Retryable,
        retry_after: None,
        status: None,
    })?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|raw| bedrock::embeddings_of(&raw, family))
        .ok_or_else(|| Failure {
            error: Error::proxy(
                StatusCode::BAD_GATEWAY,
                "api_error",
                format!(
                    "litellm.APIError: upstream of model={} returned no embeddings",
                    dep.model_name
                ),
            ),
            class: FailureClass::Request,
            retry_after: None,
            status: None,
        })
}

/// A transcription (`/v1/audio/transcriptions`) to an OpenAI-wire or Azure deployment (or an
/// in-process mock): the client's form re-sent with the deployment's model, the answer relayed
/// as received (JSON, text, srt or vtt). Billed by the tokens the answer reports (priced per
/// token), else by its reported duration, else by the file's length (exact for WAV, estimated
/// from its size otherwise), per millisecond of the per-second price.
async fn dispatch_transcription(
    state: AppState,
    mut meter: Meter,
    req: CallRequest,
    wire: Wire,
) -> Result<Response, Attempt> {
    use crate::upstream::audio;
    let dep = Arc::clone(&meter.slot.0);
    let Some(upload) = req.upload.clone() else {
        meter.refund();
        return Err(Attempt::Failed(Error::internal(
            "a transcription without its upload",
        )));
    };
    if dep.is_mock() {
        let text = dep.mock_response.clone().unwrap_or_default();
        let cost = meter.settle(
            Usage {
                units: audio::billed_ms(&upload.file),
                ..Usage::default()
            },
            "success",
        );
        return Ok(with_cost(
            axum::Json(json!({ "text": text })).into_response(),
            cost,
        ));
    }
    if !matches!(wire, Wire::OpenAi | Wire::Azure) {
        meter.refund();
        return Err(Attempt::Failed(Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "litellm.BadRequestError: model={} cannot transcribe; /v1/audio/transcriptions is served for OpenAI-compatible and Azure deployments only",
                dep.model_name
            ),
        )));
    }
    let form = match upload.form(&dep.upstream_model) {
        Ok(f) => f,
        Err(e) => {
            meter.refund();
            return Err(Attempt::Failed(e));
        }
    };
    let sent = Instant::now();
    let resp = match state
        .models
        .send_form(&dep, req.kind, form, req.timeout_at(&dep))
        .await
    {
        Ok(r) => r,
        Err(failure) => return Err(Attempt::retry(failure, meter, req)),
    };
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            // The upstream heard the audio: bill its length.
            meter.settle(
                Usage {
                    units: audio::billed_ms(&upload.file),
                    ..Usage::default()
                },
                "failure",
            );
            return Err(Attempt::Failed(crate::upstream::transport_error(&dep, &e)));
        }
    };
    let upstream = UpstreamTime(sent.elapsed());
    let token_priced = dep.prices.input != 0 || dep.prices.output != 0;
    let usage = match audio::reported(&bytes) {
        audio::Reported::Tokens { input, output } if token_priced || dep.prices.per_unit == 0 => {
            Usage {
                prompt_tokens: input,
                completion_tokens: output,
                ..Usage::default()
            }
        }
        audio::Reported::Millis(ms) => Usage {
            units: ms,
            ..Usage::default()
        },
        _ => Usage {
            units: audio::billed_ms(&upload.file),
            ..Usage::default()
        },
    };
    let cost = meter.settle(usage, "success");
    let mut out = Response::new(Body::from(bytes));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    out.extensions_mut().insert(upstream);
    Ok(with_cost(out, cost))
}

/// A request the deployment's provider cannot take (a parameter it has no field for): refused
/// with a 400 naming the parameter, before anything is sent; the call's holds are given back.
fn unsupported(meter: Meter, dep: &Deployment, u: anthropic::Unsupported) -> Attempt {
    meter.refund();
    Attempt::Failed(
        Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!(
                "litellm.UnsupportedParamsError: {} {} (model={})",
                u.field, u.reason, dep.model_name
            ),
        )
        .with_param(u.field),
    )
}

/// An answer that broke while its body was read: the counted prompt is billed (the upstream
/// worked on it) and the caller gets the transport error.
fn broke_mid_body(
    meter: &mut Meter,
    dep: &Deployment,
    req: &CallRequest,
    e: &reqwest::Error,
) -> Error {
    meter.settle(
        Usage {
            prompt_tokens: req.prompt_tokens,
            ..Usage::default()
        },
        "failure",
    );
    crate::upstream::transport_error(dep, e)
}

/// How a stream reaches the client: as Anthropic events for a `/v1/messages` client; as sent
/// when the client asked for the usage chunk (or the API ends with its usage anyway: Responses);
/// else without the usage chunk the gateway asked the upstream for.
fn relay_for(req: &CallRequest, requested: &str, messages: bool) -> Relay {
    if messages {
        Relay::ToMessages(Box::new(anthropic::ToMessagesStream::new(requested)))
    } else if req.kind == CallKind::Responses || client_wants_usage(req) {
        Relay::AsIs
    } else {
        Relay::StripUsage(UsageChunkFilter::default())
    }
}

/// An upstream body as a stream of chunks.
fn body_chunks(resp: reqwest::Response) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    resp.bytes_stream()
        .map(|r| r.map_err(std::io::Error::other))
        .boxed()
}

/// The client's stream: `chunks` relayed through the meter (and, for a native Anthropic stream,
/// its translator tap), bounded by the attempt's idle and overall timeouts.
fn streamed(
    meter: Meter,
    dep: &Deployment,
    req: &CallRequest,
    chunks: BoxStream<'static, Result<Bytes, std::io::Error>>,
    anthropic_tap: Option<anthropic::StreamTranslator>,
    relay: Relay,
) -> Response {
    stream_response(pump_stream(
        chunks,
        StreamMeter {
            meter,
            tap: SseTap::new(dep.tokens),
            anthropic_tap,
        },
        req.stream_timeout_at(dep),
        req.timeout_at(dep),
        relay,
    ))
}

fn stream_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A call to an OpenAI-wire (or mock) deployment; `messages`: the client is a `/v1/messages`
/// one, so its answer is translated to Anthropic's shape.
async fn dispatch_openai(
    state: AppState,
    mut meter: Meter,
    mut req: CallRequest,
    requested: String,
    messages: bool,
) -> Result<Response, Attempt> {
    let dep = Arc::clone(&meter.slot.0);
    if dep.is_mock() {
        if req.stream {
            let relay = relay_for(&req, &requested, messages);
            let chunks = mock_stream(&dep, &requested, &req);
            return Ok(streamed(meter, &dep, &req, chunks, None, relay));
        }
        let (body, usage) = mock_body(&dep, &requested, &req);
        let cost = meter.settle(usage, "success");
        if req.kind == CallKind::Speech {
            let mut out = Response::new(Body::from(super::mock::mock_speech()));
            out.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
            return Ok(with_cost(out, cost));
        }
        if messages {
            return Ok(with_cost(
                axum::Json(anthropic::to_message(&body, &requested)).into_response(),
                cost,
            ));
        }
        return Ok(with_cost(axum::Json(body).into_response(), cost));
    }
    let relay = req.stream.then(|| relay_for(&req, &requested, messages));
    // The request body is not read again: moved, not deep-copied.
    let mut body = std::mem::take(&mut req.body);
    body.insert("model".into(), Value::String(dep.upstream_model.clone()));
    if req.stream && req.kind != CallKind::Responses {
        // Asked for always: a stream is billed from its usage chunk (dropped again for a client
        // that did not ask for it).
        let opts = body.entry("stream_options").or_insert_with(|| json!({}));
        if !opts.is_object() {
            *opts = json!({});
        }
        opts["include_usage"] = Value::Bool(true);
    }
    let body = Value::Object(body);
    let sent = Instant::now();
    let timeout = req.timeout_at(&dep);
    let resp = match state
        .models
        .send(&dep, req.kind, &body, req.stream, timeout)
        .await
    {
        Ok(r) => r,
        Err(failure) => {
            if let Value::Object(b) = body {
                req.body = b;
            }
            return Err(Attempt::retry(failure, meter, req));
        }
    };
    if let Some(relay) = relay {
        let out = streamed(meter, &dep, &req, body_chunks(resp), None, relay);
        return Ok(upstream_took(out, sent));
    }
    // Read the body as it arrives: an upstream that answered and then failed mid-body (or sent
    // something that is not JSON) still produced work: bill the counted prompt plus the text
    // received, like an interrupted stream, and keep the log row.
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let mut bytes = Vec::new();
    let mut body_stream = resp.bytes_stream();
    while let Some(part) = body_stream.next().await {
        match part {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(e) => {
                meter.settle(partial_usage(&dep, &req, &bytes), "failure");
                return Err(Attempt::Failed(crate::upstream::transport_error(&dep, &e)));
            }
        }
    }
    let upstream = UpstreamTime(sent.elapsed());
    if req.kind == CallKind::Speech {
        // Audio, not JSON: billed per character of the text sent (and its counted tokens).
        let cost = meter.settle(
            Usage {
                prompt_tokens: req.prompt_tokens,
                units: req.units,
                ..Usage::default()
            },
            "success",
        );
        let mut out = Response::new(Body::from(Bytes::from(bytes)));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.unwrap_or(HeaderValue::from_static("audio/mpeg")),
        );
        out.extensions_mut().insert(upstream);
        return Ok(with_cost(out, cost));
    }
    let read_usage = match req.kind {
        // gpt-image-1 reports `input_tokens` / `output_tokens` as the Responses API does.
        CallKind::Responses | CallKind::Images => Usage::from_responses_usage,
        _ => Usage::from_usage,
    };
    let usage = match serde_json::from_slice::<UsageOnly>(&bytes)
        .ok()
        .and_then(|a| a.usage.as_ref().and_then(read_usage))
    {
        // The common answer: only `usage` is built; the rest is skipped, not made into maps
        // (the client gets the bytes as received either way).
        Some(u) => u,
        None => match serde_json::from_slice::<Value>(&bytes) {
            Ok(parsed) => Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: produced_tokens(&dep, &parsed),
                ..Usage::default()
            },
            Err(_) => {
                meter.settle(partial_usage(&dep, &req, &bytes), "failure");
                return Err(Attempt::Failed(Error::proxy(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    format!(
                        "litellm.APIError: upstream of model={} returned a body that is not JSON",
                        dep.model_name
                    ),
                )));
            }
        },
    };
    let mut usage = usage;
    // The per-unit kinds read what they are billed by in a second, typed pass (rare calls; the
    // chat hot path parses only `usage`, and a stray field of another shape cannot break it).
    if req.kind == CallKind::Rerank
        && let Ok(r) = serde_json::from_slice::<RerankOnly>(&bytes)
    {
        // Cohere reports search units; vLLM and others the tokens they read.
        usage.units = r
            .meta
            .and_then(|m| m.billed_units)
            .and_then(|b| b.search_units)
            .unwrap_or(req.units);
        if let Some(t) = r.usage.and_then(|u| u.total_tokens) {
            usage.prompt_tokens = t;
        }
    }
    if req.kind == CallKind::Images {
        // Billed per image made (which may be fewer than asked for).
        usage.units =
            serde_json::from_slice::<ImagesOnly>(&bytes).map_or(req.units, |a| a.data.len() as u64);
    }
    let cost = meter.settle(usage, "success");
    let mut out = if messages {
        let answer = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        axum::Json(anthropic::to_message(&answer, &requested)).into_response()
    } else {
        let mut out = Response::new(Body::from(Bytes::from(bytes)));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        out
    };
    out.extensions_mut().insert(upstream);
    Ok(with_cost(out, cost))
}

/// What billing reads of a non-streaming answer.
#[derive(serde::Deserialize)]
struct UsageOnly {
    usage: Option<Value>,
}

/// What billing reads of a rerank answer.
#[derive(serde::Deserialize)]
struct RerankOnly {
    meta: Option<RerankMeta>,
    usage: Option<RerankUsage>,
}

#[derive(serde::Deserialize)]
struct RerankMeta {
    billed_units: Option<RerankUnits>,
}

#[derive(serde::Deserialize)]
struct RerankUnits {
    search_units: Option<u64>,
}

#[derive(serde::Deserialize)]
struct RerankUsage {
    total_tokens: Option<u64>,
}

/// The images an image answer holds (counted, not read).
#[derive(serde::Deserialize)]
struct ImagesOnly {
    #[serde(default)]
    data: Vec<serde::de::IgnoredAny>,
}

/// Usage billed for a non-streaming answer cut short or unreadable: the counted prompt and the
/// tokens of whatever text arrived.
pub(super) fn partial_usage(dep: &Deployment, req: &CallRequest, received: &[u8]) -> Usage {
    Usage {
        prompt_tokens: req.prompt_tokens,
        completion_tokens: dep.tokens.text(&String::from_utf8_lossy(received)),
        ..Usage::default()
    }
}

/// Tokens of the text an answer without usage holds: chat `message.content`, completion `text`,
/// or a Responses API `output` message's `output_text` parts.
pub(super) fn produced_tokens(dep: &Deployment, v: &Value) -> u64 {
    let choices = v.get("choices").and_then(Value::as_array).map(|cs| {
        cs.iter()
            .filter_map(|c| {
                c.pointer("/message/content")
                    .or_else(|| c.get("text"))
                    .and_then(Value::as_str)
            })
            .map(|t| dep.tokens.text(t))
            .sum::<u64>()
    });
    let output = || {
        v.get("output")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.get("content").and_then(Value::as_array))
                    .flatten()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .map(|t| dep.tokens.text(t))
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    choices.unwrap_or_else(output)
}
