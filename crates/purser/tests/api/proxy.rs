//! The request path: OpenAI-compatible routes in front of the mock upstream, every governance
//! denial (status, type, message; the upstream is never hit), exact spend after sequential,
//! concurrent and streamed calls, reservations under a burst, streaming passthrough, client
//! disconnects, upstream failures and shutdown under load. Fixtures insert rows through
//! `store::*` and evict the cache exactly like the management routes do.

use std::sync::Arc;
use std::time::Duration;

use purser::service::spend::SpendScope;
use purser::store::{
    self, budgets::BudgetRow, keys::KeyRow, members::MembershipRow, teams::TeamRow, users::UserRow,
};
use purser_core::money::cost_of;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::both_backends;
use crate::helpers::*;
use crate::mock_upstream::{self, MockUpstream};

const SECRET: &str = "sk-upstream-secret-123";
/// 1e-6 and 2e-6 USD per token in pico-USD.
const IN: i64 = 1_000_000;
const OUT: i64 = 2_000_000;

fn config(m: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: fake-gpt
    litellm_params:
      model: openai/fake-gpt
      mock_response: "hello from the mock"
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: other-model
    litellm_params:
      model: openai/other
      mock_response: "other"
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: free-model
    litellm_params:
      model: openai/free
      mock_response: "free"
  - model_name: gpt-real
    litellm_params:
      model: openai/upstream-model
      api_base: {ok}
      api_key: {SECRET}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      access_groups: [beta]
  - model_name: gpt-nousage
    litellm_params:
      model: openai/upstream-model
      api_base: {nousage}
      api_key: {SECRET}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: gpt-fail
    litellm_params:
      model: openai/upstream-model
      api_base: {fail}
      api_key: {SECRET}
  - model_name: gpt-slow
    litellm_params:
      model: openai/upstream-model
      api_base: {slow}
      api_key: {SECRET}
      timeout: 0.5
  - model_name: gpt-down
    litellm_params:
      model: openai/upstream-model
      api_base: http://127.0.0.1:9/v1
      api_key: {SECRET}
  - model_name: gpt-long
    litellm_params:
      model: openai/upstream-model
      api_base: {long}
      api_key: {SECRET}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
router_settings:
  num_retries: 0   # failure mapping without retries; routing has its own tests
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#,
        ok = m.base("ok"),
        nousage = m.base("nousage"),
        fail = m.base("fail"),
        slow = m.base("slow"),
        long = m.base("long"),
    )
}

async fn setup(b: Backend) -> (TestApp, MockUpstream) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m)).await;
    (app, m)
}

fn hi() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": hi()})
}

/// Prompt tokens Purser counts for `hi()` (3 priming + 3 per message + "user" + "hi").
const HI_TOKENS: u64 = 8;
/// Completion tokens of "hello from the mock".
const MOCK_TOKENS: u64 = 5;

fn mock_cost() -> i64 {
    cost_of(HI_TOKENS, MOCK_TOKENS, IN, OUT).0
}

fn real_cost() -> i64 {
    cost_of(9, 6, IN, OUT).0
}

// ---------- fixtures (store writes + cache eviction, as the management routes do) ----------

async fn put_user(app: &TestApp, id: &str, f: impl FnOnce(&mut UserRow)) {
    let mut u = UserRow::new(id.into(), store::now());
    f(&mut u);
    let mut h = app.state.db.conn().await.unwrap();
    store::users::insert(&mut h, &u).await.unwrap();
    app.state.cache.evict_user(id).await;
}

async fn put_team(app: &TestApp, id: &str, f: impl FnOnce(&mut TeamRow)) {
    let now = store::now();
    let mut t = TeamRow::new(id.to_string(), now);
    f(&mut t);
    let mut h = app.state.db.conn().await.unwrap();
    store::teams::insert(&mut h, &t).await.unwrap();
    app.state.cache.evict_team(id).await;
}

async fn update_team(app: &TestApp, id: &str, f: impl FnOnce(&mut TeamRow)) {
    let mut h = app.state.db.conn().await.unwrap();
    let mut t = store::teams::get(&mut h, id).await.unwrap().unwrap();
    f(&mut t);
    assert!(store::teams::update(&mut h, &t).await.unwrap());
    app.state.cache.evict_team(id).await;
}

async fn set_team_aliases(app: &TestApp, id: &str, aliases: Value) {
    let mut h = app.state.db.conn().await.unwrap();
    let mid = store::models::insert(&mut h, &aliases, "test", store::now())
        .await
        .unwrap();
    drop(h);
    update_team(app, id, |t| t.model_id = Some(mid)).await;
}

async fn put_member(app: &TestApp, team: &str, user: &str, budget: Option<BudgetRow>) {
    put_member_as(app, team, user, "user", budget).await
}

async fn put_member_as(
    app: &TestApp,
    team: &str,
    user: &str,
    role: &str,
    budget: Option<BudgetRow>,
) {
    let mut h = app.state.db.conn().await.unwrap();
    let budget_id = match budget {
        Some(b) => {
            store::budgets::insert(&mut h, &b).await.unwrap();
            Some(b.budget_id)
        }
        None => None,
    };
    store::members::insert(
        &mut h,
        &MembershipRow {
            team_id: team.into(),
            user_id: user.into(),
            role: role.into(),
            user_email: None,
            spend: 0,
            total_spend: 0,
            budget_id,
            added_at: store::now(),
        },
    )
    .await
    .unwrap();
    app.state.cache.evict_member(team, user).await;
}

fn budget(id: &str, f: impl FnOnce(&mut BudgetRow)) -> BudgetRow {
    let mut b = BudgetRow::new(id.into(), "test", store::now());
    f(&mut b);
    b
}

/// Inserts a key and returns the raw `sk-…` value.
async fn put_key(
    app: &TestApp,
    user: Option<&str>,
    team: Option<&str>,
    f: impl FnOnce(&mut KeyRow),
) -> String {
    let raw = purser_core::keys::generate_key();
    let now = store::now();
    let mut k = KeyRow {
        key_name: Some(purser_core::keys::key_name(&raw)),
        user_id: user.map(str::to_string),
        team_id: team.map(str::to_string),
        ..KeyRow::new(purser_core::keys::hash_key(&raw), now)
    };
    f(&mut k);
    let mut h = app.state.db.conn().await.unwrap();
    store::keys::insert(&mut h, &k).await.unwrap();
    app.state.cache.evict_key(&k.token).await;
    raw
}

/// A team `t`, user `u` on it (optional member budget) and a team key of `u`.
async fn team_key(app: &TestApp, t: &str, u: &str) -> String {
    put_user(app, u, |_| {}).await;
    put_team(app, t, |_| {}).await;
    put_member(app, t, u, None).await;
    put_key(app, Some(u), Some(t), |_| {}).await
}

// ---------- readers ----------

#[derive(Debug, PartialEq, Eq)]
struct Spends {
    key: i64,
    team: i64,
    member: i64,
    user: i64,
    logs: i64,
    log_rows: i64,
}

async fn flush(app: &TestApp) {
    app.state.ledger.flush(&app.state.db).await.unwrap();
}

async fn spends_in(h: &mut store::Handle, raw: &str, t: &str, u: &str) -> Spends {
    let k = store::keys::get(h, &purser_core::keys::hash_key(raw))
        .await
        .unwrap()
        .map(|k| k.spend)
        .unwrap_or(-1);
    let team = store::teams::get(h, t)
        .await
        .unwrap()
        .map(|t| t.spend)
        .unwrap_or(-1);
    let member = store::members::get(h, t, u)
        .await
        .unwrap()
        .map(|m| m.spend)
        .unwrap_or(-1);
    let user = store::users::get(h, u)
        .await
        .unwrap()
        .map(|u| u.spend)
        .unwrap_or(-1);
    let (logs, log_rows): (i64, i64) = purser::on_conn!(h, c => sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(spend), 0) AS BIGINT), COUNT(*) FROM spend_logs")
        .fetch_one(c).await.unwrap());
    Spends {
        key: k,
        team,
        member,
        user,
        logs,
        log_rows,
    }
}

async fn spends(app: &TestApp, raw: &str, t: &str, u: &str) -> Spends {
    flush(app).await;
    let mut h = app.state.db.conn().await.unwrap();
    spends_in(&mut h, raw, t, u).await
}

fn all_equal(s: &Spends, total: i64, rows: i64) {
    assert_eq!(
        s,
        &Spends {
            key: total,
            team: total,
            member: total,
            user: total,
            logs: total,
            log_rows: rows
        }
    );
}

// ---------- scenarios ----------

async fn chat_models_and_info(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    update_team(&app, "t1", |t| {
        t.models = Json(vec!["fake-gpt".into(), "gpt-real".into()])
    })
    .await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("fake-gpt"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-gpt");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the mock"
    );
    assert_eq!(body["usage"]["prompt_tokens"], HI_TOKENS);
    assert_eq!(body["usage"]["completion_tokens"], MOCK_TOKENS);
    let (s, body) = app.post("/chat/completions", &key, chat("gpt-real")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, mock_upstream::completion(true), "JSON passed through");
    let sent = m.last_body();
    assert_eq!(sent["model"], "upstream-model");
    assert_eq!(m.seen.auth.lock().unwrap()[0], format!("Bearer {SECRET}"));

    let (s, body) = app.get("/v1/models", &key).await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({"data": [
            {"id": "fake-gpt", "object": "model", "created": 1677610602, "owned_by": "openai"},
            {"id": "gpt-real", "object": "model", "created": 1677610602, "owned_by": "openai"}],
            "object": "list"})
    );
    let (s, all) = app.get("/models", MASTER).await;
    assert_eq!(s, 200);
    assert_eq!(all["data"].as_array().unwrap().len(), 9);

    let (s, info) = app.get("/model/info", &key).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = info["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fake-gpt", "gpt-real"]);
    let (_, info_all) = app.get("/model/info", MASTER).await;
    let text = info_all.to_string();
    assert!(!text.contains(SECRET) && !text.contains("api_key") && !text.contains("api_base"));
    assert!(
        !text.contains(&m.addr.to_string()),
        "upstream address leaked"
    );
    assert_eq!(
        info["data"][1]["model_info"]["access_groups"],
        json!(["beta"])
    );

    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, mock_cost() + real_cost(), 2);
    app.shutdown().await;
}

async fn denials_never_reach_upstream(b: Backend) {
    let (app, m) = setup(b).await;
    // key allow-list
    let key = team_key(&app, "t1", "u1").await;
    let k2 = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.models = Json(vec!["fake-gpt".into()])
    })
    .await;
    let (s, body) = app
        .post("/v1/chat/completions", &k2, chat("gpt-real"))
        .await;
    assert_eq!(s, 403);
    let msg = assert_proxy_error(&body, 403, "key_model_access_denied");
    assert_eq!(
        msg,
        "The requested model 'gpt-real' is not available for this API key, or the model name is invalid. Check the models available to you and try again."
    );
    assert_eq!(body["error"]["param"], "model");
    // team allow-list
    update_team(&app, "t1", |t| t.models = Json(vec!["fake-gpt".into()])).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("gpt-real"))
        .await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "team_model_access_denied");
    // member allowed_models
    put_user(&app, "u2", |_| {}).await;
    put_member(
        &app,
        "t1",
        "u2",
        Some(budget("b-u2", |b| {
            b.allowed_models = Json(vec!["other-model".into()])
        })),
    )
    .await;
    update_team(&app, "t1", |t| t.models = Json(vec![])).await;
    let k3 = put_key(&app, Some("u2"), Some("t1"), |_| {}).await;
    let (s, body) = app
        .post("/v1/chat/completions", &k3, chat("gpt-real"))
        .await;
    assert_eq!(s, 403, "{body}");
    assert_proxy_error(&body, 403, "team_model_access_denied");
    let (s, _) = app
        .post("/v1/chat/completions", &k3, chat("other-model"))
        .await;
    assert_eq!(s, 200);
    // personal key: user models, no-default-models
    put_user(&app, "solo", |u| u.models = Json(vec!["fake-gpt".into()])).await;
    let pk = put_key(&app, Some("solo"), None, |_| {}).await;
    let (s, body) = app
        .post("/v1/chat/completions", &pk, chat("gpt-real"))
        .await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "user_model_access_denied");
    put_user(&app, "nodef", |u| {
        u.models = Json(vec!["no-default-models".into()])
    })
    .await;
    let nk = put_key(&app, Some("nodef"), None, |_| {}).await;
    let (s, body) = app
        .post("/v1/chat/completions", &nk, chat("fake-gpt"))
        .await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "user_model_access_denied");
    // team blocked
    update_team(&app, "t1", |t| t.blocked = true).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("gpt-real"))
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        body,
        json!({"error": {"message": "Authentication Error, Team=t1 is blocked. Update via `/team/unblock` if you're an admin.",
            "type": "auth_error", "param": "None", "code": "401"}})
    );
    // proxy_admin_viewer keys may not call LLM routes
    put_user(&app, "viewer", |u| {
        u.user_role = "proxy_admin_viewer".into()
    })
    .await;
    let vk = put_key(&app, Some("viewer"), None, |_| {}).await;
    let (s, body) = app
        .post("/v1/chat/completions", &vk, chat("gpt-real"))
        .await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "auth_error");
    // unknown key
    let (s, body) = app
        .post("/v1/chat/completions", "sk-nope-nope", chat("gpt-real"))
        .await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "token_not_found_in_db");
    assert_eq!(m.hits(), 0, "no denial may reach the upstream");
    // only the one allowed mock call was booked
    flush(&app).await;
    let s = spends(&app, &k3, "t1", "u2").await;
    assert_eq!((s.log_rows, s.logs), (1, cost_of(HI_TOKENS, 2, IN, OUT).0));
    app.shutdown().await;
}

async fn budgets_refuse_in_order(b: Backend) {
    let (app, m) = setup(b).await;
    let c = mock_cost();
    // key budget: one call fits, the next is refused (spend >= max)
    let key = team_key(&app, "t1", "u1").await;
    let kb = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.max_budget = Some(c);
        k.key_alias = Some("my-key".into())
    })
    .await;
    assert_eq!(
        app.post("/v1/chat/completions", &kb, chat("fake-gpt"))
            .await
            .0,
        200
    );
    let (s, body) = app
        .post("/v1/chat/completions", &kb, chat("gpt-real"))
        .await;
    assert_eq!(s, 422);
    let msg = assert_proxy_error(&body, 422, "budget_exceeded");
    assert_eq!(
        msg,
        "Budget has been exceeded! Key=my-key Current cost: 1.8e-05, Max budget: 1.8e-05"
    );
    assert_eq!(body["error"]["param"], Value::Null);
    // free models skip budget checks
    assert_eq!(
        app.post("/v1/chat/completions", &kb, chat("free-model"))
            .await
            .0,
        200
    );
    // team budget (>=, documented)
    update_team(&app, "t1", |t| t.max_budget = Some(c)).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("gpt-real"))
        .await;
    assert_eq!(s, 422, "{body}");
    let msg = assert_proxy_error(&body, 422, "budget_exceeded");
    assert!(
        msg.starts_with("Budget has been exceeded! Team=t1 Current cost: "),
        "{msg}"
    );
    // member budget (with a temporary increase that lapsed)
    put_team(&app, "t2", |_| {}).await;
    put_user(&app, "u2", |_| {}).await;
    put_member(
        &app,
        "t2",
        "u2",
        Some(budget("b2", |b| {
            b.max_budget = Some(c);
            b.temp_budget_increase = Some(1_000_000_000);
            b.temp_budget_expiry = Some(chrono::Utc::now() - chrono::Duration::hours(1));
        })),
    )
    .await;
    let mk = put_key(&app, Some("u2"), Some("t2"), |_| {}).await;
    assert_eq!(
        app.post("/v1/chat/completions", &mk, chat("fake-gpt"))
            .await
            .0,
        200
    );
    let (s, body) = app
        .post("/v1/chat/completions", &mk, chat("gpt-real"))
        .await;
    assert_eq!(s, 422);
    let msg = assert_proxy_error(&body, 422, "budget_exceeded");
    assert!(
        msg.starts_with("Budget has been exceeded! User=u2 in Team=t2 Current cost: "),
        "{msg}"
    );
    // user budget: personal keys only (team keys unless apply_user_budget_to_team_keys)
    put_user(&app, "solo", |u| u.max_budget = Some(c)).await;
    let pk = put_key(&app, Some("solo"), None, |_| {}).await;
    put_team(&app, "t3", |_| {}).await;
    put_member(&app, "t3", "solo", None).await;
    let tk = put_key(&app, Some("solo"), Some("t3"), |_| {}).await;
    assert_eq!(
        app.post("/v1/chat/completions", &pk, chat("fake-gpt"))
            .await
            .0,
        200
    );
    let (s, body) = app
        .post("/v1/chat/completions", &pk, chat("gpt-real"))
        .await;
    assert_eq!(s, 422);
    let msg = assert_proxy_error(&body, 422, "budget_exceeded");
    assert_eq!(
        msg,
        "ExceededBudget: User=solo over budget. Spend=1.8e-05, Budget=1.8e-05"
    );
    assert_eq!(
        app.post("/v1/chat/completions", &tk, chat("fake-gpt"))
            .await
            .0,
        200
    );
    assert_eq!(m.hits(), 0);
    app.shutdown().await;
}

async fn budget_status_and_user_budget_on_team_keys(b: Backend) {
    let m = MockUpstream::start().await;
    let yaml = config(&m).replace(
        "general_settings:\n",
        "litellm_settings:\n  budget_exceeded_status_code: 400\ngeneral_settings:\n  apply_user_budget_to_team_keys: true\n",
    );
    let app = TestApp::spawn_with(b, &yaml).await;
    put_user(&app, "u1", |u| u.max_budget = Some(1)).await;
    put_team(&app, "t1", |_| {}).await;
    put_member(&app, "t1", "u1", None).await;
    let tk = put_key(&app, Some("u1"), Some("t1"), |_| {}).await;
    assert_eq!(
        app.post("/v1/chat/completions", &tk, chat("fake-gpt"))
            .await
            .0,
        200
    );
    let (s, body) = app
        .post("/v1/chat/completions", &tk, chat("fake-gpt"))
        .await;
    assert_eq!(s, 400);
    assert_proxy_error(&body, 400, "budget_exceeded");
    app.shutdown().await;
}

async fn alias_cannot_widen_access(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    // §10 #22: team alias onto a model outside the team list is refused
    update_team(&app, "t1", |t| {
        t.models = Json(vec!["fake-gpt".into(), "fast".into()])
    })
    .await;
    set_team_aliases(&app, "t1", json!({"fast": "gpt-real"})).await;
    let (s, body) = app.post("/v1/chat/completions", &key, chat("fast")).await;
    assert_eq!(s, 200, "the alias is explicitly on the team list: {body}");
    update_team(&app, "t1", |t| t.models = Json(vec!["fake-gpt".into()])).await;
    let (s, body) = app.post("/v1/chat/completions", &key, chat("fast")).await;
    assert_eq!(s, 403, "{body}");
    assert_proxy_error(&body, 403, "team_model_access_denied");
    // key restricted to some team models cannot reach an aliased target
    update_team(&app, "t1", |t| {
        t.models = Json(vec!["fake-gpt".into(), "gpt-real".into()])
    })
    .await;
    let kr = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.models = Json(vec!["fake-gpt".into()])
    })
    .await;
    let (s, body) = app.post("/v1/chat/completions", &kr, chat("fast")).await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "key_model_access_denied");
    assert_eq!(m.hits(), 1);
    // allowed alias dispatches the target
    let (s, _) = app.post("/v1/chat/completions", &key, chat("fast")).await;
    assert_eq!(s, 200);
    assert_eq!(m.last_body()["model"], "upstream-model");
    // key aliases, checked the same way
    let ka = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.aliases = Json(json!({"mine": "other-model"}));
    })
    .await;
    let (s, body) = app.post("/v1/chat/completions", &ka, chat("mine")).await;
    assert_eq!(s, 403, "other-model is not on the team list: {body}");
    assert_proxy_error(&body, 403, "team_model_access_denied");
    assert_eq!(m.hits(), 2);
    app.shutdown().await;
}

async fn access_groups_wildcards_all_team_models(b: Backend) {
    let (app, _m) = setup(b).await;
    put_user(&app, "u1", |_| {}).await;
    put_team(&app, "t1", |t| {
        t.models = Json(vec!["fake-gpt".into(), "other-model".into()])
    })
    .await;
    put_member(&app, "t1", "u1", None).await;
    let grp = put_key(&app, Some("u1"), None, |k| {
        k.models = Json(vec!["beta".into()])
    })
    .await;
    assert_eq!(
        app.post("/v1/chat/completions", &grp, chat("gpt-real"))
            .await
            .0,
        200
    );
    assert_eq!(
        app.post("/v1/chat/completions", &grp, chat("fake-gpt"))
            .await
            .0,
        403
    );
    let wild = put_key(&app, Some("u1"), None, |k| {
        k.models = Json(vec!["*-model".into()])
    })
    .await;
    assert_eq!(
        app.post("/v1/chat/completions", &wild, chat("other-model"))
            .await
            .0,
        200
    );
    assert_eq!(
        app.post("/v1/chat/completions", &wild, chat("fake-gpt"))
            .await
            .0,
        403
    );
    let inherit = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.models = Json(vec!["all-team-models".into()])
    })
    .await;
    assert_eq!(
        app.post("/v1/chat/completions", &inherit, chat("other-model"))
            .await
            .0,
        200
    );
    let (s, body) = app
        .post("/v1/chat/completions", &inherit, chat("gpt-real"))
        .await;
    assert_eq!(s, 403);
    assert_proxy_error(&body, 403, "key_model_access_denied");
    let (_, list) = app.get("/v1/models", &inherit).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    app.shutdown().await;
}

async fn management_writes_apply_on_next_call(b: Backend) {
    let (app, _m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        200
    );
    // block (§10 #8) and unblock take effect at once
    update_team(&app, "t1", |t| t.blocked = true).await;
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        401
    );
    update_team(&app, "t1", |t| t.blocked = false).await;
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        200
    );
    // model list update (§10 #20)
    update_team(&app, "t1", |t| t.models = Json(vec!["other-model".into()])).await;
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        403
    );
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("other-model"))
            .await
            .0,
        200
    );
    // key delete (§10 #9)
    let token = purser_core::keys::hash_key(&key);
    let mut h = app.state.db.conn().await.unwrap();
    assert!(store::keys::delete(&mut h, &token).await.unwrap());
    drop(h);
    app.state.cache.evict_key(&token).await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("other-model"))
        .await;
    assert_eq!(s, 401);
    assert_proxy_error(&body, 401, "token_not_found_in_db");
    app.shutdown().await;
}

async fn rate_limits_with_headers(b: Backend) {
    let (app, m) = setup(b).await;
    put_user(&app, "u1", |_| {}).await;
    put_team(&app, "t1", |t| t.tpm_limit = Some(10)).await;
    put_member(
        &app,
        "t1",
        "u1",
        Some(budget("bm", |b| b.rpm_limit = Some(3))),
    )
    .await;
    let key = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.rpm_limit = Some(2);
        k.key_alias = Some("rk".into())
    })
    .await;
    let other = put_key(&app, Some("u1"), Some("t1"), |_| {}).await;
    let (s, _) = app
        .post("/v1/chat/completions", &key, chat("free-model"))
        .await;
    assert_eq!(s, 200);
    // team tpm: 8+1 tokens used, still under 10 → one more call, then refused
    let (s, _) = app
        .post("/v1/chat/completions", &key, chat("free-model"))
        .await;
    assert_eq!(s, 200);
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("gpt-real"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let body: Value = r.json().await.unwrap();
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert!(
        msg.starts_with("Rate limit exceeded for api_key: rk. Limit type: requests. Current limit: 2, Remaining: 0."),
        "{msg}"
    );
    assert!(!msg.contains(&purser_core::keys::hash_key(&key)));
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(h["x-ratelimit-limit-requests"], "2");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    // the other key of the team hits the team TPM window (18 tokens ≥ 10)
    let (s, body) = app
        .post("/v1/chat/completions", &other, chat("free-model"))
        .await;
    assert_eq!(s, 429, "{body}");
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert!(
        msg.starts_with(
            "Rate limit exceeded for team: t1. Limit type: tokens. Current limit: 10, Remaining: 0."
        ),
        "{msg}"
    );
    assert_eq!(m.hits(), 0);
    // member rpm (3): a second team without tpm
    put_team(&app, "t2", |_| {}).await;
    put_member(
        &app,
        "t2",
        "u1",
        Some(budget("bm2", |b| b.rpm_limit = Some(1))),
    )
    .await;
    let k2 = put_key(&app, Some("u1"), Some("t2"), |_| {}).await;
    assert_eq!(
        app.post("/v1/chat/completions", &k2, chat("free-model"))
            .await
            .0,
        200
    );
    let (s, body) = app
        .post("/v1/chat/completions", &k2, chat("free-model"))
        .await;
    assert_eq!(s, 429);
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert!(
        msg.starts_with("Rate limit exceeded for team_member: t2:u1. Limit type: requests."),
        "{msg}"
    );
    app.shutdown().await;
}

async fn sequential_and_concurrent_spend_agree(b: Backend) {
    let (app, _m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    for _ in 0..3 {
        assert_eq!(
            app.post("/v1/chat/completions", &key, chat("gpt-real"))
                .await
                .0,
            200
        );
    }
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, 3 * real_cost(), 3);
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let app = app.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let model = if i % 2 == 0 { "gpt-real" } else { "fake-gpt" };
            app.post("/v1/chat/completions", &key, chat(model)).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, 18 * real_cost() + 15 * mock_cost(), 33);
    assert_eq!(app.state.ledger.in_flight(), 0);
    // the in-memory counters agree with the database
    assert_eq!(
        app.state.ledger.spend(&SpendScope::Team("t1".into())),
        Some(s.team)
    );
    Arc::into_inner(app).unwrap().shutdown().await;
}

async fn burst_against_small_budget(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    // fits exactly 5 real calls; clients send max_tokens = 6, so estimates are accurate
    let budget_nanos = 5 * real_cost();
    update_team(&app, "t1", |t| t.max_budget = Some(budget_nanos)).await;
    let body = json!({"model": "gpt-real", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6});
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (app, key, body) = (app.clone(), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let (s, b) = app.post("/v1/chat/completions", &key, body).await;
            if s != 200 {
                assert_eq!(s, 422, "{b}");
                assert_proxy_error(&b, 422, "budget_exceeded");
            }
            s == 200
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap() as i64;
    }
    let s = spends(&app, &key, "t1", "u1").await;
    assert!((1..=6).contains(&ok), "{ok} calls passed");
    assert_eq!(m.hits() as i64, ok);
    all_equal(&s, ok * real_cost(), ok);
    assert!(s.team <= budget_nanos + real_cost(), "{s:?}");
    // accurate estimates: no false rejections — sequentially the 5 fitting calls all pass
    let k2 = {
        put_team(&app, "t2", |t| t.max_budget = Some(budget_nanos)).await;
        put_member(&app, "t2", "u1", None).await;
        put_key(&app, Some("u1"), Some("t2"), |_| {}).await
    };
    let mut passed = 0;
    for _ in 0..6 {
        if app.post("/v1/chat/completions", &k2, body.clone()).await.0 == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 5);
    Arc::into_inner(app).unwrap().shutdown().await;
}

async fn read_stream(r: reqwest::Response) -> Vec<u8> {
    r.bytes().await.unwrap().to_vec()
}

async fn streaming_passthrough_and_billing(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    let body = json!({"model": "gpt-real", "messages": hi(), "stream": true});
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let bytes = read_stream(r).await;
    // The gateway asked for usage to bill from it; the client did not, so the usage-only chunk
    // stays behind and everything else arrives byte for byte.
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        mock_upstream::stream_chunks(false).concat(),
        "SSE forwarded byte for byte, without the usage chunk nobody asked for"
    );
    assert_eq!(m.last_body()["stream_options"]["include_usage"], true);
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, real_cost(), 1);
    // A client that asks gets the usage chunk too.
    let asked = json!({"model": "gpt-real", "messages": hi(), "stream": true,
                       "stream_options": {"include_usage": true}});
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&asked)
        .send()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(read_stream(r).await).unwrap(),
        mock_upstream::stream_chunks(true).concat(),
        "SSE forwarded byte for byte"
    );
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, 2 * real_cost(), 2);
    // no usage from upstream: bill the counted prompt and produced text
    let body = json!({"model": "gpt-nousage", "messages": hi(), "stream": true});
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let bytes = read_stream(r).await;
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        mock_upstream::stream_chunks(false).concat()
    );
    // "Hello"=2, " from", " the", " mock"=1 each, " stream"=2, "."=1
    let fallback = cost_of(HI_TOKENS, 8, IN, OUT).0;
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, 2 * real_cost() + fallback, 3);
    // mock deployments stream too, with usage when asked
    for (asked, usage) in [(true, true), (false, false)] {
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(
                &json!({"model": "fake-gpt", "messages": hi(), "stream": true,
                          "stream_options": {"include_usage": asked}}),
            )
            .send()
            .await
            .unwrap();
        let text = String::from_utf8(read_stream(r).await).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(text.contains("\"completion_tokens\":5"), usage, "{text}");
    }
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, 2 * real_cost() + fallback + 2 * mock_cost(), 5);
    app.shutdown().await;
}

async fn client_disconnect_mid_stream_is_billed(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    let mut r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-long", "messages": hi(), "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0;
    while got < 3 {
        let c = r.chunk().await.unwrap().unwrap();
        got += c.iter().filter(|b| **b == b'\n').count() / 2;
    }
    drop(r);
    // the proxy notices the closed socket on its next write and settles
    let mut waited = 0;
    while app.state.ledger.in_flight() > 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(app.state.ledger.in_flight(), 0, "stream guard settled");
    let sent = m
        .seen
        .long_chunks_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 200, "upstream stream stopped early ({sent})");
    let s = spends(&app, &key, "t1", "u1").await;
    assert_eq!(s.log_rows, 1);
    assert!(s.key > cost_of(HI_TOKENS, 0, IN, OUT).0, "{s:?}");
    all_equal(&s, s.key, 1);
    let mut h = app.state.db.conn().await.unwrap();
    let status: String = purser::on_conn!(h, c => sqlx::query_scalar("SELECT status FROM spend_logs")
        .fetch_one(c).await.unwrap());
    assert_eq!(status, "partial");
    drop(h); // the pool only closes once every connection is back
    app.shutdown().await;
}

async fn upstream_failures_map_and_hide_secrets(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("gpt-fail"))
        .await;
    assert_eq!(s, 502, "{body}");
    assert_proxy_error(&body, 502, "api_error");
    let text = body.to_string();
    assert!(!text.contains(SECRET), "{body}");
    assert!(!text.contains(&SECRET.to_uppercase()), "{body}");
    assert!(!text.contains(&SECRET[..8]), "masked copy: {body}");
    assert!(text.contains("internal boom"), "{body}");
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("gpt-slow"))
        .await;
    assert_eq!(s, 504, "{body}");
    assert_proxy_error(&body, 504, "timeout");
    let (s, body) = app
        .post("/v1/chat/completions", &key, chat("gpt-down"))
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(!body.to_string().contains(SECRET) && !body.to_string().contains("127.0.0.1:9"));
    // streaming request to a failing upstream fails before any byte is sent
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "gpt-fail", "messages": hi(), "stream": true}),
        )
        .await;
    assert_eq!(s, 502);
    assert!(!body.to_string().contains(SECRET));
    assert_eq!(m.hits(), 3);
    assert_eq!(app.state.ledger.in_flight(), 0);
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, 0, 0);
    app.shutdown().await;
}

async fn embeddings_and_bad_input(b: Backend) {
    let (app, m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    let (s, body) = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "gpt-real", "input": "hello"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let (s, body) = app
        .post(
            "/embeddings",
            &key,
            json!({"model": "fake-gpt", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let hits = m.hits();
    for (path, raw) in [
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", "[1,2]"),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role":"user","content":"hi"}]}"#,
        ),
        ("/v1/chat/completions", r#"{"model": 7, "messages": []}"#),
        ("/v1/chat/completions", r#"{"model": "fake-gpt"}"#),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-gpt", "messages": [], "stream": "yes"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-gpt", "messages": [{"role":"user","content":"hi"}], "max_tokens": -1}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "no-such-model", "messages": [{"role":"user","content":"hi"}]}"#,
        ),
        ("/v1/embeddings", r#"{"model": "fake-gpt"}"#),
        (
            "/v1/embeddings",
            r#"{"model": "fake-gpt", "input": "x", "stream": true}"#,
        ),
    ] {
        let (s, body) = app.post_raw(path, &key, raw).await;
        assert_eq!(s, 400, "{raw}: {body}");
        assert_proxy_error(&body, 400, "bad_request_error");
    }
    // Over the body limit (10 MiB): a JSON 413, whether the size is declared up front or only
    // discovered while reading a chunked upload, and the client receives it (no reset).
    let big = format!(
        r#"{{"model": "fake-gpt", "messages": [{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(11 * 1024 * 1024)
    );
    let (s, body) = app.post_raw("/v1/chat/completions", &key, big).await;
    assert_eq!(s, 413, "{body}");
    assert_proxy_error(&body, 413, "request_too_large");
    let chunks = (0..11).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024]));
    let r = reqwest::Client::new()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("chunked upload answered");
    assert_eq!(r.status(), 413);
    assert_proxy_error(&r.json().await.unwrap(), 413, "request_too_large");
    assert_eq!(m.hits(), hits);
    let s = spends(&app, &key, "t1", "u1").await;
    all_equal(&s, cost_of(4, 0, IN, OUT).0 + cost_of(2, 0, IN, OUT).0, 2);
    app.shutdown().await;
}

async fn master_key_calls_are_logged(b: Backend) {
    let (app, _m) = setup(b).await;
    let (s, _) = app
        .post("/v1/chat/completions", MASTER, chat("fake-gpt"))
        .await;
    assert_eq!(s, 200);
    flush(&app).await;
    let mut h = app.state.db.conn().await.unwrap();
    let (api_key, user, spend): (String, Option<String>, i64) = purser::on_conn!(h, c => sqlx::query_as(
        "SELECT api_key, user_id, spend FROM spend_logs").fetch_one(c).await.unwrap());
    assert_eq!(api_key, "litellm_proxy_master_key");
    assert_eq!(user.as_deref(), Some("default_user_id"));
    assert_eq!(spend, mock_cost());
    drop(h);
    app.shutdown().await;
}

async fn budget_reset_hook(b: Backend) {
    let (app, _m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    update_team(&app, "t1", |t| t.max_budget = Some(mock_cost())).await;
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        200
    );
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        422
    );
    // what the reset job does: take the write gate, zero the row, then tell the ledger
    flush(&app).await;
    let w = app.state.ledger.spend_write().await;
    let mut h = app.state.db.conn().await.unwrap();
    purser::on_conn!(h, c => sqlx::query("UPDATE teams SET spend = 0 WHERE team_id = $1")
        .bind("t1").execute(c).await.map(|_| ()).unwrap());
    drop(h);
    w.set(&SpendScope::Team("t1".into()), 0);
    drop(w);
    // The after-commit step: cache, peers and the shared (Redis) counter follow.
    purser::service::write::after_commit(
        &app.state,
        &[
            purser::service::write::Changed::Team("t1".into()),
            purser::service::write::Changed::SpendSet {
                scope: SpendScope::Team("t1".into()),
                value: 0,
            },
        ],
    )
    .await;
    assert_eq!(
        app.post("/v1/chat/completions", &key, chat("fake-gpt"))
            .await
            .0,
        200
    );
    let s = spends(&app, &key, "t1", "u1").await;
    assert_eq!(s.team, mock_cost());
    assert_eq!(s.key, 2 * mock_cost());
    assert_eq!(s.logs, 2 * mock_cost());
    app.shutdown().await;
}

async fn shutdown_under_load_loses_nothing(b: Backend) {
    let (app, _m) = setup(b).await;
    let key = team_key(&app, "t1", "u1").await;
    let schema: Option<String> = match &app.state.db {
        store::Db::Postgres(p) => Some(
            sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(p)
                .await
                .unwrap(),
        ),
        store::Db::Sqlite(_) => None,
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let stream = i % 2 == 0;
            let r = client
                .post(url)
                .bearer_auth(&key)
                .json(&json!({"model": "gpt-real", "messages": [{"role":"user","content":"hi"}], "stream": stream}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.state.shutdown.cancel(); // SIGTERM
    for t in tasks {
        t.await.unwrap();
    }
    // wait for serve() to finish: jobs flushed, then the pool closed
    let closed = || match &app.state.db {
        store::Db::Postgres(p) => p.is_closed(),
        store::Db::Sqlite(p) => p.is_closed(),
    };
    let mut n = 0;
    while !closed() && n < 400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        n += 1;
    }
    assert!(closed(), "server did not finish");
    let db = match (&app.state.settings.database, schema) {
        (store::DbUrl::Sqlite(path), _) => {
            store::Db::connect(&store::DbUrl::Sqlite(path.clone()), None)
                .await
                .unwrap()
        }
        (url, Some(schema)) => store::Db::connect(url, Some(&schema)).await.unwrap(),
        _ => unreachable!(),
    };
    let mut h = db.conn().await.unwrap();
    let s = spends_in(&mut h, &key, "t1", "u1").await;
    all_equal(&s, 20 * real_cost(), 20);
    drop(h);
    db.close().await;
    app.shutdown().await;
}

async fn deployments_balance_within_their_rpm(b: Backend) {
    let yaml = r#"
model_list:
  - model_name: pair
    litellm_params: {model: openai/a, mock_response: "from a", rpm: 1}
    model_info: {id: dep-a}
  - model_name: pair
    litellm_params: {model: openai/b, mock_response: "from b", rpm: 1}
    model_info: {id: dep-b}
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#;
    let app = TestApp::spawn_with(b, yaml).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (s, body) = app.post("/v1/chat/completions", MASTER, chat("pair")).await;
        assert_eq!(s, 200, "{body}");
        seen.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["from a", "from b"], "both deployments used");
    let (s, body) = app.post("/v1/chat/completions", MASTER, chat("pair")).await;
    assert_eq!(s, 429, "{body}");
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert!(
        msg.starts_with("No deployments available for selected model=pair"),
        "{msg}"
    );
    assert_eq!(app.state.ledger.in_flight(), 0);
    app.shutdown().await;
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn model_list_query_flags(b: Backend) {
    let (app, _m) = setup(b).await;
    put_user(&app, "u1", |_| {}).await;
    put_team(&app, "t1", |t| {
        t.models = Json(vec!["fake-gpt".into(), "beta".into()])
    })
    .await;
    put_team(&app, "t2", |t| t.models = Json(vec!["other-model".into()])).await;
    put_member(&app, "t1", "u1", None).await;
    let key = put_key(&app, Some("u1"), Some("t1"), |_| {}).await;
    let list = |q: &str| format!("/v1/models{q}");

    let (s, body) = app.get(&list(""), &key).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        ids(&body),
        ["fake-gpt", "gpt-real"],
        "beta expands to gpt-real"
    );
    for (q, want) in [
        (
            "?include_model_access_groups=true",
            vec!["fake-gpt", "gpt-real", "beta"],
        ),
        ("?only_model_access_groups=True", vec!["beta"]),
        (
            "?only_model_access_groups=1&include_model_access_groups=1",
            vec!["beta"],
        ),
        (
            "?include_model_access_groups=false",
            vec!["fake-gpt", "gpt-real"],
        ),
        ("?healthy_only=true", vec!["fake-gpt", "gpt-real"]),
        // a member who is no team admin gets no expansion, and no error
        ("?scope=expand", vec!["fake-gpt", "gpt-real"]),
        ("?team_id=t1", vec!["fake-gpt", "gpt-real"]),
        ("?return_wildcard_routes=true", vec!["fake-gpt", "gpt-real"]),
        ("?unknown_flag=1", vec!["fake-gpt", "gpt-real"]),
    ] {
        let (s, body) = app.get(&list(q), &key).await;
        assert_eq!(s, 200, "{q}: {body}");
        assert_eq!(ids(&body), want, "{q}");
    }
    let (_, body) = app.get(&list("?include_metadata=true"), &key).await;
    for e in body["data"].as_array().unwrap() {
        assert_eq!(e["metadata"], json!({"fallbacks": []}), "{body}");
    }
    let (_, body) = app.get(&list(""), &key).await;
    assert!(body["data"][0].get("metadata").is_none(), "{body}");

    // bad values: 400 in the OpenAI shape naming the parameter, 422 for a non-boolean
    for (q, param) in [
        ("?scope=all", "scope"),
        (
            "?include_metadata=true&fallback_type=sideways",
            "fallback_type",
        ),
    ] {
        let (s, body) = app.get(&list(q), &key).await;
        assert_eq!(s, 400, "{q}: {body}");
        assert_proxy_error(&body, 400, "bad_request_error");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (_, ok) = app
        .get(
            &list("?include_metadata=true&fallback_type=context_window"),
            &key,
        )
        .await;
    assert_eq!(ids(&ok).len(), 2);
    for flag in [
        "include_model_access_groups",
        "only_model_access_groups",
        "return_wildcard_routes",
        "include_metadata",
        "healthy_only",
    ] {
        let (s, body) = app.get(&list(&format!("?{flag}=maybe")), &key).await;
        assert_eq!(s, 422, "{flag}: {body}");
        assert_eq!(assert_detail(&body)[0]["loc"], json!(["query", flag]));
    }

    // team_id: a team the caller is not in is a 403 whether or not it exists; admins see any
    for t in ["t2", "no-such-team"] {
        let (s, body) = app.get(&list(&format!("?team_id={t}")), &key).await;
        assert_eq!(s, 403, "{t}: {body}");
        assert_proxy_error(&body, 403, "team_model_access_denied");
    }
    let (_, body) = app.get(&list("?team_id=t2"), MASTER).await;
    assert_eq!(ids(&body), ["other-model"]);
    let (s, body) = app.get(&list("?team_id=no-such-team"), MASTER).await;
    assert_eq!(s, 404, "{body}");
    assert_proxy_error(&body, 404, "not_found_error");
    let (_, body) = app
        .get(&list("?only_model_access_groups=true"), MASTER)
        .await;
    assert_eq!(ids(&body), ["beta"]);

    // wildcard patterns of the key's own list appear only when asked for
    let wild = put_key(&app, Some("u1"), Some("t1"), |k| {
        k.models = Json(vec!["fake-*".into(), "gpt-real".into()])
    })
    .await;
    let (_, body) = app.get(&list(""), &wild).await;
    assert_eq!(ids(&body), ["fake-gpt", "gpt-real"]);
    let (_, body) = app.get(&list("?return_wildcard_routes=true"), &wild).await;
    assert_eq!(ids(&body), ["fake-gpt", "gpt-real", "fake-*"]);
    let (_, body) = app
        .get(&list("?include_model_access_groups=true"), &wild)
        .await;
    assert_eq!(
        ids(&body),
        ["fake-gpt", "gpt-real"],
        "the key does not grant beta whole"
    );

    // scope=expand: a team admin sees every configured model; a plain member does not (above)
    put_user(&app, "boss", |_| {}).await;
    put_member_as(&app, "t2", "boss", "admin", None).await;
    let boss = put_key(&app, Some("boss"), Some("t2"), |_| {}).await;
    let (_, body) = app.get(&list(""), &boss).await;
    assert_eq!(ids(&body), ["other-model"]);
    let (_, body) = app.get(&list("?scope=expand"), &boss).await;
    assert_eq!(ids(&body).len(), 9, "{body}");

    // one model: 200 for a callable one, 404 otherwise (also for names with slashes)
    let (s, body) = app.get("/v1/models/fake-gpt", &key).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": "fake-gpt", "object": "model", "created": 1677610602, "owned_by": "openai"})
    );
    assert_eq!(app.get("/models/gpt-real", &key).await.0, 200);
    for m in ["other-model", "no-such-model", "openai/fake-gpt", "%00"] {
        let (s, body) = app.get(&format!("/v1/models/{m}"), &key).await;
        assert_eq!(s, 404, "{m}: {body}");
        assert_proxy_error(&body, 404, "invalid_request_error");
    }
    assert_eq!(app.get("/v1/models/other-model", MASTER).await.0, 200);
    app.shutdown().await;
}

both_backends!(
    model_list_query_flags,
    deployments_balance_within_their_rpm,
    chat_models_and_info,
    denials_never_reach_upstream,
    budgets_refuse_in_order,
    budget_status_and_user_budget_on_team_keys,
    alias_cannot_widen_access,
    access_groups_wildcards_all_team_models,
    management_writes_apply_on_next_call,
    rate_limits_with_headers,
    sequential_and_concurrent_spend_agree,
    burst_against_small_budget,
    streaming_passthrough_and_billing,
    client_disconnect_mid_stream_is_billed,
    upstream_failures_map_and_hide_secrets,
    embeddings_and_bad_input,
    master_key_calls_are_logged,
    budget_reset_hook,
    shutdown_under_load_loses_nothing,
);

/// Every layer above a handler (axum, tower, the auth middleware) moves its future into a box,
/// copying it whole; a database read left inline in the request path's future made it 15.8 KB
/// in release builds and cost a third of the gateway's instructions per call in memcpy
/// (callgrind, bench/reports/process.md). Cold paths are boxed; this keeps them so.
#[tokio::test]
async fn request_path_futures_stay_small() {
    use purser::service::caller::Caller;
    use purser::service::proxy::{CallContext, CallRequest, handle};
    use purser::upstream::CallKind;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let master = Caller::master();
    let req = CallRequest::parse(
        CallKind::Chat,
        br#"{"model":"fake-gpt","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    let sizes = [
        (
            "cache.key",
            size_of_val(&app.state.cache.key(&app.state.db, "x")),
        ),
        (
            "auth::resolve",
            size_of_val(&purser::service::auth::resolve(&app.state, "sk-x")),
        ),
        (
            "CallContext::load",
            size_of_val(&CallContext::load(&app.state, &master)),
        ),
        (
            "proxy::handle",
            size_of_val(&handle(app.state.clone(), master.clone(), req)),
        ),
    ];
    for (what, bytes) in sizes {
        assert!(
            bytes <= 4096,
            "{what}'s future is {bytes} bytes: box its cold paths"
        );
    }
    app.shutdown().await;
}
