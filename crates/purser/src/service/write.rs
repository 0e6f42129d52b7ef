//! A management write: one database transaction plus the record of what it changed, applied in one
//! after-commit step. Invariants: nothing is evicted before the commit (a request in between would
//! refill the cache with the old row), and `commit` returns only after every eviction and spend
//! counter reset is done, so the handler answers after the very next request would see the change.
//! This is the one place a write's effects leave the database (scale-out broadcasts them here too).

use std::ops::{Deref, DerefMut};

use crate::app::AppState;
use crate::error::Error;
use crate::service::spend::SpendScope;
use crate::store::WriteTx;

/// One thing a write changed, named by what readers cache or count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// A key row (by token hash), also a key that did not exist before (negative entries).
    Key(String),
    /// A team row and its roster.
    Team(String),
    /// Every membership of a team (a team-wide member budget changed).
    TeamMembers(String),
    Member {
        team_id: String,
        user_id: String,
    },
    User(String),
    /// An entity deleted or created anew: its in-memory spend counter starts from zero, so an
    /// id reused later does not inherit the old spend.
    SpendZeroed(SpendScope),
}

/// An open write: derefs to the transaction, so store functions take `&mut write`.
pub struct Write<'a> {
    state: &'a AppState,
    tx: WriteTx,
    changed: Vec<Changed>,
}

impl<'a> Write<'a> {
    /// `BEGIN IMMEDIATE` on SQLite, `BEGIN` on PostgreSQL (see `store::Db::begin_write`).
    pub async fn begin(state: &'a AppState) -> Result<Write<'a>, Error> {
        Ok(Write {
            state,
            tx: state.db.begin_write().await?,
            changed: Vec::new(),
        })
    }

    /// Records a change, applied after commit in the order recorded.
    pub fn changed(&mut self, c: Changed) {
        self.changed.push(c);
    }

    pub fn key(&mut self, token: &str) {
        self.changed(Changed::Key(token.to_string()));
    }

    pub fn team(&mut self, team_id: &str) {
        self.changed(Changed::Team(team_id.to_string()));
    }

    pub fn member(&mut self, team_id: &str, user_id: &str) {
        self.changed(Changed::Member {
            team_id: team_id.to_string(),
            user_id: user_id.to_string(),
        });
    }

    pub fn user(&mut self, user_id: &str) {
        self.changed(Changed::User(user_id.to_string()));
    }

    pub fn spend_zeroed(&mut self, scope: SpendScope) {
        self.changed(Changed::SpendZeroed(scope));
    }

    /// Commits, then applies every recorded change. Nothing is applied if the commit fails.
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await?;
        after_commit(self.state, &self.changed).await;
        Ok(())
    }
}

/// The after-commit step: cache evictions and spend counter resets, in order. Writes outside
/// a `Write` (the reset job's single compare-and-set UPDATEs) call it after their statement.
pub async fn after_commit(state: &AppState, changed: &[Changed]) {
    for c in changed {
        match c {
            Changed::Key(token) => state.cache.evict_key(token).await,
            Changed::Team(id) => state.cache.evict_team(id).await,
            Changed::TeamMembers(id) => state.cache.evict_team_members(id),
            Changed::Member { team_id, user_id } => {
                state.cache.evict_member(team_id, user_id).await
            }
            Changed::User(id) => state.cache.evict_user(id).await,
            Changed::SpendZeroed(scope) => state.ledger.on_spend_set(scope, 0),
        }
    }
}

impl Deref for Write<'_> {
    type Target = WriteTx;
    fn deref(&self) -> &WriteTx {
        &self.tx
    }
}

impl DerefMut for Write<'_> {
    fn deref_mut(&mut self) -> &mut WriteTx {
        &mut self.tx
    }
}
