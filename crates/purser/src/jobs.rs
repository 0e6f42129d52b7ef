//! Background jobs started with the server and stopped (with a final flush) at shutdown.
//! The request-path issue adds the budget reset loop and the batched spend writer here.

use crate::app::AppState;

/// Handles of the running background tasks.
pub struct Jobs {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts every background job; each stops when `state.shutdown` is cancelled.
pub fn spawn(state: AppState) -> Jobs {
    // Batched spend writer (final flush on shutdown).
    let tasks = vec![tokio::spawn(crate::service::spend::run_flusher(
        state.clone(),
    ))];
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
