//! RPM/TPM limits, `tpd_limit` (tokens per UTC day) and `max_parallel_requests` slots of keys,
//! teams, members and users (reference §7.5): fixed 60 s windows (and one UTC day for TPD) keyed
//! `scope:id`, and an in-flight count per `scope:id` that a call
//! holds from admission until it (or its stream) ends, however it ends. Invariants: the request counters of every scope of one call are checked and
//! incremented atomically (all or none, per-counter locks taken in key order so two calls can
//! never deadlock); TPM is refused up front only when a window is already at/over its limit and
//! real usage is added afterwards, so overshoot is bounded by one request per scope.
//! [`Limiter`] is an enum so a Redis backend (same algorithm in a Lua script) can be added.
//! Windows are read from the injected clock; windows that ended are swept (memory stays flat
//! under key churn).

mod memory;

use crate::app::AppState;
use crate::clock::SharedClock;

pub use memory::MemoryLimiter;

/// Window length in seconds (LiteLLM `LITELLM_RATE_LIMIT_WINDOW_SIZE` default).
pub const WINDOW_SECS: u64 = 60;
/// The `tpd_limit` window: one UTC day.
pub const DAY_SECS: u64 = 86_400;

/// One rate-limit descriptor of a call: a scope (`api_key`, `team`, `team_member`, `user`), the
/// id shown in messages, and its limits (None = unlimited).
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub scope: &'static str,
    pub id: String,
    /// Shown in messages instead of `id` when set (keys: never echo the key hash).
    pub label: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// `tpd_limit`: tokens per UTC day.
    pub tpd: Option<u64>,
    /// `max_parallel_requests`: calls in flight at once.
    pub parallel: Option<u64>,
}

impl RateLimit {
    fn is_limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.tpd.is_some() || self.parallel.is_some()
    }

    fn counter_key(&self) -> String {
        format!("{}:{}", self.scope, self.id)
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    /// `tpd_limit`.
    TokensPerDay,
    Parallel,
}

/// A refusal: everything the 429 answer and its headers need.
#[derive(Debug, Clone)]
pub struct RateDenied {
    pub scope: &'static str,
    pub id: String,
    pub kind: LimitKind,
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub limit_tokens_per_day: Option<u64>,
    pub remaining_tokens_per_day: Option<u64>,
    pub limit_parallel: Option<u64>,
    /// Seconds until the window that refused rolls over (the next UTC midnight for TPD, 1 for a
    /// parallel-slot refusal).
    pub retry_after: u64,
}

/// The rate limiter backend and its clock.
pub struct Limiter {
    backend: Backend,
    clock: SharedClock,
}

enum Backend {
    Memory(MemoryLimiter),
}

impl Limiter {
    pub fn new(clock: SharedClock) -> Limiter {
        Limiter {
            backend: Backend::Memory(MemoryLimiter::default()),
            clock,
        }
    }

    fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// Counts one request against every descriptor if all of them have room (RPM below limit,
    /// TPM window below limit, a free parallel slot) and takes the slots; otherwise counts and
    /// takes nothing and names the first refusing scope. Every success must be followed by
    /// exactly one [`Limiter::release`] or [`Limiter::refund`].
    pub fn acquire(&self, limits: &[RateLimit]) -> Result<(), Box<RateDenied>> {
        match &self.backend {
            Backend::Memory(m) => m.acquire(limits, self.now()),
        }
    }

    /// Gives back the request and the slots an [`Limiter::acquire`] took, for a call refused
    /// after it (no deployment could take it): a refused pick must not burn the caller's RPM.
    pub fn refund(&self, limits: &[RateLimit]) {
        match &self.backend {
            Backend::Memory(m) => {
                m.refund(limits, self.now());
                m.release(limits);
            }
        }
    }

    /// Frees the parallel slots of a call that ended (answered, failed, stream finished or
    /// client gone).
    pub fn release(&self, limits: &[RateLimit]) {
        match &self.backend {
            Backend::Memory(m) => m.release(limits),
        }
    }

    /// Adds the real token usage of a finished call to every descriptor with a TPM or TPD limit.
    pub fn add_tokens(&self, limits: &[RateLimit], tokens: u64) {
        match &self.backend {
            Backend::Memory(m) => m.add_tokens(limits, tokens, self.now()),
        }
    }

    /// Drops windows that have ended. Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        match &self.backend {
            Backend::Memory(m) => m.sweep(self.now()),
        }
    }

    /// Windows held (tests).
    pub fn windows(&self) -> usize {
        match &self.backend {
            Backend::Memory(m) => m.window_count(),
        }
    }
}

/// Sweeps ended rate-limit and per-model budget windows every half minute until shutdown.
pub fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(WINDOW_SECS / 2));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = every.tick() => {
                    state.limiter.sweep();
                    state.model_budgets.sweep();
                }
            }
        }
    })
}
