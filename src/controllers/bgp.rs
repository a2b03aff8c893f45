//! BGP controller: publishes the BIRD renderer's inputs for the node agents, in the operator
//! namespace, as the contract in [`crate::node::published`] describes: shards shared by every node
//! and one small object per node. The agents assemble and render their own files with
//! [`crate::bgp::render`]; the operator renders nothing, so a pass costs serialization, not N
//! renders, and the published total grows linearly with the cluster.
//!
//! Reads Nodes, BGPConfigurations, BGPPeers, BGPFilters, IPPools, BlockAffinities, Services and
//! EndpointSlices cluster-wide, and Secrets, ConfigMaps in its namespace, all from the operator's
//! shared watch caches (`Stores`, `BgpStores` in `store.rs`). With [`Config::agent_role`] it also
//! keeps the node agents' Role to reading the published objects.
//!
//! A Node event whose published facts (selected labels, Calico annotations, presence) did not
//! change costs no pass. Every object is written only when its content hash differs from the
//! stored one (server-side apply): a Node label no selector reads costs no write, a new node
//! costs its own object and the shard it joins, and start-up writes each object once. Own
//! objects are owned by their Node (deleted with it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, ObjectReference, Secret};
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{Affinity, BgpConfig, BgpFilter, BgpPeer, CrdMode, Installation, Pool};
use crate::bgp::validate::Invalid;
use crate::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};

use super::conditions::{self, Cond};
use super::store::{BgpStores, Stores};

// The published-object contract between this controller and the node agents lives on the node
// side; re-exported here under its old paths.
use crate::node::published::{self as contract, Inputs};
pub use crate::node::published::{
    ANN_HASH, ANN_NODE, ANN_SHARDS, LABEL_CONFIG, LABEL_SHARD, MAX_PUBLISHED_BYTES, Published, files_of,
    object_name, shard_name,
};
/// Objects written at once in one pass.
const PUBLISH_CONCURRENCY: usize = 16;
const MANAGER: &str = "tortie-bgp";
/// Condition on the Installation's status: every BGP input reaching BIRD is valid.
pub const CONDITION_VALID: &str = "BGPConfigValid";
/// Event reason (on the bad object) and condition reason for a value left out of BIRD's files.
pub const REASON_INVALID: &str = "BGPInputInvalid";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("publishing {object:?}: {source}")]
    Publish { object: String, source: kube::Error },
}

/// Settings of the BGP controller.
#[derive(Clone, Debug)]
pub struct Config {
    pub render: RenderOptions,
    /// Least time between two passes, so a burst of changes costs one or two passes.
    pub debounce: Duration,
    /// Full mesh size above which an Event advises route reflectors.
    pub mesh_advisory_nodes: usize,
    /// Identity in Events (pod name).
    pub instance: String,
    /// The node agents' Role whose rule [`agent_role_rules`] keeps to the published objects.
    pub agent_role: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            render: RenderOptions::default(),
            debounce: Duration::from_millis(300),
            mesh_advisory_nodes: bgp::MESH_ADVISORY_NODES,
            instance: "tortie".into(),
            agent_role: None,
        }
    }
}

/// Rules of the node agents' Role: read (get, and list/watch with a `metadata.name` field
/// selector, which RBAC checks against `resourceNames`) the shards (ConfigMaps) and each node's
/// own object (ConfigMap, or Secret when it carries a password), and no other ConfigMap or Secret
/// of the namespace (user Secrets, Helm release data, tokens).
///
/// All agents share one ServiceAccount, and RBAC has no "the caller's own node" condition, so a
/// node can still read another node's own object: keeping a BGP password from nodes whose
/// peerings do not use it would need per-node credentials. No names: no rule (an empty
/// `resourceNames` would mean every name).
pub fn agent_role_rules(shards: &BTreeSet<String>, nodes: &BTreeSet<String>) -> serde_json::Value {
    let mut rules = Vec::new();
    let maps: BTreeSet<&String> = shards.iter().chain(nodes).collect();
    if !maps.is_empty() {
        rules.push(serde_json::json!({
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": maps,
            "verbs": ["get", "list", "watch"],
        }));
    }
    if !nodes.is_empty() {
        rules.push(serde_json::json!({
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": nodes,
            "verbs": ["get", "list", "watch"],
        }));
    }
    serde_json::Value::Array(rules)
}

/// Sets the agents' Role to [`agent_role_rules`] for `names`.
async fn scope_agent_role(
    client: &Client,
    namespace: &str,
    role: &str,
    names: &(BTreeSet<String>, BTreeSet<String>),
) -> Result<(), kube::Error> {
    let api: Api<Role> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "rules": agent_role_rules(&names.0, &names.1) });
    api.patch(role, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A change the controller hears of: a Node (checked against what was published of it), or
/// anything else (always a pass).
enum Trigger {
    Node(Arc<Node>),
    Other,
}

/// Runs the BGP controller until the task is dropped or aborted, on the operator's shared watch
/// caches (`stores`; the BGP kinds are started here when `stores.bgp` is not set yet).
pub async fn run(
    client: Client,
    mode: CrdMode,
    namespace: String,
    stores: Stores,
    config: Config,
) -> Result<(), Error> {
    let bgp = match &stores.bgp {
        Some(b) => b.clone(),
        None => BgpStores::start(&client, mode, &namespace),
    };
    let other = |s: futures::stream::BoxStream<'static, ()>| s.map(|_| Trigger::Other).boxed();
    // Subscribed before the first pass, so nothing after it is missed.
    let mut triggers = futures::stream::select_all(vec![
        stores.nodes.changes().map(Trigger::Node).boxed(),
        other(stores.affinities.changes().map(|_| ()).boxed()),
        other(bgp.configs.changes().map(|_| ()).boxed()),
        other(bgp.peers.changes().map(|_| ()).boxed()),
        other(bgp.filters.changes().map(|_| ()).boxed()),
        other(bgp.pools.changes().map(|_| ()).boxed()),
        other(bgp.secrets.changes().map(|_| ()).boxed()),
        other(bgp.services.changes().map(|_| ()).boxed()),
        other(bgp.slices.changes().map(|_| ()).boxed()),
        other(bgp.maps.changes().map(|_| ()).boxed()),
        other(bgp.secret_maps.changes().map(|_| ()).boxed()),
    ]);
    while !(stores.nodes.synced() && stores.affinities.synced() && bgp.synced()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reporter = Reporter {
        controller: "tortie-bgp".into(),
        instance: Some(config.instance.clone()),
    };
    let mut state = State::default();
    loop {
        let span = info_span!("bgp_pass");
        pass(
            &client, mode, &namespace, &config, &stores, &bgp, &reporter, &mut state,
        )
        .instrument(span)
        .await;
        let done = tokio::time::Instant::now();
        // Wait for a change that can alter what is published: a Node event whose published
        // facts (BGP annotations, selected labels, presence) are as published costs nothing.
        loop {
            let t = if state.agent_role_retry {
                // Nothing else may change for a long time: retry on a timer.
                tokio::select! {
                    t = triggers.next() => t,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => Some(Trigger::Other),
                }
            } else {
                triggers.next().await
            };
            match t {
                None => return Ok(()),
                Some(Trigger::Other) => break,
                Some(Trigger::Node(n)) => {
                    if state.node_changed(&stores, &n) {
                        break;
                    }
                }
            }
        }
        // At most one pass per `debounce`: a change after a quiet spell publishes at once (BGP
        // changes reach BIRD in milliseconds), changes inside a burst wait out the rest of the
        // window and cost one more pass together.
        tokio::time::sleep_until(done + config.debounce).await;
    }
}

#[derive(Default)]
struct State {
    /// Label keys BGPPeer selectors read, and each Node's facts, as last published.
    keys: BTreeSet<String>,
    facts: HashMap<String, contract::NodeFacts>,
    /// Object name -> content hash written, until the watch shows it (so a pass that runs
    /// before the watch caught up does not write the same content again).
    written: HashMap<String, String>,
    /// Shard count of the layout in use.
    count: Option<u32>,
    warned: BTreeSet<String>,
    /// Object names (shards, own objects) the agents' Role was last set to.
    agent_role_names: Option<(BTreeSet<String>, BTreeSet<String>)>,
    /// Setting the agents' Role or writing an object failed: the next pass comes on a timer too.
    agent_role_retry: bool,
    mesh_warned: bool,
    /// Invalid inputs already reported with an Event (forgotten once fixed, so a relapse is told).
    invalid: BTreeSet<String>,
    /// The [`CONDITION_VALID`] message last applied to the Installation, and when a missing
    /// Installation was last looked for.
    condition: Option<String>,
    condition_tried: Option<tokio::time::Instant>,
}

impl State {
    /// Whether a Node event can change what is published: its facts (name, selected labels,
    /// Calico annotations) or its presence differ from the last pass's.
    fn node_changed(&self, stores: &Stores, n: &Node) -> bool {
        let name = n.name_any();
        let live = stores.nodes.get(&name);
        match (live, self.facts.get(&name)) {
            (None, None) => false,
            (Some(live), Some(f)) => contract::node_facts(&live, &self.keys) != *f,
            _ => true,
        }
    }
}

fn unwrap<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
    v.into_iter().map(|a| (*a).clone()).collect()
}

/// The renderer's input but Nodes and BlockAffinities (read from the caches in place), and the
/// stored BGP objects that could not be decoded.
fn snapshot(w: &BgpStores) -> (Snapshot, Vec<Invalid>) {
    let mut snap = Snapshot::default();
    let values = |objs: Vec<Arc<DynamicObject>>| {
        objs.into_iter()
            .filter_map(|o| serde_json::to_value(&*o).ok())
            .collect::<Vec<_>>()
    };
    let (configs, mut undecodable) =
        bgp::validate::decode_each::<BgpConfig>("BGPConfiguration", values(w.configs.all()));
    let (peers, bad_peers) = bgp::validate::decode_each::<BgpPeer>("BGPPeer", values(w.peers.all()));
    undecodable.extend(bad_peers);
    let (filters, bad_filters) =
        bgp::validate::decode_each::<BgpFilter>("BGPFilter", values(w.filters.all()));
    undecodable.extend(bad_filters);
    snap.filters = filters;
    let (pools, bad_pools) = bgp::validate::decode_each::<Pool>("IPPool", values(w.pools.all()));
    undecodable.extend(bad_pools);
    snap.bgp_configs = configs;
    snap.peers = peers;
    snap.pools = pools;
    snap.services = unwrap(w.services.all());
    snap.endpoint_slices = unwrap(w.slices.all());
    // Only Secrets a password names are read into the snapshot.
    let wanted: BTreeSet<String> = snap.referenced_secrets().into_iter().collect();
    for s in w.secrets.all() {
        if wanted.contains(&s.name_any()) {
            snap.add_secret(&s);
        }
    }
    (snap, undecodable)
}

/// A published object as the watch shows it.
struct Stored {
    hash: Option<String>,
    shards: Option<u32>,
}

/// Published ConfigMaps and Secrets by name.
struct StoredAll {
    maps: HashMap<String, Stored>,
    secrets: HashMap<String, Stored>,
}

/// One object to write.
enum Write {
    Shard(ConfigMap),
    Own { obj: Published, other_exists: bool },
}

impl Write {
    fn name(&self) -> String {
        match self {
            Write::Shard(c) => c.metadata.name.clone().unwrap_or_default(),
            Write::Own { obj, .. } => obj.metadata().name.clone().unwrap_or_default(),
        }
    }
}

fn stored(w: &BgpStores) -> StoredAll {
    fn read(m: &ObjectMeta) -> (String, Stored) {
        let a = m.annotations.as_ref();
        (
            m.name.clone().unwrap_or_default(),
            Stored {
                hash: a.and_then(|a| a.get(ANN_HASH)).cloned(),
                shards: a.and_then(|a| a.get(ANN_SHARDS)).and_then(|c| c.parse().ok()),
            },
        )
    }
    StoredAll {
        maps: w.maps.all().iter().map(|c| read(&c.metadata)).collect(),
        secrets: w.secret_maps.all().iter().map(|s| read(&s.metadata)).collect(),
    }
}

// The pass's inputs are the controller's whole context; a struct for them would be used once.
#[allow(clippy::too_many_arguments)]
async fn pass(
    client: &Client,
    mode: CrdMode,
    namespace: &str,
    config: &Config,
    stores: &Stores,
    w: &BgpStores,
    reporter: &Reporter,
    state: &mut State,
) {
    let started = std::time::Instant::now();
    debug!("BGP pass started");
    let (mut snap, mut invalid) = snapshot(w);
    // Values BIRD would refuse are taken out first, so one bad object costs only itself.
    invalid.extend(bgp::validate::sanitize(&mut snap));
    report_invalid(client, mode, w, reporter, state, &invalid).await;
    let stored = stored(w);
    // After a restart the stored layout is kept (no rewrite of every shard).
    let current = state
        .count
        .or_else(|| stored.maps.get(&shard_name(0)).and_then(|s| s.shards));
    let selectors = CalicoSelectors::default();
    let node_objs = stores.nodes.all();
    let nodes: Vec<&Node> = node_objs.iter().map(|n| &**n).collect();
    let aff_objs = stores.affinities.all();
    let affinities: Vec<&Affinity> = aff_objs.iter().map(|a| &**a).collect();
    let inputs: Inputs =
        contract::publish_from(&snap, &nodes, &affinities, &config.render, &selectors, current);
    state.keys = contract::label_keys(&snap.peers);
    state.facts = nodes
        .iter()
        .map(|n| (n.name_any(), contract::node_facts(n, &state.keys)))
        .collect();
    let count = inputs.shards.len() as u32;
    let mut retry = false;
    // The agents may read exactly the shards and the own objects of current nodes; a new node's
    // name is added before its object is published, so its agent's watch is allowed when the
    // object appears.
    if let Some(role) = &config.agent_role {
        let names = (
            (0..count).map(shard_name).collect::<BTreeSet<_>>(),
            inputs
                .nodes
                .keys()
                .map(|n| object_name(n))
                .collect::<BTreeSet<_>>(),
        );
        if state.agent_role_names.as_ref() != Some(&names) {
            match scope_agent_role(client, namespace, role, &names).await {
                Ok(()) => {
                    info!(role = %role, nodes = names.1.len(), shards = count, "agent Role scoped to the published objects");
                    state.agent_role_names = Some(names);
                }
                Err(e) => {
                    warn!(role = %role, error = %e, "cannot scope the agents' Role; retrying in 10s");
                    retry = true;
                }
            }
        }
    }
    let mut notes: Vec<(ObjectReference, EventType, &'static str, String)> = Vec::new();
    let mut mesh_size = 0usize;
    let mesh_on = snap
        .bgp_configs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("default"))
        .is_none_or(|c| c.spec.node_to_node_mesh_enabled != Some(false));
    let mut uids: HashMap<String, Option<String>> = HashMap::new();
    for node in &nodes {
        let name = node.name_any();
        // What used to fail a node's rendering here is checked without rendering: its agent
        // renders, and reports on its Node too.
        match bgp::NodeBgp::from_node(node) {
            Ok(b) => {
                if !b.is_route_reflector() && (b.ipv4.is_some() || b.ipv6.is_some()) {
                    mesh_size += 1;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if state.warned.insert(format!("{name}: {msg}")) {
                    warn!(node = %name, error = %msg, "node cannot have a BIRD config");
                    notes.push((node.object_ref(&()), EventType::Warning, "BirdConfigInvalid", msg));
                }
            }
        }
        uids.insert(name, node.metadata.uid.clone());
    }
    // Forget what the watch has caught up with.
    let hash_of = |name: &str| {
        stored
            .maps
            .get(name)
            .or_else(|| stored.secrets.get(name))
            .and_then(|s| s.hash.clone())
    };
    state
        .written
        .retain(|name, hash| hash_of(name).as_ref() != Some(hash));
    let mut shard_writes = Vec::new();
    for (i, body) in inputs.shards.iter().enumerate() {
        let name = shard_name(i as u32);
        let hash = contract::text_hash(body);
        let same = state.written.get(&name) == Some(&hash)
            || stored
                .maps
                .get(&name)
                .is_some_and(|s| s.hash.as_ref() == Some(&hash) && s.shards == Some(count));
        if !same {
            let obj = contract::shard_object(namespace, i as u32, count, body);
            shard_writes.push((hash, Write::Shard(obj)));
        }
    }
    let mut own_writes = Vec::new();
    for (node, ni) in &inputs.nodes {
        let name = object_name(node);
        let json = ni.to_json();
        let hash = contract::text_hash(&json);
        let secret = !ni.passwords.is_empty();
        let (mine, other) = if secret {
            (&stored.secrets, &stored.maps)
        } else {
            (&stored.maps, &stored.secrets)
        };
        let other_exists = other.contains_key(&name);
        let same = state.written.get(&name) == Some(&hash)
            || (mine.get(&name).is_some_and(|s| s.hash.as_ref() == Some(&hash)) && !other_exists);
        if same {
            continue;
        }
        let uid = uids.get(node).cloned().flatten();
        let obj = contract::node_object(namespace, uid.as_deref(), ni);
        own_writes.push((hash, Write::Own { obj, other_exists }));
    }
    // A new layout: every shard first, then the own objects that point at it, so an agent never
    // waits on a shard that is not there; a shard beyond the count goes last.
    let relayout = current != Some(count);
    debug!(
        shards = shard_writes.len(),
        own = own_writes.len(),
        compute_ms = %format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "BGP pass computed; writing"
    );
    let batches = if relayout {
        vec![shard_writes, own_writes]
    } else {
        shard_writes.extend(own_writes);
        vec![shard_writes]
    };
    for batch in batches {
        let results: Vec<_> = futures::stream::iter(batch)
            .map(|(hash, write)| {
                let name = write.name();
                let span = info_span!("publish", object = %name);
                async move {
                    let r = publish(client, namespace, write).await;
                    (name, hash, r)
                }
                .instrument(span)
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
        for (name, hash, r) in results {
            match r {
                Ok(()) => {
                    info!(object = %name, hash = %&hash[..12], "published BGP inputs");
                    state.written.insert(name, hash);
                }
                Err(e) => {
                    warn!(object = %name, error = %e, "publish failed; retrying in 10s");
                    retry = true;
                }
            }
        }
    }
    if !retry {
        state.count = Some(count);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in stored.maps.keys() {
            if contract::shard_index(name).is_some_and(|i| i >= count) {
                if let Err(e) = delete_if_present(&cms, name).await {
                    warn!(object = %name, error = %e, "cannot delete a shard of the previous layout");
                    retry = true;
                }
                state.written.remove(name);
            }
        }
    }
    state.agent_role_retry = retry;
    for (reference, type_, reason, note) in notes {
        event(client, reporter, &reference, type_, reason, &note).await;
    }
    let live: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    state
        .warned
        .retain(|w| w.split_once(": ").is_none_or(|(n, _)| live.contains(n)));
    if mesh_on {
        let n = mesh_size;
        let too_big = n > config.mesh_advisory_nodes;
        if too_big && !state.mesh_warned {
            let msg = format!(
                "the node-to-node mesh has {n} nodes; above {} nodes use route reflectors (set nodeToNodeMeshEnabled: false and routeReflectorClusterID on a few nodes)",
                config.mesh_advisory_nodes
            );
            warn!("{msg}");
            let target = snap
                .bgp_configs
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some("default"));
            let reference = match target {
                Some(c) => ObjectReference {
                    api_version: c.types.as_ref().map(|t| t.api_version.clone()),
                    kind: Some("BGPConfiguration".into()),
                    name: c.metadata.name.clone(),
                    uid: c.metadata.uid.clone(),
                    ..Default::default()
                },
                None => nodes[0].object_ref(&()),
            };
            event(
                client,
                reporter,
                &reference,
                EventType::Warning,
                "MeshTooLarge",
                &msg,
            )
            .await;
        }
        state.mesh_warned = too_big;
    }
}

/// Reference of the object an [`Invalid`] is about, for its Event.
fn invalid_ref(mode: CrdMode, w: &BgpStores, e: &Invalid) -> ObjectReference {
    let p = e.place();
    let uid = match p.kind {
        "BGPPeer" => w
            .peers
            .all()
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(&p.name))
            .and_then(|o| o.metadata.uid.clone()),
        "BGPConfiguration" => w
            .configs
            .all()
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(&p.name))
            .and_then(|o| o.metadata.uid.clone()),
        "BGPFilter" => w
            .filters
            .all()
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(&p.name))
            .and_then(|o| o.metadata.uid.clone()),
        "IPPool" => w
            .pools
            .all()
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(&p.name))
            .and_then(|o| o.metadata.uid.clone()),
        _ => None,
    };
    ObjectReference {
        api_version: Some(mode.api_version()),
        kind: Some(p.kind.to_string()),
        name: Some(p.name.clone()),
        uid,
        ..Default::default()
    }
}

/// A Warning Event on each newly invalid object, and the Installation's [`CONDITION_VALID`].
async fn report_invalid(
    client: &Client,
    mode: CrdMode,
    w: &BgpStores,
    reporter: &Reporter,
    state: &mut State,
    invalid: &[Invalid],
) {
    let now: BTreeSet<String> = invalid.iter().map(invalid_note).collect();
    for (e, msg) in invalid.iter().map(|e| (e, invalid_note(e))) {
        if !state.invalid.contains(&msg) {
            warn!(object = %e.place(), "{msg}");
            event(
                client,
                reporter,
                &invalid_ref(mode, w, e),
                EventType::Warning,
                REASON_INVALID,
                &msg,
            )
            .await;
        }
    }
    state.invalid = now;
    let cond = valid_condition(&state.invalid);
    let message = cond.message.clone();
    if state.condition.as_deref() == Some(message.as_str()) {
        return;
    }
    // A missing Installation is looked for again at most once a minute.
    if state
        .condition_tried
        .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        && state.condition.is_none()
    {
        return;
    }
    state.condition_tried = Some(tokio::time::Instant::now());
    match apply_condition(client, cond).await {
        Ok(true) => state.condition = Some(message),
        Ok(false) => state.condition = None,
        Err(e) => warn!(error = %e, "cannot set the Installation's {CONDITION_VALID} condition"),
    }
}

/// The Event note of one invalid input.
fn invalid_note(e: &Invalid) -> String {
    format!("{e}; left out of the BIRD config")
}

/// [`CONDITION_VALID`] for the current invalid inputs (notes), cut to a readable length.
fn valid_condition(notes: &BTreeSet<String>) -> Cond {
    if notes.is_empty() {
        return Cond::new(
            CONDITION_VALID,
            true,
            "AllValid",
            "every BGPConfiguration, BGPPeer, BGPFilter and IPPool value that reaches BIRD is valid",
        );
    }
    let mut m = notes.iter().map(String::as_str).collect::<Vec<_>>().join("; ");
    if m.len() > 4000 {
        let mut cut = 4000;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push_str(" ...");
    }
    Cond::new(CONDITION_VALID, false, REASON_INVALID, m)
}

/// Server-side applies one condition to the `default` Installation's status, as its own field
/// manager (the Installation controller's conditions are left alone). False: no Installation.
async fn apply_condition(client: &Client, cond: Cond) -> Result<bool, kube::Error> {
    let api: Api<Installation> = Api::all(client.clone());
    let Some(inst) = api.get_opt("default").await? else {
        return Ok(false);
    };
    let old = inst.status.map(|s| s.conditions).unwrap_or_default();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let conds = conditions::merge(&old, &[cond], None, now);
    let patch = serde_json::json!({
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "status": {"conditions": conds},
    });
    match api
        .patch_status(
            "default",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Publishes one Event. Callers report each problem once, so every Event gets a Recorder of its
/// own: a shared one folds Events of one object and reason into a series that keeps only the
/// first note, and a second field's problem would not be told.
async fn event(
    client: &Client,
    reporter: &Reporter,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let recorder = Recorder::new(client.clone(), reporter.clone());
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Render".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        warn!(error = %e, "cannot record event");
    }
}

/// Server-side applies one object; for an own object whose kind changed (a password appeared
/// or went), the object of the other kind goes.
async fn publish(client: &Client, namespace: &str, write: Write) -> Result<(), Error> {
    let name = write.name();
    let err = |source| Error::Publish {
        object: name.clone(),
        source,
    };
    let pp = PatchParams::apply(MANAGER).force();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match write {
        Write::Shard(c) => {
            let v = ssa_value(&c, "ConfigMap");
            cms.patch(&name, &pp, &Patch::Apply(v)).await.map_err(err)?;
        }
        Write::Own {
            obj: Published::ConfigMap(c),
            other_exists,
        } => {
            let v = ssa_value(&c, "ConfigMap");
            cms.patch(&name, &pp, &Patch::Apply(v)).await.map_err(err)?;
            if other_exists {
                delete_if_present(&secrets, &name).await.map_err(err)?;
            }
        }
        Write::Own {
            obj: Published::Secret(s),
            other_exists,
        } => {
            let v = ssa_value(&s, "Secret");
            secrets.patch(&name, &pp, &Patch::Apply(v)).await.map_err(err)?;
            if other_exists {
                delete_if_present(&cms, &name).await.map_err(err)?;
            }
        }
    }
    Ok(())
}

fn ssa_value<T: serde::Serialize>(o: &T, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(o).expect("k8s objects serialize");
    v["apiVersion"] = "v1".into();
    v["kind"] = kind.into();
    v
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_role_names_exactly_the_published_objects() {
        let none = BTreeSet::new();
        assert_eq!(agent_role_rules(&none, &none), serde_json::json!([]));
        let shards: BTreeSet<String> = [shard_name(0), shard_name(1)].into();
        let names: BTreeSet<String> = ["tortie-bird-b", "tortie-bird-a"].map(String::from).into();
        let rules = agent_role_rules(&shards, &names);
        assert_eq!(rules.as_array().unwrap().len(), 2);
        let (maps, secrets) = (&rules[0], &rules[1]);
        assert_eq!(maps["resources"], serde_json::json!(["configmaps"]));
        assert_eq!(
            maps["resourceNames"],
            serde_json::json!([
                "tortie-bgp-shard-0",
                "tortie-bgp-shard-1",
                "tortie-bird-a",
                "tortie-bird-b"
            ])
        );
        // Shards are never Secrets: the Secret rule names the own objects only.
        assert_eq!(secrets["resources"], serde_json::json!(["secrets"]));
        assert_eq!(
            secrets["resourceNames"],
            serde_json::json!(["tortie-bird-a", "tortie-bird-b"])
        );
        for r in [maps, secrets] {
            assert_eq!(r["verbs"], serde_json::json!(["get", "list", "watch"]));
        }
        // The Role deserializes as a Kubernetes Role would.
        let role: Role =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "rules": rules})).unwrap();
        assert_eq!(role.rules.unwrap()[0].resource_names.as_ref().unwrap().len(), 4);
    }

    #[test]
    fn the_validity_condition_names_every_bad_field_and_stays_short() {
        let c = valid_condition(&BTreeSet::new());
        assert!(c.status && c.reason == "AllValid");
        let notes: BTreeSet<String> = (0..200)
            .map(|i| format!("BGPPeer \"p{i}\": spec.peerIP \"é{i}:0\" is bad; left out of the BIRD config"))
            .collect();
        let c = valid_condition(&notes);
        assert!(!c.status && c.reason == REASON_INVALID);
        assert!(
            c.message.len() <= 4004 && c.message.ends_with(" ..."),
            "{}",
            c.message.len()
        );
        assert!(c.message.starts_with("BGPPeer \"p0\": spec.peerIP"));
        let one: BTreeSet<String> = [notes.iter().next().unwrap().clone()].into();
        assert_eq!(valid_condition(&one).message, *notes.iter().next().unwrap());
    }

    #[test]
    fn long_node_names_still_give_valid_object_names() {
        let long = "a".repeat(253);
        let n = object_name(&long);
        assert!(n.len() <= 253, "{}", n.len());
        assert_ne!(object_name(&long), object_name(&"b".repeat(253)));
    }
}
