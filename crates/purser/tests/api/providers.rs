//! Provider wires: Azure OpenAI (dated and v1 surfaces, `api-key` and Entra token, chat,
//! streams, embeddings, errors), Anthropic (OpenAI chat translated to Messages and back, streams
//! event by event, JSON mode, refused parameters), the OpenAI-compatible families by prefix, and
//! the start-up refusals of deployments Purser cannot serve.

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, MASTER, TestApp, assert_proxy_error};
use crate::mock_upstream::MockUpstream;

const AZURE_KEY: &str = "azure-secret-key-0123456789";
const ENTRA: &str = "entra-token-abcdef0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789abcdef";

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: azure-gpt
    litellm_params:
      model: azure/prod-gpt4o
      api_base: http://{addr}/ok
      api_key: {AZURE_KEY}
      api_version: "2024-10-21"
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      base_model: gpt-4o
  - model_name: azure-v1
    litellm_params:
      model: azure/prod-v1
      api_base: http://{addr}/ok/
      api_key: {AZURE_KEY}
      api_version: v1
  - model_name: azure-entra
    litellm_params:
      model: azure/entra-dep
      api_base: http://{addr}/ok
      azure_ad_token: {ENTRA}
  - model_name: azure-emb
    litellm_params:
      model: azure/emb-dep
      api_base: http://{addr}/ok
      api_key: {AZURE_KEY}
      api_version: "2024-10-21"
      input_cost_per_token: 0.000001
  - model_name: azure-fail
    litellm_params:
      model: azure/fail-dep
      api_base: http://{addr}/fail
      api_key: {AZURE_KEY}
  - model_name: azure-filter
    litellm_params:
      model: azure/filter-dep
      api_base: http://{addr}/filter
      api_key: {AZURE_KEY}
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/ok
      api_key: {ANTHROPIC_KEY}
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
  - model_name: claude-mapped
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/ok
      api_key: {ANTHROPIC_KEY}
  - model_name: claude-fail
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/fail
      api_key: {ANTHROPIC_KEY}
  - model_name: claude-broken
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/broken/v1
      api_key: {ANTHROPIC_KEY}
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
  - model_name: gemini
    litellm_params:
      model: gemini/gemini-2.5-flash
      api_base: http://{addr}/ok
      api_key: gemini-key-0123456789
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: gpt-real
    litellm_params:
      model: openai/upstream-model
      api_base: {groq}
      api_key: openai-key-1
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: groq-llama
    litellm_params:
      model: groq/llama-3.3-70b
      api_base: {groq}
      api_key: groq-key-1
router_settings:
  num_retries: 0   # failure mapping without retries; routing has its own tests
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        addr = m.addr,
        groq = m.base("ok"),
    )
}

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn new_key(app: &TestApp) -> String {
    let (s, b) = app.post("/key/generate", MASTER, json!({})).await;
    assert_eq!(s, 200, "{b}");
    b["key"].as_str().unwrap().to_string()
}

/// The key's spend once the spend writer has written it (nano-dollars: 1e-9 USD).
async fn spend_after_flush(app: &TestApp, key: &str, at_least: f64) -> f64 {
    for _ in 0..100 {
        let (s, b) = app.get(&format!("/key/info?key={key}"), MASTER).await;
        assert_eq!(s, 200, "{b}");
        let spend = b["info"]["spend"].as_f64().unwrap_or(0.0);
        if spend >= at_least {
            return spend;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("spend of the key never reached {at_least}");
}

fn last(v: &std::sync::Mutex<Vec<String>>) -> String {
    v.lock().unwrap().last().cloned().unwrap_or_default()
}

async fn azure_deployments_speak_azure(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;

    // Dated surface: deployment in the path, api-version in the query, key in `api-key`.
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("azure-gpt"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    assert_eq!(
        last(&m.seen.azure_paths),
        "/ok/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(last(&m.seen.api_keys), AZURE_KEY);
    assert_eq!(last(&m.seen.auth), "", "no Bearer header to Azure");
    // usage 9 + 6 tokens at 1e-6 / 2e-6 USD
    let spend = spend_after_flush(&app, &key, 0.0000209).await;
    assert!((spend - 0.000021).abs() < 1e-12, "{spend}");

    // v1 surface: no deployment in the path, the deployment is the body's model.
    let (s, body) = app.post("/v1/chat/completions", &key, hi("azure-v1")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(last(&m.seen.azure_paths), "/ok/openai/v1/chat/completions");
    assert_eq!(m.last_body()["model"], "prod-v1");

    // Entra token: Bearer, no api-key; default api-version.
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("azure-entra"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(last(&m.seen.auth), format!("Bearer {ENTRA}"));
    assert_eq!(last(&m.seen.api_keys), "");
    assert_eq!(
        last(&m.seen.azure_paths),
        "/ok/openai/deployments/entra-dep/chat/completions?api-version=2025-02-01-preview"
    );

    // Embeddings on the deployment's embeddings path.
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "azure-emb", "input": "hello"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        last(&m.seen.azure_paths),
        "/ok/openai/deployments/emb-dep/embeddings?api-version=2024-10-21"
    );

    // A stream opening with Azure's empty prompt-filter chunk is relayed and billed.
    let before = spend_after_flush(&app, &key, 0.0).await;
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "azure-gpt", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("prompt_filter_results"), "{text}");
    assert!(text.contains("\" mock\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    spend_after_flush(&app, &key, before + 0.0000209).await;
    app.shutdown().await;
}

async fn azure_errors_map_and_hide_the_key(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    // An upstream auth failure is the gateway's problem, not the caller's.
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("azure-fail"))
        .await;
    assert_eq!(s, 502, "{body}");
    assert_proxy_error(&body, 502, "api_error");
    let text = body.to_string();
    assert!(text.contains("Access denied"), "{text}");
    assert!(!text.contains(AZURE_KEY), "{text}");
    assert!(!text.contains(&AZURE_KEY.to_uppercase()), "{text}");
    assert!(!text.contains(&m.addr.to_string()), "{text}");
    // A content-filter refusal is the caller's: 400 with Azure's message.
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("azure-filter"))
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body.to_string().contains("content management policy"),
        "{body}"
    );
    // Neither was billed.
    let (_, info) = app.get(&format!("/key/info?key={key}"), MASTER).await;
    assert_eq!(info["info"]["spend"].as_f64().unwrap_or(0.0), 0.0, "{info}");
    app.shutdown().await;
}

async fn openai_compatible_prefixes_use_the_openai_wire(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("groq-llama"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(m.last_body()["model"], "llama-3.3-70b");
    assert_eq!(last(&m.seen.auth), "Bearer groq-key-1");
    // Gemini-style clients send the virtual key in x-goog-api-key.
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-goog-api-key", &key)
        .json(&hi("groq-llama"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-goog-api-key", "sk-wrong")
        .json(&hi("groq-llama"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // /v1/models lists it under its public name.
    let (s, models) = app.get("/v1/models", &key).await;
    assert_eq!(s, 200);
    assert!(models.to_string().contains("groq-llama"), "{models}");
    app.shutdown().await;
}

/// 5 input + 2 cache read + 1 cache write prompt tokens, 6 output, at $3 / $15 per 1M.
const CLAUDE_COST: f64 = 8.0 * 0.000003 + 6.0 * 0.000015;

async fn anthropic_deployments_are_translated(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "claude", "temperature": 0.5, "stop": ["END"], "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": "there"}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from Claude."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"]["prompt_tokens"], 8,
        "cache tokens count: {body}"
    );
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    let sent = m.last_body();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["max_tokens"], 4096);
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Be brief."}])
    );
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "text", "text": "there"}]}])
    );
    let (api_key, version, _) = m
        .seen
        .anthropic_headers
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(api_key, ANTHROPIC_KEY);
    assert_eq!(version, "2023-06-01");
    assert_eq!(last(&m.seen.auth), "", "no Bearer header to Anthropic");
    let spend = spend_after_flush(&app, &key, CLAUDE_COST * 0.999).await;
    assert!((spend - CLAUDE_COST).abs() < 1e-12, "{spend}");

    // JSON mode goes through a forced tool; its input is the content.
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "claude", "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": "answer"}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "{\"answer\":42}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(m.last_body()["tool_choice"]["name"], "json_tool_call");

    // Parameters Anthropic cannot honour are refused by name before any call; nothing billed.
    let hits = m.hits();
    let before = spend_after_flush(&app, &key, 2.0 * CLAUDE_COST * 0.999).await;
    for (field, value) in [
        ("presence_penalty", json!(0.1)),
        ("n", json!(3)),
        ("logit_bias", json!({"1": 2})),
    ] {
        let mut req = hi("claude");
        req[field] = value;
        let (s, body) = app.post("/v1/chat/completions", &key, req).await;
        assert_eq!(s, 400, "{field}: {body}");
        assert_proxy_error(&body, 400, "bad_request_error");
        assert!(body.to_string().contains(field), "{body}");
    }
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "claude", "messages": [{"role": "function", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.to_string().contains("messages[0].role"), "{body}");
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "claude", "input": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(m.hits(), hits, "refusals never reach Anthropic");
    assert_eq!(app.state.ledger.in_flight(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, info) = app.get(&format!("/key/info?key={key}"), MASTER).await;
    assert_eq!(info["info"]["spend"].as_f64().unwrap(), before, "{info}");

    // A refused request does not burn the caller's RPM.
    let (s, b2) = app
        .post("/key/generate", MASTER, json!({"rpm_limit": 2}))
        .await;
    assert_eq!(s, 200, "{b2}");
    let limited = b2["key"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let mut req = hi("claude");
        req["seed"] = json!(7);
        let (s, body) = app.post("/v1/chat/completions", &limited, req).await;
        assert_eq!(s, 400, "refused, not rate limited: {body}");
    }
    for _ in 0..2 {
        let (s, body) = app
            .post("/v1/chat/completions", &limited, hi("claude"))
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, _) = app
        .post("/v1/chat/completions", &limited, hi("claude"))
        .await;
    assert_eq!(s, 429, "the limit still bites");

    // An overloaded Anthropic is a 502 without the key.
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("claude-fail"))
        .await;
    assert_eq!(s, 502, "{body}");
    assert!(body.to_string().contains("Overloaded"), "{body}");
    assert!(!body.to_string().contains(ANTHROPIC_KEY), "{body}");
    app.shutdown().await;
}

/// The data events of an OpenAI SSE body.
fn data_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

async fn anthropic_streams_are_translated(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let stream = |model: &str, usage: bool| {
        let mut v = json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]});
        if usage {
            v["stream_options"] = json!({"include_usage": true});
        }
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&v)
            .send()
    };
    // Without include_usage: content chunks, a finish, [DONE]; no usage chunk for the client.
    let r = stream("claude", false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = data_events(&r.text().await.unwrap());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Hello from Claude.");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert_eq!(m.last_body()["stream"], true);
    let spend = spend_after_flush(&app, &key, CLAUDE_COST * 0.999).await;
    assert!(
        (spend - CLAUDE_COST).abs() < 1e-12,
        "billed from Anthropic's usage: {spend}"
    );

    // With include_usage: the last chunk carries the normalised usage.
    let events = data_events(&stream("claude", true).await.unwrap().text().await.unwrap());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 8);
    assert_eq!(usage["usage"]["completion_tokens"], 6);

    // A stream that breaks with an error event: the client sees the error, no [DONE], and the
    // call is billed for what it produced.
    let before = spend_after_flush(&app, &key, 2.0 * CLAUDE_COST * 0.999).await;
    let text = stream("claude-broken", false)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("overloaded_error"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    spend_after_flush(&app, &key, before + 0.000003).await;
    assert_eq!(app.state.ledger.in_flight(), 0);
    app.shutdown().await;
}

/// POST to `/v1/messages` the way the Anthropic SDK does (`x-api-key`, `anthropic-version`).
async fn messages(app: &TestApp, key: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn assert_anthropic_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

async fn messages_route_serves_anthropic_clients(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let ask = |model: &str| {
        json!({"model": model, "max_tokens": 64, "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}]})
    };

    // In front of an OpenAI deployment: translated both ways.
    let r = messages(&app, &key, "/v1/messages", ask("gpt-real")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "gpt-real");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Hello from the mock upstream."}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 9);
    assert_eq!(body["usage"]["output_tokens"], 6);
    let sent = m.last_body();
    assert_eq!(sent["model"], "upstream-model");
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    let spend = spend_after_flush(&app, &key, 0.0000209).await;
    assert!((spend - 0.000021).abs() < 1e-12, "{spend}");

    // Streamed in front of the OpenAI deployment: Anthropic's event sequence.
    let mut req = ask("gpt-real");
    req["stream"] = json!(true);
    let r = messages(&app, &key, "/v1/messages", req).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"content_block_delta") && names.contains(&"message_delta"));
    let streamed: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/delta/text")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, "Hello from the mock stream.");
    assert!(text.contains("\"output_tokens\":6"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let spend = spend_after_flush(&app, &key, 2.0 * 0.0000209).await;
    assert!((spend - 0.000042).abs() < 1e-12, "{spend}");

    // In front of an Anthropic deployment: sent as the client wrote it (top_k too), answered as
    // Anthropic answered, billed with the cache tokens.
    let mut req = ask("claude");
    req["top_k"] = json!(5);
    let r = app
        .client
        .post(app.url("/v1/messages?beta=true"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (api_key, _, beta) = m
        .seen
        .anthropic_headers
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        api_key, ANTHROPIC_KEY,
        "the deployment's key, never the client's"
    );
    assert_eq!(beta, "prompt-caching-2024-07-31");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "msg_mock", "{body}");
    assert_eq!(body["usage"]["cache_read_input_tokens"], 2);
    let sent = m.last_body();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["top_k"], 5);
    assert_eq!(sent["system"], "Be brief.");
    let billed = 0.000042 + CLAUDE_COST;
    let spend = spend_after_flush(&app, &key, billed * 0.9999).await;
    assert!((spend - billed).abs() < 1e-12, "{spend}");
    let mut req = ask("claude");
    req["stream"] = json!(true);
    let text = messages(&app, &key, "/v1/messages", req)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(text.contains("event: ping"), "relayed as sent: {text}");
    let billed = billed + CLAUDE_COST;
    let spend = spend_after_flush(&app, &key, billed * 0.9999).await;
    assert!((spend - billed).abs() < 1e-12, "{spend}");

    // count_tokens: the group's estimate, no call.
    let hits = m.hits();
    let r = messages(
        &app,
        &key,
        "/v1/messages/count_tokens",
        json!({"model": "gpt-real", "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let counted: Value = r.json().await.unwrap();
    assert!(counted["input_tokens"].as_u64().unwrap() > 0, "{counted}");
    assert_ne!(counted["input_tokens"], 42);
    assert_eq!(m.hits(), hits);

    // In front of an Anthropic deployment Anthropic counts (exactly), with the deployment's key
    // and the client's beta header; one that fails to count falls back to the estimate.
    let r = app
        .client
        .post(app.url("/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .header("anthropic-beta", "token-counting-2024-11-01")
        .json(&json!({"model": "claude", "system": "Be brief.", "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let counted: Value = r.json().await.unwrap();
    assert_eq!(counted["input_tokens"], 42, "{counted}");
    assert_eq!(m.last_body()["model"], "claude-sonnet-4-5");
    assert_eq!(m.last_body()["system"], "Be brief.");
    let (api_key, _, beta) = m
        .seen
        .anthropic_headers
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (api_key.as_str(), beta.as_str()),
        (ANTHROPIC_KEY, "token-counting-2024-11-01")
    );
    let r = messages(
        &app,
        &key,
        "/v1/messages/count_tokens",
        json!({"model": "claude-fail", "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let counted: Value = r.json().await.unwrap();
    let n = counted["input_tokens"].as_u64().unwrap();
    assert!(n > 0 && n != 42, "{counted}");

    // Bearer works too.
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&key)
        .json(&ask("gpt-real"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

async fn messages_route_refuses_in_anthropic_shape(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let ok = json!({"model": "gpt-real", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]});
    // No key, a wrong key.
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_anthropic_error(&r.json().await.unwrap(), "authentication_error");
    let r = messages(&app, "sk-not-a-key", "/v1/messages", ok.clone()).await;
    assert_eq!(r.status(), 401);
    assert_anthropic_error(&r.json().await.unwrap(), "authentication_error");
    // Bad requests name the field.
    for (body, field) in [
        (
            json!({"model": "gpt-real", "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "gpt-real", "max_tokens": 8, "messages": []}),
            "messages",
        ),
        (
            json!({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (
            json!({"model": "gpt-real", "max_tokens": 8, "top_k": 2,
            "messages": [{"role": "user", "content": "hi"}]}),
            "top_k",
        ),
        (
            json!({"model": "nope", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            "nope",
        ),
    ] {
        let r = messages(&app, &key, "/v1/messages", body).await;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_anthropic_error(&body, "invalid_request_error");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_anthropic_error(&r.json().await.unwrap(), "invalid_request_error");
    // A key out of budget: refused, Anthropic-shaped.
    let (s, b2) = app
        .post("/key/generate", MASTER, json!({"max_budget": 0.0}))
        .await;
    assert_eq!(s, 200, "{b2}");
    let broke = b2["key"].as_str().unwrap().to_string();
    let r = messages(&app, &broke, "/v1/messages", ok.clone()).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert!(body.to_string().contains("udget"), "{body}");
    // An upstream failure (Anthropic overloaded) keeps the key out of the answer.
    let r = messages(
        &app,
        &key,
        "/v1/messages",
        json!({"model": "claude-fail", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_anthropic_error(&body, "api_error");
    assert!(!body.to_string().contains(ANTHROPIC_KEY), "{body}");
    assert_eq!(m.hits(), 1, "only the overloaded call reached an upstream");
    app.shutdown().await;
}

both_backends!(
    messages_route_serves_anthropic_clients,
    messages_route_refuses_in_anthropic_shape,
    anthropic_deployments_are_translated,
    anthropic_streams_are_translated,
    azure_deployments_speak_azure,
    azure_errors_map_and_hide_the_key,
    openai_compatible_prefixes_use_the_openai_wire,
);

/// Deployments Purser cannot call refuse to start, naming the field and never its value.
#[test]
fn unservable_deployments_refuse_to_start() {
    use purser::config::Config;
    use purser::upstream::Registry;
    let cases: &[(&str, &str)] = &[
        (
            "model: ollama/llama3\n      api_key: sk-ant-secret",
            "provider 'ollama' is not supported",
        ),
        ("model: anthropic/claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
        ("model: azure/dep\n      api_key: k", "api_base: required"),
        (
            "model: azure/dep\n      api_base: https://x.openai.azure.com",
            "needs api_key",
        ),
        (
            "model: groq/llama\n      api_key: gsk-secret-value\n      api_version: \"2024-10-21\"",
            "api_version: only Azure",
        ),
        (
            "model: openai/gpt\n      api_base: ftp://example.com/secret-path",
            "must be an http:// or https:// URL",
        ),
        ("model: hosted_vllm/llama", "api_base: required"),
        ("model: mistral/mistral-large", "MISTRAL_API_KEY"),
    ];
    for (params, expected) in cases {
        let yaml = format!("model_list:\n  - model_name: m\n    litellm_params:\n      {params}\n");
        let config = Config::parse(&yaml, "t.yaml").expect("parses");
        let err = Registry::from_config_with_env(&config, &|_| None)
            .expect_err(params)
            .to_string();
        assert!(err.contains(expected), "{params}: {err}");
        assert!(err.contains("model_list[0]"), "{err}");
        for secret in ["sk-ant-secret", "gsk-secret-value", "secret-path"] {
            assert!(!err.contains(secret), "{err}");
        }
    }
    // The provider's variable supplies a missing key; an Azure deployment's base and version too.
    let yaml = "model_list:\n  - model_name: m\n    litellm_params:\n      model: mistral/mistral-large\n  \
                - model_name: a\n    litellm_params:\n      model: azure/dep\n";
    let config = Config::parse(yaml, "t.yaml").unwrap();
    let env = |name: &str| match name {
        "MISTRAL_API_KEY" => Some("from-env".to_string()),
        "AZURE_API_KEY" => Some("az-env".to_string()),
        "AZURE_API_BASE" => Some("https://r.openai.azure.com".to_string()),
        _ => None,
    };
    let r = Registry::from_config_with_env(&config, &env).expect("served");
    assert!(r.contains("m") && r.contains("a"));
}

// ---------------------------------------------------------------- routing

fn routing_config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: mixed
    litellm_params:
      model: openai/broken
      api_base: {fail}
      api_key: k
      input_cost_per_token: 0.001
      output_cost_per_token: 0.001
  - model_name: mixed
    litellm_params:
      model: openai/healthy
      api_base: {ok}
      api_key: k
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: primary
    litellm_params:
      model: openai/primary
      api_base: {fail}
      api_key: k
      input_cost_per_token: 0.001
      output_cost_per_token: 0.001
  - model_name: backup
    litellm_params:
      model: openai/backup
      api_base: {ok}
      api_key: k
      input_cost_per_token: 0.000002
      output_cost_per_token: 0.000004
  - model_name: small
    litellm_params:
      model: openai/small
      api_base: {toolong}
      api_key: k
  - model_name: big
    litellm_params:
      model: openai/big
      api_base: {ok}
      api_key: k
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: busy
    litellm_params:
      model: openai/busy
      api_base: {busy}
      api_key: k
router_settings:
  num_retries: 2
  allowed_fails: 1
  cooldown_time: 30
  fallbacks: [{{"primary": ["backup"]}}]
  context_window_fallbacks: [{{"small": ["big"]}}]
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        ok = m.base("ok"),
        fail = m.base("fail"),
        toolong = m.base("toolong"),
        busy = m.base("busy"),
    )
}

fn models_called(m: &MockUpstream) -> Vec<String> {
    m.seen
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["model"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn failed_deployments_are_retried_elsewhere_and_cooled(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &routing_config(&m)).await;
    let key = new_key(&app).await;
    let mut retried = 0;
    for _ in 0..8 {
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&hi("mixed"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        retried += r.headers()["x-litellm-attempted-retries"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap();
        assert_eq!(r.headers()["x-litellm-attempted-fallbacks"], "0");
        // The deployment that answered, the call's id and its cost.
        assert_eq!(r.headers()["x-litellm-model-id"], "mixed-1");
        assert_eq!(r.headers()["x-litellm-model-group"], "mixed");
        assert_eq!(r.headers()["x-litellm-response-cost"], "0.000021");
        let call_id = r.headers()["x-litellm-call-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!call_id.is_empty());
    }
    let called = models_called(&m);
    let broken = called.iter().filter(|c| *c == "broken").count();
    assert_eq!(
        called.iter().filter(|c| *c == "healthy").count(),
        8,
        "{called:?}"
    );
    assert_eq!(broken as u32, retried, "each failure was retried once");
    // allowed_fails 1: the second failure in a minute cools it for 30 s.
    assert!(broken <= 2, "a cooling deployment is skipped: {called:?}");
    // Billed once per call, at the answering deployment's prices (9 + 6 tokens).
    let spend = spend_after_flush(&app, &key, 8.0 * 0.0000209).await;
    assert!((spend - 8.0 * 0.000021).abs() < 1e-12, "{spend}");
    app.shutdown().await;
}

async fn fallbacks_serve_only_models_the_caller_may_use(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &routing_config(&m)).await;
    let key = new_key(&app).await;
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&hi("primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-litellm-attempted-fallbacks"], "1");
    // primary failed, was retried (num_retries 2; cooled after the second failure), then backup.
    let called = models_called(&m);
    assert_eq!(
        called.last().map(String::as_str),
        Some("backup"),
        "{called:?}"
    );
    assert!(
        called.iter().filter(|c| *c == "primary").count() >= 2,
        "{called:?}"
    );
    // billed once, at backup's prices: 9 * 2e-6 + 6 * 4e-6
    let spend = spend_after_flush(&app, &key, 0.0000419).await;
    assert!((spend - 0.000042).abs() < 1e-12, "{spend}");
    let (s, logs) = app.get("/spend/logs", MASTER).await;
    assert_eq!(s, 200);
    let log = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["model_group"] == "backup")
        .expect("the log names the group that answered");
    assert_eq!(log["model"], "backup", "{log}");

    // A key limited to `primary` is never served by `backup`: it gets primary's error.
    let (s, b2) = app
        .post("/key/generate", MASTER, json!({"models": ["primary"]}))
        .await;
    assert_eq!(s, 200, "{b2}");
    let narrow = b2["key"].as_str().unwrap();
    let before = m.hits();
    let (s, body) = app
        .post("/v1/chat/completions", narrow, hi("primary"))
        .await;
    assert!(s == 502 || s == 429, "{s}: {body}");
    assert!(
        models_called(&m)[before..].iter().all(|c| c == "primary"),
        "{:?}",
        models_called(&m)
    );

    // The model list shows the configured fallbacks, and hides a cooling model on request.
    let (s, list) = app.get("/v1/models?include_metadata=true", MASTER).await;
    assert_eq!(s, 200, "{list}");
    let entry = |list: &Value, id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
    };
    assert_eq!(
        entry(&list, "primary").unwrap()["metadata"]["fallbacks"],
        json!(["backup"])
    );
    let (_, list) = app
        .get(
            "/v1/models?include_metadata=true&fallback_type=context_window",
            MASTER,
        )
        .await;
    assert_eq!(
        entry(&list, "small").unwrap()["metadata"]["fallbacks"],
        json!(["big"])
    );
    let (_, healthy) = app.get("/v1/models?healthy_only=true", MASTER).await;
    assert!(
        entry(&healthy, "primary").is_none(),
        "primary is cooling: {healthy}"
    );
    assert!(entry(&healthy, "backup").is_some(), "{healthy}");

    // A prompt too long for `small` goes to `big` at once (not retried).
    let before = m.hits();
    let (s, body) = app.post("/v1/chat/completions", &key, hi("small")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(models_called(&m)[before..], ["small", "big"]);

    // A 429 with retry-after is retried (num_retries 2) after that pause each time — its
    // cooldown lasts the upstream's retry-after, so it is free again by then; all attempts
    // failing answers 429.
    let before = m.hits();
    let started = std::time::Instant::now();
    let (s, body) = app.post("/v1/chat/completions", &key, hi("busy")).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(m.hits() - before, 3, "two retries");
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    app.shutdown().await;
}

/// A deployment that sets no prices is priced from the embedded cost map (claude-sonnet-4-5:
/// $3 / $15 per 1M tokens, cache reads $0.30, cache writes $3.75), shown in /model/info and
/// billed — cache tokens at their own prices.
async fn unpriced_deployments_are_priced_from_the_cost_map(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let (s, info) = app.get("/model/info", MASTER).await;
    assert_eq!(s, 200);
    let entry = info["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["model_name"] == "claude-mapped")
        .cloned()
        .unwrap();
    assert_eq!(entry["model_info"]["input_cost_per_token"], 3e-6, "{entry}");
    assert_eq!(
        entry["model_info"]["output_cost_per_token"], 1.5e-5,
        "{entry}"
    );
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("claude-mapped"))
        .await;
    assert_eq!(s, 200, "{body}");
    // 5 plain + 2 cache-read + 1 cache-write prompt tokens, 6 output
    let expected = 5.0 * 3e-6 + 2.0 * 3e-7 + 3.75e-6 + 6.0 * 1.5e-5;
    let spend = spend_after_flush(&app, &key, expected * 0.999).await;
    assert!((spend - expected).abs() < 1e-12, "{spend} vs {expected}");
    app.shutdown().await;
}

/// 7 prompt tokens, 4 + 2 (thinking) completion tokens at $1 / $2 per 1M.
const GEMINI_COST: f64 = 7.0 * 0.000001 + 6.0 * 0.000002;

async fn gemini_deployments_are_translated(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let key = new_key(&app).await;
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "gemini", "max_tokens": 40, "messages": [
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from Gemini."
    );
    assert_eq!(
        body["usage"]["completion_tokens"], 6,
        "thinking counts as output"
    );
    assert_eq!(
        last(&m.seen.azure_paths),
        "/ok/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(last(&m.seen.api_keys), "gemini-key-0123456789");
    assert_eq!(
        last(&m.seen.auth),
        "",
        "the key goes in x-goog-api-key, never the URL"
    );
    let sent = m.last_body();
    assert_eq!(
        sent["system_instruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "hi"}]}])
    );
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 40);
    let spend = spend_after_flush(&app, &key, GEMINI_COST * 0.999).await;
    assert!((spend - GEMINI_COST).abs() < 1e-12, "{spend}");

    // Streamed: chunks as they come, usage at the end, [DONE].
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(
            &json!({"model": "gemini", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = data_events(&r.text().await.unwrap());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Hello from Gemini.");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);
    assert!(last(&m.seen.azure_paths).ends_with(":streamGenerateContent?alt=sse"));
    spend_after_flush(&app, &key, 2.0 * GEMINI_COST * 0.999).await;

    // Anthropic clients reach Gemini too.
    let r = messages(
        &app,
        &key,
        "/v1/messages",
        json!({"model": "gemini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["content"][0]["text"], "Hello from Gemini.");
    assert_eq!(body["usage"]["output_tokens"], 6);

    // Refused parameters name the field and reach nobody.
    let hits = m.hits();
    let mut req = hi("gemini");
    req["logit_bias"] = json!({"1": 1});
    let (s, body) = app.post("/v1/chat/completions", &key, req).await;
    assert_eq!(s, 400, "{body}");
    assert!(body.to_string().contains("logit_bias"), "{body}");
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}

both_backends!(
    gemini_deployments_are_translated,
    unpriced_deployments_are_priced_from_the_cost_map,
    failed_deployments_are_retried_elsewhere_and_cooled,
    fallbacks_serve_only_models_the_caller_may_use,
);

// ---------------------------------------------------------------- wildcard routing

fn wildcard_config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: "anthropic/*"
    litellm_params:
      model: "anthropic/*"
      api_base: http://{addr}/ok
      api_key: {ANTHROPIC_KEY}
  - model_name: "priced/*"
    litellm_params:
      model: "openai/*"
      api_base: {ok}
      api_key: k
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: "*"
    litellm_params:
      model: "openai/*"
      api_base: {ok}
      api_key: k
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      mock_response: exact group
    model_info:
      id: exact
router_settings:
  num_retries: 0
  fallbacks: [{{"anthropic/*": ["gpt-4o-mini"]}}]
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        addr = m.addr,
        ok = m.base("ok"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_models_serve_any_priced_model_of_their_provider() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &wildcard_config(&m)).await;

    // A concrete Anthropic model through `anthropic/*`: translated, sent under its own name,
    // billed at the cost map's prices (5 plain + 2 cache-read + 1 cache-write prompt, 6 output).
    let key = app.key_with(json!({"models": []})).await;
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            hi("anthropic/claude-sonnet-4-5"),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from Claude."
    );
    assert_eq!(m.last_body()["model"], "claude-sonnet-4-5");
    let expected = 5.0 * 3e-6 + 2.0 * 3e-7 + 3.75e-6 + 6.0 * 1.5e-5;
    let spend = spend_after_flush(&app, &key, expected * 0.999).await;
    assert!((spend - expected).abs() < 1e-12, "{spend} vs {expected}");

    // The catch-all `*` sends the name as given to its provider, priced from the map (gpt-4o:
    // $2.5 / $10 per 1M; the mock bills 9 + 6 tokens); an exact group wins over any wildcard.
    let key = app.key_with(json!({"models": []})).await;
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&hi("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-litellm-model-group"], "gpt-4o");
    assert_eq!(m.last_body()["model"], "gpt-4o");
    let expected = 9.0 * 2.5e-6 + 6.0 * 1e-5;
    let spend = spend_after_flush(&app, &key, expected * 0.999).await;
    assert!((spend - expected).abs() < 1e-12, "{spend} vs {expected}");
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&hi("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-litellm-model-id"], "exact");

    // A wildcard that sets prices serves names the map does not know, at its prices.
    let key = app.key_with(json!({"models": []})).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("priced/my-local-llama"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(m.last_body()["model"], "my-local-llama");
    let expected = 9.0 * 1e-6 + 6.0 * 2e-6;
    let spend = spend_after_flush(&app, &key, expected * 0.999).await;
    assert!((spend - expected).abs() < 1e-12, "{spend} vs {expected}");

    // A name no map prices, through a wildcard that sets none, is refused before the upstream:
    // it would cost $0 and pass every budget.
    let hits = m.hits();
    for name in ["anthropic/claude-from-the-future-9", "some-unknown-model"] {
        let (s, body) = app.post("/v1/chat/completions", &key, hi(name)).await;
        assert_eq!(s, 400, "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("does not serve unpriced models"), "{body}");
        assert_eq!(body["error"]["param"], "model");
    }
    assert_eq!(m.hits(), hits);

    // Allow-lists apply to the concrete name: an exact entry allows that model only, a
    // wildcard entry the provider's models.
    let one = app
        .key_with(json!({"models": ["anthropic/claude-sonnet-4-5"]}))
        .await;
    let (s, _) = app
        .post(
            "/v1/chat/completions",
            &one,
            hi("anthropic/claude-sonnet-4-5"),
        )
        .await;
    assert_eq!(s, 200);
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &one,
            hi("anthropic/claude-haiku-4-5"),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["type"], "key_model_access_denied");
    assert_eq!(m.hits(), hits + 1);
    let all = app.key_with(json!({"models": ["anthropic/*"]})).await;
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &all,
            hi("anthropic/claude-haiku-4-5"),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = app.post("/v1/chat/completions", &all, hi("gpt-4o")).await;
    assert_eq!(s, 403);

    // /model/info lists the wildcard as configured.
    let (s, info) = app.get("/model/info", MASTER).await;
    assert_eq!(s, 200);
    assert!(
        info["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["model_name"] == "anthropic/*"),
        "{info}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_groups_fall_back_by_their_pattern() {
    let m = MockUpstream::start().await;
    let yaml = wildcard_config(&m).replace(
        &format!("api_base: http://{}/ok\n", m.addr),
        &format!("api_base: http://{}/fail\n", m.addr),
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .json(&hi("anthropic/claude-sonnet-4-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-litellm-attempted-fallbacks"], "1");
    assert_eq!(r.headers()["x-litellm-model-id"], "exact");
    app.shutdown().await;
}

#[test]
fn wildcards_with_more_than_one_star_are_refused() {
    for (model_name, model, key) in [
        ("a*b*", "openai/*", "model_list[0].model_name"),
        ("plain", "openai/*", "model_list[0].litellm_params.model"),
        ("x/*", "openai/*/*", "model_list[0].litellm_params.model"),
    ] {
        let yaml = format!(
            "model_list:\n  - model_name: \"{model_name}\"\n    litellm_params: {{model: \"{model}\", api_key: k}}\n"
        );
        let err = purser::config::Config::parse(&yaml, "c.yaml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
}
