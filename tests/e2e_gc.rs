//! IPAM garbage collection by `tortie run` against the real control plane: leaked addresses of
//! deleted pods reclaimed after the grace period (and live pods' addresses kept), a deleted
//! node's blocks and affinities released at once, Calico's metric names with correct values,
//! and a deleted IPPool held by its finalizer until its last allocation is gone.

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use support::*;
use tortie::api::{Affinity, Block, CalicoKind, Handle, Pool};

/// A /16 of 10.x private space per test: x is in 100..200, spread by process ID and different on
/// every call in this process (a hash of the test's name let two of the three tests pick the
/// same /16 in about 3% of runs).
fn test_net() -> u8 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(n < 100, "more than 100 test nets asked for");
    // 37 is prime to 100: n -> 37n mod 100 is one-to-one for n < 100.
    (100 + (std::process::id() % 100 + 37 * n) % 100) as u8
}

async fn apis(client: &kube::Client) -> (Api<Block>, Api<Handle>, Api<Affinity>, Api<Pool>) {
    let m = mode(client).await;
    (
        Api::all_with(client.clone(), &m.resource(CalicoKind::IPAMBlock)),
        Api::all_with(client.clone(), &m.resource(CalicoKind::IPAMHandle)),
        Api::all_with(client.clone(), &m.resource(CalicoKind::BlockAffinity)),
        Api::all_with(client.clone(), &m.resource(CalicoKind::IPPool)),
    )
}

/// "Within seconds, not at the next GC tick" (minutes): the bound the event-driven passes are
/// held to, with room for a loaded CI machine.
const SECONDS: Duration = Duration::from_secs(30);

#[tokio::test]
async fn leaked_addresses_of_deleted_pods_are_reclaimed_after_grace_and_metrics_match() {
    let client = client().await;
    let id = unique_name("gc-leak");
    let x = test_net();
    let node = unique_name("gc-node");
    create_node(&client, &node, &[], Some("192.0.2.10"), &[], &[]).await;
    let ns = unique_name("gc-ns");
    create_namespace(&client, &ns, &[]).await;
    let pool = format!("{id}-pool");
    let cidr = format!("10.{x}.0.0/24");
    apply_pool(&pool, &id, &cidr, 25, "");

    // Three live pods hold .100-.102 (two by status.podIPs, one only by Calico's annotation).
    let mut allocs: Vec<Alloc> = (0..100)
        .map(|i| Alloc::pod(i, &ns, &format!("gone-{i}"), &node))
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (i, o) in [(0, 100usize), (1, 101), (2, 102)] {
        let name = format!("live-{i}");
        let ip = format!("10.{x}.0.{o}");
        let ann = format!("{ip}/32");
        let annotations: Vec<(&str, &str)> = if i == 2 {
            vec![("cni.projectcalico.org/podIP", ann.as_str())]
        } else {
            vec![]
        };
        create_pod(&client, &ns, &name, Some(&node), &annotations).await;
        if i < 2 {
            let st = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
                .await
                .unwrap();
        }
        allocs.push(Alloc::pod(o, &ns, &name, &node));
    }
    // A fourth address names a live pod on this node that has no address yet: kept (pending pod).
    create_pod(&client, &ns, "pending", Some(&node), &[]).await;
    allocs.push(Alloc::pod(103, &ns, "pending", &node));
    let block = write_block(&client, &format!("10.{x}.0.0/25"), Some(&node), &allocs).await;
    let bname = block.metadata.name.clone().unwrap();

    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "gc,ippool",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            // Long enough that the checks below run before it ends, on a loaded CI machine too.
            "--gc-grace-period",
            "15s",
            "--gc-interval",
            "1s",
        ],
    );
    op.wait_ready().await;
    let in_use = format!("ipam_allocations_in_use{{ippool=\"{pool}\",node=\"{node}\"}}");
    let cand = format!("ipam_allocations_gc_candidates{{ippool=\"{pool}\",node=\"{node}\"}}");
    // Before the grace period: 100 candidates, nothing released yet.
    wait_until("100 GC candidates", Duration::from_secs(30), || async {
        (op.metric(&cand).await == Some(100.0)).then_some(())
    })
    .await;
    assert_eq!(op.metric(&in_use).await, Some(104.0));
    assert_eq!(
        op.metric(&format!("ipam_blocks{{ippool=\"{pool}\",node=\"{node}\"}}"))
            .await,
        Some(1.0)
    );
    assert_eq!(
        op.metric(&format!("ipam_ippool_size{{ippool=\"{pool}\"}}")).await,
        Some(256.0)
    );

    let (blocks, handles, _, pools) = apis(&client).await;
    let b = blocks.get(&bname).await.unwrap();
    assert!(
        allocated(&b) >= 100,
        "released before the grace period: {} left",
        allocated(&b)
    );

    let b = wait_until("leaks released", Duration::from_secs(60), || async {
        let b = blocks.get(&bname).await.ok()?;
        (allocated(&b) == 4).then_some(b)
    })
    .await;
    for o in 100..104 {
        assert!(
            b.spec.allocations[o].is_some(),
            "live pod address ordinal {o} was released"
        );
    }
    assert_eq!(b.spec.unallocated.len(), 124);
    assert_eq!(b.spec.attributes.len(), 4);
    // Two writes for the whole batch: one stamping the 100 leaks' first sighting (the durable
    // grace clock), one releasing them all; the sequence number moved by exactly two.
    assert_eq!(b.spec.sequence_number, Some(1_754_042_400_000_000_002));
    // Handles of the released addresses are gone, the live ones stay.
    wait_until("leaked handles removed", Duration::from_secs(30), || async {
        let left = handles.list(&ListParams::default()).await.ok()?;
        let ours: Vec<_> = left
            .items
            .iter()
            .filter(|h| h.spec.block.contains_key(&b.spec.cidr))
            .collect();
        (ours.len() == 4).then_some(())
    })
    .await;
    assert!(
        handles
            .get_opt(&format!("k8s-pod-network.{ns}.gone-0-0"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        handles
            .get_opt(&format!("k8s-pod-network.{ns}.live-0-100"))
            .await
            .unwrap()
            .is_some()
    );

    let recl = format!("ipam_allocations_gc_reclamations{{ippool=\"{pool}\",node=\"{node}\"}}");
    wait_until("metrics after GC", Duration::from_secs(30), || async {
        (op.metric(&recl).await == Some(100.0)
            && op.metric(&in_use).await == Some(4.0)
            && op.metric(&cand).await.unwrap_or(0.0) == 0.0)
            .then_some(())
    })
    .await;
    // The pool's status counts what is left. The IPPool controller writes it from its own watch of
    // the blocks, so it may trail the GC's metrics by a pass on a loaded machine.
    let counts = || async {
        let st = pools.get(&pool).await.ok()?.status?;
        Some((st.allocations, st.blocks, st.capacity))
    };
    wait_until("the pool's status after GC", Duration::from_secs(30), || async {
        (counts().await == Some((Some(4), Some(1), Some(256)))).then_some(())
    })
    .await;
    // kubectl describe tells the story: an Event on the block lists what was released and why.
    let events: Api<Event> = Api::all(client.clone());
    let evs = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={bname}")))
        .await
        .unwrap();
    let note = evs
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("LeakReleased"))
        .expect("LeakReleased event");
    assert!(
        note.message
            .as_deref()
            .unwrap()
            .contains(&format!("pod {ns}/gone-")),
        "{:?}",
        note.message
    );

    drop(op);
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
    delete_node(&client, &node).await;
}

#[tokio::test]
async fn deleted_node_blocks_affinities_and_tunnel_address_are_released_at_once() {
    let client = client().await;
    let id = unique_name("gc-node-del");
    let x = test_net();
    let node = unique_name("gc-dead");
    let keeper = unique_name("gc-keeper");
    create_node(&client, &node, &[], None, &[], &[]).await;
    create_node(&client, &keeper, &[], None, &[], &[]).await;
    let pool = format!("{id}-pool");
    apply_pool(&pool, &id, &format!("10.{x}.0.0/24"), 26, "");
    let ns = unique_name("gc-ns");
    let busy = write_block(
        &client,
        &format!("10.{x}.0.0/26"),
        Some(&node),
        &[
            Alloc::tunnel(0, &node),
            Alloc::pod(1, &ns, "p1", &node),
            Alloc::pod(2, &ns, "p2", &node),
        ],
    )
    .await;
    let empty = write_block(&client, &format!("10.{x}.0.64/26"), Some(&node), &[]).await;
    // The surviving node's single empty block is never released.
    let kept = write_block(&client, &format!("10.{x}.0.128/26"), Some(&keeper), &[]).await;

    // A long grace period: only the "node is gone" rule can release anything here.
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            "--gc-grace-period",
            "1h",
            "--gc-interval",
            "2s",
        ],
    );
    op.wait_ready().await;
    let (blocks, handles, affinities, _) = apis(&client).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        allocated(&blocks.get(busy.metadata.name.as_deref().unwrap()).await.unwrap()),
        3,
        "released while the node exists"
    );

    delete_node(&client, &node).await;
    for b in [&busy, &empty] {
        let name = b.metadata.name.clone().unwrap();
        wait_until(
            &format!("block {name} deleted"),
            Duration::from_secs(60),
            || async { blocks.get_opt(&name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
    let net: ipnet::IpNet = format!("10.{x}.0.0/26").parse().unwrap();
    let net2: ipnet::IpNet = format!("10.{x}.0.64/26").parse().unwrap();
    for n in [net, net2] {
        let a = tortie::ipam::names::affinity_name(&node, &n);
        wait_until(
            &format!("affinity {a} deleted"),
            Duration::from_secs(30),
            || async { affinities.get_opt(&a).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
    assert!(
        handles
            .get_opt(&format!("ipip-tunnel-addr-{node}"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        blocks
            .get_opt(kept.metadata.name.as_deref().unwrap())
            .await
            .unwrap()
            .is_some()
    );
    let keep_aff = tortie::ipam::names::affinity_name(&keeper, &format!("10.{x}.0.128/26").parse().unwrap());
    assert!(affinities.get_opt(&keep_aff).await.unwrap().is_some());
    drop(op);
    delete_node(&client, &keeper).await;
}

#[tokio::test]
async fn deleting_a_pool_waits_until_its_last_allocation_is_released() {
    let client = client().await;
    let id = unique_name("pool-drain");
    let x = test_net();
    let node = unique_name("drain-node");
    create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("drain-ns");
    create_namespace(&client, &ns, &[]).await;
    create_pod(&client, &ns, "web", Some(&node), &[]).await;
    let pool = format!("{id}-pool");
    apply_pool(&pool, &id, &format!("10.{x}.0.0/24"), 26, "");
    let block = write_block(
        &client,
        &format!("10.{x}.0.0/26"),
        Some(&node),
        &[Alloc::pod(5, &ns, "web", &node)],
    )
    .await;
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "ippool,gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            "--gc-grace-period",
            "1h",
        ],
    );
    op.wait_ready().await;
    let (blocks, _, affinities, pools) = apis(&client).await;
    wait_until("finalizer added", Duration::from_secs(30), || async {
        let p = pools.get(&pool).await.ok()?;
        p.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "tortie.io/ippool-drain")
            .then_some(())
    })
    .await;
    pools.delete(&pool, &DeleteParams::default()).await.unwrap();
    let msg = wait_until("Terminating condition", Duration::from_secs(30), || async {
        let p = pools.get(&pool).await.ok()?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "Terminating")?;
        Some(c.message)
    })
    .await;
    assert!(msg.contains("waiting for 1 allocation(s)"), "{msg}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pools.get_opt(&pool).await.unwrap().is_some(),
        "pool deleted with an allocation left"
    );

    // The CNI plugin releases the address (here: the block written as Calico's DEL would).
    let bname = block.metadata.name.clone().unwrap();
    let mut b = blocks.get(&bname).await.unwrap();
    b.spec.allocations[5] = None;
    b.spec.unallocated.push(5);
    b.spec.attributes.clear();
    b.spec.sequence_number = b.spec.sequence_number.map(|s| s + 1);
    blocks.replace(&bname, &Default::default(), &b).await.unwrap();
    wait_until("pool gone", Duration::from_secs(60), || async {
        pools.get_opt(&pool).await.ok()?.is_none().then_some(())
    })
    .await;
    // Its empty block and affinity went with it.
    assert!(blocks.get_opt(&bname).await.unwrap().is_none());
    let a = tortie::ipam::names::affinity_name(&node, &format!("10.{x}.0.0/26").parse().unwrap());
    assert!(affinities.get_opt(&a).await.unwrap().is_none());
    drop(op);
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
    delete_node(&client, &node).await;
}

/// A deleted pool waits only for the addresses it owns: a narrower pool nested in it keeps its
/// blocks, allocations and affinities, and the wider pool goes without waiting for them.
#[tokio::test]
async fn deleting_a_wide_pool_does_not_wait_for_a_nested_pools_addresses() {
    let client = client().await;
    let id = unique_name("pool-nest");
    let x = test_net();
    let node = unique_name("nest-node");
    create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("nest-ns");
    create_namespace(&client, &ns, &[]).await;
    create_pod(&client, &ns, "web", Some(&node), &[]).await;
    let outer = format!("{id}-outer");
    let inner = format!("{id}-inner");
    apply_pool(&outer, &id, &format!("10.{x}.0.0/16"), 26, "  disabled: true\n");
    apply_pool(&inner, &id, &format!("10.{x}.1.0/24"), 26, "");
    // The nested pool's block holds a live pod's address; the wide pool's own block is empty.
    let nested = write_block(
        &client,
        &format!("10.{x}.1.0/26"),
        Some(&node),
        &[Alloc::pod(3, &ns, "web", &node)],
    )
    .await;
    let own = write_block(&client, &format!("10.{x}.2.0/26"), Some(&node), &[]).await;
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "ippool,gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            "--gc-grace-period",
            "1h",
        ],
    );
    op.wait_ready().await;
    let (blocks, _, affinities, pools) = apis(&client).await;
    for p in [&outer, &inner] {
        wait_until(&format!("finalizer on {p}"), Duration::from_secs(30), || async {
            let p = pools.get(p).await.ok()?;
            p.metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "tortie.io/ippool-drain")
                .then_some(())
        })
        .await;
    }
    pools.delete(&outer, &DeleteParams::default()).await.unwrap();
    wait_until("the wide pool gone", Duration::from_secs(60), || async {
        pools.get_opt(&outer).await.ok()?.is_none().then_some(())
    })
    .await;
    // Its own empty block and affinity went with it; the nested pool's stayed, allocation and all.
    let own_name = own.metadata.name.clone().unwrap();
    assert!(blocks.get_opt(&own_name).await.unwrap().is_none());
    let own_aff = tortie::ipam::names::affinity_name(&node, &format!("10.{x}.2.0/26").parse().unwrap());
    assert!(affinities.get_opt(&own_aff).await.unwrap().is_none());
    let nested_name = nested.metadata.name.clone().unwrap();
    let b = blocks.get(&nested_name).await.unwrap();
    assert_eq!(allocated(&b), 1, "the nested pool's allocation was touched");
    let nested_aff = tortie::ipam::names::affinity_name(&node, &format!("10.{x}.1.0/26").parse().unwrap());
    assert!(affinities.get_opt(&nested_aff).await.unwrap().is_some());
    assert!(pools.get_opt(&inner).await.unwrap().is_some());

    // The nested pool, deleted in turn, waits for its own allocation.
    pools.delete(&inner, &DeleteParams::default()).await.unwrap();
    let msg = wait_until("Terminating condition", Duration::from_secs(30), || async {
        let p = pools.get(&inner).await.ok()?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "Terminating")?;
        Some(c.message)
    })
    .await;
    assert!(msg.contains("waiting for 1 allocation(s) in 1 block(s)"), "{msg}");
    let mut b = blocks.get(&nested_name).await.unwrap();
    b.spec.allocations[3] = None;
    b.spec.unallocated.push(3);
    b.spec.attributes.clear();
    b.spec.sequence_number = b.spec.sequence_number.map(|s| s + 1);
    blocks
        .replace(&nested_name, &Default::default(), &b)
        .await
        .unwrap();
    wait_until("the nested pool gone", Duration::from_secs(60), || async {
        pools.get_opt(&inner).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(blocks.get_opt(&nested_name).await.unwrap().is_none());
    drop(op);
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
    delete_node(&client, &node).await;
}

/// The time a leak was first seen, as the GC stamped it in the allocation's attributes.
fn leak_stamp(b: &Block, ordinal: usize) -> Option<jiff::Timestamp> {
    let ai = b.spec.allocations.get(ordinal).copied().flatten()?;
    b.spec.attributes[ai]
        .secondary
        .as_ref()?
        .get(tortie::ipam::block::LEAK_SEEN_KEY)?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_deleted_nodes_block_and_affinity_go_within_seconds_without_waiting_for_a_tick() {
    // As a new user would try it: one pod's address on a node, the pod force-deleted, the node
    // deleted. The GC interval is left at its default (minutes): only the node's deletion can
    // trigger the pass that must release the address, the block and the affinity.
    let client = client().await;
    let id = unique_name("gc-node-once");
    let x = test_net();
    let node = unique_name("gc-once");
    create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("gc-ns");
    create_namespace(&client, &ns, &[]).await;
    create_pod(&client, &ns, "web", Some(&node), &[]).await;
    apply_pool(&format!("{id}-pool"), &id, &format!("10.{x}.0.0/24"), 26, "");
    let cidr = format!("10.{x}.0.0/26");
    let block = write_block(&client, &cidr, Some(&node), &[Alloc::pod(3, &ns, "web", &node)]).await;
    let bname = block.metadata.name.clone().unwrap();
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            "--gc-grace-period",
            "15m",
        ],
    );
    op.wait_ready().await;
    wait_until("operator leads", Duration::from_secs(30), || async {
        op.is_leader().await.then_some(())
    })
    .await;
    let (blocks, handles, affinities, _) = apis(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        allocated(&blocks.get(&bname).await.unwrap()),
        1,
        "released within the grace period while its node exists"
    );
    delete_node(&client, &node).await;
    let started = std::time::Instant::now();
    wait_until("block deleted", SECONDS, || async {
        blocks.get_opt(&bname).await.ok()?.is_none().then_some(())
    })
    .await;
    let aff = tortie::ipam::names::affinity_name(&node, &cidr.parse().unwrap());
    wait_until("affinity deleted", SECONDS, || async {
        affinities.get_opt(&aff).await.ok()?.is_none().then_some(())
    })
    .await;
    // The pass writes the blocks first and the freed handles after them, so the handle may go a
    // moment after the block: within the same seconds, never left for the next tick.
    let handle = tortie::ipam::names::handle_name(&format!("k8s-pod-network.{ns}.web-3"));
    wait_until("handle deleted", SECONDS, || async {
        handles.get_opt(&handle).await.ok()?.is_none().then_some(())
    })
    .await;
    eprintln!(
        "node deleted -> block, affinity and handle gone in {:?}",
        started.elapsed()
    );
    drop(op);
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn the_grace_clock_survives_an_operator_restart() {
    let client = client().await;
    let id = unique_name("gc-restart");
    let x = test_net();
    let node = unique_name("gc-restart-node");
    create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("gc-ns");
    apply_pool(&format!("{id}-pool"), &id, &format!("10.{x}.0.0/24"), 26, "");
    let block = write_block(
        &client,
        &format!("10.{x}.0.0/26"),
        Some(&node),
        &[Alloc::pod(7, &ns, "gone", &node)],
    )
    .await;
    let bname = block.metadata.name.clone().unwrap();
    // Two empty blocks of the same live node: released after the grace period (the node keeps
    // its last block), their clock stamped on them as well.
    let mut empties = Vec::new();
    for c in [format!("10.{x}.0.64/26"), format!("10.{x}.0.128/26")] {
        empties.push(
            write_block(&client, &c, Some(&node), &[])
                .await
                .metadata
                .name
                .unwrap(),
        );
    }
    let grace = Duration::from_secs(25);
    let args = |lease: &str| -> Vec<String> {
        [
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            lease,
            "--gc-grace-period",
            "25s",
            "--gc-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let first_args = args(&format!("{id}-a"));
    let mut first = Operator::start(
        &format!("{id}-a"),
        &first_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (blocks, _, _, _) = apis(&client).await;
    // The first operator sees the leak and stamps its first sighting in the block.
    let stamp = wait_until("leak stamped", Duration::from_secs(60), || async {
        leak_stamp(&blocks.get(&bname).await.ok()?, 7)
    })
    .await;
    let mut empty_stamps = Vec::new();
    for name in &empties {
        let t = wait_until("empty block stamped", Duration::from_secs(30), || async {
            let b = blocks.get(name).await.ok()?;
            let v = b
                .metadata
                .annotations
                .as_ref()?
                .get(tortie::controllers::gc_plan::EMPTY_SINCE_ANNOTATION)?
                .clone();
            tortie::controllers::gc_plan::empty_since(&v, &b.spec)
        })
        .await;
        empty_stamps.push(t);
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    first.kill();
    // A new operator (another process, another Lease: a restart or a leader change).
    let second_args = args(&format!("{id}-b"));
    let second = Operator::start(
        &format!("{id}-b"),
        &second_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let restarted = jiff::Timestamp::now();
    wait_until("leak released", Duration::from_secs(60), || async {
        (allocated(&blocks.get(&bname).await.ok()?) == 0).then_some(())
    })
    .await;
    let released = jiff::Timestamp::now();
    let due = stamp + jiff::SignedDuration::try_from(grace).unwrap();
    for (name, t) in empties.iter().zip(&empty_stamps) {
        wait_until("empty block released", Duration::from_secs(30), || async {
            blocks.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        let gone = jiff::Timestamp::now();
        let restart_due = restarted + jiff::SignedDuration::try_from(grace).unwrap();
        assert!(
            gone >= *t + jiff::SignedDuration::try_from(grace).unwrap(),
            "{name} released at {gone}, before its grace ran out"
        );
        assert!(
            gone < restart_due - jiff::SignedDuration::from_secs(4),
            "{name} released at {gone}: its grace restarted with the operator"
        );
    }
    assert!(
        released >= due,
        "released at {released}, before the grace ran out at {due}"
    );
    let restart_due = restarted + jiff::SignedDuration::try_from(grace).unwrap();
    assert!(
        released < restart_due - jiff::SignedDuration::from_secs(4),
        "released at {released}: the grace restarted with the operator ({restart_due}), not from the first sighting ({due})"
    );
    drop(second);
    delete_node(&client, &node).await;
}

/// Counts the writes (MODIFIED and DELETED events) of the objects a watch from resourceVersion
/// `from` sees until `stop` (every write after `from`, however late the watch starts).
async fn count_writes<K>(
    api: Api<K>,
    wp: WatchParams,
    from: String,
    keep: impl Fn(&K) -> bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stop = stop;
    let mut n = 0;
    let mut stream = api.watch(&wp, &from).await.unwrap().boxed();
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(WatchEvent::Modified(o))) | Some(Ok(WatchEvent::Deleted(o))) if keep(&o) => n += 1,
                Some(_) => {}
                None => return n,
            },
            _ = stop.changed() => return n,
        }
    }
}

#[tokio::test]
async fn writes_per_block_for_a_batch_of_leaks() {
    // 50 leaked pod addresses in one block (the bench's 10,000 over 200 blocks, per block).
    let client = client().await;
    let id = unique_name("gc-writes");
    let x = test_net();
    let node = unique_name("gc-writes-node");
    create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("gc-ns");
    apply_pool(&format!("{id}-pool"), &id, &format!("10.{x}.0.0/24"), 26, "");
    let cidr = format!("10.{x}.0.0/26");
    let allocs: Vec<Alloc> = (0..50)
        .map(|i| Alloc::pod(i, &ns, &format!("gone-{i}"), &node))
        .collect();
    let block = write_block(&client, &cidr, Some(&node), &allocs).await;
    let bname = block.metadata.name.clone().unwrap();
    let (blocks, handles, _, _) = apis(&client).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Every object is written by now: count from here.
    let from = handles
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let b_count = tokio::spawn(count_writes(
        blocks.clone(),
        WatchParams::default().fields(&format!("metadata.name={bname}")),
        from.clone(),
        |_| true,
        rx.clone(),
    ));
    let ours = format!("k8s-pod-network.{ns}.");
    let h_count = tokio::spawn(count_writes(
        handles.clone(),
        WatchParams::default(),
        from,
        move |h: &Handle| h.spec.handle_id.starts_with(&ours),
        rx,
    ));
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            "--gc-grace-period",
            "6s",
            "--gc-interval",
            "1s",
        ],
    );
    wait_until("leaks released", Duration::from_secs(60), || async {
        (allocated(&blocks.get(&bname).await.ok()?) == 0).then_some(())
    })
    .await;
    let gone = format!("k8s-pod-network.{ns}.gone-");
    wait_until("handles deleted", Duration::from_secs(30), || async {
        let l = handles.list(&ListParams::default()).await.ok()?;
        (!l.items.iter().any(|h| h.spec.handle_id.starts_with(&gone))).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tx.send(true).unwrap();
    let (b, h) = (b_count.await.unwrap(), h_count.await.unwrap());
    eprintln!("GC writes for 50 leaks in one block: {b} block write(s), {h} handle write(s)");
    // The block: one write stamping the leaks' first sighting, one releasing all 50. Each
    // handle: one conditional DELETE (no mark-then-delete).
    assert_eq!(b, 2, "block writes");
    assert_eq!(h, 50, "handle writes");
    drop(op);
    delete_node(&client, &node).await;
}

#[tokio::test]
async fn a_pod_deleted_after_its_node_frees_the_nodes_block_and_affinity_at_once() {
    // The other order (the pod GC deletes a gone Node's pods after the Node): while the pod
    // exists its address is valid; its deletion must trigger the pass, not the next tick.
    let client = client().await;
    let id = unique_name("gc-pod-after");
    let x = test_net();
    let node = unique_name("gc-pod-after");
    create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("gc-ns");
    create_namespace(&client, &ns, &[]).await;
    create_pod(&client, &ns, "web", Some(&node), &[]).await;
    apply_pool(&format!("{id}-pool"), &id, &format!("10.{x}.0.0/24"), 26, "");
    let cidr = format!("10.{x}.0.0/26");
    let block = write_block(&client, &cidr, Some(&node), &[Alloc::pod(3, &ns, "web", &node)]).await;
    let bname = block.metadata.name.clone().unwrap();
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
            "--gc-grace-period",
            "15m",
        ],
    );
    op.wait_ready().await;
    wait_until("operator leads", Duration::from_secs(30), || async {
        op.is_leader().await.then_some(())
    })
    .await;
    let (blocks, _, affinities, _) = apis(&client).await;
    delete_node(&client, &node).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        allocated(&blocks.get(&bname).await.unwrap()),
        1,
        "the address of a pod that still exists was released"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_until("block deleted", SECONDS, || async {
        blocks.get_opt(&bname).await.ok()?.is_none().then_some(())
    })
    .await;
    let aff = tortie::ipam::names::affinity_name(&node, &cidr.parse().unwrap());
    wait_until("affinity deleted", SECONDS, || async {
        affinities.get_opt(&aff).await.ok()?.is_none().then_some(())
    })
    .await;
    drop(op);
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
}
