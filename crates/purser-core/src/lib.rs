//! Pure domain rules of Purser: money, budget periods, virtual keys, roles, model access and the
//! field rules of management requests.
//! Nothing here performs I/O or knows about HTTP, SQL or time sources; callers pass `now` in.

pub mod access;
pub mod budget;
pub mod keys;
pub mod money;
pub mod provider;
pub mod redact;
pub mod roles;
pub mod routes;
pub mod unenforced;
pub mod validate;
