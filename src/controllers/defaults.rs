//! The `default` ClusterInformation and KubeControllersConfiguration, created when missing, as
//! calico-node and kube-controllers create them in a Calico cluster: Calico's tools
//! (`calicoctl ipam check`, `ipam release --from-report`) refuse to work without them.
//!
//! Create-only: an existing object (Calico's, or one a user edited, e.g. to lock the datastore with
//! `datastoreReady: false`) is never changed. Not done by the chart: a Helm hook would race the
//! CRD's registration on a first install, and re-creating the object on every upgrade would change
//! the cluster's GUID, which `calicoctl ipam release --from-report` compares.

use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use tokio_util::sync::CancellationToken;

use crate::api::CrdMode;
use crate::api::cluster::{ClusterInformation, KubeControllersConfiguration};

/// What `clusterType` says of a tortie-only cluster (Calico's words: k8s, kdd; plus tortie).
pub const CLUSTER_TYPE: &str = "k8s,kdd,tortie";

/// A kind of this module in `mode`'s group.
fn resource<K: Resource<DynamicType = ()>>(mode: CrdMode) -> ApiResource {
    ApiResource {
        group: mode.group().into(),
        version: mode.version().into(),
        api_version: mode.api_version(),
        kind: K::kind(&()).into_owned(),
        plural: K::plural(&()).into_owned(),
    }
}

/// The cluster's GUID: the `kube-system` Namespace's UID without dashes (Calico's GUIDs are 32 hex
/// digits), so it stays the same if the object is ever re-created.
pub fn cluster_guid(kube_system_uid: &str) -> String {
    kube_system_uid
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// ClusterInformation `default` for a tortie-only cluster. `calicoVersion` stays unset: no Calico
/// version runs here, and calicoctl skips its client/cluster version-mismatch check without one.
pub fn cluster_information(mode: CrdMode, guid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": mode.api_version(),
        "kind": "ClusterInformation",
        "metadata": {"name": "default"},
        "spec": {"clusterGUID": guid, "clusterType": CLUSTER_TYPE, "datastoreReady": true},
    })
}

/// A duration as Go's parser reads it (`15m`, `90s`).
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// KubeControllersConfiguration `default` with kube-controllers' own defaults, except the node
/// controller's `leakGracePeriod`, which is tortie's GC grace period (what tortie's GC uses).
pub fn kube_controllers_configuration(mode: CrdMode, leak_grace: Duration) -> serde_json::Value {
    let every = serde_json::json!({"reconcilerPeriod": "5m"});
    serde_json::json!({
        "apiVersion": mode.api_version(),
        "kind": "KubeControllersConfiguration",
        "metadata": {"name": "default"},
        "spec": {
            "logSeverityScreen": "Info",
            "healthChecks": "Enabled",
            "etcdV3CompactionPeriod": "10m",
            "prometheusMetricsPort": 9094,
            "controllers": {
                "node": {
                    "reconcilerPeriod": "5m",
                    "syncLabels": "Enabled",
                    "hostEndpoint": {"autoCreate": "Disabled"},
                    "leakGracePeriod": go_duration(leak_grace),
                },
                "policy": every,
                "workloadEndpoint": every,
                "serviceAccount": every,
                "namespace": every,
                "loadBalancer": {"assignIPs": "AllServices"},
            },
        },
    })
}

/// Creates `obj` unless an object of its name exists. Ok(true) when created.
async fn create_if_missing(
    client: &Client,
    ar: &ApiResource,
    obj: serde_json::Value,
) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let obj: DynamicObject = serde_json::from_value(obj).expect("a well-formed object");
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates both objects if missing.
pub async fn ensure(client: &Client, mode: CrdMode, leak_grace: Duration) -> Result<(), kube::Error> {
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let uid = ns.get("kube-system").await?.metadata.uid.unwrap_or_default();
    let objects = [
        (
            resource::<ClusterInformation>(mode),
            cluster_information(mode, &cluster_guid(&uid)),
        ),
        (
            resource::<KubeControllersConfiguration>(mode),
            kube_controllers_configuration(mode, leak_grace),
        ),
    ];
    for (ar, obj) in objects {
        if create_if_missing(client, &ar, obj).await? {
            tracing::info!(kind = %ar.kind, "created the default {} for Calico's tools", ar.kind);
        }
    }
    Ok(())
}

/// [`ensure`], retried every 30 s until it succeeds or `stop` (e.g. the CRDs are not installed yet).
pub async fn run(client: Client, mode: CrdMode, leak_grace: Duration, stop: CancellationToken) {
    loop {
        match ensure(&client, mode, leak_grace).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create Calico's default ClusterInformation/KubeControllersConfiguration; retrying in 30s")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cluster::{ClusterInformationSpec, KubeControllersConfigurationSpec};

    #[test]
    fn objects_read_back_as_the_typed_specs() {
        for mode in [CrdMode::V1, CrdMode::V3] {
            let ci = cluster_information(mode, &cluster_guid("0A1B2C3D-0000-4000-8000-00000000002F"));
            assert_eq!(ci["apiVersion"], mode.api_version());
            let spec: ClusterInformationSpec = serde_json::from_value(ci["spec"].clone()).unwrap();
            assert_eq!(
                spec.cluster_guid.as_deref(),
                Some("0a1b2c3d00004000800000000000002f")
            );
            assert_eq!(spec.datastore_ready, Some(true));
            assert_eq!(spec.calico_version, None);
            let kcc = kube_controllers_configuration(mode, Duration::from_secs(900));
            let spec: KubeControllersConfigurationSpec = serde_json::from_value(kcc["spec"].clone()).unwrap();
            let node = spec.controllers.node.unwrap();
            assert_eq!(node.leak_grace_period.as_deref(), Some("15m"));
            assert_eq!(node.sync_labels.as_deref(), Some("Enabled"));
            assert_eq!(spec.health_checks.as_deref(), Some("Enabled"));
        }
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
