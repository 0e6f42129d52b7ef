//! Deployments from `model_list` and the pooled upstream client (filled in by the request-path issue).

use crate::config::Config;

/// The models this gateway serves.
#[derive(Debug, Default)]
pub struct Registry {}

impl Registry {
    pub fn from_config(_config: &Config) -> anyhow::Result<Registry> {
        Ok(Registry {})
    }
}
