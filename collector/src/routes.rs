//! Per-route stats: what callers' agents report per declared route of a service
//! (`meshlens.route.request.duration`, `meshlens.route.retries`; see `meshlens_model::names`), kept
//! per (caller, service, route) in the same rings as an edge, so any window merges exactly.
//!
//! Routes are counted by the caller, once per request with its whole latency (retries included), so
//! the rows are Linkerd's effective figures and the retries give the actual ones
//! ([`meshlens_model::api::RouteRow`]). They are kept beside the graph, not on it: a request is
//! already on its edge. Bounded by [`MAX_ROUTE_SERIES`] (a policy declares at most
//! `MAX_ROUTES` a service), evicted with the graph's idle retention, and not written to the store:
//! a restarted collector starts its routes afresh.

use hashbrown::HashMap;
use meshlens_model::api::RouteRow;
use meshlens_model::hist::Merger;
use meshlens_model::stats::CodeClass;

use crate::graph::LimitHit;
use crate::window::{Aggregate, Obs, Rings, WindowSpec};

/// Most (caller, service, route) series kept; past it new ones are dropped and counted.
pub(crate) const MAX_ROUTE_SERIES: usize = 20_000;

/// Who called which route of which service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// The caller, `namespace/app/version`.
    pub caller: Box<str>,
    /// The service, `namespace/app`.
    pub service: Box<str>,
    /// The route's name.
    pub route: Box<str>,
}

struct RouteState {
    rings: Rings,
    last_sec: u64,
}

/// Every route series.
#[derive(Default)]
pub struct RouteTable {
    map: HashMap<RouteKey, RouteState>,
}

impl RouteTable {
    fn state(&mut self, key: RouteKey, sec: u64) -> Result<&mut RouteState, LimitHit> {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_ROUTE_SERIES {
            return Err(LimitHit::Series);
        }
        let s = self.map.entry(key).or_insert_with(|| RouteState { rings: Rings::default(), last_sec: sec });
        s.last_sec = sec;
        Ok(s)
    }

    /// Records `n` requests of one latency (µs) that arrived at second `sec`.
    pub fn record(&mut self, key: RouteKey, sec: u64, failed: bool, latency_us: u64, n: u32) -> Result<(), LimitHit> {
        let class = if failed { CodeClass::ServerError } else { CodeClass::Ok };
        let obs = Obs { class, failed, latency_us: Some(latency_us), count: n, mtls: false, grpc: None, trace: None };
        self.state(key, sec)?.rings.record(sec, &obs);
        Ok(())
    }

    /// Records `n` retries sent at second `sec`.
    pub fn record_retries(&mut self, key: RouteKey, sec: u64, n: u32) -> Result<(), LimitHit> {
        self.state(key, sec)?.rings.record_retries(sec, n, 0);
        Ok(())
    }

    /// Drops series with nothing since `cutoff_sec`; returns how many.
    pub fn evict_idle(&mut self, cutoff_sec: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| s.last_sec >= cutoff_sec);
        before - self.map.len()
    }

    /// Series kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The routes of `service` (`namespace/app`) over a window, merged over its callers, or only
    /// those of callers `from` names (`namespace/app` or `namespace/app/version`).
    pub fn rows(&self, service: &str, from: Option<&str>, spec: WindowSpec, merger: &mut Merger) -> Vec<RouteRow> {
        let mut by_route: std::collections::BTreeMap<&str, Vec<(&RouteKey, &RouteState)>> = Default::default();
        for (k, s) in &self.map {
            if &*k.service == service && from.is_none_or(|f| caller_is(&k.caller, f)) {
                by_route.entry(&k.route).or_default().push((k, s));
            }
        }
        let mut rows = Vec::new();
        for (route, series) in by_route {
            let mut agg = Aggregate::new(spec, merger);
            for (_, s) in &series {
                agg.add(&s.rings, true);
            }
            let stats = agg.stats();
            if stats.requests == 0 && stats.retries.unwrap_or(0) == 0 {
                continue;
            }
            let mut callers: Vec<String> = series.iter().map(|(k, _)| k.caller.to_string()).collect();
            callers.sort();
            rows.push(RouteRow::new(route.to_owned(), service.to_owned(), callers, stats, spec.covered_secs));
        }
        // Declared routes by name, then the one no route fits.
        rows.sort_by_key(|r| r.route == meshlens_model::policy::DEFAULT_ROUTE);
        rows
    }
}

/// Why a service name found no routes.
#[derive(Debug, PartialEq, Eq)]
pub enum NoService {
    /// No route of it is kept.
    Unknown,
    /// A bare app name in several namespaces (they are listed).
    Ambiguous(Vec<String>),
}

impl RouteTable {
    /// The `namespace/app` that `name` (an app, or `namespace/app`) stands for among kept routes.
    pub fn service(&self, name: &str) -> Result<String, NoService> {
        let mut found: Vec<&str> = self
            .map
            .keys()
            .map(|k| &*k.service)
            .filter(|s| *s == name || s.split_once('/').is_some_and(|(_, app)| app == name))
            .collect();
        found.sort_unstable();
        found.dedup();
        match found.as_slice() {
            [] => Err(NoService::Unknown),
            [one] => Ok((*one).to_owned()),
            many => Err(NoService::Ambiguous(many.iter().map(|s| (*s).to_owned()).collect())),
        }
    }
}

/// Whether caller id `ns/app/version` is what `filter` names: itself, or its `ns/app`.
fn caller_is(caller: &str, filter: &str) -> bool {
    caller == filter || caller.strip_prefix(filter).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(caller: &str, route: &str) -> RouteKey {
        RouteKey { caller: caller.into(), service: "shop/books".into(), route: route.into() }
    }

    #[test]
    fn rows_merge_callers_and_give_effective_and_actual_figures() {
        let mut t = RouteTable::default();
        let now = 1_000_000u64;
        t.record(key("shop/web/v1", "GET /books/{id}"), now, false, 2_000, 8).unwrap();
        t.record(key("shop/web/v1", "GET /books/{id}"), now, true, 9_000, 2).unwrap();
        t.record_retries(key("shop/web/v1", "GET /books/{id}"), now, 6).unwrap();
        t.record(key("shop/cart/v2", "GET /books/{id}"), now, false, 2_000, 10).unwrap();
        t.record(key("shop/web/v1", "[default]"), now, false, 1_000, 5).unwrap();
        t.record(key("shop/web/v1", "POST /books"), now, false, 1_000, 1).unwrap();
        let spec = WindowSpec::new(now as f64 + 0.5, 60, 0.0);
        let mut m = Merger::default();
        let rows = t.rows("shop/books", None, spec, &mut m);
        let names: Vec<&str> = rows.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(names, ["GET /books/{id}", "POST /books", "[default]"]);
        let r = &rows[0];
        assert_eq!((r.stats.requests, r.stats.errors, r.stats.retries), (20, 2, Some(6)));
        assert_eq!(r.callers, ["shop/cart/v2", "shop/web/v1"]);
        assert_eq!(r.stats.success_pct, Some(90.0));
        // 18 of 26 attempts succeeded.
        assert_eq!(r.actual_success_pct, Some(69.23));
        let only_web = t.rows("shop/books", Some("shop/web"), spec, &mut m);
        assert_eq!(only_web[0].stats.requests, 10);
        assert!(t.rows("shop/books", Some("shop/we"), spec, &mut m).is_empty(), "a caller is named whole");
        assert_eq!(t.evict_idle(now + 1), 4);
        assert!(t.is_empty());
    }
}
