use super::*;
use proptest::prelude::*;

fn attr(handle: &str, pairs: &[(&str, &str)]) -> AllocationAttribute {
    AllocationAttribute {
        handle_id: Some(handle.into()),
        secondary: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A /29 at 10.0.0.0 affine to `host` with pod allocations at the given ordinals.
fn block(host: Option<&str>, pods: &[(usize, &str, &str)]) -> IPAMBlockSpec {
    let mut b = IPAMBlockSpec {
        cidr: "10.0.0.0/29".into(),
        affinity: host.map(|h| format!("host:{h}")),
        allocations: vec![None; 8],
        unallocated: vec![],
        sequence_number: Some(100),
        sequence_number_for_allocation: Some(BTreeMap::new()),
        ..Default::default()
    };
    for (o, pod, node) in pods {
        b.attributes.push(attr(
            &format!("k8s-pod-network.{pod}"),
            &[
                ("namespace", "ns"),
                ("pod", pod),
                ("node", node),
                ("timestamp", "2026-01-01 00:00:00.5 +0000 UTC"),
            ],
        ));
        b.allocations[*o] = Some(b.attributes.len() - 1);
        b.sequence_number_for_allocation
            .as_mut()
            .unwrap()
            .insert(o.to_string(), 50 + *o as u64);
    }
    b.unallocated = (0..8).filter(|o| b.allocations[*o].is_none()).collect();
    b
}

fn world<'a>(blocks: &'a [(String, IPAMBlockSpec)], nodes: &[&str], pods: &[(&str, PodInfo)]) -> World<'a> {
    World {
        blocks: blocks
            .iter()
            .map(|(n, s)| BlockIn {
                name: n,
                spec: s,
                empty_since: None,
            })
            .collect(),
        affinities: vec![],
        handles: vec![],
        nodes: nodes
            .iter()
            .map(|n| (n.to_string(), Some("2025-01-01T00:00:00Z".parse().unwrap())))
            .collect(),
        pods: std::borrow::Cow::Owned(
            pods.iter()
                .map(|(n, p)| (("ns".to_string(), n.to_string()), p.clone()))
                .collect(),
        ),
        pools: vec![crate::ipam::usage::PoolRef {
            name: "pool".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            block_size: 26,
        }],
    }
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// No address is freed (blocks may still be written to stamp new leaks).
fn nothing_freed(p: &GcPlan) -> bool {
    p.releases.iter().all(|r| r.guards.is_empty())
}

const GRACE: SignedDuration = SignedDuration::from_secs(900);

#[test]
fn go_time_parses() {
    assert_eq!(
        parse_go_time("2026-08-01 10:00:05.123456789 +0000 UTC"),
        Some(t("2026-08-01T10:00:05.123456789Z"))
    );
    assert_eq!(parse_go_time("garbage"), None);
}

#[test]
fn leak_of_deleted_pod_waits_for_grace() {
    let blocks = vec![(
        "b".to_string(),
        block(Some("n1"), &[(0, "gone", "n1"), (1, "alive", "n1")]),
    )];
    let alive = PodInfo {
        node: Some("n1".into()),
        ips: vec!["10.0.0.1".parse().unwrap()],
        ..Default::default()
    };
    let w = world(&blocks, &["n1"], &[("alive", alive)]);
    let mut st = GcState::default();
    let p = plan(&w, &mut st, t("2026-01-01T01:00:00Z"), GRACE);
    assert!(nothing_freed(&p), "{p:?}");
    // The first sighting is stamped in the block (the durable grace clock).
    assert_eq!(p.releases[0].marks.len(), 1);
    assert_eq!(p.candidates.get(&("pool".into(), "n1".into())), Some(&1));
    let p = plan(&w, &mut st, t("2026-01-01T01:14:00Z"), GRACE);
    assert!(nothing_freed(&p), "{p:?}");
    let p = plan(&w, &mut st, t("2026-01-01T01:15:00Z"), GRACE);
    assert_eq!(p.releases.len(), 1);
    let g = &p.releases[0].guards;
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].ordinal, g[0].seq, g[0].ip),
        (0, Some(50), "10.0.0.0".parse().unwrap())
    );
    assert!(g[0].why.contains("no longer exists"));
}

#[test]
fn next_due_is_the_earliest_timer_still_running_at_the_plan() {
    let blocks = vec![(
        "b".to_string(),
        block(Some("n1"), &[(0, "gone-1", "n1"), (1, "gone-2", "n1")]),
    )];
    let w = world(&blocks, &["n1"], &[]);
    let mut st = GcState::default();
    assert_eq!(st.next_due(GRACE), None);
    plan(&w, &mut st, t("2026-01-01T01:00:00Z"), GRACE);
    assert_eq!(st.next_due(GRACE), Some(t("2026-01-01T01:15:00Z")));
    // Grace zero disables the timers.
    assert_eq!(st.next_due(SignedDuration::ZERO), None);
    // A pass a moment before the grace ran out releases nothing, yet still owes the pass at it.
    let p = plan(&w, &mut st, t("2026-01-01T01:14:59.999Z"), GRACE);
    assert!(nothing_freed(&p), "{p:?}");
    assert_eq!(st.next_due(GRACE), Some(t("2026-01-01T01:15:00Z")));
    // Once released, nothing is due.
    let p = plan(&w, &mut st, t("2026-01-01T01:15:00Z"), GRACE);
    assert_eq!(p.releases.len(), 1);
    assert_eq!(st.next_due(GRACE), None);
}

#[test]
fn deleted_node_is_immediate_and_its_empty_blocks_go() {
    let blocks = vec![
        ("b".to_string(), block(Some("n1"), &[(0, "gone", "n1")])),
        (
            "e".to_string(),
            IPAMBlockSpec {
                cidr: "10.0.0.8/29".into(),
                affinity: Some("host:n1".into()),
                allocations: vec![None; 8],
                ..Default::default()
            },
        ),
    ];
    let mut w = world(&blocks, &[], &[]);
    w.affinities = vec![
        AffinityIn {
            name: "n1-10-0-0-8-29",
            node: "n1",
            cidr: "10.0.0.8/29",
            host_type: true,
            deleted: false,
        },
        AffinityIn {
            name: "n1-10-0-0-16-29",
            node: "n1",
            cidr: "10.0.0.16/29",
            host_type: true,
            deleted: false,
        },
    ];
    let p = plan(&w, &mut GcState::default(), t("2026-01-01T01:00:00Z"), GRACE);
    assert_eq!(p.releases[0].guards.len(), 1);
    assert_eq!(p.empty_blocks.len(), 1);
    assert_eq!(p.empty_blocks[0].block, "e");
    assert_eq!(
        p.stale_affinities,
        vec![StaleAffinity {
            name: "n1-10-0-0-16-29".into(),
            node: "n1".into(),
            cidr: "10.0.0.16/29".into()
        }]
    );
    // The busy block's host is gone: the write that empties it releases it at once.
    assert_eq!(p.releases[0].host_gone.as_deref(), Some("n1"));
    assert!(
        p.releases[0].marks.is_empty(),
        "a deleted node's leaks need no grace clock"
    );
}

#[test]
fn live_pod_address_is_never_released() {
    // The allocation says node n1 and pod "old", which is gone; but a live pod shows the address.
    let blocks = vec![("b".to_string(), block(Some("n1"), &[(2, "old", "n1")]))];
    let other = PodInfo {
        node: Some("n2".into()),
        ips: vec!["10.0.0.2".parse().unwrap()],
        ..Default::default()
    };
    let w = world(&blocks, &[], &[("other", other)]);
    let p = plan(&w, &mut GcState::default(), t("2026-01-01T01:00:00Z"), GRACE);
    assert!(p.releases.is_empty(), "{p:?}");
    assert!(p.candidates.is_empty());
}

#[test]
fn moved_recreated_and_pending_pods() {
    let blocks = vec![(
        "b".to_string(),
        block(
            Some("n1"),
            &[(0, "moved", "n1"), (1, "recreated", "n1"), (2, "pending", "n1")],
        ),
    )];
    let moved = PodInfo {
        node: Some("n2".into()),
        ..Default::default()
    };
    let recreated = PodInfo {
        node: Some("n1".into()),
        created: Some(t("2026-01-01T00:10:00Z")),
        ..Default::default()
    };
    let pending = PodInfo {
        node: Some("n1".into()),
        created: Some(t("2026-01-01T00:00:00Z")),
        ..Default::default()
    };
    let w = world(
        &blocks,
        &["n1", "n2"],
        &[("moved", moved), ("recreated", recreated), ("pending", pending)],
    );
    let mut st = GcState::default();
    plan(&w, &mut st, t("2026-01-01T01:00:00Z"), GRACE);
    let p = plan(&w, &mut st, t("2026-01-01T02:00:00Z"), GRACE);
    let ords: Vec<usize> = p.releases[0].guards.iter().map(|g| g.ordinal).collect();
    assert_eq!(ords, vec![0, 1]);
}

#[test]
fn handle_is_all_or_nothing() {
    let mut b = block(Some("n1"), &[(0, "gone", "n1")]);
    // A second address on the same handle whose pod attributes point to a live pod that holds it.
    b.attributes.push(attr(
        "k8s-pod-network.gone",
        &[("namespace", "ns"), ("pod", "live"), ("node", "n1")],
    ));
    b.allocations[1] = Some(1);
    let blocks = vec![("b".to_string(), b)];
    let live = PodInfo {
        node: Some("n1".into()),
        ips: vec!["10.0.0.1".parse().unwrap()],
        ..Default::default()
    };
    let w = world(&blocks, &[], &[("live", live)]);
    let p = plan(&w, &mut GcState::default(), t("2026-01-01T01:00:00Z"), GRACE);
    assert!(nothing_freed(&p), "{p:?}");
}

#[test]
fn empty_blocks_of_live_node_keep_the_last_one() {
    let mk = |c: &str| IPAMBlockSpec {
        cidr: c.into(),
        affinity: Some("host:n1".into()),
        allocations: vec![None; 8],
        ..Default::default()
    };
    let blocks = vec![
        ("a".to_string(), mk("10.0.0.0/29")),
        ("b".to_string(), mk("10.0.0.8/29")),
        ("c".to_string(), mk("10.0.0.16/29")),
    ];
    let w = world(&blocks, &["n1"], &[]);
    let mut st = GcState::default();
    assert!(
        plan(&w, &mut st, t("2026-01-01T01:00:00Z"), GRACE)
            .empty_blocks
            .is_empty()
    );
    let p = plan(&w, &mut st, t("2026-01-01T01:20:00Z"), GRACE);
    assert_eq!(p.empty_blocks.len(), 2);
    // Grace zero disables it, as in Calico.
    let mut st = GcState::default();
    plan(&w, &mut st, t("2026-01-01T01:00:00Z"), SignedDuration::ZERO);
    assert!(
        plan(&w, &mut st, t("2026-01-01T09:00:00Z"), SignedDuration::ZERO)
            .empty_blocks
            .is_empty()
    );
}

#[test]
fn orphan_handles_after_grace() {
    let blocks = vec![("b".to_string(), block(Some("n1"), &[(0, "p", "n1")]))];
    let mut w = world(
        &blocks,
        &["n1"],
        &[(
            "p",
            PodInfo {
                node: Some("n1".into()),
                ips: vec!["10.0.0.0".parse().unwrap()],
                ..Default::default()
            },
        )],
    );
    w.handles = vec![
        HandleIn {
            name: "k8s-pod-network.p",
            handle_id: "k8s-pod-network.p",
            deleted: false,
        },
        HandleIn {
            name: "k8s-pod-network.x",
            handle_id: "k8s-pod-network.X",
            deleted: false,
        },
        // A case variant of a referenced ID is another handle (issue 15): orphaned too.
        HandleIn {
            name: "k8s-pod-network.p-0123456789abcdef",
            handle_id: "k8s-pod-network.P",
            deleted: false,
        },
    ];
    let mut st = GcState::default();
    assert!(
        plan(&w, &mut st, t("2026-01-01T01:00:00Z"), GRACE)
            .orphan_handles
            .is_empty()
    );
    let p = plan(&w, &mut st, t("2026-01-01T01:15:00Z"), GRACE);
    assert_eq!(
        p.orphan_handles,
        vec![
            "k8s-pod-network.x".to_string(),
            "k8s-pod-network.p-0123456789abcdef".to_string()
        ]
    );
}

/// The shell's write for a plan: the engine's pure edit applied to the block, as one write.
fn write(b: &mut IPAMBlockSpec, r: &BlockRelease, stamp: &str) -> Vec<usize> {
    let (freed, changed) = crate::ipam::block::apply_gc_edit(b, &r.edit(&r.guards, stamp));
    if changed {
        crate::ipam::block::prepare_write(b);
    }
    freed
}

#[test]
fn release_checks_guards_and_compacts() {
    let mut b = block(Some("n1"), &[(0, "a", "n1"), (1, "b", "n1"), (2, "c", "n1")]);
    let g = |o: usize, h: &str, seq: u64| Guard {
        ordinal: o,
        handle: h.into(),
        seq: Some(seq),
        ip: "10.0.0.0".parse().unwrap(),
        node: "n1".into(),
        pod: None,
        why: String::new(),
    };
    // Ordinal 1 was re-allocated (other sequence number): kept.
    let r = BlockRelease {
        block: "b".into(),
        cidr: b.cidr.clone(),
        pool: "pool".into(),
        guards: vec![g(0, "k8s-pod-network.a", 50), g(1, "k8s-pod-network.b", 99)],
        marks: vec![],
        unmarks: vec![],
        host_gone: None,
    };
    let freed = write(&mut b, &r, "");
    assert_eq!(freed.len(), 1);
    assert_eq!(b.allocations[..3], [None, Some(0), Some(1)]);
    assert_eq!(b.attributes.len(), 2);
    assert_eq!(b.attributes[0].handle_id.as_deref(), Some("k8s-pod-network.b"));
    assert_eq!(*b.unallocated.last().unwrap(), 0);
    assert_eq!(b.sequence_number, Some(101));
    assert!(!is_empty(&b));
}

#[test]
fn grace_clock_survives_a_restart_through_the_stamp() {
    let mut blocks = vec![(
        "b".to_string(),
        block(Some("n1"), &[(0, "gone", "n1"), (1, "alive", "n1")]),
    )];
    let alive = PodInfo {
        node: Some("n1".into()),
        ips: vec!["10.0.0.1".parse().unwrap()],
        ..Default::default()
    };
    let pods = [("alive", alive.clone())];
    // First sighting at 01:00: the plan stamps the leak (and only it) in the same block write.
    let p = plan(
        &world(&blocks, &["n1"], &pods),
        &mut GcState::default(),
        t("2026-01-01T01:00:00Z"),
        GRACE,
    );
    assert_eq!(p.releases.len(), 1);
    let r = &p.releases[0];
    assert!(r.guards.is_empty() && r.unmarks.is_empty());
    assert_eq!(r.marks.iter().map(|g| g.ordinal).collect::<Vec<_>>(), [0]);
    let r = r.clone();
    assert!(write(&mut blocks[0].1, &r, &t("2026-01-01T01:00:00Z").to_string()).is_empty());
    // A new process (empty memory) at 01:10: the stamp says 10 min, not 0: no new stamp, no release.
    let p = plan(
        &world(&blocks, &["n1"], &pods),
        &mut GcState::default(),
        t("2026-01-01T01:10:00Z"),
        GRACE,
    );
    assert!(p.releases.is_empty(), "{p:?}");
    let mut st = GcState::default();
    plan(
        &world(&blocks, &["n1"], &pods),
        &mut st,
        t("2026-01-01T01:10:00Z"),
        GRACE,
    );
    assert_eq!(st.next_due(GRACE), Some(t("2026-01-01T01:15:00Z")));
    // Another new process at 01:15 releases it: grace counted from the first sighting.
    let p = plan(
        &world(&blocks, &["n1"], &pods),
        &mut GcState::default(),
        t("2026-01-01T01:15:00Z"),
        GRACE,
    );
    assert_eq!(p.releases.len(), 1);
    assert_eq!(
        p.releases[0].guards.iter().map(|g| g.ordinal).collect::<Vec<_>>(),
        [0]
    );
    // A stamp from a clock ahead of ours counts from now, never earlier.
    let mut ahead = blocks.clone();
    let ai = ahead[0].1.allocations[0].unwrap();
    ahead[0].1.attributes[ai]
        .secondary
        .as_mut()
        .unwrap()
        .insert(LEAK_SEEN_KEY.into(), "2026-01-01T05:00:00Z".into());
    let mut st = GcState::default();
    assert!(
        plan(
            &world(&ahead, &["n1"], &pods),
            &mut st,
            t("2026-01-01T01:15:00Z"),
            GRACE
        )
        .releases
        .is_empty()
    );
    assert_eq!(st.next_due(GRACE), Some(t("2026-01-01T01:30:00Z")));
}

#[test]
fn a_stamped_allocation_that_is_valid_again_is_cleared() {
    let mut b = block(Some("n1"), &[(0, "back", "n1")]);
    b.attributes[0]
        .secondary
        .as_mut()
        .unwrap()
        .insert(LEAK_SEEN_KEY.into(), "2026-01-01T00:00:00Z".into());
    let mut blocks = vec![("b".to_string(), b)];
    let back = PodInfo {
        node: Some("n1".into()),
        ips: vec!["10.0.0.0".parse().unwrap()],
        ..Default::default()
    };
    let pods = [("back", back)];
    let p = plan(
        &world(&blocks, &["n1"], &pods),
        &mut GcState::default(),
        t("2026-01-01T01:00:00Z"),
        GRACE,
    );
    assert_eq!(p.releases.len(), 1);
    let r = p.releases[0].clone();
    assert!(r.guards.is_empty() && r.marks.is_empty());
    assert_eq!(r.unmarks.len(), 1);
    write(&mut blocks[0].1, &r, "x");
    assert!(
        !blocks[0].1.attributes[0]
            .secondary
            .as_ref()
            .unwrap()
            .contains_key(LEAK_SEEN_KEY)
    );
    // Nothing left to do: no write at all.
    let p = plan(
        &world(&blocks, &["n1"], &pods),
        &mut GcState::default(),
        t("2026-01-01T01:00:00Z"),
        GRACE,
    );
    assert!(p.releases.is_empty(), "{p:?}");
    // A shared entry with one leaked address of the handle is not cleared (it would flip).
    let mut b = block(Some("n1"), &[(0, "back", "n1")]);
    b.allocations[1] = Some(0);
    b.sequence_number_for_allocation
        .as_mut()
        .unwrap()
        .insert("1".into(), 51);
    b.unallocated.retain(|o| *o != 1);
    b.attributes[0]
        .secondary
        .as_mut()
        .unwrap()
        .insert(LEAK_SEEN_KEY.into(), "2026-01-01T00:00:00Z".into());
    let blocks = vec![("b".to_string(), b)];
    let p = plan(
        &world(&blocks, &["n1"], &pods),
        &mut GcState::default(),
        t("2026-01-01T01:00:00Z"),
        GRACE,
    );
    assert!(
        p.releases
            .iter()
            .all(|r| r.unmarks.is_empty() && r.marks.is_empty()),
        "{p:?}"
    );
}

proptest! {
    /// Whatever is released, the block stays consistent (calicoctl ipam check's block rules) and
    /// only guarded ordinals whose handle and sequence number still match are freed.
    #[test]
    fn release_keeps_block_invariants(alloc in proptest::collection::vec(proptest::option::of(0usize..4), 8), pick in proptest::collection::vec((0usize..8, any::<bool>()), 0..10)) {
        let mut b = IPAMBlockSpec { cidr: "10.0.0.0/29".into(), allocations: vec![None; 8], sequence_number_for_allocation: Some(BTreeMap::new()), ..Default::default() };
        for h in 0..4 { b.attributes.push(attr(&format!("h{h}"), &[])); }
        for (o, a) in alloc.iter().enumerate() {
            b.allocations[o] = *a;
            if a.is_some() { b.sequence_number_for_allocation.as_mut().unwrap().insert(o.to_string(), o as u64); }
        }
        // Drop unreferenced attributes first so the input is valid (a release of nothing does it).
        crate::ipam::block::release(&mut b, &[]);
        b.unallocated = (0..8).filter(|o| b.allocations[*o].is_none()).collect();
        let before = b.clone();
        let guards: Vec<Guard> = pick.iter().filter_map(|(o, good)| {
            let a = before.allocations[*o]?;
            let h = alloc[*o].map(|x| format!("h{x}"))?;
            let _ = a;
            Some(Guard { ordinal: *o, handle: h, seq: Some(if *good { *o as u64 } else { 999 }), ip: "10.0.0.0".parse().unwrap(), node: String::new(), pod: None, why: String::new() })
        }).collect();
        let r = BlockRelease { block: "b".into(), cidr: b.cidr.clone(), pool: String::new(), guards, marks: vec![], unmarks: vec![], host_gone: None };
        let freed = write(&mut b, &r, "");
        for o in &freed { prop_assert!(r.guards.iter().any(|g| g.ordinal == *o && g.seq == Some(*o as u64))); }
        let allocated = b.allocations.iter().filter(|a| a.is_some()).count();
        prop_assert_eq!(allocated + b.unallocated.len(), 8);
        for (i, _) in b.attributes.iter().enumerate() { prop_assert!(b.allocations.contains(&Some(i))); }
        for o in 0..8 {
            let was = before.allocations[o].map(|a| before.attributes[a].handle_id.clone());
            let now = b.allocations[o].map(|a| b.attributes[a].handle_id.clone());
            if freed.contains(&o) { prop_assert!(now.is_none()); } else { prop_assert_eq!(was, now); }
        }
    }
}

#[test]
fn empty_block_clock_is_stamped_and_survives_a_restart() {
    let mk = |c: &str| IPAMBlockSpec {
        cidr: c.into(),
        affinity: Some("host:n1".into()),
        allocations: vec![None; 8],
        sequence_number: Some(7),
        ..Default::default()
    };
    let blocks = vec![
        ("a".to_string(), mk("10.0.0.0/29")),
        ("b".to_string(), mk("10.0.0.8/29")),
    ];
    let with = |ann: Option<&'static str>| -> World<'_> {
        let mut w = world(&blocks, &["n1"], &[]);
        for b in &mut w.blocks {
            b.empty_since = ann;
        }
        w
    };
    // First sighting: both stamped (the node has two blocks), none released.
    let p = plan(
        &with(None),
        &mut GcState::default(),
        t("2026-01-01T01:00:00Z"),
        GRACE,
    );
    assert!(p.empty_blocks.is_empty());
    assert_eq!(p.stamp_empty, ["10.0.0.0/29", "10.0.0.8/29"]);
    // The stamping write leaves sequenceNumber 8: the value names it.
    let v = empty_since_value(t("2026-01-01T01:00:00Z"), &blocks[0].1);
    assert_eq!(v, "2026-01-01T01:00:00Z 8");
    assert_eq!(
        empty_since(&v, &blocks[0].1),
        None,
        "not valid before its own write"
    );
    // After the write (sequence 8), a new process at 01:15 releases one of the two at once.
    let written: Vec<(String, IPAMBlockSpec)> = blocks
        .iter()
        .map(|(n, s)| {
            let mut s = s.clone();
            s.sequence_number = Some(8);
            (n.clone(), s)
        })
        .collect();
    let mut w = world(&written, &["n1"], &[]);
    for b in &mut w.blocks {
        b.empty_since = Some("2026-01-01T01:00:00Z 8");
    }
    let p = plan(&w, &mut GcState::default(), t("2026-01-01T01:15:00Z"), GRACE);
    assert!(p.stamp_empty.is_empty());
    assert_eq!(p.empty_blocks.len(), 1);
    // A block written since (another sequence number): the stamp is stale, stamped again.
    let p = plan(
        &with(Some("2026-01-01T01:00:00Z 8")),
        &mut GcState::default(),
        t("2026-01-01T01:15:00Z"),
        GRACE,
    );
    assert!(p.empty_blocks.is_empty());
    assert_eq!(p.stamp_empty.len(), 2);
    // A node's only block is never released, so never stamped.
    let one = vec![("a".to_string(), mk("10.0.0.0/29"))];
    let p = plan(
        &world(&one, &["n1"], &[]),
        &mut GcState::default(),
        t("2026-01-01T01:00:00Z"),
        GRACE,
    );
    assert!(p.stamp_empty.is_empty());
}

fn some_guard(ordinal: usize, handle: &str) -> Guard {
    Guard {
        ordinal,
        handle: handle.into(),
        seq: None,
        ip: "10.0.0.1".parse().unwrap(),
        node: "a".into(),
        pod: None,
        why: "test".into(),
    }
}

#[test]
fn a_walk_releases_a_handle_only_when_nothing_holds_it_and_unmarks_only_clean_entries() {
    let mut w = Walk::default();
    // Handle h1: confirmed in blocks 0 and 1, nothing holds it: both released.
    w.confirmed
        .insert("h1", vec![(0, some_guard(1, "h1")), (1, some_guard(2, "h1"))]);
    // Handle h2: confirmed in block 0 but still held elsewhere (a live address): kept.
    w.confirmed.insert("h2", vec![(0, some_guard(3, "h2"))]);
    w.held.insert("h2");
    // Block 2: two stamped valid addresses; attribute 0 is shared with a leak, attribute 1 not.
    w.unmarks
        .insert(2, vec![(0, some_guard(4, "h3")), (1, some_guard(5, "h4"))]);
    w.leaky_attrs.insert((2, 0));
    // Block 3: its only unmark shares a leaky attribute: the block is not touched for it.
    w.unmarks.insert(3, vec![(0, some_guard(6, "h5"))]);
    w.leaky_attrs.insert((3, 0));
    let s = w.finish();
    let ordinals = |v: &Vec<Guard>| v.iter().map(|g| g.ordinal).collect::<Vec<_>>();
    assert_eq!(ordinals(&s.by_block.guards[&0]), vec![1]);
    assert_eq!(ordinals(&s.by_block.guards[&1]), vec![2]);
    assert_eq!(ordinals(&s.by_block.unmarks[&2]), vec![5]);
    assert!(!s.by_block.unmarks.contains_key(&3));
}

#[test]
fn stale_affinities_are_a_deleted_nodes_whose_block_is_gone_or_elsewhere() {
    let blocks = [("b0".to_string(), block(Some("gone"), &[]))];
    let mut w = world(&blocks, &["live"], &[]);
    let aff = |name: &'static str, node: &'static str, cidr: &'static str, host_type| AffinityIn {
        name,
        node,
        cidr,
        host_type,
        deleted: false,
    };
    w.affinities = vec![
        // The deleted node's own block still exists: it goes with the block, not here.
        aff("keep-own", "gone", "10.0.0.0/29", true),
        // The deleted node's affinity to a block that does not exist.
        aff("no-block", "gone", "10.0.0.8/29", true),
        // A live node's affinity: never stale.
        aff("live", "live", "10.0.0.16/29", true),
        // Not a host affinity.
        aff("virtual", "gone", "10.0.0.24/29", false),
    ];
    let live: Vec<&BlockIn<'_>> = w.blocks.iter().collect();
    let stale: Vec<String> = stale_affinities(&w, &live).into_iter().map(|a| a.name).collect();
    assert_eq!(stale, vec!["no-block"]);
}

#[test]
fn a_leak_stamp_is_absent_readable_or_unreadable() {
    assert_eq!(leak_stamp(&attr("h", &[])), None);
    let ok = attr("h", &[(LEAK_SEEN_KEY, "2026-01-01T00:00:00Z")]);
    assert_eq!(leak_stamp(&ok), Some(Some(t("2026-01-01T00:00:00Z"))));
    assert_eq!(leak_stamp(&attr("h", &[(LEAK_SEEN_KEY, "soon")])), Some(None));
}

#[test]
fn interrupted_deletes_are_finished_and_marked_objects_are_nothing_else() {
    let mut marked_block = block(Some("gone"), &[]);
    marked_block.deleted = Some(true);
    let blocks = [
        ("live".to_string(), block(Some("n1"), &[(0, "p", "n1")])),
        ("marked".to_string(), marked_block),
    ];
    let mut w = world(&blocks, &["n1"], &[]);
    w.affinities = vec![
        AffinityIn {
            name: "gone-marked",
            node: "gone",
            cidr: "10.0.0.8/29",
            host_type: true,
            deleted: true,
        },
        AffinityIn {
            name: "gone-live",
            node: "gone",
            cidr: "10.0.0.16/29",
            host_type: true,
            deleted: false,
        },
    ];
    w.handles = vec![
        HandleIn {
            name: "orphan-marked",
            handle_id: "orphan-marked",
            deleted: true,
        },
        HandleIn {
            name: "orphan",
            handle_id: "orphan",
            deleted: false,
        },
    ];
    let mut st = GcState::default();
    plan(&w, &mut st, t("2026-01-01T01:00:00Z"), GRACE);
    let p = plan(&w, &mut st, t("2026-01-01T01:30:00Z"), GRACE);
    // Handles first, then blocks, then affinities.
    assert_eq!(
        p.finish_deletes,
        vec![
            (CalicoKind::IPAMHandle, "orphan-marked".to_string()),
            (CalicoKind::IPAMBlock, "marked".to_string()),
            (CalicoKind::BlockAffinity, "gone-marked".to_string()),
        ]
    );
    // A marked object is finished, never also released, deleted as an orphan or as stale.
    assert_eq!(p.orphan_handles, vec!["orphan".to_string()]);
    let stale: Vec<&str> = p.stale_affinities.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(stale, vec!["gone-live"]);
    assert!(p.releases.iter().all(|r| r.block != "marked"));
    assert!(p.empty_blocks.iter().all(|e| e.block != "marked"));
}

#[test]
fn a_pass_with_nothing_marked_finishes_nothing() {
    let blocks = [("b".to_string(), block(Some("n1"), &[(0, "p", "n1")]))];
    let w = world(&blocks, &["n1"], &[]);
    let p = plan(&w, &mut GcState::default(), t("2026-01-01T01:00:00Z"), GRACE);
    assert!(p.finish_deletes.is_empty());
}

#[test]
fn the_scope_holds_what_lies_inside_the_selected_pools() {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let pools = vec![crate::ipam::usage::PoolRef {
        name: "mine".into(),
        cidr: net("10.0.0.0/24"),
        block_size: 26,
    }];
    let all = Scope {
        pools: pools.clone(),
        scoped: false,
    };
    let mine = Scope { pools, scoped: true };
    // Unscoped: everything, unparsable CIDRs and handles without blocks included.
    assert!(all.contains(&net("192.168.0.0/26")));
    assert!(all.contains_cidr("not a cidr"));
    assert!(all.contains_handle(false, std::iter::empty()));
    // Scoped: inside a selected pool only.
    assert!(mine.contains(&net("10.0.0.64/26")));
    assert!(!mine.contains(&net("10.0.1.0/26")));
    assert!(!mine.contains(&net("10.0.0.0/16")));
    assert!(mine.contains_cidr("10.0.0.0/26"));
    assert!(!mine.contains_cidr("10.0.1.0/26"));
    assert!(!mine.contains_cidr("not a cidr"));
    // A handle: every block it counts inside, and at least one.
    let (a, b) = (net("10.0.0.0/26"), net("10.0.1.0/26"));
    assert!(mine.contains_handle(false, [&a].into_iter()));
    assert!(!mine.contains_handle(false, [&a, &b].into_iter()));
    assert!(!mine.contains_handle(false, std::iter::empty()));
    // A marked handle is always inside (its interrupted delete is finished).
    assert!(mine.contains_handle(true, [&b].into_iter()));
    assert!(mine.contains_handle(true, std::iter::empty()));
}
