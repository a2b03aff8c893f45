//! Object names and labels exactly as Calico forms them. Never change these encodings: objects
//! Calico wrote under the old name would become unreachable. The one departure, handle names of
//! IDs Calico cannot name safely, keeps finding Calico's objects (see [`handle_name`]).

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

/// IPAMHandle object name of a handle ID (compared after [`sanitize_handle_id`]).
///
/// Calico names a handle `strings.ToLower(handleID)`, so two IDs differing only in case share one
/// object, and an ID that is no valid object name (`/`, `_`, non-ASCII, over 253 characters) can
/// be neither created nor found. tortie keeps Calico's name where it is safe, for an ID that is
/// already a valid name (lower case: CNI's `<network>.<container ID>` in practice), so Calico's
/// tools and a mixed cluster find the same object. Every other ID gets a name of its own:
/// a readable lower-case prefix, `-` and 16 hex digits of SHA-256 of the exact ID. Calico reads
/// handles by `spec.handleID` when it lists them, so its tools still see these. Before treating
/// an object as an ID's own, check [`handle_owned_by`].
pub fn handle_name(handle_id: &str) -> String {
    let id = sanitize_handle_id(handle_id);
    if is_dns_subdomain(id) {
        return id.to_string();
    }
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let lower = id.to_lowercase();
    // Labels of [a-z0-9-], each starting and ending alphanumeric, within the length limit.
    let mut prefix = String::new();
    for label in lower.split('.') {
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let clean = clean.trim_matches('-');
        if clean.is_empty() {
            continue;
        }
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(clean);
    }
    prefix.truncate(MAX_NAME - 1 - hex.len());
    let prefix = prefix.trim_end_matches(['-', '.']);
    if prefix.is_empty() {
        format!("handle-{hex}")
    } else {
        format!("{prefix}-{hex}")
    }
}

/// Where Calico stores the handle of an ID that [`handle_name`] names differently (a mixed-case
/// ID Calico could store: its lower-cased form is a valid name). Such an object is the ID's own
/// only when [`handle_owned_by`] says so.
pub fn calico_handle_name(handle_id: &str) -> Option<String> {
    let lower = sanitize_handle_id(handle_id).to_lowercase();
    (is_dns_subdomain(&lower) && lower != handle_name(handle_id)).then_some(lower)
}

/// Whether a stored handle (its `spec.handleID`) belongs to `handle_id`: the exact ID, as Calico
/// compares it (after [`sanitize_handle_id`]), never a case-folded one.
pub fn handle_owned_by(stored_handle_id: &str, handle_id: &str) -> bool {
    sanitize_handle_id(stored_handle_id) == sanitize_handle_id(handle_id)
}

/// A Kubernetes object name of the DNS-1123 subdomain form: at most 253 characters, labels of
/// lower-case letters, digits and `-`, each starting and ending with a letter or digit.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
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
    fn valid_lower_case_ids_keep_calicos_name() {
        for id in [
            "k8s-pod-network.0123456789abcdef",
            "ipip-tunnel-addr-node-a",
            "tortie-gateway.node-a",
            "yaobank.db-1",
        ] {
            assert_eq!(handle_name(id), id);
            assert_eq!(calico_handle_name(id), None);
        }
        assert_eq!(
            sanitize_handle_id("k8s-pod-network.abc\r\neth0"),
            "k8s-pod-network.abc"
        );
        assert_eq!(handle_name("k8s-pod-network.abc\r\neth0"), "k8s-pod-network.abc");
    }

    #[test]
    fn other_ids_get_names_of_their_own() {
        // Case variants no longer share one object (Calico's name for both is `...abc`).
        let upper = handle_name("k8s-pod-network.ABC");
        let mixed = handle_name("k8s-pod-network.Abc");
        assert_ne!(upper, mixed);
        assert_ne!(upper, "k8s-pod-network.abc");
        assert!(upper.starts_with("k8s-pod-network.abc-"), "{upper}");
        assert_eq!(
            calico_handle_name("k8s-pod-network.ABC").as_deref(),
            Some("k8s-pod-network.abc")
        );
        let long = "a".repeat(400);
        let odd = [
            "k8s-pod-network./../x",
            "k8s-pod-network.a/b",
            "k8s-pod-network.under_score",
            "k8s-pod-network.ünïcödé",
            "k8s-pod-network.",
            "k8s-pod-network..x",
            ".",
            "-",
            "/",
            long.as_str(),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for id in odd {
            let n = handle_name(id);
            assert!(is_dns_subdomain(&n), "{id:?} -> {n:?}");
            assert_eq!(n, handle_name(id), "deterministic");
            assert!(seen.insert(n.clone()), "{id:?} shares {n}");
        }
        // Calico could not store these at all: there is no legacy object to look for.
        assert_eq!(calico_handle_name("k8s-pod-network./../x"), None);
        assert_eq!(calico_handle_name(&long), None);
    }

    #[test]
    fn ownership_is_by_exact_id() {
        assert!(handle_owned_by("k8s-pod-network.ABC", "k8s-pod-network.ABC"));
        assert!(!handle_owned_by("k8s-pod-network.ABC", "k8s-pod-network.abc"));
        assert!(handle_owned_by("k8s-pod-network.abc\r\nx", "k8s-pod-network.abc"));
    }

    #[test]
    fn dns_subdomains() {
        assert!(is_dns_subdomain("a.b-c.0"));
        for bad in ["", "A", "a..b", "-a", "a-", "a_b", "a/b", ".a", "a."] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain(&"a".repeat(253)));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
    }
}
