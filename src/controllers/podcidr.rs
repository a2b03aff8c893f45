//! The cluster's pod CIDRs: kubeadm's `networking.podSubnet`, else a cover of the Nodes' podCIDRs.
//!
//! Unlike the Tigera operator (a regex over every value of the ConfigMap, nothing trimmed), the
//! ClusterConfiguration is parsed as YAML, entries are trimmed, and a missing podSubnet is not an
//! error: pools listed in the Installation do not need it.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;

/// Where the pod CIDRs came from (named in messages so a user knows what to fix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Kubeadm,
    Nodes,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Kubeadm => "kube-system/kubeadm-config networking.podSubnet",
            Source::Nodes => "the Nodes' spec.podCIDRs",
        })
    }
}

/// The cluster's pod CIDRs and their source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCidrs {
    pub cidrs: Vec<IpNet>,
    pub source: Source,
}

impl PodCidrs {
    /// True when `pool` lies inside one of the CIDRs (same family, network inside, prefix not wider).
    pub fn contains(&self, pool: &IpNet) -> bool {
        self.cidrs.iter().any(|c| c.contains(pool))
    }

    /// `[10.48.0.0/16 fd00::/56]`, the form Calico prints.
    pub fn list(&self) -> String {
        let v: Vec<String> = self.cidrs.iter().map(|c| c.to_string()).collect();
        format!("[{}]", v.join(" "))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodCidrError {
    #[error("kube-system/kubeadm-config data.{key} is not valid YAML: {message}")]
    Yaml { key: String, message: String },
    #[error("kube-system/kubeadm-config networking.podSubnet entry {entry:?} is not a CIDR: {message}")]
    Cidr { entry: String, message: String },
}

#[derive(Deserialize)]
struct ClusterConfiguration {
    #[serde(default)]
    networking: Option<Networking>,
}

#[derive(Deserialize)]
struct Networking {
    #[serde(rename = "podSubnet", default)]
    pod_subnet: Option<String>,
}

/// Pod CIDRs from the kubeadm-config ConfigMap data (key `ClusterConfiguration`).
/// `Ok(None)` when the key or `networking.podSubnet` is absent.
pub fn from_kubeadm(data: &BTreeMap<String, String>) -> Result<Option<Vec<IpNet>>, PodCidrError> {
    let Some(text) = data.get("ClusterConfiguration") else {
        return Ok(None);
    };
    let cfg: ClusterConfiguration = serde_saphyr::from_str(text).map_err(|e| PodCidrError::Yaml {
        key: "ClusterConfiguration".into(),
        message: e.to_string(),
    })?;
    let Some(subnet) = cfg.networking.and_then(|n| n.pod_subnet) else {
        return Ok(None);
    };
    parse_list(&subnet).map(Some)
}

/// `10.244.0.0/16, fd00:10:244::/56` → two networks (trimmed, quotes tolerated, host bits cleared).
pub fn parse_list(s: &str) -> Result<Vec<IpNet>, PodCidrError> {
    let mut out = Vec::new();
    for raw in s.split(',') {
        let entry = raw.trim().trim_matches(|c| c == '"' || c == '\'').trim();
        if entry.is_empty() {
            continue;
        }
        let net: IpNet = entry
            .parse()
            .map_err(|e: ipnet::AddrParseError| PodCidrError::Cidr {
                entry: entry.to_string(),
                message: e.to_string(),
            })?;
        out.push(net.trunc());
    }
    Ok(out)
}

/// A cover of the Nodes' podCIDRs per family, widened to at least /16 (IPv4) or /48 (IPv6):
/// node ranges are slices of the cluster range, which the API does not publish, so the cover is
/// a heuristic used only when kubeadm's configuration is absent.
pub fn from_node_cidrs<'a>(node_cidrs: impl IntoIterator<Item = &'a str>) -> Vec<IpNet> {
    let (mut v4, mut v6): (Option<IpNet>, Option<IpNet>) = (None, None);
    for s in node_cidrs {
        let Ok(net) = s.trim().parse::<IpNet>() else {
            continue;
        };
        let net = net.trunc();
        let slot = match net {
            IpNet::V4(_) => &mut v4,
            IpNet::V6(_) => &mut v6,
        };
        *slot = Some(match slot.take() {
            None => net,
            Some(cur) => cover(&cur, &net),
        });
    }
    let widen = |n: IpNet, max: u8| -> IpNet {
        if n.prefix_len() > max {
            IpNet::new(n.network(), max).map(|x| x.trunc()).unwrap_or(n)
        } else {
            n
        }
    };
    v4.map(|n| widen(n, 16))
        .into_iter()
        .chain(v6.map(|n| widen(n, 48)))
        .collect()
}

/// The smallest network containing both (same family).
fn cover(a: &IpNet, b: &IpNet) -> IpNet {
    let mut p = a.prefix_len().min(b.prefix_len());
    loop {
        let c = IpNet::new(a.network(), p).map(|n| n.trunc()).unwrap_or(*a);
        if c.contains(b) || p == 0 {
            return c;
        }
        p -= 1;
    }
}

/// kubeadm first, then the Nodes; `None` when neither says anything.
pub fn resolve(kubeadm: Option<Vec<IpNet>>, node_cidrs: Vec<IpNet>) -> Option<PodCidrs> {
    match kubeadm {
        Some(c) if !c.is_empty() => Some(PodCidrs {
            cidrs: c,
            source: Source::Kubeadm,
        }),
        _ if !node_cidrs.is_empty() => Some(PodCidrs {
            cidrs: node_cidrs,
            source: Source::Nodes,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cm(text: &str) -> BTreeMap<String, String> {
        [("ClusterConfiguration".to_string(), text.to_string())]
            .into_iter()
            .collect()
    }

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn seed_kubeadm_config() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.48.0.0/16\n  serviceSubnet: 10.96.0.0/12\n";
        assert_eq!(from_kubeadm(&cm(text)).unwrap(), Some(vec![n("10.48.0.0/16")]));
    }

    #[test]
    fn dual_stack_with_spaces_quotes_and_crlf() {
        let text = "networking:\r\n  podSubnet: \"10.244.0.0/16, fd00:10:244::/56\"  # dual\r\n";
        assert_eq!(
            from_kubeadm(&cm(text)).unwrap(),
            Some(vec![n("10.244.0.0/16"), n("fd00:10:244::/56")])
        );
    }

    #[test]
    fn missing_pod_subnet_is_not_an_error() {
        assert_eq!(
            from_kubeadm(&cm("networking:\n  serviceSubnet: 10.96.0.0/12\n")).unwrap(),
            None
        );
        assert_eq!(from_kubeadm(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn bad_entry_is_named() {
        let err = from_kubeadm(&cm("networking:\n  podSubnet: 10.244.0.0/16,10.0.0.0/33\n")).unwrap_err();
        assert!(err.to_string().contains("\"10.0.0.0/33\""), "{err}");
        let err = from_kubeadm(&cm("networking: [\n")).unwrap_err();
        assert!(matches!(err, PodCidrError::Yaml { .. }));
    }

    #[test]
    fn node_cover_widens_and_splits_families() {
        let c = from_node_cidrs(["10.244.1.0/24", "10.244.7.0/24", "fd00:10:244:1::/64"]);
        assert_eq!(c, vec![n("10.244.0.0/16"), n("fd00:10:244::/48")]);
        let c = from_node_cidrs(["10.1.0.0/24", "10.200.0.0/24"]);
        assert_eq!(c, vec![n("10.0.0.0/8")]);
    }

    #[test]
    fn containment_is_by_family_and_prefix() {
        let p = resolve(Some(vec![n("10.48.0.0/16")]), vec![]).unwrap();
        assert!(p.contains(&n("10.48.0.0/16")));
        assert!(p.contains(&n("10.48.3.0/24")));
        assert!(!p.contains(&n("10.0.0.0/8")));
        assert!(!p.contains(&n("192.168.0.0/16")));
        assert!(!p.contains(&n("fd00::/64")));
        assert_eq!(p.list(), "[10.48.0.0/16]");
        assert_eq!(p.source, Source::Kubeadm);
    }

    proptest! {
        #[test]
        fn cover_contains_every_node_range(a in any::<u32>(), b in any::<u32>(), pa in 16u8..=28, pb in 16u8..=28) {
            let x = IpNet::new(std::net::Ipv4Addr::from(a).into(), pa).unwrap().trunc();
            let y = IpNet::new(std::net::Ipv4Addr::from(b).into(), pb).unwrap().trunc();
            let s = [x.to_string(), y.to_string()];
            let c = from_node_cidrs(s.iter().map(|s| s.as_str()));
            prop_assert_eq!(c.len(), 1);
            prop_assert!(c[0].contains(&x) && c[0].contains(&y));
        }
    }
}
