//! Audit trail of management writes. Always on. Rows are written inside the caller's
//! transaction; values whose field name looks secret are masked before they are stored.

use serde_json::{Map, Value};
use sqlx::types::Json;

use crate::service::caller::Caller;
use crate::store::{self, Handle, audit::AuditRow};

/// LiteLLM table names used in `table_name`.
pub mod table {
    pub const TEAM: &str = "LiteLLM_TeamTable";
    pub const USER: &str = "LiteLLM_UserTable";
    pub const KEY: &str = "LiteLLM_VerificationToken";
    pub const MEMBERSHIP: &str = "LiteLLM_TeamMembership";
    pub const BUDGET: &str = "LiteLLM_BudgetTable";
}

/// Audit actions (LiteLLM's `action` values).
pub mod action {
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const DELETED: &str = "deleted";
    pub const BLOCKED: &str = "blocked";
    pub const UNBLOCKED: &str = "unblocked";
    pub const ROTATED: &str = "rotated";
}

/// Writes one audit row in the open transaction `h`.
pub async fn record(
    h: &mut Handle,
    caller: &Caller,
    action: &str,
    table: &str,
    object_id: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> store::Result<()> {
    let row = AuditRow {
        id: uuid::Uuid::now_v7().to_string(),
        updated_at: store::now(),
        changed_by: caller.changed_by(),
        changed_by_api_key: caller.api_key_hash().to_string(),
        action: action.to_string(),
        table_name: table.to_string(),
        object_id: object_id.to_string(),
        before_value: before.map(|v| Json(mask_secrets(v))),
        updated_values: after.map(|v| Json(mask_secrets(v))),
    };
    store::audit::insert(h, &row).await
}

/// Field names whose values are never stored in the audit log.
fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "key"
        || n == "token"
        || n.ends_with("_key")
        || n.contains("password")
        || n.contains("secret")
}

/// Replaces values of secret-looking fields with a fixed mask, recursively.
pub fn mask_secrets(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if is_secret_field(&k) && !v.is_null() {
                        (k, Value::String("*****".into()))
                    } else {
                        (k, mask_secrets(v))
                    }
                })
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask_secrets).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_nested_secrets() {
        let v = mask_secrets(
            json!({"key": "sk-abc", "token": "abc", "team_id": "t", "metadata": {"api_key": "x", "n": 1}, "max_budget": null}),
        );
        assert_eq!(
            v,
            json!({"key": "*****", "token": "*****", "team_id": "t", "metadata": {"api_key": "*****", "n": 1}, "max_budget": null})
        );
    }
}
