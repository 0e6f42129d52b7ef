//! Choosing a deployment within a group: `routing_strategy` (simple-shuffle by `weight` / `rpm`,
//! least-busy, usage-, latency- and cost-based), `order` tiers, per-deployment
//! `max_parallel_requests`, the router's timeouts, the reference's routing headers, and the
//! start-up refusals of routing settings Purser does not have. Routing does not touch the
//! database, so these run on SQLite only (the backends are covered by every other suite).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, MASTER, TestApp};
use crate::mock_upstream::MockUpstream;

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Which deployment (`model_info.id`) answered each of `n` sequential calls, and how often.
async fn answered_by(app: &TestApp, model: &str, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(MASTER)
            .json(&hi(model))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        let id = r.headers()["x-litellm-model-id"]
            .to_str()
            .unwrap()
            .to_string();
        *out.entry(id).or_default() += 1;
    }
    out
}

fn mock(id: &str, name: &str, extra: &str) -> String {
    format!(
        "  - model_name: {name}\n    litellm_params: {{model: openai/{id}, mock_response: hi{extra}}}\n    model_info: {{id: {id}}}\n"
    )
}

fn upstream(id: &str, name: &str, base: &str, extra: &str) -> String {
    format!(
        "  - model_name: {name}\n    litellm_params: {{model: openai/{id}, api_base: \"{base}\", api_key: k{extra}}}\n    model_info: {{id: {id}}}\n"
    )
}

fn config(models: &[String], router: &str) -> String {
    format!(
        "model_list:\n{}router_settings:\n{router}general_settings:\n  master_key: sk-1234\n  proxy_batch_write_at: 0.2\n",
        models.concat()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_shuffle_is_the_default_and_follows_weights_then_rpm() {
    let yaml = config(
        &[
            mock("w-heavy", "weighted", ", weight: 9"),
            mock("w-light", "weighted", ", weight: 1"),
            mock("w-none", "weighted", ", weight: 0"),
            mock("r-big", "by-rpm", ", rpm: 900"),
            mock("r-small", "by-rpm", ", rpm: 100"),
            mock("even-a", "even", ""),
            mock("even-b", "even", ""),
        ],
        "  num_retries: 0\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let w = answered_by(&app, "weighted", 200).await;
    let heavy = w.get("w-heavy").copied().unwrap_or(0);
    // Binomial(200, 0.9): mean 180, sd 4.2; these bounds fail about once in 10^9 runs.
    assert!((150..=199).contains(&heavy), "{w:?}");
    assert!(w.get("w-light").copied().unwrap_or(0) >= 1, "{w:?}");
    assert_eq!(w.get("w-none"), None, "weight 0 takes no calls: {w:?}");
    let r = answered_by(&app, "by-rpm", 200).await;
    assert!(
        (150..=199).contains(&r.get("r-big").copied().unwrap_or(0)),
        "rpm is the weight when no deployment sets one: {r:?}"
    );
    let e = answered_by(&app, "even", 200).await;
    for id in ["even-a", "even-b"] {
        assert!(
            (60..=140).contains(&e.get(id).copied().unwrap_or(0)),
            "unweighted deployments share evenly: {e:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_tiers_take_calls_first_and_overflow_to_the_next() {
    let m = MockUpstream::start().await;
    let yaml = config(
        &[
            // Tier 1 has room for two calls a minute; tier 2 takes the rest; the unordered
            // deployment is the last resort.
            mock("first", "tiered", ", order: 1, rpm: 2"),
            mock("second", "tiered", ", order: 2"),
            mock("last", "tiered", ""),
            // A failing tier 1 cools down and tier 2 answers, also on the first call (retry).
            upstream("broken", "failover", &m.base("fail"), ", order: 1"),
            upstream("healthy", "failover", &m.base("ok"), ", order: 2"),
        ],
        "  num_retries: 1\n  allowed_fails: 0\n  cooldown_time: 60\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let t = answered_by(&app, "tiered", 6).await;
    assert_eq!(t.get("first"), Some(&2), "{t:?}");
    assert_eq!(t.get("second"), Some(&4), "{t:?}");
    assert_eq!(t.get("last"), None, "{t:?}");
    let f = answered_by(&app, "failover", 4).await;
    assert_eq!(f.get("healthy"), Some(&4), "{f:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_requests_of_a_deployment_sends_others_elsewhere() {
    let m = MockUpstream::start().await;
    let yaml = config(
        &[
            upstream(
                "narrow",
                "parallel",
                &m.base("counted"),
                ", order: 1, max_parallel_requests: 1",
            ),
            mock("wide", "parallel", ", order: 2"),
        ],
        "  num_retries: 0\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    m.hold();
    let held = {
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(MASTER)
                .json(&hi("parallel"))
                .send()
                .await
                .unwrap();
            r.headers()["x-litellm-model-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
    };
    for _ in 0..100 {
        if m.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        m.hits(),
        1,
        "the first call is waiting at the narrow deployment"
    );
    // Its one slot is taken: the next calls go to tier 2 instead of queueing behind it.
    let busy = answered_by(&app, "parallel", 3).await;
    assert_eq!(busy.get("wide"), Some(&3), "{busy:?}");
    m.release();
    assert_eq!(held.await.unwrap(), "narrow");
    // The slot is free again.
    let free = answered_by(&app, "parallel", 2).await;
    assert_eq!(free.get("narrow"), Some(&2), "{free:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_strategies_rank_as_the_reference_does() {
    let m = MockUpstream::start().await;
    let cheap = ", input_cost_per_token: 0.000001, output_cost_per_token: 0.000002";
    let dear = ", input_cost_per_token: 0.00001, output_cost_per_token: 0.00002";
    for (strategy, models, check) in [
        (
            "cost-based-routing",
            vec![
                mock("dear", "g", dear),
                mock("cheap", "g", cheap),
                mock("unpriced", "g", ""),
            ],
            "cheap",
        ),
        (
            // The in-process answer is far faster per token than an HTTP round trip: once both
            // are measured (unmeasured deployments are tried first), it takes every call.
            "latency-based-routing",
            vec![
                upstream("remote", "g", &m.base("ok"), ""),
                mock("local", "g", ""),
            ],
            "local",
        ),
        (
            "least-busy",
            vec![mock("a", "g", ""), mock("b", "g", "")],
            "even",
        ),
        (
            "usage-based-routing-v2",
            vec![mock("a", "g", ""), mock("b", "g", "")],
            "even",
        ),
    ] {
        let yaml = config(
            &models,
            &format!("  num_retries: 0\n  routing_strategy: {strategy}\n"),
        );
        let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
        let got = answered_by(&app, "g", 20).await;
        if check == "even" {
            // Sequential calls: nobody is busy (least-busy rotates among ties) / usage evens
            // out minute tokens call by call.
            assert_eq!(got.get("a"), Some(&10), "{strategy}: {got:?}");
            assert_eq!(got.get("b"), Some(&10), "{strategy}: {got:?}");
        } else {
            assert!(
                got.get(check).copied().unwrap_or(0) >= 18,
                "{strategy}: {got:?}"
            );
        }
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_timeouts_apply_to_deployments_that_set_none() {
    let m = MockUpstream::start().await;
    let yaml = config(
        &[
            upstream("slow-dep", "slow", &m.base("slow"), ""),
            upstream("own-timeout", "patient", &m.base("slow"), ", timeout: 10"),
        ],
        "  num_retries: 0\n  timeout: 5\nlitellm_settings:\n  request_timeout: 0.3\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let t0 = Instant::now();
    let (s, body) = app.post("/v1/chat/completions", MASTER, hi("slow")).await;
    assert_eq!(s, 504, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 0.3s"),
        "request_timeout caps the router's timeout: {body}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The deployment's own timeout wins over both.
    let (s, body) = app
        .post("/v1/chat/completions", MASTER, hi("patient"))
        .await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_reference_routing_headers() {
    let m = MockUpstream::start().await;
    let base = format!("http://user:secret-pass@{}/ok/v1/", m.addr);
    let yaml = config(
        &[
            upstream("real", "real", &base, ""),
            mock("local", "local", ""),
        ],
        "  num_retries: 3\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    for stream in [false, true] {
        let mut req = hi("real");
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
        let h = r.headers().clone();
        let text = r.text().await.unwrap();
        assert_eq!(
            h["x-litellm-model-api-base"],
            format!("http://{}/ok/v1", m.addr),
            "no user or password, no trailing slash"
        );
        assert!(!text.contains("secret"));
        assert_eq!(h["x-litellm-max-retries"], "3");
        assert_eq!(h["x-litellm-attempted-retries"], "0");
        let num = |name: &str| -> f64 { h[name].to_str().unwrap().parse().unwrap() };
        let (total, overhead) = (
            num("x-litellm-response-duration-ms"),
            num("x-litellm-overhead-duration-ms"),
        );
        assert!(total > 0.0 && overhead >= 0.0 && overhead <= total, "{h:?}");
    }
    // An in-process answer has no api_base; its whole time is the gateway's.
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER)
        .json(&hi("local"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-litellm-model-api-base").is_none());
    assert_eq!(
        r.headers()["x-litellm-overhead-duration-ms"],
        r.headers()["x-litellm-response-duration-ms"]
    );
    app.shutdown().await;
}

#[test]
fn routing_settings_purser_does_not_have_are_refused() {
    let models =
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, mock_response: x}\n";
    for (yaml, key) in [
        (
            "router_settings:\n  routing_strategy: random-magic\n",
            "router_settings.routing_strategy",
        ),
        (
            "router_settings:\n  enable_pre_call_checks: false\n",
            "router_settings.enable_pre_call_checks",
        ),
        (
            "litellm_settings:\n  request_timeout: 0\n",
            "litellm_settings.request_timeout",
        ),
        (
            "router_settings:\n  timeout: -1\n",
            "router_settings.timeout",
        ),
    ] {
        let err = purser::config::Config::parse(&format!("{models}{yaml}"), "c.yaml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
    for (params, key) in [
        ("weight: -1", "model_list[0].litellm_params.weight"),
        (
            "max_parallel_requests: 0",
            "model_list[0].litellm_params.max_parallel_requests",
        ),
    ] {
        let yaml = format!(
            "model_list:\n  - model_name: a\n    litellm_params: {{model: openai/a, mock_response: x, {params}}}\n"
        );
        let err = purser::config::Config::parse(&yaml, "c.yaml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
    // Every routing setting is read, none reported as ignored.
    let c = purser::config::Config::parse(
        &format!(
            "{models}router_settings:\n  routing_strategy: least-busy\n  timeout: 30\n  stream_timeout: 5\n  enable_pre_call_checks: true\nlitellm_settings:\n  request_timeout: 600\n"
        ),
        "c.yaml",
    )
    .unwrap();
    assert!(c.ignored_keys().is_empty(), "{:?}", c.ignored_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_sets_retries_per_error_class_and_group() {
    let m = MockUpstream::start().await;
    let yaml = config(
        &[
            upstream("busy-a", "busy-a", &m.base("busy"), ""),
            upstream("busy-b", "busy-b", &m.base("busy"), ""),
            upstream("broken", "broken", &m.base("fail"), ""),
        ],
        "  num_retries: 0\n  allowed_fails: 100\n  retry_policy: {RateLimitErrorRetries: 2, InternalServerErrorRetries: 1}\n  model_group_retry_policy: {busy-b: {DefaultRetries: 0}}\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    for (model, status, attempts) in [("busy-a", 429, 3), ("busy-b", 429, 1), ("broken", 502, 2)] {
        let before = m.hits();
        let (s, body) = app.post("/v1/chat/completions", MASTER, hi(model)).await;
        assert_eq!(s, status, "{model}: {body}");
        assert_eq!(m.hits() - before, attempts, "{model}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_fails_policy_sets_the_cooldown_threshold_per_class() {
    let m = MockUpstream::start().await;
    let yaml = config(
        &[
            // A 429 in a group of two would cool its deployment at once; the policy allows 100.
            upstream("busy", "pair", &m.base("busy"), ", order: 1"),
            mock("spare", "pair", ", order: 2"),
            // A 500 would be allowed 3 a minute; the policy allows none.
            upstream("broken", "single", &m.base("fail"), ""),
        ],
        "  num_retries: 1\n  allowed_fails_policy: {RateLimitErrorAllowedFails: 100, InternalServerErrorAllowedFails: 0}\n  cooldown_time: 60\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let before = m.hits();
    let got = answered_by(&app, "pair", 4).await;
    assert_eq!(got.get("spare"), Some(&4), "{got:?}");
    assert_eq!(m.hits() - before, 4, "the busy deployment never cooled");
    let before = m.hits();
    let (s, _) = app.post("/v1/chat/completions", MASTER, hi("single")).await;
    assert_eq!(s, 502);
    assert_eq!(
        m.hits() - before,
        1,
        "cooled after its first 500: the retry found nothing"
    );
    let (s, body) = app.post("/v1/chat/completions", MASTER, hi("single")).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(m.hits() - before, 1);
    app.shutdown().await;
}

#[test]
fn error_class_policies_name_known_classes() {
    let models =
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, mock_response: x}\n";
    for (yaml, key) in [
        (
            "router_settings:\n  retry_policy: {WeirdErrorRetries: 1}\n",
            "router_settings.retry_policy.WeirdErrorRetries",
        ),
        (
            "router_settings:\n  allowed_fails_policy: {RateLimitErrorRetries: 1}\n",
            "router_settings.allowed_fails_policy.RateLimitErrorRetries",
        ),
        (
            "router_settings:\n  model_group_retry_policy: {zzz: {DefaultRetries: 1}}\n",
            "router_settings.model_group_retry_policy",
        ),
    ] {
        let err = purser::config::Config::parse(&format!("{models}{yaml}"), "c.yaml").unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_their_own_timeout_retries_and_fallbacks() {
    let m = MockUpstream::start().await;
    let yaml = config(
        &[
            upstream("slow", "slow", &m.base("slow"), ""),
            upstream("busy", "busy", &m.base("busy"), ""),
            upstream("primary", "primary", &m.base("fail"), ""),
            upstream("backup", "backup", &m.base("ok"), ""),
            upstream("other", "other", &m.base("ok"), ""),
        ],
        "  num_retries: 0\n  allowed_fails: 100\n  timeout: 30\n  fallbacks: [{primary: [backup]}]\n",
    );
    let app = TestApp::spawn_with(Backend::Sqlite, &yaml).await;
    let send = |body: Value, headers: Vec<(&'static str, &'static str)>| {
        let mut r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(MASTER)
            .json(&body);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };

    // timeout: the body's, and the header over it.
    let mut body = hi("slow");
    body["timeout"] = json!(0.3);
    let t0 = Instant::now();
    let r = send(body.clone(), vec![]).await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.text().await.unwrap().contains("timed out after 0.3s"));
    let r = send(body, vec![("x-litellm-timeout", "0.2")])
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("timed out after 0.2s"));
    assert!(t0.elapsed() < Duration::from_secs(3));

    // num_retries: the body's, and the header over it; never sent upstream.
    let mut body = hi("busy");
    body["num_retries"] = json!(2);
    let before = m.hits();
    let r = send(body.clone(), vec![]).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(m.hits() - before, 3);
    assert!(m.last_body().get("num_retries").is_none());
    let before = m.hits();
    send(body, vec![("x-litellm-num-retries", "0")])
        .await
        .unwrap();
    assert_eq!(m.hits() - before, 1);

    // fallbacks: the request's list replaces the configured one; disable_fallbacks turns both off.
    let mut body = hi("primary");
    body["fallbacks"] = json!(["other"]);
    let r = send(body, vec![]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-litellm-model-id"], "other");
    assert_eq!(r.headers()["x-litellm-attempted-fallbacks"], "1");
    // What failed on the way, scrubbed: the mock echoes the Authorization header it got.
    let errors: Value =
        serde_json::from_str(r.headers()["x-litellm-fallback-errors"].to_str().unwrap()).unwrap();
    assert_eq!(errors[0]["model_group"], "primary", "{errors}");
    assert_eq!(errors[0]["exception_type"], "InternalServerError");
    assert!(
        errors[0]["exception_string"]
            .as_str()
            .unwrap()
            .contains("HTTP 500")
    );
    assert!(!errors.to_string().contains("Bearer k"), "{errors}");
    assert!(m.last_body().get("fallbacks").is_none());
    let mut body = hi("primary");
    body["disable_fallbacks"] = json!(true);
    let r = send(body, vec![]).await.unwrap();
    assert_eq!(r.status(), 502);

    // A fallback the key may not call, or that does not exist, is refused before anything is
    // sent; so are malformed values.
    let (_, k) = app
        .post("/key/generate", MASTER, json!({"models": ["primary"]}))
        .await;
    let key = k["key"].as_str().unwrap().to_string();
    let before = m.hits();
    for (extra, param) in [
        (json!({"fallbacks": ["other"]}), "fallbacks"),
        (json!({"fallbacks": ["no-such-model"]}), "fallbacks"),
        (json!({"fallbacks": [{"model": "other"}]}), "fallbacks"),
        (json!({"timeout": -1}), "timeout"),
        (json!({"num_retries": 99}), "num_retries"),
        (json!({"disable_fallbacks": "yes"}), "disable_fallbacks"),
    ] {
        let mut body = hi("primary");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, b) = app.post("/v1/chat/completions", &key, body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-litellm-timeout", "soon")
        .json(&hi("primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(m.hits(), before);
    app.shutdown().await;
}
