//! Vertex AI deployments (`vertex_ai/<gemini model>`): a service-account key (JSON text, a
//! mapping, a file, or `GOOGLE_APPLICATION_CREDENTIALS`) signs a JWT the mock OAuth endpoint
//! exchanges for a token; the token authorizes the Gemini-wire call below the project and
//! location, is cached and refreshed; refusals at start-up and at the token endpoint never echo
//! the key. The key is generated per test run (aws-lc-rs), never stored.

use serde_json::{Value, json};

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_upstream::MockUpstream;

const EMAIL: &str = "purser-test@purser-tests.iam.gserviceaccount.com";

/// A fresh RSA-2048 key as PKCS#8 PEM.
fn private_key_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn service_account(pem: &str, token_uri: &str) -> Value {
    json!({
        "type": "service_account",
        "project_id": "purser-tests",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": EMAIL,
        "token_uri": token_uri,
    })
}

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_deployments_call_gemini_with_a_service_account_token() {
    let m = MockUpstream::start().await;
    let pem = private_key_pem();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(
        &key_file,
        service_account(&pem, &format!("http://{}/brief/token", m.addr)).to_string(),
    )
    .unwrap();
    // JSON is YAML: the first key is given as a mapping, the second as a file path.
    let yaml = format!(
        r#"
model_list:
  - model_name: vertex
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      api_base: http://{addr}/ok
      vertex_location: europe-west4
      vertex_credentials: {mapping}
  - model_name: vertex-brief
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      api_base: http://{addr}/ok
      vertex_project: other-project
      vertex_credentials: {path:?}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: vertex-denied
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      api_base: http://{addr}/ok
      vertex_credentials: {denied}
router_settings:
  num_retries: 0
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        addr = m.addr,
        mapping = service_account(&pem, &format!("http://{}/ok/token", m.addr)),
        path = key_file.display().to_string(),
        denied = service_account(&pem, &format!("http://{}/deny/token", m.addr)),
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;

    for stream in [false, true] {
        let mut req = hi("vertex");
        req["stream"] = json!(stream);
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(MASTER)
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("Hello from") && text.contains("Gemini."),
            "{text}"
        );
        let path = m.seen.azure_paths.lock().unwrap().last().cloned().unwrap();
        let action = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        assert_eq!(
            path,
            format!(
                "/ok/v1/projects/purser-tests/locations/europe-west4/publishers/google/models/gemini-2.5-flash:{action}"
            ),
            "project from the key file, location from the config"
        );
        assert_eq!(
            m.seen.auth.lock().unwrap().last().unwrap(),
            "Bearer ya29.mock-1",
            "one token for both calls"
        );
    }
    assert_eq!(
        m.seen
            .tokens_granted
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // A token already due for refresh is replaced on the next call; the config's project wins.
    for _ in 0..2 {
        let (s, body) = app
            .post("/v1/chat/completions", MASTER, hi("vertex-brief"))
            .await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(
        m.seen
            .tokens_granted
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert!(
        m.seen
            .azure_paths
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .starts_with("/ok/v1/projects/other-project/locations/us-central1/")
    );

    // Refused credentials: a 502 that names neither the key nor a token; Gemini is not called.
    let hits = m.hits();
    let (s, body) = app
        .post("/v1/chat/completions", MASTER, hi("vertex-denied"))
        .await;
    assert_eq!(s, 502, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no Vertex AI access token"), "{body}");
    assert!(msg.contains("HTTP 400"), "{body}");
    assert!(
        !body.to_string().contains("PRIVATE KEY") && !body.to_string().contains("ya29"),
        "{body}"
    );
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}

#[test]
fn vertex_deployments_refuse_to_start_without_usable_credentials() {
    use purser::config::Config;
    use purser::upstream::Registry;
    let pem = private_key_pem();
    let good = service_account(&pem, "https://oauth2.googleapis.com/token");
    let mut no_project = good.clone();
    no_project.as_object_mut().unwrap().remove("project_id");
    let cases: Vec<(String, &str)> = vec![
        (
            "model: vertex_ai/gemini-2.5-flash".into(),
            "vertex_credentials: required",
        ),
        (
            "model: vertex_ai/gemini-2.5-flash\n      vertex_credentials: '{\"client_email\": \"a\", \"private_key\": \"SECRET-KEY-TEXT\"}'".into(),
            "PKCS#8",
        ),
        (
            "model: vertex_ai/gemini-2.5-flash\n      vertex_credentials: /nonexistent/sa.json".into(),
            "cannot read the key file",
        ),
        (
            format!("model: vertex_ai/gemini-2.5-flash\n      vertex_credentials: {no_project}"),
            "vertex_project: required",
        ),
        (
            format!("model: vertex_ai/gemini-2.5-flash\n      api_key: SECRET-KEY-TEXT\n      vertex_credentials: {good}"),
            "not an api_key",
        ),
        (
            format!("model: vertex_ai/gemini-2.5-flash\n      vertex_location: 'eu/../x'\n      vertex_credentials: {good}"),
            "not a region name",
        ),
        (
            "model: openai/gpt-4o\n      api_key: k\n      vertex_project: p".into(),
            "only vertex_ai/ deployments",
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
        assert!(
            !err.contains("SECRET-KEY-TEXT") && !err.contains("PRIVATE KEY"),
            "{err}"
        );
    }
    // The standard variables: the key file, the project and the location.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sa.json");
    std::fs::write(&file, no_project.to_string()).unwrap();
    let yaml = "model_list:\n  - model_name: m\n    litellm_params:\n      model: vertex_ai/gemini-2.5-flash\n";
    let config = Config::parse(yaml, "t.yaml").unwrap();
    let path = file.display().to_string();
    let env = |name: &str| match name {
        "GOOGLE_APPLICATION_CREDENTIALS" => Some(path.clone()),
        "VERTEXAI_PROJECT" => Some("env-project".to_string()),
        "VERTEXAI_LOCATION" => Some("global".to_string()),
        _ => None,
    };
    let r = Registry::from_config_with_env(&config, &env).expect("served");
    assert!(r.contains("m"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_and_vertex_deployments_serve_embeddings() {
    use base64::Engine;
    let m = MockUpstream::start().await;
    let pem = private_key_pem();
    let yaml = format!(
        r#"
model_list:
  - model_name: gemini-emb
    litellm_params:
      model: gemini/text-embedding-004
      api_base: http://{addr}/ok
      api_key: gemini-key-0123456789
      input_cost_per_token: 0.000001
  - model_name: vertex-emb
    litellm_params:
      model: vertex_ai/text-embedding-005
      api_base: http://{addr}/ok
      vertex_credentials: {sa}
      input_cost_per_token: 0.000001
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
        addr = m.addr,
        sa = service_account(&pem, &format!("http://{}/ok/token", m.addr)),
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let key = app.key_with(json!({})).await;

    // AI Studio: one batchEmbedContents call for every input, `dimensions` carried; no token
    // count comes back, so the counted input is billed.
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "gemini-emb", "input": ["the quick brown fox", "jumps"], "dimensions": 4, "encoding_format": "float"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][1]["embedding"], json!([1.25, 1.5, 1.75, 2.0]));
    let sent = m.last_body();
    assert_eq!(sent["requests"][0]["model"], "models/text-embedding-004");
    assert_eq!(sent["requests"][1]["content"]["parts"][0]["text"], "jumps");
    assert_eq!(sent["requests"][0]["outputDimensionality"], 4);
    assert!(
        m.seen
            .azure_paths
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .ends_with("/models/text-embedding-004:batchEmbedContents")
    );
    let counted = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(counted > 0, "{body}");

    // The OpenAI SDK's default: base64 of little-endian f32.
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "gemini-emb", "input": "hi", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = raw
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, vec![0.25, 0.5, 0.75]);
    let hi_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();

    // Vertex AI: `predict` over instances, billed by the token count it reports (2 each).
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "vertex-emb", "input": ["a", "b"], "dimensions": 2}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["data"][0]["embedding"], json!([0.25, 0.5]));
    assert_eq!(m.last_body()["instances"][1]["content"], "b");
    assert_eq!(m.last_body()["parameters"]["outputDimensionality"], 2);
    app.expect_key_spend(&key, (counted + hi_tokens + 4) as f64 * 1e-6)
        .await;

    // Refused before the upstream: token arrays, unknown parameters and formats, providers
    // without embeddings.
    let hits = m.hits();
    for (body, param) in [
        (
            json!({"model": "gemini-emb", "input": [[1, 2, 3]]}),
            "input",
        ),
        (
            json!({"model": "gemini-emb", "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": "gemini-emb", "input": "x", "task_type": "RETRIEVAL"}),
            "task_type",
        ),
        (
            json!({"model": "vertex-emb", "input": "x", "dimensions": 0}),
            "dimensions",
        ),
    ] {
        let (s, b) = app.post("/v1/embeddings", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "claude", "input": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OpenAI, Azure, Gemini, Vertex AI and Bedrock"),
        "{b}"
    );
    assert_eq!(m.hits(), hits);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_on_vertex_speaks_anthropic_with_a_service_account_token() {
    let m = MockUpstream::start().await;
    let pem = private_key_pem();
    let yaml = format!(
        r#"
model_list:
  - model_name: vertex-claude
    litellm_params:
      model: vertex_ai/claude-sonnet-4-5@20250929
      api_base: http://{addr}/ok
      vertex_location: us-east5
      vertex_credentials: {sa}
router_settings:
  num_retries: 0
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        addr = m.addr,
        sa = service_account(&pem, &format!("http://{}/ok/token", m.addr)),
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let key = app.key_with(json!({})).await;
    let base = "/ok/v1/projects/purser-tests/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929";

    // OpenAI chat, translated to Messages and sent as Vertex wants it.
    let (s, body) = app
        .post("/v1/chat/completions", &key, hi("vertex-claude"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from Claude."
    );
    assert_eq!(
        m.seen.azure_paths.lock().unwrap().last().unwrap().as_str(),
        format!("{base}:rawPredict")
    );
    let sent = m.last_body();
    assert_eq!(sent["anthropic_version"], "vertex-2023-10-16");
    assert!(sent.get("model").is_none(), "{sent}");
    let mut req = hi("vertex-claude");
    req["stream"] = json!(true);
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("Claude") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(
        m.seen.azure_paths.lock().unwrap().last().unwrap().as_str(),
        format!("{base}:streamRawPredict")
    );

    // An Anthropic client's request goes natively, reshaped the same way.
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "vertex-claude", "max_tokens": 32,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let msg: Value = r.json().await.unwrap();
    assert_eq!(msg["content"][0]["text"], "Hello from Claude.", "{msg}");
    assert!(m.last_body().get("model").is_none());
    assert_eq!(
        m.seen
            .tokens_granted
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one token for every call"
    );
    // Priced from the cost map's Vertex entry ($3 / $15 per 1M, cache reads and writes at their
    // prices): 5 plain + 2 read + 1 write prompt tokens, 6 output, three calls.
    let one = 5.0 * 3e-6 + 2.0 * 3e-7 + 3.75e-6 + 6.0 * 1.5e-5;
    app.expect_key_spend(&key, 3.0 * one).await;
    app.shutdown().await;
}
