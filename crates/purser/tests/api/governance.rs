//! Governance rules that used to be walkable (issue: no field accepted and ignored): route access
//! by `key_type` / `allowed_routes`, a blocked team on every route, viewers who are team admins,
//! keys minting keys only inside their own scope, owners who may only tighten their key.
//! Each denial is checked with its status, type and message, and with nothing changed after it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::*;
use crate::mock_upstream::MockUpstream;

fn chat() -> Value {
    json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]})
}

async fn generate(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    app.post("/key/generate", key, body).await
}

/// A key made by the master key; returns (raw key, response).
async fn admin_key(app: &TestApp, body: Value) -> (String, Value) {
    let (s, b) = generate(app, MASTER, body).await;
    assert_eq!(s, 200, "{b}");
    (b["key"].as_str().unwrap().to_string(), b)
}

async fn key_info(app: &TestApp, key: &str) -> Value {
    let (s, b) = app.get(&format!("/key/info?key={key}"), MASTER).await;
    assert_eq!(s, 200, "{b}");
    b["info"].clone()
}

#[track_caller]
fn route_denied(s: StatusCode, b: &Value, allowed: &str, route: &str) {
    assert_eq!(s, 403, "{b}");
    let msg = assert_proxy_error(b, 403, "auth_error");
    assert_eq!(
        msg,
        format!(
            "Virtual key is not allowed to call this route. Only allowed to call routes: [{allowed}]. Tried to call route: {route}"
        )
    );
}

async fn key_types_and_allowed_routes(b: Backend) {
    let app = TestApp::spawn(b).await;

    // read_only: info routes and nothing else.
    let (ro, r) = admin_key(&app, json!({"key_type": "read_only"})).await;
    assert_eq!(r["allowed_routes"], json!(["info_routes"]));
    let (s, body) = app.get("/key/info", &ro).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app.get("/v1/models", &ro).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = generate(&app, &ro, json!({})).await;
    route_denied(s, &body, "'info_routes'", "/key/generate");
    let (s, body) = app.post("/v1/chat/completions", &ro, chat()).await;
    route_denied(s, &body, "'info_routes'", "/v1/chat/completions");

    // llm_api: model calls, no management.
    let (llm, _) = admin_key(&app, json!({"key_type": "llm_api"})).await;
    let (s, body) = app.post("/v1/chat/completions", &llm, chat()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = generate(&app, &llm, json!({})).await;
    route_denied(s, &body, "'llm_api_routes'", "/key/generate");
    let (s, body) = app.get("/key/info", &llm).await;
    route_denied(s, &body, "'llm_api_routes'", "/key/info");

    // management: manages, cannot call models; path templates match their parameters.
    let (mgmt, _) = admin_key(&app, json!({"key_type": "management"})).await;
    let (s, body) = app.post("/v1/chat/completions", &mgmt, chat()).await;
    route_denied(s, &body, "'management_routes'", "/v1/chat/completions");
    let (s, body) = app.get("/key/list", &mgmt).await;
    assert_eq!(s, 200, "{body}");
    let (own, _) = admin_key(&app, json!({"key_type": "management"})).await;
    let (s, body) = app
        .post(&format!("/key/{own}/regenerate"), &own, json!({}))
        .await;
    assert_eq!(s, 200, "{body}");

    // Explicit lists: exact paths, prefixes at a `/`, wildcards.
    let (exact, _) = admin_key(&app, json!({"allowed_routes": ["/key/info"]})).await;
    let (s, _) = app.get("/key/info", &exact).await;
    assert_eq!(s, 200);
    let (s, body) = app.get("/key/list", &exact).await;
    route_denied(s, &body, "'/key/info'", "/key/list");
    let (wild, _) = admin_key(&app, json!({"allowed_routes": ["/v1/*"]})).await;
    let (s, _) = app.post("/v1/chat/completions", &wild, chat()).await;
    assert_eq!(s, 200);
    let (s, body) = app.post("/chat/completions", &wild, chat()).await;
    route_denied(s, &body, "'/v1/*'", "/chat/completions");

    // Refused, not stored: unknown groups and key_type conflicting with a list.
    let (s, body) = generate(&app, MASTER, json!({"allowed_routes": ["info_route"]})).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        assert_proxy_error(&body, 400, "bad_request_error").contains("'info_route'"),
        "{body}"
    );
    let (s, body) = generate(
        &app,
        MASTER,
        json!({"key_type": "read_only", "allowed_routes": ["/key/generate"]}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(assert_proxy_error(&body, 400, "").contains("key_type=read_only"));
    let (s, body) = generate(&app, MASTER, json!({"key_type": "root"})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = generate(&app, MASTER, json!({"allowed_routes": "llm_api_routes"})).await;
    assert_eq!(s, 422, "{body}");

    // /key/update: a new key_type replaces the group the old one set; default lifts it.
    let (s, body) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": ro, "key_type": "llm_api"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        key_info(&app, &ro).await["allowed_routes"],
        json!(["llm_api_routes"])
    );
    let (s, _) = app.post("/v1/chat/completions", &ro, chat()).await;
    assert_eq!(s, 200);
    let (s, body) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": ro, "key_type": "default"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(key_info(&app, &ro).await["allowed_routes"], json!([]));
    let (s, _) = app.get("/key/info", &ro).await;
    assert_eq!(s, 200);
    // The master key has no list.
    let (s, _) = app.get("/key/list", MASTER).await;
    assert_eq!(s, 200);
    app.shutdown().await;
}

async fn blocked_team_stops_every_route(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, t) = app
        .post("/team/new", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200, "{t}");
    let (k, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (s, body) = app.get("/key/info", &k).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app
        .post("/team/block", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let blocked =
        "Authentication Error, Team=t1 is blocked. Update via `/team/unblock` if you're an admin.";
    for (s, body) in [
        generate(&app, &k, json!({})).await,
        app.get("/key/info", &k).await,
        app.get("/v1/models", &k).await,
        app.get("/team/info?team_id=t1", &k).await,
        app.post("/v1/chat/completions", &k, chat()).await,
    ] {
        assert_eq!(s, 401, "{body}");
        assert_eq!(assert_proxy_error(&body, 401, "auth_error"), blocked);
    }
    let (s, l) = app.get("/key/list?team_id=t1", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(
        l["keys"].as_array().unwrap().len(),
        1,
        "no key was minted: {l}"
    );
    let (s, _) = app
        .post("/team/unblock", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200);
    let (s, body) = app.get("/key/info", &k).await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

async fn roster(app: &TestApp) -> Value {
    app.get("/team/info?team_id=t1", MASTER).await.1["team_info"]["members_with_roles"].clone()
}

async fn viewers_never_write_even_as_team_admins(b: Backend) {
    let app = TestApp::spawn(b).await;
    let viewer = app.user_with_key("viewer", "internal_user_viewer").await;
    let admin = app.user_with_key("boss", "internal_user").await;
    let _ = app.user_with_key("member", "internal_user").await;
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t1", "members_with_roles": [
                {"role": "admin", "user_id": "viewer"},
                {"role": "admin", "user_id": "boss"},
                {"role": "user", "user_id": "member"}]}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let before = roster(&app).await;

    let (s, body) = app
        .post(
            "/team/member_add",
            &viewer,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "newbie"}}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        assert_detail(&body)["error"]
            .as_str()
            .unwrap()
            .contains("not proxy admin OR team admin")
    );
    let (s, body) = app
        .post(
            "/team/member_update",
            &viewer,
            json!({"team_id": "t1", "user_id": "member", "role": "admin"}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            "/team/member_delete",
            &viewer,
            json!({"team_id": "t1", "user_id": "member"}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            "/team/permissions_update",
            &viewer,
            json!({"team_id": "t1", "team_member_permissions": ["/key/generate"]}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        body,
        json!({"detail": "You do not have access to this team"})
    );
    let (s, body) = app
        .post(
            "/team/update",
            &viewer,
            json!({"team_id": "t1", "max_budget": 1}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            "/team/t1/member/member/reset_spend",
            &viewer,
            json!({"reset_to": 0}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(roster(&app).await, before, "nothing changed");
    let (_, p) = app.get("/team/permissions_list?team_id=t1", MASTER).await;
    assert_eq!(p["team_member_permissions"], json!([]));
    // Reading stays open to the viewer; a team admin who is not a viewer still writes.
    let (s, body) = app.get("/team/info?team_id=t1", &viewer).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app
        .post(
            "/team/member_update",
            &admin,
            json!({"team_id": "t1", "user_id": "member", "role": "admin"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

async fn keys_mint_only_inside_their_scope(b: Backend) {
    let app = TestApp::spawn(b).await;
    for t in ["t1", "t2"] {
        let (s, body) = app.post("/team/new", MASTER, json!({"team_id": t})).await;
        assert_eq!(s, 200, "{body}");
    }
    // A team's own key (no user), with a model list and a budget.
    let (sa, _) = admin_key(
        &app,
        json!({"team_id": "t1", "models": ["fake-gpt"], "max_budget": 5}),
    )
    .await;
    let (s, minted) = generate(&app, &sa, json!({})).await;
    assert_eq!(s, 200, "{minted}");
    assert_eq!(minted["team_id"], "t1");
    assert_eq!(minted["models"], json!(["fake-gpt"]));
    assert_eq!(minted["max_budget"], json!(5.0));
    assert_eq!(minted["user_id"], Value::Null);
    let (s, body) = generate(&app, &sa, json!({"max_budget": 2})).await;
    assert_eq!(s, 200, "tighter is fine: {body}");

    let outside = |body: &Value, needle: &str| {
        let msg = assert_proxy_error(body, 403, "auth_error");
        // The key routes' wrapper: Python's str() of {"error": msg}.
        assert!(msg.starts_with("{'error': "), "{msg}");
        assert!(
            msg.contains("A key can only create keys inside its own scope: "),
            "{msg}"
        );
        assert!(msg.contains(needle), "{msg}");
    };
    let (s, body) = generate(&app, &sa, json!({"team_id": "t2"})).await;
    assert_eq!(s, 403, "{body}");
    outside(&body, "requested team_id=t2");
    let (s, body) = generate(&app, &sa, json!({"models": ["gpt-4"]})).await;
    assert_eq!(s, 403, "{body}");
    outside(&body, "model gpt-4");
    let (s, body) = generate(&app, &sa, json!({"max_budget": 50})).await;
    assert_eq!(s, 403, "{body}");
    outside(&body, "max_budget 50 is above");
    let (s, body) = generate(&app, &sa, json!({"user_id": "someone"})).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        assert_proxy_error(&body, 400, "bad_request_error")
            .contains("User=someone not assigned to team=t1")
    );
    let (_, l) = app.get("/key/list?team_id=t1", MASTER).await;
    assert_eq!(
        l["keys"].as_array().unwrap().len(),
        3,
        "only the two allowed mints: {l}"
    );
    let (_, l) = app.get("/key/list?team_id=t2", MASTER).await;
    assert_eq!(l["keys"].as_array().unwrap().len(), 0, "{l}");

    // A personal key bounds what its owner mints through it too.
    let _ = app.user_with_key("u1", "internal_user").await;
    let (personal, _) = admin_key(&app, json!({"user_id": "u1", "max_budget": 1})).await;
    let (s, minted) = generate(&app, &personal, json!({})).await;
    assert_eq!(s, 200, "{minted}");
    assert_eq!(minted["user_id"], "u1");
    assert_eq!(minted["max_budget"], json!(1.0));
    let (s, body) = generate(&app, &personal, json!({"max_budget": 3})).await;
    assert_eq!(s, 403, "{body}");
    // Proxy admins are not bounded.
    let (s, body) = generate(&app, MASTER, json!({"team_id": "t2", "max_budget": 100})).await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

async fn owners_may_only_tighten(b: Backend) {
    let app = TestApp::spawn(b).await;
    let owner = app.user_with_key("u1", "internal_user").await;
    let (k, _) = admin_key(
        &app,
        json!({"user_id": "u1", "max_budget": 10, "rpm_limit": 5, "tpm_limit": 500,
               "max_parallel_requests": 2, "models": ["fake-gpt", "gpt-4"], "duration": "1h",
               "budget_duration": "1d", "allowed_routes": ["llm_api_routes"]}),
    )
    .await;
    let before = key_info(&app, &k).await;
    let loosen = [
        (json!({"max_budget": 20}), "max_budget"),
        (json!({"max_budget": null}), "max_budget"),
        (json!({"rpm_limit": null}), "rpm_limit"),
        (json!({"tpm_limit": 5000}), "tpm_limit"),
        (json!({"max_parallel_requests": 9}), "max_parallel_requests"),
        (json!({"models": []}), "models"),
        (json!({"models": ["fake-gpt", "gpt-5"]}), "models"),
        (json!({"duration": null}), "duration"),
        (json!({"duration": "30d"}), "duration"),
        (json!({"allowed_routes": []}), "allowed_routes"),
        (json!({"allowed_routes": ["/key/info"]}), "allowed_routes"),
        (json!({"budget_duration": "1h"}), "budget_duration"),
    ];
    for (mut body, field) in loosen {
        body["key"] = json!(k);
        let (s, e) = app.post("/key/update", &owner, body.clone()).await;
        assert_eq!(s, 403, "{body} → {e}");
        let msg = assert_proxy_error(&e, 403, "auth_error");
        assert!(
            msg.contains(&format!("raise or remove {field} ")),
            "{body} → {msg}"
        );
    }
    let mut after = key_info(&app, &k).await;
    after["updated_at"] = before["updated_at"].clone();
    assert_eq!(after, before, "no refused update changed the key");

    // Tightening is the owner's to do.
    let (s, e) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": k, "max_budget": 4, "rpm_limit": 2, "models": ["fake-gpt"], "duration": "10m"}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let now = key_info(&app, &k).await;
    assert_eq!(now["max_budget"], json!(4.0));
    assert_eq!(now["models"], json!(["fake-gpt"]));
    // A proxy admin may loosen again.
    let (s, e) = app
        .post("/key/update", MASTER, json!({"key": k, "max_budget": null}))
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(key_info(&app, &k).await["max_budget"], Value::Null);
    app.shutdown().await;
}

/// Opens a `gpt-long` stream with `key` and reads its first chunk: the call is in flight.
async fn open_stream(app: &TestApp, key: &str) -> reqwest::Response {
    let mut r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-long", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    r
}

#[track_caller]
fn parallel_denied(s: StatusCode, body: &Value, scope: &str) {
    assert_eq!(s, 429, "{body}");
    let msg = assert_proxy_error(body, 429, "rate_limit_error");
    assert!(
        msg.starts_with(&format!("Rate limit exceeded for {scope}: ")),
        "{msg}"
    );
    assert!(
        msg.contains("Limit type: max_parallel_requests. Current limit: 1, Remaining: 0."),
        "{msg}"
    );
}

async fn max_parallel_requests_hold_a_slot_per_call(b: Backend) {
    let m = MockUpstream::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: fake-gpt
    litellm_params:
      model: openai/fake-gpt
      mock_response: "hello from the mock"
  - model_name: gpt-long
    litellm_params:
      model: openai/upstream-model
      api_base: {long}
      api_key: sk-upstream
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        long = m.base("long")
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    let (k, _) = admin_key(&app, json!({"max_parallel_requests": 1})).await;
    // Calls that end free their slot: sequential calls never collide.
    for _ in 0..3 {
        let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let stream = open_stream(&app, &k).await;
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&k)
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let (s, body) = (r.status(), r.json::<Value>().await.unwrap());
    parallel_denied(s, &body, "api_key");
    // The client going away frees the slot (the stream task drops the call).
    drop(stream);
    let mut freed = false;
    for _ in 0..100 {
        let (s, _) = app.post("/v1/chat/completions", &k, chat()).await;
        if s == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "slot released after the client disconnected");

    // Team slots are shared by the team's keys; other teams are untouched.
    for t in ["t1", "t2"] {
        let (s, body) = app
            .post(
                "/team/new",
                MASTER,
                json!({"team_id": t, "max_parallel_requests": 1}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let (a, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (b2, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (other, _) = admin_key(&app, json!({"team_id": "t2"})).await;
    let stream = open_stream(&app, &a).await;
    let (s, body) = app.post("/v1/chat/completions", &b2, chat()).await;
    parallel_denied(s, &body, "team");
    let (s, body) = app.post("/v1/chat/completions", &other, chat()).await;
    assert_eq!(s, 200, "{body}");
    drop(stream);

    // Users and member budgets hold slots too.
    let _ = app.user_with_key("u1", "internal_user").await;
    let (s, body) = app
        .post(
            "/user/update",
            MASTER,
            json!({"user_id": "u1", "max_parallel_requests": 1}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (u1a, _) = admin_key(&app, json!({"user_id": "u1"})).await;
    let (u1b, _) = admin_key(&app, json!({"user_id": "u1"})).await;
    let stream = open_stream(&app, &u1a).await;
    let (s, body) = app.post("/v1/chat/completions", &u1b, chat()).await;
    parallel_denied(s, &body, "user");
    drop(stream);
    app.shutdown().await;
}

async fn ids_are_bounded_and_printable(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, t) = app
        .post("/team/new", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200, "{t}");
    let long = "x".repeat(257);
    let big = json!({"blob": "y".repeat(70 * 1024)});
    let cases = [
        (
            "/team/new",
            json!({"team_id": "a\u{0}b"}),
            vec!["body", "team_id"],
            "string_pattern_mismatch",
        ),
        (
            "/team/new",
            json!({"team_alias": long}),
            vec!["body", "team_alias"],
            "string_too_long",
        ),
        (
            "/team/new",
            json!({"team_id": "t2", "metadata": big}),
            vec!["body", "metadata"],
            "too_long",
        ),
        (
            "/user/new",
            json!({"user_id": long}),
            vec!["body", "user_id"],
            "string_too_long",
        ),
        (
            "/user/new",
            json!({"user_id": "u", "user_email": "a@b\r\nc"}),
            vec!["body", "user_email"],
            "string_pattern_mismatch",
        ),
        (
            "/key/generate",
            json!({"key_alias": "line\nbreak"}),
            vec!["body", "key_alias"],
            "string_pattern_mismatch",
        ),
        (
            "/key/generate",
            json!({"models": ["ok", "bad\u{7}"]}),
            vec!["body", "models", "1"],
            "string_pattern_mismatch",
        ),
        (
            "/team/member_add",
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "u\u{0}"}}),
            vec!["body", "member", "user_id"],
            "string_pattern_mismatch",
        ),
    ];
    for (route, body, loc, kind) in cases {
        let (s, e) = app.post(route, MASTER, body.clone()).await;
        assert_eq!(s, 422, "{route} {body} → {e}");
        let d = &assert_detail(&e)[0];
        let want: Vec<Value> = loc
            .iter()
            .map(|p| p.parse::<u64>().map(|n| json!(n)).unwrap_or(json!(p)))
            .collect();
        assert_eq!(d["loc"], json!(want), "{e}");
        assert_eq!(d["type"], kind, "{e}");
    }
    // Nothing was created.
    let (_, teams) = app.get("/team/list", MASTER).await;
    assert_eq!(teams.as_array().unwrap().len(), 1, "{teams}");
    let (_, users) = app.get("/user/list", MASTER).await;
    // Only the creator of t1 (the master key's default_user_id).
    assert_eq!(users["total"], 1, "{users}");
    let (_, keys) = app.get("/key/list", MASTER).await;
    assert_eq!(keys["total_count"], 0, "{keys}");
    // At the bound, accepted.
    let (s, e) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_alias": "x".repeat(256), "metadata": {"blob": "y".repeat(1000)}}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    app.shutdown().await;
}

async fn unenforced_fields_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, t) = app
        .post("/team/new", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200, "{t}");
    let _ = app.user_with_key("u1", "internal_user").await;
    let (k, _) = admin_key(&app, json!({})).await;
    let refused = [
        (
            "/key/generate",
            json!({"config": {"x": 1}}),
            "config",
            "bad_request_error",
        ),
        (
            "/key/generate",
            json!({"permissions": {"x": 1}}),
            "permissions",
            "bad_request_error",
        ),
        (
            "/key/generate",
            json!({"budget_id": "b1"}),
            "budget_id",
            "bad_request_error",
        ),
        (
            "/key/update",
            json!({"key": k, "guardrails": ["g"]}),
            "guardrails",
            "bad_request_error",
        ),
        (
            "/team/new",
            json!({"team_id": "t2", "mcp_rpm_limit": 5}),
            "mcp_rpm_limit",
            "internal_server_error",
        ),
        (
            "/team/new",
            json!({"team_id": "t2", "model_itpm_limit": {"gpt-4": 1}}),
            "model_itpm_limit",
            "internal_server_error",
        ),
        (
            "/team/new",
            json!({"team_id": "t2", "throttle_on_budget_exceeded": true}),
            "throttle_on_budget_exceeded",
            "internal_server_error",
        ),
        (
            "/team/update",
            json!({"team_id": "t1", "policies": ["p"]}),
            "policies",
            "internal_server_error",
        ),
        (
            "/user/new",
            json!({"user_id": "u2", "tpd_limit": 5}),
            "tpd_limit",
            "bad_request_error",
        ),
        (
            "/user/update",
            json!({"user_id": "u1", "soft_budget": 3}),
            "soft_budget",
            "bad_request_error",
        ),
    ];
    for (route, body, field, kind) in refused {
        let (s, e) = app.post(route, MASTER, body.clone()).await;
        assert_eq!(s, 400, "{route} {body} → {e}");
        let msg = assert_proxy_error(&e, 400, kind);
        assert!(
            msg.contains(&format!("{field} is not enforced by this gateway yet, so it is refused rather than stored and ignored")),
            "{route}: {msg}"
        );
    }
    let (s, e) = app
        .patch(
            "/team/t1",
            MASTER,
            json!({"router_settings": {"routing_strategy": "x"}}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    // Nothing was created or changed.
    let (_, teams) = app.get("/team/list", MASTER).await;
    assert_eq!(teams.as_array().unwrap().len(), 1, "{teams}");
    let (_, u) = app.get("/user/info?user_id=u2", MASTER).await;
    assert!(
        u.get("user_info").is_none_or(Value::is_null) || u["error"].is_object(),
        "{u}"
    );
    let (_, keys) = app.get("/key/list", MASTER).await;
    assert_eq!(
        keys["total_count"], 2,
        "the /user/new key and k only: {keys}"
    );
    // Empty values are what SDKs send by default: accepted, nothing to enforce.
    let (s, e) = generate(
        &app,
        MASTER,
        json!({"soft_budget": null, "model_max_budget": {}, "budget_limits": [], "guardrails": [], "config": {}}),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let (s, e) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t3", "soft_budget": null, "router_settings": {}}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    app.shutdown().await;
}

async fn per_model_limits_leave_other_models_alone(b: Backend) {
    let yaml = r#"
model_list:
  - model_name: fake-gpt
    litellm_params:
      model: openai/fake-gpt
      mock_response: "hello from the mock"
  - model_name: other-model
    litellm_params:
      model: openai/other
      mock_response: "other"
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#;
    let app = TestApp::spawn_with(b, yaml).await;
    let other = json!({"model": "other-model", "messages": [{"role": "user", "content": "hi"}]});
    let owner = app.user_with_key("u1", "internal_user").await;
    let (k, r) = admin_key(
        &app,
        json!({"user_id": "u1", "model_rpm_limit": {"fake-gpt": 1}, "metadata": {"note": "kept"}}),
    )
    .await;
    assert_eq!(r["model_rpm_limit"], json!({"fake-gpt": 1}));
    let info = key_info(&app, &k).await;
    // Kept in metadata, as the reference keeps it.
    assert_eq!(info["metadata"]["model_rpm_limit"], json!({"fake-gpt": 1}));
    assert_eq!(info["metadata"]["note"], "kept");
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 429, "{body}");
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert!(
        msg.starts_with("Rate limit exceeded for model_per_key: "),
        "{msg}"
    );
    assert!(
        msg.contains(":fake-gpt. Limit type: requests. Current limit: 1, Remaining: 0."),
        "{msg}"
    );
    for _ in 0..3 {
        let (s, body) = app.post("/v1/chat/completions", &k, other.clone()).await;
        assert_eq!(s, 200, "other models are untouched: {body}");
    }
    // The owner may not raise or drop it; a bad map is a 400 naming the field.
    let (s, e) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": k, "model_rpm_limit": {"fake-gpt": 5}}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    assert!(assert_proxy_error(&e, 403, "auth_error").contains("model_rpm_limit"));
    let (s, e) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": k, "model_rpm_limit": null}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    let (s, e) = generate(&app, MASTER, json!({"model_tpm_limit": {"fake-gpt": -1}})).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        assert_proxy_error(&e, 400, "bad_request_error")
            .contains("model_tpm_limit must map model names")
    );
    let (s, e) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": k, "model_rpm_limit": null}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        key_info(&app, &k).await["metadata"]["model_rpm_limit"],
        Value::Null
    );

    // Teams: shared by the team's keys, per model.
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t1", "model_rpm_limit": {"other-model": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "bad", "model_rpm_limit": ["x"]}),
        )
        .await;
    assert_eq!(s, 400, "{t}");
    let (a, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (b2, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (s, body) = app.post("/v1/chat/completions", &a, other.clone()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app.post("/v1/chat/completions", &b2, other.clone()).await;
    assert_eq!(s, 429, "{body}");
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert!(
        msg.starts_with("Rate limit exceeded for model_per_team: t1:other-model."),
        "{msg}"
    );
    let (s, body) = app.post("/v1/chat/completions", &b2, chat()).await;
    assert_eq!(s, 200, "{body}");
    app.shutdown().await;
}

#[track_caller]
fn tpd_denied(s: StatusCode, body: &Value, scope_and_id: &str, limit: u64) {
    assert_eq!(s, 429, "{body}");
    let msg = assert_proxy_error(body, 429, "rate_limit_error");
    assert!(
        msg.starts_with(&format!(
            "Rate limit exceeded for {scope_and_id}. Limit type: tokens_per_day. Current limit: {limit}, Remaining: 0. Limit resets at: "
        )),
        "{msg}"
    );
}

/// `tpd_limit` on keys and teams: tokens per UTC day, counted from real usage across minute
/// windows; the refusal names the scope and leaves other keys and teams alone. (The day
/// rollover is `limiter::memory::tests::tpd_counts_a_utc_day_across_minute_windows`.)
async fn tpd_limits_count_tokens_per_day(b: Backend) {
    let app = TestApp::spawn(b).await;
    let owner = app.user_with_key("u1", "internal_user").await;
    // A call of the mock costs ~13 tokens: two calls fit under 20, the third is refused.
    let (k, r) = admin_key(
        &app,
        json!({"user_id": "u1", "tpd_limit": 20, "key_alias": "daily"}),
    )
    .await;
    assert_eq!(r["tpd_limit"], 20);
    assert_eq!(key_info(&app, &k).await["tpd_limit"], 20);
    for _ in 0..2 {
        let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&k)
        .json(&chat())
        .send()
        .await
        .unwrap();
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "until UTC midnight: {retry}");
    let s = resp.status();
    let body: Value = resp.json().await.unwrap();
    tpd_denied(s, &body, "api_key: daily", 20);
    // Another key is untouched.
    let (free, _) = admin_key(&app, json!({})).await;
    let (s, body) = app.post("/v1/chat/completions", &free, chat()).await;
    assert_eq!(s, 200, "{body}");
    // The owner may not raise or drop it; the admin may; bad values are 400s naming it.
    for v in [json!(100), Value::Null] {
        let (s, e) = app
            .post("/key/update", &owner, json!({"key": k, "tpd_limit": v}))
            .await;
        assert_eq!(s, 403, "{e}");
        assert!(
            assert_proxy_error(&e, 403, "auth_error").contains("tpd_limit"),
            "{e}"
        );
    }
    let (s, e) = app
        .post("/key/update", &owner, json!({"key": k, "tpd_limit": 10}))
        .await;
    assert_eq!(s, 200, "owners may tighten: {e}");
    let (s, e) = generate(&app, MASTER, json!({"tpd_limit": -1})).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        assert_proxy_error(&e, 400, "bad_request_error").contains("tpd_limit"),
        "{e}"
    );
    let (s, e) = app
        .post("/key/update", MASTER, json!({"key": k, "tpd_limit": 1000}))
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 200, "a raised limit bites on the next call: {body}");

    // Teams: one daily count shared by the team's keys.
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t1", "tpd_limit": 1}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["tpd_limit"], 1);
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "bad", "tpd_limit": -5}),
        )
        .await;
    assert_eq!(
        s, 422,
        "the team body's own validation, as for tpm_limit: {t}"
    );
    let (a, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (a2, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (s, body) = app.post("/v1/chat/completions", &a, chat()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app.post("/v1/chat/completions", &a2, chat()).await;
    tpd_denied(s, &body, "team: t1", 1);
    let (s, e) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "tpd_limit": null}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, body) = app.post("/v1/chat/completions", &a2, chat()).await;
    assert_eq!(s, 200, "a cleared limit no longer bites: {body}");
    app.shutdown().await;
}

#[track_caller]
fn model_budget_denied(s: StatusCode, body: &Value, msg: &str) {
    assert_eq!(s, 422, "{body}");
    assert_eq!(assert_proxy_error(body, 422, "budget_exceeded"), msg);
}

/// `model_max_budget` on keys, teams, users and members: that model stops with
/// `budget_exceeded` once its window's spend reaches the limit; other models go on. A call of
/// the mock costs $0.000018, so a $0.00003 cap lets two calls through. (Windows closing after
/// their period: `service::model_budget::tests`.)
async fn model_max_budget_stops_one_model(b: Backend) {
    // The default config with a second priced model.
    let yaml = DEFAULT_CONFIG.replace(
        "general_settings:",
        "  - model_name: other-model\n    litellm_params:\n      model: openai/other\n      \
         mock_response: \"hello from the mock\"\n      input_cost_per_token: 0.000001\n      \
         output_cost_per_token: 0.000002\ngeneral_settings:",
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    let other = json!({"model": "other-model", "messages": [{"role": "user", "content": "hi"}]});
    let cap = json!({"budget_limit": 0.00003, "time_period": "1d"});
    let owner = app.user_with_key("u1", "internal_user").await;

    // Keys.
    let (k, r) = admin_key(
        &app,
        json!({"user_id": "u1", "key_alias": "mmb", "model_max_budget": {"fake-gpt": cap}}),
    )
    .await;
    assert_eq!(r["model_max_budget"]["fake-gpt"], cap);
    let info = key_info(&app, &k).await;
    assert_eq!(info["model_max_budget"]["fake-gpt"], cap);
    let token = r["token_id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    model_budget_denied(
        s,
        &body,
        &format!(
            "LiteLLM Virtual Key: {token}, key_alias: mmb, exceeded budget for model=fake-gpt"
        ),
    );
    for _ in 0..3 {
        let (s, body) = app.post("/v1/chat/completions", &k, other.clone()).await;
        assert_eq!(s, 200, "other models go on: {body}");
    }
    // The owner may not change it; malformed maps are 400s naming the field, changing nothing.
    let (s, e) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": k, "model_max_budget": {}}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    for bad in [
        json!({"fake-gpt": {"budget_limit": 1}}),
        json!({"fake-gpt": {"time_period": "1d"}}),
        json!({"fake-gpt": {"budget_limit": -1, "time_period": "1d"}}),
        json!({"fake-gpt": {"budget_limit": 1, "time_period": "whenever"}}),
        json!({"fake-gpt": 5}),
    ] {
        let (s, e) = app
            .post(
                "/key/update",
                MASTER,
                json!({"key": k, "model_max_budget": bad}),
            )
            .await;
        assert_eq!(s, 400, "{bad} → {e}");
        assert!(
            assert_proxy_error(&e, 400, "bad_request_error").contains("'error': ")
                && e.to_string().contains("model_max_budget: fake-gpt"),
            "{e}"
        );
        let (s, e) = generate(&app, MASTER, json!({"model_max_budget": bad})).await;
        assert_eq!(s, 400, "{e}");
    }
    assert_eq!(
        key_info(&app, &k).await["model_max_budget"]["fake-gpt"],
        cap
    );
    // The admin lifts it: the next call goes through.
    let (s, e) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": k, "model_max_budget": {}}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 200, "{body}");

    // Teams: shared by the team's keys, unless a key budgets that model itself.
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t1", "model_max_budget": {"other-model": cap}}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "bad", "model_max_budget": {"m": {"budget_limit": 1}}}),
        )
        .await;
    assert_eq!(s, 400, "{t}");
    let (a, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (a2, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let big = json!({"other-model": {"budget_limit": 10, "time_period": "1d"}});
    let (own, _) = admin_key(&app, json!({"team_id": "t1", "model_max_budget": big})).await;
    for key in [&a, &a2] {
        let (s, body) = app.post("/v1/chat/completions", key, other.clone()).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = app.post("/v1/chat/completions", &a, other.clone()).await;
    model_budget_denied(
        s,
        &body,
        "LiteLLM Team: t1, exceeded budget for model=other-model",
    );
    let (s, body) = app.post("/v1/chat/completions", &a2, chat()).await;
    assert_eq!(s, 200, "the team's other models go on: {body}");
    let (s, body) = app.post("/v1/chat/completions", &own, other.clone()).await;
    assert_eq!(s, 200, "a key's own entry overrides the team's: {body}");

    // Users: on every key of the user.
    let (s, u) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "u2", "model_max_budget": {"fake-gpt": cap}}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    let uk = u["key"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (s, body) = app.post("/v1/chat/completions", &uk, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = app.post("/v1/chat/completions", &uk, chat()).await;
    model_budget_denied(
        s,
        &body,
        "LiteLLM User: u2, exceeded budget for model=fake-gpt",
    );
    let (s, e) = app
        .post(
            "/user/update",
            MASTER,
            json!({"user_id": "u2", "model_max_budget": {"fake-gpt": 1}}),
        )
        .await;
    assert_eq!(s, 400, "{e}");

    // Members: the member's own cap in the team.
    let (s, e) = app
        .post(
            "/team/member_add",
            MASTER,
            json!({"team_id": "t1", "member": {"user_id": "u3", "role": "user"}}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, e) = app
        .post(
            "/team/member_update",
            MASTER,
            json!({"team_id": "t1", "user_id": "u3", "model_max_budget": {"fake-gpt": cap}}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["model_max_budget"]["fake-gpt"], cap);
    let (s, e) = app
        .post(
            "/team/member_update",
            MASTER,
            json!({"team_id": "t1", "user_id": "u3", "model_max_budget": {"fake-gpt": {}}}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (mk, _) = admin_key(&app, json!({"team_id": "t1", "user_id": "u3"})).await;
    for _ in 0..2 {
        let (s, body) = app.post("/v1/chat/completions", &mk, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = app.post("/v1/chat/completions", &mk, chat()).await;
    model_budget_denied(
        s,
        &body,
        "LiteLLM Team Member: u3 in Team=t1, exceeded budget for model=fake-gpt",
    );
    let (s, body) = app.post("/v1/chat/completions", &a2, chat()).await;
    assert_eq!(s, 200, "other members go on: {body}");
    app.shutdown().await;
}

/// `budget_limits` on keys and teams: every window must pass; a window's spend starts from what
/// the spend log holds for it (so it survives restarts), and the refusal names the window.
async fn budget_limits_every_window_must_pass(b: Backend) {
    let app = TestApp::spawn(b).await;
    let owner = app.user_with_key("u1", "internal_user").await;
    let day = json!({"budget_duration": "1d", "max_budget": 0.00003});
    let month = json!({"budget_duration": "30d", "max_budget": 100});
    let (k, r) = admin_key(
        &app,
        json!({"user_id": "u1", "key_alias": "windows", "budget_limits": [day, month]}),
    )
    .await;
    let stored = r["budget_limits"].as_array().unwrap().clone();
    assert_eq!(stored.len(), 2, "{r}");
    assert!(
        stored[0]["reset_at"].is_string(),
        "reset_at initialised: {r}"
    );
    assert_eq!(key_info(&app, &k).await["budget_limits"], json!(stored));
    for _ in 0..2 {
        let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(
        assert_proxy_error(&body, 422, "budget_exceeded"),
        "ExceededBudget: Key=windows over 1d budget. Spend=$3.6e-05, Limit=$3e-05"
    );
    // The owner may not lift it; malformed windows are 400s; the admin may lift it.
    let (s, e) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": k, "budget_limits": [month]}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    assert!(assert_proxy_error(&e, 403, "auth_error").contains("budget_limits"));
    for bad in [
        json!([{"max_budget": 1}]),
        json!([{"budget_duration": "1d"}]),
        json!([{"budget_duration": "sometime", "max_budget": 1}]),
        json!(["1d"]),
    ] {
        let (s, e) = generate(&app, MASTER, json!({"budget_limits": bad})).await;
        assert_eq!(s, 400, "{bad} → {e}");
        let m = e.to_string();
        assert!(
            m.contains("budget_limits[0]") || m.contains("Invalid budget_duration 'sometime'"),
            "{e}"
        );
    }
    let (s, e) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": k, "budget_limits": [month]}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 200, "only the monthly window is left: {body}");

    // Teams: a window's spend starts from the spend log. A logged call of $1 today, before
    // this instance ever checked the team's window, fills it.
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t1", "budget_limits": [{"budget_duration": "1d", "max_budget": 0.5}]}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t2", "budget_limits": [{"budget_duration": "1d", "max_budget": 0.5}]}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let now = chrono::Utc::now();
    let row = purser::store::spend::SpendLogRow {
        request_id: "logged-before".into(),
        call_type: "acompletion".into(),
        api_key: "elsewhere".into(),
        spend: 1_000_000_000,
        total_tokens: 10,
        prompt_tokens: 5,
        completion_tokens: 5,
        start_time: now,
        end_time: now,
        model: "fake-gpt".into(),
        model_id: None,
        model_group: Some("fake-gpt".into()),
        custom_llm_provider: Some("openai".into()),
        api_base: None,
        user_id: None,
        team_id: Some("t1".into()),
        end_user: None,
        status: "success".into(),
        metadata: sqlx::types::Json(json!({})),
    };
    let db = app.reopen_db().await;
    let mut h = db.conn().await.unwrap();
    purser::store::spend::insert_log(&mut h, &row)
        .await
        .unwrap();
    drop(h);
    db.close().await;
    let (tk, _) = admin_key(&app, json!({"team_id": "t1"})).await;
    let (s, body) = app.post("/v1/chat/completions", &tk, chat()).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(
        assert_proxy_error(&body, 422, "budget_exceeded"),
        "ExceededBudget: Team=t1 over 1d budget. Spend=$1.0, Limit=$0.5"
    );
    let (t2k, _) = admin_key(&app, json!({"team_id": "t2"})).await;
    let (s, body) = app.post("/v1/chat/completions", &t2k, chat()).await;
    assert_eq!(s, 200, "another team is untouched: {body}");
    let (s, t) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "budget_limits": [{"budget_duration": "1d", "max_budget": 5}]}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, body) = app.post("/v1/chat/completions", &tk, chat()).await;
    assert_eq!(s, 200, "a raised window bites on the next call: {body}");
    app.shutdown().await;
}

async fn key_temp_budget_increase_until_its_expiry(b: Backend) {
    let app = TestApp::spawn(b).await;
    let owner = app.user_with_key("u1", "internal_user").await;
    // A key whose budget is spent (max 0): every call is refused.
    let (k, _) = admin_key(&app, json!({"user_id": "u1", "max_budget": 0})).await;
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 422, "{body}");
    assert_proxy_error(&body, 422, "budget_exceeded");
    // A temporary increase lets it spend until the expiry.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (s, e) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": k, "temp_budget_increase": 1.0, "temp_budget_expiry": future}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        key_info(&app, &k).await["metadata"]["temp_budget_increase"],
        1.0
    );
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 200, "{body}");
    // The owner may not raise it or push its expiry back.
    let later = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let (s, e) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": k, "temp_budget_increase": 1.0, "temp_budget_expiry": later}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    assert!(assert_proxy_error(&e, 403, "auth_error").contains("temp_budget_increase"));
    // An expired increase no longer counts.
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let (s, e) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": k, "temp_budget_increase": 1.0, "temp_budget_expiry": past}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, body) = app.post("/v1/chat/completions", &k, chat()).await;
    assert_eq!(s, 422, "{body}");
    // Both or neither; a bad instant or amount is a 400 naming the field.
    for (body, needle) in [
        (json!({"temp_budget_increase": 5}), "must be set together"),
        (
            json!({"temp_budget_increase": -1, "temp_budget_expiry": future}),
            "temp_budget_increase must be",
        ),
        (
            json!({"temp_budget_increase": 1, "temp_budget_expiry": "tomorrow"}),
            "temp_budget_expiry must be",
        ),
    ] {
        let (s, e) = generate(&app, MASTER, body.clone()).await;
        assert_eq!(s, 400, "{body} → {e}");
        assert!(
            assert_proxy_error(&e, 400, "bad_request_error").contains(needle),
            "{e}"
        );
    }
    app.shutdown().await;
}

/// t1's row and roster and t2's `blocked`, to show a refusal changed nothing.
async fn team_snapshot(app: &TestApp) -> (Value, Value, Value) {
    let (_, t1) = app.get("/team/info?team_id=t1", MASTER).await;
    let (_, t2) = app.get("/team/info?team_id=t2", MASTER).await;
    (
        t1["team_info"].clone(),
        t1["team_memberships"].clone(),
        t2["team_info"]["blocked"].clone(),
    )
}

/// The role matrix of a team's writes: each caller against each route, including an
/// `internal_user_viewer` who is a team admin and the team's own key (team, no user). `Y` is a
/// 2xx; every refusal changes nothing (the roster and the team rows are compared).
async fn team_writes_role_matrix(b: Backend) {
    let app = TestApp::spawn(b).await;
    let callers = [
        (
            "proxy_admin",
            app.user_with_key("padmin", "proxy_admin").await,
        ),
        (
            "proxy_admin_viewer",
            app.user_with_key("pviewer", "proxy_admin_viewer").await,
        ),
        (
            "team_admin",
            app.user_with_key("tadmin", "internal_user").await,
        ),
        (
            "viewer_team_admin",
            app.user_with_key("vadmin", "internal_user_viewer").await,
        ),
        ("member", app.user_with_key("member", "internal_user").await),
        (
            "outsider",
            app.user_with_key("outsider", "internal_user").await,
        ),
    ];
    let n = callers.len() + 3;
    let mut roster = vec![
        json!({"role": "admin", "user_id": "tadmin"}),
        json!({"role": "admin", "user_id": "vadmin"}),
        json!({"role": "user", "user_id": "member"}),
    ];
    for i in 0..n {
        app.user_with_key(&format!("cand{i}"), "internal_user")
            .await;
        app.user_with_key(&format!("victim{i}"), "internal_user")
            .await;
        roster.push(json!({"role": "user", "user_id": format!("victim{i}")}));
    }
    for (t, members) in [("t1", json!(roster)), ("t2", json!([]))] {
        let (s, body) = app
            .post(
                "/team/new",
                MASTER,
                json!({"team_id": t, "members_with_roles": members}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let key_for = |body: Value| async {
        let (s, k) = app.post("/key/generate", MASTER, body).await;
        assert_eq!(s, 200, "{k}");
        k["key"].as_str().unwrap().to_string()
    };
    let team_only = key_for(json!({"team_id": "t1"})).await;
    let member_team_key = key_for(json!({"team_id": "t1", "user_id": "member"})).await;
    let mut callers = callers.to_vec();
    callers.push(("team_only_key", team_only));
    callers.push(("member_team_key", member_team_key));
    callers.insert(0, ("master", MASTER.to_string()));

    type Call = fn(usize) -> (String, Value);
    let routes: [(&str, Call); 8] = [
        ("member_add", |i| {
            (
                "/team/member_add".into(),
                json!({"team_id": "t1", "member": {"role": "user", "user_id": format!("cand{i}")}}),
            )
        }),
        ("member_update", |i| {
            (
                "/team/member_update".into(),
                json!({"team_id": "t1", "user_id": "member", "max_budget_in_team": i + 1}),
            )
        }),
        ("member_delete", |i| {
            (
                "/team/member_delete".into(),
                json!({"team_id": "t1", "user_id": format!("victim{i}")}),
            )
        }),
        ("permissions_update", |i| {
            let perms = if i % 2 == 0 {
                json!(["/key/info"])
            } else {
                json!(["/key/info", "/key/list"])
            };
            (
                "/team/permissions_update".into(),
                json!({"team_id": "t1", "team_member_permissions": perms}),
            )
        }),
        ("reset_spend", |_| {
            (
                "/team/t1/member/member/reset_spend".into(),
                json!({"reset_to": 0}),
            )
        }),
        ("team_update", |i| {
            (
                "/team/update".into(),
                json!({"team_id": "t1", "max_budget": 100 + i}),
            )
        }),
        ("key_generate", |i| {
            (
                "/key/generate".into(),
                json!({"team_id": "t1", "key_alias": format!("matrix-{i}")}),
            )
        }),
        ("team_block", |_| {
            ("/team/block".into(), json!({"team_id": "t2"}))
        }),
    ];
    // Rows follow `callers`, columns follow `routes`. `Y` 2xx; refusals by status, as the
    // reference answers them: `F` 403 (team checks), `U` 401 (route gates, member permissions),
    // `B` 400 (a user who is not in the team).
    let want = [
        ("master", "YYYYYYYY"),
        ("proxy_admin", "YYYYYYYY"),
        ("proxy_admin_viewer", "FFFFFFFF"),
        ("team_admin", "YYYYYFYU"),
        ("viewer_team_admin", "FFFFFFUU"),
        ("member", "FFFFFFUU"),
        ("outsider", "FFFFFFBU"),
        ("team_only_key", "FFFFFFYU"),
        ("member_team_key", "FFFFFFUU"),
    ];
    let mut got = Vec::new();
    let mut failures = Vec::new();
    for (i, (who, key)) in callers.iter().enumerate() {
        let mut row = String::new();
        for (route, call) in &routes {
            let (path, body) = call(i);
            let before = team_snapshot(&app).await;
            let (s, resp) = app.post(&path, key, body).await;
            let cell = match s.as_u16() {
                200..=299 => 'Y',
                403 => 'F',
                401 => 'U',
                400 => 'B',
                _ => '?',
            };
            row.push(cell);
            if cell == '?' {
                failures.push(format!("{who} {route}: {s} {resp}"));
            } else if cell != 'Y' && team_snapshot(&app).await != before {
                // A refusal touches nothing, not even `updated_at`: whole rows are compared.
                failures.push(format!("{who} {route}: refused ({s}) but changed the team"));
            }
        }
        got.push((*who, row));
    }
    let got_view: Vec<(&str, &str)> = got.iter().map(|(w, r)| (*w, r.as_str())).collect();
    assert_eq!(
        got_view,
        want,
        "routes: {:?}; {failures:?}",
        routes.map(|r| r.0)
    );
    assert!(failures.is_empty(), "{failures:?}");
    app.shutdown().await;
}

both_backends!(
    budget_limits_every_window_must_pass,
    model_max_budget_stops_one_model,
    tpd_limits_count_tokens_per_day,
    key_temp_budget_increase_until_its_expiry,
    per_model_limits_leave_other_models_alone,
    unenforced_fields_are_refused,
    ids_are_bounded_and_printable,
    max_parallel_requests_hold_a_slot_per_call,
    key_types_and_allowed_routes,
    blocked_team_stops_every_route,
    viewers_never_write_even_as_team_admins,
    team_writes_role_matrix,
    keys_mint_only_inside_their_scope,
    owners_may_only_tighten,
);
