//! Paging parameters (`page` and a page-size parameter) of the listing routes, checked in one
//! place. Each route declares its rules ([`Paged`]) and keeps the parameter names, defaults,
//! bounds and FastAPI-shaped 422 messages it has always answered with. `page` is checked before
//! the page size.

use purser_core::validate::{OutOfRange, within};
use serde_json::json;

use crate::error::Error;

/// How a route words an out-of-range page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeMessage {
    /// Either side: `less_than_equal`, "Input should be between 1 and {max}".
    Between,
    /// Pydantic's `ge=1, le=max`: `greater_than_equal` below 1, `less_than_equal` above max.
    Bounds,
}

/// One route's paging rules.
#[derive(Debug, Clone, Copy)]
pub struct PageRules {
    /// Name of the page-size query parameter (`size` or `page_size`).
    pub size_param: &'static str,
    pub default_size: i64,
    pub max_size: i64,
    /// Highest accepted `page` (`i64::MAX` when the route sets no bound).
    pub max_page: i64,
    pub size_message: SizeMessage,
}

impl PageRules {
    /// Unbounded `page`; one "between 1 and max" message for a bad size.
    pub const fn between(size_param: &'static str, default_size: i64, max_size: i64) -> Self {
        PageRules {
            size_param,
            default_size,
            max_size,
            max_page: i64::MAX,
            size_message: SizeMessage::Between,
        }
    }

    /// Bounded `page` and size with pydantic's `ge`/`le` messages.
    pub const fn bounds(
        size_param: &'static str,
        default_size: i64,
        max_size: i64,
        max_page: i64,
    ) -> Self {
        PageRules {
            size_param,
            default_size,
            max_size,
            max_page,
            size_message: SizeMessage::Bounds,
        }
    }
}

/// A listing query that carries paging parameters.
pub trait Paged {
    const RULES: PageRules;
    /// `page` and the page size as sent (absent: `None`).
    fn paging(&self) -> (Option<i64>, Option<i64>);
}

/// Checked paging parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub number: i64,
    pub size: i64,
}

impl Page {
    pub fn of<Q: Paged>(q: &Q) -> Result<Page, Error> {
        let rules = Q::RULES;
        let (number, size) = q.paging();
        let number = number.unwrap_or(1);
        within(number, 1, rules.max_page).map_err(|e| match e {
            OutOfRange::Below => at_least_one("page"),
            OutOfRange::Above => at_most("page", rules.max_page),
        })?;
        let size = size.unwrap_or(rules.default_size);
        within(size, 1, rules.max_size).map_err(|e| match (rules.size_message, e) {
            (SizeMessage::Between, _) => Error::validation(
                vec![json!("query"), json!(rules.size_param)],
                "less_than_equal",
                format!("Input should be between 1 and {}", rules.max_size),
            ),
            (SizeMessage::Bounds, OutOfRange::Below) => at_least_one(rules.size_param),
            (SizeMessage::Bounds, OutOfRange::Above) => at_most(rules.size_param, rules.max_size),
        })?;
        Ok(Page { number, size })
    }
}

fn at_least_one(param: &str) -> Error {
    Error::validation(
        vec![json!("query"), json!(param)],
        "greater_than_equal",
        "Input should be greater than or equal to 1",
    )
}

fn at_most(param: &str, max: i64) -> Error {
    Error::validation(
        vec![json!("query"), json!(param)],
        "less_than_equal",
        format!("Input should be less than or equal to {max}"),
    )
}

#[cfg(test)]
mod tests {

    use super::*;

    struct Q(Option<i64>, Option<i64>);

    struct KeyList(Q);
    impl Paged for KeyList {
        const RULES: PageRules = PageRules::between("size", 10, 100);
        fn paging(&self) -> (Option<i64>, Option<i64>) {
            (self.0.0, self.0.1)
        }
    }

    struct TeamList(Q);
    impl Paged for TeamList {
        const RULES: PageRules = PageRules::bounds("page_size", 50, 100, 7);
        fn paging(&self) -> (Option<i64>, Option<i64>) {
            (self.0.0, self.0.1)
        }
    }

    fn expect(e: Error, at: &str, want_kind: &str, want_msg: &str) {
        let Error::Validation { loc, kind, msg } = e else {
            panic!("not a validation error")
        };
        assert_eq!(loc, vec![json!("query"), json!(at)]);
        assert_eq!(kind, want_kind);
        assert_eq!(msg, want_msg);
    }

    #[test]
    fn defaults_and_values() {
        let p = Page::of(&KeyList(Q(None, None))).unwrap();
        assert_eq!(
            p,
            Page {
                number: 1,
                size: 10
            }
        );
        let p = Page::of(&TeamList(Q(Some(7), Some(100)))).unwrap();
        assert_eq!(
            p,
            Page {
                number: 7,
                size: 100
            }
        );
    }

    #[test]
    fn messages_match_each_route() {
        let ge1 = "Input should be greater than or equal to 1";
        let e = Page::of(&KeyList(Q(Some(0), Some(0)))).unwrap_err();
        expect(e, "page", "greater_than_equal", ge1);
        let between = "Input should be between 1 and 100";
        let e = Page::of(&KeyList(Q(None, Some(0)))).unwrap_err();
        expect(e, "size", "less_than_equal", between);
        let e = Page::of(&KeyList(Q(Some(i64::MAX), Some(101)))).unwrap_err();
        expect(e, "size", "less_than_equal", between);

        let e = Page::of(&TeamList(Q(Some(8), None))).unwrap_err();
        expect(
            e,
            "page",
            "less_than_equal",
            "Input should be less than or equal to 7",
        );
        let e = Page::of(&TeamList(Q(None, Some(0)))).unwrap_err();
        expect(e, "page_size", "greater_than_equal", ge1);
        let e = Page::of(&TeamList(Q(None, Some(101)))).unwrap_err();
        expect(
            e,
            "page_size",
            "less_than_equal",
            "Input should be less than or equal to 100",
        );
    }
}
