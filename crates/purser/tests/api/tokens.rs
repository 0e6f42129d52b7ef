//! Prompt counting on the request path: a concurrent burst of large requests (big `tools`,
//! tool calls and results, `response_format`) against a key budget overshoots it by no more than
//! what the estimates miss, against an upstream that bills the whole request body; deployments
//! count with their model's tokenizer (`base_model` for Azure-style names) and unknown models
//! with the heuristic; hostile bodies get a 4xx or are counted, never a panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use purser::upstream::tokens::TokenCounter;
use purser_core::money::cost_of;
use serde_json::{Map, Value, json};

use crate::both_backends;
use crate::helpers::*;
use crate::mock_upstream::MockUpstream;

/// 1e-6 and 2e-6 USD per token in pico-USD.
const IN: i64 = 1_000_000;
const OUT: i64 = 2_000_000;
const BURST: usize = 8;
/// The `counted` mock bills the whole `max_tokens`, so only the prompt estimate can miss.
const MAX_TOKENS: u64 = 50;

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: big
    litellm_params:
      model: openai/gpt-4o
      api_base: {counted}
      api_key: sk-upstream
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: local-4o
    litellm_params:
      model: openai/gpt-4o
      mock_response: "hi there"
  - model_name: azure-chat
    litellm_params:
      model: openai/prod-chat-deployment
      mock_response: "hi there"
    model_info:
      base_model: azure/gpt-4o
  - model_name: local-unknown
    litellm_params:
      model: openai/house-llm
      mock_response: "hi there"
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        counted = m.base("counted")
    )
}

/// Deterministic prose of `n` words (a small LCG over a business vocabulary).
fn prose(seed: u64, n: usize) -> String {
    const WORDS: &[&str] = &[
        "invoice",
        "customer",
        "ledger",
        "shipment",
        "region",
        "quarter",
        "balance",
        "account",
        "refund",
        "warehouse",
        "supplier",
        "forecast",
        "overdue",
        "currency",
        "discount",
        "contract",
        "renewal",
        "audit",
        "margin",
        "pallet",
        "tariff",
        "route",
        "carrier",
        "SKU",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(x >> 33) as usize % WORDS.len()];
        out.push(if i % 11 == 10 {
            format!("{w} {}.", (x >> 20) % 9973)
        } else {
            w.to_string()
        });
    }
    out.join(" ")
}

/// A large agent turn: 24 tool definitions, three tool calls with their results, and a
/// json_schema response format; well above the blocking-pool threshold (64 KiB).
fn large_request() -> Value {
    let tools: Vec<Value> = (0..24)
        .map(|i| {
            let props: Map<String, Value> = (0..6)
                .map(|p| {
                    (
                        format!("field_{p}"),
                        json!({"type": "string", "description": prose(i * 10 + p, 18)}),
                    )
                })
                .collect();
            json!({"type": "function", "function": {
                "name": format!("tool_{i}"),
                "description": prose(1000 + i, 60),
                "parameters": {"type": "object", "properties": props, "required": ["field_0"]}}})
        })
        .collect();
    let calls: Vec<Value> = (0..3)
        .map(|i| {
            let args = json!({"query": prose(2000 + i, 80), "limit": 50, "region": "EU"});
            json!({"id": format!("call_{i}"), "type": "function",
                "function": {"name": format!("tool_{i}"), "arguments": args.to_string()}})
        })
        .collect();
    let mut messages = vec![
        json!({"role": "system", "content": "You reconcile ledgers. Answer in the given schema."}),
        json!({"role": "user", "content": prose(3000, 40)}),
        json!({"role": "assistant", "content": null, "tool_calls": calls}),
    ];
    for i in 0..3 {
        let rows: Vec<Value> = (0..40)
            .map(|r| json!({"row": r, "note": prose(4000 + i * 100 + r, 30), "amount": r * 17}))
            .collect();
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"),
            "content": Value::Array(rows).to_string()}));
    }
    messages.push(json!({"role": "user", "content": [
        {"type": "text", "text": "Summarise the discrepancies."},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/chart.png", "detail": "low"}},
    ]}));
    let schema_props: Map<String, Value> = (0..20)
        .map(|p| {
            (
                format!("finding_{p}"),
                json!({"type": "string", "description": prose(5000 + p, 15)}),
            )
        })
        .collect();
    json!({
        "model": "big",
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "reconciliation",
            "strict": true, "schema": {"type": "object", "properties": schema_props}}},
        "max_tokens": MAX_TOKENS,
    })
}

async fn key_with_budget(app: &TestApp, usd: f64) -> String {
    let (s, k) = app
        .post("/key/generate", MASTER, json!({"max_budget": usd}))
        .await;
    assert_eq!(s, 200, "{k}");
    k["key"].as_str().unwrap().to_string()
}

async fn db_key_spend(app: &TestApp, raw: &str) -> (i64, i64, i64) {
    app.state.ledger.flush(&app.state.db).await.unwrap();
    let mut h = app.state.db.conn().await.unwrap();
    let key = purser::store::keys::get(&mut h, &purser_core::keys::hash_key(raw))
        .await
        .unwrap()
        .unwrap()
        .spend;
    let (logs, rows): (i64, i64) = purser::on_conn!(h, c => sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(spend), 0) AS BIGINT), COUNT(*) FROM spend_logs")
        .fetch_one(c).await.unwrap());
    (key, logs, rows)
}

/// Eight identical large requests at once against a budget that fits the reservations of
/// exactly three. The upstream holds every admitted call until all eight were either admitted
/// or refused, so all reservations are concurrent: exactly three pass, and the key's final spend
/// exceeds its budget by no more than what the three estimates missed of the billed usage
/// (here exactly that: the completions use their whole `max_tokens`, so the overshoot is the
/// prompt tokens the estimate missed).
async fn burst_of_large_requests_stays_within_what_estimates_miss(b: Backend) {
    let m = MockUpstream::start().await;
    let app = Arc::new(TestApp::spawn_with(b, &config(&m)).await);
    assert_eq!(app.state.models.encodings(), vec!["o200k_base"]);
    let body = large_request();
    let body_bytes = body.to_string().len();
    assert!(body_bytes > 64 * 1024, "{body_bytes} bytes");
    let estimate = TokenCounter::O200k.chat_prompt(body.as_object().unwrap());
    let reserved = cost_of(estimate, MAX_TOKENS, IN, OUT).0;
    // One micro-dollar of slack keeps the float round trip of `max_budget` off the boundary.
    let budget_nanos = 3 * reserved + 1_000;
    let key = key_with_budget(&app, budget_nanos as f64 / 1e9).await;

    m.hold();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..BURST {
        let (app, key, body, refused) = (app.clone(), key.clone(), body.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let (s, v) = app.post("/v1/chat/completions", &key, body).await;
            if s != 200 {
                assert_proxy_error(&v, 422, "budget_exceeded");
                refused.fetch_add(1, Ordering::SeqCst);
            }
            (s == 200).then_some(v)
        }));
    }
    // Every call is either waiting at the upstream or refused before anything settles.
    let settled = async {
        while m.hits() + refused.load(Ordering::SeqCst) < BURST {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("the burst reached the upstream or was refused");
    m.release();
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    assert_eq!(answers.len(), 3, "the reservations of three fit the budget");
    assert_eq!(m.hits(), 3);
    assert_eq!(refused.load(Ordering::SeqCst), BURST - 3);

    let billed_prompt = answers[0]["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        answers
            .iter()
            .all(|a| a["usage"]["prompt_tokens"] == billed_prompt)
    );
    assert!(
        answers
            .iter()
            .all(|a| a["usage"]["completion_tokens"] == MAX_TOKENS)
    );
    let billed = cost_of(billed_prompt, MAX_TOKENS, IN, OUT).0;
    let (key_spend, log_spend, rows) = db_key_spend(&app, &key).await;
    assert_eq!((key_spend, log_spend, rows), (3 * billed, 3 * billed, 3));
    // The bound: overshoot ≤ Σ over admitted calls of (billed − reserved)⁺.
    let missed_per_call = (billed - reserved).max(0);
    let overshoot = (key_spend - budget_nanos).max(0);
    assert!(
        overshoot <= 3 * missed_per_call,
        "overshoot {overshoot} > 3 × {missed_per_call}"
    );
    // The estimate covers the tools, tool results and schema: within 10 % of an upstream that
    // bills every byte of the JSON body (the figures are in docs/reliability.md).
    eprintln!(
        "burst figures: body {body_bytes} B, estimate {estimate} tokens, whole body {billed_prompt} \
         tokens, reserved {reserved} n$, billed {billed} n$, budget {budget_nanos} n$, spend {key_spend} n$"
    );
    assert!(
        estimate * 10 >= billed_prompt * 9,
        "estimate {estimate} vs billed {billed_prompt}"
    );
    assert!(
        overshoot > 0 && overshoot * 10 <= budget_nanos,
        "overshoot {overshoot}"
    );
    Arc::into_inner(app).unwrap().shutdown().await;
}

/// A deployment counts with its model's tokenizer, an Azure-style name with its `base_model`'s,
/// an unknown model with the heuristic ("hello world": 2 BPE tokens, 4 by the heuristic).
async fn tokenizer_per_deployment_unknown_uses_heuristic(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let prompt = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hello world"}]});
    for (model, tokens) in [("local-4o", 9), ("azure-chat", 9), ("local-unknown", 11)] {
        let (s, v) = app
            .post("/v1/chat/completions", MASTER, prompt(model))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], json!(tokens), "{model}");
    }
    // Tools count for the heuristic too.
    let mut with_tools = prompt("local-unknown");
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "lookup",
        "description": "Look a customer up by id"}}]);
    let (_, v) = app
        .post("/v1/chat/completions", MASTER, with_tools.clone())
        .await;
    let expected = TokenCounter::Heuristic.chat_prompt(with_tools.as_object().unwrap());
    assert_eq!(v["usage"]["prompt_tokens"], json!(expected));
    assert!(expected > 11 + 10);
    app.shutdown().await;
}

/// Hostile bodies: nesting past the JSON parser's limit is a 400; non-string content, odd
/// shapes, huge part arrays and megabyte runs the BPE regex cannot take whole are counted.
async fn hostile_bodies_are_refused_or_counted(b: Backend) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    let deep = format!(
        r#"{{"model": "local-4o", "messages": [{{"role": "user", "content": {}"x"{}}}]}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        assert_proxy_error(&v, 400, "bad_request_error").contains("Invalid JSON"),
        "{v}"
    );
    let many: Vec<Value> = (0..50_000)
        .map(|_| json!({"type": "text", "text": "hi"}))
        .collect();
    let cases = [
        json!([{"role": "user", "content": 42}]),
        json!([{"role": "user", "content": {"nested": [1, true, null, "x"]}}]),
        json!([{"role": "user", "content": "hi"}, "not a message", 7, null]),
        json!([{"role": "user", "content": many}]),
        json!([{"role": "user", "content": "^".repeat(1 << 20)}]),
        json!([{"role": "user", "content": " ".repeat(1 << 20)}]),
        json!([{"role": "assistant", "tool_calls": "nope", "content": [1, 2]}]),
    ];
    for (i, messages) in cases.into_iter().enumerate() {
        for model in ["local-4o", "local-unknown"] {
            let body = json!({"model": model, "messages": messages, "tools": "weird",
                "response_format": 3});
            let (s, v) = app.post("/v1/chat/completions", MASTER, body).await;
            assert_eq!(s, 200, "case {i} on {model}: {v}");
            assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        }
    }
    // Embeddings: token arrays count one token per id.
    let (s, v) = app
        .post(
            "/v1/embeddings",
            MASTER,
            json!({"model": "local-unknown", "input": [[1, 2, 3], [4, 5]]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], json!(5));
    app.shutdown().await;
}

#[test]
fn mock_configs_load_no_encoding() {
    let quickstart = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.yaml"),
    )
    .unwrap();
    for yaml in [quickstart.as_str(), DEFAULT_CONFIG] {
        let config = purser::config::Config::parse(yaml, "test.yaml").unwrap();
        let registry = purser::upstream::Registry::from_config(&config).unwrap();
        assert!(registry.encodings().is_empty());
    }
}

both_backends!(
    burst_of_large_requests_stays_within_what_estimates_miss,
    tokenizer_per_deployment_unknown_uses_heuristic,
    hostile_bodies_are_refused_or_counted,
);
