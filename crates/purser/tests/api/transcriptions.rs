//! `/v1/audio/transcriptions`: a multipart upload governed like chat, re-sent to OpenAI-wire and
//! Azure deployments with the deployment's model, the answer relayed as received (JSON, text,
//! verbose JSON); billed by the tokens the model reports, else its reported duration, else the
//! file's length (exact for WAV, estimated from its size otherwise) at the per-second price;
//! `mock_response` models answer offline; malformed uploads refused before the upstream.

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp};
use crate::mock_upstream::MockUpstream;

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: whisper
    litellm_params:
      model: openai/whisper-1
      api_base: {ok}
      api_key: k
      input_cost_per_second: 0.0001
  - model_name: whisper-quiet
    litellm_params:
      model: openai/whisper-1
      api_base: {nousage}
      api_key: k
      input_cost_per_second: 0.0001
  - model_name: transcribe
    litellm_params:
      model: openai/gpt-4o-transcribe
      api_base: {ok}
      api_key: k
  - model_name: azure-whisper
    litellm_params:
      model: azure/whisper-prod
      api_base: http://{addr}/ok
      api_key: azure-key-0123456789
      api_version: "2024-10-21"
      input_cost_per_second: 0.0002
  - model_name: local
    litellm_params:
      model: openai/local-whisper
      mock_response: offline transcript
      input_cost_per_second: 0.001
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
        nousage = m.base("nousage"),
        addr = m.addr,
    )
}

/// A mono 16-bit PCM WAV of `ms` milliseconds at 16 kHz.
fn wav(ms: u32) -> Vec<u8> {
    let data = ms * 32;
    let mut f = Vec::new();
    f.extend_from_slice(b"RIFF");
    f.extend_from_slice(&(36 + data).to_le_bytes());
    f.extend_from_slice(b"WAVEfmt ");
    f.extend_from_slice(&16u32.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&16000u32.to_le_bytes());
    f.extend_from_slice(&32000u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(b"data");
    f.extend_from_slice(&data.to_le_bytes());
    f.resize(f.len() + data as usize, 0);
    f
}

fn form(model: &str, file: Vec<u8>, extra: &[(&str, &str)]) -> Form {
    let mut f = Form::new().text("model", model.to_string()).part(
        "file",
        Part::bytes(file)
            .file_name("meeting.wav")
            .mime_str("audio/wav")
            .unwrap(),
    );
    for (k, v) in extra {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}

async fn transcribe(app: &TestApp, key: &str, form: Form) -> reqwest::Response {
    app.client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcriptions_are_relayed_and_billed_by_the_second() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;

    // whisper-1 reports the duration: 2.5 s at $0.0001/s.
    let key = app.key_with(json!({"models": ["whisper"]})).await;
    let r = transcribe(
        &app,
        &key,
        form("whisper", wav(2500), &[("language", "en")]),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-litellm-response-cost"], "0.00025");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["text"], "Hello from whisper.");
    let sent = m.last_body();
    assert_eq!(
        sent["model"], "whisper-1",
        "the deployment's model goes upstream"
    );
    assert_eq!(sent["language"], "en");
    assert_eq!(sent["filename"], "meeting.wav");
    assert_eq!(sent["file_len"], wav(2500).len());
    app.expect_key_spend(&key, 2.5e-4).await;

    // Plain text answers carry no usage: the WAV header says 1 s.
    let key = app.key_with(json!({})).await;
    let r = transcribe(
        &app,
        &key,
        form("whisper", wav(1000), &[("response_format", "text")]),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), "Hello from whisper.\n");
    app.expect_key_spend(&key, 1e-4).await;

    // verbose_json reports `duration`.
    let key = app.key_with(json!({})).await;
    let r = transcribe(
        &app,
        &key,
        form("whisper", wav(1500), &[("response_format", "verbose_json")]),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["segments"][0]["text"], "Hello from whisper.");
    app.expect_key_spend(&key, 1.5e-4).await;

    // A server that reports nothing, and a file that is not WAV: estimated at 128 kbit/s
    // (32,000 bytes → 2 s).
    let key = app.key_with(json!({})).await;
    let mp3 = Form::new()
        .text("model", "whisper-quiet")
        .part("file", Part::bytes(vec![0xffu8; 32_000]).file_name("a.mp3"));
    let r = transcribe(&app, &key, mp3).await;
    assert_eq!(r.status(), 200);
    app.expect_key_spend(&key, 2e-4).await;

    // gpt-4o-transcribe reports tokens: priced by the cost map ($2.5/M in, $10/M out).
    let key = app.key_with(json!({})).await;
    let r = transcribe(&app, &key, form("transcribe", wav(3000), &[])).await;
    assert_eq!(r.status(), 200);
    app.expect_key_spend(&key, 20.0 * 2.5e-6 + 6.0 * 1e-5).await;

    // Azure: below the deployment, with api-version.
    let key = app.key_with(json!({})).await;
    let r = transcribe(&app, &key, form("azure-whisper", wav(1000), &[])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.seen.azure_paths.lock().unwrap().last().unwrap(),
        "/ok/openai/deployments/whisper-prod/audio/transcriptions?api-version=2024-10-21"
    );
    app.expect_key_spend(&key, 2e-4).await;

    // A mock model answers offline, billed by the WAV's length.
    let key = app.key_with(json!({})).await;
    let r = app
        .client
        .post(app.url("/audio/transcriptions"))
        .bearer_auth(&key)
        .multipart(form("local", wav(2000), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["text"], "offline transcript");
    app.expect_key_spend(&key, 2e-3).await;

    // The spend log names the call type.
    let logs = app.spend_logs_at_least(7).await;
    assert!(
        logs.iter().all(|l| l["call_type"] == "atranscription"),
        "{logs:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_ungoverned_uploads_never_reach_the_upstream() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m)).await;
    let key = app.key_with(json!({"models": ["whisper", "claude"]})).await;
    let hits = m.hits();

    // Not multipart.
    let (s, b) = app
        .post(
            "/v1/audio/transcriptions",
            &key,
            json!({"model": "whisper"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["param"], "file");
    // No file, no model, an empty file, two files, streaming, an unknown format.
    let cases: Vec<(Form, &str)> = vec![
        (Form::new().text("model", "whisper"), "file"),
        (
            Form::new().part("file", Part::bytes(wav(100)).file_name("a.wav")),
            "model",
        ),
        (
            Form::new()
                .text("model", "whisper")
                .part("file", Part::bytes(Vec::new()).file_name("a.wav")),
            "file",
        ),
        (
            form("whisper", wav(100), &[]).part("file", Part::bytes(wav(100)).file_name("b.wav")),
            "file",
        ),
        (form("whisper", wav(100), &[("stream", "true")]), "stream"),
        (
            form("whisper", wav(100), &[("response_format", "mp4")]),
            "response_format",
        ),
    ];
    for (f, param) in cases {
        let r = transcribe(&app, &key, f).await;
        assert_eq!(r.status(), 400, "{param}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    // A truncated multipart body.
    let r = app
        .client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A model the key may not call; a provider that cannot transcribe; no key at all.
    let r = transcribe(&app, &key, form("azure-whisper", wav(100), &[])).await;
    assert_eq!(r.status(), 403);
    let r = transcribe(&app, &key, form("claude", wav(100), &[])).await;
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/v1/audio/transcriptions"))
        .multipart(form("whisper", wav(100), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(m.hits(), hits, "nothing reached the upstream");

    // A key whose budget cannot hold the audio's length is refused before the upstream.
    let poor = app.key_with(json!({"max_budget": 0.00001})).await;
    let r = transcribe(&app, &poor, form("whisper", wav(1000), &[])).await;
    assert_eq!(
        r.status(),
        200,
        "the first call fits nothing yet is admitted: spend 0 < budget"
    );
    app.expect_key_spend(&poor, 1e-4).await;
    let r = transcribe(&app, &poor, form("whisper", wav(1000), &[])).await;
    assert_eq!(r.status(), 422, "over budget now");
    app.shutdown().await;
}
