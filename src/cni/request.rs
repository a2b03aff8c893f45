//! What an ADD asks the IPAM engine for, decided from the network config, the pod's and the
//! namespace's annotations and the cluster's IPPools, before anything is allocated: bad input
//! fails here and allocates nothing.
//!
//! Precedence per family (Calico's): pod annotation > namespace annotation > network config
//! `ipam.ipv4_pools`/`ipv6_pools` > every eligible pool (left to the engine: enabled,
//! nodeSelector/namespaceSelector match, assignmentMode Automatic, allowedUses Workload).
//! Where Calico is vague tortie is stricter, and says so in the error: a name that matches no
//! pool, a disabled pool and a pool of the other family are three distinct errors naming the
//! annotation, instead of Calico's "invalid CIDR address" / "does not exist, or is not enabled".

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::config::NetConf;
use super::error::{CniError, Source};

pub const ANN_IPV4_POOLS: &str = "cni.projectcalico.org/ipv4pools";
pub const ANN_IPV6_POOLS: &str = "cni.projectcalico.org/ipv6pools";
pub const ANN_IP_ADDRS: &str = "cni.projectcalico.org/ipAddrs";
pub const ANN_IP_FAMILIES: &str = "cni.projectcalico.org/ipFamilies";
pub const ANN_IP_ADDRS_NO_IPAM: &str = "cni.projectcalico.org/ipAddrsNoIpam";

/// The facts about one IPPool that pool resolution needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub cidr: IpNet,
    pub disabled: bool,
    pub deleting: bool,
    /// Effective block prefix length (gateways are chosen inside the address's block).
    pub block_size: u8,
    /// `spec.allowedUses` includes Workload (pods may get addresses from it).
    pub workload: bool,
}

impl PoolInfo {
    /// `None` for a pool whose CIDR does not parse (it can be neither named nor used).
    pub fn from_pool(p: &crate::api::Pool) -> Option<PoolInfo> {
        Some(PoolInfo {
            name: p.metadata.name.clone()?,
            cidr: p.spec.net()?.trunc(),
            disabled: p.spec.is_disabled(),
            deleting: p.metadata.deletion_timestamp.is_some(),
            block_size: p.spec.effective_block_size(),
            workload: p.spec.allows(crate::ipam::AllowedUse::Workload),
        })
    }
}

/// A pool the request names, resolved against the cluster's pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolChoice {
    pub name: String,
    pub cidr: IpNet,
}

/// One family's part of an automatic assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// Whether to assign an address of this family at all.
    pub wanted: bool,
    /// Requested pools, in the order given; empty: every eligible pool.
    pub pools: Vec<PoolChoice>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Auto {
        v4: Family,
        v6: Family,
    },
    /// `ipAddrs` (or `CNI_ARGS` `IP=`): exactly these addresses.
    Explicit {
        ips: Vec<IpAddr>,
        source: Source,
    },
}

/// Everything `plan` decides from.
pub struct Inputs<'a> {
    pub conf: &'a NetConf,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub pod_annotations: &'a BTreeMap<String, String>,
    /// `None` when the namespace could not be read (it then contributes nothing).
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
    pub pools: &'a [PoolInfo],
    /// `CNI_ARGS` `IP=` (comma-separated, as Calico's main plugin passes `ipAddrs`).
    pub cni_args_ip: Option<&'a str>,
}

impl Inputs<'_> {
    fn pod_source(&self, key: &str) -> Source {
        Source::PodAnnotation {
            namespace: self.namespace.into(),
            pod: self.pod.into(),
            key: key.into(),
        }
    }

    fn ns_source(&self, key: &str) -> Source {
        Source::NamespaceAnnotation {
            namespace: self.namespace.into(),
            key: key.into(),
        }
    }

    /// The pod's annotation if set, else the namespace's, with where it came from.
    fn annotation(&self, key: &str) -> Option<(Source, &str)> {
        if let Some(v) = self.pod_annotations.get(key) {
            return Some((self.pod_source(key), v.as_str()));
        }
        self.namespace_annotations
            .and_then(|a| a.get(key))
            .map(|v| (self.ns_source(key), v.as_str()))
    }
}

pub fn plan(inp: &Inputs<'_>) -> Result<Plan, CniError> {
    if let Some(ips) = explicit_ips(inp)? {
        return Ok(ips);
    }
    let (mut want4, mut want6) = (inp.conf.ipam.assign_ipv4, inp.conf.ipam.assign_ipv6);
    if let Some((source, value)) = inp.annotation(ANN_IP_FAMILIES) {
        (want4, want6) = parse_ip_families(&source, value)?;
    }
    let v4 = family(inp, true, want4)?;
    let v6 = family(inp, false, want6)?;
    if !v4.wanted && !v6.wanted {
        return Err(CniError::InvalidConfig {
            field: "ipam.assign_ipv4".into(),
            reason: "neither IPv4 nor IPv6 assignment is enabled".into(),
        });
    }
    Ok(Plan::Auto { v4, v6 })
}

fn family(inp: &Inputs<'_>, v4: bool, wanted: bool) -> Result<Family, CniError> {
    let (key, field, conf_list) = if v4 {
        (ANN_IPV4_POOLS, "ipam.ipv4_pools", &inp.conf.ipam.ipv4_pools)
    } else {
        (ANN_IPV6_POOLS, "ipam.ipv6_pools", &inp.conf.ipam.ipv6_pools)
    };
    // Parse even a family that is not wanted: a malformed annotation is an error either way.
    let mut chosen: Option<(Source, Vec<String>)> = None;
    if let Some(v) = inp.pod_annotations.get(key) {
        let source = inp.pod_source(key);
        let list = parse_pool_list(&source, v)?;
        if !list.is_empty() {
            chosen = Some((source, list));
        }
    }
    if chosen.is_none()
        && let Some(v) = inp.namespace_annotations.and_then(|a| a.get(key))
    {
        let source = inp.ns_source(key);
        let list = parse_pool_list(&source, v)?;
        if !list.is_empty() {
            chosen = Some((source, list));
        }
    }
    if chosen.is_none() && !conf_list.is_empty() {
        chosen = Some((Source::NetConf { field }, conf_list.clone()));
    }
    let Some((source, names)) = chosen else {
        return Ok(Family {
            wanted,
            pools: vec![],
            source: Source::Default,
        });
    };
    let pools = if wanted {
        names
            .iter()
            .map(|n| resolve_pool(&source, n, v4, inp.pools))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![]
    };
    Ok(Family {
        wanted,
        pools,
        source,
    })
}

/// Parses a pools annotation: a JSON list of pool names or CIDRs.
pub fn parse_pool_list(source: &Source, value: &str) -> Result<Vec<String>, CniError> {
    let err = |reason: String| CniError::Annotation {
        origin: source.clone(),
        reason,
    };
    let v: Value = serde_json::from_str(value).map_err(|e| {
        err(format!(
            "{value:?} is not valid JSON ({e}); write a JSON list of IPPool names or CIDRs, e.g. [\"pool2-ipv4-ippool\"]"
        ))
    })?;
    let Value::Array(items) = v else {
        return Err(err(format!(
            "{value:?} is not a JSON list; write a list of IPPool names or CIDRs, e.g. [\"pool2-ipv4-ippool\"]"
        )));
    };
    items
        .into_iter()
        .map(|i| match i {
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            other => Err(err(format!("list entry {other} is not an IPPool name or CIDR"))),
        })
        .collect()
}

/// Finds the pool an entry names (a CIDR must equal the pool's CIDR exactly, as in Calico).
pub fn resolve_pool(
    source: &Source,
    entry: &str,
    v4: bool,
    pools: &[PoolInfo],
) -> Result<PoolChoice, CniError> {
    let pool = if let Ok(net) = entry.parse::<IpNet>() {
        let net = net.trunc();
        pools.iter().find(|p| p.cidr == net).ok_or_else(|| {
            let containing = pools
                .iter()
                .find(|p| p.cidr.contains(&net.network()))
                .map(|p| {
                    format!(
                        " (it lies inside IPPool {:?}, {}; name that pool instead)",
                        p.name, p.cidr
                    )
                })
                .unwrap_or_default();
            CniError::UnknownPool {
                origin: source.clone(),
                reason: format!("{entry} is not the CIDR of any IPPool{containing}"),
            }
        })?
    } else {
        pools.iter().find(|p| p.name == entry).ok_or_else(|| {
            let mut names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            names.sort_unstable();
            CniError::UnknownPool {
                origin: source.clone(),
                reason: format!(
                    "no IPPool named {entry:?} (IPPools: {})",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ),
            }
        })?
    };
    let not_usable = |why: String| CniError::PoolNotUsable {
        origin: source.clone(),
        reason: format!("IPPool {:?} ({}) {why}", pool.name, pool.cidr),
    };
    if pool.disabled {
        return Err(not_usable("is disabled".into()));
    }
    if pool.deleting {
        return Err(not_usable("is being deleted".into()));
    }
    let pool_v4 = matches!(pool.cidr, IpNet::V4(_));
    if pool_v4 != v4 {
        return Err(not_usable(format!(
            "is an IPv{} pool, listed for IPv{}",
            if pool_v4 { 4 } else { 6 },
            if v4 { 4 } else { 6 }
        )));
    }
    if !pool.workload {
        return Err(not_usable(
            "does not allow use Workload (spec.allowedUses), so no pod can get an address from it".into(),
        ));
    }
    Ok(PoolChoice {
        name: pool.name.clone(),
        cidr: pool.cidr,
    })
}

fn parse_ip_families(source: &Source, value: &str) -> Result<(bool, bool), CniError> {
    let err = |reason: String| CniError::Annotation {
        origin: source.clone(),
        reason,
    };
    let list: Vec<String> = serde_json::from_str(value)
        .map_err(|e| err(format!("{value:?} is not a JSON list of \"IPv4\"/\"IPv6\" ({e})")))?;
    let (mut v4, mut v6) = (false, false);
    for f in &list {
        match f.as_str() {
            "IPv4" => v4 = true,
            "IPv6" => v6 = true,
            other => return Err(err(format!("{other:?} is not \"IPv4\" or \"IPv6\""))),
        }
    }
    if !v4 && !v6 {
        return Err(err("lists no address family".into()));
    }
    Ok((v4, v6))
}

fn explicit_ips(inp: &Inputs<'_>) -> Result<Option<Plan>, CniError> {
    let (source, texts): (Source, Vec<String>) = if let Some(v) = inp.pod_annotations.get(ANN_IP_ADDRS) {
        let source = inp.pod_source(ANN_IP_ADDRS);
        let err = |reason: String| CniError::Annotation {
            origin: source.clone(),
            reason,
        };
        for other in [ANN_IPV4_POOLS, ANN_IPV6_POOLS] {
            if inp.pod_annotations.contains_key(other) {
                return Err(err(format!(
                    "cannot be used together with annotation {other}: give either addresses or pools"
                )));
            }
        }
        if inp.pod_annotations.contains_key(ANN_IP_ADDRS_NO_IPAM) {
            return Err(err(format!(
                "cannot be used together with annotation {ANN_IP_ADDRS_NO_IPAM}"
            )));
        }
        let list: Vec<String> = serde_json::from_str(v).map_err(|e| {
            err(format!(
                "{v:?} is not a JSON list of addresses ({e}), e.g. [\"10.48.0.10\"]"
            ))
        })?;
        if list.is_empty() {
            return Err(err("is set but empty".into()));
        }
        (source, list)
    } else if let Some(ip) = inp.cni_args_ip {
        (
            Source::NetConf { field: "CNI_ARGS IP" },
            ip.split(',').map(|s| s.trim().to_string()).collect(),
        )
    } else {
        return Ok(None);
    };
    let err = |reason: String| CniError::Annotation {
        origin: source.clone(),
        reason,
    };
    let mut ips: Vec<IpAddr> = vec![];
    for t in &texts {
        let ip: IpAddr = t
            .parse()
            .map_err(|_| err(format!("{t:?} is not an IP address")))?;
        if ips.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(err(format!(
                "more than one IPv{} address",
                if ip.is_ipv4() { 4 } else { 6 }
            )));
        }
        let unavailable = |why: String| CniError::AddressUnavailable(format!("{source}: address {ip} {why}"));
        match inp.pools.iter().find(|p| p.cidr.contains(&ip)) {
            None => return Err(unavailable("is not in any IPPool".into())),
            Some(p) if p.disabled => {
                return Err(unavailable(format!(
                    "is in IPPool {:?} ({}), which is disabled",
                    p.name, p.cidr
                )));
            }
            Some(p) if p.deleting => {
                return Err(unavailable(format!(
                    "is in IPPool {:?} ({}), which is being deleted",
                    p.name, p.cidr
                )));
            }
            Some(_) => {}
        }
        ips.push(ip);
    }
    Ok(Some(Plan::Explicit { ips, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<PoolInfo> {
        let p = |name: &str, cidr: &str, disabled: bool| PoolInfo {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            disabled,
            deleting: false,
            block_size: 26,
            workload: true,
        };
        vec![
            p("default-ipv4-ippool", "10.48.0.0/24", false),
            p("pool2-ipv4-ippool", "10.48.128.0/24", false),
            p("external-pool", "10.48.2.0/24", false),
            p("off", "10.49.0.0/24", true),
            p("v6", "fd00:48::/64", false),
        ]
    }

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","ipam":{{{extra}}}}}"#).as_bytes()).unwrap()
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(
        conf: &NetConf,
        pod: &BTreeMap<String, String>,
        ns: Option<&BTreeMap<String, String>>,
    ) -> Result<Plan, CniError> {
        let pools = pools();
        plan(&Inputs {
            conf,
            namespace: "yaobank",
            pod: "db-1",
            pod_annotations: pod,
            namespace_annotations: ns,
            pools: &pools,
            cni_args_ip: None,
        })
    }

    fn v4_pools(p: &Plan) -> (Vec<String>, Source) {
        match p {
            Plan::Auto { v4, .. } => (
                v4.pools.iter().map(|p| p.name.clone()).collect(),
                v4.source.clone(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn precedence_pod_then_namespace_then_conf_then_default() {
        let c = conf(r#""ipv4_pools":["external-pool"]"#);
        let pod = ann(&[(ANN_IPV4_POOLS, r#"["pool2-ipv4-ippool"]"#)]);
        let ns = ann(&[(ANN_IPV4_POOLS, r#"["default-ipv4-ippool"]"#)]);
        let none = ann(&[]);

        let (p, s) = v4_pools(&run(&c, &pod, Some(&ns)).unwrap());
        assert_eq!(p, vec!["pool2-ipv4-ippool"]);
        assert!(matches!(s, Source::PodAnnotation { .. }));

        let (p, s) = v4_pools(&run(&c, &none, Some(&ns)).unwrap());
        assert_eq!(p, vec!["default-ipv4-ippool"]);
        assert!(matches!(s, Source::NamespaceAnnotation { .. }));

        let (p, s) = v4_pools(&run(&c, &none, None).unwrap());
        assert_eq!(p, vec!["external-pool"]);
        assert_eq!(
            s,
            Source::NetConf {
                field: "ipam.ipv4_pools"
            }
        );

        let (p, s) = v4_pools(&run(&conf(""), &none, None).unwrap());
        assert!(p.is_empty());
        assert_eq!(s, Source::Default);

        // An empty pod list falls through to the namespace, as in Calico.
        let empty = ann(&[(ANN_IPV4_POOLS, "[]")]);
        let (p, _) = v4_pools(&run(&c, &empty, Some(&ns)).unwrap());
        assert_eq!(p, vec!["default-ipv4-ippool"]);
    }

    #[test]
    fn cidrs_resolve_exactly() {
        let pod = ann(&[(ANN_IPV4_POOLS, r#"["10.48.128.0/24", "external-pool"]"#)]);
        let (p, _) = v4_pools(&run(&conf(""), &pod, None).unwrap());
        assert_eq!(p, vec!["pool2-ipv4-ippool", "external-pool"]);

        let pod = ann(&[(ANN_IPV4_POOLS, r#"["10.48.128.0/25"]"#)]);
        let e = run(&conf(""), &pod, None).unwrap_err();
        assert_eq!(e.code(), 101);
        assert!(
            e.to_string()
                .contains("10.48.128.0/25 is not the CIDR of any IPPool"),
            "{e}"
        );
        assert!(e.to_string().contains("pool2-ipv4-ippool"), "{e}");
    }

    #[test]
    fn malformed_annotations_name_the_annotation() {
        for (v, want) in [
            ("[pool2-ipv4-ippool]", "is not valid JSON"),
            (r#""pool2-ipv4-ippool""#, "is not a JSON list"),
            ("[1]", "list entry 1"),
            (r#"[""]"#, "list entry"),
        ] {
            let pod = ann(&[(ANN_IPV4_POOLS, v)]);
            let e = run(&conf(""), &pod, None).unwrap_err();
            assert_eq!(e.code(), 100, "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains("annotation cni.projectcalico.org/ipv4pools of pod yaobank/db-1"),
                "{msg}"
            );
            assert!(msg.contains(want), "{msg}");
        }
        // The namespace's annotation is named when it is the broken one.
        let ns = ann(&[(ANN_IPV6_POOLS, "{")]);
        let e = run(&conf(""), &ann(&[]), Some(&ns)).unwrap_err();
        assert!(
            e.to_string()
                .contains("annotation cni.projectcalico.org/ipv6pools of namespace yaobank"),
            "{e}"
        );
    }

    #[test]
    fn a_pool_not_for_workloads_is_refused_naming_the_annotation() {
        // Regression (bad-input corpus annotations/054): a LoadBalancer-only pool in ipv4pools
        // used to reach the engine and fail as code 103 "no pools match the required use".
        let mut pools = pools();
        pools[2].workload = false;
        let pod = ann(&[(ANN_IPV4_POOLS, r#"["external-pool"]"#)]);
        let inp = Inputs {
            conf: &conf(""),
            namespace: "ns",
            pod: "p",
            pod_annotations: &pod,
            namespace_annotations: None,
            pools: &pools,
            cni_args_ip: None,
        };
        let e = plan(&inp).unwrap_err();
        assert_eq!(e.code(), 102);
        let m = e.to_string();
        assert!(
            m.contains(ANN_IPV4_POOLS) && m.contains("external-pool") && m.contains("allowedUses"),
            "{m}"
        );
    }

    #[test]
    fn unknown_disabled_and_wrong_family_pools() {
        let pod = ann(&[(ANN_IPV4_POOLS, r#"["pool9"]"#)]);
        let e = run(&conf(""), &pod, None).unwrap_err();
        assert_eq!(e.code(), 101);
        assert!(e.to_string().contains(r#"no IPPool named "pool9""#), "{e}");

        let pod = ann(&[(ANN_IPV4_POOLS, r#"["off"]"#)]);
        let e = run(&conf(""), &pod, None).unwrap_err();
        assert_eq!(e.code(), 102);
        assert!(
            e.to_string()
                .contains(r#"IPPool "off" (10.49.0.0/24) is disabled"#),
            "{e}"
        );

        let pod = ann(&[(ANN_IPV4_POOLS, r#"["v6"]"#)]);
        let e = run(&conf(""), &pod, None).unwrap_err();
        assert!(e.to_string().contains("is an IPv6 pool, listed for IPv4"), "{e}");

        // The network config's own list is checked too, and named.
        let e = run(&conf(r#""ipv4_pools":["nope"]"#), &ann(&[]), None).unwrap_err();
        assert!(
            e.to_string().contains("network config field ipam.ipv4_pools"),
            "{e}"
        );
    }

    #[test]
    fn ip_addrs() {
        let pod = ann(&[(ANN_IP_ADDRS, r#"["10.48.0.10", "fd00:48::10"]"#)]);
        match run(&conf(""), &pod, None).unwrap() {
            Plan::Explicit { ips, .. } => assert_eq!(ips.len(), 2),
            other => panic!("{other:?}"),
        }
        for (v, code, want) in [
            ("[10.48.0.10]", 100, "is not a JSON list of addresses"),
            ("[]", 100, "is set but empty"),
            (r#"["10.48.0.300"]"#, 100, r#""10.48.0.300" is not an IP address"#),
            (
                r#"["10.48.0.10","10.48.0.11"]"#,
                100,
                "more than one IPv4 address",
            ),
            (
                r#"["192.168.1.1"]"#,
                104,
                "address 192.168.1.1 is not in any IPPool",
            ),
            (r#"["10.49.0.5"]"#, 104, "which is disabled"),
        ] {
            let pod = ann(&[(ANN_IP_ADDRS, v)]);
            let e = run(&conf(""), &pod, None).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.to_string().contains(ANN_IP_ADDRS), "{e}");
        }
        let pod = ann(&[
            (ANN_IP_ADDRS, r#"["10.48.0.10"]"#),
            (ANN_IPV4_POOLS, r#"["pool2-ipv4-ippool"]"#),
        ]);
        let e = run(&conf(""), &pod, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot be used together with annotation cni.projectcalico.org/ipv4pools"),
            "{e}"
        );
        // A namespace's pools do not conflict with a pod's addresses: the pod is more specific.
        let pod = ann(&[(ANN_IP_ADDRS, r#"["10.48.0.10"]"#)]);
        let ns = ann(&[(ANN_IPV4_POOLS, r#"["pool2-ipv4-ippool"]"#)]);
        assert!(matches!(
            run(&conf(""), &pod, Some(&ns)).unwrap(),
            Plan::Explicit { .. }
        ));
    }

    #[test]
    fn ip_families_and_assign_flags() {
        let pod = ann(&[(ANN_IP_FAMILIES, r#"["IPv6"]"#)]);
        match run(&conf(""), &pod, None).unwrap() {
            Plan::Auto { v4, v6 } => assert!(!v4.wanted && v6.wanted),
            other => panic!("{other:?}"),
        }
        let pod = ann(&[(ANN_IP_FAMILIES, r#"["IPv5"]"#)]);
        assert!(
            run(&conf(""), &pod, None)
                .unwrap_err()
                .to_string()
                .contains("\"IPv5\"")
        );
        let e = run(&conf(r#""assign_ipv4":"false""#), &ann(&[]), None).unwrap_err();
        assert!(e.to_string().contains("neither IPv4 nor IPv6"), "{e}");
        match run(&conf(r#""assign_ipv6":"true""#), &ann(&[]), None).unwrap() {
            Plan::Auto { v4, v6 } => assert!(v4.wanted && v6.wanted),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pool_lists_round_trip(names in proptest::collection::vec("[a-z0-9][a-z0-9.-]{0,20}", 0..6)) {
            let json = serde_json::to_string(&names).unwrap();
            let got = parse_pool_list(&Source::Default, &json).unwrap();
            prop_assert_eq!(got, names);
        }

        #[test]
        fn pool_list_errors_never_panic_and_name_the_source(s in ".{0,40}") {
            let src = Source::NamespaceAnnotation { namespace: "n".into(), key: ANN_IPV4_POOLS.into() };
            if let Err(e) = parse_pool_list(&src, &s) {
                prop_assert!(e.to_string().starts_with("annotation cni.projectcalico.org/ipv4pools of namespace n: "));
            }
        }

        /// A resolved pool is always an enabled pool of the requested family.
        #[test]
        fn resolution_only_yields_usable_pools(entry in "[a-z0-9./:-]{1,20}", v4 in any::<bool>(), idx in 0usize..5) {
            let pools = vec![
                PoolInfo { name: "a".into(), cidr: "10.0.0.0/24".parse().unwrap(), disabled: false, deleting: false, block_size: 26, workload: true },
                PoolInfo { name: "b".into(), cidr: "10.1.0.0/24".parse().unwrap(), disabled: true, deleting: false, block_size: 26, workload: true },
                PoolInfo { name: "c".into(), cidr: "fd00::/64".parse().unwrap(), disabled: false, deleting: false, block_size: 26, workload: true },
                PoolInfo { name: "d".into(), cidr: "10.2.0.0/24".parse().unwrap(), disabled: false, deleting: true, block_size: 26, workload: true },
                PoolInfo { name: "e".into(), cidr: "10.3.0.0/16".parse().unwrap(), disabled: false, deleting: false, block_size: 26, workload: true },
            ];
            let entry = if idx < 5 && entry.len() % 2 == 0 { pools[idx].name.clone() } else { entry };
            if let Ok(c) = resolve_pool(&Source::Default, &entry, v4, &pools) {
                let p = pools.iter().find(|p| p.name == c.name).unwrap();
                prop_assert!(!p.disabled && !p.deleting);
                prop_assert_eq!(matches!(p.cidr, IpNet::V4(_)), v4);
                prop_assert_eq!(p.cidr, c.cidr);
            }
        }
    }
}
