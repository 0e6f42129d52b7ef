//! Purser: an LLM API gateway with team governance, wire-compatible with the LiteLLM proxy.
//! Layers point one way: `api` (HTTP) → `service` (use cases) → `store` / `limiter` / `upstream`,
//! with pure rules in the `purser-core` crate.

#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod jobs;
pub mod limiter;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod upstream;
