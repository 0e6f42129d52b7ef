//! End to end through the real management routes: every governance change made with the API is
//! enforced on the very next LLM call, and spend read back through the API agrees exactly.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::*;

async fn chat(app: &TestApp, key: &str) -> (reqwest::StatusCode, Value) {
    app.post(
        "/v1/chat/completions",
        key,
        json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await
}

async fn ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (s, b) = app.post(path, MASTER, body).await;
    assert_eq!(s, 200, "{path}: {b}");
    b
}

async fn governance_changes_apply_on_the_next_call(b: Backend) {
    let app = TestApp::spawn(b).await;
    ok(
        &app,
        "/team/new",
        json!({"team_id": "e2e", "models": ["fake-gpt"], "max_budget": 100}),
    )
    .await;
    ok(
        &app,
        "/user/new",
        json!({"user_id": "alice", "auto_create_key": false}),
    )
    .await;
    // A member budget smaller than one call: the first call passes, the next is refused.
    ok(
        &app,
        "/team/member_add",
        json!({"team_id": "e2e", "member": {"user_id": "alice", "role": "user"}, "max_budget_in_team": 0.0000001}),
    )
    .await;
    let key = ok(
        &app,
        "/key/generate",
        json!({"team_id": "e2e", "user_id": "alice"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(chat(&app, &key).await.0, 200);
    let (s, body) = chat(&app, &key).await;
    assert_eq!(s, 422, "{body}");
    assert_proxy_error(&body, 422, "budget_exceeded");

    // Removing the member kills the member's team key at once.
    ok(
        &app,
        "/team/member_delete",
        json!({"team_id": "e2e", "user_id": "alice"}),
    )
    .await;
    let (s, body) = chat(&app, &key).await;
    assert_eq!(s, 401, "{body}");

    // Re-added with a real budget, the member starts from zero spend in the team.
    ok(
        &app,
        "/team/member_add",
        json!({"team_id": "e2e", "member": {"user_id": "alice", "role": "user"}, "max_budget_in_team": 1.0}),
    )
    .await;
    let key = ok(
        &app,
        "/key/generate",
        json!({"team_id": "e2e", "user_id": "alice"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(chat(&app, &key).await.0, 200);

    // Block / unblock.
    ok(&app, "/team/block", json!({"team_id": "e2e"})).await;
    let (s, body) = chat(&app, &key).await;
    assert_eq!(s, 401, "{body}");
    assert!(assert_proxy_error(&body, 401, "").contains("is blocked"));
    ok(&app, "/team/unblock", json!({"team_id": "e2e"})).await;
    assert_eq!(chat(&app, &key).await.0, 200);

    // Model list changes.
    ok(
        &app,
        "/team/update",
        json!({"team_id": "e2e", "models": ["other-model"]}),
    )
    .await;
    let (s, body) = chat(&app, &key).await;
    assert_eq!(s, 403, "{body}");
    assert_proxy_error(&body, 403, "team_model_access_denied");
    ok(
        &app,
        "/team/update",
        json!({"team_id": "e2e", "models": ["fake-gpt"]}),
    )
    .await;
    assert_eq!(chat(&app, &key).await.0, 200);

    // Team budget lowered below what was spent.
    ok(
        &app,
        "/team/update",
        json!({"team_id": "e2e", "max_budget": 0.0000001}),
    )
    .await;
    let (s, body) = chat(&app, &key).await;
    assert_eq!(s, 422, "{body}");
    assert!(assert_proxy_error(&body, 422, "budget_exceeded").contains("Team=e2e"));
    ok(
        &app,
        "/team/update",
        json!({"team_id": "e2e", "max_budget": null}),
    )
    .await;
    assert_eq!(chat(&app, &key).await.0, 200);

    // Spend read back through the API agrees with the spend logs, to the nano-dollar.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, info) = app.get("/team/info?team_id=e2e", MASTER).await;
    let (_, logs) = app.get("/spend/logs?team_id=e2e", MASTER).await;
    let logs = logs.as_array().expect("spend logs list");
    assert_eq!(logs.len(), 5, "five successful calls were billed");
    let nanos = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as i64;
    let logged: i64 = logs.iter().map(|l| nanos(&l["spend"])).sum();
    assert!(logged > 0);
    assert_eq!(nanos(&info["team_info"]["spend"]), logged);
    let (_, k) = app.get(&format!("/key/info?key={key}"), MASTER).await;
    let key_logged: i64 = logs
        .iter()
        .filter(|l| l["api_key"] == purser_core::keys::hash_key(&key))
        .map(|l| nanos(&l["spend"]))
        .sum();
    assert_eq!(nanos(&k["info"]["spend"]), key_logged);

    // Deleting the key stops it; a team deleted and re-created under the same id starts over.
    ok(&app, "/key/delete", json!({"keys": [key.clone()]})).await;
    assert_eq!(chat(&app, &key).await.0, 401);
    ok(&app, "/team/delete", json!({"team_ids": ["e2e"]})).await;
    ok(
        &app,
        "/team/new",
        json!({"team_id": "e2e", "models": ["fake-gpt"], "max_budget": 0.0000001}),
    )
    .await;
    ok(
        &app,
        "/team/member_add",
        json!({"team_id": "e2e", "member": {"user_id": "alice", "role": "user"}}),
    )
    .await;
    let key = ok(
        &app,
        "/key/generate",
        json!({"team_id": "e2e", "user_id": "alice"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        chat(&app, &key).await.0,
        200,
        "a re-created team does not inherit old spend"
    );
    app.shutdown().await;
}

both_backends!(governance_changes_apply_on_the_next_call);
