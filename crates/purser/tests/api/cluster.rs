//! Scale-out: two real `purser` processes on one PostgreSQL schema and one private
//! `redis-server` (started on a free port by the test, so it can be stopped and restarted).
//! Governance changes made on one instance bite on the other's very next request; rate limits
//! and budgets are shared; spend sums exactly; Redis going away fails no call.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{DEFAULT_CONFIG, MASTER, free_port, pg_url, postgres_available};

/// The tests' default config plus a second mock model (for model list changes).
fn cluster_config() -> String {
    DEFAULT_CONFIG.replace(
        "general_settings:",
        "  - model_name: other-gpt\n    litellm_params:\n      model: openai/other-gpt\n      mock_response: \"other\"\ngeneral_settings:",
    )
}

/// A private Redis on a free port; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with nothing kept from before.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One gateway process.
pub struct Instance {
    pub base: String,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two instances on one fresh PostgreSQL schema (and Redis, if given).
pub struct Pair {
    pub a: Instance,
    pub b: Instance,
    pub client: reqwest::Client,
    schema: String,
    _dir: tempfile::TempDir,
}

fn start_instance(config: &PathBuf, db_url: &str, redis: Option<&str>) -> Instance {
    let port = free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_purser"));
    c.args(["serve", "--config"])
        .arg(config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("DATABASE_URL", db_url)
        .env_remove("LITELLM_MASTER_KEY")
        .env_remove("PURSER_MASTER_KEY")
        .env("RUST_LOG", "warn")
        .stdout(match std::env::var("PURSER_TEST_INSTANCE_LOG") {
            Ok(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("instance log"),
            ),
            Err(_) => Stdio::null(),
        })
        .stderr(Stdio::inherit());
    match redis {
        Some(r) => c.env("REDIS_URL", r),
        None => c.env_remove("REDIS_URL"),
    };
    Instance {
        base: format!("http://127.0.0.1:{port}"),
        child: c.spawn().expect("purser binary"),
    }
}

impl Pair {
    /// Starts both at once (migrations race: the advisory lock must hold) and waits until each
    /// sees the other on the change bus and, with Redis, shares counters.
    pub async fn start(redis: Option<&str>) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, cluster_config()).unwrap();
        let schema = format!("c_{}", uuid::Uuid::new_v4().simple());
        let mut c = sqlx::PgConnection::connect(&pg_url()).await.expect("pg");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut c)
            .await
            .unwrap();
        let _ = c.close().await;
        let sep = if pg_url().contains('?') { '&' } else { '?' };
        let db_url = format!("{}{sep}options[search_path]={schema}", pg_url());
        let a = start_instance(&config, &db_url, redis);
        let b = start_instance(&config, &db_url, redis);
        let pair = Pair {
            a,
            b,
            client: reqwest::Client::new(),
            schema,
            _dir: dir,
        };
        pair.wait_joined(redis.is_some(), Duration::from_secs(30))
            .await;
        pair
    }

    /// Waits until both instances see one peer (and share Redis counters when `redis`).
    pub async fn wait_joined(&self, redis: bool, within: Duration) {
        let deadline = Instant::now() + within;
        for inst in [&self.a, &self.b] {
            loop {
                let ready = self
                    .client
                    .get(format!("{}/health/readiness", inst.base))
                    .send()
                    .await;
                if let Ok(r) = ready
                    && let Ok(v) = r.json::<Value>().await
                    && v["cluster"]["peers"] == 1
                    && (!redis || v["cluster"]["counters"] == "redis")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "instances did not join within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn post(
        &self,
        inst: &Instance,
        path: &str,
        key: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", inst.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, inst: &Instance, path: &str, key: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", inst.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn chat(&self, inst: &Instance, key: &str, model: &str) -> (StatusCode, Value) {
        self.post(
            inst,
            "/v1/chat/completions",
            key,
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
    }

    /// A team (through A) and a key of it.
    pub async fn team_key(&self, team: Value) -> (String, String) {
        let (s, t) = self.post(&self.a, "/team/new", MASTER, team).await;
        assert_eq!(s, 200, "{t}");
        let team_id = t["team_id"].as_str().unwrap().to_string();
        let (s, k) = self
            .post(
                &self.a,
                "/key/generate",
                MASTER,
                json!({"team_id": team_id}),
            )
            .await;
        assert_eq!(s, 200, "{k}");
        (team_id, k["key"].as_str().unwrap().to_string())
    }

    pub async fn shutdown(self) {
        let schema = self.schema.clone();
        drop(self);
        if let Ok(mut c) = sqlx::PgConnection::connect(&pg_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
        }
    }
}

fn cost_of(body: &Value) -> f64 {
    let u = &body["usage"];
    u["prompt_tokens"].as_f64().unwrap() * 0.000001
        + u["completion_tokens"].as_f64().unwrap() * 0.000002
}

/// Block, key delete, member removal, model list change and a lowered budget made on A bite on
/// B's next request; without Redis (the change bus is PostgreSQL's LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_changes_on_one_instance_bite_on_the_other() {
    if !postgres_available().await {
        return;
    }
    let p = Pair::start(None).await;
    let (team, key) = p.team_key(json!({"team_alias": "blockme"})).await;
    // Warm B's cache with the key, the team and its (empty) model list.
    assert_eq!(p.chat(&p.b, &key, "fake-gpt").await.0, 200);
    let (s, _) = p
        .post(&p.a, "/team/block", MASTER, json!({"team_id": team}))
        .await;
    assert_eq!(s, 200);
    let (s, body) = p.chat(&p.b, &key, "fake-gpt").await;
    assert_eq!(s, 401, "blocked team on A still served by B: {body}");
    assert!(body.to_string().contains("is blocked"), "{body}");
    p.post(&p.a, "/team/unblock", MASTER, json!({"team_id": team}))
        .await;
    assert_eq!(p.chat(&p.b, &key, "fake-gpt").await.0, 200, "unblocked");

    // Model list change.
    let (s, body) = p
        .post(
            &p.a,
            "/team/update",
            MASTER,
            json!({"team_id": team, "models": ["other-gpt"]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p.chat(&p.b, &key, "fake-gpt").await;
    assert_eq!(s, 403, "model removed on A still served by B: {body}");
    assert_eq!(p.chat(&p.b, &key, "other-gpt").await.0, 200);
    p.post(
        &p.a,
        "/team/update",
        MASTER,
        json!({"team_id": team, "models": []}),
    )
    .await;

    // Lowered budget: spend is above the new cap once B's spend is on disk.
    let (s, body) = p.chat(&p.b, &key, "fake-gpt").await;
    assert_eq!(s, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (s, body) = p
        .post(
            &p.a,
            "/team/update",
            MASTER,
            json!({"team_id": team, "max_budget": 0.0000001}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p.chat(&p.b, &key, "fake-gpt").await;
    assert_eq!(s, 422, "lowered budget on A not enforced by B: {body}");
    assert!(
        body.to_string().contains("Budget has been exceeded"),
        "{body}"
    );

    // Key delete.
    let (_, key2) = p.team_key(json!({"team_alias": "delme"})).await;
    assert_eq!(p.chat(&p.b, &key2, "fake-gpt").await.0, 200);
    let (s, body) = p
        .post(&p.a, "/key/delete", MASTER, json!({"keys": [key2]}))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p.chat(&p.b, &key2, "fake-gpt").await;
    assert_eq!(s, 401, "key deleted on A still works on B: {body}");

    // Member removal (the member's team keys go with it).
    let (s, t) = p
        .post(&p.a, "/team/new", MASTER, json!({"team_alias": "members"}))
        .await;
    assert_eq!(s, 200, "{t}");
    let tid = t["team_id"].as_str().unwrap().to_string();
    let (s, body) = p
        .post(
            &p.a,
            "/team/member_add",
            MASTER,
            json!({"team_id": tid, "member": {"role": "user", "user_id": "alice"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, k) = p
        .post(
            &p.a,
            "/key/generate",
            MASTER,
            json!({"team_id": tid, "user_id": "alice"}),
        )
        .await;
    assert_eq!(s, 200, "{k}");
    let alice = k["key"].as_str().unwrap().to_string();
    assert_eq!(p.chat(&p.b, &alice, "fake-gpt").await.0, 200);
    let (s, body) = p
        .post(
            &p.a,
            "/team/member_delete",
            MASTER,
            json!({"team_id": tid, "user_id": "alice"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p.chat(&p.b, &alice, "fake-gpt").await;
    assert_eq!(s, 401, "member removed on A still served by B: {body}");

    // Key block, then regeneration: the old key stops on B at once, the new one works there.
    let (_, key3) = p.team_key(json!({"team_alias": "regen"})).await;
    assert_eq!(p.chat(&p.b, &key3, "fake-gpt").await.0, 200);
    let (s, body) = p
        .post(&p.a, "/key/block", MASTER, json!({"key": key3}))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p.chat(&p.b, &key3, "fake-gpt").await;
    assert_eq!(s, 401, "key blocked on A still served by B: {body}");
    p.post(&p.a, "/key/unblock", MASTER, json!({"key": key3}))
        .await;
    assert_eq!(p.chat(&p.b, &key3, "fake-gpt").await.0, 200);
    let (s, body) = p
        .post(&p.a, &format!("/key/{key3}/regenerate"), MASTER, json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    let fresh = body["key"].as_str().unwrap().to_string();
    let (s, body) = p.chat(&p.b, &key3, "fake-gpt").await;
    assert_eq!(s, 401, "regenerated-away key still works on B: {body}");
    assert_eq!(p.chat(&p.b, &fresh, "fake-gpt").await.0, 200);

    // User delete: the user's own keys stop on B.
    let (s, u) = p
        .post(&p.a, "/user/new", MASTER, json!({"user_id": "bob"}))
        .await;
    assert_eq!(s, 200, "{u}");
    let bob = u["key"].as_str().unwrap().to_string();
    assert_eq!(p.chat(&p.b, &bob, "fake-gpt").await.0, 200);
    let (s, body) = p
        .post(&p.a, "/user/delete", MASTER, json!({"user_ids": ["bob"]}))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p.chat(&p.b, &bob, "fake-gpt").await;
    assert_eq!(s, 401, "deleted user's key still works on B: {body}");
    p.shutdown().await;
}

/// The budget reset job runs on both instances: each due reset is won once (compare-and-set)
/// and both instances' counters and the shared Redis counter take it, so a team refused on
/// both for its budget is served again on both once its period rolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_resets_reach_both_instances() {
    if !postgres_available().await {
        return;
    }
    let redis = RedisServer::start();
    let p = Pair::start(Some(&redis.url())).await;
    let (probe_team, probe) = p.team_key(json!({})).await;
    let (s, body) = p.chat(&p.a, &probe, "fake-gpt").await;
    assert_eq!(s, 200, "{body}");
    let per_call = cost_of(&body);
    let (team, key) = p
        .team_key(json!({"max_budget": per_call * 1.5, "budget_duration": "2s"}))
        .await;
    // Exhaust it until both instances refuse (a reset may land meanwhile; keep going).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut refused_a, mut refused_b) = (false, false);
    let mut i = 0;
    while !(refused_a && refused_b) {
        assert!(Instant::now() < deadline, "never refused on both");
        let on_a = i % 2 == 0;
        i += 1;
        let (s, body) = p
            .chat(if on_a { &p.a } else { &p.b }, &key, "fake-gpt")
            .await;
        match s.as_u16() {
            200 => {}
            422 => {
                assert!(
                    body.to_string().contains("Budget has been exceeded"),
                    "{body}"
                );
                if on_a {
                    refused_a = true
                } else {
                    refused_b = true
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Within a period (plus the job's one-second tick), both serve the team again.
    for inst in [&p.b, &p.a] {
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let (s, body) = p.chat(inst, &key, "fake-gpt").await;
            if s == 200 {
                break;
            }
            assert_eq!(s, 422, "{body}");
            assert!(
                Instant::now() < deadline,
                "{} never saw the reset: {body}",
                inst.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // One reset per period: the audit log holds no duplicate reset of one period.
    let (s, info) = p
        .get(&p.b, &format!("/team/info?team_id={team}"), MASTER)
        .await;
    assert_eq!(s, 200, "{info}");
    assert!(info["team_info"]["spend"].as_f64().unwrap() <= per_call * 2.0 + 1e-12);
    let _ = probe_team;
    p.shutdown().await;
}

/// Rate limits and budgets shared through Redis; spend sums exactly on both instances; Redis
/// stopped mid-run fails no call, and once it is back the instances share again within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_budgets_are_shared_and_survive_redis_outages() {
    if !postgres_available().await {
        return;
    }
    let mut redis = RedisServer::start();
    let p = Pair::start(Some(&redis.url())).await;

    // A team rpm_limit of 20, hit alternately through both: 20–22 admitted.
    let (_, key) = p.team_key(json!({"rpm_limit": 20})).await;
    let mut admitted = 0;
    for i in 0..40 {
        let inst = if i % 2 == 0 { &p.a } else { &p.b };
        let (s, body) = p.chat(inst, &key, "fake-gpt").await;
        match s.as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        (20..=22).contains(&admitted),
        "rpm_limit 20 across two instances admitted {admitted}"
    );

    // A team budget that fits 10 calls: not overshot by more than one call across both.
    let (probe_team, probe) = p.team_key(json!({})).await;
    let (s, body) = p.chat(&p.a, &probe, "fake-gpt").await;
    assert_eq!(s, 200, "{body}");
    let per_call = cost_of(&body);
    let (budget_team, key) = p
        .team_key(json!({"max_budget": per_call * 10.0 + per_call / 2.0}))
        .await;
    let mut admitted = 0;
    for i in 0..30 {
        let inst = if i % 2 == 0 { &p.a } else { &p.b };
        let (s, body) = p.chat(inst, &key, "fake-gpt").await;
        match s.as_u16() {
            200 => admitted += 1,
            400 | 422 => assert!(
                body.to_string().contains("Budget has been exceeded"),
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        (10..=11).contains(&admitted),
        "budget for 10 calls admitted {admitted} across two instances"
    );

    // A key's model_max_budget window is shared the same way.
    let (s, k) = p
        .post(
            &p.a,
            "/key/generate",
            MASTER,
            json!({"model_max_budget": {"fake-gpt": {
                "budget_limit": per_call * 5.0 + per_call / 2.0, "time_period": "1d"}}}),
        )
        .await;
    assert_eq!(s, 200, "{k}");
    let model_key = k["key"].as_str().unwrap().to_string();
    let mut model_admitted = 0;
    for i in 0..16 {
        let inst = if i % 2 == 0 { &p.a } else { &p.b };
        let (s, body) = p.chat(inst, &model_key, "fake-gpt").await;
        match s.as_u16() {
            200 => model_admitted += 1,
            400 | 422 => assert!(body.to_string().contains("budget"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        (5..=6).contains(&model_admitted),
        "a model budget for 5 calls admitted {model_admitted} across two instances"
    );

    // Spend sums exactly: every admitted call of both instances, on both.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let expected = per_call * admitted as f64;
    for inst in [&p.a, &p.b] {
        let (s, info) = p
            .get(inst, &format!("/team/info?team_id={budget_team}"), MASTER)
            .await;
        assert_eq!(s, 200, "{info}");
        let spend = info["team_info"]["spend"].as_f64().unwrap();
        assert!(
            (spend - expected).abs() < 1e-12,
            "team spend {spend} != {expected} on {}",
            inst.base
        );
        let (s, logs) = p
            .get(inst, &format!("/spend/logs?team_id={budget_team}"), MASTER)
            .await;
        assert_eq!(s, 200, "{logs}");
        let rows = logs.as_array().expect("spend logs list");
        assert_eq!(rows.len(), admitted, "spend log rows on {}", inst.base);
        let sum: f64 = rows.iter().map(|r| r["spend"].as_f64().unwrap()).sum();
        assert!((sum - expected).abs() < 1e-12, "{sum} != {expected}");
    }
    for inst in [&p.a, &p.b] {
        let (s, info) = p.get(inst, &format!("/key/info?key={key}"), MASTER).await;
        assert_eq!(s, 200, "{info}");
        let spend = info["info"]["spend"].as_f64().unwrap();
        assert!(
            (spend - expected).abs() < 1e-12,
            "key spend {spend} != {expected} on {}",
            inst.base
        );
    }
    let (s, info) = p
        .get(&p.b, &format!("/team/info?team_id={probe_team}"), MASTER)
        .await;
    assert_eq!(s, 200);
    assert!((info["team_info"]["spend"].as_f64().unwrap() - per_call).abs() < 1e-12);

    // Redis stopped mid-run: no call fails because of it.
    let (_, key) = p.team_key(json!({"rpm_limit": 1000})).await;
    for i in 0..6 {
        let inst = if i % 2 == 0 { &p.a } else { &p.b };
        assert_eq!(p.chat(inst, &key, "fake-gpt").await.0, 200);
    }
    redis.stop();
    for i in 0..20 {
        let inst = if i % 2 == 0 { &p.a } else { &p.b };
        let (s, body) = p.chat(inst, &key, "fake-gpt").await;
        assert_eq!(s, 200, "call {i} failed while Redis was down: {body}");
    }
    let (_, ready) = p.get(&p.a, "/health/readiness", MASTER).await;
    assert_eq!(
        ready["cluster"]["counters"], "in_process_fallback",
        "{ready}"
    );
    // Restarted (empty): shared again within 5 s.
    redis.restart();
    let back = Instant::now();
    p.wait_joined(true, Duration::from_secs(5)).await;
    assert!(back.elapsed() < Duration::from_secs(5));
    let (_, key) = p.team_key(json!({"rpm_limit": 10})).await;
    let mut admitted = 0;
    for i in 0..20 {
        let inst = if i % 2 == 0 { &p.a } else { &p.b };
        if p.chat(inst, &key, "fake-gpt").await.0 == 200 {
            admitted += 1;
        }
    }
    assert!(
        (10..=11).contains(&admitted),
        "after Redis came back, rpm_limit 10 admitted {admitted}"
    );
    p.shutdown().await;
}

/// A TCP forwarder to PostgreSQL that the test can cut (connections reset, new ones refused:
/// the port is closed) and restore on the same port; the database "goes away" for the gateway
/// only.
struct Cuttable {
    port: u16,
    target: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Cuttable {
    async fn start(target: String) -> Cuttable {
        let port = free_port();
        let c = Cuttable {
            port,
            target,
            tasks: Default::default(),
        };
        c.restore().await;
        c
    }

    async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("forwarder port");
        let (target, tasks) = (self.target.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tasks.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    async fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        // Let the aborted tasks drop their sockets (and the listener its port).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL unreachable: management writes answer 503 and change nothing, calls with cached
/// keys go on, and their spend is written once the database is back — nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_serves_cached_keys_and_loses_no_spend() {
    if !postgres_available().await {
        return;
    }
    let url = reqwest::Url::parse(&pg_url()).unwrap();
    let target = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    );
    let proxy = Cuttable::start(target.clone()).await;
    let schema = format!("c_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await
        .unwrap();
    let through = pg_url().replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1);
    let sep = if through.contains('?') { '&' } else { '?' };
    let db_url = format!("{through}{sep}options[search_path]={schema}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, cluster_config()).unwrap();
    let inst = start_instance(&config, &db_url, None);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{}/health/readiness", inst.base))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |path: &str, key: &str, body: Value| {
        let (client, url, key) = (
            client.clone(),
            format!("{}{path}", inst.base),
            key.to_string(),
        );
        async move {
            let r = client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let post = |path: &'static str, body: Value| send(path, MASTER, body);
    let call = |key: String| {
        send(
            "/v1/chat/completions",
            &key,
            json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    let (s, t) = post("/team/new", json!({"team_id": "outage"})).await;
    assert_eq!(s, 200, "{t}");
    let (s, k) = post("/key/generate", json!({"team_id": "outage"})).await;
    assert_eq!(s, 200, "{k}");
    let key = k["key"].as_str().unwrap().to_string();
    let (s, first) = call(key.clone()).await;
    assert_eq!(s, 200, "{first}");
    let per_call = cost_of(&first);

    proxy.cut().await;
    let (s, body) = post("/team/new", json!({"team_id": "during-outage"})).await;
    assert_eq!(s, 503, "management write with the database down: {body}");
    assert!(body.to_string().contains("Database unavailable"), "{body}");
    for i in 0..5 {
        let (s, body) = call(key.clone()).await;
        assert_eq!(
            s, 200,
            "cached key refused during the outage (call {i}): {body}"
        );
    }
    let (s, _) = client
        .get(format!("{}/health/readiness", inst.base))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(s, 503, "readiness reports the database down");

    proxy.restore().await;
    // Every answered call's spend reaches the database once it is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT COUNT(*) FROM {schema}.spend_logs), (SELECT spend FROM {schema}.teams WHERE team_id = 'outage')"
        )))
        .fetch_optional(&mut c)
        .await
        .unwrap();
        if let Some((n, spend)) = rows
            && n == 6
        {
            let expected = (per_call * 6.0 * 1e9).round() as i64;
            assert_eq!(spend, expected, "team spend after the outage");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spend not written after the outage: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, body) = post("/team/new", json!({"team_id": "after-outage"})).await;
    assert_eq!(s, 200, "writes work again: {body}");
    let none: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT team_id FROM {schema}.teams WHERE team_id = 'during-outage'"
    )))
    .fetch_optional(&mut c)
    .await
    .unwrap();
    assert!(none.is_none(), "the refused write changed nothing");
    drop(inst);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut c)
        .await;
}
