//! Background jobs started with the server and stopped (with a final flush) at shutdown:
//! the batched spend writer (`service::spend::run_flusher`) and the budget reset loop
//! (`service::resets`).

use crate::app::AppState;

/// Handles of the running background tasks.
pub struct Jobs {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts every background job; each stops when `state.shutdown` is cancelled.
pub fn spawn(state: AppState) -> Jobs {
    // Batched spend writer (final flush on shutdown).
    let mut tasks = vec![tokio::spawn(crate::service::spend::run_flusher(
        state.clone(),
    ))];
    // Budget resets (1 s ticks, compare-and-set per row).
    if let Some(t) = crate::service::resets::spawn(state.clone()) {
        tasks.push(t);
    }
    Jobs { tasks }
}

impl Jobs {
    /// Waits for every job to finish its final pass (called after the server stopped accepting).
    pub async fn finish(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
