//! Budget reset job (service/resets.rs) and spend read routes (`/spend/logs`,
//! `/global/spend/teams`). Rows are written through the store functions on `app.state.db`
//! (the management routes and the request path land in other branches); effects are read back
//! from the database.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use purser::service::resets::{self, Outcome, Resetter, Table};
use purser::store::{
    self, budgets::BudgetRow, keys::KeyRow, members::MembershipRow, spend::SpendLogRow,
    teams::TeamRow, users::UserRow,
};
use purser_core::budget::BudgetDuration;
use purser_core::keys::hash_key;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::both_backends;
use crate::helpers::*;

const NO_RESET_CONFIG: &str = r#"
general_settings:
  master_key: sk-1234
  disable_reset_budget: true
"#;

// ------------------------------------------------------------------ row builders

fn team_row(id: &str, alias: Option<&str>, now: DateTime<Utc>) -> TeamRow {
    TeamRow {
        team_alias: alias.map(String::from),
        ..TeamRow::new(id.to_string(), now)
    }
}

fn key_row(token: &str, user_id: Option<&str>, now: DateTime<Utc>) -> KeyRow {
    KeyRow {
        key_name: Some("sk-...test".into()),
        user_id: user_id.map(String::from),
        ..KeyRow::new(token.to_string(), now)
    }
}

fn member_row(
    team: &str,
    user: &str,
    spend: i64,
    budget: Option<&str>,
    now: DateTime<Utc>,
) -> MembershipRow {
    MembershipRow {
        team_id: team.into(),
        user_id: user.into(),
        role: "user".into(),
        user_email: None,
        spend,
        total_spend: spend,
        budget_id: budget.map(String::from),
        added_at: now,
    }
}

fn log_row(
    id: &str,
    key: &str,
    user: Option<&str>,
    team: Option<&str>,
    spend: i64,
    at: DateTime<Utc>,
) -> SpendLogRow {
    SpendLogRow {
        request_id: id.into(),
        call_type: "acompletion".into(),
        api_key: key.into(),
        spend,
        total_tokens: 30,
        prompt_tokens: 10,
        completion_tokens: 20,
        start_time: at,
        end_time: at + chrono::Duration::milliseconds(250),
        model: "fake-gpt".into(),
        model_id: Some("model-1".into()),
        model_group: Some("fake-gpt".into()),
        custom_llm_provider: Some("openai".into()),
        api_base: Some("http://upstream.invalid/v1".into()),
        user_id: user.map(String::from),
        team_id: team.map(String::from),
        end_user: None,
        status: "success".into(),
        metadata: Json(json!({"tags": ["a"]})),
    }
}

async fn insert_team(app: &TestApp, t: &TeamRow) {
    let mut h = app.state.db.conn().await.unwrap();
    store::teams::insert(&mut h, t).await.unwrap();
}

async fn insert_user(app: &TestApp, u: &UserRow) {
    let mut h = app.state.db.conn().await.unwrap();
    store::users::insert(&mut h, u).await.unwrap();
}

/// A user with `role` and a key for it; returns the raw key.
async fn user_with_key(app: &TestApp, user_id: &str, role: &str) -> String {
    let now = store::now();
    let mut u = UserRow::new(user_id.into(), now);
    u.user_role = role.into();
    insert_user(app, &u).await;
    let raw = format!("sk-test-{user_id}-0123456789");
    let mut h = app.state.db.conn().await.unwrap();
    store::keys::insert(&mut h, &key_row(&hash_key(&raw), Some(user_id), now))
        .await
        .unwrap();
    raw
}

async fn team(app: &TestApp, id: &str) -> TeamRow {
    let mut h = app.state.db.conn().await.unwrap();
    store::teams::get(&mut h, id).await.unwrap().expect("team")
}

/// Polls until `done` holds or `within` passed; returns whether it held.
async fn eventually<F, Fut>(within: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + within;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The reset instant moved onto the 2-second grid, strictly after `old`, by one or two periods
/// (the tick that did it may land after the first boundary).
#[track_caller]
fn assert_advanced_on_grid(old: DateTime<Utc>, new: Option<DateTime<Utc>>) {
    let new = new.expect("budget_reset_at set");
    let d = BudgetDuration::parse("2s").unwrap();
    let first = d.next_reset(old);
    assert!(
        new == first || new == d.next_reset(first),
        "old {old}, new {new}, expected {first} or the boundary after"
    );
    assert_eq!(new.nanosecond(), 0);
    assert_eq!(new.second() % 2, 0);
}

// ------------------------------------------------------------------ resets

async fn team_budget_resets_within_seconds(b: Backend) {
    let app = TestApp::spawn(b).await;
    let now = store::now();
    let old = now + chrono::Duration::seconds(1);
    let mut t = team_row("team-reset", Some("resets"), now);
    t.spend = 5_000_000_000;
    t.max_budget = Some(10_000_000_000);
    t.budget_duration = Some("2s".into());
    t.budget_reset_at = Some(old);
    insert_team(&app, &t).await;
    // a team without a period keeps its spend
    let mut other = team_row("team-steady", None, now);
    other.spend = 42;
    insert_team(&app, &other).await;

    // not reset before it is due
    assert_eq!(team(&app, "team-reset").await.spend, 5_000_000_000);
    let a = &app;
    let ok = eventually(Duration::from_secs(6), || async move {
        team(a, "team-reset").await.spend == 0
    })
    .await;
    assert!(ok, "team spend not reset within 6 s");
    let after = team(&app, "team-reset").await;
    assert_advanced_on_grid(old, after.budget_reset_at);
    assert_eq!(after.max_budget, Some(10_000_000_000), "limits untouched");
    assert_eq!(after.budget_duration.as_deref(), Some("2s"));
    assert_eq!(team(&app, "team-steady").await.spend, 42);
    app.shutdown().await;
}

async fn keys_and_users_reset_within_seconds(b: Backend) {
    let app = TestApp::spawn(b).await;
    let now = store::now();
    let old = now + chrono::Duration::seconds(1);
    let mut u = UserRow::new("reset-user".into(), now);
    u.spend = 7_000_000_000;
    u.budget_duration = Some("2s".into());
    u.budget_reset_at = Some(old);
    insert_user(&app, &u).await;
    let mut h = app.state.db.conn().await.unwrap();
    let mut k = key_row(&"a".repeat(64), Some("reset-user"), now);
    k.spend = 3_000_000_000;
    k.budget_duration = Some("2s".into());
    k.budget_reset_at = Some(old);
    store::keys::insert(&mut h, &k).await.unwrap();
    // an expired key is skipped: spend and reset instant stay
    let mut expired = key_row(&"b".repeat(64), Some("reset-user"), now);
    expired.spend = 9;
    expired.budget_duration = Some("2s".into());
    expired.budget_reset_at = Some(now - chrono::Duration::seconds(10));
    expired.expires = Some(now - chrono::Duration::seconds(1));
    store::keys::insert(&mut h, &expired).await.unwrap();
    drop(h);

    let db = app.state.db.clone();
    let ok = eventually(Duration::from_secs(6), || {
        let db = db.clone();
        async move {
            let mut h = db.conn().await.unwrap();
            let k = store::keys::get(&mut h, &"a".repeat(64))
                .await
                .unwrap()
                .unwrap();
            let u = store::users::get(&mut h, "reset-user")
                .await
                .unwrap()
                .unwrap();
            k.spend == 0 && u.spend == 0
        }
    })
    .await;
    assert!(ok, "key/user spend not reset within 6 s");
    let mut h = app.state.db.conn().await.unwrap();
    let k = store::keys::get(&mut h, &"a".repeat(64))
        .await
        .unwrap()
        .unwrap();
    assert_advanced_on_grid(old, k.budget_reset_at);
    let u = store::users::get(&mut h, "reset-user")
        .await
        .unwrap()
        .unwrap();
    assert_advanced_on_grid(old, u.budget_reset_at);
    let e = store::keys::get(&mut h, &"b".repeat(64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.spend, 9, "expired key untouched");
    assert_eq!(e.budget_reset_at, expired.budget_reset_at);
    drop(h);
    app.shutdown().await;
}

async fn member_budget_resets_linked_memberships(b: Backend) {
    let app = TestApp::spawn(b).await;
    let now = store::now();
    let old = now + chrono::Duration::seconds(1);
    insert_team(&app, &team_row("team-mb", Some("mb"), now)).await;
    for u in ["mb-1", "mb-2", "mb-3"] {
        insert_user(&app, &UserRow::new(u.into(), now)).await;
    }
    let mut h = app.state.db.conn().await.unwrap();
    let mut budget = BudgetRow::new("budget-mb".into(), "test", now);
    budget.max_budget = Some(1_000_000_000);
    budget.budget_duration = Some("2s".into());
    budget.budget_reset_at = Some(old);
    store::budgets::insert(&mut h, &budget).await.unwrap();
    store::members::insert(
        &mut h,
        &member_row("team-mb", "mb-1", 500, Some("budget-mb"), now),
    )
    .await
    .unwrap();
    store::members::insert(
        &mut h,
        &member_row("team-mb", "mb-2", 600, Some("budget-mb"), now),
    )
    .await
    .unwrap();
    store::members::insert(&mut h, &member_row("team-mb", "mb-3", 700, None, now))
        .await
        .unwrap();
    drop(h);

    let db = app.state.db.clone();
    let ok = eventually(Duration::from_secs(6), || {
        let db = db.clone();
        async move {
            let mut h = db.conn().await.unwrap();
            let m1 = store::members::get(&mut h, "team-mb", "mb-1")
                .await
                .unwrap()
                .unwrap();
            let m2 = store::members::get(&mut h, "team-mb", "mb-2")
                .await
                .unwrap()
                .unwrap();
            m1.spend == 0 && m2.spend == 0
        }
    })
    .await;
    assert!(ok, "member spend not reset within 6 s");
    let mut h = app.state.db.conn().await.unwrap();
    let m1 = store::members::get(&mut h, "team-mb", "mb-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m1.total_spend, 500, "lifetime spend is kept");
    let m3 = store::members::get(&mut h, "team-mb", "mb-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m3.spend, 700, "membership without the budget untouched");
    let b2 = store::budgets::get(&mut h, "budget-mb")
        .await
        .unwrap()
        .unwrap();
    assert_advanced_on_grid(old, b2.budget_reset_at);
    assert_eq!(b2.max_budget, Some(1_000_000_000));
    drop(h);
    app.shutdown().await;
}

/// The due team of the CAS tests: `1h` period, due at the start of the current hour.
async fn due_hourly_team(app: &TestApp, id: &str, spend: i64) -> DateTime<Utc> {
    let now = store::now();
    let old = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    let mut t = team_row(id, None, now);
    t.spend = spend;
    t.budget_duration = Some("1h".into());
    t.budget_reset_at = Some(old);
    insert_team(app, &t).await;
    old
}

async fn concurrent_resets_one_winner(b: Backend) {
    let app = TestApp::spawn_with(b, NO_RESET_CONFIG).await;
    let old = due_hourly_team(&app, "team-cas", 123).await;
    let next = old + chrono::Duration::hours(1);
    // two direct compare-and-set resets of the same period: exactly one wins
    let (a, c) = tokio::join!(
        resets::reset_row(&app.state, Table::Teams, "team-cas", "1h", old, next),
        resets::reset_row(&app.state, Table::Teams, "team-cas", "1h", old, next),
    );
    let outcomes = [a.unwrap().0, c.unwrap().0];
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Won).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Lost).count(),
        1,
        "{outcomes:?}"
    );
    let t = team(&app, "team-cas").await;
    assert_eq!(t.spend, 0);
    assert_eq!(t.budget_reset_at, Some(next), "advanced exactly one period");

    // two whole ticks racing (two instances): the row moves one period, counted once
    let old2 = due_hourly_team(&app, "team-cas-2", 456).await;
    let mut r1 = Resetter::new(app.state.clone());
    let mut r2 = Resetter::new(app.state.clone());
    let now = store::now();
    let (x, y) = tokio::join!(r1.tick(now), r2.tick(now));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.teams + y.teams, 1, "{x:?} {y:?}");
    let t2 = team(&app, "team-cas-2").await;
    assert_eq!(t2.spend, 0);
    assert_eq!(t2.budget_reset_at, Some(old2 + chrono::Duration::hours(1)));
    // a later tick in the same period does nothing
    let again = Resetter::new(app.state.clone())
        .tick(store::now())
        .await
        .unwrap();
    assert_eq!(again.reset_total(), 0);
    app.shutdown().await;
}

async fn disabled_job_does_not_reset(b: Backend) {
    let app = TestApp::spawn_with(b, NO_RESET_CONFIG).await;
    let old = due_hourly_team(&app, "team-off", 99).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = team(&app, "team-off").await;
    assert_eq!(t.spend, 99, "disable_reset_budget: true honoured");
    assert_eq!(t.budget_reset_at, Some(old));
    app.shutdown().await;
}

async fn missing_reset_instant_is_initialised(b: Backend) {
    let app = TestApp::spawn_with(b, NO_RESET_CONFIG).await;
    let now = store::now();
    let mut t = team_row("team-init", None, now);
    t.spend = 77;
    t.budget_duration = Some("1d".into());
    insert_team(&app, &t).await;
    let r = Resetter::new(app.state.clone()).tick(now).await.unwrap();
    assert_eq!(r.initialised, 1, "{r:?}");
    assert_eq!(r.reset_total(), 0);
    let after = team(&app, "team-init").await;
    assert_eq!(after.spend, 77, "initialising does not reset spend");
    assert_eq!(
        after.budget_reset_at,
        Some(BudgetDuration::parse("1d").unwrap().next_reset(now))
    );
    app.shutdown().await;
}

async fn invalid_duration_is_skipped(b: Backend) {
    let app = TestApp::spawn(b).await;
    let now = store::now();
    let past = now - chrono::Duration::seconds(30);
    for (id, dur) in [("team-bad", "banana"), ("team-bad-2", "2mo")] {
        let mut t = team_row(id, None, now);
        t.spend = 3;
        t.budget_duration = Some(dur.into());
        t.budget_reset_at = Some(past);
        insert_team(&app, &t).await;
    }
    let mut bad_null = team_row("team-bad-null", None, now);
    bad_null.budget_duration = Some("🙂".into());
    insert_team(&app, &bad_null).await;
    let mut good = team_row("team-good", None, now);
    good.spend = 5;
    good.budget_duration = Some("1h".into());
    good.budget_reset_at = Some(past);
    insert_team(&app, &good).await;

    // the running loop resets the valid row despite the invalid ones
    let a = &app;
    let ok = eventually(Duration::from_secs(5), || async move {
        team(a, "team-good").await.spend == 0
    })
    .await;
    assert!(ok, "valid row not reset next to invalid ones");
    // a direct tick reports the invalid rows and changes nothing about them
    let r = Resetter::new(app.state.clone())
        .tick(store::now())
        .await
        .unwrap();
    assert_eq!(r.invalid, 3, "{r:?}");
    for id in ["team-bad", "team-bad-2"] {
        let t = team(&app, id).await;
        assert_eq!(t.spend, 3);
        assert_eq!(t.budget_reset_at, Some(past));
    }
    assert_eq!(team(&app, "team-bad-null").await.budget_reset_at, None);
    // and the server still answers
    let (s, _) = app.get_anon("/health/readiness").await;
    assert_eq!(s, 200);
    app.shutdown().await;
}

/// More stuck rows than one page (500) must not hide a due row behind them: the tick pages on.
async fn tick_pages_past_stuck_rows(b: Backend) {
    let app = TestApp::spawn_with(b, NO_RESET_CONFIG).await;
    let now = store::now();
    let stuck_at = now - chrono::Duration::hours(3);
    let mut h = app.state.db.begin_write().await.unwrap();
    for i in 0..520 {
        let mut t = team_row(&format!("stuck-{i:04}"), None, now);
        t.spend = 1;
        t.budget_duration = Some("nonsense".into());
        t.budget_reset_at = Some(stuck_at);
        store::teams::insert(&mut h, &t).await.unwrap();
    }
    let old = due_hourly_team_at(now - chrono::Duration::hours(1));
    let mut t = team_row("zz-due-last", None, now);
    t.spend = 8;
    t.budget_duration = Some("1h".into());
    t.budget_reset_at = Some(old);
    store::teams::insert(&mut h, &t).await.unwrap();
    h.commit().await.unwrap();

    let r = Resetter::new(app.state.clone()).tick(now).await.unwrap();
    assert_eq!((r.teams, r.invalid), (1, 520), "{r:?}");
    let after = team(&app, "zz-due-last").await;
    assert_eq!(after.spend, 0);
    assert_eq!(
        after.budget_reset_at,
        Some(
            BudgetDuration::parse("1h")
                .unwrap()
                .next_reset_after(old, now)
        )
    );
    assert_eq!(team(&app, "stuck-0519").await.spend, 1);
    app.shutdown().await;
}

/// The start of the hour containing `t`.
fn due_hourly_team_at(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap()
}

both_backends!(
    tick_pages_past_stuck_rows,
    team_budget_resets_within_seconds,
    keys_and_users_reset_within_seconds,
    member_budget_resets_linked_memberships,
    concurrent_resets_one_winner,
    disabled_job_does_not_reset,
    missing_reset_instant_is_initialised,
    invalid_duration_is_skipped,
);

// ------------------------------------------------------------------ spend routes

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const KEY_A: &str = "sk-spend-key-a-0123456789";

/// Five logs over three days; returns nothing, ids r1..r5 (r5 newest).
async fn seed_logs(app: &TestApp) {
    let ka = hash_key(KEY_A);
    let kb = "b".repeat(64);
    let rows = [
        log_row(
            "r1",
            &ka,
            Some("u1"),
            Some("t1"),
            1_234_567_891,
            at("2026-11-20T08:00:00Z"),
        ),
        log_row(
            "r2",
            &ka,
            Some("u2"),
            Some("t1"),
            1,
            at("2026-11-21T09:30:00Z"),
        ),
        log_row(
            "r3",
            &kb,
            Some("u1"),
            Some("t2"),
            500_000_000,
            at("2026-11-21T23:59:59.999999Z"),
        ),
        log_row(
            "r4",
            &kb,
            None,
            None,
            2_000_000_000,
            at("2026-11-22T00:00:00Z"),
        ),
        log_row(
            "r5",
            &ka,
            Some("u1"),
            Some("t2"),
            3,
            at("2026-11-22T12:00:00Z"),
        ),
    ];
    let mut h = app.state.db.conn().await.unwrap();
    for r in &rows {
        store::spend::insert_log(&mut h, r).await.unwrap();
    }
}

fn ids(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {body}"))
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

async fn spend_logs_filters_and_order(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed_logs(&app).await;
    let (s, body) = app.get("/spend/logs", MASTER).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(ids(&body), ["r5", "r4", "r3", "r2", "r1"]);
    let r1 = &body[4];
    assert_eq!(r1["spend"], json!(1.234567891), "nanos → dollars exactly");
    assert_eq!(r1["api_key"], hash_key(KEY_A));
    assert_eq!(r1["user"], "u1");
    assert_eq!(r1["team_id"], "t1");
    assert_eq!(r1["startTime"], "2026-11-20T08:00:00.000000Z");
    assert_eq!(r1["endTime"], "2026-11-20T08:00:00.250000Z");
    assert_eq!(r1["total_tokens"], 30);
    assert_eq!(r1["prompt_tokens"], 10);
    assert_eq!(r1["completion_tokens"], 20);
    assert_eq!(r1["model"], "fake-gpt");
    assert_eq!(r1["model_group"], "fake-gpt");
    assert_eq!(r1["call_type"], "acompletion");
    assert_eq!(r1["status"], "success");
    assert_eq!(r1["metadata"], json!({"tags": ["a"]}));
    assert_eq!(body[1]["spend"], json!(2.0));
    assert_eq!(body[1]["team_id"], Value::Null);

    let by_raw = format!("api_key={KEY_A}");
    let by_hash = format!("api_key={}", hash_key(KEY_A));
    let cases: [(&str, Vec<&str>); 12] = [
        (&by_raw, vec!["r5", "r2", "r1"]),
        (&by_hash, vec!["r5", "r2", "r1"]),
        ("user_id=u1", vec!["r5", "r3", "r1"]),
        ("team_id=t2", vec!["r5", "r3"]),
        ("request_id=r3", vec!["r3"]),
        (
            "start_date=2026-11-21&end_date=2026-11-21&summarize=false",
            vec!["r3", "r2"],
        ),
        ("start_date=2026-11-22", vec!["r5", "r4"]),
        ("end_date=2026-11-20", vec!["r1"]),
        (
            "start_date=2026-11-21T09:30:00Z&end_date=2026-11-22T00:00:00%2B00:00&summarize=0",
            vec!["r4", "r3", "r2"],
        ),
        ("user_id=u1&team_id=t2&api_key=", vec!["r5", "r3"]),
        ("page_size=2&page=2", vec!["r3", "r2"]),
        ("page_size=2&page=4", vec![]),
    ];
    for (q, want) in cases {
        let (s, body) = app.get(&format!("/spend/logs?{q}"), MASTER).await;
        assert_eq!(s, 200, "{q}: {body}");
        assert_eq!(ids(&body), want, "{q}");
    }
    app.shutdown().await;
}

fn usd(n: i64) -> Value {
    json!(purser_core::money::Nanos(n).to_usd())
}

async fn spend_logs_summary(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed_logs(&app).await;
    let ka = hash_key(KEY_A);
    let kb = "b".repeat(64);
    let (s, body) = app
        .get(
            "/spend/logs?start_date=2026-11-20&end_date=2026-11-23",
            MASTER,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let mut d1 = json!({"startTime": "2026-11-20", "spend": usd(1_234_567_891),
        "users": {"u1": usd(1_234_567_891)}, "models": {"fake-gpt": usd(1_234_567_891)}});
    d1[&ka] = usd(1_234_567_891);
    let mut d2 = json!({"startTime": "2026-11-21", "spend": usd(500_000_001),
        "users": {"u2": usd(1), "u1": usd(500_000_000)}, "models": {"fake-gpt": usd(500_000_001)}});
    d2[&ka] = usd(1);
    d2[&kb] = usd(500_000_000);
    let mut d3 = json!({"startTime": "2026-11-22", "spend": usd(2_000_000_003),
        "users": {"null": usd(2_000_000_000), "u1": usd(3)}, "models": {"fake-gpt": usd(2_000_000_003)}});
    d3[&ka] = usd(3);
    d3[&kb] = usd(2_000_000_000);
    let d4 = json!({"startTime": "2026-11-23", "spend": 0.0, "users": {}, "models": {}});
    assert_eq!(body, json!([d1, d2, d3, d4]));
    // filters apply to the summary; no matching rows → []
    let (s, body) = app
        .get(
            &format!("/spend/logs?start_date=2026-11-21&end_date=2026-11-21&api_key={KEY_A}"),
            MASTER,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["spend"], usd(1));
    let (s, body) = app
        .get(
            "/spend/logs?start_date=2026-11-21&end_date=2026-11-21&user_id=nobody",
            MASTER,
        )
        .await;
    assert_eq!((s.as_u16(), body), (200, json!([])));
    app.shutdown().await;
}

async fn spend_logs_hostile_params(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed_logs(&app).await;
    for q in [
        "start_date=yesterday",
        "end_date=2026-02-30",
        "start_date=2026-11-2%27",
        "end_date=%F0%9F%99%82",
    ] {
        let (s, body) = app.get(&format!("/spend/logs?{q}"), MASTER).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {body}");
        let msg = assert_proxy_error(&body, 400, "bad_request_error");
        assert!(msg.contains("YYYY-MM-DD"), "{msg}");
    }
    let (s, body) = app
        .get(
            "/spend/logs?start_date=2026-11-22&end_date=2026-11-20",
            MASTER,
        )
        .await;
    assert_eq!(s, 400);
    assert_proxy_error(&body, 400, "bad_request_error");
    for (q, field) in [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page_size=0", "page_size"),
        ("page_size=1001", "page_size"),
        ("page_size=1e3", "page_size"),
        ("summarize=maybe", "summarize"),
    ] {
        let (s, body) = app.get(&format!("/spend/logs?{q}"), MASTER).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {body}");
        let d = assert_detail(&body);
        assert_eq!(d[0]["loc"], json!(["query", field]), "{q}: {body}");
    }
    // injection-looking and unicode values are plain values: no match, no error, nothing changed
    for q in [
        "user_id=%27%20OR%201%3D1%20--",
        "team_id=t1%27%3B%20DROP%20TABLE%20spend_logs%3B%20--",
        "api_key=%F0%9F%99%82",
        "request_id=%00",
    ] {
        let (s, body) = app.get(&format!("/spend/logs?{q}"), MASTER).await;
        assert_eq!(s, 200, "{q}: {body}");
        assert_eq!(body, json!([]), "{q}");
    }
    let long = "x".repeat(10_000);
    let (s, body) = app
        .get(&format!("/spend/logs?user_id={long}"), MASTER)
        .await;
    assert_eq!((s.as_u16(), body), (200, json!([])));
    let (s, body) = app.get("/spend/logs", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&body).len(), 5, "read-only route changed nothing");
    app.shutdown().await;
}

async fn spend_routes_role_matrix(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed_logs(&app).await;
    let viewer = user_with_key(&app, "viewer", "proxy_admin_viewer").await;
    let admin = user_with_key(&app, "admin", "proxy_admin").await;
    let internal = user_with_key(&app, "internal", "internal_user").await;
    let iviewer = user_with_key(&app, "iviewer", "internal_user_viewer").await;
    // a team admin (internal user with the admin role in a team) is not a proxy admin
    let tadmin = user_with_key(&app, "tadmin", "internal_user").await;
    let now = store::now();
    insert_team(&app, &team_row("t1", Some("team one"), now)).await;
    let mut h = app.state.db.conn().await.unwrap();
    let mut m = member_row("t1", "tadmin", 0, None, now);
    m.role = "admin".into();
    store::members::insert(&mut h, &m).await.unwrap();
    drop(h);

    for path in ["/spend/logs", "/global/spend/teams"] {
        for k in [MASTER, admin.as_str(), viewer.as_str()] {
            let (s, body) = app.get(path, k).await;
            assert_eq!(s, 200, "{path}: {body}");
        }
        for k in [internal.as_str(), iviewer.as_str(), tadmin.as_str()] {
            let (s, body) = app.get(path, k).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert_proxy_error(&body, 401, "auth_error");
        }
        let (s, body) = app.get_anon(path).await;
        assert_eq!(s, 401, "{path}: {body}");
        let (s, body) = app.get(path, "sk-unknown-key-000000000").await;
        assert_eq!(s, 401, "{path}: {body}");
        // read routes only
        let (s, _) = app.post(path, MASTER, json!({})).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    app.shutdown().await;
}

async fn global_spend_per_team(b: Backend) {
    let app = TestApp::spawn(b).await;
    let now = store::now();
    insert_team(&app, &team_row("t-alpha", Some("alpha"), now)).await;
    insert_team(&app, &team_row("t-beta", None, now)).await;
    let today = now.date_naive().and_hms_opt(12, 0, 0).unwrap().and_utc();
    let yesterday = today - chrono::Duration::days(1);
    let long_ago = today - chrono::Duration::days(45);
    let rows = [
        log_row("g1", "k", None, Some("t-alpha"), 100_000_001, yesterday),
        log_row("g2", "k", None, Some("t-alpha"), 200_000_002, today),
        log_row("g3", "k", None, Some("t-alpha"), 1, today),
        log_row("g4", "k", None, Some("t-beta"), 1_000_000_000, today),
        log_row("g5", "k", None, None, 5, yesterday),
        log_row("g6", "k", None, Some("t-beta"), 999_000_000_000, long_ago),
    ];
    let mut h = app.state.db.conn().await.unwrap();
    for r in &rows {
        store::spend::insert_log(&mut h, r).await.unwrap();
    }
    drop(h);
    let (s, body) = app.get("/global/spend/teams", MASTER).await;
    assert_eq!(s, 200, "{body}");
    let d0 = yesterday.format("%Y-%m-%d").to_string();
    let d1 = today.format("%Y-%m-%d").to_string();
    assert_eq!(
        body["daily_spend"],
        json!([
            {"date": d0, "alpha": 0.100000001, "Unassigned": 0.000000005},
            {"date": d1, "alpha": 0.200000003, "t-beta": 1.0},
        ]),
        "{body}"
    );
    assert_eq!(body["teams"], json!(["t-beta", "alpha", "Unassigned"]));
    assert_eq!(
        body["total_spend_per_team"],
        json!([
            {"team_id": "t-beta", "team_alias": null, "total_spend": 1.0},
            {"team_id": "t-alpha", "team_alias": "alpha", "total_spend": 0.300000004},
            {"team_id": null, "team_alias": null, "total_spend": 0.000000005},
        ])
    );
    app.shutdown().await;
}

async fn global_spend_empty(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, body) = app.get("/global/spend/teams", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({"daily_spend": [], "teams": [], "total_spend_per_team": []})
    );
    let (s, body) = app.get("/spend/logs", MASTER).await;
    assert_eq!((s.as_u16(), body), (200, json!([])));
    app.shutdown().await;
}

both_backends!(
    spend_logs_summary,
    spend_logs_filters_and_order,
    spend_logs_hostile_params,
    spend_routes_role_matrix,
    global_spend_per_team,
    global_spend_empty,
);
