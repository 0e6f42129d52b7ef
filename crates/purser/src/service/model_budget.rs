//! Spend windows beside the main budgets. Per-model budgets (`model_max_budget`: `{model:
//! {budget_limit, time_period}}`) of keys, teams, users and team members, as the reference's
//! model-budget limiter enforces them: each (scope, entity, budget model, period) has its own
//! window, opened by the first call that counts in it and closed one `time_period` later. And
//! the extra budget windows of keys and teams (`budget_limits`): calendar windows that end at
//! the entry's `reset_at`, seeded from the spend log when first opened. A call is refused with
//! `budget_exceeded` once a window's spend has reached its limit; other windows go on.
//!
//! Invariants: a call reserves its estimate on every window it is checked against, all or none
//! under one lock, so a concurrent burst overshoots by no more than what the estimates miss (the
//! same rule as the main ledger: a call fits if spend + reserved + estimate stays within the
//! limit, or if it is alone and the limit is not yet reached); a settled call moves its
//! reservation to its real cost, a dropped one gives it back. Windows live in this instance's
//! memory (a restart opens new windows, as the reference's do without Redis); ended windows
//! with nothing in flight are swept. With Redis the same windows are also decided in the
//! call's one admission script (`cluster::counters`), shared by every instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use purser_core::budget::BudgetDuration;
use purser_core::money::Nanos;
use serde_json::Value;

use crate::clock::SharedClock;
use crate::cluster::RedisCounters;
use crate::cluster::counters::SpendWindowArgs;

/// One entry of a `model_max_budget` map, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBudget {
    /// The map key that matched (the counter belongs to it, not to the requested spelling).
    pub budget_model: String,
    /// `budget_limit` in nano-USD.
    pub max: i64,
    /// `time_period` as written (part of the counter's identity: a new period opens a new window).
    pub period: String,
    pub duration: BudgetDuration,
}

/// Reads one map entry: `budget_limit` (or `max_budget`) a non-negative finite number,
/// `time_period` (or `budget_duration`) a budget duration. An entry without a period is refused,
/// because the reference skips it (it could never be enforced).
fn entry(model: &str, v: &Value) -> Result<ModelBudget, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{model} must be an object with budget_limit and time_period"))?;
    let limit = obj
        .get("budget_limit")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("max_budget").filter(|v| !v.is_null()))
        .ok_or_else(|| format!("{model} has no budget_limit"))?;
    let max = limit
        .as_f64()
        .and_then(|usd| Nanos::from_usd(usd).ok())
        .ok_or_else(|| format!("{model}: budget_limit must be a non-negative finite number"))?;
    let period = obj
        .get("time_period")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("budget_duration").filter(|v| !v.is_null()))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{model} has no time_period (e.g. \"1d\", \"30d\")"))?;
    let duration = BudgetDuration::parse(period).map_err(|e| format!("{model}: {e}"))?;
    Ok(ModelBudget {
        budget_model: model.to_string(),
        max: max.0,
        period: period.to_string(),
        duration,
    })
}

/// Validates a whole `model_max_budget` value (`null` and `{}` pass); the error names the field.
pub fn validate(field: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(m, e)| entry(m, e).map(|_| ()))
            .map_err(|e| format!("{field}: {e}")),
        other => Err(format!(
            "{field} must map model names to {{\"budget_limit\": <USD>, \"time_period\": \"1d\"}}, got {other}"
        )),
    }
}

/// The entry of `map` that governs a call of `model`: the model as called, else the name without
/// its `provider/` prefix (the reference's candidate order). Malformed entries (only possible
/// through a direct database edit: writes are validated) are skipped.
pub fn resolve(map: &Value, model: &str) -> Option<ModelBudget> {
    let map = map.as_object().filter(|m| !m.is_empty())?;
    let bare = model.rsplit('/').next().unwrap_or(model);
    [model, bare]
        .into_iter()
        .find_map(|c| map.get(c).and_then(|v| entry(c, v).ok()))
}

/// One window a call is checked against: its counter id, its limit and what a refusal says.
#[derive(Debug, Clone)]
pub struct ModelBudgetCheck {
    pub counter: String,
    /// Limit in nano-USD.
    pub max: i64,
    /// Unix seconds at which a window opened by this call closes.
    pub ends_at: i64,
    /// A calendar window (`budget_limits`): a window held with another end is reopened (its
    /// schedule changed). A `model_max_budget` window keeps the end it opened with.
    pub fixed_end: bool,
    /// Spend a newly opened window starts from (`budget_limits`: what the spend log already
    /// holds for it; per-model windows start at zero).
    pub seed: i64,
    pub message: String,
    /// Append `Spend=$…, Limit=$…` to the message (the reference's `budget_limits` wording).
    pub show_spend: bool,
}

impl ModelBudgetCheck {
    /// A `model_max_budget` window; `scope` and `id` name the entity (`key` + hash, `team`,
    /// `user`, `member` + `team:user`).
    pub fn new(
        scope: &str,
        id: &str,
        budget: ModelBudget,
        message: String,
        now: DateTime<Utc>,
    ) -> ModelBudgetCheck {
        ModelBudgetCheck {
            counter: format!("{scope}:{id}:{}:{}", budget.budget_model, budget.period),
            max: budget.max,
            ends_at: budget.duration.after(now).timestamp(),
            fixed_end: false,
            seed: 0,
            message,
            show_spend: false,
        }
    }

    /// The refusal's message for a window holding `spend`; `usd` renders an amount.
    pub fn refusal(&self, spend: i64, usd: impl Fn(i64) -> String) -> String {
        if !self.show_spend {
            return self.message.clone();
        }
        format!(
            "{} Spend=${}, Limit=${}",
            self.message,
            usd(spend),
            usd(self.max)
        )
    }
}

/// A refusal: which check, and the window's spend.
#[derive(Debug, Clone)]
pub struct ModelOverBudget {
    pub check: ModelBudgetCheck,
    pub spend: i64,
}

#[derive(Debug)]
struct Window {
    /// Unix seconds at which the window closes.
    ends: i64,
    spend: i64,
    reserved: i64,
    in_flight: u32,
}

/// The windows of every per-model budget seen by this instance.
pub struct ModelBudgets {
    windows: Mutex<HashMap<String, Window>>,
    clock: SharedClock,
}

impl ModelBudgets {
    pub fn new(clock: SharedClock) -> ModelBudgets {
        ModelBudgets {
            windows: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `estimate` nanos on every check's window, or nothing and the first refusal.
    pub fn reserve(
        self: &Arc<Self>,
        checks: Vec<ModelBudgetCheck>,
        estimate: i64,
    ) -> Result<ModelReservation, Box<ModelOverBudget>> {
        let estimate = estimate.max(0);
        let now = self.now();
        let mut g = self.lock();
        for c in &checks {
            let w = window(&mut g, c, now);
            // A reached limit refuses even a call estimated at nothing (the reference's `>=`).
            let fits = w.spend.saturating_add(w.reserved).saturating_add(estimate) <= c.max;
            let alone = w.in_flight == 0;
            if w.spend >= c.max || !(fits || alone) {
                return Err(Box::new(ModelOverBudget {
                    check: c.clone(),
                    spend: w.spend,
                }));
            }
        }
        for c in &checks {
            let w = window(&mut g, c, now);
            w.reserved = w.reserved.saturating_add(estimate);
            w.in_flight += 1;
        }
        Ok(ModelReservation {
            budgets: Arc::clone(self),
            counters: checks.into_iter().map(|c| c.counter).collect(),
            estimate,
            done: false,
            shared: None,
        })
    }

    /// True when `c`'s window is open (so a seed would not be used).
    pub fn is_open(&self, c: &ModelBudgetCheck) -> bool {
        let now = self.now().timestamp();
        self.lock()
            .get(&c.counter)
            .is_some_and(|w| w.ends > now && (!c.fixed_end || w.ends == c.ends_at))
    }

    /// The current window's spend of a counter (0 when none is open).
    pub fn spend(&self, counter: &str) -> i64 {
        let now = self.now().timestamp();
        self.lock()
            .get(counter)
            .filter(|w| w.ends > now)
            .map_or(0, |w| w.spend)
    }

    fn release(&self, counters: &[String], estimate: i64, cost: i64) {
        let now = self.now().timestamp();
        let mut g = self.lock();
        for c in counters {
            if let Some(w) = g.get_mut(c) {
                w.reserved = (w.reserved - estimate).max(0);
                w.in_flight = w.in_flight.saturating_sub(1);
                // A call that outlived its window counts in the window it was admitted to,
                // which is gone; the new window starts clean.
                if w.ends > now {
                    w.spend = w.spend.saturating_add(cost);
                }
            }
        }
    }

    /// Drops closed windows with nothing in flight. Returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.now().timestamp();
        let mut g = self.lock();
        let before = g.len();
        g.retain(|_, w| w.ends > now || w.in_flight > 0);
        before - g.len()
    }

    /// Windows held (tests).
    pub fn windows(&self) -> usize {
        self.lock().len()
    }
}

/// The check's window, opened (or reopened after it closed, or when its schedule changed) at
/// `now`.
fn window<'a>(
    g: &'a mut HashMap<String, Window>,
    c: &ModelBudgetCheck,
    now: DateTime<Utc>,
) -> &'a mut Window {
    let w = g.entry(c.counter.clone()).or_insert(Window {
        ends: c.ends_at,
        spend: c.seed,
        reserved: 0,
        in_flight: 0,
    });
    if w.ends <= now.timestamp() || (c.fixed_end && w.ends != c.ends_at) {
        w.ends = c.ends_at;
        w.spend = c.seed;
    }
    w
}

/// A call's hold on its per-model windows: settle it with the real cost, or drop it.
pub struct ModelReservation {
    budgets: Arc<ModelBudgets>,
    counters: Vec<String>,
    estimate: i64,
    done: bool,
    /// The same hold on the windows every instance shares (Redis), and their keys.
    shared: Option<(Arc<RedisCounters>, Vec<String>)>,
}

impl ModelReservation {
    /// The same hold is on the shared windows `keys`: settled there too.
    pub fn share(&mut self, r: Arc<RedisCounters>, keys: Vec<String>) {
        self.shared = Some((r, keys));
    }

    pub fn settle(mut self, cost: i64) {
        self.done = true;
        self.budgets
            .release(&self.counters, self.estimate, cost.max(0));
        if let Some((r, keys)) = self.shared.take() {
            r.settle(keys, self.estimate, cost.max(0));
        }
    }
}

impl Drop for ModelReservation {
    fn drop(&mut self) {
        if !self.done {
            self.budgets.release(&self.counters, self.estimate, 0);
            if let Some((r, keys)) = self.shared.take() {
                r.settle(keys, self.estimate, 0);
            }
        }
    }
}

impl ModelBudgetCheck {
    /// The script's view of this window on the shared counters.
    pub fn shared(&self, r: &RedisCounters) -> SpendWindowArgs {
        SpendWindowArgs {
            key: r.spend_window_key(&self.counter),
            max: self.max,
            ends_at: self.ends_at,
            fixed_end: self.fixed_end,
            seed: self.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use serde_json::json;

    fn usd(n: f64) -> i64 {
        Nanos::from_usd(n).unwrap().0
    }

    #[test]
    fn entries_validate_and_resolve() {
        let m = json!({"gpt-4o": {"budget_limit": 1.5, "time_period": "1d"}});
        assert!(validate("model_max_budget", &m).is_ok());
        assert!(validate("model_max_budget", &json!({})).is_ok());
        let r = resolve(&m, "openai/gpt-4o").unwrap();
        assert_eq!((r.budget_model.as_str(), r.max), ("gpt-4o", usd(1.5)));
        assert!(resolve(&m, "gpt-4o-mini").is_none());
        let aliases = json!({"m": {"max_budget": 2, "budget_duration": "30d"}});
        assert_eq!(resolve(&aliases, "m").unwrap().period, "30d");
        for bad in [
            json!({"m": {"budget_limit": 1}}),
            json!({"m": {"time_period": "1d"}}),
            json!({"m": {"budget_limit": -1, "time_period": "1d"}}),
            json!({"m": {"budget_limit": 1, "time_period": "soon"}}),
            json!({"m": 3}),
            json!(["m"]),
        ] {
            let e = validate("model_max_budget", &bad).unwrap_err();
            assert!(e.starts_with("model_max_budget"), "{e}");
        }
    }

    #[test]
    fn windows_refuse_once_spent_and_reopen_after_their_period() {
        let clock = ManualClock::new("2026-12-01T10:00:00Z".parse().unwrap());
        let b = Arc::new(ModelBudgets::new(clock.clone()));
        let budget = resolve(
            &json!({"m": {"budget_limit": 1.0, "time_period": "1h"}}),
            "m",
        )
        .unwrap();
        let check = || {
            vec![ModelBudgetCheck::new(
                "key",
                "k",
                budget.clone(),
                "over".into(),
                clock.now(),
            )]
        };
        // A burst: the first fits alone, the next ones only while reservations fit.
        let a = b.reserve(check(), usd(0.6)).unwrap();
        assert!(b.reserve(check(), usd(0.6)).is_err(), "0.6 + 0.6 > 1.0");
        a.settle(usd(0.7));
        assert_eq!(b.spend(&check()[0].counter), usd(0.7));
        let c = b.reserve(check(), usd(0.2)).unwrap();
        drop(c); // a call that never settles gives its reservation back
        b.reserve(check(), usd(0.5)).unwrap().settle(usd(0.5));
        let Err(over) = b.reserve(check(), 0) else {
            panic!("the window is spent");
        };
        assert_eq!(over.spend, usd(1.2));
        // Other models and scopes are untouched.
        let other = resolve(
            &json!({"n": {"budget_limit": 1.0, "time_period": "1h"}}),
            "n",
        )
        .unwrap();
        assert!(
            b.reserve(
                vec![ModelBudgetCheck::new(
                    "key",
                    "k",
                    other,
                    "x".into(),
                    clock.now()
                )],
                0
            )
            .is_ok()
        );
        clock.advance(std::time::Duration::from_secs(3600));
        assert_eq!(b.sweep(), 2, "both windows closed");
        assert!(
            b.reserve(check(), usd(0.9)).is_ok(),
            "a new window starts at zero"
        );
    }

    #[test]
    fn calendar_windows_start_from_their_seed_and_follow_their_schedule() {
        let clock = ManualClock::new("2026-12-01T10:00:00Z".parse().unwrap());
        let b = Arc::new(ModelBudgets::new(clock.clone()));
        let day_end = "2026-12-02T00:00:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp();
        let check = |ends_at: i64, seed: i64| ModelBudgetCheck {
            counter: "window:team:t:1d".into(),
            max: usd(1.0),
            ends_at,
            fixed_end: true,
            seed,
            message: "ExceededBudget: Team=t over 1d budget.".into(),
            show_spend: true,
        };
        assert!(!b.is_open(&check(day_end, 0)));
        // Seeded from the spend log: already spent, refused at once.
        let Err(o) = b.reserve(vec![check(day_end, usd(1.0))], 0) else {
            panic!("a spent window refuses");
        };
        assert_eq!(
            o.check.refusal(o.spend, |n| Nanos(n).to_usd().to_string()),
            "ExceededBudget: Team=t over 1d budget. Spend=$1, Limit=$1"
        );
        assert!(b.is_open(&check(day_end, 0)));
        // The next day's window starts from its own seed.
        clock.advance(std::time::Duration::from_secs(14 * 3600));
        let next = day_end + 86_400;
        assert!(!b.is_open(&check(next, 0)));
        b.reserve(vec![check(next, usd(0.25))], 0)
            .unwrap()
            .settle(usd(0.5));
        assert_eq!(b.spend("window:team:t:1d"), usd(0.75));
    }
}
