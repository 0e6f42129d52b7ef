//! Several instances serving one organisation: the change bus between them (PostgreSQL
//! LISTEN/NOTIFY, `bus`) and the counters they share (Redis, `counters`). Both are optional and
//! chosen at start-up: SQLite alone runs neither; PostgreSQL runs the bus; `REDIS_URL` (or
//! `router_settings.redis_*`) adds shared counters. Nothing here knows service/: payloads and
//! counter keys are made by the callers.

pub mod bus;
pub mod counters;

use std::sync::Arc;

pub use bus::Bus;
pub use counters::RedisCounters;

/// What this instance shares with the others.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub bus: Option<Arc<Bus>>,
    pub redis: Option<Arc<RedisCounters>>,
}

impl Cluster {
    /// Redis counters that are up right now (None: use the in-process counters).
    pub fn shared(&self) -> Option<&Arc<RedisCounters>> {
        self.redis.as_ref().filter(|r| {
            let up = r.up();
            if !up {
                r.fell_back();
            }
            up
        })
    }

    /// The readiness view: backend of counters and whether it is up.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "counters": match &self.redis {
                None => "in_process",
                Some(r) if r.up() => "redis",
                Some(_) => "in_process_fallback",
            },
            "redis_fallbacks": self.redis.as_ref().map(|r| r.fallbacks.load(std::sync::atomic::Ordering::Relaxed)),
            "change_bus": match &self.bus {
                None => "none",
                Some(b) if b.listening() => "listening",
                Some(_) => "reconnecting",
            },
            "peers": self.bus.as_ref().map(|b| b.peers().len()),
        })
    }
}
