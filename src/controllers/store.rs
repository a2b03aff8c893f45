//! Watch caches shared by every controller, the metrics endpoint and readiness.
//!
//! One reflector per kind feeds a [`Store`] and a lossy broadcast of changed objects. Controllers
//! subscribe while they run (only on the leader); a subscriber that lags just misses triggers,
//! which the periodic full reconcile covers, and the watch itself never waits for a subscriber.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ApiResource};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
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
    /// Starts the reflector task; it runs until the process ends.
    fn start(api: Api<K>, cfg: watcher::Config, dyntype: K::DynamicType, name: &'static str) -> Self {
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
        let stream = watcher::watcher(api, cfg).default_backoff().reflect(writer);
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
    pub pods: Watched<Pod>,
}

fn dynamic<K>(client: &Client, ar: ApiResource, cfg: watcher::Config, name: &'static str) -> Watched<K>
where
    K: Resource<DynamicType = ApiResource> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    Watched::start(Api::all_with(client.clone(), &ar), cfg, ar, name)
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
            installations: Watched::start(Api::all(client.clone()), any(), (), "Installation"),
            kubeadm: Watched::start(
                Api::namespaced(client.clone(), "kube-system"),
                any().fields("metadata.name=kubeadm-config"),
                (),
                "ConfigMap",
            ),
            nodes: Watched::start(Api::all(client.clone()), any(), (), "Node"),
            pods: Watched::start(Api::all(client.clone()), any(), (), "Pod"),
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
