//! CustomResourceDefinitions for each mode, generated from the Rust types.
//!
//! The derive produces `projectcalico.org/v3` CRDs; v1 mode is the same schema moved to
//! `crd.projectcalico.org/v1` with Calico's two v1 differences applied (kind `IPAMConfig`, and
//! BlockAffinity `deleted` stored as a string).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresources, JSONSchemaProps,
};
use kube::CustomResourceExt;

use super::{
    CalicoKind, CrdMode, Installation, bgp::BGPConfiguration, bgp::BGPPeer, bgpfilter::BGPFilter,
    cluster::ClusterInformation, cluster::KubeControllersConfiguration, ipam::BlockAffinity, ipam::IPAMBlock,
    ipam::IPAMConfiguration, ipam::IPAMHandle, ippool::IPPool, ipreservation::IPReservation,
    nodestatus::CalicoNodeStatus,
};

/// Every CRD tortie installs in `mode`, in a stable order.
pub fn crds(mode: CrdMode) -> Vec<CustomResourceDefinition> {
    let mut out: Vec<CustomResourceDefinition> =
        CalicoKind::ALL.iter().map(|k| calico_crd(mode, *k)).collect();
    // Calico's tools need these two singletons; tortie only creates their `default` objects.
    for (mut crd, subresources) in [
        (ClusterInformation::crd(), true),
        (KubeControllersConfiguration::crd(), false),
        // Users create these; each node's agent writes the status of those naming its node.
        (CalicoNodeStatus::crd(), false),
    ] {
        let (kind, plural) = (crd.spec.names.kind.clone(), crd.spec.names.plural.clone());
        to_mode(&mut crd, mode, &kind, &plural, subresources);
        out.push(crd);
    }
    out.push(installation_crd());
    out
}

/// Kinds whose v3 CRD has `subresources: {}` (no status) in Calico's native CRDs.
fn empty_subresources(kind: CalicoKind) -> bool {
    matches!(
        kind,
        CalicoKind::IPAMBlock
            | CalicoKind::IPAMHandle
            | CalicoKind::BlockAffinity
            | CalicoKind::IPAMConfig
            | CalicoKind::BGPPeer
    )
}

/// Labels a generated CRD and moves it to `mode`'s group (`kind` and `plural` as in that mode).
/// `empty_subresources`: Calico's v3 CRD declares `subresources: {}`; kept in v3 mode only.
fn to_mode(
    crd: &mut CustomResourceDefinition,
    mode: CrdMode,
    kind: &str,
    plural: &str,
    empty_subresources: bool,
) {
    crd.metadata.labels = Some(
        [("app.kubernetes.io/part-of".to_string(), "tortie".to_string())]
            .into_iter()
            .collect(),
    );
    if mode == CrdMode::V3 {
        for v in &mut crd.spec.versions {
            if empty_subresources && v.subresources.is_none() {
                v.subresources = Some(CustomResourceSubresources::default());
            }
        }
        return;
    }
    crd.spec.group = mode.group().into();
    crd.spec.names.kind = kind.into();
    crd.spec.names.list_kind = Some(format!("{kind}List"));
    crd.spec.names.plural = plural.into();
    crd.spec.names.singular = Some(kind.to_ascii_lowercase());
    crd.metadata.name = Some(format!("{plural}.{}", mode.group()));
    for v in &mut crd.spec.versions {
        v.name = mode.version().into();
    }
}

/// File name Calico uses for a CRD: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// Renders CRDs as one multi-document YAML stream.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd)?);
    }
    Ok(out)
}

fn calico_crd(mode: CrdMode, kind: CalicoKind) -> CustomResourceDefinition {
    let mut crd = match kind {
        CalicoKind::IPPool => IPPool::crd(),
        CalicoKind::IPAMBlock => IPAMBlock::crd(),
        CalicoKind::IPAMHandle => IPAMHandle::crd(),
        CalicoKind::BlockAffinity => BlockAffinity::crd(),
        CalicoKind::IPAMConfig => IPAMConfiguration::crd(),
        CalicoKind::BGPConfiguration => BGPConfiguration::crd(),
        CalicoKind::BGPPeer => BGPPeer::crd(),
        CalicoKind::BGPFilter => BGPFilter::crd(),
        CalicoKind::IPReservation => IPReservation::crd(),
    };
    let (k, plural) = mode.kind_and_plural(kind);
    to_mode(&mut crd, mode, k, plural, empty_subresources(kind));
    if mode == CrdMode::V3 {
        return crd;
    }
    if kind == CalicoKind::IPAMConfig {
        // `ipamconfig` is the singular in v1; a short name equal to it would be redundant.
        crd.spec.names.short_names = None;
    }
    for v in &mut crd.spec.versions {
        if kind == CalicoKind::BlockAffinity
            && let Some(deleted) = v
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| prop_mut(s, "spec"))
                .and_then(|s| prop_mut(s, "deleted"))
        {
            deleted.type_ = Some("string".into());
            deleted.description = Some(
                "Soft-delete marker, \"true\" or \"false\" (a string in Calico's v1 storage): readers treat a deleted affinity as absent."
                    .into(),
            );
        }
    }
    crd
}

fn installation_crd() -> CustomResourceDefinition {
    let mut crd = Installation::crd();
    crd.metadata.labels = Some(
        [("app.kubernetes.io/part-of".to_string(), "tortie".to_string())]
            .into_iter()
            .collect(),
    );
    for v in &mut crd.spec.versions {
        if let Some(spec) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| prop_mut(s, "spec"))
        {
            // The Tigera operator's Installation has many fields tortie does not act on; keep them.
            spec.x_kubernetes_preserve_unknown_fields = Some(true);
            if let Some(net) = prop_mut(spec, "calicoNetwork") {
                net.x_kubernetes_preserve_unknown_fields = Some(true);
            }
        }
    }
    crd
}

fn prop_mut<'a>(s: &'a mut JSONSchemaProps, name: &str) -> Option<&'a mut JSONSchemaProps> {
    s.properties.as_mut().and_then(|p| p.get_mut(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a schema and returns the paths of properties without a description.
    fn undocumented(s: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
        if let Some(props) = &s.properties {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                if v.description.as_deref().unwrap_or("").is_empty()
                    && k != "metadata"
                    && k != "apiVersion"
                    && k != "kind"
                {
                    out.push(p.clone());
                }
                undocumented(v, &p, out);
            }
        }
        if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) = &s.items {
            undocumented(items, &format!("{path}[]"), out);
        }
    }

    #[test]
    fn every_field_is_described() {
        for mode in [CrdMode::V1, CrdMode::V3] {
            for crd in crds(mode) {
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap();
                let mut missing = vec![];
                undocumented(schema, "", &mut missing);
                assert!(
                    missing.is_empty(),
                    "{}: fields without description: {missing:?}",
                    crd.metadata.name.unwrap()
                );
            }
        }
    }

    #[test]
    fn v1_mode_uses_calico_v1_names() {
        let v1 = crds(CrdMode::V1);
        let names: Vec<_> = v1.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert!(names.contains(&"ipamconfigs.crd.projectcalico.org".to_string()));
        assert!(names.contains(&"ippools.crd.projectcalico.org".to_string()));
        assert!(names.contains(&"installations.operator.tigera.io".to_string()));
        let v3 = crds(CrdMode::V3);
        let names: Vec<_> = v3.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert!(names.contains(&"ipamconfigurations.projectcalico.org".to_string()));
        for crd in v1.iter().chain(v3.iter()) {
            assert_eq!(crd.spec.scope, "Cluster");
            assert!(
                crd.spec
                    .names
                    .categories
                    .as_ref()
                    .is_some_and(|c| c.contains(&"tortie".to_string()))
            );
        }
    }

    #[test]
    fn subresources_are_calicos() {
        let sub = |mode, plural: &str| {
            let crd = crds(mode)
                .into_iter()
                .find(|c| c.spec.names.plural == plural)
                .unwrap_or_else(|| panic!("no {plural} CRD"));
            match &crd.spec.versions[0].subresources {
                None => "none",
                Some(s) if s.status.is_some() => "status",
                Some(_) => "{}",
            }
        };
        // Calico's native v3 CRDs.
        for (plural, want) in [
            ("ippools", "status"),
            ("kubecontrollersconfigurations", "status"),
            ("caliconodestatuses", "status"),
            ("bgpconfigurations", "none"),
            ("bgppeers", "{}"),
            ("bgpfilters", "none"),
            ("ipreservations", "none"),
            ("blockaffinities", "{}"),
            ("clusterinformations", "{}"),
            ("ipamblocks", "{}"),
            ("ipamconfigurations", "{}"),
            ("ipamhandles", "{}"),
        ] {
            assert_eq!(sub(CrdMode::V3, plural), want, "v3 {plural}");
        }
        // v1: a status where tortie writes one, nothing else.
        assert_eq!(sub(CrdMode::V1, "ipamblocks"), "none");
        assert_eq!(sub(CrdMode::V1, "clusterinformations"), "none");
        assert_eq!(sub(CrdMode::V1, "kubecontrollersconfigurations"), "status");
        assert_eq!(sub(CrdMode::V1, "caliconodestatuses"), "status");
        let v1 = crds(CrdMode::V1);
        let ci = v1
            .iter()
            .find(|c| c.spec.names.kind == "ClusterInformation")
            .unwrap();
        assert_eq!(
            ci.metadata.name.as_deref(),
            Some("clusterinformations.crd.projectcalico.org")
        );
        assert_eq!(ci.spec.versions[0].name, "v1");
    }

    #[test]
    fn affinity_deleted_is_a_string_in_v1_and_a_bool_in_v3() {
        let ty = |mode| {
            let crd = calico_crd(mode, CalicoKind::BlockAffinity);
            let s = crd.spec.versions[0]
                .schema
                .clone()
                .unwrap()
                .open_api_v3_schema
                .unwrap();
            s.properties.unwrap()["spec"].properties.as_ref().unwrap()["deleted"]
                .type_
                .clone()
                .unwrap()
        };
        assert_eq!(ty(CrdMode::V1), "string");
        assert_eq!(ty(CrdMode::V3), "boolean");
    }
}
