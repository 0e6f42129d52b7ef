//! The request path of the OpenAI-compatible routes: governance checks in the reference's order
//! (§7.2), budget reservation, rate limits, deployment choice, the upstream call and settlement.
//!
//! Invariants:
//! - Once a key is warm every check reads memory only (cache entries for key, team, member,
//!   user; ledger counters; limiter windows): no database round trip on the hot path.
//! - A denial never reaches the upstream and books nothing.
//! - Model aliases (team then key) rewrite the model, but every allow-list must allow the
//!   requested name or the dispatched target — an alias never widens a list (fixes §10 #22).
//! - Every admitted call settles exactly once: non-streaming calls run in a spawned task so a
//!   client disconnect cannot cancel the accounting; each stream runs in its own task whose drop
//!   guard bills counted tokens when the upstream's usage never arrived, and which ends at the
//!   deployment's deadline even when the client stopped reading.
//! - A call waits for spend-queue room before anything else (backpressure, `Ledger::admit`).
//!
//! Layout: `context` (caller, allow-lists, parsed request) → `governance` (the pipeline) →
//! `dispatch` (upstream call, settlement) → `stream` / `mock`; `models` renders the model lists.
//!
//! Documented choices: team budgets refuse at `spend >= max_budget` (the reference uses `>` for
//! teams only; `>=` matches keys and members). Streams ask the upstream for
//! `stream_options.include_usage` to bill from it; the final usage-only chunk reaches the client
//! only if it asked too (client code often indexes `choices[0]` of every chunk), and every other
//! byte passes unchanged. Rate-limit
//! and budget messages name a key by its alias or abbreviated name, never by its hash.
//! Load benchmark: `purser-bench process` (bench/README.md).

mod context;
mod dispatch;
mod governance;
mod mock;
mod models;
mod stream;

pub use context::{
    CallContext, CallRequest, DEFAULT_COMPLETION_ESTIMATE, Inbound, callable_models,
};
pub use governance::{count_tokens, handle};
pub use models::{ModelListQuery, model_info, model_list, model_retrieve};
