//! `POST /team/update` and `PATCH /team/{team_id}`: one locked read-modify-write of the team row,
//! its default member budget and alias row, with team-admin field permissions checked on what
//! actually changed. Invariant: re-sending an unchanged `budget_duration` never moves
//! `budget_reset_at` (reference §10 #24); the default-budget pointer in metadata survives.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::money::Nanos;
use purser_core::roles::TeamRole;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::patch::Patch;
use crate::service::views;
use crate::service::write::{Changed, Write};
use crate::store;
use crate::store::budgets::BudgetRow;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
use crate::store::teams::TeamRow;

use super::{
    MEMBER_BUDGET_ID_KEY, budget_limits, default_budget_id, duration, fold_metadata, merge_patch,
    money_patch, non_negative, py_float, team_admin_editable, validate_permissions,
};

fn no_access() -> Error {
    Error::proxy(
        StatusCode::FORBIDDEN,
        "auth_error",
        "You do not have access to this team",
    )
}

/// `UpdateTeamRequest` / `PatchTeamRequest` (reference §4.4): absent = unchanged, `null` = clear.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateTeamRequest {
    pub team_id: Patch<String>,
    pub team_alias: Patch<String>,
    pub organization_id: Patch<String>,
    pub metadata: Patch<Map<String, Value>>,
    pub tpm_limit: Patch<i64>,
    pub rpm_limit: Patch<i64>,
    pub tpd_limit: Patch<i64>,
    pub max_parallel_requests: Patch<i64>,
    pub max_budget: Patch<f64>,
    pub soft_budget: Patch<f64>,
    pub models: Patch<Vec<String>>,
    pub blocked: Patch<bool>,
    pub budget_duration: Patch<String>,
    pub budget_limits: Patch<Vec<Value>>,
    pub model_aliases: Patch<Map<String, Value>>,
    pub router_settings: Patch<Map<String, Value>>,
    pub access_group_ids: Patch<Vec<String>>,
    pub default_team_member_models: Patch<Vec<String>>,
    pub policies: Patch<Vec<String>>,
    pub team_member_permissions: Patch<Vec<String>>,
    pub model_max_budget: Patch<Map<String, Value>>,
    pub team_member_budget: Patch<f64>,
    pub team_member_budget_duration: Patch<String>,
    pub team_member_rpm_limit: Patch<i64>,
    pub team_member_tpm_limit: Patch<i64>,
}

/// How much of a team the caller may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EditAccess {
    Unrestricted,
    TeamAdmin,
}

/// A budget duration change: unchanged keeps the reset instant (§10 #24), a new value
/// recomputes it, `null` clears both.
fn apply_duration(
    patch: &Patch<String>,
    duration_col: &mut Option<String>,
    reset_col: &mut Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    match patch {
        Patch::Absent => Ok(false),
        Patch::Null => {
            let changed = duration_col.is_some() || reset_col.is_some();
            *duration_col = None;
            *reset_col = None;
            Ok(changed)
        }
        Patch::Value(d) => {
            let parsed = duration(d)?;
            if duration_col.as_deref() == Some(d.as_str()) {
                if reset_col.is_none() {
                    *reset_col = Some(parsed.next_reset(now));
                }
                Ok(false)
            } else {
                *duration_col = Some(d.clone());
                *reset_col = Some(parsed.next_reset(now));
                Ok(true)
            }
        }
    }
}

/// The updated team with what a response needs.
pub struct UpdatedTeam {
    pub team: TeamRow,
    pub roster: Vec<MembershipRow>,
    pub model_table: Option<ModelTableRow>,
}

/// `/team/update` (`merge_metadata = false`: metadata replaces) and PATCH (`true`: RFC 7386).
pub async fn update_team(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    raw: &Map<String, Value>,
    req: UpdateTeamRequest,
    merge_metadata: bool,
) -> Result<UpdatedTeam, Error> {
    let now = store::now();
    let by = caller.changed_by();
    crate::service::limits::check_body(raw)?;
    let max_budget = money_patch("max_budget", &req.max_budget)?;
    let soft_budget = money_patch("soft_budget", &req.soft_budget)?;
    let member_budget = money_patch("team_member_budget", &req.team_member_budget)?;
    for (f, v) in [
        ("tpm_limit", &req.tpm_limit),
        ("rpm_limit", &req.rpm_limit),
        ("tpd_limit", &req.tpd_limit),
        ("max_parallel_requests", &req.max_parallel_requests),
        ("team_member_rpm_limit", &req.team_member_rpm_limit),
        ("team_member_tpm_limit", &req.team_member_tpm_limit),
    ] {
        non_negative(f, v.value().copied())?;
    }
    for d in [&req.budget_duration, &req.team_member_budget_duration] {
        if let Patch::Value(d) = d {
            duration(d)?;
        }
    }
    if let Patch::Value(p) = &req.team_member_permissions {
        validate_permissions(p)?;
    }
    let limits = match &req.budget_limits {
        Patch::Value(l) => Patch::Value(budget_limits(l, now)?),
        Patch::Null => Patch::Null,
        Patch::Absent => Patch::Absent,
    };

    let mut h = Write::begin(state).await?;
    let old = if store::teams::lock(&mut h, team_id).await? {
        store::teams::get(&mut h, team_id).await?
    } else {
        None
    };
    let Some(old) = old else {
        return Err(if caller.is_proxy_admin() {
            Error::http(
                StatusCode::NOT_FOUND,
                format!("Team not found, passed team_id={team_id}"),
            )
        } else {
            no_access()
        });
    };
    let access = if caller.is_proxy_admin() {
        EditAccess::Unrestricted
    } else {
        // Viewers never write, whatever their team role.
        let admin = match &caller.user_id {
            Some(_) if caller.is_viewer() => false,
            Some(uid) => store::members::get(&mut h, team_id, uid)
                .await?
                .is_some_and(|m| m.role == TeamRole::Admin.as_str()),
            None => false,
        };
        if !admin {
            return Err(no_access());
        }
        EditAccess::TeamAdmin
    };

    let mut t = old.clone();
    let mut changed: Vec<&'static str> = Vec::new();
    macro_rules! set {
        ($name:literal, $field:expr, $new:expr) => {{
            let v = $new;
            if $field != v {
                changed.push($name);
                $field = v;
            }
        }};
    }
    if let Some(v) = req.team_alias.as_update() {
        set!("team_alias", t.team_alias, v.cloned());
    }
    if let Some(v) = req.organization_id.as_update() {
        // "" unsets the organization.
        set!(
            "organization_id",
            t.organization_id,
            v.filter(|o| !o.is_empty()).cloned()
        );
    }
    for (name, patch, col) in [
        ("tpm_limit", &req.tpm_limit, &mut t.tpm_limit),
        ("rpm_limit", &req.rpm_limit, &mut t.rpm_limit),
        ("tpd_limit", &req.tpd_limit, &mut t.tpd_limit),
        (
            "max_parallel_requests",
            &req.max_parallel_requests,
            &mut t.max_parallel_requests,
        ),
    ] {
        if let Some(v) = patch.as_update() {
            let v = v.copied();
            if *col != v {
                changed.push(name);
                *col = v;
            }
        }
    }
    if let Some(v) = max_budget.as_update() {
        set!("max_budget", t.max_budget, v.copied());
    }
    if let Some(v) = soft_budget.as_update() {
        set!("soft_budget", t.soft_budget, v.copied());
    }
    if let Some(v) = req.models.as_update() {
        set!("models", t.models.0, v.cloned().unwrap_or_default());
    }
    if let Some(v) = req.blocked.as_update() {
        set!("blocked", t.blocked, v.copied().unwrap_or(false));
    }
    if apply_duration(
        &req.budget_duration,
        &mut t.budget_duration,
        &mut t.budget_reset_at,
        now,
    )? {
        changed.push("budget_duration");
    }
    match limits {
        Patch::Absent => {}
        Patch::Null => set!("budget_limits", t.budget_limits, None),
        Patch::Value(v) => set!("budget_limits", t.budget_limits, Some(Json(v))),
    }
    if let Some(v) = req.router_settings.as_update() {
        set!(
            "router_settings",
            t.router_settings.0,
            Value::Object(v.cloned().unwrap_or_default())
        );
    }
    if let Some(v) = req.model_max_budget.as_update() {
        set!(
            "model_max_budget",
            t.model_max_budget.0,
            Value::Object(v.cloned().unwrap_or_default())
        );
    }
    for (name, patch, col) in [
        (
            "access_group_ids",
            &req.access_group_ids,
            &mut t.access_group_ids.0,
        ),
        (
            "default_team_member_models",
            &req.default_team_member_models,
            &mut t.default_team_member_models.0,
        ),
        ("policies", &req.policies, &mut t.policies.0),
        (
            "team_member_permissions",
            &req.team_member_permissions,
            &mut t.team_member_permissions.0,
        ),
    ] {
        if let Some(v) = patch.as_update() {
            let v = v.cloned().unwrap_or_default();
            if *col != v {
                changed.push(name);
                *col = v;
            }
        }
    }

    // Metadata: replaced (or merge-patched) wholesale, folded fields on top, the server-owned
    // default-budget pointer always preserved.
    let budget_pointer = old.metadata.0.get(MEMBER_BUDGET_ID_KEY).cloned();
    let mut metadata = match &req.metadata {
        Patch::Absent => old.metadata.0.clone(),
        Patch::Null => Value::Object(Map::new()),
        Patch::Value(m) => {
            let mut m = m.clone();
            m.remove(MEMBER_BUDGET_ID_KEY);
            if merge_metadata {
                let mut base = old.metadata.0.clone();
                merge_patch(&mut base, &Value::Object(m));
                base
            } else {
                Value::Object(m)
            }
        }
    };
    if !metadata.is_object() {
        metadata = Value::Object(Map::new());
    }
    let md = metadata.as_object_mut().expect("object");
    fold_metadata(md, raw);
    md.remove(MEMBER_BUDGET_ID_KEY);
    if let Some(p) = &budget_pointer {
        md.insert(MEMBER_BUDGET_ID_KEY.into(), p.clone());
    }
    set!("metadata", t.metadata.0, metadata);

    // Team-default member budget.
    let member_fields_sent = req.team_member_budget.is_present()
        || req.team_member_budget_duration.is_present()
        || req.team_member_rpm_limit.is_present()
        || req.team_member_tpm_limit.is_present();
    let old_budget = match default_budget_id(&old) {
        Some(id) => store::budgets::get(&mut h, &id).await?,
        None => None,
    };
    let mut new_budget: Option<BudgetRow> = None;
    if member_fields_sent {
        let any_value = member_budget.value().is_some()
            || req.team_member_budget_duration.value().is_some()
            || req.team_member_rpm_limit.value().is_some()
            || req.team_member_tpm_limit.value().is_some();
        let base = match &old_budget {
            Some(b) => Some(b.clone()),
            None if any_value => {
                let hex = uuid::Uuid::new_v4().simple().to_string();
                let id = match &t.team_alias {
                    Some(a) if !a.is_empty() => {
                        format!("team-{}-budget-{hex}", a.replace(' ', "-"))
                    }
                    _ => format!("team-budget-{hex}"),
                };
                let mut b = BudgetRow::new(id, &by, now);
                // A new default budget follows the team's period unless one is given.
                if req.team_member_budget_duration.is_absent()
                    && let Some(d) = &t.budget_duration
                {
                    b.budget_duration = Some(d.clone());
                    b.budget_reset_at = Some(duration(d)?.next_reset(now));
                }
                Some(b)
            }
            None => None,
        };
        if let Some(mut b) = base {
            if let Some(v) = member_budget.as_update() {
                let v = v.copied();
                if b.max_budget != v {
                    changed.push("team_member_budget");
                    b.max_budget = v;
                }
            }
            if let Some(v) = req.team_member_rpm_limit.as_update() {
                let v = v.copied();
                if b.rpm_limit != v {
                    changed.push("team_member_rpm_limit");
                    b.rpm_limit = v;
                }
            }
            if let Some(v) = req.team_member_tpm_limit.as_update() {
                let v = v.copied();
                if b.tpm_limit != v {
                    changed.push("team_member_tpm_limit");
                    b.tpm_limit = v;
                }
            }
            if apply_duration(
                &req.team_member_budget_duration,
                &mut b.budget_duration,
                &mut b.budget_reset_at,
                now,
            )? {
                changed.push("team_member_budget_duration");
            }
            b.updated_at = now;
            b.updated_by = by.clone();
            new_budget = Some(b);
        }
    }

    // Model aliases live in `model_table`.
    let old_aliases = match old.model_id {
        Some(id) => store::models::get(&mut h, id).await?,
        None => None,
    };
    let new_aliases = req
        .model_aliases
        .as_update()
        .map(|v| Value::Object(v.cloned().unwrap_or_default()));
    if let Some(a) = &new_aliases
        && old_aliases.as_ref().map(|m| &m.aliases.0) != Some(a)
        && !(old_aliases.is_none() && a.as_object().is_some_and(Map::is_empty))
    {
        changed.push("model_aliases");
    }

    if access == EditAccess::TeamAdmin && !changed.is_empty() {
        let (editable, fields) = team_admin_editable(state);
        if fields.is_empty() {
            return Err(Error::proxy(
                StatusCode::FORBIDDEN,
                "auth_error",
                "Team admins on this proxy cannot edit team settings. Ask a proxy admin to enable fields under Settings > UI > Team admin editable fields.",
            ));
        }
        for f in &changed {
            if !fields.iter().any(|e| e.as_str() == *f) {
                return Err(Error::proxy(
                    StatusCode::FORBIDDEN,
                    "auth_error",
                    format!(
                        "Team admins on this proxy do not have permission to update '{f}'. Ask a proxy admin to add it under Settings > UI > Team admin editable fields."
                    ),
                ));
            }
        }
        if changed.contains(&"max_budget") {
            match (old.max_budget, t.max_budget) {
                (Some(_), None) => {
                    return Err(Error::proxy(
                        StatusCode::FORBIDDEN,
                        "auth_error",
                        "Only a proxy admin can remove the team's max_budget.",
                    ));
                }
                (Some(o), Some(n))
                    if n > o && !editable.iter().any(|e| e == "raise_max_budget") =>
                {
                    return Err(Error::proxy(
                        StatusCode::FORBIDDEN,
                        "auth_error",
                        "Team admins on this proxy cannot raise the team's max_budget.",
                    ));
                }
                _ => {}
            }
        }
    }

    if (max_budget.is_present() || soft_budget.is_present())
        && let (Some(s), Some(m)) = (t.soft_budget, t.max_budget)
        && s >= m
    {
        let (s, m) = (Nanos(s).to_usd(), Nanos(m).to_usd());
        let msg = if soft_budget.is_present() {
            format!(
                "soft_budget ({}) must be strictly lower than max_budget ({})",
                py_float(s),
                py_float(m)
            )
        } else {
            format!(
                "max_budget ({}) must be strictly greater than soft_budget ({})",
                py_float(m),
                py_float(s)
            )
        };
        return Err(Error::http(StatusCode::BAD_REQUEST, &msg));
    }

    // Writes.
    let model_table = match (&new_aliases, &old_aliases) {
        (Some(a), Some(m)) => {
            store::models::update(&mut h, m.id, a, &by, now).await?;
            store::models::get(&mut h, m.id).await?
        }
        (Some(a), None) => {
            let id = store::models::insert(&mut h, a, &by, now).await?;
            t.model_id = Some(id);
            store::models::get(&mut h, id).await?
        }
        (None, m) => m.clone(),
    };
    let member_budget_changed = new_budget.is_some();
    if let Some(b) = &new_budget {
        if old_budget.is_some() {
            store::budgets::update(&mut h, b).await?;
        } else {
            store::budgets::insert(&mut h, b).await?;
            if let Some(md) = t.metadata.0.as_object_mut() {
                md.insert(
                    MEMBER_BUDGET_ID_KEY.into(),
                    Value::String(b.budget_id.clone()),
                );
            }
            store::teams::link_default_budget(&mut h, team_id, &b.budget_id).await?;
        }
    }
    t.updated_at = now;
    store::teams::update(&mut h, &t).await?;
    let roster = store::members::list_by_team(&mut h, team_id).await?;
    audit::record(
        &mut h,
        caller,
        action::UPDATED,
        table::TEAM,
        team_id,
        Some(views::team_json(&old, &roster, old_aliases.as_ref())),
        Some(views::team_json(&t, &roster, model_table.as_ref())),
    )
    .await?;
    h.team(team_id);
    if member_budget_changed {
        h.changed(Changed::TeamMembers(team_id.to_string()));
    }
    h.commit().await?;
    Ok(UpdatedTeam {
        team: t,
        roster,
        model_table,
    })
}
