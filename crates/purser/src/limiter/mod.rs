//! RPM/TPM limits, `tpd_limit` (tokens per UTC day) and `max_parallel_requests` slots of keys,
//! teams, members and users (reference §7.5): fixed 60 s windows (and one UTC day for TPD) keyed
//! `scope:id`, and an in-flight count per `scope:id` that a call
//! holds from admission until it (or its stream) ends, however it ends. Invariants: the request counters of every scope of one call are checked and
//! incremented atomically (all or none, per-counter locks taken in key order so two calls can
//! never deadlock); TPM is refused up front only when a window is already at/over its limit and
//! real usage is added afterwards, so overshoot is bounded by one request per scope.
//! With Redis configured the same algorithm runs in one Lua script per call (`cluster::counters`),
//! shared by every instance; the in-process windows serve while Redis is down.
//! Windows are read from the injected clock; windows that ended are swept (memory stays flat
//! under key churn).

mod memory;

use std::sync::Arc;

use crate::app::AppState;
use crate::clock::SharedClock;
use crate::cluster::RedisCounters;
use crate::cluster::counters::{WindowArgs, WindowFull};

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

/// The refusal of `l` given its window's counts, or None when it has room.
pub(crate) fn denied(
    l: &RateLimit,
    requests: u64,
    tokens: u64,
    day_tokens: u64,
    in_flight: u64,
    now: u64,
) -> Option<RateDenied> {
    let parallel_full = l.parallel.is_some_and(|p| in_flight >= p);
    let rpm_full = l.rpm.is_some_and(|r| requests >= r);
    let tpm_full = l.tpm.is_some_and(|t| tokens >= t);
    let tpd_full = l.tpd.is_some_and(|t| day_tokens >= t);
    if !(parallel_full || rpm_full || tpm_full || tpd_full) {
        return None;
    }
    Some(RateDenied {
        scope: l.scope,
        id: l.label.clone().unwrap_or_else(|| l.id.clone()),
        kind: if parallel_full {
            LimitKind::Parallel
        } else if rpm_full {
            LimitKind::Requests
        } else if tpm_full {
            LimitKind::Tokens
        } else {
            LimitKind::TokensPerDay
        },
        limit_requests: l.rpm,
        remaining_requests: l.rpm.map(|r| r.saturating_sub(requests)),
        limit_tokens: l.tpm,
        remaining_tokens: l.tpm.map(|t| t.saturating_sub(tokens)),
        limit_tokens_per_day: l.tpd,
        remaining_tokens_per_day: l.tpd.map(|t| t.saturating_sub(day_tokens)),
        limit_parallel: l.parallel,
        retry_after: if parallel_full {
            1
        } else if rpm_full || tpm_full {
            WINDOW_SECS - now % WINDOW_SECS
        } else {
            DAY_SECS - now % DAY_SECS
        },
    })
}

/// Where a call's counts live: the call must be released where it was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Held {
    /// In this process (no Redis, or Redis down when the call was admitted).
    #[default]
    Local,
    /// In Redis, shared by every instance.
    Shared,
}

/// The rate limiter: in-process windows, and Redis windows shared by every instance when
/// Redis is configured and up (the in-process ones are the fallback while it is down).
pub struct Limiter {
    memory: MemoryLimiter,
    redis: Option<Arc<RedisCounters>>,
    clock: SharedClock,
}

impl Limiter {
    pub fn new(clock: SharedClock, redis: Option<Arc<RedisCounters>>) -> Limiter {
        Limiter {
            memory: MemoryLimiter::default(),
            redis,
            clock,
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// The limited descriptors, first of each counter in the caller's order, with their Redis
    /// keys: the indexes into `limits` and the script's arguments.
    pub fn shared_windows(
        r: &RedisCounters,
        limits: &[RateLimit],
    ) -> (Vec<usize>, Vec<WindowArgs>) {
        let mut idx = Vec::new();
        let mut args: Vec<WindowArgs> = Vec::new();
        for (i, l) in limits.iter().enumerate() {
            if !l.is_limited() {
                continue;
            }
            let key = r.window_key(&l.counter_key());
            if args.iter().any(|a| a.key == key) {
                continue;
            }
            idx.push(i);
            args.push(WindowArgs {
                key,
                rpm: l.rpm,
                tpm: l.tpm,
                tpd: l.tpd,
                parallel: l.parallel,
            });
        }
        (idx, args)
    }

    fn keys(&self, limits: &[RateLimit], which: impl Fn(&RateLimit) -> bool) -> Vec<String> {
        let Some(r) = &self.redis else {
            return Vec::new();
        };
        let mut keys: Vec<String> = limits
            .iter()
            .filter(|l| which(l))
            .map(|l| r.window_key(&l.counter_key()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Counts one request against every descriptor if all of them have room (RPM below limit,
    /// TPM window below limit, a free parallel slot) and takes the slots; otherwise counts and
    /// takes nothing and names the first refusing scope. Every success must be followed by
    /// exactly one [`Limiter::release`] or [`Limiter::refund`] with the returned [`Held`].
    /// In process: with Redis up, calls are admitted by `RedisCounters::admit` (one script
    /// with the budget reservation) and this serves as the fallback.
    pub fn acquire_local(&self, limits: &[RateLimit]) -> Result<Held, Box<RateDenied>> {
        self.memory
            .acquire(limits, self.now())
            .map(|()| Held::Local)
    }

    /// The refusal a Redis window's counts mean for `l`.
    pub fn denied_at(l: &RateLimit, full: WindowFull, now: u64) -> RateDenied {
        denied(
            l,
            full.requests,
            full.tokens,
            full.day_tokens,
            full.in_flight,
            now,
        )
        // Redis judged it full; if its counts read as room here, report the limit spent.
        .or_else(|| denied(l, u64::MAX, u64::MAX, u64::MAX, u64::MAX, now))
        .expect("a limited descriptor")
    }

    /// Gives back the request and the slots an [`Limiter::acquire_local`] (or the shared admission) took, for a call refused
    /// after it (no deployment could take it): a refused pick must not burn the caller's RPM.
    pub fn refund(&self, limits: &[RateLimit], held: Held) {
        let now = self.now();
        match (held, &self.redis) {
            (Held::Shared, Some(r)) => r.refund(
                self.keys(limits, RateLimit::is_limited),
                self.keys(limits, |l| l.parallel.is_some()),
                now,
            ),
            _ => {
                self.memory.refund(limits, now);
                self.memory.release(limits);
            }
        }
    }

    /// Frees the parallel slots of a call that ended (answered, failed, stream finished or
    /// client gone).
    pub fn release(&self, limits: &[RateLimit], held: Held) {
        match (held, &self.redis) {
            (Held::Shared, Some(r)) => {
                let slots = self.keys(limits, |l| l.parallel.is_some());
                if !slots.is_empty() {
                    r.release(slots);
                }
            }
            _ => self.memory.release(limits),
        }
    }

    /// Adds the real token usage of a finished call to every descriptor with a TPM or TPD limit.
    pub fn add_tokens(&self, limits: &[RateLimit], tokens: u64, held: Held) {
        if tokens == 0 {
            return;
        }
        let now = self.now();
        match (held, &self.redis) {
            (Held::Shared, Some(r)) => r.add_tokens(
                self.keys(limits, |l| l.tpm.is_some() || l.tpd.is_some()),
                tokens,
                now,
            ),
            _ => self.memory.add_tokens(limits, tokens, now),
        }
    }

    /// Drops in-process windows that have ended (Redis windows expire by themselves). Returns
    /// how many were dropped.
    pub fn sweep(&self) -> usize {
        self.memory.sweep(self.now())
    }

    /// In-process windows held (tests).
    pub fn windows(&self) -> usize {
        self.memory.window_count()
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
