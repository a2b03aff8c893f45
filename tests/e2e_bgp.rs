//! BGP end to end with real BIRD 1.6 daemons in network namespaces this test creates, running the
//! configuration tortie renders. Needs root, `ip netns` and the Debian `bird` package.

mod support;

use std::time::Duration;

use support::bgp_lab::Lab;
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};
use tortie::cli::agent::{self, Applied, Reload};

const TIMEOUT: Duration = Duration::from_secs(40);

fn node_yaml(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    projectcalico.org/IPv4Address: {cidr}\n---\n"
    )
}

fn affinity_yaml(node: &str, cidr: &str) -> String {
    format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata:\n  name: {node}-{}\nspec:\n  cidr: {cidr}\n  node: {node}\n  state: confirmed\n  deleted: \"false\"\n---\n",
        cidr.replace(['.', '/'], "-")
    )
}

fn render(snap: &Snapshot, node: &str) -> bgp::Rendered {
    let r = bgp::render(snap, node, &RenderOptions::default(), &CalicoSelectors::default()).expect("renders");
    assert!(r.warnings.is_empty(), "warnings: {:?}", r.warnings);
    r
}

/// Renders for every node and installs through the agent's apply path (check, swap, reload).
fn install(lab: &Lab, snap: &Snapshot, nodes: &[&str]) -> Vec<Applied> {
    nodes
        .iter()
        .map(|n| {
            let reload = Reload {
                bird_socket: lab.daemons.get(*n).map(|d| d.socket.clone()),
                bird6_socket: None,
            };
            agent::apply(&lab.config_dir(n), &render(snap, n).files, &reload, false)
                .unwrap_or_else(|e| panic!("agent apply on {n}: {e}"))
        })
        .collect()
}

fn block_of(i: usize) -> String {
    format!("10.48.0.{}/26", (i - 1) * 64)
}

#[test]
fn three_node_mesh_then_a_fourth_node_joins() {
    let mut lab = Lab::new("m");
    let mut manifests = String::from(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: default-ipv4-ippool\nspec:\n  cidr: 10.48.0.0/16\n  ipipMode: Never\n  vxlanMode: Never\n---\n",
    );
    let names = ["n1", "n2", "n3"];
    for (i, n) in names.iter().enumerate() {
        let i = i + 1;
        lab.add_host(n, &[&format!("10.255.0.{i}/24")]);
        manifests.push_str(&node_yaml(n, &format!("10.255.0.{i}/24")));
        manifests.push_str(&affinity_yaml(n, &block_of(i)));
    }
    let mut snap = Snapshot::default();
    snap.add_manifests("lab", &manifests).unwrap();
    install(&lab, &snap, &names);
    for n in names {
        lab.start_bird(n);
    }
    let sessions = lab.wait_all_established(TIMEOUT);
    assert_eq!(sessions, 6, "3 nodes, 2 mesh sessions each");

    for (i, n) in names.iter().enumerate() {
        let i = i + 1;
        lab.wait_for(&format!("{n} learns the other blocks"), TIMEOUT, |lab| {
            let d = lab.daemon(n);
            let routes = d.routes();
            let kernel = d.kernel_routes();
            let all = (1..=3).filter(|j| *j != i).all(|j| {
                let b = block_of(j);
                routes.contains(&format!("{b} via 10.255.0.{j}"))
                    && kernel.contains(&format!("{b} via 10.255.0.{j}"))
            });
            // Its own block is the route seed 001 shows: `blackhole 10.48.0.0/26 proto bird`
            // (kernel_routes() lists `proto bird` routes only, without that suffix).
            let own = kernel.contains(&format!("blackhole {}", block_of(i)));
            (all && own).then_some(())
        });
    }

    // Unchanged inputs: the agent writes nothing and does not reload.
    assert!(
        install(&lab, &snap, &names)
            .iter()
            .all(|a| *a == Applied::Unchanged)
    );

    // A fourth node and its block: re-render, the running agents reload, n4 starts.
    lab.add_host("n4", &["10.255.0.4/24"]);
    let mut more = node_yaml("n4", "10.255.0.4/24");
    more.push_str(&affinity_yaml("n4", &block_of(4)));
    snap.add_manifests("n4", &more).unwrap();
    let applied = install(&lab, &snap, &["n1", "n2", "n3", "n4"]);
    assert!(applied.iter().all(|a| *a == Applied::Reloaded), "{applied:?}");
    lab.start_bird("n4");
    let sessions = lab.wait_all_established(TIMEOUT);
    assert_eq!(sessions, 12, "4 nodes, 3 mesh sessions each");
    for n in ["n1", "n2", "n3"] {
        lab.wait_for(&format!("{n} learns n4's block"), TIMEOUT, |lab| {
            let d = lab.daemon(n);
            let b = block_of(4);
            (d.routes().contains(&format!("{b} via 10.255.0.4"))
                && d.kernel_routes().contains(&format!("{b} via 10.255.0.4")))
            .then_some(())
        });
    }
    lab.wait_for("n4 learns the three older blocks", TIMEOUT, |lab| {
        let r = lab.daemon("n4").routes();
        (1..=3)
            .all(|j| r.contains(&format!("{} via 10.255.0.{j}", block_of(j))))
            .then_some(())
    });
}

/// Seed 003: cluster AS 61012 (mesh on, listenPort 178, serviceClusterIPs 10.96.0.0/12) peers
/// with an external BIRD router 192.168.1.10 in AS 61113 through a `nodeSelector: all()` BGPPeer
/// with keepOriginalNextHop and sourceAddress None.
#[test]
fn seed003_cluster_peers_with_external_router() {
    let mut lab = Lab::new("s");
    lab.add_host("worker1", &["10.0.0.243/24"]);
    lab.add_host("worker2", &["10.0.0.183/24"]);
    // The router has 192.168.1.10 on its loopback and 10.0.0.1 on the shared link.
    lab.add_host("router", &["10.0.0.1/24", "192.168.1.10/32"]);
    for w in ["worker1", "worker2"] {
        lab.ip(w, &["route", "add", "192.168.1.10/32", "via", "10.0.0.1"]);
    }
    let manifests = format!(
        "{}{}{}{}",
        node_yaml("worker1", "10.0.0.243/24"),
        node_yaml("worker2", "10.0.0.183/24"),
        affinity_yaml("worker1", "10.244.1.0/26"),
        affinity_yaml("worker2", "10.244.2.0/26"),
    ) + r#"apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 61012
  bindMode: None
  listenPort: 178
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: true
  serviceClusterIPs:
    - cidr: 10.96.0.0/12
---
apiVersion: crd.projectcalico.org/v1
kind: BGPPeer
metadata:
  name: peer-to-cluster-gre1-worker1
spec:
  asNumber: 61113
  keepOriginalNextHop: true
  nodeSelector: all()
  peerIP: "192.168.1.10"
  sourceAddress: None
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  ipipMode: Never
  vxlanMode: Never
"#;
    let mut snap = Snapshot::default();
    snap.add_manifests("seed003", &manifests).unwrap();
    install(&lab, &snap, &["worker1", "worker2"]);
    let w1 = String::from_utf8(render(&snap, "worker1").files["bird.cfg"].clone()).unwrap();
    assert!(w1.contains("protocol bgp Node_192_168_1_10 from bgp_template"));
    assert!(w1.contains("listen bgp port 178;"));

    // The tunnel host of the seed's BIRD role: AS 61113, dials the workers on port 178 and
    // announces the other cluster's pod range.
    let router = r#"router id 192.168.1.10;
protocol device { scan time 2; }
protocol direct { interface "*"; }
protocol kernel { learn; persist; scan time 2; import all; export none; }
protocol static { route 10.245.0.0/16 blackhole; }
template bgp cluster1 {
  local as 61113; source address 192.168.1.10; multihop; gateway recursive;
  import all; export all; connect delay time 1; connect retry time 2; error wait time 1,5;
}
protocol bgp worker1 from cluster1 { neighbor 10.0.0.243 port 178 as 61012; }
protocol bgp worker2 from cluster1 { neighbor 10.0.0.183 port 178 as 61012; }
"#;
    let rdir = lab.config_dir("router");
    std::fs::write(rdir.join("bird.cfg"), router).unwrap();
    agent::bird_check(&rdir, false).expect("router config parses");
    for n in ["worker1", "worker2", "router"] {
        lab.start_bird(n);
    }
    // worker1<->worker2 mesh (2), each worker<->router (2+2).
    let sessions = lab.wait_all_established(TIMEOUT);
    assert_eq!(sessions, 6);
    lab.wait_for(
        "the router learns both blocks and the service range",
        TIMEOUT,
        |lab| {
            let r = lab.daemon("router").routes();
            (r.contains("10.244.1.0/26 via 10.0.0.243")
                && r.contains("10.244.2.0/26 via 10.0.0.183")
                && r.contains("10.96.0.0/12"))
            .then_some(())
        },
    );
    lab.wait_for("the workers learn the other cluster's range", TIMEOUT, |lab| {
        ["worker1", "worker2"]
            .iter()
            .all(|w| lab.daemon(w).routes().contains("10.245.0.0/16"))
            .then_some(())
    });
    // Between the workers, routes travel over the mesh on port 178.
    lab.wait_for("worker2 learns worker1's block over the mesh", TIMEOUT, |lab| {
        lab.daemon("worker2")
            .routes()
            .contains("10.244.1.0/26 via 10.0.0.243")
            .then_some(())
    });
}

/// The controller path against the real apiserver: Nodes and BlockAffinities in the cluster, the
/// BGP controller publishing render inputs (shards + one object per node), one agent per node
/// assembling and installing its config for a real BIRD in its namespace. A fourth Node (and block) makes the agents reload and the block spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_and_agents_follow_the_apiserver() {
    use k8s_openapi::api::core::v1::{ConfigMap, Node};
    use kube::api::{Api, PostParams};
    use tortie::api::{Affinity, CalicoKind, CrdMode};
    use tortie::controllers::bgp as ctrl;

    let client = support::client().await;
    let mode = CrdMode::detect(&client).await.expect("CRD mode");
    let ns = support::unique_name("bgp-e2e");
    support::create_namespace(&client, &ns, &[]).await;
    let tag = support::unique_name("b");
    // A /24 of CGNAT space per process, so Nodes of other tests never share our addresses.
    let net = format!("100.66.{}", std::process::id() % 250);
    let names: Vec<String> = (1..=4).map(|i| format!("{tag}-n{i}")).collect();
    let block = |i: usize| format!("10.77.{}.0/26", i);
    let aff_name = |i: usize| format!("{}-{}", names[i - 1], block(i).replace(['.', '/'], "-"));
    let _cleanup = ApiCleanup {
        nodes: names.clone(),
        affinities: (1..=4).map(aff_name).collect(),
        namespace: ns.clone(),
    };
    let aff_api: Api<Affinity> = Api::all_with(client.clone(), &mode.resource(CalicoKind::BlockAffinity));
    let add_node = |i: usize| {
        let client = client.clone();
        let aff_api = aff_api.clone();
        let name = names[i - 1].clone();
        let cidr = format!("{net}.{i}/24");
        let blk = block(i);
        let aname = aff_name(i);
        async move {
            support::create_node(
                &client,
                &name,
                &[],
                None,
                &[],
                &[("projectcalico.org/IPv4Address", &cidr)],
            )
            .await;
            let aff: Affinity = serde_json::from_value(serde_json::json!({
                "apiVersion": mode.api_version(),
                "kind": "BlockAffinity",
                "metadata": {"name": aname},
                "spec": {"cidr": blk, "node": name, "state": "confirmed",
                          "deleted": mode.affinity_flag(false)},
            }))
            .unwrap();
            aff_api
                .create(&PostParams::default(), &aff)
                .await
                .expect("create BlockAffinity");
        }
    };

    let mut lab = Lab::new("c");
    for i in 1..=3 {
        lab.add_host(&names[i - 1], &[&format!("{net}.{i}/24")]);
        add_node(i).await;
    }
    let controller = support::bgp_lab::spawn_bgp_controller(&client, mode, &ns);
    let mut agents = Vec::new();
    let spawn_agent = |lab: &Lab, node: &str| {
        let args = agent::AgentArgs {
            node: node.to_string(),
            namespace: ns.clone(),
            config_dir: lab.config_dir(node),
            bird_socket: lab.socket(node),
            bird6_socket: None,
            no_reload: false,
            retry_secs: 1,
            ipam_socket: "none".into(),
            claim_blocks_ahead: true,
            no_bgp: false,
            status_interval: Duration::from_secs(10),
            no_status: true,
            crd_mode: tortie::cli::run::ModeArg::Auto,
            bird_template_dir: None,
        };
        tokio::spawn(agent::run_agent(client.clone(), args))
    };
    for n in &names[..3] {
        agents.push(spawn_agent(&lab, n));
    }
    // The agent installs the first config even though BIRD is not up yet (reload fails and is
    // retried); then the daemon starts on it.
    for n in &names[..3] {
        let main = lab.config_dir(n).join("bird.cfg");
        support::wait_until(&format!("{n}'s bird.cfg"), TIMEOUT, || {
            let ok = main.exists();
            async move { ok.then_some(()) }
        })
        .await;
        lab.start_bird(n);
    }
    let mine = |lab: &Lab, node: &str, peers: &[usize]| -> bool {
        let s = lab.daemon(node).bgp_sessions();
        peers.iter().all(|j| {
            let want = format!("Mesh_{}", format!("{net}.{j}").replace('.', "_"));
            s.iter().any(|(n, up)| *n == want && *up)
        })
    };
    let learned = |lab: &Lab, node: &str, blocks: &[usize]| -> bool {
        let r = lab.daemon(node).routes();
        blocks
            .iter()
            .all(|j| r.contains(&format!("{} via {net}.{j}", block(*j))))
    };
    tokio::task::block_in_place(|| {
        lab.wait_for("3-node mesh Established with blocks learned", TIMEOUT, |lab| {
            (1..=3)
                .all(|i| {
                    let others: Vec<usize> = (1..=3).filter(|j| *j != i).collect();
                    mine(lab, &names[i - 1], &others) && learned(lab, &names[i - 1], &others)
                })
                .then_some(())
        })
    });
    // Each agent reported success on its Node, with the hash of the files its published inputs
    // render to.
    let nodes: Api<Node> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for n in &names[..3] {
        support::wait_until(&format!("{n} reports Applied"), TIMEOUT, || {
            let (nodes, client, ns, n) = (nodes.clone(), client.clone(), ns.clone(), n.clone());
            async move {
                let node = nodes.get(&n).await.ok()?;
                let a = node.metadata.annotations?;
                let (_, want) = support::published_files(&client, &ns, &n).await?;
                (a.get(agent::ANN_STATUS)? == "Applied" && a.get(agent::ANN_APPLIED_HASH)? == &want)
                    .then_some(())
            }
        })
        .await;
    }

    // A fourth node joins: new Node + block in the apiserver.
    lab.add_host(&names[3], &[&format!("{net}.4/24")]);
    add_node(4).await;
    agents.push(spawn_agent(&lab, &names[3]));
    let main = lab.config_dir(&names[3]).join("bird.cfg");
    support::wait_until("the new node's bird.cfg", TIMEOUT, || {
        let ok = main.exists();
        async move { ok.then_some(()) }
    })
    .await;
    lab.start_bird(&names[3]);
    tokio::task::block_in_place(|| {
        lab.wait_for("4-node mesh with the new block everywhere", TIMEOUT, |lab| {
            (1..=4)
                .all(|i| {
                    let others: Vec<usize> = (1..=4).filter(|j| *j != i).collect();
                    mine(lab, &names[i - 1], &others) && learned(lab, &names[i - 1], &others)
                })
                .then_some(())
        })
    });

    // A global BGPPeer comes and goes; then a change that leaves every node's output alone (a
    // label no selector reads) must publish nothing and reload no BIRD.
    let peers: Api<tortie::api::BgpPeer> = Api::all_with(client.clone(), &mode.resource(CalicoKind::BGPPeer));
    let peer_name = format!("{tag}-peer");
    let peer: tortie::api::BgpPeer = serde_json::from_value(serde_json::json!({
        "apiVersion": mode.api_version(), "kind": "BGPPeer",
        "metadata": {"name": peer_name},
        "spec": {"peerIP": "192.0.2.77", "asNumber": 64999}
    }))
    .unwrap();
    peers
        .create(&PostParams::default(), &peer)
        .await
        .expect("create BGPPeer");
    let has = |lab: &Lab, n: &str| {
        lab.daemon(n)
            .birdc(&["show", "protocols"])
            .lines()
            .any(|l| l.starts_with("Global_192_0_2_77 "))
    };
    tokio::task::block_in_place(|| {
        lab.wait_for("the global peer on every node", TIMEOUT, |lab| {
            names.iter().all(|n| has(lab, n)).then_some(())
        })
    });
    peers
        .delete(&peer_name, &Default::default())
        .await
        .expect("delete BGPPeer");
    tokio::task::block_in_place(|| {
        lab.wait_for("the global peer gone everywhere", TIMEOUT, |lab| {
            names.iter().all(|n| !has(lab, n)).then_some(())
        })
    });
    let observe = |lab: &Lab| {
        let cms = cms.clone();
        let names = names.clone();
        let files: Vec<_> = names.iter().map(|n| lab.config_identity(n)).collect();
        async move {
            // Every published object: the shards and each node's own object.
            let mut rvs = Vec::new();
            let list = cms
                .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=tortie"))
                .await
                .expect("published ConfigMaps");
            for cm in list.items {
                let name = cm.metadata.name.clone().unwrap_or_default();
                if names.iter().any(|n| ctrl::object_name(n) == name) || name.starts_with("tortie-bgp-shard-")
                {
                    rvs.push((name, cm.metadata.resource_version, cm.data));
                }
            }
            assert!(
                rvs.len() > names.len(),
                "shards and own objects published: {rvs:?}"
            );
            (rvs, files)
        }
    };
    // Settled: the agents' status patches and the controller's passes after them are done, seen
    // as two observations 1.5 s apart that agree (on a loaded machine that can take longer than
    // one fixed wait).
    let settle_by = std::time::Instant::now() + TIMEOUT;
    let (cms_before, files_before) = loop {
        let first = observe(&lab).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = observe(&lab).await;
        if first == second {
            break second;
        }
        assert!(
            std::time::Instant::now() < settle_by,
            "the published objects and BIRD files never settled within {TIMEOUT:?}"
        );
    };
    support::kubectl_ok(&[
        "label",
        "node",
        &names[0],
        "tortie-e2e-unrelated=yes",
        "--overwrite",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (cms_after, files_after) = observe(&lab).await;
    for (b, a) in cms_before.iter().zip(&cms_after) {
        if b.1 != a.1 {
            let (bd, ad) = (b.2.clone().unwrap_or_default(), a.2.clone().unwrap_or_default());
            let changed: Vec<&String> = bd
                .keys()
                .chain(ad.keys())
                .filter(|k| bd.get(*k) != ad.get(*k))
                .collect();
            panic!(
                "an unrelated label republished {} (data changed: {changed:?})\nbefore: {:?}\nafter: {:?}",
                b.0,
                changed.first().and_then(|k| bd.get(*k)),
                changed.first().and_then(|k| ad.get(*k)),
            );
        }
    }
    assert_eq!(
        files_before, files_after,
        "an unrelated label made the agents rewrite BIRD's files (and reload)"
    );

    // A peer with a password: every node's files move from the ConfigMap into a Secret (and the
    // ConfigMap goes, so the agent cannot fall back to stale files); without it, back again.
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    support::kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "bgp-pw",
        "--from-literal=pw=s3cret",
    ]);
    let pw_peer_name = format!("{tag}-pw-peer");
    let pw_peer: tortie::api::BgpPeer = serde_json::from_value(serde_json::json!({
        "apiVersion": mode.api_version(), "kind": "BGPPeer",
        "metadata": {"name": pw_peer_name},
        "spec": {"peerIP": "192.0.2.78", "asNumber": 64999,
                 "password": {"secretKeyRef": {"name": "bgp-pw", "key": "pw"}}}
    }))
    .unwrap();
    peers
        .create(&PostParams::default(), &pw_peer)
        .await
        .expect("create BGPPeer with password");
    let kinds = |names: Vec<String>| {
        let (cms, secrets) = (cms.clone(), secrets.clone());
        async move {
            let mut out = Vec::new();
            for n in &names {
                let o = ctrl::object_name(n);
                out.push((
                    cms.get_opt(&o).await.unwrap().is_some(),
                    secrets.get_opt(&o).await.unwrap().is_some(),
                ));
            }
            out
        }
    };
    support::wait_until("every node's config in a Secret only", TIMEOUT, || {
        let k = kinds(names.clone());
        async move { k.await.iter().all(|(cm, s)| !cm && *s).then_some(()) }
    })
    .await;
    let has_password = |lab: &Lab, n: &str| {
        std::fs::read_dir(lab.config_dir(n)).unwrap().any(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap_or_default()
                .contains("s3cret")
        })
    };
    tokio::task::block_in_place(|| {
        lab.wait_for("the password peer on every node", TIMEOUT, |lab| {
            names.iter().all(|n| has_password(lab, n)).then_some(())
        })
    });
    peers
        .delete(&pw_peer_name, &Default::default())
        .await
        .expect("delete BGPPeer");
    support::wait_until("every node's config back in a ConfigMap only", TIMEOUT, || {
        let k = kinds(names.clone());
        async move { k.await.iter().all(|(cm, s)| *cm && !s).then_some(()) }
    })
    .await;
    tokio::task::block_in_place(|| {
        lab.wait_for("the password gone from every node's files", TIMEOUT, |lab| {
            names.iter().all(|n| !has_password(lab, n)).then_some(())
        })
    });

    controller.abort();
    for a in agents {
        a.abort();
    }
    drop(lab);
}

/// Deletes the test's cluster objects even when the test fails (Drop cannot await: kubectl).
struct ApiCleanup {
    nodes: Vec<String>,
    affinities: Vec<String>,
    namespace: String,
}

impl Drop for ApiCleanup {
    fn drop(&mut self) {
        let mut args = vec!["delete", "node", "--ignore-not-found", "--wait=false"];
        args.extend(self.nodes.iter().map(String::as_str));
        let _ = support::kubectl(&args);
        let mut args = vec!["delete", "blockaffinities", "--ignore-not-found", "--wait=false"];
        args.extend(self.affinities.iter().map(String::as_str));
        let _ = support::kubectl(&args);
        let _ = support::kubectl(&[
            "delete",
            "namespace",
            &self.namespace,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}
