//! The CNI request decision (`cni::request`): the three pool/address annotations on the pod and
//! the namespace, against a fixed set of pools. Never a panic; an error carries one of the
//! request-error codes and names where the bad value came from; a plan only holds addresses in
//! an enabled pool (at most one per family) or pools that are enabled and of the right family.
#![no_main]

use std::collections::BTreeMap;

use ipnet::IpNet;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tortie::cni::NetConf;
use tortie::cni::request::{
    self, ANN_IP_ADDRS, ANN_IP_FAMILIES, ANN_IPV4_POOLS, ANN_IPV6_POOLS, Inputs, Plan, PoolInfo,
};

#[derive(Arbitrary, Debug)]
struct Case {
    pod: Vec<(u8, String)>,
    namespace: Option<Vec<(u8, String)>>,
    assign_ipv4: bool,
    assign_ipv6: bool,
    conf_v4_pools: Vec<String>,
    cni_args_ip: Option<String>,
}

const KEYS: [&str; 5] = [
    ANN_IPV4_POOLS,
    ANN_IPV6_POOLS,
    ANN_IP_ADDRS,
    ANN_IP_FAMILIES,
    "cni.projectcalico.org/ipAddrsNoIpam",
];

fn pools() -> Vec<PoolInfo> {
    let p = |name: &str, cidr: &str, disabled: bool, deleting: bool| PoolInfo {
        name: name.into(),
        cidr: cidr.parse().unwrap(),
        disabled,
        deleting,
        block_size: if cidr.contains(':') { 122 } else { 26 },
        workload: name != "lb",
    };
    vec![
        p("default-ipv4-ippool", "10.48.0.0/24", false, false),
        p("pool2-ipv4-ippool", "10.48.128.0/24", false, false),
        p("off", "10.49.0.0/24", true, false),
        p("going", "10.50.0.0/24", false, true),
        p("v6", "fd00:48::/64", false, false),
        p("v6-off", "fd00:49::/64", true, false),
        p("lb", "10.51.0.0/24", false, false),
    ]
}

fn annotations(list: &[(u8, String)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (KEYS[usize::from(*k) % KEYS.len()].to_string(), v.clone()))
        .collect()
}

fuzz_target!(|case: Case| {
    // The annotation parser alone: a list of non-blank trimmed entries, or error 100.
    let src = tortie::cni::Source::Default;
    for (_, v) in &case.pod {
        match request::parse_pool_list(&src, v) {
            Ok(list) => assert!(
                list.iter().all(|e| !e.is_empty() && e.trim() == e),
                "{v:?} -> {list:?}"
            ),
            Err(e) => assert_eq!(e.code(), 100, "{e}"),
        }
    }

    let conf_json = serde_json::json!({
        "cniVersion": "1.0.0",
        "ipam": {"assign_ipv4": case.assign_ipv4, "assign_ipv6": case.assign_ipv6,
                 "ipv4_pools": case.conf_v4_pools},
    });
    let conf = NetConf::parse(conf_json.to_string().as_bytes()).expect("a well-typed config parses");
    let pools = pools();
    let pod = annotations(&case.pod);
    let ns = case.namespace.as_deref().map(annotations);
    let inputs = Inputs {
        conf: &conf,
        namespace: "ns",
        pod: "pod",
        pod_annotations: &pod,
        namespace_annotations: ns.as_ref(),
        pools: &pools,
        cni_args_ip: case.cni_args_ip.as_deref(),
    };
    match request::plan(&inputs) {
        Ok(Plan::Explicit { ips, .. }) => {
            assert!(!ips.is_empty() && ips.len() <= 2, "{ips:?}");
            if ips.len() == 2 {
                assert_ne!(
                    ips[0].is_ipv4(),
                    ips[1].is_ipv4(),
                    "two addresses of one family: {ips:?}"
                );
            }
            for ip in &ips {
                let p = pools
                    .iter()
                    .find(|p| p.cidr.contains(ip))
                    .expect("address in a pool");
                assert!(!p.disabled && !p.deleting, "{ip} in unusable pool {p:?}");
            }
        }
        Ok(Plan::Auto { v4, v6 }) => {
            assert!(v4.wanted || v6.wanted);
            for (fam, v4fam) in [(&v4, true), (&v6, false)] {
                if !fam.wanted {
                    assert!(fam.pools.is_empty());
                }
                for c in &fam.pools {
                    let p = pools
                        .iter()
                        .find(|p| p.name == c.name)
                        .expect("chosen pool exists");
                    assert_eq!(p.cidr, c.cidr);
                    assert!(!p.disabled && !p.deleting && p.workload, "{p:?} chosen");
                    assert_eq!(
                        matches!(p.cidr, IpNet::V4(_)),
                        v4fam,
                        "{p:?} for the wrong family"
                    );
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            match e.code() {
                7 => assert!(msg.contains("ipam.assign_ipv4"), "{msg}"),
                100..=102 | 104 => assert!(
                    msg.contains("annotation cni.projectcalico.org/") || msg.contains("network config field"),
                    "error {} does not say where the value came from: {msg}",
                    e.code()
                ),
                c => panic!("unexpected error code {c}: {msg}"),
            }
        }
    }
});
