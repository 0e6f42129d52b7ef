//! Test harness: `TestApp` spawns a gateway on 127.0.0.1:0 backed by a fresh SQLite file or a
//! fresh PostgreSQL schema, and offers small HTTP helpers. `both_backends!` runs a scenario
//! `async fn(Backend)` once per backend.

#![allow(dead_code)]

use std::net::SocketAddr;

use purser::app::{AppState, Gateway, Settings};
use purser::cli::ServeArgs;
use purser::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

pub const MASTER: &str = "sk-1234";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod <scenario> { sqlite, postgres }` tests calling `scenario(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::helpers::postgres_available().await {
                        super::$name($crate::helpers::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

/// Minimal config: one mock model, master key `sk-1234`.
pub const DEFAULT_CONFIG: &str = r#"
model_list:
  - model_name: fake-gpt
    litellm_params:
      model: openai/fake-gpt
      mock_response: "hello from the mock"
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
general_settings:
  master_key: sk-1234
  proxy_batch_write_at: 0.2
"#;

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn pg_url() -> String {
    std::env::var("PURSER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// True when PostgreSQL answers. In CI (`CI=true`) an unreachable server fails the test
/// instead of skipping it.
pub async fn postgres_available() -> bool {
    match sqlx::PgConnection::connect(&pg_url()).await {
        Ok(c) => {
            let _ = c.close().await;
            true
        }
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL is required in CI: {e}");
            }
            eprintln!("skipping PostgreSQL variant: {e}");
            false
        }
    }
}

/// With `PURSER_TEST_REDIS_BACKEND=1` every test gateway shares its counters through the Redis
/// at `PURSER_TEST_REDIS_URL` (keys prefixed by the test's own database, so tests never meet).
pub fn redis_backend() -> Option<String> {
    std::env::var("PURSER_TEST_REDIS_BACKEND")
        .is_ok_and(|v| v == "1")
        .then(|| {
            std::env::var("PURSER_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
        })
}

pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    pub backend: Backend,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pg_schema: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, DEFAULT_CONFIG).await
    }

    /// Spawns a gateway with the given config YAML (its `database_url` is replaced).
    pub async fn spawn_with(backend: Backend, yaml: &str) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::parse(yaml, "test.yaml").expect("test config");
        let (db_url, pg_schema) = match backend {
            Backend::Sqlite => (dir.path().join("purser.db").display().to_string(), None),
            Backend::Postgres => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut c = sqlx::PgConnection::connect(&pg_url())
                    .await
                    .expect("postgres");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut c)
                    .await
                    .expect("schema");
                let _ = c.close().await;
                (pg_url(), Some(schema))
            }
        };
        let args = ServeArgs {
            config: "test.yaml".into(),
            host: "127.0.0.1".into(),
            port: 0,
            database_url: Some(db_url),
            redis_url: redis_backend(),
            master_key: None,
            log_json: false,
            timeouts: Default::default(),
        };
        let settings = Settings::resolve(&config, &args, "test.yaml").expect("settings");
        let gateway = Gateway::build(config, settings, pg_schema.as_deref())
            .await
            .expect("gateway");
        let state = gateway.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(gateway.serve(listener));
        TestApp {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::new(),
            state,
            backend,
            server: Some(server),
            pg_schema,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST JSON with a bearer key; returns status and parsed body (`Value::Null` if not JSON).
    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request");
        read(r).await
    }

    /// POST `body` as JSON with `key` as the Bearer key; the response as it came (streams,
    /// headers).
    pub async fn call(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POST raw bytes (hostile input).
    pub async fn post_raw(
        &self,
        path: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        // A fresh, unpooled connection: after rejecting a body (413) the server may close the
        // connection, which must not break the next request on a pooled one.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let r = client
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        read(r).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .patch(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request");
        read(r).await
    }

    /// A key made by the master key with `body` as its `/key/generate` request.
    pub async fn key_with(&self, body: Value) -> String {
        let (s, b) = self.post("/key/generate", MASTER, body).await;
        assert_eq!(s, 200, "{b}");
        b["key"].as_str().unwrap().to_string()
    }

    /// The rows of `/spend/logs` once it holds at least `n` (waiting up to 5 s for the spend
    /// writer); whatever it holds then otherwise.
    pub async fn spend_logs_at_least(&self, n: usize) -> Vec<Value> {
        let mut logs = Vec::new();
        for _ in 0..100 {
            logs = match self.get("/spend/logs", MASTER).await.1 {
                Value::Array(rows) => rows,
                _ => Vec::new(),
            };
            if logs.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        logs
    }

    /// Waits (up to 5 s) until the spend writer has booked the key's spend, then asserts it is
    /// exactly `expected` USD (to the nano-dollar).
    pub async fn expect_key_spend(&self, key: &str, expected: f64) {
        for _ in 0..100 {
            let (_, b) = self.get(&format!("/key/info?key={key}"), MASTER).await;
            let spend = b["info"]["spend"].as_f64().unwrap_or(0.0);
            if spend >= expected * 0.999 {
                assert!((spend - expected).abs() < 1e-12, "{spend} vs {expected}");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the key's spend never reached {expected}");
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        read(r).await
    }

    /// GET without any credential.
    pub async fn get_anon(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        read(r).await
    }

    /// Creates a user with the master key and returns a fresh key of that user (`/key/generate`).
    pub async fn user_with_key(&self, user_id: &str, role: &str) -> String {
        let (s, b) = self
            .post(
                "/user/new",
                MASTER,
                serde_json::json!({"user_id": user_id, "user_role": role}),
            )
            .await;
        assert_eq!(s, 200, "user/new: {b}");
        b["key"].as_str().expect("key in /user/new").to_string()
    }

    /// Stops the server gracefully and waits for it (final spend write included), keeping the
    /// database for inspection through [`TestApp::reopen_db`].
    pub async fn stop_server(&mut self) {
        self.state.shutdown.cancel();
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }

    /// A new pool on this test's database (the server's pool is closed after it stopped).
    pub async fn reopen_db(&self) -> purser::store::Db {
        let url = match self.backend {
            Backend::Sqlite => self._dir.path().join("purser.db").display().to_string(),
            Backend::Postgres => pg_url(),
        };
        purser::store::Db::connect(
            &purser::store::DbUrl::parse(&url),
            self.pg_schema.as_deref(),
        )
        .await
        .expect("reopen database")
    }

    /// Stops the server (graceful) and drops the PostgreSQL schema.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        if let Some(schema) = self.pg_schema.take()
            && let Ok(mut c) = sqlx::PgConnection::connect(&pg_url()).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
        }
    }
}

async fn read(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the OpenAI-style error shape and returns its message.
#[track_caller]
pub fn assert_proxy_error(body: &Value, status: u16, kind: &str) -> String {
    let e = &body["error"];
    assert!(e.is_object(), "expected an OpenAI-style error, got {body}");
    assert_eq!(
        e["code"],
        Value::String(status.to_string()),
        "code in {body}"
    );
    if !kind.is_empty() {
        assert_eq!(e["type"], kind, "type in {body}");
    }
    e["message"].as_str().expect("message").to_string()
}

/// Asserts the FastAPI `{"detail": …}` shape and returns the detail.
#[track_caller]
pub fn assert_detail(body: &Value) -> Value {
    assert!(
        body.get("detail").is_some(),
        "expected a detail error, got {body}"
    );
    body["detail"].clone()
}
