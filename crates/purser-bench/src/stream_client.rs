//! `purser-bench stream-client` (internal, started by `process` under `taskset`): sequential
//! streaming chat calls timing the first body chunk (time to first byte) and the whole stream.
//! Prints one JSON line with the counts and percentiles in microseconds.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct StreamClientArgs {
    /// Full URL of `/v1/chat/completions` (127.0.0.1).
    #[arg(long)]
    url: String,
    /// Bearer key.
    #[arg(long)]
    key: String,
    /// Model name sent in the body.
    #[arg(long)]
    model: String,
    /// Timed requests.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Untimed requests first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=1).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({"p50": percentile(&v, 0.5), "p90": percentile(&v, 0.9), "p99": percentile(&v, 0.99),
           "max": percentile(&v, 1.0)})
}

/// One streamed call: (time to first non-empty body chunk, whole stream), or why it failed.
async fn one(
    client: &reqwest::Client,
    a: &StreamClientArgs,
    body: &str,
) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    let mut resp = client
        .post(&a.url)
        .bearer_auth(&a.key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let mut ttfb = None;
    let mut all = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
        if !c.is_empty() && ttfb.is_none() {
            ttfb = Some(t0.elapsed());
        }
        all.extend_from_slice(&c);
    }
    let total = t0.elapsed();
    let text = String::from_utf8_lossy(&all);
    if !status.is_success() {
        return Err(format!("status {status}: {text}"));
    }
    if !text.contains("data: [DONE]") {
        return Err(format!("stream without [DONE]: {text}"));
    }
    Ok((ttfb.unwrap_or(total), total))
}

pub async fn run(a: StreamClientArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = json!({"model": a.model, "stream": true, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "Say ok."}]})
    .to_string();
    let mut warmup_ok = 0usize;
    for _ in 0..a.warmup {
        warmup_ok += usize::from(one(&client, &a, &body).await.is_ok());
    }
    let (mut ttfb, mut total) = (Vec::new(), Vec::new());
    let (mut failed, mut first_error) = (0usize, None);
    for _ in 0..a.requests {
        match one(&client, &a, &body).await {
            Ok((f, t)) => {
                ttfb.push(f.as_secs_f64() * 1e6);
                total.push(t.as_secs_f64() * 1e6);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let ok = ttfb.len();
    let out = json!({"ok": ok, "failed": failed, "warmup_ok": warmup_ok, "first_error": first_error,
                     "ttfb_us": summary(ttfb), "total_us": summary(total)});
    println!(
        "{}",
        serde_json::to_string(&out).context("encoding the result")?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
