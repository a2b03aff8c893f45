//! The CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_ARGS`, ...), parsed from a map so the
//! rules are testable without touching the process environment.

use std::collections::BTreeMap;

use super::error::CniError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// CNI 1.1: release whatever is not in `cni.dev/valid-attachments`.
    Gc,
    /// CNI 1.1: can the plugin serve ADDs right now?
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// `CNI_ARGS`: `;`-separated `KEY=VALUE` pairs set by the runtime (kubelet/containerd/CRI-O).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// `IP=`: an explicit address, the way Calico's main plugin passes `ipAddrs` to its IPAM.
    pub ip: Option<String>,
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::InvalidEnv {
                    var: "CNI_ARGS",
                    reason: format!("{pair:?} is not KEY=VALUE"),
                });
            };
            let v = (!v.is_empty()).then(|| v.to_string());
            match k {
                "K8S_POD_NAMESPACE" => args.pod_namespace = v,
                "K8S_POD_NAME" => args.pod_name = v,
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = v,
                "K8S_POD_UID" => args.pod_uid = v,
                "IP" => args.ip = v,
                _ => {
                    args.other.insert(k.to_string(), v.unwrap_or_default());
                }
            }
        }
        Ok(args)
    }
}

/// Longest container ID an ADD takes. The ID is stored in every allocation's attributes of an
/// IPAMBlock (objects etcd caps at 1.5 MiB), and no runtime comes near it (64 hex digits).
pub const MAX_CONTAINER_ID: usize = 1024;

/// The CNI specification's container ID (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, as libcni's `skel`
/// checks it for Calico's plugins), at most [`MAX_CONTAINER_ID`] characters. Checked at ADD and
/// CHECK only: DEL releases whatever an ID holds, so a runtime's DEL always succeeds. An ID
/// outside this grammar (`/`, spaces, `\r`, non-ASCII) could never be told apart reliably (Calico
/// compares handle IDs cut at `\r`), so it is refused before anything is allocated.
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    let bad = |reason: String| CniError::InvalidEnv {
        var: "CNI_CONTAINERID",
        reason,
    };
    if id.len() > MAX_CONTAINER_ID {
        return Err(bad(format!(
            "{} characters long, longer than the {MAX_CONTAINER_ID} this plugin stores with each allocation",
            id.len()
        )));
    }
    let offending = match id.chars().next() {
        Some(c) if !c.is_ascii_alphanumeric() => Some(c),
        _ => id
            .chars()
            .skip(1)
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))),
    };
    if let Some(c) = offending {
        return Err(bad(format!(
            "{:?} has the invalid character {c:?}: a container ID starts with a letter or digit, followed by letters, digits, '_', '.' or '-' (CNI specification)",
            truncate(id, 80)
        )));
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
}

impl CniEnv {
    /// Reads and checks the variables the command needs (CNI spec 1.0 §"Parameters").
    pub fn from_vars<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Result<CniEnv, CniError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => {
                return Err(CniError::InvalidEnv {
                    var: "CNI_COMMAND",
                    reason: "not set".into(),
                });
            }
            Some(c) => Command::parse(c).ok_or_else(|| CniError::InvalidEnv {
                var: "CNI_COMMAND",
                reason: format!("unknown command {c:?} (expected ADD, DEL, CHECK, VERSION, GC or STATUS)"),
            })?,
        };
        let needs = |var: &'static str, required: bool| -> Result<String, CniError> {
            match get(var) {
                Some(v) => Ok(v.to_string()),
                None if required => Err(CniError::InvalidEnv {
                    var,
                    reason: format!("required for {command:?} but not set"),
                }),
                None => Ok(String::new()),
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = needs("CNI_CONTAINERID", per_container)?;
        if matches!(command, Command::Add | Command::Check) {
            check_container_id(&container_id)?;
        }
        let netns = needs("CNI_NETNS", matches!(command, Command::Add | Command::Check))?;
        let ifname = needs("CNI_IFNAME", per_container)?;
        let args = CniArgs::parse(lookup("CNI_ARGS").unwrap_or(""))?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// The pod this ADD is for; Kubernetes runtimes always say, and tortie needs it for annotations.
    pub fn pod(&self) -> Result<(&str, &str), CniError> {
        let ns = self
            .args
            .pod_namespace
            .as_deref()
            .ok_or_else(|| CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: "K8S_POD_NAMESPACE is missing".into(),
            })?;
        let name = self
            .args
            .pod_name
            .as_deref()
            .ok_or_else(|| CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: "K8S_POD_NAME is missing".into(),
            })?;
        Ok((ns, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CniEnv::from_vars(|k| m.get(k).map(String::as_str))
    }

    #[test]
    fn add_with_kubernetes_args() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=yaobank;K8S_POD_NAME=db-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
            ),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.pod().unwrap(), ("yaobank", "db-1"));
        assert_eq!(e.args.pod_uid.as_deref(), Some("u"));
        assert_eq!(e.args.other.get("IgnoreUnknown").map(String::as_str), Some("1"));
    }

    #[test]
    fn missing_pieces_name_the_variable() {
        let err = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("CNI_NETNS"), "{err}");
        assert_eq!(err.code(), 4);

        let err = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert!(err.to_string().contains("FROB"), "{err}");

        let err = env(&[]).unwrap_err();
        assert!(err.to_string().contains("CNI_COMMAND"), "{err}");

        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns"),
        ])
        .unwrap();
        assert!(
            e.pod()
                .unwrap_err()
                .to_string()
                .contains("K8S_POD_NAME is missing")
        );
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Del);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
    }

    #[test]
    fn container_ids_follow_the_cni_grammar_at_add_and_check_only() {
        let with = |cmd: &str, id: &str| {
            env(&[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ])
        };
        let long = "a".repeat(MAX_CONTAINER_ID);
        for ok in ["abc", "ABCdef", "a..b", "a_b-c.", long.as_str()] {
            assert!(with("ADD", ok).is_ok(), "{ok}");
        }
        for (bad, want) in [
            ("../x", "invalid character '.'"),
            ("a/../b", "invalid character '/'"),
            ("a b", "invalid character ' '"),
            ("ab\rc", "invalid character '\\r'"),
            ("ünï", "invalid character 'ü'"),
            ("-a", "invalid character '-'"),
            ("_a", "invalid character '_'"),
        ] {
            for cmd in ["ADD", "CHECK"] {
                let e = with(cmd, bad).unwrap_err();
                assert_eq!(e.code(), 4, "{bad}");
                let m = e.to_string();
                assert!(m.contains("CNI_CONTAINERID") && m.contains(want), "{bad}: {m}");
            }
            // DEL never fails on the ID: there is nothing it could not release.
            assert!(with("DEL", bad).is_ok(), "{bad}");
        }
        let e = with("ADD", &"a".repeat(MAX_CONTAINER_ID + 1)).unwrap_err();
        assert!(e.to_string().contains("1025 characters long"), "{e}");
    }

    #[test]
    fn malformed_args_are_rejected() {
        let err = CniArgs::parse("K8S_POD_NAME=a;garbage").unwrap_err();
        assert!(err.to_string().contains("\"garbage\" is not KEY=VALUE"), "{err}");
        let a = CniArgs::parse("IP=10.0.0.5;").unwrap();
        assert_eq!(a.ip.as_deref(), Some("10.0.0.5"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn args_round_trip(ns in "[a-z0-9-]{1,20}", pod in "[a-z0-9.-]{1,30}", extra in "[A-Z_]{1,8}") {
            let raw = format!("IgnoreUnknown=1;{extra}X=v;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}");
            let a = CniArgs::parse(&raw).unwrap();
            prop_assert_eq!(a.pod_namespace.as_deref(), Some(ns.as_str()));
            prop_assert_eq!(a.pod_name.as_deref(), Some(pod.as_str()));
        }
    }
}
