//! A management write: one database transaction plus the record of what it changed, applied in one
//! after-commit step. Invariants: nothing is evicted before the commit (a request in between would
//! refill the cache with the old row), and `commit` returns only after every eviction and spend
//! counter reset is done, so the handler answers after the very next request would see the change.
//! This is the one place a write's effects leave the database: with several instances they are
//! published here to every peer (`cluster::bus`) and applied there by [`apply_remote`].

use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::cluster::Bus;
use crate::error::Error;
use crate::service::spend::{Ledger, SpendScope};
use crate::store::WriteTx;

/// One thing a write changed, named by what readers cache or count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A spend column replaced under the spend writer's gate (a reset, a spend-set): the writer
    /// of the change has moved its own counter already; peers and the shared counter follow.
    SpendSet {
        scope: SpendScope,
        value: i64,
    },
    /// A key regenerated (token hashes): its counters and unwritten spend follow it.
    KeyRenamed {
        from: String,
        to: String,
    },
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

/// The after-commit step: cache evictions and spend counter resets here, in order, then the
/// same changes on every other instance (the change bus waits until each live peer applied
/// them) and on the shared counters. Writes outside a `Write` (the reset job's single
/// compare-and-set UPDATEs, spend writes under the writer's gate) call it after their statement.
pub async fn after_commit(state: &AppState, changed: &[Changed]) {
    for c in changed {
        apply_cached(state, c).await;
    }
    if let Some(r) = state.ledger.redis() {
        for c in changed {
            match c {
                Changed::SpendZeroed(scope) => r.forget(&Ledger::shared_key(r, scope)).await,
                Changed::SpendSet { scope, value } => {
                    r.set_spend(&Ledger::shared_key(r, scope), *value).await
                }
                Changed::KeyRenamed { from, to } => {
                    r.rename(
                        &Ledger::shared_key(r, &SpendScope::Key(from.clone())),
                        &Ledger::shared_key(r, &SpendScope::Key(to.clone())),
                    )
                    .await
                }
                _ => {}
            }
        }
    }
    if let Some(bus) = &state.cluster.bus
        && !changed.is_empty()
    {
        match serde_json::to_string(changed) {
            Ok(payload) => bus.publish(&payload).await,
            Err(_) => bus.publish(Bus::CLEAR_ALL).await,
        }
    }
}

/// Applies a peer's published changes here (the change bus's handler): the same evictions,
/// and its spend-sets and renames under this instance's writer gate. [`Bus::CLEAR_ALL`] (or a
/// payload this version cannot read) drops every cached row and every counter that has
/// nothing in flight or unwritten, so they are read afresh.
pub async fn apply_remote(state: &AppState, payload: &str) {
    let changed: Vec<Changed> = match payload {
        Bus::CLEAR_ALL => Vec::new(),
        p => match serde_json::from_str(p) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable change from a peer; dropping every cached row");
                Vec::new()
            }
        },
    };
    if changed.is_empty() {
        state.cache.clear();
        state.ledger.forget_settled();
        return;
    }
    for c in &changed {
        match c {
            Changed::SpendSet { scope, value } => {
                state.ledger.spend_write().await.set(scope, *value)
            }
            Changed::KeyRenamed { from, to } => state
                .ledger
                .spend_write()
                .await
                .rename(&SpendScope::Key(from.clone()), &SpendScope::Key(to.clone())),
            c => apply_cached(state, c).await,
        }
    }
}

/// A change's cache evictions and spend-counter zeroing here. Spend-sets and renames are the
/// writer's `SpendWrite` on the instance that made them (see [`apply_remote`] for peers).
async fn apply_cached(state: &AppState, c: &Changed) {
    match c {
        Changed::Key(token) => state.cache.evict_key(token).await,
        Changed::Team(id) => state.cache.evict_team(id).await,
        Changed::TeamMembers(id) => state.cache.evict_team_members(id),
        Changed::Member { team_id, user_id } => state.cache.evict_member(team_id, user_id).await,
        Changed::User(id) => state.cache.evict_user(id).await,
        Changed::SpendZeroed(scope) => state.ledger.on_spend_set(scope, 0),
        Changed::SpendSet { .. } | Changed::KeyRenamed { .. } => {}
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
