//! `/metrics`: the reference's Prometheus metrics (`litellm_*` names and labels, so existing
//! dashboards work) and Purser's own (`purser_*`), in one registry per gateway rendered as the
//! Prometheus text format 0.0.4. Invariants: label cardinality is bounded — no per-request
//! label, key labels collapse to `other` past `prometheus_key_label_limit` distinct keys (the
//! same for end users, whose label is empty unless enabled), and `prometheus_metrics_config`
//! narrows any metric to its `include_labels`; recording never blocks on I/O and never fails a
//! call; no secret is a label (keys appear by their sha256 hash, as in the reference).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A metric's labels, in the reference's order (names fixed, values bounded).
pub type Labels = Vec<(&'static str, String)>;

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The reference's latency buckets (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.00625, 0.0125, 0.025, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0,
    5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0, 120.0, 180.0,
    240.0, 300.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

const USER: &[&str] = &[
    "end_user",
    "hashed_api_key",
    "api_key_alias",
    "model",
    "team",
    "team_alias",
    "user",
];
const REQUEST_MODEL: &[&str] = &[
    "end_user",
    "hashed_api_key",
    "api_key_alias",
    "requested_model",
    "team",
    "team_alias",
    "user",
    "model",
];
const DEPLOYMENT: &[&str] = &[
    "litellm_model_name",
    "model_id",
    "api_base",
    "api_provider",
    "requested_model",
];

/// Every labelled metric `prometheus_metrics_config` may narrow, with its labels.
pub const LABELS: &[(&str, &[&str])] = &[
    ("litellm_spend_metric", USER),
    ("litellm_input_tokens", USER),
    ("litellm_output_tokens", USER),
    ("litellm_total_tokens", USER),
    (
        "litellm_proxy_total_requests_metric",
        &[
            "end_user",
            "hashed_api_key",
            "api_key_alias",
            "requested_model",
            "team",
            "team_alias",
            "user",
            "status_code",
        ],
    ),
    (
        "litellm_proxy_failed_requests_metric",
        &[
            "end_user",
            "hashed_api_key",
            "api_key_alias",
            "requested_model",
            "team",
            "team_alias",
            "user",
            "exception_status",
            "exception_class",
        ],
    ),
    ("litellm_request_total_latency_metric", REQUEST_MODEL),
    ("litellm_llm_api_latency_metric", REQUEST_MODEL),
    ("litellm_llm_api_time_to_first_token_metric", REQUEST_MODEL),
    (
        "litellm_overhead_latency_metric",
        &[
            "model_group",
            "api_provider",
            "api_base",
            "litellm_model_name",
            "hashed_api_key",
            "api_key_alias",
        ],
    ),
    ("litellm_deployment_total_requests", DEPLOYMENT),
    ("litellm_deployment_success_responses", DEPLOYMENT),
    ("litellm_deployment_failure_responses", DEPLOYMENT),
];

/// Distinct keys (and end users) given their own label values before new ones read `other`.
pub const DEFAULT_KEY_LABEL_LIMIT: usize = 1000;

/// How labels are bounded (from `litellm_settings`).
#[derive(Debug, Clone, Default)]
pub struct LabelPolicy {
    /// Metric name → the labels it keeps (`prometheus_metrics_config[].include_labels`).
    pub include: HashMap<String, Vec<String>>,
    pub key_label_limit: usize,
    /// Whether `end_user` carries the request's `user` (the reference's
    /// `enable_end_user_cost_tracking_prometheus_only`); empty otherwise.
    pub end_user_labels: bool,
}

/// Who and what a call was, for its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CallLabels {
    pub hashed_api_key: String,
    pub api_key_alias: String,
    pub team: String,
    pub team_alias: String,
    pub user: String,
    pub end_user: String,
    pub requested_model: String,
    /// The deployment's model as sent upstream, its group, id, provider and public base.
    pub model: String,
    pub model_group: String,
    pub model_id: String,
    pub api_provider: String,
    pub api_base: String,
}

/// What a settled call booked and how long it took (`total`: since the request was read;
/// `upstream`: the attempt that answered).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub spend_usd: f64,
    pub input: u64,
    pub output: u64,
    pub total: Duration,
    pub upstream: Duration,
    pub success: bool,
}

/// A budget's state after a call: remaining, maximum, hours until it resets.
#[derive(Debug, Clone, Copy)]
pub struct BudgetState {
    pub remaining_usd: f64,
    pub max_usd: f64,
    pub hours_to_reset: Option<f64>,
}

/// What the scrape reads from the rest of the gateway.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub spend_queue_depth: u64,
    pub spend_rows_written: u64,
    pub spend_write_errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// `memory` or `redis`, and whether it is degraded (Redis configured and down).
    pub counter_backend: &'static str,
    pub counter_backend_degraded: bool,
    /// (model name, model id, api base, provider, cooling down).
    pub deployments: Vec<(String, String, String, String, bool)>,
}

/// The series one (caller, deployment) combination books into, resolved once: a call then
/// books by atomic adds (and one histogram lock each), with no label built or hashed per family.
struct CallSeries {
    spend: FloatCounter,
    input: Counter,
    output: Counter,
    total: Counter,
    total_latency: Histogram,
    llm_latency: Histogram,
    time_to_first_token: Histogram,
    overhead: Histogram,
    deployment_total: Counter,
    deployment_success: Counter,
    deployment_failure: Counter,
}

/// Resolved series kept at once; past this the map starts over (values live in the families).
const MAX_RESOLVED: usize = 20_000;

/// A capped budget a call was charged to: its gauges are read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedBudget {
    pub alias: String,
    /// Nano-USD.
    pub max: i64,
    pub reset_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct Metrics {
    registry: Registry,
    /// (is a team, team id or key hash) → the budget whose gauges a scrape sets.
    budgets: dashmap::DashMap<(bool, String), WatchedBudget, foldhash::fast::RandomState>,
    resolved: dashmap::DashMap<CallLabels, std::sync::Arc<CallSeries>, foldhash::fast::RandomState>,
    /// `litellm_proxy_total_requests_metric{status_code="200"}` by the caller's labels.
    ok_requests: dashmap::DashMap<CallLabels, Counter, foldhash::fast::RandomState>,
    policy: LabelPolicy,
    /// Keys and end users that have their own label value.
    seen_keys: Mutex<std::collections::HashSet<String>>,
    seen_end_users: Mutex<std::collections::HashSet<String>>,
    spend: Family<Labels, FloatCounter>,
    input_tokens: Family<Labels, Counter>,
    output_tokens: Family<Labels, Counter>,
    total_tokens: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    total_latency: Histograms,
    llm_latency: Histograms,
    time_to_first_token: Histograms,
    overhead_latency: Histograms,
    team_remaining: Family<Labels, FloatGauge>,
    team_max: Family<Labels, FloatGauge>,
    team_hours: Family<Labels, FloatGauge>,
    key_remaining: Family<Labels, FloatGauge>,
    key_max: Family<Labels, FloatGauge>,
    key_hours: Family<Labels, FloatGauge>,
    deployment_state: Family<Labels, Gauge>,
    deployment_success: Family<Labels, Counter>,
    deployment_failure: Family<Labels, Counter>,
    deployment_total: Family<Labels, Counter>,
    rejections: Family<Labels, Counter>,
    queue_depth: Gauge,
    rows_written: Gauge,
    write_errors: Gauge,
    cache_hits: Gauge,
    cache_misses: Gauge,
    backend: Family<Labels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(policy: LabelPolicy) -> Metrics {
        let mut r = Registry::default();
        macro_rules! family {
            ($name:literal, $help:literal) => {{
                let f = Family::default();
                r.register($name, $help, f.clone());
                f
            }};
        }
        macro_rules! histograms {
            ($name:literal, $help:literal) => {{
                let f: Histograms = Family::new_with_constructor(latency_histogram);
                r.register($name, $help, f.clone());
                f
            }};
        }
        macro_rules! gauge {
            ($name:literal, $help:literal) => {{
                let g = Gauge::default();
                r.register($name, $help, g.clone());
                g
            }};
        }
        Metrics {
            spend: family!("litellm_spend_metric", "Total spend on LLM requests (USD)"),
            input_tokens: family!("litellm_input_tokens", "Total input (prompt) tokens"),
            output_tokens: family!("litellm_output_tokens", "Total output (completion) tokens"),
            total_tokens: family!("litellm_total_tokens", "Total tokens, input and output"),
            requests: family!(
                "litellm_proxy_total_requests_metric",
                "Total requests made to the proxy, by status code"
            ),
            failed: family!(
                "litellm_proxy_failed_requests_metric",
                "Requests that failed, by exception status and class"
            ),
            total_latency: histograms!(
                "litellm_request_total_latency_metric",
                "Total latency of a request through the proxy (seconds)"
            ),
            llm_latency: histograms!(
                "litellm_llm_api_latency_metric",
                "Latency of the upstream LLM API call (seconds)"
            ),
            time_to_first_token: histograms!(
                "litellm_llm_api_time_to_first_token_metric",
                "Time to the first streamed byte from the upstream (seconds)"
            ),
            overhead_latency: histograms!(
                "litellm_overhead_latency_metric",
                "Latency the proxy adds to a call (seconds)"
            ),
            team_remaining: family!(
                "litellm_remaining_team_budget_metric",
                "Budget a team has left (USD)"
            ),
            team_max: family!(
                "litellm_team_max_budget_metric",
                "A team's max budget (USD)"
            ),
            team_hours: family!(
                "litellm_team_budget_remaining_hours_metric",
                "Hours until a team's budget resets"
            ),
            key_remaining: family!(
                "litellm_remaining_api_key_budget_metric",
                "Budget a key has left (USD)"
            ),
            key_max: family!(
                "litellm_api_key_max_budget_metric",
                "A key's max budget (USD)"
            ),
            key_hours: family!(
                "litellm_api_key_budget_remaining_hours_metric",
                "Hours until a key's budget resets"
            ),
            deployment_state: family!(
                "litellm_deployment_state",
                "Deployment state: 0 healthy, 2 cooling down after failures"
            ),
            deployment_success: family!(
                "litellm_deployment_success_responses",
                "Successful calls to a deployment"
            ),
            deployment_failure: family!(
                "litellm_deployment_failure_responses",
                "Failed calls to a deployment"
            ),
            deployment_total: family!(
                "litellm_deployment_total_requests",
                "Calls to a deployment, answered or failed"
            ),
            rejections: family!(
                "purser_governance_rejections",
                "Calls refused by governance, by reason (budget, rate_limit) and scope"
            ),
            queue_depth: gauge!(
                "purser_spend_queue_depth",
                "Settled calls whose spend is not yet written"
            ),
            rows_written: gauge!(
                "purser_spend_rows_written",
                "Spend-log rows written since start"
            ),
            write_errors: gauge!(
                "purser_spend_write_errors",
                "Failed spend writes since start (retried)"
            ),
            cache_hits: gauge!(
                "purser_cache_hits",
                "Key, team, member and user cache hits since start"
            ),
            cache_misses: gauge!(
                "purser_cache_misses",
                "Key, team, member and user cache misses since start"
            ),
            backend: family!(
                "purser_counter_backend",
                "1 for the counter backend in use (memory or redis) and its state (up or degraded)"
            ),
            registry: r,
            resolved: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            budgets: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            ok_requests: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            policy,
            seen_keys: Mutex::new(Default::default()),
            seen_end_users: Mutex::new(Default::default()),
        }
    }

    /// `value`, or `other` once `limit` distinct values have their own label.
    fn bounded(
        seen: &Mutex<std::collections::HashSet<String>>,
        limit: usize,
        value: &str,
    ) -> String {
        if value.is_empty() {
            return String::new();
        }
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        if s.contains(value) {
            return value.to_string();
        }
        if s.len() < limit {
            s.insert(value.to_string());
            return value.to_string();
        }
        "other".into()
    }

    /// The call's labels with keys and end users bounded.
    fn bound(&self, c: &CallLabels) -> CallLabels {
        let limit = self.policy.key_label_limit;
        let mut c = c.clone();
        let key = Self::bounded(&self.seen_keys, limit, &c.hashed_api_key);
        if key == "other" {
            c.api_key_alias = "other".into();
        }
        c.hashed_api_key = key;
        c.end_user = if self.policy.end_user_labels {
            Self::bounded(&self.seen_end_users, limit, &c.end_user)
        } else {
            String::new()
        };
        c
    }

    /// `labels` narrowed to the metric's `include_labels`, if configured.
    fn only(&self, metric: &str, labels: Labels) -> Labels {
        match self.policy.include.get(metric) {
            Some(keep) => labels
                .into_iter()
                .filter(|(k, _)| keep.iter().any(|x| x == k))
                .collect(),
            None => labels,
        }
    }

    /// Who called, and the model under `model_label` (the reference's label sets differ only
    /// there).
    fn caller_labels(c: &CallLabels, model_label: &'static str, model: &str) -> Labels {
        vec![
            ("end_user", c.end_user.clone()),
            ("hashed_api_key", c.hashed_api_key.clone()),
            ("api_key_alias", c.api_key_alias.clone()),
            (model_label, model.to_string()),
            ("team", c.team.clone()),
            ("team_alias", c.team_alias.clone()),
            ("user", c.user.clone()),
        ]
    }

    fn user_labels(c: &CallLabels) -> Labels {
        Self::caller_labels(c, "model", &c.model)
    }

    fn request_labels(c: &CallLabels) -> Labels {
        Self::caller_labels(c, "requested_model", &c.requested_model)
    }

    fn deployment_labels(c: &CallLabels) -> Labels {
        vec![
            ("litellm_model_name", c.model.clone()),
            ("model_id", c.model_id.clone()),
            ("api_base", c.api_base.clone()),
            ("api_provider", c.api_provider.clone()),
            ("requested_model", c.requested_model.clone()),
        ]
    }

    /// The resolved series of a call's labels (built on first use).
    fn series(&self, c: &CallLabels) -> std::sync::Arc<CallSeries> {
        if let Some(s) = self.resolved.get(c) {
            return std::sync::Arc::clone(s.value());
        }
        let b = self.bound(c);
        let u = Self::user_labels(&b);
        let mut l = Self::request_labels(&b);
        l.push(("model", b.model.clone()));
        let o = vec![
            ("model_group", b.model_group.clone()),
            ("api_provider", b.api_provider.clone()),
            ("api_base", b.api_base.clone()),
            ("litellm_model_name", b.model.clone()),
            ("hashed_api_key", b.hashed_api_key.clone()),
            ("api_key_alias", b.api_key_alias.clone()),
        ];
        let d = Self::deployment_labels(&b);
        let counter = |f: &Family<Labels, Counter>, name: &str, labels: &Labels| {
            f.get_or_create(&self.only(name, labels.clone())).clone()
        };
        let histogram = |f: &Histograms, name: &str, labels: &Labels| {
            f.get_or_create(&self.only(name, labels.clone())).clone()
        };
        let series = std::sync::Arc::new(CallSeries {
            spend: self
                .spend
                .get_or_create(&self.only("litellm_spend_metric", u.clone()))
                .clone(),
            input: counter(&self.input_tokens, "litellm_input_tokens", &u),
            output: counter(&self.output_tokens, "litellm_output_tokens", &u),
            total: counter(&self.total_tokens, "litellm_total_tokens", &u),
            total_latency: histogram(
                &self.total_latency,
                "litellm_request_total_latency_metric",
                &l,
            ),
            llm_latency: histogram(&self.llm_latency, "litellm_llm_api_latency_metric", &l),
            time_to_first_token: histogram(
                &self.time_to_first_token,
                "litellm_llm_api_time_to_first_token_metric",
                &l,
            ),
            overhead: histogram(
                &self.overhead_latency,
                "litellm_overhead_latency_metric",
                &o,
            ),
            deployment_total: counter(
                &self.deployment_total,
                "litellm_deployment_total_requests",
                &d,
            ),
            deployment_success: counter(
                &self.deployment_success,
                "litellm_deployment_success_responses",
                &d,
            ),
            deployment_failure: counter(
                &self.deployment_failure,
                "litellm_deployment_failure_responses",
                &d,
            ),
        });
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.clear();
        }
        self.resolved
            .insert(c.clone(), std::sync::Arc::clone(&series));
        series
    }

    /// A settled call: its spend, tokens and latencies.
    pub fn settled(&self, c: &CallLabels, o: &Outcome) {
        let s = self.series(c);
        s.spend.inc_by(o.spend_usd);
        s.input.inc_by(o.input);
        s.output.inc_by(o.output);
        s.total.inc_by(o.input + o.output);
        s.total_latency.observe(o.total.as_secs_f64());
        s.llm_latency.observe(o.upstream.as_secs_f64());
        s.overhead
            .observe(o.total.saturating_sub(o.upstream).as_secs_f64());
        s.deployment_total.inc();
        if o.success {
            s.deployment_success.inc();
        } else {
            s.deployment_failure.inc();
        }
    }

    /// An attempt at a deployment that failed before answering (it may be retried elsewhere).
    pub fn attempt_failed(&self, c: &CallLabels) {
        let s = self.series(c);
        s.deployment_total.inc();
        s.deployment_failure.inc();
    }

    /// The first byte of a stream reached the gateway `after` the attempt began.
    pub fn first_token(&self, c: &CallLabels, after: Duration) {
        self.series(c)
            .time_to_first_token
            .observe(after.as_secs_f64());
    }

    /// A call answered with `status` (`exception_class`: the error's type when it failed).
    pub fn request(&self, c: &CallLabels, status: u16, exception_class: Option<&str>) {
        if status == 200 && exception_class.is_none() {
            // The common answer: its series resolved once per caller.
            if let Some(counter) = self.ok_requests.get(c) {
                counter.inc();
                return;
            }
            let b = self.bound(c);
            let mut l = Self::request_labels(&b);
            l.push(("status_code", "200".to_string()));
            let counter = self
                .requests
                .get_or_create(&self.only("litellm_proxy_total_requests_metric", l))
                .clone();
            counter.inc();
            if self.ok_requests.len() >= MAX_RESOLVED {
                self.ok_requests.clear();
            }
            self.ok_requests.insert(c.clone(), counter);
            return;
        }
        let c = self.bound(c);
        let mut l = Self::request_labels(&c);
        l.push(("status_code", status.to_string()));
        self.requests
            .get_or_create(&self.only("litellm_proxy_total_requests_metric", l))
            .inc();
        if let Some(class) = exception_class {
            let mut l = Self::request_labels(&c);
            l.push(("exception_status", status.to_string()));
            l.push(("exception_class", class.to_string()));
            self.failed
                .get_or_create(&self.only("litellm_proxy_failed_requests_metric", l))
                .inc();
        }
    }

    /// A governance refusal: `reason` `budget` or `rate_limit`, `scope` key, team, user, …
    pub fn rejected(&self, reason: &'static str, scope: &str) {
        self.rejections
            .get_or_create(&vec![
                ("reason", reason.to_string()),
                ("scope", scope.to_string()),
            ])
            .inc();
    }

    /// Remembers a budget a call was charged to (a lookup when nothing changed); keys past the
    /// label limit are not watched.
    pub fn watch_budget(&self, team: bool, id: &str, b: WatchedBudget) {
        let key = (team, id.to_string());
        if self.budgets.get(&key).is_some_and(|w| *w == b) {
            return;
        }
        if !team && Self::bounded(&self.seen_keys, self.policy.key_label_limit, id) == "other" {
            return;
        }
        self.budgets.insert(key, b);
    }

    /// The budgets being watched, for the scrape.
    pub fn watched_budgets(&self) -> Vec<((bool, String), WatchedBudget)> {
        self.budgets
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// A team's budget after a call.
    pub fn team_budget(&self, team: &str, alias: &str, b: BudgetState) {
        let l = vec![
            ("team", team.to_string()),
            ("team_alias", alias.to_string()),
        ];
        self.team_remaining.get_or_create(&l).set(b.remaining_usd);
        self.team_max.get_or_create(&l).set(b.max_usd);
        if let Some(h) = b.hours_to_reset {
            self.team_hours.get_or_create(&l).set(h);
        }
    }

    /// A key's budget after a call (bounded like every key label).
    pub fn key_budget(&self, hashed_key: &str, alias: &str, b: BudgetState) {
        let key = Self::bounded(&self.seen_keys, self.policy.key_label_limit, hashed_key);
        if key == "other" {
            return; // a budget summed over unrelated keys would mean nothing
        }
        let l = vec![
            ("hashed_api_key", key),
            ("api_key_alias", alias.to_string()),
        ];
        self.key_remaining.get_or_create(&l).set(b.remaining_usd);
        self.key_max.get_or_create(&l).set(b.max_usd);
        if let Some(h) = b.hours_to_reset {
            self.key_hours.get_or_create(&l).set(h);
        }
    }

    /// The exposition, with the values read at scrape time filled in first.
    pub fn render(&self, s: &Snapshot) -> String {
        self.queue_depth.set(s.spend_queue_depth as i64);
        self.rows_written.set(s.spend_rows_written as i64);
        self.write_errors.set(s.spend_write_errors as i64);
        self.cache_hits.set(s.cache_hits as i64);
        self.cache_misses.set(s.cache_misses as i64);
        self.backend.clear();
        self.backend
            .get_or_create(&vec![
                ("backend", s.counter_backend.to_string()),
                (
                    "state",
                    if s.counter_backend_degraded {
                        "degraded"
                    } else {
                        "up"
                    }
                    .to_string(),
                ),
            ])
            .set(1);
        for (name, id, base, provider, cooling) in &s.deployments {
            self.deployment_state
                .get_or_create(&vec![
                    ("litellm_model_name", name.clone()),
                    ("model_id", id.clone()),
                    ("api_base", base.clone()),
                    ("api_provider", provider.clone()),
                ])
                .set(if *cooling { 2 } else { 0 });
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The exposition's content type.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: &str) -> CallLabels {
        CallLabels {
            hashed_api_key: key.into(),
            api_key_alias: "alias".into(),
            team: "t1".into(),
            requested_model: "gpt".into(),
            model: "gpt-4o".into(),
            end_user: "customer-1".into(),
            ..CallLabels::default()
        }
    }

    fn outcome(spend_usd: f64) -> Outcome {
        Outcome {
            spend_usd,
            input: 1,
            output: 2,
            total: Duration::from_millis(3),
            upstream: Duration::from_millis(1),
            success: true,
        }
    }

    #[test]
    fn keys_past_the_limit_share_one_label_and_end_users_are_off_by_default() {
        let m = Metrics::new(LabelPolicy {
            key_label_limit: 2,
            ..LabelPolicy::default()
        });
        for k in ["a", "b", "c", "d"] {
            m.settled(&call(k), &outcome(0.5));
        }
        let text = m.render(&Snapshot::default());
        assert!(text.contains("hashed_api_key=\"a\""), "{text}");
        assert!(text.contains("hashed_api_key=\"b\""));
        assert!(!text.contains("hashed_api_key=\"c\""));
        assert!(text.contains("hashed_api_key=\"other\",api_key_alias=\"other\""));
        assert!(text.contains("end_user=\"\""));
        assert!(text.contains("# TYPE litellm_spend_metric_total counter"));
        assert!(text.contains("litellm_request_total_latency_metric_bucket"));
    }

    #[test]
    fn include_labels_narrow_a_metric() {
        let mut include = HashMap::new();
        include.insert("litellm_spend_metric".to_string(), vec!["team".to_string()]);
        let m = Metrics::new(LabelPolicy {
            include,
            key_label_limit: 10,
            end_user_labels: true,
        });
        m.settled(&call("a"), &outcome(1.0));
        m.settled(&call("b"), &outcome(2.0));
        let text = m.render(&Snapshot::default());
        assert!(
            text.contains("litellm_spend_metric_total{team=\"t1\"} 3"),
            "{text}"
        );
        assert!(text.contains("end_user=\"customer-1\""), "{text}");
    }
}
