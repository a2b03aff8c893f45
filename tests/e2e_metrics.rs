//! Calico's IPAM metric set scraped from a real `tortie run` on the real control plane: every
//! series present at zero before the first allocation, then the values after real `tortie-ipam`
//! ADDs (one borrowed address included) and after the GC reclaimed a deleted pod's address; the
//! replica without the Lease exports none of them.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use support::cni::{self, pod_args};
use support::*;
use tortie::metrics::CALICO_IPAM_METRICS;

/// Every sample of `/metrics` as `name{labels}` → value.
async fn samples(op: &Operator) -> std::collections::BTreeMap<String, f64> {
    op.metrics()
        .await
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Waits until every `(series, value)` is scraped as expected, and says which ones are not.
async fn expect(op: &Operator, what: &str, want: &[(String, f64)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = samples(op).await;
        let wrong: Vec<String> = want
            .iter()
            .filter(|(s, v)| got.get(s) != Some(v))
            .map(|(s, v)| format!("{s}: want {v}, got {:?}", got.get(s)))
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {wrong:#?}\n{}",
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn calicos_ipam_metrics_from_zero_through_allocations_and_a_reclamation() {
    let client = client().await;
    let id = unique_name("metrics");
    let (a, b) = (unique_name("metrics-a"), unique_name("metrics-b"));
    for n in [&a, &b] {
        create_node(&client, n, &[], None, &[], &[]).await;
    }
    let ns = unique_name("metrics-ns");
    create_namespace(&client, &ns, &[]).await;
    // One /29 block: node a claims it and node b has to borrow from it.
    let cidr = cni::unique_cidr_in("172.16.0.0/12", 29);
    let pool = format!("{id}-pool");
    apply_pool(&pool, &id, &cidr, 29, "");

    let args = [
        "--controllers",
        "gc,ippool",
        "--pool-selector",
        &format!("tortie-test={id}"),
        "--lease-name",
        &id,
        "--gc-grace-period",
        "8s",
        "--gc-interval",
        "1s",
    ];
    let op = Operator::start(&id, &args);
    op.wait_ready().await;
    wait_until("the Lease", Duration::from_secs(60), || async {
        op.is_leader().await.then_some(())
    })
    .await;

    let pn = |m: &str, node: &str| format!("{m}{{ippool=\"{pool}\",node=\"{node}\"}}");
    let n = |m: &str, node: &str| format!("{m}{{node=\"{node}\"}}");
    let per_pool_node = [
        "ipam_allocations_in_use",
        "ipam_allocations_borrowed",
        "ipam_blocks",
        "ipam_allocations_gc_candidates",
        "ipam_allocations_gc_reclamations",
    ];
    let per_node = [
        "ipam_allocations_per_node",
        "ipam_allocations_borrowed_per_node",
        "ipam_blocks_per_node",
    ];
    // 1. Before any allocation: every series of both nodes at zero, the pool's size and reserve.
    let mut zero: Vec<(String, f64)> = Vec::new();
    for node in [&a, &b] {
        zero.extend(per_pool_node.iter().map(|m| (pn(m, node), 0.0)));
        zero.extend(per_node.iter().map(|m| (n(m, node), 0.0)));
    }
    zero.push((format!("ipam_ippool_size{{ippool=\"{pool}\"}}"), 8.0));
    zero.push((format!("ipam_ippool_reserved{{ippool=\"{pool}\"}}"), 0.0));
    expect(&op, "every series at zero before any allocation", &zero).await;
    let text = op.metrics().await;
    for m in CALICO_IPAM_METRICS {
        let ty = if m == "ipam_allocations_gc_reclamations" {
            "counter"
        } else {
            "gauge"
        };
        assert!(text.contains(&format!("# TYPE {m} {ty}\n")), "{m} {ty}:\n{text}");
    }
    assert!(!text.contains("reclamations_total"), "{text}");

    // 2. Real ADDs: three pods on a (its block), one on b (borrowed from a's block).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (i, node) in [(0, &a), (1, &a), (2, &a), (3, &b)] {
        let pod = format!("p{i}");
        create_pod(&client, &ns, &pod, Some(node), &[]).await;
        let out = cni::ipam(
            "ADD",
            &format!("{id}-c{i}"),
            &pod_args(&ns, &pod),
            &cni::conf(node, &json!({"ipv4_pools": [&cidr]})),
        )
        .await;
        out.ip();
    }
    expect(
        &op,
        "after four allocations",
        &[
            (pn("ipam_allocations_in_use", &a), 3.0),
            (pn("ipam_allocations_in_use", &b), 1.0),
            (pn("ipam_allocations_borrowed", &a), 0.0),
            (pn("ipam_allocations_borrowed", &b), 1.0),
            (pn("ipam_blocks", &a), 1.0),
            (pn("ipam_blocks", &b), 0.0),
            (pn("ipam_allocations_gc_candidates", &a), 0.0),
            (n("ipam_allocations_per_node", &a), 3.0),
            (n("ipam_allocations_per_node", &b), 1.0),
            (n("ipam_allocations_borrowed_per_node", &a), 0.0),
            (n("ipam_allocations_borrowed_per_node", &b), 1.0),
            (n("ipam_blocks_per_node", &a), 1.0),
            (n("ipam_blocks_per_node", &b), 0.0),
        ],
    )
    .await;

    // 3. A pod deleted without a CNI DEL leaks its address: a candidate, then reclaimed.
    pods.delete("p0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    expect(
        &op,
        "the leak seen",
        &[(pn("ipam_allocations_gc_candidates", &a), 1.0)],
    )
    .await;
    expect(
        &op,
        "the leak reclaimed",
        &[
            (pn("ipam_allocations_gc_reclamations", &a), 1.0),
            (pn("ipam_allocations_gc_reclamations", &b), 0.0),
            (pn("ipam_allocations_gc_candidates", &a), 0.0),
            (pn("ipam_allocations_in_use", &a), 2.0),
            (pn("ipam_allocations_in_use", &b), 1.0),
            (pn("ipam_allocations_borrowed", &b), 1.0),
            (n("ipam_allocations_per_node", &a), 2.0),
            (pn("ipam_blocks", &a), 1.0),
        ],
    )
    .await;

    // 4. A second replica waits for the Lease and exports no IPAM series: Prometheus scrapes
    // both, and sums over them must count each address once.
    let follower = Operator::start(&format!("{id}-2"), &args);
    follower.wait_ready().await;
    let text = follower.metrics().await;
    assert!(text.contains("tortie_leader 0"), "{text}");
    assert!(
        !text.contains("ipam_"),
        "the follower exports IPAM series:\n{text}"
    );
    assert_eq!(
        samples(&op).await.get(&pn("ipam_allocations_in_use", &a)),
        Some(&2.0)
    );
}

/// `--bind-address` lists the only addresses the HTTP port opens: here two loopback addresses
/// answer while a third one, which 0.0.0.0 would serve, is refused.
#[tokio::test]
async fn the_metrics_port_listens_only_on_the_bind_addresses() {
    let id = unique_name("metrics-bind");
    // Operator::start binds 127.0.0.1; the flag given again adds 127.0.0.2.
    let op = Operator::start(
        &id,
        &[
            "--bind-address",
            "127.0.0.2",
            "--controllers",
            "ippool",
            "--lease-name",
            &id,
        ],
    );
    op.wait_ready().await;
    let connects = |ip: &str| std::net::TcpStream::connect((ip, op.port)).is_ok();
    assert!(connects("127.0.0.1") && connects("127.0.0.2"));
    assert!(
        !connects("127.0.0.3"),
        "the port is open on an address it was not given"
    );
}
