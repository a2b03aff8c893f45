//! Smoke test of the e2e control plane (etcd + kube-apiserver + kube-controller-manager):
//! CRDs install, kubectl and kube-rs see the same objects, namespaces are deleted and owner
//! references garbage-collected (kube-controller-manager works), fake Nodes and Pending Pods can
//! be made. See e2e/README.md.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use support::*;

#[tokio::test]
async fn kubectl_apply_read_back_with_kube_and_delete_namespace() {
    let client = client().await;
    let ns = unique_name("smoke");
    let manifest = format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: hello
  namespace: {ns}
data:
  greeting: "hello from kubectl"
"#
    );
    kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = cms
        .get("hello")
        .await
        .expect("ConfigMap applied by kubectl is readable with kube-rs");
    assert_eq!(cm.data.unwrap()["greeting"], "hello from kubectl");

    // The namespace controller (kube-controller-manager) empties and finalizes it.
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    assert!(nss.get_opt(&ns).await.unwrap().is_none());
}

#[tokio::test]
async fn crds_are_installed_and_an_example_applies() {
    let client = client().await;
    let crds_dir = repo_dir().join("crds/v1");
    if !crds_dir.is_dir() || std::env::var("TORTIE_E2E_CRDS").is_ok() {
        eprintln!("crds/v1 absent or TORTIE_E2E_CRDS set: not checked here");
        return;
    }
    let errors = &cluster().crd_errors;
    assert!(
        errors.is_empty(),
        "the API server rejected CRDs of crds/v1:\n{}",
        errors.join("\n")
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = crds
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".crd.projectcalico.org")),
        "no crd.projectcalico.org CRD installed from crds/v1: {names:?}"
    );

    // Apply the example IPPools for real, read them back with kube-rs, delete them again.
    let Some(example) = std::fs::read_dir(repo_dir().join("examples/v1"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("kind: IPPool")))
        .min()
    else {
        eprintln!("no examples/v1 file with an IPPool yet: CRDs checked only");
        return;
    };
    let example = example.to_string_lossy().into_owned();
    let applied = kubectl_ok(&["apply", "-f", &example, "-o", "name"]);
    let gvk = GroupVersionKind::gvk("crd.projectcalico.org", "v1", "IPPool");
    let (ar, _caps) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let names: Vec<&str> = applied
        .lines()
        .filter_map(|l| l.strip_prefix("ippool.crd.projectcalico.org/"))
        .collect();
    assert!(
        !names.is_empty(),
        "kubectl apply -f {example} applied no IPPool: {applied}"
    );
    for name in &names {
        let pool = pools.get(name).await.unwrap();
        let cidr = pool.data["spec"]["cidr"].as_str().unwrap_or_default().to_string();
        let want = kubectl_ok(&[
            "get",
            "ippool.crd.projectcalico.org",
            name,
            "-o",
            "jsonpath={.spec.cidr}",
        ]);
        assert!(
            !cidr.is_empty() && cidr == want,
            "IPPool {name}: kube-rs sees cidr {cidr:?}, kubectl {want:?}"
        );
    }
    kubectl_ok(&["delete", "-f", &example, "--wait=true"]);
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let client = client().await;
    let ns = unique_name("gc");
    create_namespace(&client, &ns, &[]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut owner = ConfigMap::default();
    owner.metadata.name = Some("owner".into());
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let mut dependent = ConfigMap::default();
    dependent.metadata.name = Some("dependent".into());
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &dependent).await.unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    wait_until(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || async { cms.get_opt("dependent").await.unwrap().is_none().then_some(()) },
    )
    .await;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn fake_node_and_pending_pod() {
    let client = client().await;
    let node_name = unique_name("node");
    let bgp = calico_bgp_annotations("10.255.0.7/24", Some(64512));
    let bgp: Vec<(&str, &str)> = bgp.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = create_node(
        &client,
        &node_name,
        &[("tortie.dev/e2e", "smoke")],
        Some("10.255.0.7"),
        &["10.48.7.0/24"],
        &bgp,
    )
    .await;
    assert_eq!(
        node.spec.as_ref().unwrap().pod_cidrs.as_deref(),
        Some(&["10.48.7.0/24".to_string()][..])
    );

    let nodes: Api<Node> = Api::all(client.clone());
    let got = nodes.get(&node_name).await.unwrap();
    let addrs = got.status.unwrap().addresses.unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "10.255.0.7"),
        "{addrs:?}"
    );
    let ann = got.metadata.annotations.unwrap();
    assert_eq!(ann["projectcalico.org/IPv4Address"], "10.255.0.7/24");
    assert_eq!(ann["projectcalico.org/ASNumber"], "64512");
    assert_eq!(got.metadata.labels.unwrap()["tortie.dev/e2e"], "smoke");

    let ns = unique_name("pods");
    create_namespace(
        &client,
        &ns,
        &[("cni.projectcalico.org/ipv4pools", r#"["default-ipv4-ippool"]"#)],
    )
    .await;
    let pod = create_pod(
        &client,
        &ns,
        "p1",
        Some(&node_name),
        &[("tortie.dev/e2e", "smoke")],
    )
    .await;
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node_name.as_str())
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // No kubelet: the pod is deleted at once because its grace period is 0.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    wait_until("pod p1 to be gone", Duration::from_secs(60), || async {
        pods.get_opt("p1").await.unwrap().is_none().then_some(())
    })
    .await;

    // A namespace with a bound pod still deletes.
    create_pod(&client, &ns, "p2", Some(&node_name), &[]).await;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await;
    delete_node(&client, &node_name).await;
}

#[tokio::test]
async fn helm_reaches_the_cluster() {
    let c = cluster();
    if !c.helm.exists() {
        eprintln!(
            "no helm at {} (attached cluster without e2e/build.sh): skipped",
            c.helm.display()
        );
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&c.helm)
        .args(["list", "--all-namespaces", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .env("HOME", home.path())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("NAME"));
}

#[test]
fn unique_names_are_distinct_dns_labels() {
    let long = "x".repeat(80);
    let names: Vec<String> = ["node", "Node_With.Dots", "", long.as_str(), "-a-"]
        .iter()
        .flat_map(|p| (0..50).map(move |_| unique_name(p)))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len());
    for n in &names {
        assert!(n.len() <= 63, "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{n}"
        );
        assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
    }
}
