//! `purser-bench`: scale data generator and HTTP benchmark of Purser's team API.
//!
//! - `seed` creates the schema through `purser::store::Db::connect` (Purser's own migrations) and
//!   bulk-inserts realistic rows with multi-row INSERTs inside one transaction per table: users
//!   with emails, teams with aliases/models/budgets, memberships spread over teams, keys owned by
//!   team members, and one big team (`bench-big-team`) with many keys and members. The data is
//!   deterministic (fixed PRNG seed) so runs are comparable.
//! - `run` starts the real gateway in-process on 127.0.0.1:0 (config built in code, master key
//!   `sk-bench`), warms up, then times sequential HTTP calls and writes a markdown report to
//!   `bench/reports/team-api-<backend>.md`. Non-2xx answers are counted and reported, never fatal,
//!   so the tool works against a build that lacks a route.
//! - `proxy` measures the latency the gateway adds on the request path (see `proxy.rs`).
//! - `writer` measures the spend writer's rate (see `writer.rs`).
//! - `process` benchmarks the release gateway binary as its own process with wrk, against a
//!   direct baseline (see `process.rs`); `mock` is its upstream (`mock.rs`) and `stream-client`
//!   its time-to-first-byte client (`stream_client.rs`).
//! - `tokens` measures what prompt counting costs: RSS per BPE encoding, µs per count
//!   (`tokens.rs`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use clap::{Parser, Subcommand};
use purser::app::{Gateway, Settings};
use purser::cli::ServeArgs;
use purser::config::Config;
use purser::store::{Db, DbUrl, Handle};
use serde_json::{Value, json};
use sqlx::types::Json;

/// The gateway runs in-process here, so the bench uses the allocator the `purser` binary ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod mock;
mod process;
mod proxy;
mod stream_client;
mod tokens;
mod writer;
mod wrk;

const MASTER_KEY: &str = "sk-bench";
const BIG_TEAM_ALIAS: &str = "bench-big-team";
/// Bind parameters per INSERT statement: well under SQLite's 32766 and PostgreSQL's 65535.
const MAX_BINDS: usize = 20_000;

#[derive(Debug, Parser)]
#[command(
    name = "purser-bench",
    about = "Seed a Purser database at scale and time the team API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fill an empty database with generated users, teams, memberships and keys.
    Seed(SeedArgs),
    /// Start the gateway in-process on the database and time the team routes.
    Run(RunArgs),
    /// Measure the latency the gateway adds on the request path against a direct upstream call.
    Proxy(proxy::ProxyArgs),
    /// Measure the spend writer's rate (spend-log rows per second) on SQLite and PostgreSQL.
    Writer(writer::WriterArgs),
    /// Benchmark the gateway binary as a process (wrk, direct baseline, RSS, SIGKILL spend loss).
    Process(Box<process::ProcessArgs>),
    /// Fast mock OpenAI upstream (`/v1/chat/completions`, JSON or SSE) on 127.0.0.1.
    Mock(mock::MockArgs),
    /// What prompt counting costs: RSS each BPE encoding adds, µs per count.
    Tokens(tokens::TokensArgs),
    /// Sequential streaming client timing the first byte (used by `process`).
    #[command(hide = true)]
    StreamClient(stream_client::StreamClientArgs),
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// SQLite path or `postgres://…` URL.
    #[arg(long)]
    db: String,
    #[arg(long, default_value_t = 10_000)]
    teams: usize,
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 50_000)]
    users: usize,
    /// Keys of the big team (part of --keys).
    #[arg(long, default_value_t = 1000)]
    big_team_keys: usize,
    /// Members of the big team.
    #[arg(long, default_value_t = 200)]
    big_team_members: usize,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// SQLite path or `postgres://…` URL (seeded with `seed`).
    #[arg(long)]
    db: String,
    /// Timed requests per endpoint.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Untimed requests per endpoint before timing.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Report folder.
    #[arg(long, default_value = "bench/reports")]
    out: PathBuf,
    /// Time only the endpoints whose name contains this text (e.g. `team info`); the report is
    /// then printed but not written, so a partial run never replaces a full report.
    #[arg(long)]
    only: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Seed(a) => seed(a).await,
        Command::Run(a) => run(a).await,
        Command::Proxy(a) => proxy::run(a).await,
        Command::Writer(a) => writer::run(a).await,
        Command::Process(a) => process::run(*a).await,
        Command::Mock(a) => mock::run(a).await,
        Command::Tokens(a) => tokens::run(a).await,
        Command::StreamClient(a) => stream_client::run(a).await,
    }
}

// ---------------------------------------------------------------- data generation

/// splitmix64: tiny deterministic PRNG (no extra dependency, reproducible data sets).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn hex(&mut self, chars: usize) -> String {
        let mut s = String::with_capacity(chars + 16);
        while s.len() < chars {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(chars);
        s
    }
    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..]
        )
    }
}

const FIRST: &[&str] = &[
    "ada",
    "alan",
    "grace",
    "linus",
    "margaret",
    "ken",
    "barbara",
    "dennis",
    "frances",
    "john",
    "radia",
    "tim",
    "hedy",
    "edsger",
    "katherine",
    "donald",
    "sophie",
    "yukihiro",
    "guido",
    "anita",
];
const LAST: &[&str] = &[
    "lovelace",
    "turing",
    "hopper",
    "torvalds",
    "hamilton",
    "thompson",
    "liskov",
    "ritchie",
    "allen",
    "backus",
    "perlman",
    "lee",
    "lamarr",
    "dijkstra",
    "johnson",
    "knuth",
    "wilson",
    "matsumoto",
    "rossum",
    "borg",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "corp.example",
    "research.example",
    "ops.example",
];
const AREAS: &[&str] = &[
    "platform", "search", "ads", "infra", "ml", "data", "payments", "growth", "mobile", "web",
    "security", "support", "legal", "finance", "research", "devex",
];
const NOUNS: &[&str] = &[
    "core", "labs", "squad", "guild", "pod", "crew", "unit", "cell", "works", "team",
];
const MODELS: &[&str] = &["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3-70b"];
const NANOS: i64 = 1_000_000_000;

struct UserGen {
    id: String,
    email: String,
    alias: String,
    role: &'static str,
    spend: i64,
    created: DateTime<Utc>,
}

struct TeamGen {
    id: String,
    alias: String,
    models: Vec<String>,
    max_budget: Option<i64>,
    spend: i64,
    budget_duration: Option<&'static str>,
    budget_reset_at: Option<DateTime<Utc>>,
    metadata: Value,
    created: DateTime<Utc>,
}

struct MemberGen {
    team: usize,
    user: usize,
    role: &'static str,
    spend: i64,
}

struct KeyGen {
    token: String,
    name: String,
    alias: Option<String>,
    team: usize,
    user: usize,
    spend: i64,
    created: DateTime<Utc>,
}

fn first_of_next_month(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(t)
}

async fn seed(a: SeedArgs) -> anyhow::Result<()> {
    if a.teams == 0 || a.users == 0 {
        bail!("--teams and --users must be at least 1");
    }
    let big_members = a.big_team_members.clamp(1, a.users);
    let big_keys = a.big_team_keys.min(a.keys);
    let url = DbUrl::parse(&a.db);
    let db = Db::connect(&url, None)
        .await
        .with_context(|| format!("connecting to {}", a.db))?;
    {
        let mut h = db.conn().await?;
        let n: i64 = purser::on_conn!(h, c => sqlx::query_scalar("SELECT COUNT(*) FROM teams").fetch_one(&mut *c).await)?;
        if n > 0 {
            bail!("{} already holds {n} teams; seed a fresh database", a.db);
        }
    }
    let now = purser::store::now();
    let mut rng = Rng(0x005E_ED0F_BE4C);
    let day = chrono::Duration::days(1);

    let users: Vec<UserGen> = (0..a.users)
        .map(|i| {
            let (f, l) = (rng.pick(FIRST), rng.pick(LAST));
            UserGen {
                id: format!("user-{i:06}"),
                email: format!("{f}.{l}{i}@{}", rng.pick(DOMAINS)),
                alias: format!("{} {}", capitalise(f), capitalise(l)),
                role: if rng.below(100) == 0 {
                    "internal_user_viewer"
                } else {
                    "internal_user"
                },
                spend: rng.below(50 * NANOS as usize) as i64,
                created: now - day * rng.below(720) as i32,
            }
        })
        .collect();

    let teams: Vec<TeamGen> = (0..a.teams)
        .map(|i| {
            let big = i == 0;
            let budgeted = rng.below(10) == 0;
            let models: Vec<String> = MODELS
                .iter()
                .filter(|_| rng.below(2) == 0)
                .map(|m| m.to_string())
                .collect();
            TeamGen {
                id: rng.uuid(),
                alias: if big {
                    BIG_TEAM_ALIAS.to_string()
                } else {
                    format!("{}-{}-{i:05}", rng.pick(AREAS), rng.pick(NOUNS))
                },
                models,
                max_budget: budgeted.then(|| (100 + rng.below(10_000)) as i64 * NANOS),
                spend: rng.below(500 * NANOS as usize) as i64,
                budget_duration: budgeted.then_some("30d"),
                budget_reset_at: budgeted.then(|| first_of_next_month(now)),
                metadata: json!({"cost_center": format!("cc-{:03}", rng.below(400)), "seeded": true}),
                created: now - day * rng.below(720) as i32,
            }
        })
        .collect();

    // Memberships: the big team gets `big_members` distinct users, the others 1–8 each.
    let mut members: Vec<MemberGen> = Vec::new();
    let mut roster: Vec<Vec<usize>> = vec![Vec::new(); teams.len()];
    for (t, r) in roster.iter_mut().enumerate() {
        let want = if t == 0 {
            big_members
        } else {
            (1 + rng.below(8)).min(a.users)
        };
        let mut seen = HashSet::with_capacity(want);
        while seen.len() < want {
            let u = rng.below(a.users);
            if seen.insert(u) {
                r.push(u);
                members.push(MemberGen {
                    team: t,
                    user: u,
                    role: if r.len() == 1 { "admin" } else { "user" },
                    spend: rng.below(20 * NANOS as usize) as i64,
                });
            }
        }
    }

    // Keys: `big_keys` in the big team, the rest spread over the other teams; each owned by a
    // member of its team.
    let keys: Vec<KeyGen> = (0..a.keys)
        .map(|i| {
            let team = if i < big_keys || teams.len() == 1 {
                0
            } else {
                1 + rng.below(teams.len() - 1)
            };
            let user = roster[team][rng.below(roster[team].len())];
            let tail = rng.hex(4);
            KeyGen {
                token: rng.hex(64),
                name: format!("sk-...{tail}"),
                alias: (rng.below(2) == 0).then(|| format!("key-{i:06}")),
                team,
                user,
                spend: rng.below(5 * NANOS as usize) as i64,
                created: now - day * rng.below(365) as i32,
            }
        })
        .collect();

    let t0 = Instant::now();
    let mut h = db.begin_write().await?;
    insert_users(&mut h, &users).await?;
    h.commit().await?;
    let t_users = t0.elapsed();
    let mut h = db.begin_write().await?;
    insert_teams(&mut h, &teams).await?;
    h.commit().await?;
    let t_teams = t0.elapsed() - t_users;
    let mut h = db.begin_write().await?;
    insert_members(&mut h, &members, &teams, &users).await?;
    h.commit().await?;
    let t_members = t0.elapsed() - t_users - t_teams;
    let mut h = db.begin_write().await?;
    insert_keys(&mut h, &keys, &teams, &users, now).await?;
    h.commit().await?;
    let total = t0.elapsed();
    // Planner statistics (and on PostgreSQL the visibility map) for the freshly loaded tables,
    // as autovacuum or an operator would give a long-running database; without them PostgreSQL
    // picks sequential scans for the listing queries.
    let mut h = db.conn().await?;
    let sql = if h.is_postgres() {
        "VACUUM ANALYZE"
    } else {
        "ANALYZE"
    };
    purser::on_conn!(h, c => sqlx::raw_sql(sql).execute(&mut *c).await.map(|_| ()))?;
    drop(h);
    db.close().await;
    println!(
        "seeded {} ({}): {} users, {} teams, {} memberships, {} keys in {:.2}s \
         (users {:.2}s, teams {:.2}s, memberships {:.2}s, keys {:.2}s)",
        a.db,
        db.backend_name(),
        users.len(),
        teams.len(),
        members.len(),
        keys.len(),
        total.as_secs_f64(),
        t_users.as_secs_f64(),
        t_teams.as_secs_f64(),
        t_members.as_secs_f64(),
        (total - t_users - t_teams - t_members).as_secs_f64(),
    );
    println!(
        "big team: {} (alias {BIG_TEAM_ALIAS}): {} members, {} keys",
        teams[0].id,
        roster[0].len(),
        big_keys
    );
    Ok(())
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Runs multi-row INSERTs of `$rows` in statements of at most `MAX_BINDS` parameters.
macro_rules! bulk_insert {
    ($h:expr, $head:expr, $ncols:expr, $rows:expr, |$b:ident, $r:ident| $push:block) => {{
        let per = (MAX_BINDS / $ncols).max(1);
        for chunk in $rows.chunks(per) {
            purser::on_conn!($h, c => {
                let mut qb = sqlx::QueryBuilder::new($head);
                qb.push_values(chunk, |mut $b, $r| $push);
                qb.build().execute(&mut *c).await?;
            });
        }
    }};
}

async fn insert_users(h: &mut Handle, users: &[UserGen]) -> anyhow::Result<()> {
    bulk_insert!(
        h,
        "INSERT INTO users (user_id, user_alias, user_email, user_role, spend, created_at, updated_at) ",
        7,
        users,
        |b, u| {
            b.push_bind(u.id.clone())
                .push_bind(u.alias.clone())
                .push_bind(u.email.clone())
                .push_bind(u.role)
                .push_bind(u.spend)
                .push_bind(u.created)
                .push_bind(u.created);
        }
    );
    Ok(())
}

async fn insert_teams(h: &mut Handle, teams: &[TeamGen]) -> anyhow::Result<()> {
    bulk_insert!(
        h,
        "INSERT INTO teams (team_id, team_alias, metadata, max_budget, spend, models, budget_duration, \
         budget_reset_at, created_at, updated_at) ",
        10,
        teams,
        |b, t| {
            b.push_bind(t.id.clone())
                .push_bind(t.alias.clone())
                .push_bind(Json(t.metadata.clone()))
                .push_bind(t.max_budget)
                .push_bind(t.spend)
                .push_bind(Json(t.models.clone()))
                .push_bind(t.budget_duration)
                .push_bind(t.budget_reset_at)
                .push_bind(t.created)
                .push_bind(t.created);
        }
    );
    Ok(())
}

async fn insert_members(
    h: &mut Handle,
    members: &[MemberGen],
    teams: &[TeamGen],
    users: &[UserGen],
) -> anyhow::Result<()> {
    bulk_insert!(
        h,
        "INSERT INTO team_memberships (team_id, user_id, role, user_email, spend, total_spend, added_at) ",
        7,
        members,
        |b, m| {
            let (t, u) = (&teams[m.team], &users[m.user]);
            b.push_bind(t.id.clone())
                .push_bind(u.id.clone())
                .push_bind(m.role)
                .push_bind(u.email.clone())
                .push_bind(m.spend)
                .push_bind(m.spend)
                .push_bind(t.created.max(u.created));
        }
    );
    Ok(())
}

async fn insert_keys(
    h: &mut Handle,
    keys: &[KeyGen],
    teams: &[TeamGen],
    users: &[UserGen],
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    bulk_insert!(
        h,
        "INSERT INTO verification_tokens (token, key_name, key_alias, spend, user_id, team_id, created_at, \
         created_by, updated_at, updated_by) ",
        10,
        keys,
        |b, k| {
            let u = &users[k.user].id;
            b.push_bind(k.token.clone())
                .push_bind(k.name.clone())
                .push_bind(k.alias.clone())
                .push_bind(k.spend)
                .push_bind(u.clone())
                .push_bind(teams[k.team].id.clone())
                .push_bind(k.created)
                .push_bind(u.clone())
                .push_bind(now)
                .push_bind(u.clone());
        }
    );
    Ok(())
}

// ---------------------------------------------------------------- benchmark

/// Latencies and status codes of one endpoint.
struct Measured {
    name: String,
    path: String,
    samples: Vec<Duration>,
    statuses: BTreeMap<u16, usize>,
    bytes: usize,
    /// CPU time of the whole process (gateway and client) per timed request: steadier than wall
    /// time on a shared VM, where other tenants stretch latencies but not our own CPU use.
    cpu_per_request: Option<Duration>,
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`, USER_HZ = 100).
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

impl Measured {
    fn quantile(&self, q: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        if s.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((s.len() as f64 - 1.0) * q).round() as usize;
        s[idx.min(s.len() - 1)]
    }
    fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }
    fn status_summary(&self) -> String {
        self.statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.general_settings.master_key = Some(MASTER_KEY.to_string());
    // The benchmark measures reads: no reset job competing for the database.
    config.general_settings.disable_reset_budget = Some(true);
    let args = ServeArgs {
        config: "purser-bench (in code)".into(),
        host: "127.0.0.1".into(),
        port: 0,
        database_url: Some(a.db.clone()),
        redis_url: None,
        master_key: Some(MASTER_KEY.to_string()),
        log_json: false,
        timeouts: Default::default(),
    };
    let settings = Settings::resolve(&config, &args, "purser-bench")?;
    let gateway = Gateway::build(config, settings, None).await?;
    let state = gateway.state.clone();
    let backend = state.db.backend_name();

    let (teams, keys, members, big_team) = {
        let mut h = state.db.conn().await?;
        let count = |sql: &'static str| sql;
        let teams: i64 = purser::on_conn!(h, c => sqlx::query_scalar(count("SELECT COUNT(*) FROM teams")).fetch_one(&mut *c).await)?;
        let keys: i64 = purser::on_conn!(h, c => sqlx::query_scalar(count("SELECT COUNT(*) FROM verification_tokens")).fetch_one(&mut *c).await)?;
        let members: i64 = purser::on_conn!(h, c => sqlx::query_scalar(count("SELECT COUNT(*) FROM team_memberships")).fetch_one(&mut *c).await)?;
        let big: Option<String> = purser::on_conn!(h, c => sqlx::query_scalar(
            "SELECT team_id FROM teams WHERE team_alias = $1 ORDER BY created_at LIMIT 1")
            .bind(BIG_TEAM_ALIAS).fetch_optional(&mut *c).await)?;
        (teams, keys, members, big)
    };
    let big_team = big_team.unwrap_or_else(|| {
        eprintln!("warning: no team with alias {BIG_TEAM_ALIAS}; /team/info will be timed on an unknown id");
        "missing-big-team".to_string()
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(gateway.serve(listener));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let base = format!("http://{addr}");

    let endpoints: Vec<(&str, String)> = vec![
        ("readiness (baseline)", "/health/readiness".to_string()),
        (
            "v2 list p1 (default sort)",
            "/v2/team/list?page_size=100&page=1".into(),
        ),
        ("v2 list p50", "/v2/team/list?page_size=100&page=50".into()),
        (
            "v2 list by alias asc",
            "/v2/team/list?page_size=100&page=3&sort_by=team_alias&sort_order=asc".into(),
        ),
        (
            "v2 list by created desc",
            "/v2/team/list?page_size=100&page=10&sort_by=created_at&sort_order=desc".into(),
        ),
        (
            "v2 list by spend desc",
            "/v2/team/list?page_size=100&page=1&sort_by=spend&sort_order=desc".into(),
        ),
        (
            "team info (big team)",
            format!("/team/info?team_id={big_team}"),
        ),
    ];

    let mut results = Vec::new();
    for (name, path) in &endpoints {
        if a.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let url = format!("{base}{path}");
        for _ in 0..a.warmup {
            let _ = call(&client, &url).await;
        }
        let mut m = Measured {
            name: name.to_string(),
            path: path.clone(),
            samples: Vec::with_capacity(a.requests),
            statuses: BTreeMap::new(),
            bytes: 0,
            cpu_per_request: None,
        };
        let cpu_before = process_cpu_time();
        for _ in 0..a.requests {
            let t = Instant::now();
            let (status, bytes) = call(&client, &url).await;
            m.samples.push(t.elapsed());
            *m.statuses.entry(status).or_default() += 1;
            m.bytes = bytes;
        }
        if let (Some(before), Some(after)) = (cpu_before, process_cpu_time()) {
            m.cpu_per_request = Some((after - before) / a.requests.max(1) as u32);
        }
        println!(
            "{:<28} median {:>8} ms  p95 {:>8} ms  max {:>8} ms  cpu {:>6} ms/req  status {}  ({} bytes)",
            m.name,
            ms(m.quantile(0.5)),
            ms(m.quantile(0.95)),
            ms(m.max()),
            m.cpu_per_request.map(ms).unwrap_or_else(|| "-".into()),
            m.status_summary(),
            m.bytes
        );
        results.push(m);
    }

    state.shutdown.cancel();
    let _ = server.await;

    let mut md = String::new();
    md.push_str(&format!("# Team API benchmark — {backend}\n\n"));
    md.push_str(&format!(
        "- Date: {}\n- Data: {teams} teams, {members} memberships, {keys} keys; big team `{big_team}`\n\
         - Method: in-process gateway on 127.0.0.1, one client, sequential requests; {} warm-up + {} timed \
         requests per endpoint (`std::time::Instant` around each full HTTP round trip, body read); \
         CPU ms/req is the whole process's user + system time (gateway, SQLite and client) over \
         the timed requests, divided by their number\n\
         - Build: {}\n\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        a.warmup,
        a.requests,
        if cfg!(debug_assertions) { "debug" } else { "release" },
    ));
    md.push_str(
        "| Endpoint | Path | Median ms | p95 ms | Max ms | CPU ms/req | Statuses | Body bytes |\n",
    );
    md.push_str("|---|---|---:|---:|---:|---:|---|---:|\n");
    for m in &results {
        md.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} |\n",
            m.name,
            m.path,
            ms(m.quantile(0.5)),
            ms(m.quantile(0.95)),
            ms(m.max()),
            m.cpu_per_request.map(ms).unwrap_or_else(|| "-".into()),
            m.status_summary(),
            m.bytes
        ));
    }
    if results.iter().any(|m| m.statuses.keys().any(|s| *s >= 400)) {
        md.push_str(
            "\nNon-2xx statuses mean the route answered an error (e.g. 404 where the route is not \
             built into this binary); those timings measure the error path, not the route.\n",
        );
    }
    if a.only.is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&a.out)?;
    let file = a.out.join(format!("team-api-{backend}.md"));
    std::fs::write(&file, md)?;
    println!("report written to {}", file.display());
    Ok(())
}

/// One GET with the master key; returns the status and body size (0 status on transport error).
async fn call(client: &reqwest::Client, url: &str) -> (u16, usize) {
    match client.get(url).bearer_auth(MASTER_KEY).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let n = r.bytes().await.map(|b| b.len()).unwrap_or(0);
            (s, n)
        }
        Err(_) => (0, 0),
    }
}
