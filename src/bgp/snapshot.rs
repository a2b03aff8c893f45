//! The renderer's input: every object that can change a node's BIRD files, as read from the
//! apiserver (controller) or from a folder of manifests (`tortie render`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use crate::api::{Affinity, BgpConfig, BgpFilter, BgpPeer, Pool};

use super::RenderError;

/// Calico's BGP annotations on a Kubernetes Node (Kubernetes-datastore mode).
pub const ANN_IPV4: &str = "projectcalico.org/IPv4Address";
pub const ANN_IPV6: &str = "projectcalico.org/IPv6Address";
pub const ANN_ASN: &str = "projectcalico.org/ASNumber";
pub const ANN_RR_CLUSTER_ID: &str = "projectcalico.org/RouteReflectorClusterID";
pub const ANN_WG_V4: &str = "projectcalico.org/IPv4WireguardInterfaceAddr";
pub const ANN_WG_V6: &str = "projectcalico.org/IPv6WireguardInterfaceAddr";
/// Nodes with this label do not advertise service ranges (Kubernetes' own convention).
pub const LABEL_EXCLUDE_LB: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Everything the renderer reads. Order inside the vectors does not matter: the renderer sorts.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub bgp_configs: Vec<BgpConfig>,
    pub peers: Vec<BgpPeer>,
    /// BGPFilters: every one with rules becomes BIRD functions; peers call those they name.
    pub filters: Vec<BgpFilter>,
    pub pools: Vec<Pool>,
    /// Block affinities of any node; the renderer keeps the rendering node's host affinities.
    pub affinities: Vec<Affinity>,
    /// Secret name -> key -> value, only for Secrets referenced as BGP passwords.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Services and their EndpointSlices, for per-service route advertisement.
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Pods, for BGPPeers with `localWorkloadSelector` (sessions with workloads on the node).
    pub workloads: Vec<LocalWorkload>,
    /// `workloads` holds every pod of the cluster (true for manifests: they are the whole
    /// picture). When false, BGPPeers with `localWorkloadSelector` are reported as unsupported
    /// by [`super::validate::sanitize`] instead of rendering no session without a word.
    pub workloads_known: bool,
    /// Per-service routes already worked out from Services and EndpointSlices (a node agent's
    /// snapshot, assembled from published inputs, has these instead of the objects).
    pub service_routes: Option<super::services::ServiceRoutes>,
    /// (kind, name) of every object read from manifests, to refuse duplicates.
    loaded: std::collections::BTreeSet<(String, String)>,
}

impl Snapshot {
    /// Secret names referenced by BGP passwords (what a controller must read, nothing more).
    pub fn referenced_secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .bgp_configs
            .iter()
            .filter_map(|c| c.spec.node_mesh_password.as_ref())
            .chain(self.peers.iter().filter_map(|p| p.spec.password.as_ref()))
            .filter_map(|p| p.secret_key_ref.as_ref())
            .map(|r| r.name.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Adds a Kubernetes Secret's decoded values (`data` wins over `stringData`, as the apiserver
    /// merges them).
    pub fn add_secret(&mut self, secret: &Secret) {
        let Some(name) = secret.metadata.name.clone() else {
            return;
        };
        let entry = self.secrets.entry(name).or_default();
        for (k, v) in secret.string_data.iter().flatten() {
            entry.insert(k.clone(), v.clone());
        }
        for (k, v) in secret.data.iter().flatten() {
            entry.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
        }
    }

    /// Builds a snapshot from YAML manifests (several documents per text, `List` objects
    /// allowed). Kinds that do not affect BGP are ignored; `source` names the text in errors.
    pub fn add_manifests(&mut self, source: &str, text: &str) -> Result<(), RenderError> {
        self.workloads_known = true;
        // A cluster dump holds thousands of documents; the parser's default budget stops at 1,024.
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_documents: 10_000_000,
                max_events: 500_000_000,
            },
        };
        let docs: Vec<Value> =
            serde_saphyr::from_multiple_with_options(text, options).map_err(|e| RenderError::Manifest {
                origin: source.to_string(),
                message: e.to_string(),
            })?;
        for doc in docs {
            self.add_value(source, doc)?;
        }
        Ok(())
    }

    fn add_value(&mut self, source: &str, mut doc: Value) -> Result<(), RenderError> {
        if doc.is_null() {
            return Ok(());
        }
        // `spec:` with nothing under it is YAML null; Calico reads it as an empty spec.
        if let Some(spec) = doc.get_mut("spec").filter(|s| s.is_null()) {
            *spec = Value::Object(Default::default());
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let calico = api_version.starts_with("crd.projectcalico.org/")
            || api_version.starts_with("projectcalico.org/");
        let bad = |e: serde_json::Error| RenderError::Manifest {
            origin: source.to_string(),
            message: format!("{kind} {name:?}: {e}"),
        };
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let key = (kind.clone(), format!("{ns}/{name}"));
        let tracked = matches!(
            kind.as_str(),
            "Node"
                | "Secret"
                | "BGPConfiguration"
                | "BGPPeer"
                | "BGPFilter"
                | "IPPool"
                | "BlockAffinity"
                | "Service"
                | "EndpointSlice"
                | "Pod"
        );
        if tracked && !self.loaded.insert(key) {
            return Err(RenderError::Manifest {
                origin: source.to_string(),
                message: format!("{kind} {name:?} appears more than once in the manifests"),
            });
        }
        match (kind.as_str(), calico) {
            ("List", _) => {
                if let Some(Value::Array(items)) = doc.get("items") {
                    for item in items.clone() {
                        self.add_value(source, item)?;
                    }
                }
            }
            ("Node", false) => self.nodes.push(serde_json::from_value(doc).map_err(bad)?),
            // calicoctl's Node form: spec.bgp fields become the annotations Calico would write.
            ("Node", true) => self.nodes.push(calico_node(&doc).map_err(bad)?),
            ("Secret", false) => {
                let s: Secret = serde_json::from_value(doc).map_err(bad)?;
                self.add_secret(&s);
            }
            ("Service", false) if api_version == "v1" => {
                self.services.push(serde_json::from_value(doc).map_err(bad)?)
            }
            ("Pod", false) if api_version == "v1" => {
                let pod: Pod = serde_json::from_value(doc).map_err(bad)?;
                self.workloads.extend(LocalWorkload::from_pod(&pod));
            }
            ("EndpointSlice", false) => self
                .endpoint_slices
                .push(serde_json::from_value(doc).map_err(bad)?),
            ("BGPConfiguration", true) => self.bgp_configs.push(serde_json::from_value(doc).map_err(bad)?),
            ("BGPPeer", true) => self.peers.push(serde_json::from_value(doc).map_err(bad)?),
            ("BGPFilter", true) => self.filters.push(serde_json::from_value(doc).map_err(bad)?),
            ("IPPool", true) => self.pools.push(serde_json::from_value(doc).map_err(bad)?),
            ("BlockAffinity", true) => self.affinities.push(serde_json::from_value(doc).map_err(bad)?),
            _ => {}
        }
        Ok(())
    }
}

/// A pod as a possible BGP peer of its node (what Felix's workload endpoint tells Calico): its
/// labels plus Calico's `projectcalico.org/namespace`, `/orchestrator` and `/serviceaccount`
/// labels, and its first address of each family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalWorkload {
    pub node: String,
    /// `namespace/name`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
}

impl LocalWorkload {
    /// `None` for a pod that cannot peer: host network, not scheduled, finished, no address yet.
    pub fn from_pod(pod: &Pod) -> Option<LocalWorkload> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        let ipv4 = ips.iter().copied().find(IpAddr::is_ipv4);
        let ipv6 = ips.iter().copied().find(IpAddr::is_ipv6);
        if ipv4.is_none() && ipv6.is_none() {
            return None;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        labels.insert("projectcalico.org/namespace".into(), ns.clone());
        labels.insert("projectcalico.org/orchestrator".into(), "k8s".into());
        if let Some(sa) = spec.service_account_name.as_ref().filter(|s| !s.is_empty()) {
            labels.insert("projectcalico.org/serviceaccount".into(), sa.clone());
        }
        Some(LocalWorkload {
            node: spec.node_name.clone()?,
            name: format!("{ns}/{}", pod.metadata.name.clone().unwrap_or_default()),
            labels,
            ipv4,
            ipv6,
        })
    }
}

fn calico_node(doc: &Value) -> Result<Node, serde_json::Error> {
    let mut meta = doc.get("metadata").cloned().unwrap_or_default();
    // YAML turns `routeReflector: true` into a boolean; Kubernetes labels are strings.
    if let Some(Value::Object(labels)) = meta.get_mut("labels") {
        for v in labels.values_mut() {
            if !v.is_string() {
                *v = Value::String(v.to_string());
            }
        }
    }
    let mut node: Node = serde_json::from_value(serde_json::json!({ "metadata": meta }))?;
    let ann = node.metadata.annotations.get_or_insert_with(Default::default);
    let fields = [
        ("/spec/bgp/ipv4Address", ANN_IPV4),
        ("/spec/bgp/ipv6Address", ANN_IPV6),
        ("/spec/bgp/asNumber", ANN_ASN),
        ("/spec/bgp/routeReflectorClusterID", ANN_RR_CLUSTER_ID),
        ("/spec/wireguard/interfaceIPv4Address", ANN_WG_V4),
        ("/spec/wireguard/interfaceIPv6Address", ANN_WG_V6),
    ];
    for (ptr, key) in fields {
        match doc.pointer(ptr) {
            Some(Value::String(s)) => {
                ann.insert(key.to_string(), s.clone());
            }
            Some(Value::Number(n)) => {
                ann.insert(key.to_string(), n.to_string());
            }
            _ => {}
        }
    }
    Ok(node)
}

/// A node's BGP identity, from its Calico annotations and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBgp {
    pub name: String,
    /// Address with the prefix of its subnet (`10.0.0.1/24`); a bare IP counts as a host route.
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    pub asn: Option<u64>,
    pub rr_cluster_id: Option<String>,
    pub wireguard_v4: Option<IpAddr>,
    pub wireguard_v6: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

impl NodeBgp {
    /// Reads a Node's annotations. Errors name the node and the annotation.
    pub fn from_node(node: &Node) -> Result<NodeBgp, RenderError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ann = node.metadata.annotations.clone().unwrap_or_default();
        let get = |k: &str| ann.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let bad = |field: &str, value: &str, want: &str| RenderError::Node {
            node: name.clone(),
            field: format!("metadata.annotations[{field}]"),
            message: format!("{value:?} is not {want}"),
        };
        let addr = |field: &str, v6: bool| -> Result<Option<IpNet>, RenderError> {
            let Some(v) = get(field) else { return Ok(None) };
            let want = if v6 { "an IPv6 address" } else { "an IPv4 address" };
            let net = parse_ip_or_cidr(v).ok_or_else(|| bad(field, v, want))?;
            if net.addr().is_ipv6() != v6 {
                return Err(bad(field, v, want));
            }
            Ok(Some(net))
        };
        let ipv4 = addr(ANN_IPV4, false)?;
        let ipv6 = addr(ANN_IPV6, true)?;
        let asn = match get(ANN_ASN) {
            None => None,
            // AS 0 is reserved (RFC 7607) and BIRD refuses it as a local or remote AS.
            Some(v) => match parse_asn(v) {
                None => return Err(bad(ANN_ASN, v, "an AS number")),
                Some(0) => return Err(bad(ANN_ASN, v, "an AS number other than 0 (reserved)")),
                n => n,
            },
        };
        let wg = |field: &str| -> Result<Option<IpAddr>, RenderError> {
            match get(field) {
                None => Ok(None),
                Some(v) => parse_ip_or_cidr(v)
                    .map(|n| Some(n.addr()))
                    .ok_or_else(|| bad(field, v, "an IP address")),
            }
        };
        Ok(NodeBgp {
            ipv4,
            ipv6,
            asn,
            // Written verbatim into `rr cluster id ...;`: only an IPv4 address (Calico's rule).
            rr_cluster_id: match get(ANN_RR_CLUSTER_ID) {
                None => None,
                Some(v) if v.parse::<std::net::Ipv4Addr>().is_ok() => Some(v.to_string()),
                Some(v) => return Err(bad(ANN_RR_CLUSTER_ID, v, "an IPv4 address")),
            },
            wireguard_v4: wg(ANN_WG_V4)?,
            wireguard_v6: wg(ANN_WG_V6)?,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            name,
        })
    }

    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 { self.ipv6 } else { self.ipv4 }.map(|n| n.addr())
    }

    pub fn wireguard(&self, v6: bool) -> Option<IpAddr> {
        if v6 { self.wireguard_v6 } else { self.wireguard_v4 }
    }

    pub fn is_route_reflector(&self) -> bool {
        self.rr_cluster_id.is_some()
    }
}

/// `10.0.0.1`, `10.0.0.1/24`, `fd00::1/64`: the address keeps its host bits.
pub fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// A 2- or 4-byte AS number, plain (`64512`) or asdot (`1.10`).
pub fn parse_asn(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some((hi, lo)) = s.split_once('.') {
        let hi: u64 = hi.parse().ok()?;
        let lo: u64 = lo.parse().ok()?;
        return (hi <= 0xffff && lo <= 0xffff).then_some(hi << 16 | lo);
    }
    s.parse::<u64>().ok().filter(|n| *n <= u32::MAX as u64)
}

/// `aa:nn` or `aa:nn:mm` in shape (Calico's community regexes); the numbers may be out of range.
pub fn looks_like_community_value(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A standard (16:16 bits) or large (32:32:32 bits) community value.
pub fn is_community_value(v: &str) -> bool {
    if !looks_like_community_value(v) {
        return false;
    }
    let parts: Vec<&str> = v.split(':').collect();
    let max = if parts.len() == 2 { 0xffff } else { u32::MAX as u64 };
    parts.iter().all(|p| p.parse::<u64>().is_ok_and(|n| n <= max))
}

/// Go's `time.ParseDuration` subset Calico accepts (`90s`, `1m30s`, `1.5h`, `500ms`), in seconds.
pub fn parse_duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go() {
        assert_eq!(parse_duration_secs("120s"), Some(120.0));
        assert_eq!(parse_duration_secs("1m30s"), Some(90.0));
        assert_eq!(parse_duration_secs("1.5h"), Some(5400.0));
        assert_eq!(parse_duration_secs("500ms"), Some(0.5));
        assert_eq!(parse_duration_secs("0"), Some(0.0));
        assert_eq!(parse_duration_secs("10"), None);
        assert_eq!(parse_duration_secs("s"), None);
        assert_eq!(parse_duration_secs(""), None);
    }

    #[test]
    fn as_numbers() {
        assert_eq!(parse_asn("64512"), Some(64512));
        assert_eq!(parse_asn("1.10"), Some(65546));
        assert_eq!(parse_asn("4294967296"), None);
        assert_eq!(parse_asn("x"), None);
    }

    #[test]
    fn manifests_load_every_kind_and_lists() {
        let text = r#"
apiVersion: v1
kind: Node
metadata:
  name: n1
  annotations:
    projectcalico.org/IPv4Address: 10.0.0.1/24
---
apiVersion: v1
kind: List
items:
- apiVersion: crd.projectcalico.org/v1
  kind: BGPPeer
  metadata: {name: p}
  spec: {peerIP: "192.168.1.10", asNumber: 61113}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {pw: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;
        let mut s = Snapshot::default();
        s.add_manifests("t.yaml", text).unwrap();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.secrets["s"]["pw"], "hunter2");
        let n = NodeBgp::from_node(&s.nodes[0]).unwrap();
        assert_eq!(n.addr(false), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn thousands_of_documents_load() {
        let text: String = (0..3000)
            .map(|i| format!("apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {{name: p{i}}}\nspec: {{peerIP: 192.0.2.1, asNumber: 65000}}\n---\n"))
            .collect();
        let mut s = Snapshot::default();
        s.add_manifests("big.yaml", &text).unwrap();
        assert_eq!(s.peers.len(), 3000);
    }

    #[test]
    fn duplicate_objects_in_manifests_are_refused() {
        let doc = "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 192.0.2.1, asNumber: 65000}\n";
        let mut s = Snapshot::default();
        s.add_manifests("a.yaml", doc).unwrap();
        let e = s.add_manifests("b.yaml", doc).unwrap_err().to_string();
        assert!(e.contains("b.yaml") && e.contains("BGPPeer \"p\""), "{e}");
    }

    #[test]
    fn route_reflector_cluster_id_must_be_ipv4() {
        let node = |id: &str| {
            let mut s = Snapshot::default();
            s.add_manifests(
                "t",
                &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: rr\n  annotations:\n    projectcalico.org/RouteReflectorClusterID: '{id}'\n"),
            )
            .unwrap();
            NodeBgp::from_node(&s.nodes[0])
        };
        assert_eq!(
            node("224.0.0.1").unwrap().rr_cluster_id.as_deref(),
            Some("224.0.0.1")
        );
        for bad in ["1.2.3.4; }", "fd00::1", "abc"] {
            let e = node(bad).unwrap_err().to_string();
            assert!(e.contains(ANN_RR_CLUSTER_ID) && e.contains("IPv4"), "{e}");
        }
    }

    #[test]
    fn bad_annotation_names_node_and_field() {
        let mut s = Snapshot::default();
        s.add_manifests(
            "t",
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n9\n  annotations:\n    projectcalico.org/IPv4Address: fd00::1\n",
        )
        .unwrap();
        let e = NodeBgp::from_node(&s.nodes[0]).unwrap_err().to_string();
        assert!(e.contains("n9") && e.contains(ANN_IPV4), "{e}");
    }
}

/// Fingerprints of what each node's files depend on, so a controller re-renders a node only
/// when one of its inputs changed. Node status (heartbeats) and unrelated metadata are left out.
pub fn input_fingerprints(snap: &Snapshot) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut global = Sha256::new();
    let feed = |h: &mut Sha256, v: &Value| {
        let s = v.to_string();
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    let mut nodes: Vec<Value> = snap
        .nodes
        .iter()
        .map(|n| {
            let ann: BTreeMap<&String, &String> = n
                .metadata
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("projectcalico.org/"))
                .collect();
            serde_json::json!([n.metadata.name, ann, n.metadata.labels])
        })
        .collect();
    nodes.sort_by_key(|v| v.to_string());
    let mut rest: Vec<Value> = Vec::new();
    for c in &snap.bgp_configs {
        rest.push(serde_json::json!(["cfg", c.metadata.name, c.spec]));
    }
    for p in &snap.peers {
        rest.push(serde_json::json!(["peer", p.metadata.name, p.spec]));
    }
    for p in &snap.pools {
        rest.push(serde_json::json!(["pool", p.metadata.name, p.spec]));
    }
    for f in &snap.filters {
        rest.push(serde_json::json!(["filter", f.metadata.name, f.spec]));
    }
    rest.push(serde_json::json!(["secrets", snap.secrets]));
    rest.sort_by_key(|v| v.to_string());
    for v in nodes.iter().chain(rest.iter()) {
        feed(&mut global, v);
    }
    let mut per_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in &snap.affinities {
        per_node
            .entry(a.spec.node.clone())
            .or_default()
            .push(serde_json::json!([
                a.spec.cidr,
                a.spec.state,
                a.spec.type_,
                a.spec.deleted
            ]));
    }
    for w in &snap.workloads {
        per_node
            .entry(w.node.clone())
            .or_default()
            .push(serde_json::json!([w.name, w.labels, w.ipv4, w.ipv6]));
    }
    let default_cfg = snap
        .bgp_configs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("default"))
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    let svc = super::services::service_routes(snap, &default_cfg);
    let mut out = BTreeMap::new();
    for n in &snap.nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let mut h = global.clone();
        let routes: Vec<String> = svc.for_node(&name).iter().map(|r| r.to_string()).collect();
        feed(&mut h, &serde_json::json!(routes));
        let mut affs = per_node.remove(&name).unwrap_or_default();
        affs.sort_by_key(|v| v.to_string());
        for a in &affs {
            feed(&mut h, a);
        }
        out.insert(name, h.finalize().iter().map(|b| format!("{b:02x}")).collect());
    }
    out
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    fn snap(extra: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.add_manifests(
            "t",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  annotations:\n    projectcalico.org/IPv4Address: 10.0.0.1/24\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n  annotations:\n    projectcalico.org/IPv4Address: 10.0.0.2/24\n---\n{extra}"
            ),
        )
        .unwrap();
        s
    }

    #[test]
    fn a_block_changes_only_its_node() {
        let a = input_fingerprints(&snap(""));
        let b = input_fingerprints(&snap(
            "apiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata: {name: x}\nspec: {cidr: 10.48.0.0/26, node: n2, state: confirmed, deleted: \"false\"}\n",
        ));
        assert_eq!(a["n1"], b["n1"]);
        assert_ne!(a["n2"], b["n2"]);
    }

    #[test]
    fn a_peer_or_node_change_touches_every_node() {
        let a = input_fingerprints(&snap(""));
        let b = input_fingerprints(&snap(
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 192.0.2.1, asNumber: 65000}\n",
        ));
        assert_ne!(a["n1"], b["n1"]);
        assert_ne!(a["n2"], b["n2"]);
    }

    #[test]
    fn heartbeats_do_not_count() {
        let mut s = snap("");
        let a = input_fingerprints(&s);
        s.nodes[0].metadata.resource_version = Some("999".into());
        s.nodes[0]
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        assert_eq!(a, input_fingerprints(&s));
    }
}
