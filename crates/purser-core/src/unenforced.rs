//! Fields the reference's management API accepts that Purser does not enforce yet. A request that
//! gives one of them a value (anything but absent, `null`, `{}`, `[]` or `""`) is refused with a 400
//! naming the field, rather than stored and ignored: an operator who sets a limit must be able to
//! believe it holds. Each entry leaves this list when it bites on the request path
//! (`docs/governance.md` keeps the status of every field).

/// `/key/generate`, `/key/update`.
pub const KEY: &[&str] = &[
    "budget_id",
    "permissions",
    "config",
    "guardrails",
    "policies",
    "prompts",
    "enforced_params",
    "allowed_cache_controls",
    "rpm_limit_type",
    "tpm_limit_type",
    "object_permission",
    "auto_rotate",
    "rotation_interval",
    "allowed_passthrough_routes",
];

/// `/team/new`, `/team/update`, `PATCH /team/{team_id}` (with the reference fields a team keeps
/// in its metadata and Purser does not act on).
pub const TEAM: &[&str] = &[
    "model_itpm_limit",
    "model_otpm_limit",
    "default_estimated_output_tokens",
    "default_estimated_output_tokens_per_model",
    "mcp_rpm_limit",
    "tag_rpm_limit",
    "rpm_limit_type",
    "tpm_limit_type",
    "enforced_params",
    "temp_budget_increase",
    "temp_budget_expiry",
    "enforced_batch_output_expires_after",
    "enforced_file_expires_after",
    "throttle_on_budget_exceeded",
    "enable_prompt_caching",
    "end_user_budget_id",
    "require_trace_id",
    "disable_global_guardrails",
    "logging",
    "denied_passthrough_routes",
    "router_settings",
    "access_group_ids",
    "policies",
    "default_team_member_models",
    "guardrails",
    "prompts",
    "object_permission",
    "team_member_key_duration",
    "allowed_passthrough_routes",
    "allowed_vector_store_indexes",
    "secret_manager_settings",
];

/// `/user/new`, `/user/update`.
pub const USER: &[&str] = &[
    "soft_budget",
    "tpd_limit",
    "model_rpm_limit",
    "model_tpm_limit",
    "allowed_cache_controls",
    "guardrails",
    "prompts",
    "object_permission",
    "budget_id",
];

/// The refusal's message.
pub fn message(field: &str) -> String {
    format!(
        "{field} is not enforced by this gateway yet, so it is refused rather than stored and ignored (docs/governance.md lists what each field does)"
    )
}
