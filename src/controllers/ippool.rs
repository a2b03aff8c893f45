//! IPPool controller: what CEL cannot check (overlap in Calico's order, pod-CIDR containment,
//! reserved ranges, selector syntax), status with conditions and usage counts, and a finalizer
//! that holds a deleted pool until no address is allocated from it.
//!
//! Conditions: `Ready` (Valid, or False with a reason naming the problem and a message naming
//! the field) and Calico's `Allocatable` (reasons OK, PoolDisabled, Terminating, CIDROverlap or
//! the validation reason) so Calico's own IPAM skips a pool tortie refused.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as CtlConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::conditions::{self, Cond};
use super::podcidr::PodCidrs;
use super::pools::{self, ALLOW_OUTSIDE_POD_CIDR, PoolView, Problem};
use super::{Ctx, Error, gc, tick};
use crate::api::{CalicoKind, Pool};
use crate::ipam::usage::{self as ipam_usage, BlockCounts, PoolRef, PoolUsage};
use tokio_util::sync::CancellationToken;

const NAME: &str = "ippool";
const MANAGER_FIELD: &str = "tortie-ippool";
/// Holds a deleted pool until its addresses are released.
pub const FINALIZER: &str = "tortie.io/ippool-drain";

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let st = &ctx.stores;
    let ar = ctx.resource(CalicoKind::IPPool);
    let trigger = st.pools.changes().map(|o| Ok((*o).clone()));
    // Any pool change can change another pool's overlap verdict: re-check all (pools are few).
    let resync = stream::select_all([
        stream::once(async {}).boxed(),
        st.pools.changes().map(|_| ()).boxed(),
        st.kubeadm.changes().map(|_| ()).boxed(),
        tick(Duration::from_secs(30)).boxed(),
    ]);
    // A block change refreshes the counts of the pool owning it (the only pool whose status
    // and drain it changes).
    let pools_store = st.pools.store.clone();
    let ar2 = ar.clone();
    let by_block = st.blocks.changes().filter_map(move |b| {
        let net = b.cidr().parse::<ipnet::IpNet>().ok();
        let hit = net.and_then(|n| {
            let refs: Vec<PoolRef> = pools_store
                .state()
                .iter()
                .filter_map(|p| PoolRef::from_pool(p))
                .collect();
            ipam_usage::owning_pool(&refs, &n).map(|p| ObjectRef::new_with(&p.name, ar2.clone()))
        });
        async move { hit }
    });
    Controller::for_stream_with(trigger, st.pools.store.clone(), ar)
        .reconcile_all_on(resync)
        .reconcile_on(by_block)
        .with_config(CtlConfig::default().debounce(Duration::from_millis(300)))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {})
        .await;
}

fn error_policy(_: Arc<Pool>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error(NAME, err.metric_label());
    warn!(error = %err, "IPPool reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(pool: Arc<Pool>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = pool.name_any();
    async move {
        let _t = ctx.metrics.reconcile(NAME);
        apply(&pool, &ctx).await
    }
    .instrument(info_span!("reconcile", ippool = %name))
    .await
}

async fn apply(pool: &Pool, ctx: &Ctx) -> Result<Action, Error> {
    let name = pool.name_any();
    let ar = ctx.resource(CalicoKind::IPPool);
    let api: Api<Pool> = Api::all_with(ctx.client.clone(), &ar);
    let all = ctx.stores.pools.all();
    let all: Vec<&Pool> = all.iter().map(|p| &**p).collect();
    let pod = ctx.stores.pod_cidrs().ok().flatten();
    let blocks = ctx.stores.blocks.all();
    let blocks: Vec<&dyn BlockCounts> = blocks.iter().map(|b| &**b as &dyn BlockCounts).collect();

    match decide(pool, &all, pod.as_ref(), &blocks, Time(jiff::Timestamp::now())) {
        Decision::Release { finalizer, net } => {
            if finalizer {
                // Its empty blocks and their affinities go with the pool, so nothing dangles; a
                // nested pool's blocks inside its CIDR are that pool's and stay.
                if net.is_some() {
                    let refs: Vec<PoolRef> = all.iter().filter_map(|p| PoolRef::from_pool(p)).collect();
                    gc::delete_empty_blocks_where(ctx, |b| owns(&refs, &name, b)).await?;
                }
                set_finalizers(&api, pool, false).await?;
                info!("IPPool drained; finalizer removed");
                ctx.event(
                    pool,
                    &ar,
                    false,
                    "Drained",
                    "Delete",
                    format!("IPPool {name} has no allocations left; deleting it"),
                )
                .await;
            }
            Ok(Action::await_change())
        }
        Decision::Keep {
            add_finalizer,
            status,
            event,
            deleting,
        } => {
            if add_finalizer {
                set_finalizers(&api, pool, true).await?;
            }
            if let Some(status) = status {
                let patch = json!({
                    "apiVersion": ar.api_version,
                    "kind": ar.kind,
                    "status": status,
                });
                match api
                    .patch_status(
                        &name,
                        &PatchParams::apply(MANAGER_FIELD).force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                {
                    Ok(_) => {}
                    // Calico's own v1 CRD has no status subresource: nothing to write there.
                    Err(kube::Error::Api(s)) if s.code == 404 && !deleting => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(ev) = event {
                if ev.warning {
                    warn!(reason = ev.reason, "{}", ev.log);
                }
                ctx.event(pool, &ar, ev.warning, ev.reason, "Validate", ev.note)
                    .await;
            }
            Ok(if deleting {
                Action::requeue(Duration::from_secs(5))
            } else {
                Action::requeue(Duration::from_secs(120))
            })
        }
    }
}

/// A validation Event on the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// What the controller's log says.
    pub log: String,
}

/// What the IPPool controller does with one pool.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Deleted and nothing allocated inside: clear its empty blocks and drop the finalizer
    /// (when it is still there).
    Release { finalizer: bool, net: Option<IpNet> },
    /// Validate and report.
    Keep {
        add_finalizer: bool,
        /// The status to apply; `None` when the live one already says the same.
        status: Option<serde_json::Value>,
        /// Emitted when the Ready verdict changed.
        event: Option<PoolEvent>,
        deleting: bool,
    },
}

/// Pure: what to do with `pool`, given every live pool (for overlap), the pod CIDRs and every
/// block.
pub fn decide(
    pool: &Pool,
    all: &[&Pool],
    pod: Option<&PodCidrs>,
    blocks: &[&dyn BlockCounts],
    now: Time,
) -> Decision {
    let name = pool.name_any();
    let views = pool_views(all);
    let verdicts = pools::validate_pools(&views, pod, &pools::selector_ok);
    let problem = views
        .iter()
        .position(|v| v.name == name)
        .and_then(|i| verdicts[i].clone());
    let net = pool.spec.net();
    // Draining waits for the allocations this pool owns, and the counts in status are the same,
    // attributed as in `ipam show` and the metrics: a nested (or overlapping, narrower) pool's
    // blocks are that pool's, and deleting the wider one does not wait for them.
    let refs: Vec<PoolRef> = all.iter().filter_map(|p| PoolRef::from_pool(p)).collect();
    let owned = ipam_usage::by_pool(&refs, blocks.iter().copied())
        .remove(&Some(name.clone()))
        .unwrap_or_default();
    let deleting = pool.meta().deletion_timestamp.is_some();
    let has_finalizer = pool.finalizers().iter().any(|f| f == FINALIZER);

    if deleting && owned.allocations == 0 {
        return Decision::Release {
            finalizer: has_finalizer,
            net,
        };
    }

    let ready = ready_condition(&name, problem.as_ref(), deleting, &owned);
    let allocatable = allocatable_condition(problem.as_ref(), deleting, pool.spec.is_disabled());
    let old = pool
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let was_ready = old
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()));
    let conds = conditions::merge(&old, &[ready.clone(), allocatable], pool.metadata.generation, now);
    let status = status_patch(pool, conds, &owned, net.map(|n| pools::capacity(&n)));
    Decision::Keep {
        add_finalizer: !deleting && !has_finalizer,
        status,
        event: ready_event(&name, was_ready.as_ref(), &ready, problem.as_ref(), deleting),
        deleting,
    }
}

/// Whether `block` (a block's or an affinity's CIDR) belongs to pool `name`: the one pool that
/// owns it by [`ipam_usage::owning_pool`].
pub fn owns(pools: &[PoolRef], name: &str, block: &IpNet) -> bool {
    ipam_usage::owning_pool(pools, block).is_some_and(|p| p.name == name)
}

/// What the overlap and containment checks need of every live pool.
fn pool_views<'a>(all: &[&'a Pool]) -> Vec<PoolView<'a>> {
    all.iter()
        .map(|p| PoolView {
            name: p.metadata.name.as_deref().unwrap_or(""),
            spec: &p.spec,
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            deleting: p.meta().deletion_timestamp.is_some(),
            active: p
                .status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, "Allocatable")),
            allow_outside: p
                .annotations()
                .get(ALLOW_OUTSIDE_POD_CIDR)
                .is_some_and(|v| v == "true"),
        })
        .collect()
}

/// `Ready`: terminating (with what it waits for), refused (naming the field), or valid.
fn ready_condition(name: &str, problem: Option<&Problem>, deleting: bool, usage: &PoolUsage) -> Cond {
    match (problem, deleting) {
        (_, true) => Cond::new(
            "Ready",
            false,
            "Terminating",
            format!(
                "IPPool {name} is being deleted: waiting for {} allocation(s) in {} block(s) to be released",
                usage.allocations, usage.blocks
            ),
        ),
        (Some(p), false) => Cond::new(
            "Ready",
            false,
            p.reason,
            format!("spec.{}: {}", p.field, p.message),
        ),
        (None, false) => Cond::new(
            "Ready",
            true,
            "Valid",
            format!("IPPool {name} is valid and in use"),
        ),
    }
}

/// `Allocatable`: whether new addresses may come from the pool.
fn allocatable_condition(problem: Option<&Problem>, deleting: bool, disabled: bool) -> Cond {
    match (problem, deleting, disabled) {
        (_, true, _) => Cond::new("Allocatable", false, "Terminating", "the pool is being deleted"),
        (Some(p), _, _) => Cond::new("Allocatable", false, p.reason, p.message.clone()),
        (None, _, true) => Cond::new(
            "Allocatable",
            false,
            "PoolDisabled",
            "spec.disabled is true: no new addresses are handed out",
        ),
        (None, _, false) => Cond::new(
            "Allocatable",
            true,
            "OK",
            "new addresses may be allocated from this pool",
        ),
    }
}

/// The status to apply, `None` when the live one already says the same.
fn status_patch(
    pool: &Pool,
    conds: Vec<Condition>,
    owned: &ipam_usage::PoolUsage,
    capacity: Option<u64>,
) -> Option<serde_json::Value> {
    let st = pool.status.clone().unwrap_or_default();
    let unchanged = st.conditions == conds
        && st.allocations == Some(owned.allocations)
        && st.blocks == Some(owned.blocks)
        && st.capacity == capacity
        && st.observed_generation == pool.metadata.generation;
    (!unchanged).then(|| {
        json!({
            "conditions": conds,
            "allocations": owned.allocations,
            "blocks": owned.blocks,
            "capacity": capacity,
            "observedGeneration": pool.metadata.generation,
        })
    })
}

/// An Event when the Ready verdict changed: a warning naming the problem, or "valid again" for a
/// pool that had a verdict before (a new pool's first verdict is no news).
fn ready_event(
    name: &str,
    was_ready: Option<&(String, String)>,
    ready: &Cond,
    problem: Option<&Problem>,
    deleting: bool,
) -> Option<PoolEvent> {
    let now = (
        if ready.status { "True" } else { "False" }.to_string(),
        ready.reason.clone(),
    );
    if was_ready == Some(&now) {
        None
    } else if let Some(p) = problem {
        Some(PoolEvent {
            warning: true,
            reason: p.reason,
            note: format!("spec.{}: {}", p.field, p.message),
            log: p.message.clone(),
        })
    } else if !deleting && was_ready.is_some() {
        Some(PoolEvent {
            warning: false,
            reason: "Valid",
            note: format!("IPPool {name} is valid again"),
            log: String::new(),
        })
    } else {
        None
    }
}

/// Adds or removes the finalizer with a merge patch carrying resourceVersion (a 409 retries).
async fn set_finalizers(api: &Api<Pool>, pool: &Pool, add: bool) -> Result<(), Error> {
    let mut f: Vec<String> = pool
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if add {
        f.push(FINALIZER.into());
    }
    let patch = json!({"metadata": {"finalizers": f, "resourceVersion": pool.resource_version()}});
    match api
        .patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CrdMode;
    use crate::api::{IPAMBlockSpec, IPPoolSpec};
    use crate::controllers::podcidr::Source;
    use crate::ipam::block as blk;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn t0() -> Time {
        t("2026-01-01T00:00:00Z")
    }

    fn pod(c: &[&str]) -> PodCidrs {
        PodCidrs {
            cidrs: c.iter().map(|s| s.parse().unwrap()).collect(),
            source: Source::Kubeadm,
        }
    }

    fn pool(name: &str, cidr: &str, created: &str) -> Pool {
        let mut p = Pool::new(
            name,
            &CrdMode::V1.resource(CalicoKind::IPPool),
            IPPoolSpec {
                cidr: cidr.into(),
                ..Default::default()
            },
        );
        p.metadata.creation_timestamp = Some(t(created));
        p.metadata.generation = Some(1);
        p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        p
    }

    fn block(cidr: &str, allocated: usize) -> IPAMBlockSpec {
        let net: IpNet = cidr.parse().unwrap();
        let mut b = blk::new_block(&net, Some("host:n1".into()), 1, None);
        if allocated > 0 {
            blk::allocate(&mut b, allocated, Some("h"), &Default::default(), |_| false);
        }
        b
    }

    fn keep(d: Decision) -> (bool, Option<serde_json::Value>, Option<PoolEvent>, bool) {
        match d {
            Decision::Keep {
                add_finalizer,
                status,
                event,
                deleting,
            } => (add_finalizer, status, event, deleting),
            other => panic!("expected Keep, got {other:?}"),
        }
    }

    fn cond(status: &serde_json::Value, t: &str) -> (String, String, String) {
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap();
        let s = |k: &str| c[k].as_str().unwrap().to_string();
        (s("status"), s("reason"), s("message"))
    }

    /// The pool as the next observe sees it after `status` was written.
    fn written(mut p: Pool, status: &serde_json::Value) -> Pool {
        p.status = Some(serde_json::from_value(status.clone()).unwrap());
        p
    }

    const POD: &[&str] = &["10.48.0.0/16"];

    #[test]
    fn a_valid_pool_gets_its_finalizer_conditions_and_counts() {
        let mut p = pool("a", "10.48.0.0/24", "2026-01-01T00:00:00Z");
        p.metadata.finalizers = None;
        let b = block("10.48.0.0/26", 3);
        let (fin, status, event, deleting) = keep(decide(&p, &[&p], Some(&pod(POD)), &[&b], t0()));
        assert!(fin && !deleting);
        assert_eq!(event, None, "no Event on a pool's first verdict when it is valid");
        let s = status.unwrap();
        assert_eq!(
            cond(&s, "Ready"),
            (
                "True".into(),
                "Valid".into(),
                "IPPool a is valid and in use".into()
            )
        );
        assert_eq!(cond(&s, "Allocatable").1, "OK");
        assert_eq!(
            (
                s["allocations"].as_u64(),
                s["blocks"].as_u64(),
                s["capacity"].as_u64()
            ),
            (Some(3), Some(1), Some(256))
        );
        // Written back, nothing changes.
        let mut p = written(p, &s);
        p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let later = t("2026-01-02T00:00:00Z");
        let (fin, status, event, _) = keep(decide(&p, &[&p], Some(&pod(POD)), &[&b], later));
        assert!(!fin && status.is_none() && event.is_none());
    }

    #[test]
    fn the_later_of_two_overlapping_pools_is_refused_with_an_event() {
        let a = pool("a", "10.48.0.0/16", "2026-01-01T00:00:00Z");
        let b = pool("b", "10.48.1.0/24", "2026-01-01T00:01:00Z");
        let all = [&a, &b];
        let (_, s, ev, _) = keep(decide(&b, &all, Some(&pod(POD)), &[], t0()));
        let s = s.unwrap();
        let (st, reason, msg) = cond(&s, "Ready");
        assert_eq!((st.as_str(), reason.as_str()), ("False", "CIDROverlap"));
        assert!(msg.starts_with("spec.cidr: ") && msg.contains("a"), "{msg}");
        assert_eq!(cond(&s, "Allocatable").1, "CIDROverlap");
        let ev = ev.unwrap();
        assert!(
            ev.warning && ev.reason == "CIDROverlap" && ev.note == msg,
            "{ev:?}"
        );
        let (_, s, _, _) = keep(decide(&a, &all, Some(&pod(POD)), &[], t0()));
        assert_eq!(cond(&s.unwrap(), "Ready").0, "True");

        // The same verdict again: no second Event; once `a` is gone, `b` is valid again.
        let b = written(b.clone(), &s_of(&b, &all));
        let (_, _, ev, _) = keep(decide(&b, &[&a, &b], Some(&pod(POD)), &[], t0()));
        assert_eq!(ev, None);
        let (_, s, ev, _) = keep(decide(&b, &[&b], Some(&pod(POD)), &[], t0()));
        assert_eq!(cond(&s.unwrap(), "Ready").1, "Valid");
        let ev = ev.unwrap();
        assert!(
            !ev.warning && ev.reason == "Valid" && ev.note == "IPPool b is valid again",
            "{ev:?}"
        );
    }

    fn s_of(p: &Pool, all: &[&Pool]) -> serde_json::Value {
        keep(decide(p, all, Some(&pod(POD)), &[], t0())).1.unwrap()
    }

    #[test]
    fn pod_cidr_containment_and_its_escape_hatch() {
        let mut p = pool("out", "192.168.0.0/24", "2026-01-01T00:00:00Z");
        let (_, s, ev, _) = keep(decide(&p, &[&p], Some(&pod(POD)), &[], t0()));
        assert_eq!(cond(&s.unwrap(), "Ready").1, "PodCIDRMismatch");
        assert_eq!(ev.unwrap().reason, "PodCIDRMismatch");
        // No pod CIDR known: nothing to check against.
        let (_, s, _, _) = keep(decide(&p, &[&p], None, &[], t0()));
        assert_eq!(cond(&s.unwrap(), "Ready").1, "Valid");
        p.metadata.annotations = Some([(ALLOW_OUTSIDE_POD_CIDR.to_string(), "true".to_string())].into());
        let (_, s, _, _) = keep(decide(&p, &[&p], Some(&pod(POD)), &[], t0()));
        assert_eq!(cond(&s.unwrap(), "Ready").1, "Valid");
    }

    #[test]
    fn reserved_range_and_bad_selector_name_their_field() {
        let p = pool("lo", "127.0.0.0/24", "2026-01-01T00:00:00Z");
        let (_, s, _, _) = keep(decide(&p, &[&p], None, &[], t0()));
        assert_eq!(cond(&s.unwrap(), "Ready").1, "ReservedRange");
        let mut p = pool("sel", "10.48.0.0/24", "2026-01-01T00:00:00Z");
        p.spec.node_selector = Some("rack ==".into());
        let (_, s, _, _) = keep(decide(&p, &[&p], Some(&pod(POD)), &[], t0()));
        let (_, reason, msg) = cond(&s.unwrap(), "Ready");
        assert_eq!(reason, "InvalidSelector");
        assert!(msg.starts_with("spec.nodeSelector: "), "{msg}");
    }

    #[test]
    fn a_disabled_pool_is_ready_but_not_allocatable() {
        let mut p = pool("d", "10.48.0.0/24", "2026-01-01T00:00:00Z");
        p.spec.disabled = Some(true);
        let (_, s, _, _) = keep(decide(&p, &[&p], Some(&pod(POD)), &[], t0()));
        let s = s.unwrap();
        assert_eq!(cond(&s, "Ready").0, "True");
        assert_eq!(cond(&s, "Allocatable").1, "PoolDisabled");
    }

    #[test]
    fn a_deleted_pool_drains_then_is_released() {
        let mut p = pool("a", "10.48.0.0/24", "2026-01-01T00:00:00Z");
        p.metadata.deletion_timestamp = Some(t0());
        let full = block("10.48.0.0/26", 2);
        let (fin, s, ev, deleting) = keep(decide(&p, &[&p], Some(&pod(POD)), &[&full], t0()));
        assert!(!fin && deleting && ev.is_none());
        let s = s.unwrap();
        assert_eq!(
            cond(&s, "Ready"),
            (
                "False".into(),
                "Terminating".into(),
                "IPPool a is being deleted: waiting for 2 allocation(s) in 1 block(s) to be released".into()
            )
        );
        assert_eq!(cond(&s, "Allocatable").1, "Terminating");
        let empty = block("10.48.0.0/26", 0);
        assert_eq!(
            decide(&p, &[&p], Some(&pod(POD)), &[&empty], t0()),
            Decision::Release {
                finalizer: true,
                net: Some("10.48.0.0/24".parse().unwrap())
            }
        );
        p.metadata.finalizers = None;
        assert!(matches!(
            decide(&p, &[&p], None, &[], t0()),
            Decision::Release { finalizer: false, .. }
        ));
    }

    #[test]
    fn counts_and_draining_are_what_the_pool_owns_not_nested_pools_blocks() {
        let mut outer = pool("outer", "10.48.0.0/16", "2026-01-01T00:00:00Z");
        outer.spec.disabled = Some(true);
        let inner = pool("inner", "10.48.1.0/24", "2026-01-01T00:01:00Z");
        let in_inner = block("10.48.1.0/26", 4);
        let in_outer = block("10.48.2.0/26", 1);
        let all = [&outer, &inner];
        let s = keep(decide(&outer, &all, None, &[&in_inner, &in_outer], t0()))
            .1
            .unwrap();
        assert_eq!(
            (s["allocations"].as_u64(), s["blocks"].as_u64()),
            (Some(1), Some(1))
        );
        let mut outer = outer;
        outer.metadata.deletion_timestamp = Some(t0());
        let all = [&outer, &inner];
        // Its own allocation holds it, and the message counts only that one.
        let (_, s, _, _) = keep(decide(&outer, &all, None, &[&in_inner, &in_outer], t0()));
        assert_eq!(
            cond(&s.unwrap(), "Ready").2,
            "IPPool outer is being deleted: waiting for 1 allocation(s) in 1 block(s) to be released"
        );
        // The nested pool's 4 allocations do not: they stay in the nested pool.
        let empty_own = block("10.48.2.0/26", 0);
        assert_eq!(
            decide(&outer, &all, None, &[&in_inner, &empty_own], t0()),
            Decision::Release {
                finalizer: true,
                net: Some("10.48.0.0/16".parse().unwrap())
            }
        );
        // The nested pool, deleted, waits for its own.
        let mut inner = inner;
        inner.metadata.deletion_timestamp = Some(t0());
        let all = [&outer, &inner];
        let (_, s, _, _) = keep(decide(&inner, &all, None, &[&in_inner, &empty_own], t0()));
        assert!(
            cond(&s.unwrap(), "Ready")
                .2
                .contains("4 allocation(s) in 1 block(s)")
        );
    }

    #[test]
    fn a_deleted_pool_clears_only_the_blocks_it_owns() {
        let refs = [
            PoolRef {
                name: "outer".into(),
                cidr: "10.48.0.0/16".parse().unwrap(),
                block_size: 26,
            },
            PoolRef {
                name: "inner".into(),
                cidr: "10.48.1.0/24".parse().unwrap(),
                block_size: 26,
            },
            // Same CIDR as `inner`'s first half, carving /28 blocks.
            PoolRef {
                name: "small".into(),
                cidr: "10.48.1.0/25".parse().unwrap(),
                block_size: 28,
            },
        ];
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(owns(&refs, "outer", &n("10.48.2.0/26")));
        assert!(!owns(&refs, "outer", &n("10.48.1.64/26")));
        assert!(owns(&refs, "inner", &n("10.48.1.64/26")));
        assert!(owns(&refs, "small", &n("10.48.1.16/28")));
        assert!(!owns(&refs, "inner", &n("10.48.1.16/28")));
        assert!(!owns(&refs, "outer", &n("10.49.0.0/26")));
    }

    fn refused() -> Problem {
        Problem {
            pool: "b".into(),
            field: "cidr",
            reason: "CIDROverlap",
            message: "overlaps pool a".into(),
        }
    }

    #[test]
    fn conditions_name_the_state_of_the_pool() {
        let usage = PoolUsage {
            allocations: 2,
            blocks: 1,
        };
        let r = ready_condition("p", None, false, &usage);
        assert!(r.status && r.reason == "Valid");
        let r = ready_condition("p", Some(&refused()), false, &usage);
        assert_eq!(
            (r.status, r.reason.as_str(), r.message.as_str()),
            (false, "CIDROverlap", "spec.cidr: overlaps pool a")
        );
        // Deleting wins over a problem, and says what the deletion waits for.
        let r = ready_condition("p", Some(&refused()), true, &usage);
        assert_eq!(r.reason, "Terminating");
        assert!(
            r.message.contains("2 allocation(s) in 1 block(s)"),
            "{}",
            r.message
        );

        let a = |p: Option<&Problem>, deleting, disabled| {
            let c = allocatable_condition(p, deleting, disabled);
            (c.status, c.reason)
        };
        assert_eq!(a(None, false, false), (true, "OK".into()));
        assert_eq!(a(None, false, true), (false, "PoolDisabled".into()));
        assert_eq!(a(Some(&refused()), false, true), (false, "CIDROverlap".into()));
        assert_eq!(a(Some(&refused()), true, false), (false, "Terminating".into()));
    }

    #[test]
    fn an_event_only_when_the_ready_verdict_changes() {
        let valid = ready_condition("p", None, false, &PoolUsage::default());
        let bad = ready_condition("p", Some(&refused()), false, &PoolUsage::default());
        let was = |c: &Cond| {
            (
                if c.status { "True" } else { "False" }.to_string(),
                c.reason.clone(),
            )
        };
        // First verdict: valid is no news, a problem is a warning.
        assert_eq!(ready_event("p", None, &valid, None, false), None);
        let ev = ready_event("p", None, &bad, Some(&refused()), false).unwrap();
        assert!(ev.warning && ev.reason == "CIDROverlap" && ev.note == "spec.cidr: overlaps pool a");
        // Same verdict again: nothing.
        assert_eq!(
            ready_event("p", Some(&was(&bad)), &bad, Some(&refused()), false),
            None
        );
        // Fixed: "valid again", but not while the pool is being deleted.
        let ev = ready_event("p", Some(&was(&bad)), &valid, None, false).unwrap();
        assert!(!ev.warning && ev.note == "IPPool p is valid again");
        let gone = ready_condition("p", None, true, &PoolUsage::default());
        assert_eq!(ready_event("p", Some(&was(&valid)), &gone, None, true), None);
    }

    #[test]
    fn the_status_is_written_only_when_it_changes() {
        let p = pool("a", "10.48.0.0/24", "2026-01-01T00:00:00Z");
        let owned = ipam_usage::PoolUsage {
            allocations: 3,
            blocks: 1,
        };
        let conds = conditions::merge(
            &[],
            &[ready_condition("a", None, false, &PoolUsage::default())],
            None,
            t0(),
        );
        let s = status_patch(&p, conds.clone(), &owned, Some(256)).expect("a first status");
        assert_eq!(
            (s["allocations"].as_u64(), s["capacity"].as_u64()),
            (Some(3), Some(256))
        );
        let p = written(p, &s);
        assert_eq!(status_patch(&p, conds.clone(), &owned, Some(256)), None);
        let more = ipam_usage::PoolUsage {
            allocations: 4,
            blocks: 1,
        };
        assert!(status_patch(&p, conds, &more, Some(256)).is_some());
    }
}
