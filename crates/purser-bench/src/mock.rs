//! `purser-bench mock`: the fast OpenAI-compatible upstream of the process benchmark. It owns
//! `POST /v1/chat/completions` (a fixed JSON completion with `usage`; with `"stream": true` SSE
//! chunks: content, finish, a usage-only chunk, then `data: [DONE]`), Anthropic's `POST
//! /v1/messages` (a fixed message with `usage`, for the translated-call figure) and `GET /health`. Answers
//! are static bytes so the mock costs as little CPU as possible; it listens on 127.0.0.1 only.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;

#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// Pause before each streamed chunk after the first, in microseconds (0 = none). A pause
    /// makes a gateway that buffers the stream visible in time to first byte.
    #[arg(long, default_value_t = 0)]
    chunk_gap_us: u64,
}

const COMPLETION: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

const MESSAGE: &[u8] = br#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}"#;

async fn messages() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(MESSAGE),
    )
        .into_response()
}

const CHUNKS: [&[u8]; 4] = [
    b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":null}]}\n\n",
    b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13}}\n\n",
    b"data: [DONE]\n\n",
];

/// True when the request body asks for a stream (`"stream": true` at the top level).
fn wants_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(|s| s.as_bool()))
        .unwrap_or(false)
}

async fn chat(State(gap): State<Duration>, body: Bytes) -> Response {
    if !wants_stream(&body) {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from_static(COMPLETION),
        )
            .into_response();
    }
    let chunks = futures_util::stream::unfold(0usize, move |i| async move {
        let chunk = CHUNKS.get(i)?;
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Some((Ok::<_, Infallible>(Bytes::from_static(chunk)), i + 1))
    });
    let mut resp = Response::new(Body::from_stream(chunks));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub async fn run(a: MockArgs) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/health", get(|| async { "ok" }))
        .with_state(Duration::from_micros(a.chunk_gap_us));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", a.port))
        .await?
        .tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_flag_is_read_from_the_top_level() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m","x":{"stream":true}}"#));
        assert!(!wants_stream(b"not json"));
    }

    #[test]
    fn canned_answers_are_valid_json() {
        let v: serde_json::Value = serde_json::from_slice(COMPLETION).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 13);
        let m: serde_json::Value = serde_json::from_slice(MESSAGE).unwrap();
        assert_eq!(m["usage"]["input_tokens"], 12);
        for c in &CHUNKS[..3] {
            let s = std::str::from_utf8(c).unwrap();
            let json = s.strip_prefix("data: ").unwrap().trim_end();
            serde_json::from_str::<serde_json::Value>(json).unwrap();
        }
    }
}
