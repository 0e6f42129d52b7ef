//! Spend ledger (filled in by the request-path issue): in-memory spend counters of keys, teams,
//! members and users with in-flight reservations, flushed to the database in batches.

/// An entity whose spend is tracked and can be reset by the budget reset job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpendScope {
    Key(String),
    Team(String),
    Member { team_id: String, user_id: String },
    User(String),
}

/// In-memory spend counters.
#[derive(Debug, Default)]
pub struct Ledger {}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {}
    }

    /// Called by the budget reset job after it zeroed `scope`'s spend in the database.
    pub async fn on_reset(&self, _scope: &SpendScope) {}
}
