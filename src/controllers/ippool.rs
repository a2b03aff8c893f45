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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as CtlConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::conditions::{self, Cond};
use super::pools::{self, ALLOW_OUTSIDE_POD_CIDR, PoolView};
use super::tokio_util_shim::CancellationToken;
use super::{Ctx, Error, gc};
use crate::api::{CalicoKind, Pool};
use crate::ipam::usage::{self as ipam_usage, PoolRef};

const NAME: &str = "ippool";
const MANAGER_FIELD: &str = "tortie-ippool";
/// Holds a deleted pool until its addresses are released.
pub const FINALIZER: &str = "tortie.io/ippool-drain";

/// Selector syntax check with the IPAM engine's parser (Calico's language).
pub fn selector_ok(s: &str) -> Result<(), String> {
    crate::ipam::selector::Selector::parse(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let st = &ctx.stores;
    let ar = ctx.resource(CalicoKind::IPPool);
    let trigger = st.pools.changes().map(|o| Ok((*o).clone()));
    // Any pool change can change another pool's overlap verdict: re-check all (pools are few).
    let resync = stream::select_all([
        stream::once(async {}).boxed(),
        st.pools.changes().map(|_| ()).boxed(),
        st.kubeadm.changes().map(|_| ()).boxed(),
        super::installation::tick(Duration::from_secs(30)).boxed(),
    ]);
    // A block change refreshes the counts of the pool owning it (a wider pool draining around
    // it is re-checked by the periodic resync).
    let pools_store = st.pools.store.clone();
    let ar2 = ar.clone();
    let by_block = st.blocks.changes().filter_map(move |b| {
        let net = b.spec.cidr.parse::<ipnet::IpNet>().ok();
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
    let pod = ctx.stores.pod_cidrs().ok().flatten();
    let views: Vec<PoolView<'_>> = all
        .iter()
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
        .collect();
    let verdicts = pools::validate_pools(&views, pod.as_ref(), &selector_ok);
    let problem = views
        .iter()
        .position(|v| v.name == name)
        .and_then(|i| verdicts[i].clone());
    let net = pool.spec.net();
    let blocks = ctx.stores.blocks.all();
    // Draining looks at every block inside the CIDR (as Calico's finalizer does); the counts in
    // status are what this pool owns, attributed as in `ipam show` and the metrics.
    let usage = net
        .map(|n| pools::usage(&n, blocks.iter().map(|b| &b.spec)))
        .unwrap_or_default();
    let refs: Vec<PoolRef> = all.iter().filter_map(|p| PoolRef::from_pool(p)).collect();
    let owned = ipam_usage::by_pool(&refs, blocks.iter().map(|b| &b.spec))
        .remove(&Some(name.clone()))
        .unwrap_or_default();
    let deleting = pool.meta().deletion_timestamp.is_some();
    let has_finalizer = pool.finalizers().iter().any(|f| f == FINALIZER);

    if deleting && usage.allocations == 0 {
        if has_finalizer {
            // Empty blocks and their affinities go with the pool, so nothing dangles.
            if let Some(n) = net {
                gc::delete_empty_blocks_in(ctx, &n).await?;
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
        return Ok(Action::await_change());
    }
    if !deleting && !has_finalizer {
        set_finalizers(&api, pool, true).await?;
    }

    let ready = match (&problem, deleting) {
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
    };
    let allocatable = match (&problem, deleting, pool.spec.is_disabled()) {
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
    };
    let old = pool
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let was_ready = old
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()));
    let conds = conditions::merge(
        &old,
        &[ready.clone(), allocatable],
        pool.metadata.generation,
        Time(jiff::Timestamp::now()),
    );
    let capacity = net.map(|n| pools::capacity(&n));
    let st = pool.status.clone().unwrap_or_default();
    let unchanged = st.conditions == conds
        && st.allocations == Some(owned.allocations)
        && st.blocks == Some(owned.blocks)
        && st.capacity == capacity
        && st.observed_generation == pool.metadata.generation;
    if !unchanged {
        let patch = json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "status": {
                "conditions": conds,
                "allocations": owned.allocations,
                "blocks": owned.blocks,
                "capacity": capacity,
                "observedGeneration": pool.metadata.generation,
            },
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
    let now_flag = (
        if ready.status { "True" } else { "False" }.to_string(),
        ready.reason.clone(),
    );
    if was_ready.as_ref() != Some(&now_flag) {
        if let Some(p) = &problem {
            warn!(reason = p.reason, "{}", p.message);
            ctx.event(
                pool,
                &ar,
                true,
                p.reason,
                "Validate",
                format!("spec.{}: {}", p.field, p.message),
            )
            .await;
        } else if !deleting && was_ready.is_some() {
            ctx.event(
                pool,
                &ar,
                false,
                "Valid",
                "Validate",
                format!("IPPool {name} is valid again"),
            )
            .await;
        }
    }
    Ok(if deleting {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::requeue(Duration::from_secs(120))
    })
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
