//! `teams` (LiteLLM_TeamTable). The roster is not stored here: `members_with_roles` is derived
//! from `team_memberships` (see `members.rs`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result, WriteTx};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TeamRow {
    pub team_id: String,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
    pub metadata: Json<Value>,
    pub max_budget: Option<i64>,
    pub soft_budget: Option<i64>,
    pub spend: i64,
    pub models: Json<Vec<String>>,
    pub max_parallel_requests: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpd_limit: Option<i64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    pub blocked: bool,
    pub model_spend: Json<Value>,
    pub model_max_budget: Json<Value>,
    pub router_settings: Json<Value>,
    pub team_member_permissions: Json<Vec<String>>,
    pub access_group_ids: Json<Vec<String>>,
    pub policies: Json<Vec<String>>,
    pub default_team_member_models: Json<Vec<String>>,
    pub budget_limits: Option<Json<Value>>,
    pub model_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set once per budget period when the spend reaches `soft_budget` (migration 0005); read
    /// only here, written by [`claim_soft_budget_cooldown`] and the reset job.
    #[sqlx(default)]
    pub soft_budget_cooldown: bool,
}

/// Column list of every SELECT of teams: the written columns plus `soft_budget_cooldown`.
#[macro_export]
macro_rules! team_columns {
    () => {
        concat!($crate::team_write_columns!(), ", soft_budget_cooldown")
    };
}

/// Columns the full-row INSERT writes (everything but `soft_budget_cooldown`).
#[macro_export]
macro_rules! team_write_columns {
    () => {
        "team_id, team_alias, organization_id, metadata, max_budget, soft_budget, spend, models, max_parallel_requests, \
         tpm_limit, rpm_limit, tpd_limit, budget_duration, budget_reset_at, blocked, model_spend, model_max_budget, \
         router_settings, team_member_permissions, access_group_ids, policies, default_team_member_models, budget_limits, \
         model_id, created_at, updated_at"
    };
}

const SELECT_BY_ID: &str = concat!("SELECT ", team_columns!(), " FROM teams WHERE team_id = $1");
const INSERT: &str = concat!(
    "INSERT INTO teams (",
    team_write_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, \
     $24, $25, $26)"
);
const UPDATE: &str = "UPDATE teams SET team_alias = $2, organization_id = $3, metadata = $4, max_budget = $5, \
     soft_budget = $6, spend = $7, models = $8, max_parallel_requests = $9, tpm_limit = $10, rpm_limit = $11, \
     tpd_limit = $12, budget_duration = $13, budget_reset_at = $14, blocked = $15, model_spend = $16, \
     model_max_budget = $17, router_settings = $18, team_member_permissions = $19, access_group_ids = $20, \
     policies = $21, default_team_member_models = $22, budget_limits = $23, model_id = $24, created_at = $25, \
     updated_at = $26 WHERE team_id = $1";
const DELETE: &str = "DELETE FROM teams WHERE team_id = $1";
const CLAIM_SOFT_BUDGET_COOLDOWN: &str = "UPDATE teams SET soft_budget_cooldown = TRUE \
     WHERE team_id = $1 AND soft_budget_cooldown = FALSE";
/// PostgreSQL row lock that serialises roster changes of one team (SQLite: the write lock does).
const LOCK_PG: &str = "SELECT team_id FROM teams WHERE team_id = $1 FOR UPDATE";
const EXISTS: &str = "SELECT team_id FROM teams WHERE team_id = $1";

macro_rules! bind_all {
    ($q:expr, $t:expr) => {
        $q.bind(&$t.team_id)
            .bind(&$t.team_alias)
            .bind(&$t.organization_id)
            .bind(&$t.metadata)
            .bind($t.max_budget)
            .bind($t.soft_budget)
            .bind($t.spend)
            .bind(&$t.models)
            .bind($t.max_parallel_requests)
            .bind($t.tpm_limit)
            .bind($t.rpm_limit)
            .bind($t.tpd_limit)
            .bind(&$t.budget_duration)
            .bind($t.budget_reset_at)
            .bind($t.blocked)
            .bind(&$t.model_spend)
            .bind(&$t.model_max_budget)
            .bind(&$t.router_settings)
            .bind(&$t.team_member_permissions)
            .bind(&$t.access_group_ids)
            .bind(&$t.policies)
            .bind(&$t.default_team_member_models)
            .bind(&$t.budget_limits)
            .bind($t.model_id)
            .bind($t.created_at)
            .bind($t.updated_at)
    };
}

pub async fn get(h: &mut Handle, team_id: &str) -> Result<Option<TeamRow>> {
    on_conn!(h, c => sqlx::query_as::<_, TeamRow>(SELECT_BY_ID).bind(team_id).fetch_optional(c).await)
}

/// Inside a write transaction: locks the team row (PostgreSQL `FOR UPDATE`) and reports whether
/// it exists. On SQLite `BEGIN IMMEDIATE` already serialises writers.
pub async fn lock(h: &mut WriteTx, team_id: &str) -> Result<bool> {
    let sql = if h.is_postgres() { LOCK_PG } else { EXISTS };
    on_conn!(h, c => sqlx::query_scalar::<_, String>(sql).bind(team_id).fetch_optional(c).await.map(|r| r.is_some()))
}

pub async fn insert(h: &mut Handle, t: &TeamRow) -> Result<()> {
    on_conn!(h, c => bind_all!(sqlx::query(INSERT), t).execute(c).await.map(|_| ()))
}

pub async fn update(h: &mut Handle, t: &TeamRow) -> Result<bool> {
    on_conn!(h, c => bind_all!(sqlx::query(UPDATE), t).execute(c).await.map(|r| r.rows_affected() > 0))
}

/// Compare-and-set of the team's soft-budget cooldown: true for exactly one caller per period,
/// whatever the number of instances sharing the database.
pub async fn claim_soft_budget_cooldown(h: &mut Handle, team_id: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(CLAIM_SOFT_BUDGET_COOLDOWN).bind(team_id).execute(c).await.map(|r| r.rows_affected() == 1))
}

pub async fn delete(h: &mut Handle, team_id: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(team_id).execute(c).await.map(|r| r.rows_affected() > 0))
}

// ---------------------------------------------------------------------------------------------
// Listings. Every listing runs a constant number of statements however many teams it returns:
// the page of teams, then the roster / keys / budgets / alias rows of all those teams through
// one `IN (…)` list or sub-select each (never one query per team).
// ---------------------------------------------------------------------------------------------

use crate::store::budgets::BudgetRow;
use crate::store::keys::KeyRow;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;

/// `organization_id` filter: a given org, or teams without one (`default_organization`).
#[derive(Debug, Clone, PartialEq)]
pub enum OrgFilter {
    NoOrg,
    Is(String),
}

/// Filters of the team listings; all set filters must hold.
#[derive(Debug, Clone, Default)]
pub struct TeamFilter {
    /// Teams whose roster holds this user (index `team_memberships_user_idx`).
    pub member_user_id: Option<String>,
    pub team_id: Option<String>,
    /// Case-insensitive substring of `team_id`.
    pub team_id_contains: Option<String>,
    /// Case-insensitive substring of `team_alias`.
    pub team_alias_contains: Option<String>,
    pub organization_id: Option<OrgFilter>,
    /// `team_id` equal to it, or alias containing it (case-insensitive).
    pub search: Option<String>,
}

/// Sortable columns of `/v2/team/list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    TeamId,
    TeamAlias,
    CreatedAt,
    Spend,
    MaxBudget,
    TpmLimit,
    RpmLimit,
    UpdatedAt,
}

impl SortBy {
    pub const NAMES: [&'static str; 8] = [
        "team_id",
        "team_alias",
        "created_at",
        "spend",
        "max_budget",
        "tpm_limit",
        "rpm_limit",
        "updated_at",
    ];

    pub fn parse(s: &str) -> Option<SortBy> {
        Some(match s {
            "team_id" => SortBy::TeamId,
            "team_alias" => SortBy::TeamAlias,
            "created_at" => SortBy::CreatedAt,
            "spend" => SortBy::Spend,
            "max_budget" => SortBy::MaxBudget,
            "tpm_limit" => SortBy::TpmLimit,
            "rpm_limit" => SortBy::RpmLimit,
            "updated_at" => SortBy::UpdatedAt,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            SortBy::TeamId => "team_id",
            SortBy::TeamAlias => "team_alias",
            SortBy::CreatedAt => "created_at",
            SortBy::Spend => "spend",
            SortBy::MaxBudget => "max_budget",
            SortBy::TpmLimit => "tpm_limit",
            SortBy::RpmLimit => "rpm_limit",
            SortBy::UpdatedAt => "updated_at",
        }
    }

    fn nullable(self) -> bool {
        matches!(
            self,
            SortBy::TeamAlias | SortBy::MaxBudget | SortBy::TpmLimit | SortBy::RpmLimit
        )
    }

    fn textual(self) -> bool {
        matches!(self, SortBy::TeamId | SortBy::TeamAlias)
    }
}

/// Which teams a batched child query covers: an explicit id list (a page) or every team
/// matching a filter (the unpaginated legacy list, as a sub-select so no id list is bound).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Ids(&'a [String]),
    Filter(&'a TeamFilter),
}

/// `%needle%` for `LIKE … ESCAPE '\'`, lower-cased, with LIKE metacharacters escaped.
fn like_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for ch in needle.to_lowercase().chars() {
        if matches!(ch, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

fn push_where<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, f: &TeamFilter)
where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push(" WHERE 1=1");
    if let Some(u) = &f.member_user_id {
        qb.push(" AND team_id IN (SELECT team_id FROM team_memberships WHERE user_id = ")
            .push_bind(u.clone())
            .push(")");
    }
    if let Some(t) = &f.team_id {
        qb.push(" AND team_id = ").push_bind(t.clone());
    }
    if let Some(t) = &f.team_id_contains {
        qb.push(" AND LOWER(team_id) LIKE ")
            .push_bind(like_pattern(t))
            .push(" ESCAPE '\\'");
    }
    if let Some(a) = &f.team_alias_contains {
        qb.push(" AND LOWER(team_alias) LIKE ")
            .push_bind(like_pattern(a))
            .push(" ESCAPE '\\'");
    }
    match &f.organization_id {
        None => {}
        Some(OrgFilter::NoOrg) => {
            qb.push(" AND organization_id IS NULL");
        }
        Some(OrgFilter::Is(o)) => {
            qb.push(" AND organization_id = ").push_bind(o.clone());
        }
    }
    if let Some(s) = &f.search {
        qb.push(" AND (team_id = ")
            .push_bind(s.clone())
            .push(" OR LOWER(team_alias) LIKE ")
            .push_bind(like_pattern(s))
            .push(" ESCAPE '\\')");
    }
}

/// Appends `<col> IN (<scope>)`; `col` names the team id column of the queried table.
fn push_scope<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, col: &str, scope: Scope<'_>)
where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push(format_args!("{col} IN ("));
    match scope {
        Scope::Ids(ids) => {
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.clone());
            }
        }
        Scope::Filter(f) => {
            qb.push("SELECT team_id FROM teams");
            push_where(qb, f);
        }
    }
    qb.push(")");
}

fn scope_is_empty(scope: Scope<'_>) -> bool {
    matches!(scope, Scope::Ids(ids) if ids.is_empty())
}

/// One page of teams and the total number matching. Default order `created_at DESC` walks
/// `teams_created_idx`; `team_id` breaks ties so pages never overlap.
pub async fn list_page(
    h: &mut Handle,
    f: &TeamFilter,
    sort: SortBy,
    desc: bool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<TeamRow>, i64)> {
    let pg = h.is_postgres();
    let dir = if desc { "DESC" } else { "ASC" };
    // Byte order on both backends (PostgreSQL's default collation is locale-aware).
    let collate = if pg && sort.textual() {
        " COLLATE \"C\""
    } else {
        ""
    };
    let tie = if pg {
        "team_id COLLATE \"C\""
    } else {
        "team_id"
    };
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", team_columns!(), " FROM teams"));
        push_where(&mut qb, f);
        qb.push(" ORDER BY ");
        if sort.nullable() {
            // NULLs last in both directions and on both backends.
            qb.push(format_args!("({} IS NULL), ", sort.column()));
        }
        qb.push(format_args!("{}{collate} {dir}", sort.column()));
        if sort != SortBy::TeamId {
            qb.push(format_args!(", {tie} {dir}"));
        }
        qb.push(" LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows = qb.build_query_as::<TeamRow>().fetch_all(&mut *c).await?;
        let mut qb = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM teams");
        push_where(&mut qb, f);
        let total: i64 = qb.build_query_scalar().fetch_one(&mut *c).await?;
        Ok((rows, total))
    })
}

/// Every team matching the filter (legacy `/team/list`), in creation order.
pub async fn list_all(h: &mut Handle, f: &TeamFilter) -> Result<Vec<TeamRow>> {
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", team_columns!(), " FROM teams"));
        push_where(&mut qb, f);
        qb.push(" ORDER BY created_at, team_id");
        qb.build_query_as::<TeamRow>().fetch_all(&mut *c).await
    })
}

/// The teams with these ids that exist (any order).
pub async fn get_many(h: &mut Handle, ids: &[String]) -> Result<Vec<TeamRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", team_columns!(), " FROM teams WHERE "));
        push_scope(&mut qb, "team_id", Scope::Ids(ids));
        qb.push(" ORDER BY created_at, team_id");
        qb.build_query_as::<TeamRow>().fetch_all(&mut *c).await
    })
}

/// Roster rows of every team in scope (primary key `(team_id, user_id)` serves the lookup).
pub async fn memberships_in(h: &mut Handle, scope: Scope<'_>) -> Result<Vec<MembershipRow>> {
    if scope_is_empty(scope) {
        return Ok(vec![]);
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(format!(
            "SELECT {} FROM team_memberships WHERE ",
            crate::store::members::columns()
        ));
        push_scope(&mut qb, "team_id", scope);
        qb.push(" ORDER BY team_id, added_at, user_id");
        qb.build_query_as::<MembershipRow>().fetch_all(&mut *c).await
    })
}

const BUDGET_COLS: &str = "budget_id, max_budget, soft_budget, max_parallel_requests, tpm_limit, rpm_limit, \
     tpd_limit, model_max_budget, budget_duration, budget_reset_at, allowed_models, temp_budget_increase, \
     temp_budget_expiry, created_at, created_by, updated_at, updated_by";

/// Budget rows linked from the memberships of every team in scope, plus `extra` ids
/// (team-default member budgets).
pub async fn budgets_in(
    h: &mut Handle,
    scope: Scope<'_>,
    extra: &[String],
) -> Result<Vec<BudgetRow>> {
    if scope_is_empty(scope) && extra.is_empty() {
        return Ok(vec![]);
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {BUDGET_COLS} FROM budgets WHERE budget_id IN (SELECT budget_id FROM team_memberships WHERE "));
        if scope_is_empty(scope) {
            qb.push("1=0");
        } else {
            push_scope(&mut qb, "team_id", scope);
        }
        qb.push(")");
        if !extra.is_empty() {
            qb.push(" OR budget_id IN (");
            let mut sep = qb.separated(", ");
            for id in extra {
                sep.push_bind(id.clone());
            }
            qb.push(")");
        }
        qb.build_query_as::<BudgetRow>().fetch_all(&mut *c).await
    })
}

/// Keys of every team in scope (`verification_tokens_team_idx`); with `live_at`, only keys
/// not expired at that instant.
pub async fn keys_in(
    h: &mut Handle,
    scope: Scope<'_>,
    live_at: Option<DateTime<Utc>>,
) -> Result<Vec<KeyRow>> {
    if scope_is_empty(scope) {
        return Ok(vec![]);
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", crate::key_columns!(), " FROM verification_tokens WHERE "));
        push_scope(&mut qb, "team_id", scope);
        if let Some(t) = live_at {
            qb.push(" AND (expires IS NULL OR expires > ").push_bind(t).push(")");
        }
        qb.push(" ORDER BY team_id, created_at, token");
        qb.build_query_as::<KeyRow>().fetch_all(&mut *c).await
    })
}

/// Number of keys per team for a page of teams: one `GROUP BY` over the team index.
pub async fn key_counts(h: &mut Handle, ids: &[String]) -> Result<Vec<(String, i64)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new("SELECT team_id, COUNT(*) FROM verification_tokens WHERE ");
        push_scope(&mut qb, "team_id", Scope::Ids(ids));
        qb.push(" GROUP BY team_id");
        qb.build_query_as::<(String, i64)>().fetch_all(&mut *c).await
    })
}

/// Alias rows by id (`litellm_model_table` of a page of teams).
pub async fn model_tables_in(h: &mut Handle, ids: &[i64]) -> Result<Vec<ModelTableRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new("SELECT id, aliases, created_at, created_by, updated_at, updated_by FROM model_table WHERE id IN (");
        let mut sep = qb.separated(", ");
        for id in ids {
            sep.push_bind(*id);
        }
        qb.push(")");
        qb.build_query_as::<ModelTableRow>().fetch_all(&mut *c).await
    })
}

/// A roster member's user row fields shown by `/team/info` (`user_alias`, the user's email).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RosterUser {
    pub user_id: String,
    pub user_alias: Option<String>,
    pub user_email: Option<String>,
}

const ROSTER_USERS: &str = "SELECT u.user_id, u.user_alias, u.user_email FROM team_memberships m \
     JOIN users u ON u.user_id = m.user_id WHERE m.team_id = $1";

/// The user rows of a team's roster, joined in one statement.
pub async fn roster_users(h: &mut Handle, team_id: &str) -> Result<Vec<RosterUser>> {
    on_conn!(h, c => sqlx::query_as::<_, RosterUser>(ROSTER_USERS).bind(team_id).fetch_all(c).await)
}

const LINK_DEFAULT_BUDGET: &str =
    "UPDATE team_memberships SET budget_id = $2 WHERE team_id = $1 AND budget_id IS NULL";

/// Links every membership of the team that has no budget to the team-default member budget.
pub async fn link_default_budget(h: &mut Handle, team_id: &str, budget_id: &str) -> Result<u64> {
    on_conn!(h, c => sqlx::query(LINK_DEFAULT_BUDGET).bind(team_id).bind(budget_id).execute(c).await.map(|r| r.rows_affected()))
}

impl TeamRow {
    /// A team with LiteLLM's column defaults: no limits, all models, not blocked, zero spend.
    pub fn new(team_id: String, now: DateTime<Utc>) -> TeamRow {
        let empty = || Json(Value::Object(Default::default()));
        TeamRow {
            team_id,
            team_alias: None,
            organization_id: None,
            metadata: empty(),
            max_budget: None,
            soft_budget: None,
            spend: 0,
            models: Json(vec![]),
            max_parallel_requests: None,
            tpm_limit: None,
            rpm_limit: None,
            tpd_limit: None,
            budget_duration: None,
            budget_reset_at: None,
            blocked: false,
            model_spend: empty(),
            model_max_budget: empty(),
            router_settings: empty(),
            team_member_permissions: Json(vec![]),
            access_group_ids: Json(vec![]),
            policies: Json(vec![]),
            default_team_member_models: Json(vec![]),
            budget_limits: None,
            model_id: None,
            created_at: now,
            updated_at: now,
            soft_budget_cooldown: false,
        }
    }
}
