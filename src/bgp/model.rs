//! The render model: every value that goes into one node's BIRD files, decided by Calico's rules
//! (`spec/bgp.md` §5–7), as plain serialisable data. The templates ([`super::template`]) only lay
//! it out as text; the built-in ones give Calico's G3 layout.
//!
//! The model is the templates' contract: its field names are documented in
//! `docs/bird-templates.md`, and a custom template sees exactly these values.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

use super::peers::{BirdPeer, Cluster};
use super::snapshot::LABEL_EXCLUDE_LB;
use super::{RenderError, RenderOptions, hashed_router_id};

const BIRD_INT_MAX: i64 = 2147483647;
const OVERRIDE_PREFERENCE: u32 = 200;

/// What one family's three files (`bird.cfg`, `bird_ipam.cfg`, `bird_aggr.cfg`, or their
/// `bird6` twins) are rendered from: every template of the family gets this whole value.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyModel {
    /// The node rendered for.
    pub node: String,
    /// `false` for the IPv4 files, `true` for the IPv6 ones.
    pub v6: bool,
    /// File name prefix: `bird` or `bird6`.
    pub prefix: &'static str,
    /// `2147483647`: priorities and `bgp_local_pref` convert as `x = bird_int_max - y`.
    pub bird_int_max: i64,
    /// BIRD `preference` of routes that override the kernel's (Calico: 200).
    pub override_preference: u32,
    /// Kernel metric of ordinary BGP routes (BGPConfiguration `ipv4/ipv6NormalRoutePriority`).
    pub normal_priority: i64,
    /// The node has an address of this family (else `bird*.cfg` says so and has no BGP).
    pub enabled: bool,
    /// `router id`.
    pub router_id: String,
    /// The node's AS number (`local as` of `bgp_template`).
    pub local_as: u64,
    /// `debug` value of the direct and device protocols (`all`, `{ states }`), or none.
    pub debug: Option<&'static str>,
    /// `debug` statement of `bgp_template`, or none.
    pub peer_debug: Option<&'static str>,
    /// BGPConfiguration `ignoredInterfaces` (valid patterns only); none when unset or empty.
    pub ignored_interfaces: Option<Vec<String>>,
    /// `listen bgp address` (bindMode NodeIP).
    pub listen_address: Option<String>,
    /// `listen bgp port`.
    pub listen_port: Option<u16>,
    /// `apply_communities` rules: prefix and its `bgp_(large_)community.add(...)` statements.
    pub communities: Vec<CommunityRule>,
    /// BGPFilter function definitions, one line each (Calico's `bgpFilterBIRDFuncs`).
    pub filter_functions: Vec<String>,
    /// The `protocol bgp` sessions, in Calico's order.
    pub peers: Vec<PeerModel>,
    /// `bird_ipam.cfg`.
    pub ipam: IpamModel,
    /// `bird_aggr.cfg`.
    pub aggr: AggrModel,
}

/// One `apply_communities` rule.
#[derive(Clone, Debug, Serialize)]
pub struct CommunityRule {
    pub cidr: String,
    /// `bgp_community.add((65000, 100));` or `bgp_large_community.add((1, 2, 3));`, sorted.
    pub adds: Vec<String>,
}

/// One `protocol bgp` block.
#[derive(Clone, Debug, Serialize)]
pub struct PeerModel {
    /// `Mesh`, `Global`, `Node` or `Local_Workload`.
    pub kind: &'static str,
    /// Protocol name, e.g. `Mesh_10_0_0_2`.
    pub name: String,
    pub ip: String,
    pub port: Option<u16>,
    pub asn: u64,
    pub local_asn: Option<u64>,
    pub source_address: Option<String>,
    /// 0: `ttl security off; multihop;`; n: `ttl security on; multihop n;`.
    pub ttl_security: u8,
    /// iBGP (the argument of `calico_export_to_bgp_peers`).
    pub internal: bool,
    pub passive: bool,
    pub graceful_restart: Option<u64>,
    pub keepalive: Option<u64>,
    /// `rr cluster id` when this node reflects routes to the peer.
    pub rr_cluster_id: Option<String>,
    pub password: Option<String>,
    pub next_hop_keep: bool,
    pub next_hop_self: bool,
    pub allow_local_as: Option<u32>,
    /// BGPFilter calls at the start of the import filter, e.g. `'bgp_f_importFilterV4'();`.
    pub import_calls: Vec<String>,
    /// BGPFilter calls in the export filter.
    pub export_calls: Vec<String>,
}

impl PeerModel {
    fn from_peer(p: &BirdPeer) -> PeerModel {
        PeerModel {
            kind: p.kind.prefix(),
            name: p.name.clone(),
            ip: p.ip.to_string(),
            port: p.port,
            asn: p.asn,
            local_asn: p.local_asn,
            source_address: p.source_addr.map(|a| a.to_string()),
            ttl_security: p.ttl_security,
            internal: p.internal,
            passive: p.passive,
            graceful_restart: p.graceful_restart,
            keepalive: p.keepalive,
            rr_cluster_id: p.rr_client_of.clone(),
            password: p.password.clone(),
            next_hop_keep: p.next_hop_keep,
            next_hop_self: p.next_hop_self,
            allow_local_as: p.allow_local_as,
            import_calls: p.import_calls.clone(),
            export_calls: p.export_calls.clone(),
        }
    }
}

/// `bird_ipam.cfg`: what goes to peers and what into the kernel.
#[derive(Clone, Debug, Serialize)]
pub struct IpamModel {
    /// Pools with `disableBGPExport`: rejected first.
    pub export_disabled_pools: Vec<String>,
    /// Pools exported to peers.
    pub exported_pools: Vec<String>,
    /// Interfaces whose routes are never sent to iBGP peers (`*.cali`, `*.calico`, `tunl0`).
    pub internal_reject_interfaces: Vec<String>,
    /// Service prefixes advertised from this node (none on a node excluded from LB routes).
    pub advertised_services: Vec<String>,
    /// This node is a route reflector.
    pub route_reflector: bool,
    /// `serviceLoadBalancerIPs` (a reflector accepts routes within them).
    pub lb_ranges: Vec<String>,
    /// `serviceExternalIPs` (likewise).
    pub external_ranges: Vec<String>,
    /// Service ranges never programmed into the kernel.
    pub kernel_reject_services: Vec<String>,
    /// Next hops of other WireGuard nodes (their routes are Felix's).
    pub wireguard_next_hops: Vec<String>,
    /// Per-pool rules of `calico_kernel_programming`, in Calico's order.
    pub kernel_pool_rules: Vec<KernelPoolRule>,
}

/// How BIRD programs one pool's routes into the kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelPoolRule {
    pub cidr: String,
    /// `accept`; `ipip` (tunnel via tunl0); `ipip_cross_subnet` (tunnel unless the next hop is
    /// in `subnet`); `felix` (Felix programs them); `vxlan` (VXLAN pool, Felix's).
    pub action: &'static str,
    /// The node's subnet, for `ipip_cross_subnet`.
    pub subnet: Option<String>,
}

/// `bird_aggr.cfg`: the static routes and per-block aggregation.
#[derive(Clone, Debug, Serialize)]
pub struct AggrModel {
    /// The node's IPAM blocks, in Calico's order.
    pub blocks: Vec<BlockModel>,
    /// Service prefixes advertised from this node (`route X blackhole;`).
    pub advertised_services: Vec<String>,
    /// Routes to global peers reachable through a gateway (`reachableBy`).
    pub global_gateway_routes: Vec<GatewayRouteModel>,
    /// Likewise for node-specific peers.
    pub node_gateway_routes: Vec<GatewayRouteModel>,
    /// 32 or 128.
    pub host_prefix_len: u8,
}

/// One IPAM block affine to the node.
#[derive(Clone, Debug, Serialize)]
pub struct BlockModel {
    pub cidr: String,
    /// The affinity state: `confirmed`, `pendingDeletion`, ... or empty (implicitly confirmed).
    pub state: String,
    /// A single-address block (no blackhole route for it).
    pub host_route: bool,
}

/// `route <peer>/32 via <gateway>;`.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayRouteModel {
    pub peer: String,
    pub gateway: String,
}

/// Both families' models plus what the caller reports.
pub struct Model {
    pub families: [FamilyModel; 2],
    pub warnings: Vec<String>,
    pub has_password: bool,
    pub mesh_size: Option<usize>,
}

/// How BIRD should treat cluster routes of each pool class (BGPConfiguration.programClusterRoutes).
#[derive(Clone, Copy)]
struct ClusterRoutePolicy {
    ipip: bool,
    no_encap: bool,
}

pub fn build(c: &Cluster<'_>, opts: &RenderOptions) -> Result<Model, RenderError> {
    let router_id = router_id(c, opts)?;
    let policy = cluster_route_policy(c, opts);
    let v4 = family(c, false, &router_id, policy);
    let v6 = family(c, true, &router_id, policy);
    let mut warnings = Vec::new();
    for w in c.warnings.borrow().iter() {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    Ok(Model {
        families: [v4, v6],
        warnings,
        has_password: c.has_password.get(),
        mesh_size: c.mesh_size(),
    })
}

/// One family, computed in the order the warnings are reported in.
fn family(c: &Cluster<'_>, v6: bool, router_id: &str, policy: ClusterRoutePolicy) -> FamilyModel {
    let peers = c.bird_peers(v6);
    let (debug, peer_debug) = match log_level(c).as_str() {
        "debug" => (Some("all"), Some("debug all;")),
        "none" => (None, None),
        _ => (
            Some("{ states }"),
            Some("debug { states, routes, filters, events };"),
        ),
    };
    let communities = communities(c, v6)
        .into_iter()
        .map(|(cidr, adds)| CommunityRule { cidr, adds })
        .collect();
    let ignored = c.default.ignored_interfaces.clone().unwrap_or_default();
    let ignored_interfaces = (!ignored.is_empty()).then(|| {
        ignored
            .into_iter()
            .filter(|i| valid_iface_pattern(c, i))
            .collect::<Vec<_>>()
    });
    let listen_address = (c.default.bind_mode.as_deref() == Some("NodeIP"))
        .then(|| c.me.addr(v6))
        .flatten()
        .map(|a| a.to_string());
    let enabled = c.me.addr(v6).is_some();
    let (local_as, filter_functions, peers) = if enabled {
        // Only filters every rule of which could be written are in `c.filters` (Cluster::new).
        let filters: Vec<&crate::api::BgpFilter> = c.filters.values().copied().collect();
        let lines = match super::filter::functions(&filters, v6) {
            Ok(lines) => lines,
            Err((name, e)) => unreachable!("BGPFilter {name:?} was checked in Cluster::new: {e}"),
        };
        (
            c.node_as(),
            lines,
            peers.iter().map(PeerModel::from_peer).collect(),
        )
    } else {
        (c.node_as(), Vec::new(), Vec::new())
    };
    let normal_priority = normal_priority(c, v6);
    let ipam = ipam_model(c, v6, policy);
    let aggr = aggr_model(c, v6);
    FamilyModel {
        node: c.me.name.clone(),
        v6,
        prefix: if v6 { "bird6" } else { "bird" },
        bird_int_max: BIRD_INT_MAX,
        override_preference: OVERRIDE_PREFERENCE,
        normal_priority,
        enabled,
        router_id: router_id.to_string(),
        local_as,
        debug,
        peer_debug,
        ignored_interfaces,
        listen_address,
        listen_port: c.my_listen_port(),
        communities,
        filter_functions,
        peers,
        ipam,
        aggr,
    }
}

fn router_id(c: &Cluster<'_>, opts: &RenderOptions) -> Result<String, RenderError> {
    match opts.router_id.as_deref().map(str::trim) {
        Some("hash") => Ok(hashed_router_id(&c.me.name)),
        Some(id) if !id.is_empty() => {
            if id.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(RenderError::Node {
                    node: c.me.name.clone(),
                    field: "router id".into(),
                    message: format!("{id:?} is not an IPv4 address or \"hash\""),
                });
            }
            Ok(id.to_string())
        }
        _ => match c.me.addr(false) {
            Some(ip) => Ok(ip.to_string()),
            // No address at all: BIRD would get `router id ;` and refuse the whole file.
            None if c.me.addr(true).is_none() => Err(RenderError::Node {
                node: c.me.name.clone(),
                field: format!("metadata.annotations[{}]", super::snapshot::ANN_IPV4),
                message: format!(
                    "the node has no BGP address (neither {} nor {}): nothing to peer from; calico-node's address detection sets them, or annotate the node",
                    super::snapshot::ANN_IPV4,
                    super::snapshot::ANN_IPV6
                ),
            }),
            None => Err(RenderError::Node {
                node: c.me.name.clone(),
                field: format!("metadata.annotations[{}]", super::snapshot::ANN_IPV4),
                message:
                    "an IPv6-only node needs a router id: set --router-id (an IPv4 address, or \"hash\")"
                        .into(),
            }),
        },
    }
}

fn cluster_route_policy(c: &Cluster<'_>, opts: &RenderOptions) -> ClusterRoutePolicy {
    let default = ClusterRoutePolicy {
        ipip: false,
        no_encap: true,
    };
    let mut p = match c.default.program_cluster_routes.as_deref() {
        None | Some("EnabledNoEncapOnly") => default,
        Some("Disabled") => ClusterRoutePolicy {
            ipip: false,
            no_encap: false,
        },
        Some("Enabled") => ClusterRoutePolicy {
            ipip: true,
            no_encap: true,
        },
        Some("EnabledIPIPOnly") => ClusterRoutePolicy {
            ipip: true,
            no_encap: false,
        },
        Some(other) => {
            c.warn(format!(
                "BGPConfiguration \"default\": spec.programClusterRoutes {other:?} is not Disabled, Enabled, EnabledIPIPOnly or EnabledNoEncapOnly; using EnabledNoEncapOnly"
            ));
            default
        }
    };
    if p.ipip && !opts.bird_fork {
        let has_ipip = c
            .snap
            .pools
            .iter()
            .any(|pool| !uses_vxlan(&pool.spec) && uses_ipip(&pool.spec));
        if has_ipip {
            c.warn("BGPConfiguration \"default\": spec.programClusterRoutes asks BIRD to program IPIP routes, which needs Calico's BIRD fork (krt_tunnel); stock BIRD cannot, so IPIP routes are left to Felix (pass --bird-fork to render krt_tunnel)".to_string());
        }
        p.ipip = false;
    }
    p
}

fn uses_ipip(p: &crate::api::IPPoolSpec) -> bool {
    !matches!(p.ipip(), crate::api::ippool::EncapMode::Never)
}

fn uses_vxlan(p: &crate::api::IPPoolSpec) -> bool {
    !matches!(p.vxlan(), crate::api::ippool::EncapMode::Never)
}

fn log_level(c: &Cluster<'_>) -> String {
    let v = c
        .node_config
        .as_ref()
        .and_then(|n| n.log_severity_screen.clone())
        .or_else(|| c.default.log_severity_screen.clone())
        .unwrap_or_default()
        .to_lowercase();
    match v.as_str() {
        "" | "info" => "info".into(),
        "debug" => "debug".into(),
        _ => "none".into(),
    }
}

fn normal_priority(c: &Cluster<'_>, v6: bool) -> i64 {
    // Outside 1..2147483646 the filters' arithmetic leaves BIRD's 32-bit range.
    if v6 {
        c.default.ipv6_normal_route_priority
    } else {
        c.default.ipv4_normal_route_priority
    }
    .filter(|p| (1..=2147483646).contains(p))
    .unwrap_or(1024)
}

fn valid_iface_pattern(c: &Cluster<'_>, i: &str) -> bool {
    // Calico's character set: nothing in it can end BIRD's quoted string.
    let ok = super::validate::is_interface_pattern(i);
    if !ok {
        c.warn(format!(
            "BGPConfiguration \"default\": spec.ignoredInterfaces entry {i:?} is not an interface name pattern; ignored"
        ));
    }
    ok
}

/// `apply_communities` rules of one family: (cidr, add statements). The node.<name> list replaces
/// the default one; values are de-duplicated and sorted as strings, CIDR order is kept.
fn communities(c: &Cluster<'_>, v6: bool) -> Vec<(String, Vec<String>)> {
    let (src_name, src) = match &c.node_config {
        Some(n) if n.prefix_advertisements.as_ref().is_some_and(|p| !p.is_empty()) => {
            (format!("node.{}", c.me.name), n)
        }
        _ => ("default".to_string(), &c.default),
    };
    let names: BTreeMap<&str, &str> = src
        .communities
        .iter()
        .flatten()
        .filter_map(|k| Some((k.name.as_deref()?, k.value.as_deref()?)))
        .collect();
    let mut out = Vec::new();
    for (i, adv) in src.prefix_advertisements.iter().flatten().enumerate() {
        let Some(cidr) = adv.cidr.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let net = match cidr.parse::<IpNet>() {
            Ok(n) if n.trunc() == n => n,
            // BIRD refuses a prefix with host bits (`validate::sanitize` normally took it out).
            _ => {
                c.warn(format!(
                    "BGPConfiguration {src_name:?}: spec.prefixAdvertisements[{i}].cidr {cidr:?} is not a CIDR without host bits; ignored"
                ));
                continue;
            }
        };
        if net.addr().is_ipv6() != v6 {
            continue;
        }
        let mut values: Vec<String> = Vec::new();
        for comm in adv.communities.iter().flatten() {
            let value = if is_community_value(comm) {
                comm.as_str()
            } else if let Some(v) = names.get(comm.as_str()) {
                v
            } else {
                c.warn(format!(
                    "BGPConfiguration {src_name:?}: spec.prefixAdvertisements[{i}].communities: {comm:?} is neither a community value nor a name in spec.communities; ignored"
                ));
                continue;
            };
            if !is_community_value(value) {
                c.warn(format!(
                    "BGPConfiguration {src_name:?}: spec.communities: {comm:?} has value {value:?}, not aa:nn or aa:nn:mm; ignored"
                ));
                continue;
            }
            values.push(value.to_string());
        }
        values.sort();
        values.dedup();
        let adds: Vec<String> = values
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                if parts.len() == 2 {
                    format!("bgp_community.add(({}, {}));", parts[0], parts[1])
                } else {
                    format!(
                        "bgp_large_community.add(({}, {}, {}));",
                        parts[0], parts[1], parts[2]
                    )
                }
            })
            .collect();
        if !adds.is_empty() {
            out.push((net.to_string(), adds));
        }
    }
    out
}

fn is_community_value(s: &str) -> bool {
    super::validate::is_community_value(s)
}

/// Sort key Calico uses for CIDRs stored as keys (`/` written `-`).
fn cidr_key(n: &IpNet) -> String {
    n.to_string().replace('/', "-")
}

/// Service ranges advertised from every node (Calico's "static routes" and "reject CIDRs").
struct ServiceRoutes {
    /// `route X blackhole;` and export accepts (empty on excluded nodes).
    advertised: Vec<IpNet>,
    /// Kernel rejects (kept on excluded nodes).
    kernel_reject: Vec<IpNet>,
    lb_ranges: Vec<IpNet>,
    external_ranges: Vec<IpNet>,
}

fn service_routes(c: &Cluster<'_>, v6: bool) -> ServiceRoutes {
    let parse = |field: &str, list: &Option<Vec<crate::api::bgp::CidrBlock>>| -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, b) in list.iter().flatten().enumerate() {
            if b.cidr.trim().is_empty() {
                continue;
            }
            match b.cidr.trim().parse::<IpNet>() {
                Ok(n) if n.addr().is_ipv6() == v6 => out.push(n.trunc()),
                Ok(_) => {}
                Err(_) => c.warn(format!(
                    "BGPConfiguration \"default\": spec.{field}[{i}].cidr {:?} is not a CIDR; ignored",
                    b.cidr
                )),
            }
        }
        out
    };
    let cluster = parse("serviceClusterIPs", &c.default.service_cluster_ips);
    let external = parse("serviceExternalIPs", &c.default.service_external_ips);
    let lb = parse("serviceLoadBalancerIPs", &c.default.service_load_balancer_ips);
    let single = |n: &IpNet| n.prefix_len() == n.max_prefix_len();
    let mut global: Vec<IpNet> = cluster.clone();
    global.extend(external.iter().filter(|n| !single(n)));
    if c.default.service_load_balancer_aggregation.as_deref() != Some("Disabled") {
        global.extend(lb.iter().filter(|n| !single(n)));
    }
    global.sort_by_key(cidr_key);
    global.dedup();
    let excluded = c.me.labels.get(LABEL_EXCLUDE_LB).is_some_and(|v| v == "true");
    // Per-service /32s are advertised (static route + export) but still programmed normally.
    let mut advertised = global.clone();
    advertised.extend(
        super::services::routes_for_node(c.snap, &c.default, &c.me.name)
            .into_iter()
            .filter(|n| n.addr().is_ipv6() == v6),
    );
    advertised.sort_by_key(cidr_key);
    advertised.dedup();
    ServiceRoutes {
        advertised: if excluded { Vec::new() } else { advertised },
        kernel_reject: global,
        lb_ranges: lb,
        external_ranges: external,
    }
}

fn ipam_model(c: &Cluster<'_>, v6: bool, policy: ClusterRoutePolicy) -> IpamModel {
    let mut disabled = Vec::new();
    let mut enabled = Vec::new();
    let mut kernel: Vec<(u8, KernelPoolRule)> = Vec::new();
    let network = if v6 { c.me.ipv6 } else { c.me.ipv4 }.map(|n| n.trunc());
    for pool in &c.snap.pools {
        let Some(net) = pool.spec.net().filter(|n| n.trunc() == *n) else {
            c.warn(format!(
                "IPPool {:?}: spec.cidr {:?} is not a CIDR without host bits; ignored",
                pool.metadata.name.as_deref().unwrap_or(""),
                pool.spec.cidr
            ));
            continue;
        };
        if net.addr().is_ipv6() != v6 {
            continue;
        }
        let cidr = net.to_string();
        let vxlan = uses_vxlan(&pool.spec);
        let ipip = !vxlan && uses_ipip(&pool.spec);
        let programs = !vxlan && if ipip { policy.ipip } else { policy.no_encap };
        if pool.spec.bgp_export_disabled() {
            disabled.push(cidr.clone());
        } else {
            enabled.push(cidr.clone());
        }
        // v4 kernel statements need the node's subnet (IPIP CrossSubnet); v6 keeps rejects only.
        // The rank orders rules of one CIDR as Calico's sorted statements do.
        let rule = |rank: u8, action: &'static str, subnet: Option<String>| {
            Some((
                rank,
                KernelPoolRule {
                    cidr: cidr.clone(),
                    action,
                    subnet,
                },
            ))
        };
        let stmt = if vxlan {
            rule(4, "vxlan", None)
        } else if programs {
            if v6 {
                None
            } else if ipip {
                match pool.spec.ipip() {
                    crate::api::ippool::EncapMode::CrossSubnet => rule(
                        1,
                        "ipip_cross_subnet",
                        Some(network.map(|n| n.to_string()).unwrap_or_default()),
                    ),
                    _ => rule(2, "ipip", None),
                }
            } else {
                rule(0, "accept", None)
            }
        } else {
            rule(3, "felix", None)
        };
        if let Some(s) = stmt
            && (v6 || network.is_some())
        {
            kernel.push(s);
        }
    }
    // Calico sorts the statements as text: `<cidr>) then { <rest>`, and no CIDR holds a `)`.
    let text_key = |cidr: &str| format!("{cidr})");
    disabled.sort_by_key(|c| text_key(c));
    enabled.sort_by_key(|c| text_key(c));
    kernel.sort_by(|(ra, a), (rb, b)| (text_key(&a.cidr), ra).cmp(&(text_key(&b.cidr), rb)));

    let mut tunnels = vec!["*.cali".to_string(), "*.calico".to_string()];
    if !policy.ipip {
        tunnels.push("tunl0".into());
    }
    let svc = service_routes(c, v6);
    let strings = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let mut wg: Vec<String> = Vec::new();
    if c.me.wireguard(v6).is_some() {
        wg = c
            .nodes
            .values()
            .filter(|n| n.name != c.me.name && n.wireguard(v6).is_some())
            .filter_map(|n| n.addr(v6))
            .map(|ip| ip.to_string())
            .collect();
        wg.sort_by_key(|ip| text_key(ip));
    }
    IpamModel {
        export_disabled_pools: disabled,
        exported_pools: enabled,
        internal_reject_interfaces: tunnels,
        advertised_services: strings(&svc.advertised),
        route_reflector: c.me.is_route_reflector(),
        lb_ranges: strings(&svc.lb_ranges),
        external_ranges: strings(&svc.external_ranges),
        kernel_reject_services: strings(&svc.kernel_reject),
        wireguard_next_hops: wg,
        kernel_pool_rules: kernel.into_iter().map(|(_, r)| r).collect(),
    }
}

struct BlockRow {
    net: IpNet,
    state: String,
}

fn node_blocks(c: &Cluster<'_>, v6: bool) -> Vec<BlockRow> {
    let mut rows = Vec::new();
    for a in &c.snap.affinities {
        let s = &a.spec;
        if s.node != c.me.name || s.affinity_type() != "host" || s.is_deleted() {
            continue;
        }
        if s.state == "pending" {
            continue;
        }
        let Ok(net) = s.cidr.parse::<IpNet>() else {
            c.warn(format!(
                "BlockAffinity {:?}: spec.cidr {:?} is not a CIDR; ignored",
                a.metadata.name.as_deref().unwrap_or(""),
                s.cidr
            ));
            continue;
        };
        if net.addr().is_ipv6() != v6 {
            continue;
        }
        rows.push(BlockRow {
            net: net.trunc(),
            state: s.state.clone(),
        });
    }
    // Two affinities for one block (only possible in hand-written manifests): the most settled
    // state wins, whatever the input order.
    let rank = |s: &str| match s {
        "confirmed" => 0,
        "" => 1,
        "pendingDeletion" => 2,
        _ => 3,
    };
    rows.sort_by(|a, b| {
        (cidr_key(&a.net), rank(&a.state), &a.state).cmp(&(cidr_key(&b.net), rank(&b.state), &b.state))
    });
    rows.dedup_by(|a, b| a.net == b.net);
    rows
}

fn aggr_model(c: &Cluster<'_>, v6: bool) -> AggrModel {
    let blocks = node_blocks(c, v6);
    let svc = service_routes(c, v6);
    let (global_gw, node_gw) = c.reachable_routes(v6);
    let host_len = if v6 { 128 } else { 32 };
    let gw = |l: Vec<(std::net::IpAddr, std::net::IpAddr)>| -> Vec<GatewayRouteModel> {
        l.into_iter()
            .map(|(peer, gateway)| GatewayRouteModel {
                peer: peer.to_string(),
                gateway: gateway.to_string(),
            })
            .collect()
    };
    AggrModel {
        blocks: blocks
            .into_iter()
            .map(|b| BlockModel {
                cidr: b.net.to_string(),
                state: b.state,
                host_route: b.net.prefix_len() == host_len,
            })
            .collect(),
        advertised_services: svc.advertised.iter().map(|n| n.to_string()).collect(),
        global_gateway_routes: gw(global_gw),
        node_gateway_routes: gw(node_gw),
        host_prefix_len: host_len,
    }
}
