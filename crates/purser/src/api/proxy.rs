//! OpenAI-compatible routes: chat and text completions, responses, embeddings, the model list
//! and model info; the Anthropic-compatible Messages routes.
//! Handlers are thin; governance, dispatch and accounting live in `service::proxy`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::error::{Shape, render_anthropic};
use super::extract::{QueryBool, QueryParams, RawBody};
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::Result;
use crate::service::caller::Caller;
use crate::service::proxy::{self, CallContext, CallRequest, ModelListQuery};
use crate::upstream::CallKind;

pub fn routes() -> Vec<Route> {
    let tag = "llm";
    vec![
        Route::post(
            "/v1/chat/completions",
            Gate::Llm,
            tag,
            "Chat completion (OpenAI-compatible, streaming supported)",
            chat_completion,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/chat/completions",
            Gate::Llm,
            tag,
            "Chat completion (alias)",
            chat_completion,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/embeddings",
            Gate::Llm,
            tag,
            "Embeddings (OpenAI-compatible)",
            embeddings,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/embeddings",
            Gate::Llm,
            tag,
            "Embeddings (alias)",
            embeddings,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/completions",
            Gate::Llm,
            tag,
            "Text completion (legacy OpenAI API, streaming supported)",
            text_completion,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/completions",
            Gate::Llm,
            tag,
            "Text completion (alias)",
            text_completion,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/responses",
            Gate::Llm,
            tag,
            "OpenAI Responses API to OpenAI and Azure deployments (streaming supported)",
            responses,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/responses",
            Gate::Llm,
            tag,
            "OpenAI Responses API (alias)",
            responses,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/moderations",
            Gate::Llm,
            tag,
            "Moderations (OpenAI deployments)",
            moderations,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/moderations",
            Gate::Llm,
            tag,
            "Moderations (alias)",
            moderations,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/images/generations",
            Gate::Llm,
            tag,
            "Image generation (OpenAI and Azure deployments; billed per image or by tokens)",
            image_generation,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/images/generations",
            Gate::Llm,
            tag,
            "Image generation (alias)",
            image_generation,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/audio/speech",
            Gate::Llm,
            tag,
            "Text to speech (OpenAI and Azure deployments; billed per character; answers audio)",
            audio_speech,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/audio/speech",
            Gate::Llm,
            tag,
            "Text to speech (alias)",
            audio_speech,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/audio/transcriptions",
            Gate::Llm,
            tag,
            "Speech to text (multipart upload; OpenAI and Azure deployments; billed per second of audio or by tokens)",
            audio_transcription,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/audio/transcriptions",
            Gate::Llm,
            tag,
            "Speech to text (alias)",
            audio_transcription,
        )
        .answers(Shape::Wrapped),
        Route::post(
            "/v1/rerank",
            Gate::Llm,
            tag,
            "Rerank documents for a query (Cohere's shape; OpenAI-compatible servers with /rerank)",
            rerank,
        )
        .answers(Shape::Wrapped),
        Route::post("/rerank", Gate::Llm, tag, "Rerank (alias)", rerank).answers(Shape::Wrapped),
        Route::post(
            "/v2/rerank",
            Gate::Llm,
            tag,
            "Rerank (Cohere v2 path)",
            rerank,
        )
        .answers(Shape::Wrapped),
        // Anthropic clients: every refusal in Anthropic's error shape (drawn by the handlers
        // and, for auth, by the middleware).
        Route::post(
            "/v1/messages",
            Gate::Llm,
            tag,
            "Anthropic Messages API in front of any deployment (streaming supported; key also in x-api-key)",
            anthropic_messages,
        ),
        Route::post(
            "/v1/messages/count_tokens",
            Gate::Llm,
            tag,
            "Anthropic token count of a Messages request (Anthropic's own count for Anthropic deployments, else the group's tokenizer)",
            anthropic_count_tokens,
        ),
        Route::get(
            "/v1/models",
            Gate::Llm,
            tag,
            "Models this key may call",
            model_list,
        )
        .answers(Shape::Wrapped),
        Route::get(
            "/models",
            Gate::Llm,
            tag,
            "Models this key may call (alias)",
            model_list,
        )
        .answers(Shape::Wrapped),
        Route::get(
            "/v1/models/{*model_id}",
            Gate::Llm,
            tag,
            "One model this key may call (404 otherwise)",
            model_retrieve,
        )
        .answers(Shape::Wrapped),
        Route::get(
            "/models/{*model_id}",
            Gate::Llm,
            tag,
            "One model this key may call (alias)",
            model_retrieve,
        )
        .answers(Shape::Wrapped),
        Route::get(
            "/model/info",
            Gate::SelfManaged,
            "model management",
            "Deployments of the models this key may call (no upstream credentials)",
            model_info,
        )
        .answers(Shape::Wrapped),
    ]
}

pub async fn chat_completion(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Chat, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Embeddings, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn text_completion(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Completions, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn responses(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Responses, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn moderations(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Moderations, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn image_generation(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Images, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn audio_speech(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Speech, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

pub async fn audio_transcription(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_transcription(body, &headers).await?;
    proxy::handle(state, caller, req).await
}

pub async fn rerank(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse_with_headers(CallKind::Rerank, &body, &headers)?;
    proxy::handle(state, caller, req).await
}

/// `/v1/messages`: every refusal in Anthropic's error shape.
pub async fn anthropic_messages(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let beta = headers
        .get("anthropic-beta")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let answer = match CallRequest::parse_messages(&body, beta) {
        Ok(req) => proxy::handle(state, caller, req).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| render_anthropic(&e))
}

/// `/v1/messages/count_tokens`: `{"input_tokens": n}`.
pub async fn anthropic_count_tokens(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let beta = headers
        .get("anthropic-beta")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let counted = match CallRequest::parse_messages_to_count(&body, beta) {
        Ok(req) => proxy::count_tokens(state, caller, req).await,
        Err(e) => Err(e),
    };
    match counted {
        Ok(n) => Json(serde_json::json!({ "input_tokens": n })).into_response(),
        Err(e) => render_anthropic(&e),
    }
}

/// `/v1/models` query: the reference's flags, booleans read as FastAPI reads them.
#[derive(Debug, Deserialize)]
pub struct ModelListParams {
    return_wildcard_routes: Option<QueryBool>,
    team_id: Option<String>,
    include_model_access_groups: Option<QueryBool>,
    only_model_access_groups: Option<QueryBool>,
    include_metadata: Option<QueryBool>,
    fallback_type: Option<String>,
    scope: Option<String>,
    healthy_only: Option<QueryBool>,
}

pub async fn model_list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(p): QueryParams<ModelListParams>,
) -> Result<Json<Value>> {
    let ctx = CallContext::load(&state, &caller).await?;
    let q = ModelListQuery {
        return_wildcard_routes: QueryBool::or(p.return_wildcard_routes, false),
        team_id: p.team_id,
        include_model_access_groups: QueryBool::or(p.include_model_access_groups, false),
        only_model_access_groups: QueryBool::or(p.only_model_access_groups, false),
        include_metadata: QueryBool::or(p.include_metadata, false),
        fallback_type: p.fallback_type,
        scope: p.scope,
        healthy_only: QueryBool::or(p.healthy_only, false),
    };
    Ok(Json(proxy::model_list(&state, &caller, &ctx, &q).await?))
}

pub async fn model_retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(model_id): Path<String>,
) -> Result<Json<Value>> {
    let ctx = CallContext::load(&state, &caller).await?;
    Ok(Json(proxy::model_retrieve(&state, &ctx, &model_id)?))
}

pub async fn model_info(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>> {
    let ctx = CallContext::load(&state, &caller).await?;
    let names = if caller.can_read_all() {
        state.models.names().to_vec()
    } else {
        proxy::callable_models(&state, &ctx)
    };
    Ok(Json(proxy::model_info(&state, &names)))
}
