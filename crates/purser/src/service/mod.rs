//! Use cases: authorization decisions, management writes in one transaction with their audit
//! row, and cache eviction before the answer. Handlers call these; these call `store`.

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod caller;
pub mod forecast;
pub mod keys;
pub mod limits;
pub mod members;
pub mod metrics;
pub mod model_budget;
pub mod paging;
pub mod patch;
pub mod proxy;
pub mod resets;
pub mod spend;
pub mod teams;
pub mod users;
pub mod views;
pub mod write;
