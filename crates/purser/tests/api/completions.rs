//! `/v1/completions` (legacy text completions) and `/v1/responses` (OpenAI's Responses API):
//! proxied to OpenAI-wire and Azure deployments, streaming and not, billed from the upstream's
//! usage (each API names it its own way), governed like chat, answered in-process by
//! `mock_response` models, and refused — before the upstream — for deployments whose provider
//! does not offer them and for bodies the API would reject.

use serde_json::{Value, json};

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_upstream::MockUpstream;

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/upstream-model
      api_base: {ok}
      api_key: k
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: azure-dated
    litellm_params:
      model: azure/prod-resp
      api_base: http://{addr}/ok
      api_key: azure-key-0123456789
      api_version: "2025-03-01-preview"
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: azure-v1
    litellm_params:
      model: azure/prod-v1
      api_base: http://{addr}/ok
      api_key: azure-key-0123456789
      api_version: v1
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/ok
      api_key: sk-ant-0123456789
  - model_name: local
    litellm_params:
      model: openai/local
      mock_response: hi there friend
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
router_settings:
  num_retries: 0
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        ok = m.base("ok"),
        addr = m.addr,
    )
}

async fn call(app: &TestApp, key: &str, path: &str, body: Value) -> (u16, String) {
    let r = app
        .client
        .post(app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_completions_are_proxied_and_billed() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;

    let key = app.key_with(json!({})).await;
    let (s, body) = app
        .post(
            "/v1/completions",
            &key,
            json!({"model": "gpt", "prompt": "Say hello", "max_tokens": 8}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "Hello from completions.");
    assert_eq!(m.last_body()["model"], "upstream-model");
    app.expect_key_spend(&key, 5.0 * 1e-6 + 4.0 * 2e-6).await;

    // Streamed: usage is asked for upstream and billed, and its chunk dropped for a client that
    // did not ask for it.
    let key = app.key_with(json!({})).await;
    let (s, text) = call(
        &app,
        &key,
        "/completions",
        json!({"model": "gpt", "prompt": ["Say", "hello"], "stream": true}),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("\"text\":\"Hello \""), "{text}");
    assert!(!text.contains("usage"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(m.last_body()["stream_options"]["include_usage"], true);
    app.expect_key_spend(&key, 5.0 * 1e-6 + 4.0 * 2e-6).await;

    // The spend log says what kind of call it was.
    let (_, logs) = app.get("/spend/logs", MASTER).await;
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .all(|l| l["call_type"] == "atext_completion"),
        "{logs}"
    );

    // In-process answers for mock models, whole and streamed.
    let (s, body) = app
        .post(
            "/v1/completions",
            MASTER,
            json!({"model": "local", "prompt": "x"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "hi there friend");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (s, text) = call(
        &app,
        MASTER,
        "/v1/completions",
        json!({"model": "local", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        text.contains("\"text\":\"hi \"") && text.contains("\"usage\""),
        "{text}"
    );

    // Bad bodies and providers without the API: refused, nothing sent upstream.
    let hits = m.hits();
    for (body, param) in [
        (json!({"model": "gpt"}), "prompt"),
        (json!({"model": "gpt", "prompt": 7}), "prompt"),
        (
            json!({"model": "gpt", "prompt": "x", "max_tokens": -1}),
            "max_tokens",
        ),
    ] {
        let (s, b) = app.post("/v1/completions", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/completions",
            &key,
            json!({"model": "claude", "prompt": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/completions is served for OpenAI and Azure deployments only"),
        "{b}"
    );
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}

/// 11 input tokens (3 of them cached, at the input price: no cache price is set) and 4 output.
const RESPONSES_COST: f64 = 11.0 * 1e-6 + 4.0 * 2e-6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_proxied_and_billed() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;

    let key = app.key_with(json!({})).await;
    let (s, body) = app
        .post(
            "/v1/responses",
            &key,
            json!({"model": "gpt", "input": "Say hello", "instructions": "Be brief", "max_output_tokens": 16}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Hello from responses."
    );
    app.expect_key_spend(&key, RESPONSES_COST).await;

    // Streamed: the events pass as sent (the usage is in `response.completed`, nothing to drop
    // and no `stream_options` to add, which the API would refuse).
    let key = app.key_with(json!({})).await;
    let (s, text) = call(
        &app,
        &key,
        "/responses",
        json!({"model": "gpt", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "stream": true}),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert!(text.contains("event: response.completed\n"), "{text}");
    assert!(m.last_body().get("stream_options").is_none());
    app.expect_key_spend(&key, RESPONSES_COST).await;
    let (_, logs) = app.get("/spend/logs", MASTER).await;
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .all(|l| l["call_type"] == "aresponses"),
        "{logs}"
    );

    // Azure: the dated API's Responses path is not below a deployment (the body names it); the
    // v1 surface has its own.
    for (model, path, upstream) in [
        (
            "azure-dated",
            "/ok/openai/responses?api-version=2025-03-01-preview",
            "prod-resp",
        ),
        ("azure-v1", "/ok/openai/v1/responses", "prod-v1"),
    ] {
        let (s, body) = app
            .post(
                "/v1/responses",
                MASTER,
                json!({"model": model, "input": "hi"}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            m.seen.azure_paths.lock().unwrap().last().unwrap().as_str(),
            path
        );
        assert_eq!(m.last_body()["model"], upstream);
    }

    // Mock models answer in the API's shape, whole and as events.
    let (s, body) = app
        .post(
            "/v1/responses",
            MASTER,
            json!({"model": "local", "input": "x"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["output"][0]["content"][0]["text"], "hi there friend");
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let (s, text) = call(
        &app,
        MASTER,
        "/v1/responses",
        json!({"model": "local", "input": "x", "stream": true}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        text.contains("\"delta\":\"hi \"") && text.contains("event: response.completed"),
        "{text}"
    );

    // Governance bites as for chat: a key with no budget left never reaches the upstream.
    let hits = m.hits();
    let broke = app.key_with(json!({"max_budget": 0.0})).await;
    let (s, b) = app
        .post(
            "/v1/responses",
            &broke,
            json!({"model": "gpt", "input": "x"}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["type"], "budget_exceeded", "{b}");
    let limited = app.key_with(json!({"models": ["local"]})).await;
    let (s, b) = app
        .post(
            "/v1/responses",
            &limited,
            json!({"model": "gpt", "input": "x"}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    for (body, param) in [
        (json!({"model": "gpt"}), "input"),
        (
            json!({"model": "gpt", "input": "x", "max_output_tokens": "many"}),
            "max_output_tokens",
        ),
    ] {
        let (s, b) = app.post("/v1/responses", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/responses",
            &key,
            json!({"model": "claude", "input": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}
