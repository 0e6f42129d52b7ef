//! Spend ledger: the in-memory spend counters of keys, teams, members and users that budget
//! enforcement reads, with in-flight reservations, and the batched writer that persists them.
//!
//! Invariants:
//! - A counter is seeded once from its database row (the first time the entity is seen) and
//!   from then on holds `db spend + unflushed deltas`; enforcement never reads the database.
//! - [`Ledger::reserve`] checks and reserves every budget of a call under ONE mutex: either all
//!   scopes reserve or none does. A call is admitted when `spend + reserved + estimate <= max`,
//!   or when nothing is in flight on a scope whose `spend < max` (so a lone request is never
//!   refused because of a pessimistic estimate; overshoot is bounded by that one request).
//! - A [`Reservation`] settles exactly once: explicitly with the real cost, or on drop (cost 0).
//!   Settlement adds the same nanos to every scope and to the spend-log row, so after a flush
//!   key, team, member, user spend and `SUM(spend_logs.spend)` agree to the nano.
//! - The flusher writes accumulated deltas with `spend = spend + delta` and the spend-log rows in
//!   ONE write transaction; a failed flush puts everything back for the next attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::app::AppState;
use crate::store::{self, Db, spend::SpendLogRow};

/// An entity whose spend is tracked and can be reset by the budget reset job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpendScope {
    Key(String),
    Team(String),
    Member { team_id: String, user_id: String },
    User(String),
}

/// One budget a call is checked against: the scope, its database spend (used only to seed a
/// counter seen for the first time) and its cap in nanos (None = no cap, tracked only).
#[derive(Debug, Clone)]
pub struct BudgetCheck {
    pub scope: SpendScope,
    pub seed: i64,
    pub max: Option<i64>,
}

/// A refused reservation: the scope over budget and its current spend.
#[derive(Debug, Clone)]
pub struct OverBudget {
    pub scope: SpendScope,
    pub spend: i64,
    pub max: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    spend: i64,
    reserved: i64,
    in_flight: u32,
}

#[derive(Default)]
struct Inner {
    counters: HashMap<SpendScope, Counter>,
    /// Unflushed entity deltas.
    deltas: HashMap<SpendScope, i64>,
    /// Unflushed spend-log rows.
    logs: Vec<SpendLogRow>,
    /// Live reservations (all scopes), for the shutdown drain.
    live: usize,
}

/// In-memory spend counters.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
    /// Serialises flushes (periodic vs final).
    flush_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current spend of a scope if it has been seen (settled, including unflushed deltas).
    pub fn spend(&self, scope: &SpendScope) -> Option<i64> {
        self.lock().counters.get(scope).map(|c| c.spend)
    }

    /// The first scope (in the given order) whose settled spend is already at/over its cap —
    /// the reference's `spend >= max_budget` pre-checks, read from the counters.
    pub fn first_exhausted(&self, checks: &[BudgetCheck]) -> Option<OverBudget> {
        let mut g = self.lock();
        for c in checks {
            let counter = g
                .counters
                .entry(c.scope.clone())
                .or_insert_with(|| Counter {
                    spend: c.seed,
                    ..Default::default()
                });
            if let Some(max) = c.max
                && counter.spend >= max
            {
                return Some(OverBudget {
                    scope: c.scope.clone(),
                    spend: counter.spend,
                    max,
                });
            }
        }
        None
    }

    /// Atomically reserves `estimate` nanos on every scope, or nothing (see module doc).
    pub fn reserve(
        self: &Arc<Self>,
        checks: &[BudgetCheck],
        estimate: i64,
        enforce: bool,
    ) -> Result<Reservation, OverBudget> {
        let estimate = estimate.max(0);
        let mut g = self.lock();
        for c in checks {
            let counter = *g
                .counters
                .entry(c.scope.clone())
                .or_insert_with(|| Counter {
                    spend: c.seed,
                    ..Default::default()
                });
            if !enforce {
                continue;
            }
            if let Some(max) = c.max {
                let fits = counter
                    .spend
                    .saturating_add(counter.reserved)
                    .saturating_add(estimate)
                    <= max;
                let lone = counter.in_flight == 0 && counter.spend < max;
                if !(fits || lone) {
                    return Err(OverBudget {
                        scope: c.scope.clone(),
                        spend: counter.spend,
                        max,
                    });
                }
            }
        }
        let mut scopes: Vec<SpendScope> = checks.iter().map(|c| c.scope.clone()).collect();
        scopes.sort();
        scopes.dedup();
        for s in &scopes {
            let c = g.counters.get_mut(s).expect("seeded above");
            c.reserved = c.reserved.saturating_add(estimate);
            c.in_flight += 1;
        }
        g.live += 1;
        Ok(Reservation {
            ledger: Arc::clone(self),
            scopes,
            estimate,
            done: false,
        })
    }

    fn release(&self, scopes: &[SpendScope], estimate: i64, cost: i64, log: Option<SpendLogRow>) {
        let mut g = self.lock();
        for s in scopes {
            if let Some(c) = g.counters.get_mut(s) {
                c.reserved = (c.reserved - estimate).max(0);
                c.in_flight = c.in_flight.saturating_sub(1);
                c.spend = c.spend.saturating_add(cost);
            }
            if cost != 0 {
                *g.deltas.entry(s.clone()).or_default() += cost;
            }
        }
        if let Some(log) = log {
            g.logs.push(log);
        }
        g.live = g.live.saturating_sub(1);
    }

    /// Number of reservations not yet settled (calls in flight).
    pub fn in_flight(&self) -> usize {
        self.lock().live
    }

    /// Called by the budget reset job after it zeroed `scope`'s spend in the database: the
    /// counter becomes 0 (reservations in flight stay reserved) and unflushed deltas of the old
    /// period are dropped for that entity column (spend-log rows are kept: they are history).
    pub async fn on_reset(&self, scope: &SpendScope) {
        self.on_spend_set(scope, 0);
    }

    /// For any management write that SETS an entity's spend column (reset_spend, a key
    /// update with `spend`, a member removed and re-added): the counter becomes `spend` (plus
    /// what stays reserved in flight) and unflushed deltas of that entity column are dropped.
    pub fn on_spend_set(&self, scope: &SpendScope, spend: i64) {
        let mut g = self.lock();
        g.counters.entry(scope.clone()).or_default().spend = spend;
        g.deltas.remove(scope);
    }

    /// Writes every accumulated delta and spend-log row in one write transaction.
    pub async fn flush(&self, db: &Db) -> store::Result<()> {
        let _one = self.flush_lock.lock().await;
        let (deltas, logs) = {
            let mut g = self.lock();
            (std::mem::take(&mut g.deltas), std::mem::take(&mut g.logs))
        };
        if deltas.is_empty() && logs.is_empty() {
            return Ok(());
        }
        match write_batch(db, &deltas, &logs).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Nothing was committed: put it all back for the next attempt.
                let mut g = self.lock();
                for (s, d) in deltas {
                    *g.deltas.entry(s).or_default() += d;
                }
                let newer = std::mem::replace(&mut g.logs, logs);
                g.logs.extend(newer);
                Err(e)
            }
        }
    }
}

async fn write_batch(
    db: &Db,
    deltas: &HashMap<SpendScope, i64>,
    logs: &[SpendLogRow],
) -> store::Result<()> {
    use store::spend::*;
    // Sorted order: concurrent flushers of several instances lock rows in the same order.
    let mut items: Vec<(&SpendScope, i64)> = deltas
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(s, d)| (s, *d))
        .collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = db.begin_write().await?;
    for (scope, d) in items {
        match scope {
            SpendScope::Key(t) => add_key_spend(&mut h, t, d).await?,
            SpendScope::Team(t) => add_team_spend(&mut h, t, d).await?,
            SpendScope::Member { team_id, user_id } => {
                add_member_spend(&mut h, team_id, user_id, d).await?
            }
            SpendScope::User(u) => add_user_spend(&mut h, u, d).await?,
        }
    }
    for l in logs {
        insert_log(&mut h, l).await?;
    }
    h.commit().await
}

/// Budget held for one call in flight. Settles exactly once (drop = released unbilled).
pub struct Reservation {
    ledger: Arc<Ledger>,
    scopes: Vec<SpendScope>,
    estimate: i64,
    done: bool,
}

impl Reservation {
    /// Releases the reservation and books the real cost on every scope plus the log row.
    pub fn settle(mut self, cost: i64, log: SpendLogRow) {
        self.done = true;
        self.ledger
            .release(&self.scopes, self.estimate, cost.max(0), Some(log));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.ledger.release(&self.scopes, self.estimate, 0, None);
        }
    }
}

/// The batched spend writer: flushes every `batch_write_interval`; on shutdown waits for the
/// calls still in flight to settle (bounded), then does a final flush so SIGTERM loses nothing.
pub async fn run_flusher(state: AppState) {
    let every = state.settings.batch_write_interval;
    let ledger = state.ledger.clone();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {
                if let Err(e) = ledger.flush(&state.db).await {
                    tracing::warn!(error = %e, "spend flush failed; will retry");
                }
            }
        }
    }
    // Graceful shutdown: the server finishes in-flight requests (streams included) after the
    // token is cancelled; keep flushing until no reservation has been live for a short while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut idle_since: Option<tokio::time::Instant> = None;
    while tokio::time::Instant::now() < deadline {
        let _ = ledger.flush(&state.db).await;
        if ledger.in_flight() == 0 {
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= Duration::from_millis(200) {
                break;
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for attempt in 0..5 {
        match ledger.flush(&state.db).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, attempt, "final spend flush failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(scope: SpendScope, max: Option<i64>) -> BudgetCheck {
        BudgetCheck {
            scope,
            seed: 0,
            max,
        }
    }

    fn log(id: &str, spend: i64) -> SpendLogRow {
        let now = chrono::Utc::now();
        SpendLogRow {
            request_id: id.into(),
            call_type: "completion".into(),
            api_key: String::new(),
            spend,
            total_tokens: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            start_time: now,
            end_time: now,
            model: String::new(),
            model_id: None,
            model_group: None,
            custom_llm_provider: None,
            api_base: None,
            user_id: None,
            team_id: None,
            end_user: None,
            status: "success".into(),
            metadata: sqlx::types::Json(serde_json::json!({})),
        }
    }

    #[test]
    fn reservations_are_all_or_nothing() {
        let l = Arc::new(Ledger::new());
        let key = SpendScope::Key("k".into());
        let team = SpendScope::Team("t".into());
        let checks = [check(key.clone(), Some(100)), check(team.clone(), Some(50))];
        let a = l.reserve(&checks, 30, true).unwrap();
        // team: 0 + 30 + 30 > 50 and a call is in flight → refused; key must not keep a hold
        let e = l.reserve(&checks, 30, true).err().unwrap();
        assert_eq!(e.scope, team);
        a.settle(20, log("a", 20));
        assert_eq!(l.spend(&key), Some(20));
        assert_eq!(l.spend(&team), Some(20));
        let b = l.reserve(&checks, 30, true).unwrap();
        drop(b);
        assert_eq!(l.spend(&team), Some(20));
        assert_eq!(l.in_flight(), 0);
        // lone request with a pessimistic estimate is admitted while spend < max
        let c = l.reserve(&checks, 1_000, true).unwrap();
        c.settle(40, log("c", 40));
        assert!(l.first_exhausted(&checks).is_some());
        assert!(l.reserve(&checks, 1, true).is_err());
    }

    #[tokio::test]
    async fn reset_keeps_in_flight_and_drops_old_deltas() {
        let l = Arc::new(Ledger::new());
        let team = SpendScope::Team("t".into());
        let checks = [check(team.clone(), Some(100))];
        l.reserve(&checks, 10, true)
            .unwrap()
            .settle(60, log("x", 60));
        let r = l.reserve(&checks, 10, true).unwrap();
        l.on_reset(&team).await;
        assert_eq!(l.spend(&team), Some(0));
        assert!(!l.lock().deltas.contains_key(&team));
        assert_eq!(l.lock().logs.len(), 1);
        r.settle(5, log("y", 5));
        assert_eq!(l.spend(&team), Some(5));
        assert_eq!(l.lock().deltas.get(&team), Some(&5));
    }
}
