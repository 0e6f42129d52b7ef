//! Spend durability and the request path's faults: the bounded spend queue (backpressure), the
//! write gate against resets, one lock order for the writer and deletes, spend that follows a
//! regenerated key, upstreams that fail mid-body, streams past their deadline, refused
//! deployment picks, and the final write at shutdown. Each scenario stalls or races the real
//! writer against the real database (a lock held on a second connection) instead of sleeping
//! and hoping.

use std::time::{Duration, Instant};

use purser::on_conn;
use purser::service::resets::{Table, reset_row};
use purser::service::spend::SpendScope;
use purser::store::Db;
use purser_core::keys::hash_key;
use purser_core::money::cost_of;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_backends;
use crate::helpers::{Backend, MASTER, TestApp, assert_proxy_error, pg_url};
use crate::mock_upstream::MockUpstream;

const IN: i64 = 1_000_000; // pico-USD per token ($0.000001)
const OUT: i64 = 2_000_000;

/// The `ok` upstream's answer: prompt 9, completion 6 tokens.
fn ok_cost() -> i64 {
    cost_of(9, 6, IN, OUT).0
}

fn config(m: &MockUpstream, extra: &str) -> String {
    let model = |name: &str, mode: &str, more: &str| {
        format!(
            "  - model_name: {name}\n    litellm_params:\n      model: openai/upstream-model\n      \
             api_base: {}\n      api_key: sk-upstream\n      input_cost_per_token: 0.000001\n      \
             output_cost_per_token: 0.000002\n{more}",
            m.base(mode)
        )
    };
    format!(
        "model_list:\n{}{}{}{}{}{}{}  - model_name: fake-gpt\n    litellm_params:\n      model: openai/fake-gpt\n      \
         mock_response: \"hello from the mock\"\n      input_cost_per_token: 0.000001\n      \
         output_cost_per_token: 0.000002\ngeneral_settings:\n  master_key: sk-1234\n  \
         proxy_batch_write_at: 60\n{extra}",
        model("gpt-ok", "ok", ""),
        model("gpt-cut", "cut", ""),
        model("gpt-notjson", "notjson", ""),
        model(
            "gpt-endless",
            "endless",
            "      timeout: 1\n      stream_timeout: 5\n"
        ),
        model(
            "gpt-flood",
            "flood",
            "      timeout: 1\n      stream_timeout: 5\n"
        ),
        model("gpt-long", "long", ""),
        model("gpt-one", "ok", "      rpm: 1\n"),
    )
}

async fn setup(b: Backend, extra: &str) -> (TestApp, MockUpstream) {
    let m = MockUpstream::start().await;
    let app = TestApp::spawn_with(b, &config(&m, extra)).await;
    (app, m)
}

/// Team `t` (optionally with more fields), user `u` on it, and a key of `u` in `t` with `key`.
async fn team_key(app: &TestApp, t: &str, u: &str, team: Value, key: Value) -> String {
    let mut body = json!({"team_id": t});
    merge(&mut body, team);
    let (s, b) = app.post("/team/new", MASTER, body).await;
    assert_eq!(s, 200, "team/new: {b}");
    let (s, b) = app
        .post("/user/new", MASTER, json!({"user_id": u, "teams": [t]}))
        .await;
    assert_eq!(s, 200, "user/new: {b}");
    let mut body = json!({"team_id": t, "user_id": u});
    merge(&mut body, key);
    let (s, b) = app.post("/key/generate", MASTER, body).await;
    assert_eq!(s, 200, "key/generate: {b}");
    b["key"].as_str().unwrap().to_string()
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

async fn chat(app: &TestApp, key: &str, model: &str) -> (reqwest::StatusCode, Value) {
    app.post(
        "/v1/chat/completions",
        key,
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

async fn key_spend(db: &Db, token: &str) -> i64 {
    let mut h = db.conn().await.unwrap();
    let v: Option<(i64,)> = on_conn!(h, c => sqlx::query_as(
        "SELECT spend FROM verification_tokens WHERE token = $1")
        .bind(token).fetch_optional(c).await)
    .unwrap();
    v.map(|r| r.0).unwrap_or(-1)
}

async fn team_spend(db: &Db, team: &str) -> i64 {
    let mut h = db.conn().await.unwrap();
    let v: (i64,) = on_conn!(h, c => sqlx::query_as("SELECT spend FROM teams WHERE team_id = $1")
        .bind(team).fetch_one(c).await)
    .unwrap();
    v.0
}

/// (sum of spend, rows) of the spend logs of the given key hashes.
async fn logs_of(db: &Db, tokens: &[&str]) -> (i64, i64) {
    let mut sum = 0;
    let mut rows = 0;
    for t in tokens {
        let mut h = db.conn().await.unwrap();
        let v: (i64, i64) = on_conn!(h, c => sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(spend), 0) AS BIGINT), COUNT(*) FROM spend_logs WHERE api_key = $1")
            .bind(*t).fetch_one(c).await).unwrap();
        sum += v.0;
        rows += v.1;
    }
    (sum, rows)
}

async fn log_statuses(db: &Db, token: &str) -> Vec<(String, i64)> {
    let mut h = db.conn().await.unwrap();
    on_conn!(h, c => sqlx::query_as(
        "SELECT status, spend FROM spend_logs WHERE api_key = $1 ORDER BY start_time")
        .bind(token).fetch_all(c).await)
    .unwrap()
}

/// A second connection holding a lock that stalls the spend writer: the team row
/// (`FOR UPDATE`, PostgreSQL) or the database write lock (SQLite).
enum Stall {
    Pg(sqlx::PgConnection),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl Stall {
    async fn team_row(app: &TestApp, team: &str) -> Stall {
        match &app.state.db {
            Db::Postgres(_) => {
                let mut c = pg_conn(app).await;
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("SELECT team_id FROM teams WHERE team_id = $1 FOR UPDATE")
                    .bind(team)
                    .execute(&mut c)
                    .await
                    .unwrap();
                Stall::Pg(c)
            }
            Db::Sqlite(pool) => Stall::sqlite(pool).await,
        }
    }

    async fn spend_logs(app: &TestApp) -> Stall {
        match &app.state.db {
            Db::Postgres(_) => {
                let mut c = pg_conn(app).await;
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("LOCK TABLE spend_logs IN EXCLUSIVE MODE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Stall::Pg(c)
            }
            Db::Sqlite(pool) => Stall::sqlite(pool).await,
        }
    }

    async fn sqlite(pool: &sqlx::SqlitePool) -> Stall {
        let mut c = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *c)
            .await
            .unwrap();
        Stall::Sqlite(c)
    }

    /// Runs a statement inside the stalling transaction.
    async fn exec(&mut self, sql: &'static str, arg: &str) -> Result<u64, sqlx::Error> {
        match self {
            Stall::Pg(c) => sqlx::query(sql)
                .bind(arg)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()),
            Stall::Sqlite(c) => sqlx::query(sql)
                .bind(arg)
                .execute(&mut **c)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    async fn release(self) {
        match self {
            Stall::Pg(mut c) => {
                sqlx::query("COMMIT").execute(&mut c).await.unwrap();
                let _ = c.close().await;
            }
            Stall::Sqlite(mut c) => {
                sqlx::query("COMMIT").execute(&mut *c).await.unwrap();
            }
        }
    }
}

async fn pg_conn(app: &TestApp) -> sqlx::PgConnection {
    let mut c = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    let schema: (String,) = {
        let Db::Postgres(pool) = &app.state.db else {
            unreachable!()
        };
        sqlx::query_as("SELECT current_schema()")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET search_path TO {}",
        schema.0
    )))
    .execute(&mut c)
    .await
    .unwrap();
    c
}

/// A reset that lands while the writer holds a chunk it has taken but not yet written must not
/// let that chunk add the old period's cost back (before: the key ended the reset at 2 calls'
/// cost; now at 0, while the team — not reset — keeps both).
async fn reset_waits_for_the_chunk_being_written(b: Backend) {
    let (app, _m) = setup(b, "").await;
    let key = team_key(
        &app,
        "t1",
        "u1",
        json!({}),
        json!({"budget_duration": "1d", "max_budget": 1.0}),
    )
    .await;
    let token = hash_key(&key);
    for _ in 0..2 {
        assert_eq!(chat(&app, &key, "gpt-ok").await.0, 200);
    }
    assert_eq!(app.state.ledger.queued(), 2);
    let stall = Stall::team_row(&app, "t1").await;
    let writer = {
        let (l, db) = (app.state.ledger.clone(), app.state.db.clone());
        tokio::spawn(async move { l.flush(&db).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.state.ledger.queued(), 0, "the writer took the chunk");
    let old: (Option<chrono::DateTime<chrono::Utc>>,) = {
        let mut h = app.reopen_db().await.conn().await.unwrap();
        on_conn!(h, c => sqlx::query_as("SELECT budget_reset_at FROM verification_tokens WHERE token = $1")
            .bind(&token).fetch_one(c).await)
        .unwrap()
    };
    let old = old.0.expect("budget_reset_at set at creation");
    let reset = {
        let (state, token) = (app.state.clone(), token.clone());
        tokio::spawn(async move {
            reset_row(
                &state,
                Table::Keys,
                &token,
                "1d",
                old,
                old + chrono::Duration::days(1),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stall.release().await;
    writer.await.unwrap().unwrap();
    reset.await.unwrap().unwrap();
    let db = &app.state.db;
    assert_eq!(key_spend(db, &token).await, 0, "reset after the chunk");
    assert_eq!(team_spend(db, "t1").await, 2 * ok_cost());
    assert_eq!(logs_of(db, &[&token]).await, (2 * ok_cost(), 2));
    assert_eq!(app.state.ledger.spend(&SpendScope::Key(token)), Some(0));
    app.shutdown().await;
}

/// The writer locks teams before keys, as team and member deletion do: a delete holding the
/// team row while it removes the team's keys never deadlocks with a chunk charging both
/// (before: PostgreSQL aborted one of them with a deadlock error).
async fn writer_and_team_delete_lock_in_one_order(b: Backend) {
    let (app, _m) = setup(b, "").await;
    let key = team_key(&app, "t1", "u1", json!({}), json!({})).await;
    assert_eq!(chat(&app, &key, "gpt-ok").await.0, 200);
    let mut stall = Stall::team_row(&app, "t1").await;
    let writer = {
        let (l, db) = (app.state.ledger.clone(), app.state.db.clone());
        tokio::spawn(async move { l.flush(&db).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleted = tokio::time::timeout(
        Duration::from_secs(20),
        stall.exec("DELETE FROM verification_tokens WHERE team_id = $1", "t1"),
    )
    .await
    .expect("the delete is not blocked by the writer");
    assert_eq!(deleted.expect("no deadlock"), 1);
    stall.release().await;
    writer.await.unwrap().expect("the writer's chunk commits");
    assert_eq!(team_spend(&app.state.db, "t1").await, ok_cost());
    app.shutdown().await;
}

/// `/key/regenerate` by the key itself must not shed unwritten spend: the budget it used up
/// stays used (before: the new token started from the database value, 0).
async fn regenerated_key_keeps_its_spend(b: Backend) {
    let (app, _m) = setup(b, "").await;
    let budget = 2.0 * ok_cost() as f64 / 1e9;
    let key = team_key(&app, "t1", "u1", json!({}), json!({"max_budget": budget})).await;
    for _ in 0..2 {
        assert_eq!(chat(&app, &key, "gpt-ok").await.0, 200);
    }
    let (s, body) = chat(&app, &key, "gpt-ok").await;
    assert_proxy_error(&body, s.as_u16(), "budget_exceeded");
    let (s, r) = app.post("/key/regenerate", &key, json!({"key": key})).await;
    assert_eq!(s, 200, "{r}");
    let new_key = r["key"].as_str().unwrap().to_string();
    assert_eq!(chat(&app, &key, "gpt-ok").await.0, 401, "old key is dead");
    let (s, body) = chat(&app, &new_key, "gpt-ok").await;
    assert_proxy_error(&body, s.as_u16(), "budget_exceeded");
    app.state.ledger.flush(&app.state.db).await.unwrap();
    let (old_t, new_t) = (hash_key(&key), hash_key(&new_key));
    assert_eq!(key_spend(&app.state.db, &new_t).await, 2 * ok_cost());
    assert_eq!(
        logs_of(&app.state.db, &[&old_t, &new_t]).await,
        (2 * ok_cost(), 2)
    );
    app.shutdown().await;
}

/// An upstream that answers 200 and then breaks mid-body, or sends a body that is not JSON,
/// still did work: the call is billed (counted prompt + text received) and logged as a
/// failure (before: nothing was billed and no row was written).
async fn broken_answers_are_billed_and_logged(b: Backend) {
    let (app, _m) = setup(b, "").await;
    let key = team_key(&app, "t1", "u1", json!({}), json!({})).await;
    let token = hash_key(&key);
    for model in ["gpt-cut", "gpt-notjson"] {
        let (s, body) = chat(&app, &key, model).await;
        assert_proxy_error(&body, 502, "");
        assert_eq!(s, 502);
    }
    app.state.ledger.flush(&app.state.db).await.unwrap();
    let rows = log_statuses(&app.state.db, &token).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (status, spend) in &rows {
        assert_eq!(status, "failure");
        assert!(*spend > 0, "{rows:?}");
    }
    let sum: i64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(key_spend(&app.state.db, &token).await, sum);
    assert_eq!(team_spend(&app.state.db, "t1").await, sum);
    assert_eq!(app.state.ledger.in_flight(), 0);
    app.shutdown().await;
}

/// A stream that never ends is cut at the deployment's `timeout` and billed for what it
/// produced, even though chunks keep arriving well within `stream_timeout`.
async fn endless_stream_ends_at_its_deadline(b: Backend) {
    let (app, _m) = setup(b, "").await;
    let key = team_key(&app, "t1", "u1", json!({}), json!({})).await;
    let started = Instant::now();
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-endless", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .expect("the stream ends by itself");
    assert!(started.elapsed() < Duration::from_secs(8));
    wait_until(|| app.state.ledger.in_flight() == 0).await;
    app.state.ledger.flush(&app.state.db).await.unwrap();
    let rows = log_statuses(&app.state.db, &hash_key(&key)).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "partial");
    assert!(rows[0].1 > 0);
    app.shutdown().await;
}

/// A client that stops reading a stream (but keeps the connection) no longer holds the
/// reservation, the deployment slot and the upstream connection forever: the deadline
/// releases them and bills what was produced (before: in flight until the client left).
async fn stalled_reader_is_released_at_the_deadline(b: Backend) {
    let (app, m) = setup(b, "").await;
    let key = team_key(&app, "t1", "u1", json!({}), json!({})).await;
    let body = json!({"model": "gpt-flood", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = sock.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // ... and never read again, keeping the socket open.
    wait_until(|| app.state.ledger.in_flight() == 0).await;
    let sent = m
        .seen
        .long_chunks_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        m.seen
            .long_chunks_sent
            .load(std::sync::atomic::Ordering::SeqCst),
        sent,
        "the upstream stream was dropped"
    );
    app.state.ledger.flush(&app.state.db).await.unwrap();
    let rows = log_statuses(&app.state.db, &hash_key(&key)).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "partial");
    assert!(rows[0].1 > 0);
    drop(sock);
    app.shutdown().await;
}

/// A call no deployment could take (deployment at its rpm) gives back the request it counted
/// on the key's RPM (before: the refused pick burned it and the next call got a 429).
async fn refused_pick_does_not_burn_rpm(b: Backend) {
    let (app, _m) = setup(b, "").await;
    let key = team_key(&app, "t1", "u1", json!({}), json!({"rpm_limit": 2})).await;
    assert_eq!(chat(&app, &key, "gpt-one").await.0, 200);
    let (s, body) = chat(&app, &key, "gpt-one").await;
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert_eq!(s, 429);
    assert!(msg.contains("No deployments available"), "{msg}");
    assert_eq!(chat(&app, &key, "gpt-ok").await.0, 200, "one RPM left");
    let (s, body) = chat(&app, &key, "gpt-ok").await;
    let msg = assert_proxy_error(&body, 429, "rate_limit_error");
    assert_eq!(s, 429);
    assert!(msg.contains("api_key"), "{msg}");
    app.shutdown().await;
}

/// With the writer stalled, the queue of unwritten calls stops at its capacity: new calls wait
/// (backpressure) instead of growing memory, and go on once the writer catches up; every
/// answered call's spend is then on disk.
async fn full_queue_makes_new_calls_wait(b: Backend) {
    let (app, _m) = setup(
        b,
        "  spend_queue_capacity: 4\n  spend_write_chunk_rows: 2\n",
    )
    .await;
    let stall = Stall::spend_logs(&app).await;
    let mut answered = 0;
    let mut blocked = None;
    for i in 0..12 {
        let app_state = app.state.clone();
        let (client, url) = (app.client.clone(), app.url("/v1/chat/completions"));
        let call = tokio::spawn(async move {
            let _keep = app_state;
            client
                .post(url)
                .bearer_auth(MASTER)
                .json(&json!({"model": "fake-gpt", "messages": [{"role": "user", "content": format!("hi {i}")}]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if call.is_finished() {
            assert_eq!(call.await.unwrap().unwrap(), 200);
            answered += 1;
        } else {
            blocked = Some(call);
            break;
        }
    }
    let blocked = blocked.expect("a call waited for queue room");
    assert!(
        answered <= 4,
        "the capacity (4) counts the chunk in the writer's hands: {answered}"
    );
    assert!(app.state.ledger.queued() <= 4);
    assert!(
        app.state
            .ledger
            .stats
            .backpressure_waits
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let (_, ready) = app.get_anon("/health/readiness").await;
    assert!(
        ready["spend_writer"]["backpressure_waits"].as_u64() >= Some(1),
        "{ready}"
    );
    assert_eq!(ready["spend_writer"]["capacity"], 4);
    stall.release().await;
    let status = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("the waiting call goes on")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    app.state.ledger.flush(&app.state.db).await.unwrap();
    let (_, rows) = logs_of(&app.state.db, &["litellm_proxy_master_key"]).await;
    assert_eq!(rows, answered + 1);
    app.shutdown().await;
}

/// SIGTERM semantics: the final write happens after the server stopped and every stream still
/// running settled — its spend is on disk when the server returns.
async fn shutdown_writes_streams_that_were_still_running(b: Backend) {
    let (mut app, _m) = setup(b, "").await;
    let key = team_key(&app, "t1", "u1", json!({}), json!({})).await;
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-long", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reader = tokio::spawn(async move { r.bytes().await.map(|b| b.len()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop_server().await;
    assert!(reader.await.unwrap().unwrap() > 0);
    let db = app.reopen_db().await;
    let rows = log_statuses(&db, &hash_key(&key)).await;
    // `long` ends without usage or [DONE]: billed from the counted text, logged as partial.
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "partial");
    assert!(rows[0].1 > 0);
    assert_eq!(key_spend(&db, &hash_key(&key)).await, rows[0].1);
    db.close().await;
    app.shutdown().await;
}

/// The writer runs on its own thread below request handling's priority, and on SQLite the
/// connection's worker thread (spawned from it) inherits that priority.
async fn writer_threads_run_below_request_priority(b: Backend) {
    // The writer's connection is made by its first write: let it come soon.
    let (app, _m) = setup(b, "  spend_write_chunk_rows: 1\n").await;
    let (status, _) = chat(&app, MASTER, "fake-gpt").await;
    assert_eq!(status, 200);
    let ledger = app.state.ledger.clone();
    wait_until(|| {
        ledger
            .stats
            .rows_written
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    // Other tests' gateways run in this process too: every writer thread must be lowered.
    let mut seen = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (name, rest) = stat.rsplit_once(')').unwrap();
        let name = name.split_once('(').unwrap().1.to_string();
        if !name.starts_with("purser-spend") {
            continue;
        }
        // Fields after the name start at field 3 (state); nice is field 19.
        let nice: i32 = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
        seen.push((name, nice));
    }
    assert!(seen.iter().any(|(n, _)| n == "purser-spend"), "{seen:?}");
    if b == Backend::Sqlite {
        assert!(
            seen.iter().any(|(n, _)| n.starts_with("purser-spendw")),
            "{seen:?}"
        );
    }
    assert!(seen.iter().all(|(_, nice)| *nice == 5), "{seen:?}");
    app.shutdown().await;
}

async fn wait_until(f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

both_backends!(
    reset_waits_for_the_chunk_being_written,
    writer_and_team_delete_lock_in_one_order,
    regenerated_key_keeps_its_spend,
    broken_answers_are_billed_and_logged,
    endless_stream_ends_at_its_deadline,
    stalled_reader_is_released_at_the_deadline,
    refused_pick_does_not_burn_rpm,
    full_queue_makes_new_calls_wait,
    shutdown_writes_streams_that_were_still_running,
    writer_threads_run_below_request_priority,
);
