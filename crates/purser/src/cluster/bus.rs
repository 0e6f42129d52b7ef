//! The change bus between instances sharing one PostgreSQL database (LISTEN/NOTIFY, so it keeps
//! working when Redis is down). A management write publishes what it changed after its commit
//! and returns only once every live peer has applied it, or after [`ACK_DEADLINE`]; so when the
//! write answers, the very next request on any instance sees the change.
//!
//! Invariants:
//! - Peers are the instances heard from (a hello every [`HELLO_EVERY`]) within [`PEER_ALIVE`];
//!   an instance that stops says goodbye, and one that crashes stops being waited for when its
//!   hellos stop. A publish waits only for the peers alive when it was sent.
//! - An instance that lost its listening connection may have missed messages: once it listens
//!   again it applies [`Bus::CLEAR_ALL`] (drop every cached row), before anything else.
//! - Channels are named after the database schema, so test runs (a schema each) and separate
//!   deployments on one server never hear each other.
//! - Payloads are opaque here (service/ encodes them); a payload over PostgreSQL's 8000-byte
//!   limit is sent as [`Bus::CLEAR_ALL`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often an instance says it is alive.
pub const HELLO_EVERY: Duration = Duration::from_millis(500);
/// A peer not heard from for this long is no longer waited for.
pub const PEER_ALIVE: Duration = Duration::from_secs(3);
/// Longest a write waits for its peers' acknowledgements.
pub const ACK_DEADLINE: Duration = Duration::from_secs(2);
/// NOTIFY payloads must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7_900;

/// Applies a payload received from a peer (returns once applied).
pub type Handler = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

struct Waiter {
    pending: HashSet<String>,
    done: Arc<Notify>,
}

pub struct Bus {
    /// This instance's id (random per process).
    pub instance: String,
    pool: PgPool,
    evict: String,
    ack: String,
    hello: String,
    seq: AtomicU64,
    peers: Mutex<HashMap<String, Instant>>,
    waiting: Mutex<HashMap<u64, Waiter>>,
    listening: AtomicBool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("instance", &self.instance)
            .finish()
    }
}

impl Bus {
    /// The payload that tells a peer to drop everything it caches.
    pub const CLEAR_ALL: &'static str = "*";

    /// A bus on `pool`'s database; channels are named after its current schema.
    pub async fn new(pool: PgPool) -> sqlx::Result<Arc<Bus>> {
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await?;
        // Channel names are identifiers (at most 63 bytes): keep it short and plain.
        let tag: String = schema
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        Ok(Arc::new(Bus {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            pool,
            evict: format!("purser_ev_{tag}"),
            ack: format!("purser_ack_{tag}"),
            hello: format!("purser_hi_{tag}"),
            seq: AtomicU64::new(1),
            peers: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
        }))
    }

    /// Live peers (other instances heard from recently).
    pub fn peers(&self) -> Vec<String> {
        let now = Instant::now();
        let mut p = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, seen| now.duration_since(*seen) < PEER_ALIVE);
        p.keys().cloned().collect()
    }

    /// True while the listening connection is up.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    async fn notify(&self, channel: &str, payload: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Sends `payload` to every peer and waits until each live peer has applied it (at most
    /// [`ACK_DEADLINE`]). A database that cannot be reached is logged: the write is committed
    /// already, and peers that cannot hear us clear their caches when they listen again.
    pub async fn publish(&self, payload: &str) {
        let peers = self.peers();
        let payload = if payload.len() > MAX_PAYLOAD {
            Bus::CLEAR_ALL
        } else {
            payload
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(Notify::new());
        if !peers.is_empty() {
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    seq,
                    Waiter {
                        pending: peers.iter().cloned().collect(),
                        done: done.clone(),
                    },
                );
        }
        let message = format!("{} {seq} {payload}", self.instance);
        if let Err(e) = self.notify(&self.evict, &message).await {
            tracing::warn!(error = %e, "change broadcast failed; peers will catch up when they reconnect");
            self.forget(seq);
            return;
        }
        if peers.is_empty() {
            return;
        }
        let notified = done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let all_acked = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seq)
            .is_none_or(|w| w.pending.is_empty());
        if !all_acked && tokio::time::timeout(ACK_DEADLINE, notified).await.is_err() {
            let missing = self.forget(seq);
            tracing::warn!(
                peers = ?missing,
                "change broadcast: not every instance acknowledged in time"
            );
            return;
        }
        self.forget(seq);
    }

    fn forget(&self, seq: u64) -> Vec<String> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq)
            .map(|w| w.pending.into_iter().collect())
            .unwrap_or_default()
    }

    fn acked(&self, seq: u64, peer: &str) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiter) = w.get_mut(&seq) {
            waiter.pending.remove(peer);
            if waiter.pending.is_empty() {
                waiter.done.notify_one();
            }
        }
    }

    /// A peer left: stop waiting for it.
    fn gone(&self, peer: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for waiter in w.values_mut() {
            if waiter.pending.remove(peer) && waiter.pending.is_empty() {
                waiter.done.notify_one();
            }
        }
    }

    fn heard(&self, peer: &str) {
        if peer != self.instance {
            self.peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer.to_string(), Instant::now());
        }
    }

    async fn listen(&self) -> sqlx::Result<PgListener> {
        let mut l = PgListener::connect_with(&self.pool).await?;
        // The listener keeps working while the pool is being closed at shutdown; the run loop
        // ends on the shutdown token instead.
        l.ignore_pool_close_event(true);
        l.listen_all([self.evict.as_str(), self.ack.as_str(), self.hello.as_str()])
            .await?;
        Ok(l)
    }

    /// Listens until `shutdown`: applies peers' changes with `apply` and acknowledges them,
    /// tracks acknowledgements and hellos. Says hello now and every [`HELLO_EVERY`], and
    /// goodbye at the end.
    pub async fn run(self: Arc<Self>, apply: Handler, shutdown: CancellationToken) {
        let hello = {
            let bus = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(HELLO_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = every.tick() => {
                            let _ = bus.notify(&bus.hello, &bus.instance).await;
                        }
                    }
                }
            })
        };
        let mut backoff = Duration::from_millis(100);
        let mut listener: Option<PgListener> = None;
        let mut reconnecting = false;
        loop {
            let Some(l) = listener.as_mut() else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    made = self.listen() => match made {
                        Ok(l) => {
                            // Anything sent while we were not listening is lost: start afresh.
                            if reconnecting {
                                tracing::info!("change bus listening again; dropping every cached row");
                            }
                            reconnecting = true;
                            self.listening.store(true, Ordering::Relaxed);
                            apply(Bus::CLEAR_ALL.to_string()).await;
                            backoff = Duration::from_millis(100);
                            listener = Some(l);
                            let _ = self.notify(&self.hello, &self.instance).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "change bus cannot listen; retrying");
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
                continue;
            };
            let got = tokio::select! {
                _ = shutdown.cancelled() => break,
                got = l.try_recv() => got,
            };
            match got {
                Ok(Some(n)) => self.on_message(n.channel(), n.payload(), &apply).await,
                Ok(None) => {
                    // Reconnected (eagerly) after losing the connection: messages may be lost.
                    tracing::warn!(
                        "change bus connection lost and re-established; dropping every cached row"
                    );
                    apply(Bus::CLEAR_ALL.to_string()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change bus connection lost");
                    self.listening.store(false, Ordering::Relaxed);
                    listener = None;
                    backoff = Duration::from_millis(200);
                }
            }
        }
        hello.abort();
        let _ = self
            .notify(&self.hello, &format!("-{}", self.instance))
            .await;
    }

    async fn on_message(&self, channel: &str, payload: &str, apply: &Handler) {
        if channel == self.hello {
            match payload.strip_prefix('-') {
                Some(peer) => self.gone(peer),
                None => self.heard(payload),
            }
        } else if channel == self.ack {
            // "<origin> <seq> <acker>"
            let mut it = payload.splitn(3, ' ');
            if let (Some(origin), Some(seq), Some(acker)) = (it.next(), it.next(), it.next())
                && origin == self.instance
                && let Ok(seq) = seq.parse()
            {
                self.acked(seq, acker);
            }
        } else if channel == self.evict {
            // "<origin> <seq> <payload>"
            let mut it = payload.splitn(3, ' ');
            let (Some(origin), Some(seq), Some(body)) = (it.next(), it.next(), it.next()) else {
                return;
            };
            if origin == self.instance {
                return;
            }
            self.heard(origin);
            apply(body.to_string()).await;
            let ack = format!("{origin} {seq} {}", self.instance);
            if let Err(e) = self.notify(&self.ack, &ack).await {
                tracing::debug!(error = %e, "acknowledgement not sent");
            }
        }
    }
}
