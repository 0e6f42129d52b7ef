//! The authenticated caller of a request and how it was resolved from a credential.
//! Invariant: the master key acts as `proxy_admin` with user id `default_user_id`; a virtual
//! key's role is its user's `user_role` (unknown → internal_user).

use std::sync::Arc;

use purser_core::roles::UserRole;

use crate::store::keys::KeyRow;

/// LiteLLM's identity for the master key.
pub const DEFAULT_USER_ID: &str = "default_user_id";
/// Stand-in for the master key in audit rows (the master key itself is never written anywhere).
pub const MASTER_KEY_ALIAS: &str = "litellm_proxy_master_key";

#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Option<String>,
    pub role: UserRole,
    pub is_master: bool,
    /// The virtual key used, if any (None for the master key).
    pub key: Option<Arc<KeyRow>>,
}

impl Caller {
    pub fn master() -> Caller {
        Caller {
            user_id: Some(DEFAULT_USER_ID.into()),
            role: UserRole::ProxyAdmin,
            is_master: true,
            key: None,
        }
    }

    pub fn is_proxy_admin(&self) -> bool {
        self.role == UserRole::ProxyAdmin
    }

    /// Proxy admins and proxy admin viewers read everything.
    pub fn can_read_all(&self) -> bool {
        self.role.can_read_all()
    }

    /// Viewers (`internal_user_viewer`, `proxy_admin_viewer`) never write, whatever their role
    /// inside a team.
    pub fn is_viewer(&self) -> bool {
        matches!(
            self.role,
            UserRole::InternalUserViewer | UserRole::ProxyAdminViewer
        )
    }

    /// Hash of the key used, or the master-key alias.
    pub fn api_key_hash(&self) -> &str {
        match &self.key {
            Some(k) => &k.token,
            None => MASTER_KEY_ALIAS,
        }
    }

    /// The team the presented key belongs to.
    pub fn key_team_id(&self) -> Option<&str> {
        self.key.as_ref().and_then(|k| k.team_id.as_deref())
    }

    /// Who to record as `changed_by` in audit rows.
    pub fn changed_by(&self) -> String {
        self.user_id
            .clone()
            .unwrap_or_else(|| DEFAULT_USER_ID.to_string())
    }
}
