//! `/key/*`: generation with the team rules of §6.2 (and the models-subset fix of §10 #18),
//! info scoping, list, exclude-unset updates, delete, block/unblock and rotation taking effect
//! on the very next request, hostile input changing nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::*;
use crate::users::{add_member, audit_total, count, insert_team};

async fn generate(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    app.post("/key/generate", key, body).await
}

async fn key_generate_happy_path(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, body) = generate(
        &app,
        MASTER,
        json!({"key_alias": "k1", "models": ["fake-gpt"], "max_budget": 5, "duration": "30d", "budget_duration": "1d",
               "metadata": {"env": "ü"}, "tpm_limit": 10, "rpm_limit": 0, "user_id": "nobody-yet", "ignored": [1, 2]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let raw = body["key"].as_str().unwrap();
    let hash = purser_core::keys::hash_key(raw);
    assert_eq!(body["token"], hash);
    assert_eq!(body["token_id"], hash);
    assert_eq!(body["key_name"], purser_core::keys::key_name(raw));
    assert_eq!(body["max_budget"], 5.0);
    assert_eq!(body["duration"], "30d");
    assert_eq!(body["key_type"], "default");
    assert_eq!(body["created_by"], "default_user_id");
    assert_eq!(body["metadata"], json!({"env": "ü"}));
    assert!(body["expires"].is_string());
    assert!(
        body["budget_reset_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00.000000Z")
    );

    let mut h = app.state.db.conn().await.unwrap();
    let stored: Vec<String> =
        purser::on_conn!(h, c => sqlx::query_scalar("SELECT token FROM verification_tokens").fetch_all(c).await).unwrap();
    assert_eq!(stored, vec![hash.clone()]);
    drop(h);

    // The key reads its own info; by hash and by raw key.
    let (s, info) = app.get("/key/info", raw).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["key"], hash);
    assert_eq!(info["info"]["status"], "active");
    assert_eq!(info["info"]["key_alias"], "k1");
    assert!(info["info"].get("token").is_none());
    let (s, info) = app.get(&format!("/key/info?key={raw}"), MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(info["key"], raw);

    // Custom key.
    let (s, body) = generate(&app, MASTER, json!({"key": "sk-my-custom-key-123"})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["key"], "sk-my-custom-key-123");
    let (s, body) = generate(&app, MASTER, json!({"key": "sk-my-custom-key-123"})).await;
    assert_eq!(s, 409, "{body}");
    app.shutdown().await;
}

async fn key_generate_hostile_input(b: Backend) {
    let app = TestApp::spawn(b).await;
    let user = app.user_with_key("u1", "internal_user").await;
    let keys = count(&app, "verification_tokens").await;
    let audits = audit_total(&app).await;
    for (bad, status, needle) in [
        (json!({"max_budget": -1}), 400, "max_budget"),
        (json!({"soft_budget": 1e300}), 400, "soft_budget"),
        (json!({"soft_budget": -0.01}), 400, "soft_budget"),
        (json!({"soft_budget": "lots"}), 422, "soft_budget"),
        (json!({"tpm_limit": -1}), 400, "tpm_limit"),
        (
            json!({"max_parallel_requests": -3}),
            400,
            "max_parallel_requests",
        ),
        (json!({"key": "sk-short"}), 400, "at least 16"),
        (
            json!({"key": "pk-0123456789abcdef"}),
            400,
            "must start with 'sk-'",
        ),
        (json!({"key": "sk-0123456789 abcdef"}), 400, "printable"),
        (json!({"key": "sk-1234"}), 400, ""),
        (json!({"duration": "forever"}), 400, "Invalid duration"),
        (
            json!({"budget_duration": "0d"}),
            400,
            "Invalid budget_duration",
        ),
        (json!({"key_type": "root"}), 400, "key_type"),
        (json!({"team_id": ""}), 400, "team_id"),
        (json!({"max_budget": "x"}), 422, "max_budget"),
        (json!({"tpm_limit": 1e30}), 422, "tpm_limit"),
        (json!({"models": "fake-gpt"}), 422, "models"),
        (json!({"metadata": [1]}), 422, "metadata"),
    ] {
        let (s, body) = generate(&app, MASTER, bad.clone()).await;
        assert_eq!(s.as_u16(), status, "{bad} → {body}");
        assert!(body.to_string().contains(needle), "{bad} → {body}");
    }
    // NaN is not JSON (a Python client may still send it): refused before anything is stored.
    let (s, body) = app
        .post_raw("/key/generate", MASTER, "{\"soft_budget\": NaN}")
        .await;
    assert_eq!(s, 422, "{body}");
    let (s, body) = app
        .post_raw("/key/generate", MASTER, "{\"key_alias\": ")
        .await;
    assert_eq!(s, 422);
    assert_eq!(assert_detail(&body)[0]["type"], "json_invalid");
    let big = format!("{{\"key_alias\": \"{}\"}}", "a".repeat(11 * 1024 * 1024));
    let (s, body) = app.post_raw("/key/generate", MASTER, big).await;
    assert_eq!(s, 413, "{body}");
    // A non-admin may not create keys for someone else.
    let (s, body) = generate(&app, &user, json!({"user_id": "someone-else"})).await;
    assert_eq!(s, 403, "{body}");
    // Viewers cannot write keys.
    let iv = app.user_with_key("iv", "internal_user_viewer").await;
    let keys = keys + 1;
    let audits = audits + 2;
    let (s, body) = generate(&app, &iv, json!({})).await;
    assert_eq!(s, 401, "{body}");
    assert_proxy_error(&body, 401, "auth_error");
    assert_eq!(count(&app, "verification_tokens").await, keys);
    assert_eq!(audit_total(&app).await, audits);

    // A non-admin without user_id gets its own.
    let (s, body) = generate(&app, &user, json!({})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["created_by"], "u1");
    app.shutdown().await;
}

async fn key_generate_team_rules(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t", &["fake-gpt", "openai/*"], &[]).await;
    insert_team(&app, "open", &[], &[]).await;
    let ta = app.user_with_key("ta", "internal_user").await;
    let tm = app.user_with_key("tm", "internal_user").await;
    let out = app.user_with_key("out", "internal_user").await;
    let pa = app.user_with_key("pa", "proxy_admin").await;
    add_member(&app, "t", "ta", "admin").await;
    add_member(&app, "t", "tm", "user").await;
    let keys = count(&app, "verification_tokens").await;

    let (s, body) = generate(&app, &out, json!({"team_id": "nope"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        assert_proxy_error(&body, 400, "bad_request_error"),
        "{'error': 'Team not found for team_id=nope. Non-admin users cannot create keys for non-existent teams.'}"
    );
    let (s, body) = generate(&app, &out, json!({"team_id": "t"})).await;
    assert_eq!(s, 400);
    assert!(assert_proxy_error(&body, 400, "").contains("User=out not assigned to team=t"));
    let (s, body) = generate(&app, &out, json!({"team_id": "t", "user_id": "out"})).await;
    assert_eq!(s, 400);
    assert!(assert_proxy_error(&body, 400, "").contains("User=out not assigned to team=t"));
    let (s, body) = generate(&app, &tm, json!({"team_id": "t"})).await;
    assert_eq!(s, 401);
    assert!(
        assert_proxy_error(&body, 401, "team_member_permission_error").contains("/key/generate")
    );
    let (s, body) = generate(&app, &ta, json!({"team_id": "t", "user_id": "tm"})).await;
    assert_eq!(s, 403, "{body}");
    // Models must fit in the team (§10 #18), for admins too.
    for k in [&ta, &pa, &MASTER.to_string()] {
        let (s, body) = generate(
            &app,
            k,
            json!({"team_id": "t", "models": ["fake-gpt", "not-in-team"]}),
        )
        .await;
        assert_eq!(s, 400, "{body}");
        assert!(assert_proxy_error(&body, 400, "").contains("'not-in-team'"));
    }
    assert_eq!(count(&app, "verification_tokens").await, keys);

    let (s, body) = generate(
        &app,
        &ta,
        json!({"team_id": "t", "models": ["fake-gpt", "all-team-models", "openai/gpt-4o"]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_id"], "ta");
    assert_eq!(body["team_id"], "t");
    let (s, body) = generate(&app, &out, json!({"team_id": "open", "models": ["x"]})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = generate(
        &app,
        MASTER,
        json!({"team_id": "open", "models": ["anything"]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = generate(
        &app,
        MASTER,
        json!({"team_id": "no-such-team", "user_id": "out"}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["team_id"], "no-such-team");

    // Granting /key/generate to members lets tm create team keys.
    let mut h = app.state.db.conn().await.unwrap();
    purser::on_conn!(h, c => sqlx::query("UPDATE teams SET team_member_permissions = '[\"/key/generate\"]' WHERE team_id = 't'").execute(c).await.map(|_| ())).unwrap();
    drop(h);
    app.state.cache.clear();
    let (s, body) = generate(&app, &tm, json!({"team_id": "t"})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_id"], "tm");
    app.shutdown().await;
}

async fn key_info_access(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t", &[], &[]).await;
    let owner = app.user_with_key("owner", "internal_user").await;
    let ta = app.user_with_key("ta", "internal_user").await;
    let tm = app.user_with_key("tm", "internal_user").await;
    let out = app.user_with_key("out", "internal_user").await;
    let pv = app.user_with_key("pv", "proxy_admin_viewer").await;
    let iv = app.user_with_key("iv", "internal_user_viewer").await;
    for (u, r) in [("owner", "user"), ("ta", "admin"), ("tm", "user")] {
        add_member(&app, "t", u, r).await;
    }
    let (s, body) = generate(&app, MASTER, json!({"team_id": "t", "user_id": "owner"})).await;
    assert_eq!(s, 200);
    let team_key = body["key"].as_str().unwrap().to_string();
    let hash = body["token"].as_str().unwrap().to_string();
    let path = format!("/key/info?key={hash}");
    for k in [&owner, &ta, &pv, &team_key, &MASTER.to_string()] {
        let (s, body) = app.get(&path, k).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["info"]["user_id"], "owner");
    }
    for k in [&tm, &out, &iv] {
        let (s, body) = app.get(&path, k).await;
        assert_eq!(s, 403, "{body}");
        assert!(
            assert_proxy_error(&body, 403, "auth_error")
                .contains("not allowed to access this key's info")
        );
    }
    let (s, body) = app.get("/key/info?key=sk-unknown-key-000000", MASTER).await;
    assert_eq!(s, 404);
    assert_eq!(
        assert_proxy_error(&body, 404, "not_found_error"),
        "Key not found in database"
    );
    let (s, _) = app.get("/key/info?key=", MASTER).await;
    assert_eq!(s, 404);
    let (s, _) = app.get("/key/info", MASTER).await;
    assert_eq!(s, 404);
    app.shutdown().await;
}

async fn key_list_scoping(b: Backend) {
    let app = TestApp::spawn(b).await;
    let u1 = app.user_with_key("u1", "internal_user").await;
    let _u2 = app.user_with_key("u2", "internal_user").await;
    let pv = app.user_with_key("pv", "proxy_admin_viewer").await;
    for i in 0..3 {
        let (s, _) = generate(
            &app,
            MASTER,
            json!({"user_id": "u1", "key_alias": format!("a{i}")}),
        )
        .await;
        assert_eq!(s, 200);
    }
    let (s, body) = app.get("/key/list", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(body["total_count"], 6);
    assert_eq!(body["current_page"], 1);
    assert!(body["keys"][0].is_string());
    let (_, body) = app.get("/key/list?size=2&page=2&user_id=u1", &pv).await;
    assert_eq!(body["total_count"], 4);
    assert_eq!(body["total_pages"], 2);
    assert_eq!(body["keys"].as_array().unwrap().len(), 2);
    let (_, body) = app
        .get("/key/list?key_alias=a1&return_full_object=true", MASTER)
        .await;
    assert_eq!(body["total_count"], 1);
    assert_eq!(body["keys"][0]["key_alias"], "a1");
    assert_eq!(body["keys"][0]["user_id"], "u1");
    // Non-admins see only their own keys.
    let (s, body) = app.get("/key/list", &u1).await;
    assert_eq!(s, 200);
    assert_eq!(body["total_count"], 4);
    let (s, body) = app.get("/key/list?user_id=u2", &u1).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app.get("/key/list?size=0", MASTER).await;
    assert_eq!(s, 422, "{body}");
    let (s, _) = app.get("/key/list?return_full_object=maybe", MASTER).await;
    assert_eq!(s, 422);
    app.shutdown().await;
}

async fn key_update_exclude_unset(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t", &["fake-gpt"], &[]).await;
    let owner = app.user_with_key("owner", "internal_user").await;
    let out = app.user_with_key("out", "internal_user").await;
    let (_, body) = generate(
        &app,
        MASTER,
        json!({"user_id": "owner", "team_id": "t", "max_budget": 3, "key_alias": "orig"}),
    )
    .await;
    let raw = body["key"].as_str().unwrap().to_string();
    let (s, body) = app
        .post("/key/update", &owner, json!({"key": raw, "tpm_limit": 100}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["tpm_limit"], 100);
    assert_eq!(body["max_budget"], 3.0);
    assert_eq!(body["key_alias"], "orig");
    assert_eq!(body["updated_by"], "owner");
    let (s, body) = app
        .post(
            "/key/update",
            MASTER,
            json!({"key": raw, "max_budget": null, "key_alias": "🙂"}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(body["max_budget"].is_null());
    assert_eq!(body["tpm_limit"], 100);

    let audits = audit_total(&app).await;
    for (k, bad, status) in [
        (&owner, json!({"key": raw, "models": ["gpt-5"]}), 400),
        (&owner, json!({"key": raw, "max_budget": -2}), 400),
        (&owner, json!({"key": raw, "max_budget": "x"}), 422),
        (&owner, json!({"key": raw, "user_id": "out"}), 403),
        (&owner, json!({"key": raw, "team_id": null}), 403),
        (&owner, json!({"tpm_limit": 1}), 422),
        (&out, json!({"key": raw, "tpm_limit": 1}), 403),
        (
            &owner,
            json!({"key": "sk-does-not-exist-0000", "tpm_limit": 1}),
            404,
        ),
    ] {
        let (s, body) = app.post("/key/update", k, bad.clone()).await;
        assert_eq!(s.as_u16(), status, "{bad} → {body}");
    }
    assert_eq!(audit_total(&app).await, audits);
    let (_, info) = app.get(&format!("/key/info?key={raw}"), MASTER).await;
    assert_eq!(info["info"]["tpm_limit"], 100);
    assert_eq!(info["info"]["models"], json!([]));
    assert_eq!(info["info"]["key_alias"], "🙂");
    // The models check uses the new list: an allowed model passes.
    let (s, body) = app
        .post(
            "/key/update",
            &owner,
            json!({"key": raw, "models": ["fake-gpt"]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    // Blocking through /key/update takes effect immediately.
    let (s, _) = app
        .post("/key/update", MASTER, json!({"key": raw, "blocked": true}))
        .await;
    assert_eq!(s, 200);
    let (s, body) = app.get("/key/info", &raw).await;
    assert_eq!(s, 401);
    assert!(assert_proxy_error(&body, 401, "auth_error").contains("Key is blocked"));
    // The owner cannot unblock it through /key/update with another key.
    let (s, _) = generate(
        &app,
        MASTER,
        json!({"user_id": "owner", "key": "sk-owner-second-key-01"}),
    )
    .await;
    assert_eq!(s, 200);
    for v in [json!(false), json!(null)] {
        let (s, body) = app
            .post(
                "/key/update",
                "sk-owner-second-key-01",
                json!({"key": raw, "blocked": v}),
            )
            .await;
        assert_eq!(s, 403, "{body}");
    }
    let (s, _) = app.get("/key/info", &raw).await;
    assert_eq!(s, 401);
    app.shutdown().await;
}

async fn key_delete_rules(b: Backend) {
    let app = TestApp::spawn(b).await;
    let owner = app.user_with_key("owner", "internal_user").await;
    let out = app.user_with_key("out", "internal_user").await;
    let (_, body) = generate(&app, MASTER, json!({"user_id": "owner", "key_alias": "al"})).await;
    let k1 = body["key"].as_str().unwrap().to_string();
    let (_, body) = generate(&app, MASTER, json!({"user_id": "owner"})).await;
    let k2 = body["key"].as_str().unwrap().to_string();
    let keys = count(&app, "verification_tokens").await;

    let (s, body) = app.post("/key/delete", &out, json!({"keys": [k1]})).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            "/key/delete",
            &owner,
            json!({"keys": [k1, "sk-unknown-key-00000"]}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert!(assert_proxy_error(&body, 404, "not_found_error").contains("Nothing was deleted"));
    assert!(!body.to_string().contains("sk-unknown-key-00000"));
    let (s, _) = app
        .post("/key/delete", &owner, json!({"key_aliases": ["nope"]}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = app.post("/key/delete", &owner, json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = app.post("/key/delete", &owner, json!({"keys": "x"})).await;
    assert_eq!(s, 422);
    assert_eq!(count(&app, "verification_tokens").await, keys);

    let (s, body) = app.post("/key/delete", &owner, json!({"keys": [k1]})).await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"deleted_keys": [k1]}));
    let (s, body) = app.get("/key/info", &k1).await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "token_not_found_in_db");
    let hash2 = purser_core::keys::hash_key(&k2);
    let (s, body) = app
        .post("/key/delete", MASTER, json!({"keys": [hash2]}))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = app.get("/key/info", &k2).await;
    assert_eq!(s, 401);
    let (_, a) = app
        .get(&format!("/audit?object_id={hash2}&action=deleted"), MASTER)
        .await;
    assert_eq!(a["total"], 1);
    app.shutdown().await;
}

async fn key_block_unblock_regenerate(b: Backend) {
    let app = TestApp::spawn(b).await;
    let owner = app.user_with_key("owner", "internal_user").await;
    let pv = app.user_with_key("pv", "proxy_admin_viewer").await;
    let (_, body) = generate(&app, MASTER, json!({"user_id": "owner"})).await;
    let raw = body["key"].as_str().unwrap().to_string();
    let hash = purser_core::keys::hash_key(&raw);

    let (s, body) = app.post("/key/block", &owner, json!({"key": raw})).await;
    assert_eq!(s, 401, "{body}");
    let (s, body) = app.post("/key/block", &pv, json!({"key": raw})).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            "/key/block",
            MASTER,
            json!({"key": "sk-nope-nope-nope-nope"}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = app.get("/key/info", &raw).await;
    assert_eq!(s, 200);
    let (s, body) = app.post("/key/block", MASTER, json!({"key": raw})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["blocked"], true);
    assert_eq!(body["token"], hash);
    let (s, body) = app.get("/key/info", &raw).await;
    assert_eq!(s, 401);
    assert!(assert_proxy_error(&body, 401, "auth_error").contains("Key is blocked"));
    let (s, body) = app.post("/key/unblock", MASTER, json!({"key": hash})).await;
    assert_eq!(s, 200);
    assert_eq!(body["blocked"], false);
    let (s, _) = app.get("/key/info", &raw).await;
    assert_eq!(s, 200);

    // Rotation: the new key works, the old one fails at once.
    let (s, body) = app
        .post("/key/regenerate", &owner, json!({"key": raw}))
        .await;
    assert_eq!(s, 200, "{body}");
    let new_raw = body["key"].as_str().unwrap().to_string();
    assert_ne!(new_raw, raw);
    assert_eq!(body["rotation_count"], 1);
    assert_eq!(body["token"], purser_core::keys::hash_key(&new_raw));
    let (s, _) = app.get("/key/info", &raw).await;
    assert_eq!(s, 401);
    let (s, info) = app.get("/key/info", &new_raw).await;
    assert_eq!(s, 200);
    assert_eq!(info["info"]["rotation_count"], 1);
    assert_eq!(info["info"]["user_id"], "owner");

    // Path variant with a custom new key; bad custom keys are refused and change nothing.
    let (s, body) = app
        .post(
            "/key/regenerate",
            MASTER,
            json!({"key": new_raw, "new_key": "sk-x"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = app
        .post("/key/regenerate", &pv, json!({"key": new_raw}))
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            &format!("/key/{new_raw}/regenerate"),
            MASTER,
            json!({"new_key": "sk-rotated-custom-0001"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["key"], "sk-rotated-custom-0001");
    assert_eq!(body["rotation_count"], 2);
    let (s, _) = app.get("/key/info", &new_raw).await;
    assert_eq!(s, 401);
    let (s, _) = app.get("/key/info", "sk-rotated-custom-0001").await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post(
            "/key/regenerate",
            MASTER,
            json!({"key": "sk-unknown-00000000000"}),
        )
        .await;
    assert_eq!(s, 404);
    let (_, a) = app.get("/audit?action=rotated", MASTER).await;
    assert_eq!(a["total"], 2);
    let (_, a) = app
        .get(
            "/audit?table_name=LiteLLM_VerificationToken&action=blocked",
            MASTER,
        )
        .await;
    assert_eq!(a["total"], 1);
    app.shutdown().await;
}

async fn key_team_writes(b: Backend) {
    let app = TestApp::spawn(b).await;
    insert_team(&app, "t", &[], &[]).await;
    insert_team(&app, "other", &[], &[]).await;
    let ta = app.user_with_key("ta", "internal_user").await;
    let tm = app.user_with_key("tm", "internal_user").await;
    let oa = app.user_with_key("oa", "internal_user").await;
    add_member(&app, "t", "ta", "admin").await;
    add_member(&app, "t", "tm", "user").await;
    add_member(&app, "other", "oa", "admin").await;
    let (_, body) = generate(&app, MASTER, json!({"team_id": "t", "user_id": "tm"})).await;
    let member_key = body["key"].as_str().unwrap().to_string();
    let (_, body) = generate(&app, MASTER, json!({"team_id": "t"})).await;
    let service_key = body["key"].as_str().unwrap().to_string();

    // A plain member may not touch the team's service key without the permission.
    let (s, body) = app
        .post(
            "/key/update",
            &tm,
            json!({"key": service_key, "tpm_limit": 1}),
        )
        .await;
    assert_eq!(s, 401, "{body}");
    assert!(assert_proxy_error(&body, 401, "team_member_permission_error").contains("/key/update"));
    let (s, body) = app
        .post("/key/delete", &tm, json!({"keys": [service_key]}))
        .await;
    assert_eq!(s, 401, "{body}");
    // An admin of another team may not read or change it.
    let (s, _) = app.get(&format!("/key/info?key={service_key}"), &oa).await;
    assert_eq!(s, 403);
    let (s, _) = app
        .post(
            "/key/update",
            &oa,
            json!({"key": service_key, "tpm_limit": 1}),
        )
        .await;
    assert_eq!(s, 403);
    // The team admin may update and delete team keys; the member may update its own.
    let (s, body) = app
        .post(
            "/key/update",
            &ta,
            json!({"key": service_key, "tpm_limit": 9}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["tpm_limit"], 9);
    let (s, _) = app
        .post(
            "/key/update",
            &tm,
            json!({"key": member_key, "rpm_limit": 3}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, body) = app
        .post(
            "/key/delete",
            &ta,
            json!({"keys": [service_key, member_key]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    for k in [&service_key, &member_key] {
        let (s, _) = app.get("/key/info", k).await;
        assert_eq!(s, 401);
    }
    app.shutdown().await;
}

both_backends!(
    key_team_writes,
    key_generate_happy_path,
    key_generate_hostile_input,
    key_generate_team_rules,
    key_info_access,
    key_list_scoping,
    key_update_exclude_unset,
    key_delete_rules,
    key_block_unblock_regenerate,
);
