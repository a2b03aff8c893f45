//! The BGP controller writes only what changed, counted by the real apiserver
//! (`apiserver_request_total` for ConfigMaps and Secrets; this binary runs this one test, so
//! nothing else writes them): start-up publishes each object once, a Node label no selector
//! reads and an annotation the renderer ignores cost 0 writes, a new node costs its own object
//! and the one shard it joins.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use tortie::api::CrdMode;
use tortie::node::published;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Writes (POST, PUT, PATCH, server-side APPLY, DELETE) of ConfigMaps and Secrets the apiserver has served.
fn writes() -> f64 {
    let metrics = support::kubectl_ok(&["get", "--raw", "/metrics"]);
    support::apiserver_writes(&metrics, &["configmaps", "secrets"])
}

/// resourceVersion of every published object in `ns`.
async fn versions(cms: &Api<ConfigMap>) -> BTreeMap<String, String> {
    cms.list(&ListParams::default().labels("app.kubernetes.io/managed-by=tortie"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| (c.metadata.name.unwrap(), c.metadata.resource_version.unwrap()))
        .collect()
}

/// Waits until no write happened for `quiet`, then returns the count.
async fn settled(quiet: Duration) -> f64 {
    let mut last = writes();
    loop {
        tokio::time::sleep(quiet).await;
        let now = writes();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_what_changed() {
    let client = support::client().await;
    let mode = CrdMode::detect(&client).await.expect("CRD mode");
    let ns = support::unique_name("bgp-writes");
    support::create_namespace(&client, &ns, &[]).await;
    let tag = support::unique_name("w");
    let net = format!("100.68.{}", std::process::id() % 250);
    let n = 6;
    let names: Vec<String> = (1..=n + 1).map(|i| format!("{tag}-n{i}")).collect();
    for (i, name) in names[..n].iter().enumerate() {
        support::create_node(
            &client,
            name,
            &[],
            None,
            &[],
            &[("projectcalico.org/IPv4Address", &format!("{net}.{}/24", i + 1))],
        )
        .await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let before = settled(Duration::from_secs(2)).await;
    let controller = support::bgp_lab::spawn_bgp_controller(&client, mode, &ns);

    // Start-up: every object once.
    support::wait_until("every node's object and the shards", TIMEOUT, || {
        let cms = cms.clone();
        let names = names[..n].to_vec();
        async move {
            let v = versions(&cms).await;
            names
                .iter()
                .all(|x| v.contains_key(&published::object_name(x)))
                .then_some(())
        }
    })
    .await;
    let after_start = settled(Duration::from_secs(2)).await;
    let objects = versions(&cms).await;
    let shards = objects
        .keys()
        .filter(|k| published::shard_index(k).is_some())
        .count();
    assert!(shards >= 1, "{objects:?}");
    assert_eq!(
        after_start - before,
        (n + shards) as f64,
        "start-up writes: {n} own objects + {shards} shard(s), each once: {objects:?}"
    );

    // A label no selector reads, an annotation the renderer ignores: nothing written.
    support::kubectl_ok(&["label", "node", &names[0], "tortie-e2e-unrelated=yes"]);
    support::kubectl_ok(&["annotate", "node", &names[1], "example.com/note=hello"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        settled(Duration::from_secs(1)).await,
        after_start,
        "writes for changes no BIRD file reads"
    );
    assert_eq!(versions(&cms).await, objects, "an object changed");

    // A new node: its own object and the shard it joins, nothing else.
    support::create_node(
        &client,
        &names[n],
        &[],
        None,
        &[],
        &[("projectcalico.org/IPv4Address", &format!("{net}.{}/24", n + 1))],
    )
    .await;
    support::wait_until("the new node's object", TIMEOUT, || {
        let (cms, o) = (cms.clone(), published::object_name(&names[n]));
        async move { versions(&cms).await.contains_key(&o).then_some(()) }
    })
    .await;
    let after_join = settled(Duration::from_secs(2)).await;
    let now = versions(&cms).await;
    let changed: Vec<&String> = now.keys().filter(|k| objects.get(*k) != now.get(*k)).collect();
    assert_eq!(
        after_join - after_start,
        2.0,
        "a new node costs its own object and one shard; changed: {changed:?}"
    );
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(
        changed.iter().any(|k| published::shard_index(k).is_some()),
        "{changed:?}"
    );

    controller.abort();
    for name in &names {
        support::delete_node(&client, name).await;
    }
    support::delete_namespace(&client, &ns, Duration::from_secs(30)).await;
}
