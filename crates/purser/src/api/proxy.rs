//! OpenAI-compatible routes: chat completions, embeddings, the model list and model info.
//! Handlers are thin; governance, dispatch and accounting live in `service::proxy`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::error::Shape;
use super::extract::RawBody;
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::Result;
use crate::service::caller::Caller;
use crate::service::proxy::{self, CallContext, CallRequest};
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
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse(CallKind::Chat, &body)?;
    proxy::handle(state, caller, req).await
}

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response> {
    let req = CallRequest::parse(CallKind::Embeddings, &body)?;
    proxy::handle(state, caller, req).await
}

pub async fn model_list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>> {
    let ctx = CallContext::load(&state, &caller).await?;
    Ok(Json(proxy::models_list(&proxy::callable_models(
        &state, &ctx,
    ))))
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
