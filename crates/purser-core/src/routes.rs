//! Which routes a virtual key may call (`allowed_routes`, `key_type`; reference route checks).
//! Invariants: an empty list allows every route; otherwise a route passes only if an entry names
//! it exactly, is a path prefix of it at a `/` boundary, is a `prefix*` wildcard, or names a
//! route group the route belongs to. Groups hold the path templates of the route table
//! (`/key/{key}/regenerate`), so a group matches whatever the path parameter is.

/// The reference's `key_type` values and the route group each restricts a key to
/// (`default` restricts nothing).
pub const KEY_TYPES: [&str; 4] = ["default", "llm_api", "management", "read_only"];

/// OpenAI-compatible model routes (`llm_api_routes`).
const LLM_API: &[&str] = &[
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/completions",
    "/completions",
    "/v1/responses",
    "/responses",
    "/v1/moderations",
    "/moderations",
    "/v1/images/generations",
    "/images/generations",
    "/v1/audio/speech",
    "/audio/speech",
    "/v1/audio/transcriptions",
    "/audio/transcriptions",
    "/v1/rerank",
    "/rerank",
    "/v2/rerank",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/models",
    "/v1/models/{*model_id}",
    "/models/{*model_id}",
    "/model/info",
    "/v1/model/info",
];

/// Routes whose handlers scope what they show to the caller (`info_routes`).
const INFO: &[&str] = &[
    "/key/info",
    "/key/health",
    "/team/info",
    "/team/list",
    "/v2/team/list",
    "/team/available",
    "/team/metadata_schema",
    "/user/info",
    "/model/info",
    "/v1/model/info",
    "/key/list",
    "/models",
    "/v1/models",
    "/models/{*model_id}",
    "/v1/models/{*model_id}",
    "/health",
];

/// Key management (`key_management_routes`).
const KEY_MANAGEMENT: &[&str] = &[
    "/key/generate",
    "/key/update",
    "/key/delete",
    "/key/info",
    "/key/regenerate",
    "/key/{key}/regenerate",
    "/key/list",
    "/key/block",
    "/key/unblock",
    "/spend/logs",
];

/// User, team and key administration (`management_routes`: the listed routes plus key
/// management).
const MANAGEMENT: &[&str] = &[
    "/user/new",
    "/user/update",
    "/user/delete",
    "/user/info",
    "/user/list",
    "/team/new",
    "/team/update",
    "/team/{team_id}",
    "/team/delete",
    "/team/list",
    "/v2/team/list",
    "/team/info",
    "/team/block",
    "/team/unblock",
    "/team/available",
    "/team/permissions_list",
    "/team/permissions_update",
    "/model/info",
];

/// Spend reads (`spend_tracking_routes`, `global_spend_tracking_routes`).
const SPEND: &[&str] = &["/spend/logs"];
const GLOBAL_SPEND: &[&str] = &["/global/spend/teams"];

/// The route groups an `allowed_routes` entry may name, and their routes.
pub fn group(name: &str) -> Option<Vec<&'static str>> {
    Some(match name {
        "llm_api_routes" | "openai_routes" => LLM_API.to_vec(),
        "info_routes" => INFO.to_vec(),
        "key_management_routes" => KEY_MANAGEMENT.to_vec(),
        "management_routes" => [MANAGEMENT, KEY_MANAGEMENT].concat(),
        "spend_tracking_routes" => SPEND.to_vec(),
        "global_spend_tracking_routes" => GLOBAL_SPEND.to_vec(),
        _ => return None,
    })
}

/// The `allowed_routes` a `key_type` sets (`None` for `default`: leave the list as given).
pub fn for_key_type(key_type: &str) -> Option<&'static str> {
    match key_type {
        "llm_api" => Some("llm_api_routes"),
        "management" => Some("management_routes"),
        "read_only" => Some("info_routes"),
        _ => None,
    }
}

/// Why an `allowed_routes` entry is refused: neither a path nor a known group name.
pub fn check_entry(entry: &str) -> Result<(), String> {
    if entry.starts_with('/') || group(entry).is_some() {
        Ok(())
    } else {
        Err(format!(
            "Invalid allowed_routes entry '{entry}': use a route path ('/key/info', '/key/*') or a route group (llm_api_routes, info_routes, management_routes, key_management_routes, spend_tracking_routes, global_spend_tracking_routes)"
        ))
    }
}

/// True when a key with `allowed` may call the request `path`, whose route-table template is
/// `template` (equal to `path` for routes without parameters).
pub fn allows(allowed: &[String], path: &str, template: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    allowed.iter().any(|entry| {
        if let Some(routes) = group(entry) {
            return routes.contains(&template);
        }
        if let Some(prefix) = entry.strip_suffix('*') {
            return path.starts_with(prefix);
        }
        path == entry
            || path
                .strip_prefix(entry.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_allows_everything() {
        assert!(allows(&[], "/team/new", "/team/new"));
    }

    #[test]
    fn groups_paths_prefixes_and_wildcards() {
        let llm = list(&["llm_api_routes"]);
        assert!(allows(&llm, "/v1/chat/completions", "/v1/chat/completions"));
        assert!(!allows(&llm, "/key/generate", "/key/generate"));
        let mgmt = list(&["management_routes"]);
        assert!(allows(&mgmt, "/key/generate", "/key/generate"));
        assert!(allows(
            &mgmt,
            "/key/sk-x/regenerate",
            "/key/{key}/regenerate"
        ));
        assert!(!allows(&mgmt, "/chat/completions", "/chat/completions"));
        let info = list(&["info_routes"]);
        assert!(allows(&info, "/key/info", "/key/info"));
        assert!(!allows(&info, "/key/update", "/key/update"));
        let paths = list(&["/key/info", "/team/*", "/spend"]);
        assert!(allows(&paths, "/key/info", "/key/info"));
        assert!(!allows(&paths, "/key/infos", "/key/infos"));
        assert!(allows(&paths, "/team/member_add", "/team/member_add"));
        assert!(allows(&paths, "/spend/logs", "/spend/logs"));
        assert!(!allows(&paths, "/spendx", "/spendx"));
    }

    #[test]
    fn entries_must_be_paths_or_groups() {
        assert!(check_entry("/key/info").is_ok());
        assert!(check_entry("info_routes").is_ok());
        assert!(
            check_entry("info_route")
                .unwrap_err()
                .contains("info_route")
        );
        assert_eq!(for_key_type("read_only"), Some("info_routes"));
        assert_eq!(for_key_type("default"), None);
    }
}
