//! The Pod as the operator reads it: a slim watch-cache type and the addresses it shows. Shared
//! by the watch caches ([`super::store`]), the GC and `tortie ipam`; depends on neither.

use std::borrow::Cow;
use std::net::IpAddr;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::PodIP;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::gc_plan::PodInfo;

/// A Pod as the GC reads it ([`pod_info`]): identity, node, host networking,
/// addresses and eviction, deserialized straight from the API's JSON (serde skips the rest
/// without keeping it). At 50,000 pods the full objects (spec defaults, projected token
/// volumes, managed fields) were most of the operator's memory: 1 GiB in `make bench`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SlimPod {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SlimPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SlimPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Annotations that name a pod's addresses: Calico's two, then Multus' network status.
pub const POD_IP_ANNOTATIONS: [&str; 3] = [
    "cni.projectcalico.org/podIP",
    "cni.projectcalico.org/podIPs",
    "k8s.v1.cni.cncf.io/network-status",
];

/// Addresses a live pod shows: status.podIPs, Calico's and Multus' annotations.
pub fn pod_info(p: &SlimPod) -> Option<PodInfo> {
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = p.status.as_ref();
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut push = |s: &str| {
        let s = s.trim();
        let s = s.split('/').next().unwrap_or(s);
        if let Ok(ip) = s.parse() {
            ips.push(ip);
        }
    };
    if let Some(st) = status {
        st.pod_ips.iter().flatten().for_each(|i| push(&i.ip));
        st.pod_ip.iter().for_each(|i| push(i));
    }
    let ann = p.annotations();
    for key in POD_IP_ANNOTATIONS[..2].iter().copied() {
        if let Some(v) = ann.get(key) {
            v.split(',').for_each(&mut push);
        }
    }
    if let Some(v) = ann.get(POD_IP_ANNOTATIONS[2])
        && let Ok(serde_json::Value::Array(nets)) = serde_json::from_str::<serde_json::Value>(v)
    {
        for n in nets {
            for ip in n.get("ips").and_then(|x| x.as_array()).into_iter().flatten() {
                if let Some(s) = ip.as_str() {
                    push(s);
                }
            }
        }
    }
    Some(PodInfo {
        node: spec.and_then(|s| s.node_name.as_deref()).map(Into::into),
        ips,
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        evicted: status
            .is_some_and(|s| s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some("Evicted")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> SlimPod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_addresses_from_status_and_annotations() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "annotations": {
                "cni.projectcalico.org/podIPs": "10.0.0.5/32, fd00::5/128",
                "k8s.v1.cni.cncf.io/network-status": "[{\"name\":\"x\",\"ips\":[\"10.9.0.1\"]}]"
            }},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIPs": [{"ip": "10.0.0.4"}], "phase": "Running"}
        }));
        let i = pod_info(&p).unwrap();
        let ips: Vec<String> = i.ips.iter().map(|a| a.to_string()).collect();
        assert_eq!(ips, ["10.0.0.4", "10.0.0.5", "fd00::5", "10.9.0.1"]);
        assert_eq!(i.node.as_deref(), Some("n1"));
        assert!(!i.evicted);
    }

    #[test]
    fn host_network_pods_hold_no_pool_address_and_evicted_is_seen() {
        let hn = pod(
            serde_json::json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": []}, "status": {"podIP": "192.0.2.1"}}),
        );
        assert!(pod_info(&hn).is_none());
        let ev = pod(
            serde_json::json!({"metadata": {"name": "e"}, "spec": {"containers": []}, "status": {"phase": "Failed", "reason": "Evicted"}}),
        );
        assert!(pod_info(&ev).unwrap().evicted);
    }

    #[test]
    fn slim_pods_keep_what_the_gc_reads() {
        // A full Pod as the apiserver sends it, read into the slim type the watch caches.
        let full = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "creationTimestamp": "2026-11-23T01:00:00Z",
                "labels": {"app": "web"}, "managedFields": [{"manager": "kubectl", "operation": "Update"}],
                "annotations": {"cni.projectcalico.org/podIP": "10.0.0.6/32", "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "k8s.v1.cni.cncf.io/network-status": "[{\"name\":\"x\",\"ips\":[\"10.9.0.2\"]}]"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"podIP": "10.0.0.4", "podIPs": [{"ip": "10.0.0.4"}], "phase": "Failed", "reason": "Evicted",
                "conditions": [{"type": "Ready", "status": "False"}]}
        });
        let p = pod(full);
        let i = pod_info(&p).unwrap();
        let ips: std::collections::BTreeSet<String> = i.ips.iter().map(|a| a.to_string()).collect();
        assert_eq!(ips, ["10.0.0.4", "10.0.0.6", "10.9.0.2"].map(String::from).into());
        assert_eq!(i.node.as_deref(), Some("n1"));
        assert!(i.evicted && i.created.is_some());
        let only_pod_ip =
            pod(serde_json::json!({"metadata": {"name": "q"}, "status": {"podIP": "10.0.0.7"}}));
        assert_eq!(
            pod_info(&only_pod_ip).unwrap().ips,
            ["10.0.0.7".parse::<IpAddr>().unwrap()]
        );
    }
}
