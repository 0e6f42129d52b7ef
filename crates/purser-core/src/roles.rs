//! Proxy-level user roles and team-level member roles, with LiteLLM's wire spellings.
//! Invariant: unknown or missing proxy roles behave as `internal_user`.

use serde::{Deserialize, Serialize};

/// `LitellmUserRoles` values that Purser honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    ProxyAdmin,
    ProxyAdminViewer,
    InternalUser,
    InternalUserViewer,
}

impl UserRole {
    pub const ALL: [UserRole; 4] = [
        UserRole::ProxyAdmin,
        UserRole::ProxyAdminViewer,
        UserRole::InternalUser,
        UserRole::InternalUserViewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::ProxyAdmin => "proxy_admin",
            UserRole::ProxyAdminViewer => "proxy_admin_viewer",
            UserRole::InternalUser => "internal_user",
            UserRole::InternalUserViewer => "internal_user_viewer",
        }
    }

    pub fn parse(s: &str) -> Option<UserRole> {
        UserRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Stored role text → role; anything unknown is an internal user (reference §2.1).
    pub fn from_stored(s: Option<&str>) -> UserRole {
        s.and_then(UserRole::parse)
            .unwrap_or(UserRole::InternalUser)
    }

    pub fn is_admin(self) -> bool {
        self == UserRole::ProxyAdmin
    }

    /// Proxy admins and proxy admin viewers may read everything.
    pub fn can_read_all(self) -> bool {
        matches!(self, UserRole::ProxyAdmin | UserRole::ProxyAdminViewer)
    }
}

/// Team-level role inside `members_with_roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    Admin,
    User,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Admin => "admin",
            TeamRole::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<TeamRole> {
        match s {
            "admin" => Some(TeamRole::Admin),
            "user" => Some(TeamRole::User),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roles() {
        for r in UserRole::ALL {
            assert_eq!(UserRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            UserRole::from_stored(Some("org_admin")),
            UserRole::InternalUser
        );
        assert_eq!(UserRole::from_stored(None), UserRole::InternalUser);
        assert_eq!(TeamRole::parse("admin"), Some(TeamRole::Admin));
        assert_eq!(TeamRole::parse("owner"), None);
    }
}
