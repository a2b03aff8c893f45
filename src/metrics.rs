//! Prometheus metrics of `tortie run`: every IPAM metric Calico's kube-controllers exports, with
//! its name, labels and type (so existing dashboards and alerts keep working), plus reconcile
//! counts, durations and errors per controller.
//!
//! The IPAM series are recomputed from the watch caches at every scrape
//! ([`crate::ipam::usage::Usage`], the same counts the IPPool status and `ipam show` use), like
//! Calico recomputes them every sync; every (pool, node) series is present at zero from the
//! first scrape after the caches synced. `ipam_allocations_gc_reclamations` is a counter under
//! Calico's exact name: the OpenMetrics text would add `_total` to a standard counter's samples,
//! and Calico's name is what dashboards query, so it is encoded without the suffix.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::ipam::usage::{NO_IPPOOL, PoolNodeCounts, UNKNOWN_NODE, Usage};

/// Every IPAM metric Calico's kube-controllers exports, all of which tortie exports too.
pub const CALICO_IPAM_METRICS: [&str; 10] = [
    "ipam_allocations_in_use",
    "ipam_allocations_borrowed",
    "ipam_blocks",
    "ipam_allocations_gc_candidates",
    "ipam_allocations_gc_reclamations",
    "ipam_ippool_size",
    "ipam_ippool_reserved",
    "ipam_allocations_per_node",
    "ipam_allocations_borrowed_per_node",
    "ipam_blocks_per_node",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolNode {
    pub ippool: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub ippool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    pub error: String,
}

/// A counter whose samples carry the family's name as is (no `_total`), as Prometheus' Go client
/// writes them in its text format; Prometheus ingests it as a counter under that name.
#[derive(Clone, Debug, Default)]
pub struct PlainCounter(Arc<AtomicU64>);

impl PlainCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The gauge sample writer is the one that writes a sample without a suffix.
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// What the GC reported: its latest candidates and everything it reclaimed since start.
#[derive(Default)]
struct GcCounts {
    candidates: PoolNodeCounts,
    reclaimed: PoolNodeCounts,
}

pub struct Metrics {
    registry: Registry,
    allocations_in_use: Family<PoolNode, Gauge>,
    allocations_borrowed: Family<PoolNode, Gauge>,
    blocks: Family<PoolNode, Gauge>,
    gc_candidates: Family<PoolNode, Gauge>,
    gc_reclamations: Family<PoolNode, PlainCounter>,
    ippool_size: Family<PoolLabel, F64Gauge>,
    ippool_reserved: Family<PoolLabel, F64Gauge>,
    allocations_per_node: Family<NodeLabel, Gauge>,
    allocations_borrowed_per_node: Family<NodeLabel, Gauge>,
    blocks_per_node: Family<NodeLabel, Gauge>,
    reconciles: Family<ControllerLabel, Counter>,
    reconcile_errors: Family<ErrorLabel, Counter>,
    reconcile_duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    pub leader: Gauge<i64, AtomicI64>,
    gc: Mutex<GcCounts>,
    /// One scrape at a time: the IPAM families are cleared and refilled before encoding.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            allocations_in_use: Family::default(),
            allocations_borrowed: Family::default(),
            blocks: Family::default(),
            gc_candidates: Family::default(),
            gc_reclamations: Family::default(),
            ippool_size: Family::default(),
            ippool_reserved: Family::default(),
            allocations_per_node: Family::default(),
            allocations_borrowed_per_node: Family::default(),
            blocks_per_node: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            leader: Gauge::default(),
            gc: Mutex::default(),
            scrape: Mutex::default(),
            registry: Registry::default(),
        };
        r.register(
            "ipam_allocations_in_use",
            "Addresses allocated to a workload or tunnel, per pool and node of the allocation",
            m.allocations_in_use.clone(),
        );
        r.register(
            "ipam_allocations_borrowed",
            "Allocated addresses in a block affine to another node (or to none), per pool and node",
            m.allocations_borrowed.clone(),
        );
        r.register(
            "ipam_blocks",
            "IPAM blocks per pool and affine node (no_affinity: blocks without a host affinity)",
            m.blocks.clone(),
        );
        r.register(
            "ipam_allocations_gc_candidates",
            "Allocations the garbage collector holds as possible leaks, not released yet; \
             should return to zero once they are reclaimed or found valid",
            m.gc_candidates.clone(),
        );
        r.register(
            "ipam_allocations_gc_reclamations",
            "Leaked allocations the garbage collector released since start; its rises should \
             match the candidate gauge returning to zero",
            m.gc_reclamations.clone(),
        );
        r.register(
            "ipam_ippool_size",
            "Addresses in the pool's CIDR",
            m.ippool_size.clone(),
        );
        r.register(
            "ipam_ippool_reserved",
            "Addresses of the pool's CIDR that IPReservations cover",
            m.ippool_reserved.clone(),
        );
        r.register(
            "ipam_allocations_per_node",
            "Allocated addresses per node, over every pool (legacy series)",
            m.allocations_per_node.clone(),
        );
        r.register(
            "ipam_allocations_borrowed_per_node",
            "Allocated addresses in blocks not affine to their node, over every pool (legacy series)",
            m.allocations_borrowed_per_node.clone(),
        );
        r.register(
            "ipam_blocks_per_node",
            "IPAM blocks per affine node, over every pool (legacy series)",
            m.blocks_per_node.clone(),
        );
        r.register(
            "tortie_reconciles",
            "Reconciles run, per controller",
            m.reconciles.clone(),
        );
        r.register(
            "tortie_reconcile_errors",
            "Reconciles that failed, per controller and error kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "tortie_reconcile_duration_seconds",
            "Time spent in one reconcile, per controller",
            m.reconcile_duration.clone(),
        );
        r.register(
            "tortie_leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Records one reconcile; the returned guard observes its duration when dropped.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer<'_> {
        let label = ControllerLabel {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&label).inc();
        ReconcileTimer {
            metrics: self,
            label,
            start: std::time::Instant::now(),
        }
    }

    pub fn error(&self, controller: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabel {
                controller: controller.into(),
                error: error.into(),
            })
            .inc();
    }

    /// The GC's latest leak candidates, (pool, node) → count.
    pub fn set_gc_candidates(&self, c: &BTreeMap<(String, String), u64>) {
        self.gc.lock().expect("metrics lock").candidates = c.clone();
    }

    /// `n` leaked allocations of `node` in `pool` released.
    pub fn add_reclamations(&self, pool: &str, node: &str, n: u64) {
        let node = if node.is_empty() { UNKNOWN_NODE } else { node };
        *self
            .gc
            .lock()
            .expect("metrics lock")
            .reclaimed
            .entry((pool.to_string(), node.to_string()))
            .or_default() += n;
    }

    /// Publishes `usage` and the GC's counts and encodes every metric (OpenMetrics text).
    /// `None` (a replica that does not hold the Lease) leaves the IPAM series out: every replica
    /// is scraped, and sums over them would otherwise count each address once per replica.
    pub fn scrape(&self, usage: Option<&Usage>) -> String {
        let _one = self.scrape.lock().expect("metrics lock");
        match usage {
            Some(u) => self.publish(u),
            None => self.unpublish(),
        }
        self.encode()
    }

    fn unpublish(&self) {
        for f in [
            &self.allocations_in_use,
            &self.allocations_borrowed,
            &self.blocks,
            &self.gc_candidates,
        ] {
            f.clear();
        }
        self.gc_reclamations.clear();
        self.ippool_size.clear();
        self.ippool_reserved.clear();
        self.allocations_per_node.clear();
        self.allocations_borrowed_per_node.clear();
        self.blocks_per_node.clear();
    }

    fn publish(&self, u: &Usage) {
        set_pool_node(&self.allocations_in_use, &u.in_use);
        set_pool_node(&self.allocations_borrowed, &u.borrowed);
        set_pool_node(&self.blocks, &u.blocks);
        set_node(&self.allocations_per_node, &u.allocations_per_node);
        set_node(&self.allocations_borrowed_per_node, &u.borrowed_per_node);
        set_node(&self.blocks_per_node, &u.blocks_per_node);
        self.ippool_size.clear();
        self.ippool_reserved.clear();
        for (pool, space) in &u.pools {
            let l = PoolLabel { ippool: pool.clone() };
            self.ippool_size.get_or_create(&l).set(space.size);
            self.ippool_reserved.get_or_create(&l).set(space.reserved);
        }
        let mut gc = self.gc.lock().expect("metrics lock");
        // As Calico drops a deleted pool's series and a cleaned-up node's reclamations.
        gc.reclaimed.retain(|(pool, node), _| {
            (pool == NO_IPPOOL || u.pools.contains_key(pool))
                && (node == UNKNOWN_NODE || u.nodes.contains(node))
        });
        let zeros: PoolNodeCounts = u
            .pool_nodes()
            .map(|(p, n)| ((p.to_string(), n.to_string()), 0))
            .collect();
        set_pool_node(&self.gc_candidates, &merged(&zeros, &gc.candidates));
        self.gc_reclamations.clear();
        for ((pool, node), v) in merged(&zeros, &gc.reclaimed) {
            self.gc_reclamations
                .get_or_create(&PoolNode { ippool: pool, node })
                .set(v);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// `zeros` with the values of `counts` (and its keys) laid over.
fn merged(zeros: &PoolNodeCounts, counts: &PoolNodeCounts) -> PoolNodeCounts {
    let mut out = zeros.clone();
    out.extend(counts.iter().map(|(k, v)| (k.clone(), *v)));
    out
}

fn set_pool_node(f: &Family<PoolNode, Gauge>, counts: &PoolNodeCounts) {
    f.clear();
    for ((pool, node), v) in counts {
        f.get_or_create(&PoolNode {
            ippool: pool.clone(),
            node: node.clone(),
        })
        .set(*v as i64);
    }
}

fn set_node(f: &Family<NodeLabel, Gauge>, counts: &BTreeMap<String, u64>) {
    f.clear();
    for (node, v) in counts {
        f.get_or_create(&NodeLabel { node: node.clone() }).set(*v as i64);
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    label: ControllerLabel,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&self.label)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AllocationAttribute, IPAMBlockSpec};
    use crate::ipam::usage::PoolRef;

    fn pools() -> Vec<PoolRef> {
        vec![PoolRef {
            name: "p".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            block_size: 30,
        }]
    }

    /// The sample line of `series` (`name{labels}`) and its value.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn every_calico_series_is_present_at_zero_before_any_allocation() {
        let m = Metrics::new();
        let u = Usage::compute(&pools(), [], ["a"], &[]);
        let text = m.scrape(Some(&u));
        for name in [
            "ipam_allocations_in_use",
            "ipam_allocations_borrowed",
            "ipam_blocks",
            "ipam_allocations_gc_candidates",
            "ipam_allocations_gc_reclamations",
        ] {
            assert_eq!(
                sample(&text, &format!("{name}{{ippool=\"p\",node=\"a\"}}")),
                Some(0.0),
                "{name}: {text}"
            );
        }
        for name in [
            "ipam_allocations_per_node",
            "ipam_allocations_borrowed_per_node",
            "ipam_blocks_per_node",
        ] {
            assert_eq!(
                sample(&text, &format!("{name}{{node=\"a\"}}")),
                Some(0.0),
                "{name}: {text}"
            );
        }
        assert_eq!(sample(&text, "ipam_ippool_size{ippool=\"p\"}"), Some(256.0));
        assert_eq!(sample(&text, "ipam_ippool_reserved{ippool=\"p\"}"), Some(0.0));
        // Types as Calico declares them; the reclamations counter keeps Calico's sample name.
        for (name, ty) in [
            ("ipam_allocations_in_use", "gauge"),
            ("ipam_allocations_gc_candidates", "gauge"),
            ("ipam_allocations_gc_reclamations", "counter"),
            ("ipam_ippool_reserved", "gauge"),
            ("ipam_blocks_per_node", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {ty}\n")), "{name}: {text}");
        }
        assert!(!text.contains("ipam_allocations_gc_reclamations_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        // Exactly Calico's IPAM families.
        let families: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ipam_"))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let calico: std::collections::BTreeSet<&str> = CALICO_IPAM_METRICS
            .iter()
            .map(|m| m.strip_prefix("ipam_").unwrap())
            .collect();
        assert_eq!(families, calico);

        // A replica without the Lease exports no IPAM series (sums over replicas stay right).
        let text = m.scrape(None);
        assert!(!text.contains("ipam_"), "{text}");
        assert!(text.contains("tortie_leader 0"), "{text}");
    }

    #[test]
    fn gc_counts_and_usage_reach_the_samples() {
        let attr = |node: &str| AllocationAttribute {
            handle_id: Some("h".into()),
            secondary: Some([("node".to_string(), node.to_string())].into_iter().collect()),
            ..Default::default()
        };
        let block = IPAMBlockSpec {
            cidr: "10.0.0.0/30".into(),
            affinity: Some("host:a".into()),
            allocations: vec![Some(0), Some(1), None, None],
            attributes: vec![attr("a"), attr("b")],
            ..Default::default()
        };
        let m = Metrics::new();
        m.set_gc_candidates(&[(("p".to_string(), "b".to_string()), 1)].into_iter().collect());
        m.add_reclamations("p", "a", 3);
        m.add_reclamations("p", "a", 2);
        m.add_reclamations("gone-pool", "a", 7);
        let _t = m.reconcile("ippool");
        drop(_t);
        let u = Usage::compute(&pools(), [&block], ["a", "b"], &[]);
        let text = m.scrape(Some(&u));
        let s = |series: &str| sample(&text, series);
        assert_eq!(s("ipam_allocations_in_use{ippool=\"p\",node=\"a\"}"), Some(1.0));
        assert_eq!(s("ipam_allocations_borrowed{ippool=\"p\",node=\"b\"}"), Some(1.0));
        assert_eq!(s("ipam_allocations_borrowed{ippool=\"p\",node=\"a\"}"), Some(0.0));
        assert_eq!(s("ipam_blocks{ippool=\"p\",node=\"a\"}"), Some(1.0));
        assert_eq!(
            s("ipam_allocations_gc_candidates{ippool=\"p\",node=\"b\"}"),
            Some(1.0)
        );
        assert_eq!(
            s("ipam_allocations_gc_candidates{ippool=\"p\",node=\"a\"}"),
            Some(0.0)
        );
        assert_eq!(
            s("ipam_allocations_gc_reclamations{ippool=\"p\",node=\"a\"}"),
            Some(5.0)
        );
        assert_eq!(
            s("ipam_allocations_gc_reclamations{ippool=\"p\",node=\"b\"}"),
            Some(0.0)
        );
        // A deleted pool's reclamations go with it, as in Calico.
        assert!(!text.contains("gone-pool"), "{text}");
        assert_eq!(s("ipam_allocations_per_node{node=\"b\"}"), Some(1.0));
        assert_eq!(s("ipam_allocations_borrowed_per_node{node=\"b\"}"), Some(1.0));
        assert_eq!(s("ipam_blocks_per_node{node=\"a\"}"), Some(1.0));
        assert_eq!(s("tortie_reconciles_total{controller=\"ippool\"}"), Some(1.0));

        // The GC found nothing more: candidates back to zero, reclamations keep counting.
        m.set_gc_candidates(&BTreeMap::new());
        m.add_reclamations("p", "b", 1);
        let text = m.scrape(Some(&u));
        let s = |series: &str| sample(&text, series);
        assert_eq!(
            s("ipam_allocations_gc_candidates{ippool=\"p\",node=\"b\"}"),
            Some(0.0)
        );
        assert_eq!(
            s("ipam_allocations_gc_reclamations{ippool=\"p\",node=\"b\"}"),
            Some(1.0)
        );
        assert_eq!(
            s("ipam_allocations_gc_reclamations{ippool=\"p\",node=\"a\"}"),
            Some(5.0)
        );

        // Node b deleted and nothing of it left: its series go; a's stay.
        let block_a = IPAMBlockSpec {
            allocations: vec![Some(0), None, None, None],
            attributes: vec![attr("a")],
            ..block
        };
        let text = m.scrape(Some(&Usage::compute(&pools(), [&block_a], ["a"], &[])));
        assert!(!text.contains("node=\"b\""), "{text}");
        assert_eq!(
            sample(&text, "ipam_allocations_gc_reclamations{ippool=\"p\",node=\"a\"}"),
            Some(5.0)
        );
    }
}
