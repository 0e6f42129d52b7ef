//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the route table, so it lists
//! every route the router serves, with its method, tag, summary and whether it needs a key.

use axum::Json;
use axum::extract::State;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, ResponseBuilder,
};

use super::{Gate, Route};
use crate::app::AppState;

pub fn routes() -> Vec<Route> {
    vec![
        Route::get(
            "/openapi.json",
            Gate::Public,
            "docs",
            "This OpenAPI document",
            openapi_json,
        ),
        Route::get(
            "/docs",
            Gate::Public,
            "docs",
            "Interactive API docs (Swagger UI, every asset served by the gateway)",
            docs_root,
        ),
        Route::get(
            "/docs/",
            Gate::Public,
            "docs",
            "Interactive API docs (Swagger UI)",
            docs_index,
        ),
        Route::get(
            "/docs/{*file}",
            Gate::Public,
            "docs",
            "Interactive API docs: the page's assets",
            docs_file,
        ),
    ]
}

/// `/docs` → `/docs/` (the page's relative asset paths need the slash).
pub async fn docs_root() -> axum::response::Redirect {
    axum::response::Redirect::permanent("/docs/")
}

pub async fn docs_index() -> axum::response::Response {
    swagger_file("")
}

pub async fn docs_file(
    axum::extract::Path(file): axum::extract::Path<String>,
) -> axum::response::Response {
    swagger_file(&file)
}

/// One file of the vendored Swagger UI (embedded at build time from the crate registry), its
/// initializer pointed at `/openapi.json`.
fn swagger_file(path: &str) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    // No validator: Swagger UI's default badge is fetched from validator.swagger.io.
    let config =
        std::sync::Arc::new(utoipa_swagger_ui::Config::from("/openapi.json").validator_url("none"));
    match utoipa_swagger_ui::serve(path, config) {
        Ok(Some(f)) => (
            [(header::CONTENT_TYPE, f.content_type)],
            f.bytes.into_owned(),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"detail": "Not Found"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "swagger ui asset");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub async fn openapi_json(State(state): State<AppState>) -> Json<OpenApi> {
    Json(state.openapi.clone())
}

/// Builds the document from the route table.
pub fn document(routes: &[Route]) -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in routes {
        let method = match r.method.as_str() {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PATCH" => HttpMethod::Patch,
            "DELETE" => HttpMethod::Delete,
            _ => HttpMethod::Put,
        };
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .tag(r.tag)
            .operation_id(Some(format!(
                "{}_{}",
                r.method.as_str().to_lowercase(),
                r.path
            )))
            .response("200", ResponseBuilder::new().description("Success"))
            .response(
                "default",
                ResponseBuilder::new().description("Error in the LiteLLM error shape"),
            );
        if r.gate != Gate::Public {
            op = op
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                .response(
                    "401",
                    ResponseBuilder::new().description("Missing, malformed or unknown key"),
                );
        }
        paths = paths.path(r.path, PathItem::new(method, op.build()));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Purser")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "LLM gateway with team governance, wire-compatible with the LiteLLM proxy.",
                )),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
                )
                .build(),
        ))
        .build()
}
