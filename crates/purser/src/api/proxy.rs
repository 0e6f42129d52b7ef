//! OpenAI-compatible routes: chat completions, embeddings, the model list and model info.
//! Handlers are thin; governance, dispatch and accounting live in `service::proxy`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::error::ApiResult;
use super::extract::RawBody;
use super::{Gate, Route};
use crate::app::AppState;
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
        ),
        Route::post(
            "/chat/completions",
            Gate::Llm,
            tag,
            "Chat completion (alias)",
            chat_completion,
        ),
        Route::post(
            "/v1/embeddings",
            Gate::Llm,
            tag,
            "Embeddings (OpenAI-compatible)",
            embeddings,
        ),
        Route::post(
            "/embeddings",
            Gate::Llm,
            tag,
            "Embeddings (alias)",
            embeddings,
        ),
        Route::get(
            "/v1/models",
            Gate::Llm,
            tag,
            "Models this key may call",
            model_list,
        ),
        Route::get(
            "/models",
            Gate::Llm,
            tag,
            "Models this key may call (alias)",
            model_list,
        ),
        Route::get(
            "/model/info",
            Gate::SelfManaged,
            "model management",
            "Deployments of the models this key may call (no upstream credentials)",
            model_info,
        ),
    ]
}

pub async fn chat_completion(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let req = CallRequest::parse(CallKind::Chat, &body)?;
    proxy::handle(state, caller, req).await
}

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let req = CallRequest::parse(CallKind::Embeddings, &body)?;
    proxy::handle(state, caller, req).await
}

pub async fn model_list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let ctx = CallContext::load(&state, &caller).await?;
    Ok(Json(proxy::models_list(&proxy::callable_models(
        &state, &ctx,
    ))))
}

pub async fn model_info(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let ctx = CallContext::load(&state, &caller).await?;
    let names = if caller.can_read_all() {
        state.models.names().to_vec()
    } else {
        proxy::callable_models(&state, &ctx)
    };
    Ok(Json(proxy::model_info(&state, &names)))
}
