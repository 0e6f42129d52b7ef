//! Application assembly: resolved settings, shared state, the router with its middleware, and
//! serving with graceful shutdown (in-flight requests finish, background writers flush). The
//! accept loop and connection timeouts live in `server`.

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
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi;

use crate::api::{self, Gates};
use crate::cli::ServeArgs;
use crate::clock::{self, SharedClock};
use crate::config::Config;
use crate::limiter::Limiter;
use crate::server::Timeouts;
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
    /// HTTP server timeouts (header read, body read, keep-alive idle).
    pub timeouts: Timeouts,
    /// Where alerts go (`general_settings.alerting: [webhook]`); None = no channel.
    pub webhook: Option<WebhookSettings>,
    /// `alerting_args.budget_alert_ttl`: a `budget_crossed` alert of one entity is not repeated
    /// within it (reference default 24 h).
    pub budget_alert_ttl: Duration,
}

/// The webhook channel: its URL (never logged whole) and whether budget alerts are sent to it
/// (`alert_types` absent or listing `budget_alerts`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: reqwest::Url,
    pub budget_alerts: bool,
}

/// Reference default of `alerting_args.budget_alert_ttl`.
pub const DEFAULT_BUDGET_ALERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The webhook channel from the config and the `WEBHOOK_URL` environment value (passed in, so
/// tests need not touch the process environment). `alerting: [webhook]` without a URL from
/// either is a startup error; a URL without `webhook` in `alerting` is unused and said so.
pub fn resolve_webhook(
    config: &Config,
    env_url: Option<String>,
    config_name: &str,
) -> anyhow::Result<Option<WebhookSettings>> {
    let g = &config.general_settings;
    let wanted = g.alerting.iter().flatten().any(|c| c == "webhook");
    let from_config = g.webhook_url.clone().filter(|u| !u.is_empty());
    let url = match (&from_config, env_url.filter(|u| !u.is_empty())) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => crate::config::parse_webhook_url(&u)
            .map_err(|p| anyhow::anyhow!("WEBHOOK_URL: {p}"))?
            .to_string(),
        (None, None) if wanted => anyhow::bail!(
            "config {config_name}: general_settings.alerting: 'webhook' needs a URL: set \
             general_settings.webhook_url or WEBHOOK_URL"
        ),
        (None, None) => return Ok(None),
    };
    if !wanted {
        if from_config.is_some() {
            tracing::warn!(
                "general_settings.webhook_url is set but general_settings.alerting does not list 'webhook': no alerts are sent"
            );
        }
        return Ok(None);
    }
    let url = crate::config::parse_webhook_url(&url)
        .map_err(|p| anyhow::anyhow!("config {config_name}: general_settings.webhook_url: {p}"))?;
    let budget_alerts = match &g.alert_types {
        None => true,
        Some(types) => {
            for t in types {
                if !crate::config::EMITTED_ALERT_TYPES.contains(&t.as_str()) {
                    tracing::warn!(
                        alert_type = %t,
                        "general_settings.alert_types: this gateway emits only budget_alerts; '{t}' is never sent"
                    );
                }
            }
            types.iter().any(|t| t == "budget_alerts")
        }
    };
    Ok(Some(WebhookSettings { url, budget_alerts }))
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
        let g = &config.general_settings;
        let t = &args.timeouts;
        let defaults = Timeouts::default();
        // Flag or environment (clap) > config file > default. Config values were validated
        // positive; flags are checked here.
        let secs = |name: &str, arg: Option<f64>, conf: Option<f64>, default: Duration| match arg {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                anyhow::bail!("--{name}: must be a positive number of seconds, got {v}")
            }
            Some(v) => Ok(Duration::from_secs_f64(v)),
            None => Ok(conf.map(Duration::from_secs_f64).unwrap_or(default)),
        };
        let timeouts = Timeouts {
            header_read: secs(
                "header-read-timeout",
                t.header_read_timeout,
                g.http_header_read_timeout,
                defaults.header_read,
            )?,
            body_read: secs(
                "body-read-timeout",
                t.body_read_timeout,
                g.http_body_read_timeout,
                defaults.body_read,
            )?,
            keepalive: secs(
                "keepalive-timeout",
                t.keepalive_timeout,
                g.http_keepalive_timeout,
                defaults.keepalive,
            )?,
        };
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
            timeouts,
            webhook: resolve_webhook(config, std::env::var("WEBHOOK_URL").ok(), config_name)?,
            budget_alert_ttl: g
                .alerting_args
                .as_ref()
                .and_then(|a| a.budget_alert_ttl)
                .map(Duration::from_secs_f64)
                .unwrap_or(DEFAULT_BUDGET_ALERT_TTL),
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
    /// The spend writer's own one-connection pool (`Db::connect_writer`).
    pub spend_db: Db,
    pub cache: Cache,
    pub gates: Gates,
    pub openapi: OpenApi,
    pub models: Registry,
    pub limiter: Limiter,
    /// The change bus to other instances and the counters shared with them (both optional).
    pub cluster: crate::cluster::Cluster,
    pub ledger: Arc<Ledger>,
    /// Per-model budget windows (`model_max_budget`).
    pub model_budgets: Arc<crate::service::model_budget::ModelBudgets>,
    /// Budget alerts: soft-budget crossings and budget-exceeded refusals, and the webhook queue.
    pub alerts: Arc<crate::service::alerts::Alerts>,
    /// The clock of rate-limit windows, ledger idle eviction and budget resets.
    pub clock: SharedClock,
    /// `/metrics`: the reference's Prometheus metrics and Purser's own.
    pub metrics: Arc<crate::metrics::Metrics>,
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
        let spend_db = db
            .connect_writer(&settings.database, pg_schema)
            .await
            .context("connecting the spend writer to the database")?;
        let models = Registry::from_config(&config)?;
        let mut routes = api::all_routes();
        if config.litellm_settings.require_auth_for_metrics_endpoint == Some(true) {
            for r in routes.iter_mut().filter(|r| r.path == "/metrics") {
                r.gate = api::Gate::Admin;
            }
        }
        let gates = Gates::from_routes(&routes);
        let openapi = api::openapi::document(&routes);
        let cluster = crate::cluster::Cluster {
            bus: match db.pg_pool() {
                Some(pool) => Some(
                    crate::cluster::Bus::new(pool.clone())
                        .await
                        .context("setting up the change bus")?,
                ),
                None => None,
            },
            redis: match &settings.redis_url {
                Some(url) => Some(crate::cluster::RedisCounters::new(
                    url,
                    format!("purser:{}:", db.identity().await?),
                )?),
                None => None,
            },
        };
        if let Some(r) = &cluster.redis {
            r.probe_once().await;
        }
        let ledger = Arc::new(
            Ledger::new(settings.ledger_limits, clock.clone()).with_redis(cluster.redis.clone()),
        );
        let (settings_webhook, budget_alert_ttl) =
            (settings.webhook.clone(), settings.budget_alert_ttl);
        let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics_policy()));
        let state = AppState(Arc::new(Inner {
            metrics,
            config,
            settings,
            db,
            spend_db,
            cache: Cache::new(),
            gates,
            openapi,
            models,
            limiter: Limiter::new(clock.clone(), cluster.redis.clone()),
            cluster,
            model_budgets: Arc::new(crate::service::model_budget::ModelBudgets::new(
                clock.clone(),
            )),
            ledger,
            alerts: Arc::new(crate::service::alerts::Alerts::new(
                settings_webhook,
                budget_alert_ttl,
                clock.clone(),
            )),
            clock,
            shutdown: CancellationToken::new(),
        }));
        let secret_headers: Arc<[HeaderName]> = Arc::new([
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static("x-litellm-api-key"),
            HeaderName::from_static("api-key"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-goog-api-key"),
        ]);
        let router = api::router(state.clone(), routes)
            // Per read, not per body: an upload that keeps moving is never cut. The error
            // surfaces in `api::extract` as a 408.
            .layer(RequestBodyTimeoutLayer::new(
                state.settings.timeouts.body_read,
            ))
            // The span records the URI with virtual keys redacted (`/key/info?key=sk-…`).
            .layer(TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!(
                        "request",
                        method = %req.method(),
                        uri = %purser_core::redact::virtual_keys(&req.uri().to_string()),
                        version = ?req.version(),
                    )
                },
            ))
            .layer(SetSensitiveRequestHeadersLayer::from_shared(secret_headers))
            .layer(CatchPanicLayer::custom(|_| {
                axum::response::IntoResponse::into_response(crate::error::Error::internal(
                    "handler panicked",
                ))
            }));
        Ok(Gateway { state, router })
    }

    /// Serves until `state.shutdown` is cancelled, then lets in-flight requests and streams
    /// finish (no deadline) and flushes buffered writes before returning.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        let state = self.state.clone();
        let jobs = crate::jobs::spawn(state.clone());
        crate::server::serve(
            listener,
            self.router,
            state.settings.timeouts,
            state.shutdown.clone(),
        )
        .await;
        jobs.finish().await;
        state.spend_db.close().await;
        state.db.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::TimeoutArgs;

    fn args(timeouts: TimeoutArgs) -> ServeArgs {
        ServeArgs {
            config: "t.yaml".into(),
            host: "127.0.0.1".into(),
            port: 0,
            database_url: None,
            redis_url: None,
            master_key: Some("sk-1".into()),
            log_json: false,
            timeouts,
        }
    }

    /// Flag (or its environment variable) > `general_settings.http_*` > default.
    #[test]
    fn timeout_precedence_and_validation() {
        let config = Config::parse(
            "general_settings:\n  http_header_read_timeout: 2\n  http_keepalive_timeout: 9\n",
            "t.yaml",
        )
        .unwrap();
        let flags = TimeoutArgs {
            keepalive_timeout: Some(5.5),
            ..Default::default()
        };
        let s = Settings::resolve(&config, &args(flags), "t.yaml").unwrap();
        assert_eq!(
            s.timeouts,
            Timeouts {
                header_read: Duration::from_secs(2),
                body_read: Duration::from_secs(60),
                keepalive: Duration::from_millis(5500),
            }
        );
        let s = Settings::resolve(&Config::default(), &args(Default::default()), "t").unwrap();
        assert_eq!(s.timeouts, Timeouts::default());
        let bad = TimeoutArgs {
            body_read_timeout: Some(0.0),
            ..Default::default()
        };
        let e = Settings::resolve(&config, &args(bad), "t.yaml").unwrap_err();
        assert!(e.to_string().contains("--body-read-timeout"), "{e}");
        let e = Config::parse(
            "general_settings:\n  http_keepalive_timeout: -1\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("http_keepalive_timeout"), "{e}");
    }

    /// `alerting: [webhook]` needs a URL (config first, then `WEBHOOK_URL`); a bad one is refused
    /// without echoing it; `alert_types` without `budget_alerts` turns budget alerts off.
    #[test]
    fn webhook_resolution() {
        let parse = |y: &str| Config::parse(y, "t.yaml").unwrap();
        let wanted = parse("general_settings:\n  alerting: [webhook]\n");
        let e = resolve_webhook(&wanted, None, "t.yaml").unwrap_err();
        assert!(e.to_string().contains("needs a URL"), "{e}");
        let w = resolve_webhook(&wanted, Some("https://env.example.com/h/tok".into()), "t")
            .unwrap()
            .unwrap();
        assert_eq!(w.url.host_str(), Some("env.example.com"));
        assert!(w.budget_alerts);
        let e = resolve_webhook(&wanted, Some("gopher://x/s3cret".into()), "t").unwrap_err();
        assert!(e.to_string().contains("WEBHOOK_URL"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let both = parse(
            "general_settings:\n  alerting: [webhook]\n  webhook_url: https://conf.example.com/h\n  alert_types: [llm_exceptions]\n",
        );
        let w = resolve_webhook(&both, Some("https://env.example.com/h".into()), "t")
            .unwrap()
            .unwrap();
        assert_eq!(w.url.host_str(), Some("conf.example.com"), "config wins");
        assert!(!w.budget_alerts);
        let unused = parse("general_settings:\n  webhook_url: https://conf.example.com/h\n");
        assert!(resolve_webhook(&unused, None, "t").unwrap().is_none());
        assert!(
            resolve_webhook(
                &Config::default(),
                Some("https://e.example.com".into()),
                "t"
            )
            .unwrap()
            .is_none()
        );
    }
}
