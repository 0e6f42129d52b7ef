//! Application assembly: resolved settings, shared state, the router with its middleware, and
//! serving with graceful shutdown (in-flight requests finish, background writers flush).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi;

use crate::api::{self, Gates};
use crate::cli::ServeArgs;
use crate::clock::{self, SharedClock};
use crate::config::Config;
use crate::limiter::Limiter;
use crate::service::cache::Cache;
use crate::service::spend::{Ledger, LedgerLimits};
use crate::store::{Db, DbUrl};
use crate::upstream::Registry;

/// Settings after applying precedence flag > environment > config file > default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub master_key: String,
    pub database: DbUrl,
    pub redis_url: Option<String>,
    /// `max_request_size_mb`, enforced by `api::extract::RawBody` (every body extractor).
    pub body_limit_bytes: usize,
    pub budget_exceeded_status: u16,
    /// How often buffered spend is written to the database.
    pub batch_write_interval: Duration,
    /// Sizes of the settled-call queue (backpressure bound, rows per write transaction).
    pub ledger_limits: LedgerLimits,
}

impl Settings {
    /// Resolves settings; a missing master key is a startup error (Purser never runs unauthenticated).
    pub fn resolve(
        config: &Config,
        args: &ServeArgs,
        config_name: &str,
    ) -> anyhow::Result<Settings> {
        let master_key = args
            .master_key
            .clone()
            .or_else(|| std::env::var("LITELLM_MASTER_KEY").ok())
            .or_else(|| config.general_settings.master_key.clone())
            .filter(|k| !k.is_empty());
        let Some(master_key) = master_key else {
            anyhow::bail!(
                "config {config_name}: general_settings.master_key: required (or set LITELLM_MASTER_KEY / PURSER_MASTER_KEY); \
                 Purser does not run without authentication"
            );
        };
        if !master_key.starts_with("sk-") {
            anyhow::bail!(
                "config {config_name}: general_settings.master_key: must start with 'sk-'"
            );
        }
        let database = args
            .database_url
            .clone()
            .or_else(|| config.general_settings.database_url.clone())
            .unwrap_or_else(|| "purser.db".to_string());
        let mb = config.general_settings.max_request_size_mb.unwrap_or(10.0);
        Ok(Settings {
            master_key,
            database: DbUrl::parse(&database),
            redis_url: args.redis_url.clone().or_else(|| config.redis_url()),
            body_limit_bytes: (mb * 1024.0 * 1024.0) as usize,
            budget_exceeded_status: config.budget_exceeded_status(),
            batch_write_interval: Duration::from_secs_f64(
                config.general_settings.proxy_batch_write_at.unwrap_or(10.0),
            ),
            ledger_limits: {
                let d = LedgerLimits::default();
                LedgerLimits {
                    capacity: config
                        .general_settings
                        .spend_queue_capacity
                        .unwrap_or(d.capacity),
                    chunk_rows: config
                        .general_settings
                        .spend_write_chunk_rows
                        .unwrap_or(d.chunk_rows),
                }
            },
        })
    }
}

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub settings: Settings,
    pub db: Db,
    pub cache: Cache,
    pub gates: Gates,
    pub openapi: OpenApi,
    pub models: Registry,
    pub limiter: Limiter,
    pub ledger: Arc<Ledger>,
    /// The clock of rate-limit windows, ledger idle eviction and budget resets.
    pub clock: SharedClock,
    pub shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A built gateway, ready to serve on a listener.
pub struct Gateway {
    pub state: AppState,
    router: Router,
}

impl Gateway {
    /// Connects storage (applying migrations) and builds the router. `pg_schema` isolates a
    /// PostgreSQL run in its own schema (tests).
    pub async fn build(
        config: Config,
        settings: Settings,
        pg_schema: Option<&str>,
    ) -> anyhow::Result<Gateway> {
        Gateway::build_with_clock(config, settings, pg_schema, clock::system()).await
    }

    /// [`Gateway::build`] with a given clock (tests move time instead of sleeping).
    pub async fn build_with_clock(
        config: Config,
        settings: Settings,
        pg_schema: Option<&str>,
        clock: SharedClock,
    ) -> anyhow::Result<Gateway> {
        let db = Db::connect(&settings.database, pg_schema)
            .await
            .context("connecting to the database")?;
        let models = Registry::from_config(&config)?;
        let routes = api::all_routes();
        let gates = Gates::from_routes(&routes);
        let openapi = api::openapi::document(&routes);
        let ledger = Arc::new(Ledger::new(settings.ledger_limits, clock.clone()));
        let state = AppState(Arc::new(Inner {
            config,
            settings,
            db,
            cache: Cache::new(),
            gates,
            openapi,
            models,
            limiter: Limiter::new(clock.clone()),
            ledger,
            clock,
            shutdown: CancellationToken::new(),
        }));
        let secret_headers: Arc<[HeaderName]> = Arc::new([
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static("x-litellm-api-key"),
            HeaderName::from_static("api-key"),
            HeaderName::from_static("x-api-key"),
        ]);
        let router = api::router(state.clone(), routes)
            .layer(TraceLayer::new_for_http())
            .layer(SetSensitiveRequestHeadersLayer::from_shared(secret_headers))
            .layer(CatchPanicLayer::custom(|_| {
                axum::response::IntoResponse::into_response(api::error::ApiError::internal(
                    "handler panicked",
                ))
            }));
        Ok(Gateway { state, router })
    }

    /// Serves until `state.shutdown` is cancelled, then lets in-flight requests finish and
    /// flushes buffered writes before returning.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        use axum::serve::ListenerExt;
        let state = self.state.clone();
        let jobs = crate::jobs::spawn(state.clone());
        let listener = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let token = state.shutdown.clone();
        axum::serve(listener, self.router)
            .with_graceful_shutdown(token.cancelled_owned())
            .await?;
        jobs.finish().await;
        state.db.close().await;
        Ok(())
    }
}
