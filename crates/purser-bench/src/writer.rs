//! `purser-bench writer`: the spend writer's rate. Settles N calls in the real ledger (keys,
//! teams, members and users spread like a busy organisation), then times `Ledger::flush` —
//! the chunked transactions of multi-row spend-log INSERTs and per-scope increments — on a
//! fresh SQLite file or a fresh PostgreSQL schema. Writes `bench/reports/spend-writer.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use purser::clock;
use purser::service::spend::{BudgetCheck, Ledger, LedgerLimits, SpendScope};
use purser::store::spend::SpendLogRow;
use purser::store::{Db, DbUrl};
use sqlx::Connection;
use sqlx::types::Json;

#[derive(Debug, clap::Args)]
pub struct WriterArgs {
    /// Settled calls written per run.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Runs per backend (min / median / max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Settled calls per write transaction (the gateway's `spend_write_chunk_rows`).
    #[arg(long, default_value_t = LedgerLimits::default().chunk_rows)]
    chunk_rows: usize,
    /// Distinct keys the calls are spread over (users = keys / 2, teams = keys / 20, at least 1).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// PostgreSQL URL to measure as well (a schema is created and dropped).
    #[arg(long)]
    postgres: Option<String>,
    /// Report folder.
    #[arg(long, default_value = "bench/reports")]
    out: PathBuf,
}

fn log_row(team: &str, user: &str, key: &str) -> SpendLogRow {
    let now = chrono::Utc::now();
    SpendLogRow {
        request_id: purser::store::spend::new_request_id(),
        call_type: "acompletion".into(),
        api_key: key.to_string(),
        spend: 35_000,
        total_tokens: 22,
        prompt_tokens: 9,
        completion_tokens: 13,
        start_time: now,
        end_time: now,
        model: "gpt-4o-mini".into(),
        model_id: Some("deployment-1".into()),
        model_group: Some("gpt-4o-mini".into()),
        custom_llm_provider: Some("openai".into()),
        api_base: None,
        user_id: Some(user.to_string()),
        team_id: Some(team.to_string()),
        end_user: None,
        status: "success".into(),
        metadata: Json(
            serde_json::json!({"user_api_key_alias": "bench", "requested_model": "gpt-4o-mini"}),
        ),
    }
}

/// One run: settle `rows` calls, then time the flush. Returns rows per second.
async fn run_once(db: &Db, rows: usize, chunk_rows: usize, keys: usize) -> anyhow::Result<f64> {
    let (users, teams) = ((keys / 2).max(1), (keys / 20).max(1));
    let ledger = Arc::new(Ledger::new(
        LedgerLimits {
            capacity: rows + 1,
            chunk_rows,
        },
        clock::system(),
    ));
    for i in 0..rows {
        let (team, user, key) = (
            format!("team-{}", i % teams),
            format!("user-{}", i % users),
            format!("key-{}", i % keys.max(1)),
        );
        let checks = [
            BudgetCheck {
                scope: SpendScope::Team(team.clone()),
                seed: 0,
                max: None,
            },
            BudgetCheck {
                scope: SpendScope::Key(key.clone()),
                seed: 0,
                max: None,
            },
            BudgetCheck {
                scope: SpendScope::Member {
                    team_id: team.clone(),
                    user_id: user.clone(),
                },
                seed: 0,
                max: None,
            },
            BudgetCheck {
                scope: SpendScope::User(user.clone()),
                seed: 0,
                max: None,
            },
        ];
        let r = ledger
            .reserve(&checks, 0, false)
            .map_err(|o| anyhow::anyhow!("{o:?}"))?;
        r.settle(35_000, log_row(&team, &user, &key));
    }
    let started = Instant::now();
    ledger.flush(db).await.context("flush")?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(ledger.queued() == 0, "queue not empty after flush");
    Ok(rows as f64 / secs)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub async fn run(a: WriterArgs) -> anyhow::Result<()> {
    let mut table = Vec::new();
    let dir = tempfile::tempdir()?;
    let mut sqlite_runs = Vec::new();
    for run in 0..a.runs {
        let path = dir.path().join(format!("writer-{run}.db"));
        let url = DbUrl::parse(&path.display().to_string());
        let main = Db::connect(&url, None).await?;
        let db = main.connect_writer(&url, None).await?;
        sqlite_runs.push(run_once(&db, a.rows, a.chunk_rows, a.keys).await?);
        db.close().await;
        main.close().await;
    }
    table.push(("SQLite (file, WAL)", stats(sqlite_runs)));
    if let Some(url) = &a.postgres {
        let schema = format!("bench_writer_{}", std::process::id());
        let mut c = sqlx::PgConnection::connect(url).await?;
        let mut pg_runs = Vec::new();
        for _ in 0..a.runs {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&mut c)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut c)
                .await?;
            let main = Db::connect(&DbUrl::parse(url), Some(&schema)).await?;
            let db = main
                .connect_writer(&DbUrl::parse(url), Some(&schema))
                .await?;
            pg_runs.push(run_once(&db, a.rows, a.chunk_rows, a.keys).await?);
            db.close().await;
            main.close().await;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut c)
            .await?;
        table.push(("PostgreSQL (local server)", stats(pg_runs)));
    }
    let mut md = format!(
        "# Spend writer rate\n\n- Date: {}\n- Build: {}\n- Method: {} settled calls (each charged to a team, key, membership and \
         user out of {} teams, {} keys, {} users) are queued in the real ledger, then `Ledger::flush` writes them through the writer's own one-connection pool in \
         transactions of {} calls (multi-row spend-log INSERTs of {} rows, one batched increment statement per table per transaction). \
         Wall time of the flush only; {} runs per backend.\n\n| Backend | rows/s min | median | max |\n|---|---:|---:|---:|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        a.rows,
        (a.keys / 20).max(1),
        a.keys,
        (a.keys / 2).max(1),
        a.chunk_rows,
        purser::store::spend::ROWS_PER_INSERT,
        a.runs,
    );
    for (name, (min, med, max)) in &table {
        md.push_str(&format!("| {name} | {min:.0} | {med:.0} | {max:.0} |\n"));
    }
    print!("{md}");
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("spend-writer.md"), md)?;
    Ok(())
}
