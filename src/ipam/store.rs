//! The only I/O of `src/ipam`: reads and compare-and-swap writes of Calico's IPAM objects.
//!
//! Rules (spec §1.8): every write is a full update carrying `resourceVersion`; deletes are soft
//! first (`deleted: true`, the linearization point) and then a DELETE with a UID precondition;
//! objects marked deleted are absent to every reader, and a reader that meets one finishes its
//! deletion.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::Object;
use serde::{Serialize, de::DeserializeOwned};

use super::names;
use crate::api::{
    Affinity, Block, BlockAffinitySpec, CalicoKind, CrdMode, Handle, IPAMBlockSpec, IPAMConfigSpec,
    IPAMHandleSpec, IpamConfig, Pool,
};

/// Errors talking to the apiserver, naming the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed (or vanished) since it was read: re-read and recompute.
    #[error("{kind} {name}: update conflict (the object changed since it was read)")]
    Conflict { kind: &'static str, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name}: {detail}")]
    Invalid {
        kind: &'static str,
        name: String,
        detail: String,
    },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// False only when the apiserver certainly did not apply the write: it answered with a
    /// client error (4xx: conflict, not found, invalid, forbidden, throttled) or the request was
    /// never built. A lost connection, a timeout, a 5xx or an unreadable answer may follow a write
    /// that landed in etcd: the caller must then not undo bookkeeping that depends on it.
    pub fn may_have_applied(&self) -> bool {
        match self {
            StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } | StoreError::Invalid { .. } => {
                false
            }
            StoreError::Api { source, .. } => match source {
                kube::Error::Api(s) => !(400..500).contains(&s.code) || s.code == 408,
                kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => false,
                _ => true,
            },
        }
    }

    fn from_kube(kind: &'static str, name: &str, e: kube::Error) -> StoreError {
        let name = name.to_string();
        if let kube::Error::Api(s) = &e {
            // A 404 on update/delete means the object went away under us: same remedy as 409.
            if s.is_conflict() || object_absent(s, &name) {
                return StoreError::Conflict { kind, name };
            }
            if s.is_already_exists() {
                return StoreError::AlreadyExists { kind, name };
            }
        }
        StoreError::Api {
            kind,
            name,
            source: e,
        }
    }
}

/// Writes are attributed to tortie in managedFields (who wrote what, for operators debugging).
fn pp() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some("tortie-ipam".into()),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const BLOCK: &str = "IPAMBlock";
const HANDLE: &str = "IPAMHandle";
const AFFINITY: &str = "BlockAffinity";

/// Typed access to the IPAM objects of one CRD mode.
#[derive(Clone)]
pub struct Store {
    mode: CrdMode,
    client: kube::Client,
    blocks: Api<Block>,
    handles: Api<Handle>,
    affinities: Api<Affinity>,
}

/// Objects with a soft-delete flag.
trait SoftDelete {
    fn deleted(&self) -> bool;
    fn mark_deleted(&mut self, mode: CrdMode);
}

impl SoftDelete for Block {
    fn deleted(&self) -> bool {
        self.spec.is_deleted()
    }
    fn mark_deleted(&mut self, _: CrdMode) {
        self.spec.deleted = Some(true);
    }
}
impl SoftDelete for Handle {
    fn deleted(&self) -> bool {
        self.spec.is_deleted()
    }
    fn mark_deleted(&mut self, _: CrdMode) {
        self.spec.deleted = Some(true);
    }
}
impl SoftDelete for Affinity {
    fn deleted(&self) -> bool {
        self.spec.is_deleted()
    }
    fn mark_deleted(&mut self, _: CrdMode) {
        // The wire form it was read in (string in v1, bool in v3).
        self.spec.deleted = self.spec.deleted.with(true);
    }
}

/// A 404 that says the object does not exist. A restarting apiserver answers 404 for every custom
/// resource until its CRD handlers are ready (a bare "404 page not found", no details): taking that
/// for "absent" would make a DEL skip a handle that exists and leak its addresses.
pub fn object_absent(s: &kube::core::Status, name: &str) -> bool {
    s.is_not_found() && s.details.as_ref().is_some_and(|d| d.name == name)
}

async fn get_live<K>(api: &Api<K>, kind: &'static str, name: &str) -> Result<Option<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + SoftDelete,
{
    let obj = match api.get(name).await {
        Ok(o) => Some(o),
        Err(kube::Error::Api(s)) if object_absent(&s, name) => None,
        Err(e) => {
            return Err(StoreError::Api {
                kind,
                name: name.into(),
                source: e,
            });
        }
    };
    match obj {
        Some(o) if o.deleted() => {
            // An interrupted delete: finish it, then report absent.
            hard_delete(api, kind, &o).await?;
            Ok(None)
        }
        other => Ok(other),
    }
}

async fn hard_delete<K>(api: &Api<K>, kind: &'static str, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if object_absent(&s, &name) => Ok(()),
        // UID mismatch: a new object took the name; it is not ours to delete.
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
        Err(e) => Err(StoreError::from_kube(kind, &name, e)),
    }
}

/// Soft delete (CAS on resourceVersion), then DELETE with a UID precondition.
async fn soft_delete<K>(api: &Api<K>, kind: &'static str, mode: CrdMode, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + SoftDelete,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut marked = obj.clone();
    marked.mark_deleted(mode);
    let written = api
        .replace(&name, &pp(), &marked)
        .await
        .map_err(|e| StoreError::from_kube(kind, &name, e))?;
    hard_delete(api, kind, &written).await
}

async fn replace<K>(api: &Api<K>, kind: &'static str, obj: &K) -> Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    if obj.meta().resource_version.is_none() {
        return Err(StoreError::Invalid {
            kind,
            name,
            detail: "refusing an update without metadata.resourceVersion".into(),
        });
    }
    api.replace(&name, &pp(), obj)
        .await
        .map_err(|e| StoreError::from_kube(kind, &name, e))
}

async fn create<K>(api: &Api<K>, kind: &'static str, obj: &K) -> Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.create(&pp(), obj)
        .await
        .map_err(|e| StoreError::from_kube(kind, &name, e))
}

async fn list_live<K>(api: &Api<K>, kind: &'static str, lp: &ListParams) -> Result<Vec<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + SoftDelete,
{
    let list = api.list(lp).await.map_err(|e| StoreError::Api {
        kind,
        name: "(list)".into(),
        source: e,
    })?;
    Ok(list.items.into_iter().filter(|o| !o.deleted()).collect())
}

impl Store {
    pub fn new(client: kube::Client, mode: CrdMode) -> Store {
        Store {
            mode,
            blocks: Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMBlock)),
            handles: Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMHandle)),
            affinities: Api::all_with(client.clone(), &mode.resource(CalicoKind::BlockAffinity)),
            client,
        }
    }

    pub fn mode(&self) -> CrdMode {
        self.mode
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    pub fn pools_api(&self) -> Api<Pool> {
        Api::all_with(self.client.clone(), &self.mode.resource(CalicoKind::IPPool))
    }

    pub fn config_api(&self) -> Api<IpamConfig> {
        Api::all_with(self.client.clone(), &self.mode.resource(CalicoKind::IPAMConfig))
    }

    // ---- the IPAM configuration (`default`; IPAMConfig in v1 mode, IPAMConfiguration in v3)

    fn config_kind(&self) -> &'static str {
        self.mode.kind_and_plural(CalicoKind::IPAMConfig).0
    }

    pub async fn get_config(&self) -> Result<Option<IpamConfig>> {
        self.config_api()
            .get_opt("default")
            .await
            .map_err(|e| StoreError::from_kube(self.config_kind(), "default", e))
    }

    pub async fn create_config(&self, spec: IPAMConfigSpec) -> Result<IpamConfig> {
        let obj = Object::new("default", &self.mode.resource(CalicoKind::IPAMConfig), spec);
        create(&self.config_api(), self.config_kind(), &obj).await
    }

    pub async fn update_config(&self, c: &IpamConfig) -> Result<IpamConfig> {
        replace(&self.config_api(), self.config_kind(), c).await
    }

    // ---- blocks

    pub async fn get_block(&self, cidr: &IpNet) -> Result<Option<Block>> {
        get_live(&self.blocks, BLOCK, &names::block_name(cidr)).await
    }

    pub async fn create_block(&self, spec: IPAMBlockSpec) -> Result<Block> {
        let cidr: IpNet = spec.cidr.parse().map_err(|_| StoreError::Invalid {
            kind: BLOCK,
            name: spec.cidr.clone(),
            detail: "spec.cidr is not a CIDR".into(),
        })?;
        let obj = Object::new(
            &names::block_name(&cidr),
            &self.mode.resource(CalicoKind::IPAMBlock),
            spec,
        );
        create(&self.blocks, BLOCK, &obj).await
    }

    pub async fn update_block(&self, b: &Block) -> Result<Block> {
        replace(&self.blocks, BLOCK, b).await
    }

    pub async fn delete_block(&self, b: &Block) -> Result<()> {
        soft_delete(&self.blocks, BLOCK, self.mode, b).await
    }

    pub async fn list_blocks(&self) -> Result<Vec<Block>> {
        list_live(&self.blocks, BLOCK, &ListParams::default()).await
    }

    /// CIDRs of all existing blocks, from object names only (a metadata LIST: no block bodies).
    pub async fn list_block_cidrs(&self) -> Result<HashSet<IpNet>> {
        let list = self
            .blocks
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| StoreError::Api {
                kind: BLOCK,
                name: "(list)".into(),
                source: e,
            })?;
        Ok(list
            .items
            .iter()
            .filter_map(|m| m.metadata.name.as_deref().and_then(names::parse_block_name))
            .collect())
    }

    // ---- handles

    /// The handle of exactly this ID: at [`names::handle_name`], else (a mixed-case ID) where
    /// Calico put it. An object holding another ID is not this ID's (Calico's lower-cased names
    /// would have shared it).
    pub async fn get_handle(&self, handle_id: &str) -> Result<Option<Handle>> {
        let name = names::handle_name(handle_id);
        match get_live(&self.handles, HANDLE, &name).await? {
            Some(h) if names::handle_owned_by(&h.spec.handle_id, handle_id) => return Ok(Some(h)),
            Some(h) => tracing::warn!(
                handle = %name,
                held_by = %h.spec.handle_id,
                "IPAMHandle {name} holds another handle ID; not handle {handle_id:?}"
            ),
            None => {}
        }
        if let Some(legacy) = names::calico_handle_name(handle_id)
            && let Some(h) = get_live(&self.handles, HANDLE, &legacy).await?
            && names::handle_owned_by(&h.spec.handle_id, handle_id)
        {
            return Ok(Some(h));
        }
        Ok(None)
    }

    /// The `spec.handleID` stored under this ID's object name, whoever it belongs to.
    pub async fn handle_name_holder(&self, handle_id: &str) -> Result<Option<String>> {
        Ok(get_live(&self.handles, HANDLE, &names::handle_name(handle_id))
            .await?
            .map(|h| h.spec.handle_id))
    }

    /// Creates the ID's handle; `AlreadyExists` also when Calico's object for this (mixed-case) ID
    /// exists, so that one ID never has two handle objects.
    pub async fn create_handle(&self, handle_id: &str, block: BTreeMap<String, u64>) -> Result<Handle> {
        if let Some(legacy) = names::calico_handle_name(handle_id)
            && let Some(h) = get_live(&self.handles, HANDLE, &legacy).await?
            && names::handle_owned_by(&h.spec.handle_id, handle_id)
        {
            return Err(StoreError::AlreadyExists {
                kind: HANDLE,
                name: legacy,
            });
        }
        let spec = IPAMHandleSpec {
            handle_id: handle_id.into(),
            block,
            deleted: None,
            extra: Default::default(),
        };
        let obj: Handle = Object::new(
            &names::handle_name(handle_id),
            &self.mode.resource(CalicoKind::IPAMHandle),
            spec,
        );
        create(&self.handles, HANDLE, &obj).await
    }

    pub async fn update_handle(&self, h: &Handle) -> Result<Handle> {
        replace(&self.handles, HANDLE, h).await
    }

    /// One conditional DELETE (UID and resourceVersion preconditions): the handle goes only as
    /// read, so it is as safe as the two-step delete (no reader can see a state between), in one
    /// write instead of two: a GC pass deletes one handle per leaked pod.
    pub async fn delete_handle(&self, h: &Handle) -> Result<()> {
        let name = h.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: h.metadata.uid.clone(),
                resource_version: h.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        match self.handles.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if object_absent(&s, &name) => Ok(()),
            Err(e) => Err(StoreError::from_kube(HANDLE, &name, e)),
        }
    }

    pub async fn list_handles(&self) -> Result<Vec<Handle>> {
        list_live(&self.handles, HANDLE, &ListParams::default()).await
    }

    // ---- affinities

    pub async fn get_affinity(&self, host: &str, cidr: &IpNet) -> Result<Option<Affinity>> {
        get_live(&self.affinities, AFFINITY, &names::affinity_name(host, cidr)).await
    }

    /// A new host affinity with Calico's labels and `deleted` in the mode's wire form.
    pub async fn create_affinity(&self, host: &str, cidr: &IpNet, state: &str) -> Result<Affinity> {
        let spec = BlockAffinitySpec {
            state: state.into(),
            node: host.into(),
            type_: Some("host".into()),
            cidr: cidr.to_string(),
            deleted: self.mode.affinity_flag(false),
            extra: Default::default(),
        };
        let mut obj: Affinity = Object::new(
            &names::affinity_name(host, cidr),
            &self.mode.resource(CalicoKind::BlockAffinity),
            spec,
        );
        obj.metadata.labels = Some(names::affinity_labels(host, "host", cidr).into_iter().collect());
        create(&self.affinities, AFFINITY, &obj).await
    }

    /// Full update; (re)stamps Calico's labels, as Calico does on every write.
    pub async fn update_affinity(&self, a: &Affinity) -> Result<Affinity> {
        let mut a = a.clone();
        if let Ok(cidr) = a.spec.cidr.parse::<IpNet>() {
            let labels = a.metadata.labels.get_or_insert_with(Default::default);
            for (k, v) in names::affinity_labels(&a.spec.node, a.spec.affinity_type(), &cidr) {
                labels.insert(k, v);
            }
        }
        replace(&self.affinities, AFFINITY, &a).await
    }

    pub async fn delete_affinity(&self, a: &Affinity) -> Result<()> {
        soft_delete(&self.affinities, AFFINITY, self.mode, a).await
    }

    /// A host's live affinities: label-selector LIST (Calico 3.31+ labels), filtered on
    /// `spec.node` because the hash label could in theory collide. Rows Calico wrote before 3.31
    /// carry no labels: with `adopt_unlabelled`, an empty result is checked against a full LIST and
    /// such rows get their labels back-filled (once per host and process: the engine's first load).
    pub async fn list_host_affinities(&self, host: &str, adopt_unlabelled: bool) -> Result<Vec<Affinity>> {
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            names::LABEL_HOSTNAME_HASH,
            names::hostname_hash(host)
        ));
        let mut v = list_live(&self.affinities, AFFINITY, &lp).await?;
        v.retain(|a| a.spec.node == host && a.spec.affinity_type() == "host");
        if v.is_empty() && adopt_unlabelled {
            // Perhaps rows from Calico < 3.31 (no labels): adopt them and back-fill the labels,
            // as Calico's UpgradeHost does, so that the next lookup is a label LIST again.
            let mut all = self.list_affinities().await?;
            all.retain(|a| a.spec.node == host && a.spec.affinity_type() == "host");
            for a in all {
                let hash = names::hostname_hash(host);
                let labelled = a
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::LABEL_HOSTNAME_HASH))
                    .is_some_and(|h| *h == hash);
                if labelled {
                    v.push(a);
                    continue;
                }
                match self.update_affinity(&a).await {
                    Ok(a) => v.push(a),
                    // Someone else is writing it: use what we read; the next write stamps labels.
                    Err(StoreError::Conflict { .. }) => v.push(a),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(v)
    }

    pub async fn list_affinities(&self) -> Result<Vec<Affinity>> {
        list_live(&self.affinities, AFFINITY, &ListParams::default()).await
    }

    /// Finishes the two-step delete of an object found marked `deleted` (a writer stopped between
    /// the mark and the DELETE): reading it does that ([`get_live`]).
    pub async fn finish_delete(&self, kind: CalicoKind, name: &str) -> Result<()> {
        match kind {
            CalicoKind::IPAMBlock => get_live(&self.blocks, BLOCK, name).await.map(drop),
            CalicoKind::IPAMHandle => get_live(&self.handles, HANDLE, name).await.map(drop),
            CalicoKind::BlockAffinity => get_live(&self.affinities, AFFINITY, name).await.map(drop),
            other => Err(StoreError::Invalid {
                kind: "IPAM object",
                name: name.into(),
                detail: format!("{other:?} is not an IPAM kind"),
            }),
        }
    }

    // ---- nodes

    /// Labels of a Kubernetes Node (None when it does not exist).
    pub async fn node_labels(&self, host: &str) -> Result<Option<BTreeMap<String, String>>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let n = nodes.get_opt(host).await.map_err(|e| StoreError::Api {
            kind: "Node",
            name: host.into(),
            source: e,
        })?;
        Ok(n.map(|n| n.metadata.labels.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    /// A Status as the apiserver sends it (JSON), with `details.name` when given.
    fn status(code: u16, reason: &str, details_name: Option<&str>) -> Status {
        let mut v = serde_json::json!({"kind": "Status", "status": "Failure", "message": "m", "reason": reason, "code": code});
        if let Some(n) = details_name {
            v["details"] =
                serde_json::json!({"name": n, "group": "crd.projectcalico.org", "kind": "ipamhandles"});
        }
        serde_json::from_value(v).unwrap()
    }

    fn api(code: u16, reason: &str, details_name: Option<&str>) -> StoreError {
        StoreError::Api {
            kind: BLOCK,
            name: "b".into(),
            source: kube::Error::Api(Box::new(status(code, reason, details_name))),
        }
    }

    #[test]
    fn only_a_404_naming_the_object_means_absent() {
        assert!(object_absent(&status(404, "NotFound", Some("h")), "h"));
        // A restarting apiserver's bare 404 (CRD handler not ready) is not an answer about the object.
        assert!(!object_absent(&status(404, "NotFound", None), "h"));
        assert!(!object_absent(&status(404, "NotFound", Some("other")), "h"));
        assert!(!object_absent(&status(409, "Conflict", Some("h")), "h"));
        let e = StoreError::from_kube(
            HANDLE,
            "h",
            kube::Error::Api(Box::new(status(404, "NotFound", None))),
        );
        assert!(matches!(e, StoreError::Api { .. }), "{e:?}");
        let e = StoreError::from_kube(
            HANDLE,
            "h",
            kube::Error::Api(Box::new(status(404, "NotFound", Some("h")))),
        );
        assert!(e.is_conflict());
    }

    #[test]
    fn writes_that_may_have_landed() {
        for (code, landed) in [
            (409, false),
            (404, false),
            (422, false),
            (429, false),
            (403, false),
            (408, true),
            (500, true),
            (503, true),
            (504, true),
        ] {
            assert_eq!(api(code, "x", None).may_have_applied(), landed, "HTTP {code}");
        }
        let lost = StoreError::Api {
            kind: BLOCK,
            name: "b".into(),
            source: kube::Error::Service("connection reset".into()),
        };
        assert!(lost.may_have_applied());
        assert!(
            !StoreError::Conflict {
                kind: BLOCK,
                name: "b".into()
            }
            .may_have_applied()
        );
        assert!(
            !StoreError::AlreadyExists {
                kind: BLOCK,
                name: "b".into()
            }
            .may_have_applied()
        );
    }
}
