//! `GET /audit`: every user and key write leaves one row in its transaction, secrets masked;
//! filters, pagination, date parsing and who may read.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

async fn audit_records_and_filters(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, body) = app
        .post(
            "/user/new",
            MASTER,
            json!({"user_id": "au", "key_alias": "first"}),
        )
        .await;
    assert_eq!(s, 200);
    let raw = body["key"].as_str().unwrap().to_string();
    let hash = purser_core::keys::hash_key(&raw);
    let (s, _) = app
        .post("/key/update", MASTER, json!({"key": raw, "max_budget": 2}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post(
            "/user/update",
            MASTER,
            json!({"user_id": "au", "user_alias": "x"}),
        )
        .await;
    assert_eq!(s, 200);

    let (s, body) = app.get("/audit", MASTER).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["total"], 4);
    assert_eq!(body["page"], 1);
    assert_eq!(body["page_size"], 10);
    assert_eq!(body["total_pages"], 1);
    let logs = body["audit_logs"].as_array().unwrap();
    // Newest first.
    assert_eq!(logs[0]["table_name"], "LiteLLM_UserTable");
    assert_eq!(logs[0]["action"], "updated");
    assert_eq!(logs[0]["before_value"]["user_alias"], json!(null));
    assert_eq!(logs[0]["updated_values"]["user_alias"], "x");
    assert_eq!(logs[0]["changed_by"], "default_user_id");
    assert_eq!(logs[0]["changed_by_api_key"], "litellm_proxy_master_key");
    // The raw key is never stored; the key's own hash is only its object id.
    assert!(!body.to_string().contains(&raw));

    let (_, body) = app.get(&format!("/audit?object_id={hash}"), MASTER).await;
    assert_eq!(body["total"], 2);
    assert_eq!(body["audit_logs"][0]["action"], "updated");
    assert_eq!(
        body["audit_logs"][0]["before_value"]["max_budget"],
        json!(null)
    );
    assert_eq!(body["audit_logs"][0]["updated_values"]["max_budget"], 2.0);
    let (_, body) = app
        .get("/audit?table_name=LiteLLM_UserTable&action=created", MASTER)
        .await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["audit_logs"][0]["object_id"], "au");
    let (_, body) = app.get("/audit?changed_by=someone-else", MASTER).await;
    assert_eq!(body["total"], 0);
    let (_, body) = app.get("/audit?page=2&page_size=3", MASTER).await;
    assert_eq!(body["audit_logs"].as_array().unwrap().len(), 1);
    assert_eq!(body["total_pages"], 2);

    // Dates: RFC 3339 and YYYY-MM-DD.
    let (_, body) = app
        .get("/audit?start_date=2000-01-01&end_date=2999-12-31", MASTER)
        .await;
    assert_eq!(body["total"], 4);
    let (_, body) = app
        .get("/audit?end_date=2000-01-01T00:00:00Z", MASTER)
        .await;
    assert_eq!(body["total"], 0);
    let (s, body) = app.get("/audit?start_date=yesterday", MASTER).await;
    assert_eq!(s, 400);
    assert!(
        assert_detail(&body)["error"]
            .as_str()
            .unwrap()
            .contains("start_date")
    );
    for q in ["page_size=101", "page_size=0", "page=0", "page=abc"] {
        let (s, body) = app.get(&format!("/audit?{q}"), MASTER).await;
        assert_eq!(s, 422, "{q} → {body}");
    }
    app.shutdown().await;
}

async fn audit_access(b: Backend) {
    let app = TestApp::spawn(b).await;
    let pv = app.user_with_key("pv", "proxy_admin_viewer").await;
    let pa = app.user_with_key("pa", "proxy_admin").await;
    let iu = app.user_with_key("iu", "internal_user").await;
    let iv = app.user_with_key("iv", "internal_user_viewer").await;
    for k in [&pv, &pa] {
        let (s, body) = app.get("/audit", k).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["total"], 8);
    }
    for k in [&iu, &iv] {
        let (s, body) = app.get("/audit", k).await;
        assert_eq!(s, 401, "{body}");
        assert_proxy_error(&body, 401, "auth_error");
    }
    let (s, _) = app.get_anon("/audit").await;
    assert_eq!(s, 401);
    // A write by a proxy-admin user key is attributed to that user and key hash.
    let (s, _) = app
        .post(
            "/user/update",
            &pa,
            json!({"user_id": "iu", "max_budget": 1}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, body) = app.get("/audit?changed_by=pa", MASTER).await;
    assert_eq!(body["total"], 1);
    assert_eq!(
        body["audit_logs"][0]["changed_by_api_key"],
        purser_core::keys::hash_key(&pa)
    );
    app.shutdown().await;
}

both_backends!(audit_records_and_filters, audit_access);
