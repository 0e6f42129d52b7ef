//! The HTTP server: accept loop, per-connection timeouts and graceful shutdown (what
//! `axum::serve` does, plus the limits it lacks). HTTP/1.1 and cleartext HTTP/2 (h2c) are both
//! served, with `TCP_NODELAY` on every connection (SSE chunks leave at once).
//!
//! Invariants:
//! - A connection with no request in flight is closed after `header_read` if it is waiting for
//!   an HTTP/1 request head (from accept, or from the first byte after a response), and after
//!   `keepalive` otherwise (idle between requests, or HTTP/2 with no open stream).
//! - A connection with a request in flight is never closed by these timers: responses and
//!   streams of any length finish. A stalled request body is bounded separately, per read, by
//!   `body_read` (`tower_http` `RequestBodyTimeoutLayer`, answered 408 by `api::extract`).
//! - Shutdown stops accepting, asks every connection to finish its in-flight requests (HTTP/1
//!   closes when idle, HTTP/2 sends GOAWAY) and waits for all of them, with no deadline.
//!
//! hyper's own `header_read_timeout` is not used: its timer also runs while a kept-alive
//! connection waits for the next request, so it would cap the idle time at the header timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Per-connection limits (settings `http_header_read_timeout`, `http_body_read_timeout`,
/// `http_keepalive_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To receive a complete HTTP/1 request head, counted from accept or from the first byte
    /// of the next request on a kept-alive connection.
    pub header_read: Duration,
    /// Between two reads of a request body.
    pub body_read: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    /// A request head is a few KiB: 10 s covers slow links and retransmissions, and bounds what
    /// a slowloris client holds. Bodies get nginx's `client_body_timeout` (60 s between reads,
    /// so a large upload that keeps moving is never cut). Idle keep-alive gets nginx's 75 s,
    /// above the 60 s idle timeout of common load balancers, which then close first.
    fn default() -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for every
/// connection to finish its in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // As axum::serve: extended CONNECT for HTTP/2.
    builder.http2().enable_connect_protocol();
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            builder.clone(),
            tcp,
            router.clone(),
            timeouts,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// As axum::serve: errors of one connection are skipped; anything else (EMFILE) is logged and
/// accepting pauses for a second, in the hope connections close meanwhile.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn connection(
    builder: Builder<TokioExecutor>,
    tcp: TcpStream,
    router: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = InFlight::begin(&activity);
            let router = router.clone();
            async move {
                let response = router.oneshot(req.map(Body::new)).await;
                response.map(|r| {
                    r.map(|inner| Guarded {
                        inner,
                        _guard: guard,
                    })
                })
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!("connection ended: {e:#}");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            expired = activity.expired(&timeouts, draining) => match expired {
                Expired::Idle => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                // Dropping the connection closes the socket; no request is in flight.
                Expired::Head => return,
            }
        }
    }
}

/// Milliseconds since the connection was accepted; `NONE` when unset.
const NONE: u64 = u64::MAX;

/// What the connection is doing, shared by its socket wrapper, its request guards and its
/// timer. Only changes of state notify.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Since when the connection has had no request in flight.
    idle_since: AtomicU64,
    /// Since when an HTTP/1 request head is awaited with bytes of it arriving (or since accept).
    head_since: AtomicU64,
    /// The client spoke HTTP/2 (its first bytes were the connection preface).
    h2: AtomicBool,
    seen_bytes: AtomicBool,
    changed: Notify,
}

enum Expired {
    Idle,
    Head,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            seen_bytes: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Bytes arrived from the client.
    fn on_read(&self, bytes: &[u8]) {
        if !self.seen_bytes.swap(true, SeqCst) && bytes.starts_with(b"PRI ") {
            self.h2.store(true, SeqCst);
            self.changed.notify_one();
        }
        if self.in_flight.load(SeqCst) == 0
            && self
                .head_since
                .compare_exchange(NONE, self.now(), SeqCst, SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// Resolves when a timer of the current state runs out; never while a request is in flight.
    /// When `draining`, only the head timer counts (an idle connection is being closed already).
    async fn expired(&self, t: &Timeouts, draining: bool) -> Expired {
        loop {
            // `notify_one` keeps a permit when nobody waits, so no change is missed between the
            // loads below and the wait.
            let deadline = if self.in_flight.load(SeqCst) > 0 {
                None
            } else {
                let head = self.head_since.load(SeqCst);
                if head != NONE && !self.h2.load(SeqCst) {
                    Some((self.at(head) + t.header_read, Expired::Head))
                } else if !draining {
                    let idle = self.idle_since.load(SeqCst);
                    Some((self.at(idle) + t.keepalive, Expired::Idle))
                } else {
                    None
                }
            };
            match deadline {
                None => self.changed.notified().await,
                Some((at, kind)) => {
                    if at <= Instant::now() {
                        return kind;
                    }
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// Held from the moment hyper hands a request to the router until its response body is
/// finished or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, SeqCst);
        a.head_since.store(NONE, SeqCst);
        a.changed.notify_one();
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, SeqCst) == 1 {
            a.idle_since.store(a.now(), SeqCst);
        }
        a.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in flight.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, reporting arriving bytes to the connection's [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
