//! Persistence: one code path over embedded SQLite and PostgreSQL.
//! Every query is a `const` SQL string valid in both dialects (`$N` placeholders), run through
//! [`on_conn!`] which instantiates the same expression for each backend's connection type.
//! Invariants: SQLite write transactions start with `BEGIN IMMEDIATE` (no deferred read→write
//! upgrade can fail with SQLITE_BUSY); money is integer nano-USD; times are bound from the app.

pub mod audit;
pub mod budgets;
pub mod keys;
pub mod members;
pub mod models;
pub mod spend;
pub mod teams;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};

pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// The database pool, one variant per backend.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A checked-out connection or an open transaction; store functions take `&mut Handle`
/// so the same function runs inside or outside a transaction (locking ones take [`WriteTx`]).
pub enum Handle {
    SqliteConn(PoolConnection<Sqlite>),
    PgConn(PoolConnection<Postgres>),
    SqliteTx(Transaction<'static, Sqlite>),
    PgTx(Transaction<'static, Postgres>),
}

/// Borrowed backend connection handed to query code by [`on_conn!`].
pub enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// Runs `$body` with `$c` bound to the concrete `&mut SqliteConnection` or `&mut PgConnection`.
#[macro_export]
macro_rules! on_conn {
    ($h:expr, $c:ident => $body:expr) => {
        match $h.conn() {
            $crate::store::Conn::Sqlite($c) => $body,
            $crate::store::Conn::Postgres($c) => $body,
        }
    };
}

impl Handle {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Handle::SqliteConn(c) => Conn::Sqlite(c),
            Handle::PgConn(c) => Conn::Postgres(c),
            Handle::SqliteTx(t) => Conn::Sqlite(t),
            Handle::PgTx(t) => Conn::Postgres(t),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Handle::PgConn(_) | Handle::PgTx(_))
    }
}

/// An open write transaction (`Db::begin_write`). Store functions that lock rows (`FOR UPDATE`,
/// advisory locks) take `&mut WriteTx`, so a lock cannot be taken on a plain connection, where it
/// would be released at once; every other store function takes it as a `&mut Handle` (deref).
/// Dropped without `commit`, it rolls back.
///
/// ```compile_fail
/// # async fn f(db: purser::store::Db) {
/// // A row lock on a plain connection does not compile:
/// let mut h = db.conn().await.unwrap();
/// purser::store::teams::lock(&mut h, "t").await.unwrap();
/// # }
/// ```
pub struct WriteTx(Handle);

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        match self.0 {
            Handle::SqliteTx(t) => t.commit().await,
            Handle::PgTx(t) => t.commit().await,
            Handle::SqliteConn(_) | Handle::PgConn(_) => {
                unreachable!("a WriteTx is only made by Db::begin_write")
            }
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.0
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Handle {
        &mut self.0
    }
}

/// Where the store lives.
#[derive(Clone, Debug)]
pub enum DbUrl {
    Sqlite(String),
    Postgres(String),
}

impl DbUrl {
    /// `postgres://…`/`postgresql://…` select PostgreSQL; `sqlite:…` or a plain path select SQLite.
    pub fn parse(url: &str) -> DbUrl {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbUrl::Postgres(url.to_string())
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            DbUrl::Sqlite(path.to_string())
        }
    }
}

impl Db {
    /// Connects and applies the embedded migrations of the backend.
    pub async fn connect(url: &DbUrl, pg_schema: Option<&str>) -> anyhow::Result<Db> {
        Db::open(url, pg_schema, None).await
    }

    /// A one-connection pool for the spend writer, beside the main pool (migrations already
    /// applied), connected on first use: the connection belongs to the thread that first
    /// writes (see `jobs`). One connection keeps SQLite's page cache warm across chunks — a
    /// pool hands out its connections in turn, and each would re-read the pages the others
    /// wrote — and keeps the writer's transactions from taking a connection request handling
    /// needs. An in-memory
    /// SQLite database cannot be opened twice: the main pool is shared then.
    pub async fn connect_writer(&self, url: &DbUrl, pg_schema: Option<&str>) -> anyhow::Result<Db> {
        match url {
            DbUrl::Sqlite(path) if path == ":memory:" => Ok(self.clone()),
            _ => Db::open(url, pg_schema, Some(1)).await,
        }
    }

    /// `max`: pool size and no migrations (a secondary pool), or None for the main pool.
    async fn open(url: &DbUrl, pg_schema: Option<&str>, max: Option<u32>) -> anyhow::Result<Db> {
        let db = match url {
            DbUrl::Sqlite(path) => {
                let opts = if path == ":memory:" {
                    SqliteConnectOptions::from_str("sqlite::memory:")?
                } else {
                    SqliteConnectOptions::new().filename(path)
                }
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // 8 MiB page cache per connection (SQLite's default is 2 MiB): a listing of a big
                // team touches ~1,000 scattered rows; measured 30 → 26 ms for /team/info of a
                // 1,000-key team. Pages are allocated only as they are used.
                .pragma("cache_size", "-8192");
                let secondary = max.is_some();
                let max = max.unwrap_or(if path == ":memory:" { 1 } else { 8 });
                let pool = SqlitePoolOptions::new().max_connections(max);
                let pool = if secondary {
                    // The spend writer's pool: connected lazily, so its one connection — and the
                    // SQLite worker thread sqlx spawns for it, which inherits the spawning
                    // thread's scheduling policy — is made on the writer's own low-priority
                    // thread (`jobs`); kept for the process's life, so it is never remade elsewhere.
                    // Its inserts append (time-ordered ids and index keys), so SQLite's default
                    // 2 MiB page cache is enough; a full 8 MiB one stays resident for the
                    // process's life.
                    pool.idle_timeout(None)
                        .max_lifetime(None)
                        .connect_lazy_with(
                            opts.pragma("cache_size", "-2048")
                                .thread_name(|n| format!("purser-spendw{n}")),
                        )
                } else {
                    let pool = pool.connect_with(opts).await?;
                    sqlx::migrate!("migrations/sqlite").run(&pool).await?;
                    pool
                };
                Db::Sqlite(pool)
            }
            DbUrl::Postgres(url) => {
                let mut opts = PgConnectOptions::from_str(url)?;
                if let Some(schema) = pg_schema {
                    opts = opts.options([("search_path", schema)]);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(max.unwrap_or(16))
                    .acquire_timeout(Duration::from_secs(10));
                let pool = if max.is_some() {
                    // Lazy for the same reason as SQLite's: the writer's connection lives on
                    // the writer's runtime.
                    pool.idle_timeout(None)
                        .max_lifetime(None)
                        .connect_lazy_with(opts)
                } else {
                    let pool = pool.connect_with(opts).await?;
                    sqlx::migrate!("migrations/postgres").run(&pool).await?;
                    pool
                };
                Db::Postgres(pool)
            }
        };
        Ok(db)
    }

    /// The PostgreSQL pool (the change bus listens on it), if this is PostgreSQL.
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(p) => Some(p),
            Db::Sqlite(_) => None,
        }
    }

    /// A short stable name of the database this pool writes (instances on one database agree
    /// on it): a hash of the PostgreSQL database and schema, or of the SQLite file's path.
    pub async fn identity(&self) -> anyhow::Result<String> {
        use sha2::Digest;
        let name = match self {
            Db::Postgres(p) => {
                sqlx::query_scalar::<_, String>(
                    "SELECT current_database()::text || '/' || current_schema()::text",
                )
                .fetch_one(p)
                .await?
            }
            Db::Sqlite(p) => {
                let file: Option<String> =
                    sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_optional(p)
                        .await?;
                match file.filter(|f| !f.is_empty()) {
                    Some(f) => f,
                    // An in-memory database is never shared.
                    None => uuid::Uuid::new_v4().to_string(),
                }
            }
        };
        Ok(hex::encode(&sha2::Sha256::digest(name.as_bytes())[..6]))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgresql",
        }
    }

    /// A pooled connection for reads and single-statement writes.
    pub async fn conn(&self) -> Result<Handle> {
        Ok(match self {
            Db::Sqlite(p) => Handle::SqliteConn(p.acquire().await?),
            Db::Postgres(p) => Handle::PgConn(p.acquire().await?),
        })
    }

    /// A write transaction: `BEGIN IMMEDIATE` on SQLite, plain `BEGIN` (READ COMMITTED) on
    /// PostgreSQL, where callers take row locks (`lock_team`) for read-then-write sequences.
    pub async fn begin_write(&self) -> Result<WriteTx> {
        Ok(WriteTx(match self {
            Db::Sqlite(p) => Handle::SqliteTx(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Handle::PgTx(p.begin().await?),
        }))
    }

    /// Readiness probe: one round trip.
    pub async fn ping(&self) -> Result<()> {
        let mut h = self.conn().await?;
        on_conn!(h, c => sqlx::query("SELECT 1").execute(c).await.map(|_| ()))
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// The current time at the precision both backends store (microseconds), so a value written
/// and read back compares equal.
pub fn now() -> DateTime<Utc> {
    trunc_micros(Utc::now())
}

/// An instant as the databases store it (microseconds).
pub fn trunc_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// True when the error is a unique/primary-key violation (duplicate id).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// True when the error is a foreign-key violation (the parent row vanished).
pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_backends_have_the_same_migrations() {
        let list = |dir: &str| {
            let mut v: Vec<String> =
                std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
            v.sort();
            v
        };
        assert_eq!(list("sqlite"), list("postgres"));
    }
}
