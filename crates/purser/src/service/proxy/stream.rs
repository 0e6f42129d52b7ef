//! Streams: a task per stream owns the upstream body, the meter and the deployment slot, and
//! feeds the client through a small buffer; it ends at the upstream's end, the idle timeout, the
//! client's disconnect or the overall deadline, settling exactly once (`StreamMeter`).

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::dispatch::Meter;
use crate::upstream::anthropic::{StreamTranslator, ToMessagesStream};
use crate::upstream::sse::{SseTap, Usage, UsageChunkFilter};

/// Settles a stream exactly once: with the upstream usage if it arrived, else with the counted
/// prompt plus the counted text produced so far (disconnect, upstream failure).
pub(super) struct StreamMeter {
    pub(super) meter: Meter,
    pub(super) tap: SseTap,
    /// An Anthropic stream relayed as is: the tap reads its OpenAI translation.
    pub(super) anthropic_tap: Option<StreamTranslator>,
}

impl StreamMeter {
    fn feed(&mut self, bytes: &[u8]) {
        match &mut self.anthropic_tap {
            None => self.tap.feed(bytes),
            Some(t) => {
                let openai = t.push(bytes);
                self.tap.feed(&openai);
            }
        }
    }
}

/// What reaches the client of a stream.
pub(super) enum Relay {
    /// The upstream's bytes unchanged.
    AsIs,
    /// Unchanged except the final usage-only chunk (the client did not ask for it).
    StripUsage(UsageChunkFilter),
    /// OpenAI chunks turned into Anthropic events (a `/v1/messages` client).
    ToMessages(Box<ToMessagesStream>),
}

impl Relay {
    fn push(&mut self, b: Bytes) -> Bytes {
        match self {
            Relay::AsIs => b,
            Relay::StripUsage(f) => Bytes::from(f.push(&b)),
            Relay::ToMessages(t) => Bytes::from(t.push(&b)),
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match self {
            Relay::AsIs | Relay::ToMessages(_) => Vec::new(),
            Relay::StripUsage(f) => f.finish(),
        }
    }
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        let usage = self.tap.usage.unwrap_or(Usage {
            prompt_tokens: self.meter.prompt_estimate,
            completion_tokens: self.tap.produced_tokens,
            ..Usage::default()
        });
        let status = if self.tap.done { "success" } else { "partial" };
        self.meter.settle(usage, status);
    }
}

/// Chunks buffered between the upstream and a slow client (backpressure beyond that).
pub(super) const STREAM_BUFFER: usize = 16;

/// Runs a stream in its own task, which owns the upstream body and the meter, and hands the
/// chunks to the response body through a small channel. The task ends (settling the meter,
/// releasing the deployment slot and closing the upstream connection) when the upstream ends,
/// when no chunk arrives for `idle`, when the client goes away, or at the overall `deadline`
/// — also when the client stopped reading and the channel is full, which a body that is only
/// polled by the client could never notice.
pub(super) fn pump_stream(
    mut chunks: BoxStream<'static, Result<Bytes, std::io::Error>>,
    mut meter: StreamMeter,
    idle: std::time::Duration,
    deadline: std::time::Duration,
    mut relay: Relay,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_BUFFER);
    let end = tokio::time::Instant::now() + deadline;
    tokio::spawn(async move {
        let mut first = true;
        let timed_out = |what: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("upstream stream {what}"),
            ))
        };
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, chunks.next()) => n,
                _ = tokio::time::sleep_until(end) => {
                    let _ = tx.try_send(timed_out("deadline exceeded"));
                    break;
                }
            };
            let item = match next {
                Ok(Some(Ok(b))) => {
                    if first {
                        first = false;
                        meter.meter.first_byte();
                    }
                    meter.feed(&b);
                    let out = relay.push(b);
                    if out.is_empty() {
                        continue;
                    }
                    Ok(out)
                }
                Ok(Some(Err(e))) => Err(e),
                Ok(None) => {
                    let rest = relay.finish();
                    if !rest.is_empty() {
                        let _ = tx.send(Ok(Bytes::from(rest))).await;
                    }
                    break;
                }
                Err(_) => timed_out("idle timeout"),
            };
            let failed = item.is_err();
            tokio::select! {
                sent = tx.send(item) => if sent.is_err() { break },
                _ = tokio::time::sleep_until(end) => break,
            }
            if failed {
                break;
            }
        }
        drop(chunks);
        drop(meter);
    });
    Body::from_stream(tokio_stream_of(rx))
}

pub(super) fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
