//! In-memory governance cache: keys, users, teams and memberships by id, with negative entries
//! for ids that do not exist. Invariant: every management write evicts what it changed before it
//! answers, so the next request reads fresh rows; the TTL is only a safety net. A load that
//! raced with an eviction is not inserted (epoch check), so a stale row read just before a
//! write commits cannot be cached after that write evicted its entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache as Moka;

use crate::store::{
    self, Db, budgets::BudgetRow, keys::KeyRow, members::MembershipRow, teams::TeamRow,
    users::UserRow,
};

/// A team row with its resolved model aliases (from `model_table`).
#[derive(Debug, Clone)]
pub struct TeamEntry {
    pub team: TeamRow,
    pub model_aliases: serde_json::Map<String, serde_json::Value>,
}

/// A membership row with its budget row, if linked.
#[derive(Debug, Clone)]
pub struct MemberEntry {
    pub membership: MembershipRow,
    pub budget: Option<BudgetRow>,
}

#[derive(Clone)]
pub struct Cache {
    keys: Moka<String, Option<Arc<KeyRow>>>,
    users: Moka<String, Option<Arc<UserRow>>>,
    teams: Moka<String, Option<Arc<TeamEntry>>>,
    members: Moka<(String, String), Option<Arc<MemberEntry>>>,
    /// Bumped by every eviction; a load only caches its result if no eviction happened meanwhile.
    epoch: Arc<AtomicU64>,
}

pub const TTL: Duration = Duration::from_secs(300);
const CAPACITY: u64 = 200_000;

impl Default for Cache {
    fn default() -> Self {
        Cache::new()
    }
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            keys: Moka::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
            users: Moka::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
            teams: Moka::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
            members: Moka::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .support_invalidation_closures()
                .build(),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The key with this hash, loading it on a miss.
    pub async fn key(&self, db: &Db, token: &str) -> store::Result<Option<Arc<KeyRow>>> {
        if let Some(v) = self.keys.get(token).await {
            return Ok(v);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut h = db.conn().await?;
        let v = store::keys::get(&mut h, token).await?.map(Arc::new);
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.keys.insert(token.to_string(), v.clone()).await;
        }
        Ok(v)
    }

    pub async fn user(&self, db: &Db, user_id: &str) -> store::Result<Option<Arc<UserRow>>> {
        if let Some(v) = self.users.get(user_id).await {
            return Ok(v);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut h = db.conn().await?;
        let v = store::users::get(&mut h, user_id).await?.map(Arc::new);
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.users.insert(user_id.to_string(), v.clone()).await;
        }
        Ok(v)
    }

    pub async fn team(&self, db: &Db, team_id: &str) -> store::Result<Option<Arc<TeamEntry>>> {
        if let Some(v) = self.teams.get(team_id).await {
            return Ok(v);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut h = db.conn().await?;
        let v = match store::teams::get(&mut h, team_id).await? {
            None => None,
            Some(team) => {
                let model_aliases = match team.model_id {
                    Some(id) => store::models::get(&mut h, id)
                        .await?
                        .and_then(|m| m.aliases.0.as_object().cloned())
                        .unwrap_or_default(),
                    None => Default::default(),
                };
                Some(Arc::new(TeamEntry {
                    team,
                    model_aliases,
                }))
            }
        };
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.teams.insert(team_id.to_string(), v.clone()).await;
        }
        Ok(v)
    }

    pub async fn member(
        &self,
        db: &Db,
        team_id: &str,
        user_id: &str,
    ) -> store::Result<Option<Arc<MemberEntry>>> {
        let k = (team_id.to_string(), user_id.to_string());
        if let Some(v) = self.members.get(&k).await {
            return Ok(v);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut h = db.conn().await?;
        let v = match store::members::get(&mut h, team_id, user_id).await? {
            None => None,
            Some(membership) => {
                let budget = match &membership.budget_id {
                    Some(b) => store::budgets::get(&mut h, b).await?,
                    None => None,
                };
                Some(Arc::new(MemberEntry { membership, budget }))
            }
        };
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.members.insert(k, v.clone()).await;
        }
        Ok(v)
    }

    pub async fn evict_key(&self, token: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.keys.invalidate(token).await;
    }

    pub async fn evict_keys(&self, tokens: &[String]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for t in tokens {
            self.keys.invalidate(t).await;
        }
    }

    pub async fn evict_user(&self, user_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.users.invalidate(user_id).await;
    }

    pub async fn evict_team(&self, team_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.teams.invalidate(team_id).await;
    }

    pub async fn evict_member(&self, team_id: &str, user_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.members
            .invalidate(&(team_id.to_string(), user_id.to_string()))
            .await;
    }

    /// Evicts every cached membership of a team (e.g. its default member budget changed).
    pub fn evict_team_members(&self, team_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let team_id = team_id.to_string();
        // Only fails when closures are not enabled, which `new` does.
        let _ = self
            .members
            .invalidate_entries_if(move |k, _| k.0 == team_id);
    }

    /// Drops everything (budget reset job, tests).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.keys.invalidate_all();
        self.users.invalidate_all();
        self.teams.invalidate_all();
        self.members.invalidate_all();
    }
}
