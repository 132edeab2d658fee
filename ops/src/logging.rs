//! The binary's log: tracing's fmt output on stderr, filtered by `--log-level`, with
//! openraft's repeated warnings thinned out.
//!
//! openraft warns once per failed message: while a member is down, each of its peers logs a
//! failed heartbeat every heartbeat interval and two lines per replication retry, thousands
//! of lines an hour, all alike. keel logs the loss and the return of a member itself (and
//! counts every failure in `etcd_network_peer_sent_failures_total`), so each of openraft's
//! warnings is let through at most once per [`OPENRAFT_WARNING_PERIOD`] from the same place in
//! its code. Its errors, and everything at other levels, pass untouched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const OPENRAFT_WARNING_PERIOD: Duration = Duration::from_secs(30);

/// Installs the log for the whole process.
pub fn init(filter: EnvFilter) {
    subscriber(tracing_subscriber::fmt::layer().with_writer(std::io::stderr), filter).init();
}

/// `output` behind `filter`, then [`OncePerPeriod`]. `filter` is the outer one: what it turns
/// off is off for good at each call site (a single level check, as without the thinning), the
/// global level hint is its own, and a warning's period starts only when it is let through.
fn subscriber<L>(output: L, filter: EnvFilter) -> impl tracing::Subscriber + Send + Sync
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(output.with_filter(OncePerPeriod::new("openraft", OPENRAFT_WARNING_PERIOD)).with_filter(filter))
}

/// Lets a warning from `target` (and its submodules) through at most once per `period` from
/// each call site.
pub struct OncePerPeriod {
    target: &'static str,
    period: Duration,
    last_passed: Mutex<HashMap<Identifier, Instant>>,
}

impl OncePerPeriod {
    pub fn new(target: &'static str, period: Duration) -> OncePerPeriod {
        OncePerPeriod { target, period, last_passed: Mutex::new(HashMap::new()) }
    }

    fn applies_to(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && *metadata.level() == Level::WARN
            && metadata.target().strip_prefix(self.target).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    }
}

impl<S> Filter<S> for OncePerPeriod {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if !self.applies_to(metadata) {
            return true;
        }
        let now = Instant::now();
        let mut last_passed = self.last_passed.lock();
        match last_passed.get(&metadata.callsite()) {
            Some(last) if now.duration_since(*last) < self.period => false,
            _ => {
                last_passed.insert(metadata.callsite(), now);
                true
            }
        }
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Asked per event only where the answer can change.
        if self.applies_to(metadata) { Interest::sometimes() } else { Interest::always() }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn logged(period: Duration, emit: impl FnOnce()) -> usize {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Count(seen.clone()).with_filter(OncePerPeriod::new("openraft", period)));
        tracing::subscriber::with_default(subscriber, emit);
        seen.load(Ordering::Relaxed)
    }

    #[test]
    fn a_repeated_openraft_warning_passes_once_per_period() {
        let emitted = logged(Duration::from_secs(3600), || {
            for _ in 0..100 {
                tracing::warn!(target: "openraft::core::heartbeat::worker", "failed to send a heartbeat");
            }
            // Another call site has its own allowance.
            tracing::warn!(target: "openraft::replication", "recv RPCError");
        });
        assert_eq!(emitted, 2);
    }

    #[test]
    fn errors_other_levels_and_other_targets_all_pass() {
        let emitted = logged(Duration::from_secs(3600), || {
            for _ in 0..10 {
                tracing::error!(target: "openraft::core", "an error");
                tracing::info!(target: "openraft::core", "news");
                tracing::warn!(target: "openraftish", "not openraft");
                tracing::warn!(target: "keel_store::network", "ours");
            }
        });
        assert_eq!(emitted, 40);
    }

    #[test]
    fn a_warning_passes_again_once_the_period_is_over() {
        let period = Duration::from_millis(50);
        let emitted = logged(period, || {
            for _ in 0..3 {
                for _ in 0..5 {
                    tracing::warn!(target: "openraft::replication", "recv RPCError");
                }
                std::thread::sleep(period + Duration::from_millis(10));
            }
        });
        assert_eq!(emitted, 3);
    }

    /// The process's stack: what `--log-level` turns off costs one level check, and the
    /// thinning applies to what it lets through.
    #[test]
    fn the_level_filter_comes_first() {
        let seen = Arc::new(AtomicUsize::new(0));
        let stack = subscriber(Count(seen.clone()), EnvFilter::new("info"));
        assert_eq!(tracing::Subscriber::max_level_hint(&stack), Some(tracing::level_filters::LevelFilter::INFO));
        tracing::subscriber::with_default(stack, || {
            for _ in 0..10 {
                tracing::debug!(target: "keel_store", "off");
                tracing::warn!(target: "openraft::core", "thinned");
                tracing::info!(target: "keel_store", "on");
            }
        });
        assert_eq!(seen.load(Ordering::Relaxed), 11);
    }
}
