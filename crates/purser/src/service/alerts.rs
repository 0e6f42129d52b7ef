//! Budget alerts (the reference's `budget_alerts` with its `WebhookEvent` body): a key's or a
//! team's spend reaching its `soft_budget`, and budget-exceeded refusals, recorded and sent to
//! the configured webhook.
//!
//! Invariants:
//! - A soft-budget crossing is detected where spend is settled, never by polling, and recorded
//!   exactly once per budget period per entity, however many calls settle at once and however
//!   many instances share the database: the compare-and-set on `soft_budget_cooldown` (FALSE →
//!   TRUE) decides who records it (an audit row, a log line, a `soft_budget_crossed` event); the
//!   reset job clears the column with the period's spend. An in-memory claim per entity and
//!   period keeps a burst on one instance to one such statement. `soft_budget` never refuses.
//! - A `budget_crossed` event (a `budget_exceeded` refusal) is sent at most once per entity per
//!   `alerting_args.budget_alert_ttl` on this instance (the reference keeps the same marker in
//!   its per-instance cache), so a refused burst does not flood the hook.
//! - Delivery never blocks or slows a request: events go into a bounded queue drained by one
//!   background sender (timeouts, two retries with backoff); a full queue drops the event,
//!   counted and logged. The webhook URL may carry a token: only its scheme and host are logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, WebhookSettings};
use crate::clock::SharedClock;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::spend::SpendScope;
use crate::service::write::Write;
use crate::store::keys::KeyRow;

/// Events waiting for the sender; past this, new events are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 1_024;
/// Whole-request timeout of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Waits before the retries of a failed delivery (so three attempts in all).
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];
/// How long the sender keeps delivering queued events once the server has stopped.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Dedup markers kept before expired ones are swept.
const MARKER_SWEEP_AT: usize = 10_000;
/// Who the audit log names for a crossing the gateway recorded itself.
pub const SYSTEM_ACTOR: &str = "purser_budget_alerts";

/// The reference's `WebhookEvent` (its `CallInfo` plus `event`, `event_group`,
/// `event_message`); money in dollars, `token` the key's hash (never the raw key).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WebhookEvent {
    pub spend: f64,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub token: Option<String>,
    pub customer_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub user_email: Option<String>,
    pub key_alias: Option<String>,
    pub organization_id: Option<String>,
    pub projected_exceeded_date: Option<String>,
    pub projected_spend: Option<f64>,
    pub event: &'static str,
    pub event_group: &'static str,
    pub event_message: String,
}

/// A soft budget a settled call may have reached while its cooldown was off: the entity's scope,
/// its soft budget in nanos, the budget period as the call saw it, and the event to send with the
/// spend filled in. `key` is the calling key (the audit row's `changed_by_api_key`).
#[derive(Debug, Clone)]
pub struct SoftBudgetWatch {
    pub scope: SpendScope,
    pub soft: i64,
    /// The period's end (`budget_reset_at`, unix seconds), None for a budget without period.
    pub period: Option<i64>,
    pub event: WebhookEvent,
    pub key: Option<Arc<KeyRow>>,
}

/// Delivery counts (readiness body, logs, tests).
#[derive(Debug, Default)]
pub struct AlertStats {
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    /// Events given up after every attempt failed, or refused by the hook (4xx).
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    /// Events dropped because the queue was full (or the sender had stopped).
    pub dropped: AtomicU64,
    /// Soft-budget crossings this instance recorded (won the compare-and-set).
    pub soft_budget_crossings: AtomicU64,
}

struct Webhook {
    tx: mpsc::Sender<WebhookEvent>,
    url: reqwest::Url,
    budget_alerts: bool,
}

/// Budget alerting state of one instance.
pub struct Alerts {
    webhook: Option<Webhook>,
    receiver: Mutex<Option<mpsc::Receiver<WebhookEvent>>>,
    ttl: Duration,
    clock: SharedClock,
    /// `budget_crossed:<group>:<id>` → unix seconds until which it is not sent again.
    crossed: Mutex<HashMap<String, i64>>,
    /// Soft budgets this instance has tried to claim, with the period it tried for.
    soft_claims: Mutex<HashMap<SpendScope, Option<i64>>>,
    pub stats: AlertStats,
    last_drop_warn: AtomicI64,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerts")
    }
}

/// The URL as it may be logged: scheme, host and port; path, query and credentials elided
/// (hooks carry their secret there).
pub fn redacted(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Alerts {
    pub fn new(webhook: Option<WebhookSettings>, ttl: Duration, clock: SharedClock) -> Alerts {
        Alerts::with_capacity(webhook, ttl, clock, QUEUE_CAPACITY)
    }

    pub fn with_capacity(
        webhook: Option<WebhookSettings>,
        ttl: Duration,
        clock: SharedClock,
        capacity: usize,
    ) -> Alerts {
        let (webhook, receiver) = match webhook {
            Some(w) => {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                (
                    Some(Webhook {
                        tx,
                        url: w.url,
                        budget_alerts: w.budget_alerts,
                    }),
                    Some(rx),
                )
            }
            None => (None, None),
        };
        Alerts {
            webhook,
            receiver: Mutex::new(receiver),
            ttl,
            clock,
            crossed: Mutex::new(HashMap::new()),
            soft_claims: Mutex::new(HashMap::new()),
            stats: AlertStats::default(),
            last_drop_warn: AtomicI64::new(0),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// The delivery state for `/health/readiness` (Purser addition).
    pub fn snapshot(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "webhook": self.webhook.as_ref().map(|w| redacted(&w.url)),
            "queued": n(&self.stats.queued),
            "sent": n(&self.stats.sent),
            "failed": n(&self.stats.failed),
            "retries": n(&self.stats.retries),
            "dropped": n(&self.stats.dropped),
        })
    }

    /// Queues an event for the webhook, if one is configured for budget alerts. Never waits.
    pub fn send(&self, event: WebhookEvent) {
        let Some(w) = &self.webhook else {
            return;
        };
        if !w.budget_alerts {
            return;
        }
        match w.tx.try_send(event) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let now = self.now();
                let last = self.last_drop_warn.load(Ordering::Relaxed);
                if now - last >= 10
                    && self
                        .last_drop_warn
                        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "queue full",
                        mpsc::error::TrySendError::Closed(_) => "sender stopped",
                    };
                    tracing::warn!(
                        webhook = %redacted(&w.url),
                        dropped,
                        "budget alert dropped ({why})"
                    );
                }
            }
        }
    }

    /// A `budget_exceeded` refusal of the entity `id` in `event.event_group`: logged and sent
    /// unless the same entity's was within the TTL. Returns whether it went out.
    pub fn budget_exceeded(&self, id: &str, event: WebhookEvent) -> bool {
        let marker = format!("{}:{}:{id}", event.event, event.event_group);
        let now = self.now();
        {
            let mut g = lock(&self.crossed);
            if g.get(&marker).is_some_and(|until| *until > now) {
                return false;
            }
            if g.len() >= MARKER_SWEEP_AT {
                g.retain(|_, until| *until > now);
            }
            let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
            g.insert(marker, now.saturating_add(ttl));
        }
        tracing::warn!(
            event_group = event.event_group,
            entity = %id,
            spend = event.spend,
            max_budget = ?event.max_budget,
            "budget crossed: calls are refused with budget_exceeded"
        );
        self.send(event);
        true
    }

    /// After a call settled: for each watched soft budget (cooldown off when the call began)
    /// whose entity's spend has reached it, claims it once per period on this instance and
    /// records the crossing in the background (the request waits for neither the database nor
    /// the hook).
    pub fn after_settle(state: &AppState, watches: Vec<SoftBudgetWatch>) {
        for w in watches {
            let Some(spend) = state.ledger.spend(&w.scope) else {
                continue;
            };
            if spend < w.soft {
                continue;
            }
            {
                let mut claims = lock(&state.alerts.soft_claims);
                if claims.get(&w.scope) == Some(&w.period) {
                    continue;
                }
                if claims.len() >= MARKER_SWEEP_AT * 10 {
                    // Only a repeated compare-and-set (which changes nothing) can follow.
                    claims.clear();
                }
                claims.insert(w.scope.clone(), w.period);
            }
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = record_soft_crossing(&state, &w, spend).await {
                    // Let a later call try again.
                    lock(&state.alerts.soft_claims).remove(&w.scope);
                    tracing::warn!(error = ?e, "recording a soft budget crossing failed; will retry on the next call");
                }
            });
        }
    }
}

/// Records one soft-budget crossing if this caller wins the cooldown's compare-and-set: the
/// flag, an audit row (in the same transaction) and, after commit, a log line and the
/// `soft_budget_crossed` event. Returns whether this caller won. Safe to race from any number
/// of tasks or instances: exactly one wins per period.
pub async fn record_soft_crossing(
    state: &AppState,
    w: &SoftBudgetWatch,
    spend: i64,
) -> Result<bool, Error> {
    let usd = |n: i64| purser_core::money::Nanos(n).to_usd();
    let mut tx = Write::begin(state).await?;
    let (claimed, tbl, id) = match &w.scope {
        SpendScope::Key(token) => {
            let won = crate::store::keys::claim_soft_budget_cooldown(&mut tx, token).await?;
            tx.key(token);
            (won, table::KEY, token.as_str())
        }
        SpendScope::Team(team_id) => {
            let won = crate::store::teams::claim_soft_budget_cooldown(&mut tx, team_id).await?;
            tx.team(team_id);
            (won, table::TEAM, team_id.as_str())
        }
        SpendScope::Member { .. } | SpendScope::User(_) => return Ok(false),
    };
    if !claimed {
        return Ok(false);
    }
    let caller = Caller {
        user_id: Some(SYSTEM_ACTOR.into()),
        role: purser_core::roles::UserRole::ProxyAdmin,
        is_master: false,
        key: w.key.clone(),
    };
    audit::record(
        &mut tx,
        &caller,
        action::UPDATED,
        tbl,
        id,
        Some(json!({"soft_budget_cooldown": false})),
        Some(json!({
            "soft_budget_cooldown": true,
            "spend": usd(spend),
            "soft_budget": usd(w.soft),
        })),
    )
    .await?;
    tx.commit().await?;
    state
        .alerts
        .stats
        .soft_budget_crossings
        .fetch_add(1, Ordering::Relaxed);
    let mut event = w.event.clone();
    event.spend = usd(spend);
    tracing::warn!(
        event_group = event.event_group,
        entity = %match &w.scope {
            SpendScope::Team(t) => t.clone(),
            _ => event.key_alias.clone().unwrap_or_else(|| "key".into()),
        },
        spend = event.spend,
        soft_budget = ?event.soft_budget,
        "soft budget crossed (calls go on; recorded once this budget period)"
    );
    state.alerts.send(event);
    Ok(true)
}

/// Starts the webhook sender when a webhook is configured. It stops when `stopped` is
/// cancelled, after delivering what is queued for at most [`SHUTDOWN_DRAIN`].
pub fn spawn_sender(
    state: &AppState,
    stopped: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let url = state.alerts.webhook.as_ref()?.url.clone();
    let rx = lock(&state.alerts.receiver).take()?;
    let alerts = state.alerts.clone();
    Some(tokio::spawn(run_sender(alerts, url, rx, stopped)))
}

async fn run_sender(
    alerts: Arc<Alerts>,
    url: reqwest::Url,
    mut rx: mpsc::Receiver<WebhookEvent>,
    stopped: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ATTEMPT_TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.without_url(), "webhook client could not be built; budget alerts are not delivered");
            return;
        }
    };
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => deliver(&alerts, &client, &url, &ev).await,
                None => return,
            },
            _ = stopped.cancelled() => break,
        }
    }
    let until = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while let Ok(ev) = rx.try_recv() {
        if tokio::time::Instant::now() >= until {
            alerts.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = tokio::time::timeout_at(until, deliver(&alerts, &client, &url, &ev)).await;
    }
}

/// Retried: the hook may be restarting or overloaded. Other refusals would fail again.
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

async fn deliver(alerts: &Alerts, client: &reqwest::Client, url: &reqwest::Url, ev: &WebhookEvent) {
    let body = match serde_json::to_vec(ev) {
        Ok(b) => b,
        Err(_) => return,
    };
    let mut last = String::new();
    for attempt in 0..=RETRY_BACKOFF.len() {
        if attempt > 0 {
            alerts.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY_BACKOFF[attempt - 1]).await;
        }
        let sent = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                alerts.stats.sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) if retryable(r.status()) => last = format!("status {}", r.status()),
            Ok(r) => {
                alerts.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(webhook = %redacted(url), status = %r.status(), event = ev.event, "webhook refused a budget alert");
                return;
            }
            // `without_url`: reqwest's errors name the URL, which may carry the hook's secret.
            Err(e) => last = e.without_url().to_string(),
        }
    }
    alerts.stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(webhook = %redacted(url), error = %last, event = ev.event, "budget alert not delivered after retries");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn webhook() -> Option<WebhookSettings> {
        Some(WebhookSettings {
            url: reqwest::Url::parse("https://user:pw@hooks.example.com:8443/T0/B0/s3cret?token=x")
                .unwrap(),
            budget_alerts: true,
        })
    }

    fn event() -> WebhookEvent {
        WebhookEvent {
            spend: 2.0,
            max_budget: Some(1.0),
            event: "budget_crossed",
            event_group: "key",
            event_message: "Key Budget: Budget Crossed".into(),
            ..Default::default()
        }
    }

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        let u = webhook().unwrap().url;
        let shown = redacted(&u);
        assert_eq!(shown, "https://hooks.example.com:8443/…");
        for secret in ["s3cret", "token", "pw", "user", "T0"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn budget_crossed_is_deduplicated_for_the_ttl() {
        let clock = ManualClock::new(chrono::Utc::now());
        let a = Alerts::new(webhook(), Duration::from_secs(60), clock.clone());
        assert!(a.budget_exceeded("tok", event()));
        assert!(!a.budget_exceeded("tok", event()), "within the TTL");
        assert!(a.budget_exceeded("other", event()), "another entity");
        let mut team = event();
        team.event_group = "team";
        assert!(a.budget_exceeded("tok", team), "same id, other group");
        clock.advance(Duration::from_secs(61));
        assert!(a.budget_exceeded("tok", event()), "after the TTL");
        assert_eq!(a.stats.queued.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let clock = ManualClock::new(chrono::Utc::now());
        let a = Alerts::with_capacity(webhook(), Duration::from_secs(60), clock, 2);
        for _ in 0..5 {
            a.send(event());
        }
        assert_eq!(a.stats.queued.load(Ordering::Relaxed), 2);
        assert_eq!(a.stats.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn no_webhook_or_budget_alerts_off_sends_nothing() {
        let clock = ManualClock::new(chrono::Utc::now());
        let none = Alerts::new(None, Duration::from_secs(60), clock.clone());
        none.send(event());
        assert_eq!(none.stats.queued.load(Ordering::Relaxed), 0);
        assert_eq!(none.stats.dropped.load(Ordering::Relaxed), 0);
        let mut w = webhook().unwrap();
        w.budget_alerts = false;
        let off = Alerts::new(Some(w), Duration::from_secs(60), clock);
        off.send(event());
        assert_eq!(off.stats.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_body_has_the_reference_fields() {
        let v = serde_json::to_value(event()).unwrap();
        for f in [
            "spend",
            "max_budget",
            "soft_budget",
            "token",
            "customer_id",
            "user_id",
            "team_id",
            "team_alias",
            "user_email",
            "key_alias",
            "projected_exceeded_date",
            "projected_spend",
            "event",
            "event_group",
            "event_message",
        ] {
            assert!(v.get(f).is_some(), "{f} missing from {v}");
        }
        assert_eq!(v["projected_spend"], serde_json::Value::Null);
    }
}
