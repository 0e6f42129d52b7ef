//! `/v1/images/generations`, `/v1/audio/speech`, `/v1/moderations` and `/v1/rerank` to
//! OpenAI-wire and Azure deployments: governed like chat, billed per image made (or by tokens, as gpt-image-1
//! reports), per character spoken (the deployment's price or the cost map's), moderations by
//! their tokens; audio relayed as bytes; `mock_response` models answer all three; bad bodies and
//! providers without the API refused before the upstream.

use serde_json::json;

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_upstream::MockUpstream;

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: dalle
    litellm_params:
      model: openai/dall-e-3
      api_base: {ok}
      api_key: k
      output_cost_per_image: 0.04
  - model_name: dalle-fewer
    litellm_params:
      model: openai/dall-e-3
      api_base: {fewer}
      api_key: k
      output_cost_per_image: 0.04
  - model_name: gpt-image
    litellm_params:
      model: openai/gpt-image-1
      api_base: {tokens}
      api_key: k
  - model_name: azure-dalle
    litellm_params:
      model: azure/dalle-prod
      api_base: http://{addr}/ok
      api_key: azure-key-0123456789
      api_version: "2024-10-21"
      output_cost_per_image: 0.08
  - model_name: tts
    litellm_params:
      model: openai/tts-1
      api_base: {ok}
      api_key: k
  - model_name: moderation
    litellm_params:
      model: openai/omni-moderation-latest
      api_base: {ok}
      api_key: k
  - model_name: local
    litellm_params:
      model: openai/local
      mock_response: a picture
      output_cost_per_image: 0.01
  - model_name: reranker
    litellm_params:
      model: hosted_vllm/bge-reranker-v2-m3
      api_base: {ok}
      input_cost_per_query: 0.002
      input_cost_per_token: 0.0000001
  - model_name: local-rerank
    litellm_params:
      model: openai/local-rerank
      mock_response: x
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/ok
      api_key: sk-ant-0123456789
router_settings:
  num_retries: 0
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        ok = m.base("ok"),
        fewer = m.base("fewer"),
        tokens = m.base("tokens"),
        addr = m.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_billed_per_image_made_or_by_tokens() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;

    let key = app.key_with(json!({})).await;
    let (s, body) = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "dalle", "prompt": "a cat", "n": 2, "size": "1024x1024"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(m.last_body()["model"], "dall-e-3");
    app.expect_key_spend(&key, 0.08).await;

    // Billed for what was made, not for what was asked.
    let key = app.key_with(json!({})).await;
    let (s, _) = app
        .post(
            "/images/generations",
            &key,
            json!({"model": "dalle-fewer", "prompt": "a cat", "n": 3}),
        )
        .await;
    assert_eq!(s, 200);
    app.expect_key_spend(&key, 0.04).await;

    // gpt-image-1 reports tokens: priced from the cost map ($5 per 1M input tokens, no output
    // token price in this map).
    let key = app.key_with(json!({})).await;
    let (s, body) = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "gpt-image", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    app.expect_key_spend(&key, 50.0 * 5e-6).await;

    // Azure's path below the deployment.
    let (s, body) = app
        .post(
            "/v1/images/generations",
            MASTER,
            json!({"model": "azure-dalle", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        m.seen.azure_paths.lock().unwrap().last().unwrap().as_str(),
        "/ok/openai/deployments/dalle-prod/images/generations?api-version=2024-10-21"
    );

    // Mock models answer in the API's shape and bill the same way.
    let key = app.key_with(json!({})).await;
    let (s, body) = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "local", "prompt": "x", "n": 3}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    app.expect_key_spend(&key, 0.03).await;

    // Per-image prices are not "free" (no token price is set): budgets hold them. Two images
    // spend the key's $0.05; the next call is refused before the upstream.
    let poor = app.key_with(json!({"max_budget": 0.05})).await;
    let (s, _) = app
        .post(
            "/v1/images/generations",
            &poor,
            json!({"model": "dalle", "prompt": "a cat", "n": 2}),
        )
        .await;
    assert_eq!(s, 200);
    let hits = m.hits();
    let (s, b) = app
        .post(
            "/v1/images/generations",
            &poor,
            json!({"model": "dalle", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["type"], "budget_exceeded");
    for (body, param) in [
        (json!({"model": "dalle"}), "prompt"),
        (json!({"model": "dalle", "prompt": "  "}), "prompt"),
        (json!({"model": "dalle", "prompt": "x", "n": 0}), "n"),
        (json!({"model": "dalle", "prompt": "x", "n": 11}), "n"),
        (
            json!({"model": "dalle", "prompt": "x", "stream": true}),
            "stream",
        ),
    ] {
        let (s, b) = app.post("/v1/images/generations", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "claude", "prompt": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(m.hits(), hits);
    let (_, logs) = app.get("/spend/logs", MASTER).await;
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .all(|l| l["call_type"] == "aimage_generation"),
        "{logs}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_is_relayed_as_audio_and_billed_per_character() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({})).await;
    let text = "Hello, world!"; // 13 characters at tts-1's $15 per 1M (the cost map)
    let r = app
        .client
        .post(app.url("/v1/audio/speech"))
        .bearer_auth(&key)
        .json(&json!({"model": "tts", "input": text, "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    assert_eq!(r.headers()["x-litellm-response-cost"], "0.000195");
    assert_eq!(&r.bytes().await.unwrap()[..], b"ID3\x04mock-mp3-audio");
    app.expect_key_spend(&key, 13.0 * 1.5e-5).await;

    // A mock model speaks a valid WAV.
    let r = app
        .client
        .post(app.url("/audio/speech"))
        .bearer_auth(MASTER)
        .json(&json!({"model": "local", "input": "hi", "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    let wav = r.bytes().await.unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..12], b"WAVE");

    let hits = m.hits();
    for (body, param) in [
        (json!({"model": "tts", "voice": "alloy"}), "input"),
        (json!({"model": "tts", "input": "x"}), "voice"),
        (
            json!({"model": "tts", "input": 5, "voice": "alloy"}),
            "input",
        ),
    ] {
        let (s, b) = app.post("/v1/audio/speech", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderations_are_proxied() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": ["moderation"]})).await;
    let (s, body) = app
        .post(
            "/v1/moderations",
            &key,
            json!({"model": "moderation", "input": ["one", "two"]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(m.last_body()["model"], "omni-moderation-latest");
    let (s, body) = app
        .post(
            "/moderations",
            MASTER,
            json!({"model": "local", "input": "x"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["results"][0]["flagged"], false);
    // The key's allow-list applies; a body without input never reaches the upstream.
    let hits = m.hits();
    let (s, _) = app
        .post(
            "/v1/moderations",
            &key,
            json!({"model": "tts", "input": "x"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = app
        .post("/v1/moderations", &key, json!({"model": "moderation"}))
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["param"], "input");
    assert_eq!(m.hits(), hits);
    let logs = app.spend_logs_at_least(2).await;
    assert!(
        logs.iter().all(|l| l["call_type"] == "amoderation"),
        "{logs:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_is_billed_per_search_and_by_tokens() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({})).await;
    let (s, body) = app
        .post(
            "/v1/rerank",
            &key,
            json!({"model": "reranker", "query": "capital of France?",
                   "documents": ["Paris is the capital.", {"text": "Berlin is a city."}, "Rome."], "top_n": 2}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(body["results"][0]["index"], 2);
    assert_eq!(m.last_body()["model"], "bge-reranker-v2-m3");
    // One search unit at $0.002 plus the 30 tokens the server read at $0.1 per 1M.
    app.expect_key_spend(&key, 0.002 + 30.0 * 1e-7).await;
    let (s, body) = app
        .post(
            "/v2/rerank",
            MASTER,
            json!({"model": "local-rerank", "query": "q", "documents": ["a", "b", "c"], "top_n": 1}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    let hits = m.hits();
    for (body, param) in [
        (json!({"model": "reranker", "documents": ["a"]}), "query"),
        (
            json!({"model": "reranker", "query": "q", "documents": []}),
            "documents",
        ),
        (
            json!({"model": "reranker", "query": "q", "documents": [1]}),
            "documents",
        ),
        (
            json!({"model": "reranker", "query": "q", "documents": ["a"], "top_n": 0}),
            "top_n",
        ),
    ] {
        let (s, b) = app.post("/rerank", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}
