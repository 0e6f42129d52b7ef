//! `/user/*`: creation (with key and teams, in one transaction), info scoping, list filters,
//! exclude-unset updates, deletion with keys and memberships, hostile input changing nothing.

use purser::store::{self, members::MembershipRow, teams::TeamRow};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::both_backends;
use crate::helpers::*;

/// Inserts a team row directly (team routes belong to another module of the issue).
pub async fn insert_team(app: &TestApp, team_id: &str, models: &[&str], perms: &[&str]) {
    let now = store::now();
    let t = TeamRow {
        team_alias: Some(format!("{team_id}-alias")),
        models: Json(models.iter().map(|s| s.to_string()).collect()),
        team_member_permissions: Json(perms.iter().map(|s| s.to_string()).collect()),
        ..TeamRow::new(team_id.to_string(), now)
    };
    let mut h = app.state.db.conn().await.unwrap();
    store::teams::insert(&mut h, &t).await.unwrap();
}

/// Puts an existing user on a team's roster directly.
pub async fn add_member(app: &TestApp, team_id: &str, user_id: &str, role: &str) {
    let m = MembershipRow {
        team_id: team_id.into(),
        user_id: user_id.into(),
        role: role.into(),
        user_email: None,
        spend: 0,
        total_spend: 0,
        budget_id: None,
        added_at: store::now(),
    };
    let mut h = app.state.db.conn().await.unwrap();
    store::members::insert(&mut h, &m).await.unwrap();
}

/// Number of rows in a table (read back after hostile input).
pub async fn count(app: &TestApp, table: &str) -> i64 {
    let mut h = app.state.db.conn().await.unwrap();
    let sql = format!("SELECT COUNT(*) FROM {table}");
    purser::on_conn!(h, c => sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(c).await).unwrap()
}

/// Total audit rows, as `/audit` reports it.
pub async fn audit_total(app: &TestApp) -> i64 {
    let (s, b) = app.get("/audit?page_size=1", MASTER).await;
    assert_eq!(s, 200, "{b}");
    b["total"].as_i64().unwrap()
}

fn wrapped_msg(body: &Value, status: u16) -> String {
    assert_proxy_error(body, status, "")
}

async fn user_new_creates_user_and_key(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "alice", "user_email": "alice@example.com", "max_budget": 10, "budget_duration": "1mo", "unknown_field": 1}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let raw = body["key"].as_str().unwrap().to_string();
    assert!(raw.starts_with("sk-"));
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["user_email"], "alice@example.com");
    assert_eq!(body["user_role"], "internal_user");
    assert_eq!(body["max_budget"], 10.0);
    assert_eq!(body["teams"], json!([]));
    assert_eq!(body["token"], purser_core::keys::hash_key(&raw));
    assert_eq!(body["key_name"], purser_core::keys::key_name(&raw));
    assert!(
        body["budget_reset_at"]
            .as_str()
            .unwrap()
            .contains("-01T00:00:00")
    );

    // Stored only as sha256.
    let mut h = app.state.db.conn().await.unwrap();
    let tokens: Vec<String> = purser::on_conn!(h, c => sqlx::query_scalar("SELECT token FROM verification_tokens").fetch_all(c).await).unwrap();
    assert_eq!(tokens, vec![purser_core::keys::hash_key(&raw)]);
    drop(h);

    // The new key authenticates as alice.
    let (s, info) = app.get("/user/info", &raw).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["user_id"], "alice");
    assert_eq!(info["user_info"]["user_email"], "alice@example.com");
    assert_eq!(info["keys"].as_array().unwrap().len(), 1);
    assert_eq!(info["keys"][0]["token"], purser_core::keys::hash_key(&raw));
    assert_eq!(info["teams"], json!([]));

    // auto_create_key=false: no key, generated uuid user id.
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"auto_create_key": false, "user_alias": "ユーザー🙂"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body["key"].is_null());
    assert_eq!(body["user_alias"], "ユーザー🙂");
    let id = body["user_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(count(&app, "verification_tokens").await, 1);

    // A unicode user id is fine.
    let (s, body) = app
        .post("/user/new", MASTER, json!({"user_id": "ユーザー🙂"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, info) = app
        .get(
            "/user/info?user_id=%E3%83%A6%E3%83%BC%E3%82%B6%E3%83%BC%F0%9F%99%82",
            MASTER,
        )
        .await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["user_id"], "ユーザー🙂");

    // Audit: created rows for users and keys, raw key nowhere.
    let (s, a) = app.get("/audit?page_size=100", MASTER).await;
    assert_eq!(s, 200);
    assert!(!a.to_string().contains(&raw));
    assert!(
        a["audit_logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["object_id"] == "alice"
                && r["action"] == "created"
                && r["table_name"] == "LiteLLM_UserTable")
    );
    app.shutdown().await;
}

async fn user_new_errors_change_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t1", &[], &[]).await;
    let (s, _) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "bob", "user_email": "Bob@Example.com"}),
        )
        .await;
    assert_eq!(s, 200);
    let users = count(&app, "users").await;
    let keys = count(&app, "verification_tokens").await;
    let audits = audit_total(&app).await;

    let (s, body) = app
        .post("/user/new", MASTER, json!({"user_id": "bob"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        wrapped_msg(&body, 409),
        "{'error': 'User with user_id bob already exists'}"
    );
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_email": "bob@example.COM"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        wrapped_msg(&body, 409).contains("User with user_email bob@example.COM already exists")
    );

    let (s, body) = app
        .post("/user/new", MASTER, json!({"user_role": "emperor"}))
        .await;
    assert_eq!(s, 422);
    assert_eq!(assert_detail(&body)[0]["loc"], json!(["body", "user_role"]));
    let (s, body) = app
        .post("/user/new", MASTER, json!({"budget_duration": "fortnight"}))
        .await;
    assert_eq!(s, 400);
    assert!(
        wrapped_msg(&body, 400).contains("Invalid budget_duration"),
        "{body}"
    );
    for bad in [json!(-1), json!(1e300)] {
        let (s, body) = app
            .post("/user/new", MASTER, json!({"max_budget": bad}))
            .await;
        assert_eq!(s, 400, "{body}");
        assert!(wrapped_msg(&body, 400).contains("max_budget"));
    }
    let (s, body) = app
        .post("/user/new", MASTER, json!({"max_budget": "x"}))
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        assert_detail(&body)[0]["loc"],
        json!(["body", "max_budget"])
    );
    let (s, body) = app
        .post("/user/new", MASTER, json!({"tpm_limit": -5}))
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = app.post("/user/new", MASTER, json!({"user_id": ""})).await;
    assert_eq!(s, 400, "{body}");
    assert!(wrapped_msg(&body, 400).contains("user_id must not be empty"));
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "p", "password": "hunter2"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(assert_detail(&body)[0]["loc"], json!(["body", "password"]));
    let (s, body) = app.post_raw("/user/new", MASTER, "{\"user_id\": ").await;
    assert_eq!(s, 422);
    assert_eq!(assert_detail(&body)[0]["type"], "json_invalid");
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "carol", "teams": "t1"}),
        )
        .await;
    assert_eq!(s, 422, "{body}");

    // Unknown team → 404 and neither the user, its key nor the membership of t1 exists.
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "carol", "teams": ["t1", "nope"]}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert!(wrapped_msg(&body, 404).contains("team_id=nope"));
    let (s, _) = app.get("/user/info?user_id=carol", MASTER).await;
    assert_eq!(s, 404);
    assert_eq!(count(&app, "team_memberships").await, 0);

    // Non-admins cannot create users.
    let ukey = app.user_with_key("u1", "internal_user").await;
    let vkey = app.user_with_key("v1", "proxy_admin_viewer").await;
    let users = users + 2;
    let keys = keys + 2;
    let audits = audits + 4;
    let (s, body) = app.post("/user/new", &ukey, json!({"user_id": "x"})).await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "auth_error");
    let (s, body) = app.post("/user/new", &vkey, json!({"user_id": "x"})).await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "auth_error");
    let big = format!(
        "{{\"user_id\": \"big\", \"metadata\": {{\"x\": \"{}\"}}}}",
        "a".repeat(11 * 1024 * 1024)
    );
    let (s, body) = app.post_raw("/user/new", MASTER, big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    assert_eq!(count(&app, "users").await, users);
    assert_eq!(count(&app, "verification_tokens").await, keys);
    assert_eq!(audit_total(&app).await, audits);
    app.shutdown().await;
}

async fn user_new_with_teams(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t1", &["fake-gpt"], &[]).await;
    insert_team(&app, "t2", &[], &[]).await;
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "dan", "team_id": "t1", "models": ["fake-gpt"],
                   "teams": ["t1", {"team_id": "t2", "user_role": "admin", "max_budget_in_team": 5}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["teams"], json!(["t1", "t2"]));
    assert_eq!(body["team_id"], "t1");
    assert_eq!(body["models"], json!(["fake-gpt"]));
    let (s, info) = app.get("/user/info?user_id=dan", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(info["user_info"]["teams"], json!(["t1", "t2"]));
    let teams = info["teams"].as_array().unwrap();
    assert_eq!(teams.len(), 2);
    let t2 = teams.iter().find(|t| t["team_id"] == "t2").unwrap();
    assert_eq!(t2["team_memberships"][0]["user_id"], "dan");
    assert_eq!(
        t2["team_memberships"][0]["litellm_budget_table"]["max_budget"],
        5.0
    );
    assert_eq!(t2["members_with_roles"][0]["role"], "admin");
    let t1 = teams.iter().find(|t| t["team_id"] == "t1").unwrap();
    assert_eq!(t1["keys"].as_array().unwrap().len(), 1);

    // The auto key would carry a model outside team t1 → refused, nothing created.
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "erin", "team_id": "t1", "models": ["other"]}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(wrapped_msg(&body, 400).contains("'other'"));
    let (s, _) = app.get("/user/info?user_id=erin", MASTER).await;
    assert_eq!(s, 404);
    app.shutdown().await;
}

async fn user_info_access(b: Backend) {
    let app = TestApp::spawn(b).await;
    let u1 = app.user_with_key("u1", "internal_user").await;
    let uv = app.user_with_key("uv", "internal_user_viewer").await;
    let pv = app.user_with_key("pv", "proxy_admin_viewer").await;
    let pa = app.user_with_key("pa", "proxy_admin").await;
    let (s, b1) = app.get("/user/info", &u1).await;
    assert_eq!(s, 200);
    assert_eq!(b1["user_id"], "u1");
    let (s, _) = app.get("/user/info?user_id=uv", &uv).await;
    assert_eq!(s, 200);
    for k in [&u1, &uv] {
        let (s, body) = app.get("/user/info?user_id=pa", k).await;
        assert_eq!(s, 403, "{body}");
        assert!(
            assert_proxy_error(&body, 403, "auth_error")
                .contains("not allowed to access this user's info")
        );
    }
    for k in [&pv, &pa, &MASTER.to_string()] {
        let (s, body) = app.get("/user/info?user_id=u1", k).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["user_info"]["user_role"], "internal_user");
    }
    let (s, body) = app.get("/user/info?user_id=ghost", MASTER).await;
    assert_eq!(s, 404);
    assert_eq!(
        assert_proxy_error(&body, 404, "not_found_error"),
        "{'error': 'User ghost not found'}"
    );
    let (s, body) = app
        .get("/user/info?user_id=u1", "sk-not-a-key-at-all")
        .await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "token_not_found_in_db");
    app.shutdown().await;
}

async fn user_list_filters_and_pages(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t1", &[], &[]).await;
    for (id, role, email) in [
        ("a1", "internal_user", "a1@corp.com"),
        ("a2", "internal_user_viewer", "a2@corp.com"),
        ("a3", "proxy_admin_viewer", "x@other.org"),
    ] {
        let (s, _) = app
            .post(
                "/user/new",
                MASTER,
                json!({"user_id": id, "user_role": role, "user_email": email}),
            )
            .await;
        assert_eq!(s, 200);
    }
    add_member(&app, "t1", "a2", "user").await;
    let (s, body) = app.get("/user/list", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(body["total"], 3);
    assert_eq!(body["page"], 1);
    assert_eq!(body["users"].as_array().unwrap().len(), 3);
    let (_, body) = app.get("/user/list?page=2&page_size=2", MASTER).await;
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    assert_eq!(body["total_pages"], 2);
    let (_, body) = app
        .get("/user/list?role=internal_user_viewer", MASTER)
        .await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["users"][0]["user_id"], "a2");
    assert_eq!(body["users"][0]["teams"], json!(["t1"]));
    let (_, body) = app.get("/user/list?user_ids=a1,a3", MASTER).await;
    assert_eq!(body["total"], 2);
    let (_, body) = app.get("/user/list?team=t1", MASTER).await;
    assert_eq!(body["total"], 1);
    let (_, body) = app.get("/user/list?user_email=CORP", MASTER).await;
    assert_eq!(body["total"], 2);
    let (_, body) = app.get("/user/list?user_email=%25", MASTER).await;
    assert_eq!(body["total"], 0);
    let (s, body) = app.get("/user/list?page_size=101", MASTER).await;
    assert_eq!(s, 422);
    assert_eq!(
        assert_detail(&body)[0]["loc"],
        json!(["query", "page_size"])
    );
    let (s, _) = app.get("/user/list?page=x", MASTER).await;
    assert_eq!(s, 422);

    let viewer = app.user_with_key("pv", "proxy_admin_viewer").await;
    let (s, _) = app.get("/user/list", &viewer).await;
    assert_eq!(s, 200);
    let user = app.user_with_key("iu", "internal_user").await;
    let (s, body) = app.get("/user/list", &user).await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "auth_error");
    app.shutdown().await;
}

async fn user_update_exclude_unset(b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = app.user_with_key("u1", "internal_user").await;
    let (s, body) = app
        .post("/user/update", MASTER, json!({"user_id": "u1", "max_budget": 7.5, "user_alias": "Ünï", "budget_duration": "1d"}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"]["max_budget"], 7.5);
    let reset = body["data"]["budget_reset_at"].clone();
    assert!(reset.is_string());
    // Absent fields stay; the same duration keeps the running period.
    let (s, body) = app
        .post(
            "/user/update",
            MASTER,
            json!({"user_id": "u1", "budget_duration": "1d", "metadata": {"a": 1}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["data"]["max_budget"], 7.5);
    assert_eq!(body["data"]["user_alias"], "Ünï");
    assert_eq!(body["data"]["budget_reset_at"], reset);
    // Explicit null clears.
    let (s, body) = app
        .post(
            "/user/update",
            MASTER,
            json!({"user_id": "u1", "max_budget": null}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(body["data"]["max_budget"].is_null());
    assert_eq!(body["data"]["metadata"], json!({"a": 1}));

    // Hostile input changes nothing.
    let audits = audit_total(&app).await;
    for (bad, status) in [
        (json!({"user_id": "u1", "max_budget": "x"}), 422),
        (json!({"user_id": "u1", "max_budget": -1}), 400),
        (json!({"user_id": "u1", "user_role": "god"}), 422),
        (json!({"user_id": "u1", "budget_duration": "soon"}), 400),
        (json!({"user_id": "u1", "tpm_limit": 1e40}), 422),
        (json!({"user_id": "u1", "user_email": ""}), 400),
        (json!({"user_id": "ghost", "max_budget": 1}), 404),
        (json!({"max_budget": 1}), 400),
    ] {
        let (s, body) = app.post("/user/update", MASTER, bad.clone()).await;
        assert_eq!(s.as_u16(), status, "{bad} → {body}");
    }
    assert_eq!(audit_total(&app).await, audits);
    let (_, info) = app.get("/user/info?user_id=u1", MASTER).await;
    assert!(info["user_info"]["max_budget"].is_null());
    assert_eq!(info["user_info"]["user_role"], "internal_user");

    // Role change applies on the very next request (cache evicted).
    let (s, _) = app.get("/user/list", &key).await;
    assert_eq!(s, 401);
    let (s, _) = app
        .post(
            "/user/update",
            MASTER,
            json!({"user_id": "u1", "user_role": "proxy_admin_viewer"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.get("/user/list", &key).await;
    assert_eq!(s, 200);
    // ...and a viewer may not write.
    let (s, body) = app
        .post(
            "/user/update",
            &key,
            json!({"user_id": "u1", "user_role": "proxy_admin"}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    app.shutdown().await;
}

async fn user_delete_removes_keys_and_memberships(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t1", &[], &[]).await;
    let key = app.user_with_key("gone", "internal_user").await;
    let other = app.user_with_key("stays", "internal_user").await;
    add_member(&app, "t1", "gone", "user").await;
    let (s, _) = app.get("/user/info", &key).await;
    assert_eq!(s, 200);

    // Unknown id in the list → 404, nothing deleted.
    let (s, body) = app
        .post(
            "/user/delete",
            MASTER,
            json!({"user_ids": ["gone", "ghost"]}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        assert_detail(&body)["error"],
        "User ghost not found. Nothing was deleted."
    );
    assert_eq!(count(&app, "users").await, 2);
    let (s, body) = app
        .post("/user/delete", &other, json!({"user_ids": ["gone"]}))
        .await;
    assert_eq!(s, 401, "{body}");
    let (s, _) = app
        .post("/user/delete", MASTER, json!({"user_ids": "gone"}))
        .await;
    assert_eq!(s, 422);

    let (s, body) = app
        .post("/user/delete", MASTER, json!({"user_ids": ["gone"]}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, json!({"deleted_users": ["gone"]}));
    // Its key fails at once; membership and keys are gone; the other user is untouched.
    let (s, body) = app.get("/user/info", &key).await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "token_not_found_in_db");
    assert_eq!(count(&app, "team_memberships").await, 0);
    assert_eq!(count(&app, "verification_tokens").await, 1);
    let (s, _) = app.get("/user/info", &other).await;
    assert_eq!(s, 200);
    let (_, a) = app
        .get("/audit?object_id=gone&action=deleted", MASTER)
        .await;
    assert_eq!(a["total"], 1);
    assert_eq!(a["audit_logs"][0]["table_name"], "LiteLLM_UserTable");
    app.shutdown().await;
}

async fn user_new_config_defaults(b: Backend) {
    let yaml = format!(
        "{DEFAULT_CONFIG}litellm_settings:\n  max_internal_user_budget: 3\n  default_internal_user_params:\n    user_role: internal_user_viewer\n    budget_duration: 1d\n    models: [fake-gpt]\n"
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    let (s, body) = app
        .post("/user/new", MASTER, json!({"user_id": "d1"}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_role"], "internal_user_viewer");
    assert_eq!(body["max_budget"], 3.0);
    assert_eq!(body["budget_duration"], "1d");
    assert_eq!(body["models"], json!(["fake-gpt"]));
    // Explicit values win over the defaults.
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "d2", "user_role": "internal_user", "max_budget": 9, "models": []}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_role"], "internal_user");
    assert_eq!(body["max_budget"], 9.0);
    assert_eq!(body["models"], json!([]));
    app.shutdown().await;
}

both_backends!(
    user_new_config_defaults,
    user_new_creates_user_and_key,
    user_new_errors_change_nothing,
    user_new_with_teams,
    user_info_access,
    user_list_filters_and_pages,
    user_update_exclude_unset,
    user_delete_removes_keys_and_memberships,
);
