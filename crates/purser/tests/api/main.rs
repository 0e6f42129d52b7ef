//! The one integration-test binary: drives the real server over HTTP (loopback sockets) against
//! real SQLite files and a real PostgreSQL schema per test. The only fake is the LLM upstream.

mod helpers;
mod mock_bedrock;
mod mock_upstream;

mod alerts;
mod audit;
mod bedrock;
mod cli;
mod cluster;
mod completions;
mod durability;
mod e2e;
mod forecast;
mod foundation;
mod governance;
mod keys;
mod media;
mod members;
mod metrics;
mod providers;
mod proxy;
mod routing;
mod sdk;
mod server;
mod spend_and_resets;
mod teams;
mod tokens;
mod transcriptions;
mod users;
mod vertex;
