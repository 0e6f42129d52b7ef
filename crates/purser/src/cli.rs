//! Command line: `purser serve --config FILE [--host H] [--port P]`, with the environment
//! overrides LiteLLM users already set. Precedence: flag > environment > config file > default.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "purser",
    version,
    about = "LLM API gateway with team governance, wire-compatible with the LiteLLM proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// LiteLLM-compatible config file (model_list, general_settings, litellm_settings, router_settings).
    #[arg(long, short, env = "PURSER_CONFIG")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, short, default_value_t = 4000)]
    pub port: u16,
    /// Database URL: `postgres://…` or a SQLite path. Overrides `general_settings.database_url`;
    /// default `purser.db` in the working directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL (read now; used when several instances share counters).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Master key (admin credential). Overrides `general_settings.master_key`; LITELLM_MASTER_KEY is
    /// read too (PURSER_MASTER_KEY wins).
    #[arg(long, env = "PURSER_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "PURSER_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
}

/// HTTP server timeouts in seconds; each overrides its `general_settings.http_*` key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TimeoutArgs {
    /// Seconds to receive a complete request head, from accept or from the first byte of the next
    /// request on a kept-alive connection [default: 10].
    #[arg(long, env = "PURSER_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<f64>,
    /// Seconds allowed between two reads of a request body; a stalled body is answered 408
    /// [default: 60].
    #[arg(long, env = "PURSER_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<f64>,
    /// Seconds an idle kept-alive connection stays open [default: 75].
    #[arg(long, env = "PURSER_KEEPALIVE_TIMEOUT")]
    pub keepalive_timeout: Option<f64>,
}
