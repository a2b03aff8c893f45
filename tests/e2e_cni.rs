//! End-to-end tests of `tortie-ipam` against the real control plane, executing the plugin binary
//! exactly as a container runtime does (CNI environment + network config on stdin), directly and
//! through Debian's reference `ptp` and `bridge` plugins in network namespaces.
//!
//! Pools made here are `assignmentMode: Manual` with CIDRs unique to the test (in 172.16.0.0/12),
//! so that parallel tests in the same apiserver never allocate from them by accident, and are
//! deleted when the test passes. The yaobank test makes seed 001's lab pools under their real
//! names when absent and deletes the ones it made.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kube::Api;
use kube::api::PostParams;
use kube::core::Object;
use serde_json::{Value, json};
use support::cni::{self, Out, handle, plugin, pod_args, unique_cidr};
use support::*;
use tortie::api::{CalicoKind, CrdMode, Handle, IPPoolSpec, Pool};

// ------------------------------------------------------------------------------------------------
// harness

struct Ctx {
    client: kube::Client,
    mode: CrdMode,
    /// Pools this test made, deleted by [`Ctx::done`].
    made: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    async fn new() -> Ctx {
        let client = client().await;
        let mode = CrdMode::detect(&client).await.unwrap();
        Ctx {
            client,
            mode,
            made: Default::default(),
        }
    }

    /// Deletes the pools this test made (other tests share the apiserver).
    async fn done(&self) {
        let names = std::mem::take(&mut *self.made.lock().unwrap());
        for name in names {
            match self.pools().delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => panic!("delete IPPool {name}: {e}"),
            }
        }
    }

    fn pools(&self) -> Api<Pool> {
        Api::all_with(self.client.clone(), &self.mode.resource(CalicoKind::IPPool))
    }

    /// A Manual pool with a unique name; `spec` holds extra fields (`disabled`, ...).
    async fn pool(&self, prefix: &str, cidr: &str, block_size: i32, spec: Value) -> String {
        let name = manual_pool(&self.client, self.mode, prefix, cidr, block_size, &spec).await;
        self.made.lock().unwrap().push(name.clone());
        name
    }

    /// Every allocated address in the cluster: (ip, handle, attributes).
    async fn allocations(&self) -> Vec<(IpAddr, Option<String>, BTreeMap<String, String>)> {
        allocations(&self.client, self.mode)
            .await
            .into_iter()
            .map(|a| (a.ip, a.handle, a.attrs))
            .collect()
    }

    /// Addresses held under `handle` (from the blocks) and whether its IPAMHandle exists.
    async fn held(&self, handle: &str) -> (Vec<IpAddr>, bool) {
        let ips = self
            .allocations()
            .await
            .into_iter()
            .filter(|(_, h, _)| h.as_deref() == Some(handle))
            .map(|(ip, _, _)| ip)
            .collect();
        let exists = live_handle(&self.client, self.mode, handle)
            .await
            .is_some_and(|h| h.spec.handle_id == handle);
        (ips, exists)
    }

    async fn assert_nothing_held(&self, handle: &str, what: &str) {
        let (ips, exists) = self.held(handle).await;
        assert!(
            ips.is_empty() && !exists,
            "{what}: handle {handle} still holds {ips:?} (IPAMHandle exists: {exists})"
        );
    }
}

/// Runs `program` with the CNI environment and `conf` on stdin, the way a runtime does.
async fn exec(
    program: &[&str],
    command: &str,
    container: &str,
    args: &str,
    conf: &Value,
    extra_env: &[(&str, &str)],
) -> Out {
    cni::exec(
        program,
        command,
        container,
        args,
        conf.to_string().as_bytes(),
        extra_env,
    )
    .await
}

async fn add(node: &str, ns: &str, pod: &str, cid: &str, ipam: Value) -> Out {
    cni::ipam("ADD", cid, &pod_args(ns, pod), &cni::conf(node, &ipam)).await
}

async fn del(node: &str, ns: &str, pod: &str, cid: &str) -> Out {
    cni::ipam("DEL", cid, &pod_args(ns, pod), &cni::conf(node, &json!({}))).await
}

// ------------------------------------------------------------------------------------------------
// seed 001: yaobank

#[tokio::test]
async fn yaobank_pods_get_their_annotated_pools() {
    let ctx = Ctx::new().await;
    // Seed 001's lab pools under their real names (the annotation names pool2-ipv4-ippool).
    // Other tests in this apiserver may have made them already; they are created when absent,
    // with pool2 and external-pool `Manual` as spec/ipam.md §8 says the lab should set, so that
    // unannotated pods land only in the default pool.
    for (name, spec) in [
        (
            "default-ipv4-ippool",
            json!({"cidr": "10.48.0.0/24", "blockSize": 26, "allowedUses": ["Workload", "Tunnel"],
            "ipipMode": "Never", "vxlanMode": "Never", "natOutgoing": true, "nodeSelector": "all()"}),
        ),
        (
            "pool2-ipv4-ippool",
            json!({"cidr": "10.48.128.0/24", "blockSize": 26, "ipipMode": "Never",
            "natOutgoing": true, "nodeSelector": "all()", "assignmentMode": "Manual"}),
        ),
        (
            "external-pool",
            json!({"cidr": "10.48.2.0/24", "blockSize": 29, "ipipMode": "Never",
            "natOutgoing": true, "assignmentMode": "Manual"}),
        ),
    ] {
        let spec: IPPoolSpec = serde_json::from_value(spec).unwrap();
        let obj = Object::new(name, &ctx.mode.resource(CalicoKind::IPPool), spec);
        match ctx.pools().create(&PostParams::default(), &obj).await {
            Ok(_) => ctx.made.lock().unwrap().push(name.to_string()),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create IPPool {name}: {e}"),
        }
    }
    let cidr_of = |name: &'static str| {
        let pools = ctx.pools();
        async move { pools.get(name).await.unwrap().spec.cidr.parse::<IpNet>().unwrap() }
    };
    let pool2_net = cidr_of("pool2-ipv4-ippool").await;
    assert_eq!(
        pool2_net.to_string(),
        "10.48.128.0/24",
        "IPPool pool2-ipv4-ippool exists with another CIDR (made by another test?)"
    );
    let default_net = cidr_of("default-ipv4-ippool").await;

    let node = unique_name("cni-yaobank-node");
    create_node(&ctx.client, &node, &[], Some("10.240.0.10"), &[], &[]).await;
    let ns = unique_name("yaobank");
    create_namespace(&ctx.client, &ns, &[]).await;
    let pool2 = [("cni.projectcalico.org/ipv4pools", r#"["pool2-ipv4-ippool"]"#)];
    let pods = [
        ("customer-0", &[][..]),
        ("database-0", &pool2[..]),
        ("summary-0", &pool2[..]),
        ("summary-1", &pool2[..]),
    ];
    let mut got = BTreeMap::new();
    for (pod, ann) in pods {
        create_pod(&ctx.client, &ns, pod, Some(&node), ann).await;
        let cid = unique_name(pod);
        let out = add(&node, &ns, pod, &cid, json!({})).await;
        let ip = out.ip();
        assert_eq!(out.json["cniVersion"], "1.0.0");
        assert_eq!(out.json["routes"], json!([{"dst": "0.0.0.0/0"}]), "{}", out.json);
        got.insert(pod, (cid, ip));
    }
    for pod in ["database-0", "summary-0", "summary-1"] {
        let ip = got[pod].1;
        assert!(
            pool2_net.contains(&ip.addr()),
            "{pod} got {ip}, not in pool2 10.48.128.0/24"
        );
        assert_eq!(
            ip.prefix_len(),
            32,
            "{pod}: the result carries the address as a host route, as Calico's CNI does"
        );
    }
    let ip = got["customer-0"].1;
    assert!(
        default_net.contains(&ip.addr()),
        "customer got {ip}, not in the default pool"
    );
    let distinct: BTreeSet<IpAddr> = got.values().map(|(_, ip)| ip.addr()).collect();
    assert_eq!(distinct.len(), 4);

    // The allocation records node, pod and namespace under the container's handle.
    let (cid, ip) = &got["database-0"];
    let allocs = ctx.allocations().await;
    let (_, h, attrs) = allocs.iter().find(|(a, _, _)| *a == ip.addr()).unwrap();
    assert_eq!(h.as_deref(), Some(handle(cid).as_str()));
    assert_eq!(attrs["node"], node);
    assert_eq!(attrs["pod"], "database-0");
    assert_eq!(attrs["namespace"], ns);
    assert!(attrs["timestamp"].ends_with(" +0000 UTC"), "{attrs:?}");

    // A repeated ADD for the same container returns the same address, allocating nothing new.
    let again = add(&node, &ns, "database-0", cid, json!({})).await;
    assert_eq!(again.ip(), *ip);
    assert_eq!(ctx.held(&handle(cid)).await.0, vec![ip.addr()]);

    // An older runtime (cniVersion 0.3.1) gets the 0.3.x shape.
    let mut old = cni::conf(&node, &json!({}));
    old["cniVersion"] = json!("0.3.1");
    let p = plugin().to_str().unwrap();
    let out = exec(&[p], "ADD", cid, &pod_args(&ns, "database-0"), &old, &[]).await;
    assert_eq!(out.json["cniVersion"], "0.3.1");
    assert_eq!(out.json["ips"][0]["version"], "4");

    // CHECK passes while the address is held.
    let mut check = cni::conf(&node, &json!({}));
    check["prevResult"] = again.json.clone();
    let out = exec(&[p], "CHECK", cid, &pod_args(&ns, "database-0"), &check, &[]).await;
    assert!(out.ok, "CHECK: {} {}", out.json, out.stderr);

    // DEL releases; a second DEL is a no-op success; CHECK then fails.
    for (pod, (cid, _)) in &got {
        let out = del(&node, &ns, pod, cid).await;
        assert!(out.ok, "DEL {pod}: {} {}", out.json, out.stderr);
        ctx.assert_nothing_held(&handle(cid), pod).await;
        let out = del(&node, &ns, pod, cid).await;
        assert!(out.ok, "second DEL {pod}: {}", out.json);
    }
    let out = exec(&[p], "CHECK", cid, &pod_args(&ns, "database-0"), &check, &[]).await;
    out.expect_err(107, &["holds no address"]);

    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    ctx.done().await;
}

#[tokio::test]
async fn namespace_annotation_applies_when_the_pod_has_none() {
    let ctx = Ctx::new().await;
    let ns_cidr = unique_cidr(24);
    let pod_cidr = unique_cidr(24);
    let conf_cidr = unique_cidr(24);
    let ns_pool = ctx.pool("cni-ns-pool", &ns_cidr, 26, json!({})).await;
    let pod_pool = ctx.pool("cni-pod-pool", &pod_cidr, 28, json!({})).await;
    let conf_pool = ctx.pool("cni-conf-pool", &conf_cidr, 26, json!({})).await;
    let node = unique_name("cni-ns-node");
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("cni-ns");
    let ns_ann = format!(r#"["{ns_pool}"]"#);
    create_namespace(&ctx.client, &ns, &[("cni.projectcalico.org/ipv4pools", &ns_ann)]).await;
    let pod_ann = format!(r#"["{pod_pool}"]"#);
    create_pod(&ctx.client, &ns, "plain", Some(&node), &[]).await;
    create_pod(
        &ctx.client,
        &ns,
        "annotated",
        Some(&node),
        &[("cni.projectcalico.org/ipv4pools", &pod_ann)],
    )
    .await;
    // The network config names a third pool: both annotations outrank it.
    let ipam = json!({"ipv4_pools": [conf_pool]});
    let (c1, c2) = (unique_name("plain"), unique_name("annotated"));
    let plain = add(&node, &ns, "plain", &c1, ipam.clone()).await.ip();
    let annotated = add(&node, &ns, "annotated", &c2, ipam.clone()).await.ip();
    assert!(
        ns_cidr.parse::<IpNet>().unwrap().contains(&plain.addr()),
        "{plain} not in the namespace's pool {ns_cidr}"
    );
    assert!(
        pod_cidr.parse::<IpNet>().unwrap().contains(&annotated.addr()),
        "{annotated} not in the pod's pool {pod_cidr}"
    );
    assert_eq!((plain.prefix_len(), annotated.prefix_len()), (32, 32));

    // Without the namespace annotation, the network config's pool applies.
    let ns2 = unique_name("cni-ns-plain");
    create_namespace(&ctx.client, &ns2, &[]).await;
    create_pod(&ctx.client, &ns2, "plain", Some(&node), &[]).await;
    let c3 = unique_name("plain2");
    let by_conf = add(&node, &ns2, "plain", &c3, ipam).await.ip();
    assert!(
        conf_cidr.parse::<IpNet>().unwrap().contains(&by_conf.addr()),
        "{by_conf} not in {conf_cidr}"
    );

    for (n, p, c) in [(&ns, "plain", &c1), (&ns, "annotated", &c2), (&ns2, "plain", &c3)] {
        assert!(del(&node, n, p, c).await.ok);
        ctx.assert_nothing_held(&handle(c), p).await;
    }
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    delete_namespace(&ctx.client, &ns2, Duration::from_secs(60)).await;
    ctx.done().await;
}

// ------------------------------------------------------------------------------------------------
// bad input: a CNI error naming the culprit, nothing allocated

#[tokio::test]
async fn bad_input_fails_cleanly_and_allocates_nothing() {
    let ctx = Ctx::new().await;
    let ok_cidr = unique_cidr(24);
    let ok = ctx.pool("cni-bad-ok", &ok_cidr, 26, json!({})).await;
    let off = ctx
        .pool("cni-bad-off", &unique_cidr(24), 26, json!({"disabled": true}))
        .await;
    let tiny_cidr = unique_cidr(30);
    let tiny = ctx.pool("cni-bad-tiny", &tiny_cidr, 30, json!({})).await;
    let node = unique_name("cni-bad-node");
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("cni-bad");
    create_namespace(&ctx.client, &ns, &[]).await;

    let ok_net: IpNet = ok_cidr.parse().unwrap();
    let taken = ok_net.hosts().nth(9).unwrap().to_string();
    let v4 = "cni.projectcalico.org/ipv4pools";
    let addrs = "cni.projectcalico.org/ipAddrs";
    let unknown = format!(r#"["{ok}-nope"]"#);
    let disabled = format!(r#"["{off}"]"#);
    let outside = r#"["192.0.2.7"]"#.to_string();
    let taken_json = format!(r#"["{taken}"]"#);
    let both_pools = format!(r#"["{ok}"]"#);
    let too_small = format!(r#"["{ok_cidr}"]"#).replace("/24", "/25");

    // The holder of `taken`, and the pods filling `tiny`.
    create_pod(&ctx.client, &ns, "holder", Some(&node), &[(addrs, &taken_json)]).await;
    let holder = unique_name("holder");
    let got = add(&node, &ns, "holder", &holder, json!({})).await.ip();
    assert_eq!(got.addr().to_string(), taken);
    let tiny_ann = format!(r#"["{tiny}"]"#);
    let mut fillers = vec![];
    for i in 0..4 {
        let pod = format!("filler-{i}");
        create_pod(&ctx.client, &ns, &pod, Some(&node), &[(v4, &tiny_ann)]).await;
        let cid = unique_name(&pod);
        add(&node, &ns, &pod, &cid, json!({})).await.ip();
        fillers.push((pod, cid));
    }

    struct Case<'a> {
        pod: &'a str,
        ann: Vec<(&'a str, &'a str)>,
        code: u64,
        needles: Vec<&'a str>,
    }
    let cases = vec![
        Case {
            pod: "malformed",
            ann: vec![(v4, "[pool2-ipv4-ippool]")],
            code: 100,
            needles: vec![v4, "is not valid JSON", "malformed"],
        },
        Case {
            pod: "bare-string",
            ann: vec![(v4, r#""pool2-ipv4-ippool""#)],
            code: 100,
            needles: vec![v4, "is not a JSON list"],
        },
        Case {
            pod: "unknown-pool",
            ann: vec![(v4, &unknown)],
            code: 101,
            needles: vec![v4, &unknown[2..unknown.len() - 2], "no IPPool named"],
        },
        Case {
            pod: "not-a-pool-cidr",
            ann: vec![(v4, &too_small)],
            code: 101,
            needles: vec!["is not the CIDR of any IPPool", &ok],
        },
        Case {
            pod: "disabled-pool",
            ann: vec![(v4, &disabled)],
            code: 102,
            needles: vec![&off, "is disabled"],
        },
        Case {
            pod: "exhausted",
            ann: vec![(v4, &tiny_ann)],
            code: 103,
            needles: vec![&tiny_cidr, "Assigned 0 out of 1 requested IPv4 addresses"],
        },
        Case {
            pod: "outside",
            ann: vec![(addrs, &outside)],
            code: 104,
            needles: vec![addrs, "192.0.2.7", "not in any IPPool"],
        },
        Case {
            pod: "in-use",
            ann: vec![(addrs, &taken_json)],
            code: 104,
            needles: vec![addrs, &taken, "already"],
        },
        Case {
            pod: "both",
            ann: vec![(addrs, &taken_json), (v4, &both_pools)],
            code: 100,
            needles: vec![addrs, "cannot be used together with annotation", v4],
        },
    ];
    for c in &cases {
        create_pod(&ctx.client, &ns, c.pod, Some(&node), &c.ann).await;
        let cid = unique_name(c.pod);
        let out = add(&node, &ns, c.pod, &cid, json!({})).await;
        assert!(out.json.get("ips").is_none(), "{}: {}", c.pod, out.json);
        out.expect_err(c.code, &c.needles);
        ctx.assert_nothing_held(&handle(&cid), c.pod).await;
        // The runtime's DEL after a failed ADD succeeds.
        assert!(del(&node, &ns, c.pod, &cid).await.ok, "{}", c.pod);
    }

    // Missing K8S_POD_NAME: an environment error (code 4), nothing allocated.
    let cid = unique_name("noname");
    let p = plugin().to_str().unwrap();
    let out = exec(
        &[p],
        "ADD",
        &cid,
        &format!("K8S_POD_NAMESPACE={ns}"),
        &cni::conf(&node, &json!({})),
        &[],
    )
    .await;
    out.expect_err(4, &["K8S_POD_NAME"]);
    ctx.assert_nothing_held(&handle(&cid), "missing K8S_POD_NAME")
        .await;

    // The holder and the fillers still hold exactly what they had.
    assert_eq!(ctx.held(&handle(&holder)).await.0, vec![got.addr()]);
    assert!(del(&node, &ns, "holder", &holder).await.ok);
    for (pod, cid) in &fillers {
        assert!(del(&node, &ns, pod, cid).await.ok);
        ctx.assert_nothing_held(&handle(cid), pod).await;
    }
    ipam_check_clean(&ctx, &[&ok_cidr, &tiny_cidr]).await;
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    ctx.done().await;
}

/// The engine's `ipam check` finds nothing wrong inside `scope` (the test's own pools: parallel
/// tests may be mid-allocation elsewhere), with pod liveness checked.
async fn ipam_check_clean(ctx: &Ctx, scope: &[&str]) {
    let ipam = tortie::ipam::Ipam::new(ctx.client.clone(), ctx.mode)
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(ctx.client.clone());
    let live = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default(),
            )
        })
        .collect();
    let input = tortie::ipam::report::CheckInput {
        blocks: ipam.list_blocks().await.unwrap(),
        handles: ipam.list_handles().await.unwrap(),
        affinities: ipam.list_affinities().await.unwrap(),
        pods: Some(live),
        scope: Some(scope.iter().map(|c| c.parse().unwrap()).collect()),
        ..Default::default()
    };
    let problems = tortie::ipam::report::check(&input);
    assert!(
        problems.is_empty(),
        "ipam check in {scope:?}:\n{}",
        tortie::ipam::report::render_problems(&problems)
    );
}

#[tokio::test]
async fn unreachable_apiserver_is_a_bounded_error_not_a_hang() {
    // A server that accepts connections and never answers (the nastiest kind of unreachable).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = plugin().to_str().unwrap();
    for (what, port) in [("silent", port), ("refused", refused)] {
        let mut c = cni::conf("node-x", &json!({"timeout_seconds": 3}));
        c["kubernetes"]["k8s_api_root"] = json!(format!("https://127.0.0.1:{port}"));
        for cmd in ["ADD", "DEL"] {
            let out = exec(&[p], cmd, "c1", &pod_args("ns", "pod"), &c, &[]).await;
            out.expect_err(105, &[]);
            assert!(
                out.elapsed < Duration::from_secs(20),
                "{what} {cmd} took {:?}",
                out.elapsed
            );
            eprintln!(
                "{what} apiserver, {cmd}: failed in {:?}: {}",
                out.elapsed,
                out.msg()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// concurrency

#[tokio::test]
async fn thirty_two_concurrent_adds_on_four_nodes_get_distinct_addresses() {
    let ctx = Ctx::new().await;
    let cidr = unique_cidr(22);
    let pool = ctx.pool("cni-conc", &cidr, 26, json!({})).await;
    let nodes: Vec<String> = (0..4).map(|i| unique_name(&format!("cni-conc-{i}"))).collect();
    for n in &nodes {
        create_node(&ctx.client, n, &[], None, &[], &[]).await;
    }
    let ns = unique_name("cni-conc");
    create_namespace(&ctx.client, &ns, &[]).await;
    let pods: Vec<(String, String, String)> = (0..32)
        .map(|i| {
            (
                nodes[i % 4].clone(),
                format!("pod-{i}"),
                unique_name(&format!("c{i}")),
            )
        })
        .collect();
    for (node, pod, _) in &pods {
        create_pod(&ctx.client, &ns, pod, Some(node), &[]).await;
    }
    let ipam = json!({"ipv4_pools": [pool]});
    let started = Instant::now();
    let outs = futures::future::join_all(
        pods.iter()
            .map(|(node, pod, cid)| add(node, &ns, pod, cid, ipam.clone())),
    )
    .await;
    let took = started.elapsed();
    let net: IpNet = cidr.parse().unwrap();
    let mut seen = BTreeSet::new();
    for (o, (node, pod, _)) in outs.iter().zip(&pods) {
        assert!(o.ok, "{pod} on {node}: {} {}", o.json, o.stderr);
        let ip = o.ip().addr();
        assert!(net.contains(&ip), "{ip} outside {cidr}");
        assert!(seen.insert(ip), "{ip} handed out twice");
    }
    assert_eq!(seen.len(), 32);
    eprintln!("32 concurrent ADDs on 4 nodes: {took:?} wall");
    // Each allocation records the node it was made for.
    let allocs = ctx.allocations().await;
    for (node, pod, cid) in &pods {
        let mine: Vec<_> = allocs
            .iter()
            .filter(|(_, h, _)| h.as_deref() == Some(handle(cid).as_str()))
            .collect();
        assert_eq!(mine.len(), 1, "{pod}");
        assert_eq!(mine[0].2["node"], *node);
    }

    let started = Instant::now();
    let dels = futures::future::join_all(pods.iter().map(|(node, pod, cid)| del(node, &ns, pod, cid))).await;
    eprintln!("32 concurrent DELs: {:?} wall", started.elapsed());
    for (o, (_, pod, _)) in dels.iter().zip(&pods) {
        assert!(o.ok, "DEL {pod}: {} {}", o.json, o.stderr);
    }
    let left: Vec<_> = ctx
        .allocations()
        .await
        .into_iter()
        .filter(|(ip, _, _)| net.contains(ip))
        .collect();
    assert!(left.is_empty(), "allocations left in {cidr}: {left:?}");
    for (_, pod, cid) in &pods {
        ctx.assert_nothing_held(&handle(cid), pod).await;
    }
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    ctx.done().await;
}

// ------------------------------------------------------------------------------------------------
// a real plugin chain: Debian's ptp / bridge with tortie-ipam as IPAM, in network namespaces

/// Network namespaces (and nothing else) made by one test; deleted on drop, even on panic.
struct Netns(Vec<String>);

impl Netns {
    fn add(&mut self, name: &str) {
        run_ok("ip", &["netns", "add", name]);
        self.0.push(name.to_string());
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A TCP relay listening on 127.0.0.1 *inside* network namespace `netns` to `target` in ours:
/// the apiserver listens on the root namespace's loopback, which a "node" namespace cannot see.
/// Returns the port.
fn relay_into(netns: &str, target: std::net::SocketAddr) -> u16 {
    use std::os::fd::AsRawFd;
    let ours = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let theirs = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // setns applies to this thread only; sockets stay in the namespace they were made in.
        assert_eq!(unsafe { libc::setns(theirs.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(unsafe { libc::setns(ours.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for down in listener.incoming().flatten() {
            let Ok(up) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut d, mut u) = (down, up);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut d, &mut u);
                let _ = u.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
                let _ = d2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    rx.recv().unwrap()
}

fn apiserver_addr() -> std::net::SocketAddr {
    let kc = kube::config::Kubeconfig::read_from(&cluster().kubeconfig).unwrap();
    let server = kc.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap();
    let hostport = server.trim_start_matches("https://").trim_end_matches('/');
    hostport.parse().unwrap()
}

async fn plugin_chain(main_plugin: &str) {
    let main_bin = format!("/usr/lib/cni/{main_plugin}");
    assert!(
        Path::new(&main_bin).exists(),
        "{main_bin} missing: apt-get install -y containernetworking-plugins (e2e/install-deps.sh)"
    );
    let ctx = Ctx::new().await;
    let cidr = unique_cidr(24);
    let pool = ctx
        .pool(&format!("cni-{main_plugin}"), &cidr, 26, json!({}))
        .await;
    let node = unique_name(&format!("cni-{main_plugin}-node"));
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;
    let ns = unique_name(&format!("cni-{main_plugin}"));
    create_namespace(&ctx.client, &ns, &[]).await;

    let tag = &unique_name("n")[2..];
    let tag = &tag[tag.len().saturating_sub(8)..];
    let (node_ns, pod_ns) = (format!("tcn{tag}"), format!("tcp{tag}"));
    let mut netns = Netns(vec![]);
    netns.add(&node_ns);
    let port = relay_into(&node_ns, apiserver_addr());

    // CNI_PATH: the reference plugins, and a directory holding only tortie-ipam.
    let cni_path = format!("{}:/usr/lib/cni", plugin().parent().unwrap().display());
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": main_plugin,
        "ipMasq": false,
        "mtu": 1400,
        "nodename": node,
        "log_level": "debug",
        "kubernetes": {
            "kubeconfig": cluster().kubeconfig,
            "k8s_api_root": format!("https://127.0.0.1:{port}"),
        },
        "ipam": {"type": "tortie-ipam", "gateway": "node", "ipv4_pools": [pool]},
    });
    if main_plugin == "bridge" {
        conf["bridge"] = json!(format!("tcb{tag}"));
        conf["isGateway"] = json!(true);
    }
    let pods = ["web-0", "web-1"];
    let mut results = vec![];
    for pod in pods {
        create_pod(&ctx.client, &ns, pod, Some(&node), &[]).await;
        let cid = unique_name(pod);
        let pod_netns = format!("{pod_ns}{}", &pod[4..]);
        netns.add(&pod_netns);
        let netns_path = format!("/run/netns/{pod_netns}");
        let env = vec![
            ("CNI_PATH", cni_path.as_str()),
            ("CNI_NETNS", netns_path.as_str()),
        ];
        let out = exec(
            &["ip", "netns", "exec", &node_ns, &main_bin],
            "ADD",
            &cid,
            &pod_args(&ns, pod),
            &conf,
            &env,
        )
        .await;
        assert!(out.ok, "{main_plugin} ADD {pod}: {} {}", out.json, out.stderr);
        let ip = out.ip();
        assert!(
            cidr.parse::<IpNet>().unwrap().contains(&ip.addr()),
            "{ip} not in {cidr}"
        );
        let gw: IpAddr = out.json["ips"][0]["gateway"].as_str().unwrap().parse().unwrap();
        assert!(
            ip.trunc().contains(&gw) && gw != ip.addr(),
            "gateway {gw} for {ip}"
        );

        // The pod's namespace has the address and a default route via the gateway.
        let addrs = run_ok("ip", &["-n", &pod_netns, "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addrs.contains(&ip.to_string()),
            "{ip} not on eth0 of {pod_netns}: {addrs}"
        );
        let routes = run_ok("ip", &["-n", &pod_netns, "route", "show", "default"]);
        assert!(
            routes.contains(&format!("default via {gw}")),
            "no default route via {gw}: {routes:?}"
        );
        // The node's namespace routes the pod's address to it.
        let route = run_ok("ip", &["-n", &node_ns, "route", "get", &ip.addr().to_string()]);
        assert!(!route.contains("unreachable"), "{route}");
        results.push((
            pod,
            cid,
            pod_netns,
            ip,
            gw,
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        ));
    }
    // Both pods share the node's gateway of their block.
    assert_eq!(results[0].4, results[1].4);
    assert_ne!(results[0].3, results[1].3);

    for (pod, cid, pod_netns, ip, _, env) in &results {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = exec(
            &["ip", "netns", "exec", &node_ns, &main_bin],
            "DEL",
            cid,
            &pod_args(&ns, pod),
            &conf,
            &env,
        )
        .await;
        assert!(out.ok, "{main_plugin} DEL {pod}: {} {}", out.json, out.stderr);
        let left = std::process::Command::new("ip")
            .args(["-n", pod_netns, "-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        assert!(
            !left.status.success() || !String::from_utf8_lossy(&left.stdout).contains(&ip.addr().to_string()),
            "eth0 still has {ip} after DEL"
        );
        ctx.assert_nothing_held(&handle(cid), pod).await;
    }
    // Only the node's gateway stays allocated in the pool.
    let net: IpNet = cidr.parse().unwrap();
    let left: Vec<_> = ctx
        .allocations()
        .await
        .into_iter()
        .filter(|(ip, _, _)| net.contains(ip))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left[0].1.as_deref(),
        Some(format!("tortie-gateway.{node}").as_str())
    );
    assert_eq!(left[0].2["type"], "gatewayAddress");
    // The node is going away: give its gateway back.
    let ipam = tortie::ipam::Ipam::new(ctx.client.clone(), ctx.mode)
        .await
        .unwrap();
    let gw_handle = format!("tortie-gateway.{node}");
    assert_eq!(ipam.release_by_handle(&gw_handle).await.unwrap().len(), 1);
    ctx.assert_nothing_held(&gw_handle, "gateway").await;
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    ctx.done().await;
}

#[tokio::test]
async fn ptp_chain_attaches_a_pod_namespace_with_a_tortie_address() {
    plugin_chain("ptp").await;
}

#[tokio::test]
async fn bridge_chain_attaches_a_pod_namespace_with_a_tortie_address() {
    plugin_chain("bridge").await;
}

// ------------------------------------------------------------------------------------------------
// CNI 1.1 GC and STATUS

#[tokio::test]
async fn gc_releases_only_this_nodes_unknown_containers() {
    let ctx = Ctx::new().await;
    let cidr = unique_cidr(24);
    let pool = ctx.pool("cni-gc", &cidr, 26, json!({})).await;
    let (n1, n2) = (unique_name("cni-gc-a"), unique_name("cni-gc-b"));
    create_node(&ctx.client, &n1, &[], None, &[], &[]).await;
    create_node(&ctx.client, &n2, &[], None, &[], &[]).await;
    let ns = unique_name("cni-gc");
    create_namespace(&ctx.client, &ns, &[]).await;
    let ipam = json!({"ipv4_pools": [pool]});
    let mut cids = vec![];
    for (i, node) in [&n1, &n1, &n1, &n2].into_iter().enumerate() {
        let pod = format!("p{i}");
        create_pod(&ctx.client, &ns, &pod, Some(node), &[]).await;
        let cid = unique_name(&pod);
        add(node, &ns, &pod, &cid, ipam.clone()).await.ip();
        cids.push(cid);
    }
    // The runtime on n1 knows only the first container; n2's is not its business.
    let mut c = cni::conf(&n1, &json!({}));
    c["cniVersion"] = json!("1.1.0");
    c["cni.dev/valid-attachments"] = json!([{"containerID": cids[0], "ifname": "eth0"}]);
    let p = plugin().to_str().unwrap();
    let out = exec(&[p], "GC", "", "", &c, &[]).await;
    assert!(out.ok, "GC: {} {}", out.json, out.stderr);
    assert_eq!(
        ctx.held(&handle(&cids[0])).await.0.len(),
        1,
        "valid container kept"
    );
    ctx.assert_nothing_held(&handle(&cids[1]), "stale p1").await;
    ctx.assert_nothing_held(&handle(&cids[2]), "stale p2").await;
    assert_eq!(
        ctx.held(&handle(&cids[3])).await.0.len(),
        1,
        "other node's container kept"
    );
    // Without the list, GC refuses instead of releasing everything.
    c.as_object_mut().unwrap().remove("cni.dev/valid-attachments");
    exec(&[p], "GC", "", "", &c, &[])
        .await
        .expect_err(7, &["cni.dev/valid-attachments"]);
    assert_eq!(ctx.held(&handle(&cids[0])).await.0.len(), 1);

    // STATUS: available while the apiserver answers and a pool is enabled.
    let out = exec(&[p], "STATUS", "", "", &c, &[]).await;
    assert!(out.ok, "STATUS: {} {}", out.json, out.stderr);

    for (i, node) in [(0, &n1), (3, &n2)] {
        assert!(del(node, &ns, &format!("p{i}"), &cids[i]).await.ok);
    }
    ipam_check_clean(&ctx, &[&cidr]).await;
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    ctx.done().await;
}

// ------------------------------------------------------------------------------------------------
// dual stack

/// A unique IPv6 CIDR in fdcc::/16.
fn unique_cidr6(prefix_len: u8) -> String {
    let v4: IpNet = unique_cidr(24).parse().unwrap();
    let IpAddr::V4(a) = v4.network() else {
        unreachable!()
    };
    let o = a.octets();
    // Written by Ipv6Addr so that it is canonical ("fdcc:1f::", not "fdcc:1f:0::"), as the
    // IPPool CRD requires.
    let net = std::net::Ipv6Addr::new(
        0xfdcc,
        u16::from(o[1]),
        u16::from_be_bytes([o[2], o[3]]),
        0,
        0,
        0,
        0,
        0,
    );
    format!("{net}/{prefix_len}")
}

#[tokio::test]
async fn dual_stack_gets_both_families_or_nothing() {
    let ctx = Ctx::new().await;
    let v4_cidr = unique_cidr(24);
    let v6_cidr = unique_cidr6(120);
    let tiny6 = unique_cidr6(126);
    let v4 = ctx.pool("cni-ds4", &v4_cidr, 26, json!({})).await;
    let v6 = ctx.pool("cni-ds6", &v6_cidr, 122, json!({})).await;
    let t6 = ctx.pool("cni-ds6-tiny", &tiny6, 126, json!({})).await;
    let node = unique_name("cni-ds-node");
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("cni-ds");
    create_namespace(&ctx.client, &ns, &[]).await;

    create_pod(&ctx.client, &ns, "both", Some(&node), &[]).await;
    let cid = unique_name("both");
    let ipam = json!({"assign_ipv6": "true", "ipv4_pools": [v4], "ipv6_pools": [v6]});
    let out = add(&node, &ns, "both", &cid, ipam).await;
    assert!(out.ok, "{} {}", out.json, out.stderr);
    eprintln!("one dual-stack ADD: {:?}", out.elapsed);
    let a4: IpNet = out.json["ips"][0]["address"].as_str().unwrap().parse().unwrap();
    let a6: IpNet = out.json["ips"][1]["address"].as_str().unwrap().parse().unwrap();
    assert!(v4_cidr.parse::<IpNet>().unwrap().contains(&a4.addr()), "{a4}");
    assert!(v6_cidr.parse::<IpNet>().unwrap().contains(&a6.addr()), "{a6}");
    assert_eq!((a4.prefix_len(), a6.prefix_len()), (32, 128));
    assert_eq!(out.json["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
    assert!(del(&node, &ns, "both", &cid).await.ok);
    ctx.assert_nothing_held(&handle(&cid), "both").await;

    // Fill the tiny IPv6 pool with IPv6-only pods, then a dual-stack pod: IPv4 would succeed but
    // IPv6 cannot, so the pod gets nothing (no half-dual-stack pods), and the error says why.
    let only6 = json!({"assign_ipv4": "false", "assign_ipv6": "true", "ipv6_pools": [t6]});
    let mut fillers = vec![];
    for i in 0..4 {
        let pod = format!("v6-{i}");
        create_pod(&ctx.client, &ns, &pod, Some(&node), &[]).await;
        let c = unique_name(&pod);
        let o = add(&node, &ns, &pod, &c, only6.clone()).await;
        assert!(o.ok, "{pod}: {}", o.json);
        assert_eq!(o.json["ips"].as_array().unwrap().len(), 1);
        fillers.push((pod, c));
    }
    create_pod(&ctx.client, &ns, "half", Some(&node), &[]).await;
    let c = unique_name("half");
    let ipam = json!({"assign_ipv6": "true", "ipv4_pools": [v4], "ipv6_pools": [t6]});
    let out = add(&node, &ns, "half", &c, ipam).await;
    out.expect_err(
        103,
        &["Assigned 0 out of 1 requested IPv6 addresses", "ipam.ipv6_pools"],
    );
    ctx.assert_nothing_held(&handle(&c), "half").await;
    for (pod, c) in &fillers {
        assert!(del(&node, &ns, pod, c).await.ok);
    }
    ipam_check_clean(&ctx, &[&v4_cidr, &v6_cidr, &tiny6]).await;
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    ctx.done().await;
}

// ------------------------------------------------------------------------------------------------
// issue 15: container IDs of every shape

/// Every container ID an ADD takes is released by its DEL, IDs that differ only in case hold
/// separate handles, and an ID no ADD could ever be undone for is refused up front (code 4),
/// while its DEL still succeeds. Run with the real binary, as a runtime would.
#[tokio::test]
async fn odd_container_ids_add_and_del_or_are_refused_up_front() {
    let ctx = Ctx::new().await;
    let cidr = unique_cidr(24);
    let pool = ctx.pool("cni-ids", &cidr, 28, json!({})).await;
    let node = unique_name("cni-ids-node");
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("cni-ids");
    create_namespace(&ctx.client, &ns, &[]).await;
    let base = unique_name("id");
    let ipam = json!({"ipv4_pools": [pool]});

    // Accepted: mixed case (two IDs that differ only in case), dots, underscores, very long.
    let upper = format!("{base}-ABC");
    let mixed = format!("{base}-Abc");
    let lower = format!("{base}-abc");
    let accepted = [
        upper.clone(),
        mixed.clone(),
        lower.clone(),
        format!("{base}..dots.."),
        format!("{base}_under_score"),
        format!("{base}-{}", "x".repeat(300)),
        format!("{base}-{}", "Y".repeat(900)),
    ];
    let mut got = BTreeMap::new();
    for (i, cid) in accepted.iter().enumerate() {
        let pod = format!("p{i}");
        create_pod(&ctx.client, &ns, &pod, Some(&node), &[]).await;
        let out = add(&node, &ns, &pod, cid, ipam.clone()).await;
        assert!(out.ok, "ADD {cid:.60}: {} {}", out.json, out.stderr);
        let ip = out.ip().addr();
        let (held, exists) = ctx.held(&handle(cid)).await;
        assert!(
            held == vec![ip] && exists,
            "ADD {cid:.60}: handle holds {held:?} (exists {exists})"
        );
        assert!(got.insert(ip, cid.clone()).is_none(), "{ip} handed out twice");
    }
    // Each case variant has its own IPAMHandle object, each holding its own address.
    let handles: Api<Handle> = Api::all_with(ctx.client.clone(), &ctx.mode.resource(CalicoKind::IPAMHandle));
    let mut objects = BTreeSet::new();
    for cid in [&upper, &mixed, &lower] {
        let name = tortie::ipam::names::handle_name(&handle(cid));
        let h = handles.get(&name).await.unwrap();
        assert_eq!(h.spec.handle_id, handle(cid), "IPAMHandle {name}");
        assert_eq!(h.spec.block.values().sum::<u64>(), 1, "IPAMHandle {name}");
        objects.insert(name);
    }
    assert_eq!(objects.len(), 3, "{objects:?}");
    // The lower-case ID keeps Calico's name; the others are named apart from it.
    assert!(objects.contains(&handle(&lower)));

    // A repeated ADD returns the same address (the handle is found again under its name).
    let again = add(&node, &ns, "p0", &upper, ipam.clone()).await;
    assert!(again.ok, "{}", again.json);
    assert_eq!(got.get(&again.ip().addr()), Some(&upper));

    // DEL of one case variant leaves the others alone; every DEL releases all it held.
    for (i, cid) in accepted.iter().enumerate() {
        let out = del(&node, &ns, &format!("p{i}"), cid).await;
        assert!(out.ok, "DEL {cid:.60}: {} {}", out.json, out.stderr);
        ctx.assert_nothing_held(&handle(cid), cid).await;
        for later in &accepted[i + 1..] {
            let (held, exists) = ctx.held(&handle(later)).await;
            assert!(
                held.len() == 1 && exists,
                "DEL {cid:.60} touched {later:.60}: {held:?}"
            );
        }
        // A second DEL (runtimes repeat them) succeeds too.
        assert!(del(&node, &ns, &format!("p{i}"), cid).await.ok);
    }

    // Refused at ADD, naming the variable and why; nothing allocated; DEL succeeds.
    let refused = [
        (format!("{base}/../x"), "invalid character '/'"),
        (format!("{base}-ünï"), "invalid character 'ü'"),
        (format!("{base}\rgarbage"), "invalid character '\\r'"),
        (format!(".{base}"), "invalid character '.'"),
        (format!("{base}-{}", "z".repeat(1100)), "characters long"),
        (String::new(), "required for Add but not set"),
    ];
    create_pod(&ctx.client, &ns, "refused", Some(&node), &[]).await;
    for (cid, why) in &refused {
        let out = add(&node, &ns, "refused", cid, ipam.clone()).await;
        assert!(!out.ok, "ADD {cid:?} was accepted: {}", out.json);
        assert_eq!(out.json["code"], 4, "ADD {cid:?}: {}", out.json);
        let msg = out.json["msg"].as_str().unwrap_or("");
        assert!(
            msg.contains("CNI_CONTAINERID") && msg.contains(why),
            "ADD {cid:?}: {msg}"
        );
        ctx.assert_nothing_held(&handle(cid), "refused ADD").await;
        if !cid.is_empty() {
            let d = del(&node, &ns, "refused", cid).await;
            assert!(d.ok, "DEL {cid:?}: {} {}", d.json, d.stderr);
        }
    }
    let left: Vec<IpAddr> = ctx
        .allocations()
        .await
        .into_iter()
        .map(|(ip, _, _)| ip)
        .filter(|ip| cidr.parse::<IpNet>().unwrap().contains(ip))
        .collect();
    assert!(left.is_empty(), "left in {cidr}: {left:?}");
    ipam_check_clean(&ctx, &[&cidr]).await;
    delete_namespace(&ctx.client, &ns, Duration::from_secs(60)).await;
    delete_node(&ctx.client, &node).await;
    ctx.done().await;
}
