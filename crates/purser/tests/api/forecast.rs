//! The spend forecast in `/team/info` and `/key/info`: on recorded spend with known answers (a
//! team and a key backdated, their spend logs written an hour to a day ago), thin data reported
//! as such with its reason, idle budgets, on both backends.

use chrono::{Duration, Utc};
use purser::on_conn;
use purser_core::keys::hash_key;
use serde_json::{Value, json};

use crate::helpers::{Backend, MASTER, TestApp};

fn log_row(
    team: &str,
    key_hash: &str,
    hours_ago: i64,
    nanos: i64,
) -> purser::store::spend::SpendLogRow {
    let t = Utc::now() - Duration::hours(hours_ago);
    purser::store::spend::SpendLogRow {
        request_id: uuid::Uuid::new_v4().to_string(),
        call_type: "acompletion".into(),
        api_key: key_hash.into(),
        spend: nanos,
        total_tokens: 10,
        prompt_tokens: 5,
        completion_tokens: 5,
        start_time: t,
        end_time: t,
        model: "fake-gpt".into(),
        model_id: None,
        model_group: Some("fake-gpt".into()),
        custom_llm_provider: Some("openai".into()),
        api_base: None,
        user_id: None,
        team_id: Some(team.into()),
        end_user: None,
        status: "success".into(),
        metadata: sqlx::types::Json(json!({})),
    }
}

async fn spend_forecast_known_answers(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "fc", "max_budget": 10.0}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let key = app
        .key_with(json!({"team_id": "fc", "max_budget": 2.0}))
        .await;
    let hash = hash_key(&key);

    // Nothing spent yet: idle, no projection.
    let (s, info) = app.get("/team/info?team_id=fc", MASTER).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["spend_forecast"]["status"], "idle", "{info}");
    assert!(info["spend_forecast"]["hours_until_exhausted"].is_null());

    // Recorded history: the team is two days old and has spent $4; in the last day twelve
    // calls of $0.25 ($3: $0.125 an hour). $6 left lasts 48 hours; the reset is in 72.
    let now = Utc::now();
    let db = app.reopen_db().await;
    let mut h = db.conn().await.unwrap();
    on_conn!(h, c => sqlx::query("UPDATE teams SET created_at = $1, spend = $2, budget_reset_at = $3 WHERE team_id = 'fc'")
        .bind(now - Duration::hours(48)).bind(4_000_000_000i64).bind(now + Duration::hours(72))
        .execute(c).await.map(|_| ()))
    .unwrap();
    on_conn!(h, c => sqlx::query("UPDATE verification_tokens SET created_at = $1, spend = $2 WHERE token = $3")
        .bind(now - Duration::hours(48)).bind(1_000_000_000i64).bind(&hash)
        .execute(c).await.map(|_| ()))
    .unwrap();
    for i in 0..12 {
        let row = log_row("fc", &hash, 1 + i, 250_000_000);
        purser::store::spend::insert_log(&mut h, &row)
            .await
            .unwrap();
    }
    // Older than the window: not part of the rate.
    let old = log_row("fc", &hash, 30, 5_000_000_000);
    purser::store::spend::insert_log(&mut h, &old)
        .await
        .unwrap();
    drop(h);
    db.close().await;

    let (s, info) = app.get("/team/info?team_id=fc", MASTER).await;
    assert_eq!(s, 200, "{info}");
    let f = &info["spend_forecast"];
    assert_eq!(f["status"], "projected", "{f}");
    assert_eq!(f["window_calls"], 12);
    assert!(
        (f["window_spend"].as_f64().unwrap() - 3.0).abs() < 1e-9,
        "{f}"
    );
    assert!(
        (f["burn_rate_per_hour"].as_f64().unwrap() - 0.125).abs() < 1e-6,
        "{f}"
    );
    assert!(
        (f["remaining_budget"].as_f64().unwrap() - 6.0).abs() < 1e-9,
        "{f}"
    );
    assert!(
        (f["hours_until_exhausted"].as_f64().unwrap() - 48.0).abs() < 0.01,
        "{f}"
    );
    assert_eq!(f["exhausts_before_reset"], true);
    assert!(f["projected_exhausted_at"].is_string());

    // The key: $1 of $2 spent at the same $0.125 an hour lasts 8 hours; it has no reset.
    let (s, info) = app.get(&format!("/key/info?key={key}"), MASTER).await;
    assert_eq!(s, 200, "{info}");
    let f = &info["spend_forecast"];
    assert_eq!(f["status"], "projected", "{f}");
    assert!(
        (f["hours_until_exhausted"].as_f64().unwrap() - 8.0).abs() < 0.01,
        "{f}"
    );
    assert!(f["exhausts_before_reset"].is_null());

    // A new key with two calls: too little data for a rate, and it says why.
    let young = app.key_with(json!({"max_budget": 1.0})).await;
    for _ in 0..2 {
        let (s, _) = app
            .post(
                "/v1/chat/completions",
                &young,
                json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let mut f = Value::Null;
    for _ in 0..100 {
        let (_, info) = app.get(&format!("/key/info?key={young}"), MASTER).await;
        f = info["spend_forecast"].clone();
        if f["window_calls"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(f["status"], "insufficient_data", "{f}");
    assert!(f["reason"].as_str().unwrap().contains("2 call(s)"), "{f}");
    assert!(f["burn_rate_per_hour"].is_null());

    app.shutdown().await;
}

crate::both_backends!(spend_forecast_known_answers);
