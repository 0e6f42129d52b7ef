//! Background jobs started with the server: the spend writer (`service::spend::run_writer`),
//! the budget reset loop (`service::resets`), the webhook sender (`service::alerts`), and with
//! several instances the change bus listener and the Redis prober (`cluster`). Invariants: the writer outlives the server —
//! [`Jobs::finish`] is called once the server has stopped accepting and its connections have
//! finished, and only then does the writer do its final drain; and the writer never runs on a
//! request worker — it has its own thread, below request handling's priority.

use tokio_util::sync::CancellationToken;

use crate::app::AppState;

/// Handles of the running background tasks.
pub struct Jobs {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server_stopped: CancellationToken,
}

/// Starts every background job. The reset loop stops when `state.shutdown` is cancelled; the
/// spend writer when [`Jobs::finish`] says the server has stopped.
pub fn spawn(state: AppState) -> Jobs {
    let server_stopped = CancellationToken::new();
    let mut tasks = vec![spawn_writer(state.clone(), server_stopped.clone())];
    if let Some(t) = crate::service::resets::spawn(state.clone()) {
        tasks.push(t);
    }
    if let Some(t) = crate::service::alerts::spawn_sender(&state, server_stopped.clone()) {
        tasks.push(t);
    }
    if let Some(bus) = state.cluster.bus.clone() {
        let applying = state.clone();
        let apply: crate::cluster::bus::Handler = std::sync::Arc::new(move |payload: String| {
            let state = applying.clone();
            Box::pin(async move { crate::service::write::apply_remote(&state, &payload).await })
        });
        tasks.push(tokio::spawn(bus.run(apply, state.shutdown.clone())));
    }
    if let Some(redis) = state.cluster.redis.clone() {
        tasks.push(tokio::spawn(
            redis.clone().run_prober(state.shutdown.clone()),
        ));
        // Ends with the writer (after the server stopped), so calls settling late are sent.
        tasks.push(tokio::spawn(redis.run_flusher(server_stopped.clone())));
    }
    tasks.push(crate::limiter::spawn_sweeper(state));
    Jobs {
        tasks,
        server_stopped,
    }
}

impl Jobs {
    /// Called after the server stopped accepting and every connection finished: the writer
    /// waits for calls still settling, writes everything and returns; then the others end.
    pub async fn finish(self) {
        self.server_stopped.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs the spend writer on a thread of its own with a single-threaded runtime, at a lower
/// priority than request handling ([`WRITER_NICE`]). The writer's database connection is made
/// from that thread (the pool is lazy), so the SQLite worker thread sqlx spawns for it inherits
/// the priority: building a chunk's statements and committing them never runs on a request
/// worker, and the scheduler prefers a runnable request over them, yet still gives the writer
/// a share of a saturated core (a thread at `SCHED_IDLE` was measured to starve there until
/// the queue filled, and the backpressure then stretched p99 to 100+ ms). Should its runtime or
/// thread not start, the writer runs on the main runtime: settled spend is never left unwritten.
fn spawn_writer(state: AppState, server_stopped: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (thread_state, thread_stopped) = (state.clone(), server_stopped.clone());
    let spawned = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            std::thread::Builder::new()
                .name("purser-spend".into())
                .spawn(move || {
                    lower_current_thread();
                    rt.block_on(crate::service::spend::run_writer(
                        thread_state,
                        thread_stopped,
                    ));
                    let _ = done_tx.send(());
                })
        });
    match spawned {
        Ok(_) => tokio::spawn(async move {
            let _ = done_rx.await;
        }),
        Err(e) => {
            tracing::warn!(error = %e, "spend writer thread did not start; writing from the main runtime");
            tokio::spawn(crate::service::spend::run_writer(state, server_stopped))
        }
    }
}

/// Nice value of the spend writer's threads: CFS weight 335 against request handling's 1024,
/// about a quarter of a contended core — more than the writer needs at full load (measured
/// ~15 %), so it never falls behind for want of CPU, while a waking request is preferred.
/// Raising a nice value needs no privilege.
#[cfg(target_os = "linux")]
const WRITER_NICE: i32 = 5;

/// Lowers the calling thread's priority (Linux: a nice value is per thread, and threads the
/// caller spawns later inherit it). Best effort: on failure the writer keeps normal priority,
/// which is correct, only less kind to the request tail.
fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, WRITER_NICE) {
        tracing::debug!(error = %e, "spend writer keeps normal priority");
    }
}
