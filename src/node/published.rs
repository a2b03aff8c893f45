//! The published-object contract between the operator's BGP controller and the node agents, and
//! the pure code on both sides of it: [`publish`] (operator) cuts the renderer's input
//! ([`crate::bgp::Snapshot`]) into objects whose total size grows linearly with the cluster, and
//! [`assemble`] (agent) puts one node's snapshot back together, so the agent runs the same
//! [`crate::bgp::render`] as `tortie render` and gets the same bytes.
//!
//! Two kinds of objects, in the operator namespace:
//! * **Shards** (`tortie-bgp-shard-<i>`, ConfigMaps, label [`LABEL_SHARD`]): what every node needs,
//!   published once: each Node's BGP facts (name, only the labels a BGP selector reads, only
//!   Calico's BGP annotations), the BGPConfigurations, BGPPeers, IPPools (name and spec) and the
//!   service routes every node advertises. Each record goes to shard `hash(key) mod count`; the
//!   count is a power of two chosen from the total size ([`shard_count`]), so a shard stays near
//!   [`SHARD_TARGET_BYTES`] and far below the apiserver's 1 MiB limit at any cluster size, and a
//!   new node rewrites one shard only.
//! * **The node's own object** (`tortie-bird-<node>`, [`object_name`]): its block affinities, the
//!   service routes only it advertises, the router-id options, the shard count it was built
//!   against, and the BGP password values its sessions use. With a password it is a Secret (the
//!   agent writes files holding one 0600), otherwise a ConfigMap.
//!
//! The agent renders only once it holds every shard of the count its own object names, so a
//! shard-count change (rare: the cluster doubled or shrank) never mixes two layouts.
//!
//! Rollout: an agent also installs the previous format, an own object carrying the rendered
//! files themselves ([`Contents::Files`]). Upgrade the agents first, then the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::Object;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{
    Affinity, BGPConfigurationSpec, BGPFilterSpec, BGPPeerSpec, BgpPeer, BlockAffinitySpec, IPPoolSpec,
};
use crate::bgp::services::ServiceRoutes;
use crate::bgp::snapshot::{
    ANN_ASN, ANN_IPV4, ANN_IPV6, ANN_RR_CLUSTER_ID, ANN_WG_V4, ANN_WG_V6, LABEL_EXCLUDE_LB,
};
use crate::bgp::{NodeBgp, RenderOptions, SelectorEngine, Snapshot};
use crate::ipam::selector::Selector;

/// Label on every node's own object (the agent and `kubectl get -l` find them by it).
pub const LABEL_CONFIG: &str = "tortie.projectcalico.org/bird-config";
/// Label on every shard.
pub const LABEL_SHARD: &str = "tortie.projectcalico.org/bgp-shard";
/// Annotation: the node the object is for.
pub const ANN_NODE: &str = "tortie.projectcalico.org/node";
/// Annotation: SHA-256 of the object's data (the operator skips writes that change nothing).
/// On an object of the previous format: [`crate::bgp::Rendered::content_hash`] of its files.
pub const ANN_HASH: &str = "tortie.projectcalico.org/content-hash";
/// Annotation on shards and own objects: the shard count of the layout they belong to.
pub const ANN_SHARDS: &str = "tortie.projectcalico.org/shard-count";
/// Annotation on a node's own object: [`FORMAT`].
pub const ANN_FORMAT: &str = "tortie.projectcalico.org/format";
/// Format of the render-input objects (an own object without it carries rendered files).
pub const FORMAT: &str = "render-inputs/v1";
/// Data key of a node's own object.
pub const KEY_NODE: &str = "node.json";
/// Data key of a shard.
pub const KEY_SHARD: &str = "shard.json";
/// Kubernetes refuses objects above 1 MiB; keep room for metadata.
pub const MAX_PUBLISHED_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// Size a shard is aimed at; the count doubles once shards average 1.5 times this, and halves
/// below a quarter of it.
pub const SHARD_TARGET_BYTES: usize = 128 * 1024;
/// Node annotation the agent writes: content hash of the BIRD config it last installed.
pub const ANN_APPLIED_HASH: &str = "tortie.projectcalico.org/bird-config-hash";
/// Node annotation the agent writes: `Applied`, or `Error: <why>` when BIRD rejected the config
/// or the reload.
pub const ANN_STATUS: &str = "tortie.projectcalico.org/bird-config-status";

/// Calico's BGP annotations on a Node: the only ones published.
const BGP_ANNOTATIONS: [&str; 6] = [
    ANN_IPV4,
    ANN_IPV6,
    ANN_ASN,
    ANN_RR_CLUSTER_ID,
    ANN_WG_V4,
    ANN_WG_V6,
];

/// Name of a node's own published object: `tortie-bird-<node>`, hashed when too long.
pub fn object_name(node: &str) -> String {
    let plain = format!("tortie-bird-{node}");
    if plain.len() <= 253 {
        return plain;
    }
    let h = Sha256::digest(node.as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("tortie-bird-{}-{hex}", &node[..200])
}

/// Name of shard `index` (the same name whatever the count, so a new count rewrites in place).
pub fn shard_name(index: u32) -> String {
    format!("tortie-bgp-shard-{index}")
}

/// A node's published object in one of its two forms.
#[derive(Clone, Debug)]
pub enum Published {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

impl Published {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Published::ConfigMap(c) => &c.metadata,
            Published::Secret(s) => &s.metadata,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Published::ConfigMap(_) => "ConfigMap",
            Published::Secret(_) => "Secret",
        }
    }
}

/// Data of a published ConfigMap or Secret.
pub fn files_of(p: &Published) -> BTreeMap<String, Vec<u8>> {
    match p {
        Published::ConfigMap(c) => c
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
        Published::Secret(s) => s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    }
}

/// A Calico object as published: its name and spec, nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Named<S> {
    pub name: String,
    pub spec: S,
}

/// What every node may need of one Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One shard's content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeFacts>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<Named<BGPConfigurationSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Named<BGPPeerSpec>>,
    /// BGPFilters (peers name them; absent in shards of operators before BGPFilter support).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Named<BGPFilterSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<Named<IPPoolSpec>>,
    /// Per-service routes every node advertises.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
}

/// A host block affinity of the node, as the renderer reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityFacts {
    pub name: String,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// A node's own object's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInputs {
    pub node: String,
    /// Shard count of the layout this object belongs to.
    pub shards: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bird_fork: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinities: Vec<AffinityFacts>,
    /// Per-service routes only this node advertises (externalTrafficPolicy: Local).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
    /// Secret -> key -> value, for the passwords of this node's sessions only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub passwords: BTreeMap<String, BTreeMap<String, String>>,
}

impl NodeInputs {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }
}

/// Which shard a record goes to: the first 8 bytes of SHA-256(key), masked by the (power of
/// two) count, so doubling the count splits every shard in two and moves nothing else.
pub fn shard_of(key: &str, count: u32) -> u32 {
    let d = Sha256::digest(key.as_bytes());
    let h = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    (h & u64::from(count.max(1) - 1)) as u32
}

/// The shard count for `total` bytes of records: the `current` count while shards average
/// between a quarter and 1.5 times [`SHARD_TARGET_BYTES`] (no flapping around a boundary),
/// else the power of two that brings them to the target.
pub fn shard_count(total: usize, current: Option<u32>) -> u32 {
    if let Some(c) = current.filter(|c| c.is_power_of_two()) {
        let avg = total / c as usize;
        let low = SHARD_TARGET_BYTES / 4;
        if avg <= SHARD_TARGET_BYTES * 3 / 2 && (avg >= low || c == 1) {
            return c;
        }
    }
    (total.div_ceil(SHARD_TARGET_BYTES).max(1) as u32).next_power_of_two()
}

/// Label keys a node's BGP rendering can read: the keys of every BGPPeer selector, and the
/// load-balancer exclusion label. Any other label change cannot change a BIRD file.
pub fn label_keys(peers: &[BgpPeer]) -> BTreeSet<String> {
    let mut out = BTreeSet::from([LABEL_EXCLUDE_LB.to_string()]);
    for p in peers {
        for sel in [&p.spec.node_selector, &p.spec.peer_selector]
            .into_iter()
            .flatten()
        {
            // A selector that does not parse selects nothing (and says so): no label needed.
            if let Ok(s) = Selector::parse(sel) {
                out.extend(s.label_keys());
            }
        }
    }
    out
}

/// A Node's published facts.
pub fn node_facts(node: &Node, keys: &BTreeSet<String>) -> NodeFacts {
    let m = &node.metadata;
    NodeFacts {
        name: m.name.clone().unwrap_or_default(),
        labels: m
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        annotations: m
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| BGP_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The node's affinities the renderer reads: host affinities, not deleted, not pending.
pub fn affinity_facts<'a>(
    node: &str,
    affinities: impl IntoIterator<Item = &'a Affinity>,
) -> Vec<AffinityFacts> {
    let mut out: Vec<AffinityFacts> = affinities
        .into_iter()
        .filter(|a| {
            let s = &a.spec;
            s.node == node && s.affinity_type() == "host" && !s.is_deleted() && s.state != "pending"
        })
        .map(|a| AffinityFacts {
            name: a.metadata.name.clone().unwrap_or_default(),
            cidr: a.spec.cidr.clone(),
            state: a.spec.state.clone(),
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.cidr, &a.state).cmp(&(&b.name, &b.cidr, &b.state)));
    out
}

/// The passwords a node's sessions can use, as (Secret, key): the mesh password, and those of
/// BGPPeers that can give the node a session (global ones, ones whose `node`/`nodeSelector`
/// names it, and ones whose `peerSelector`/`peerIP` points at it, for the reverse session).
/// A superset of what the renderer looks up, never less.
pub fn password_refs(
    snap: &Snapshot,
    node: &NodeFacts,
    selectors: &dyn SelectorEngine,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for c in &snap.bgp_configs {
        if c.metadata.name.as_deref() == Some("default")
            && let Some(r) = c
                .spec
                .node_mesh_password
                .as_ref()
                .and_then(|p| p.secret_key_ref.as_ref())
        {
            out.insert((r.name.clone(), r.key.clone()));
        }
    }
    let bgp = node_bgp(node);
    let matches = |expr: &str| selectors.matches(expr, &node.labels).unwrap_or(false);
    for p in &snap.peers {
        let Some(r) = p.spec.password.as_ref().and_then(|p| p.secret_key_ref.as_ref()) else {
            continue;
        };
        let s = &p.spec;
        let node_sel = s.node_selector.as_deref().unwrap_or("");
        let on = s.node.as_deref().unwrap_or("");
        let local = (node_sel.is_empty() && on.is_empty())
            || on == node.name
            || (!node_sel.is_empty() && matches(node_sel));
        let remote = match s.peer_selector.as_deref().filter(|x| !x.is_empty()) {
            Some(sel) => matches(sel),
            None => s
                .peer_ip
                .as_deref()
                .and_then(crate::bgp::peers::parse_ip_port)
                .is_some_and(|(ip, _)| {
                    bgp.as_ref()
                        .is_some_and(|b| b.addr(false) == Some(ip) || b.addr(true) == Some(ip))
                }),
        };
        if local || remote {
            out.insert((r.name.clone(), r.key.clone()));
        }
    }
    out
}

fn node_bgp(facts: &NodeFacts) -> Option<NodeBgp> {
    NodeBgp::from_node(&facts_node(facts)).ok()
}

fn facts_node(f: &NodeFacts) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(f.name.clone()),
            labels: (!f.labels.is_empty()).then(|| f.labels.clone()),
            annotations: (!f.annotations.is_empty()).then(|| f.annotations.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn object<S: Clone, T: Clone>(name: &str, spec: S) -> Object<S, T> {
    Object {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// One record of a shard, serialized once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Which list of the shard: `nodes`, `configs`, `peers`, `filters`, `pools` or `routes`.
    pub list: &'static str,
    /// Stable key (decides the shard and the order inside it).
    pub key: String,
    pub json: String,
}

impl Record {
    pub fn node(f: &NodeFacts) -> Record {
        Record {
            list: "nodes",
            key: format!("Node/{}", f.name),
            json: serde_json::to_string(f).expect("plain data serializes"),
        }
    }

    fn named<S: Serialize>(list: &'static str, kind: &str, name: &str, spec: &S) -> Record {
        Record {
            list,
            key: format!("{kind}/{name}"),
            json: serde_json::to_string(&Named {
                name: name.to_string(),
                spec,
            })
            .expect("plain data serializes"),
        }
    }
}

/// The shared records of everything but the Nodes.
pub fn shared_records(snap: &Snapshot, everywhere: &BTreeSet<IpNet>) -> Vec<Record> {
    let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for c in &snap.bgp_configs {
        out.push(Record::named(
            "configs",
            "BGPConfiguration",
            &name(&c.metadata),
            &c.spec,
        ));
    }
    for p in &snap.peers {
        out.push(Record::named("peers", "BGPPeer", &name(&p.metadata), &p.spec));
    }
    for f in &snap.filters {
        out.push(Record::named("filters", "BGPFilter", &name(&f.metadata), &f.spec));
    }
    for p in &snap.pools {
        out.push(Record::named("pools", "IPPool", &name(&p.metadata), &p.spec));
    }
    for r in everywhere {
        out.push(Record {
            list: "routes",
            key: format!("route/{r}"),
            json: serde_json::to_string(r).expect("plain data serializes"),
        });
    }
    out
}

/// Shard bodies (index -> JSON text) for `records` over `count` shards; every shard exists,
/// an empty one as `{}`.
pub fn shard_bodies<'a>(records: impl IntoIterator<Item = &'a Record>, count: u32) -> Vec<String> {
    let mut per: Vec<BTreeMap<(&'static str, &'a str), &'a str>> = vec![BTreeMap::new(); count as usize];
    for r in records {
        per[shard_of(&r.key, count) as usize].insert((r.list, &r.key), &r.json);
    }
    per.into_iter()
        .map(|m| body_of(m.into_iter().map(|((l, _), json)| (l, json))))
        .collect()
}

/// A shard body from its records as (list, JSON), sorted by list then key.
fn body_of<'a>(records: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::from("{");
    let mut list: Option<&str> = None;
    for (l, json) in records {
        if list != Some(l) {
            if list.is_some() {
                s.push_str("],");
            }
            write!(s, "\"{l}\":[").expect("writing to a String");
            list = Some(l);
        } else {
            s.push(',');
        }
        s.push_str(json);
    }
    if list.is_some() {
        s.push(']');
    }
    s.push('}');
    s
}

/// Everything the operator publishes for a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Shard index -> body.
    pub shards: Vec<String>,
    /// Node name -> its own object's content.
    pub nodes: BTreeMap<String, NodeInputs>,
}

impl Inputs {
    /// Total bytes of data (shards and own objects, without object metadata).
    pub fn data_bytes(&self) -> usize {
        self.shards.iter().map(String::len).sum::<usize>()
            + self.nodes.values().map(|n| n.to_json().len()).sum::<usize>()
    }
}

/// Service routes of a snapshot: the ones already worked out, or computed now.
pub fn service_routes_of(snap: &Snapshot) -> ServiceRoutes {
    if let Some(r) = &snap.service_routes {
        return r.clone();
    }
    let default = snap
        .bgp_configs
        .iter()
        .filter(|c| c.metadata.name.as_deref() == Some("default"))
        .max_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    crate::bgp::services::service_routes(snap, &default)
}

/// A node's own object content (`facts`: its published facts).
pub fn node_inputs(
    snap: &Snapshot,
    facts: &NodeFacts,
    routes: &ServiceRoutes,
    affinities: Vec<AffinityFacts>,
    opts: &RenderOptions,
    count: u32,
    selectors: &dyn SelectorEngine,
) -> NodeInputs {
    let mut passwords: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (secret, key) in password_refs(snap, facts, selectors) {
        if let Some(v) = snap.secrets.get(&secret).and_then(|s| s.get(&key)) {
            passwords.entry(secret).or_default().insert(key, v.clone());
        }
    }
    NodeInputs {
        node: facts.name.clone(),
        shards: count,
        router_id: opts.router_id.clone(),
        bird_fork: opts.bird_fork,
        affinities,
        routes: routes
            .local
            .get(&facts.name)
            .map(|r| r.difference(&routes.everywhere).copied().collect())
            .unwrap_or_default(),
        passwords,
    }
}

/// Cuts `snap` into shards and per-node inputs. `current`: the shard count in use.
pub fn publish(
    snap: &Snapshot,
    opts: &RenderOptions,
    selectors: &dyn SelectorEngine,
    current: Option<u32>,
) -> Inputs {
    let nodes: Vec<&Node> = snap.nodes.iter().collect();
    let affinities: Vec<&Affinity> = snap.affinities.iter().collect();
    publish_from(snap, &nodes, &affinities, opts, selectors, current)
}

/// [`publish`] with the Nodes and BlockAffinities given apart from `snap` (whose own lists of
/// them are not read), so a controller passes its cached objects without copying them.
pub fn publish_from(
    snap: &Snapshot,
    nodes: &[&Node],
    affinities: &[&Affinity],
    opts: &RenderOptions,
    selectors: &dyn SelectorEngine,
    current: Option<u32>,
) -> Inputs {
    let keys = label_keys(&snap.peers);
    let routes = service_routes_of(snap);
    let facts: Vec<NodeFacts> = nodes.iter().map(|n| node_facts(n, &keys)).collect();
    let mut records: Vec<Record> = facts.iter().map(Record::node).collect();
    records.extend(shared_records(snap, &routes.everywhere));
    let total = records.iter().map(|r| r.json.len() + 1).sum();
    let count = shard_count(total, current);
    let shards = shard_bodies(&records, count);
    let mut by_node: BTreeMap<&str, Vec<&Affinity>> = BTreeMap::new();
    for a in affinities {
        by_node.entry(a.spec.node.as_str()).or_default().push(a);
    }
    let nodes = facts
        .iter()
        .map(|f| {
            let affs = affinity_facts(
                &f.name,
                by_node.get(f.name.as_str()).into_iter().flatten().copied(),
            );
            let inputs = node_inputs(snap, f, &routes, affs, opts, count, selectors);
            (f.name.clone(), inputs)
        })
        .collect();
    Inputs { shards, nodes }
}

// ---- Incremental publishing (operator) ----

/// One node as published: its facts (its shard record) and its own object's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedNode {
    pub facts: NodeFacts,
    record: Record,
    pub inputs: NodeInputs,
    /// [`text_hash`] of the own object's data.
    pub hash: String,
}

/// One shard's records ((list, key) -> JSON) and the hash of its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ShardRecords {
    records: BTreeMap<(&'static str, String), String>,
    hash: String,
}

impl ShardRecords {
    fn body(&self) -> String {
        body_of(self.records.iter().map(|((l, _), j)| (*l, j.as_str())))
    }

    /// Recomputes the hash; whether it changed.
    fn rehash(&mut self) -> bool {
        let h = text_hash(&self.body());
        std::mem::replace(&mut self.hash, h) != self.hash
    }
}

/// What an update of a [`Publisher`] changed: the objects to check against the stored ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Shards whose body changed.
    pub shards: BTreeSet<u32>,
    /// Nodes whose own object changed, appeared or went.
    pub nodes: BTreeSet<String>,
    /// The shard count changed: every shard and every own object is new.
    pub relayout: bool,
    /// A node appeared or went: the set of own objects changed.
    pub membership: bool,
}

impl Changed {
    pub fn merge(&mut self, o: Changed) {
        self.shards.extend(o.shards);
        self.nodes.extend(o.nodes);
        self.relayout |= o.relayout;
        self.membership |= o.membership;
    }

    pub fn is_empty(&self) -> bool {
        *self == Changed::default()
    }
}

/// The published state kept between passes, so that a Node or BlockAffinity event costs its
/// own record, its shard and its own object, not N: the same [`Inputs`] as [`publish_from`]
/// with `current` the count before the event (the property `incremental == full` is tested).
///
/// Built from a snapshot ([`Publisher::new`]); [`Publisher::set_node`] and
/// [`Publisher::set_affinity`] take the same snapshot. Anything else the snapshot holds
/// (BGPConfigurations, BGPPeers, BGPFilters, IPPools, Secrets, Services) can change every
/// object: [`Publisher::same_shared`] says whether a new snapshot needs a new `Publisher`.
#[derive(Clone, Debug)]
pub struct Publisher {
    opts: RenderOptions,
    keys: BTreeSet<String>,
    routes: ServiceRoutes,
    shared: Vec<Record>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    count: u32,
    /// Bytes of every record (as [`publish_from`] sizes them).
    total: usize,
    shards: Vec<ShardRecords>,
    nodes: BTreeMap<String, PublishedNode>,
    /// Node -> affinity name -> what its own object holds (host, live, not pending ones).
    affinities: BTreeMap<String, BTreeMap<String, AffinityFacts>>,
    /// Affinity name -> its node (every affinity seen, whether it counts or not).
    affinity_node: BTreeMap<String, String>,
}

fn counts(a: &Affinity) -> bool {
    let s = &a.spec;
    s.affinity_type() == "host" && !s.is_deleted() && s.state != "pending"
}

impl Publisher {
    /// Everything published for `snap` with `nodes` and `affinities` (`current`: the shard count
    /// in use), as [`publish_from`] cuts it.
    pub fn new(
        snap: &Snapshot,
        nodes: &[&Node],
        affinities: &[&Affinity],
        opts: &RenderOptions,
        selectors: &dyn SelectorEngine,
        current: Option<u32>,
    ) -> Publisher {
        let routes = service_routes_of(snap);
        let shared = shared_records(snap, &routes.everywhere);
        let mut p = Publisher {
            opts: opts.clone(),
            keys: label_keys(&snap.peers),
            routes,
            shared,
            secrets: snap.secrets.clone(),
            count: 0,
            total: 0,
            shards: Vec::new(),
            nodes: BTreeMap::new(),
            affinities: BTreeMap::new(),
            affinity_node: BTreeMap::new(),
        };
        for a in affinities {
            p.index_affinity(a.metadata.name.as_deref().unwrap_or(""), Some(a));
        }
        let facts: Vec<NodeFacts> = nodes.iter().map(|n| node_facts(n, &p.keys)).collect();
        let records: Vec<Record> = facts.iter().map(Record::node).chain(p.shared.clone()).collect();
        p.total = records.iter().map(|r| r.json.len() + 1).sum();
        p.count = shard_count(p.total, current);
        p.shards = vec![ShardRecords::default(); p.count as usize];
        for r in records {
            p.shards[shard_of(&r.key, p.count) as usize]
                .records
                .insert((r.list, r.key), r.json);
        }
        for s in &mut p.shards {
            s.rehash();
        }
        for f in facts {
            let inputs = p.node_inputs(snap, &f, selectors);
            let hash = text_hash(&inputs.to_json());
            let record = Record::node(&f);
            p.nodes.insert(
                f.name.clone(),
                PublishedNode {
                    facts: f,
                    record,
                    inputs,
                    hash,
                },
            );
        }
        p
    }

    /// Whether `snap` publishes the same as the one this was built from, for every node (same
    /// selected label keys, shared records, service routes and Secrets): if not, build anew.
    pub fn same_shared(&self, snap: &Snapshot) -> bool {
        let routes = service_routes_of(snap);
        label_keys(&snap.peers) == self.keys
            && snap.secrets == self.secrets
            && shared_records(snap, &routes.everywhere) == self.shared
            && routes == self.routes
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Label keys a selector reads (a Node's other labels are not published).
    pub fn keys(&self) -> &BTreeSet<String> {
        &self.keys
    }

    pub fn node(&self, name: &str) -> Option<&PublishedNode> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&String, &PublishedNode)> {
        self.nodes.iter()
    }

    /// Body of shard `index` (< [`Publisher::count`]).
    pub fn shard_body(&self, index: u32) -> String {
        self.shards[index as usize].body()
    }

    /// [`text_hash`] of shard `index`'s body.
    pub fn shard_hash(&self, index: u32) -> &str {
        &self.shards[index as usize].hash
    }

    /// Everything published, as [`publish_from`] returns it.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            shards: self.shards.iter().map(ShardRecords::body).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|(n, p)| (n.clone(), p.inputs.clone()))
                .collect(),
        }
    }

    fn node_inputs(&self, snap: &Snapshot, f: &NodeFacts, selectors: &dyn SelectorEngine) -> NodeInputs {
        let affs = self
            .affinities
            .get(&f.name)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        node_inputs(snap, f, &self.routes, affs, &self.opts, self.count, selectors)
    }

    /// Node `name` is now `node` (`None`: gone).
    pub fn set_node(
        &mut self,
        snap: &Snapshot,
        name: &str,
        node: Option<&Node>,
        selectors: &dyn SelectorEngine,
    ) -> Changed {
        let facts = node.map(|n| node_facts(n, &self.keys));
        let mut ch = Changed::default();
        if self.nodes.get(name).map(|o| &o.facts) == facts.as_ref() {
            return ch;
        }
        let old = self.nodes.remove(name);
        let mut dirty = BTreeSet::new();
        if let Some(o) = &old {
            dirty.insert(self.put_record(&o.record, false));
        }
        ch.membership = old.is_some() != facts.is_some();
        ch.nodes.insert(name.to_string());
        if let Some(f) = facts {
            let record = Record::node(&f);
            dirty.insert(self.put_record(&record, true));
            let inputs = self.node_inputs(snap, &f, selectors);
            let hash = text_hash(&inputs.to_json());
            if old.as_ref().is_some_and(|o| o.hash == hash) {
                ch.nodes.remove(name);
            }
            let p = PublishedNode {
                facts: f,
                record,
                inputs,
                hash,
            };
            self.nodes.insert(name.to_string(), p);
        }
        self.settle(dirty, &mut ch);
        ch
    }

    /// BlockAffinity `name` is now `affinity` (`None`: gone).
    pub fn set_affinity(
        &mut self,
        snap: &Snapshot,
        name: &str,
        affinity: Option<&Affinity>,
        selectors: &dyn SelectorEngine,
    ) -> Changed {
        let mut ch = Changed::default();
        let before = self.affinity_node.get(name).cloned();
        self.index_affinity(name, affinity);
        let after = affinity.map(|a| a.spec.node.clone());
        for node in before.into_iter().chain(after) {
            let Some(p) = self.nodes.get(&node) else {
                continue;
            };
            let inputs = self.node_inputs(snap, &p.facts, selectors);
            if inputs != p.inputs {
                let hash = text_hash(&inputs.to_json());
                let p = self.nodes.get_mut(&node).expect("present");
                (p.inputs, p.hash) = (inputs, hash);
                ch.nodes.insert(node);
            }
        }
        ch
    }

    fn index_affinity(&mut self, name: &str, affinity: Option<&Affinity>) {
        if let Some(node) = self.affinity_node.remove(name)
            && let Some(m) = self.affinities.get_mut(&node)
        {
            m.remove(name);
            if m.is_empty() {
                self.affinities.remove(&node);
            }
        }
        let Some(a) = affinity else { return };
        self.affinity_node.insert(name.to_string(), a.spec.node.clone());
        if counts(a) {
            let facts = AffinityFacts {
                name: name.to_string(),
                cidr: a.spec.cidr.clone(),
                state: a.spec.state.clone(),
            };
            self.affinities
                .entry(a.spec.node.clone())
                .or_default()
                .insert(name.to_string(), facts);
        }
    }

    /// Adds (`add`) or removes a record; the shard it is in.
    fn put_record(&mut self, r: &Record, add: bool) -> u32 {
        let i = shard_of(&r.key, self.count);
        let records = &mut self.shards[i as usize].records;
        if add {
            self.total += r.json.len() + 1;
            records.insert((r.list, r.key.clone()), r.json.clone());
        } else if records.remove(&(r.list, r.key.clone())).is_some() {
            self.total -= r.json.len() + 1;
        }
        i
    }

    /// After records changed in `dirty` shards: the new count's layout if the total left the
    /// band, else the dirty shards' hashes.
    fn settle(&mut self, dirty: BTreeSet<u32>, ch: &mut Changed) {
        let count = shard_count(self.total, Some(self.count));
        if count != self.count {
            self.relayout(count);
            ch.relayout = true;
            ch.shards = (0..count).collect();
            ch.nodes = self.nodes.keys().cloned().collect();
            return;
        }
        for i in dirty {
            if self.shards[i as usize].rehash() {
                ch.shards.insert(i);
            }
        }
    }

    fn relayout(&mut self, count: u32) {
        let old = std::mem::replace(&mut self.shards, vec![ShardRecords::default(); count as usize]);
        for ((list, key), json) in old.into_iter().flat_map(|s| s.records) {
            self.shards[shard_of(&key, count) as usize]
                .records
                .insert((list, key), json);
        }
        for s in &mut self.shards {
            s.rehash();
        }
        self.count = count;
        for p in self.nodes.values_mut() {
            p.inputs.shards = count;
            p.hash = text_hash(&p.inputs.to_json());
        }
    }
}

/// Why published inputs cannot be assembled.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssembleError {
    #[error("{object}: data[{key}]: {message}")]
    Decode {
        object: String,
        key: &'static str,
        message: String,
    },
    #[error("{object}: data[{key}] is missing")]
    Missing { object: String, key: &'static str },
}

/// Reads a shard body.
pub fn parse_shard(object: &str, body: &str) -> Result<Shard, AssembleError> {
    serde_json::from_str(body).map_err(|e| AssembleError::Decode {
        object: object.to_string(),
        key: KEY_SHARD,
        message: e.to_string(),
    })
}

/// One node's snapshot and render options from its own inputs and the shards of its layout.
pub fn assemble<'a>(
    own: &NodeInputs,
    shards: impl IntoIterator<Item = &'a Shard>,
) -> (Snapshot, RenderOptions) {
    let mut snap = Snapshot::default();
    let mut everywhere = BTreeSet::new();
    for s in shards {
        snap.nodes.extend(s.nodes.iter().map(facts_node));
        snap.bgp_configs.extend(
            s.configs
                .iter()
                .map(|c| object::<_, kube::core::NotUsed>(&c.name, c.spec.clone())),
        );
        snap.peers.extend(
            s.peers
                .iter()
                .map(|p| object::<_, kube::core::NotUsed>(&p.name, p.spec.clone())),
        );
        snap.filters.extend(
            s.filters
                .iter()
                .map(|f| object::<_, kube::core::NotUsed>(&f.name, f.spec.clone())),
        );
        snap.pools
            .extend(s.pools.iter().map(|p| object(&p.name, p.spec.clone())));
        everywhere.extend(s.routes.iter().copied());
    }
    // Stored order does not matter to the renderer; a fixed one keeps its warnings in order.
    snap.nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let by_name = |a: &ObjectMeta, b: &ObjectMeta| a.name.cmp(&b.name);
    snap.bgp_configs.sort_by(|a, b| by_name(&a.metadata, &b.metadata));
    snap.peers.sort_by(|a, b| by_name(&a.metadata, &b.metadata));
    snap.filters.sort_by(|a, b| by_name(&a.metadata, &b.metadata));
    snap.pools.sort_by(|a, b| by_name(&a.metadata, &b.metadata));
    snap.affinities = own
        .affinities
        .iter()
        .map(|a| {
            object(
                &a.name,
                BlockAffinitySpec {
                    state: a.state.clone(),
                    node: own.node.clone(),
                    type_: None,
                    cidr: a.cidr.clone(),
                    deleted: crate::api::Flag::Bool(false),
                    extra: Default::default(),
                },
            )
        })
        .collect();
    snap.secrets = own.passwords.clone();
    let mut local = BTreeMap::new();
    if !own.routes.is_empty() {
        local.insert(own.node.clone(), own.routes.iter().copied().collect());
    }
    snap.service_routes = Some(ServiceRoutes { everywhere, local });
    let opts = RenderOptions {
        router_id: own.router_id.clone(),
        bird_fork: own.bird_fork,
    };
    (snap, opts)
}

// ---- Kubernetes objects ----

/// SHA-256 of a text, hex.
pub fn text_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn meta(
    name: String,
    namespace: &str,
    label: &str,
    annotations: Vec<(&str, String)>,
    owner: Option<(&str, &str)>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(
            [
                ("app.kubernetes.io/managed-by".to_string(), "tortie".to_string()),
                (label.to_string(), "true".to_string()),
            ]
            .into_iter()
            .collect(),
        ),
        annotations: Some(annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        owner_references: owner.map(|(node, uid)| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.to_string(),
                uid: uid.to_string(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

/// Shard `index` of a layout of `count`, as a ConfigMap.
pub fn shard_object(namespace: &str, index: u32, count: u32, body: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            shard_name(index),
            namespace,
            LABEL_SHARD,
            vec![(ANN_SHARDS, count.to_string()), (ANN_HASH, text_hash(body))],
            None,
        ),
        data: Some([(KEY_SHARD.to_string(), body.to_string())].into_iter().collect()),
        ..Default::default()
    }
}

/// A node's own object: a Secret when it carries a password, else a ConfigMap; owned by the
/// Node when its uid is known (deleted with it).
pub fn node_object(namespace: &str, node_uid: Option<&str>, inputs: &NodeInputs) -> Published {
    let body = inputs.to_json();
    let meta = meta(
        object_name(&inputs.node),
        namespace,
        LABEL_CONFIG,
        vec![
            (ANN_NODE, inputs.node.clone()),
            (ANN_FORMAT, FORMAT.to_string()),
            (ANN_SHARDS, inputs.shards.to_string()),
            (ANN_HASH, text_hash(&body)),
        ],
        node_uid.map(|u| (inputs.node.as_str(), u)),
    );
    if inputs.passwords.is_empty() {
        Published::ConfigMap(ConfigMap {
            metadata: meta,
            data: Some([(KEY_NODE.to_string(), body)].into_iter().collect()),
            ..Default::default()
        })
    } else {
        Published::Secret(Secret {
            metadata: meta,
            data: Some(
                [(KEY_NODE.to_string(), ByteString(body.into_bytes()))]
                    .into_iter()
                    .collect(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        })
    }
}

/// What a node's own object holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Render inputs: assemble with the shards, then render.
    Inputs(NodeInputs),
    /// The previous format: the rendered files themselves.
    Files(BTreeMap<String, Vec<u8>>),
}

/// Reads a node's own object (either format).
pub fn contents_of(p: &Published) -> Result<Contents, AssembleError> {
    let m = p.metadata();
    let object = format!(
        "{} {}/{}",
        p.kind(),
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    );
    let files = files_of(p);
    let is_inputs = m
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_FORMAT))
        .is_some_and(|f| f == FORMAT);
    if !is_inputs {
        return Ok(Contents::Files(files));
    }
    let body = files.get(KEY_NODE).ok_or(AssembleError::Missing {
        object: object.clone(),
        key: KEY_NODE,
    })?;
    serde_json::from_slice(body)
        .map(Contents::Inputs)
        .map_err(|e| AssembleError::Decode {
            object,
            key: KEY_NODE,
            message: e.to_string(),
        })
}

/// A shard object as the agent keeps it: its layout's count and its parsed content.
#[derive(Clone, Debug)]
pub struct ShardSlot {
    pub count: Option<u32>,
    pub shard: Result<Shard, AssembleError>,
}

/// Reads a shard object.
pub fn shard_slot(o: &ConfigMap) -> ShardSlot {
    let name = o.metadata.name.clone().unwrap_or_default();
    let count = o
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_SHARDS))
        .and_then(|c| c.parse::<u32>().ok());
    let shard = match o.data.as_ref().and_then(|d| d.get(KEY_SHARD)) {
        Some(body) => parse_shard(&format!("ConfigMap {name}"), body),
        None => Err(AssembleError::Missing {
            object: format!("ConfigMap {name}"),
            key: KEY_SHARD,
        }),
    };
    ShardSlot { count, shard }
}

/// The shards of a layout of `count`, in index order; `None` while one is missing or belongs
/// to another layout (the operator is mid-way through a change of count).
pub fn layout(count: u32, slots: &BTreeMap<u32, ShardSlot>) -> Option<Result<Vec<&Shard>, AssembleError>> {
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let slot = slots.get(&i)?;
        if slot.count != Some(count) {
            return None;
        }
        match &slot.shard {
            Ok(s) => out.push(s),
            Err(e) => return Some(Err(e.clone())),
        }
    }
    Some(Ok(out))
}

/// What a node's agent would install given its own object and the shard objects it can read:
/// `Ok(None)` while the shard set is incomplete. (Tests and tools; the agent keeps parsed shards.)
pub fn render_published(
    own: &Published,
    shards: &[ConfigMap],
    selectors: &dyn SelectorEngine,
) -> Result<Option<crate::bgp::Rendered>, String> {
    match contents_of(own).map_err(|e| e.to_string())? {
        Contents::Files(files) => Ok(Some(crate::bgp::Rendered {
            files,
            ..Default::default()
        })),
        Contents::Inputs(ni) => {
            let slots: BTreeMap<u32, ShardSlot> = shards
                .iter()
                .filter_map(|o| Some((shard_index(o.metadata.name.as_deref()?)?, shard_slot(o))))
                .collect();
            let Some(list) = layout(ni.shards, &slots) else {
                return Ok(None);
            };
            let list = list.map_err(|e| e.to_string())?;
            let (snap, opts) = assemble(&ni, list);
            crate::bgp::render(&snap, &ni.node, &opts, selectors)
                .map(Some)
                .map_err(|e| e.to_string())
        }
    }
}

/// Shard index of a shard object's name.
pub fn shard_index(name: &str) -> Option<u32> {
    name.strip_prefix("tortie-bgp-shard-")?.parse().ok()
}

/// Builds the kube objects for [`Inputs`] (tests and benches: what the controller writes).
pub fn objects(namespace: &str, inputs: &Inputs) -> (Vec<ConfigMap>, Vec<Published>) {
    let count = inputs.shards.len() as u32;
    let shards = inputs
        .shards
        .iter()
        .enumerate()
        .map(|(i, b)| shard_object(namespace, i as u32, count, b))
        .collect();
    let nodes = inputs
        .nodes
        .values()
        .map(|n| node_object(namespace, None, n))
        .collect();
    (shards, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_count_grows_by_powers_of_two_and_holds_steady() {
        assert_eq!(shard_count(0, None), 1);
        assert_eq!(shard_count(SHARD_TARGET_BYTES, None), 1);
        assert_eq!(shard_count(SHARD_TARGET_BYTES + 1, None), 2);
        assert_eq!(shard_count(7 * 1024 * 1024, None), 64);
        // Within the band the count stays.
        assert_eq!(shard_count(SHARD_TARGET_BYTES + 1, Some(1)), 1);
        assert_eq!(shard_count(SHARD_TARGET_BYTES * 2, Some(1)), 2);
        assert_eq!(shard_count(SHARD_TARGET_BYTES, Some(4)), 4);
        assert_eq!(shard_count(SHARD_TARGET_BYTES / 2, Some(8)), 1);
    }

    #[test]
    fn doubling_the_count_splits_shards() {
        for k in ["a", "node-17", "BGPPeer/x"] {
            let s4 = shard_of(k, 4);
            let s8 = shard_of(k, 8);
            assert_eq!(s8 & 3, s4, "{k}");
        }
    }

    #[test]
    fn shard_bodies_parse_back() {
        let f = NodeFacts {
            name: "n1".into(),
            ..Default::default()
        };
        let recs = vec![
            Record::node(&f),
            Record::node(&NodeFacts {
                name: "n2".into(),
                ..Default::default()
            }),
        ];
        let bodies = shard_bodies(&recs, 2);
        let mut names = Vec::new();
        for b in &bodies {
            let s = parse_shard("x", b).unwrap();
            names.extend(s.nodes.into_iter().map(|n| n.name));
        }
        names.sort();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(shard_bodies(&[], 1), ["{}"]);
    }
}
