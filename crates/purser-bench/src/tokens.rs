//! `purser-bench tokens`: what prompt counting costs. The resident memory each BPE encoding adds
//! when loaded (VmRSS before and after, in this process, under the gateway's allocator), and the
//! time of one count of a small chat, a ~2 KB chat with tools and a ~100 KB agent turn with each
//! counter. Writes `bench/reports/tokens.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use purser::upstream::tokens::TokenCounter;
use serde_json::{Map, Value, json};

#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    /// Counts per timed run (the ~100 KB body runs a hundredth of them).
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
    /// Timed runs per body and counter (min / median / max are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Report folder.
    #[arg(long, default_value = "bench/reports")]
    out: PathBuf,
}

/// Resident and peak resident memory of this process, in KiB.
fn rss_kib() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn small_chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]})
}

fn tools_chat() -> Value {
    let tool = |name: &str, what: &str| {
        json!({"type": "function", "function": {"name": name,
            "description": format!("Look up {what} for a customer account and return the latest figures."),
            "parameters": {"type": "object", "properties": {
                "account_id": {"type": "string", "description": "The customer's account id."},
                "since": {"type": "string", "description": "ISO date; defaults to 30 days ago."},
                "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]}},
                "required": ["account_id"]}}})
    };
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a billing assistant. Use the tools to answer precisely and cite figures."},
        {"role": "user", "content": "Why did my last invoice go up compared with the month before?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_invoices", "arguments": "{\"account_id\": \"acct_42\", \"since\": \"2025-01-01\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "[{\"month\": \"2025-01\", \"total\": 120.5}, {\"month\": \"2025-02\", \"total\": 180.25, \"new_items\": [\"seats x3\"]}]"}],
        "tools": [tool("get_invoices", "invoices"), tool("get_usage", "metered usage"),
                  tool("get_plan", "the subscription plan")],
        "max_tokens": 300})
}

fn large_chat() -> Value {
    let mut v = tools_chat();
    let rows: Vec<Value> = (0..600)
        .map(|i| json!({"row": i, "note": format!("seat change {i} approved by finance for region {}", i % 7), "amount": i * 3}))
        .collect();
    v["messages"][3]["content"] = Value::String(Value::Array(rows).to_string());
    v
}

struct Timing {
    min: f64,
    median: f64,
    max: f64,
}

fn time_counts(counter: TokenCounter, body: &Map<String, Value>, n: usize, runs: usize) -> Timing {
    let mut per_count: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let mut sink = 0u64;
            for _ in 0..n {
                sink = sink.wrapping_add(counter.chat_prompt(std::hint::black_box(body)));
            }
            std::hint::black_box(sink);
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    per_count.sort_by(f64::total_cmp);
    Timing {
        min: per_count[0],
        median: per_count[per_count.len() / 2],
        max: per_count[per_count.len() - 1],
    }
}

pub async fn run(a: TokensArgs) -> anyhow::Result<()> {
    let mut report = String::from("# Prompt counting cost (`purser-bench tokens`)\n\n");
    // Memory first, before any table is touched.
    let mut mem = Vec::new();
    let (mut before, _) = rss_kib()?;
    for counter in [TokenCounter::O200k, TokenCounter::Cl100k] {
        let start = Instant::now();
        counter.load();
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        let (after, peak) = rss_kib()?;
        mem.push((counter, after.saturating_sub(before), peak, load_ms));
        before = after;
    }
    writeln!(
        report,
        "Resident memory each encoding adds when loaded (VmRSS after − before, mimalloc as in \
         the gateway; loaded in this order):\n\n| encoding | + RSS | peak RSS so far | load time |\n|---|---|---|---|"
    )?;
    for (c, added, peak, ms) in &mem {
        writeln!(
            report,
            "| {} | +{:.1} MiB | {:.1} MiB | {ms:.0} ms |",
            c.encoding().unwrap_or("-"),
            *added as f64 / 1024.0,
            *peak as f64 / 1024.0
        )?;
    }
    let bodies = [
        ("small chat", small_chat(), a.iterations),
        ("chat with tools", tools_chat(), a.iterations),
        ("agent turn", large_chat(), (a.iterations / 100).max(1)),
    ];
    writeln!(
        report,
        "\nOne count of the whole request (µs, min / median / max of {} runs):\n\n| body | bytes | counter | tokens | µs per count | MB/s |\n|---|---|---|---|---|---|",
        a.runs
    )?;
    for (name, body, n) in &bodies {
        let bytes = body.to_string().len();
        let map = body.as_object().context("object body")?;
        for counter in [
            TokenCounter::Heuristic,
            TokenCounter::Cl100k,
            TokenCounter::O200k,
        ] {
            let t = time_counts(counter, map, *n, a.runs);
            let line = format!(
                "| {name} | {bytes} | {} | {} | {:.1} / {:.1} / {:.1} | {:.0} |",
                counter.encoding().unwrap_or("heuristic"),
                counter.chat_prompt(map),
                t.min,
                t.median,
                t.max,
                bytes as f64 / t.median
            );
            println!("{line}");
            writeln!(report, "{line}")?;
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let path = a.out.join("tokens.md");
    std::fs::write(&path, &report)?;
    println!("{report}\nwrote {}", path.display());
    Ok(())
}
