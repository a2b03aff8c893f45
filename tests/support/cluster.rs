//! Shared harness for tortie's end-to-end tests against a real control plane
//! (etcd + kube-apiserver + kube-controller-manager, see `e2e/README.md`).
//!
//! Use it from an integration test with `mod support;`. The first call to [`cluster`] (every
//! helper calls it) does one of two things, once per test binary:
//!
//! * **attach** to a running cluster: the kubeconfig named by `TORTIE_E2E_KUBECONFIG`, or by
//!   `KUBECONFIG` when that is a cluster made by `e2e/cluster.sh` (current context `tortie-e2e`) or
//!   `TORTIE_E2E_ATTACH=1` is set. Any other `KUBECONFIG` is ignored, so tests never create Nodes in a
//!   cluster you did not make for them.
//! * otherwise **start** one with `e2e/cluster.sh up -d e2e/.run/test-<pid> --watch-pid <pid>`: a
//!   detached watchdog takes it down when this test process exits, however it exits.
//!
//! It then installs the CRDs (`crds/v1/*.yaml` when present; `TORTIE_E2E_CRDS` names other
//! directories, `:`-separated, or `none`). Objects made with the helpers get unique names
//! ([`unique_name`]) so that tests can run in parallel in one cluster.
#![allow(dead_code)]

pub mod cni;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The control plane the tests talk to.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Admin kubeconfig (client certificate in group `system:masters`).
    pub kubeconfig: PathBuf,
    /// kubectl within the version skew of the API server.
    pub kubectl: PathBuf,
    /// helm v3 (may not exist when attached to a foreign cluster without `e2e/build.sh`).
    pub helm: PathBuf,
    /// The cluster's state directory when this process started it (its logs are in `logs/`).
    pub dir: Option<PathBuf>,
    /// Why some of the default CRDs (`crds/v1`) could not be installed; empty when all were.
    /// Tests needing other CRDs then fail on their own; the smoke test asserts this is empty.
    pub crd_errors: Vec<String>,
    /// Real nodes (`node-1`..`node-N`: kubelet, containerd, tortie agent, BIRD) this process
    /// started with the cluster ([`cluster_with_nodes`]); 0 otherwise.
    pub nodes: usize,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);
static WANT_NODES: AtomicUsize = AtomicUsize::new(0);

/// The repository root (where `Cargo.toml` is).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cluster for this test binary: attached or started on first use, CRDs installed.
/// Panics (in every test that asks) when it could not be had.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(init_cluster) {
        Ok(c) => c,
        Err(e) => panic!("e2e cluster unavailable: {e}"),
    }
}

/// The cluster for this test binary, started with `n` real nodes (`e2e/cluster.sh up --nodes n`,
/// see e2e/README.md "Real nodes"): never an attached one, whose nodes this process cannot
/// manage. Every test of the binary must ask for the same `n` (the first call starts it).
/// Needs root; check [`host_runs_containers`] first.
pub fn cluster_with_nodes(n: usize) -> &'static Cluster {
    WANT_NODES.fetch_max(n, Ordering::SeqCst);
    let c = cluster();
    assert!(
        c.nodes >= n,
        "this test binary's cluster has {} real nodes, the test wants {n}",
        c.nodes
    );
    c
}

/// Whether this host can run the real nodes' containers: root, network namespaces, cgroups.
/// Err says what is missing (a test then reports itself skipped, loudly).
pub fn host_runs_containers() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id -u: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root (containerd, network namespaces and cgroups need root)".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    let v2 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    let v1_memory = mounts.lines().any(|l| {
        l.contains(" cgroup ")
            && l.split_whitespace()
                .nth(3)
                .is_some_and(|o| o.split(',').any(|o| o == "memory"))
    });
    if !(v2 || v1_memory) {
        return Err("no cgroup hierarchy with the memory controller mounted".into());
    }
    let probe = format!("tortie-probe-{}", std::process::id());
    let add = Command::new("ip").args(["netns", "add", &probe]).output();
    match add {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            Ok(())
        }
        Ok(o) => Err(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run ip (iproute2): {e}")),
    }
}

fn init_cluster() -> Result<Cluster, String> {
    let started = Instant::now();
    let nodes = WANT_NODES.load(Ordering::SeqCst);
    let mut cluster = match attach_target().filter(|_| nodes == 0) {
        Some(kubeconfig) => attach(kubeconfig)?,
        None => start(nodes)?,
    };
    install_default_crds(&mut cluster);
    eprintln!(
        "e2e: cluster ready for tests in {:.1} s (kubeconfig {})",
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig.display()
    );
    Ok(cluster)
}

/// Which existing cluster to attach to, if any.
fn attach_target() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TORTIE_E2E_KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty())?);
    let forced = std::env::var("TORTIE_E2E_ATTACH").is_ok_and(|v| v == "1");
    let ours = Kubeconfig::read_from(&p)
        .ok()
        .and_then(|k| k.current_context)
        .is_some_and(|c| c == "tortie-e2e");
    if !(forced || ours) {
        eprintln!(
            "e2e: ignoring KUBECONFIG={} (not made by e2e/cluster.sh; set TORTIE_E2E_ATTACH=1 to use it)",
            p.display()
        );
        return None;
    }
    if !readyz(&p, &default_kubectl()) {
        eprintln!(
            "e2e: KUBECONFIG={} is not reachable; starting a cluster of our own",
            p.display()
        );
        return None;
    }
    Some(p)
}

fn default_kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL").filter(|k| !k.is_empty()) {
        return PathBuf::from(k);
    }
    // What e2e/build.sh links (a kubectl within the skew of the pinned apiserver).
    let cache = std::env::var_os("TORTIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
                .join("tortie")
        });
    let linked = cache.join("bin/kubectl");
    if linked.exists() {
        linked
    } else {
        PathBuf::from("kubectl")
    }
}

fn readyz(kubeconfig: &Path, kubectl: &Path) -> bool {
    Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout=5s", "get", "--raw", "/readyz"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

fn attach(kubeconfig: PathBuf) -> Result<Cluster, String> {
    let kubectl = default_kubectl();
    if !readyz(&kubeconfig, &kubectl) {
        return Err(format!(
            "TORTIE_E2E_KUBECONFIG={} is not reachable (kubectl {} get --raw /readyz failed)",
            kubeconfig.display(),
            kubectl.display()
        ));
    }
    eprintln!("e2e: attached to the cluster of {}", kubeconfig.display());
    let helm = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| kubectl.with_file_name("helm"));
    Ok(Cluster {
        kubeconfig,
        kubectl,
        helm,
        dir: None,
        crd_errors: vec![],
        nodes: 0,
    })
}

/// Starts a control plane; a failed start-up is tried once more in a fresh directory (the first
/// attempt's FAILED line and log tail stay printed above), because a test binary whose cluster
/// never came up reports nothing about tortie.
fn start(nodes: usize) -> Result<Cluster, String> {
    let first = repo_dir()
        .join("e2e/.run")
        .join(format!("test-{}", std::process::id()));
    match start_in(&first, nodes) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("e2e: control plane start-up failed: {e}\ne2e: trying once more");
            start_in(&first.with_extension("retry"), nodes)
        }
    }
}

fn start_in(dir: &Path, nodes: usize) -> Result<Cluster, String> {
    let dir = dir.to_path_buf();
    let script = repo_dir().join("e2e/cluster.sh");
    eprintln!("e2e: starting a control plane in {} ...", dir.display());
    // stderr (progress, and the one FAILED line) goes straight to the terminal; stdout has the
    // `export NAME=VALUE` lines.
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("up")
        .arg("-d")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .arg("--nodes")
        .arg(nodes.to_string());
    // The nodes run the tortie and tortie-ipam this test binary was built with.
    if let Some(bin) = option_env!("CARGO_BIN_EXE_tortie").and_then(|b| Path::new(b).parent()) {
        cmd.env("TORTIE_BIN_DIR", bin);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} up failed ({}); see its FAILED line above; logs in {}",
            script.display(),
            out.status,
            dir.join("logs").display()
        ));
    }
    let exports: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| {
        exports
            .get(k)
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} up printed no {k}", script.display()))
    };
    Ok(Cluster {
        kubeconfig: get("KUBECONFIG")?,
        kubectl: get("KUBECTL")?,
        helm: get("HELM")?,
        dir: Some(dir),
        crd_errors: vec![],
        nodes,
    })
}

fn install_default_crds(c: &mut Cluster) {
    let dirs: Vec<PathBuf> = match std::env::var("TORTIE_E2E_CRDS") {
        Ok(v) if v == "none" => vec![],
        Ok(v) if !v.is_empty() => v.split(':').map(|d| repo_dir().join(d)).collect(),
        _ => vec![repo_dir().join("crds/v1")],
    };
    for d in dirs {
        if has_yaml(&d) {
            if let Err(e) = install_crds_from(c, &d) {
                eprintln!("e2e: WARNING: {e}");
                c.crd_errors.push(e);
            }
        } else {
            eprintln!("e2e: no CRDs in {} (skipped)", d.display());
        }
    }
}

fn has_yaml(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
    })
}

/// Applies every manifest in `dir` (kubectl goes on past a rejected file) and waits until the
/// CRDs it did apply are Established. Err names the rejected ones and the API server's reasons.
fn install_crds_from(c: &Cluster, dir: &Path) -> Result<(), String> {
    let t = Instant::now();
    let d = dir.to_string_lossy();
    let apply = run_kubectl(
        c,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=tortie-e2e",
            "-o",
            "name",
            "-f",
            &d,
        ],
        None,
    );
    let applied: Vec<String> = String::from_utf8_lossy(&apply.stdout)
        .lines()
        .filter(|l| l.starts_with("customresourcedefinition.apiextensions.k8s.io/"))
        .map(str::to_string)
        .collect();
    if !applied.is_empty() {
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(applied.iter().map(String::as_str));
        let wait = run_kubectl(c, &args, None);
        if !wait.status.success() {
            return Err(format!(
                "CRDs from {d} not Established: {}",
                String::from_utf8_lossy(&wait.stderr).trim()
            ));
        }
    }
    if !apply.status.success() {
        return Err(format!(
            "kubectl apply --server-side -f {d} rejected some CRDs ({} applied): {}",
            applied.len(),
            String::from_utf8_lossy(&apply.stderr).trim()
        ));
    }
    eprintln!(
        "e2e: {} CRDs from {d} installed in {:.1} s",
        applied.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Server-side apply every manifest in `dir` (e.g. `crds/v3`) and wait until its CRDs are Established.
/// Panics on failure.
pub fn install_crds(dir: impl AsRef<Path>) {
    let c = cluster();
    let dir = repo_dir().join(dir);
    if let Err(e) = install_crds_from(c, &dir) {
        panic!("{e}");
    }
}

fn run_kubectl(c: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(&c.kubectl);
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", c.kubectl.display()));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input.as_bytes()).expect("write kubectl stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// Runs kubectl (`--kubeconfig` set) and returns its output, whatever its exit status.
pub fn kubectl(args: &[&str]) -> Output {
    run_kubectl(cluster(), args, None)
}

/// Runs kubectl with `input` on stdin (e.g. `&["apply", "-f", "-"]`).
pub fn kubectl_stdin(args: &[&str], input: &str) -> Output {
    run_kubectl(cluster(), args, Some(input))
}

/// Runs kubectl, panics with its stderr unless it succeeds, returns its stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl with `input` on stdin, panics with its stderr unless it succeeds, returns its stdout.
pub fn kubectl_stdin_ok(args: &[&str], input: &str) -> String {
    let out = kubectl_stdin(args, input);
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new kube client for the test cluster. Make one per test (per tokio runtime): a client
/// must not outlive the runtime it was made in.
pub async fn client() -> Client {
    let c = cluster();
    let kubeconfig = Kubeconfig::read_from(&c.kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", c.kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kube config from {}: {e}", c.kubeconfig.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
}

/// A DNS-1123 label `<prefix>-<unique>` that no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let suffix = format!("{:06x}{n}", h.finish() & 0xff_ffff);
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(62 - suffix.len());
    let p = p.trim_matches('-');
    if p.is_empty() {
        format!("t-{suffix}")
    } else {
        format!("{p}-{suffix}")
    }
}

fn meta(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    ObjectMeta {
        name: Some(name.to_string()),
        labels: map(labels),
        annotations: map(annotations),
        ..Default::default()
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calico's per-node BGP annotations: `projectcalico.org/IPv4Address` (address with prefix
/// length, e.g. `10.0.0.1/24`) and, if given, `projectcalico.org/ASNumber`.
pub fn calico_bgp_annotations(ipv4_cidr: &str, asn: Option<u32>) -> Vec<(String, String)> {
    let mut v = vec![("projectcalico.org/IPv4Address".to_string(), ipv4_cidr.to_string())];
    if let Some(asn) = asn {
        v.push(("projectcalico.org/ASNumber".to_string(), asn.to_string()));
    }
    v
}

/// Creates a Node object (there is no kubelet: nothing else touches it; the controllers that would
/// mark it NotReady or taint it are off). `internal_ip` becomes a `status.addresses` InternalIP,
/// `pod_cidrs` `spec.podCIDRs` (and `spec.podCIDR`). Use [`unique_name`] for `name`.
pub async fn create_node(
    client: &Client,
    name: &str,
    labels: &[(&str, &str)],
    internal_ip: Option<&str>,
    pod_cidrs: &[&str],
    annotations: &[(&str, &str)],
) -> Node {
    let mut labels: Vec<(&str, &str)> = labels.to_vec();
    if !labels.iter().any(|(k, _)| *k == "kubernetes.io/hostname") {
        labels.push(("kubernetes.io/hostname", name));
    }
    let mut addresses = vec![NodeAddress {
        type_: "Hostname".into(),
        address: name.into(),
    }];
    if let Some(ip) = internal_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        });
    }
    let node = Node {
        metadata: meta(name, &labels, annotations),
        spec: Some(NodeSpec {
            pod_cidr: pod_cidrs.first().map(|c| c.to_string()),
            pod_cidrs: (!pod_cidrs.is_empty()).then(|| pod_cidrs.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(addresses.clone()),
            ..Default::default()
        }),
    };
    let api: Api<Node> = Api::all(client.clone());
    let mut created = api
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
    // Status is kept on create today; make sure of it through the status subresource anyway.
    let has_addrs = created
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .is_some_and(|a| a.len() == addresses.len());
    if !has_addrs {
        let patch = serde_json::json!({ "status": { "addresses": addresses } });
        created = api
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap_or_else(|e| panic!("set status of Node {name}: {e}"));
    }
    created
}

/// Deletes a Node (no error if it is gone).
pub async fn delete_node(client: &Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete Node {name}: {e}"),
    }
}

/// Creates a namespace and waits until kube-controller-manager has made its `default`
/// ServiceAccount (Pods cannot be created in it before that).
pub async fn create_namespace(client: &Client, name: &str, annotations: &[(&str, &str)]) -> Namespace {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: meta(name, &[], annotations),
        ..Default::default()
    };
    let created = api
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create Namespace {name}: {e}"));
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    wait_until(
        &format!("ServiceAccount {name}/default"),
        Duration::from_secs(60),
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await;
    created
}

/// Deletes a namespace and waits (up to `timeout`) until it is gone, i.e. until
/// kube-controller-manager's namespace controller has emptied and finalized it.
pub async fn delete_namespace(client: &Client, name: &str, timeout: Duration) {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete Namespace {name}: {e}"),
    }
    wait_until(&format!("Namespace {name} to be gone"), timeout, || async {
        match api.get_opt(name).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Creates a Pod bound to `node` (`spec.nodeName`; `None` leaves it unscheduled). No kubelet runs
/// it: it stays Pending. Its `terminationGracePeriodSeconds` is 0, so deleting it (or its
/// namespace) removes it at once instead of waiting for a kubelet.
pub async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    node: Option<&str>,
    annotations: &[(&str, &str)],
) -> Pod {
    let pod = Pod {
        metadata: meta(
            name,
            &[("app.kubernetes.io/created-by", "tortie-e2e")],
            annotations,
        ),
        spec: Some(PodSpec {
            node_name: node.map(str::to_string),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "main".into(),
                image: Some("tortie.invalid/never-pulled:e2e".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), &pod).await {
            Ok(p) => return p,
            // A namespace made without create_namespace may not have its ServiceAccount yet.
            Err(kube::Error::Api(s)) if s.message.contains("serviceaccount") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create Pod {namespace}/{name}: {e}"),
        }
    }
}

/// Restarts this cluster's kube-apiserver (`e2e/cluster.sh restart-apiserver`): SIGTERM (a
/// graceful restart) or, with `kill`, SIGKILL (a crash); same arguments and port, returns once
/// /readyz is ok, with the time from the stop to ready. Panics for a cluster this process did
/// not start (or one without `TORTIE_E2E_DIR`): restarting someone else's API server is not a test's call.
pub fn restart_apiserver(kill: bool) -> Duration {
    let c = cluster();
    let dir = c
        .dir
        .clone()
        .or_else(|| std::env::var_os("TORTIE_E2E_DIR").map(PathBuf::from))
        .expect("restart_apiserver: the cluster was not started by this process and TORTIE_E2E_DIR is unset");
    let t = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo_dir().join("e2e/cluster.sh"))
        .arg("restart-apiserver")
        .arg("-d")
        .arg(&dir);
    if kill {
        cmd.arg("--kill");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run e2e/cluster.sh restart-apiserver");
    assert!(
        out.status.success(),
        "e2e/cluster.sh restart-apiserver -d {} failed ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    t.elapsed()
}

/// The BIRD files `node`'s agent would install from what the BGP controller published in `ns`
/// (its own ConfigMap or Secret plus the shards, assembled and rendered as the agent does), with
/// their content hash; `None` while something is missing.
#[allow(dead_code)]
pub async fn published_files(
    client: &Client,
    ns: &str,
    node: &str,
) -> Option<(std::collections::BTreeMap<String, String>, String)> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{Api, ListParams};
    use tortie::node::published::{self, Published};
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = published::object_name(node);
    let own = match secrets.get_opt(&name).await.ok()? {
        Some(s) => Published::Secret(s),
        None => Published::ConfigMap(cms.get_opt(&name).await.ok()??),
    };
    let shards = cms
        .list(&ListParams::default().labels(&format!("{}=true", published::LABEL_SHARD)))
        .await
        .ok()?
        .items;
    let r = published::render_published(&own, &shards, &tortie::bgp::CalicoSelectors::default()).ok()??;
    let hash = r.content_hash();
    let files = r
        .files
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    Some((files, hash))
}
