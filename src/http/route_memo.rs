//! What an HTTP worker has learnt of its routes: the pattern each path
//! matched, and the latency histogram of each route, method and status.
//!
//! Finding a path's pattern walks every route's pattern, a regex each —
//! a tenth of the instructions of a read served from memory — and a
//! histogram looked up by its labels builds and hashes a metric key. Both
//! answers stay the same while the server runs (the routes are fixed, and
//! the recorder forgets no metric: it has no idle timeout), so each worker
//! keeps them. The app factory makes one per worker, so no lock is taken.
//!
//! Paths are the client's to choose: a path is kept only up to
//! [`MAX_PATH`] bytes, at most [`MAX_PATHS`] of them, and all are
//! forgotten when that is full. A client sending made-up paths costs a
//! worker under 1 MiB (the paths' 512 KiB and the table's slots), and each
//! such request the walk it cost before. The histograms are bounded by the
//! routes, methods and statuses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Longer paths are matched afresh each time (ours are under 100 bytes).
pub const MAX_PATH: usize = 128;
/// Paths kept per worker before all are forgotten.
pub const MAX_PATHS: usize = 4096;

/// A route pattern (`None`: no route matched) with a method and status.
type LatencyKey = (Option<Arc<str>>, &'static str, u16);

#[derive(Default)]
pub struct RouteMemo {
    patterns: RefCell<HashMap<Box<str>, Option<Arc<str>>>>,
    latencies: RefCell<HashMap<LatencyKey, metrics::Histogram>>,
}

impl RouteMemo {
    /// The pattern of the route `path` matched, by `find` the first time.
    pub fn pattern(&self, path: &str, find: impl FnOnce() -> Option<String>) -> Option<Arc<str>> {
        if let Some(pattern) = self.patterns.borrow().get(path) {
            return pattern.clone();
        }
        let pattern: Option<Arc<str>> = find().map(Arc::from);
        if path.len() <= MAX_PATH {
            let mut patterns = self.patterns.borrow_mut();
            if patterns.len() >= MAX_PATHS {
                patterns.clear();
            }
            patterns.insert(path.into(), pattern.clone());
        }
        pattern
    }

    /// The latency histogram of requests to `route` by `method` answered
    /// with `status`.
    pub fn latency(
        &self,
        route: Option<&Arc<str>>,
        method: &'static str,
        status: u16,
    ) -> metrics::Histogram {
        let key = (route.cloned(), method, status);
        if let Some(histogram) = self.latencies.borrow().get(&key) {
            return histogram.clone();
        }
        let histogram = metrics::histogram!("turnout_http_request_duration_seconds",
            "route" => route_label(route).to_owned(), "method" => method, "status" => status.to_string());
        self.latencies.borrow_mut().insert(key, histogram.clone());
        histogram
    }

    /// How many paths are kept now.
    #[cfg(test)]
    fn paths(&self) -> usize {
        self.patterns.borrow().len()
    }
}

/// A route as a label: its pattern, or `unmatched`.
pub fn route_label(route: Option<&Arc<str>>) -> &str {
    route.map_or("unmatched", |pattern| pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_matched_once_and_its_pattern_kept() {
        let memo = RouteMemo::default();
        let mut walks = 0;
        for _ in 0..3 {
            let pattern = memo.pattern("/v1/events/42", || {
                walks += 1;
                Some("/v1/events/{id}".to_owned())
            });
            assert_eq!(pattern.as_deref(), Some("/v1/events/{id}"));
        }
        assert_eq!(walks, 1);
    }

    #[test]
    fn a_path_without_a_route_is_kept_as_none() {
        let memo = RouteMemo::default();
        assert_eq!(memo.pattern("/nowhere", || None), None);
        let pattern = memo.pattern("/nowhere", || panic!("matched again"));
        assert_eq!(pattern, None);
        assert_eq!(route_label(pattern.as_ref()), "unmatched");
    }

    #[test]
    fn long_paths_are_matched_every_time_and_never_kept() {
        let memo = RouteMemo::default();
        let long = format!("/v1/events/{}", "x".repeat(MAX_PATH));
        let mut walks = 0;
        for _ in 0..2 {
            memo.pattern(&long, || {
                walks += 1;
                Some("/v1/events/{id}".to_owned())
            });
        }
        assert_eq!(walks, 2);
        assert_eq!(memo.paths(), 0);
    }

    #[test]
    fn made_up_paths_never_hold_more_than_the_bound() {
        let memo = RouteMemo::default();
        for i in 0..3 * MAX_PATHS {
            memo.pattern(&format!("/made-up/{i}"), || None);
            assert!(memo.paths() <= MAX_PATHS);
        }
        // What is kept after forgetting is still right.
        let mut walked = false;
        let pattern = memo.pattern("/v1/events/7", || {
            walked = true;
            Some("/v1/events/{id}".to_owned())
        });
        assert!(walked);
        assert_eq!(pattern.as_deref(), Some("/v1/events/{id}"));
    }

    #[test]
    fn one_histogram_per_route_method_and_status() {
        let memo = RouteMemo::default();
        let route: Option<Arc<str>> = Some(Arc::from("/v1/events/{id}"));
        for (route, status) in [(&route, 200), (&route, 200), (&route, 404), (&None, 404)] {
            memo.latency(route.as_ref(), "GET", status).record(0.001);
        }
        assert_eq!(memo.latencies.borrow().len(), 3);
    }
}
