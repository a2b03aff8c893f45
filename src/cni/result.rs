//! The IPAM result on stdout, in the shape the caller's `cniVersion` expects.
//!
//! 1.x: `{"cniVersion","ips":[{"address","gateway"}],"routes":[{"dst","gw"}],"dns":{}}`;
//! 0.3.x/0.4.0 add `"version":"4"|"6"` to each IP; 0.1.0/0.2.0 use `ip4`/`ip6` objects.
//! Addresses are host routes (`10.48.0.5/32`, `fd00::5/128`), the form Calico's CNI gives the
//! runtime; with a per-node gateway they keep their block's prefix (see `plugin::result_address`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::CniError;

pub const SUPPORTED_VERSIONS: [&str; 7] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version tortie itself speaks (CNI 1.1: GC and STATUS).
pub const LATEST: &str = "1.1.0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// The address, e.g. `10.48.0.5/32` (`10.48.0.5/26` when a gateway in the block is named).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamResult {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

/// Checks that the caller's version is one tortie can answer in.
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion {
            requested: v.into(),
            supported: SUPPORTED_VERSIONS.join(", "),
        })
    }
}

/// The answer to `VERSION`.
pub fn version_json(requested: Option<&str>) -> Value {
    let v = requested
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

fn is_legacy(v: &str) -> bool {
    matches!(v, "0.1.0" | "0.2.0")
}

fn family(ip: &IpNet) -> &'static str {
    match ip {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    }
}

impl IpamResult {
    pub fn to_json(&self, cni_version: &str) -> Result<Value, CniError> {
        check_version(cni_version)?;
        if is_legacy(cni_version) {
            return Ok(self.legacy_json(cni_version));
        }
        let with_version = cni_version.starts_with("0.");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if with_version {
                    o.insert("version".into(), family(&ip.address).into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        Ok(json!({
            "cniVersion": cni_version,
            "ips": ips,
            "routes": self.routes,
            "dns": {},
        }))
    }

    /// 0.1.0/0.2.0: one `ip4` and one `ip6` object, each with its family's routes.
    fn legacy_json(&self, cni_version: &str) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), cni_version.into());
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self
                .ips
                .iter()
                .find(|ip| matches!(ip.address, IpNet::V4(_)) == v4)
            else {
                continue;
            };
            let routes: Vec<&Route> = self
                .routes
                .iter()
                .filter(|r| matches!(r.dst, IpNet::V4(_)) == v4)
                .collect();
            let mut o = serde_json::Map::new();
            o.insert("ip".into(), ip.address.to_string().into());
            if let Some(gw) = ip.gateway {
                o.insert("gateway".into(), gw.to_string().into());
            }
            if !routes.is_empty() {
                o.insert("routes".into(), json!(routes));
            }
            out.insert(key.into(), Value::Object(o));
        }
        out.insert("dns".into(), json!({}));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual() -> IpamResult {
        IpamResult {
            ips: vec![
                IpConfig {
                    address: "10.48.128.3/32".parse().unwrap(),
                    gateway: None,
                },
                IpConfig {
                    address: "fd00:48::5/122".parse().unwrap(),
                    gateway: Some("fd00:48::1".parse().unwrap()),
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: None,
                },
                Route {
                    dst: "::/0".parse().unwrap(),
                    gw: None,
                },
            ],
        }
    }

    #[test]
    fn v1_result_shape() {
        let j = dual().to_json("1.0.0").unwrap();
        assert_eq!(
            j,
            json!({
                "cniVersion": "1.0.0",
                "ips": [
                    {"address": "10.48.128.3/32"},
                    {"address": "fd00:48::5/122", "gateway": "fd00:48::1"}
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn v03_results_carry_family() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = dual().to_json(v).unwrap();
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
        }
    }

    #[test]
    fn legacy_result_shape() {
        let j = dual().to_json("0.2.0").unwrap();
        assert_eq!(j["ip4"]["ip"], "10.48.128.3/32");
        assert_eq!(j["ip4"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(j["ip6"]["gateway"], "fd00:48::1");
    }

    #[test]
    fn unknown_version_is_code_1() {
        let e = dual().to_json("2.0.0").unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_string().contains("2.0.0"));
    }

    #[test]
    fn version_answer() {
        assert_eq!(version_json(Some("0.4.0"))["cniVersion"], "0.4.0");
        assert_eq!(version_json(Some("9.9.9"))["cniVersion"], LATEST);
        assert_eq!(version_json(None)["supportedVersions"][5], "1.0.0");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    proptest! {
        /// Every version's result carries exactly the assigned addresses, each in its family.
        #[test]
        fn results_keep_every_address(a in any::<u32>(), b in any::<u128>(), p4 in 20u8..=32, p6 in 116u8..=128, v in 0usize..7) {
            let r = IpamResult {
                ips: vec![
                    IpConfig { address: IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), p4).unwrap(), gateway: None },
                    IpConfig { address: IpNet::new(IpAddr::V6(Ipv6Addr::from(b)), p6).unwrap(), gateway: None },
                ],
                routes: vec![],
            };
            let version = SUPPORTED_VERSIONS[v];
            let j = r.to_json(version).unwrap();
            prop_assert_eq!(&j["cniVersion"], version);
            if is_legacy(version) {
                prop_assert_eq!(j["ip4"]["ip"].as_str().unwrap(), r.ips[0].address.to_string());
                prop_assert_eq!(j["ip6"]["ip"].as_str().unwrap(), r.ips[1].address.to_string());
            } else {
                for (i, ip) in r.ips.iter().enumerate() {
                    let back: IpNet = j["ips"][i]["address"].as_str().unwrap().parse().unwrap();
                    prop_assert_eq!(back, ip.address);
                }
            }
        }
    }
}
