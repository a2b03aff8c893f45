//! End-to-end tests of the node agent's warm IPAM server (`tortie agent --no-bgp --ipam-socket`)
//! against the real control plane: `tortie-ipam` is executed as a container runtime executes it
//! (CNI environment + network config on stdin) and hands its request to the agent over the
//! socket; with the agent gone it runs the request itself.
//!
//! Pools are `assignmentMode: Manual` with CIDRs unique to the test (in 100.64.0.0/10, which no
//! other test uses) and are selected by annotations only, so parallel tests never share them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use kube::Api;
use serde_json::{Value, json};
use support::cni::{self, Out, handle, pod_args};
use support::*;
use tortie::api::{CalicoKind, CrdMode, Pool};

const ANN_V4: &str = "cni.projectcalico.org/ipv4pools";
const ANN_ADDRS: &str = "cni.projectcalico.org/ipAddrs";

/// A CNI error result with the "(IPPools: ...)" list cut from its message.
fn without_pool_list(result: &Value) -> Value {
    let mut result = result.clone();
    let msg = result["msg"].as_str().unwrap_or_default();
    if let Some(at) = msg.find(" (IPPools: ") {
        result["msg"] = Value::String(msg[..at].to_string());
    }
    result
}

/// A CIDR of `prefix_len` unique to one pool of one test, in 100.64.0.0/10.
fn unique_cidr(prefix_len: u8) -> String {
    cni::unique_cidr_in("100.64.0.0/10", prefix_len)
}

struct Lab {
    client: kube::Client,
    mode: CrdMode,
    pools: Vec<String>,
    node: String,
    ns: String,
    dir: tempfile::TempDir,
}

impl Lab {
    async fn new(prefix: &str) -> Lab {
        let client = client().await;
        let mode = CrdMode::detect(&client).await.unwrap();
        let node = unique_name(&format!("{prefix}-node"));
        create_node(&client, &node, &[], Some("10.240.1.10"), &[], &[]).await;
        Lab {
            client,
            mode,
            pools: vec![],
            node,
            ns: unique_name(prefix),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ipam.sock")
    }

    fn pool_api(&self) -> Api<Pool> {
        Api::all_with(self.client.clone(), &self.mode.resource(CalicoKind::IPPool))
    }

    async fn pool(&mut self, prefix: &str, block_size: i32) -> (String, IpNet) {
        let cidr = unique_cidr(24);
        let name = manual_pool(&self.client, self.mode, prefix, &cidr, block_size, &json!({})).await;
        self.pools.push(name.clone());
        (name, cidr.parse().unwrap())
    }

    /// Every allocation in the cluster: ip → handle.
    async fn allocations(&self) -> BTreeMap<IpAddr, Option<String>> {
        allocations(&self.client, self.mode)
            .await
            .into_iter()
            .map(|a| (a.ip, a.handle))
            .collect()
    }

    async fn handle_exists(&self, cid: &str) -> bool {
        live_handle(&self.client, self.mode, &handle(cid)).await.is_some()
    }

    async fn held(&self, cid: &str) -> Vec<IpAddr> {
        let h = handle(cid);
        self.allocations()
            .await
            .into_iter()
            .filter(|(_, x)| x.as_deref() == Some(h.as_str()))
            .map(|(ip, _)| ip)
            .collect()
    }

    async fn cleanup(self) {
        for p in &self.pools {
            let _ = self.pool_api().delete(p, &Default::default()).await;
        }
        delete_namespace(&self.client, &self.ns, Duration::from_secs(60)).await;
        delete_node(&self.client, &self.node).await;
    }

    async fn add(&self, pod: &str, cid: &str, socket: &str) -> Out {
        exec("ADD", cid, &self.ns, pod, &conf(&self.node, socket)).await
    }

    async fn del(&self, pod: &str, cid: &str, socket: &str) -> Out {
        exec("DEL", cid, &self.ns, pod, &conf(&self.node, socket)).await
    }
}

fn cid(tag: &str) -> String {
    format!("{:0>64}", format!("{tag}{:x}", std::process::id()))
}

/// The network config a runtime hands the plugin; `socket` is `ipam.socket`.
fn conf(node: &str, socket: &str) -> Value {
    cni::conf(node, &json!({"socket": socket, "timeout_seconds": 30}))
}

async fn exec(command: &str, cid: &str, ns: &str, pod: &str, conf: &Value) -> Out {
    cni::ipam(command, cid, &pod_args(ns, pod), conf).await
}

/// `tortie agent --no-bgp` for one node, killed on drop.
struct Agent(tokio::process::Child);

impl Agent {
    async fn start(node: &str, socket: &Path) -> Agent {
        Agent::start_with(node, socket, &[]).await
    }

    async fn start_with(node: &str, socket: &Path, extra: &[&str]) -> Agent {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
            .args(["agent", "--no-bgp", "--node", node, "--ipam-socket"])
            .arg(socket)
            .args(extra)
            .env("KUBECONFIG", &cluster().kubeconfig)
            .env("TORTIE_LOG", "info,tortie=debug,kube=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The socket answers once the engine and the watches have listed (a killed agent's
        // socket file may still be there: the new one replaces it).
        wait_until("the agent's IPAM socket", Duration::from_secs(60), || async {
            std::os::unix::net::UnixStream::connect(socket).ok().map(|_| ())
        })
        .await;
        Agent(child)
    }

    async fn kill(mut self) {
        self.0.kill().await.unwrap();
    }
}

#[tokio::test]
async fn agent_serves_adds_and_dels_and_the_plugin_falls_back_when_it_is_down() {
    let mut lab = Lab::new("agent-ipam").await;
    let (pool_a, net_a) = lab.pool("agent-a", 28).await;
    let (pool_b, net_b) = lab.pool("agent-b", 28).await;
    create_namespace(&lab.client, &lab.ns, &[(ANN_V4, &format!("[\"{pool_a}\"]"))]).await;
    let explicit = net_b.hosts().nth(20).unwrap();
    let pods: Vec<(String, Vec<(&str, String)>)> = vec![
        ("ns-0".into(), vec![]),
        ("ns-1".into(), vec![]),
        ("ns-2".into(), vec![]),
        ("pod-b".into(), vec![(ANN_V4, format!("[\"{pool_b}\"]"))]),
        ("explicit".into(), vec![(ANN_ADDRS, format!("[\"{explicit}\"]"))]),
        ("bad".into(), vec![(ANN_V4, "[\"no-such-pool\"]".into())]),
        ("fallback".into(), vec![]),
    ];
    for (name, ann) in &pods {
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
        create_pod(&lab.client, &lab.ns, name, Some(&lab.node), &ann).await;
    }
    let socket = lab.socket();
    let sock = socket.to_str().unwrap().to_string();
    let agent = Agent::start(&lab.node, &socket).await;

    // Namespace annotation, pod annotation, explicit address: all through the agent.
    let mut got = BTreeMap::new();
    for (pod, want) in [
        ("ns-0", net_a),
        ("ns-1", net_a),
        ("ns-2", net_a),
        ("pod-b", net_b),
        ("explicit", net_b),
    ] {
        let out = lab.add(pod, &cid(pod), &sock).await;
        assert!(
            out.via_agent(),
            "{pod}: not answered by the agent: {}",
            out.stderr
        );
        let ip = out.ip().addr();
        assert!(want.contains(&ip), "{pod}: {ip} not in {want}");
        got.insert(pod, ip);
    }
    assert_eq!(got["explicit"], explicit);
    let distinct: BTreeSet<IpAddr> = got.values().copied().collect();
    assert_eq!(distinct.len(), got.len(), "an address handed out twice: {got:?}");

    // A repeated ADD (runtime retry) gets the same address, not a second one.
    let again = lab.add("ns-1", &cid("ns-1"), &sock).await;
    assert!(again.via_agent());
    assert_eq!(again.ip().addr(), got["ns-1"]);
    assert_eq!(lab.held(&cid("ns-1")).await, vec![got["ns-1"]]);

    // Errors are the ones the in-process path gives, byte for byte.
    let remote = lab.add("bad", &cid("bad"), &sock).await;
    let local = lab.add("bad", &cid("bad"), "none").await;
    assert!(
        !remote.ok && remote.via_agent(),
        "{} / {}",
        remote.json,
        remote.stderr
    );
    assert_eq!(remote.json["code"], 101, "{}", remote.json);
    assert!(remote.json["msg"].as_str().unwrap().contains("no-such-pool"));
    // The message lists the IPPools that exist at the moment of the call; tests running beside
    // this one create and delete theirs between the two calls, so the lists are compared only
    // for this test's pools.
    for out in [&remote, &local] {
        let msg = out.json["msg"].as_str().unwrap();
        for pool in [&pool_a, &pool_b] {
            assert!(msg.contains(pool.as_str()), "{pool} not listed: {msg}");
        }
    }
    assert_eq!(without_pool_list(&remote.json), without_pool_list(&local.json));
    assert!(
        !lab.handle_exists(&cid("bad")).await,
        "a failed ADD left its handle"
    );

    // A pod made after the agent started (as the runtime's ADD follows the pod's binding) is found.
    create_pod(&lab.client, &lab.ns, "late", Some(&lab.node), &[]).await;
    let p = lab.add("late", &cid("late"), &sock).await;
    assert!(p.via_agent(), "{}", p.stderr);
    assert!(net_a.contains(&p.ip().addr()));
    got.insert("late", p.ip().addr());

    // DEL through the agent releases the address and the handle.
    let d = lab.del("ns-0", &cid("ns-0"), &sock).await;
    assert!(d.ok && d.via_agent(), "{} / {}", d.json, d.stderr);
    assert!(lab.held(&cid("ns-0")).await.is_empty());
    assert!(!lab.handle_exists(&cid("ns-0")).await);
    // A second DEL is a no-op success.
    assert!(lab.del("ns-0", &cid("ns-0"), &sock).await.ok);

    // Agent gone (socket file left behind): the plugin runs the request itself.
    agent.kill().await;
    assert!(
        socket.exists(),
        "the killed agent's socket file should remain for this test"
    );
    let fb = lab.add("fallback", &cid("fallback"), &sock).await;
    assert!(fb.in_process(), "{}", fb.stderr);
    let ip = fb.ip().addr();
    assert!(net_a.contains(&ip));
    assert!(!got.values().any(|x| *x == ip), "{ip} handed out twice");
    // What the agent allocated is released in-process just the same, and vice versa later.
    let d = lab.del("ns-1", &cid("ns-1"), &sock).await;
    assert!(d.ok && d.in_process(), "{} / {}", d.json, d.stderr);
    assert!(lab.held(&cid("ns-1")).await.is_empty());
    // No socket at all: in-process too.
    let none = lab.add("ns-2", &cid("ns-2"), "/nonexistent/ipam.sock").await;
    assert_eq!(none.ip().addr(), got["ns-2"]);

    // A new agent (cold caches) serves DELs of what the old one and the plugin allocated.
    let agent = Agent::start(&lab.node, &socket).await;
    for pod in ["ns-2", "pod-b", "explicit", "late", "fallback"] {
        let d = lab.del(pod, &cid(pod), &sock).await;
        assert!(d.ok && d.via_agent(), "{pod}: {} / {}", d.json, d.stderr);
        assert!(
            lab.held(&cid(pod)).await.is_empty(),
            "{pod} still holds addresses"
        );
        assert!(!lab.handle_exists(&cid(pod)).await, "{pod}'s handle remains");
    }
    let left: Vec<IpAddr> = lab
        .allocations()
        .await
        .into_keys()
        .filter(|ip| net_a.contains(ip) || net_b.contains(ip))
        .collect();
    assert!(left.is_empty(), "left allocated: {left:?}");
    agent.kill().await;
    lab.cleanup().await;
}

/// The agent's server code, in this process with a client that records every request: a
/// steady-state ADD (block already claimed, pod already watched) costs the handle create and the
/// block update and no read; a DEL costs the block update and the handle's two-step delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_add_through_the_agent_is_two_writes_and_no_reads() {
    let mut lab = Lab::new("agent-count").await;
    let (pool, net) = lab.pool("agent-count", 26).await;
    create_namespace(&lab.client, &lab.ns, &[(ANN_V4, &format!("[\"{pool}\"]"))]).await;
    const N: usize = 12;
    for i in 0..=N {
        create_pod(&lab.client, &lab.ns, &format!("p-{i}"), Some(&lab.node), &[]).await;
    }
    let log = RequestLog::default();
    let shared = tortie::cni::server::warm(counting_client(log.clone()).await, &lab.node)
        .await
        .unwrap();
    let socket = lab.socket();
    let listener = tortie::cni::server::bind(&socket).unwrap();
    let server = tokio::spawn(tortie::cni::server::serve(listener, shared));
    let sock = socket.to_str().unwrap().to_string();

    // The first ADD claims the node's block.
    let first = lab.add("p-0", &cid("p-0"), &sock).await;
    assert!(net.contains(&first.ip().addr()) && first.via_agent());
    let claim = log.take();
    eprintln!("first ADD (block claim): {} requests: {claim:#?}", claim.len());

    let mut ips = BTreeSet::from([first.ip().addr()]);
    for i in 1..=N {
        let out = lab.add(&format!("p-{i}"), &cid(&format!("p-{i}")), &sock).await;
        assert!(out.via_agent(), "{}", out.stderr);
        assert!(
            ips.insert(out.ip().addr()),
            "{} handed out twice",
            out.ip().addr()
        );
    }
    let reqs = log.take();
    let writes = reqs
        .iter()
        .filter(|r| r.starts_with("POST") || r.starts_with("PUT"))
        .count();
    let reads = reqs.iter().filter(|r| r.starts_with("GET")).count();
    eprintln!(
        "{N} steady-state ADDs: {} requests ({writes} writes, {reads} reads)",
        reqs.len()
    );
    assert_eq!(reads, 0, "no reads per steady-state ADD: {reqs:#?}");
    assert_eq!(writes, 2 * N, "handle create + block update per ADD: {reqs:#?}");
    assert_eq!(reqs.len(), 2 * N, "{reqs:#?}");

    // A repeated ADD is caught by the handle create (409) and answered with the held address.
    let again = lab.add("p-3", &cid("p-3"), &sock).await;
    let p3 = lab.held(&cid("p-3")).await;
    assert_eq!(vec![again.ip().addr()], p3);
    log.take();

    for i in 1..=N {
        let d = lab.del(&format!("p-{i}"), &cid(&format!("p-{i}")), &sock).await;
        assert!(d.ok && d.via_agent(), "{} / {}", d.json, d.stderr);
    }
    let reqs = log.take();
    let reads = reqs.iter().filter(|r| r.starts_with("GET")).count();
    let writes = reqs.len() - reads;
    eprintln!(
        "{N} DELs: {} requests ({writes} writes, {reads} reads): {reqs:#?}",
        reqs.len()
    );
    assert_eq!(
        reads, 0,
        "no reads per DEL of a handle the agent wrote: {reqs:#?}"
    );
    // Block update, then the handle's one DELETE (preconditioned on its uid and resourceVersion,
    // so no soft-delete update is needed first).
    assert_eq!(writes, 2 * N, "{reqs:#?}");
    assert_eq!(
        reqs.iter().filter(|r| r.starts_with("DELETE")).count(),
        N,
        "{reqs:#?}"
    );
    for i in 1..=N {
        assert!(lab.held(&cid(&format!("p-{i}"))).await.is_empty());
    }
    assert!(lab.del("p-0", &cid("p-0"), &sock).await.ok);
    server.abort();
    lab.cleanup().await;
}

/// Concurrent requests on the socket are answered concurrently and never share an address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_through_the_agent_get_distinct_addresses() {
    let mut lab = Lab::new("agent-conc").await;
    let (pool, net) = lab.pool("agent-conc", 27).await;
    create_namespace(&lab.client, &lab.ns, &[(ANN_V4, &format!("[\"{pool}\"]"))]).await;
    const N: usize = 40;
    for i in 0..N {
        create_pod(&lab.client, &lab.ns, &format!("c-{i}"), Some(&lab.node), &[]).await;
    }
    let socket = lab.socket();
    let agent = Agent::start(&lab.node, &socket).await;
    let sock = socket.to_str().unwrap().to_string();
    let lab = Arc::new(lab);
    let mut tasks = vec![];
    for i in 0..N {
        let (lab, sock) = (lab.clone(), sock.clone());
        tasks.push(tokio::spawn(async move {
            let pod = format!("c-{i}");
            lab.add(&pod, &cid(&pod), &sock).await
        }));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.via_agent(), "{}", out.stderr);
        assert!(net.contains(&out.ip().addr()));
        assert!(
            ips.insert(out.ip().addr()),
            "{} handed out twice",
            out.ip().addr()
        );
    }
    // 40 addresses from /27 blocks: the node claimed a second block on the way.
    let mut tasks = vec![];
    for i in 0..N {
        let (lab, sock) = (lab.clone(), sock.clone());
        tasks.push(tokio::spawn(async move {
            let pod = format!("c-{i}");
            lab.del(&pod, &cid(&pod), &sock).await
        }));
    }
    for t in tasks {
        let d = t.await.unwrap();
        assert!(d.ok, "{} / {}", d.json, d.stderr);
    }
    let left: Vec<IpAddr> = lab
        .allocations()
        .await
        .into_keys()
        .filter(|ip| net.contains(ip))
        .collect();
    assert!(left.is_empty(), "left allocated: {left:?}");
    agent.kill().await;
    Arc::try_unwrap(lab).ok().unwrap().cleanup().await;
}

/// The node's blocks in `net`, after waiting up to `wait` for there to be `want` of them.
async fn node_blocks(lab: &Lab, net: &IpNet, want: usize, wait: Duration) -> Vec<tortie::api::Block> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mine: Vec<tortie::api::Block> =
            list_calico::<tortie::api::Block>(&lab.client, lab.mode, CalicoKind::IPAMBlock)
                .await
                .into_iter()
                .filter(|b| b.spec.host() == Some(lab.node.as_str()))
                .filter(|b| b.spec.cidr.parse::<IpNet>().is_ok_and(|c| net.contains(&c)))
                .collect();
        if mine.len() >= want || std::time::Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent claims its node's first block in the pools that select the node as soon as it
/// serves, before any pod asks; the first ADD gets an address there; an agent restarting on a
/// node with free addresses claims nothing; with `--claim-blocks-ahead false` nothing is claimed
/// before an ADD.
#[tokio::test]
async fn the_agent_claims_its_nodes_first_block_when_it_starts() {
    let mut lab = Lab::new("agent-first").await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(lab.client.clone());
    let label = json!({"metadata": {"labels": {"tortie-e2e-first-block": "yes"}}});
    nodes
        .patch(
            &lab.node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&label),
        )
        .await
        .unwrap();
    let cidr = unique_cidr(24);
    let pool = manual_pool(
        &lab.client,
        lab.mode,
        "agent-first",
        &cidr,
        28,
        &json!({"assignmentMode": "Automatic", "nodeSelector": "tortie-e2e-first-block == 'yes'"}),
    )
    .await;
    lab.pools.push(pool.clone());
    let net: IpNet = cidr.parse().unwrap();
    create_namespace(&lab.client, &lab.ns, &[]).await;
    create_pod(&lab.client, &lab.ns, "p-0", Some(&lab.node), &[]).await;
    let socket = lab.socket();
    let sock = socket.to_str().unwrap().to_string();

    // Off: the agent serves, and claims nothing until an ADD needs a block.
    let agent = Agent::start_with(&lab.node, &socket, &["--claim-blocks-ahead", "false"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        node_blocks(&lab, &net, 1, Duration::ZERO).await.is_empty(),
        "claimed with --claim-blocks-ahead false"
    );
    agent.kill().await;

    // On (the default): the first block is claimed without any ADD.
    let agent = Agent::start(&lab.node, &socket).await;
    let blocks = node_blocks(&lab, &net, 1, Duration::from_secs(10)).await;
    assert_eq!(blocks.len(), 1, "the node's first block, claimed at start");
    let block: IpNet = blocks[0].spec.cidr.parse().unwrap();
    assert_eq!(block.prefix_len(), 28);
    let out = lab.add("p-0", &cid("p-0"), &sock).await;
    assert!(out.via_agent(), "{}", out.stderr);
    assert!(block.contains(&out.ip().addr()), "{} not in {block}", out.ip());

    // Restarted: the node has free addresses, nothing more is claimed.
    agent.kill().await;
    let agent = Agent::start(&lab.node, &socket).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        node_blocks(&lab, &net, 2, Duration::ZERO).await.len(),
        1,
        "claimed again on restart"
    );

    let d = lab.del("p-0", &cid("p-0"), &sock).await;
    assert!(d.ok && d.via_agent(), "{} / {}", d.json, d.stderr);
    agent.kill().await;
    let blocks = node_blocks(&lab, &net, 1, Duration::ZERO).await;
    let affinities: Vec<tortie::api::Affinity> =
        list_calico(&lab.client, lab.mode, CalicoKind::BlockAffinity)
            .await
            .into_iter()
            .filter(|a: &tortie::api::Affinity| a.spec.cidr.parse::<IpNet>().is_ok_and(|c| net.contains(&c)))
            .collect();
    delete_ipam_objects(&lab.client, lab.mode, &blocks, &affinities, &[]).await;
    lab.cleanup().await;
}
