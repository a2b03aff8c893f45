//! The network config on stdin, with Calico's keys, so that a `10-calico.conflist` keeps working
//! once its `ipam.type` says `tortie-ipam`.
//!
//! The whole plugin config of the main plugin (`calico`, `ptp`, `bridge`) arrives here, because a
//! main plugin hands its own stdin to its IPAM plugin; keys tortie does not know are ignored.

use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use super::error::CniError;
use super::result::Route;
use crate::api::CrdMode;

pub const DEFAULT_NETWORK_NAME: &str = "k8s-pod-network";
/// Whole-request deadline when the config does not set `ipam.timeout_seconds`. Shorter than
/// Calico's 90 s: kubelet retries a failed sandbox anyway, and a stuck plugin blocks the pod longer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// Network name: the prefix of handle IDs (`<name>.<containerID>`).
    pub name: String,
    pub nodename: Option<String>,
    pub nodename_file: Option<String>,
    pub kubeconfig: Option<String>,
    pub k8s_api_root: Option<String>,
    pub log_level: Option<String>,
    pub log_file_path: Option<String>,
    /// `None`: detect from the API groups the server offers.
    pub crd_mode: Option<CrdMode>,
    pub ipam: IpamConf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IpamConf {
    pub assign_ipv4: bool,
    pub assign_ipv6: bool,
    pub ipv4_pools: Vec<String>,
    pub ipv6_pools: Vec<String>,
    /// Routes to return; `None` gives a default route per assigned family.
    pub routes: Option<Vec<Route>>,
    /// `ipam.gateway`: how results name a gateway (see [`GatewayMode`]).
    pub gateway: GatewayMode,
    pub timeout: Duration,
    /// `ipam.socket`: the node agent's IPAM socket, tried first (default
    /// [`DEFAULT_SOCKET`](super::wire::DEFAULT_SOCKET)); `""` or `"none"`: always in-process.
    pub socket: Option<String>,
}

/// Whether results carry a gateway. Calico's own main plugin routes via 169.254.1.1 and ignores
/// it; the reference `ptp` and `bridge` plugins need one inside the address's subnet, and that
/// address must never be handed to a pod, so tortie reserves one per node and block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayMode {
    /// No gateway (as `calico-ipam`).
    None,
    /// A per-node address reserved in each block the node's pods use (handle `tortie-gateway.<node>`).
    Node,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
        let Value::Object(_) = &v else {
            return Err(CniError::Decode("expected a JSON object".into()));
        };
        // A section of the wrong type would otherwise read as empty and its keys as defaults.
        let ipam = section(&v, "ipam")?;
        let kube = section(&v, "kubernetes")?;
        let crd_mode = match opt_str(&v, "calico_api_group", "calico_api_group")? {
            None => None,
            Some(g) => match g.as_str() {
                "" => None,
                "projectcalico.org/v3" | "projectcalico.org" | "v3" => Some(CrdMode::V3),
                "crd.projectcalico.org/v1" | "crd.projectcalico.org" | "v1" => Some(CrdMode::V1),
                other => {
                    return Err(invalid(
                        "calico_api_group",
                        format!("{other:?} is not projectcalico.org/v3 or crd.projectcalico.org/v1"),
                    ));
                }
            },
        };
        let routes = match ipam.get("routes") {
            None | Some(Value::Null) => None,
            Some(r) => Some(serde_json::from_value::<Vec<Route>>(r.clone()).map_err(|e| {
                invalid(
                    "ipam.routes",
                    format!("expected a list of {{\"dst\": CIDR, \"gw\": IP}}: {e}"),
                )
            })?),
        };
        let gateway = match opt_str(ipam, "gateway", "ipam.gateway")?.as_deref() {
            None | Some("") | Some("none") => GatewayMode::None,
            Some("node") => GatewayMode::Node,
            Some(other) => {
                return Err(invalid(
                    "ipam.gateway",
                    format!("{other:?} is not \"none\" or \"node\""),
                ));
            }
        };
        let timeout = match ipam.get("timeout_seconds") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(t) => match t.as_f64() {
                Some(s) if s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(invalid(
                        "ipam.timeout_seconds",
                        format!("{t} is not a number of seconds between 0 and 3600"),
                    ));
                }
            },
        };
        let conf = NetConf {
            cni_version: opt_str(&v, "cniVersion", "cniVersion")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "0.1.0".into()),
            name: opt_str(&v, "name", "name")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_NETWORK_NAME.into()),
            nodename: opt_str(&v, "nodename", "nodename")?.filter(|s| !s.is_empty()),
            nodename_file: opt_str(&v, "nodename_file", "nodename_file")?.filter(|s| !s.is_empty()),
            kubeconfig: opt_str(kube, "kubeconfig", "kubernetes.kubeconfig")?.filter(|s| !s.is_empty()),
            k8s_api_root: match opt_str(kube, "k8s_api_root", "kubernetes.k8s_api_root")?
                .filter(|s| !s.is_empty())
            {
                Some(root) => Some(api_root(root)?),
                None => None,
            },
            log_level: opt_str(&v, "log_level", "log_level")?,
            log_file_path: opt_str(&v, "log_file_path", "log_file_path")?.filter(|s| !s.is_empty()),
            crd_mode,
            ipam: IpamConf {
                assign_ipv4: flag(ipam, "assign_ipv4", "ipam.assign_ipv4", true)?,
                assign_ipv6: flag(ipam, "assign_ipv6", "ipam.assign_ipv6", false)?,
                ipv4_pools: str_list(ipam, "ipv4_pools", "ipam.ipv4_pools")?,
                ipv6_pools: str_list(ipam, "ipv6_pools", "ipam.ipv6_pools")?,
                routes,
                gateway,
                timeout,
                socket: match opt_str(ipam, "socket", "ipam.socket")?.as_deref() {
                    None => Some(super::wire::DEFAULT_SOCKET.to_string()),
                    Some("") | Some("none") => None,
                    // The runtime's working directory is no place to look for the agent.
                    Some(p) if !p.starts_with('/') => {
                        return Err(invalid(
                            "ipam.socket",
                            format!("{p:?} is not an absolute path (or \"none\")"),
                        ));
                    }
                    Some(p) => Some(p.to_string()),
                },
            },
        };
        Ok(conf)
    }
}

fn invalid(field: &str, reason: String) -> CniError {
    CniError::InvalidConfig {
        field: field.into(),
        reason,
    }
}

fn section<'a>(v: &'a Value, key: &str) -> Result<&'a Value, CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&Value::Null),
        Some(o @ Value::Object(_)) => Ok(o),
        Some(other) => Err(invalid(key, format!("expected an object, got {other}"))),
    }
}

/// `k8s_api_root` must be an http(s) URL with a host: `10.96.0.1:443` would otherwise be taken
/// for a URL without a scheme and fail only at the first request, as an apiserver error.
fn api_root(root: String) -> Result<String, CniError> {
    let host = root
        .strip_prefix("https://")
        .or_else(|| root.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !root.contains(char::is_whitespace) => Ok(root),
        _ => Err(invalid(
            "kubernetes.k8s_api_root",
            format!("{root:?} is not an http(s) URL such as https://10.96.0.1:443"),
        )),
    }
}

fn opt_str(obj: &Value, key: &str, field: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(field, format!("expected a string, got {other}"))),
    }
}

/// Calico writes these flags as the strings "true"/"false"; a hand-written config may use booleans.
fn flag(obj: &Value, key: &str, field: &str, default: bool) -> Result<bool, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.is_empty() => Ok(default),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(invalid(
            field,
            format!("expected \"true\" or \"false\", got {other}"),
        )),
    }
}

fn str_list(obj: &Value, key: &str, field: &str) -> Result<Vec<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(
                    field,
                    format!("expected a list of pool names or CIDRs, found {other}"),
                )),
            })
            .collect(),
        Some(other) => Err(invalid(
            field,
            format!("expected a list of pool names or CIDRs, got {other}"),
        )),
    }
}

/// The default routes for the families that got an address.
pub fn default_routes(v4: bool, v6: bool) -> Vec<Route> {
    let mut r = vec![];
    if v4 {
        r.push(Route {
            dst: "0.0.0.0/0".parse::<IpNet>().expect("literal"),
            gw: None,
        });
    }
    if v6 {
        r.push(Route {
            dst: "::/0".parse::<IpNet>().expect("literal"),
            gw: None,
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_conflist_plugin_config_parses() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calico","datastore_type":"kubernetes","mtu":1440,"nodename_file_optional":false,"log_level":"Info","log_file_path":"/var/log/calico/cni/cni.log","ipam":{"type":"tortie-ipam","assign_ipv4":"true","assign_ipv6":"false"},"container_settings":{"allow_ip_forwarding":false},"policy":{"type":"k8s"},"kubernetes":{"kubeconfig":"/etc/cni/net.d/calico-kubeconfig"}}"#).unwrap();
        assert_eq!(conf.name, "k8s-pod-network");
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(
            conf.kubeconfig.as_deref(),
            Some("/etc/cni/net.d/calico-kubeconfig")
        );
        assert!(conf.ipam.assign_ipv4);
        assert!(!conf.ipam.assign_ipv6);
        assert_eq!(conf.ipam.gateway, GatewayMode::None);
        assert_eq!(conf.ipam.timeout, DEFAULT_TIMEOUT);
        assert_eq!(conf.crd_mode, None);
        assert_eq!(conf.log_level.as_deref(), Some("Info"));
        assert_eq!(
            conf.ipam.socket.as_deref(),
            Some(super::super::wire::DEFAULT_SOCKET)
        );
    }

    #[test]
    fn agent_socket_can_be_moved_or_disabled() {
        let c = NetConf::parse(br#"{"ipam":{"socket":"/tmp/x.sock"}}"#).unwrap();
        assert_eq!(c.ipam.socket.as_deref(), Some("/tmp/x.sock"));
        for off in ["", "none"] {
            let c = NetConf::parse(format!(r#"{{"ipam":{{"socket":"{off}"}}}}"#).as_bytes()).unwrap();
            assert_eq!(c.ipam.socket, None);
        }
        let e = NetConf::parse(br#"{"ipam":{"socket":5}}"#).unwrap_err();
        assert!(e.to_string().contains("ipam.socket"), "{e}");
        let e = NetConf::parse(br#"{"ipam":{"socket":"run/ipam.sock"}}"#).unwrap_err();
        assert!(
            e.to_string().contains("ipam.socket") && e.to_string().contains("not an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn flags_accept_strings_and_bools() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"assign_ipv4":false,"assign_ipv6":"true","ipv4_pools":["a","10.0.0.0/24"],"ipv6_pools":["fd00::/64"]}}"#).unwrap();
        assert!(!c.ipam.assign_ipv4);
        assert!(c.ipam.assign_ipv6);
        assert_eq!(c.ipam.ipv4_pools, vec!["a", "10.0.0.0/24"]);
        assert_eq!(c.ipam.ipv6_pools, vec!["fd00::/64"]);
        // Defaults: name, v4 on, v6 off.
        let c = NetConf::parse(br#"{"cniVersion":"0.3.1"}"#).unwrap();
        assert_eq!(c.name, DEFAULT_NETWORK_NAME);
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
    }

    #[test]
    fn api_group_override() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","calico_api_group":"projectcalico.org/v3"}"#).unwrap();
        assert_eq!(c.crd_mode, Some(CrdMode::V3));
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","calico_api_group":"crd.projectcalico.org/v1"}"#)
            .unwrap();
        assert_eq!(c.crd_mode, Some(CrdMode::V1));
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","calico_api_group":"x/v9"}"#).unwrap_err();
        assert!(e.to_string().contains("calico_api_group"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = NetConf::parse(br#"{"ipam":{"assign_ipv4":"yes"}}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ipam.assign_ipv4"), "{e}");
        assert!(e.to_string().contains("\"yes\""), "{e}");
        let e = NetConf::parse(br#"{"ipam":{"ipv4_pools":"pool2"}}"#).unwrap_err();
        assert!(e.to_string().contains("ipam.ipv4_pools"), "{e}");
        let e = NetConf::parse(br#"{"ipam":{"ipv4_pools":[1]}}"#).unwrap_err();
        assert!(e.to_string().contains("ipam.ipv4_pools"), "{e}");
        let e = NetConf::parse(br#"{"kubernetes":{"kubeconfig":7}}"#).unwrap_err();
        assert!(e.to_string().contains("kubernetes.kubeconfig"), "{e}");
        let e = NetConf::parse(br#"{"ipam":{"gateway":"router"}}"#).unwrap_err();
        assert!(e.to_string().contains("ipam.gateway"), "{e}");
        let e = NetConf::parse(br#"{"ipam":{"timeout_seconds":-1}}"#).unwrap_err();
        assert!(e.to_string().contains("ipam.timeout_seconds"), "{e}");
        let e = NetConf::parse(br#"{"ipam":{"routes":[{"dst":"nope"}]}}"#).unwrap_err();
        assert!(e.to_string().contains("ipam.routes"), "{e}");
    }

    #[test]
    fn sections_of_the_wrong_type_and_bad_api_roots_are_refused() {
        // Regression (bad-input corpus): `"ipam": "tortie-ipam"` used to read as an empty section.
        for (conf, field) in [
            (r#"{"ipam":"tortie-ipam"}"#, "field ipam:"),
            (r#"{"ipam":[]}"#, "field ipam:"),
            (r#"{"kubernetes":"/etc/kubeconfig"}"#, "field kubernetes:"),
            (
                r#"{"kubernetes":{"k8s_api_root":"10.96.0.1:443"}}"#,
                "kubernetes.k8s_api_root",
            ),
            (
                r#"{"kubernetes":{"k8s_api_root":"not a url"}}"#,
                "kubernetes.k8s_api_root",
            ),
            (
                r#"{"kubernetes":{"k8s_api_root":"https://"}}"#,
                "kubernetes.k8s_api_root",
            ),
        ] {
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code(), 7, "{conf}");
            assert!(e.to_string().contains(field), "{conf}: {e}");
        }
        let c = NetConf::parse(br#"{"ipam":null,"kubernetes":{"k8s_api_root":"https://10.96.0.1:443"}}"#)
            .unwrap();
        assert_eq!(c.k8s_api_root.as_deref(), Some("https://10.96.0.1:443"));
    }

    #[test]
    fn undecodable_stdin_is_code_6() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code(), 6);
    }

    #[test]
    fn routes_and_gateway() {
        let c = NetConf::parse(br#"{"ipam":{"gateway":"node","timeout_seconds":5,"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.96.0.0/12","gw":"10.48.0.1"}]}}"#).unwrap();
        assert_eq!(c.ipam.gateway, GatewayMode::Node);
        assert_eq!(c.ipam.timeout, Duration::from_secs(5));
        let r = c.ipam.routes.unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].gw, Some("10.48.0.1".parse().unwrap()));
        assert_eq!(default_routes(true, true).len(), 2);
    }
}
