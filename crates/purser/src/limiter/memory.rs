//! In-process fixed-window counters (one instance). Each `scope:id` has its own mutex inside a
//! DashMap; a call locks the counters it needs in sorted key order, checks all, then increments
//! all, which makes the multi-scope decision atomic without a global lock.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::{DAY_SECS, RateDenied, RateLimit, WINDOW_SECS};

#[derive(Debug, Default)]
struct Window {
    start: u64,
    requests: u64,
    tokens: u64,
    /// Start of the UTC day `day_tokens` counts (`tpd_limit`).
    day_start: u64,
    day_tokens: u64,
    /// Calls holding a parallel slot; not a window count, so rolling keeps it.
    in_flight: u64,
}

impl Window {
    /// Rolls the window forward when `now` is past it.
    fn roll(&mut self, now: u64) {
        let start = now - now % WINDOW_SECS;
        if self.start != start {
            self.start = start;
            self.requests = 0;
            self.tokens = 0;
        }
        let day = now - now % DAY_SECS;
        if self.day_start != day {
            self.day_start = day;
            self.day_tokens = 0;
        }
    }
}

#[derive(Debug, Default)]
pub struct MemoryLimiter {
    windows: DashMap<String, Arc<Mutex<Window>>>,
}

impl MemoryLimiter {
    fn window(&self, key: String) -> Arc<Mutex<Window>> {
        self.windows.entry(key).or_default().clone()
    }

    pub fn acquire(&self, limits: &[RateLimit], now: u64) -> Result<(), Box<RateDenied>> {
        let mut active: Vec<(&RateLimit, String)> = limits
            .iter()
            .filter(|l| l.is_limited())
            .map(|l| (l, l.counter_key()))
            .collect();
        if active.is_empty() {
            return Ok(());
        }
        // Sorted lock order: no deadlock between calls sharing scopes.
        active.sort_by(|a, b| a.1.cmp(&b.1));
        active.dedup_by(|a, b| a.1 == b.1);
        let cells: Vec<Arc<Mutex<Window>>> =
            active.iter().map(|(_, k)| self.window(k.clone())).collect();
        let mut guards: Vec<_> = cells
            .iter()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        // Report refusals in the caller's descriptor order (key before team before member…).
        for l in limits {
            let Some(i) = active.iter().position(|(a, _)| std::ptr::eq(*a, l)) else {
                continue;
            };
            let w = &mut guards[i];
            w.roll(now);
            if let Some(d) = super::denied(l, w.requests, w.tokens, w.day_tokens, w.in_flight, now)
            {
                return Err(Box::new(d));
            }
        }
        for ((l, _), w) in active.iter().zip(guards.iter_mut()) {
            w.roll(now);
            w.requests += 1;
            if l.parallel.is_some() {
                w.in_flight += 1;
            }
        }
        Ok(())
    }

    /// Frees the slots [`MemoryLimiter::acquire`] took for `limits`.
    pub fn release(&self, limits: &[RateLimit]) {
        let mut keys: Vec<String> = limits
            .iter()
            .filter(|l| l.parallel.is_some())
            .map(RateLimit::counter_key)
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if let Some(cell) = self.windows.get(&k).map(|c| c.clone()) {
                let mut w = cell.lock().unwrap_or_else(|p| p.into_inner());
                w.in_flight = w.in_flight.saturating_sub(1);
            }
        }
    }

    pub fn refund(&self, limits: &[RateLimit], now: u64) {
        let mut keys: Vec<String> = limits
            .iter()
            .filter(|l| l.is_limited())
            .map(RateLimit::counter_key)
            .collect();
        keys.sort();
        keys.dedup();
        let start = now - now % WINDOW_SECS;
        for k in keys {
            if let Some(cell) = self.windows.get(&k).map(|c| c.clone()) {
                let mut w = cell.lock().unwrap_or_else(|p| p.into_inner());
                // A window that rolled over since the acquire no longer holds that request.
                if w.start == start {
                    w.requests = w.requests.saturating_sub(1);
                }
            }
        }
    }

    /// Removes windows that ended before the current one (a TPD count lives until its day ends). A window is only removed while the
    /// map is its sole holder (checked under the shard lock, where `window()` clones it), so no
    /// call in progress can count into a removed window.
    pub fn sweep(&self, now: u64) -> usize {
        let current = now - now % WINDOW_SECS;
        let today = now - now % DAY_SECS;
        let before = self.windows.len();
        self.windows.retain(|_, cell| {
            if Arc::strong_count(cell) > 1 {
                return true;
            }
            let w = cell.lock().unwrap_or_else(|p| p.into_inner());
            w.start >= current || w.in_flight > 0 || (w.day_tokens > 0 && w.day_start >= today)
        });
        before.saturating_sub(self.windows.len())
    }

    pub fn window_count(&self) -> usize {
        self.windows.len()
    }

    pub fn add_tokens(&self, limits: &[RateLimit], tokens: u64, now: u64) {
        if tokens == 0 {
            return;
        }
        for l in limits.iter().filter(|l| l.tpm.is_some() || l.tpd.is_some()) {
            let cell = self.window(l.counter_key());
            let mut w = cell.lock().unwrap_or_else(|p| p.into_inner());
            w.roll(now);
            w.tokens = w.tokens.saturating_add(tokens);
            w.day_tokens = w.day_tokens.saturating_add(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::LimitKind;
    use super::*;

    fn lim(scope: &'static str, id: &str, rpm: Option<u64>, tpm: Option<u64>) -> RateLimit {
        RateLimit {
            scope,
            id: id.into(),
            label: None,
            rpm,
            tpm,
            tpd: None,
            parallel: None,
        }
    }

    #[test]
    fn parallel_slots_are_held_until_released() {
        let m = MemoryLimiter::default();
        let mut key = lim("api_key", "k", None, None);
        key.parallel = Some(2);
        let team = lim("team", "t", Some(100), None);
        let both = [key, team];
        assert!(m.acquire(&both, 0).is_ok());
        assert!(m.acquire(&both, 0).is_ok());
        let d = m.acquire(&both, 1).unwrap_err();
        assert_eq!(
            (d.scope, d.kind, d.limit_parallel),
            ("api_key", LimitKind::Parallel, Some(2))
        );
        // A refused call took nothing: the team counted two requests, not three.
        assert_eq!(m.windows.get("team:t").unwrap().lock().unwrap().requests, 2);
        // Slots survive window rolls and sweeps while held.
        assert_eq!(
            m.sweep(200),
            1,
            "the team's ended window goes, the held slots stay"
        );
        assert!(m.acquire(&both, 200).is_err());
        m.release(&both);
        assert!(m.acquire(&both, 201).is_ok());
        m.release(&both);
        m.release(&both);
        m.release(&both);
        assert!(
            m.acquire(&both, 202).is_ok(),
            "extra releases never go below zero"
        );
    }

    #[test]
    fn all_or_nothing_and_windows() {
        let m = MemoryLimiter::default();
        let key = lim("api_key", "k", Some(3), None);
        let team = lim("team", "t", Some(2), None);
        let both = [key.clone(), team.clone()];
        assert!(m.acquire(&both, 120).is_ok());
        assert!(m.acquire(&both, 121).is_ok());
        let d = m.acquire(&both, 122).unwrap_err();
        assert_eq!((d.scope, d.kind), ("team", LimitKind::Requests));
        assert_eq!(d.remaining_requests, Some(0));
        assert_eq!(d.retry_after, 58);
        // the refused call counted nothing on the key: one more key-only call fits
        assert!(m.acquire(std::slice::from_ref(&key), 123).is_ok());
        assert!(m.acquire(std::slice::from_ref(&key), 124).is_err());
        // next window
        assert!(m.acquire(&both, 180).is_ok());
    }

    #[test]
    fn refund_gives_back_the_request() {
        let m = MemoryLimiter::default();
        let l = [lim("api_key", "k", Some(1), None)];
        assert!(m.acquire(&l, 10).is_ok());
        assert!(m.acquire(&l, 11).is_err());
        m.refund(&l, 12);
        assert!(m.acquire(&l, 13).is_ok());
        // a refund after the window rolled does not take from the new window
        m.refund(&l, 61);
        assert!(m.acquire(&l, 62).is_ok());
        assert!(m.acquire(&l, 63).is_err());
    }

    #[test]
    fn ended_windows_are_swept() {
        let m = MemoryLimiter::default();
        for i in 0..100 {
            let l = [lim("api_key", &format!("k{i}"), Some(5), None)];
            m.acquire(&l, 30).unwrap();
        }
        assert_eq!(m.sweep(59), 0, "current windows stay");
        let live = [lim("api_key", "live", Some(5), None)];
        m.acquire(&live, 60).unwrap();
        assert_eq!(m.sweep(61), 100);
        assert_eq!(m.window_count(), 1);
    }

    #[test]
    fn tpd_counts_a_utc_day_across_minute_windows() {
        let m = MemoryLimiter::default();
        let mut key = lim("api_key", "k", None, Some(1_000));
        key.tpd = Some(150);
        let l = [key];
        let noon = 10 * DAY_SECS + 12 * 3600;
        assert!(m.acquire(&l, noon).is_ok());
        m.add_tokens(&l, 100, noon);
        // Minutes later the TPM window is new, the day still counts 100.
        assert!(m.acquire(&l, noon + 120).is_ok());
        m.add_tokens(&l, 60, noon + 120);
        let d = m.acquire(&l, noon + 600).unwrap_err();
        assert_eq!(d.kind, LimitKind::TokensPerDay);
        assert_eq!(d.limit_tokens_per_day, Some(150));
        assert_eq!(d.remaining_tokens_per_day, Some(0));
        assert_eq!(
            d.retry_after,
            12 * 3600 - 600,
            "until the next UTC midnight"
        );
        assert_eq!(m.sweep(noon + 900), 0, "the day's count survives sweeps");
        assert!(
            m.acquire(&l, 11 * DAY_SECS).is_ok(),
            "a new day starts at zero"
        );
        assert_eq!(
            m.sweep(11 * DAY_SECS + 120),
            1,
            "an ended day's window goes"
        );
    }

    #[test]
    fn tpm_refuses_once_full() {
        let m = MemoryLimiter::default();
        let l = [lim("user", "u", None, Some(100))];
        assert!(m.acquire(&l, 0).is_ok());
        m.add_tokens(&l, 99, 1);
        assert!(m.acquire(&l, 2).is_ok());
        m.add_tokens(&l, 50, 3);
        let d = m.acquire(&l, 4).unwrap_err();
        assert_eq!(d.kind, LimitKind::Tokens);
        assert_eq!(d.remaining_tokens, Some(0));
        assert!(m.acquire(&l, 60).is_ok());
    }
}
