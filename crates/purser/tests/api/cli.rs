//! The real `purser` binary: starts on the quickstart config with embedded SQLite, answers health
//! and management calls, shuts down gracefully on SIGTERM, and refuses bad configs with a message
//! naming the file and the key.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::free_port;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_purser")
}

fn quickstart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.yaml")
}

/// `purser serve` on the quickstart config, in `dir`, on 127.0.0.1:`port`, with no database or
/// master key from the environment.
fn quickstart_serve(dir: &std::path::Path, port: u16) -> Command {
    let mut c = Command::new(bin());
    c.args(["serve", "--config"])
        .arg(quickstart())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("LITELLM_MASTER_KEY")
        .env_remove("PURSER_MASTER_KEY");
    c
}

/// Waits (30 s at most) until the gateway at `base` answers its liveness probe.
async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/health/liveliness")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn quickstart_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = quickstart_serve(dir.path(), port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    // The walkthrough's first management call works with the quickstart's master key.
    let r = client
        .post(format!("{base}/user/new"))
        .bearer_auth("sk-1234")
        .json(&json!({"user_id": "walkthrough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["key"].as_str().unwrap().starts_with("sk-"));
    assert!(
        dir.path().join("purser.db").exists(),
        "SQLite file created in the working directory"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        !stderr.contains("sk-1234"),
        "the master key must never be logged"
    );
}

/// At trace level, a request URI carrying a raw virtual key is logged with the key redacted.
#[tokio::test]
async fn raw_keys_never_reach_the_log_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = quickstart_serve(dir.path(), port)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let r = client
        .post(format!("{base}/key/generate"))
        .bearer_auth("sk-1234")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let raw = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/key/info?key={raw}"),
        format!("/key/{raw}/regenerate"),
    ] {
        let r = client
            .request(
                if path.contains("regenerate") {
                    reqwest::Method::POST
                } else {
                    reqwest::Method::GET
                },
                format!("{base}{path}"),
            )
            .bearer_auth("sk-1234")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("sk-***"), "the URIs were logged, redacted");
    assert!(!log.contains(&raw), "a raw key reached the log");
    assert!(!log.contains(&raw[3..]), "a raw key's body reached the log");
    assert!(
        !log.contains("sk-1234"),
        "the master key must never be logged"
    );
}

#[test]
fn bad_config_exits_non_zero_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broken.yaml");
    std::fs::write(&cfg, "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      rpm: lots\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml") && err.contains("rpm"), "{err}");

    std::fs::write(&cfg, "general_settings:\n  database_url: x.db\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("LITELLM_MASTER_KEY")
        .env_remove("PURSER_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master_key"), "{err}");

    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[test]
fn help_documents_the_command_line() {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--config",
        "--host",
        "--port",
        "DATABASE_URL",
        "REDIS_URL",
        "PURSER_MASTER_KEY",
    ] {
        assert!(help.contains(needle), "help lacks {needle}: {help}");
    }
}
