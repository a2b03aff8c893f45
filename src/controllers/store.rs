//! Watch caches shared by every controller, the metrics endpoint and readiness.
//!
//! One reflector per kind feeds a [`Store`] and a lossy broadcast of changed objects. Controllers
//! subscribe while they run (only on the leader); a subscriber that lags just misses triggers,
//! which the periodic full reconcile covers, and the watch itself never waits for a subscriber.

use std::borrow::Cow;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeSpec, PodIP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::api::{Affinity, Block, CalicoKind, CrdMode, Handle, Installation, Pool};

/// A watched kind: its cache, its change feed and whether the first list has arrived.
pub struct Watched<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub dyntype: K::DynamicType,
    changes: broadcast::Sender<Arc<K>>,
    synced: Arc<AtomicBool>,
}

impl<K: Resource + Clone + 'static> Clone for Watched<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Watched {
            store: self.store.clone(),
            dyntype: self.dyntype.clone(),
            changes: self.changes.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<K> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    /// Starts the reflector task; it runs until the process ends. `slim` cuts each object down
    /// to what the controllers read before it is cached (managed fields are always dropped).
    fn start(
        api: Api<K>,
        cfg: watcher::Config,
        dyntype: K::DynamicType,
        name: &'static str,
        slim: fn(&mut K),
    ) -> Self {
        let writer = reflector::store::Writer::new(dyntype.clone());
        let store = writer.as_reader();
        let (changes, _) = broadcast::channel(1024);
        let synced = Arc::new(AtomicBool::new(false));
        let w = Watched {
            store,
            dyntype,
            changes: changes.clone(),
            synced: synced.clone(),
        };
        let stream = watcher::watcher(api, cfg)
            .default_backoff()
            .modify(move |o| {
                drop_managed_fields(o);
                slim(o);
            })
            .reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Apply(o)) | Ok(Event::Delete(o)) => {
                        let _ = changes.send(Arc::new(o));
                    }
                    Ok(Event::InitDone) => {
                        synced.store(true, Ordering::Release);
                        tracing::debug!(kind = name, "watch cache synced");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(kind = name, error = %e, "watch error (retrying)"),
                }
            }
        });
        w
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Changed (or deleted) objects from now on.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let rx = self.changes.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(o) => return Some((o, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Live objects in the cache.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// One cluster-scoped object of the cache by name.
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.store
            .get(&reflector::ObjectRef::new_with(name, self.dyntype.clone()))
    }
}

/// Every cache the operator reads.
#[derive(Clone)]
pub struct Stores {
    pub pools: Watched<Pool>,
    pub blocks: Watched<Block>,
    pub affinities: Watched<Affinity>,
    pub handles: Watched<Handle>,
    pub installations: Watched<Installation>,
    pub kubeadm: Watched<ConfigMap>,
    pub nodes: Watched<Node>,
    pub pods: Watched<SlimPod>,
}

fn dynamic<K>(client: &Client, ar: ApiResource, cfg: watcher::Config, name: &'static str) -> Watched<K>
where
    K: Resource<DynamicType = ApiResource> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    Watched::start(Api::all_with(client.clone(), &ar), cfg, ar, name, |_| {})
}

/// Managed fields are often the largest part of an object, and no controller reads them.
pub fn drop_managed_fields<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A Pod as the GC reads it ([`super::gc::pod_info`]): identity, node, host networking,
/// addresses and eviction, deserialized straight from the API's JSON (serde skips the rest
/// without keeping it). At 50,000 pods the full objects (spec defaults, projected token
/// volumes, managed fields) were most of the operator's memory: 1 GiB in `make bench`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SlimPod {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SlimPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SlimPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What of a [`SlimPod`]'s metadata the GC does not read: labels, owners, and every annotation
/// but the ones naming addresses.
pub fn slim_pod(p: &mut SlimPod) {
    let m = &mut p.metadata;
    m.labels = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| super::gc::POD_IP_ANNOTATIONS.contains(&k.as_str()));
    }
}

/// A Node as the GC and the pod-CIDR check read it: identity, labels, creation and deletion
/// time, `spec.podCIDR(s)`. Status (images, conditions) is large and unused here.
pub fn slim_node(n: &mut Node) {
    n.metadata.annotations = None;
    n.status = None;
    n.spec = n.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..Default::default()
    });
}

impl Stores {
    /// Starts every watch. `pool_selector` limits the IPPools watched.
    pub fn start(client: &Client, mode: CrdMode, pool_selector: Option<&str>) -> Stores {
        let mut pool_cfg = watcher::Config::default();
        if let Some(s) = pool_selector {
            pool_cfg = pool_cfg.labels(s);
        }
        let any = watcher::Config::default;
        Stores {
            pools: dynamic(client, mode.resource(CalicoKind::IPPool), pool_cfg, "IPPool"),
            blocks: dynamic(client, mode.resource(CalicoKind::IPAMBlock), any(), "IPAMBlock"),
            affinities: dynamic(
                client,
                mode.resource(CalicoKind::BlockAffinity),
                any(),
                "BlockAffinity",
            ),
            handles: dynamic(client, mode.resource(CalicoKind::IPAMHandle), any(), "IPAMHandle"),
            installations: Watched::start(Api::all(client.clone()), any(), (), "Installation", |_| {}),
            kubeadm: Watched::start(
                Api::namespaced(client.clone(), "kube-system"),
                any().fields("metadata.name=kubeadm-config"),
                (),
                "ConfigMap",
                |_| {},
            ),
            nodes: Watched::start(Api::all(client.clone()), any(), (), "Node", slim_node),
            pods: Watched::start(Api::all(client.clone()), any(), (), "Pod", slim_pod),
        }
    }

    /// True once every watch has listed its objects at least once.
    pub fn synced(&self) -> bool {
        self.pools.synced()
            && self.blocks.synced()
            && self.affinities.synced()
            && self.handles.synced()
            && self.installations.synced()
            && self.kubeadm.synced()
            && self.nodes.synced()
            && self.pods.synced()
    }

    /// The cluster's pod CIDRs: kubeadm's podSubnet, else a cover of the Nodes' podCIDRs.
    pub fn pod_cidrs(&self) -> Result<Option<super::podcidr::PodCidrs>, super::podcidr::PodCidrError> {
        let kubeadm = match self.kubeadm.all().first() {
            Some(cm) => super::podcidr::from_kubeadm(cm.data.as_ref().unwrap_or(&Default::default()))?,
            None => None,
        };
        let nodes = self.nodes.all();
        let node_cidrs: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref())
            .flat_map(|s| s.pod_cidrs.iter().flatten().chain(s.pod_cidr.iter()))
            .map(String::as_str)
            .collect();
        Ok(super::podcidr::resolve(
            kubeadm,
            super::podcidr::from_node_cidrs(node_cidrs),
        ))
    }
}
