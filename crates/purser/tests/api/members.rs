//! (scenarios added by their issue)
