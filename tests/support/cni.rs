//! Running `tortie-ipam` (or a plugin chain that ends in it) the way a container runtime does:
//! the `CNI_*` environment, the network config on stdin, the result or error JSON on stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;

/// A plugin run that takes longer fails the test instead of hanging it.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(90);

/// A private copy of `tortie-ipam` (`TORTIE_IPAM_BIN`, else the one cargo built for this test):
/// a target directory shared by several checkouts may get another build of it while a test runs.
pub fn plugin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let src = std::env::var_os("TORTIE_IPAM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tortie-ipam")));
        let dir = std::env::temp_dir().join(format!("tortie-ipam-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dst = dir.join("tortie-ipam");
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        dst
    })
}

/// One plugin run: exit status, stdout as JSON (`Null` when empty) and as text, stderr.
pub struct Out {
    pub ok: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }

    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or("")
    }

    /// The first address of a successful ADD, with its prefix as the plugin returned it.
    pub fn ip(&self) -> IpNet {
        assert!(self.ok, "ADD failed: {} / {}", self.json, self.stderr);
        self.json["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {}", self.json))
            .parse()
            .unwrap()
    }

    /// A CNI error with this code whose `msg` holds every needle, and `details` present.
    pub fn expect_err(&self, code: u64, needles: &[&str]) {
        assert!(!self.ok, "expected error {code}, got success {}", self.json);
        assert_eq!(self.code(), code, "wrong code: {}", self.json);
        for n in needles {
            assert!(self.msg().contains(n), "{:?} not in message {:?}", n, self.msg());
        }
        assert!(self.json["details"].is_string(), "no details: {}", self.json);
    }

    /// Whether the node agent answered (the plugin logs at debug level which path it took).
    pub fn via_agent(&self) -> bool {
        self.stderr.contains("answered by the node agent")
    }

    pub fn in_process(&self) -> bool {
        self.stderr.contains("running in-process")
    }
}

/// Runs `program` (argv) for `command` on `container` with `stdin`, in the environment a runtime
/// gives a CNI plugin (`KUBECONFIG` removed: the network config must say where the apiserver is).
pub async fn exec(
    program: &[&str],
    command: &str,
    container: &str,
    args: &str,
    stdin: &[u8],
    extra_env: &[(&str, &str)],
) -> Out {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(program[0]);
    cmd.args(&program[1..])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{container}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/usr/lib/cni")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    // stdin from a file: the config is small and this needs no async write.
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, stdin).unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    cmd.stdin(Stdio::from(f));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program[0]));
    let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {command} hung for {PLUGIN_TIMEOUT:?}", program[0]))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
    };
    Out {
        ok: out.status.success(),
        json,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        elapsed: started.elapsed(),
    }
}

/// [`exec`] of this test's copy of `tortie-ipam` with a JSON network config.
pub async fn ipam(command: &str, container: &str, args: &str, conf: &Value) -> Out {
    let p = plugin().to_str().unwrap();
    exec(&[p], command, container, args, conf.to_string().as_bytes(), &[]).await
}

/// `CNI_ARGS` as the kubelet's runtime sets them for a pod.
pub fn pod_args(ns: &str, pod: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x")
}

/// The IPAM handle ID Calico's plugin uses for a container of network `k8s-pod-network`.
pub fn handle(cid: &str) -> String {
    format!("k8s-pod-network.{cid}")
}

/// An IPv4 CIDR of `prefix_len` (/22 or narrower) inside `range`, different on every call in
/// this process and spread by process ID. Every call gets a /22 slot of its own and its CIDR is
/// the start of that slot, so CIDRs of different lengths never overlap either (with offsets per
/// length, a /22 and a /24 of two concurrent tests could share addresses).
pub fn unique_cidr_in(range: &str, prefix_len: u8) -> String {
    const SLOT_LEN: u8 = 22;
    static N: AtomicU32 = AtomicU32::new(0);
    let range: Ipv4Net = range.parse().expect("an IPv4 CIDR");
    assert!(
        prefix_len >= SLOT_LEN && range.prefix_len() <= SLOT_LEN,
        "/{prefix_len} in {range}: unique CIDRs are /{SLOT_LEN} or narrower in a range of /{SLOT_LEN} or wider"
    );
    let slots = 1u32 << (SLOT_LEN - range.prefix_len());
    let n = N.fetch_add(1, Ordering::Relaxed);
    assert!(n < slots, "more than {slots} unique CIDRs asked of {range}");
    let slot = std::process::id().wrapping_mul(2654435761).wrapping_add(n) % slots;
    let base = u32::from(range.network()) + (slot << (32 - u32::from(SLOT_LEN)));
    format!("{}/{prefix_len}", std::net::Ipv4Addr::from(base))
}

/// A CIDR of `prefix_len` unique to one pool of one test, in 172.16.0.0/12, which only the CNI
/// tests use (pod routes stay inside the tests' network namespaces).
pub fn unique_cidr(prefix_len: u8) -> String {
    unique_cidr_in("172.16.0.0/12", prefix_len)
}

/// The network config as Calico's main plugin hands it to its IPAM (`k8s-pod-network`, debug
/// logs, the test cluster's kubeconfig, Kubernetes policy); `ipam` (a JSON object) adds to or overrides the IPAM
/// section `{"type": "tortie-ipam", "assign_ipv4": "true", "assign_ipv6": "false"}`.
pub fn conf(node: &str, ipam: &Value) -> Value {
    let mut i = serde_json::json!({"type": "tortie-ipam", "assign_ipv4": "true", "assign_ipv6": "false"});
    for (k, v) in ipam.as_object().into_iter().flatten() {
        i[k] = v.clone();
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "nodename": node,
        "log_level": "debug",
        "kubernetes": {"kubeconfig": super::cluster().kubeconfig},
        "policy": {"type": "k8s"},
        "ipam": i,
    })
}
