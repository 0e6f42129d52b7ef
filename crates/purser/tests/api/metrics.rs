//! `/metrics` read with a real Prometheus text parser after known calls: spend per team and key
//! equals the spend logs, tokens, request and failure counts by status, latency histograms
//! (time to first token for streams), budget gauges, deployment state, governance rejections by
//! reason and scope, Purser's writer, cache and counter-backend gauges; `include_labels`
//! narrowing; `require_auth_for_metrics_endpoint`; refusals of configs that name metrics,
//! labels or callbacks that do not exist.

use prometheus_parse::{Sample, Scrape, Value as PValue};
use serde_json::json;

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_upstream::MockUpstream;

fn config(m: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {ok}
      api_key: k
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: other
    litellm_params:
      model: openai/other
      mock_response: hi
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
litellm_settings:
{extra}
"#,
        ok = m.base("ok"),
    )
}

async fn scrape(app: &TestApp, key: Option<&str>) -> (u16, Option<Scrape>, String) {
    let mut req = app.client.get(app.url("/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    if status != 200 {
        return (status, None, text);
    }
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    (status, Some(parsed), text)
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
        PValue::Histogram(h) => h
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map_or(0.0, |b| b.count),
        PValue::Summary(_) => 0.0,
    }
}

/// The sum of `metric` over samples whose labels include every `want` pair.
fn sum(s: &Scrape, metric: &str, want: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_spend_tokens_requests_and_budgets() {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &config(&m, "  enable_end_user_cost_tracking_prometheus_only: true"),
    )
    .await;
    let (s, _) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "metrics-team", "team_alias": "Metrics Team", "max_budget": 10.0}),
        )
        .await;
    assert_eq!(s, 200);
    let key = app
        .key_with(json!({"team_id": "metrics-team", "key_alias": "metrics-key", "max_budget": 5.0, "models": ["gpt"]}))
        .await;
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    let chat = |stream: bool| json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "user": "customer-7"});
    for stream in [false, false, true] {
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // A model the key may not call: counted as a failed request with its status.
    let (s, _) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(s, 403);
    // A key over its budget: a budget rejection by scope.
    let broke = app.key_with(json!({"max_budget": 0.0})).await;
    let (s, refusal) = app.post("/v1/chat/completions", &broke, chat(false)).await;
    assert_eq!(s, 422, "{refusal}");

    // The spend logs are the truth the metrics must agree with.
    let logs = app.spend_logs_at_least(3).await;
    let logged_spend: f64 = logs.iter().map(|l| l["spend"].as_f64().unwrap()).sum();
    let logged_tokens: f64 = logs
        .iter()
        .map(|l| l["total_tokens"].as_f64().unwrap())
        .sum();
    assert!(logged_spend > 0.0);

    let (status, parsed, text) = scrape(&app, None).await;
    assert_eq!(status, 200, "public by default");
    let p = parsed.unwrap();
    let team = [("team", "metrics-team")];
    assert!(
        (sum(&p, "litellm_spend_metric_total", &team) - logged_spend).abs() < 1e-9,
        "spend per team equals the spend logs: {text}"
    );
    assert!(
        (sum(
            &p,
            "litellm_spend_metric_total",
            &[("hashed_api_key", &hash)]
        ) - logged_spend)
            .abs()
            < 1e-9
    );
    assert_eq!(sum(&p, "litellm_total_tokens_total", &team), logged_tokens);
    assert_eq!(
        sum(&p, "litellm_input_tokens_total", &team)
            + sum(&p, "litellm_output_tokens_total", &team),
        logged_tokens
    );
    let labelled = p
        .samples
        .iter()
        .find(|x| x.metric == "litellm_spend_metric_total")
        .unwrap();
    assert_eq!(labelled.labels.get("team_alias"), Some("Metrics Team"));
    assert_eq!(labelled.labels.get("api_key_alias"), Some("metrics-key"));
    assert_eq!(labelled.labels.get("model"), Some("gpt-4o-mini"));
    assert_eq!(labelled.labels.get("end_user"), Some("customer-7"));

    let by_key = [("hashed_api_key", hash.as_str())];
    assert_eq!(
        sum(
            &p,
            "litellm_proxy_total_requests_metric_total",
            &[by_key[0], ("status_code", "200")]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &p,
            "litellm_proxy_total_requests_metric_total",
            &[by_key[0], ("status_code", "403")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &p,
            "litellm_proxy_failed_requests_metric_total",
            &[by_key[0], ("exception_status", "403")]
        ),
        1.0
    );
    assert_eq!(
        sum(&p, "litellm_request_total_latency_metric", &by_key),
        3.0
    );
    assert_eq!(sum(&p, "litellm_llm_api_latency_metric", &by_key), 3.0);
    assert_eq!(
        sum(&p, "litellm_llm_api_time_to_first_token_metric", &by_key),
        1.0
    );
    assert_eq!(
        sum(
            &p,
            "litellm_overhead_latency_metric",
            &[("model_group", "gpt")]
        ),
        3.0
    );
    assert!(
        (sum(&p, "litellm_remaining_team_budget_metric", &team) - (10.0 - logged_spend)).abs()
            < 1e-9,
        "{text}"
    );
    assert_eq!(sum(&p, "litellm_team_max_budget_metric", &team), 10.0);
    assert!(
        (sum(&p, "litellm_remaining_api_key_budget_metric", &by_key) - (5.0 - logged_spend)).abs()
            < 1e-9
    );
    assert_eq!(sum(&p, "litellm_api_key_max_budget_metric", &by_key), 5.0);
    assert_eq!(
        sum(
            &p,
            "litellm_deployment_success_responses_total",
            &[("litellm_model_name", "gpt-4o-mini")]
        ),
        3.0
    );
    assert_eq!(
        sum(&p, "litellm_deployment_state", &[("model_id", "gpt-0")]),
        0.0
    );
    assert!(
        p.samples
            .iter()
            .any(|x| x.metric == "litellm_deployment_state")
    );
    assert_eq!(
        sum(
            &p,
            "purser_governance_rejections_total",
            &[("reason", "budget"), ("scope", "key")]
        ),
        1.0
    );
    // The suite runs on both counter backends (`PURSER_TEST_REDIS_BACKEND=1`).
    let backend = if crate::helpers::redis_backend().is_some() {
        "redis"
    } else {
        "memory"
    };
    assert_eq!(
        sum(
            &p,
            "purser_counter_backend",
            &[("backend", backend), ("state", "up")]
        ),
        1.0,
        "{text}"
    );
    assert!(sum(&p, "purser_spend_rows_written", &[]) >= 3.0);
    assert!(sum(&p, "purser_cache_hits", &[]) > 0.0);
    assert!(!text.contains(&key), "the key itself is never a label");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_can_be_narrowed_and_the_endpoint_guarded() {
    let m = MockUpstream::start().await;
    let extra = r#"  require_auth_for_metrics_endpoint: true
  callbacks: ["prometheus"]
  prometheus_metrics_config:
    - group: spend
      metrics: [litellm_spend_metric, litellm_total_tokens]
      include_labels: [team, model]"#;
    let app = TestApp::spawn_with(Backend::Sqlite, &config(&m, extra)).await;
    let key = app.key_with(json!({})).await;
    let (s, _) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(s, 200);
    let (status, _, _) = scrape(&app, None).await;
    assert_eq!(status, 401, "no key");
    let (status, _, _) = scrape(&app, Some(&key)).await;
    assert_eq!(
        status, 401,
        "not a proxy admin (the reference answers 401 on admin routes)"
    );
    let (status, parsed, text) = scrape(&app, Some(MASTER)).await;
    assert_eq!(status, 200);
    let p = parsed.unwrap();
    let spend: Vec<&Sample> = p
        .samples
        .iter()
        .filter(|x| x.metric == "litellm_spend_metric_total")
        .collect();
    assert_eq!(spend.len(), 1, "{text}");
    let mut names: Vec<&String> = spend[0].labels.keys().collect();
    names.sort();
    assert_eq!(names, ["model", "team"], "only the included labels");
    // Metrics not narrowed keep every label.
    let req = p
        .samples
        .iter()
        .find(|x| x.metric == "litellm_proxy_total_requests_metric_total")
        .unwrap();
    assert!(req.labels.get("hashed_api_key").is_some());
    app.shutdown().await;
}

#[test]
fn configs_naming_unknown_metrics_labels_or_callbacks_refuse_to_start() {
    use purser::config::Config;
    for (settings, expected) in [
        (
            "  prometheus_metrics_config:\n    - metrics: [litellm_nonexistent]\n      include_labels: [team]",
            "prometheus_metrics_config[0].metrics[0]",
        ),
        (
            "  prometheus_metrics_config:\n    - metrics: [litellm_spend_metric]\n      include_labels: [status_code]",
            "prometheus_metrics_config[0].include_labels[0]",
        ),
        ("  callbacks: [\"langfuse\"]", "callbacks[0]"),
        (
            "  prometheus_key_label_limit: 0",
            "prometheus_key_label_limit",
        ),
    ] {
        let yaml = format!("model_list: []\nlitellm_settings:\n{settings}\n");
        let err = Config::parse(&yaml, "t.yaml")
            .expect_err(settings)
            .to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
}
