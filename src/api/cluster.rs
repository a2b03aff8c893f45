//! ClusterInformation and KubeControllersConfiguration: the two cluster-wide singletons (`default`)
//! Calico's tools read before anything else (`calicoctl ipam check` needs both). Field names and
//! shapes are Calico's; on a tortie-only cluster the operator creates the `default` objects
//! ([`crate::controllers::defaults`]).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Cluster-wide information, as in Calico's `ClusterInformationSpec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "ClusterInformation",
    plural = "clusterinformations",
    singular = "clusterinformation",
    shortname = "clusterinfo",
    shortname = "clusterinfos",
    category = "calico",
    category = "tortie",
    doc = "ClusterInformation (the object named default) identifies the cluster to Calico's tools: its GUID, type, version, and whether the datastore is ready for use.",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.calicoVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".spec.datastoreReady"}"#,
    printcolumn = r#"{"name":"Types","type":"string","jsonPath":".spec.clusterType"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInformationSpec {
    /// A unique identifier of the cluster (`calicoctl ipam release --from-report` checks it).
    #[serde(rename = "clusterGUID", default, skip_serializing_if = "Option::is_none")]
    pub cluster_guid: Option<String>,
    /// Comma-separated words describing the cluster, e.g. `k8s,bgp,kdd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_type: Option<String>,
    /// Version of Calico running in the cluster (unset on a tortie-only cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_version: Option<String>,
    /// False while the datastore is locked (migration, `calicoctl datastore migrate lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_ready: Option<bool>,
    /// Product variant, e.g. `Calico`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Calico kube-controllers' settings, as in Calico's `KubeControllersConfigurationSpec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "KubeControllersConfiguration",
    plural = "kubecontrollersconfigurations",
    singular = "kubecontrollersconfiguration",
    shortname = "kcc",
    shortname = "kccs",
    category = "calico",
    category = "tortie",
    status = "KubeControllersConfigurationStatus",
    doc = "KubeControllersConfiguration (the object named default) configures Calico's kube-controllers; Calico's tools read its node controller's leakGracePeriod."
)]
#[serde(rename_all = "camelCase")]
pub struct KubeControllersConfigurationSpec {
    /// Log level: None, Debug, Info, Warning, Error, Fatal or Panic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["None", "Debug", "Info", "Warning", "Error", "Fatal", "Panic"]))]
    pub log_severity_screen: Option<String>,
    /// `Enabled` (default) or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled"], "default" = "Enabled"))]
    pub health_checks: Option<String>,
    /// Period between etcd compactions (etcd datastore only), a duration such as `10m`.
    #[serde(
        rename = "etcdV3CompactionPeriod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub etcd_v3_compaction_period: Option<String>,
    /// Port of the Prometheus metrics server (0 disables it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub prometheus_metrics_port: Option<i64>,
    /// Port of the debug profiling server (0 disables it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub debug_profile_port: Option<i32>,
    /// Which controllers run, and their settings.
    pub controllers: ControllersConfig,
}

/// Observed state written by kube-controllers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeControllersConfigurationStatus {
    /// The configuration in effect (spec merged with environment variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_config: Option<KubeControllersConfigurationSpec>,
    /// Environment variables that overrode the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_vars: Option<BTreeMap<String, String>>,
}

/// The controllers of kube-controllers; one absent is disabled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControllersConfig {
    /// Node controller (IPAM garbage collection, label sync, auto host endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeControllerConfig>,
    /// Policy controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ReconcilerConfig>,
    /// WorkloadEndpoint controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_endpoint: Option<ReconcilerConfig>,
    /// ServiceAccount controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ReconcilerConfig>,
    /// Namespace controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<ReconcilerConfig>,
    /// LoadBalancer IP controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerControllerConfig>,
    /// Policy migration controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_migration: Option<PolicyMigrationConfig>,
}

/// A controller with only a reconcile period.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerConfig {
    /// Period of full reconciles, a duration such as `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciler_period: Option<String>,
}

/// The node controller's settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeControllerConfig {
    /// Period of full reconciles, a duration such as `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciler_period: Option<String>,
    /// Copy Kubernetes Node labels to Calico nodes: `Enabled` or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled"]))]
    pub sync_labels: Option<String>,
    /// Automatic host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<AutoHostEndpointConfig>,
    /// How long an IP must look leaked before it is released, a duration such as `15m` (`0` off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_grace_period: Option<String>,
}

/// Automatic host endpoint settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoHostEndpointConfig {
    /// `Enabled` or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled"]))]
    pub auto_create: Option<String>,
    /// Whether to create the default host endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_default_host_endpoint: Option<String>,
    /// Templates of host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<AutoHostEndpointTemplate>>,
}

/// One host endpoint template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoHostEndpointTemplate {
    /// Prefix of the generated endpoints' names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub generate_name: Option<String>,
    /// CIDRs whose interfaces get endpoints.
    #[serde(rename = "interfaceCIDRs", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub interface_cidrs: Option<Vec<String>>,
    /// Interface name pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_pattern: Option<String>,
    /// Labels of the generated endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Selector of the nodes the template applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
}

/// The LoadBalancer IP controller's settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerControllerConfig {
    /// `AllServices` (default) or `RequestedServicesOnly`.
    #[serde(rename = "assignIPs", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["AllServices", "RequestedServicesOnly"], "default" = "AllServices"))]
    pub assign_ips: Option<String>,
}

/// The policy migration controller's settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMigrationConfig {
    /// `Enabled` (default) or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Disabled", "Enabled"], "default" = "Enabled"))]
    pub enabled: Option<String>,
}
