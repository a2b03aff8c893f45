//! Pure pool decisions: the IPPools an Installation asks for (Calico's defaults), and the checks
//! CEL cannot do (overlap between pools in Calico's order, pod-CIDR containment, reserved ranges,
//! selector syntax). No I/O: the controllers feed it what their stores hold.

use std::collections::BTreeSet;

use ipnet::IpNet;
use jiff::Timestamp;

use super::podcidr::PodCidrs;
use crate::api::installation::{InstallationIPPool, InstallationSpec};
use crate::api::{IPAMBlockSpec, IPPoolSpec};

/// Label on every pool the Installation controller writes.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "tortie";
/// On an IPPool (or the Installation, for the pools it lists): "true" allows a pool outside the
/// cluster's pod CIDRs, for BGP-routed ranges the kubeadm podSubnet does not cover (tigera #1512).
pub const ALLOW_OUTSIDE_POD_CIDR: &str = "tortie.io/allow-outside-pod-cidr";

pub const DEFAULT_V4: &str = "default-ipv4-ippool";
pub const DEFAULT_V6: &str = "default-ipv6-ippool";

/// Selector syntax check with the IPAM engine's parser (Calico's language).
pub fn selector_ok(s: &str) -> Result<(), String> {
    crate::ipam::selector::Selector::parse(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Why a pool is refused: the pool, the field, a machine reason and a message with a remedy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub pool: String,
    pub field: &'static str,
    pub reason: &'static str,
    pub message: String,
}

fn problem(pool: &str, field: &'static str, reason: &'static str, message: String) -> Problem {
    Problem {
        pool: pool.to_string(),
        field,
        reason,
        message,
    }
}

/// A pool already in the cluster, as the Installation planner needs to see it.
pub struct Existing<'a> {
    pub name: &'a str,
    pub spec: &'a IPPoolSpec,
}

/// What the Installation controller should write.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// `None`: `ipPools: []`, pools are managed by hand and nothing is written or deleted.
    pub managed: bool,
    pub pools: Vec<(String, IPPoolSpec)>,
    pub problems: Vec<Problem>,
}

/// Calico's defaults and naming applied to the Installation's pool list (tigera operator
/// `defaults.go`), validated with [`check_spec`] plus the Installation-only rules.
///
/// Where tortie differs, on purpose: the pod-CIDR check runs on every reconcile (not only before
/// the first pool exists) and can be waived with [`ALLOW_OUTSIDE_POD_CIDR`]; an IPv4 pool with no
/// encapsulation set gets VXLAN when BGP is Disabled (IPIP needs BGP); duplicates are compared
/// after canonicalisation; a pool with a problem is skipped while the others are still written.
pub fn plan(
    inst: &InstallationSpec,
    pod: Option<&PodCidrs>,
    allow_outside: bool,
    existing: &[Existing<'_>],
    selector_ok: &dyn Fn(&str) -> Result<(), String>,
) -> Plan {
    let net = inst.calico_network.as_ref();
    let listed = net.and_then(|n| n.ip_pools.clone());
    let calico_cni = inst.cni.as_ref().is_none_or(|c| c.type_ == "Calico");
    let bgp_off = net.and_then(|n| n.bgp.as_deref()) == Some("Disabled") || !calico_cni;
    let listed_explicitly = listed.is_some();
    let items: Vec<InstallationIPPool> = match listed {
        Some(v) if v.is_empty() => return Plan::default(),
        Some(v) => v,
        None => default_items(inst, pod),
    };
    let mut plan = Plan {
        managed: true,
        ..Default::default()
    };
    let parsed: Vec<Option<IpNet>> = items
        .iter()
        .map(|p| p.cidr.trim().parse::<IpNet>().ok().map(|n| n.trunc()))
        .collect();
    let rules = ItemRules {
        families: (
            parsed.iter().filter(|n| matches!(n, Some(IpNet::V4(_)))).count(),
            parsed.iter().filter(|n| matches!(n, Some(IpNet::V6(_)))).count(),
        ),
        bgp_off,
        calico_cni,
        pod,
        allow_outside,
        existing,
        selector_ok,
    };
    let mut accepted: Vec<(String, IpNet)> = Vec::new();
    let mut seen_names = BTreeSet::new();
    for (i, (item, net)) in items.iter().zip(&parsed).enumerate() {
        match rules.plan_item(item, *net, &accepted, &mut seen_names) {
            Ok((name, cidr, spec)) => {
                accepted.push((name.clone(), cidr));
                plan.pools.push((name, spec));
            }
            // Name the Installation field of a listed pool, as the admission errors do.
            Err(mut p) => {
                if listed_explicitly {
                    p.message = format!("spec.calicoNetwork.ipPools[{i}].{}: {}", p.field, p.message);
                }
                plan.problems.push(p);
            }
        }
    }
    plan
}

/// What every Installation pool is checked against.
struct ItemRules<'a> {
    /// How many IPv4 and IPv6 pools the Installation lists (Calico's default names need one
    /// of a family).
    families: (usize, usize),
    bgp_off: bool,
    calico_cni: bool,
    pod: Option<&'a PodCidrs>,
    allow_outside: bool,
    existing: &'a [Existing<'a>],
    selector_ok: &'a dyn Fn(&str) -> Result<(), String>,
}

impl ItemRules<'_> {
    /// One listed pool: its name, CIDR and IPPool spec, or the first problem with it, given the
    /// pools accepted before it and the names listed before it (`seen`, which this extends).
    fn plan_item(
        &self,
        item: &InstallationIPPool,
        net: Option<IpNet>,
        accepted: &[(String, IpNet)],
        seen: &mut BTreeSet<String>,
    ) -> Result<(String, IpNet, IPPoolSpec), Problem> {
        let Some(cidr) = net else {
            let label = item.name.clone().unwrap_or_else(|| item.cidr.clone());
            return Err(problem(
                &label,
                "cidr",
                "InvalidCIDR",
                format!(
                    "Installation pool {label}: spec.calicoNetwork.ipPools[].cidr {:?} is not a CIDR",
                    item.cidr
                ),
            ));
        };
        let name = self.pool_name(item, cidr);
        let spec = to_spec(item, cidr, self.bgp_off, self.calico_cni).map_err(|p| {
            problem(
                &name,
                p.0,
                p.1,
                format!("Installation pool {name} ({cidr}): {}", p.2),
            )
        })?;
        if let Some((other, _)) = accepted.iter().find(|(_, o)| *o == cidr) {
            return Err(problem(
                &name,
                "cidr",
                "Duplicate",
                format!(
                    "Installation pool {name} ({cidr}) has the same CIDR as pool {other} once canonicalised; list each CIDR once"
                ),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(problem(
                &name,
                "name",
                "Duplicate",
                format!("Installation pool {name} is listed more than once"),
            ));
        }
        if let Some(p) = check_spec(&name, &spec, self.pod, self.allow_outside, self.selector_ok) {
            return Err(p);
        }
        if let Some((other, o)) = accepted.iter().find(|(_, o)| overlaps(o, &cidr)) {
            return Err(problem(
                &name,
                "cidr",
                "CIDROverlap",
                format!(
                    "Installation pool {name} ({cidr}) overlaps pool {other} ({o}) listed before it; pools must not overlap"
                ),
            ));
        }
        if let Some(e) = self.existing.iter().find(|e| e.name == name) {
            unchanged_identity(&name, cidr, &spec, e)?;
        }
        Ok((name, cidr, spec))
    }

    /// The listed name; else the name of the pool that already has this CIDR; else Calico's
    /// default name when the pool is its family's only one, or the name derived from the CIDR.
    fn pool_name(&self, item: &InstallationIPPool, cidr: IpNet) -> String {
        if let Some(n) = item.name.as_ref().filter(|n| !n.is_empty()) {
            return n.clone();
        }
        let (v4s, v6s) = self.families;
        self.existing
            .iter()
            .find(|e| e.spec.net().map(|n| n.trunc()) == Some(cidr))
            .map(|e| e.name.to_string())
            .unwrap_or_else(|| match cidr {
                IpNet::V4(_) if v4s == 1 && v4s + v6s <= 2 => DEFAULT_V4.into(),
                IpNet::V6(_) if v6s == 1 && v4s + v6s <= 2 => DEFAULT_V6.into(),
                _ => derived_name(&cidr),
            })
    }
}

/// An existing pool keeps its CIDR and block size: changing either would orphan what is
/// allocated in it.
fn unchanged_identity(name: &str, cidr: IpNet, spec: &IPPoolSpec, e: &Existing<'_>) -> Result<(), Problem> {
    if e.spec.net().map(|n| n.trunc()) != Some(cidr) {
        return Err(problem(
            name,
            "cidr",
            "ForbiddenChange",
            format!(
                "IPPool {name} exists with cidr {}; changing it to {cidr} is refused (addresses in use would be orphaned). Add a pool with a new name, set disableNewAllocations on {name}, recycle the pods, then remove it",
                e.spec.cidr
            ),
        ));
    }
    if e.spec.effective_block_size() != spec.effective_block_size() {
        return Err(problem(
            name,
            "blockSize",
            "ForbiddenChange",
            format!(
                "IPPool {name} exists with blockSize {}; changing it to {} is refused (existing blocks keep their size). Create a new pool with the new block size instead",
                e.spec.effective_block_size(),
                spec.effective_block_size()
            ),
        ));
    }
    Ok(())
}

/// `ipPools` unset: one pool per pod CIDR, else Calico's hard default.
fn default_items(inst: &InstallationSpec, pod: Option<&PodCidrs>) -> Vec<InstallationIPPool> {
    let cidrs: Vec<String> = match pod {
        Some(p) => p.cidrs.iter().map(|c| c.to_string()).collect(),
        None if inst.kubernetes_provider.as_deref() == Some("EKS") => {
            return vec![InstallationIPPool {
                cidr: "172.16.0.0/16".into(),
                encapsulation: Some("VXLAN".into()),
                ..Default::default()
            }];
        }
        None => vec!["192.168.0.0/16".into()],
    };
    let (mut v4, mut v6) = (false, false);
    cidrs
        .into_iter()
        .map(|c| {
            let is6 = c.contains(':');
            let name = match (is6, v4, v6) {
                (false, false, _) => Some(DEFAULT_V4.to_string()),
                (true, _, false) => Some(DEFAULT_V6.to_string()),
                _ => None,
            };
            if is6 {
                v6 = true
            } else {
                v4 = true
            }
            InstallationIPPool {
                name,
                cidr: c,
                ..Default::default()
            }
        })
        .collect()
}

/// Calico's generated name: `10.0.0.0/8` → `10.0.0.0-8`; IPv6 fully expanded with `.` for `:`.
pub fn derived_name(cidr: &IpNet) -> String {
    match cidr {
        IpNet::V4(n) => format!("{}-{}", n.network(), n.prefix_len()),
        IpNet::V6(n) => {
            let segs: Vec<String> = n
                .network()
                .segments()
                .iter()
                .map(|s| format!("{s:04x}"))
                .collect();
            format!("{}-{}", segs.join("."), n.prefix_len())
        }
    }
}

type FieldErr = (&'static str, &'static str, String);

/// Installation pool → IPPool spec (tigera `convert.go`), every field written explicitly.
fn to_spec(
    item: &InstallationIPPool,
    cidr: IpNet,
    bgp_off: bool,
    calico_cni: bool,
) -> Result<IPPoolSpec, FieldErr> {
    let v6 = matches!(cidr, IpNet::V6(_));
    let (ipip, vxlan) = encapsulation(item, &cidr, bgp_off, calico_cni)?;
    Ok(IPPoolSpec {
        cidr: cidr.to_string(),
        ipip_mode: Some(ipip.into()),
        vxlan_mode: Some(vxlan.into()),
        nat_outgoing: Some(nat_outgoing(item, v6)?),
        disabled: Some(item.disable_new_allocations.unwrap_or(false)),
        disable_bgp_export: Some(item.disable_bgp_export.unwrap_or(false)),
        block_size: Some(
            item.block_size
                .filter(|b| *b > 0)
                .unwrap_or(if v6 { 122 } else { 26 }),
        ),
        node_selector: Some(
            item.node_selector
                .clone()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "all()".into()),
        ),
        namespace_selector: None,
        allowed_uses: Some(allowed_uses(item)?),
        assignment_mode: Some(assignment_mode(item)?),
    })
}

/// `(ipipMode, vxlanMode)` of the Installation's encapsulation. Unset: none for IPv6 or another
/// CNI, VXLAN when BGP is off (IPIP needs BGP), else IPIP.
fn encapsulation(
    item: &InstallationIPPool,
    cidr: &IpNet,
    bgp_off: bool,
    calico_cni: bool,
) -> Result<(&'static str, &'static str), FieldErr> {
    let v6 = matches!(cidr, IpNet::V6(_));
    let encap = match item.encapsulation.as_deref() {
        Some(e) if !e.is_empty() => e,
        _ if v6 || !calico_cni => "None",
        _ if bgp_off => "VXLAN",
        _ => "IPIP",
    };
    let modes = match encap {
        "IPIP" => ("Always", "Never"),
        "IPIPCrossSubnet" => ("CrossSubnet", "Never"),
        "VXLAN" => ("Never", "Always"),
        "VXLANCrossSubnet" => ("Never", "CrossSubnet"),
        "None" => ("Never", "Never"),
        other => {
            return Err((
                "encapsulation",
                "InvalidEncapsulation",
                format!(
                    "encapsulation {other:?} is not one of IPIPCrossSubnet, IPIP, VXLAN, VXLANCrossSubnet, None"
                ),
            ));
        }
    };
    if v6 && modes.0 != "Never" {
        return Err((
            "encapsulation",
            "InvalidEncapsulation",
            format!("IPIP encapsulation is not supported by IPv6 pools, but it is set for {cidr}"),
        ));
    }
    Ok(modes)
}

/// Unset: on for IPv4, off for IPv6.
fn nat_outgoing(item: &InstallationIPPool, v6: bool) -> Result<bool, FieldErr> {
    match item.nat_outgoing.as_deref() {
        None | Some("") => Ok(!v6),
        Some("Enabled") => Ok(true),
        Some("Disabled") => Ok(false),
        Some(other) => Err((
            "natOutgoing",
            "InvalidNATOutgoing",
            format!("natOutgoing {other:?} is not one of Enabled, Disabled"),
        )),
    }
}

/// Unset or empty: Workload and Tunnel.
fn allowed_uses(item: &InstallationIPPool) -> Result<Vec<String>, FieldErr> {
    let uses = match &item.allowed_uses {
        Some(u) if !u.is_empty() => u.clone(),
        _ => vec!["Workload".into(), "Tunnel".into()],
    };
    match uses
        .iter()
        .find(|u| !matches!(u.as_str(), "Workload" | "Tunnel" | "LoadBalancer"))
    {
        Some(u) => Err((
            "allowedUses",
            "InvalidAllowedUses",
            format!("allowedUses {u:?} is not one of Workload, Tunnel, LoadBalancer"),
        )),
        None => Ok(uses),
    }
}

/// Unset or empty: Automatic.
fn assignment_mode(item: &InstallationIPPool) -> Result<String, FieldErr> {
    let mode = item
        .assignment_mode
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "Automatic".into());
    if !matches!(mode.as_str(), "Automatic" | "Manual") {
        return Err((
            "assignmentMode",
            "InvalidAssignmentMode",
            format!("assignmentMode {mode:?} is not one of Automatic, Manual"),
        ));
    }
    Ok(mode)
}

/// Ranges no pool may touch: (range, reason, what it is).
const RESERVED: &[(&str, &str, &str)] = &[
    ("169.254.0.0/16", "LinkLocal", "the IPv4 link-local range"),
    ("fe80::/10", "LinkLocal", "the IPv6 link-local range"),
    ("0.0.0.0/8", "ReservedRange", "the IPv4 \"this network\" range"),
    ("127.0.0.0/8", "ReservedRange", "the IPv4 loopback range"),
    ("224.0.0.0/4", "ReservedRange", "the IPv4 multicast range"),
    (
        "240.0.0.0/4",
        "ReservedRange",
        "the reserved IPv4 range (and broadcast)",
    ),
    ("::/128", "ReservedRange", "the IPv6 unspecified address"),
    ("::1/128", "ReservedRange", "the IPv6 loopback address"),
    // Go formats these as dotted IPv4, so Calico would name their blocks after 0.0.0.0/0.
    ("::ffff:0:0/96", "ReservedRange", "the IPv4-mapped IPv6 range"),
    ("ff00::/8", "ReservedRange", "the IPv6 multicast range"),
];

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Checks of one pool that do not depend on other pools. `None` = fine.
pub fn check_spec(
    name: &str,
    spec: &IPPoolSpec,
    pod: Option<&PodCidrs>,
    allow_outside: bool,
    selector_ok: &dyn Fn(&str) -> Result<(), String>,
) -> Option<Problem> {
    let net = match check_cidr(name, spec) {
        Ok(net) => net,
        Err(p) => return Some(p),
    };
    check_block_size(name, spec, &net)
        .or_else(|| check_encapsulation(name, spec, &net))
        .or_else(|| check_allowed_uses(name, spec))
        .or_else(|| check_selectors(name, spec, selector_ok))
        .or_else(|| check_pod_cidr(name, &net, pod, allow_outside))
}

/// A strictly masked CIDR clear of every reserved range.
fn check_cidr(name: &str, spec: &IPPoolSpec) -> Result<IpNet, Problem> {
    let Ok(net) = spec.cidr.parse::<IpNet>() else {
        return Err(problem(
            name,
            "cidr",
            "InvalidCIDR",
            format!(
                "IPPool {name}: spec.cidr {:?} is not a CIDR such as 10.48.0.0/16",
                spec.cidr
            ),
        ));
    };
    if net.trunc() != net {
        return Err(problem(
            name,
            "cidr",
            "InvalidCIDR",
            format!(
                "IPPool {name}: spec.cidr {net} is not strictly masked; use {}",
                net.trunc()
            ),
        ));
    }
    for (r, reason, what) in RESERVED {
        let r: IpNet = r.parse().expect("constant");
        if overlaps(&r, &net) {
            return Err(problem(
                name,
                "cidr",
                reason,
                format!("IPPool {name}: spec.cidr {net} overlaps {what} {r}"),
            ));
        }
    }
    Ok(net)
}

/// A block size in the family's range that fits in the pool (a disabled pool may be smaller:
/// it only drains).
fn check_block_size(name: &str, spec: &IPPoolSpec, net: &IpNet) -> Option<Problem> {
    let v6 = matches!(net, IpNet::V6(_));
    let bs = spec.effective_block_size();
    let (lo, hi) = if v6 { (116, 128) } else { (20, 32) };
    if bs < lo || bs > hi {
        return Some(problem(
            name,
            "blockSize",
            "InvalidBlockSize",
            format!(
                "IPPool {name}: spec.blockSize {bs} must be between {lo} and {hi} for an IPv{} pool",
                if v6 { 6 } else { 4 }
            ),
        ));
    }
    (net.prefix_len() > bs && !spec.is_disabled()).then(|| {
        problem(
            name,
            "blockSize",
            "InvalidBlockSize",
            format!(
                "IPPool {name}: the pool {net} is smaller than one block (/{bs}); use a wider cidr or a larger blockSize"
            ),
        )
    })
}

/// At most one of IPIP and VXLAN, and no IPIP on IPv6.
fn check_encapsulation(name: &str, spec: &IPPoolSpec, net: &IpNet) -> Option<Problem> {
    use crate::api::ippool::EncapMode::Never;
    if spec.ipip() != Never && spec.vxlan() != Never {
        return Some(problem(
            name,
            "vxlanMode",
            "InvalidEncapsulation",
            format!("IPPool {name}: spec.ipipMode and spec.vxlanMode cannot both be enabled"),
        ));
    }
    (matches!(net, IpNet::V6(_)) && spec.ipip() != Never).then(|| {
        problem(
            name,
            "ipipMode",
            "InvalidEncapsulation",
            format!("IPPool {name}: IPIP is not supported on an IPv6 pool"),
        )
    })
}

/// LoadBalancer pools serve nothing else.
fn check_allowed_uses(name: &str, spec: &IPPoolSpec) -> Option<Problem> {
    let uses = spec.allowed_uses.as_ref()?;
    (uses.iter().any(|u| u == "LoadBalancer") && uses.iter().any(|u| u != "LoadBalancer")).then(|| {
        problem(
            name,
            "allowedUses",
            "InvalidAllowedUses",
            format!("IPPool {name}: allowedUse LoadBalancer cannot be combined with Workload or Tunnel"),
        )
    })
}

/// Both selectors parse in Calico's selector language.
fn check_selectors(
    name: &str,
    spec: &IPPoolSpec,
    selector_ok: &dyn Fn(&str) -> Result<(), String>,
) -> Option<Problem> {
    [
        ("nodeSelector", spec.node_selector.as_deref()),
        ("namespaceSelector", spec.namespace_selector.as_deref()),
    ]
    .into_iter()
    .find_map(|(field, sel)| {
        let s = sel.filter(|s| !s.trim().is_empty())?;
        let e = selector_ok(s).err()?;
        Some(problem(
            name,
            field,
            "InvalidSelector",
            format!("IPPool {name}: spec.{field} {s:?} is not a valid selector: {e}"),
        ))
    })
}

/// Inside the cluster's pod CIDRs, unless the pool is annotated as routed on purpose.
fn check_pod_cidr(name: &str, net: &IpNet, pod: Option<&PodCidrs>, allow_outside: bool) -> Option<Problem> {
    let pod = pod.filter(|p| !allow_outside && !p.contains(net))?;
    Some(problem(
        name,
        "cidr",
        "PodCIDRMismatch",
        format!(
            "IPPool {name} ({net}) is not within the cluster's pod CIDR(s) {} from {}; use a cidr inside the pod network, or annotate the pool {ALLOW_OUTSIDE_POD_CIDR}=true if it is routed on purpose",
            pod.list(),
            pod.source
        ),
    ))
}

/// One cluster pool as the IPPool controller sees it.
pub struct PoolView<'a> {
    pub name: &'a str,
    pub spec: &'a IPPoolSpec,
    pub created: Option<Timestamp>,
    pub deleting: bool,
    /// It already had `Allocatable=True`: it keeps precedence over newer overlapping pools.
    pub active: bool,
    pub allow_outside: bool,
}

/// Verdict per pool (same order as the input). Overlaps are resolved in Calico's order: active,
/// then terminating, then disabled, then new pools; then creation time; then name. The first pool
/// covering a range keeps it, later overlapping ones are refused.
pub fn validate_pools(
    pools: &[PoolView<'_>],
    pod: Option<&PodCidrs>,
    selector_ok: &dyn Fn(&str) -> Result<(), String>,
) -> Vec<Option<Problem>> {
    let mut out: Vec<Option<Problem>> = pools
        .iter()
        .map(|p| check_spec(p.name, p.spec, pod, p.allow_outside, selector_ok))
        .collect();
    let rank = |p: &PoolView<'_>| -> u8 {
        if p.deleting {
            1
        } else if p.spec.is_disabled() {
            2
        } else if p.active {
            0
        } else {
            3
        }
    };
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&pools[a], &pools[b]);
        (rank(pa), pa.created, pa.name).cmp(&(rank(pb), pb.created, pb.name))
    });
    let mut kept: Vec<(usize, IpNet)> = Vec::new();
    for i in order {
        if out[i].is_some() {
            continue;
        }
        let Ok(net) = pools[i].spec.cidr.parse::<IpNet>() else {
            continue;
        };
        if let Some((j, other)) = kept.iter().find(|(_, o)| overlaps(o, &net)) {
            let (name, first) = (pools[i].name, pools[*j].name);
            out[i] = Some(problem(
                name,
                "cidr",
                "CIDROverlap",
                format!(
                    "IPPool {name} ({net}) overlaps IPPool {first} ({other}), which came first; {name} is not used for allocation until its cidr no longer overlaps"
                ),
            ));
            continue;
        }
        kept.push((i, net));
    }
    out
}

/// Addresses a pool holds, capped at 2^63 - 1 for wide IPv6 pools: the apiserver stores integers
/// as int64 and refuses the whole status write for anything larger.
pub fn capacity(net: &IpNet) -> u64 {
    let host_bits = (net.max_prefix_len() - net.prefix_len()) as u32;
    if host_bits >= 63 {
        i64::MAX as u64
    } else {
        1u64 << host_bits
    }
}

/// Allocated addresses and blocks inside `net`, whichever pool owns them: what must be released
/// before a pool with this CIDR can go. Per-pool counts are `crate::ipam::usage::by_pool`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub allocations: u64,
    pub blocks: u64,
}

pub fn usage<'a>(net: &IpNet, blocks: impl IntoIterator<Item = &'a IPAMBlockSpec>) -> Usage {
    let mut u = Usage::default();
    for b in blocks {
        if b.is_deleted() {
            continue;
        }
        let Ok(bn) = b.cidr.parse::<IpNet>() else { continue };
        if net.contains(&bn) {
            u.blocks += 1;
            u.allocations += b.allocations.iter().filter(|a| a.is_some()).count() as u64;
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::installation::{CalicoNetworkSpec, CniSpec};
    use crate::controllers::podcidr::Source;

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    fn pod(c: &[&str]) -> PodCidrs {
        PodCidrs {
            cidrs: c.iter().map(|s| s.parse().unwrap()).collect(),
            source: Source::Kubeadm,
        }
    }

    fn inst(pools: Option<Vec<InstallationIPPool>>) -> InstallationSpec {
        InstallationSpec {
            cni: Some(CniSpec {
                type_: "Calico".into(),
                ..Default::default()
            }),
            calico_network: Some(CalicoNetworkSpec {
                ip_pools: pools,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn item(cidr: &str) -> InstallationIPPool {
        InstallationIPPool {
            cidr: cidr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn problems_of_listed_pools_name_the_installation_field() {
        let mut bad_sel = item("10.48.64.0/20");
        bad_sel.node_selector = Some("rack ==".into());
        let items = vec![item("10.48.0.0/16"), item("10.48.0.0/20"), bad_sel];
        let sel = |s: &str| selector_ok(s);
        let p = plan(
            &inst(Some(items)),
            Some(&pod(&["10.48.0.0/16"])),
            false,
            &[],
            &sel,
        );
        let msgs: Vec<&str> = p.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].starts_with("spec.calicoNetwork.ipPools[1].cidr: "),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("spec.calicoNetwork.ipPools[2].nodeSelector: "),
            "{msgs:?}"
        );
        // Default pools (ipPools unset) are not in the spec: no path.
        let p = plan(&inst(None), Some(&pod(&["10.48.0.0/16"])), false, &[], &|_| {
            Err("x".into())
        });
        assert!(!p.problems.is_empty() && !p.problems[0].message.starts_with("spec.calicoNetwork"));
    }

    #[test]
    fn no_pools_listed_gives_default_pool_from_pod_cidr() {
        let p = plan(&inst(None), Some(&pod(&["10.48.0.0/16"])), false, &[], &ok);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.pools.len(), 1);
        let (name, spec) = &p.pools[0];
        assert_eq!(name, DEFAULT_V4);
        assert_eq!(spec.cidr, "10.48.0.0/16");
        assert_eq!(spec.ipip_mode.as_deref(), Some("Always"));
        assert_eq!(spec.vxlan_mode.as_deref(), Some("Never"));
        assert_eq!(spec.nat_outgoing, Some(true));
        assert_eq!(spec.block_size, Some(26));
        assert_eq!(spec.node_selector.as_deref(), Some("all()"));
        assert_eq!(
            spec.allowed_uses.as_deref(),
            Some(&["Workload".to_string(), "Tunnel".to_string()][..])
        );
        assert_eq!(spec.assignment_mode.as_deref(), Some("Automatic"));
    }

    #[test]
    fn dual_stack_and_extra_cidrs_are_named_like_calico() {
        let p = plan(
            &inst(None),
            Some(&pod(&["10.244.0.0/16", "10.245.0.0/16", "fd00:10:244::/56"])),
            false,
            &[],
            &ok,
        );
        let names: Vec<&str> = p.pools.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [DEFAULT_V4, "10.245.0.0-16", DEFAULT_V6]);
        let v6 = &p.pools[2].1;
        assert_eq!(
            (v6.block_size, v6.nat_outgoing, v6.ipip_mode.as_deref()),
            (Some(122), Some(false), Some("Never"))
        );
        assert_eq!(
            derived_name(&"fd00::/64".parse().unwrap()),
            "fd00.0000.0000.0000.0000.0000.0000.0000-64"
        );
    }

    #[test]
    fn encapsulation_none_nat_disabled() {
        let mut i = item("10.10.0.0/16");
        i.encapsulation = Some("None".into());
        i.nat_outgoing = Some("Disabled".into());
        let p = plan(
            &inst(Some(vec![i])),
            Some(&pod(&["10.10.0.0/16"])),
            false,
            &[],
            &ok,
        );
        let (name, spec) = &p.pools[0];
        assert_eq!(name, DEFAULT_V4);
        assert_eq!(spec.ipip_mode.as_deref(), Some("Never"));
        assert_eq!(spec.vxlan_mode.as_deref(), Some("Never"));
        assert_eq!(spec.nat_outgoing, Some(false));
    }

    #[test]
    fn pool_outside_pod_cidr_is_refused_naming_both() {
        let p = plan(
            &inst(Some(vec![item("192.168.0.0/16")])),
            Some(&pod(&["10.48.0.0/16"])),
            false,
            &[],
            &ok,
        );
        assert!(p.pools.is_empty());
        assert_eq!(p.problems.len(), 1);
        let m = &p.problems[0].message;
        assert!(
            m.contains("192.168.0.0/16") && m.contains("10.48.0.0/16") && m.contains(DEFAULT_V4),
            "{m}"
        );
        assert_eq!(p.problems[0].reason, "PodCIDRMismatch");
        // Waived by the annotation.
        let p = plan(
            &inst(Some(vec![item("192.168.0.0/16")])),
            Some(&pod(&["10.48.0.0/16"])),
            true,
            &[],
            &ok,
        );
        assert_eq!(p.pools.len(), 1);
    }

    #[test]
    fn bgp_disabled_defaults_to_vxlan() {
        let mut i = inst(Some(vec![item("10.48.0.0/16")]));
        i.calico_network.as_mut().unwrap().bgp = Some("Disabled".into());
        let p = plan(&i, None, false, &[], &ok);
        assert_eq!(p.pools[0].1.vxlan_mode.as_deref(), Some("Always"));
        assert_eq!(p.pools[0].1.ipip_mode.as_deref(), Some("Never"));
    }

    #[test]
    fn forbidden_changes_and_adoption() {
        let old = IPPoolSpec {
            cidr: "10.48.0.0/16".into(),
            block_size: Some(26),
            ..Default::default()
        };
        let existing = [Existing {
            name: DEFAULT_V4,
            spec: &old,
        }];
        let mut i = item("10.50.0.0/16");
        i.name = Some(DEFAULT_V4.into());
        let p = plan(&inst(Some(vec![i])), None, false, &existing, &ok);
        assert_eq!(p.problems[0].reason, "ForbiddenChange");
        assert_eq!(p.problems[0].field, "cidr");
        let mut i = item("10.48.0.0/16");
        i.block_size = Some(24);
        let p = plan(&inst(Some(vec![i])), None, false, &existing, &ok);
        assert_eq!(p.problems[0].field, "blockSize");
        // Same CIDR under another name: the Installation pool adopts the existing name.
        let other = [Existing {
            name: "legacy",
            spec: &old,
        }];
        let p = plan(
            &inst(Some(vec![item("10.48.0.0/16"), item("10.49.0.0/16")])),
            None,
            false,
            &other,
            &ok,
        );
        assert_eq!(p.pools[0].0, "legacy");
    }

    #[test]
    fn installation_list_checks() {
        let p = plan(
            &inst(Some(vec![item("10.0.0.0/16"), item("10.0.0.1/16")])),
            None,
            false,
            &[],
            &ok,
        );
        assert_eq!(p.pools.len(), 1);
        assert_eq!(p.problems[0].reason, "Duplicate");
        let p = plan(
            &inst(Some(vec![item("10.0.0.0/16"), item("10.0.128.0/24")])),
            None,
            false,
            &[],
            &ok,
        );
        assert_eq!(p.pools.len(), 1);
        assert_eq!(p.problems[0].reason, "CIDROverlap");
        let mut v6 = item("fd00::/64");
        v6.encapsulation = Some("IPIP".into());
        let p = plan(&inst(Some(vec![v6])), None, false, &[], &ok);
        assert!(
            p.problems[0]
                .message
                .contains("IPIP encapsulation is not supported by IPv6 pools")
        );
        let p = plan(&inst(Some(vec![item("192.168.0.0/27")])), None, false, &[], &ok);
        assert_eq!(p.problems[0].reason, "InvalidBlockSize");
        assert!(plan(&inst(Some(vec![])), None, false, &[], &ok) == Plan::default());
    }

    fn spec(cidr: &str) -> IPPoolSpec {
        IPPoolSpec {
            cidr: cidr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn later_overlapping_pool_is_invalid() {
        let (a, b) = (spec("10.0.0.0/16"), spec("10.0.128.0/24"));
        let t1: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t2: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let views = |a_active: bool| {
            vec![
                PoolView {
                    name: "b",
                    spec: &b,
                    created: Some(t1),
                    deleting: false,
                    active: false,
                    allow_outside: false,
                },
                PoolView {
                    name: "a",
                    spec: &a,
                    created: Some(t2),
                    deleting: false,
                    active: a_active,
                    allow_outside: false,
                },
            ]
        };
        // Both new: the older (b) wins.
        let v = validate_pools(&views(false), None, &ok);
        assert!(v[0].is_none());
        assert_eq!(v[1].as_ref().unwrap().reason, "CIDROverlap");
        // An active pool keeps precedence over an older new one.
        let v = validate_pools(&views(true), None, &ok);
        assert!(v[1].is_none());
        assert!(v[0].as_ref().unwrap().message.contains("overlaps IPPool a"));
    }

    #[test]
    fn static_checks_name_the_field() {
        let c = |s: IPPoolSpec| check_spec("p", &s, None, false, &ok).map(|p| (p.field, p.reason));
        assert_eq!(c(spec("10.48.0.1/24")), Some(("cidr", "InvalidCIDR")));
        assert_eq!(c(spec("169.254.1.0/24")), Some(("cidr", "LinkLocal")));
        assert_eq!(c(spec("fe80::/64")), Some(("cidr", "LinkLocal")));
        assert_eq!(c(spec("127.0.0.0/16")), Some(("cidr", "ReservedRange")));
        assert_eq!(c(spec("224.0.0.0/24")), Some(("cidr", "ReservedRange")));
        assert_eq!(c(spec("::ffff:10.0.0.0/120")), Some(("cidr", "ReservedRange")));
        assert_eq!(c(spec("10.0.0.0/27")), Some(("blockSize", "InvalidBlockSize")));
        let mut s = spec("10.0.0.0/27");
        s.disabled = Some(true);
        assert_eq!(c(s), None);
        let mut s = spec("10.0.0.0/16");
        s.node_selector = Some("zone == ".into());
        let bad = |_: &str| Err("unexpected end".to_string());
        let p = check_spec("p", &s, None, false, &bad).unwrap();
        assert_eq!((p.field, p.reason), ("nodeSelector", "InvalidSelector"));
        assert_eq!(c(spec("10.0.0.0/16")), None);
    }

    #[test]
    fn capacity_and_usage() {
        assert_eq!(capacity(&"10.0.0.0/24".parse().unwrap()), 256);
        // Regression (bad-input corpus operator/004): 2^63 made every status write of a /64 or
        // wider IPv6 pool fail ("capacity in body must be of type integer").
        assert_eq!(capacity(&"fd00::/48".parse().unwrap()), i64::MAX as u64);
        assert_eq!(capacity(&"fd00::/65".parse().unwrap()), i64::MAX as u64);
        assert_eq!(capacity(&"fd00::/66".parse().unwrap()), 1 << 62);
        let b = IPAMBlockSpec {
            cidr: "10.0.0.0/30".into(),
            allocations: vec![Some(0), None, Some(0), None],
            ..Default::default()
        };
        let outside = IPAMBlockSpec {
            cidr: "10.1.0.0/30".into(),
            allocations: vec![Some(0); 4],
            ..Default::default()
        };
        let u = usage(&"10.0.0.0/24".parse().unwrap(), [&b, &outside]);
        assert_eq!(
            u,
            Usage {
                allocations: 2,
                blocks: 1
            }
        );
    }

    fn rules<'a>(families: (usize, usize), existing: &'a [Existing<'a>]) -> ItemRules<'a> {
        ItemRules {
            families,
            bgp_off: false,
            calico_cni: true,
            pod: None,
            allow_outside: false,
            existing,
            selector_ok: &ok,
        }
    }

    #[test]
    fn an_unnamed_pool_takes_the_existing_name_else_calicos_default_else_its_cidr() {
        let v4: IpNet = "10.48.0.0/16".parse().unwrap();
        let v6: IpNet = "fd00::/48".parse().unwrap();
        let old = IPPoolSpec {
            cidr: "10.48.0.0/16".into(),
            ..Default::default()
        };
        let existing = [Existing {
            name: "kept",
            spec: &old,
        }];
        let mut named = item("10.48.0.0/16");
        named.name = Some("mine".into());
        assert_eq!(rules((1, 0), &existing).pool_name(&named, v4), "mine");
        assert_eq!(
            rules((1, 0), &existing).pool_name(&item("10.48.0.0/16"), v4),
            "kept"
        );
        assert_eq!(
            rules((1, 1), &[]).pool_name(&item("10.48.0.0/16"), v4),
            DEFAULT_V4
        );
        assert_eq!(rules((1, 1), &[]).pool_name(&item("fd00::/48"), v6), DEFAULT_V6);
        // Two of a family: neither is the default.
        assert_eq!(
            rules((2, 0), &[]).pool_name(&item("10.48.0.0/16"), v4),
            "10.48.0.0-16"
        );
    }

    #[test]
    fn a_listed_pool_is_checked_against_those_before_it() {
        let r = rules((3, 0), &[]);
        let mut seen = BTreeSet::new();
        let (name, cidr, spec) = r
            .plan_item(&item("10.48.0.0/16"), "10.48.0.0/16".parse().ok(), &[], &mut seen)
            .unwrap();
        assert_eq!((name.as_str(), spec.block_size), ("10.48.0.0-16", Some(26)));
        let accepted = [(name, cidr)];
        let err = |it: &InstallationIPPool, seen: &mut BTreeSet<String>| {
            let net = it.cidr.parse::<IpNet>().ok().map(|n| n.trunc());
            let p = r.plan_item(it, net, &accepted, seen).unwrap_err();
            (p.field, p.reason)
        };
        assert_eq!(err(&item("10.48.0.1/16"), &mut seen), ("cidr", "Duplicate"));
        assert_eq!(err(&item("10.48.1.0/24"), &mut seen), ("cidr", "CIDROverlap"));
        assert_eq!(err(&item("nonsense"), &mut seen), ("cidr", "InvalidCIDR"));
        let mut twice = item("10.49.0.0/16");
        twice.name = Some("10.48.0.0-16".into());
        assert_eq!(err(&twice, &mut seen), ("name", "Duplicate"));
        let mut bad = item("10.50.0.0/16");
        bad.encapsulation = Some("GRE".into());
        assert_eq!(err(&bad, &mut seen), ("encapsulation", "InvalidEncapsulation"));
    }

    #[test]
    fn an_existing_pool_keeps_its_cidr_and_block_size() {
        let old = IPPoolSpec {
            cidr: "10.48.0.0/16".into(),
            block_size: Some(26),
            ..Default::default()
        };
        let e = Existing {
            name: "p",
            spec: &old,
        };
        let same = old.clone();
        assert!(unchanged_identity("p", "10.48.0.0/16".parse().unwrap(), &same, &e).is_ok());
        let p = unchanged_identity("p", "10.49.0.0/16".parse().unwrap(), &same, &e).unwrap_err();
        assert_eq!((p.field, p.reason), ("cidr", "ForbiddenChange"));
        let smaller = IPPoolSpec {
            block_size: Some(28),
            ..old.clone()
        };
        let p = unchanged_identity("p", "10.48.0.0/16".parse().unwrap(), &smaller, &e).unwrap_err();
        assert_eq!((p.field, p.reason), ("blockSize", "ForbiddenChange"));
    }

    #[test]
    fn each_spec_check_names_its_field() {
        let spec = |cidr: &str| IPPoolSpec {
            cidr: cidr.into(),
            ..Default::default()
        };
        let field = |p: Option<Problem>| p.map(|p| (p.field, p.reason));
        assert_eq!(
            field(check_cidr("p", &spec("10.48.0.1/16")).err()),
            Some(("cidr", "InvalidCIDR"))
        );
        assert_eq!(
            field(check_cidr("p", &spec("127.1.0.0/16")).err()),
            Some(("cidr", "ReservedRange"))
        );
        let net: IpNet = "10.48.0.0/28".parse().unwrap();
        // A /28 pool cannot hold a /26 block, unless it is disabled (it only drains then).
        let small = spec("10.48.0.0/28");
        assert_eq!(
            field(check_block_size("p", &small, &net)),
            Some(("blockSize", "InvalidBlockSize"))
        );
        let draining = IPPoolSpec {
            disabled: Some(true),
            ..small.clone()
        };
        assert_eq!(check_block_size("p", &draining, &net), None);
        let both = IPPoolSpec {
            ipip_mode: Some("Always".into()),
            vxlan_mode: Some("Always".into()),
            ..small.clone()
        };
        assert_eq!(
            field(check_encapsulation("p", &both, &net)),
            Some(("vxlanMode", "InvalidEncapsulation"))
        );
        let lb = IPPoolSpec {
            allowed_uses: Some(vec!["LoadBalancer".into(), "Workload".into()]),
            ..small.clone()
        };
        assert_eq!(
            field(check_allowed_uses("p", &lb)),
            Some(("allowedUses", "InvalidAllowedUses"))
        );
        let sel = IPPoolSpec {
            namespace_selector: Some("team ==".into()),
            ..small.clone()
        };
        assert_eq!(
            field(check_selectors("p", &sel, &selector_ok)),
            Some(("namespaceSelector", "InvalidSelector"))
        );
        let outside: IpNet = "10.99.0.0/16".parse().unwrap();
        let cluster = pod(&["10.48.0.0/16"]);
        assert_eq!(
            field(check_pod_cidr("p", &outside, Some(&cluster), false)),
            Some(("cidr", "PodCIDRMismatch"))
        );
        assert_eq!(check_pod_cidr("p", &outside, Some(&cluster), true), None);
        assert_eq!(check_pod_cidr("p", &outside, None, false), None);
    }

    #[test]
    fn installation_pool_fields_default_as_the_tigera_operator_does() {
        let v4: IpNet = "10.48.0.0/16".parse().unwrap();
        let v6: IpNet = "fd00::/48".parse().unwrap();
        let it = item("10.48.0.0/16");
        assert_eq!(encapsulation(&it, &v4, false, true), Ok(("Always", "Never")));
        assert_eq!(encapsulation(&it, &v4, true, true), Ok(("Never", "Always")));
        assert_eq!(encapsulation(&it, &v4, false, false), Ok(("Never", "Never")));
        assert_eq!(encapsulation(&it, &v6, false, true), Ok(("Never", "Never")));
        let ipip6 = InstallationIPPool {
            encapsulation: Some("IPIP".into()),
            ..item("fd00::/48")
        };
        assert_eq!(
            encapsulation(&ipip6, &v6, false, true).unwrap_err().1,
            "InvalidEncapsulation"
        );
        assert_eq!(nat_outgoing(&it, false), Ok(true));
        assert_eq!(nat_outgoing(&it, true), Ok(false));
        let nat = InstallationIPPool {
            nat_outgoing: Some("Yes".into()),
            ..item("10.48.0.0/16")
        };
        assert_eq!(nat_outgoing(&nat, false).unwrap_err().0, "natOutgoing");
        assert_eq!(
            allowed_uses(&it),
            Ok(vec!["Workload".to_string(), "Tunnel".to_string()])
        );
        let uses = InstallationIPPool {
            allowed_uses: Some(vec!["Everything".into()]),
            ..item("10.48.0.0/16")
        };
        assert_eq!(allowed_uses(&uses).unwrap_err().1, "InvalidAllowedUses");
        assert_eq!(assignment_mode(&it), Ok("Automatic".to_string()));
        let mode = InstallationIPPool {
            assignment_mode: Some("Sometimes".into()),
            ..item("10.48.0.0/16")
        };
        assert_eq!(assignment_mode(&mode).unwrap_err().0, "assignmentMode");
    }
}
