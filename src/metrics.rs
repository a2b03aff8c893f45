//! Prometheus metrics of `tortie run`: Calico kube-controllers' IPAM metric names and labels (so
//! existing dashboards keep working) plus reconcile counts, durations and errors per controller.
//!
//! The IPAM gauges are recomputed from the watch caches at every scrape, like Calico recomputes
//! them every sync. `ipam_allocations_gc_reclamations` is exposed as a gauge that only grows:
//! OpenMetrics would rename a counter to `..._total`, and Calico's name is the contract.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64};

use ipnet::IpNet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::IPAMBlockSpec;

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
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    pub error: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    pub registry: Registry,
    pub allocations_in_use: Family<PoolNode, Gauge>,
    pub allocations_borrowed: Family<PoolNode, Gauge>,
    pub blocks: Family<PoolNode, Gauge>,
    pub gc_candidates: Family<PoolNode, Gauge>,
    pub gc_reclamations: Family<PoolNode, Gauge>,
    pub ippool_size: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub reconcile_duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    pub leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            allocations_in_use: Family::default(),
            allocations_borrowed: Family::default(),
            blocks: Family::default(),
            gc_candidates: Family::default(),
            gc_reclamations: Family::default(),
            ippool_size: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ipam_allocations_in_use",
            "IP allocations in use, per pool and node (pods and tunnels)",
            m.allocations_in_use.clone(),
        );
        registry.register(
            "ipam_allocations_borrowed",
            "IP allocations a node holds in blocks affine to another node (or to none)",
            m.allocations_borrowed.clone(),
        );
        registry.register(
            "ipam_blocks",
            "IPAM blocks per pool and affine node (no_affinity for orphan blocks)",
            m.blocks.clone(),
        );
        registry.register(
            "ipam_allocations_gc_candidates",
            "Allocations the garbage collector considers leaked and has not released yet",
            m.gc_candidates.clone(),
        );
        registry.register(
            "ipam_allocations_gc_reclamations",
            "Leaked allocations released by the garbage collector since start",
            m.gc_reclamations.clone(),
        );
        registry.register(
            "ipam_ippool_size",
            "Addresses in the pool's CIDR",
            m.ippool_size.clone(),
        );
        registry.register(
            "tortie_reconciles",
            "Reconciles run, per controller",
            m.reconciles.clone(),
        );
        registry.register(
            "tortie_reconcile_errors",
            "Reconciles that failed, per controller and error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "tortie_reconcile_duration_seconds",
            "Time spent in one reconcile, per controller",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "tortie_leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
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

    /// Replaces the IPAM gauges with a fresh computation.
    pub fn set_ipam(&self, g: &IpamGauges) {
        self.allocations_in_use.clear();
        self.allocations_borrowed.clear();
        self.blocks.clear();
        self.ippool_size.clear();
        for (k, v) in &g.in_use {
            self.allocations_in_use.get_or_create(&pn(k)).set(*v as i64);
        }
        for (k, v) in &g.borrowed {
            self.allocations_borrowed.get_or_create(&pn(k)).set(*v as i64);
        }
        for (k, v) in &g.blocks {
            self.blocks.get_or_create(&pn(k)).set(*v as i64);
        }
        for (k, v) in &g.pool_size {
            self.ippool_size
                .get_or_create(&PoolLabel { ippool: k.clone() })
                .set(*v);
        }
    }

    /// Replaces the GC candidate gauge (pool, node) → count.
    pub fn set_gc_candidates(&self, c: &BTreeMap<(String, String), u64>) {
        self.gc_candidates.clear();
        for (k, v) in c {
            self.gc_candidates.get_or_create(&pn(k)).set(*v as i64);
        }
    }

    pub fn add_reclamations(&self, pool: &str, node: &str, n: u64) {
        self.gc_reclamations
            .get_or_create(&PoolNode {
                ippool: pool.into(),
                node: node.into(),
            })
            .inc_by(n as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

fn pn((pool, node): &(String, String)) -> PoolNode {
    PoolNode {
        ippool: pool.clone(),
        node: node.clone(),
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

/// Calico's IPAM gauges, keyed (pool, node).
#[derive(Debug, Default, PartialEq)]
pub struct IpamGauges {
    pub in_use: BTreeMap<(String, String), u64>,
    pub borrowed: BTreeMap<(String, String), u64>,
    pub blocks: BTreeMap<(String, String), u64>,
    pub pool_size: BTreeMap<String, f64>,
}

/// Computes the gauges as Calico does: allocations by their `node` attribute (`unknown_node`
/// without one), borrowed when that node is not the block's affine node, blocks by affine node
/// (`no_affinity`), blocks outside every pool under `no_ippool`; every (pool, known node) pair
/// present with 0 so ratios never go missing.
pub fn ipam_gauges<'a>(
    pools: &[crate::ipam::usage::PoolRef],
    blocks: impl IntoIterator<Item = &'a IPAMBlockSpec>,
) -> IpamGauges {
    let mut g = IpamGauges::default();
    for p in pools {
        let bits = (p.cidr.max_prefix_len() - p.cidr.prefix_len()) as i32;
        g.pool_size.insert(p.name.clone(), 2f64.powi(bits));
    }
    let mut nodes = std::collections::BTreeSet::new();
    for b in blocks {
        if b.is_deleted() {
            continue;
        }
        let Ok(net) = b.cidr.parse::<IpNet>() else {
            continue;
        };
        let pool = crate::ipam::usage::pool_of(pools, &net);
        let host = b.host().map(str::to_string);
        *g.blocks
            .entry((pool.clone(), host.clone().unwrap_or_else(|| "no_affinity".into())))
            .or_default() += 1;
        if let Some(h) = &host {
            nodes.insert(h.clone());
        }
        for a in b.allocations.iter().flatten() {
            let node = b
                .attributes
                .get(*a)
                .and_then(|x| x.secondary.as_ref())
                .and_then(|s| s.get("node"))
                .unwrap_or("unknown_node")
                .to_string();
            if host.as_deref() != Some(node.as_str()) {
                *g.borrowed.entry((pool.clone(), node.clone())).or_default() += 1;
            }
            nodes.insert(node.clone());
            *g.in_use.entry((pool.clone(), node)).or_default() += 1;
        }
    }
    for p in pools {
        for n in &nodes {
            g.in_use.entry((p.name.clone(), n.clone())).or_default();
            g.borrowed.entry((p.name.clone(), n.clone())).or_default();
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AllocationAttribute;

    #[test]
    fn gauges_follow_calico() {
        let attr = |node: &str| AllocationAttribute {
            handle_id: Some("h".into()),
            secondary: Some([("node".to_string(), node.to_string())].into_iter().collect()),
            ..Default::default()
        };
        let b1 = IPAMBlockSpec {
            cidr: "10.0.0.0/30".into(),
            affinity: Some("host:a".into()),
            allocations: vec![Some(0), Some(1), None, None],
            attributes: vec![attr("a"), attr("b")],
            ..Default::default()
        };
        let orphan = IPAMBlockSpec {
            cidr: "10.9.0.0/30".into(),
            allocations: vec![None; 4],
            ..Default::default()
        };
        let pool = |name: &str, cidr: &str| crate::ipam::usage::PoolRef {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: 30,
        };
        // "inner" sits inside "p" and owns its block: "p" must not count it too (issue 15).
        let inner = IPAMBlockSpec {
            cidr: "10.0.0.128/30".into(),
            affinity: Some("host:a".into()),
            allocations: vec![Some(0), None, None, None],
            attributes: vec![attr("a")],
            ..Default::default()
        };
        let pools = vec![pool("p", "10.0.0.0/24"), pool("inner", "10.0.0.128/25")];
        let g = ipam_gauges(&pools, [&b1, &orphan, &inner]);
        let k = |p: &str, n: &str| (p.to_string(), n.to_string());
        assert_eq!(g.in_use.get(&k("p", "a")), Some(&1));
        assert_eq!(g.in_use.get(&k("p", "b")), Some(&1));
        assert_eq!(g.borrowed.get(&k("p", "b")), Some(&1));
        assert_eq!(g.borrowed.get(&k("p", "a")), Some(&0));
        assert_eq!(g.blocks.get(&k("p", "a")), Some(&1));
        assert_eq!(g.blocks.get(&k("no_ippool", "no_affinity")), Some(&1));
        assert_eq!(g.pool_size.get("p"), Some(&256.0));
        assert_eq!(g.in_use.get(&k("inner", "a")), Some(&1));
        assert_eq!(g.blocks.get(&k("inner", "a")), Some(&1));
        let m = Metrics::new();
        m.set_ipam(&g);
        m.add_reclamations("p", "a", 3);
        let _t = m.reconcile("ippool");
        drop(_t);
        let text = m.encode();
        assert!(
            text.contains("ipam_allocations_in_use{ippool=\"p\",node=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ipam_allocations_gc_reclamations{ippool=\"p\",node=\"a\"} 3"),
            "{text}"
        );
        assert!(text.contains("ipam_ippool_size{ippool=\"p\"} 256"), "{text}");
        assert!(
            text.contains("tortie_reconciles_total{controller=\"ippool\"} 1"),
            "{text}"
        );
    }
}
