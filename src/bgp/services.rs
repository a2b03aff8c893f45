//! Per-service routes a node advertises (Calico's `routes.go`): a Service's cluster IPs, allowed
//! external IPs and LoadBalancer ingress IPs as /32 (/128), from the nodes that should attract
//! its traffic. Whole ranges are handled with the BGPConfiguration in `text.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::api::BGPConfigurationSpec;

use super::Snapshot;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn nets(list: &Option<Vec<crate::api::bgp::CidrBlock>>) -> Vec<IpNet> {
    list.iter()
        .flatten()
        .filter_map(|b| b.cidr.trim().parse::<IpNet>().ok())
        .collect()
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Which nodes advertise which routes: `everywhere` from every node, `local[node]` from some.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRoutes {
    pub everywhere: BTreeSet<IpNet>,
    pub local: BTreeMap<String, BTreeSet<IpNet>>,
}

impl ServiceRoutes {
    pub fn for_node(&self, node: &str) -> BTreeSet<IpNet> {
        let mut out = self.everywhere.clone();
        if let Some(l) = self.local.get(node) {
            out.extend(l.iter().copied());
        }
        out
    }
}

/// The per-service routes `node` advertises: [`Snapshot::service_routes`] when the snapshot
/// carries them already computed (assembled from published inputs), else computed here.
pub fn routes_for_node(snap: &Snapshot, cfg: &BGPConfigurationSpec, node: &str) -> BTreeSet<IpNet> {
    match &snap.service_routes {
        Some(r) => r.for_node(node),
        None => service_routes(snap, cfg).for_node(node),
    }
}

/// Computes every Service's advertised routes once, for all nodes.
pub fn service_routes(snap: &Snapshot, cfg: &BGPConfigurationSpec) -> ServiceRoutes {
    let mut out = ServiceRoutes::default();
    if snap.services.is_empty() {
        return out;
    }
    let cluster_on = !nets(&cfg.service_cluster_ips).is_empty();
    let external = nets(&cfg.service_external_ips);
    let lb = nets(&cfg.service_load_balancer_ips);
    let aggregate = cfg.service_load_balancer_aggregation.as_deref() != Some("Disabled");
    let allowed = |list: &[IpNet], ip: &str| -> Option<IpAddr> {
        let ip: IpAddr = ip.trim().parse().ok()?;
        list.iter().any(|n| n.contains(&ip)).then_some(ip)
    };
    let single = |list: &[IpNet], ip: &str| -> bool {
        ip.trim().parse::<IpAddr>().is_ok_and(|ip| {
            list.iter()
                .any(|n| n.contains(&ip) && n.prefix_len() == n.max_prefix_len())
        })
    };
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in &snap.endpoint_slices {
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        slices.entry((ns, svc.clone())).or_default().push(s);
    }
    for svc in &snap.services {
        let Some(spec) = &svc.spec else { continue };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer") {
            continue;
        }
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
        if cluster_ip.is_empty() || cluster_ip == "None" {
            continue;
        }
        let mut routes: BTreeSet<IpNet> = BTreeSet::new();
        if cluster_on {
            let ips = spec
                .cluster_ips
                .clone()
                .unwrap_or_else(|| vec![cluster_ip.to_string()]);
            routes.extend(ips.iter().filter_map(|i| i.parse().ok()).map(host));
        }
        for e in spec.external_ips.iter().flatten() {
            routes.extend(allowed(&external, e).map(host));
        }
        let ingress: Vec<String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect();
        for ip in &ingress {
            routes.extend(allowed(&lb, ip).map(host));
        }
        if routes.is_empty() {
            continue;
        }
        let etp = spec.external_traffic_policy.as_deref().unwrap_or("");
        if etp == "Cluster" {
            let lb_single = ty == "LoadBalancer"
                && (spec.load_balancer_ip.as_deref().is_some_and(|ip| single(&lb, ip))
                    || ingress.iter().any(|ip| single(&lb, ip)));
            let ext_single = spec.external_ips.iter().flatten().any(|ip| single(&external, ip));
            if lb_single || ext_single {
                out.everywhere.extend(routes);
                continue;
            }
        }
        let local_only = etp == "Local";
        if !local_only && aggregate {
            continue;
        }
        let families: BTreeSet<String> = match &spec.ip_families {
            Some(f) if !f.is_empty() => f.iter().cloned().collect(),
            _ => [if cluster_ip.contains(':') { "IPv6" } else { "IPv4" }.to_string()]
                .into_iter()
                .collect(),
        };
        let key = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        for slice in slices.get(&key).into_iter().flatten() {
            if !families.contains(&slice.address_type) {
                continue;
            }
            for ep in &slice.endpoints {
                // A missing Ready condition means ready (EndpointSlice API).
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                if !local_only {
                    out.everywhere.extend(routes.iter().copied());
                } else if let Some(n) = &ep.node_name {
                    out.local
                        .entry(n.clone())
                        .or_default()
                        .extend(routes.iter().copied());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 10.101.0.101
  externalIPs: [203.0.113.5, 198.51.100.1]
status:
  loadBalancer:
    ingress: [{ip: 80.15.0.1}, {ip: 90.15.0.1}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [192.168.2.1]
  nodeName: n1
- addresses: [192.168.2.2]
  nodeName: n2
  conditions: {ready: false}
"#;

    fn cfg(extra: &str) -> BGPConfigurationSpec {
        serde_saphyr::from_str(&format!(
            "serviceClusterIPs: [{{cidr: 10.101.0.0/16}}]\nserviceExternalIPs: [{{cidr: 203.0.113.0/24}}]\nserviceLoadBalancerIPs: [{{cidr: 80.15.0.0/24}}]\n{extra}"
        ))
        .unwrap()
    }

    fn routes(r: &BTreeSet<IpNet>) -> Vec<String> {
        r.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn local_policy_only_from_nodes_with_a_ready_endpoint() {
        let mut s = Snapshot::default();
        s.add_manifests("t", SVC).unwrap();
        let r = service_routes(&s, &cfg(""));
        assert_eq!(
            routes(&r.for_node("n1")),
            ["10.101.0.101/32", "80.15.0.1/32", "203.0.113.5/32"]
        );
        // n2's endpoint is not ready; n3 has none.
        assert!(r.for_node("n2").is_empty());
        assert!(r.for_node("n3").is_empty());
    }

    #[test]
    fn cluster_policy_needs_a_single_ip_range_or_no_aggregation() {
        let text = SVC.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster");
        let mut s = Snapshot::default();
        s.add_manifests("t", &text).unwrap();
        // Aggregated ranges: the range covers it, no per-service route.
        assert!(service_routes(&s, &cfg("")).for_node("n3").is_empty());
        // Aggregation off: any ready endpoint makes every node advertise.
        let r = service_routes(&s, &cfg("serviceLoadBalancerAggregation: Disabled\n"));
        assert_eq!(routes(&r.for_node("n3")).len(), 3);
        // A /32 entry in serviceExternalIPs: advertised from everywhere.
        let single = serde_saphyr::from_str::<BGPConfigurationSpec>(
            "serviceClusterIPs: [{cidr: 10.101.0.0/16}]\nserviceExternalIPs: [{cidr: 203.0.113.5/32}]\n",
        )
        .unwrap();
        assert_eq!(
            routes(&service_routes(&s, &single).for_node("n3")),
            ["10.101.0.101/32", "203.0.113.5/32"]
        );
    }
}
