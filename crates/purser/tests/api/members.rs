//! Team roster routes: /team/member_add, /team/member_delete, /team/member_update,
//! /team/bulk_member_add, reset_spend and members/me — happy paths, every error path, the role
//! matrix, hostile input (asserting nothing changed by reading back) and concurrency: parallel
//! adds, adds racing deletes, adds racing team deletion, on SQLite and PostgreSQL.

use std::collections::BTreeSet;

use purser::store::budgets::BudgetRow;
use purser::store::keys::KeyRow;
use purser::store::members::MembershipRow;
use purser::store::teams::TeamRow;
use purser::store::users::UserRow;
use purser::store::{self, Handle, WriteTx};
use purser_core::keys::{generate_key, hash_key};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::both_backends;
use crate::helpers::*;

// ----------------------------------------------------------------------------------------------
// Fixtures: rows written straight to the store (other routes land in parallel branches).
// ----------------------------------------------------------------------------------------------

fn team_row(team_id: &str) -> TeamRow {
    let now = store::now();
    TeamRow {
        team_id: team_id.into(),
        team_alias: Some(format!("{team_id}-alias")),
        organization_id: None,
        metadata: Json(json!({})),
        max_budget: None,
        soft_budget: None,
        spend: 0,
        models: Json(vec![]),
        max_parallel_requests: None,
        tpm_limit: None,
        rpm_limit: None,
        tpd_limit: None,
        budget_duration: None,
        budget_reset_at: None,
        blocked: false,
        model_spend: Json(json!({})),
        model_max_budget: Json(json!({})),
        router_settings: Json(json!({})),
        team_member_permissions: Json(vec![]),
        access_group_ids: Json(vec![]),
        policies: Json(vec![]),
        default_team_member_models: Json(vec![]),
        budget_limits: None,
        model_id: None,
        created_at: now,
        updated_at: now,
        soft_budget_cooldown: false,
    }
}

async fn tx(app: &TestApp) -> WriteTx {
    app.state.db.begin_write().await.unwrap()
}

async fn conn(app: &TestApp) -> Handle {
    app.state.db.conn().await.unwrap()
}

/// A team as /team/new with the master key leaves it: the creator `default_user_id` is admin.
async fn make_team(app: &TestApp, team_id: &str) {
    make_team_with(app, team_row(team_id)).await
}

async fn make_team_with(app: &TestApp, t: TeamRow) {
    let mut h = tx(app).await;
    let now = store::now();
    store::members::insert_user_if_absent(&mut h, &UserRow::new("default_user_id".into(), now))
        .await
        .unwrap();
    let id = t.team_id.clone();
    store::teams::insert(&mut h, &t).await.unwrap();
    store::members::insert(&mut h, &membership(&id, "default_user_id", "admin", None))
        .await
        .unwrap();
    h.commit().await.unwrap();
}

fn membership(team_id: &str, user_id: &str, role: &str, email: Option<&str>) -> MembershipRow {
    MembershipRow {
        team_id: team_id.into(),
        user_id: user_id.into(),
        role: role.into(),
        user_email: email.map(str::to_string),
        spend: 0,
        total_spend: 0,
        budget_id: None,
        added_at: store::now(),
    }
}

/// A user row (role given) and a personal key; returns the raw key.
async fn make_user(app: &TestApp, user_id: &str, role: &str, email: Option<&str>) -> String {
    let mut h = tx(app).await;
    let mut u = UserRow::new(user_id.into(), store::now());
    u.user_role = role.into();
    u.user_email = email.map(str::to_string);
    store::users::insert(&mut h, &u).await.unwrap();
    h.commit().await.unwrap();
    make_key(app, Some(user_id), None).await
}

/// A key for `user_id`, optionally in a team; returns the raw key (only its hash is stored).
async fn make_key(app: &TestApp, user_id: Option<&str>, team_id: Option<&str>) -> String {
    let raw = generate_key();
    let now = store::now();
    let k = KeyRow {
        user_id: user_id.map(str::to_string),
        team_id: team_id.map(str::to_string),
        ..KeyRow::new(hash_key(&raw), now)
    };
    let mut h = conn(app).await;
    store::keys::insert(&mut h, &k).await.unwrap();
    raw
}

/// Puts an existing user on a team's roster directly.
async fn put_member(app: &TestApp, team_id: &str, user_id: &str, role: &str) {
    let mut h = tx(app).await;
    store::members::insert(&mut h, &membership(team_id, user_id, role, None))
        .await
        .unwrap();
    h.commit().await.unwrap();
}

/// The roster as `(user_id, role)` read from the store.
async fn roster(app: &TestApp, team_id: &str) -> Vec<(String, String)> {
    let mut h = conn(app).await;
    store::members::list_by_team(&mut h, team_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect()
}

fn ids(r: &[(String, String)]) -> Vec<&str> {
    r.iter().map(|(u, _)| u.as_str()).collect()
}

async fn teams_of(app: &TestApp, user_id: &str) -> Vec<String> {
    let mut h = conn(app).await;
    store::users::teams_of(&mut h, user_id).await.unwrap()
}

async fn member(app: &TestApp, team_id: &str, user_id: &str) -> Option<MembershipRow> {
    let mut h = conn(app).await;
    store::members::get(&mut h, team_id, user_id).await.unwrap()
}

async fn budget(app: &TestApp, id: &str) -> Option<BudgetRow> {
    let mut h = conn(app).await;
    store::budgets::get(&mut h, id).await.unwrap()
}

async fn user_exists(app: &TestApp, user_id: &str) -> bool {
    let mut h = conn(app).await;
    store::users::get(&mut h, user_id).await.unwrap().is_some()
}

#[track_caller]
fn detail_error(body: &Value) -> String {
    let d = assert_detail(body);
    d["error"]
        .as_str()
        .unwrap_or_else(|| panic!("detail.error in {body}"))
        .to_string()
}

const ADD: &str = "/team/member_add";
const DEL: &str = "/team/member_delete";
const UPD: &str = "/team/member_update";
const BULK: &str = "/team/bulk_member_add";

// ----------------------------------------------------------------------------------------------
// /team/member_add
// ----------------------------------------------------------------------------------------------

async fn member_add_happy_path(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    make_user(&app, "bob", "internal_user", Some("Bob@Example.com")).await;

    // New user by id: the proxy admin auto-creates the user row.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "alice"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["team_id"], "t1");
    assert_eq!(body["team_alias"], "t1-alias");
    assert_eq!(
        body["members_with_roles"],
        json!([
            {"user_id": "default_user_id", "user_email": null, "role": "admin"},
            {"user_id": "alice", "user_email": null, "role": "user"},
        ])
    );
    assert_eq!(body["updated_users"][0]["user_id"], "alice");
    assert_eq!(body["updated_users"][0]["teams"], json!(["t1"]));
    assert_eq!(body["updated_users"][0]["user_role"], "internal_user");
    assert_eq!(
        body["updated_team_memberships"],
        json!([{"user_id": "alice", "team_id": "t1", "budget_id": null, "spend": 0.0,
                "total_spend": 0.0, "litellm_budget_table": null}])
    );
    assert!(user_exists(&app, "alice").await);
    assert_eq!(teams_of(&app, "alice").await, vec!["t1"]);

    // Existing user by email (case-insensitive), as team admin: role "admin" is no premium feature.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "admin", "user_email": "bob@example.com"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["updated_users"][0]["user_id"], "bob");
    assert_eq!(
        roster(&app, "t1").await,
        vec![
            ("default_user_id".into(), "admin".into()),
            ("alice".into(), "user".into()),
            ("bob".into(), "admin".into())
        ]
    );

    // A list with a per-member budget: one private budget row per member.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": [{"role": "user", "user_id": "carol"},
                   {"role": "user", "user_email": "dave@example.com"}],
                   "max_budget_in_team": 2.5, "budget_duration": "1d", "allowed_models": ["fake-gpt"]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let ms = body["updated_team_memberships"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_ne!(ms[0]["budget_id"], ms[1]["budget_id"]);
    for m in ms {
        let bt = &m["litellm_budget_table"];
        assert_eq!(bt["max_budget"], 2.5);
        assert_eq!(bt["budget_duration"], "1d");
        assert_eq!(bt["allowed_models"], json!(["fake-gpt"]));
        assert!(bt["budget_reset_at"].is_string(), "{bt}");
        assert_eq!(m["budget_id"], bt["budget_id"]);
        let stored = budget(&app, m["budget_id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(stored.max_budget, Some(2_500_000_000));
    }
    // The email-only invitee got a generated id and the email.
    let dave = body["updated_users"][1].clone();
    assert_eq!(dave["user_email"], "dave@example.com");
    let dave_id = dave["user_id"].as_str().unwrap().to_string();
    assert_eq!(teams_of(&app, &dave_id).await, vec!["t1"]);

    // Single duplicate → ProxyException with the reference's message (request's own values).
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "bob"}}),
        )
        .await;
    assert_eq!(s, 400);
    let msg = assert_proxy_error(&body, 400, "team_member_already_in_team");
    assert_eq!(body["error"]["param"], "member");
    assert!(
        msg.starts_with(
            "User already in team. Member: user_id=bob, user_email=None. Existing members=[\
             Member(user_id='default_user_id', user_email=None, role='admin'), \
             Member(user_id='alice', user_email=None, role='user'), \
             Member(user_id='bob', user_email='bob@example.com', role='admin')"
        ),
        "{msg}"
    );
    // All duplicates in a list.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": [{"role": "user", "user_id": "bob"},
                   {"role": "user", "user_email": "BOB@example.com"}]}),
        )
        .await;
    assert_eq!(s, 400);
    let msg = assert_proxy_error(&body, 400, "team_member_already_in_team");
    assert!(
        msg.starts_with("All users are already in team. Existing members=["),
        "{msg}"
    );
    // Partial duplicates are skipped.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": [{"role": "user", "user_id": "bob"},
                   {"role": "user", "user_id": "erin"}, {"role": "user", "user_id": "erin"}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["updated_users"].as_array().unwrap().len(), 1);
    assert_eq!(body["updated_users"][0]["user_id"], "erin");
    assert_eq!(roster(&app, "t1").await.len(), 6);

    // Unicode ids round-trip.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "ユーザー-ü-😀"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        ids(&roster(&app, "t1").await).contains(&"ユーザー-ü-😀"),
        "unicode member"
    );
    app.shutdown().await;
}

async fn member_add_team_default_budget(b: Backend) {
    let app = TestApp::spawn(b).await;
    // A team with a default member budget (as /team/new with team_member_budget leaves it).
    let mut d = BudgetRow::new("tdb".into(), "default_user_id", store::now());
    d.max_budget = Some(5_000_000_000);
    d.budget_duration = Some("7d".into());
    d.budget_reset_at = Some(store::now() + chrono::Duration::days(3));
    {
        let mut h = tx(&app).await;
        store::budgets::insert(&mut h, &d).await.unwrap();
        h.commit().await.unwrap();
    }
    let mut t = team_row("td");
    t.metadata = Json(json!({"team_member_budget_id": "tdb"}));
    make_team_with(&app, t).await;

    // Nothing requested → linked to the team default.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "td", "member": {"role": "user", "user_id": "u1"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["updated_team_memberships"][0]["budget_id"], "tdb");
    assert_eq!(
        body["updated_team_memberships"][0]["litellm_budget_table"]["max_budget"],
        5.0
    );
    // Only max_budget_in_team → own row that keeps the team's window (§10 #7).
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "td", "member": {"role": "user", "user_id": "u2"}, "max_budget_in_team": 1.0}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let bt = &body["updated_team_memberships"][0]["litellm_budget_table"];
    assert_ne!(bt["budget_id"], "tdb");
    assert_eq!(bt["max_budget"], 1.0);
    assert_eq!(bt["budget_duration"], "7d");
    // Only budget_duration → the team default cloned with that window.
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "td", "member": {"role": "user", "user_id": "u3"}, "budget_duration": "1h"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let bt = &body["updated_team_memberships"][0]["litellm_budget_table"];
    assert_ne!(bt["budget_id"], "tdb");
    assert_eq!(bt["max_budget"], 5.0);
    assert_eq!(bt["budget_duration"], "1h");
    // The team default itself is untouched.
    let again = budget(&app, "tdb").await.unwrap();
    assert_eq!(again.budget_duration.as_deref(), Some("7d"));
    assert_eq!(again.budget_reset_at, d.budget_reset_at);
    app.shutdown().await;
}

async fn member_add_errors_change_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    make_user(&app, "bob", "internal_user", Some("bob@example.com")).await;
    let before = roster(&app, "t1").await;

    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "nope", "member": {"role": "user", "user_id": "x"}}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(detail_error(&body), "Team not found for team_id=nope");

    let unprocessable = [
        json!({"team_id": "t1", "member": {"user_id": "x"}}),
        json!({"team_id": "t1", "member": {"role": "user"}}),
        json!({"team_id": "t1", "member": {"role": "owner", "user_id": "x"}}),
        json!({"team_id": "t1", "member": "x"}),
        json!({"team_id": "t1", "member": 7}),
        json!({"team_id": "t1", "member": [{"role": "user", "user_id": "x"}, "y"]}),
        json!({"team_id": "t1", "member": {"role": "user", "user_id": 5}}),
        json!({"team_id": "t1", "member": {"role": "user", "user_id": ""}}),
        json!({"team_id": "t1", "member": {"role": "user", "user_email": "   "}}),
        json!({"team_id": "t1", "member": {"role": "user", "user_id": "x"}, "max_budget_in_team": "lots"}),
        json!({"team_id": "t1", "member": {"role": "user", "user_id": "x"}, "allowed_models": "fake-gpt"}),
        json!({"team_id": 1, "member": {"role": "user", "user_id": "x"}}),
        json!({"member": {"role": "user", "user_id": "x"}}),
        json!({"team_id": "t1"}),
        json!([]),
    ];
    for bad in unprocessable {
        let (s, body) = app.post(ADD, MASTER, bad.clone()).await;
        assert_eq!(s, 422, "{bad} → {body}");
        assert!(body["detail"][0]["loc"][0] == "body", "{bad} → {body}");
    }
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user"}}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("Either user id or user email must be provided"),
        "{body}"
    );
    let (s, body) = app.post_raw(ADD, MASTER, "{not json").await;
    assert_eq!(s, 422, "{body}");

    let bad_requests = [
        (
            json!({"team_id": "t1", "member": null}),
            "No member/members passed in",
        ),
        (
            json!({"team_id": "t1", "member": []}),
            "No member/members passed in",
        ),
        (
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "x"}, "budget_duration": "soon"}),
            "Invalid budget_duration 'soon'. Use a format like '1h', '24h', '7d', or '30d'.",
        ),
        (
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "x"}, "max_budget_in_team": -1}),
            "max_budget_in_team must be a non-negative finite number",
        ),
        (
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "x"}, "max_budget_in_team": 1e300}),
            "max_budget_in_team is too large",
        ),
        (
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "bob", "user_email": "other@example.com"}}),
            "user_id=bob and user_email=other@example.com do not belong to the same user",
        ),
        (
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "newid", "user_email": "bob@example.com"}}),
            "user_id=newid and user_email=bob@example.com do not belong to the same user",
        ),
    ];
    for (bad, msg) in bad_requests {
        let (s, body) = app.post(ADD, MASTER, bad.clone()).await;
        assert_eq!(s, 400, "{bad} → {body}");
        assert_eq!(detail_error(&body), msg, "{bad}");
    }
    // Huge lists are refused before any work.
    let huge: Vec<Value> = (0..501)
        .map(|i| json!({"role": "user", "user_id": format!("h{i}")}))
        .collect();
    let (s, body) = app
        .post(ADD, MASTER, json!({"team_id": "t1", "member": huge}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        detail_error(&body),
        "Maximum 500 members can be added at once"
    );

    assert_eq!(roster(&app, "t1").await, before);
    for u in ["x", "newid", "h0", "h500"] {
        assert!(!user_exists(&app, u).await, "{u} must not exist");
    }
    app.shutdown().await;
}

async fn member_add_role_matrix(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    make_team(&app, "t2").await;
    let viewer = make_user(&app, "viewer", "proxy_admin_viewer", None).await;
    let iuv = make_user(&app, "iuv", "internal_user_viewer", None).await;
    let tadmin = make_user(&app, "tadmin", "internal_user", None).await;
    let tmember = make_user(&app, "tmember", "internal_user", None).await;
    let outsider = make_user(&app, "outsider", "internal_user", None).await;
    let other_admin = make_user(&app, "other-admin", "internal_user", None).await;
    let padmin = make_user(&app, "padmin", "proxy_admin", None).await;
    make_user(&app, "target", "internal_user", Some("target@example.com")).await;
    put_member(&app, "t1", "tadmin", "admin").await;
    put_member(&app, "t1", "tmember", "user").await;
    put_member(&app, "t2", "other-admin", "admin").await;
    // A team key of t1 without a user, and a t1 key of the plain member.
    let team_key = make_key(&app, None, Some("t1")).await;
    let member_team_key = make_key(&app, Some("tmember"), Some("t1")).await;

    let add =
        |who: &'static str| json!({"team_id": "t1", "member": {"role": "user", "user_id": who}});
    let denied =
        "Call not allowed. User not proxy admin OR team admin. route=/team/member_add, team_id=t1";
    for key in [
        &viewer,
        &iuv,
        &tmember,
        &outsider,
        &other_admin,
        &team_key,
        &member_team_key,
    ] {
        let (s, body) = app.post(ADD, key, add("target")).await;
        assert_eq!(s, 403, "{body}");
        assert_eq!(detail_error(&body), denied);
    }
    assert!(!ids(&roster(&app, "t1").await).contains(&"target"));

    // Team admin: may add existing users (also as admin, with budgets), not unknown ids.
    let (s, body) = app.post(ADD, &tadmin, add("ghost")).await;
    assert_eq!(s, 403);
    assert!(
        detail_error(&body)
            .starts_with("Only proxy admins can add a user_id that does not exist yet: ghost."),
        "{body}"
    );
    assert!(!user_exists(&app, "ghost").await);
    let (s, body) = app
        .post(
            ADD,
            &tadmin,
            json!({"team_id": "t1", "member": {"role": "admin", "user_id": "target"}, "max_budget_in_team": 3}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["updated_team_memberships"][0]["litellm_budget_table"]["max_budget"],
        3.0
    );
    // Invitation by a new email is allowed to team admins.
    let (s, body) = app
        .post(
            ADD,
            &tadmin,
            json!({"team_id": "t1", "member": {"role": "user", "user_email": "new@example.com"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    // A team admin of t2 cannot touch t1, but can manage t2.
    let (s, _) = app
        .post(
            ADD,
            &other_admin,
            json!({"team_id": "t2", "member": {"role": "user", "user_id": "target"}}),
        )
        .await;
    assert_eq!(s, 200);
    // A proxy_admin user key acts as proxy admin (auto-creates users).
    let (s, body) = app.post(ADD, &padmin, add("fresh")).await;
    assert_eq!(s, 200, "{body}");
    assert!(user_exists(&app, "fresh").await);
    app.shutdown().await;
}

const AVAILABLE_CONFIG: &str = r#"
model_list:
  - model_name: fake-gpt
    litellm_params:
      model: openai/fake-gpt
      mock_response: "hello from the mock"
general_settings:
  master_key: sk-1234
litellm_settings:
  default_internal_user_params:
    available_teams: ["open"]
"#;

async fn member_add_available_team_self_join(b: Backend) {
    let app = TestApp::spawn_with(b, AVAILABLE_CONFIG).await;
    make_team(&app, "open").await;
    make_team(&app, "closed").await;
    let joe = make_user(&app, "joe", "internal_user", Some("joe@example.com")).await;
    make_user(&app, "ann", "internal_user", None).await;

    let cases = [
        (
            json!({"team_id": "open", "member": {"role": "user", "user_id": "ann"}}),
            "Non-admin users can only add themselves (by user_id) to an available team. route=/team/member_add, team_id=open",
        ),
        (
            json!({"team_id": "open", "member": [{"role": "user", "user_id": "joe"}, {"role": "user", "user_id": "ann"}]}),
            "Non-admin users can only add themselves (by user_id) to an available team. route=/team/member_add, team_id=open",
        ),
        (
            json!({"team_id": "open", "member": {"role": "admin", "user_id": "joe"}}),
            "Non-admin users can only join an available team with role 'user'. route=/team/member_add, team_id=open",
        ),
        (
            json!({"team_id": "open", "member": {"role": "user", "user_id": "joe"}, "max_budget_in_team": 100}),
            "Non-admin users cannot set max_budget_in_team, budget_duration or allowed_models when joining an available team. route=/team/member_add, team_id=open",
        ),
        (
            json!({"team_id": "open", "member": {"role": "user", "user_id": "joe"}, "allowed_models": []}),
            "Non-admin users cannot set max_budget_in_team, budget_duration or allowed_models when joining an available team. route=/team/member_add, team_id=open",
        ),
        (
            json!({"team_id": "closed", "member": {"role": "user", "user_id": "joe"}}),
            "Call not allowed. User not proxy admin OR team admin. route=/team/member_add, team_id=closed",
        ),
    ];
    for (req, msg) in cases {
        let (s, body) = app.post(ADD, &joe, req.clone()).await;
        assert_eq!(s, 403, "{req} → {body}");
        assert_eq!(detail_error(&body), msg);
    }
    assert_eq!(ids(&roster(&app, "open").await), vec!["default_user_id"]);

    let (s, body) = app
        .post(
            ADD,
            &joe,
            json!({"team_id": "open", "member": {"role": "user", "user_id": "joe"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(teams_of(&app, "joe").await, vec!["open"]);
    // Joining twice is the duplicate error, not a second row.
    let (s, body) = app
        .post(
            ADD,
            &joe,
            json!({"team_id": "open", "member": {"role": "user", "user_id": "joe"}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_proxy_error(&body, 400, "team_member_already_in_team");
    assert_eq!(
        ids(&roster(&app, "open").await),
        vec!["default_user_id", "joe"]
    );
    app.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// /team/member_delete
// ----------------------------------------------------------------------------------------------

async fn member_delete_flow(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    make_team(&app, "t2").await;
    let tadmin = make_user(&app, "tadmin", "internal_user", None).await;
    let tmember = make_user(&app, "tmember", "internal_user", None).await;
    let viewer = make_user(&app, "viewer", "proxy_admin_viewer", None).await;
    let outsider = make_user(&app, "outsider", "internal_user", None).await;
    put_member(&app, "t1", "tadmin", "admin").await;
    put_member(&app, "t1", "tmember", "user").await;
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "alice", "user_email": "alice@example.com"},
                   "max_budget_in_team": 4}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let private_budget = body["updated_team_memberships"][0]["budget_id"]
        .as_str()
        .unwrap()
        .to_string();
    put_member(&app, "t2", "alice", "user").await;
    let alice_t1_key = make_key(&app, Some("alice"), Some("t1")).await;
    let alice_t2_key = make_key(&app, Some("alice"), Some("t2")).await;
    // Warm the auth cache with both keys.
    for k in [&alice_t1_key, &alice_t2_key] {
        let (s, body) = app.get("/team/t1/members/me", k).await;
        assert_eq!(s, 200, "{body}");
    }

    // Error paths first; none changes anything.
    let before = roster(&app, "t1").await;
    let (s, body) = app.post(DEL, MASTER, json!({"team_id": "t1"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        detail_error(&body),
        "Either user_id or user_email needs to be passed in"
    );
    let (s, body) = app
        .post(
            DEL,
            MASTER,
            json!({"team_id": "t1", "user_id": null, "user_email": null}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = app
        .post(DEL, MASTER, json!({"team_id": "nope", "user_id": "alice"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(detail_error(&body), "Team id=nope does not exist in db");
    let (s, body) = app
        .post(DEL, MASTER, json!({"team_id": "t1", "user_id": "outsider"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(detail_error(&body), "User not found in team");
    for bad in [
        json!({"team_id": "t1", "user_id": 5}),
        json!({"user_id": "alice"}),
        json!({"team_id": "t1", "user_id": ""}),
        json!("alice"),
    ] {
        let (s, body) = app.post(DEL, MASTER, bad.clone()).await;
        assert_eq!(s, 422, "{bad} → {body}");
    }
    let denied = "Call not allowed. User not proxy admin OR team admin. route=/team/member_delete, team_id=t1";
    let iuv = make_user(&app, "iuv", "internal_user_viewer", None).await;
    let t1_team_key = make_key(&app, None, Some("t1")).await;
    for k in [
        &tmember,
        &viewer,
        &iuv,
        &outsider,
        &alice_t2_key,
        &alice_t1_key,
        &t1_team_key,
    ] {
        let (s, body) = app
            .post(DEL, k, json!({"team_id": "t1", "user_id": "alice"}))
            .await;
        assert_eq!(s, 403, "{body}");
        assert_eq!(detail_error(&body), denied);
    }
    assert_eq!(roster(&app, "t1").await, before);

    // A team admin removes alice by email.
    let (s, body) = app
        .post(
            DEL,
            &tadmin,
            json!({"team_id": "t1", "user_email": "ALICE@example.com"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["team_id"], "t1");
    let wire: Vec<&str> = body["members_with_roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(wire, vec!["default_user_id", "tadmin", "tmember"]);
    assert!(body.get("updated_users").is_none());
    assert!(member(&app, "t1", "alice").await.is_none());
    assert_eq!(teams_of(&app, "alice").await, vec!["t2"]);
    assert!(
        budget(&app, &private_budget).await.is_none(),
        "private budget dropped"
    );
    // Her t1 key stops working at once; her t2 key still works.
    let (s, body) = app.get("/team/t2/members/me", &alice_t1_key).await;
    assert_eq!(s, 401, "{body}");
    let (s, body) = app.get("/team/t2/members/me", &alice_t2_key).await;
    assert_eq!(s, 200, "{body}");
    {
        let mut h = conn(&app).await;
        assert!(
            store::keys::get(&mut h, &hash_key(&alice_t1_key))
                .await
                .unwrap()
                .is_none()
        );
    }

    // Re-adding a removed member, also with a budget, works (§10 #11/#12).
    let (s, body) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "alice"}, "max_budget_in_team": 1.5}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["updated_team_memberships"][0]["litellm_budget_table"]["max_budget"],
        1.5
    );
    assert_eq!(teams_of(&app, "alice").await, vec!["t2", "t1"]);
    // Master removes by id; delete again → not found.
    let (s, _) = app
        .post(DEL, MASTER, json!({"team_id": "t1", "user_id": "alice"}))
        .await;
    assert_eq!(s, 200);
    let (s, body) = app
        .post(DEL, MASTER, json!({"team_id": "t1", "user_id": "alice"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(detail_error(&body), "User not found in team");
    app.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// /team/member_update
// ----------------------------------------------------------------------------------------------

async fn member_update_flow(b: Backend) {
    let app = TestApp::spawn(b).await;
    let mut d = BudgetRow::new("tdb".into(), "default_user_id", store::now());
    d.max_budget = Some(5_000_000_000);
    d.budget_duration = Some("7d".into());
    let reset = store::now() + chrono::Duration::days(2);
    d.budget_reset_at = Some(reset);
    {
        let mut h = tx(&app).await;
        store::budgets::insert(&mut h, &d).await.unwrap();
        h.commit().await.unwrap();
    }
    let mut t = team_row("t1");
    t.metadata = Json(json!({"team_member_budget_id": "tdb"}));
    make_team_with(&app, t).await;
    let tmember = make_user(&app, "tmember", "internal_user", None).await;
    let tadmin = make_user(&app, "tadmin", "internal_user", None).await;
    let viewer = make_user(&app, "viewer", "proxy_admin_viewer", None).await;
    put_member(&app, "t1", "tmember", "user").await;
    put_member(&app, "t1", "tadmin", "admin").await;
    let (s, _) = app
        .post(ADD, MASTER, json!({"team_id": "t1", "member": {"role": "user", "user_id": "alice", "user_email": "alice@example.com"}}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        member(&app, "t1", "alice")
            .await
            .unwrap()
            .budget_id
            .as_deref(),
        Some("tdb")
    );

    // Role admin is allowed (no premium gate); echo response.
    let (s, body) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_email": "alice@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"user_id": "alice", "user_email": "alice@example.com", "team_id": "t1",
               "max_budget_in_team": null, "tpm_limit": null, "rpm_limit": null, "budget_duration": null,
               "allowed_models": null, "temp_budget_increase": null, "temp_budget_expiry": null,
               "model_max_budget": null})
    );
    assert_eq!(member(&app, "t1", "alice").await.unwrap().role, "admin");
    assert_eq!(
        member(&app, "t1", "alice")
            .await
            .unwrap()
            .budget_id
            .as_deref(),
        Some("tdb")
    );

    // A patch of the shared team default clones it; the window carries over, the default stays.
    let (s, body) = app
        .post(
            UPD,
            &tadmin,
            json!({"team_id": "t1", "user_id": "alice", "max_budget_in_team": 2, "tpm_limit": 10}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["max_budget_in_team"], 2.0);
    assert_eq!(body["tpm_limit"], 10);
    let m = member(&app, "t1", "alice").await.unwrap();
    let own = m.budget_id.clone().unwrap();
    assert_ne!(own, "tdb");
    let row = budget(&app, &own).await.unwrap();
    assert_eq!(row.max_budget, Some(2_000_000_000));
    assert_eq!(row.tpm_limit, Some(10));
    assert_eq!(row.budget_duration.as_deref(), Some("7d"));
    assert_eq!(row.budget_reset_at, Some(reset));
    let def = budget(&app, "tdb").await.unwrap();
    assert_eq!(def.max_budget, Some(5_000_000_000));
    assert_eq!(def.tpm_limit, None);

    // Private row: updated in place; absent fields untouched, null clears; unchanged duration
    // keeps the reset instant, a changed one recomputes it.
    let (s, _) = app
        .post(UPD, MASTER, json!({"team_id": "t1", "user_id": "alice", "tpm_limit": null, "budget_duration": "7d", "allowed_models": ["fake-gpt"]}))
        .await;
    assert_eq!(s, 200);
    let row = budget(&app, &own).await.unwrap();
    assert_eq!(
        member(&app, "t1", "alice")
            .await
            .unwrap()
            .budget_id
            .as_deref(),
        Some(own.as_str())
    );
    assert_eq!(row.tpm_limit, None);
    assert_eq!(row.max_budget, Some(2_000_000_000));
    assert_eq!(row.allowed_models.0, vec!["fake-gpt".to_string()]);
    assert_eq!(
        row.budget_reset_at,
        Some(reset),
        "unchanged duration keeps the window"
    );
    let (s, _) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_id": "alice", "budget_duration": "1h"}),
        )
        .await;
    assert_eq!(s, 200);
    let row = budget(&app, &own).await.unwrap();
    assert_eq!(row.budget_duration.as_deref(), Some("1h"));
    let r = row.budget_reset_at.unwrap();
    assert!(
        r > store::now() && r <= store::now() + chrono::Duration::hours(1),
        "{r}"
    );
    // Clearing every limit drops the private row and falls back to the team default.
    let (s, body) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_id": "alice", "max_budget_in_team": null,
                                  "budget_duration": null, "allowed_models": null}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        member(&app, "t1", "alice")
            .await
            .unwrap()
            .budget_id
            .as_deref(),
        Some("tdb")
    );
    assert!(budget(&app, &own).await.is_none());

    // Absent fields (and `role: null`) change nothing.
    let snapshot = member(&app, "t1", "alice").await.unwrap();
    let (s, body) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_id": "alice", "role": null}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let same = member(&app, "t1", "alice").await.unwrap();
    assert_eq!(
        (&same.role, &same.budget_id),
        (&snapshot.role, &snapshot.budget_id)
    );
    assert_eq!(
        budget(&app, "tdb").await.unwrap().max_budget,
        Some(5_000_000_000)
    );

    // Errors change nothing.
    let (s, body) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_id": "nobody", "role": "user"}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        detail_error(&body),
        "User nobody is not a member of team t1"
    );
    let (s, body) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_email": "zz@example.com"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        detail_error(&body).starts_with("User id doesn't exist in team table. Data="),
        "{body}"
    );
    let (s, body) = app
        .post(UPD, MASTER, json!({"team_id": "t1", "role": "user"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        detail_error(&body),
        "Either user_id or user_email needs to be passed in"
    );
    let (s, body) = app
        .post(UPD, MASTER, json!({"team_id": "nope", "user_id": "alice"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(detail_error(&body), "Team id=nope does not exist in db");
    for (bad, msg) in [
        (
            json!({"team_id": "t1", "user_id": "alice", "max_budget_in_team": -5}),
            "max_budget_in_team must be a non-negative finite number",
        ),
        (
            json!({"team_id": "t1", "user_id": "alice", "tpm_limit": -1}),
            "tpm_limit must be >= 0, got -1",
        ),
        (
            json!({"team_id": "t1", "user_id": "alice", "budget_duration": "0d"}),
            "Invalid budget_duration '0d'. Use a format like '1h', '24h', '7d', or '30d'.",
        ),
    ] {
        let (s, body) = app.post(UPD, MASTER, bad.clone()).await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(detail_error(&body), msg);
    }
    for bad in [
        json!({"team_id": "t1", "user_id": "alice", "role": "owner"}),
        json!({"team_id": "t1", "user_id": "alice", "tpm_limit": "many"}),
        json!({"team_id": "t1", "user_id": "alice", "tpm_limit": 1.5}),
        json!({"team_id": "t1", "user_id": "alice", "allowed_models": "fake-gpt"}),
        json!({"user_id": "alice"}),
    ] {
        let (s, body) = app.post(UPD, MASTER, bad.clone()).await;
        assert_eq!(s, 422, "{bad} → {body}");
    }
    let denied = "Call not allowed. User not proxy admin OR team admin. route=/team/member_delete, team_id=t1";
    for k in [&tmember, &viewer] {
        let (s, body) = app
            .post(
                UPD,
                k,
                json!({"team_id": "t1", "user_id": "tmember", "role": "admin"}),
            )
            .await;
        assert_eq!(s, 403);
        assert_eq!(detail_error(&body), denied);
    }
    let after = member(&app, "t1", "alice").await.unwrap();
    assert_eq!(
        (after.role, after.budget_id),
        (snapshot.role, snapshot.budget_id)
    );
    assert_eq!(member(&app, "t1", "tmember").await.unwrap().role, "user");
    app.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// /team/bulk_member_add
// ----------------------------------------------------------------------------------------------

async fn bulk_member_add_flow(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    let iu = make_user(&app, "iu", "internal_user", None).await;
    let viewer = make_user(&app, "viewer", "proxy_admin_viewer", None).await;
    put_member(&app, "t1", "iu", "admin").await;

    let (s, body) = app
        .post(
            BULK,
            &iu,
            json!({"team_id": "t1", "members": [{"role": "user", "user_id": "x"}]}),
        )
        .await;
    assert_eq!(s, 401, "{body}");
    assert_proxy_error(&body, 401, "auth_error");
    let (s, body) = app
        .post(
            BULK,
            &viewer,
            json!({"team_id": "t1", "members": [{"role": "user", "user_id": "x"}]}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app.post(BULK, MASTER, json!({"team_id": "t1"})).await;
    assert_eq!(s, 400);
    assert_eq!(detail_error(&body), "No member/members passed in");
    let many: Vec<Value> = (0..501)
        .map(|i| json!({"role": "user", "user_id": format!("b{i}")}))
        .collect();
    let (s, body) = app
        .post(BULK, MASTER, json!({"team_id": "t1", "members": many}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        detail_error(&body),
        "Maximum 500 members can be added at once"
    );
    let (s, _) = app
        .post(BULK, MASTER, json!({"team_id": "t1", "members": "x"}))
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        ids(&roster(&app, "t1").await),
        vec!["default_user_id", "iu"]
    );

    let (s, body) = app
        .post(BULK, MASTER, json!({"team_id": "t1", "members": [
            {"role": "user", "user_id": "b1"}, {"role": "user", "user_id": "iu"}, {"role": "admin", "user_email": "b2@example.com"}
        ], "max_budget_in_team": 1}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["team_id"], "t1");
    assert_eq!(body["total_requested"], 3);
    assert_eq!(body["successful_additions"], 2);
    assert_eq!(body["failed_additions"], 1);
    let r = body["results"].as_array().unwrap();
    assert_eq!(r[0]["success"], true);
    assert_eq!(r[0]["updated_user"]["user_id"], "b1");
    assert_eq!(
        r[0]["updated_team_membership"]["litellm_budget_table"]["max_budget"],
        1.0
    );
    assert_eq!(r[1]["success"], false);
    assert_eq!(r[1]["error"], "User already in team");
    assert_eq!(r[2]["success"], true);
    assert_eq!(r[2]["updated_user"]["user_email"], "b2@example.com");
    assert_eq!(
        body["updated_team"]["members_with_roles"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // all_users adds every user row as role user.
    let (s, body) = app
        .post(BULK, MASTER, json!({"team_id": "t1", "all_users": true}))
        .await;
    assert_eq!(s, 200, "{body}");
    let r = roster(&app, "t1").await;
    assert!(ids(&r).contains(&"viewer"));
    assert_eq!(r.iter().find(|(u, _)| u == "viewer").unwrap().1, "user");
    assert_eq!(body["successful_additions"], 1, "{body}");
    // A failure of the add itself answers 200 with every result failed.
    let (s, body) = app
        .post(
            BULK,
            MASTER,
            json!({"team_id": "nope", "members": [{"role": "user", "user_id": "z"}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["successful_additions"], 0);
    assert_eq!(
        body["results"][0]["error"],
        "Team not found for team_id=nope"
    );
    assert!(body["updated_team"].is_null());
    app.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// reset_spend and members/me
// ----------------------------------------------------------------------------------------------

async fn set_spend(app: &TestApp, team_id: &str, user_id: &str, spend: i64) {
    let mut h = tx(app).await;
    let mut m = store::members::get(&mut h, team_id, user_id)
        .await
        .unwrap()
        .unwrap();
    m.spend = spend;
    store::members::update(&mut h, &m).await.unwrap();
    h.commit().await.unwrap();
}

async fn reset_spend_and_me(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    let tadmin = make_user(&app, "tadmin", "internal_user", None).await;
    let tmember = make_user(&app, "tmember", "internal_user", None).await;
    let outsider = make_user(&app, "outsider", "internal_user", None).await;
    put_member(&app, "t1", "tadmin", "admin").await;
    let (s, _) = app
        .post(ADD, MASTER, json!({"team_id": "t1", "member": {"role": "user", "user_id": "tmember"}, "max_budget_in_team": 10}))
        .await;
    assert_eq!(s, 200);
    set_spend(&app, "t1", "tmember", 4_000_000_000).await;
    set_spend(&app, "t1", "tadmin", 1_000_000_000).await;
    let url = "/team/t1/member/tmember/reset_spend";

    let (s, body) = app.post(url, &tmember, json!({"reset_to": 0})).await;
    assert_eq!(s, 403);
    assert_eq!(
        body,
        json!({"detail": "You do not have access to this team"})
    );
    let (s, _) = app.post(url, &outsider, json!({"reset_to": 0})).await;
    assert_eq!(s, 403);
    let (s, body) = app
        .post(
            "/team/t1/member/tadmin/reset_spend",
            &tadmin,
            json!({"reset_to": 0}),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        detail_error(&body),
        "Cannot reset your own spend. Ask a proxy admin."
    );
    let (s, body) = app
        .post(
            "/team/t1/member/outsider/reset_spend",
            MASTER,
            json!({"reset_to": 0}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        detail_error(&body),
        "User outsider is not a member of team t1."
    );
    let (s, body) = app
        .post(
            "/team/nope/member/x/reset_spend",
            MASTER,
            json!({"reset_to": 0}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    for bad in [
        json!({"reset_to": true}),
        json!({"reset_to": "0"}),
        json!({}),
        json!({"reset_to": null}),
    ] {
        let (s, body) = app.post(url, MASTER, bad.clone()).await;
        assert_eq!(s, 422, "{bad} → {body}");
    }
    for (v, msg) in [
        (json!(-1), "reset_to must be a finite number >= 0"),
        (
            json!(5),
            "reset_to (5) cannot be greater than the member's current spend (4).",
        ),
    ] {
        let (s, body) = app.post(url, MASTER, json!({"reset_to": v})).await;
        assert_eq!(s, 400);
        assert_eq!(detail_error(&body), msg);
    }
    assert_eq!(
        member(&app, "t1", "tmember").await.unwrap().spend,
        4_000_000_000
    );

    let (s, body) = app.post(url, &tadmin, json!({"reset_to": 1.5})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"team_id": "t1", "user_id": "tmember", "spend": 1.5, "previous_spend": 4.0, "max_budget": 10.0})
    );
    let m = member(&app, "t1", "tmember").await.unwrap();
    assert_eq!((m.spend, m.total_spend), (1_500_000_000, 4_000_000_000));
    // Over the member's max_budget.
    set_spend(&app, "t1", "tmember", 20_000_000_000).await;
    let (s, body) = app.post(url, MASTER, json!({"reset_to": 11})).await;
    assert_eq!(s, 400);
    assert_eq!(
        detail_error(&body),
        "reset_to (11) cannot be greater than the member's max_budget (10)."
    );
    // The conditional UPDATE refuses a stale read (what the handler answers 409 for).
    let mut h = conn(&app).await;
    assert!(
        !store::members::reset_spend(&mut h, "t1", "tmember", 4_000_000_000, 0)
            .await
            .unwrap()
    );
    assert!(
        store::members::reset_spend(&mut h, "t1", "tmember", 20_000_000_000, 0)
            .await
            .unwrap()
    );
    drop(h);
    let m = member(&app, "t1", "tmember").await.unwrap();
    assert_eq!((m.spend, m.total_spend), (0, 20_000_000_000));

    // members/me
    let (s, body) = app.get("/team/t1/members/me", &tmember).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["user_id"], "tmember");
    assert_eq!(body["team_id"], "t1");
    assert_eq!(body["team_alias"], "t1-alias");
    assert_eq!(body["role"], "user");
    assert_eq!(body["spend"], 0.0);
    assert_eq!(body["total_spend"], 20.0);
    assert_eq!(body["litellm_budget_table"]["max_budget"], 10.0);
    let (s, body) = app.get("/team/t1/members/me", MASTER).await;
    assert_eq!(s, 200, "master is the creator: {body}");
    assert_eq!(body["role"], "admin");
    let (s, body) = app.get("/team/t1/members/me", &outsider).await;
    assert_eq!(s, 404);
    assert_eq!(
        detail_error(&body),
        "User outsider is not a member of team t1."
    );
    let (s, _) = app.get("/team/nope/members/me", &outsider).await;
    assert_eq!(s, 404);
    let team_key = make_key(&app, None, Some("t1")).await;
    let (s, body) = app.get("/team/t1/members/me", &team_key).await;
    assert_eq!(s, 400, "{body}");
    app.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// Concurrency
// ----------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn of(app: &TestApp) -> Http {
        Http {
            client: app.client.clone(),
            base: app.base.clone(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .expect("request");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

async fn parallel_adds(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    let http = Http::of(&app);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                http.post(ADD, json!({"team_id": "t1", "member": {"role": "user", "user_id": format!("p{i:02}")}}))
                    .await
            })
        })
        .collect();
    for t in tasks {
        let (s, body) = t.await.unwrap();
        assert_eq!(s, 200, "{body}");
    }
    let r = roster(&app, "t1").await;
    let got: BTreeSet<&str> = ids(&r).into_iter().collect();
    let mut want: BTreeSet<String> = (0..40).map(|i| format!("p{i:02}")).collect();
    want.insert("default_user_id".into());
    assert_eq!(
        got,
        want.iter().map(String::as_str).collect::<BTreeSet<&str>>()
    );
    assert_eq!(r.len(), 41);
    for i in 0..40 {
        let u = format!("p{i:02}");
        assert_eq!(teams_of(&app, &u).await, vec!["t1"]);
        assert!(member(&app, "t1", &u).await.is_some());
    }
    app.shutdown().await;
}

/// One new address added to eight teams at once (in mixed case) while `/user/new` races to take
/// it: exactly one user owns the address afterwards, and it is the member of all eight teams.
/// (On PostgreSQL each add locks only its own team row; the address lock makes this hold.)
async fn same_new_email_in_parallel(b: Backend) {
    let app = TestApp::spawn(b).await;
    let teams: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
    for t in &teams {
        make_team(&app, t).await;
    }
    let http = Http::of(&app);
    let mut tasks = Vec::new();
    for (i, t) in teams.iter().enumerate() {
        let http = http.clone();
        let email = if i % 2 == 0 {
            "New.Person@example.com"
        } else {
            "new.person@EXAMPLE.com"
        };
        let body = json!({"team_id": t, "member": {"role": "user", "user_email": email}});
        tasks.push(tokio::spawn(
            async move { (ADD, http.post(ADD, body).await) },
        ));
    }
    for _ in 0..3 {
        let http = http.clone();
        let body = json!({"user_email": "NEW.PERSON@example.com"});
        tasks.push(tokio::spawn(async move {
            ("/user/new", http.post("/user/new", body).await)
        }));
    }
    for t in tasks {
        let (path, (s, body)) = t.await.unwrap();
        if path == ADD {
            assert_eq!(s, 200, "{body}");
        } else {
            assert!(s == 200 || s == 409, "{s} {body}");
        }
    }
    let owners = store::users::find_by_email(&mut conn(&app).await, "new.person@example.com")
        .await
        .unwrap();
    assert_eq!(owners.len(), 1, "one user per address: {owners:?}");
    let uid = owners[0].user_id.clone();
    let mut joined = teams_of(&app, &uid).await;
    joined.sort();
    assert_eq!(joined, teams);
    for t in &teams {
        assert!(
            member(&app, t, &uid).await.is_some(),
            "membership row in {t}"
        );
    }
    app.shutdown().await;
}

async fn adds_race_deletes(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    make_team(&app, "t2").await;
    let users: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for u in &users {
        make_user(&app, u, "internal_user", None).await;
    }
    let http = Http::of(&app);
    let mut tasks = Vec::new();
    for round in 0..6 {
        for u in &users {
            for team in ["t1", "t2"] {
                let (h1, u1) = (http.clone(), u.clone());
                tasks.push(tokio::spawn(async move {
                    let (http, u) = (h1, u1);
                    let (path, body) = if (round + u.len()) % 2 == 0 {
                        (ADD, json!({"team_id": team, "member": {"role": "user", "user_id": u}, "max_budget_in_team": 1}))
                    } else {
                        (DEL, json!({"team_id": team, "user_id": u}))
                    };
                    let (s, body) = http.post(path, body).await;
                    (path, s, body)
                }));
                let (h2, u2) = (http.clone(), u.clone());
                tasks.push(tokio::spawn(async move {
                    let (http, u) = (h2, u2);
                    let (path, body) = if round % 2 == 0 {
                        (DEL, json!({"team_id": team, "user_id": u}))
                    } else {
                        (
                            ADD,
                            json!({"team_id": team, "member": {"role": "user", "user_id": u}}),
                        )
                    };
                    let (s, body) = http.post(path, body).await;
                    (path, s, body)
                }));
            }
        }
    }
    let mut ok = 0;
    for t in tasks {
        let (path, s, body) = t.await.unwrap();
        match s.as_u16() {
            200 => ok += 1,
            400 if path == ADD => {
                assert_eq!(
                    body["error"]["type"], "team_member_already_in_team",
                    "{body}"
                )
            }
            400 => assert_eq!(detail_error(&body), "User not found in team"),
            _ => panic!("{path} answered {s}: {body}"),
        }
    }
    assert!(ok > 0);
    for team in ["t1", "t2"] {
        let r = roster(&app, team).await;
        for u in &users {
            let on_roster = ids(&r).contains(&u.as_str());
            let row = member(&app, team, u).await;
            let in_teams = teams_of(&app, u).await.iter().any(|t| t == team);
            assert_eq!(row.is_some(), on_roster, "{team}/{u}");
            assert_eq!(in_teams, on_roster, "{team}/{u}");
            // A present member's budget link points at a row that exists.
            if let Some(m) = row
                && let Some(bid) = m.budget_id
            {
                assert!(budget(&app, &bid).await.is_some(), "{team}/{u} budget");
            }
        }
    }
    app.shutdown().await;
}

async fn adds_race_team_delete(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "doomed").await;
    let http = Http::of(&app);
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                http.post(ADD, json!({"team_id": "doomed", "member": {"role": "user", "user_id": format!("d{i}")}}))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    {
        let mut h = tx(&app).await;
        assert!(store::teams::lock(&mut h, "doomed").await.unwrap());
        assert!(store::teams::delete(&mut h, "doomed").await.unwrap());
        h.commit().await.unwrap();
    }
    app.state.cache.evict_team("doomed").await;
    let (mut ok, mut gone) = (0, 0);
    for t in tasks {
        let (s, body) = t.await.unwrap();
        match s.as_u16() {
            200 => ok += 1,
            404 => {
                gone += 1;
                let msg = detail_error(&body);
                assert!(
                    msg == "Team not found for team_id=doomed"
                        || msg == "Team=doomed was deleted while this member add was running",
                    "{msg}"
                );
            }
            _ => panic!("member_add answered {s}: {body}"),
        }
    }
    assert_eq!(ok + gone, 30);
    assert!(
        roster(&app, "doomed").await.is_empty(),
        "no dangling memberships"
    );
    for i in 0..30 {
        assert!(teams_of(&app, &format!("d{i}")).await.is_empty());
    }
    let (s, body) = http
        .post(
            ADD,
            json!({"team_id": "doomed", "member": {"role": "user", "user_id": "late"}}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(detail_error(&body), "Team not found for team_id=doomed");
    app.shutdown().await;
}

// ----------------------------------------------------------------------------------------------
// Cache eviction and audit
// ----------------------------------------------------------------------------------------------

async fn cached_member(
    app: &TestApp,
    team_id: &str,
    user_id: &str,
) -> Option<(String, Option<f64>)> {
    app.state
        .cache
        .member(&app.state.db, team_id, user_id)
        .await
        .unwrap()
        .map(|e| {
            (
                e.membership.role.clone(),
                e.budget
                    .as_ref()
                    .and_then(|b| b.max_budget)
                    .map(|n| n as f64 / 1e9),
            )
        })
}

async fn writes_evict_caches_and_audit(b: Backend) {
    let app = TestApp::spawn(b).await;
    make_team(&app, "t1").await;
    make_user(&app, "alice", "internal_user", None).await;
    // A negative entry is cached before the add …
    assert_eq!(cached_member(&app, "t1", "alice").await, None);
    let (s, _) = app
        .post(
            ADD,
            MASTER,
            json!({"team_id": "t1", "member": {"role": "user", "user_id": "alice"}}),
        )
        .await;
    assert_eq!(s, 200);
    // … and the add evicted it.
    assert_eq!(
        cached_member(&app, "t1", "alice").await,
        Some(("user".into(), None))
    );
    let (s, _) = app
        .post(
            UPD,
            MASTER,
            json!({"team_id": "t1", "user_id": "alice", "role": "admin", "max_budget_in_team": 7}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        cached_member(&app, "t1", "alice").await,
        Some(("admin".into(), Some(7.0)))
    );
    let (s, _) = app
        .post(DEL, MASTER, json!({"team_id": "t1", "user_id": "alice"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(cached_member(&app, "t1", "alice").await, None);

    // Every roster change left an audit row of the team with before/after rosters.
    let mut h = conn(&app).await;
    let f = store::audit::AuditFilter {
        object_id: Some("t1".into()),
        table_name: Some("LiteLLM_TeamTable".into()),
        ..Default::default()
    };
    let (rows, total) = store::audit::list(&mut h, &f, 100, 0).await.unwrap();
    assert_eq!(total, 3, "add, role change, delete");
    let rosters: Vec<usize> = rows
        .iter()
        .map(|r| {
            r.updated_values.as_ref().unwrap().0["members_with_roles"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    let mut sorted = rosters.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 2, 2]);
    assert!(
        rows.iter()
            .all(|r| r.changed_by == "default_user_id" && r.action == "updated")
    );
    let f = store::audit::AuditFilter {
        object_id: Some("t1:alice".into()),
        ..Default::default()
    };
    let (rows, _) = store::audit::list(&mut h, &f, 100, 0).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].table_name, "LiteLLM_TeamMembership");
    drop(h);
    app.shutdown().await;
}

both_backends!(
    writes_evict_caches_and_audit,
    member_add_happy_path,
    member_add_team_default_budget,
    member_add_errors_change_nothing,
    member_add_role_matrix,
    member_add_available_team_self_join,
    member_delete_flow,
    member_update_flow,
    bulk_member_add_flow,
    reset_spend_and_me,
    parallel_adds,
    same_new_email_in_parallel,
    adds_race_deletes,
    adds_race_team_delete,
);
