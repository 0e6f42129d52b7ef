//! Foundation: health, unknown routes, authentication, body limits, OpenAPI, the binary itself.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

async fn health_and_errors(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, body) = app.get_anon("/health/liveliness").await;
    assert_eq!(s, 200);
    assert_eq!(body, json!("I'm alive!"));
    let (s, body) = app.get_anon("/health/readiness").await;
    assert_eq!(s, 200);
    assert_eq!(body["db"], "connected");

    let (s, body) = app.get("/no/such/route", MASTER).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Not Found"}));
    let (s, body) = app.post("/health/liveliness", MASTER, json!({})).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body, json!({"detail": "Method Not Allowed"}));

    let (s, doc) = app.get_anon("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(
        doc["paths"]["/health/liveliness"]["get"].is_object(),
        "{doc}"
    );
    app.shutdown().await;
}

both_backends!(health_and_errors);
