//! In-memory governance cache: keys, users, teams and memberships by id, with negative entries
//! for ids that do not exist. Invariant: every management write evicts what it changed before it
//! answers, so a request that starts after the write answered never sees a row read before that
//! write's eviction; the TTL is only a safety net.
//!
//! How the invariant holds without locks:
//! - A global `epoch` counts evictions. An eviction commits first (the caller's transaction), then
//!   bumps the epoch to E, then records E in the key's stripe (a fixed array of watermarks indexed
//!   by the key's hash), then removes the entry.
//! - A fill records the epoch it saw *before* its database read began, and the cached value
//!   carries it ([`Filled`]).
//! - Every value taken from the map, cached or freshly loaded, is checked: it is valid only if its
//!   epoch is at least the key's stripe watermark (and the `clear` watermark, and for memberships
//!   the team's watermark). A fill whose read may predate an eviction therefore fails the check
//!   whenever it lands in the map: before the eviction removed it, after, or when a joiner
//!   receives it. Such a value is dropped and the load retried.
//! - Concurrent misses of one key share one database load (moka `try_get_with`).
//!
//! Stripe collisions only cost extra reloads (an unrelated eviction in the same stripe makes an
//! entry look older than it is), never a stale answer.

use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
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
    keys: Table<String, KeyRow>,
    users: Table<String, UserRow>,
    teams: Table<String, TeamEntry>,
    members: Table<(String, String), MemberEntry>,
    /// Watermarks of `evict_team_members`, by team id.
    member_teams: Arc<Stripes>,
    epochs: Arc<Epochs>,
}

pub const TTL: Duration = Duration::from_secs(300);
const CAPACITY: u64 = 200_000;
/// Watermarks per table: 32 KiB each; a write invalidates about 1/4096 of a table's entries
/// besides its own.
const STRIPES: usize = 4096;
/// Fills rejected in a row (evictions racing with every load) before reading without caching.
const ATTEMPTS: usize = 4;

/// The eviction counter and the watermark of the last `clear`; hits and loads for `/metrics`.
#[derive(Default)]
struct Epochs {
    epoch: AtomicU64,
    cleared: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Epochs {
    /// Called after the write committed and before its entries are removed.
    fn bump(&self) -> u64 {
        self.epoch.fetch_add(1, SeqCst) + 1
    }
}

/// Eviction watermarks indexed by key hash.
struct Stripes {
    hasher: RandomState,
    at: Box<[AtomicU64]>,
}

impl Stripes {
    fn new() -> Stripes {
        Stripes {
            hasher: RandomState::new(),
            at: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot<Q: Hash + ?Sized>(&self, k: &Q) -> &AtomicU64 {
        &self.at[(self.hasher.hash_one(k) % STRIPES as u64) as usize]
    }

    fn mark<Q: Hash + ?Sized>(&self, k: &Q, epoch: u64) {
        self.slot(k).fetch_max(epoch, SeqCst);
    }

    fn newest<Q: Hash + ?Sized>(&self, k: &Q) -> u64 {
        self.slot(k).load(SeqCst)
    }
}

/// A cached row (or cached absence) and the epoch seen before its database read began.
struct Filled<T> {
    epoch: u64,
    value: Option<Arc<T>>,
}

impl<T> Clone for Filled<T> {
    fn clone(&self) -> Self {
        Filled {
            epoch: self.epoch,
            value: self.value.clone(),
        }
    }
}

#[cfg(test)]
type Hook = Arc<std::sync::Mutex<Option<futures_util::future::BoxFuture<'static, ()>>>>;

/// One cached table: the map and its eviction watermarks.
struct Table<K, T> {
    map: Moka<K, Filled<T>>,
    stripes: Arc<Stripes>,
    /// Test-only: awaited once, after a fill's read and before the value goes into the map.
    #[cfg(test)]
    before_insert: Hook,
}

impl<K, T> Clone for Table<K, T> {
    fn clone(&self) -> Self {
        Table {
            map: self.map.clone(),
            stripes: self.stripes.clone(),
            #[cfg(test)]
            before_insert: self.before_insert.clone(),
        }
    }
}

impl<K, T> Table<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    fn new(closures: bool) -> Table<K, T> {
        let mut b = Moka::builder().max_capacity(CAPACITY).time_to_live(TTL);
        if closures {
            b = b.support_invalidation_closures();
        }
        Table {
            map: b.build(),
            stripes: Arc::new(Stripes::new()),
            #[cfg(test)]
            before_insert: Default::default(),
        }
    }

    /// The cached value of `key`, or one load through `read` shared by concurrent callers. A
    /// value whose read may predate an eviction of `key` (or `floor`) is never returned.
    async fn load<F, Fut>(
        &self,
        epochs: &Epochs,
        key: &K,
        floor: impl Fn() -> u64,
        read: F,
    ) -> store::Result<Option<Arc<T>>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = store::Result<Option<Arc<T>>>>,
    {
        let newest = || {
            self.stripes
                .newest(key)
                .max(epochs.cleared.load(SeqCst))
                .max(floor())
        };
        for _ in 0..ATTEMPTS {
            // A hit takes moka's small `get` future; the shared load (`try_get_with`, whose
            // future holds the whole read) is boxed, so it is neither built nor copied through
            // every enclosing future on the hot path. Same rule as below: never older than the
            // watermark read after it.
            if let Some(hit) = self.map.get(key).await
                && hit.epoch >= newest()
            {
                epochs
                    .hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(hit.value);
            }
            epochs
                .misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let filled = Box::pin(self.map.try_get_with_by_ref(key, async {
                let epoch = epochs.epoch.load(SeqCst);
                let value = read().await?;
                #[cfg(test)]
                {
                    let hook = self.before_insert.lock().unwrap().take();
                    if let Some(h) = hook {
                        h.await;
                    }
                }
                Ok::<_, sqlx::Error>(Filled { epoch, value })
            }))
            .await
            .map_err(unshare)?;
            if filled.epoch >= newest() {
                return Ok(filled.value);
            }
            // Read before an eviction of this key: drop it (whoever put it there) and load again.
            self.map.invalidate(key).await;
        }
        // Evictions keep racing with the fills. A read that begins now is fresh for this caller.
        Box::pin(read()).await
    }

    /// After a write committed: no value read before this call is returned from now on.
    async fn evict(&self, epochs: &Epochs, key: &K) {
        let e = epochs.bump();
        self.stripes.mark(key, e);
        self.map.invalidate(key).await;
    }
}

/// The error of a shared load, for each of its callers (`sqlx::Error` is not `Clone`).
fn unshare(e: Arc<sqlx::Error>) -> sqlx::Error {
    Arc::try_unwrap(e).unwrap_or_else(|e| sqlx::Error::Protocol(e.to_string()))
}

fn no_floor() -> u64 {
    0
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new()
    }
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            keys: Table::new(false),
            users: Table::new(false),
            teams: Table::new(false),
            members: Table::new(true),
            member_teams: Arc::new(Stripes::new()),
            epochs: Arc::new(Epochs::default()),
        }
    }

    /// The key with this hash, loading it on a miss.
    /// Lookups answered from memory and lookups that read the database, since start.
    pub fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.epochs.hits.load(Relaxed),
            self.epochs.misses.load(Relaxed),
        )
    }

    pub async fn key(&self, db: &Db, token: &str) -> store::Result<Option<Arc<KeyRow>>> {
        let k = token.to_string();
        self.keys
            .load(&self.epochs, &k, no_floor, move || async move {
                let mut h = db.conn().await?;
                Ok::<_, sqlx::Error>(store::keys::get(&mut h, token).await?.map(Arc::new))
            })
            .await
    }

    pub async fn user(&self, db: &Db, user_id: &str) -> store::Result<Option<Arc<UserRow>>> {
        let k = user_id.to_string();
        self.users
            .load(&self.epochs, &k, no_floor, move || async move {
                let mut h = db.conn().await?;
                Ok::<_, sqlx::Error>(store::users::get(&mut h, user_id).await?.map(Arc::new))
            })
            .await
    }

    pub async fn team(&self, db: &Db, team_id: &str) -> store::Result<Option<Arc<TeamEntry>>> {
        let k = team_id.to_string();
        self.teams
            .load(&self.epochs, &k, no_floor, move || async move {
                let mut h = db.conn().await?;
                Ok::<_, sqlx::Error>(match store::teams::get(&mut h, team_id).await? {
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
                })
            })
            .await
    }

    pub async fn member(
        &self,
        db: &Db,
        team_id: &str,
        user_id: &str,
    ) -> store::Result<Option<Arc<MemberEntry>>> {
        let k = (team_id.to_string(), user_id.to_string());
        let floor = || self.member_teams.newest(team_id);
        self.members
            .load(&self.epochs, &k, floor, move || async move {
                let mut h = db.conn().await?;
                Ok::<_, sqlx::Error>(match store::members::get(&mut h, team_id, user_id).await? {
                    None => None,
                    Some(membership) => {
                        let budget = match &membership.budget_id {
                            Some(b) => store::budgets::get(&mut h, b).await?,
                            None => None,
                        };
                        Some(Arc::new(MemberEntry { membership, budget }))
                    }
                })
            })
            .await
    }

    pub async fn evict_key(&self, token: &str) {
        self.keys.evict(&self.epochs, &token.to_string()).await;
    }

    pub async fn evict_keys(&self, tokens: &[String]) {
        for t in tokens {
            self.keys.evict(&self.epochs, t).await;
        }
    }

    pub async fn evict_user(&self, user_id: &str) {
        self.users.evict(&self.epochs, &user_id.to_string()).await;
    }

    pub async fn evict_team(&self, team_id: &str) {
        self.teams.evict(&self.epochs, &team_id.to_string()).await;
    }

    pub async fn evict_member(&self, team_id: &str, user_id: &str) {
        self.members
            .evict(&self.epochs, &(team_id.to_string(), user_id.to_string()))
            .await;
    }

    /// Evicts every cached membership of a team (e.g. its default member budget changed).
    pub fn evict_team_members(&self, team_id: &str) {
        let e = self.epochs.bump();
        self.member_teams.mark(team_id, e);
        let team_id = team_id.to_string();
        // Frees the memory; correctness comes from the watermark. Only fails when closures are
        // not enabled, which `new` does.
        let _ = self
            .members
            .map
            .invalidate_entries_if(move |k, _| k.0 == team_id);
    }

    /// Drops everything (budget reset job, tests).
    pub fn clear(&self) {
        let e = self.epochs.bump();
        self.epochs.cleared.fetch_max(e, SeqCst);
        self.keys.map.invalidate_all();
        self.users.map.invalidate_all();
        self.teams.map.invalidate_all();
        self.members.map.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::watch;

    use super::*;

    /// A one-row fake database that counts its reads; the first read can be held open.
    struct Fake {
        row: Mutex<String>,
        reads: AtomicUsize,
        hold_first: watch::Receiver<bool>,
    }

    impl Fake {
        fn new(row: &str, held: bool) -> (Arc<Fake>, watch::Sender<bool>) {
            let (tx, rx) = watch::channel(!held);
            let fake = Fake {
                row: Mutex::new(row.into()),
                reads: AtomicUsize::new(0),
                hold_first: rx,
            };
            (Arc::new(fake), tx)
        }

        /// Reads the row as it is when the read begins, then (first read only) waits.
        async fn read(&self) -> store::Result<Option<Arc<String>>> {
            let n = self.reads.fetch_add(1, SeqCst);
            let v = self.row.lock().unwrap().clone();
            if n == 0 {
                let _ = self.hold_first.clone().wait_for(|go| *go).await;
            }
            Ok(Some(Arc::new(v)))
        }

        /// A write: commit the new row (eviction is the caller's next step).
        fn commit(&self, row: &str) {
            *self.row.lock().unwrap() = row.into();
        }

        fn reads(&self) -> usize {
            self.reads.load(SeqCst)
        }
    }

    type Read = futures_util::future::BoxFuture<'static, store::Result<Option<Arc<String>>>>;

    fn reader(db: &Arc<Fake>) -> impl Fn() -> Read {
        let db = db.clone();
        move || {
            let db = db.clone();
            Box::pin(async move { db.read().await })
        }
    }

    fn text(v: Option<Arc<String>>) -> String {
        v.map(|s| s.to_string()).unwrap_or_default()
    }

    /// The window today's code left open: the write commits and evicts after the fill read the
    /// old row and checked the epoch, but before the fill put the row in the map. A request that
    /// starts after the write answered must read the new row, and the old one must not stay cached.
    #[tokio::test]
    async fn eviction_between_read_and_insert_is_not_served() {
        let epochs = Arc::new(Epochs::default());
        let t: Table<String, String> = Table::new(false);
        let (db, _go) = Fake::new("old", false);
        let k = "k".to_string();
        let (t2, e2, db2, k2) = (t.clone(), epochs.clone(), db.clone(), k.clone());
        *t.before_insert.lock().unwrap() = Some(Box::pin(async move {
            db2.commit("new");
            t2.evict(&e2, &k2).await;
        }));
        // The request racing with the write may see either row.
        let _ = t.load(&epochs, &k, no_floor, reader(&db)).await.unwrap();
        // The write has answered: every later request sees the new row.
        for _ in 0..3 {
            let v = t.load(&epochs, &k, no_floor, reader(&db)).await.unwrap();
            assert_eq!(text(v), "new");
        }
    }

    /// A request that starts after a write answered must not join a load whose read began
    /// before the write's eviction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_joining_a_load_that_predates_an_eviction() {
        let epochs = Arc::new(Epochs::default());
        let t: Table<String, String> = Table::new(false);
        let (db, go) = Fake::new("old", true);
        let k = "k".to_string();
        let early = {
            let (t, epochs, db, k) = (t.clone(), epochs.clone(), db.clone(), k.clone());
            tokio::spawn(async move { t.load(&epochs, &k, no_floor, reader(&db)).await })
        };
        while db.reads() == 0 {
            tokio::task::yield_now().await;
        }
        // The early load has read "old" and is still in flight. A write commits and evicts.
        db.commit("new");
        t.evict(&epochs, &k).await;
        // The write has answered; a new request starts while the early load is in flight.
        let late = {
            let (t, epochs, db, k) = (t.clone(), epochs.clone(), db.clone(), k.clone());
            tokio::spawn(async move { t.load(&epochs, &k, no_floor, reader(&db)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        go.send(true).unwrap();
        let _ = early.await.unwrap().unwrap();
        assert_eq!(text(late.await.unwrap().unwrap()), "new");
        let v = t.load(&epochs, &k, no_floor, reader(&db)).await.unwrap();
        assert_eq!(text(v), "new", "the old row is not left cached");
    }

    /// N concurrent misses of one key make one database read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_load() {
        let epochs = Arc::new(Epochs::default());
        let t: Table<String, String> = Table::new(false);
        let (db, go) = Fake::new("row", true);
        let k = "k".to_string();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (t, epochs, db, k) = (t.clone(), epochs.clone(), db.clone(), k.clone());
                tokio::spawn(async move { t.load(&epochs, &k, no_floor, reader(&db)).await })
            })
            .collect();
        while db.reads() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        go.send(true).unwrap();
        for task in tasks {
            assert_eq!(text(task.await.unwrap().unwrap()), "row");
        }
        assert_eq!(db.reads(), 1);
    }

    /// A bulk eviction (`evict_team_members`, `clear`) raises a watermark outside the key's own
    /// stripe: a fill that raced with it is not served afterwards either.
    #[tokio::test]
    async fn bulk_eviction_watermark_rejects_older_fills() {
        let epochs = Arc::new(Epochs::default());
        let t: Table<String, String> = Table::new(false);
        let teams = Arc::new(Stripes::new());
        let (db, _go) = Fake::new("old", false);
        let k = "k".to_string();
        let (e2, db2, teams2) = (epochs.clone(), db.clone(), teams.clone());
        *t.before_insert.lock().unwrap() = Some(Box::pin(async move {
            db2.commit("new");
            teams2.mark("team", e2.bump());
        }));
        let floor = || teams.newest("team");
        let _ = t.load(&epochs, &k, floor, reader(&db)).await.unwrap();
        let v = t.load(&epochs, &k, floor, reader(&db)).await.unwrap();
        assert_eq!(text(v), "new");
    }
}
