//! HTTP layer: the route table, authentication middleware, route gate (reference §2.3), error
//! fallbacks and the OpenAPI document. Handlers are thin: extract, call `service`, map errors.
//! Invariant: every route is authenticated unless its table entry says `Gate::Public`, so a new
//! route cannot skip authentication by accident.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod key;
pub mod openapi;
pub mod proxy;
pub mod spend;
pub mod team;
pub mod team_member;
pub mod user;

use std::collections::HashMap;

use axum::Router;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::MethodRouter;

use crate::app::AppState;
use crate::error::Error;
use error::Shape;

/// Who may reach a route before its handler runs (reference §2.3). Proxy admins pass every gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No credential needed (health checks, the OpenAPI document).
    Public,
    /// OpenAI-compatible LLM routes: any key except proxy_admin_viewer.
    Llm,
    /// Any authenticated caller; the handler scopes what it returns or allows.
    SelfManaged,
    /// Key management an internal user may do for itself; viewers may only read.
    InternalUser,
    /// Proxy admins; proxy_admin_viewer may call it only if it is a GET.
    Admin,
}

/// One route: method, path template, gate, the wire shape of its refusals, and the summary
/// shown in the OpenAPI document.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub gate: Gate,
    pub shape: Shape,
    /// Body fields the reference accepts that Purser does not enforce yet: refused with a 400
    /// naming the field when sent with a value (`purser_core::unenforced`).
    pub refuses: &'static [&'static str],
    pub summary: &'static str,
    pub tag: &'static str,
    pub handler: MethodRouter<AppState>,
}

impl Route {
    /// The shape this route draws refusals in (FastAPI's `Shape::Detail` unless set).
    pub fn answers(mut self, shape: Shape) -> Route {
        self.shape = shape;
        self
    }

    /// Refuses these body fields when they carry a value (see [`Route::refuses`]).
    pub fn refuses(mut self, fields: &'static [&'static str]) -> Route {
        self.refuses = fields;
        self
    }

    pub fn get<H, T>(
        path: &'static str,
        gate: Gate,
        tag: &'static str,
        summary: &'static str,
        h: H,
    ) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: Method::GET,
            path,
            gate,
            shape: Shape::Detail,
            refuses: &[],
            summary,
            tag,
            handler: axum::routing::get(h),
        }
    }

    pub fn post<H, T>(
        path: &'static str,
        gate: Gate,
        tag: &'static str,
        summary: &'static str,
        h: H,
    ) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: Method::POST,
            path,
            gate,
            shape: Shape::Detail,
            refuses: &[],
            summary,
            tag,
            handler: axum::routing::post(h),
        }
    }

    pub fn patch<H, T>(
        path: &'static str,
        gate: Gate,
        tag: &'static str,
        summary: &'static str,
        h: H,
    ) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: Method::PATCH,
            path,
            gate,
            shape: Shape::Detail,
            refuses: &[],
            summary,
            tag,
            handler: axum::routing::patch(h),
        }
    }
}

/// Every route Purser serves.
pub fn all_routes() -> Vec<Route> {
    let mut routes = Vec::new();
    routes.extend(health::routes());
    routes.extend(openapi::routes());
    routes.extend(user::routes());
    routes.extend(key::routes());
    routes.extend(team::routes());
    routes.extend(team_member::routes());
    routes.extend(audit::routes());
    routes.extend(spend::routes());
    routes.extend(proxy::routes());
    routes
}

/// (method, path template) → gate, consulted by the auth middleware.
#[derive(Debug, Default)]
pub struct Gates(HashMap<&'static str, Vec<(Method, Gate)>>);

impl Gates {
    pub fn from_routes(routes: &[Route]) -> Gates {
        let mut map: HashMap<&'static str, Vec<(Method, Gate)>> = HashMap::new();
        for r in routes {
            map.entry(r.path)
                .or_default()
                .push((r.method.clone(), r.gate));
        }
        Gates(map)
    }

    pub fn get(&self, method: &Method, path: &str) -> Option<Gate> {
        self.0
            .get(path)?
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, g)| *g)
    }
}

/// Builds the router from the table; unknown paths and methods answer JSON errors.
pub fn router(state: AppState, routes: Vec<Route>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for r in routes {
        let shape = r.shape;
        let mut handler =
            match shape {
                Shape::Detail => r.handler,
                _ => r.handler.layer(axum::middleware::map_response(
                    move |response: axum::response::Response| async move {
                        error::redraw(shape, response)
                    },
                )),
            };
        if !r.refuses.is_empty() {
            let refused = extract::Refused(r.refuses);
            handler = handler.layer(axum::middleware::map_request(
                move |mut req: axum::extract::Request| async move {
                    req.extensions_mut().insert(refused);
                    req
                },
            ));
        }
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(handler),
            None => by_path.push((r.path, handler)),
        }
    }
    let mut router = Router::new();
    for (path, mr) in by_path {
        router = router.route(path, mr);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> Error {
    Error::http_text(StatusCode::NOT_FOUND, "Not Found")
}

async fn method_not_allowed() -> Error {
    Error::http_text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}
