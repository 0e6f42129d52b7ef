//! Pure domain rules of Purser: money, budget periods, virtual keys, roles and model access.
//! Nothing here performs I/O or knows about HTTP, SQL or time sources; callers pass `now` in.

pub mod access;
pub mod budget;
pub mod keys;
pub mod money;
pub mod roles;
