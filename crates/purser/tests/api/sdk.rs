//! The unmodified official SDKs as clients: the OpenAI Python SDK against translated (Anthropic,
//! Bedrock) deployments (chat), OpenAI ones (Responses API and text completions, streaming too;
//! an audio transcription upload), and the Anthropic Python SDK against translated (OpenAI,
//! Bedrock) and native (Anthropic)
//! deployments, streaming and not. The interpreter is `PURSER_TEST_PYTHON` (default `python3`);
//! `.ci/run` installs the pinned SDKs. Outside CI the test skips with a message when they are
//! missing; with `CI=true` it fails instead.

use serde_json::{Value, json};

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_upstream::MockUpstream;

fn python() -> String {
    std::env::var("PURSER_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn sdks_available() -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", "import openai, anthropic"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the openai / anthropic Python SDKs are not importable by {}",
            python()
        );
        eprintln!("skipping: the openai / anthropic Python SDKs are not installed");
    }
    ok
}

/// Runs `script` with `BASE` and `KEY` in its environment; returns the JSON it prints last.
async fn run(script: &str, base: &str, key: &str) -> Value {
    let out = tokio::process::Command::new(python())
        .args(["-c", script])
        .env("BASE", base)
        .env("KEY", key)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the script prints JSON")
}

const OPENAI_SDK: &str = r#"
import json, os, openai
c = openai.OpenAI(base_url=os.environ["BASE"] + "/v1", api_key=os.environ["KEY"], max_retries=0)
r = c.chat.completions.create(model="claude", messages=[{"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"}], max_tokens=32)
text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
    model="claude", stream=True, messages=[{"role": "user", "content": "hi"}]) if ch.choices)
try:
    c.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], presence_penalty=1)
    refused = None
except openai.BadRequestError as e:
    refused = e.status_code
resp = c.responses.create(model="gpt-real", input="hi", instructions="Be brief.")
with c.responses.stream(model="gpt-real", input="hi") as s:
    resp_stream = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    resp_final = s.get_final_response()
with c.responses.stream(model="local", input="hi") as s:
    local_stream = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    local_final = s.get_final_response().output_text
br = c.chat.completions.create(model="bedrock", messages=[{"role": "user", "content": "hi"}])
br_stream = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
    model="bedrock", stream=True, messages=[{"role": "user", "content": "hi"}]) if ch.choices)
import io, wave
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(b"\0\0" * 16000)
tr = c.audio.transcriptions.create(model="whisper", file=("hello.wav", buf.getvalue(), "audio/wav"))
comp = c.completions.create(model="gpt-real", prompt="Say hello", max_tokens=8)
comp_stream = "".join(ch.choices[0].text for ch in c.completions.create(
    model="gpt-real", prompt="Say hello", stream=True) if ch.choices)
print(json.dumps({"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
    "prompt_tokens": r.usage.prompt_tokens, "stream": text, "refused": refused,
    "responses": resp.output_text, "responses_input_tokens": resp.usage.input_tokens,
    "responses_stream": resp_stream, "responses_final_output_tokens": resp_final.usage.output_tokens,
    "completion": comp.choices[0].text, "completion_stream": comp_stream,
    "local_stream": local_stream, "local_final": local_final,
    "bedrock": br.choices[0].message.content, "bedrock_prompt_tokens": br.usage.prompt_tokens,
    "bedrock_stream": br_stream, "transcript": tr.text}))
"#;

const ANTHROPIC_SDK: &str = r#"
import json, os, anthropic
c = anthropic.Anthropic(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
out = {}
for model in ["gpt-real", "claude", "bedrock"]:
    m = c.messages.create(model=model, max_tokens=32, system="Be brief.",
        messages=[{"role": "user", "content": "hi"}])
    with c.messages.stream(model=model, max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    out[model] = {"text": m.content[0].text, "stop": m.stop_reason, "output_tokens": m.usage.output_tokens,
        "stream": streamed, "stream_output_tokens": final.usage.output_tokens}
try:
    anthropic.Anthropic(base_url=os.environ["BASE"], api_key="sk-wrong", max_retries=0).messages.create(
        model="gpt-real", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    out["unauthorized"] = None
except anthropic.AuthenticationError as e:
    out["unauthorized"] = e.status_code
print(json.dumps(out))
"#;

async fn official_sdks_work_unchanged(b: Backend) {
    if !sdks_available() {
        return;
    }
    let m = MockUpstream::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: http://{addr}/ok
      api_key: sk-ant-sdk-test
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
  - model_name: gpt-real
    litellm_params:
      model: openai/upstream-model
      api_base: {ok}
      api_key: openai-key
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: local
    litellm_params:
      model: openai/local
      mock_response: hi from the mock
  - model_name: whisper
    litellm_params:
      model: openai/whisper-1
      api_base: {ok}
      api_key: openai-key
      input_cost_per_second: 0.0001
  - model_name: bedrock
    litellm_params:
      model: bedrock/anthropic.claude-3-5-haiku-20241022-v1:0
      api_base: http://{addr}/ok
      aws_access_key_id: AKIDMOCK
      aws_secret_access_key: "{secret}"
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        addr = m.addr,
        ok = m.base("ok"),
        secret = crate::mock_bedrock::SECRET,
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    let (s, k) = app.post("/key/generate", MASTER, json!({})).await;
    assert_eq!(s, 200, "{k}");
    let key = k["key"].as_str().unwrap().to_string();

    let o = run(OPENAI_SDK, &app.base, &key).await;
    assert_eq!(o["content"], "Hello from Claude.", "{o}");
    assert_eq!(o["finish"], "stop");
    assert_eq!(o["prompt_tokens"], 8);
    assert_eq!(o["stream"], "Hello from Claude.");
    assert_eq!(o["refused"], 400);
    assert_eq!(o["responses"], "Hello from responses.", "{o}");
    assert_eq!(o["responses_input_tokens"], 11);
    assert_eq!(o["responses_stream"], "Hello from responses.");
    assert_eq!(o["responses_final_output_tokens"], 4);
    assert_eq!(o["completion"], "Hello from completions.");
    assert_eq!(o["completion_stream"], "Hello from completions.");
    assert_eq!(o["local_stream"], "hi from the mock");
    assert_eq!(o["local_final"], "hi from the mock");
    assert_eq!(o["bedrock"], "Hello from Bedrock.", "{o}");
    assert_eq!(o["bedrock_prompt_tokens"], 12);
    assert_eq!(o["bedrock_stream"], "Hello from Bedrock.");
    assert_eq!(o["transcript"], "Hello from whisper.");

    let a = run(ANTHROPIC_SDK, &app.base, &key).await;
    assert_eq!(
        a["gpt-real"]["text"], "Hello from the mock upstream.",
        "{a}"
    );
    assert_eq!(a["gpt-real"]["stop"], "end_turn");
    assert_eq!(a["gpt-real"]["output_tokens"], 6);
    assert_eq!(a["gpt-real"]["stream"], "Hello from the mock stream.");
    assert_eq!(a["gpt-real"]["stream_output_tokens"], 6);
    assert_eq!(a["claude"]["text"], "Hello from Claude.");
    assert_eq!(a["claude"]["stream"], "Hello from Claude.");
    assert_eq!(a["claude"]["stream_output_tokens"], 6);
    assert_eq!(a["bedrock"]["text"], "Hello from Bedrock.", "{a}");
    assert_eq!(a["bedrock"]["stop"], "end_turn");
    assert_eq!(a["bedrock"]["stream"], "Hello from Bedrock.");
    assert_eq!(a["bedrock"]["stream_output_tokens"], 5);
    assert_eq!(a["unauthorized"], 401);
    app.shutdown().await;
}

crate::both_backends!(official_sdks_work_unchanged);
