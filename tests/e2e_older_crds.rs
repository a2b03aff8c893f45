//! tortie against an older Calico CRD set, without the BGPFilter and IPReservation kinds: this
//! binary starts a control plane of its own with every CRD of `crds/v1` but those two. The BGP
//! controller publishes every node's configuration (BGPFilters count as none, told once in a
//! warning) and picks the kind up once its CRD is installed; the IPAM engine starts at once and
//! allocates (no reservations).

mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tortie::api::CrdMode;
use tortie::ipam::{Attrs, AutoAssignRequest, Ipam};

const TIMEOUT: Duration = Duration::from_secs(90);
const MISSING: [&str; 2] = ["bgpfilters", "ipreservations"];

/// Before the first use of the cluster: a directory with `crds/v1` less the two kinds, named in
/// `TORTIE_E2E_CRDS`, and no cluster to attach to (every other binary's has all the kinds).
fn older_crds() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = support::repo_dir()
            .join("e2e/.run")
            .join(format!("older-crds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(support::repo_dir().join("crds/v1")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if MISSING.iter().any(|m| name.contains(&format!("_{m}."))) {
                continue;
            }
            std::fs::copy(&p, dir.join(&name)).unwrap();
        }
        // SAFETY: set once, before this binary's cluster exists and before any test reads the
        // environment (every test comes through here first, and the OnceLock holds the others).
        unsafe {
            std::env::set_var("TORTIE_E2E_CRDS", &dir);
            std::env::remove_var("TORTIE_E2E_KUBECONFIG");
            std::env::remove_var("KUBECONFIG");
        }
        let c = support::cluster();
        assert!(c.crd_errors.is_empty(), "{:?}", c.crd_errors);
        dir
    })
}

fn served(plural: &str) -> bool {
    support::kubectl(&["get", &format!("{plural}.crd.projectcalico.org")])
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_publishes_and_ipam_allocates_without_bgpfilters_and_ipreservations() {
    older_crds();
    for m in MISSING {
        assert!(!served(m), "{m} is served: this cluster must lack it");
    }
    let client = support::client().await;

    // IPAM: the engine starts at once (no 30 s wait for a kind that is not there) and allocates.
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: older-pool\nspec:\n  cidr: 10.77.0.0/24\n  blockSize: 26\n  ipipMode: Never\n  vxlanMode: Never\n",
    );
    let node = support::unique_name("older-n");
    support::create_node(
        &client,
        &node,
        &[],
        None,
        &[],
        &[("projectcalico.org/IPv4Address", "172.31.77.1/24")],
    )
    .await;
    let t = Instant::now();
    let ipam = Ipam::new(client.clone(), CrdMode::V1)
        .await
        .expect("the IPAM engine starts without the IPReservation kind");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "Ipam::new took {:?}",
        t.elapsed()
    );
    assert!(ipam.reserved().is_empty());
    let mut r = AutoAssignRequest::new("older-crds-handle", &node);
    r.attrs = Attrs::default().with(Attrs::NODE, &node).with("type", "e2e");
    r.num_v4 = 1;
    let got = ipam.auto_assign(r).await.expect("allocates");
    assert!(got.is_complete(), "{got:?}");
    assert!(
        "10.77.0.0/24"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&got.v4.ips[0].addr()),
        "{got:?}"
    );

    let block = got.v4.ips[0].trunc().to_string();

    // BGP: the controller publishes the node's configuration, with its block's route.
    let ns = support::unique_name("older-bgp");
    support::create_namespace(&client, &ns, &[]).await;
    let controller = support::bgp_lab::spawn_bgp_controller(&client, CrdMode::V1, &ns);
    let files = support::wait_until("the node's published BIRD files", TIMEOUT, || {
        let (client, ns, node, block) = (client.clone(), ns.clone(), node.clone(), block.clone());
        async move {
            let (files, _) = support::published_files(&client, &ns, &node).await?;
            files.values().any(|f| f.contains(&block)).then_some(files)
        }
    })
    .await;
    assert!(files.contains_key("bird.cfg"), "{:?}", files.keys());

    // The kind installed later is read without a restart: a peer's filter reaches BIRD.
    support::install_crds(support::repo_dir().join("crds/v1"));
    assert!(served("bgpfilters"));
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPFilter\nmetadata:\n  name: older-filter\nspec:\n  exportV4:\n  - action: Reject\n    matchOperator: In\n    cidr: 10.77.0.0/24\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata:\n  name: older-peer\nspec:\n  node: {node}\n  peerIP: 172.31.77.254\n  asNumber: 64999\n  filters: [older-filter]\n"
        ),
    );
    support::wait_until("the BGPFilter in the node's BIRD files", TIMEOUT, || {
        let (client, ns, node) = (client.clone(), ns.clone(), node.clone());
        async move {
            let (files, _) = support::published_files(&client, &ns, &node).await?;
            files
                .values()
                .any(|f| f.contains("older-filter") || f.contains("older_filter"))
                .then_some(())
        }
    })
    .await;
    controller.abort();
}
