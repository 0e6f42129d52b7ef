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
}
