//! `tortie run` against the real control plane: the Installation scenarios (one test, in order:
//! the Installation is a cluster singleton), IPPool validation (overlap in Calico's order,
//! reserved ranges, selector syntax) with conditions, Events and printer columns, and two
//! replicas where only the Lease holder writes and a killed leader is replaced.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use support::*;
use tortie::api::{CalicoKind, Installation, Pool};

fn condition(inst: &Installation, type_: &str) -> Option<(String, String, String)> {
    let c = inst
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn pool_api(client: &kube::Client) -> Api<Pool> {
    Api::all_with(client.clone(), &mode(client).await.resource(CalicoKind::IPPool))
}

async fn delete_pool(pools: &Api<Pool>, name: &str) {
    let _ = pools.delete(name, &DeleteParams::default()).await;
    wait_until(
        &format!("IPPool {name} gone"),
        Duration::from_secs(30),
        || async { pools.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

async fn reset_installation(client: &kube::Client) {
    let insts: Api<Installation> = Api::all(client.clone());
    let _ = insts.delete("default", &DeleteParams::default()).await;
    wait_until("Installation default gone", Duration::from_secs(30), || async {
        insts.get_opt("default").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn installation_scenarios_in_order() {
    let client = client().await;
    let id = unique_name("inst");
    let pools = pool_api(&client).await;
    let insts: Api<Installation> = Api::all(client.clone());
    // Only the Installation controller: other tests' pools are not this test's business.
    let op = Operator::start(&id, &["--controllers", "installation", "--lease-name", &id]);
    op.wait_ready().await;

    // 1. The seeds' kubeadm config, an Installation that lists no pools: default-ipv4-ippool.
    reset_installation(&client).await;
    kubectl_stdin_ok(&["apply", "-f", "-"], &kubeadm_config("10.48.0.0/16"));
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata: {name: default}\nspec:\n  cni: {type: Calico}\n",
    );
    let p = wait_until("default-ipv4-ippool", Duration::from_secs(30), || async {
        pools.get_opt("default-ipv4-ippool").await.ok()?
    })
    .await;
    assert_eq!(p.spec.cidr, "10.48.0.0/16");
    assert_eq!(p.spec.ipip_mode.as_deref(), Some("Always"));
    assert_eq!(p.spec.nat_outgoing, Some(true));
    assert_eq!(p.spec.block_size, Some(26));
    assert_eq!(
        p.metadata
            .labels
            .unwrap_or_default()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("tortie")
    );
    let inst = wait_until("Installation Ready", Duration::from_secs(30), || async {
        let i = insts.get("default").await.ok()?;
        (condition(&i, "Ready")?.0 == "True").then_some(i)
    })
    .await;
    assert_eq!(condition(&inst, "Degraded").unwrap().0, "False");
    assert_eq!(
        inst.status.as_ref().unwrap().observed_generation,
        inst.metadata.generation
    );
    assert_eq!(
        inst.status.as_ref().unwrap().pod_cidrs.as_deref(),
        Some(&["10.48.0.0/16".to_string()][..])
    );

    // 2. A fresh install: podSubnet 10.10.0.0/16, one pool with encapsulation None, NAT off.
    reset_installation(&client).await;
    delete_pool(&pools, "default-ipv4-ippool").await;
    kubectl_stdin_ok(&["apply", "-f", "-"], &kubeadm_config("10.10.0.0/16"));
    let inst2 = "apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata: {name: default}\nspec:\n  cni: {type: Calico}\n  calicoNetwork:\n    ipPools:\n    - cidr: 10.10.0.0/16\n      encapsulation: None\n      natOutgoing: Disabled\n";
    kubectl_stdin_ok(&["apply", "-f", "-"], inst2);
    let p = wait_until("pool 10.10.0.0/16", Duration::from_secs(30), || async {
        pools
            .get_opt("default-ipv4-ippool")
            .await
            .ok()?
            .filter(|p| p.spec.cidr == "10.10.0.0/16")
    })
    .await;
    assert_eq!(p.spec.ipip_mode.as_deref(), Some("Never"));
    assert_eq!(p.spec.vxlan_mode.as_deref(), Some("Never"));
    assert_eq!(p.spec.nat_outgoing, Some(false));
    assert_eq!(p.spec.node_selector.as_deref(), Some("all()"));

    // 3. Changing the pool's CIDR or block size is refused with a message; the pool stays.
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &inst2.replace("cidr: 10.10.0.0/16", "cidr: 10.10.0.0/17"),
    );
    let (_, reason, msg) = wait_until("CIDR change refused", Duration::from_secs(30), || async {
        let c = condition(&insts.get("default").await.ok()?, "Degraded")?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(reason, "ForbiddenChange");
    assert!(
        msg.contains("default-ipv4-ippool") && msg.contains("10.10.0.0/17") && msg.contains("refused"),
        "{msg}"
    );
    assert_eq!(
        pools.get("default-ipv4-ippool").await.unwrap().spec.cidr,
        "10.10.0.0/16"
    );
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &inst2.replace(
            "natOutgoing: Disabled",
            "natOutgoing: Disabled\n      blockSize: 24",
        ),
    );
    let (_, _, msg) = wait_until("block size change refused", Duration::from_secs(30), || async {
        let c = condition(&insts.get("default").await.ok()?, "Degraded")?;
        (c.0 == "True" && c.2.contains("blockSize")).then_some(c)
    })
    .await;
    assert!(msg.contains("26") && msg.contains("24"), "{msg}");
    assert_eq!(
        pools.get("default-ipv4-ippool").await.unwrap().spec.block_size,
        Some(26)
    );
    // Back to the accepted spec: healthy again.
    kubectl_stdin_ok(&["apply", "-f", "-"], inst2);
    wait_until("Degraded cleared", Duration::from_secs(30), || async {
        (condition(&insts.get("default").await.ok()?, "Degraded")?.0 == "False").then_some(())
    })
    .await;

    // 4. A pool outside the pod CIDR is not created: Degraded + an Event naming both CIDRs.
    // Checked on every reconcile, not only at install: pools exist already here.
    reset_installation(&client).await;
    delete_pool(&pools, "default-ipv4-ippool").await;
    kubectl_stdin_ok(&["apply", "-f", "-"], &kubeadm_config("10.48.0.0/16"));
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata: {name: default}\nspec:\n  cni: {type: Calico}\n  calicoNetwork:\n    ipPools:\n    - cidr: 192.168.0.0/16\n",
    );
    let (_, reason, msg) = wait_until("Degraded for 192.168.0.0/16", Duration::from_secs(30), || async {
        let c = condition(&insts.get("default").await.ok()?, "Degraded")?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(reason, "PodCIDRMismatch");
    assert!(
        msg.contains("192.168.0.0/16") && msg.contains("10.48.0.0/16") && msg.contains("default-ipv4-ippool"),
        "{msg}"
    );
    assert_eq!(
        condition(&insts.get("default").await.unwrap(), "Ready")
            .unwrap()
            .0,
        "False"
    );
    assert!(
        pools.get_opt("default-ipv4-ippool").await.unwrap().is_none(),
        "a pool outside the pod CIDR was created"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let ev = wait_until("PodCIDRMismatch Event", Duration::from_secs(30), || async {
        let evs = events
            .list(&ListParams::default().fields("involvedObject.kind=Installation"))
            .await
            .ok()?;
        evs.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("PodCIDRMismatch"))
    })
    .await;
    let note = ev.message.unwrap_or_default();
    assert!(
        note.contains("192.168.0.0/16") && note.contains("10.48.0.0/16"),
        "{note}"
    );
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    reset_installation(&client).await;
    kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "configmap",
        "kubeadm-config",
        "--ignore-not-found",
    ]);
    drop(op);
}

#[tokio::test]
async fn overlapping_and_invalid_user_pools_are_marked_invalid() {
    let client = client().await;
    let id = unique_name("overlap");
    let pools = pool_api(&client).await;
    let op = Operator::start(
        &id,
        &[
            "--controllers",
            "ippool",
            "--pool-selector",
            &format!("tortie-test={id}"),
            "--lease-name",
            &id,
        ],
    );
    op.wait_ready().await;
    let (a, b, ll, sel) = (
        format!("{id}-a"),
        format!("{id}-b"),
        format!("{id}-lo"),
        format!("{id}-sel"),
    );
    let n = 100 + (id.len() as u8 % 50);
    apply_pool(&a, &id, &format!("10.{n}.0.0/16"), 26, "");
    wait_until("first pool Ready", Duration::from_secs(30), || async {
        let p = pools.get(&a).await.ok()?;
        p.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    apply_pool(&b, &id, &format!("10.{n}.128.0/24"), 26, "");
    // Link-local is refused by the CRD's own CEL rule; loopback is left to the controller.
    apply_pool(&ll, &id, "127.0.0.0/24", 26, "");
    // A broken selector the CRD's rule cannot decide (more '(' than it counts) is left to the
    // controller; simpler broken ones are refused at admission (tests/bad-inputs/admission).
    apply_pool(
        &sel,
        &id,
        &format!("10.{}.0.0/24", n + 60),
        26,
        &format!(
            "  nodeSelector: \"{}zone == 'a'{}\"\n",
            "(".repeat(40),
            ")".repeat(39)
        ),
    );
    let cond = |name: String, type_: &'static str| {
        let pools = pools.clone();
        async move {
            let p = pools.get(&name).await.ok()?;
            let c = p.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
            Some((c.status, c.reason, c.message))
        }
    };
    let (st, reason, msg) = wait_until("later pool Invalid", Duration::from_secs(30), || async {
        cond(b.clone(), "Ready").await.filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!((st.as_str(), reason.as_str()), ("False", "CIDROverlap"));
    assert!(msg.contains(&a) && msg.contains("spec.cidr"), "{msg}");
    let (st, reason, _) = cond(b.clone(), "Allocatable").await.unwrap();
    assert_eq!((st.as_str(), reason.as_str()), ("False", "CIDROverlap"));
    assert_eq!(cond(a.clone(), "Ready").await.unwrap().0, "True");
    assert_eq!(cond(a.clone(), "Allocatable").await.unwrap().1, "OK");
    let (_, reason, _) = wait_until("loopback refused", Duration::from_secs(30), || async {
        cond(ll.clone(), "Ready").await.filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(reason, "ReservedRange");
    let (_, reason, msg) = wait_until("bad selector refused", Duration::from_secs(30), || async {
        cond(sel.clone(), "Ready").await.filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(reason, "InvalidSelector");
    assert!(msg.contains("spec.nodeSelector"), "{msg}");
    // Events tell the story.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_until("CIDROverlap Event", Duration::from_secs(30), || async {
        let evs = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={b}")))
            .await
            .ok()?;
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CIDROverlap"))
            .then_some(())
    })
    .await;
    // Used and capacity columns in `kubectl get ippools`.
    let table = kubectl_ok(&["get", "ippools", &a, "-o", "wide"]);
    assert!(table.contains("CAPACITY") && table.contains("65536"), "{table}");
    // Disabling the first pool: still first in Calico's order? No: disabled pools rank after
    // active ones, so the active overlapping pool takes the range.
    kubectl_ok(&[
        "patch",
        "ippool",
        &a,
        "--type=merge",
        "-p",
        r#"{"spec":{"disabled":true}}"#,
    ]);
    let (_, reason, _) = wait_until(
        "disabled pool not allocatable",
        Duration::from_secs(30),
        || async { cond(a.clone(), "Allocatable").await.filter(|c| c.0 == "False") },
    )
    .await;
    assert!(reason == "PoolDisabled" || reason == "CIDROverlap", "{reason}");
    // Deleting the first pool makes the second valid.
    pools.delete(&a, &DeleteParams::default()).await.unwrap();
    wait_until(
        "second pool valid after the first is gone",
        Duration::from_secs(60),
        || async { cond(b.clone(), "Ready").await.filter(|c| c.0 == "True") },
    )
    .await;
    for p in [&b, &ll, &sel] {
        let _ = pools.delete(p, &DeleteParams::default()).await;
    }
    for p in [&a, &b, &ll, &sel] {
        delete_pool(&pools, p).await;
    }
    drop(op);
}

#[tokio::test]
async fn two_replicas_only_the_leader_writes_and_a_killed_leader_is_replaced() {
    let client = client().await;
    let id = unique_name("ha");
    let pools = pool_api(&client).await;
    let args = [
        "--controllers",
        "ippool",
        "--pool-selector",
        &format!("tortie-test={id}"),
        "--lease-name",
        &id,
        "--lease-duration",
        "6s",
    ];
    let one = Operator::start(&format!("{id}-one"), &args);
    one.wait_ready().await;
    let two = Operator::start(&format!("{id}-two"), &args);
    two.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = wait_until("a Lease holder", Duration::from_secs(30), || async {
        leases.get_opt(&id).await.ok()??.spec?.holder_identity
    })
    .await;
    let (mut leader, follower) = if holder == one.identity {
        (one, two)
    } else {
        (two, one)
    };
    wait_until("leader metric", Duration::from_secs(30), || async {
        leader.is_leader().await.then_some(())
    })
    .await;
    assert!(!follower.is_leader().await);

    let p1 = format!("{id}-p1");
    let n = 100 + (id.len() as u8 % 50) + 60;
    apply_pool(&p1, &id, &format!("10.{n}.0.0/24"), 26, "");
    wait_until("pool status from the leader", Duration::from_secs(30), || async {
        pools
            .get(&p1)
            .await
            .ok()?
            .status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready")
            .then_some(())
    })
    .await;
    // The follower ran no reconcile at all: only the leader writes.
    let reconciles = r#"tortie_reconciles_total{controller="ippool"}"#;
    assert!(leader.metric(reconciles).await.unwrap_or(0.0) >= 1.0);
    assert_eq!(follower.metric(reconciles).await, None, "the follower reconciled");
    let managers: Vec<String> = pools
        .get(&p1)
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "tortie-ippool"), "{managers:?}");

    // Kill the leader outright (no Lease release); work queued meanwhile is not lost.
    leader.kill();
    let killed = Instant::now();
    let p2 = format!("{id}-p2");
    apply_pool(&p2, &id, &format!("10.{n}.1.0/24"), 26, "");
    wait_until("the follower takes over", Duration::from_secs(30), || async {
        follower.is_leader().await.then_some(())
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "handover after the leader was killed: {:.1}s (lease 6s)",
        took.as_secs_f64()
    );
    // The follower must wait out the 6 s lease, then win a renew round; on a loaded 2-core
    // machine a poll tick or a slow apiserver answer adds seconds. Two lease periods plus
    // slack still catches a follower that never takes over or waits for a second expiry.
    assert!(took < Duration::from_secs(2 * 6 + 6), "handover took {took:?}");
    let lease = leases.get(&id).await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(follower.identity.as_str())
    );
    wait_until(
        "pool created during handover gets its status",
        Duration::from_secs(30),
        || async {
            pools
                .get(&p2)
                .await
                .ok()?
                .status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    // SIGTERM shuts down cleanly and releases the Lease at once.
    let mut follower = follower;
    assert!(
        follower.terminate(),
        "tortie run did not exit cleanly on SIGTERM:\n{}",
        follower.log_text()
    );
    let lease = leases.get(&id).await.unwrap();
    assert!(
        lease.spec.unwrap().holder_identity.unwrap_or_default().is_empty(),
        "Lease not released on SIGTERM"
    );
    for p in [&p1, &p2] {
        // No operator runs any more: drop the finalizer by hand.
        kubectl(&[
            "patch",
            "ippool",
            p,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        delete_pool(&pools, p).await;
    }
}
