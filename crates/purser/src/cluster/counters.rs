//! Counters shared by every instance through Redis: rate-limit windows and parallel slots,
//! budget reservations and spend windows. A call's admission is one Lua script (atomic across
//! every scope of the call); what it leaves when it ends (slot release, real tokens, settled
//! cost) is summed with other ended calls and sent by the flusher every [`FLUSH_GAP`].
//!
//! Invariants:
//! - Callers use Redis only while [`RedisCounters::up`]; any error marks it down (the caller
//!   falls back to its in-process counters for that call) and the prober brings it back.
//! - Increments not yet sent (a call admitted through Redis that ended while it was down, or in
//!   the last [`FLUSH_GAP`]) are kept, summed per field, and applied when Redis is back, before it
//!   is used again; a reservation is held until its release is applied, so the delay can only
//!   make a budget stricter;
//!   so released slots and settled spend are not lost by an outage, and keys Redis no longer holds
//!   (restarted, flushed) are seeded again from the instance's counters instead.
//! - Budget counters are seeded from the caller's counter (database value plus this instance's
//!   unwritten spend) the first time Redis lacks them; spend reaches the database through each
//!   instance's own writer, so the database sums every instance exactly.
//! - Every key starts with the instance group's prefix (derived from the database's identity, so
//!   instances on one database share counters and test runs never collide).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long the flusher gathers ended calls before one script run sends their sum.
const FLUSH_GAP: Duration = Duration::from_millis(2);
/// How often Redis is probed (and how soon after it returns instances share again).
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A Redis answer slower than this counts as Redis being down (the call goes on locally).
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
/// Budget counters unused this long expire: longer than the ledger's idle eviction (360 s; a
/// unit test in `service::spend` checks), so an instance that still counts a scope finds it.
pub const BUDGET_TTL_SECS: u64 = 420;

/// What calls left behind once they ended, summed over many calls: deltas added to fields
/// of keys that exist (a missing key is seeded afresh later); `r`, `f` and `pf` never go below
/// zero. The field `tk` is a call's real tokens: added to the minute's and the day's counts of
/// a rate-limit window, rolling it as the in-process limiter does. KEYS: the keys with deltas;
/// from ARGV index `a`: per key, its delta count, then field and delta per delta. Returns the
/// ARGV index after the last group. (Redis's Lua bridge costs about a microsecond per command
/// argument and reply element on these machines, so every call and field counts: one EXISTS
/// per key, not per delta.)
const APPLY_FN: &str = r#"
local function apply_deltas(nk, koff, a, now)
  local tn, call = tonumber, redis.call
  local ws = now - now % 60
  local ds = now - now % 86400
  for i = 1, nk do
    local k = KEYS[koff + i]
    local n = tn(ARGV[a])
    if call('EXISTS', k) == 1 then
      for j = 1, n do
        local field, d = ARGV[a + 2 * j - 1], ARGV[a + 2 * j]
        if field == 'tk' then
          local v = call('HMGET', k, 'ws', 'ds')
          if tn(v[1]) ~= ws then call('HSET', k, 'ws', ws, 'rq', 0, 'tk', 0) end
          if tn(v[2]) ~= ds then call('HSET', k, 'ds', ds, 'dt', 0) end
          call('HINCRBY', k, 'tk', d)
          call('HINCRBY', k, 'dt', d)
        else
          local v = call('HINCRBY', k, field, d)
          if v < 0 and field ~= 's' then call('HSET', k, field, 0) end
        end
      end
    end
    a = a + 1 + 2 * n
  end
  return a
end
"#;

/// [`APPLY_FN`] over all KEYS. ARGV: now, then the groups of deltas (one per key).
const APPLY: &str = r#"
apply_deltas(#KEYS, 0, 2, tonumber(ARGV[1]))
return 0
"#;

/// A call's whole admission in one round trip, all or nothing across its three parts (a call
/// refused by a rate limit reserves no budget, one over budget counts no request):
/// - budget counters (key, team, member, user): seeded when missing; a capped one admits when
///   `spend + reserved + estimate <= max`, or nothing is in flight and `spend < max`;
/// - spend windows (`model_max_budget`, `budget_limits`): opened (or reopened once ended, or
///   when a calendar window's end moved) with the caller's end and seed; refused once `spend >=
///   max`, else admitted by the same rule;
/// - rate-limit windows: the in-process limiter's algorithm (fixed 60 s windows and a UTC day).
///
/// First, this instance's increments not yet sent ([`APPLY_FN`]), so its own ended calls are
/// always seen by its next admission.
///
/// KEYS: keys with pending increments, budgets, spend windows, rate windows. ARGV: count of
/// keys with increments, now, their groups ([`APPLY_FN`]), then budget count, spend-window count,
/// estimate, enforce, ttl, now; seed and max (-1: none) per budget; max, end, fixed end (1/0)
/// and seed per spend window; rpm, tpm, tpd, parallel (-1: none) per rate window. Returns {0},
/// {1, index, spend}, {2, index, requests, tokens, day_tokens, in_flight} or {3, index, spend}.
/// Limits are compared as strings first (`'-1'`) and parsed only when set; rate windows write
/// only the fields that changed.
const ADMIT: &str = r#"
local tn, call = tonumber, redis.call
local na = tn(ARGV[1])
local now = tn(ARGV[2])
local o = apply_deltas(na, 0, 3, now) - 1
local nb, nm = tn(ARGV[o + 1]), tn(ARGV[o + 2])
local est = tn(ARGV[o + 3])
local enforce = ARGV[o + 4] == '1'
local ttl = ARGV[o + 5]
local bo = o + 6
-- Read everything once; write only when the whole call is admitted.
local bs, br, bf, bx = {}, {}, {}, {}
for i = 1, nb do
  local v = call('HMGET', KEYS[na + i], 's', 'r', 'f', 'x')
  local s, r, f
  if v[1] then
    s, r, f = tn(v[1]) or 0, tn(v[2]) or 0, tn(v[3]) or 0
    bx[i] = tn(v[4]) or 0
  else
    s, r, f = tn(ARGV[bo + 2 * i - 1]), 0, 0
    bx[i] = false
  end
  if enforce then
    local mx = ARGV[bo + 2 * i]
    if mx ~= '-1' then
      mx = tn(mx)
      if s + r + est > mx and (f > 0 or s >= mx) then return {1, i, s} end
    end
  end
  bs[i], br[i], bf[i] = s, r, f
end
local mo = bo + 2 * nb
local ko = na + nb
local ms, mr, mf, mre, me = {}, {}, {}, {}, {}
for m = 1, nm do
  local b = mo + (m - 1) * 4
  local mx, ends, seed = tn(ARGV[b + 1]), ARGV[b + 2], tn(ARGV[b + 4])
  local v = call('HMGET', KEYS[ko + m], 's', 'r', 'f', 'e')
  local e = tn(v[4])
  local reopen = e == nil or e <= now or (ARGV[b + 3] == '1' and v[4] ~= ends)
  local s, r, f = seed, 0, 0
  if not reopen then
    s, r, f = tn(v[1]) or 0, tn(v[2]) or 0, tn(v[3]) or 0
  end
  if s >= mx or (s + r + est > mx and f > 0) then return {3, m, s} end
  ms[m], mr[m], mf[m], mre[m], me[m] = s, r, f, reopen, ends
end
local ws = now - now % 60
local ds = now - now % 86400
local wss, dss = tostring(ws), tostring(ds)
local ro = mo + 4 * nm
local wo = ko + nm
local nw = #KEYS - wo
local wq, wp, wt, wd, wroll, wdroll = {}, {}, {}, {}, {}, {}
for j = 1, nw do
  local v = call('HMGET', KEYS[wo + j], 'ws', 'rq', 'tk', 'ds', 'dt', 'pf')
  local b = ro + (j - 1) * 4
  local rolled = v[1] ~= wss
  local drolled = v[4] ~= dss
  local rq, pf = 0, tn(v[6]) or 0
  local tk, dt = 0, 0
  if not rolled then rq = tn(v[2]) or 0; tk = tn(v[3]) or 0 end
  if not drolled then dt = tn(v[5]) or 0 end
  local rpm, tpm, tpd, par = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  if (par ~= '-1' and pf >= tn(par)) or (rpm ~= '-1' and rq >= tn(rpm))
    or (tpm ~= '-1' and tk >= tn(tpm)) or (tpd ~= '-1' and dt >= tn(tpd)) then
    return {2, j, rq, tk, dt, pf}
  end
  wq[j], wt[j], wd[j], wroll[j], wdroll[j] = rq, tk, dt, rolled, drolled
  if par ~= '-1' then wp[j] = pf + 1 else wp[j] = false end
  if tpd ~= '-1' then wroll[j] = rolled and 2 or false elseif rolled then wroll[j] = 1 end
end
-- Budget counters: their expiry is pushed back at most once a minute ('x'), not per call.
for i = 1, nb do
  local k = KEYS[na + i]
  local x = bx[i]
  if not x or now - x >= 60 then
    call('HSET', k, 's', bs[i], 'r', br[i] + est, 'f', bf[i] + 1, 'x', now)
    call('EXPIRE', k, ttl)
  else
    call('HSET', k, 'r', br[i] + est, 'f', bf[i] + 1)
  end
end
-- Spend windows expire after their end, set when (re)opened.
for m = 1, nm do
  local k = KEYS[ko + m]
  if mre[m] then
    call('HSET', k, 's', ms[m], 'r', est, 'f', 1, 'e', me[m])
    call('EXPIRE', k, math.max(tn(me[m]) - now, 1) + 120)
  else
    call('HSET', k, 'r', mr[m] + est, 'f', mf[m] + 1)
  end
end
-- Rate windows: only what changed is written; expiry pushed back when a minute's window starts.
for j = 1, nw do
  local k = KEYS[wo + j]
  if wroll[j] or wdroll[j] then
    call('HSET', k, 'ws', ws, 'rq', wq[j] + 1, 'tk', wt[j], 'ds', ds, 'dt', wd[j])
    if wroll[j] == 2 then call('EXPIRE', k, 86520) elseif wroll[j] then call('EXPIRE', k, 600) end
  else
    call('HSET', k, 'rq', wq[j] + 1)
  end
  if wp[j] then call('HSET', k, 'pf', wp[j]) end
end
return {0}
"#;

/// Gives back a request counted in the current window (a refused pick). KEYS: windows.
/// ARGV: now.
const REFUND: &str = r#"
local now = tonumber(ARGV[1])
local ws = now - now % 60
for i = 1, #KEYS do
  local v = redis.call('HGET', KEYS[i], 'ws')
  if tonumber(v) == ws then
    local rq = redis.call('HINCRBY', KEYS[i], 'rq', -1)
    if rq < 0 then redis.call('HSET', KEYS[i], 'rq', 0) end
  end
end
return 0
"#;

/// One rate-limit descriptor as the script takes it.
#[derive(Debug, Clone)]
pub struct WindowArgs {
    pub key: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub tpd: Option<u64>,
    pub parallel: Option<u64>,
}

/// Counts of the window that refused a call.
#[derive(Debug, Clone, Copy)]
pub struct WindowFull {
    pub index: usize,
    pub requests: u64,
    pub tokens: u64,
    pub day_tokens: u64,
    pub in_flight: u64,
}

/// What refused a call in [`RedisCounters::admit`].
#[derive(Debug, Clone, Copy)]
pub enum Refused {
    /// `budgets[index]` is over budget at this spend.
    Budget {
        index: usize,
        spend: i64,
    },
    /// `spend_windows[index]` is over its limit at this spend.
    SpendWindow {
        index: usize,
        spend: i64,
    },
    Window(WindowFull),
}

/// One spend window (`model_max_budget`, `budget_limits`) as the script takes it.
#[derive(Debug, Clone)]
pub struct SpendWindowArgs {
    pub key: String,
    pub max: i64,
    /// Unix seconds at which a window opened now ends.
    pub ends_at: i64,
    /// A calendar window: one held with another end is reopened.
    pub fixed_end: bool,
    /// Spend a newly opened window starts from.
    pub seed: i64,
}

/// One budget scope of a reservation.
#[derive(Debug, Clone)]
pub struct BudgetArgs {
    pub key: String,
    pub seed: i64,
    pub max: Option<i64>,
}

struct Scripts {
    admit: Script,
    apply: Script,
    refund: Script,
}

pub struct RedisCounters {
    conn: ConnectionManager,
    prefix: String,
    up: AtomicBool,
    scripts: Scripts,
    /// What ended calls left for Redis, summed per (key, field) until the flusher sends it (or,
    /// while Redis is down, until the prober catches up). Field `tk`: real tokens.
    pending: Mutex<HashMap<(String, &'static str), i64>>,
    /// Wakes the flusher when `pending` gets its first entry.
    flush: Notify,
    /// The limiter's clock at the last tokens added (the windows they count in).
    clock: AtomicU64,
    /// Calls that fell back to in-process counters because Redis failed or was down.
    pub fallbacks: AtomicU64,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("up", &self.up())
            .finish()
    }
}

/// How many distinct keys `deltas` (sorted by key) name.
fn key_count(deltas: &[(String, &'static str, i64)]) -> usize {
    deltas.chunk_by(|a, b| a.0 == b.0).count()
}

/// Adds `deltas` (sorted by key) to a script invocation as [`APPLY_FN`] takes them: one KEY per
/// distinct key, and per key its delta count, then field and delta per delta.
fn push_groups(inv: &mut redis::ScriptInvocation<'_>, deltas: &[(String, &'static str, i64)]) {
    for group in deltas.chunk_by(|a, b| a.0 == b.0) {
        inv.key(&group[0].0).arg(group.len());
        for (_, f, d) in group {
            inv.arg(*f).arg(*d);
        }
    }
}

fn opt(v: Option<u64>) -> i64 {
    v.map(|x| x.min(i64::MAX as u64) as i64).unwrap_or(-1)
}

impl RedisCounters {
    /// Counters on the Redis at `url` (`redis://` or `rediss://`), connected lazily: a Redis
    /// that is down at start-up is joined when it comes up.
    pub fn new(url: &str, prefix: String) -> anyhow::Result<Arc<RedisCounters>> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("REDIS_URL / router_settings.redis_*: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Arc::new(RedisCounters {
            conn,
            prefix,
            up: AtomicBool::new(false),
            scripts: Scripts {
                admit: Script::new(&format!("{APPLY_FN}{ADMIT}")),
                apply: Script::new(&format!("{APPLY_FN}{APPLY}")),
                refund: Script::new(REFUND),
            },
            pending: Mutex::new(HashMap::new()),
            flush: Notify::new(),
            clock: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }))
    }

    /// True while Redis answers (calls share counters); false: in-process fallback.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The key of a budget counter (`scope` encoded by the caller).
    pub fn budget_key(&self, scope: &str) -> String {
        format!("{}b:{scope}", self.prefix)
    }

    /// The key of a spend window (`model_max_budget`, `budget_limits`) by its counter id.
    pub fn spend_window_key(&self, counter: &str) -> String {
        format!("{}mb:{counter}", self.prefix)
    }

    /// The key of a rate-limit window (`scope:id`).
    pub fn window_key(&self, counter: &str) -> String {
        format!("{}rl:{counter}", self.prefix)
    }

    fn failed(&self, e: &redis::RedisError) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Redis unreachable: rate limits and budgets fall back to per-instance counters");
        }
    }

    /// Counts a fallback taken because Redis is down (no attempt made).
    pub fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Reserves `estimate` on every budget and counts the call on every window, or neither
    /// (one script run: the request path's one Redis round trip). An error marks Redis down.
    pub async fn admit(
        &self,
        budgets: &[BudgetArgs],
        spend_windows: &[SpendWindowArgs],
        estimate: i64,
        enforce: bool,
        windows: &[WindowArgs],
        now: u64,
    ) -> redis::RedisResult<Option<Refused>> {
        let deltas = self.take_pending(true);
        let mut inv = self.scripts.admit.prepare_invoke();
        inv.arg(key_count(&deltas)).arg(now);
        push_groups(&mut inv, &deltas);
        inv.arg(budgets.len())
            .arg(spend_windows.len())
            .arg(estimate)
            .arg(if enforce { 1 } else { 0 })
            .arg(BUDGET_TTL_SECS)
            .arg(now);
        for b in budgets {
            inv.key(&b.key).arg(b.seed).arg(b.max.unwrap_or(-1));
        }
        for m in spend_windows {
            inv.key(&m.key)
                .arg(m.max)
                .arg(m.ends_at)
                .arg(if m.fixed_end { 1 } else { 0 })
                .arg(m.seed);
        }
        for w in windows {
            inv.key(&w.key)
                .arg(opt(w.rpm))
                .arg(opt(w.tpm))
                .arg(opt(w.tpd))
                .arg(opt(w.parallel));
        }
        let mut conn = self.conn.clone();
        let r: Vec<i64> = match inv.invoke_async(&mut conn).await {
            Ok(r) => r,
            Err(e) => {
                // Not applied (a script runs whole or not at all): sent later.
                self.restore(deltas);
                self.failed(&e);
                return Err(e);
            }
        };
        Ok(match r.as_slice() {
            [1, i, spend, ..] => Some(Refused::Budget {
                index: *i as usize - 1,
                spend: *spend,
            }),
            [2, i, rq, tk, dt, pf, ..] => Some(Refused::Window(WindowFull {
                index: *i as usize - 1,
                requests: *rq as u64,
                tokens: *tk as u64,
                day_tokens: *dt as u64,
                in_flight: *pf as u64,
            })),
            [3, i, spend, ..] => Some(Refused::SpendWindow {
                index: *i as usize - 1,
                spend: *spend,
            }),
            _ => None,
        })
    }

    /// Settles a reservation made through Redis: releases it and adds the real cost (sent
    /// without waiting; kept for later if Redis is down).
    pub fn settle(self: &Arc<Self>, keys: Vec<String>, estimate: i64, cost: i64) {
        let mut deltas = Vec::with_capacity(keys.len() * 3);
        for k in keys {
            deltas.push((k.clone(), "r", -estimate));
            deltas.push((k.clone(), "f", -1));
            if cost != 0 {
                deltas.push((k, "s", cost));
            }
        }
        self.send(deltas);
    }

    /// Moves a budget counter to `value` (a reset or spend-set committed to the database),
    /// keeping the reservations of calls in flight.
    pub async fn set_spend(&self, key: &str, value: i64) {
        // Costs settled before the new value are in it (or belong to the period it ended).
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, f), _| !(k == key && *f == "s"));
        if !self.up() {
            return; // seeded afresh from the instance's counter when Redis is back
        }
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("HSET")
            .arg(key)
            .arg("s")
            .arg(value)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            self.failed(&e);
        }
    }

    /// Drops a counter (entity deleted; a later one of that id starts from its own row).
    pub async fn forget(&self, key: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, _), _| k != key);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = conn.del(key).await;
        if let Err(e) = r {
            self.failed(&e);
        }
    }

    /// A key regenerated: its budget counter follows it (if Redis holds one).
    pub async fn rename(&self, from: &str, to: &str) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let moved: Vec<_> = p
                .iter()
                .filter(|((k, _), _)| k == from)
                .map(|((_, f), d)| (*f, *d))
                .collect();
            p.retain(|(k, _), _| k != from);
            for (f, d) in moved {
                *p.entry((to.to_string(), f)).or_default() += d;
            }
        }
        let mut conn = self.conn.clone();
        let exists: redis::RedisResult<bool> = conn.exists(from).await;
        match exists {
            Ok(true) => {
                let r: redis::RedisResult<()> = conn.rename(from, to).await;
                if let Err(e) = r {
                    self.failed(&e);
                }
            }
            Ok(false) => {}
            Err(e) => self.failed(&e),
        }
    }

    /// Frees the parallel slots a call admitted through Redis holds.
    pub fn release(self: &Arc<Self>, keys: Vec<String>) {
        self.send(keys.into_iter().map(|k| (k, "pf", -1)).collect());
    }

    /// Gives back the request (and slots) of a call refused after admission.
    pub fn refund(self: &Arc<Self>, keys: Vec<String>, slots: Vec<String>, now: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            if me.up() {
                let mut inv = me.scripts.refund.prepare_invoke();
                inv.arg(now);
                for k in &keys {
                    inv.key(k);
                }
                let mut conn = me.conn.clone();
                if let Err(e) = inv.invoke_async::<()>(&mut conn).await {
                    me.failed(&e);
                }
            }
            me.release(slots);
        });
    }

    /// Adds a finished call's real tokens to its windows (dropped while Redis is down: windows
    /// are short and the in-process fallback counts them meanwhile).
    pub fn add_tokens(self: &Arc<Self>, keys: Vec<String>, tokens: u64, now: u64) {
        if keys.is_empty() || tokens == 0 || !self.up() {
            return;
        }
        self.clock.store(now, Ordering::Relaxed);
        let tokens = tokens.min(i64::MAX as u64) as i64;
        self.send(keys.into_iter().map(|k| (k, "tk", tokens)).collect());
    }

    /// Adds increments to what the flusher sends next (or what the prober applies once Redis
    /// is back).
    fn send(self: &Arc<Self>, deltas: Vec<(String, &'static str, i64)>) {
        if deltas.is_empty() {
            return;
        }
        let first = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let first = p.is_empty();
            for (k, f, d) in deltas {
                *p.entry((k, f)).or_default() += d;
            }
            first
        };
        if first {
            self.flush.notify_one();
        }
    }

    /// Takes everything pending (tokens too when `with_tokens`, else they are dropped), sorted
    /// by key so each key's deltas form one group of the scripts' arguments.
    fn take_pending(&self, with_tokens: bool) -> Vec<(String, &'static str, i64)> {
        let mut taken: Vec<_> = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.drain()
                .filter(|((_, f), d)| *d != 0 && (with_tokens || *f != "tk"))
                .map(|((k, f), d)| (k, f, d))
                .collect()
        };
        taken.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        taken
    }

    /// Puts increments that were not applied back into `pending`.
    fn restore(&self, deltas: Vec<(String, &'static str, i64)>) {
        if deltas.is_empty() {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (k, f, d) in deltas {
            *p.entry((k, f)).or_default() += d;
        }
    }

    /// Sends increments in chunks; what could not be sent goes back to `pending`.
    async fn apply(&self, deltas: Vec<(String, &'static str, i64)>) -> redis::RedisResult<()> {
        let now = self.clock.load(Ordering::Relaxed);
        for (i, part) in deltas.chunks(256).enumerate() {
            let mut inv = self.scripts.apply.prepare_invoke();
            inv.arg(now);
            push_groups(&mut inv, part);
            let mut conn = self.conn.clone();
            if let Err(e) = inv.invoke_async::<()>(&mut conn).await {
                self.restore(deltas[i * 256..].to_vec());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends what ended calls left, summed, every [`FLUSH_GAP`] while there is any and Redis is
    /// up: one script run carries the releases, settled costs and tokens of many calls, one
    /// increment per counter. Sends the rest at shutdown.
    pub async fn run_flusher(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.flush.notified() => {}
            }
            tokio::time::sleep(FLUSH_GAP).await;
            if !self.up() {
                continue; // the prober catches up when Redis is back
            }
            let deltas = self.take_pending(true);
            if !deltas.is_empty()
                && let Err(e) = self.apply(deltas).await
            {
                self.failed(&e);
            }
            if !self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                self.flush.notify_one();
            }
        }
        if self.up() {
            let deltas = self.take_pending(true);
            if let Err(e) = self.apply(deltas).await {
                tracing::warn!(error = %e, "Redis: final release of this instance's holds failed");
            }
        }
    }

    /// One probe now (start-up): an instance that can reach Redis shares from its first call.
    pub async fn probe_once(&self) {
        let mut conn = self.conn.clone();
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        match ping {
            Ok(_) => self.up.store(true, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "Redis unreachable at start-up: rate limits and budgets use per-instance counters until it answers")
            }
        }
    }

    /// Probes Redis every [`PROBE_EVERY`] until `shutdown`: marks it down when it stops
    /// answering, and when it answers again applies the kept increments before marking it up.
    pub async fn run_prober(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            let mut conn = self.conn.clone();
            let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            match ping {
                Ok(_) if self.up() => {}
                Ok(_) => {
                    let kept = self.take_pending(false);
                    let ok = match self.apply(kept).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "Redis answered but catching up failed; retrying");
                            false
                        }
                    };
                    if ok {
                        self.up.store(true, Ordering::Relaxed);
                        warned = false;
                        tracing::info!(prefix = %self.prefix, "Redis reachable: rate limits and budgets are shared across instances");
                    }
                }
                Err(e) => {
                    let was_up = self.up.swap(false, Ordering::Relaxed);
                    if was_up || !warned {
                        warned = true;
                        tracing::warn!(error = %e, "Redis unreachable: rate limits and budgets fall back to per-instance counters");
                    }
                }
            }
        }
    }
}
