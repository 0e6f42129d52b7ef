//! Budget reset job (reference §8.4, §11.2 #9, fixing §10 #4 #5 #6): zeroes the `spend` of keys,
//! users, teams and the team memberships linked to each member budget row once their
//! `budget_reset_at` has passed, and moves `budget_reset_at` to the next aligned boundary.
//!
//! Invariants:
//! - Every reset is a compare-and-set (`… WHERE <pk> = $id AND budget_reset_at = $old`), so any
//!   number of gateway instances may run this loop on one database: exactly one of them moves a
//!   given period, the others see zero affected rows and do nothing.
//! - The next reset is `BudgetDuration::next_reset_after(old, now)`: it walks the aligned grid
//!   from the previous boundary, so periods never drift and periods missed while no instance was
//!   running are skipped (one reset, not one per missed period).
//! - Rows with a `budget_duration` but no `budget_reset_at` get one initialised (no spend reset).
//! - An unparseable stored duration (written by hand or by an old version) is skipped with one
//!   warning per row and value; it never stops the other rows from being reset.
//! - Each reset runs inside a ledger `SpendWrite` (the spend writer's gate, taken before the
//!   UPDATE): the ledger is told after the change committed, costs settled meanwhile stay in the
//!   new period, and the cache is evicted after that, so no request re-reads the old spend.
//! - "Now" comes from the injected clock (`AppState::clock`): tests advance it.
//! - A key's or team's reset also clears its `soft_budget_cooldown` (in the same UPDATE), so the
//!   new period's soft-budget crossing is recorded and alerted again (`service::alerts`).
//!
//! Timeliness: LiteLLM runs its reset job every `proxy_budget_rescheduler_min_time`…`max_time`
//! seconds (597–605 s by default), so a team over budget stays blocked up to ~10 minutes after its
//! period ended and short periods (`30s`, `1m`) cannot work at all. Purser instead ticks every
//! second: each tick is one indexed range query per table (partial indexes of migration
//! 0002 cover only rows with a `budget_duration`), which costs next to nothing when nothing is
//! due, so a reset fires within about a second of its due time. Those two rescheduler settings
//! are therefore accepted but ignored; `general_settings.disable_reset_budget: true` still turns
//! the job off.
//!
//! Keys that have expired are skipped (as LiteLLM does): their spend no longer matters. Member
//! budgets reset `team_memberships.spend` only (LiteLLM also resets end users, orgs and tags gated
//! by the budget; Purser has none of those). The SQL lives here rather than in `store/` because
//! nothing else runs it.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use purser_core::budget::{BudgetDuration, DurationError};
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::on_conn;
use crate::service::spend::SpendScope;
use crate::service::write::{self, Changed};
use crate::store::Result;

/// How often the loop looks for due rows.
pub const TICK: Duration = Duration::from_secs(1);
/// Rows read per query; a tick pages through all due rows.
const PAGE: i64 = 500;

/// A table whose rows carry `budget_duration` + `budget_reset_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Keys,
    Users,
    Teams,
    Budgets,
}

impl Table {
    /// Processing order of a tick (reference §8.4).
    pub const ALL: [Table; 4] = [Table::Keys, Table::Users, Table::Teams, Table::Budgets];

    pub fn name(self) -> &'static str {
        match self {
            Table::Keys => "verification_tokens",
            Table::Users => "users",
            Table::Teams => "teams",
            Table::Budgets => "budgets",
        }
    }

    /// Due rows after the cursor `($2, $3)`, oldest first. `$1` = now.
    fn select_due(self) -> &'static str {
        match self {
            Table::Keys => {
                "SELECT token AS id, budget_duration, budget_reset_at FROM verification_tokens \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at <= $1 \
                 AND (budget_reset_at > $2 OR (budget_reset_at = $2 AND token > $3)) \
                 AND (expires IS NULL OR expires > $1) ORDER BY budget_reset_at, token LIMIT $4"
            }
            Table::Users => {
                "SELECT user_id AS id, budget_duration, budget_reset_at FROM users \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at <= $1 \
                 AND (budget_reset_at > $2 OR (budget_reset_at = $2 AND user_id > $3)) \
                 ORDER BY budget_reset_at, user_id LIMIT $4"
            }
            Table::Teams => {
                "SELECT team_id AS id, budget_duration, budget_reset_at FROM teams \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at <= $1 \
                 AND (budget_reset_at > $2 OR (budget_reset_at = $2 AND team_id > $3)) \
                 ORDER BY budget_reset_at, team_id LIMIT $4"
            }
            Table::Budgets => {
                "SELECT budget_id AS id, budget_duration, budget_reset_at FROM budgets \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at <= $1 \
                 AND (budget_reset_at > $2 OR (budget_reset_at = $2 AND budget_id > $3)) \
                 ORDER BY budget_reset_at, budget_id LIMIT $4"
            }
        }
    }

    /// Rows with a period but no reset instant, after the id cursor `$1`.
    fn select_uninit(self) -> &'static str {
        match self {
            Table::Keys => {
                "SELECT token AS id, budget_duration, budget_reset_at FROM verification_tokens \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at IS NULL AND token > $1 \
                 ORDER BY token LIMIT $2"
            }
            Table::Users => {
                "SELECT user_id AS id, budget_duration, budget_reset_at FROM users \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at IS NULL AND user_id > $1 \
                 ORDER BY user_id LIMIT $2"
            }
            Table::Teams => {
                "SELECT team_id AS id, budget_duration, budget_reset_at FROM teams \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at IS NULL AND team_id > $1 \
                 ORDER BY team_id LIMIT $2"
            }
            Table::Budgets => {
                "SELECT budget_id AS id, budget_duration, budget_reset_at FROM budgets \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at IS NULL AND budget_id > $1 \
                 ORDER BY budget_id LIMIT $2"
            }
        }
    }

    /// The compare-and-set reset: `$1` next, `$2` id, `$3` old reset instant, `$4` duration. Keys
    /// and teams also clear `soft_budget_cooldown`: the new period may cross its soft budget again.
    fn cas_reset(self) -> &'static str {
        match self {
            Table::Keys => {
                "UPDATE verification_tokens SET spend = 0, budget_reset_at = $1, soft_budget_cooldown = FALSE \
                 WHERE token = $2 AND budget_reset_at = $3 AND budget_duration = $4"
            }
            Table::Users => {
                "UPDATE users SET spend = 0, budget_reset_at = $1 \
                 WHERE user_id = $2 AND budget_reset_at = $3 AND budget_duration = $4"
            }
            Table::Teams => {
                "UPDATE teams SET spend = 0, budget_reset_at = $1, soft_budget_cooldown = FALSE \
                 WHERE team_id = $2 AND budget_reset_at = $3 AND budget_duration = $4"
            }
            // The budget row only advances; the spend lives on the memberships (MEMBERS_RESET).
            Table::Budgets => {
                "UPDATE budgets SET budget_reset_at = $1 \
                 WHERE budget_id = $2 AND budget_reset_at = $3 AND budget_duration = $4"
            }
        }
    }

    /// Initialises a missing reset instant: `$1` next, `$2` id, `$3` duration.
    fn cas_init(self) -> &'static str {
        match self {
            Table::Keys => {
                "UPDATE verification_tokens SET budget_reset_at = $1 \
                 WHERE token = $2 AND budget_reset_at IS NULL AND budget_duration = $3"
            }
            Table::Users => {
                "UPDATE users SET budget_reset_at = $1 \
                 WHERE user_id = $2 AND budget_reset_at IS NULL AND budget_duration = $3"
            }
            Table::Teams => {
                "UPDATE teams SET budget_reset_at = $1 \
                 WHERE team_id = $2 AND budget_reset_at IS NULL AND budget_duration = $3"
            }
            Table::Budgets => {
                "UPDATE budgets SET budget_reset_at = $1 \
                 WHERE budget_id = $2 AND budget_reset_at IS NULL AND budget_duration = $3"
            }
        }
    }
}

const MEMBERS_RESET: &str =
    "UPDATE team_memberships SET spend = 0 WHERE budget_id = $1 RETURNING team_id, user_id";

/// A row with a budget period, as the selection queries return it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DueRow {
    pub id: String,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime<Utc>>,
}

/// What the job must do with one row at `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Zero the spend and move the reset instant to `next`.
    Reset { next: DateTime<Utc> },
    /// Set the missing reset instant to `next`; spend untouched.
    Init { next: DateTime<Utc> },
    /// Not due yet (or no period): nothing to do.
    Nothing,
    /// The stored duration does not parse: skip the row.
    Invalid(DurationError),
}

/// Decides the action for a row (pure; the selection queries only pre-filter).
pub fn plan(duration: Option<&str>, reset_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Plan {
    let Some(raw) = duration else {
        return Plan::Nothing;
    };
    let d = match BudgetDuration::parse(raw) {
        Ok(d) => d,
        Err(e) => return Plan::Invalid(e),
    };
    match reset_at {
        None => Plan::Init {
            next: d.next_reset(now),
        },
        Some(old) if old <= now => Plan::Reset {
            next: d.next_reset_after(old, now),
        },
        Some(_) => Plan::Nothing,
    }
}

/// Result of applying a plan to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This call moved the period (and reset the spend, or initialised the instant).
    Won,
    /// Another caller (instance) moved it first, or the row changed meanwhile.
    Lost,
    /// Nothing to do or the duration is invalid.
    Skipped,
}

/// Counters of one tick, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub keys: u64,
    pub users: u64,
    pub teams: u64,
    pub budgets: u64,
    /// Memberships whose spend was zeroed through their budget.
    pub memberships: u64,
    pub initialised: u64,
    pub lost: u64,
    pub invalid: u64,
}

impl Report {
    pub fn reset_total(&self) -> u64 {
        self.keys + self.users + self.teams + self.budgets
    }

    fn count(&mut self, table: Table) {
        match table {
            Table::Keys => self.keys += 1,
            Table::Users => self.users += 1,
            Table::Teams => self.teams += 1,
            Table::Budgets => self.budgets += 1,
        }
    }

    fn is_quiet(&self) -> bool {
        self.reset_total() == 0 && self.initialised == 0 && self.invalid == 0
    }
}

/// Applies the reset of one due row with its compare-and-set; on success tells the ledger and
/// evicts the cache after commit. Safe to call concurrently from any number of tasks/instances.
pub async fn reset_row(
    state: &AppState,
    table: Table,
    id: &str,
    duration: &str,
    old: DateTime<Utc>,
    next: DateTime<Utc>,
) -> Result<(Outcome, u64)> {
    // The write gate: no spend chunk is half-written while the column is zeroed, and calls
    // that settle from here on count in the new period (memory and database alike).
    let spend_write = state.ledger.spend_write().await;
    if table == Table::Budgets {
        let mut h = state.db.begin_write().await?;
        let moved = on_conn!(h, c => sqlx::query(table.cas_reset())
            .bind(next).bind(id).bind(old).bind(duration)
            .execute(c).await.map(|r| r.rows_affected()))?;
        if moved != 1 {
            // Dropping the transaction rolls it back; it changed nothing anyway.
            return Ok((Outcome::Lost, 0));
        }
        let members: Vec<(String, String)> = on_conn!(h, c => sqlx::query_as(MEMBERS_RESET)
            .bind(id).fetch_all(c).await)?;
        h.commit().await?;
        for (team_id, user_id) in &members {
            spend_write.set(
                &SpendScope::Member {
                    team_id: team_id.clone(),
                    user_id: user_id.clone(),
                },
                0,
            );
        }
        drop(spend_write);
        let mut changed = members_changed(&members);
        changed.extend(members.iter().map(|(team_id, user_id)| Changed::SpendSet {
            scope: SpendScope::Member {
                team_id: team_id.clone(),
                user_id: user_id.clone(),
            },
            value: 0,
        }));
        write::after_commit(state, &changed).await;
        return Ok((Outcome::Won, members.len() as u64));
    }
    // A single UPDATE is atomic on both backends: no transaction needed.
    let mut h = state.db.conn().await?;
    let moved = on_conn!(h, c => sqlx::query(table.cas_reset())
        .bind(next).bind(id).bind(old).bind(duration)
        .execute(c).await.map(|r| r.rows_affected()))?;
    drop(h);
    if moved != 1 {
        return Ok((Outcome::Lost, 0));
    }
    let id = id.to_string();
    let scope = match table {
        Table::Keys => SpendScope::Key(id.clone()),
        Table::Users => SpendScope::User(id.clone()),
        Table::Teams => SpendScope::Team(id.clone()),
        Table::Budgets => unreachable!("handled above"),
    };
    spend_write.set(&scope, 0);
    drop(spend_write);
    write::after_commit(
        state,
        &[
            row_changed(table, &id),
            Changed::SpendSet { scope, value: 0 },
        ],
    )
    .await;
    Ok((Outcome::Won, 0))
}

/// Sets a missing `budget_reset_at` (compare-and-set on NULL); evicts the cached row.
pub async fn init_row(
    state: &AppState,
    table: Table,
    id: &str,
    duration: &str,
    next: DateTime<Utc>,
) -> Result<Outcome> {
    let mut h = state.db.conn().await?;
    let moved = on_conn!(h, c => sqlx::query(table.cas_init())
        .bind(next).bind(id).bind(duration)
        .execute(c).await.map(|r| r.rows_affected()))?;
    drop(h);
    if moved != 1 {
        return Ok(Outcome::Lost);
    }
    let changed = match table {
        // Cached memberships embed their budget row.
        Table::Budgets => {
            let mut h = state.db.conn().await?;
            let members: Vec<(String, String)> = on_conn!(h, c => sqlx::query_as(
                "SELECT team_id, user_id FROM team_memberships WHERE budget_id = $1")
                .bind(id).fetch_all(c).await)?;
            members_changed(&members)
        }
        _ => vec![row_changed(table, id)],
    };
    write::after_commit(state, &changed).await;
    Ok(Outcome::Won)
}

/// What a reset of a key, user or team row changed.
fn row_changed(table: Table, id: &str) -> Changed {
    match table {
        Table::Keys => Changed::Key(id.to_string()),
        Table::Users => Changed::User(id.to_string()),
        Table::Teams => Changed::Team(id.to_string()),
        Table::Budgets => unreachable!("budget rows change the memberships that embed them"),
    }
}

fn members_changed(members: &[(String, String)]) -> Vec<Changed> {
    members
        .iter()
        .map(|(team_id, user_id)| Changed::Member {
            team_id: team_id.clone(),
            user_id: user_id.clone(),
        })
        .collect()
}

/// The reset job with its memory of rows already warned about.
pub struct Resetter {
    state: AppState,
    warned: HashSet<(Table, String, String)>,
}

impl Resetter {
    pub fn new(state: AppState) -> Resetter {
        Resetter {
            state,
            warned: HashSet::new(),
        }
    }

    /// One pass over every table at `now`: initialise missing instants, then reset due rows.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<Report> {
        let mut report = Report::default();
        for table in Table::ALL {
            self.init_table(table, now, &mut report).await?;
            self.reset_table(table, now, &mut report).await?;
        }
        Ok(report)
    }

    async fn reset_table(
        &mut self,
        table: Table,
        now: DateTime<Utc>,
        report: &mut Report,
    ) -> Result<()> {
        // Cursor (reset_at, id): rows that stay due (invalid duration, lost race) are passed over.
        let mut cursor: (DateTime<Utc>, String) = (epoch_floor(), String::new());
        loop {
            let mut h = self.state.db.conn().await?;
            let rows: Vec<DueRow> = on_conn!(h, c => sqlx::query_as(table.select_due())
                .bind(now).bind(cursor.0).bind(&cursor.1).bind(PAGE)
                .fetch_all(c).await)?;
            drop(h);
            let n = rows.len() as i64;
            for row in rows {
                if let Some(at) = row.budget_reset_at {
                    cursor = (at, row.id.clone());
                }
                let duration = row.budget_duration.as_deref();
                match plan(duration, row.budget_reset_at, now) {
                    Plan::Reset { next } => {
                        let (Some(d), Some(old)) = (duration, row.budget_reset_at) else {
                            continue;
                        };
                        match reset_row(&self.state, table, &row.id, d, old, next).await? {
                            (Outcome::Won, members) => {
                                report.count(table);
                                report.memberships += members;
                                tracing::info!(table = table.name(), id = %log_id(table, &row.id),
                                    %old, %next, "budget reset");
                            }
                            (Outcome::Lost, _) => report.lost += 1,
                            (Outcome::Skipped, _) => {}
                        }
                    }
                    Plan::Invalid(e) => self.warn_invalid(table, &row, &e, report),
                    Plan::Init { .. } | Plan::Nothing => {}
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    async fn init_table(
        &mut self,
        table: Table,
        now: DateTime<Utc>,
        report: &mut Report,
    ) -> Result<()> {
        let mut cursor = String::new();
        loop {
            let mut h = self.state.db.conn().await?;
            let rows: Vec<DueRow> = on_conn!(h, c => sqlx::query_as(table.select_uninit())
                .bind(&cursor).bind(PAGE)
                .fetch_all(c).await)?;
            drop(h);
            let n = rows.len() as i64;
            for row in rows {
                cursor = row.id.clone();
                let duration = row.budget_duration.as_deref();
                match plan(duration, None, now) {
                    Plan::Init { next } => {
                        let Some(d) = duration else { continue };
                        if init_row(&self.state, table, &row.id, d, next).await? == Outcome::Won {
                            report.initialised += 1;
                        }
                    }
                    Plan::Invalid(e) => self.warn_invalid(table, &row, &e, report),
                    Plan::Reset { .. } | Plan::Nothing => {}
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    fn warn_invalid(&mut self, table: Table, row: &DueRow, e: &DurationError, r: &mut Report) {
        r.invalid += 1;
        let key = (
            table,
            row.id.clone(),
            row.budget_duration.clone().unwrap_or_default(),
        );
        if self.warned.contains(&key) {
            return;
        }
        if self.warned.len() > 10_000 {
            self.warned.clear();
        }
        tracing::warn!(table = table.name(), id = %log_id(table, &row.id), error = %e,
            "budget reset skipped: stored budget_duration is invalid");
        self.warned.insert(key);
    }
}

/// Key hashes are identifiers, not secrets, but logs only need a prefix to find the row.
fn log_id(table: Table, id: &str) -> String {
    if table == Table::Keys {
        id.chars().take(12).collect()
    } else {
        id.to_string()
    }
}

/// A cursor start older than any stored instant, inside both backends' ranges.
fn epoch_floor() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Starts the reset loop unless `general_settings.disable_reset_budget` is true; it stops when
/// `state.shutdown` is cancelled.
pub fn spawn(state: AppState) -> Option<JoinHandle<()>> {
    if state.config.general_settings.disable_reset_budget == Some(true) {
        tracing::info!("budget reset job disabled (general_settings.disable_reset_budget)");
        return None;
    }
    Some(tokio::spawn(async move {
        let mut resetter = Resetter::new(state.clone());
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            match resetter
                .tick(crate::store::trunc_micros(state.clock.now()))
                .await
            {
                Ok(r) if !r.is_quiet() => tracing::debug!(?r, "budget reset tick"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "budget reset tick failed; retrying next tick")
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn due_rows_reset_to_the_next_aligned_boundary() {
        let now = at("2026-11-27T10:17:43Z");
        assert_eq!(
            plan(Some("1h"), Some(at("2026-11-27T10:00:00Z")), now),
            Plan::Reset {
                next: at("2026-11-27T11:00:00Z")
            }
        );
        // exactly due (old == now) resets
        assert_eq!(
            plan(Some("30s"), Some(now), now),
            Plan::Reset {
                next: at("2026-11-27T10:18:00Z")
            }
        );
        // missed periods are skipped, and the grid is the old one (no drift)
        assert_eq!(
            plan(Some("1h"), Some(at("2026-11-26T03:00:00Z")), now),
            Plan::Reset {
                next: at("2026-11-27T11:00:00Z")
            }
        );
        assert_eq!(
            plan(Some("1mo"), Some(at("2026-11-01T00:00:00Z")), now),
            Plan::Reset {
                next: at("2026-12-01T00:00:00Z")
            }
        );
    }

    #[test]
    fn not_due_and_missing_instants() {
        let now = at("2026-11-27T10:17:43Z");
        assert_eq!(
            plan(Some("1h"), Some(at("2026-11-27T10:17:44Z")), now),
            Plan::Nothing
        );
        assert_eq!(
            plan(None, Some(at("2020-01-01T00:00:00Z")), now),
            Plan::Nothing
        );
        assert_eq!(
            plan(Some("1d"), None, now),
            Plan::Init {
                next: at("2026-11-28T00:00:00Z")
            }
        );
    }

    #[test]
    fn invalid_durations_are_reported_not_panicking() {
        let now = at("2026-11-27T10:17:43Z");
        for bad in ["", "30", "2mo", "🙂", "-1d", "99999999999d"] {
            assert!(
                matches!(plan(Some(bad), Some(now), now), Plan::Invalid(_)),
                "{bad}"
            );
            assert!(
                matches!(plan(Some(bad), None, now), Plan::Invalid(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn selection_queries_filter_on_the_period_and_the_instant() {
        for t in Table::ALL {
            assert!(t.select_due().contains("budget_duration IS NOT NULL"));
            assert!(t.select_due().contains("budget_reset_at <= $1"));
            assert!(t.select_uninit().contains("budget_reset_at IS NULL"));
            // every write is a compare-and-set on the old instant
            assert!(t.cas_reset().contains("budget_reset_at = $3"));
            assert!(t.cas_init().contains("budget_reset_at IS NULL"));
        }
        assert!(
            Table::Keys
                .select_due()
                .contains("expires IS NULL OR expires > $1")
        );
    }
}
