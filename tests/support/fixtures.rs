//! Objects tests make in the cluster: unique names, Nodes, Namespaces, Pods, IPPools, and IPAM
//! objects written the way Calico's CNI plugin leaves them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use tortie::api::{
    Affinity, AllocationAttribute, Block, BlockAffinitySpec, CalicoKind, CrdMode, Handle, IPAMBlockSpec,
    IPAMHandleSpec,
};

use super::{kubectl_stdin_ok, wait_until};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A DNS-1123 label `<prefix>-<unique>` that no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let suffix = format!("{:06x}{n}", h.finish() & 0xff_ffff);
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(62 - suffix.len());
    let p = p.trim_matches('-');
    if p.is_empty() {
        format!("t-{suffix}")
    } else {
        format!("{p}-{suffix}")
    }
}

fn meta(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    ObjectMeta {
        name: Some(name.to_string()),
        labels: map(labels),
        annotations: map(annotations),
        ..Default::default()
    }
}

/// Calico's per-node BGP annotations: `projectcalico.org/IPv4Address` (address with prefix
/// length, e.g. `10.0.0.1/24`) and, if given, `projectcalico.org/ASNumber`.
pub fn calico_bgp_annotations(ipv4_cidr: &str, asn: Option<u32>) -> Vec<(String, String)> {
    let mut v = vec![("projectcalico.org/IPv4Address".to_string(), ipv4_cidr.to_string())];
    if let Some(asn) = asn {
        v.push(("projectcalico.org/ASNumber".to_string(), asn.to_string()));
    }
    v
}

/// Creates a Node object (there is no kubelet: nothing else touches it; the controllers that would
/// mark it NotReady or taint it are off). `internal_ip` becomes a `status.addresses` InternalIP,
/// `pod_cidrs` `spec.podCIDRs` (and `spec.podCIDR`). Use [`unique_name`] for `name`.
pub async fn create_node(
    client: &Client,
    name: &str,
    labels: &[(&str, &str)],
    internal_ip: Option<&str>,
    pod_cidrs: &[&str],
    annotations: &[(&str, &str)],
) -> Node {
    let mut labels: Vec<(&str, &str)> = labels.to_vec();
    if !labels.iter().any(|(k, _)| *k == "kubernetes.io/hostname") {
        labels.push(("kubernetes.io/hostname", name));
    }
    let mut addresses = vec![NodeAddress {
        type_: "Hostname".into(),
        address: name.into(),
    }];
    if let Some(ip) = internal_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        });
    }
    let node = Node {
        metadata: meta(name, &labels, annotations),
        spec: Some(NodeSpec {
            pod_cidr: pod_cidrs.first().map(|c| c.to_string()),
            pod_cidrs: (!pod_cidrs.is_empty()).then(|| pod_cidrs.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(addresses.clone()),
            ..Default::default()
        }),
    };
    let api: Api<Node> = Api::all(client.clone());
    let mut created = api
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
    // Status is kept on create today; make sure of it through the status subresource anyway.
    let has_addrs = created
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .is_some_and(|a| a.len() == addresses.len());
    if !has_addrs {
        let patch = serde_json::json!({ "status": { "addresses": addresses } });
        created = api
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap_or_else(|e| panic!("set status of Node {name}: {e}"));
    }
    created
}

/// Deletes a Node (no error if it is gone).
pub async fn delete_node(client: &Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete Node {name}: {e}"),
    }
}

/// Creates a namespace and waits until kube-controller-manager has made its `default`
/// ServiceAccount (Pods cannot be created in it before that).
pub async fn create_namespace(client: &Client, name: &str, annotations: &[(&str, &str)]) -> Namespace {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: meta(name, &[], annotations),
        ..Default::default()
    };
    let created = api
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create Namespace {name}: {e}"));
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    wait_until(
        &format!("ServiceAccount {name}/default"),
        Duration::from_secs(60),
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await;
    created
}

/// Deletes a namespace and waits (up to `timeout`) until it is gone, i.e. until
/// kube-controller-manager's namespace controller has emptied and finalized it.
pub async fn delete_namespace(client: &Client, name: &str, timeout: Duration) {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete Namespace {name}: {e}"),
    }
    wait_until(&format!("Namespace {name} to be gone"), timeout, || async {
        match api.get_opt(name).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Creates a Pod bound to `node` (`spec.nodeName`; `None` leaves it unscheduled). No kubelet runs
/// it: it stays Pending. Its `terminationGracePeriodSeconds` is 0, so deleting it (or its
/// namespace) removes it at once instead of waiting for a kubelet.
pub async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    node: Option<&str>,
    annotations: &[(&str, &str)],
) -> Pod {
    let pod = Pod {
        metadata: meta(
            name,
            &[("app.kubernetes.io/created-by", "tortie-e2e")],
            annotations,
        ),
        spec: Some(PodSpec {
            node_name: node.map(str::to_string),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "main".into(),
                image: Some("tortie.invalid/never-pulled:e2e".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), &pod).await {
            Ok(p) => return p,
            // A namespace made without create_namespace may not have its ServiceAccount yet.
            Err(kube::Error::Api(s)) if s.message.contains("serviceaccount") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create Pod {namespace}/{name}: {e}"),
        }
    }
}

/// The CRD mode (v1 `crd.projectcalico.org` or v3 `projectcalico.org`) of the cluster.
pub async fn mode(client: &Client) -> CrdMode {
    CrdMode::detect(client).await.expect("detect CRD mode")
}

/// One pod allocation: (ordinal, pod name, node) in namespace `ns`.
pub struct Alloc<'a> {
    pub ordinal: usize,
    pub handle: String,
    pub secondary: Vec<(&'a str, String)>,
}

impl<'a> Alloc<'a> {
    /// A pod's address, as Calico's CNI plugin records it.
    pub fn pod(ordinal: usize, ns: &str, pod: &str, node: &str) -> Alloc<'a> {
        Alloc {
            ordinal,
            handle: format!("k8s-pod-network.{ns}.{pod}-{ordinal}"),
            secondary: vec![
                ("namespace", ns.to_string()),
                ("pod", pod.to_string()),
                ("node", node.to_string()),
                ("timestamp", tortie::ipam::go_timestamp_now()),
            ],
        }
    }

    /// A node's IPIP tunnel address.
    pub fn tunnel(ordinal: usize, node: &str) -> Alloc<'a> {
        Alloc {
            ordinal,
            handle: format!("ipip-tunnel-addr-{node}"),
            secondary: vec![
                ("node", node.to_string()),
                ("type", "ipipTunnelAddress".to_string()),
            ],
        }
    }
}

/// Writes an IPAMBlock (and the handles and the affinity) as Calico would have left them.
pub async fn write_block(client: &Client, cidr: &str, host: Option<&str>, allocs: &[Alloc<'_>]) -> Block {
    let mode = mode(client).await;
    let net: ipnet::IpNet = cidr.parse().unwrap();
    let size = 1usize << (net.max_prefix_len() - net.prefix_len());
    let mut spec = IPAMBlockSpec {
        cidr: cidr.into(),
        affinity: host.map(|h| format!("host:{h}")),
        allocations: vec![None; size],
        sequence_number: Some(1_754_042_400_000_000_000),
        sequence_number_for_allocation: Some(BTreeMap::new()),
        deleted: Some(false),
        strict_affinity: false,
        ..Default::default()
    };
    for a in allocs {
        spec.attributes.push(AllocationAttribute {
            handle_id: Some(a.handle.clone()),
            secondary: Some(
                a.secondary
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        });
        spec.allocations[a.ordinal] = Some(spec.attributes.len() - 1);
        spec.sequence_number_for_allocation.as_mut().unwrap().insert(
            a.ordinal.to_string(),
            1_754_042_400_000_000_000 + a.ordinal as u64,
        );
    }
    spec.unallocated = (0..size).filter(|o| spec.allocations[*o].is_none()).collect();
    let name = tortie::ipam::names::block_name(&net);
    let api: Api<Block> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMBlock));
    let block = Block::new(&name, &mode.resource(CalicoKind::IPAMBlock), spec);
    let created = api
        .create(&PostParams::default(), &block)
        .await
        .expect("create IPAMBlock");
    let h_api: Api<Handle> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMHandle));
    let mut per_handle: BTreeMap<String, u64> = BTreeMap::new();
    for a in allocs {
        *per_handle.entry(a.handle.clone()).or_default() += 1;
    }
    for (h, n) in per_handle {
        let spec = IPAMHandleSpec {
            handle_id: h.clone(),
            block: [(cidr.to_string(), n)].into_iter().collect(),
            deleted: Some(false),
            ..Default::default()
        };
        let obj = Handle::new(
            &tortie::ipam::names::handle_name(&h),
            &mode.resource(CalicoKind::IPAMHandle),
            spec,
        );
        h_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create IPAMHandle");
    }
    if let Some(h) = host {
        let a_api: Api<Affinity> = Api::all_with(client.clone(), &mode.resource(CalicoKind::BlockAffinity));
        let spec = BlockAffinitySpec {
            state: "confirmed".into(),
            node: h.into(),
            type_: Some("host".into()),
            cidr: cidr.into(),
            deleted: mode.affinity_flag(false),
            ..Default::default()
        };
        let obj = Affinity::new(
            &tortie::ipam::names::affinity_name(h, &net),
            &mode.resource(CalicoKind::BlockAffinity),
            spec,
        );
        a_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create BlockAffinity");
    }
    created
}

/// Creates an IPPool labelled `tortie-test=<test>` (so a scoped operator sees it), allowed
/// outside the pod CIDR (other tests may set a kubeadm podSubnet meanwhile).
pub fn apply_pool(name: &str, test: &str, cidr: &str, block_size: u8, extra_spec: &str) {
    let manifest = format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: {name}\n  labels: {{tortie-test: {test}}}\n  annotations: {{tortie.io/allow-outside-pod-cidr: \"true\"}}\nspec:\n  cidr: {cidr}\n  blockSize: {block_size}\n{extra_spec}"
    );
    kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
}

/// kube-system/kubeadm-config as kubeadm leaves it, with `pod_subnet` as the cluster's pod CIDR.
pub fn kubeadm_config(pod_subnet: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: kubeadm-config, namespace: kube-system}}
data:
  ClusterConfiguration: |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: ClusterConfiguration
    kubernetesVersion: v1.34.4
    networking:
      dnsDomain: cluster.local
      podSubnet: {pod_subnet}
      serviceSubnet: 10.96.0.0/12
"#
    )
}

/// Creates a Manual IPPool (no encapsulation, no NAT) named `unique_name(prefix)`; `extra`, a
/// JSON object, holds more spec fields (`disabled`, ...) or overrides. Returns its name.
pub async fn manual_pool(
    client: &Client,
    mode: CrdMode,
    prefix: &str,
    cidr: &str,
    block_size: i32,
    extra: &serde_json::Value,
) -> String {
    let name = unique_name(prefix);
    let mut s = serde_json::json!({"cidr": cidr, "blockSize": block_size, "assignmentMode": "Manual",
                                   "ipipMode": "Never", "vxlanMode": "Never", "natOutgoing": false});
    for (k, v) in extra.as_object().into_iter().flatten() {
        s[k] = v.clone();
    }
    let spec: tortie::api::IPPoolSpec = serde_json::from_value(s).unwrap();
    let pool = tortie::api::Pool::new(&name, &mode.resource(CalicoKind::IPPool), spec);
    let api: Api<tortie::api::Pool> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPPool));
    api.create(&PostParams::default(), &pool)
        .await
        .unwrap_or_else(|e| panic!("create IPPool {name}: {e}"));
    name
}

/// One allocated address of an IPAMBlock.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub ip: std::net::IpAddr,
    pub handle: Option<String>,
    /// The allocation's attributes (`namespace`, `pod`, `node`, ...).
    pub attrs: BTreeMap<String, String>,
}

/// Every allocated address in the cluster's IPAMBlocks (marked-deleted blocks left out).
pub async fn allocations(client: &Client, mode: CrdMode) -> Vec<Allocation> {
    let blocks: Api<Block> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMBlock));
    let mut out = vec![];
    for b in blocks.list(&Default::default()).await.unwrap().items {
        if b.spec.deleted == Some(true) {
            continue;
        }
        let cidr: ipnet::IpNet = b.spec.cidr.parse().unwrap();
        for (ord, a) in b.spec.allocations.iter().enumerate() {
            let Some(idx) = a else { continue };
            let attr = b.spec.attributes.get(*idx).cloned().unwrap_or_default();
            out.push(Allocation {
                ip: tortie::cni::gateway::nth(cidr, ord).unwrap(),
                handle: attr.handle_id.clone(),
                attrs: attr.secondary.unwrap_or_default().into_iter().collect(),
            });
        }
    }
    out
}

/// The IPAMHandle of `handle_id` unless it is absent or marked deleted.
pub async fn live_handle(client: &Client, mode: CrdMode, handle_id: &str) -> Option<Handle> {
    let handles: Api<Handle> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMHandle));
    handles
        .get_opt(&tortie::ipam::names::handle_name(handle_id))
        .await
        .unwrap()
        .filter(|h| h.spec.deleted != Some(true))
}

/// How many addresses a block has allocated.
pub fn allocated(b: &Block) -> usize {
    b.spec.allocations.iter().filter(|a| a.is_some()).count()
}

/// Deletes these IPAM objects, ignoring errors (a test's clean-up: some may be gone already).
pub async fn delete_ipam_objects(
    client: &Client,
    mode: CrdMode,
    blocks: &[Block],
    affinities: &[Affinity],
    handles: &[Handle],
) {
    let dp = DeleteParams::default();
    let name =
        |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.name.clone().unwrap_or_default();
    let ba: Api<Block> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMBlock));
    for b in blocks {
        let _ = ba.delete(&name(&b.metadata), &dp).await;
    }
    let aa: Api<Affinity> = Api::all_with(client.clone(), &mode.resource(CalicoKind::BlockAffinity));
    for a in affinities {
        let _ = aa.delete(&name(&a.metadata), &dp).await;
    }
    let ha: Api<Handle> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMHandle));
    for h in handles {
        let _ = ha.delete(&name(&h.metadata), &dp).await;
    }
}

/// An IPAM engine on `client` that uses `cfg` instead of the cluster's IPAMConfig: tests sharing
/// a cluster neither depend on nor change each other's configuration.
pub async fn ipam_engine(
    client: Client,
    mode: CrdMode,
    cfg: tortie::api::IPAMConfigSpec,
) -> tortie::ipam::Ipam {
    tortie::ipam::Ipam::new_with(
        client,
        mode,
        tortie::ipam::IpamOptions {
            config_override: Some(cfg),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("IPAM engine: {e}"))
}

/// Every object of the Calico resource `kind` in the cluster.
pub async fn list_calico<K>(client: &Client, mode: CrdMode, kind: CalicoKind) -> Vec<K>
where
    K: kube::Resource<DynamicType = kube::discovery::ApiResource>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all_with(client.clone(), &mode.resource(kind));
    api.list(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("list {kind:?}: {e}"))
        .items
}
