//! Background jobs started with the server: the spend writer (`service::spend::run_writer`)
//! and the budget reset loop (`service::resets`). Invariant: the writer outlives the server —
//! [`Jobs::finish`] is called once the server has stopped accepting and its connections have
//! finished, and only then does the writer do its final drain.

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
    let mut tasks = vec![tokio::spawn(crate::service::spend::run_writer(
        state.clone(),
        server_stopped.clone(),
    ))];
    if let Some(t) = crate::service::resets::spawn(state.clone()) {
        tasks.push(t);
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
