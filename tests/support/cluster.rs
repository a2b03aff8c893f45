//! The control plane of a test binary: attached or started once ([`cluster`]), CRDs installed,
//! and the ways to talk to it (kubectl, a kube client).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    /// Started for this binary alone and without CRDs ([`cluster_of_its_own`]).
    pub of_its_own: bool,
}

impl Cluster {
    /// The state directory of a cluster this process started (logs in `logs/`): a place for the
    /// files a test makes beside it. Panics for an attached cluster.
    pub fn state_dir(&self) -> &Path {
        self.dir
            .as_deref()
            .expect("the cluster was not started by this test process: it has no state directory")
    }
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static WANT_NODES: AtomicUsize = AtomicUsize::new(0);
static OWN: AtomicBool = AtomicBool::new(false);

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

/// A cluster of this test binary's own, started without CRDs: never an attached one, for tests
/// of what owns cluster-scoped singletons (the Helm chart owns the CRDs, the Installation
/// `default` and kube-system/kubeadm-config, and refuses to adopt the harness's CRDs). Every test
/// of the binary must ask for it this way (the first call starts it).
pub fn cluster_of_its_own() -> &'static Cluster {
    OWN.store(true, Ordering::SeqCst);
    let c = cluster();
    assert!(
        c.of_its_own,
        "this test binary's cluster was had another way: every test must ask for cluster_of_its_own()"
    );
    c
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
    let own = OWN.load(Ordering::SeqCst);
    let mut cluster = match attach_target().filter(|_| nodes == 0 && !own) {
        Some(kubeconfig) => attach(kubeconfig)?,
        None => start(nodes)?,
    };
    if own {
        cluster.of_its_own = true;
    } else {
        install_default_crds(&mut cluster);
    }
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

/// Where `make deps` (e2e/build.sh) links the tools it builds: kubectl, helm, kube-apiserver...
/// (`$TORTIE_CACHE/bin`, default `$XDG_CACHE_HOME/tortie/bin` or `~/.cache/tortie/bin`).
pub fn tools_bin() -> PathBuf {
    std::env::var_os("TORTIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
                .join("tortie")
        })
        .join("bin")
}

fn default_kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL").filter(|k| !k.is_empty()) {
        return PathBuf::from(k);
    }
    // What e2e/build.sh links (a kubectl within the skew of the pinned apiserver).
    let linked = tools_bin().join("kubectl");
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
        of_its_own: false,
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
        of_its_own: false,
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
    succeeded(args, kubectl(args))
}

/// Runs kubectl with `input` on stdin, panics with its stderr unless it succeeds, returns its stdout.
pub fn kubectl_stdin_ok(args: &[&str], input: &str) -> String {
    succeeded(args, kubectl_stdin(args, input))
}

fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kube client configuration of the test cluster's admin kubeconfig.
async fn config() -> Config {
    let c = cluster();
    let kubeconfig = Kubeconfig::read_from(&c.kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", c.kubeconfig.display()));
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kube config from {}: {e}", c.kubeconfig.display()))
}

/// A new kube client for the test cluster. Make one per test (per tokio runtime): a client
/// must not outlive the runtime it was made in.
pub async fn client() -> Client {
    Client::try_from(config().await).unwrap_or_else(|e| panic!("kube client: {e}"))
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

/// Runs the `tortie` this test binary was built with (`KUBECONFIG` set to the test cluster's,
/// `TORTIE_CRD_MODE` removed so the CLI detects the mode) and returns its output, whatever its
/// exit status.
pub fn tortie(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(args)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env_remove("TORTIE_CRD_MODE")
        .stdin(Stdio::null())
        .output()
        .expect("run tortie")
}

/// A command's stdout followed by its stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The requests a [`counting_client`] sent, as `METHOD path?query`.
#[derive(Clone, Default)]
pub struct RequestLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl RequestLog {
    /// Every request since the last take, watches included.
    pub fn take_all(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// The requests since the last take, less the watch caches' upkeep: watches, and the paged
    /// LIST (`limit=`) a watch makes when it reconnects (on a loaded machine one can land inside
    /// a burst). Reads by name and unpaged LISTs stay counted.
    pub fn take(&self) -> Vec<String> {
        self.take_all()
            .into_iter()
            .filter(|r| {
                let watch = r.contains("watch=");
                let relist = r.starts_with("GET") && r.contains("limit=");
                !watch && !relist
            })
            .collect()
    }
}

/// A kube client for the test cluster that records every request it sends in `log`.
pub async fn counting_client(log: RequestLog) -> Client {
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let q = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        log.0
            .lock()
            .unwrap()
            .push(format!("{} {}{q}", req.method(), req.uri().path()));
        req
    });
    kube::client::ClientBuilder::try_from(config().await)
        .unwrap_or_else(|e| panic!("kube client: {e}"))
        .with_layer(&layer)
        .build()
}

/// Writes (POST, PUT, PATCH, server-side APPLY, DELETE) the apiserver has served on any of
/// `resources` (plural names: `ipamblocks`, `configmaps`, ...) so far, from its own
/// `apiserver_request_total` in `metrics` (the text of its /metrics).
pub fn apiserver_writes(metrics: &str, resources: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| resources.iter().any(|r| l.contains(&format!("resource=\"{r}\""))))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "APPLY", "DELETE"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
