//! RPM/TPM limits of keys, teams, members and users (filled in by the request-path issue).

/// In-process counters.
#[derive(Debug, Default)]
pub struct Limiter {}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {}
    }
}
