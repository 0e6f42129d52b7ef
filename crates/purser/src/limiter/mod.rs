//! RPM/TPM limits of keys, teams, members and users (reference §7.5): fixed 60 s windows keyed
//! `scope:id`. Invariants: the request counters of every scope of one call are checked and
//! incremented atomically (all or none, per-counter locks taken in key order so two calls can
//! never deadlock); TPM is refused up front only when a window is already at/over its limit and
//! real usage is added afterwards, so overshoot is bounded by one request per scope.
//! [`Limiter`] is an enum so a Redis backend (same algorithm in a Lua script) can be added.

mod memory;

pub use memory::MemoryLimiter;

/// Window length in seconds (LiteLLM `LITELLM_RATE_LIMIT_WINDOW_SIZE` default).
pub const WINDOW_SECS: u64 = 60;

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
}

impl RateLimit {
    fn counter_key(&self) -> String {
        format!("{}:{}", self.scope, self.id)
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
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
    /// Seconds until the window that refused rolls over.
    pub retry_after: u64,
}

/// The rate limiter backend.
pub enum Limiter {
    Memory(MemoryLimiter),
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter::Memory(MemoryLimiter::default())
    }

    /// Counts one request against every descriptor if all of them have room (RPM below limit,
    /// TPM window below limit); otherwise counts nothing and names the first refusing scope.
    pub fn acquire(&self, limits: &[RateLimit]) -> Result<(), RateDenied> {
        match self {
            Limiter::Memory(m) => m.acquire(limits, now_secs()),
        }
    }

    /// Adds the real token usage of a finished call to every descriptor with a TPM limit.
    pub fn add_tokens(&self, limits: &[RateLimit], tokens: u64) {
        match self {
            Limiter::Memory(m) => m.add_tokens(limits, tokens, now_secs()),
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
