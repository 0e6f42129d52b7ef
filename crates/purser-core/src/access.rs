//! Model access lists (reference §7.3): who may call which model name.
//! Invariant: an empty list means "all models"; `*` and `all-proxy-models` are explicit "all";
//! `all-team-models` is resolved by the caller (a key inheriting its team's list) before this runs.

use std::collections::{HashMap, HashSet};

pub const ALL_PROXY_MODELS: &str = "all-proxy-models";
pub const ALL_TEAM_MODELS: &str = "all-team-models";
pub const NO_DEFAULT_MODELS: &str = "no-default-models";

/// Access groups declared on deployments (`model_info.access_groups`): group name → model names.
pub type AccessGroups = HashMap<String, HashSet<String>>;

/// True when `model` may be called under the allow-list `allowed`.
pub fn list_allows(allowed: &[String], model: &str, groups: &AccessGroups) -> bool {
    if allowed.is_empty() {
        return true;
    }
    allowed.iter().any(|entry| {
        entry == "*"
            || entry == ALL_PROXY_MODELS
            || entry == model
            || groups.get(entry).is_some_and(|g| g.contains(model))
            || (entry.contains('*') && wildcard_match(entry, model))
    })
}

/// `*` matches any run of characters (including `/`); everything else is literal.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rules() {
        let mut groups = AccessGroups::new();
        groups.insert("beta".into(), ["gpt-x".to_string()].into());
        assert!(list_allows(&[], "anything", &groups));
        assert!(list_allows(&l(&["all-proxy-models"]), "m", &groups));
        assert!(list_allows(&l(&["*"]), "m", &groups));
        assert!(list_allows(&l(&["a", "m"]), "m", &groups));
        assert!(!list_allows(&l(&["a"]), "m", &groups));
        assert!(list_allows(&l(&["beta"]), "gpt-x", &groups));
        assert!(!list_allows(&l(&["beta"]), "gpt-y", &groups));
        assert!(list_allows(&l(&["openai/*"]), "openai/gpt-4o", &groups));
        assert!(!list_allows(&l(&["openai/*"]), "anthropic/claude", &groups));
        assert!(wildcard_match(
            "bedrock/anthropic.*",
            "bedrock/anthropic.claude-v2"
        ));
        assert!(wildcard_match("*-mini", "gpt-4o-mini"));
        assert!(!wildcard_match("a*b*c", "abx"));
    }
}
