//! Installation controller: turns `operator.tigera.io/v1` Installation `default` into IPPools
//! (decided by [`super::pools::plan`]) and reports Ready/Progressing/Degraded.
//!
//! Pools are applied server-side under the field manager `tortie-installation` in the cluster's
//! CRD mode, labelled `app.kubernetes.io/managed-by: tortie`; an existing pool with the same name
//! and CIDR is adopted. Pools are never deleted when the Installation is (Calico does the same),
//! only when a managed pool leaves the Installation's list; the IPPool finalizer then drains it.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as CtlConfig, Controller};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{self, Cond};
use super::podcidr::PodCidrs;
use super::pools::{self, ALLOW_OUTSIDE_POD_CIDR, Existing, MANAGED_BY, MANAGER};
use super::{Ctx, Error, tick};
use crate::api::{CalicoKind, IPPoolSpec, Installation, Pool};
use tokio_util::sync::CancellationToken;

const NAME: &str = "installation";
const MANAGER_FIELD: &str = "tortie-installation";

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let st = &ctx.stores;
    let trigger = st.installations.changes().map(|o| Ok((*o).clone()));
    let resync = stream::select_all([
        stream::once(async {}).boxed(),
        st.pools.changes().map(|_| ()).boxed(),
        st.kubeadm.changes().map(|_| ()).boxed(),
        tick(Duration::from_secs(30)).boxed(),
    ]);
    Controller::for_stream(trigger, st.installations.store.clone())
        .reconcile_all_on(resync)
        .with_config(CtlConfig::default().debounce(Duration::from_millis(300)))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {})
        .await;
}

fn error_policy(_: Arc<Installation>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error(NAME, err.metric_label());
    warn!(error = %err, "Installation reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(inst: Arc<Installation>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = inst.name_any();
    let span = info_span!("reconcile", installation = %name);
    async move {
        let _t = ctx.metrics.reconcile(NAME);
        // Only `default` is read (CEL refuses other names; an old object may still exist).
        if name != "default" || inst.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        apply(&inst, &ctx).await
    }
    .instrument(span)
    .await
}

async fn apply(inst: &Installation, ctx: &Ctx) -> Result<Action, Error> {
    let pools = ctx.stores.pools.all();
    let pools: Vec<&Pool> = pools.iter().map(|p| &**p).collect();
    let pod = ctx.stores.pod_cidrs().map_err(|e| e.to_string());
    let d = decide(inst, &pools, pod);
    let rejected = apply_pools(inst, ctx, &d.apply).await?;
    delete_pools(inst, ctx, &d.delete).await?;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let st = decide_status(inst, &d, rejected, now);
    for (reason, msg) in &st.events {
        warn!(reason = %reason, "{msg}");
        ctx.event(inst, &(), true, reason, "Validate", msg.clone()).await;
    }
    if let Some(status) = st.patch {
        let api: Api<Installation> = Api::all(ctx.client.clone());
        let patch = json!({
            "apiVersion": "operator.tigera.io/v1",
            "kind": "Installation",
            "status": status,
        });
        api.patch_status(
            "default",
            &PatchParams::apply(MANAGER_FIELD).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Applies the pools server-side; those the API server refuses (CEL) are returned as
/// `(reason, message)` while the others are still written.
async fn apply_pools(
    inst: &Installation,
    ctx: &Ctx,
    apply: &[PoolApply],
) -> Result<Vec<(String, String)>, Error> {
    let ar = ctx.resource(CalicoKind::IPPool);
    let pool_api: Api<Pool> = Api::all_with(ctx.client.clone(), &ar);
    let mut rejected: Vec<(String, String)> = Vec::new();
    for pa in apply {
        let obj = json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "metadata": {"name": pa.name, "labels": {MANAGED_BY: MANAGER}},
            "spec": pa.spec,
        });
        match pool_api
            .patch(
                &pa.name,
                &PatchParams::apply(MANAGER_FIELD).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => {
                let verb = if pa.created { "created" } else { "updated" };
                info!(pool = %pa.name, cidr = %pa.spec.cidr, verb, "IPPool applied");
                ctx.event(
                    inst,
                    &(),
                    false,
                    "PoolApplied",
                    "Apply",
                    format!("IPPool {} ({}) {verb}", pa.name, pa.spec.cidr),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                rejected.push((
                    "PoolRejected".into(),
                    format!(
                        "IPPool {} ({}) was refused by the API server: {}",
                        pa.name, pa.spec.cidr, s.message
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rejected)
}

/// Deletes the pools no longer listed, `(name, cidr)`; the IPPool finalizer drains each before
/// it goes.
async fn delete_pools(inst: &Installation, ctx: &Ctx, delete: &[(String, String)]) -> Result<(), Error> {
    let pool_api: Api<Pool> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::IPPool));
    for (pname, cidr) in delete {
        match pool_api.delete(pname, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.event(inst, &(), false, "PoolDeleted", "Delete", format!("IPPool {pname} ({cidr}) is no longer listed; deleting it once its addresses are released")).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// An IPPool to apply server-side.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolApply {
    pub name: String,
    pub spec: IPPoolSpec,
    /// No live pool of that name existed (for the Event's verb).
    pub created: bool,
}

/// What the Installation wants done to the cluster's IPPools, and what it found wrong.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub apply: Vec<PoolApply>,
    /// Managed pools no longer listed, `(name, cidr)`, not yet being deleted.
    pub delete: Vec<(String, String)>,
    /// Progressing messages (managed pools draining before deletion).
    progressing: Vec<String>,
    /// Problems found before any write (the kubeadm config), then those found after the
    /// writes' own rejections: `(reason, message)` in the order they are reported.
    degraded_before: Vec<(String, String)>,
    degraded_after: Vec<(String, String)>,
    /// `name (cidr)` of each pool the Installation wants.
    summary: Vec<String>,
    pod_cidrs: Option<Vec<String>>,
}

/// The Installation's status after the writes, and the Warning Events to emit.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusPlan {
    /// `(reason, message)` of each Warning Event.
    pub events: Vec<(String, String)>,
    /// The status to apply; `None` when the live one already says the same.
    pub patch: Option<serde_json::Value>,
    pub conditions: Vec<Condition>,
}

/// Pure: the pools to apply/delete for `inst`, given the live pools and the pod CIDRs (or why
/// they could not be read).
pub fn decide(inst: &Installation, pools: &[&Pool], pod: Result<Option<PodCidrs>, String>) -> Decision {
    let existing: Vec<Existing<'_>> = pools
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .map(|p| Existing {
            name: p.metadata.name.as_deref().unwrap_or(""),
            spec: &p.spec,
        })
        .collect();
    let mut d = Decision::default();
    let pod = match pod {
        Ok(p) => p,
        Err(e) => {
            d.degraded_before.push(("InvalidKubeadmConfig".into(), e));
            None
        }
    };
    let allow_outside = inst
        .annotations()
        .get(ALLOW_OUTSIDE_POD_CIDR)
        .is_some_and(|v| v == "true");
    let plan = if d.degraded_before.is_empty() {
        pools::plan(
            &inst.spec,
            pod.as_ref(),
            allow_outside,
            &existing,
            &pools::selector_ok,
        )
    } else {
        pools::Plan::default()
    };

    d.apply = pools_to_apply(&plan, &existing, pools);
    if plan.managed {
        (d.delete, d.progressing) = unlisted_pools(&plan, pools);
    }
    d.degraded_after = plan
        .problems
        .iter()
        .map(|pr| (pr.reason.to_string(), pr.message.clone()))
        .chain(pool_verdicts(&plan, pools))
        .collect();
    d.summary = plan
        .pools
        .iter()
        .map(|(n, s)| format!("{n} ({})", s.cidr))
        .collect();
    d.pod_cidrs = pod
        .as_ref()
        .map(|p| p.cidrs.iter().map(|c| c.to_string()).collect());
    d
}

fn ours(p: &Pool) -> bool {
    p.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER)
}

fn by_name<'p>(pools: &[&'p Pool], name: &str) -> Option<&'p Pool> {
    pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .copied()
}

/// The planned pools that are new, differ from the live spec, or are not labelled as ours yet.
fn pools_to_apply(plan: &pools::Plan, existing: &[Existing<'_>], pools: &[&Pool]) -> Vec<PoolApply> {
    plan.pools
        .iter()
        .filter_map(|(pname, spec)| {
            let was = existing.iter().find(|e| e.name == pname);
            let current = was.is_some_and(|e| e.spec == spec) && by_name(pools, pname).is_some_and(ours);
            (!current).then(|| PoolApply {
                name: pname.clone(),
                spec: spec.clone(),
                created: was.is_none(),
            })
        })
        .collect()
}

/// Managed pools the Installation no longer lists: `(name, cidr)` of those to delete, and a
/// Progressing message for each one draining. Pools named in a problem are left alone.
fn unlisted_pools(plan: &pools::Plan, pools: &[&Pool]) -> (Vec<(String, String)>, Vec<String>) {
    let (mut delete, mut progressing) = (Vec::new(), Vec::new());
    for p in pools {
        let pname = p.name_any();
        let wanted =
            plan.pools.iter().any(|(n, _)| *n == pname) || plan.problems.iter().any(|pr| pr.pool == pname);
        if !ours(p) || wanted {
            continue;
        }
        if p.meta().deletion_timestamp.is_none() {
            delete.push((pname.clone(), p.spec.cidr.clone()));
        }
        progressing.push(format!("IPPool {pname} is draining before deletion"));
    }
    (delete, progressing)
}

/// The IPPool controller's refusal of a pool this Installation wants, `(reason, message)`.
fn pool_verdicts(plan: &pools::Plan, pools: &[&Pool]) -> Vec<(String, String)> {
    plan.pools
        .iter()
        .filter_map(|(pname, _)| {
            let c = by_name(pools, pname)?
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")?;
            (c.reason != "Terminating").then(|| (c.reason.clone(), c.message.clone()))
        })
        .collect()
}

/// Ready, Progressing and Degraded for the decision `d` and every problem found, in order.
fn desired_conditions(d: &Decision, degraded: &[(String, String)]) -> Vec<Cond> {
    let ready = match degraded.first() {
        None if d.summary.is_empty() => Cond::new(
            "Ready",
            true,
            "PoolsReady",
            "no IPPools are managed (ipPools: [])",
        ),
        None => Cond::new(
            "Ready",
            true,
            "PoolsReady",
            format!("IPPools in place: {}", d.summary.join(", ")),
        ),
        Some((reason, _)) => Cond::new(
            "Ready",
            false,
            reason.clone(),
            "the Installation is degraded; see the Degraded condition",
        ),
    };
    let progressing = if d.progressing.is_empty() {
        Cond::new("Progressing", false, "Reconciled", "nothing in progress")
    } else {
        Cond::new("Progressing", true, "PoolsDraining", d.progressing.join("; "))
    };
    let degraded_cond = match degraded.first() {
        None => Cond::new("Degraded", false, "Reconciled", "no problems"),
        Some((reason, _)) => Cond::new(
            "Degraded",
            true,
            reason.clone(),
            degraded
                .iter()
                .map(|d| d.1.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    vec![ready, progressing, degraded_cond]
}

/// Pure: the Installation's conditions once the writes of `d` are done, `rejected` being the
/// `(reason, message)` of each pool the API server refused.
pub fn decide_status(
    inst: &Installation,
    d: &Decision,
    rejected: Vec<(String, String)>,
    now: Time,
) -> StatusPlan {
    let mut degraded = d.degraded_before.clone();
    degraded.extend(rejected);
    degraded.extend(d.degraded_after.iter().cloned());
    let gen_ = inst.metadata.generation;
    let old = inst
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let desired = desired_conditions(d, &degraded);
    // An Event for each rejected input, once per change of the Degraded message.
    let old_msg = old
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| c.message.clone());
    let new_msg = desired[2].status.then(|| desired[2].message.clone());
    let events = if new_msg.is_some() && new_msg != old_msg {
        degraded.clone()
    } else {
        Vec::new()
    };
    let conds = conditions::merge(&old, &desired, gen_, now);
    let unchanged = inst.status.as_ref().is_some_and(|s| {
        // Conditions of other controllers (the BGP controller's) are theirs to keep.
        let mine: Vec<_> = s
            .conditions
            .iter()
            .filter(|c| conds.iter().any(|d| d.type_ == c.type_))
            .cloned()
            .collect();
        mine == conds && s.observed_generation == gen_ && s.pod_cidrs == d.pod_cidrs
    });
    let patch = (!unchanged)
        .then(|| json!({"conditions": conds, "observedGeneration": gen_, "podCidrs": d.pod_cidrs}));
    StatusPlan {
        events,
        patch,
        conditions: conds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CrdMode;
    use crate::api::installation::{CalicoNetworkSpec, CniSpec, InstallationIPPool, InstallationSpec};
    use crate::controllers::podcidr::Source;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn t0() -> Time {
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    }

    fn pod(c: &[&str]) -> Result<Option<PodCidrs>, String> {
        Ok(Some(PodCidrs {
            cidrs: c.iter().map(|s| s.parse().unwrap()).collect(),
            source: Source::Kubeadm,
        }))
    }

    fn item(cidr: &str) -> InstallationIPPool {
        InstallationIPPool {
            cidr: cidr.into(),
            ..Default::default()
        }
    }

    fn inst(pools: Option<Vec<InstallationIPPool>>) -> Installation {
        let mut i = Installation::new(
            "default",
            InstallationSpec {
                cni: Some(CniSpec {
                    type_: "Calico".into(),
                    ..Default::default()
                }),
                calico_network: Some(CalicoNetworkSpec {
                    ip_pools: pools,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        i.metadata.generation = Some(3);
        i
    }

    fn pool(name: &str, spec: IPPoolSpec, managed: bool) -> Pool {
        let mut p = Pool::new(name, &CrdMode::V1.resource(CalicoKind::IPPool), spec);
        if managed {
            p.metadata.labels = Some([(MANAGED_BY.to_string(), MANAGER.to_string())].into());
        }
        p
    }

    fn cond<'a>(c: &'a [Condition], t: &str) -> (&'a str, &'a str, &'a str) {
        let c = c.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    /// Feeds the status a plan would write back into the Installation, as the next observe sees it.
    fn written(mut i: Installation, st: &StatusPlan) -> Installation {
        i.status = Some(serde_json::from_value(st.patch.clone().unwrap()).unwrap());
        i
    }

    #[test]
    fn default_pool_from_kubeadm_pod_subnet_then_nothing_to_do() {
        let i = inst(None);
        let d = decide(&i, &[], pod(&["10.48.0.0/16"]));
        assert_eq!(d.apply.len(), 1, "{d:?}");
        let a = &d.apply[0];
        assert_eq!((a.name.as_str(), a.created), ("default-ipv4-ippool", true));
        assert_eq!(a.spec.cidr, "10.48.0.0/16");
        assert_eq!(a.spec.block_size, Some(26));
        assert!(d.delete.is_empty());
        let st = decide_status(&i, &d, vec![], t0());
        assert!(st.events.is_empty(), "{:?}", st.events);
        assert_eq!(
            cond(&st.conditions, "Ready"),
            (
                "True",
                "PoolsReady",
                "IPPools in place: default-ipv4-ippool (10.48.0.0/16)"
            )
        );
        assert_eq!(cond(&st.conditions, "Degraded").0, "False");
        assert_eq!(cond(&st.conditions, "Progressing").0, "False");
        let patch = st.patch.as_ref().unwrap();
        assert_eq!(patch["podCidrs"], serde_json::json!(["10.48.0.0/16"]));
        assert_eq!(patch["observedGeneration"], 3);

        // Next round: the pool exists as written and the status says it all.
        let i = written(i, &st);
        let p = pool("default-ipv4-ippool", a.spec.clone(), true);
        let d = decide(&i, &[&p], pod(&["10.48.0.0/16"]));
        assert!(d.apply.is_empty() && d.delete.is_empty(), "{d:?}");
        let later = Time("2026-01-02T00:00:00Z".parse().unwrap());
        let st = decide_status(&i, &d, vec![], later);
        assert_eq!(st.patch, None, "an unchanged status is not rewritten");
        assert_eq!(st.conditions[0].last_transition_time, t0());
    }

    #[test]
    fn an_unlabelled_pool_of_the_same_name_is_adopted() {
        let i = inst(None);
        let want = decide(&i, &[], pod(&["10.48.0.0/16"])).apply[0].spec.clone();
        let p = pool("default-ipv4-ippool", want, false);
        let d = decide(&i, &[&p], pod(&["10.48.0.0/16"]));
        assert_eq!(d.apply.len(), 1);
        assert!(!d.apply[0].created, "an existing pool is updated, not created");
    }

    #[test]
    fn bad_kubeadm_config_degrades_and_writes_nothing() {
        let i = inst(None);
        let msg = "kube-system/kubeadm-config networking.podSubnet entry \"x\" is not a CIDR: bad";
        let d = decide(&i, &[], Err(msg.into()));
        assert!(d.apply.is_empty() && d.delete.is_empty());
        let st = decide_status(&i, &d, vec![], t0());
        assert_eq!(
            cond(&st.conditions, "Degraded"),
            ("True", "InvalidKubeadmConfig", msg)
        );
        assert_eq!(cond(&st.conditions, "Ready").1, "InvalidKubeadmConfig");
        assert_eq!(
            st.events,
            vec![("InvalidKubeadmConfig".to_string(), msg.to_string())]
        );
        assert_eq!(st.patch.as_ref().unwrap()["podCidrs"], serde_json::Value::Null);
        // The same problem again: no second round of Events.
        let i = written(i, &st);
        let st = decide_status(&i, &decide(&i, &[], Err(msg.into())), vec![], t0());
        assert!(st.events.is_empty() && st.patch.is_none(), "{st:?}");
    }

    #[test]
    fn listed_pool_outside_the_pod_subnet_is_refused_not_applied() {
        let i = inst(Some(vec![item("10.48.0.0/24"), item("192.168.0.0/24")]));
        let d = decide(&i, &[], pod(&["10.48.0.0/16"]));
        let names: Vec<&str> = d.apply.iter().map(|a| a.spec.cidr.as_str()).collect();
        assert_eq!(names, ["10.48.0.0/24"]);
        let st = decide_status(&i, &d, vec![], t0());
        let (s, reason, msg) = cond(&st.conditions, "Degraded");
        assert_eq!((s, reason), ("True", "PodCIDRMismatch"));
        assert!(
            msg.contains("spec.calicoNetwork.ipPools[1]") && msg.contains("192.168.0.0/24"),
            "{msg}"
        );
        assert_eq!(
            cond(&st.conditions, "Ready"),
            (
                "False",
                "PodCIDRMismatch",
                "the Installation is degraded; see the Degraded condition"
            )
        );
        assert_eq!(st.events.len(), 1);
    }

    #[test]
    fn allow_outside_annotation_lets_a_listed_pool_leave_the_pod_subnet() {
        let mut i = inst(Some(vec![item("192.168.0.0/24")]));
        i.metadata.annotations = Some([(ALLOW_OUTSIDE_POD_CIDR.to_string(), "true".to_string())].into());
        let d = decide(&i, &[], pod(&["10.48.0.0/16"]));
        assert_eq!(d.apply.len(), 1);
        assert_eq!(
            cond(&decide_status(&i, &d, vec![], t0()).conditions, "Degraded").0,
            "False"
        );
    }

    #[test]
    fn rejected_writes_come_after_kubeadm_and_before_plan_problems() {
        let i = inst(Some(vec![item("10.48.0.0/24"), item("192.168.0.0/24")]));
        let d = decide(&i, &[], pod(&["10.48.0.0/16"]));
        let rej = vec![(
            "PoolRejected".to_string(),
            "IPPool x (10.48.0.0/24) was refused".to_string(),
        )];
        let st = decide_status(&i, &d, rej, t0());
        let (_, reason, msg) = cond(&st.conditions, "Degraded");
        assert_eq!(reason, "PoolRejected");
        assert!(msg.starts_with("IPPool x (10.48.0.0/24) was refused; "), "{msg}");
        assert_eq!(st.events.len(), 2);
        assert_eq!(st.events[1].0, "PodCIDRMismatch");
    }

    #[test]
    fn managed_pool_dropped_from_the_list_is_deleted_and_drains() {
        let i = inst(Some(vec![item("10.48.0.0/24")]));
        let listed = decide(&i, &[], pod(&["10.48.0.0/16"])).apply[0].clone();
        let kept = pool(&listed.name, listed.spec.clone(), true);
        let old_spec = IPPoolSpec {
            cidr: "10.48.1.0/24".into(),
            ..Default::default()
        };
        let gone = pool("old", old_spec.clone(), true);
        let users = pool(
            "users",
            IPPoolSpec {
                cidr: "10.48.2.0/24".into(),
                ..Default::default()
            },
            false,
        );
        let d = decide(&i, &[&kept, &gone, &users], pod(&["10.48.0.0/16"]));
        assert!(d.apply.is_empty(), "{d:?}");
        assert_eq!(d.delete, vec![("old".to_string(), "10.48.1.0/24".to_string())]);
        let st = decide_status(&i, &d, vec![], t0());
        assert_eq!(
            cond(&st.conditions, "Progressing"),
            ("True", "PoolsDraining", "IPPool old is draining before deletion")
        );
        assert_eq!(cond(&st.conditions, "Ready").0, "True");

        // Already being deleted: no second delete, still draining.
        let mut going = pool("old", old_spec, true);
        going.metadata.deletion_timestamp = Some(t0());
        let d = decide(&i, &[&kept, &going], pod(&["10.48.0.0/16"]));
        assert!(d.delete.is_empty());
        assert_eq!(
            cond(&decide_status(&i, &d, vec![], t0()).conditions, "Progressing").0,
            "True"
        );
    }

    #[test]
    fn ippool_verdict_on_a_wanted_pool_degrades_the_installation() {
        let i = inst(None);
        let want = decide(&i, &[], pod(&["10.48.0.0/16"])).apply[0].clone();
        let mut p = pool(&want.name, want.spec.clone(), true);
        let verdict = |reason: &str| crate::api::IPPoolStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: reason.into(),
                message: "spec.cidr: overlaps".into(),
                observed_generation: None,
                last_transition_time: t0(),
            }],
            ..Default::default()
        };
        p.status = Some(verdict("CIDROverlap"));
        let d = decide(&i, &[&p], pod(&["10.48.0.0/16"]));
        let st = decide_status(&i, &d, vec![], t0());
        assert_eq!(
            cond(&st.conditions, "Degraded"),
            ("True", "CIDROverlap", "spec.cidr: overlaps")
        );
        // A draining pool is not a problem of the Installation.
        p.status = Some(verdict("Terminating"));
        let d = decide(&i, &[&p], pod(&["10.48.0.0/16"]));
        assert_eq!(
            cond(&decide_status(&i, &d, vec![], t0()).conditions, "Degraded").0,
            "False"
        );
    }

    #[test]
    fn other_controllers_conditions_do_not_force_a_rewrite() {
        let i = inst(None);
        let d = decide(&i, &[], pod(&["10.48.0.0/16"]));
        let st = decide_status(&i, &d, vec![], t0());
        let mut i = written(i, &st);
        i.status.as_mut().unwrap().conditions.push(Condition {
            type_: "BGPReady".into(),
            status: "True".into(),
            reason: "x".into(),
            message: "y".into(),
            observed_generation: None,
            last_transition_time: t0(),
        });
        assert_eq!(decide_status(&i, &d, vec![], t0()).patch, None);
        // A new generation is recorded.
        i.metadata.generation = Some(4);
        assert!(decide_status(&i, &d, vec![], t0()).patch.is_some());
    }

    #[test]
    fn empty_pool_list_manages_nothing() {
        let i = inst(Some(vec![]));
        let d = decide(&i, &[], pod(&["10.48.0.0/16"]));
        assert!(d.apply.is_empty());
        let st = decide_status(&i, &d, vec![], t0());
        assert_eq!(
            cond(&st.conditions, "Ready").2,
            "no IPPools are managed (ipPools: [])"
        );
    }

    fn spec(cidr: &str) -> IPPoolSpec {
        IPPoolSpec {
            cidr: cidr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_new_changed_or_unlabelled_pools_are_applied() {
        let plan = pools::Plan {
            managed: true,
            pools: vec![
                ("same".into(), spec("10.1.0.0/16")),
                ("changed".into(), spec("10.2.0.0/16")),
                ("adopted".into(), spec("10.3.0.0/16")),
                ("new".into(), spec("10.4.0.0/16")),
            ],
            problems: vec![],
        };
        let live = [
            pool("same", spec("10.1.0.0/16"), true),
            pool(
                "changed",
                IPPoolSpec {
                    block_size: Some(28),
                    ..spec("10.2.0.0/16")
                },
                true,
            ),
            pool("adopted", spec("10.3.0.0/16"), false),
        ];
        let refs: Vec<&Pool> = live.iter().collect();
        let existing: Vec<Existing<'_>> = live
            .iter()
            .map(|p| Existing {
                name: p.metadata.name.as_deref().unwrap(),
                spec: &p.spec,
            })
            .collect();
        let got: Vec<(String, bool)> = pools_to_apply(&plan, &existing, &refs)
            .into_iter()
            .map(|a| (a.name, a.created))
            .collect();
        assert_eq!(
            got,
            vec![
                ("changed".into(), false),
                ("adopted".into(), false),
                ("new".into(), true)
            ]
        );
    }

    #[test]
    fn unlisted_managed_pools_drain_unless_a_problem_names_them() {
        let plan = pools::Plan {
            managed: true,
            pools: vec![("kept".into(), spec("10.1.0.0/16"))],
            problems: vec![pools::Problem {
                pool: "broken".into(),
                field: "cidr",
                reason: "InvalidCIDR",
                message: "bad".into(),
            }],
        };
        let mut draining = pool("draining", spec("10.5.0.0/16"), true);
        draining.metadata.deletion_timestamp = Some(t0());
        let live = [
            pool("kept", spec("10.1.0.0/16"), true),
            pool("broken", spec("10.2.0.0/16"), true),
            pool("mine-unlisted", spec("10.3.0.0/16"), true),
            pool("by-hand", spec("10.4.0.0/16"), false),
            draining,
        ];
        let refs: Vec<&Pool> = live.iter().collect();
        let (delete, progressing) = unlisted_pools(&plan, &refs);
        assert_eq!(
            delete,
            vec![("mine-unlisted".to_string(), "10.3.0.0/16".to_string())]
        );
        assert_eq!(
            progressing,
            vec![
                "IPPool mine-unlisted is draining before deletion",
                "IPPool draining is draining before deletion"
            ]
        );
    }

    #[test]
    fn degraded_names_the_first_problem_and_lists_them_all() {
        let d = Decision {
            summary: vec!["p (10.0.0.0/16)".into()],
            ..Default::default()
        };
        let ok = desired_conditions(&d, &[]);
        assert_eq!(
            ok.iter().map(|c| (c.type_, c.status)).collect::<Vec<_>>(),
            vec![("Ready", true), ("Progressing", false), ("Degraded", false)]
        );
        assert_eq!(ok[0].message, "IPPools in place: p (10.0.0.0/16)");
        let problems = [
            ("A".to_string(), "first".to_string()),
            ("B".to_string(), "second".to_string()),
        ];
        let bad = desired_conditions(&d, &problems);
        assert_eq!((bad[0].status, bad[0].reason.as_str()), (false, "A"));
        assert_eq!(
            (bad[2].reason.as_str(), bad[2].message.as_str()),
            ("A", "first; second")
        );
        let none = desired_conditions(&Decision::default(), &[]);
        assert_eq!(none[0].message, "no IPPools are managed (ipPools: [])");
    }
}
