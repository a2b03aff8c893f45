//! Which BGP sessions a node has, and how each is configured (Calico's `updatePeersV1` and
//! `bgp_processor.go`, `spec/bgp.md` §4).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::api::BGPConfigurationSpec;
use crate::api::bgp::{BGPPassword, BGPPeerSpec};

use super::filter::{self, Direction};
use super::snapshot::{NodeBgp, Snapshot, parse_duration_secs};
use super::{DEFAULT_AS, RenderError, SelectorEngine};

/// Where a session comes from; also the protocol name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerKind {
    Mesh,
    Global,
    Node,
    /// A workload on this node, selected by a BGPPeer's `localWorkloadSelector`.
    LocalWorkload,
}

impl PeerKind {
    pub fn prefix(self) -> &'static str {
        match self {
            PeerKind::Mesh => "Mesh",
            PeerKind::Global => "Global",
            PeerKind::Node => "Node",
            PeerKind::LocalWorkload => "Local_Workload",
        }
    }
}

/// `route <peer>/32 via <gateway>;` for a peer with `reachableBy`.
pub type GatewayRoute = (IpAddr, IpAddr);

/// One `protocol bgp` block, fully decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdPeer {
    pub kind: PeerKind,
    pub name: String,
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub asn: u64,
    pub local_asn: Option<u64>,
    pub source_addr: Option<IpAddr>,
    /// 0: `ttl security off; multihop;`, n: `ttl security on; multihop n;`.
    pub ttl_security: u8,
    /// iBGP: remote AS equals the effective local AS.
    pub internal: bool,
    pub passive: bool,
    pub graceful_restart: Option<u64>,
    pub keepalive: Option<u64>,
    /// Set when this node reflects routes to the peer: `rr client; rr cluster id <id>;`.
    pub rr_client_of: Option<String>,
    pub password: Option<String>,
    pub next_hop_keep: bool,
    pub next_hop_self: bool,
    pub allow_local_as: Option<u32>,
    pub reachable_by: Option<IpAddr>,
    /// Calls to BGPFilter functions at the start of the import filter, in `spec.filters` order.
    pub import_calls: Vec<String>,
    /// Calls to BGPFilter functions in the export filter, before Calico's own export function.
    pub export_calls: Vec<String>,
}

/// A peering before it is turned into BIRD text (Calico's `backends.BGPPeer`).
#[derive(Clone, Debug, Default)]
struct PeerData {
    ip: Option<IpAddr>,
    port: u16,
    asn: u64,
    local_asn: Option<u64>,
    use_node_ip: bool,
    keep_next_hop: bool,
    next_hop_mode: Option<String>,
    calico_node: bool,
    ttl: u8,
    num_allow_local_as: u32,
    reachable_by: Option<IpAddr>,
    rr_cluster_id: Option<String>,
    password: Option<String>,
    restart_time: Option<u64>,
    keepalive: Option<u64>,
    /// The BGPPeer's `spec.filters`, and its name for warnings.
    filters: Vec<String>,
    origin: String,
    /// A session with a workload on this node (always passive: the workload dials).
    local_workload: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyKind {
    Global,
    Node,
}

/// The inputs of one node's rendering, resolved and validated.
pub struct Cluster<'a> {
    pub me: NodeBgp,
    /// Every usable node, by name (the rendering node included).
    pub nodes: BTreeMap<String, NodeBgp>,
    pub default: BGPConfigurationSpec,
    pub node_config: Option<BGPConfigurationSpec>,
    pub global_as: u64,
    pub mesh_enabled: bool,
    global_listen_port: Option<u16>,
    node_listen_ports: BTreeMap<String, u16>,
    pub snap: &'a Snapshot,
    selectors: &'a dyn SelectorEngine,
    pub warnings: std::cell::RefCell<Vec<String>>,
    keys: Vec<((KeyKind, IpAddr, u16), PeerData)>,
    /// The keys already emitted (first writer wins), for constant-time lookups.
    key_index: BTreeSet<(KeyKind, IpAddr, u16)>,
    pub has_password: std::cell::Cell<bool>,
    /// BGPFilters whose every rule can be written (all of them once sanitized), by name.
    pub filters: BTreeMap<String, &'a crate::api::BgpFilter>,
    /// BGPFilters that cannot be written: peerings naming one are left out.
    bad_filters: BTreeSet<String>,
}

impl<'a> Cluster<'a> {
    pub fn new(
        snap: &'a Snapshot,
        node: &str,
        selectors: &'a dyn SelectorEngine,
    ) -> Result<Cluster<'a>, RenderError> {
        let mut warnings = Vec::new();
        let mut nodes = BTreeMap::new();
        let mut me = None;
        for n in &snap.nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            match NodeBgp::from_node(n) {
                Ok(b) => {
                    if name == node {
                        me = Some(b.clone());
                    }
                    nodes.insert(name, b);
                }
                // The rendering node must be right; others are left out of its peerings.
                Err(e) if name == node => return Err(e),
                Err(e) => warnings.push(format!("{e}; node left out of BGP peerings")),
            }
        }
        let me = me.ok_or_else(|| RenderError::NodeNotFound {
            node: node.to_string(),
        })?;

        let mut default = BGPConfigurationSpec::default();
        let mut node_config = None;
        let mut node_listen_ports = BTreeMap::new();
        let mut cfgs: Vec<_> = snap.bgp_configs.iter().collect();
        cfgs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for c in cfgs {
            let name = c.metadata.name.as_deref().unwrap_or("");
            if name == "default" {
                default = c.spec.clone();
            } else if let Some(n) = name.strip_prefix("node.") {
                if let Some(p) = port(c.spec.listen_port) {
                    node_listen_ports.insert(n.to_string(), p);
                }
                if n == node {
                    node_config = Some(c.spec.clone());
                }
            } else {
                warnings.push(format!(
                    "BGPConfiguration {name:?}: metadata.name must be 'default' or 'node.<nodename>'; ignored"
                ));
            }
        }
        let mut filters = BTreeMap::new();
        let mut bad_filters = BTreeSet::new();
        for f in &snap.filters {
            let name = f.metadata.name.clone().unwrap_or_default();
            let errs: Vec<_> = [false, true]
                .into_iter()
                .filter_map(|v6| filter::functions(&[f], v6).err())
                .collect();
            match errs.first() {
                None => {
                    filters.insert(name, f);
                }
                Some((_, e)) => {
                    warnings.push(format!(
                        "BGPFilter {name:?}: {e}; left out, and so is every peering that names it"
                    ));
                    bad_filters.insert(name);
                }
            }
        }
        let mut c = Cluster {
            filters,
            bad_filters,
            me,
            nodes,
            global_as: as_num(default.as_number).unwrap_or(DEFAULT_AS),
            mesh_enabled: default.node_to_node_mesh_enabled.unwrap_or(true),
            global_listen_port: port(default.listen_port),
            default,
            node_config,
            node_listen_ports,
            snap,
            selectors,
            warnings: std::cell::RefCell::new(warnings),
            keys: Vec::new(),
            key_index: BTreeSet::new(),
            has_password: std::cell::Cell::new(false),
        };
        c.compute_keys();
        Ok(c)
    }

    pub fn warn(&self, w: String) {
        self.warnings.borrow_mut().push(w);
    }

    /// The rendering node's AS: its own, else the cluster's.
    pub fn node_as(&self) -> u64 {
        self.me.asn.unwrap_or(self.global_as)
    }

    fn listen_port_of(&self, node: &str) -> Option<u16> {
        self.node_listen_ports
            .get(node)
            .copied()
            .or(self.global_listen_port)
    }

    /// This node's `listen bgp port`: its node.<name> value, else the default one.
    pub fn my_listen_port(&self) -> Option<u16> {
        self.listen_port_of(&self.me.name)
    }

    fn nodes_matching(&self, expr: &str, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (name, n) in &self.nodes {
            match self.selectors.matches(expr, &n.labels) {
                Ok(true) => out.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.warn(format!("{what}: {e}; it selects no node"));
                    return Vec::new();
                }
            }
        }
        out
    }

    /// Looks a password up; a missing Secret or key means no password line, as in Calico, and is
    /// reported unless the reference is `optional`.
    pub fn password(&self, pw: Option<&BGPPassword>, what: &str) -> Option<String> {
        let r = pw?.secret_key_ref.as_ref()?;
        let Some(v) = self.snap.secrets.get(&r.name).and_then(|s| s.get(&r.key)) else {
            if r.optional == Some(true) {
                return None;
            }
            self.warn(format!(
                "{what}: Secret {:?} key {:?} not found; session configured without a password",
                r.name, r.key
            ));
            return None;
        };
        // BIRD 1.6 strings have no escapes: a quote or newline cannot be written.
        if v.contains('"') || v.contains('\n') || v.contains('\r') {
            self.warn(format!(
                "{what}: Secret {:?} key {:?} holds a quote or newline, which BIRD cannot read; session configured without a password",
                r.name, r.key
            ));
            return None;
        }
        self.has_password.set(true);
        Some(v.clone())
    }

    fn duration(&self, v: Option<&String>, what: &str) -> Option<u64> {
        let v = v?;
        // BIRD's numbers are 32-bit.
        match parse_duration_secs(v).map(f64::round) {
            Some(s) if s <= u32::MAX as f64 => Some(s as u64),
            Some(_) => {
                self.warn(format!("{what}: {v:?} is longer than 4294967295s; ignored"));
                None
            }
            None => {
                self.warn(format!("{what}: {v:?} is not a duration such as 120s; ignored"));
                None
            }
        }
    }

    /// Workloads on this node whose active BGPPeer is `peer` (Felix's choice: of the BGPPeers with
    /// a `localWorkloadSelector` that apply to this node and select the workload, the first by name).
    fn local_workloads_of(&self, peer: &str) -> Vec<&'a super::snapshot::LocalWorkload> {
        let mut candidates: Vec<_> = self
            .snap
            .peers
            .iter()
            .filter(|p| {
                p.spec
                    .local_workload_selector
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
            })
            .filter(
                |p| match (p.spec.node.as_deref(), p.spec.node_selector.as_deref()) {
                    (Some(n), _) if !n.is_empty() => n == self.me.name,
                    (_, Some(sel)) if !sel.is_empty() => {
                        self.selectors.matches(sel, &self.me.labels).unwrap_or(false)
                    }
                    _ => true,
                },
            )
            .collect();
        candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let snap: &'a Snapshot = self.snap;
        snap.workloads
            .iter()
            .filter(|w| w.node == self.me.name)
            .filter(|w| {
                let active = candidates.iter().find(|p| {
                    let sel = p.spec.local_workload_selector.as_deref().unwrap_or("");
                    match self.selectors.matches(sel, &w.labels) {
                        Ok(m) => m,
                        Err(e) => {
                            self.warn(format!(
                                "BGPPeer {:?}: spec.localWorkloadSelector: {e}; it selects no workload",
                                p.metadata.name.as_deref().unwrap_or("")
                            ));
                            false
                        }
                    }
                });
                active.and_then(|p| p.metadata.name.as_deref()) == Some(peer)
            })
            .collect()
    }

    /// Calico's `nodeAsBGPPeers`: peerings towards cluster nodes.
    fn node_as_peers(&self, node: &str, v4: bool, v6: bool, spec: &BGPPeerSpec) -> Vec<PeerData> {
        let Some(n) = self.nodes.get(node) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (want, ip) in [(v4, n.addr(false)), (v6, n.addr(true))] {
            let (true, Some(ip)) = (want, ip) else { continue };
            let (keep, mode) = next_hop_mode(spec);
            out.push(PeerData {
                ip: Some(ip),
                ttl: ttl(spec),
                // A gateway of the other family would be `route <v4>/32 via <v6>`, which BIRD refuses.
                reachable_by: spec
                    .reachable_by
                    .as_deref()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .filter(|gw| gw.is_ipv4() == ip.is_ipv4()),
                port: self.listen_port_of(node).unwrap_or(0),
                asn: n.asn.unwrap_or(self.global_as),
                rr_cluster_id: n.rr_cluster_id.clone(),
                keep_next_hop: keep,
                next_hop_mode: mode,
                ..Default::default()
            });
        }
        out
    }

    /// Calico's `setPeerConfigFieldsFromV3Resource`.
    fn set_common(&self, peers: &mut [PeerData], name: &str, spec: &BGPPeerSpec) {
        if peers.is_empty() {
            return;
        }
        let what = format!("BGPPeer {name:?}");
        let pw = self.password(spec.password.as_ref(), &format!("{what}: spec.password"));
        let restart = self.duration(
            spec.max_restart_time.as_ref(),
            &format!("{what}: spec.maxRestartTime"),
        );
        let keepalive = self.duration(
            spec.keepalive_time.as_ref(),
            &format!("{what}: spec.keepaliveTime"),
        );
        let use_node_ip = match spec.source_address.as_deref() {
            None | Some("") | Some("UseNodeIP") => true,
            Some("None") => false,
            Some(other) => {
                self.warn(format!(
                    "{what}: spec.sourceAddress {other:?} is not UseNodeIP or None; using UseNodeIP"
                ));
                true
            }
        };
        let filters = spec.filters.clone().unwrap_or_default();
        for p in peers {
            p.password = pw.clone();
            p.restart_time = restart;
            p.keepalive = keepalive;
            p.use_node_ip = use_node_ip;
            p.filters = filters.clone();
            p.origin = name.to_string();
        }
    }

    /// Nodes whose address, AS and listen port match a `peerIP` BGPPeer.
    fn nodes_with_ip_port_as(&self, ip: IpAddr, asn: Option<u64>, port: u16) -> Vec<String> {
        let want_as = asn.filter(|a| *a != 0).unwrap_or(self.global_as);
        self.nodes
            .iter()
            .filter(|(_, n)| n.addr(false) == Some(ip) || n.addr(true) == Some(ip))
            .filter(|(_, n)| n.asn.unwrap_or(self.global_as) == want_as)
            .filter(|(name, _)| port == 0 || self.listen_port_of(name).is_none_or(|p| p == port))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn emit(&mut self, key: (KeyKind, IpAddr, u16), peer: PeerData) {
        if self.key_index.contains(&key) {
            return;
        }
        if key.0 == KeyKind::Node && self.key_index.contains(&(KeyKind::Global, key.1, key.2)) {
            return;
        }
        self.key_index.insert(key);
        self.keys.push((key, peer));
    }

    /// The peerings that concern this node, as Calico's two forward passes and reverse pass
    /// would store them (first writer wins; BGPPeers taken in name order).
    fn compute_keys(&mut self) {
        let mut peers: Vec<_> = self.snap.peers.iter().collect();
        peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let me = self.me.name.clone();
        for global_pass in [true, false] {
            for obj in &peers {
                let spec = &obj.spec;
                let name = obj.metadata.name.clone().unwrap_or_default();
                let what = format!("BGPPeer {name:?}");
                let node_sel = spec.node_selector.as_deref().unwrap_or("");
                let node = spec.node.as_deref().unwrap_or("");
                if global_pass != (node_sel.is_empty() && node.is_empty()) {
                    continue;
                }
                if !global_pass {
                    let local = if !node_sel.is_empty() {
                        self.nodes_matching(node_sel, &format!("{what}: spec.nodeSelector"))
                    } else {
                        vec![node.to_string()]
                    };
                    if !local.contains(&me) {
                        continue;
                    }
                }
                let mut found = Vec::new();
                if spec
                    .local_workload_selector
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
                {
                    // Calico copies only the AS numbers and filters onto these sessions.
                    let Some(asn) = as_num(spec.as_number).filter(|a| *a != 0) else {
                        self.warn(format!(
                            "{what}: spec.asNumber is required with spec.localWorkloadSelector; ignored"
                        ));
                        continue;
                    };
                    for w in self.local_workloads_of(&name) {
                        for ip in [w.ipv4, w.ipv6].into_iter().flatten() {
                            found.push(PeerData {
                                ip: Some(ip),
                                asn,
                                local_asn: as_num(spec.local_as_number).filter(|a| *a != 0),
                                filters: spec.filters.clone().unwrap_or_default(),
                                origin: name.clone(),
                                local_workload: true,
                                ..Default::default()
                            });
                        }
                    }
                } else if let Some(sel) = spec.peer_selector.as_deref().filter(|s| !s.is_empty()) {
                    for n in self.nodes_matching(sel, &format!("{what}: spec.peerSelector")) {
                        found.extend(self.node_as_peers(&n, true, true, spec));
                    }
                    self.set_common(&mut found, &name, spec);
                } else {
                    let Some(p) = self.peer_ip_peering(&name, spec) else {
                        continue;
                    };
                    found.push(p);
                    self.set_common(&mut found, &name, spec);
                }
                let kind = if global_pass {
                    KeyKind::Global
                } else {
                    KeyKind::Node
                };
                for p in found {
                    let ip = p.ip.expect("peerings have an address");
                    self.emit((kind, ip, p.port), p);
                }
            }
        }
        // Reverse pass: the Calico nodes a BGPPeer points at peer back with its local side.
        for obj in &peers {
            let spec = &obj.spec;
            let name = obj.metadata.name.clone().unwrap_or_default();
            let what = format!("BGPPeer {name:?}");
            if spec.reverse_peering.as_deref() == Some("Manual")
                || spec
                    .local_workload_selector
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
            {
                continue;
            }
            let (local, v4, v6) = if let Some(sel) = spec.peer_selector.as_deref().filter(|s| !s.is_empty()) {
                (
                    self.nodes_matching(sel, &format!("{what}: spec.peerSelector")),
                    true,
                    true,
                )
            } else {
                let Some((ip, port)) = spec.peer_ip.as_deref().and_then(parse_ip_port) else {
                    continue;
                };
                (
                    self.nodes_with_ip_port_as(ip, as_num(spec.as_number), port),
                    ip.is_ipv4(),
                    ip.is_ipv6(),
                )
            };
            if !local.contains(&me) {
                continue;
            }
            let node_sel = spec.node_selector.as_deref().unwrap_or("");
            let remote = if !node_sel.is_empty() {
                self.nodes_matching(node_sel, &format!("{what}: spec.nodeSelector"))
            } else if let Some(n) = spec.node.as_deref().filter(|s| !s.is_empty()) {
                vec![n.to_string()]
            } else {
                self.nodes.keys().cloned().collect()
            };
            let mut found = Vec::new();
            for n in remote {
                found.extend(self.node_as_peers(&n, v4, v6, spec));
            }
            self.set_common(&mut found, &name, spec);
            for p in found {
                let ip = p.ip.expect("node peerings have an address");
                self.emit((KeyKind::Node, ip, p.port), p);
            }
        }
    }

    fn peer_ip_peering(&self, name: &str, spec: &BGPPeerSpec) -> Option<PeerData> {
        let what = format!("BGPPeer {name:?}");
        let raw = spec.peer_ip.as_deref().unwrap_or("");
        if raw.is_empty() {
            self.warn(format!(
                "{what}: spec.peerIP or spec.peerSelector is required; ignored"
            ));
            return None;
        }
        let Some((ip, mut port)) = parse_ip_port(raw) else {
            self.warn(format!(
                "{what}: spec.peerIP {raw:?} is not an IP address (optionally with :port); ignored"
            ));
            return None;
        };
        let Some(asn) = as_num(spec.as_number).filter(|a| *a != 0) else {
            self.warn(format!(
                "{what}: spec.asNumber is required with spec.peerIP; ignored"
            ));
            return None;
        };
        if port == 0 {
            // Towards a Calico node, dial the port that node listens on.
            if let Some(n) = self.nodes_with_ip_port_as(ip, Some(asn), 0).first() {
                port = self.listen_port_of(n).unwrap_or(0);
            }
        }
        let calico_node = self
            .nodes
            .values()
            .any(|n| n.addr(false) == Some(ip) || n.addr(true) == Some(ip));
        let reachable_by = match spec.reachable_by.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(r) => match r.parse::<IpAddr>() {
                Ok(gw) if gw.is_ipv4() == ip.is_ipv4() => Some(gw),
                Ok(_) => {
                    self.warn(format!(
                        "{what}: spec.reachableBy {r:?} is not of the same IP family as spec.peerIP; ignored"
                    ));
                    return None;
                }
                Err(_) => {
                    self.warn(format!(
                        "{what}: spec.reachableBy {r:?} is not an IP address; ignored"
                    ));
                    return None;
                }
            },
        };
        let (keep, mode) = next_hop_mode(spec);
        Some(PeerData {
            ip: Some(ip),
            port,
            asn,
            local_asn: as_num(spec.local_as_number).filter(|a| *a != 0),
            keep_next_hop: keep,
            next_hop_mode: mode,
            calico_node,
            ttl: ttl(spec),
            num_allow_local_as: spec.num_allowed_local_as_numbers.unwrap_or(0).clamp(0, 255) as u32,
            reachable_by,
            ..Default::default()
        })
    }

    /// Every peer of one family, sorted by protocol name (G3).
    pub fn bird_peers(&self, v6: bool) -> Vec<BirdPeer> {
        let Some(my_ip) = self.me.addr(v6) else {
            return Vec::new();
        };
        let mut out = self.mesh_peers(v6, my_ip);
        for ((kind, ip, _), p) in &self.keys {
            if ip.is_ipv6() != v6 || *ip == my_ip {
                continue;
            }
            let kind = match kind {
                _ if p.local_workload => PeerKind::LocalWorkload,
                KeyKind::Global => PeerKind::Global,
                KeyKind::Node => PeerKind::Node,
            };
            // Without its filter the session would take and send what the user meant to filter.
            if p.filters.iter().any(|f| self.bad_filters.contains(f)) {
                continue;
            }
            out.push(self.build_peer(kind, p, my_ip));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn mesh_peers(&self, v6: bool, my_ip: IpAddr) -> Vec<BirdPeer> {
        if !self.mesh_enabled || self.me.is_route_reflector() {
            return Vec::new();
        }
        let password = self.password(
            self.default.node_mesh_password.as_ref(),
            "BGPConfiguration \"default\": spec.nodeMeshPassword",
        );
        let restart = self.duration(
            self.default.node_mesh_max_restart_time.as_ref(),
            "BGPConfiguration \"default\": spec.nodeMeshMaxRestartTime",
        );
        let my_as = self.node_as();
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, n) in &self.nodes {
            let Some(ip) = n.addr(v6) else { continue };
            if ip == my_ip || n.is_route_reflector() || !seen.insert(ip) {
                continue;
            }
            let asn = n.asn.unwrap_or(my_as);
            let port = self.listen_port_of(name);
            out.push(BirdPeer {
                kind: PeerKind::Mesh,
                name: peer_name(PeerKind::Mesh, ip, None),
                ip,
                port,
                asn,
                local_asn: None,
                source_addr: Some(my_ip),
                ttl_security: 0,
                internal: asn == my_as,
                passive: ip.to_string() > my_ip.to_string(),
                graceful_restart: restart,
                keepalive: None,
                rr_client_of: None,
                password: password.clone(),
                next_hop_keep: false,
                next_hop_self: false,
                allow_local_as: None,
                reachable_by: None,
                import_calls: Vec::new(),
                export_calls: Vec::new(),
            });
        }
        out
    }

    /// The calls a peering makes to the BGPFilters its BGPPeer names, for one direction. A name
    /// with no BGPFilter is left out, as in Calico, and reported.
    fn filter_calls(&self, p: &PeerData, dir: Direction, v6: bool, same_as: bool) -> Vec<String> {
        let mut out = Vec::new();
        for (i, name) in p.filters.iter().enumerate() {
            match self.filters.get(name) {
                Some(f) => out.extend(filter::call(f, dir, v6, same_as)),
                None if self.bad_filters.contains(name) => {}
                None => self.warn(format!(
                    "BGPPeer {:?}: spec.filters[{i}] names BGPFilter {name:?}, which does not exist; the peering is configured without it",
                    p.origin
                )),
            }
        }
        out
    }

    /// Calico's `buildPeerFromData`.
    fn build_peer(&self, kind: PeerKind, p: &PeerData, my_ip: IpAddr) -> BirdPeer {
        let ip = p.ip.expect("peerings have an address");
        let port = (p.port != 0).then_some(p.port);
        let effective_as = p.local_asn.unwrap_or(self.node_as());
        let internal = p.asn == effective_as;
        let rr_client_of = match &self.me.rr_cluster_id {
            Some(mine) if internal && p.rr_cluster_id.as_ref() != Some(mine) => Some(mine.clone()),
            _ => None,
        };
        BirdPeer {
            kind,
            name: peer_name(kind, ip, port),
            ip,
            port,
            asn: p.asn,
            local_asn: p.local_asn,
            source_addr: p.use_node_ip.then_some(my_ip),
            ttl_security: p.ttl,
            internal,
            // Towards another Calico node only one end dials, as with the mesh; a local workload
            // always dials.
            passive: p.local_workload
                || (kind == PeerKind::Global && p.calico_node && ip.to_string() > my_ip.to_string()),
            graceful_restart: p.restart_time,
            keepalive: p.keepalive,
            rr_client_of,
            password: p.password.clone(),
            next_hop_keep: p.next_hop_mode.as_deref() == Some("Keep") || (p.keep_next_hop && !internal),
            next_hop_self: p.next_hop_mode.as_deref() == Some("Self"),
            allow_local_as: (p.num_allow_local_as > 0).then_some(p.num_allow_local_as),
            reachable_by: p.reachable_by,
            import_calls: self.filter_calls(p, Direction::Import, ip.is_ipv6(), internal),
            export_calls: self.filter_calls(p, Direction::Export, ip.is_ipv6(), internal),
        }
    }

    /// Static routes towards peers that are only reachable through a gateway, by section.
    pub fn reachable_routes(&self, v6: bool) -> (Vec<GatewayRoute>, Vec<GatewayRoute>) {
        let mut global = Vec::new();
        let mut node = Vec::new();
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_by_key(|((k, ip, port), _)| (*k, key_text(*ip, *port)));
        for ((kind, ip, _), p) in keys {
            if ip.is_ipv6() != v6 {
                continue;
            }
            if let Some(gw) = p.reachable_by {
                match kind {
                    KeyKind::Global => global.push((*ip, gw)),
                    KeyKind::Node => node.push((*ip, gw)),
                }
            }
        }
        (global, node)
    }

    /// Number of nodes that take part in the full mesh (0 when it is off).
    pub fn mesh_size(&self) -> Option<usize> {
        self.mesh_enabled.then(|| {
            self.nodes
                .values()
                .filter(|n| !n.is_route_reflector() && (n.ipv4.is_some() || n.ipv6.is_some()))
                .count()
        })
    }
}

/// An AS number as BIRD takes it (out-of-range values were left out by `validate::sanitize`).
fn as_num(v: Option<i64>) -> Option<u64> {
    v.and_then(|a| u32::try_from(a).ok()).map(u64::from)
}

/// A TCP port BIRD accepts: 1 to 65535.
fn port(v: Option<i64>) -> Option<u16> {
    v.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

fn key_text(ip: IpAddr, port: u16) -> String {
    if port == 0 {
        ip.to_string()
    } else {
        format!("{ip}-{port}")
    }
}

fn ttl(spec: &BGPPeerSpec) -> u8 {
    spec.ttl_security.unwrap_or(0).clamp(0, 255) as u8
}

fn next_hop_mode(spec: &BGPPeerSpec) -> (bool, Option<String>) {
    match spec.next_hop_mode.as_deref() {
        Some(m) if !m.is_empty() => (false, Some(m.to_string())),
        _ => (spec.keep_original_next_hop.unwrap_or(false), None),
    }
}

/// `Mesh_10_0_0_2`, `Global_2001_db8__1_port_1179`.
pub fn peer_name(kind: PeerKind, ip: IpAddr, port: Option<u16>) -> String {
    let ip = ip.to_string().replace(['.', ':'], "_");
    match port {
        Some(p) => format!("{}_{ip}_port_{p}", kind.prefix()),
        None => format!("{}_{ip}", kind.prefix()),
    }
}

/// `1.2.3.4`, `1.2.3.4:178`, `[fd00::1]:178`, `fd00::1` -> (ip, port or 0).
pub fn parse_ip_port(s: &str) -> Option<(IpAddr, u16)> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, 0));
    }
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    if ip.is_ipv6() && !s.starts_with('[') {
        return None;
    }
    Some((ip, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ip_forms() {
        assert_eq!(
            parse_ip_port("192.168.1.10"),
            Some(("192.168.1.10".parse().unwrap(), 0))
        );
        assert_eq!(
            parse_ip_port("192.168.1.10:178"),
            Some(("192.168.1.10".parse().unwrap(), 178))
        );
        assert_eq!(
            parse_ip_port("[ac13::57]:50"),
            Some(("ac13::57".parse().unwrap(), 50))
        );
        assert_eq!(parse_ip_port("ac13::57"), Some(("ac13::57".parse().unwrap(), 0)));
        assert_eq!(parse_ip_port("nonsense"), None);
        assert_eq!(parse_ip_port("1.2.3.4:99999"), None);
    }

    #[test]
    fn names() {
        let v6: IpAddr = "ac13::57".parse().unwrap();
        assert_eq!(peer_name(PeerKind::Node, v6, Some(50)), "Node_ac13__57_port_50");
        let v4: IpAddr = "10.192.0.3".parse().unwrap();
        assert_eq!(peer_name(PeerKind::Mesh, v4, None), "Mesh_10_192_0_3");
    }

    #[test]
    fn a_local_workload_peers_with_the_first_bgppeer_that_selects_it() {
        let mut snap = Snapshot::default();
        let pod = |name: &str, node: &str, app: &str, ip: &str, host: bool| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns1, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, hostNetwork: {host}, containers: []}}\nstatus: {{phase: Running, podIPs: [{{ip: '{ip}'}}]}}\n---\n"
            )
        };
        let peer = |name: &str, extra: &str| {
            format!(
                "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec: {{localWorkloadSelector: \"app == 'bird'\", asNumber: 65001{extra}}}\n---\n"
            )
        };
        let text = [
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {rack: a}, annotations: {projectcalico.org/IPv4Address: 10.0.0.1/24}}\n---\n".to_string(),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n2, annotations: {projectcalico.org/IPv4Address: 10.0.0.2/24}}\n---\n".to_string(),
            pod("w1", "n1", "bird", "192.168.0.1", false),
            pod("w2", "n2", "bird", "192.168.0.2", false),
            pod("hostnet", "n1", "bird", "10.0.0.1", true),
            pod("other", "n1", "web", "192.168.0.3", false),
            // Applies to n2 only, and sorts first: n1's workload goes to the next one by name.
            peer("a-elsewhere", ", node: n2"),
            peer("b-rack-a", ", nodeSelector: \"rack == 'a'\""),
            peer("c-everywhere", ""),
        ]
        .concat();
        snap.add_manifests("t", &text).unwrap();
        assert_eq!(snap.workloads.len(), 3, "the host-network pod is no workload");
        let sel = crate::bgp::CalicoSelectors::default();
        let c = Cluster::new(&snap, "n1", &sel).unwrap();
        let peers = c.bird_peers(false);
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Local_Workload_192_168_0_1", "Mesh_10_0_0_2"]);
        let p = &peers[0];
        assert!(p.passive && p.source_addr.is_none() && p.asn == 65001 && !p.internal);
        assert_eq!(c.local_workloads_of("b-rack-a").len(), 1);
        assert!(c.local_workloads_of("c-everywhere").is_empty());
        let c2 = Cluster::new(&snap, "n2", &sel).unwrap();
        let names: Vec<String> = c2.bird_peers(false).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["Local_Workload_192_168_0_2", "Mesh_10_0_0_1"]);
        assert_eq!(c2.local_workloads_of("a-elsewhere").len(), 1);
    }
}
