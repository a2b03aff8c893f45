//! The shell of `tortie-ipam`: read the pod, its namespace and the pools, decide with
//! [`request::plan`](super::request::plan), call the IPAM engine, answer. No decision lives here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use super::config::{GatewayMode, NetConf, default_routes};
use super::env::{CniEnv, Command};
use super::error::{CniError, Source};
use super::gateway;
use super::request::{self, Inputs, Plan, PoolInfo};
use super::result::{IpConfig, IpamResult};
use crate::api::{Block, CalicoKind, CrdMode, Pool};
use crate::ipam::names;
use crate::ipam::{AssignIpRequest, Attrs, AutoAssignRequest, Ipam, IpamError};

/// Where Calico's node agent writes the node name (`nodename_file`'s default).
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calico/nodename";
/// How long one TCP connect to the apiserver may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one ADD, DEL, CHECK, GC or STATUS in this process (cold: a new client and engine) within
/// the config's deadline; `Ok(Some(json))` is printed on stdout.
pub async fn run(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    within_deadline(conf, async {
        let shared = Shared::connect(conf).await?;
        let node = node_name(conf)?;
        shared.dispatch(env, conf, stdin, &node).await
    })
    .await
}

/// The error a runtime sees when a request outlives `ipam.timeout_seconds`.
pub fn deadline_error(conf: &NetConf) -> CniError {
    CniError::Apiserver(format!(
        "no answer within {}s (network config ipam.timeout_seconds); is the apiserver reachable?",
        conf.ipam.timeout.as_secs_f64()
    ))
}

async fn within_deadline<T>(
    conf: &NetConf,
    f: impl Future<Output = Result<T, CniError>>,
) -> Result<T, CniError> {
    tokio::time::timeout(conf.ipam.timeout, f)
        .await
        .unwrap_or_else(|_| Err(deadline_error(conf)))
}

/// What requests share: the client, the CRD mode and the IPAM engine. The in-process path makes
/// one per request; the node-local server keeps one warm, with watched pods and namespaces, so
/// that the same code answers both.
pub struct Shared {
    client: kube::Client,
    mode: CrdMode,
    ipam: tokio::sync::OnceCell<Ipam>,
    cache: Option<PodCache>,
}

/// Watched metadata of one node's pods and of every namespace (annotations and labels are all an
/// ADD needs from them).
pub struct PodCache {
    pub node: String,
    pub pods: reflector::Store<PartialObjectMeta<Pod>>,
    pub namespaces: reflector::Store<PartialObjectMeta<Namespace>>,
}

impl Shared {
    /// For the node-local server: a warm engine and watches.
    pub fn warm(client: kube::Client, ipam: Ipam, cache: PodCache) -> Shared {
        Shared {
            client,
            mode: ipam.mode(),
            ipam: tokio::sync::OnceCell::new_with(Some(ipam)),
            cache: Some(cache),
        }
    }

    /// For one request: the config's client; the engine is started only when needed.
    pub async fn connect(conf: &NetConf) -> Result<Shared, CniError> {
        let client = client(conf).await?;
        let mode = match conf.crd_mode {
            Some(m) => m,
            None => CrdMode::detect(&client)
                .await
                .map_err(|e| CniError::Apiserver(format!("listing API groups: {e}")))?,
        };
        Ok(Shared {
            client,
            mode,
            ipam: tokio::sync::OnceCell::new(),
            cache: None,
        })
    }

    /// The engine, when this is a warm server's ([`Shared::warm`]).
    pub fn warm_ipam(&self) -> Option<&Ipam> {
        self.ipam.get()
    }

    pub fn mode(&self) -> CrdMode {
        self.mode
    }

    /// One request for `node` within the config's deadline.
    pub async fn run(
        &self,
        env: &CniEnv,
        conf: &NetConf,
        stdin: &[u8],
        node: &str,
    ) -> Result<Option<Value>, CniError> {
        within_deadline(conf, self.dispatch(env, conf, stdin, node)).await
    }

    async fn dispatch(
        &self,
        env: &CniEnv,
        conf: &NetConf,
        stdin: &[u8],
        node: &str,
    ) -> Result<Option<Value>, CniError> {
        let span = info_span!("cni", command = ?env.command, container = %env.container_id);
        let ctx = Ctx {
            shared: self,
            node: node.to_string(),
            handle: super::handle_id(&conf.name, &env.container_id),
        };
        async {
            match env.command {
                Command::Add => ctx.add(env, conf).await.map(Some),
                Command::Del => ctx.del(env).await.map(|_| None),
                Command::Check => ctx.check(stdin).await.map(|_| None),
                Command::Status => ctx.status().await.map(|_| None),
                Command::Gc => ctx.gc(&conf.name, stdin).await.map(|_| None),
                Command::Version => unreachable!("VERSION is answered before any I/O"),
            }
        }
        .instrument(span)
        .await
    }

    async fn ipam(&self) -> Result<&Ipam, CniError> {
        self.ipam
            .get_or_try_init(|| Ipam::new(self.client.clone(), self.mode))
            .await
            .map_err(ipam_err(&Source::Default))
    }

    /// The pools: from the engine's watch once it runs, else (or `fresh`) one LIST.
    async fn pools(&self, fresh: bool) -> Result<Vec<PoolInfo>, CniError> {
        if !fresh && let Some(ipam) = self.ipam.get() {
            return Ok(ipam.pools().iter().filter_map(PoolInfo::from_pool).collect());
        }
        let api: Api<Pool> = Api::all_with(self.client.clone(), &self.mode.resource(CalicoKind::IPPool));
        let list = api
            .list(&Default::default())
            .await
            .map_err(api_err("listing IPPools".into()))?;
        Ok(list.items.iter().filter_map(PoolInfo::from_pool).collect())
    }

    /// The pod's annotations: from the watch when it serves this node and already has the pod
    /// (with the runtime's UID when given), else one GET at once. Waiting for the watch to catch
    /// up saved that GET at the price of up to a second of pod start-up; a read costs ~1 ms.
    async fn pod_annotations(&self, env: &CniEnv, node: &str) -> Result<BTreeMap<String, String>, CniError> {
        let (namespace, name) = env.pod()?;
        if let Some(c) = self.cache.as_ref().filter(|c| c.node == node) {
            let key = ObjectRef::new(name).within(namespace);
            let uid = env.args.pod_uid.as_deref();
            if let Some(p) = c.pods.get(&key)
                && uid.is_none_or(|u| p.metadata.uid.as_deref() == Some(u))
            {
                return Ok(p.metadata.annotations.clone().unwrap_or_default());
            }
            debug!(pod = %format!("{namespace}/{name}"), "pod not in the watch yet: reading it");
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading pod {namespace}/{name}")))?
            .ok_or_else(|| CniError::ContainerUnknown {
                container_id: env.container_id.clone(),
                reason: format!("pod {namespace}/{name} does not exist"),
            })?;
        Ok(pod.metadata.annotations.unwrap_or_default())
    }

    /// The namespace's annotations and labels (`None`: it could not be found).
    async fn namespace_meta(&self, namespace: &str) -> Result<Option<ObjectMeta>, CniError> {
        if let Some(c) = &self.cache
            && let Some(ns) = c.namespaces.get(&ObjectRef::new(namespace))
        {
            return Ok(Some(ns.metadata.clone()));
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        Ok(namespaces
            .get_opt(namespace)
            .await
            .map_err(api_err(format!("reading namespace {namespace}")))?
            .map(|n| n.metadata))
    }
}

/// A client for the config's kubeconfig (else `KUBECONFIG`, else in-cluster), with bounded
/// connect and request times so that an unreachable apiserver fails instead of hanging.
async fn client(conf: &NetConf) -> Result<kube::Client, CniError> {
    let mut config = match &conf.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| CniError::InvalidConfig {
                field: "kubernetes.kubeconfig".into(),
                reason: format!("cannot read {path}: {e}"),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| CniError::InvalidConfig {
                    field: "kubernetes.kubeconfig".into(),
                    reason: format!("{path}: {e}"),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| CniError::InvalidConfig {
            field: "kubernetes.kubeconfig".into(),
            reason: format!("not set, and no KUBECONFIG or in-cluster config: {e}"),
        })?,
    };
    if let Some(root) = &conf.k8s_api_root {
        config.cluster_url = root.parse().map_err(|e| CniError::InvalidConfig {
            field: "kubernetes.k8s_api_root".into(),
            reason: format!("{root:?}: {e}"),
        })?;
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(conf.ipam.timeout);
    config.write_timeout = Some(conf.ipam.timeout);
    kube::Client::try_from(config).map_err(|e| CniError::Apiserver(format!("client: {e}")))
}

/// The node a request is for. Calico's order: `nodename`, else the contents of `nodename_file`, else the host name.
pub fn node_name(conf: &NetConf) -> Result<String, CniError> {
    if let Some(n) = &conf.nodename {
        return Ok(n.clone());
    }
    let file = conf.nodename_file.as_deref().unwrap_or(DEFAULT_NODENAME_FILE);
    if let Ok(s) = std::fs::read_to_string(file) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    hostname::get()
        .map_err(|e| CniError::Io(format!("host name: {e}")))?
        .into_string()
        .map_err(|h| CniError::Io(format!("host name {h:?} is not UTF-8")))
}

struct Ctx<'a> {
    shared: &'a Shared,
    node: String,
    handle: String,
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> CniError {
    move |e| CniError::Apiserver(format!("{what}: {e}"))
}

/// Maps an engine error to the CNI error a runtime sees, naming where the request came from.
fn ipam_err(source: &Source) -> impl Fn(IpamError) -> CniError + '_ {
    move |e| match e {
        IpamError::NotInPool(ip) => {
            CniError::AddressUnavailable(format!("{source}: address {ip} is not in any enabled IPPool"))
        }
        IpamError::AlreadyAssigned { ip, block } => CniError::AddressUnavailable(format!(
            "{source}: address {ip} is already in use (IPAMBlock {block})"
        )),
        e @ IpamError::AffinityMismatch { .. } => CniError::AddressUnavailable(format!("{source}: {e}")),
        IpamError::Pool { pool, reason } => CniError::PoolNotUsable {
            origin: source.clone(),
            reason: format!("IPPool {pool}: {reason}"),
        },
        IpamError::NoPools(m) => CniError::Exhausted(m),
        e @ IpamError::Contention { .. } => CniError::TryAgainLater(e.to_string()),
        IpamError::Store(s) => CniError::Apiserver(s.to_string()),
        e => CniError::Ipam(e.to_string()),
    }
}

impl Ctx<'_> {
    async fn add(&self, env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
        let (namespace, pod_name) = env.pod()?;
        let span = info_span!("pod", pod = %format!("{namespace}/{pod_name}"), handle = %self.handle);
        async move {
            let t = std::time::Instant::now();
            let ipam = self.shared.ipam().await?;
            let mut pools = self.shared.pools(false).await?;
            let pod_ann = self.shared.pod_annotations(env, &self.node).await?;
            let ns = self.shared.namespace_meta(namespace).await?;
            debug!(inputs = ?t.elapsed(), "request inputs read");
            let ns_ann = ns.as_ref().and_then(|n| n.annotations.as_ref());
            let ns_labels = ns.as_ref().and_then(|n| n.labels.clone());
            let plan = |pools: &[PoolInfo]| {
                request::plan(&Inputs {
                    conf,
                    namespace,
                    pod: pod_name,
                    pod_annotations: &pod_ann,
                    namespace_annotations: ns_ann,
                    pools,
                    cni_args_ip: env.args.ip.as_deref(),
                })
            };
            let plan = match plan(&pools) {
                // A pool created a moment ago may not have reached the watch yet.
                Err(CniError::UnknownPool { .. }) => {
                    pools = self.shared.pools(true).await?;
                    plan(&pools)?
                }
                other => other?,
            };
            let attrs = Attrs(super::allocation_attrs(
                &self.node,
                namespace,
                pod_name,
                jiff::Timestamp::now(),
            ));
            let ns_labels = ns_labels.unwrap_or_default();

            // Creating the handle is the repeated-ADD check: no read in the common case.
            let assigned = match self.assign(ipam, &plan, &attrs, &ns_labels, &pools, true).await? {
                Some(ips) => ips,
                None => {
                    let held = ipam
                        .ips_by_handle(&self.handle)
                        .await
                        .map_err(ipam_err(&Source::Default))?;
                    if !held.is_empty() {
                        info!(?held, "container already holds addresses; returning them");
                        let ips = held.iter().map(|ip| with_block_mask(*ip, &pools)).collect();
                        return self.finish(ipam, conf, ips).await;
                    }
                    // A handle holding nothing (an interrupted ADD or DEL): its entries may count
                    // addresses whose block write never landed, so clear it and start afresh
                    // rather than allocate on top of them (issue 15: over-counted handles).
                    ipam.release_by_handle(&self.handle)
                        .await
                        .map_err(ipam_err(&Source::Default))?;
                    self.assign(ipam, &plan, &attrs, &ns_labels, &pools, true)
                        .await?
                        .ok_or_else(|| {
                            CniError::TryAgainLater(format!("IPAMHandle {} is being changed", self.handle))
                        })?
                }
            };
            info!(ips = ?assigned, node = %self.node, "assigned");
            match self.finish(ipam, conf, assigned).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    self.undo(ipam).await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Allocates what the plan asks for; `Ok(None)` when `new_handle` is set and the handle
    /// already exists (nothing was allocated then). Any other failure allocates nothing.
    async fn assign(
        &self,
        ipam: &Ipam,
        plan: &Plan,
        attrs: &Attrs,
        ns_labels: &BTreeMap<String, String>,
        pools: &[PoolInfo],
        new_handle: bool,
    ) -> Result<Option<Vec<IpNet>>, CniError> {
        match plan {
            Plan::Explicit { ips, source } => {
                let mut out = vec![];
                for (i, ip) in ips.iter().enumerate() {
                    let req = AssignIpRequest {
                        ip: *ip,
                        handle_id: self.handle.clone(),
                        attrs: attrs.clone(),
                        hostname: self.node.clone(),
                        intended_use: crate::ipam::AllowedUse::Workload,
                    };
                    match ipam.assign_ip_with(req, new_handle && i == 0).await {
                        Ok(()) => out.push(with_block_mask(*ip, pools)),
                        Err(IpamError::HandleExists(_)) if i == 0 => return Ok(None),
                        Err(e) => {
                            self.undo(ipam).await;
                            return Err(ipam_err(source)(e));
                        }
                    }
                }
                Ok(Some(out))
            }
            Plan::Auto { v4, v6 } => {
                let mut req = AutoAssignRequest::new(&self.handle, &self.node);
                req.attrs = attrs.clone();
                req.num_v4 = usize::from(v4.wanted);
                req.num_v6 = usize::from(v6.wanted);
                req.v4_pools = v4.pools.iter().map(|p| p.name.clone()).collect();
                req.v6_pools = v6.pools.iter().map(|p| p.name.clone()).collect();
                req.namespace_labels = Some(ns_labels.clone());
                req.new_handle = new_handle;
                let source = if v4.wanted { &v4.source } else { &v6.source };
                let got = match ipam.auto_assign(req).await {
                    Ok(g) => g,
                    Err(IpamError::HandleExists(_)) if new_handle => return Ok(None),
                    Err(e) => {
                        self.undo(ipam).await;
                        return Err(ipam_err(source)(e));
                    }
                };
                if !got.is_complete() {
                    // No half-dual-stack pods: give back whatever one family got.
                    self.undo(ipam).await;
                    let mut why = vec![];
                    if !got.v4.is_complete() {
                        why.push(format!("{}: {}", v4.source, got.v4.describe("IPv4")));
                    }
                    if !got.v6.is_complete() {
                        why.push(format!("{}: {}", v6.source, got.v6.describe("IPv6")));
                    }
                    return Err(CniError::Exhausted(why.join("; ")));
                }
                Ok(Some(got.v4.ips.iter().chain(&got.v6.ips).copied().collect()))
            }
        }
    }

    /// Turns the addresses into the CNI result (adding gateways when configured).
    async fn finish(&self, ipam: &Ipam, conf: &NetConf, ips: Vec<IpNet>) -> Result<Value, CniError> {
        let mut gateways: Vec<Option<IpAddr>> = vec![];
        for ip in &ips {
            gateways.push(match conf.ipam.gateway {
                GatewayMode::None => None,
                GatewayMode::Node => Some(self.node_gateway(ipam, *ip).await?),
            });
        }
        let (v4, v6) = (
            ips.iter().any(|i| matches!(i, IpNet::V4(_))),
            ips.iter().any(|i| matches!(i, IpNet::V6(_))),
        );
        let result = IpamResult {
            ips: ips
                .into_iter()
                .zip(gateways)
                .map(|(address, gateway)| IpConfig {
                    address: result_address(address, gateway.is_some()),
                    gateway,
                })
                .collect(),
            routes: conf.ipam.routes.clone().unwrap_or_else(|| default_routes(v4, v6)),
        };
        result.to_json(&conf.cni_version)
    }

    /// The node's gateway in the block of `addr`, reserved through the engine on first use.
    async fn node_gateway(&self, ipam: &Ipam, addr: IpNet) -> Result<IpAddr, CniError> {
        let handle = gateway::handle_id(&self.node);
        let blocks: Api<Block> = Api::all_with(
            self.shared.client.clone(),
            &self.shared.mode.resource(CalicoKind::IPAMBlock),
        );
        let block_name = names::block_name(&addr.trunc());
        // Another ADD on this node may claim the same address first: re-read and try again.
        for _ in 0..5 {
            let held = ipam
                .ips_by_handle(&handle)
                .await
                .map_err(ipam_err(&Source::Default))?;
            let unallocated = blocks
                .get_opt(&block_name)
                .await
                .map_err(api_err(format!("reading IPAMBlock {block_name}")))?
                .map(|b| b.spec.unallocated)
                .unwrap_or_default();
            let candidates = match gateway::choose(addr, &held, &unallocated) {
                gateway::Choice::Existing(gw) => return Ok(gw),
                gateway::Choice::Claim(c) if c.is_empty() => {
                    return Err(CniError::Exhausted(format!(
                        "IPAMBlock {block_name} has no free address left for node {}'s gateway (network config ipam.gateway is \"node\")",
                        self.node
                    )));
                }
                gateway::Choice::Claim(c) => c,
            };
            for ip in candidates {
                let req = AssignIpRequest {
                    ip,
                    handle_id: handle.clone(),
                    attrs: Attrs::default()
                        .with(Attrs::NODE, &self.node)
                        .with(Attrs::TYPE, gateway::TYPE),
                    hostname: self.node.clone(),
                    intended_use: crate::ipam::AllowedUse::Workload,
                };
                match ipam.assign_ip(req).await {
                    Ok(()) => {
                        info!(gateway = %ip, block = %block_name, "reserved the node's gateway");
                        return Ok(ip);
                    }
                    Err(IpamError::AlreadyAssigned { .. }) => continue,
                    Err(e) => return Err(ipam_err(&Source::Default)(e)),
                }
            }
        }
        Err(CniError::TryAgainLater(format!(
            "could not reserve a gateway for node {} in IPAMBlock {block_name}",
            self.node
        )))
    }

    /// Best-effort release after a failed ADD, so that a failure allocates nothing.
    async fn undo(&self, ipam: &Ipam) {
        if let Err(e) = ipam.release_by_handle(&self.handle).await {
            warn!(error = %e, "releasing after a failed ADD; the runtime's DEL will retry");
        }
    }

    async fn del(&self, env: &CniEnv) -> Result<(), CniError> {
        let ipam = self.shared.ipam().await?;
        let released = ipam
            .release_by_handle(&self.handle)
            .await
            .map_err(ipam_err(&Source::Default))?;
        info!(handle = %self.handle, ?released, "released");
        if let (Some(ns), Some(pod)) = (&env.args.pod_namespace, &env.args.pod_name) {
            let legacy = super::legacy_handle_id(ns, pod);
            // Only old Calico wrote these: skip the read when the node's cached blocks rule it out.
            if ipam.host_blocks_hold(&self.node, &legacy) == Some(false) {
                return Ok(());
            }
            let released = ipam
                .release_by_handle(&legacy)
                .await
                .map_err(ipam_err(&Source::Default))?;
            if !released.is_empty() {
                info!(handle = %legacy, ?released, "released (legacy handle)");
            }
        }
        Ok(())
    }

    /// CHECK: the handle must hold addresses, and every address of `prevResult` among them.
    async fn check(&self, stdin: &[u8]) -> Result<(), CniError> {
        let ipam = self.shared.ipam().await?;
        let held = ipam
            .ips_by_handle(&self.handle)
            .await
            .map_err(ipam_err(&Source::Default))?;
        if held.is_empty() {
            return Err(CniError::CheckFailed(format!(
                "handle {} holds no address",
                self.handle
            )));
        }
        for ip in prev_result_ips(stdin) {
            if !held.contains(&ip) {
                return Err(CniError::CheckFailed(format!(
                    "prevResult address {ip} is not held by handle {} (it holds {held:?})",
                    self.handle
                )));
            }
        }
        Ok(())
    }

    /// GC (CNI 1.1): release this node's allocations of containers the runtime no longer has.
    async fn gc(&self, network: &str, stdin: &[u8]) -> Result<(), CniError> {
        let valid = super::gc::valid_containers(stdin)?;
        let ipam = self.shared.ipam().await?;
        let blocks = ipam.list_blocks().await.map_err(ipam_err(&Source::Default))?;
        for handle in super::gc::stale_handles(&blocks, &self.node, network, &valid) {
            let released = ipam
                .release_by_handle(&handle)
                .await
                .map_err(ipam_err(&Source::Default))?;
            info!(%handle, ?released, "released by GC (container not among valid attachments)");
        }
        Ok(())
    }

    /// STATUS: ready when the apiserver answers and some pool is enabled.
    async fn status(&self) -> Result<(), CniError> {
        let pools = self
            .shared
            .pools(false)
            .await
            .map_err(|e| CniError::NotAvailable(e.to_string()))?;
        if pools.iter().all(|p| p.disabled || p.deleting) {
            return Err(CniError::NotAvailable("no enabled IPPool".into()));
        }
        Ok(())
    }
}

/// The address as the result carries it: a host route (`/32`, `/128`), as Calico's CNI hands
/// pod addresses to the runtime (its main plugin narrows calico-ipam's block prefix to that before
/// it answers). With a gateway (`ipam.gateway: "node"`) the block's prefix stays: the reference
/// `bridge` plugin needs the gateway inside the address's subnet.
fn result_address(addr: IpNet, with_gateway: bool) -> IpNet {
    if with_gateway {
        addr
    } else {
        IpNet::from(addr.addr())
    }
}

/// The address with its block's prefix length, from the pool holding it (what the engine returns).
fn with_block_mask(ip: IpAddr, pools: &[PoolInfo]) -> IpNet {
    let prefix = pools
        .iter()
        .find(|p| p.cidr.contains(&ip))
        .map(|p| p.block_size)
        .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
    IpNet::new(ip, prefix).expect("block size is a valid prefix")
}

/// Addresses in the `prevResult` of a CHECK's config (any result version).
fn prev_result_ips(stdin: &[u8]) -> Vec<IpAddr> {
    let Ok(v) = serde_json::from_slice::<Value>(stdin) else {
        return vec![];
    };
    let prev = &v["prevResult"];
    let mut texts: Vec<&str> = prev["ips"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["address"].as_str()).collect())
        .unwrap_or_default();
    texts.extend(["ip4", "ip6"].iter().filter_map(|k| prev[k]["ip"].as_str()));
    texts
        .iter()
        .filter_map(|t| t.parse::<IpNet>().ok().map(|n| n.addr()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prev_result_addresses_of_any_version() {
        let v1 = br#"{"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/26"},{"address":"fd00::5/122"}]}}"#;
        assert_eq!(
            prev_result_ips(v1),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]
        );
        let legacy = br#"{"prevResult":{"ip4":{"ip":"10.0.0.5/26"}}}"#;
        assert_eq!(prev_result_ips(legacy).len(), 1);
        assert!(prev_result_ips(b"{}").is_empty());
    }

    #[test]
    fn results_carry_host_routes_unless_a_gateway_needs_the_subnet() {
        let a: IpNet = "10.48.0.5/26".parse().unwrap();
        assert_eq!(result_address(a, false).to_string(), "10.48.0.5/32");
        assert_eq!(result_address(a, true).to_string(), "10.48.0.5/26");
        let b: IpNet = "fd00:48::5/122".parse().unwrap();
        assert_eq!(result_address(b, false).to_string(), "fd00:48::5/128");
    }

    #[test]
    fn block_mask_from_pool() {
        let pools = vec![PoolInfo {
            name: "p".into(),
            cidr: "10.48.2.0/24".parse().unwrap(),
            disabled: false,
            deleting: false,
            block_size: 29,
            workload: true,
        }];
        assert_eq!(
            with_block_mask("10.48.2.9".parse().unwrap(), &pools).to_string(),
            "10.48.2.9/29"
        );
        assert_eq!(
            with_block_mask("10.9.9.9".parse().unwrap(), &pools).to_string(),
            "10.9.9.9/32"
        );
    }
}
