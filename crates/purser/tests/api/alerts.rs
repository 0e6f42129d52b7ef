//! Budget alerts over HTTP: `soft_budget` on keys and teams recorded once per period (cooldown,
//! audit row, webhook), `budget_crossed` on refusals deduplicated, delivery retried, nothing sent
//! and nothing broken without a webhook. A small axum receiver stands in for the hook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::routing::post;
use purser::service::alerts::{self, SYSTEM_ACTOR, SoftBudgetWatch, WebhookEvent};
use purser::service::resets::{self, Outcome, Table};
use purser::service::spend::SpendScope;
use purser::store::{self, audit::AuditFilter};
use purser_core::keys::hash_key;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, DEFAULT_CONFIG, MASTER, TestApp, assert_proxy_error};

both_backends!(
    soft_budget_crossed_once_per_period,
    budget_exceeded_alerts_once_per_ttl,
    no_webhook_nothing_sent_nothing_breaks,
);

/// Records every POST to `/hook`; answers 503 to the first `fail_first` of them.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Value>>>,
    fail_first: Arc<AtomicUsize>,
    addr: String,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            addr: listener.local_addr().unwrap().to_string(),
            ..Default::default()
        };
        async fn hook(State(r): State<Receiver>, Json(body): Json<Value>) -> AxumStatus {
            if r.fail_first
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                return AxumStatus::SERVICE_UNAVAILABLE;
            }
            r.posts.lock().unwrap().push(body);
            AxumStatus::OK
        }
        let app = axum::Router::new()
            .route("/hook/{secret}", post(hook))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hook/s3cret-path-token", self.addr)
    }

    fn posts(&self) -> Vec<Value> {
        self.posts.lock().unwrap().clone()
    }

    fn matching(&self, event: &str, group: &str) -> Vec<Value> {
        self.posts()
            .into_iter()
            .filter(|p| p["event"] == event && p["event_group"] == group)
            .collect()
    }
}

fn config(webhook: Option<&str>) -> String {
    // DEFAULT_CONFIG ends inside general_settings, so the alerting keys append to it.
    let mut c = DEFAULT_CONFIG.to_string();
    if let Some(url) = webhook {
        c.push_str(&format!(
            "  alerting: [webhook]\n  webhook_url: {url}\n  alerting_args:\n    budget_alert_ttl: 3600\n"
        ));
    }
    c
}

fn chat() -> Value {
    json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]})
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut done: F) {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn key(app: &TestApp, body: Value) -> String {
    let (s, b) = app.post("/key/generate", MASTER, body).await;
    assert_eq!(s, 200, "{b}");
    b["key"].as_str().unwrap().to_string()
}

async fn key_info(app: &TestApp, raw: &str) -> Value {
    let (s, b) = app.get(&format!("/key/info?key={raw}"), MASTER).await;
    assert_eq!(s, 200, "{b}");
    b["info"].clone()
}

async fn audits(app: &TestApp, table: &str, id: &str) -> Vec<store::audit::AuditRow> {
    let mut h = app.state.db.conn().await.unwrap();
    let f = AuditFilter {
        object_id: Some(id.into()),
        table_name: Some(table.into()),
        changed_by: Some(SYSTEM_ACTOR.into()),
        ..Default::default()
    };
    store::audit::list(&mut h, &f, 100, 0).await.unwrap().0
}

async fn burst(app: &TestApp, raw: &str, n: usize) -> Vec<(u16, Value)> {
    let calls = (0..n).map(|_| async {
        let (s, b) = app.post("/v1/chat/completions", raw, chat()).await;
        (s.as_u16(), b)
    });
    futures_util::future::join_all(calls).await
}

/// Every event queued so far was delivered (or given up).
fn delivery_idle(app: &TestApp) -> bool {
    let s = &app.state.alerts.stats;
    let done = s.sent.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
    done == s.queued.load(Ordering::Relaxed)
}

async fn soft_budget_crossed_once_per_period(b: Backend) {
    let hook = Receiver::start(0).await;
    let app = TestApp::spawn_with(b, &config(Some(&hook.url()))).await;
    for (team, soft) in [("t-soft", json!(0.0001)), ("t-plain", Value::Null)] {
        let (s, t) = app
            .post(
                "/team/new",
                MASTER,
                json!({"team_id": team, "team_alias": format!("{team}-alias"), "soft_budget": soft}),
            )
            .await;
        assert_eq!(s, 200, "{t}");
    }
    // One call costs about $0.00002: the key's soft budget is crossed after a few calls, the
    // team's a few later, both inside one burst.
    let watched = key(
        &app,
        json!({"team_id": "t-soft", "key_alias": "watched", "soft_budget": 0.00005,
               "max_budget": 1.0, "budget_duration": "1h"}),
    )
    .await;
    let other = key(&app, json!({"team_id": "t-plain", "key_alias": "other"})).await;
    let token = hash_key(&watched);
    let info = key_info(&app, &watched).await;
    assert_eq!(info["soft_budget"], 0.00005);
    assert_eq!(info["soft_budget_cooldown"], false);

    let answers = burst(&app, &watched, 24).await;
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "soft_budget never refuses: {answers:?}"
    );
    for _ in 0..6 {
        let (s, body) = app.post("/v1/chat/completions", &other, chat()).await;
        assert_eq!(s, 200, "{body}");
    }

    eventually("both crossings delivered", || {
        hook.matching("soft_budget_crossed", "key").len() == 1
            && hook.matching("soft_budget_crossed", "team").len() == 1
    })
    .await;
    let k = &hook.matching("soft_budget_crossed", "key")[0];
    assert_eq!(
        k["token"],
        token.as_str(),
        "the hashed token, never the raw key"
    );
    assert!(!k.to_string().contains(&watched), "raw key leaked: {k}");
    assert_eq!(k["key_alias"], "watched");
    assert_eq!(k["team_id"], "t-soft");
    assert_eq!(k["team_alias"], "t-soft-alias");
    assert_eq!(k["soft_budget"], 0.00005);
    assert_eq!(k["max_budget"], 1.0);
    assert!(k["spend"].as_f64().unwrap() >= 0.00005, "{k}");
    assert_eq!(
        k["event_message"],
        "Soft Budget Crossed: Total Soft Budget:`5e-05`"
    );
    for null in [
        "user_id",
        "customer_id",
        "projected_spend",
        "projected_exceeded_date",
    ] {
        assert_eq!(k[null], Value::Null, "{null} in {k}");
    }
    let t = &hook.matching("soft_budget_crossed", "team")[0];
    assert_eq!(t["team_id"], "t-soft");
    assert_eq!(t["soft_budget"], 0.0001);
    assert_eq!(t["max_budget"], Value::Null);
    assert!(t["spend"].as_f64().unwrap() >= 0.0001, "{t}");

    // Recorded once: the cooldown, one audit row each; the other key and team untouched.
    let info = key_info(&app, &watched).await;
    assert_eq!(info["soft_budget_cooldown"], true);
    assert_eq!(key_info(&app, &other).await["soft_budget_cooldown"], false);
    let rows = audits(&app, "LiteLLM_VerificationToken", &token).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].action, "updated");
    assert_eq!(
        rows[0].before_value.as_ref().unwrap().0["soft_budget_cooldown"],
        false
    );
    assert_eq!(
        rows[0].updated_values.as_ref().unwrap().0["soft_budget_cooldown"],
        true
    );
    assert_eq!(audits(&app, "LiteLLM_TeamTable", "t-soft").await.len(), 1);
    assert!(
        audits(&app, "LiteLLM_TeamTable", "t-plain")
            .await
            .is_empty()
    );
    assert!(
        audits(&app, "LiteLLM_VerificationToken", &hash_key(&other))
            .await
            .is_empty()
    );
    let mut h = app.state.db.conn().await.unwrap();
    let team_row = store::teams::get(&mut h, "t-soft").await.unwrap().unwrap();
    assert!(team_row.soft_budget_cooldown);
    assert!(
        !store::teams::get(&mut h, "t-plain")
            .await
            .unwrap()
            .unwrap()
            .soft_budget_cooldown
    );
    drop(h);

    // More calls in the same period send nothing more.
    for _ in 0..3 {
        let (s, body) = app.post("/v1/chat/completions", &watched, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    eventually("deliveries idle", || delivery_idle(&app)).await;
    assert_eq!(hook.posts().len(), 2, "{:?}", hook.posts());

    // Two instances racing for the same crossing: exactly one records it.
    let racer = key(&app, json!({"key_alias": "racer", "soft_budget": 0.5})).await;
    let watch = SoftBudgetWatch {
        scope: SpendScope::Key(hash_key(&racer)),
        soft: 500_000_000,
        period: None,
        event: WebhookEvent {
            event: "soft_budget_crossed",
            event_group: "key",
            ..Default::default()
        },
        key: None,
    };
    let (x, y) = tokio::join!(
        alerts::record_soft_crossing(&app.state, &watch, 600_000_000),
        alerts::record_soft_crossing(&app.state, &watch, 600_000_000),
    );
    let wins = [x.unwrap(), y.unwrap()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");

    // The budget reset starts a new period: cooldown cleared, the next crossing is sent again.
    let mut h = app.state.db.conn().await.unwrap();
    let row = store::keys::get(&mut h, &token).await.unwrap().unwrap();
    drop(h);
    let old = row
        .budget_reset_at
        .expect("a 1h budget has a reset instant");
    let next = old + chrono::Duration::hours(1);
    let (outcome, _) = resets::reset_row(&app.state, Table::Keys, &token, "1h", old, next)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Won);
    let info = key_info(&app, &watched).await;
    assert_eq!(info["soft_budget_cooldown"], false);
    assert_eq!(info["spend"], 0.0);
    for _ in 0..5 {
        let (s, body) = app.post("/v1/chat/completions", &watched, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let of_watched = |h: &Receiver| {
        h.matching("soft_budget_crossed", "key")
            .into_iter()
            .filter(|p| p["token"] == token.as_str())
            .count()
    };
    eventually("the new period's crossing", || of_watched(&hook) == 2).await;
    assert_eq!(key_info(&app, &watched).await["soft_budget_cooldown"], true);
    assert_eq!(
        audits(&app, "LiteLLM_VerificationToken", &token)
            .await
            .len(),
        2
    );
    app.shutdown().await;
}

async fn budget_exceeded_alerts_once_per_ttl(b: Backend) {
    // The hook fails the first delivery: the sender retries it.
    let hook = Receiver::start(1).await;
    let app = TestApp::spawn_with(b, &config(Some(&hook.url()))).await;
    let capped = key(&app, json!({"key_alias": "capped", "max_budget": 0.00001})).await;
    let free = key(&app, json!({"key_alias": "free"})).await;
    // The first call is admitted (spend 0 < max) and spends past the cap.
    let (s, body) = app.post("/v1/chat/completions", &capped, chat()).await;
    assert_eq!(s, 200, "{body}");
    let refused = burst(&app, &capped, 10).await;
    for (s, body) in &refused {
        let msg = assert_proxy_error(body, *s, "budget_exceeded");
        assert!(msg.contains("Budget has been exceeded"), "{msg}");
    }
    for _ in 0..3 {
        let (s, body) = app.post("/v1/chat/completions", &free, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    eventually("the budget_crossed event", || {
        !hook.matching("budget_crossed", "key").is_empty()
    })
    .await;
    eventually("deliveries idle", || delivery_idle(&app)).await;
    let events = hook.matching("budget_crossed", "key");
    assert_eq!(events.len(), 1, "one per entity per TTL: {events:?}");
    let e = &events[0];
    assert_eq!(e["token"], hash_key(&capped).as_str());
    assert_eq!(e["key_alias"], "capped");
    assert_eq!(e["max_budget"], 0.00001);
    assert!(e["spend"].as_f64().unwrap() >= 0.00001, "{e}");
    assert_eq!(e["soft_budget"], Value::Null);
    assert_eq!(
        e["event_message"],
        "Key Budget: Budget Crossed\n Total Budget:`1e-05`"
    );
    assert_eq!(hook.posts().len(), 1, "nothing about the other key");
    let stats = &app.state.alerts.stats;
    assert!(stats.retries.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.sent.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    // The delivery counters are on the readiness body; the URL shows its host only.
    let (_, ready) = app.get("/health/readiness", MASTER).await;
    assert_eq!(ready["alerting"]["sent"], 1, "{ready}");
    assert!(!ready.to_string().contains("s3cret"), "{ready}");
    app.shutdown().await;
}

async fn no_webhook_nothing_sent_nothing_breaks(b: Backend) {
    let hook = Receiver::start(0).await;
    // A URL without `alerting: [webhook]` is not used.
    let yaml = format!("{}  webhook_url: {}\n", config(None), hook.url());
    let app = TestApp::spawn_with(b, &yaml).await;
    let raw = key(
        &app,
        json!({"key_alias": "quiet", "soft_budget": 0.00003, "max_budget": 0.00008}),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (s, _) = app.post("/v1/chat/completions", &raw, chat()).await;
        statuses.push(s.as_u16());
    }
    assert_eq!(&statuses[..2], [200, 200], "{statuses:?}");
    assert!(
        statuses.contains(&422) || statuses.contains(&400),
        "max_budget still bites: {statuses:?}"
    );
    let token = hash_key(&raw);
    let db = app.state.db.clone();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut h = db.conn().await.unwrap();
        if store::keys::get(&mut h, &token)
            .await
            .unwrap()
            .unwrap()
            .soft_budget_cooldown
        {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "crossing not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(key_info(&app, &raw).await["soft_budget_cooldown"], true);
    assert_eq!(
        audits(&app, "LiteLLM_VerificationToken", &token)
            .await
            .len(),
        1
    );
    let stats = &app.state.alerts.stats;
    assert_eq!(stats.queued.load(Ordering::Relaxed), 0);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    assert!(hook.posts().is_empty());
    let (_, ready) = app.get("/health/readiness", MASTER).await;
    assert_eq!(ready["alerting"]["webhook"], Value::Null, "{ready}");
    app.shutdown().await;
}
