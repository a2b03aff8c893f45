//! Real nodes: kube-scheduler, kubelet, containerd and runc run pods whose addresses come from
//! tortie (the chart's CNI config: ptp + tortie-ipam + portmap, the agent's IPAM socket), and
//! traffic between pods on two nodes follows block routes the nodes learned from each other
//! through BIRD, configured by the operator and installed by `tortie agent`.
//!
//! The cluster is `e2e/cluster.sh up --nodes 2` (see e2e/README.md, "Real nodes"). Needs root,
//! network namespaces and cgroups: on a host without them every test says SKIPPED loudly.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Cluster, kubectl, kubectl_ok, kubectl_stdin_ok, unique_name};

const NODES: usize = 2;
const IMAGE: &str = "localhost/tortie/netcheck:e2e";
const POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv4pools";

/// The cluster with its nodes, or None (after a loud message) on a host that cannot run containers.
fn nodes() -> Option<&'static Cluster> {
    if let Err(why) = support::host_runs_containers() {
        eprintln!(
            "\n!!!!!!!! SKIPPED: real-node e2e test: this host cannot run containers: {why} !!!!!!!!\n"
        );
        return None;
    }
    Some(support::cluster_with_nodes(NODES))
}

fn node_dir(c: &Cluster, n: usize) -> PathBuf {
    c.dir
        .as_ref()
        .expect("a cluster this process started")
        .join(format!("node-{n}"))
}

fn node_netns(c: &Cluster, n: usize) -> String {
    std::fs::read_to_string(node_dir(c, n).join("netns"))
        .expect("node's netns file")
        .trim()
        .to_string()
}

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn get_json(args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = kubectl(&a);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn ipv4(s: &str) -> u32 {
    u32::from(
        s.parse::<std::net::Ipv4Addr>()
            .unwrap_or_else(|e| panic!("{s}: {e}")),
    )
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').expect("CIDR");
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ipv4(ip) & mask == ipv4(net) & mask
}

fn pool(name: &str, cidr: &str) {
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n  cidr: {cidr}\n  blockSize: 26\n  ipipMode: Never\n  vxlanMode: Never\n  natOutgoing: false\n  nodeSelector: all()\n"
        ),
    );
}

/// A netcheck pod on `node` (placed by kube-scheduler through a nodeSelector) whose address
/// comes from `pool` by the seed's pod annotation.
fn pod(ns: &str, name: &str, node: &str, pool: &str, args: &[&str], restart: &str) {
    let args = serde_json::to_string(args).unwrap();
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  annotations:
    {POOLS_ANNOTATION}: '["{pool}"]'
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  restartPolicy: {restart}
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    args: {args}
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
"#
        ),
    );
}

/// Waits until the pod runs and returns its address.
fn running_ip(ns: &str, name: &str) -> String {
    wait(
        &format!("pod {ns}/{name} Running with an address"),
        Duration::from_secs(120),
        || {
            let p = get_json(&["get", "pod", "-n", ns, name])?;
            let status = &p["status"];
            if status["phase"] == "Failed" {
                panic!("pod {ns}/{name} failed: {status}");
            }
            (status["phase"] == "Running").then(|| status["podIP"].as_str().map(str::to_string))?
        },
    )
}

/// Waits for a run-to-completion pod and returns (succeeded, its termination message).
fn finished(ns: &str, name: &str, timeout: Duration) -> (bool, String) {
    wait(&format!("pod {ns}/{name} to finish"), timeout, || {
        let p = get_json(&["get", "pod", "-n", ns, name])?;
        let phase = p["status"]["phase"].as_str()?.to_string();
        if phase != "Succeeded" && phase != "Failed" {
            return None;
        }
        let msg = p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Some((phase == "Succeeded", msg))
    })
}

/// The IPAM block holding `ip`: (its JSON, the address's ordinal in it).
fn block_of(ip: &str) -> Option<(Value, usize)> {
    let blocks = get_json(&["get", "ipamblocks.crd.projectcalico.org"])?;
    blocks["items"].as_array()?.iter().find_map(|b| {
        let cidr = b["spec"]["cidr"].as_str()?;
        in_cidr(ip, cidr).then(|| {
            let base = ipv4(cidr.split('/').next().unwrap());
            (b.clone(), (ipv4(ip) - base) as usize)
        })
    })
}

/// The pod name recorded for `ip` in its block, None when the address is free.
fn holder(ip: &str) -> Option<String> {
    let (b, ord) = block_of(ip)?;
    let idx = b["spec"]["allocations"][ord].as_u64()? as usize;
    b["spec"]["attributes"][idx]["secondary"]["pod"]
        .as_str()
        .map(str::to_string)
}

fn show_pods(ns: &str) {
    eprintln!(
        "$ kubectl get pods -n {ns} -o wide\n{}",
        kubectl_ok(&["get", "pods", "-n", ns, "-o", "wide"])
    );
}

#[test]
fn a_real_node_runs_pods_with_tortie_addresses() {
    let Some(c) = nodes() else { return };
    let ns = unique_name("node-pods");
    kubectl_ok(&["create", "namespace", &ns]);
    // The seed's second pool, asked for by the pods' annotation.
    let pool_name = unique_name("pool2-ipv4-ippool");
    let cidr = "10.48.128.0/24";
    pool(&pool_name, cidr);

    pod(&ns, "web", "node-1", &pool_name, &["serve"], "Always");
    let ip = running_ip(&ns, "web");
    assert!(
        in_cidr(&ip, cidr),
        "web got {ip}, outside the annotated pool {cidr}"
    );
    let (block, _) = block_of(&ip).expect("an IPAM block holds the pod's address");
    assert_eq!(block["spec"]["affinity"], "host:node-1", "block {block}");
    assert_eq!(
        holder(&ip).as_deref(),
        Some("web"),
        "the block records the pod for {ip}"
    );
    // The kubelet's CNI ADD went through tortie-ipam to the node agent's warm IPAM server.
    let cni_log = std::fs::read_to_string(node_dir(c, 1).join("cni.log")).unwrap_or_default();
    assert!(
        cni_log.contains("answered by the node agent"),
        "tortie-ipam did not use the agent's socket; node-1 cni.log:\n{cni_log}"
    );

    // Pod to pod on the node: an HTTP GET from a second pod.
    pod(
        &ns,
        "client",
        "node-1",
        &pool_name,
        &["get", "-tries", "30", &format!("http://{ip}:8080/")],
        "Never",
    );
    let (ok, msg) = finished(&ns, "client", Duration::from_secs(120));
    show_pods(&ns);
    assert!(ok, "client pod could not GET http://{ip}:8080/: {msg}");
    assert!(msg.starts_with("OK netcheck web "), "unexpected answer: {msg}");

    // Deleting the pod releases its address (the kubelet's CNI DEL through tortie-ipam).
    kubectl_ok(&["delete", "pod", "-n", &ns, "web", "--wait=true", "--timeout=60s"]);
    wait(&format!("{ip} released"), Duration::from_secs(60), || {
        holder(&ip).is_none().then_some(())
    });

    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    let _ = kubectl(&[
        "delete",
        "ippool.crd.projectcalico.org",
        &pool_name,
        "--wait=false",
    ]);
}

/// The operator as a process (it publishes the per-node BIRD configs the agents install).
struct Operator(Child);

impl Operator {
    fn start(c: &Cluster) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(c.dir.as_ref().unwrap().join("logs/operator.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tortie"))
            .args(["run", "--crd-mode", "v1", "--bind-address", "127.0.0.1"])
            .args(["--metrics-port", &port.to_string()])
            .env("KUBECONFIG", &c.kubeconfig)
            .env("POD_NAMESPACE", "tortie-system")
            .env("POD_NAME", "e2e-node-operator")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tortie run");
        Operator(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn birdc_routes(c: &Cluster, n: usize) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(node_dir(c, n).join("bird.ctl"))
        .args(["show", "route"])
        .output()
        .expect("birdc");
    squash(&String::from_utf8_lossy(&out.stdout))
}

fn kernel_routes(c: &Cluster, n: usize) -> String {
    let out = Command::new("ip")
        .args(["-n", &node_netns(c, n), "route", "show", "proto", "bird"])
        .output()
        .expect("ip route");
    squash(&String::from_utf8_lossy(&out.stdout))
}

fn squash(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn node_ip(n: usize) -> String {
    format!("10.255.0.{n}")
}

#[test]
fn pods_on_two_nodes_talk_over_routes_learned_through_bird() {
    let Some(c) = nodes() else { return };
    let _operator = Operator::start(c);
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: crd.projectcalico.org/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: 64512\n  nodeToNodeMeshEnabled: true\n  logSeverityScreen: Info\n",
    );
    let ns = unique_name("node-bgp");
    kubectl_ok(&["create", "namespace", &ns]);
    let pool_name = unique_name("bgp-pool");
    let cidr = "10.49.0.0/24";
    pool(&pool_name, cidr);

    pod(&ns, "web", "node-2", &pool_name, &["serve"], "Always");
    let ip = running_ip(&ns, "web");
    let (block, _) = block_of(&ip).expect("block of the server's address");
    assert_eq!(block["spec"]["affinity"], "host:node-2");
    let web_block = block["spec"]["cidr"].as_str().unwrap().to_string();

    // node-1 learns node-2's block from node-2's BIRD and programs it into its routing table.
    let via2 = format!("{web_block} via {}", node_ip(2));
    wait(
        &format!("node-1's BIRD learns {via2}"),
        Duration::from_secs(90),
        || (birdc_routes(c, 1).contains(&via2) && kernel_routes(c, 1).contains(&via2)).then_some(()),
    );

    // A pod on node-1 reaches the pod on node-2 (the answer comes back over node-1's block route).
    let url = format!("http://{ip}:8080/");
    pod(
        &ns,
        "client",
        "node-1",
        &pool_name,
        &["get", "-tries", "90", &url],
        "Never",
    );
    let (ok, msg) = finished(&ns, "client", Duration::from_secs(150));
    show_pods(&ns);
    let client_ip = get_json(&["get", "pod", "-n", &ns, "client"]).unwrap()["status"]["podIP"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        ok,
        "client on node-1 could not GET {url} on node-2: {msg}\nnode-1 BIRD routes:\n{}\nnode-2 BIRD routes:\n{}",
        birdc_routes(c, 1),
        birdc_routes(c, 2)
    );
    assert!(msg.starts_with("OK netcheck web "), "unexpected answer: {msg}");
    assert!(
        msg.contains(&format!("from {client_ip}:")),
        "the server saw the client's pod address: {msg}"
    );
    let (cblock, _) = block_of(&client_ip).expect("block of the client's address");
    assert_eq!(cblock["spec"]["affinity"], "host:node-1");
    let via1 = format!("{} via {}", cblock["spec"]["cidr"].as_str().unwrap(), node_ip(1));
    assert!(
        kernel_routes(c, 2).contains(&via1),
        "node-2 routes node-1's block through BIRD:\n{}",
        kernel_routes(c, 2)
    );

    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    let _ = kubectl(&[
        "delete",
        "ippool.crd.projectcalico.org",
        &pool_name,
        "--wait=false",
    ]);
}

/// `tortie node diags` on a real node: everything the API has about node-1 (its published BGP
/// inputs and their BIRD files, conditions, Events, IPAM, the logs of tortie's pods through
/// pods/log) and, with --local, the agent's files and BIRD's status, in one archive in which
/// the BGP password appears nowhere.
#[test]
fn node_diags_collects_a_real_nodes_state_and_no_password() {
    let Some(c) = nodes() else { return };
    let _operator = Operator::start(c);
    let u = unique_name("diags");
    let password = format!("pa55-{u}");
    let ns = "tortie-system";
    // A peer of node-1 with a password: node-1's published object becomes a Secret holding it.
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {u}\n  namespace: {ns}\nstringData:\n  password: {password}\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata:\n  name: {u}\nspec:\n  node: node-1\n  peerIP: 10.255.0.99\n  asNumber: 64999\n  password:\n    secretKeyRef: {{name: {u}, key: password}}\n"
        ),
    );
    let pool_name = unique_name("diags-pool");
    pool(&pool_name, "10.51.0.0/24");
    // A pod labelled as tortie's operator on node-1 that writes the password into its log.
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {u}
  namespace: {ns}
  labels: {{app.kubernetes.io/component: operator}}
  annotations:
    {POOLS_ANNOTATION}: '["{pool_name}"]'
spec:
  nodeSelector: {{kubernetes.io/hostname: node-1}}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    args: ["get", "-tries", "1", "http://127.0.0.1:9/{password}"]
"#
        ),
    );
    finished(ns, &u, Duration::from_secs(120));
    wait(
        "node-1's published object as a Secret",
        Duration::from_secs(90),
        || {
            kubectl(&["get", "secret", "-n", ns, "tortie-bird-node-1"])
                .status
                .success()
                .then_some(())
        },
    );
    wait(
        "node-1's installed BIRD config with the peer",
        Duration::from_secs(90),
        || {
            std::fs::read_to_string(node_dir(c, 1).join("bird/bird.cfg"))
                .ok()?
                .contains("10.255.0.99")
                .then_some(())
        },
    );

    // A CalicoNodeStatus for node-1, filled by its agent.
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: CalicoNodeStatus\nmetadata:\n  name: {u}\nspec:\n  node: node-1\n  classes: [Agent, BGP]\n  updatePeriodSeconds: 2\n"
        ),
    );
    wait(
        "node-1's CalicoNodeStatus filled by its agent",
        Duration::from_secs(60),
        || {
            get_json(&["get", "caliconodestatuses.crd.projectcalico.org", &u])?["status"]["lastUpdated"]
                .as_str()
                .map(|_| ())
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("node-1.tar.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["node", "diags", "--node", "node-1", "--namespace", ns, "--local"])
        .arg("--bird-dir")
        .arg(node_dir(c, 1).join("bird"))
        .arg("--bird-socket")
        .arg(node_dir(c, 1).join("bird.ctl"))
        .arg("-o")
        .arg(&archive)
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tortie node diags failed:\n{said}");
    assert!(said.contains("- Events about the node"), "progress: {said}");
    assert!(!said.contains(&password), "the password on the terminal:\n{said}");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.path()),
    );
    let root = dir.path().join("node-1");
    let mut files = std::collections::BTreeMap::new();
    fn walk(
        d: &std::path::Path,
        base: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
                );
            }
        }
    }
    walk(&root, &root, &mut files);
    let names: Vec<&String> = files.keys().collect();
    for want in [
        "summary.txt",
        "node/node.yaml",
        "node/conditions.txt",
        "published/tortie-bird-node-1.yaml",
        "published/rendered/bird.cfg",
        "events.txt",
        "ipam/summary.txt",
        "ipam/affinities.yaml",
        "local/bird-dir/bird.cfg",
        "local/bird-status.txt",
        "caliconodestatus/status.txt",
        &format!("caliconodestatus/{u}.yaml"),
    ] {
        assert!(
            files.contains_key(want),
            "{want} not in the archive: {names:?}\n{}",
            files.get("summary.txt").map_or("", |s| s.as_str())
        );
    }
    for (name, text) in &files {
        assert!(!text.contains(&password), "the password is in {name}:\n{text}");
    }
    assert!(
        files["node/conditions.txt"].contains("Ready"),
        "{}",
        files["node/conditions.txt"]
    );
    for f in ["published/rendered/bird.cfg", "local/bird-dir/bird.cfg"] {
        assert!(
            files[f].contains("10.255.0.99") && files[f].contains("password \"<redacted>\";"),
            "{f}:\n{}",
            files[f]
        );
    }
    assert!(
        files["published/tortie-bird-node-1.yaml"].contains("<redacted>"),
        "{}",
        files["published/tortie-bird-node-1.yaml"]
    );
    // The pod's log through pods/log: scrubbed of the password it printed. This e2e control
    // plane's API server cannot reach the kubelets (their names do not resolve and it holds no
    // kubelet client certificate, as `kubectl logs` finds too): then the summary names the log
    // and the API's answer, and the collection goes on.
    match files.get(&format!("logs/{u}/main.log")) {
        Some(log) => assert!(
            log.contains("http://127.0.0.1:9/<redacted>"),
            "the log, scrubbed: {log}"
        ),
        None => assert!(
            files["summary.txt"].contains(&format!(
                "log of {ns}/{u} container main: ApiError: Get \"https://node-1:"
            )) && files["summary.txt"].contains("/containerLogs/tortie-system/"),
            "neither the log nor why it is missing:\n{}",
            files["summary.txt"]
        ),
    }
    assert!(
        files["summary.txt"].contains("agent pods in tortie-system: none on node node-1"),
        "{}",
        files["summary.txt"]
    );
    assert!(
        files["ipam/summary.txt"].contains("host:node-1"),
        "{}",
        files["ipam/summary.txt"]
    );
    assert!(
        files["local/bird-status.txt"].contains("BIRDv4"),
        "{}",
        files["local/bird-status.txt"]
    );

    // An account that may read nothing (as the agent's may not read Nodes or Events): the
    // archive is still written, and its summary says what could not be read.
    let sa = format!("{u}-none");
    kubectl_ok(&["create", "serviceaccount", "-n", ns, &sa]);
    let sa_kc = dir.path().join("none.kubeconfig");
    run_ok(
        Command::new("bash")
            .arg(support::repo_dir().join("demo/sa-kubeconfig.sh"))
            .args([ns, &sa])
            .arg(&sa_kc)
            .env("KUBECONFIG", &c.kubeconfig)
            .env("KUBECTL", &c.kubectl),
    );
    let denied = dir.path().join("denied");
    let out = Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["node", "diags", "--node", "node-1", "--crd-mode", "v1", "-o"])
        .arg(&denied)
        .env("KUBECONFIG", &sa_kc)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diags with a powerless account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(denied.join("summary.txt")).unwrap();
    for what in ["Node node-1: not allowed", "Events: not allowed", "IPAM blocks"] {
        assert!(summary.contains(what), "{what:?} not in:\n{summary}");
    }
    let _ = kubectl(&["delete", "serviceaccount", "-n", ns, &sa]);

    // A node that does not exist: a clear error, nothing written.
    let out = Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["node", "diags", "--node", "no-such-node", "-o"])
        .arg(dir.path().join("none.tar.gz"))
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node \"no-such-node\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("none.tar.gz").exists());

    let _ = kubectl(&["delete", "pod", "-n", ns, &u, "--wait=false"]);
    assert!(
        files["caliconodestatus/status.txt"].contains("Node node-1"),
        "{}",
        files["caliconodestatus/status.txt"]
    );
    let _ = kubectl(&["delete", "caliconodestatuses.crd.projectcalico.org", &u]);
    let _ = kubectl(&["delete", "bgppeer.crd.projectcalico.org", &u]);
    let _ = kubectl(&["delete", "secret", "-n", ns, &u]);
    let _ = kubectl(&[
        "delete",
        "ippool.crd.projectcalico.org",
        &pool_name,
        "--wait=false",
    ]);
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a node cluster in `dir` has on the host: its network namespaces, mounts, cgroups and
/// processes (by command line naming the directory).
fn host_traces(dir: &std::path::Path, netns: &str) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    let list = run_ok(Command::new("ip").args(["netns", "list"]));
    let tag = netns.trim_end_matches("-n1");
    found.extend(
        list.lines()
            .filter(|l| l.starts_with(tag))
            .map(|l| format!("netns {l}")),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(
        mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&d))
            .map(|m| format!("mount {m}")),
    );
    for m in std::fs::read_to_string("/proc/mounts").unwrap().lines() {
        let f: Vec<&str> = m.split_whitespace().collect();
        if f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
            let cg = std::path::Path::new(f[1]).join(netns);
            if cg.exists() {
                found.push(format!("cgroup {}", cg.display()));
            }
        }
    }
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&d) && !cmd.contains("tortie-e2e-watchdog") {
                found.push(format!("process {}: {cmd}", p.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// A node whose agent is gone still runs pods (tortie-ipam works in-process), and `down` after a
/// crash: every process `up` started is killed at once (the pod's shim and container keep
/// running), then `down` alone must leave nothing of the node on the host.
#[test]
fn down_after_a_crash_leaves_nothing_on_the_host() {
    let Some(c) = nodes() else { return };
    let dir = support::repo_dir().join(format!("e2e/.run/crash-{}", std::process::id()));
    let script = support::repo_dir().join("e2e/cluster.sh");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tortie"));
    let env = run_ok(
        Command::new("bash")
            .arg(&script)
            .args([
                "up",
                "--nodes",
                "1",
                "--watch-pid",
                &std::process::id().to_string(),
                "-d",
            ])
            .arg(&dir)
            .env("TORTIE_BIN_DIR", bin.parent().unwrap()),
    );
    let kubeconfig = env
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .expect("KUBECONFIG from cluster.sh up")
        .to_string();
    let k = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut cmd = Command::new(&c.kubectl);
        cmd.arg("--kubeconfig").arg(&kubeconfig).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    // Without the agent, tortie-ipam (run by containerd in the node's namespace) does the work
    // itself and must reach the API server from there.
    let agent = std::fs::read_to_string(dir.join("pids/agent-1.pid")).unwrap();
    run_ok(Command::new("kill").arg(agent.trim()));
    let applied = k(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: crash\nspec:\n  cidr: 10.50.0.0/24\n  blockSize: 26\n  nodeSelector: all()\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    args: [serve]\n"
        ),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    wait(
        "the crash cluster's pod Running",
        Duration::from_secs(120),
        || {
            let o = k(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"], "");
            (String::from_utf8_lossy(&o.stdout) == "Running").then_some(())
        },
    );
    let cni_log = std::fs::read_to_string(dir.join("node-1/cni.log")).unwrap_or_default();
    assert!(
        cni_log.contains("running in-process"),
        "tortie-ipam should have run in-process without the agent; cni.log:\n{cni_log}"
    );
    let netns = std::fs::read_to_string(dir.join("node-1/netns"))
        .unwrap()
        .trim()
        .to_string();
    let before = host_traces(&dir, &netns);
    for want in ["netns", "mount", "cgroup", "process"] {
        assert!(
            before.iter().any(|t| t.starts_with(want)),
            "no {want} before the crash: {before:#?}"
        );
    }
    // The crash: everything cluster.sh started dies at once; shims and the container stay.
    for entry in std::fs::read_dir(dir.join("pids")).unwrap().flatten() {
        if entry.file_name() == "watchdog.pid" {
            continue;
        }
        let pid = std::fs::read_to_string(entry.path()).unwrap();
        // (agent-1 is already gone)
        let _ = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .stderr(Stdio::null())
            .status();
    }
    std::thread::sleep(Duration::from_secs(1));
    let crashed = host_traces(&dir, &netns);
    assert!(
        crashed.iter().any(|t| t.contains("containerd-shim")),
        "the pod's shim should outlive the crash: {crashed:#?}"
    );
    run_ok(Command::new("bash").arg(&script).args(["down", "-d"]).arg(&dir));
    let after = host_traces(&dir, &netns);
    assert!(after.is_empty(), "left on the host after down: {after:#?}");
    assert!(!dir.exists(), "{} still exists", dir.display());
}
