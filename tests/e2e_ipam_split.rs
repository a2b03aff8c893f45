//! `tortie ipam split` with the operator running (its own control plane: the operator's IPPool
//! controller judges every pool of the cluster): pods keep their addresses, the parent's drain
//! finalizer does not hold the split, the children become allocatable once the parent is gone,
//! and a new pod gets an address from the node's existing block, now a child's.

mod support;

use std::time::Duration;

use ipnet::IpNet;
use kube::api::{Api, PostParams};
use support::*;
use tortie::api::{CalicoKind, CrdMode, IPAMConfigSpec, IPPoolSpec, Pool};
use tortie::ipam::{Attrs, AutoAssignRequest, Ipam};

const MODE: CrdMode = CrdMode::V1;

fn allocatable(p: &Pool) -> Option<bool> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Allocatable")?;
    Some(c.status == "True")
}

async fn engine(client: &kube::Client) -> Ipam {
    ipam_engine(client.clone(), MODE, IPAMConfigSpec::calico_defaults()).await
}

#[tokio::test]
async fn split_while_pods_run_with_the_operator() {
    let client = client().await;
    let id = unique_name("split-op");
    let op = Operator::start(&id, &["--lease-name", &id, "--controllers", "ippool"]);
    op.wait_ready().await;
    let node = format!("{id}-n0");
    create_node(&client, &node, &[("tortie-e2e-lab", id.as_str())], None, &[], &[]).await;
    create_namespace(&client, &id, &[]).await;
    let pools: Api<Pool> = Api::all_with(client.clone(), &MODE.resource(CalicoKind::IPPool));
    let parent = format!("{id}-p");
    let spec = IPPoolSpec {
        cidr: "10.77.0.0/24".into(),
        block_size: Some(26),
        node_selector: Some(format!("tortie-e2e-lab == '{id}'")),
        ..Default::default()
    };
    pools
        .create(
            &PostParams::default(),
            &Pool::new(&parent, &MODE.resource(CalicoKind::IPPool), spec),
        )
        .await
        .unwrap();
    wait_until(
        "the operator accepts the pool and puts its drain finalizer on",
        Duration::from_secs(60),
        || async {
            let p = pools.get(&parent).await.unwrap();
            (allocatable(&p) == Some(true) && !p.metadata.finalizers.clone().unwrap_or_default().is_empty())
                .then_some(())
        },
    )
    .await;

    let alloc = |ipam: Ipam, pod: &'static str| {
        let (client, node, ns) = (client.clone(), node.clone(), id.clone());
        async move {
            create_pod(&client, &ns, pod, Some(&node), &[]).await;
            let mut r = AutoAssignRequest::new(&format!("{ns}-{pod}"), &node);
            r.attrs = Attrs::pod(&node, &ns, pod);
            r.num_v4 = 1;
            let got = ipam.auto_assign(r).await.unwrap();
            assert!(got.is_complete(), "{got:?}");
            got.v4.ips[0].addr()
        }
    };
    let a = alloc(engine(&client).await, "a").await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["ipam", "split", "2", "--name", &parent])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let children = [format!("split-{parent}-0"), format!("split-{parent}-1")];
    wait_until(
        "the parent is gone and both children are allocatable",
        Duration::from_secs(60),
        || async {
            if pools.get_opt(&parent).await.unwrap().is_some() {
                return None;
            }
            for c in &children {
                if allocatable(&pools.get(c).await.unwrap()) != Some(true) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // A new pod on the node: an address of the node's block, now a child's.
    let b = alloc(engine(&client).await, "b").await;
    let block = IpNet::new(a, 26).unwrap().trunc();
    assert!(block.contains(&b) && a != b, "{a} {b}");
    let owner = if "10.77.0.0/25".parse::<IpNet>().unwrap().contains(&block) {
        &children[0]
    } else {
        &children[1]
    };
    // Nothing is inconsistent (the operator's log says why, if something is).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["ipam", "check", "--show-problem-ips"])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", op.log_text());
    assert!(text.contains("Check complete; found 0 problems."), "{text}");
    let v: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
            .args(["ipam", "show", "-o", "json"])
            .env("KUBECONFIG", &cluster().kubeconfig)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["owner"] == owner.as_str())
        .cloned();
    assert_eq!(
        row.map(|r| r["inUse"].clone()),
        Some(serde_json::Value::from(2)),
        "{v}"
    );
}
