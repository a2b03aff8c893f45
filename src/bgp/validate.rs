//! Every field of the renderer's inputs that reaches BIRD's files, checked again before rendering.
//!
//! The CRDs' CEL rules reject these values at admission, but an object can still be stored
//! without them (written while an older CRD was installed, or by a tool that skips validation).
//! BIRD refuses a whole file over one bad token, so [`sanitize`] takes bad values out of the
//! snapshot and reports each one; everything else still renders, on every node.
//!
//! What is left out: a BGPPeer with any bad field is left out whole (half a peering would be a
//! different session); in a BGPConfiguration only the bad entry or field is (dropping the whole
//! `default` object would silently turn the mesh back on); an IPPool whose CIDR BIRD cannot read
//! is left out of the BGP files only. Node annotations are checked by
//! [`super::snapshot::NodeBgp::from_node`].

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::api::BGPFilterSpec;
use crate::api::bgp::{BGPConfigurationSpec, BGPPeerSpec, CidrBlock};

use super::snapshot::{Snapshot, parse_duration_secs};
pub use super::snapshot::{is_community_value, looks_like_community_value};

/// The object and field a problem is in, e.g. `BGPPeer "rack1": spec.peerIP`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.kind, self.name, self.field)
    }
}

/// One value BIRD would reject (or misread), and what was left out because of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0} {1:?} is not a CIDR")]
    NotCidr(Place, String),
    #[error("{0} {1:?} has host bits set (write {2})")]
    HostBits(Place, String, String),
    #[error("{0} {1:?} is not {2}")]
    NotIp(Place, String, &'static str),
    #[error(
        "{0} {1:?} is not an IP address optionally with a port from 1 to 65535 (10.0.0.1, 10.0.0.1:179, fd00::1, [fd00::1]:179)"
    )]
    PeerAddress(Place, String),
    #[error("{0} {1:?} is not of the same IP family as spec.peerIP")]
    Family(Place, String),
    #[error("{0} {1} is not in {2}..={3}")]
    Range(Place, i64, i64, i64),
    #[error(
        "{0} {1:?} is not a BGP community: aa:nn with numbers up to 65535, or aa:nn:mm with numbers up to 4294967295"
    )]
    Community(Place, String),
    #[error("{0} {1:?} is neither a community value nor the name of one of spec.communities")]
    UndefinedCommunity(Place, String),
    #[error("{0} {1:?} is not a duration such as 90s, 1m30s or 2h (not negative, at most 4294967295s)")]
    Duration(Place, String),
    #[error("{0} {1:?} is not an interface name pattern (1 to 15 letters, digits or _ . - *, not * alone)")]
    Interface(Place, String),
    /// The stored object does not fit tortie's types at all (e.g. a field its CRD made optional).
    #[error("{0}: cannot be read: {1}")]
    Decode(Place, String),
    /// A BGPFilter rule value that cannot be written as BIRD text.
    #[error("{0}: {1}")]
    FilterRule(Place, String),
    /// A BGPPeer naming an invalid BGPFilter: without its filter the session would take and send
    /// the routes the filter is there to stop, so the peering goes with the filter.
    #[error(
        "{0} names BGPFilter {1:?}, which is invalid (see its own warning); the peering is left out rather than run unfiltered"
    )]
    BadFilter(Place, String),
    /// A Calico field tortie does not act on yet; what happens instead is said.
    #[error("{0} is not supported by tortie yet: {1}")]
    Unsupported(Place, String),
}

impl Invalid {
    pub fn place(&self) -> &Place {
        match self {
            Invalid::NotCidr(p, ..)
            | Invalid::HostBits(p, ..)
            | Invalid::NotIp(p, ..)
            | Invalid::PeerAddress(p, ..)
            | Invalid::Family(p, ..)
            | Invalid::Range(p, ..)
            | Invalid::Community(p, ..)
            | Invalid::UndefinedCommunity(p, ..)
            | Invalid::Duration(p, ..)
            | Invalid::Interface(p, ..)
            | Invalid::Decode(p, ..)
            | Invalid::FilterRule(p, ..)
            | Invalid::BadFilter(p, ..)
            | Invalid::Unsupported(p, ..) => p,
        }
    }
}

const AS_MAX: i64 = u32::MAX as i64;

/// Decodes stored objects one by one: one that does not fit the types is an [`Invalid::Decode`]
/// instead of failing the whole list.
pub fn decode_each<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    objects: impl IntoIterator<Item = serde_json::Value>,
) -> (Vec<T>, Vec<Invalid>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for v in objects {
        let name = v
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        match serde_json::from_value(v) {
            Ok(t) => ok.push(t),
            Err(e) => bad.push(Invalid::Decode(place(kind, &name, "spec"), e.to_string())),
        }
    }
    (ok, bad)
}

/// Takes every bad value out of `snap` (see the module comment for what goes) and returns one
/// error per value, in a stable order.
pub fn sanitize(snap: &mut Snapshot) -> Vec<Invalid> {
    let mut out = Vec::new();
    let mut bad_filters = std::collections::BTreeSet::new();
    let workloads_known = snap.workloads_known;
    snap.filters.retain(|f| {
        let name = f.metadata.name.as_deref().unwrap_or("");
        let errs = check_filter(name, &f.spec);
        let ok = errs.is_empty();
        if !ok {
            bad_filters.insert(name.to_string());
        }
        out.extend(errs);
        ok
    });
    snap.peers.retain(|p| {
        let name = p.metadata.name.as_deref().unwrap_or("");
        let mut errs = check_peer(name, &p.spec);
        for (i, f) in p.spec.filters.iter().flatten().enumerate() {
            if bad_filters.contains(f) {
                errs.push(Invalid::BadFilter(
                    place("BGPPeer", name, format!("spec.filters[{i}]")),
                    f.clone(),
                ));
            }
        }
        if !workloads_known
            && p.spec
                .local_workload_selector
                .as_deref()
                .is_some_and(|s| !s.is_empty())
        {
            errs.push(Invalid::Unsupported(
                place("BGPPeer", name, "spec.localWorkloadSelector"),
                "the operator does not read pods, so sessions with local workloads are not rendered and this BGPPeer is left out".into(),
            ));
        }
        let ok = errs.is_empty();
        out.extend(errs);
        ok
    });
    for c in &mut snap.bgp_configs {
        let name = c.metadata.name.clone().unwrap_or_default();
        out.extend(clean_config(&name, &mut c.spec));
    }
    snap.pools.retain(|p| {
        let at = place("IPPool", p.metadata.name.as_deref().unwrap_or(""), "spec.cidr");
        match check_cidr(&at, &p.spec.cidr) {
            Some(e) => {
                out.push(e);
                false
            }
            None => true,
        }
    });
    out.sort_by(|a, b| a.place().cmp(b.place()));
    out
}

fn place(kind: &'static str, name: &str, field: impl Into<String>) -> Place {
    Place {
        kind,
        name: name.to_string(),
        field: field.into(),
    }
}

/// Every problem of one BGPPeer (empty: the peer is fine).
pub fn check_peer(name: &str, s: &BGPPeerSpec) -> Vec<Invalid> {
    let at = |f: &str| place("BGPPeer", name, f);
    let mut errs = Vec::new();
    let mut peer_ip = None;
    if let Some(v) = s.peer_ip.as_deref().filter(|v| !v.is_empty()) {
        match parse_peer_address(v) {
            Some((ip, _)) => peer_ip = Some(ip),
            None => errs.push(Invalid::PeerAddress(at("spec.peerIP"), v.to_string())),
        }
    }
    if let Some(v) = s.reachable_by.as_deref().filter(|v| !v.is_empty()) {
        match v.parse::<IpAddr>() {
            Err(_) => errs.push(Invalid::NotIp(
                at("spec.reachableBy"),
                v.to_string(),
                "an IP address",
            )),
            Ok(gw) if peer_ip.is_some_and(|p| p.is_ipv4() != gw.is_ipv4()) => {
                errs.push(Invalid::Family(at("spec.reachableBy"), v.to_string()))
            }
            Ok(_) => {}
        }
    }
    for (field, v) in [
        ("spec.asNumber", s.as_number),
        ("spec.localASNumber", s.local_as_number),
    ] {
        errs.extend(range(at(field), v, 0, AS_MAX));
    }
    errs.extend(range(at("spec.ttlSecurity"), s.ttl_security, 0, 255));
    errs.extend(range(
        at("spec.numAllowedLocalASNumbers"),
        s.num_allowed_local_as_numbers,
        0,
        255,
    ));
    for (field, v) in [
        ("spec.maxRestartTime", &s.max_restart_time),
        ("spec.keepaliveTime", &s.keepalive_time),
    ] {
        errs.extend(check_duration(at(field), v.as_deref()));
    }
    errs
}

/// Every problem of one BGPFilter (empty: every rule can be written). A filter is all or
/// nothing: without one of its rules it would pass routes the user meant to stop (or the reverse).
pub fn check_filter(name: &str, s: &BGPFilterSpec) -> Vec<Invalid> {
    use super::filter::{Rule, statement};
    let mut errs = Vec::new();
    let lists: [(&str, Vec<Rule<'_>>, bool); 4] = [
        (
            "importV4",
            s.import_v4.iter().flatten().map(Rule::V4).collect(),
            false,
        ),
        (
            "exportV4",
            s.export_v4.iter().flatten().map(Rule::V4).collect(),
            false,
        ),
        (
            "importV6",
            s.import_v6.iter().flatten().map(Rule::V6).collect(),
            true,
        ),
        (
            "exportV6",
            s.export_v6.iter().flatten().map(Rule::V6).collect(),
            true,
        ),
    ];
    for (list, rules, v6) in lists {
        for (i, rule) in rules.into_iter().enumerate() {
            let at = |f: &str| place("BGPFilter", name, format!("spec.{list}[{i}].{f}"));
            if let Some(c) = rule.cidr() {
                if let Some(e) = check_cidr(&at("cidr"), c) {
                    errs.push(e);
                    continue;
                }
                if c.parse::<IpNet>().is_ok_and(|n| n.addr().is_ipv6() != v6) {
                    errs.push(Invalid::NotIp(
                        at("cidr"),
                        c.to_string(),
                        if v6 { "an IPv6 CIDR" } else { "an IPv4 CIDR" },
                    ));
                    continue;
                }
            }
            if let Err(e) = statement(rule) {
                errs.push(Invalid::FilterRule(at(&e.field), e.message));
            }
        }
    }
    errs
}

/// Removes the bad entries and fields of one BGPConfiguration, returning what went.
pub fn clean_config(name: &str, s: &mut BGPConfigurationSpec) -> Vec<Invalid> {
    let at = |f: String| place("BGPConfiguration", name, f);
    let mut errs = Vec::new();
    // AS 0 is reserved (RFC 7607): BIRD refuses `local as 0` on every node.
    if let Some(e) = range(at("spec.asNumber".into()), s.as_number, 1, AS_MAX) {
        errs.push(e);
        s.as_number = None;
    }
    if let Some(e) = range(at("spec.listenPort".into()), s.listen_port, 1, 65535) {
        errs.push(e);
        s.listen_port = None;
    }
    for (field, v) in [
        ("spec.ipv4NormalRoutePriority", &mut s.ipv4_normal_route_priority),
        ("spec.ipv6NormalRoutePriority", &mut s.ipv6_normal_route_priority),
    ] {
        if let Some(e) = range(at(field.into()), *v, 1, 2147483646) {
            errs.push(e);
            *v = None;
        }
    }
    if let Some(e) = check_duration(
        at("spec.nodeMeshMaxRestartTime".into()),
        s.node_mesh_max_restart_time.as_deref(),
    ) {
        errs.push(e);
        s.node_mesh_max_restart_time = None;
    }
    for (field, list) in [
        ("serviceClusterIPs", &mut s.service_cluster_ips),
        ("serviceExternalIPs", &mut s.service_external_ips),
        ("serviceLoadBalancerIPs", &mut s.service_load_balancer_ips),
    ] {
        retain_indexed(list, |i, b: &CidrBlock| {
            if b.cidr.trim().is_empty() {
                return true;
            }
            let e = check_cidr(&at(format!("spec.{field}[{i}].cidr")), b.cidr.trim());
            let ok = e.is_none();
            errs.extend(e);
            ok
        });
    }
    retain_indexed(&mut s.ignored_interfaces, |i, v: &String| {
        let ok = is_interface_pattern(v);
        if !ok {
            errs.push(Invalid::Interface(
                at(format!("spec.ignoredInterfaces[{i}]")),
                v.clone(),
            ));
        }
        ok
    });
    retain_indexed(&mut s.communities, |i, c| {
        let Some(v) = c.value.as_deref() else {
            return true;
        };
        let ok = is_community_value(v);
        if !ok {
            errs.push(Invalid::Community(
                at(format!("spec.communities[{i}].value")),
                v.to_string(),
            ));
        }
        ok
    });
    let names: Vec<String> = s
        .communities
        .iter()
        .flatten()
        .filter_map(|c| c.name.clone())
        .collect();
    retain_indexed(&mut s.prefix_advertisements, |i, adv| {
        let mut ok = true;
        if let Some(cidr) = adv.cidr.as_deref().filter(|c| !c.is_empty()) {
            let e = check_cidr(&at(format!("spec.prefixAdvertisements[{i}].cidr")), cidr);
            ok &= e.is_none();
            errs.extend(e);
        }
        for (j, comm) in adv.communities.iter().flatten().enumerate() {
            let f = at(format!("spec.prefixAdvertisements[{i}].communities[{j}]"));
            if looks_like_community_value(comm) {
                if !is_community_value(comm) {
                    errs.push(Invalid::Community(f, comm.clone()));
                    ok = false;
                }
            } else if !names.contains(comm) {
                errs.push(Invalid::UndefinedCommunity(f, comm.clone()));
                ok = false;
            }
        }
        ok
    });
    errs
}

/// `Vec::retain` over an optional list, with the index each entry had in the object.
fn retain_indexed<T>(list: &mut Option<Vec<T>>, mut keep: impl FnMut(usize, &T) -> bool) {
    if let Some(v) = list {
        let mut i = 0;
        v.retain(|x| {
            let k = keep(i, x);
            i += 1;
            k
        });
    }
}

fn range(at: Place, v: Option<i64>, min: i64, max: i64) -> Option<Invalid> {
    let v = v?;
    (v < min || v > max).then_some(Invalid::Range(at, v, min, max))
}

/// A CIDR BIRD can read: parses, and no host bits.
fn check_cidr(at: &Place, v: &str) -> Option<Invalid> {
    match v.parse::<IpNet>() {
        Err(_) => Some(Invalid::NotCidr(at.clone(), v.to_string())),
        Ok(n) if n.trunc() != n => Some(Invalid::HostBits(
            at.clone(),
            v.to_string(),
            n.trunc().to_string(),
        )),
        Ok(_) => None,
    }
}

fn check_duration(at: Place, v: Option<&str>) -> Option<Invalid> {
    let v = v?;
    let ok = !v.trim_start().starts_with('-')
        && parse_duration_secs(v).is_some_and(|s| s.round() <= u32::MAX as f64);
    (!ok).then(|| Invalid::Duration(at, v.to_string()))
}

/// Calico's forms of `peerIP`: `10.0.0.1`, `10.0.0.1:179`, `fd00::1`, `[fd00::1]:179`; a port
/// must be 1 to 65535 (BIRD refuses port 0).
pub fn parse_peer_address(v: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let (host, port) = v.rsplit_once(':')?;
    let ip: IpAddr = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(h) => h.parse::<std::net::Ipv6Addr>().ok()?.into(),
        None => host.parse::<std::net::Ipv4Addr>().ok()?.into(),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((ip, Some(port)))
}

/// Calico's ignored-interface pattern. Its character set also keeps BIRD's `"..."` intact.
pub fn is_interface_pattern(v: &str) -> bool {
    v != "*"
        && (1..=15).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::bgp::{Community, PrefixAdvertisement};

    fn peer(f: impl FnOnce(&mut BGPPeerSpec)) -> Vec<String> {
        let mut s = BGPPeerSpec {
            peer_ip: Some("192.0.2.1".into()),
            as_number: Some(65000),
            ..Default::default()
        };
        f(&mut s);
        check_peer("p", &s).iter().map(|e| e.to_string()).collect()
    }

    fn one(errs: Vec<String>, want: &[&str]) {
        assert_eq!(errs.len(), 1, "{errs:?}");
        for w in want {
            assert!(errs[0].contains(w), "{:?} lacks {w:?}", errs[0]);
        }
    }

    #[test]
    fn calico_peer_addresses_are_accepted() {
        for v in [
            "10.0.0.1",
            "10.0.0.1:179",
            "10.0.0.1:65535",
            "10.0.0.1:1",
            "fd00::1",
            "[fd00::1]:179",
            "[::ffff:10.0.0.1]:179",
        ] {
            assert!(peer(|s| s.peer_ip = Some(v.into())).is_empty(), "{v}");
        }
    }

    #[test]
    fn bad_peer_addresses_name_the_field() {
        for v in [
            "10.0.0.1:0",
            "[fd00::1]:0",
            "10.0.0.1:65536",
            "[fd00::1]",
            "fd00::1:179x",
            "10.0.0.1:",
            "[10.0.0.1]:179",
            "host:179",
            "10.0.0.1:+179",
            "10.0.0.1\"; }",
        ] {
            one(
                peer(|s| s.peer_ip = Some(v.into())),
                &["BGPPeer \"p\": spec.peerIP", &format!("{v:?}")],
            );
        }
        // `fd00::1:179` is a valid bare IPv6 address, as in Calico.
        assert!(peer(|s| s.peer_ip = Some("fd00::1:179".into())).is_empty());
    }

    #[test]
    fn peer_numbers_and_durations() {
        one(
            peer(|s| s.as_number = Some(4294967296)),
            &["spec.asNumber", "4294967296"],
        );
        one(peer(|s| s.as_number = Some(-1)), &["spec.asNumber"]);
        one(
            peer(|s| s.local_as_number = Some(1 << 33)),
            &["spec.localASNumber"],
        );
        one(peer(|s| s.ttl_security = Some(256)), &["spec.ttlSecurity"]);
        one(
            peer(|s| s.num_allowed_local_as_numbers = Some(-2)),
            &["spec.numAllowedLocalASNumbers"],
        );
        assert!(peer(|s| s.as_number = Some(4294967295)).is_empty());
        for bad in ["30", "-30s", "30 s", "thirty", "", "1y", "5000000h"] {
            one(
                peer(|s| s.keepalive_time = Some(bad.into())),
                &["spec.keepaliveTime"],
            );
            one(
                peer(|s| s.max_restart_time = Some(bad.into())),
                &["spec.maxRestartTime"],
            );
        }
        for good in ["0", "30s", "1m30s", "1.5h", "500ms", "+5s", ".5s", "1193046h"] {
            assert!(
                peer(|s| s.keepalive_time = Some(good.into())).is_empty(),
                "{good}"
            );
        }
    }

    #[test]
    fn reachable_by_must_be_an_ip_of_the_peer_family() {
        one(
            peer(|s| s.reachable_by = Some("gw".into())),
            &["spec.reachableBy", "not an IP address"],
        );
        one(
            peer(|s| s.reachable_by = Some("fd00::1".into())),
            &["spec.reachableBy", "family"],
        );
        assert!(peer(|s| s.reachable_by = Some("192.0.2.254".into())).is_empty());
    }

    fn cfg(f: impl FnOnce(&mut BGPConfigurationSpec)) -> (BGPConfigurationSpec, Vec<String>) {
        let mut s = BGPConfigurationSpec::default();
        f(&mut s);
        let errs = clean_config("default", &mut s);
        (s, errs.iter().map(|e| e.to_string()).collect())
    }

    fn adv(cidr: &str, comms: &[&str]) -> PrefixAdvertisement {
        PrefixAdvertisement {
            cidr: Some(cidr.into()),
            communities: Some(comms.iter().map(|c| c.to_string()).collect()),
        }
    }

    #[test]
    fn a_host_bit_prefix_is_left_out_and_the_rest_kept() {
        let (s, errs) = cfg(|s| {
            s.prefix_advertisements = Some(vec![
                adv("10.48.0.1/16", &["65000:100"]),
                adv("10.49.0.0/16", &["65000:100"]),
            ])
        });
        one(
            errs,
            &[
                "BGPConfiguration \"default\": spec.prefixAdvertisements[0].cidr",
                "10.48.0.1/16",
                "10.48.0.0/16",
            ],
        );
        let kept = s.prefix_advertisements.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].cidr.as_deref(), Some("10.49.0.0/16"));
    }

    #[test]
    fn communities_in_range_and_defined() {
        let comm = |n: &str, v: &str| Community {
            name: Some(n.into()),
            value: Some(v.into()),
        };
        let (s, errs) = cfg(|s| {
            s.communities = Some(vec![
                comm("ok", "65000:100"),
                comm("big", "65536:1"),
                comm("lg", "65000:1:2"),
            ]);
            s.prefix_advertisements = Some(vec![
                adv(
                    "10.0.0.0/8",
                    &["ok", "lg", "65535:65535", "4294967295:0:4294967295"],
                ),
                adv("10.1.0.0/16", &["nope"]),
                adv("10.2.0.0/16", &["1:4294967296:1"]),
                adv("10.3.0.0/16", &["big"]),
            ]);
        });
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].contains("spec.communities[1].value") && errs[0].contains("65536:1"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("spec.prefixAdvertisements[1].communities[0]") && errs[1].contains("neither")
        );
        assert!(
            errs[2].contains("spec.prefixAdvertisements[2].communities[0]")
                && errs[2].contains("not a BGP community")
        );
        // `big` went with its bad value, so the prefix naming it is undefined now.
        assert!(errs[3].contains("spec.prefixAdvertisements[3].communities[0]"));
        assert_eq!(s.prefix_advertisements.unwrap().len(), 1);
        assert_eq!(s.communities.unwrap().len(), 2);
    }

    #[test]
    fn config_scalars_and_lists() {
        let (s, errs) = cfg(|s| {
            s.listen_port = Some(0);
            s.as_number = Some(-5);
            s.ipv4_normal_route_priority = Some(0);
            s.node_mesh_max_restart_time = Some("2 minutes".into());
            s.ignored_interfaces = Some(vec!["docker*".into(), "eth\"0".into(), "*".into(), "a\nb".into()]);
            s.service_cluster_ips = Some(vec![
                CidrBlock {
                    cidr: "10.96.0.1/12".into(),
                },
                CidrBlock {
                    cidr: "10.97.0.0/16".into(),
                },
            ]);
            s.service_external_ips = Some(vec![CidrBlock { cidr: "x".into() }]);
        });
        let all = errs.join("\n");
        for want in [
            "spec.listenPort",
            "spec.asNumber",
            "spec.ipv4NormalRoutePriority",
            "spec.nodeMeshMaxRestartTime",
            "spec.ignoredInterfaces[1]",
            "spec.ignoredInterfaces[2]",
            "spec.ignoredInterfaces[3]",
            "spec.serviceClusterIPs[0].cidr",
            "spec.serviceExternalIPs[0].cidr",
        ] {
            assert!(all.contains(want), "{want} not in {all}");
        }
        assert_eq!(errs.len(), 9, "{all}");
        assert_eq!(s.listen_port, None);
        assert_eq!(s.as_number, None);
        assert_eq!(s.ignored_interfaces, Some(vec!["docker*".to_string()]));
        assert_eq!(s.service_cluster_ips.unwrap().len(), 1);
    }

    #[test]
    fn valid_config_is_untouched() {
        let (before, _) = cfg(|_| {});
        let mk = |s: &mut BGPConfigurationSpec| {
            s.as_number = Some(4294967295);
            s.listen_port = Some(65535);
            s.node_mesh_max_restart_time = Some("120s".into());
            s.ignored_interfaces = Some(vec!["docker*".into(), "veth.1-x_y".into()]);
            s.communities = Some(vec![Community {
                name: Some("c".into()),
                value: Some("0:0".into()),
            }]);
            s.prefix_advertisements = Some(vec![adv("fd00::/64", &["c"]), adv("10.0.0.1/32", &["1:2:3"])]);
            s.service_load_balancer_ips = Some(vec![CidrBlock {
                cidr: "192.0.2.7/32".into(),
            }]);
        };
        let (s, errs) = cfg(mk);
        assert!(errs.is_empty(), "{errs:?}");
        let mut want = before;
        mk(&mut want);
        assert_eq!(s, want);
    }

    /// Belt and braces: given unsanitized inputs, the renderer itself writes nothing BIRD cannot read.
    #[test]
    fn the_renderer_skips_unreadable_values_by_itself() {
        let mut snap = Snapshot::default();
        snap.add_manifests(
            "t",
            r#"apiVersion: v1
kind: Node
metadata:
  name: n1
  annotations: {projectcalico.org/IPv4Address: 10.0.0.1/24}
---
apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata: {name: default}
spec:
  ignoredInterfaces: ['eth"0', "a
b", docker*]
  prefixAdvertisements:
  - {cidr: 10.48.0.1/16, communities: ['65000:1']}
  - {cidr: 10.49.0.0/16, communities: ['65000:2', '65536:1']}
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: hb}
spec: {cidr: 10.50.0.1/16}
"#,
        )
        .unwrap();
        let out = crate::bgp::render(
            &snap,
            "n1",
            &crate::bgp::RenderOptions::default(),
            &crate::bgp::CalicoSelectors::default(),
        )
        .unwrap();
        let main = String::from_utf8(out.files["bird.cfg"].clone()).unwrap();
        let ipam = String::from_utf8(out.files["bird_ipam.cfg"].clone()).unwrap();
        assert!(!main.contains("eth\"") && !main.contains("a\nb"), "{main}");
        assert!(main.contains("-\"docker*\""), "{main}");
        assert!(
            !main.contains("10.48.0.1") && main.contains("net ~ 10.49.0.0/16"),
            "{main}"
        );
        assert!(
            main.contains("bgp_community.add((65000, 2))") && !main.contains("65536"),
            "{main}"
        );
        assert!(!ipam.contains("10.50.0.1"), "{ipam}");
        let w = out.warnings.join("\n");
        for want in [
            "spec.ignoredInterfaces",
            "spec.prefixAdvertisements[0].cidr",
            "65536:1",
            "IPPool \"hb\"",
        ] {
            assert!(w.contains(want), "{want} not warned: {w}");
        }
    }

    #[test]
    fn an_object_that_does_not_decode_is_reported_not_fatal() {
        let objs = vec![
            serde_json::json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
                "metadata": {"name": "ok"}, "spec": {"peerIP": "10.0.0.1", "asNumber": 65000}}),
            serde_json::json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
                "metadata": {"name": "odd"}, "spec": {"password": {"secretKeyRef": {"key": "k"}}}}),
        ];
        let (ok, bad) = decode_each::<crate::api::BgpPeer>("BGPPeer", objs);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        let e = bad[0].to_string();
        assert!(
            e.starts_with("BGPPeer \"odd\": spec: cannot be read") && e.contains("name"),
            "{e}"
        );
    }

    #[test]
    fn sanitize_leaves_out_the_bad_peer_only() {
        let mut snap = Snapshot::default();
        snap.add_manifests(
            "t",
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {name: bad}\nspec: {peerIP: '10.0.0.1:0', asNumber: 65000}\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {name: good}\nspec: {peerIP: '10.0.0.2', asNumber: 65000}\n---\napiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: hb}\nspec: {cidr: 10.48.0.1/16}\n",
        )
        .unwrap();
        let errs = sanitize(&mut snap);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].place().kind, "BGPPeer");
        assert_eq!(errs[0].place().name, "bad");
        assert_eq!(errs[1].place().kind, "IPPool");
        assert_eq!(snap.peers.len(), 1);
        assert_eq!(snap.peers[0].metadata.name.as_deref(), Some("good"));
        assert!(snap.pools.is_empty());
    }

    fn filter_snapshot(filter_spec: &str) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.add_manifests(
            "t",
            &format!(
                "apiVersion: crd.projectcalico.org/v1\nkind: BGPFilter\nmetadata: {{name: f}}\nspec: {filter_spec}\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPFilter\nmetadata: {{name: ok}}\nspec: {{importV4: [{{action: Reject}}]}}\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {{name: uses-f}}\nspec: {{peerIP: 10.0.0.1, asNumber: 65000, filters: [ok, f]}}\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {{name: uses-ok}}\nspec: {{peerIP: 10.0.0.2, asNumber: 65000, filters: [ok]}}\n"
            ),
        )
        .unwrap();
        snap
    }

    #[test]
    fn a_bad_filter_goes_with_the_peers_that_name_it() {
        let mut snap = filter_snapshot(
            "{exportV6: [{action: Accept}, {action: Reject, cidr: 10.0.0.0/8, matchOperator: In}]}",
        );
        let errs: Vec<String> = sanitize(&mut snap).iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("BGPFilter \"f\": spec.exportV6[1].cidr \"10.0.0.0/8\" is not an IPv6 CIDR"),
            "{errs:?}"
        );
        assert!(
            errs[1]
                .starts_with("BGPPeer \"uses-f\": spec.filters[1] names BGPFilter \"f\", which is invalid"),
            "{errs:?}"
        );
        let names = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(
            names(snap.filters.iter().map(|f| f.metadata.name.clone()).collect()),
            ["ok"]
        );
        assert_eq!(
            names(snap.peers.iter().map(|p| p.metadata.name.clone()).collect()),
            ["uses-ok"]
        );
    }

    #[test]
    fn filter_values_bird_refuses_are_named() {
        for (spec, want) in [
            (
                "{importV4: [{action: Accept, cidr: 10.0.0.1/8, matchOperator: In}]}",
                "spec.importV4[0].cidr \"10.0.0.1/8\" has host bits set (write 10.0.0.0/8)",
            ),
            (
                "{importV4: [{action: Accept, cidr: x, matchOperator: In}]}",
                "spec.importV4[0].cidr \"x\" is not a CIDR",
            ),
            (
                "{exportV4: [{action: Accept, cidr: 10.0.0.0/16, matchOperator: In, prefixLength: {max: 8}}]}",
                "spec.exportV4[0].prefixLength: the range {16,8} of 10.0.0.0/16 is empty",
            ),
            (
                "{exportV4: [{action: Accept, interface: 'a\"b'}]}",
                "spec.exportV4[0].interface",
            ),
            (
                "{importV6: [{action: Accept, operations: [{addCommunity: {value: '1:2:3:4'}}]}]}",
                "spec.importV6[0].operations[0].addCommunity.value",
            ),
            (
                "{importV6: [{action: Accept, operations: [{prependASPath: {prefix: [4294967296]}}]}]}",
                "spec.importV6[0].operations[0].prependASPath.prefix[0]: 4294967296 is not an AS number",
            ),
        ] {
            let mut snap = filter_snapshot(spec);
            let errs: Vec<String> = sanitize(&mut snap).iter().map(|e| e.to_string()).collect();
            assert!(errs[0].contains(want), "{spec}: {errs:?}");
        }
        let mut snap = filter_snapshot(
            "{importV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {min: 16}}], exportV6: [{action: Reject, peerType: iBGP, communities: {values: ['1:2']}}]}",
        );
        assert!(sanitize(&mut snap).is_empty());
        assert_eq!(snap.filters.len(), 2);
        assert_eq!(snap.peers.len(), 2);
    }

    #[test]
    fn local_workload_selector_is_reported_unsupported() {
        let mut snap = Snapshot::default();
        snap.add_manifests(
            "t",
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {name: lw}\nspec: {localWorkloadSelector: \"app == 'x'\", asNumber: 65000}\n",
        )
        .unwrap();
        // Manifests list the pods; a snapshot without them (the BGP controller's) cannot render.
        assert!(sanitize(&mut snap.clone()).is_empty());
        snap.workloads_known = false;
        let errs = sanitize(&mut snap);
        assert_eq!(errs.len(), 1);
        assert!(matches!(errs[0], Invalid::Unsupported(..)));
        assert!(
            errs[0]
                .to_string()
                .contains("spec.localWorkloadSelector is not supported")
        );
        assert!(snap.peers.is_empty());
    }
}
