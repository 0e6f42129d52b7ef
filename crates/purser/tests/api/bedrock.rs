//! Amazon Bedrock deployments (`bedrock/<model-id>`, `bedrock/converse/<model-id>`): OpenAI chat
//! and Anthropic Messages clients translated to Converse / ConverseStream and back, every call
//! SigV4-signed (verified by the mock from the spec) or carrying a Bedrock API key; tools, JSON
//! mode, streaming through the binary event stream, errors, embeddings through Titan and Cohere,
//! cost-map pricing and exact spend; refusals at start-up for credentials Purser cannot use.

use serde_json::{Value, json};

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_bedrock::{API_KEY, SECRET, SESSION_TOKEN};
use crate::mock_upstream::MockUpstream;

const CLAUDE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: claude-bedrock
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/ok
      aws_access_key_id: AKIDMOCK
      aws_secret_access_key: "{SECRET}"
      aws_region_name: eu-central-1
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: claude-sts
    litellm_params:
      model: bedrock/converse/us.{CLAUDE}
      aws_bedrock_runtime_endpoint: http://{addr}/ok
      aws_access_key_id: ASIAMOCK
      aws_secret_access_key: "{SECRET}"
      aws_session_token: {SESSION_TOKEN}
      aws_region_name: us-east-1
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: claude-key
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/ok
      api_key: {API_KEY}
  - model_name: claude-wrong-secret
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/ok
      aws_access_key_id: AKIDMOCK
      aws_secret_access_key: not-the-secret
      input_cost_per_token: 0.000001
  - model_name: claude-throttled
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/throttle
      api_key: {API_KEY}
      input_cost_per_token: 0.000001
  - model_name: claude-denied
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/deny
      api_key: {API_KEY}
      input_cost_per_token: 0.000001
  - model_name: claude-failing
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/fail
      aws_access_key_id: ASIAMOCK
      aws_secret_access_key: "{SECRET}"
      aws_session_token: {SESSION_TOKEN}
      input_cost_per_token: 0.000001
  - model_name: claude-short
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/toolong
      api_key: {API_KEY}
      input_cost_per_token: 0.000001
  - model_name: claude-broken
    litellm_params:
      model: bedrock/{CLAUDE}
      api_base: http://{addr}/broken
      api_key: {API_KEY}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: "bedrock/*"
    litellm_params:
      model: "bedrock/*"
      api_base: http://{addr}/ok
      api_key: {API_KEY}
  - model_name: titan
    litellm_params:
      model: bedrock/amazon.titan-embed-text-v2:0
      api_base: http://{addr}/ok
      api_key: {API_KEY}
  - model_name: cohere-embed
    litellm_params:
      model: bedrock/cohere.embed-english-v3
      api_base: http://{addr}/ok
      api_key: {API_KEY}
      input_cost_per_token: 0.000001
  - model_name: fallback-target
    litellm_params:
      model: openai/gpt-4o-mini
      mock_response: from the fallback
router_settings:
  num_retries: 0
  context_window_fallbacks: [{{"claude-short": ["fallback-target"]}}]
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        addr = m.addr,
    )
}

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}]})
}

fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// 12 prompt tokens (8 + 3 cache read + 1 cache write) at $1/M and 5 output at $2/M.
const CALL_COST: f64 = 12.0 * 1e-6 + 5.0 * 2e-6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_chat_is_signed_translated_and_billed_exactly() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": []})).await;

    let mut req = hi("claude-bedrock");
    req["max_tokens"] = json!(64);
    req["temperature"] = json!(0.1);
    req["stop"] = json!("END");
    let (s, body) = app.post("/v1/chat/completions", &key, req).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from Bedrock."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"]["prompt_tokens"], 12,
        "cache tokens count as prompt"
    );
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    let sent = m.last_body();
    assert_eq!(sent["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"text": "hi"}]}])
    );
    assert_eq!(
        sent["inferenceConfig"],
        json!({"maxTokens": 64, "temperature": 0.1, "stopSequences": ["END"]})
    );
    assert!(sent.get("model").is_none());
    assert_eq!(
        m.seen.bedrock_calls.lock().unwrap().last().unwrap(),
        "/ok/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse sigv4:AKIDMOCK:eu-central-1",
        "the model id encoded whole, signed for the configured region"
    );
    app.expect_key_spend(&key, CALL_COST).await;

    // Temporary credentials: the session token is sent and signed; `bedrock/converse/` forces
    // Converse and names the inference profile; the endpoint from aws_bedrock_runtime_endpoint.
    let key = app.key_with(json!({"models": []})).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("claude-sts"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        m.seen.bedrock_calls.lock().unwrap().last().unwrap(),
        "/ok/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse sigv4:ASIAMOCK:us-east-1"
    );
    assert!(
        m.last_body().get("inferenceConfig").is_none(),
        "no max_tokens: the model's default"
    );
    app.expect_key_spend(&key, CALL_COST).await;

    // A Bedrock API key goes as a bearer token.
    let (s, body) = app
        .post("/v1/chat/completions", MASTER, hi("claude-key"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        m.seen
            .bedrock_calls
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .ends_with(" bearer")
    );

    // A wrong secret: AWS refuses the signature; Purser answers 502 and names no secret.
    let (s, body) = app
        .post("/v1/chat/completions", MASTER, hi("claude-wrong-secret"))
        .await;
    assert_eq!(s, 502, "{body}");
    assert!(!body.to_string().contains("not-the-secret"), "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_streams_are_translated_from_the_event_stream() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": []})).await;
    let mut req = hi("claude-bedrock");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let r = app.call("/v1/chat/completions", &key, &req).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let events = sse_events(&text);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from Bedrock.");
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk")
    );
    let finish: Vec<&Value> = events
        .iter()
        .filter(|e| e["choices"][0]["finish_reason"].is_string())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let last = events.last().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 12);
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert!(
        m.seen
            .bedrock_calls
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .contains("/converse-stream sigv4:"),
        "streams go to converse-stream, signed"
    );
    app.expect_key_spend(&key, CALL_COST).await;

    // Without include_usage the usage chunk is not relayed; the call is still billed in full.
    let key = app.key_with(json!({"models": []})).await;
    let mut req = hi("claude-bedrock");
    req["stream"] = json!(true);
    let r = app.call("/v1/chat/completions", &key, &req).await;
    let text = r.text().await.unwrap();
    assert!(
        sse_events(&text)
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)),
        "{text}"
    );
    app.expect_key_spend(&key, CALL_COST).await;

    // A stream that ends in an exception frame: the error reaches the client in the stream and
    // the tokens produced so far are billed (at least the prompt).
    let key = app.key_with(json!({"models": []})).await;
    let mut req = hi("claude-broken");
    req["stream"] = json!(true);
    let r = app.call("/v1/chat/completions", &key, &req).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("throttlingException"), "{text}");
    assert!(text.contains("Hello"), "{text}");
    let mut spend = 0.0;
    for _ in 0..100 {
        let (_, b) = app.get(&format!("/key/info?key={key}"), MASTER).await;
        spend = b["info"]["spend"].as_f64().unwrap_or(0.0);
        if spend > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(spend > 0.0, "a broken stream is billed for what it used");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_tools_json_mode_and_tool_results_round_trip() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    for stream in [false, true] {
        let mut req = hi("claude-bedrock");
        req["tools"] = tools.clone();
        req["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
        req["stream"] = json!(stream);
        let r = app.call("/v1/chat/completions", MASTER, &req).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let (id, name, args, finish) = if stream {
            let events = sse_events(&text);
            let calls: Vec<&Value> = events
                .iter()
                .filter_map(|e| {
                    e["choices"][0]["delta"]["tool_calls"][0]
                        .as_object()
                        .map(|_| &e["choices"][0]["delta"]["tool_calls"][0])
                })
                .collect();
            let args: String = calls
                .iter()
                .filter_map(|c| c["function"]["arguments"].as_str())
                .collect();
            let finish = events
                .iter()
                .find_map(|e| e["choices"][0]["finish_reason"].as_str())
                .unwrap()
                .to_string();
            (
                calls[0]["id"].clone(),
                calls[0]["function"]["name"].clone(),
                args,
                finish,
            )
        } else {
            let b: Value = serde_json::from_str(&text).unwrap();
            let c = &b["choices"][0]["message"]["tool_calls"][0];
            (
                c["id"].clone(),
                c["function"]["name"].clone(),
                c["function"]["arguments"].as_str().unwrap().to_string(),
                b["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(id, "tooluse_mock", "{text}");
        assert_eq!(name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"answer": 42})
        );
        assert_eq!(finish, "tool_calls");
        let sent = m.last_body();
        assert_eq!(
            sent["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "get_weather"}})
        );
        assert_eq!(
            sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"],
            json!(["city"])
        );
    }

    // The tool's result goes back as a toolResult answering the toolUse (the mock checks it).
    let req = json!({"model": "claude-bedrock", "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "tooluse_mock", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "tooluse_mock", "content": "{\"temp\": 3}"},
        {"role": "user", "content": [{"type": "text", "text": "And this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]}]});
    let (s, body) = app.post("/v1/chat/completions", MASTER, req).await;
    assert_eq!(s, 200, "{body}");
    let sent = m.last_body();
    assert_eq!(
        sent["messages"][2]["content"][0]["toolResult"]["toolUseId"],
        "tooluse_mock"
    );
    assert_eq!(
        sent["messages"][2]["content"][1],
        json!({"text": "And this?"}),
        "the tool result and the next user turn merge into one user turn"
    );
    assert_eq!(sent["messages"][2]["content"][2]["image"]["format"], "jpeg");

    // JSON mode: a forced tool whose input is the answer's content.
    let mut req = hi("claude-bedrock");
    req["response_format"] = json!({"type": "json_object"});
    let (s, body) = app.post("/v1/chat/completions", MASTER, req).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "{\"answer\":42}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // What Converse cannot carry is refused by name before anything is sent.
    let hits = m.hits();
    for (field, value, named) in [
        ("tool_choice", json!("none"), "tool_choice"),
        ("frequency_penalty", json!(0.2), "frequency_penalty"),
        ("parallel_tool_calls", json!(false), "parallel_tool_calls"),
    ] {
        let mut req = hi("claude-bedrock");
        req["tools"] = tools.clone();
        req[field] = value;
        let (s, body) = app.post("/v1/chat/completions", MASTER, req).await;
        assert_eq!(s, 400, "{field}: {body}");
        assert_eq!(body["error"]["param"], named, "{body}");
    }
    let mut req = hi("claude-bedrock");
    req["messages"][1]["content"] =
        json!([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]);
    let (s, body) = app.post("/v1/chat/completions", MASTER, req).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data: URLs"),
        "{body}"
    );
    assert_eq!(m.hits(), hits, "refusals never reach Bedrock");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_errors_map_to_openai_errors_without_secrets() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;

    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .json(&hi("claude-throttled"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many requests"),
        "{body}"
    );

    let (s, body) = app
        .post("/v1/chat/completions", MASTER, hi("claude-denied"))
        .await;
    assert_eq!(
        s, 502,
        "an upstream authorization failure is the gateway's, not the caller's: {body}"
    );

    // The failing upstream echoes the credentials it got: none of them reaches the client.
    let (s, body) = app
        .post("/v1/chat/completions", MASTER, hi("claude-failing"))
        .await;
    assert_eq!(s, 502, "{body}");
    let text = body.to_string();
    assert!(text.contains("internal error"), "{text}");
    assert!(
        !text.contains(SESSION_TOKEN) && !text.contains(&SESSION_TOKEN.to_uppercase()),
        "{text}"
    );

    // "Input is too long": a context-window failure, so the context-window fallback answers.
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .json(&hi("claude-short"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-litellm-attempted-fallbacks"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "from the fallback"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_clients_reach_bedrock_through_v1_messages() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": []})).await;
    let req = json!({"model": "claude-bedrock", "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}]});
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["content"][0]["text"], "Hello from Bedrock.");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["output_tokens"], 5);
    assert_eq!(m.last_body()["inferenceConfig"]["maxTokens"], 100);
    app.expect_key_spend(&key, CALL_COST).await;

    let mut req = req.clone();
    req["stream"] = json!(true);
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for e in [
        "event: message_start",
        "event: content_block_delta",
        "event: message_delta",
        "event: message_stop",
    ] {
        assert!(text.contains(e), "{e}: {text}");
    }
    assert!(text.contains("Bedrock."), "{text}");
    app.expect_key_spend(&key, 2.0 * CALL_COST).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_wildcards_are_priced_from_the_cost_map() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": []})).await;
    let model = format!("bedrock/{CLAUDE}");
    let (s, body) = app.post("/v1/chat/completions", &key, hi(&model)).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        m.seen
            .bedrock_calls
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .contains("v1%3A0/converse bearer")
    );
    // The cost map's Claude 3.5 Haiku on Bedrock: $0.8/M in, $4/M out, cache read $0.08/M,
    // cache write $1/M.
    let expected = 8.0 * 8e-7 + 3.0 * 8e-8 + 1.0 * 1e-6 + 5.0 * 4e-6;
    app.expect_key_spend(&key, expected).await;
    // A model the map does not price is not served through the wildcard.
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            hi("bedrock/acme.unknown-model-v1:0"),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_embeddings_through_titan_and_cohere() {
    use base64::Engine;
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": []})).await;

    // Titan embeds one text per call: three inputs are three signed calls, billed by the
    // tokens Titan reports (4 each) at the cost map's $0.02/M.
    let before = m.hits();
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "titan", "input": ["a", "b", "c"], "dimensions": 256}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(m.hits() - before, 3);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_eq!(body["data"][2]["index"], 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 256);
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    assert_eq!(m.last_body()["dimensions"], 256);
    app.expect_key_spend(&key, 12.0 * 2e-8).await;

    // base64 (the OpenAI SDK's default): little-endian f32.
    let (s, body) = app
        .post(
            "/v1/embeddings",
            MASTER,
            json!({"model": "titan", "input": "a", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(f32::from_le_bytes(bytes[..4].try_into().unwrap()), 0.125);

    // Cohere takes the batch in one call with an input_type.
    let before = m.hits();
    let (s, body) = app
        .post(
            "/v1/embeddings",
            MASTER,
            json!({"model": "cohere-embed", "input": ["x", "y"], "input_type": "search_query"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(m.hits() - before, 1);
    assert_eq!(body["data"][1]["embedding"], json!([0.5, 0.25]));
    assert_eq!(
        m.last_body(),
        json!({"texts": ["x", "y"], "input_type": "search_query"})
    );

    // Parameters the model cannot take, and a chat model asked for embeddings, are refused.
    let before = m.hits();
    let (s, body) = app
        .post(
            "/v1/embeddings",
            MASTER,
            json!({"model": "titan", "input": "a", "input_type": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["param"], "input_type");
    let (s, body) = app
        .post(
            "/v1/embeddings",
            MASTER,
            json!({"model": "claude-bedrock", "input": "a"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(m.hits(), before);
    app.shutdown().await;
}

#[test]
fn bedrock_deployments_refuse_to_start_without_usable_credentials() {
    use purser::config::Config;
    use purser::upstream::Registry;
    let cases = [
        ("model: bedrock/anthropic.claude-v2", "needs credentials"),
        (
            "model: bedrock/anthropic.claude-v2\n      aws_secret_access_key: SECRET-VALUE",
            "aws_access_key_id: required",
        ),
        (
            "model: bedrock/anthropic.claude-v2\n      aws_role_name: arn:aws:iam::1:role/x",
            "aws_role_name: not supported yet",
        ),
        (
            "model: bedrock/anthropic.claude-v2\n      aws_profile_name: dev",
            "aws_profile_name: not supported yet",
        ),
        (
            "model: bedrock/anthropic.claude-v2\n      api_key: k\n      aws_region_name: 'us/../x'",
            "not a region name",
        ),
        (
            "model: bedrock/invoke/anthropic.claude-v2\n      api_key: k",
            "bedrock/invoke/ chat models are not supported",
        ),
        (
            "model: openai/gpt-4o\n      api_key: k\n      aws_region_name: us-east-1",
            "only bedrock/ deployments",
        ),
        (
            "model: bedrock/anthropic.claude-v2\n      api_key: k\n      api_version: '2024'",
            "not a Bedrock setting",
        ),
    ];
    for (params, expected) in &cases {
        let yaml = format!("model_list:\n  - model_name: m\n    litellm_params:\n      {params}\n");
        let config = Config::parse(&yaml, "t.yaml").expect("parses");
        let err = Registry::from_config_with_env(&config, &|_| None)
            .expect_err(params)
            .to_string();
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(err.contains("model_list[0]"), "{err}");
        assert!(!err.contains("SECRET-VALUE"), "{err}");
    }
    // The standard AWS variables: credentials and region.
    let yaml = "model_list:\n  - model_name: m\n    litellm_params:\n      model: bedrock/anthropic.claude-v2\n";
    let config = Config::parse(yaml, "t.yaml").unwrap();
    let env = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
        "AWS_REGION" => Some("ap-southeast-2".to_string()),
        _ => None,
    };
    let r = Registry::from_config_with_env(&config, &env).expect("served");
    assert_eq!(
        r.deployments("m")[0].public_api_base(),
        Some("https://bedrock-runtime.ap-southeast-2.amazonaws.com")
    );
    let key_only = |name: &str| (name == "AWS_BEARER_TOKEN_BEDROCK").then(|| "tok".to_string());
    let r = Registry::from_config_with_env(&config, &key_only).expect("served with an API key");
    assert_eq!(
        r.deployments("m")[0].public_api_base(),
        Some("https://bedrock-runtime.us-west-2.amazonaws.com"),
        "the reference's default region"
    );
}
