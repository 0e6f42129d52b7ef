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

/// `/docs`: Swagger UI served whole by the gateway — every asset the page names is served here,
/// nothing points at another host, and its initializer loads `/openapi.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_docs_are_served_without_a_cdn() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/docs/");
    let r = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Every script and stylesheet the page loads is relative, and served.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            assert!(
                !url.contains("//"),
                "the page loads {url} from another host"
            );
            assets.push(url.trim_start_matches("./").to_string());
        }
    }
    assert!(
        assets.iter().any(|a| a == "swagger-initializer.js"),
        "{assets:?}"
    );
    for a in &assets {
        let r = app
            .client
            .get(app.url(&format!("/docs/{a}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{a}");
        let body = r.text().await.unwrap();
        if a.ends_with("swagger-initializer.js") {
            assert!(body.contains("/openapi.json"), "{body}");
            assert!(!body.contains("petstore"), "{body}");
            assert!(
                body.replace(' ', "").contains("\"validatorUrl\":\"none\""),
                "no validator badge from another host: {body}"
            );
        }
    }
    let (s, _) = app.get_anon("/docs/no-such-file.js").await;
    assert_eq!(s, 404);
    app.shutdown().await;
}

/// Virtual keys through every credential header, malformed headers, and expiry.
async fn virtual_key_credentials(b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = app.user_with_key("cred", "internal_user").await;
    for header in ["x-litellm-api-key", "api-key", "x-api-key"] {
        let r = app
            .client
            .get(app.url("/user/info"))
            .header(header, &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{header}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["user_id"], "cred");
    }
    let r = app
        .client
        .get(app.url("/user/info"))
        .header("authorization", format!("Basic {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(assert_proxy_error(&body, 401, "auth_error").contains("Malformed API Key"));
    let (s, body) = app.get("/user/info", "not-a-virtual-key").await;
    assert_eq!(s, 401);
    let msg = assert_proxy_error(&body, 401, "auth_error");
    assert!(msg.contains("expected to start with 'sk-'"), "{msg}");
    assert!(!msg.contains("not-a-virtual-key"));
    let (s, body) = app.get_anon("/user/info").await;
    assert_eq!(s, 401);
    assert!(assert_proxy_error(&body, 401, "auth_error").contains("No api key passed in"));

    // An expired key is refused with expired_key, and never echoed in full.
    let (s, body) = app
        .post(
            "/key/generate",
            MASTER,
            json!({"user_id": "cred", "duration": "1s"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let short = body["key"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (s, body) = app.get("/user/info", &short).await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "expired_key");
    assert!(!body.to_string().contains(&short));
    let (s, info) = app.get(&format!("/key/info?key={short}"), MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(info["info"]["status"], "expired");
    app.shutdown().await;
}

both_backends!(virtual_key_credentials);
