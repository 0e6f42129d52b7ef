//! `purser-bench proxy`: the gateway's added latency on the request path. A mock OpenAI upstream
//! and the gateway run in this process on 127.0.0.1; the same request mix is sent directly to
//! the upstream (baseline) and through the gateway with a team key (governance on: key, team and
//! member checks, model access, RPM/TPM counters, budget reservation, spend settlement). The
//! report compares percentiles of the two within one run, so machine noise affects both sides.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Json;
use axum::routing::post;
use purser::app::{Gateway, Settings};
use purser::cli::ServeArgs;
use purser::config::Config;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Timed requests per side (direct and through the gateway).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Report folder.
    #[arg(long, default_value = "bench/reports")]
    out: PathBuf,
}

const MASTER: &str = "sk-bench";

async fn mock_completion(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    }))
}

pub async fn run(a: ProxyArgs) -> anyhow::Result<()> {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let app = axum::Router::new().route("/v1/chat/completions", post(mock_completion));
    tokio::spawn(async move { axum::serve(upstream, app).await });

    let dir = tempfile::tempdir()?;
    let yaml = format!(
        "model_list:\n  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n      \
         api_base: http://{upstream_addr}/v1\n      api_key: sk-upstream-secret\n      input_cost_per_token: 0.000001\n      \
         output_cost_per_token: 0.000002\ngeneral_settings:\n  master_key: {MASTER}\n  proxy_batch_write_at: 1\n"
    );
    let config = Config::parse(&yaml, "purser-bench proxy")?;
    let args = ServeArgs {
        config: "purser-bench proxy".into(),
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Some(dir.path().join("bench.db").display().to_string()),
        redis_url: None,
        master_key: None,
        log_json: false,
        timeouts: Default::default(),
    };
    let settings = Settings::resolve(&config, &args, "purser-bench proxy")?;
    let gateway = Gateway::build(config, settings, None).await?;
    let state = gateway.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(gateway.serve(listener));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()?;
    // A governed team key: team with a budget and limits, a member with a budget, a key with limits.
    let admin = |path: &str, body: Value| {
        let c = client.clone();
        let url = format!("{gw}{path}");
        async move {
            let r = c.post(url).bearer_auth(MASTER).json(&body).send().await?;
            let s = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if !s.is_success() {
                bail!("setup call failed: {s} {v}");
            }
            anyhow::Ok(v)
        }
    };
    admin(
        "/team/new",
        json!({"team_id": "bench-team", "models": ["bench-model"], "max_budget": 1_000_000.0,
               "rpm_limit": 100_000_000, "tpm_limit": 1_000_000_000}),
    )
    .await?;
    admin(
        "/user/new",
        json!({"user_id": "bench-user", "auto_create_key": false}),
    )
    .await?;
    admin(
        "/team/member_add",
        json!({"team_id": "bench-team", "member": {"user_id": "bench-user", "role": "user"}, "max_budget_in_team": 1_000_000.0}),
    )
    .await?;
    let key = admin(
        "/key/generate",
        json!({"team_id": "bench-team", "user_id": "bench-user", "max_budget": 1_000_000.0, "rpm_limit": 100_000_000}),
    )
    .await?["key"]
        .as_str()
        .context("no key in /key/generate")?
        .to_string();

    let body = json!({"model": "bench-model", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 8});
    let direct_url = format!("http://{upstream_addr}/v1/chat/completions");
    let gateway_url = format!("{gw}/v1/chat/completions");

    // Warm both paths (connection pools, caches), then alternate sides in rounds.
    measure(
        &client,
        &direct_url,
        "sk-upstream-secret",
        &body,
        200,
        a.concurrency,
    )
    .await?;
    measure(&client, &gateway_url, &key, &body, 200, a.concurrency).await?;
    let rounds = 5;
    let per = a.requests / rounds;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    let (mut direct_time, mut through_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        direct.extend(
            measure(
                &client,
                &direct_url,
                "sk-upstream-secret",
                &body,
                per,
                a.concurrency,
            )
            .await?,
        );
        direct_time += t.elapsed();
        let t = Instant::now();
        through.extend(measure(&client, &gateway_url, &key, &body, per, a.concurrency).await?);
        through_time += t.elapsed();
    }
    direct.sort();
    through.sort();
    let q = |v: &[Duration], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;

    // Spend must have been counted for every governed call.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info: Value = client
        .get(format!("{gw}/key/info?key={key}"))
        .bearer_auth(MASTER)
        .send()
        .await?
        .json()
        .await?;
    state.shutdown.cancel();
    let _ = server.await;

    let mut md = String::from("# Request-path overhead — gateway vs direct upstream\n\n");
    md.push_str(&format!(
        "- Date: {}\n- Build: {}\n- Method: one process hosts a mock OpenAI upstream, the gateway (SQLite, governance on) and the \
         client; {} requests per side at concurrency {}, in {rounds} alternating rounds after 200 warm-up calls each. \
         Latency is the full HTTP round trip seen by the client.\n- Key spend after the run: ${} ({} governed calls incl. warm-up)\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        direct.len(),
        a.concurrency,
        info["info"]["spend"],
        through.len() + 200,
    ));
    md.push_str(
        "| Percentile | Direct µs | Through gateway µs | Added µs |\n|---|---:|---:|---:|\n",
    );
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        let (d, g) = (us(q(&direct, p)), us(q(&through, p)));
        md.push_str(&format!("| {name} | {d:.0} | {g:.0} | {:.0} |\n", g - d));
    }
    md.push_str(&format!(
        "\nThroughput: direct {:.0} req/s, through the gateway {:.0} req/s (client, gateway and upstream share the machine's 2 cores).\n",
        direct.len() as f64 / direct_time.as_secs_f64(),
        through.len() as f64 / through_time.as_secs_f64(),
    ));
    print!("{md}");
    std::fs::create_dir_all(&a.out)?;
    let file = a.out.join("proxy-overhead.md");
    std::fs::write(&file, md)?;
    println!("report written to {}", file.display());
    Ok(())
}

/// Sends `n` requests with at most `concurrency` in flight; returns each round-trip time.
async fn measure(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (c, url, key, body) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.post(url).bearer_auth(key).json(&body).send().await;
            let ok = match r {
                Ok(r) => {
                    let s = r.status();
                    let _ = r.bytes().await;
                    s.is_success()
                }
                Err(_) => false,
            };
            drop(permit);
            (t.elapsed(), ok)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        let (d, ok) = t.await?;
        if !ok {
            bail!("a benchmark request failed");
        }
        out.push(d);
    }
    Ok(out)
}
