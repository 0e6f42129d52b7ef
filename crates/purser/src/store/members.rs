//! `team_memberships`: the roster. One row per (team, user) holds the team role, the member's
//! spend inside the team and its optional budget link. `members_with_roles` of a team and
//! `teams` of a user are both read from here, so the three LiteLLM representations cannot diverge.

use chrono::{DateTime, Utc};

use super::{Handle, Result};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MembershipRow {
    pub team_id: String,
    pub user_id: String,
    pub role: String,
    pub user_email: Option<String>,
    pub spend: i64,
    pub total_spend: i64,
    pub budget_id: Option<String>,
    pub added_at: DateTime<Utc>,
}

const COLS: &str = "team_id, user_id, role, user_email, spend, total_spend, budget_id, added_at";
const SELECT_ONE: &str = "SELECT team_id, user_id, role, user_email, spend, total_spend, budget_id, added_at \
     FROM team_memberships WHERE team_id = $1 AND user_id = $2";
const SELECT_TEAM: &str = "SELECT team_id, user_id, role, user_email, spend, total_spend, budget_id, added_at \
     FROM team_memberships WHERE team_id = $1 ORDER BY added_at, user_id";
const SELECT_USER: &str = "SELECT team_id, user_id, role, user_email, spend, total_spend, budget_id, added_at \
     FROM team_memberships WHERE user_id = $1 ORDER BY added_at, team_id";
const INSERT: &str = "INSERT INTO team_memberships (team_id, user_id, role, user_email, spend, total_spend, budget_id, added_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const UPDATE: &str = "UPDATE team_memberships SET role = $3, user_email = $4, spend = $5, total_spend = $6, budget_id = $7 \
     WHERE team_id = $1 AND user_id = $2";
const DELETE: &str = "DELETE FROM team_memberships WHERE team_id = $1 AND user_id = $2";

/// Column list (for `QueryBuilder` listings).
pub fn columns() -> &'static str {
    COLS
}

pub async fn get(h: &mut Handle, team_id: &str, user_id: &str) -> Result<Option<MembershipRow>> {
    on_conn!(h, c => sqlx::query_as::<_, MembershipRow>(SELECT_ONE).bind(team_id).bind(user_id).fetch_optional(c).await)
}

/// The roster of a team in join order.
pub async fn list_by_team(h: &mut Handle, team_id: &str) -> Result<Vec<MembershipRow>> {
    on_conn!(h, c => sqlx::query_as::<_, MembershipRow>(SELECT_TEAM).bind(team_id).fetch_all(c).await)
}

pub async fn list_by_user(h: &mut Handle, user_id: &str) -> Result<Vec<MembershipRow>> {
    on_conn!(h, c => sqlx::query_as::<_, MembershipRow>(SELECT_USER).bind(user_id).fetch_all(c).await)
}

pub async fn insert(h: &mut Handle, m: &MembershipRow) -> Result<()> {
    on_conn!(h, c => sqlx::query(INSERT)
        .bind(&m.team_id).bind(&m.user_id).bind(&m.role).bind(&m.user_email).bind(m.spend).bind(m.total_spend)
        .bind(&m.budget_id).bind(m.added_at)
        .execute(c).await.map(|_| ()))
}

pub async fn update(h: &mut Handle, m: &MembershipRow) -> Result<bool> {
    on_conn!(h, c => sqlx::query(UPDATE)
        .bind(&m.team_id).bind(&m.user_id).bind(&m.role).bind(&m.user_email).bind(m.spend).bind(m.total_spend)
        .bind(&m.budget_id)
        .execute(c).await.map(|r| r.rows_affected() > 0))
}

pub async fn delete(h: &mut Handle, team_id: &str, user_id: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(team_id).bind(user_id).execute(c).await.map(|r| r.rows_affected() > 0))
}

/// Single-statement spend reset (`/team/{id}/member/{uid}/reset_spend`): applies only if the
/// member's spend is still `expected` (what the caller read), so a concurrent spend write or
/// reset makes it affect 0 rows instead of being overwritten. Lifetime spend keeps the larger
/// of itself and the spend being reset.
const RESET_SPEND: &str = "UPDATE team_memberships SET \
     total_spend = CASE WHEN total_spend > spend THEN total_spend ELSE spend END, spend = $4 \
     WHERE team_id = $1 AND user_id = $2 AND spend = $3 AND spend >= $4";

pub async fn reset_spend(
    h: &mut Handle,
    team_id: &str,
    user_id: &str,
    expected: i64,
    reset_to: i64,
) -> Result<bool> {
    on_conn!(h, c => sqlx::query(RESET_SPEND).bind(team_id).bind(user_id).bind(expected).bind(reset_to)
        .execute(c).await.map(|r| r.rows_affected() > 0))
}

/// Every user's identity, oldest first (`/team/bulk_member_add` with `all_users`).
const ALL_USERS: &str = "SELECT user_id, user_email FROM users ORDER BY created_at, user_id";

pub async fn all_user_identities(h: &mut Handle) -> Result<Vec<(String, Option<String>)>> {
    on_conn!(h, c => sqlx::query_as::<_, (String, Option<String>)>(ALL_USERS).fetch_all(c).await)
}

/// Inserts a user row unless one with that id exists (a concurrent member add on another team
/// may create the same user; on PostgreSQL a plain INSERT would abort our transaction).
/// Returns whether this call inserted it.
const INSERT_USER_IF_ABSENT: &str = concat!(
    "INSERT INTO users (",
    crate::user_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
     ON CONFLICT (user_id) DO NOTHING"
);

pub async fn insert_user_if_absent(h: &mut Handle, u: &super::users::UserRow) -> Result<bool> {
    on_conn!(h, c => sqlx::query(INSERT_USER_IF_ABSENT)
        .bind(&u.user_id).bind(&u.user_alias).bind(&u.user_email).bind(&u.user_role).bind(&u.organization_id)
        .bind(&u.sso_user_id).bind(u.max_budget).bind(u.spend).bind(&u.models).bind(&u.metadata)
        .bind(u.max_parallel_requests).bind(u.tpm_limit).bind(u.rpm_limit).bind(&u.budget_duration)
        .bind(u.budget_reset_at).bind(&u.model_max_budget).bind(&u.model_spend).bind(u.created_at).bind(u.updated_at)
        .execute(c).await.map(|r| r.rows_affected() > 0))
}
