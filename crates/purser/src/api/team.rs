//! (routes filled in by their issue)

use super::Route;

pub fn routes() -> Vec<Route> {
    vec![]
}
