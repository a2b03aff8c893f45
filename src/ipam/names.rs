//! Object names and labels exactly as Calico forms them. Never change these encodings: objects
//! Calico wrote under the old name would become unreachable.

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

/// Longest object name Kubernetes accepts for these kinds.
const MAX_NAME: usize = 253;

/// `names.CIDRToName`: the first 3 dots, up to 7 colons and the slash become `-`.
/// `192.168.0.192/26` → `192-168-0-192-26`, `fd00:10:244::/122` → `fd00-10-244---122`.
pub fn block_name(cidr: &IpNet) -> String {
    // Calico formats with Go's canonical text; Rust's Display gives the same RFC 5952 form,
    // except for IPv4-mapped addresses (`::ffff:1.2.3.4`), written here in hex groups so the
    // name has no dots and parses back. Pools never cover that range (refused as reserved).
    let text = match cidr {
        IpNet::V6(v6) if v6.network().to_ipv4_mapped().is_some() => {
            let s = v6.network().segments();
            format!("::ffff:{:x}:{:x}/{}", s[6], s[7], v6.prefix_len())
        }
        _ => cidr.to_string(),
    };
    let text = replace_n(&text, '.', 3);
    let text = replace_n(&text, ':', 7);
    replace_n(&text, '/', 1)
}

/// Inverse of [`block_name`]: the CIDR a block object name stands for, if it is one.
/// IPv6 text holds at most 7 colons, so every `-` but the last was a colon.
pub fn parse_block_name(name: &str) -> Option<IpNet> {
    let (addr, prefix) = name.rsplit_once('-')?;
    let v4 = addr.replace('-', ".");
    let text = if addr.matches('-').count() == 3 && v4.parse::<std::net::Ipv4Addr>().is_ok() {
        v4
    } else {
        addr.replace('-', ":")
    };
    let net: IpNet = format!("{text}/{prefix}").parse().ok()?;
    (block_name(&net) == name).then_some(net)
}

fn replace_n(s: &str, from: char, n: usize) -> String {
    let mut left = n;
    s.chars()
        .map(|c| {
            if c == from && left > 0 {
                left -= 1;
                '-'
            } else {
                c
            }
        })
        .collect()
}

/// BlockAffinity name: `<host>-<block name>`, or, when that would reach 253 characters, the host
/// truncated and a hash suffix appended so that the name stays unique (252 characters in all).
pub fn affinity_name(host: &str, cidr: &IpNet) -> String {
    let encoded = block_name(cidr);
    let plain = format!("{host}-{encoded}");
    if plain.len() < MAX_NAME {
        return plain;
    }
    let digest = Sha256::digest(format!("{host}+{encoded}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let keep = (MAX_NAME - 1).saturating_sub(encoded.len() + 13);
    let host_prefix: String = host.chars().take(keep).collect();
    format!("{host_prefix}-{encoded}-{}", &hex[..11])
}

/// IPAMHandle name: the handle ID lower-cased.
pub fn handle_name(handle_id: &str) -> String {
    handle_id.to_lowercase()
}

/// Calico truncates a handle ID at the first carriage return when comparing (an old host-local
/// migration left `\r...` garbage in some IDs).
pub fn sanitize_handle_id(handle_id: &str) -> &str {
    handle_id.split('\r').next().unwrap_or(handle_id)
}

/// Label `projectcalico.org/hostname-hash`: base32 (no padding) of SHA3-256 of the node name.
/// Calico lists a node's affinities by this label, so every affinity tortie writes carries it.
pub fn hostname_hash(node: &str) -> String {
    data_encoding::BASE32_NOPAD.encode(&Sha3_256::digest(node.as_bytes()))
}

pub const LABEL_HOSTNAME_HASH: &str = "projectcalico.org/hostname-hash";
pub const LABEL_AFFINITY_TYPE: &str = "projectcalico.org/affinity-type";
pub const LABEL_IP_VERSION: &str = "projectcalico.org/ip-version";

/// The labels Calico stamps on every BlockAffinity.
pub fn affinity_labels(node: &str, affinity_type: &str, cidr: &IpNet) -> Vec<(String, String)> {
    let version = match cidr {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    };
    vec![
        (LABEL_AFFINITY_TYPE.into(), affinity_type.into()),
        (LABEL_HOSTNAME_HASH.into(), hostname_hash(node)),
        (LABEL_IP_VERSION.into(), version.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_mapped_block_names_round_trip() {
        // Found by the cidr_block fuzz target: the dotted form's name did not parse back.
        for text in ["::ffff:0.0.0.0/96", "::ffff:10.1.2.0/122", "::ffff:0:0/128"] {
            let n = net(text);
            let name = block_name(&n);
            assert!(!name.contains('.'), "{name}");
            assert_eq!(parse_block_name(&name), Some(n), "{text} named {name}");
        }
        assert_eq!(block_name(&net("::ffff:10.1.2.0/122")), "--ffff-a01-200-122");
    }

    #[test]
    fn block_names_match_calico() {
        assert_eq!(block_name(&net("192.168.0.192/26")), "192-168-0-192-26");
        assert_eq!(block_name(&net("10.48.2.8/29")), "10-48-2-8-29");
        assert_eq!(block_name(&net("10.48.128.0/26")), "10-48-128-0-26");
        assert_eq!(block_name(&net("fd00:10:244::/122")), "fd00-10-244---122");
        assert_eq!(block_name(&net("2001:db8::40/122")), "2001-db8--40-122");
        // Eight groups: only the first seven colons are replaced, as in Calico.
        assert_eq!(
            block_name(&net("2001:db8:1:2:3:4:5:40/122")),
            "2001-db8-1-2-3-4-5-40-122"
        );
    }

    #[test]
    fn block_names_parse_back() {
        for c in [
            "10.48.2.8/29",
            "fd00:10:244::/122",
            "2001:db8::40/122",
            "2001:db8:1:2:3:4:5:40/122",
            "::/122",
        ] {
            assert_eq!(parse_block_name(&block_name(&net(c))), Some(net(c)), "{c}");
        }
        assert_eq!(parse_block_name("node-a-10-48-0-0-26"), None);
        assert_eq!(parse_block_name("default"), None);
    }

    #[test]
    fn affinity_names_match_calico() {
        assert_eq!(
            affinity_name("node-a", &net("10.48.0.0/26")),
            "node-a-10-48-0-0-26"
        );
        assert_eq!(
            affinity_name("wsl-ubuntu20.04", &net("192.168.0.192/26")),
            "wsl-ubuntu20.04-192-168-0-192-26"
        );
    }

    #[test]
    fn long_host_names_are_truncated_and_hashed() {
        let host = "n".repeat(250);
        let cidr = net("10.48.0.0/26");
        let name = affinity_name(&host, &cidr);
        assert_eq!(name.len(), 252);
        assert!(name.contains("-10-48-0-0-26-"));
        let digest = Sha256::digest(format!("{host}+10-48-0-0-26").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert!(name.ends_with(&hex[..11]));
        // Just under the limit: no hashing.
        let host = "m".repeat(252 - "-10-48-0-0-26".len());
        assert_eq!(affinity_name(&host, &cidr).len(), 252);
        assert!(affinity_name(&host, &cidr).starts_with(&host));
    }

    #[test]
    fn hostname_hash_matches_calico_vector() {
        assert_eq!(
            hostname_hash("node-a"),
            "PY3TQE2E3XMTETLM2MJO3UITKPFB27YUJ4T4E5XGPEJON3SM4QAA"
        );
        assert_eq!(hostname_hash("node-a").len(), 52);
    }

    #[test]
    fn handle_names_are_lower_case() {
        assert_eq!(handle_name("vxlan-tunnel-addr-WSL"), "vxlan-tunnel-addr-wsl");
        assert_eq!(
            sanitize_handle_id("k8s-pod-network.abc\r\neth0"),
            "k8s-pod-network.abc"
        );
    }
}
