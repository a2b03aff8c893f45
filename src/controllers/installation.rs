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

use super::conditions::{self, Cond};
use super::pools::{self, ALLOW_OUTSIDE_POD_CIDR, Existing, MANAGED_BY, MANAGER};
use super::tokio_util_shim::CancellationToken;
use super::{Ctx, Error};
use crate::api::{CalicoKind, Installation, Pool};

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

pub(crate) fn tick(every: Duration) -> impl futures::Stream<Item = ()> + Send {
    stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        |mut i| async move {
            i.tick().await;
            Some(((), i))
        },
    )
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
    let ar = ctx.resource(CalicoKind::IPPool);
    let pool_api: Api<Pool> = Api::all_with(ctx.client.clone(), &ar);
    let existing_pools = ctx.stores.pools.all();
    let existing: Vec<Existing<'_>> = existing_pools
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .map(|p| Existing {
            name: p.metadata.name.as_deref().unwrap_or(""),
            spec: &p.spec,
        })
        .collect();
    let mut degraded: Vec<(String, String)> = Vec::new();
    let pod = match ctx.stores.pod_cidrs() {
        Ok(p) => p,
        Err(e) => {
            degraded.push(("InvalidKubeadmConfig".into(), e.to_string()));
            None
        }
    };
    let allow_outside = inst
        .annotations()
        .get(ALLOW_OUTSIDE_POD_CIDR)
        .is_some_and(|v| v == "true");
    let plan = if degraded.is_empty() {
        pools::plan(
            &inst.spec,
            pod.as_ref(),
            allow_outside,
            &existing,
            &super::ippool::selector_ok,
        )
    } else {
        pools::Plan::default()
    };
    let mut progressing = Vec::new();

    for (pname, spec) in &plan.pools {
        let was = existing.iter().find(|e| e.name == pname);
        if was.is_some_and(|e| e.spec == spec)
            && existing_pools
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(pname))
                .is_some_and(|p| p.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER))
        {
            continue;
        }
        let obj = json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "metadata": {"name": pname, "labels": {MANAGED_BY: MANAGER}},
            "spec": spec,
        });
        match pool_api
            .patch(
                pname,
                &PatchParams::apply(MANAGER_FIELD).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => {
                let verb = if was.is_some() { "updated" } else { "created" };
                info!(pool = %pname, cidr = %spec.cidr, verb, "IPPool applied");
                ctx.event(
                    inst,
                    &(),
                    false,
                    "PoolApplied",
                    "Apply",
                    format!("IPPool {pname} ({}) {verb}", spec.cidr),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                // The CRD's CEL rules refused it: report, keep going with the other pools.
                degraded.push((
                    "PoolRejected".into(),
                    format!(
                        "IPPool {pname} ({}) was refused by the API server: {}",
                        spec.cidr, s.message
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Managed pools the Installation no longer lists are deleted (the IPPool finalizer drains
    // them first). Pools named in a problem are left alone.
    if plan.managed {
        for p in existing_pools.iter() {
            let pname = p.name_any();
            let ours = p.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER);
            let wanted = plan.pools.iter().any(|(n, _)| *n == pname)
                || plan.problems.iter().any(|pr| pr.pool == pname);
            if !ours || wanted {
                continue;
            }
            if p.meta().deletion_timestamp.is_none() {
                match pool_api.delete(&pname, &DeleteParams::default()).await {
                    Ok(_) => {
                        ctx.event(inst, &(), false, "PoolDeleted", "Delete", format!("IPPool {pname} ({}) is no longer listed; deleting it once its addresses are released", p.spec.cidr)).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            progressing.push(format!("IPPool {pname} is draining before deletion"));
        }
    }

    for pr in &plan.problems {
        degraded.push((pr.reason.to_string(), pr.message.clone()));
    }
    // Surface the IPPool controller's verdict on the pools this Installation wants.
    for (pname, _) in &plan.pools {
        if let Some(p) = existing_pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pname))
            && let Some(c) = p.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == "False")
            })
            && c.reason != "Terminating"
        {
            degraded.push((c.reason.clone(), c.message.clone()));
        }
    }

    let gen_ = inst.metadata.generation;
    let old = inst
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let summary: Vec<String> = plan
        .pools
        .iter()
        .map(|(n, s)| format!("{n} ({})", s.cidr))
        .collect();
    let desired = vec![
        if degraded.is_empty() {
            Cond::new(
                "Ready",
                true,
                "PoolsReady",
                if summary.is_empty() {
                    "no IPPools are managed (ipPools: [])".to_string()
                } else {
                    format!("IPPools in place: {}", summary.join(", "))
                },
            )
        } else {
            Cond::new(
                "Ready",
                false,
                degraded[0].0.clone(),
                "the Installation is degraded; see the Degraded condition",
            )
        },
        if progressing.is_empty() {
            Cond::new("Progressing", false, "Reconciled", "nothing in progress")
        } else {
            Cond::new("Progressing", true, "PoolsDraining", progressing.join("; "))
        },
        if degraded.is_empty() {
            Cond::new("Degraded", false, "Reconciled", "no problems")
        } else {
            Cond::new(
                "Degraded",
                true,
                degraded[0].0.clone(),
                degraded
                    .iter()
                    .map(|d| d.1.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        },
    ];
    // An Event for each rejected input, once per change of the Degraded message.
    let old_msg = old
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| c.message.clone());
    let new_msg = desired[2].status.then(|| desired[2].message.clone());
    if new_msg.is_some() && new_msg != old_msg {
        for (reason, msg) in &degraded {
            warn!(reason = %reason, "{msg}");
            ctx.event(inst, &(), true, reason, "Validate", msg.clone()).await;
        }
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let conds = conditions::merge(&old, &desired, gen_, now);
    let pod_cidrs: Option<Vec<String>> = pod
        .as_ref()
        .map(|p| p.cidrs.iter().map(|c| c.to_string()).collect());
    let unchanged = inst.status.as_ref().is_some_and(|s| {
        // Conditions of other controllers (the BGP controller's) are theirs to keep.
        let mine: Vec<_> = s
            .conditions
            .iter()
            .filter(|c| conds.iter().any(|d| d.type_ == c.type_))
            .cloned()
            .collect();
        mine == conds && s.observed_generation == gen_ && s.pod_cidrs == pod_cidrs
    });
    if !unchanged {
        let api: Api<Installation> = Api::all(ctx.client.clone());
        let patch = json!({
            "apiVersion": "operator.tigera.io/v1",
            "kind": "Installation",
            "status": {"conditions": conds, "observedGeneration": gen_, "podCidrs": pod_cidrs},
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
