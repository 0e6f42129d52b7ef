//! Team routes (`/team/*` except member routes): happy paths, every error path with status and
//! message, the role matrix, hostile input, null vs absent, budget-reset stability, all-or-
//! nothing delete, listing order and pagination, and cache freshness after block.

use purser::store::{self, keys::KeyRow, members::MembershipRow, users::UserRow};
use purser_core::keys::{generate_key, hash_key, key_name};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::*;

/// Inserts (if missing) a user with `role` and a fresh key of it (optionally a team key);
/// returns the raw key. Direct store writes keep these tests independent of /user/new.
async fn user_key(app: &TestApp, user_id: Option<&str>, role: &str, team: Option<&str>) -> String {
    let now = store::now();
    let mut h = app.state.db.conn().await.unwrap();
    if let Some(uid) = user_id
        && store::users::get(&mut h, uid).await.unwrap().is_none()
    {
        let mut u = UserRow::new(uid.into(), now);
        u.user_role = role.into();
        u.user_email = Some(format!("{uid}@example.com"));
        u.user_alias = Some(format!("alias-{uid}"));
        store::users::insert(&mut h, &u).await.unwrap();
    }
    let raw = generate_key();
    let k = KeyRow {
        key_name: Some(key_name(&raw)),
        user_id: user_id.map(str::to_string),
        team_id: team.map(str::to_string),
        key_type: Some("default".into()),
        created_by: Some("default_user_id".into()),
        updated_by: Some("default_user_id".into()),
        ..KeyRow::new(hash_key(&raw), now)
    };
    store::keys::insert(&mut h, &k).await.unwrap();
    raw
}

/// Puts an existing user on a team's roster directly (member routes are another module's).
async fn add_member(app: &TestApp, team_id: &str, user_id: &str, role: &str) {
    let mut h = app.state.db.conn().await.unwrap();
    store::members::insert(
        &mut h,
        &MembershipRow {
            team_id: team_id.into(),
            user_id: user_id.into(),
            role: role.into(),
            user_email: None,
            spend: 0,
            total_spend: 0,
            budget_id: None,
            added_at: store::now(),
        },
    )
    .await
    .unwrap();
    app.state.cache.evict_team(team_id).await;
}

async fn new_team(app: &TestApp, body: Value) -> Value {
    let (s, b) = app.post("/team/new", MASTER, body).await;
    assert_eq!(s, 200, "{b}");
    b
}

async fn info(app: &TestApp, team_id: &str) -> (StatusCode, Value) {
    app.get(&format!("/team/info?team_id={team_id}"), MASTER)
        .await
}

fn wrapped_msg(b: &Value, status: u16) -> String {
    assert_proxy_error(b, status, "")
}

async fn team_new_happy_and_validation(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = new_team(
        &app,
        json!({"team_alias": "research team", "team_id": "t1", "models": ["fake-gpt"], "max_budget": 10.0,
               "tpm_limit": 100000, "rpm_limit": 1000, "budget_duration": "1d",
               "metadata": {"owner": "research", "team_member_budget_id": "hijack"},
               "tags": ["a", "b"], "model_aliases": {"fast": "fake-gpt"},
               "team_member_budget": 2.5, "team_member_rpm_limit": 7,
               "members_with_roles": [{"role": "user", "user_id": "alice"}, {"role": "admin", "user_email": "bob@example.com"}]}),
    )
    .await;
    assert_eq!(t["team_id"], "t1");
    assert_eq!(t["max_budget"], 10.0);
    assert_eq!(t["soft_budget"], Value::Null);
    assert_eq!(t["spend"], 0.0);
    assert_eq!(t["budget_duration"], "1d");
    assert!(t["budget_reset_at"].is_string());
    assert_eq!(t["metadata"]["owner"], "research");
    assert_eq!(t["metadata"]["tags"], json!(["a", "b"]));
    let budget_id = t["metadata"]["team_member_budget_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(budget_id, "hijack");
    assert!(
        budget_id.starts_with("team-research-team-budget-"),
        "{budget_id}"
    );
    assert_eq!(
        t["litellm_model_table"]["model_aliases"],
        json!({"fast": "fake-gpt"})
    );
    assert_eq!(t["model_id"], t["litellm_model_table"]["id"]);
    let roster = t["members_with_roles"].as_array().unwrap();
    assert_eq!(roster.len(), 3, "{t}");
    assert!(
        roster
            .contains(&json!({"user_id": "default_user_id", "user_email": null, "role": "admin"}))
    );
    assert!(
        roster
            .iter()
            .any(|m| m["user_id"] == "alice" && m["role"] == "user")
    );
    assert!(
        roster
            .iter()
            .any(|m| m["user_email"] == "bob@example.com" && m["role"] == "admin")
    );
    // Users created on the fly, incl. the master key's identity.
    let mut h = app.state.db.conn().await.unwrap();
    for u in ["alice", "default_user_id"] {
        assert!(store::users::get(&mut h, u).await.unwrap().is_some(), "{u}");
    }
    drop(h);
    let (s, i) = info(&app, "t1").await;
    assert_eq!(s, 200);
    assert_eq!(
        i["team_info"]["team_member_budget_table"]["max_budget"],
        2.5
    );
    assert_eq!(i["team_info"]["team_member_budget_table"]["rpm_limit"], 7);
    assert_eq!(
        i["team_info"]["team_member_budget_table"]["budget_duration"],
        "1d"
    );
    for m in i["team_memberships"].as_array().unwrap() {
        assert_eq!(m["budget_id"], budget_id.as_str());
        assert_eq!(m["budget_source"], "team_default");
    }

    // Minimal team: generated uuid, recorded defaults.
    let t2 = new_team(
        &app,
        json!({"team_alias": "research-team", "team_id": "  "}),
    )
    .await;
    assert_eq!(t2["team_id"].as_str().unwrap().len(), 36);
    assert_eq!(
        t2["members_with_roles"],
        json!([{"user_id": "default_user_id", "user_email": null, "role": "admin"}])
    );
    assert_eq!(t2["models"], json!([]));
    assert_eq!(t2["metadata"], json!({}));
    assert_eq!(t2["router_settings"], json!({}));
    assert_eq!(t2["litellm_model_table"], Value::Null);
    assert_eq!(t2["blocked"], false);

    // Errors (wrapped shape), nothing written.
    let (s, e) = app
        .post("/team/new", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        wrapped_msg(&e, 400),
        "{'error': 'Team id = t1 already exists. Please use a different team id.'}"
    );
    let bad = [
        (
            json!({"team_id": "x1", "max_budget": -1}),
            400,
            "max_budget must be a non-negative finite number. Received: -1.0",
        ),
        (
            json!({"team_id": "x1", "soft_budget": -0.5}),
            400,
            "soft_budget must be a non-negative finite number. Received: -0.5",
        ),
        (
            json!({"team_id": "x1", "team_member_budget": -3}),
            400,
            "team_member_budget must be a non-negative finite number",
        ),
        (
            json!({"team_id": "x1", "max_budget": 1e300}),
            400,
            "max_budget must be a non-negative finite number",
        ),
        (
            json!({"team_id": "x1", "budget_duration": "30"}),
            400,
            "Invalid budget_duration '30'",
        ),
        (
            json!({"team_id": "x1", "budget_duration": "🙂"}),
            400,
            "Invalid budget_duration",
        ),
        (
            json!({"team_id": "x1", "team_member_budget_duration": "2mo"}),
            400,
            "Invalid budget_duration '2mo'",
        ),
        (
            json!({"team_id": "x1", "max_budget": 10, "soft_budget": 10}),
            400,
            "soft_budget (10.0) must be strictly lower than max_budget (10.0)",
        ),
        (json!({"team_id": "litellm-dashboard"}), 400, "reserved"),
        (
            json!({"team_id": "x1", "team_member_permissions": ["/team/delete"]}),
            400,
            "Invalid team member permission",
        ),
    ];
    for (body, status, needle) in bad {
        let (s, e) = app.post("/team/new", MASTER, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body} → {e}");
        let text = e.to_string();
        assert!(text.contains(needle), "{body} → {e}");
    }
    for body in [
        json!({"team_id": "x1", "tpm_limit": -1}),
        json!({"team_id": "x1", "rpm_limit": 1.5}),
        json!({"team_id": "x1", "models": "fake-gpt"}),
        json!({"team_id": "x1", "members_with_roles": [{"role": "owner", "user_id": "z"}]}),
        json!({"team_id": "x1", "members_with_roles": [{"role": "user"}]}),
        json!([1, 2]),
    ] {
        let (s, e) = app.post("/team/new", MASTER, body.clone()).await;
        assert_eq!(s, 422, "{body} → {e}");
        assert_detail(&e);
    }
    let (s, _) = app.post_raw("/team/new", MASTER, "{not json").await;
    assert_eq!(s, 422);
    let (s, _) = info(&app, "x1").await;
    assert_eq!(s, 404, "rejected requests must write nothing");
    let mut h = app.state.db.conn().await.unwrap();
    assert!(store::users::get(&mut h, "z").await.unwrap().is_none());
    drop(h);

    // Unicode / odd ids are data, not syntax.
    let t3 = new_team(
        &app,
        json!({"team_id": "équipe/'; DROP TABLE teams;--", "team_alias": "ünï"}),
    )
    .await;
    assert_eq!(t3["team_alias"], "ünï");
    let (s, i) = info(&app, "%C3%A9quipe%2F%27%3B%20DROP%20TABLE%20teams%3B--").await;
    assert_eq!(s, 200, "{i}");
    app.shutdown().await;
}

async fn team_new_roles(b: Backend) {
    let yaml = format!("{DEFAULT_CONFIG}\n  disable_auto_add_proxy_admin_to_teams: true\n");
    let app = TestApp::spawn_with(b, &yaml).await;
    let t = new_team(&app, json!({"team_id": "t1"})).await;
    assert_eq!(
        t["members_with_roles"],
        json!([]),
        "auto-add disabled for proxy admins"
    );
    let viewer = user_key(&app, Some("viewer"), "proxy_admin_viewer", None).await;
    let internal = user_key(&app, Some("iu"), "internal_user", None).await;
    let team_key = user_key(&app, None, "internal_user", Some("t1")).await;
    let (s, e) = app
        .post("/team/new", &viewer, json!({"team_id": "t2"}))
        .await;
    assert_eq!(s, 403);
    assert_proxy_error(&e, 403, "auth_error");
    for k in [&internal, &team_key] {
        let (s, e) = app.post("/team/new", k, json!({"team_id": "t2"})).await;
        assert_eq!(s, 401, "{e}");
        assert!(assert_proxy_error(&e, 401, "auth_error").contains("Only proxy admin"));
    }
    // A proxy-admin user key creates the team and is auto-added... unless disabled (it is).
    let admin = user_key(&app, Some("boss"), "proxy_admin", None).await;
    let (s, t) = app
        .post("/team/new", &admin, json!({"team_id": "t3"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["members_with_roles"], json!([]));
    let (s, _) = info(&app, "t2").await;
    assert_eq!(s, 404);
    app.shutdown().await;
}

async fn team_update_semantics(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = new_team(
        &app,
        json!({"team_id": "t1", "team_alias": "a", "max_budget": 10, "tpm_limit": 5, "budget_duration": "30d",
               "metadata": {"k": 1}, "team_member_budget": 1}),
    )
    .await;
    let reset = t["budget_reset_at"].clone();
    let pointer = t["metadata"]["team_member_budget_id"].clone();
    assert!(pointer.is_string());

    // Absent leaves, null clears, value sets; metadata replaces but keeps the pointer.
    let (s, u) = app
        .post("/team/update", MASTER, json!({"team_id": "t1", "tpm_limit": null, "team_alias": "b",
              "metadata": {"n": 2, "team_member_budget_id": "evil"}, "tags": ["x"], "budget_duration": "30d"}))
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["team_id"], "t1");
    let d = &u["data"];
    assert_eq!(d["litellm_organization_table"], Value::Null);
    assert_eq!(d["projects"], Value::Null);
    assert!(d.as_object().unwrap().contains_key("projects"));
    assert_eq!(d["tpm_limit"], Value::Null);
    assert_eq!(d["team_alias"], "b");
    assert_eq!(d["max_budget"], 10.0);
    assert_eq!(
        d["metadata"],
        json!({"n": 2, "tags": ["x"], "team_member_budget_id": pointer})
    );
    // §10 #24: an unchanged duration keeps the reset instant.
    assert_eq!(d["budget_reset_at"], reset);
    assert_eq!(d["members_with_roles"][0]["user_id"], "default_user_id");

    let (_, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "budget_duration": "1h"}),
        )
        .await;
    assert_eq!(u["data"]["budget_duration"], "1h");
    assert_ne!(u["data"]["budget_reset_at"], reset);
    let (_, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "budget_duration": null}),
        )
        .await;
    assert_eq!(u["data"]["budget_duration"], Value::Null);
    assert_eq!(u["data"]["budget_reset_at"], Value::Null);

    // Member-default budget fields update the budget row.
    let (s, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "team_member_budget": 3, "team_member_tpm_limit": 9}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    let (_, i) = info(&app, "t1").await;
    assert_eq!(
        i["team_info"]["team_member_budget_table"]["max_budget"],
        3.0
    );
    assert_eq!(i["team_info"]["team_member_budget_table"]["tpm_limit"], 9);
    assert_eq!(i["team_info"]["metadata"]["team_member_budget_id"], pointer);

    // model_aliases upsert.
    let (_, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "model_aliases": {"x": "fake-gpt"}}),
        )
        .await;
    assert_eq!(
        u["data"]["litellm_model_table"]["model_aliases"],
        json!({"x": "fake-gpt"})
    );
    let (_, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "model_aliases": {"y": "fake-gpt"}}),
        )
        .await;
    assert_eq!(
        u["data"]["litellm_model_table"]["model_aliases"],
        json!({"y": "fake-gpt"})
    );

    // Errors.
    let (s, e) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "nope", "max_budget": 1}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        wrapped_msg(&e, 404),
        "{'error': 'Team not found, passed team_id=nope'}"
    );
    let (s, e) = app
        .post("/team/update", MASTER, json!({"max_budget": 1}))
        .await;
    assert_eq!(s, 422, "{e}");
    let (s, e) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "max_budget": -5}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(wrapped_msg(&e, 400).contains("max_budget must be a non-negative finite number"));
    let (s, e) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "soft_budget": 50}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        wrapped_msg(&e, 400)
            .contains("soft_budget (50.0) must be strictly lower than max_budget (10.0)"),
        "{e}"
    );
    let (s, _) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "budget_duration": "0d"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "rpm_limit": -1}),
        )
        .await;
    assert_eq!(s, 422);
    let (_, i) = info(&app, "t1").await;
    assert_eq!(
        i["team_info"]["max_budget"], 10.0,
        "failed updates change nothing"
    );
    assert_eq!(i["team_info"]["soft_budget"], Value::Null);

    // Roles: outsider and plain member 403 (also for unknown teams), viewer 403.
    let outsider = user_key(&app, Some("out"), "internal_user", None).await;
    let member = user_key(&app, Some("mem"), "internal_user", None).await;
    let viewer = user_key(&app, Some("view"), "proxy_admin_viewer", None).await;
    let team_key = user_key(&app, None, "internal_user", Some("t1")).await;
    add_member(&app, "t1", "mem", "user").await;
    for k in [&outsider, &member, &viewer, &team_key] {
        for tid in ["t1", "nope"] {
            let (s, e) = app
                .post("/team/update", k, json!({"team_id": tid, "tpm_limit": 1}))
                .await;
            assert_eq!(s, 403, "{e}");
            assert_eq!(
                assert_proxy_error(&e, 403, "auth_error"),
                "You do not have access to this team"
            );
        }
    }
    // Team admin without an allow-list: nothing editable; unchanged re-sends are fine.
    let tadmin = user_key(&app, Some("tadm"), "internal_user", None).await;
    add_member(&app, "t1", "tadm", "admin").await;
    let (s, e) = app
        .post(
            "/team/update",
            &tadmin,
            json!({"team_id": "t1", "tpm_limit": 1}),
        )
        .await;
    assert_eq!(s, 403);
    assert!(assert_proxy_error(&e, 403, "auth_error").contains("cannot edit team settings"));
    let (s, _) = app
        .post(
            "/team/update",
            &tadmin,
            json!({"team_id": "t1", "max_budget": 10}),
        )
        .await;
    assert_eq!(s, 200, "unchanged values are ignored");
    app.shutdown().await;
}

async fn team_member_budget_created_on_update(b: Backend) {
    let app = TestApp::spawn(b).await;
    new_team(
        &app,
        json!({"team_id": "t1", "team_alias": "my team", "budget_duration": "7d"}),
    )
    .await;
    user_key(&app, Some("mem"), "internal_user", None).await;
    add_member(&app, "t1", "mem", "user").await;
    // Only nulls: no budget row is created.
    let (s, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "team_member_budget": null}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        u["data"]["metadata"].get("team_member_budget_id").is_none(),
        "{u}"
    );
    let (s, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "team_member_budget": 4, "metadata": {"x": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    let id = u["data"]["metadata"]["team_member_budget_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("team-my-team-budget-"), "{id}");
    assert_eq!(u["data"]["metadata"]["x"], 1);
    let (_, i) = info(&app, "t1").await;
    let tb = &i["team_info"]["team_member_budget_table"];
    assert_eq!(tb["max_budget"], 4.0);
    assert_eq!(tb["budget_duration"], "7d", "inherits the team period");
    // Existing members are linked to the new default budget.
    for m in i["team_memberships"].as_array().unwrap() {
        assert_eq!(m["budget_id"], id.as_str());
        assert_eq!(m["budget_source"], "team_default");
        assert_eq!(m["litellm_budget_table"]["max_budget"], 4.0);
    }
    let entry = app
        .state
        .cache
        .member(&app.state.db, "t1", "mem")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.budget.as_ref().unwrap().max_budget,
        Some(4_000_000_000)
    );
    // A metadata-only update keeps the pointer (reference §10 #14).
    let (_, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "metadata": {}}),
        )
        .await;
    assert_eq!(u["data"]["metadata"], json!({"team_member_budget_id": id}));
    let (_, u) = app
        .post(
            "/team/update",
            MASTER,
            json!({"team_id": "t1", "metadata": null}),
        )
        .await;
    assert_eq!(u["data"]["metadata"], json!({"team_member_budget_id": id}));
    app.shutdown().await;
}

async fn team_admin_allow_list(b: Backend) {
    let yaml = format!(
        "{DEFAULT_CONFIG}\n  team_admin_editable_team_fields: [tpm_limit, max_budget, metadata]\n"
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    new_team(&app, json!({"team_id": "t1", "max_budget": 10})).await;
    let tadmin = user_key(&app, Some("tadm"), "internal_user", None).await;
    add_member(&app, "t1", "tadm", "admin").await;
    let (s, u) = app
        .post(
            "/team/update",
            &tadmin,
            json!({"team_id": "t1", "tpm_limit": 7, "max_budget": 5}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["data"]["tpm_limit"], 7);
    assert_eq!(u["data"]["max_budget"], 5.0);
    let (s, e) = app
        .post(
            "/team/update",
            &tadmin,
            json!({"team_id": "t1", "models": ["x"]}),
        )
        .await;
    assert_eq!(s, 403);
    assert!(assert_proxy_error(&e, 403, "auth_error").contains("'models'"));
    let (s, e) = app
        .post(
            "/team/update",
            &tadmin,
            json!({"team_id": "t1", "max_budget": 50}),
        )
        .await;
    assert_eq!(s, 403, "raising needs raise_max_budget: {e}");
    let (s, _) = app
        .post(
            "/team/update",
            &tadmin,
            json!({"team_id": "t1", "max_budget": null}),
        )
        .await;
    assert_eq!(s, 403);
    let (_, i) = app.get("/team/info?team_id=t1", &tadmin).await;
    assert_eq!(i["team_info"]["max_budget"], 5.0);
    assert_eq!(i["team_info"]["caller_edit_access"]["kind"], "team_admin");
    assert_eq!(
        i["team_info"]["caller_edit_access"]["may_raise_max_budget"],
        false
    );
    app.shutdown().await;
}

async fn team_patch_merge(b: Backend) {
    let app = TestApp::spawn(b).await;
    new_team(
        &app,
        json!({"team_id": "t1", "metadata": {"a": 1, "b": {"c": 2, "d": 3}}, "tpm_limit": 4}),
    )
    .await;
    let (s, t) = app
        .patch(
            "/team/t1",
            MASTER,
            json!({"metadata": {"a": null, "b": {"c": 5}, "e": "x"}}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["team_id"], "t1", "the response is the team itself");
    assert_eq!(t["metadata"], json!({"b": {"c": 5, "d": 3}, "e": "x"}));
    assert_eq!(t["tpm_limit"], 4);
    let (s, e) = app
        .patch("/team/t1", MASTER, json!({"team_id": "t2", "tpm_limit": 1}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        wrapped_msg(&e, 400),
        "{'error': 'team_id in body (t2) does not match team_id in path (t1)'}"
    );
    let (s, _) = app
        .patch("/team/missing", MASTER, json!({"metadata": {"a": 1}}))
        .await;
    assert_eq!(s, 404);
    let iu = user_key(&app, Some("iu"), "internal_user", None).await;
    let (s, _) = app.patch("/team/t1", &iu, json!({"tpm_limit": 1})).await;
    assert_eq!(s, 401);
    let (_, i) = info(&app, "t1").await;
    assert_eq!(i["team_info"]["tpm_limit"], 4);
    app.shutdown().await;
}

async fn team_info_access(b: Backend) {
    let app = TestApp::spawn(b).await;
    new_team(&app, json!({"team_id": "t1", "team_alias": "one"})).await;
    new_team(&app, json!({"team_id": "t2"})).await;
    let team_key = user_key(&app, None, "internal_user", Some("t1")).await;
    let other_key = user_key(&app, None, "internal_user", Some("t2")).await;
    let member = user_key(&app, Some("mem"), "internal_user", None).await;
    let outsider = user_key(&app, Some("out"), "internal_user", None).await;
    let viewer = user_key(&app, Some("view"), "proxy_admin_viewer", None).await;
    let iu_viewer = user_key(&app, Some("iuv"), "internal_user_viewer", None).await;
    let member_team_key = user_key(&app, Some("mem"), "internal_user", Some("t1")).await;
    add_member(&app, "t1", "mem", "user").await;

    let (s, i) = info(&app, "t1").await;
    assert_eq!(s, 200, "{i}");
    assert_eq!(i["team_id"], "t1");
    assert_eq!(i["keys"].as_array().unwrap().len(), 2);
    for k in i["keys"].as_array().unwrap() {
        assert!(k.get("token").is_none(), "no key hash in /team/info: {k}");
        assert_eq!(k["team_id"], "t1");
    }
    let mem = i["team_info"]["members_with_roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "mem")
        .unwrap()
        .clone();
    assert_eq!(
        mem,
        json!({"user_id": "mem", "user_email": "mem@example.com", "role": "user", "user_alias": "alias-mem"})
    );
    assert_eq!(
        i["team_info"]["caller_edit_access"],
        json!({"kind": "unrestricted"})
    );
    assert_eq!(i["team_memberships"].as_array().unwrap().len(), 2);
    assert_eq!(i["team_memberships"][0]["budget_source"], "none");

    for k in [&team_key, &member, &viewer, &member_team_key] {
        let (s, i) = app.get("/team/info?team_id=t1", k).await;
        assert_eq!(s, 200, "{i}");
        assert_eq!(i["team_info"]["team_id"], "t1");
    }
    let (_, i) = app.get("/team/info?team_id=t1", &member).await;
    assert_eq!(i["team_info"]["caller_edit_access"]["kind"], "none");
    let (s, e) = app.get("/team/info?team_id=t1", &outsider).await;
    assert_eq!(s, 403);
    assert_eq!(
        assert_proxy_error(&e, 403, "auth_error"),
        "{'error': 'User=out not authorized to access this team=t1'}"
    );
    let (s, e) = app.get("/team/info?team_id=t1", &other_key).await;
    assert_eq!(s, 403);
    assert!(
        assert_proxy_error(&e, 403, "auth_error").contains("Team key for team=t2 not authorized")
    );
    let (s, _) = app.get("/team/info?team_id=t1", &iu_viewer).await;
    assert_eq!(s, 403);
    // Unknown team: 404 for admins (recorded shape), no probing for others.
    let (s, e) = info(&app, "does-not-exist").await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        json!({"error": {"message": "{'message': 'Team not found, passed team id: does-not-exist.'}",
        "type": "auth_error", "param": "None", "code": "404"}})
    );
    let (s, _) = app
        .get("/team/info?team_id=does-not-exist", &outsider)
        .await;
    assert_eq!(s, 403);
    let (s, _) = app.get("/team/info", MASTER).await;
    assert_eq!(s, 422);
    app.shutdown().await;
}

async fn team_lists(b: Backend) {
    let app = TestApp::spawn(b).await;
    for (id, alias) in [
        ("t1", "charlie"),
        ("t2", "Alpha"),
        ("t3", "bravo"),
        ("t4", "delta"),
        ("t5", "alpha two"),
    ] {
        new_team(&app, json!({"team_id": id, "team_alias": alias, "max_budget": id[1..].parse::<f64>().unwrap()})).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let member = user_key(&app, Some("mem"), "internal_user", Some("t3")).await;
    add_member(&app, "t3", "mem", "user").await;
    add_member(&app, "t5", "mem", "admin").await;

    // Legacy: sorted by alias (byte order), each with memberships and keys.
    let (s, l) = app.get("/team/list", MASTER).await;
    assert_eq!(s, 200);
    let aliases: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team_alias"].as_str().unwrap())
        .collect();
    assert_eq!(aliases, ["Alpha", "alpha two", "bravo", "charlie", "delta"]);
    let t3 = l
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["team_id"] == "t3")
        .unwrap();
    assert_eq!(t3["team_memberships"].as_array().unwrap().len(), 2);
    assert_eq!(t3["keys"].as_array().unwrap().len(), 1);
    assert!(
        t3["keys"][0]["token"].is_string(),
        "admins see key ids in listings"
    );
    let (s, l) = app.get("/team/list?user_id=mem", &member).await;
    assert_eq!(s, 200, "{l}");
    let ids: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t5", "t3"]);
    assert_eq!(
        l[1]["team_memberships"].as_array().unwrap().len(),
        1,
        "only the asked user's membership"
    );
    assert!(l[1]["keys"][0].get("token").is_none());
    for path in [
        "/team/list",
        "/team/list?user_id=default_user_id",
        "/v2/team/list?user_id=other",
    ] {
        let (s, e) = app.get(path, &member).await;
        assert_eq!(s, 401, "{path}");
        assert_eq!(
            e,
            json!({"detail": {"error": "Only admin users can query all teams/other teams. Your user role=internal_user"}})
        );
    }

    // v2: default created_at desc, pagination.
    let (s, p) = app.get("/v2/team/list?page=1&page_size=2", MASTER).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["total"], 5);
    assert_eq!(p["total_pages"], 3);
    assert_eq!(p["page"], 1);
    assert_eq!(p["page_size"], 2);
    let ids = |p: &Value| -> Vec<String> {
        p["teams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["team_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&p), ["t5", "t4"]);
    let (_, p3) = app.get("/v2/team/list?page=3&page_size=2", MASTER).await;
    assert_eq!(ids(&p3), ["t1"]);
    let (_, p) = app
        .get("/v2/team/list?sort_by=max_budget&sort_order=desc", MASTER)
        .await;
    assert_eq!(ids(&p), ["t5", "t4", "t3", "t2", "t1"]);
    let (_, p) = app.get("/v2/team/list?sort_by=team_alias", MASTER).await;
    assert_eq!(ids(&p), ["t2", "t5", "t3", "t1", "t4"]);
    let (_, p) = app.get("/v2/team/list?team_alias=ALPHA", MASTER).await;
    assert_eq!(ids(&p), ["t5", "t2"]);
    let (_, p) = app.get("/v2/team/list?team_alias=%25", MASTER).await;
    assert_eq!(p["total"], 0, "LIKE wildcards are literal");
    let (_, p) = app.get("/v2/team/list?search=t3", MASTER).await;
    assert_eq!(ids(&p), ["t3"]);
    let t3 = &p["teams"][0];
    assert_eq!(t3["members_count"], 2);
    assert_eq!(t3["keys_count"], 1);
    // Non-admins see only their own teams.
    let (s, p) = app.get("/v2/team/list", &member).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&p), ["t5", "t3"]);
    for q in ["sort_by=nope", "sort_order=sideways", "status=active"] {
        let (s, e) = app.get(&format!("/v2/team/list?{q}"), MASTER).await;
        assert_eq!(s, 400, "{q}: {e}");
        assert_detail(&e);
    }
    for q in ["page=0", "page_size=101", "page_size=0", "page=abc"] {
        let (s, _) = app.get(&format!("/v2/team/list?{q}"), MASTER).await;
        assert_eq!(s, 422, "{q}");
    }

    // filter/ui: admin + viewer (GET), newest first.
    let viewer = user_key(&app, Some("view"), "proxy_admin_viewer", None).await;
    let (s, l) = app.get("/team/list", &viewer).await;
    assert_eq!(s, 200);
    assert_eq!(l.as_array().unwrap().len(), 5);
    let (s, p) = app.get("/v2/team/list?user_id=mem", &viewer).await;
    assert_eq!(s, 200);
    assert_eq!(p["total"], 2);
    let (s, l) = app.get("/team/filter/ui?team_alias=ALP", &viewer).await;
    assert_eq!(s, 200);
    let got: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["t5", "t2"]);
    let (s, _) = app.get("/team/filter/ui", &member).await;
    assert_eq!(s, 401);
    let (s, _) = app.get("/team/filter/ui?page_size=500", MASTER).await;
    assert_eq!(s, 422);
    app.shutdown().await;
}

async fn team_block_delete(b: Backend) {
    let app = TestApp::spawn(b).await;
    new_team(
        &app,
        json!({"team_id": "t1", "team_member_budget": 1, "model_aliases": {"a": "fake-gpt"}}),
    )
    .await;
    new_team(&app, json!({"team_id": "t2"})).await;
    let key = user_key(&app, Some("mem"), "internal_user", Some("t1")).await;
    add_member(&app, "t1", "mem", "user").await;
    // Warm the cache, then block: the next read sees it.
    let entry = app
        .state
        .cache
        .team(&app.state.db, "t1")
        .await
        .unwrap()
        .unwrap();
    assert!(!entry.team.blocked);
    let (s, t) = app
        .post("/team/block", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["blocked"], true);
    assert!(
        app.state
            .cache
            .team(&app.state.db, "t1")
            .await
            .unwrap()
            .unwrap()
            .team
            .blocked
    );
    let (_, i) = info(&app, "t1").await;
    assert_eq!(i["team_info"]["blocked"], true);
    let (s, e) = app
        .post("/team/block", MASTER, json!({"team_id": "nope"}))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        json!({"detail": {"error": "Team not found, passed team_id=nope"}})
    );
    let viewer = user_key(&app, Some("view"), "proxy_admin_viewer", None).await;
    let (s, _) = app
        .post("/team/unblock", &viewer, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .post("/team/unblock", &key, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 401);
    let (s, t) = app
        .post("/team/unblock", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["blocked"], false);
    assert!(
        !app.state
            .cache
            .team(&app.state.db, "t1")
            .await
            .unwrap()
            .unwrap()
            .team
            .blocked
    );

    // Delete: one unknown id → 404 and nothing deleted.
    let (s, e) = app
        .post("/team/delete", MASTER, json!({"team_ids": ["t1", "ghost"]}))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        json!({"detail": {"error": "Team not found, passed team_id=ghost"}})
    );
    let (s, _) = info(&app, "t1").await;
    assert_eq!(s, 200);
    let (s, _) = app.get("/team/info?team_id=t1", &key).await;
    assert_eq!(s, 200, "the key still works");
    let (s, _) = app
        .post("/team/delete", MASTER, json!({"team_ids": null}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = app.post("/team/delete", MASTER, json!({})).await;
    assert_eq!(s, 422);
    let (s, _) = app
        .post("/team/delete", &viewer, json!({"team_ids": ["t1"]}))
        .await;
    assert_eq!(s, 403);

    let (_, before) = info(&app, "t1").await;
    let budget_id = before["team_info"]["metadata"]["team_member_budget_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, d) = app
        .post(
            "/team/delete",
            MASTER,
            json!({"team_ids": ["t1", "t1", "t2"]}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d, json!({"deleted_teams": ["t1", "t2"]}));
    let (s, _) = info(&app, "t1").await;
    assert_eq!(s, 404);
    let mut h = app.state.db.conn().await.unwrap();
    assert!(
        store::keys::get(&mut h, &hash_key(&key))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store::members::get(&mut h, "t1", "mem")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store::budgets::get(&mut h, &budget_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store::users::get(&mut h, "mem").await.unwrap().is_some(),
        "users stay"
    );
    // One audit row per change, written in the change's transaction.
    let filter = store::audit::AuditFilter {
        object_id: Some("t1".into()),
        table_name: Some("LiteLLM_TeamTable".into()),
        ..Default::default()
    };
    let (rows, _) = store::audit::list(&mut h, &filter, 100, 0).await.unwrap();
    let mut actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions[0], "deleted");
    actions.sort();
    assert_eq!(
        actions,
        ["blocked", "created", "deleted", "unblocked", "updated"]
    );
    let deleted = &rows[0];
    assert_eq!(deleted.changed_by, "default_user_id");
    assert_eq!(deleted.updated_values.as_ref().unwrap().0, json!({}));
    assert_eq!(deleted.before_value.as_ref().unwrap().0["team_id"], "t1");
    drop(h);
    let (s, e) = app.get("/team/list", &key).await;
    assert_eq!(s, 401, "deleted key is refused at once: {e}");
    app.shutdown().await;
}

async fn team_models_permissions_available(b: Backend) {
    let yaml = DEFAULT_CONFIG.replace(
        "general_settings:",
        "litellm_settings:\n  default_internal_user_params:\n    available_teams: [t1, t2, ghost]\ngeneral_settings:",
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    new_team(&app, json!({"team_id": "t1"})).await;
    new_team(&app, json!({"team_id": "t2", "models": ["a"]})).await;
    let (s, t) = app
        .post(
            "/team/model/add",
            MASTER,
            json!({"team_id": "t1", "models": ["fake-gpt"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["models"], json!(["all-proxy-models", "fake-gpt"]));
    let (_, t) = app
        .post(
            "/team/model/add",
            MASTER,
            json!({"team_id": "t2", "models": ["a", "b"]}),
        )
        .await;
    assert_eq!(t["models"], json!(["a", "b"]));
    let (_, t) = app
        .post(
            "/team/model/delete",
            MASTER,
            json!({"team_id": "t2", "models": ["a"]}),
        )
        .await;
    assert_eq!(t["models"], json!(["b"]));
    let (s, e) = app
        .post(
            "/team/model/add",
            MASTER,
            json!({"team_id": "nope", "models": ["a"]}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        json!({"detail": {"error": "Team not found, passed team_id=nope"}})
    );
    let (s, _) = app
        .post("/team/model/add", MASTER, json!({"team_id": "t1"}))
        .await;
    assert_eq!(s, 422);
    let tadmin = user_key(&app, Some("tadm"), "internal_user", None).await;
    let member = user_key(&app, Some("mem"), "internal_user", None).await;
    let viewer = user_key(&app, Some("view"), "proxy_admin_viewer", None).await;
    add_member(&app, "t1", "tadm", "admin").await;
    add_member(&app, "t1", "mem", "user").await;
    let (s, _) = app
        .post(
            "/team/model/delete",
            &tadmin,
            json!({"team_id": "t1", "models": ["fake-gpt"]}),
        )
        .await;
    assert_eq!(s, 401, "route gate: proxy admins only");

    // Permissions.
    let (s, p) = app.get("/team/permissions_list?team_id=t1", &tadmin).await;
    assert_eq!(s, 200);
    assert_eq!(p["team_member_permissions"], json!([]));
    assert!(
        p["all_available_permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("/key/generate"))
    );
    let (s, _) = app.get("/team/permissions_list?team_id=t1", &viewer).await;
    assert_eq!(s, 200);
    let (s, e) = app.get("/team/permissions_list?team_id=t1", &member).await;
    assert_eq!(s, 403);
    assert_eq!(e, json!({"detail": "You do not have access to this team"}));
    let (s, t) = app
        .post(
            "/team/permissions_update",
            &tadmin,
            json!({"team_id": "t1", "team_member_permissions": ["/key/generate"]}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["team_member_permissions"], json!(["/key/generate"]));
    for k in [&member, &viewer] {
        let (s, _) = app
            .post(
                "/team/permissions_update",
                k,
                json!({"team_id": "t1", "team_member_permissions": []}),
            )
            .await;
        assert_eq!(s, 403);
    }
    let (s, e) = app
        .post(
            "/team/permissions_update",
            MASTER,
            json!({"team_id": "t1", "team_member_permissions": ["/key/generate", "/team/delete"]}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        assert_detail(&e)["error"]
            .as_str()
            .unwrap()
            .contains("/team/delete")
    );
    let (_, p) = app.get("/team/permissions_list?team_id=t1", MASTER).await;
    assert_eq!(p["team_member_permissions"], json!(["/key/generate"]));
    // The same rule on a route behind the team wrapper reads as its ProxyException: the route
    // table, not the rule, decides the wire shape.
    let (s, e) = app
        .post(
            "/team/new",
            MASTER,
            json!({"team_id": "t9", "team_member_permissions": ["/team/delete"]}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["type"], "internal_server_error", "{e}");
    assert_eq!(e["error"]["code"], "400");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("{'error': 'Invalid team member permission: /team/delete."),
        "{e}"
    );

    // Available: configured teams the caller is not in (unknown ids skipped).
    let (s, l) = app.get("/team/available", &member).await;
    assert_eq!(s, 200, "{l}");
    let ids: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t2"]);
    let no_user = user_key(&app, None, "internal_user", None).await;
    let (s, _) = app.get("/team/available", &no_user).await;
    assert_eq!(s, 404);
    app.shutdown().await;
}

both_backends!(
    team_new_happy_and_validation,
    team_new_roles,
    team_update_semantics,
    team_admin_allow_list,
    team_member_budget_created_on_update,
    team_patch_merge,
    team_info_access,
    team_lists,
    team_block_delete,
    team_models_permissions_available,
);

async fn team_concurrent_writes(b: Backend) {
    let app = TestApp::spawn(b).await;
    // Racing creates of one id: exactly one wins, the rest get the duplicate 400 (never a 500).
    let bodies = (0..6).map(|i| {
        app.post(
            "/team/new",
            MASTER,
            json!({"team_id": "race", "team_alias": format!("a{i}"), "model_aliases": {"m": "fake-gpt"}}),
        )
    });
    let results = futures_util::future::join_all(bodies).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{results:?}");
    for (s, e) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*s, 400, "{e}");
        assert!(e.to_string().contains("already exists"));
    }
    // Racing updates and a block all land; the final row is one of the written values.
    let updates = (1..=8).map(|i| {
        app.post(
            "/team/update",
            MASTER,
            json!({"team_id": "race", "tpm_limit": i, "metadata": {"i": i}}),
        )
    });
    let (results, (bs, _)) = tokio::join!(
        futures_util::future::join_all(updates),
        app.post("/team/block", MASTER, json!({"team_id": "race"}))
    );
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(bs, 200);
    let (_, i) = info(&app, "race").await;
    let tpm = i["team_info"]["tpm_limit"].as_i64().unwrap();
    assert_eq!(
        i["team_info"]["metadata"]["i"], tpm,
        "one update's values, not a mix"
    );
    assert_eq!(i["team_info"]["blocked"], true, "no lost update");
    app.shutdown().await;
}

/// The listing statements' shapes (see `store::teams`) are served by indexes, not table scans:
/// checked with SQLite's planner, which picks indexes independent of table size.
async fn team_queries_use_indexes(b: Backend) {
    if b != Backend::Sqlite {
        return;
    }
    let app = TestApp::spawn(b).await;
    let purser::store::Db::Sqlite(pool) = &app.state.db else {
        unreachable!()
    };
    let cases: [(&'static str, &str); 5] = [
        (
            "EXPLAIN QUERY PLAN SELECT team_id FROM teams ORDER BY created_at DESC, team_id DESC LIMIT 10 OFFSET 0",
            "teams_created_idx",
        ),
        (
            "EXPLAIN QUERY PLAN SELECT token FROM verification_tokens WHERE team_id IN ('a', 'b') ORDER BY team_id, created_at, token",
            "verification_tokens_team_idx",
        ),
        (
            "EXPLAIN QUERY PLAN SELECT team_id, COUNT(*) FROM verification_tokens WHERE team_id IN ('a', 'b') GROUP BY team_id",
            "verification_tokens_team_idx",
        ),
        (
            "EXPLAIN QUERY PLAN SELECT user_id FROM team_memberships WHERE team_id IN ('a', 'b') ORDER BY team_id, added_at, user_id",
            "sqlite_autoindex_team_memberships_1",
        ),
        (
            "EXPLAIN QUERY PLAN SELECT team_id FROM teams WHERE team_id IN (SELECT team_id FROM team_memberships WHERE user_id = 'u')",
            "team_memberships_user_idx",
        ),
    ];
    for (sql, index) in cases {
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sql).fetch_all(pool).await.unwrap();
        let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        assert!(
            plan.iter().any(|p| p.contains(index)),
            "{sql}: expected {index} in {plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|p| p.starts_with("SCAN ") && !p.contains("INDEX")),
            "{sql}: full scan in {plan:?}"
        );
    }
    app.shutdown().await;
}

both_backends!(team_queries_use_indexes, team_concurrent_writes);
