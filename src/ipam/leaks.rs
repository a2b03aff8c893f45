//! The report `ipam check -o FILE` writes and `ipam release --from-report` reads, in the shape
//! of calicoctl's (same field names: either tool's report reads in the other), and the pure
//! decision of what a release from reports may free: only what every report names as leaked and
//! a check of the live state, made just before, still finds leaked with the same handle and
//! allocation sequence number. An address whose pod came back, or that was released and handed
//! out again since the report, is left alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::report::{CheckInput, Problem};
use super::{Allocation, Ipam};
use crate::api::Handle;

/// calicoctl's `Report`, with tortie's findings added (`problems`, `count`; calicoctl ignores
/// fields it does not know).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The tool and version that wrote the report, e.g. `tortie 0.1.0`.
    pub version: String,
    #[serde(rename = "clusterGUID", default)]
    pub cluster_guid: String,
    #[serde(default)]
    pub datastore_locked: bool,
    /// resourceVersion of the ClusterInformation `default` when the report was made.
    #[serde(rename = "clusterInformationRevision", default)]
    pub cluster_info_revision: String,
    #[serde(default)]
    pub cluster_type: String,
    /// Every allocation, by address.
    #[serde(default)]
    pub allocations: BTreeMap<String, Vec<ReportAllocation>>,
    /// Handles no block holds an address of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaked_handles: Vec<HandleInfo>,
    /// tortie: every problem the check found.
    #[serde(default, skip_deserializing)]
    pub problems: Vec<Problem>,
    /// tortie: how many.
    #[serde(default, skip_deserializing)]
    pub count: usize,
}

/// One allocation (calicoctl's `Allocation`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAllocation {
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    /// False only for an address the check found leaked: its pod is gone, or the pod uses
    /// another address of the family. Addresses tortie cannot attribute count as in use.
    pub in_use: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// The pods using the address, as `Workload(namespace/name)` (`null` in calicoctl's when none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub owners: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// A leaked handle (calicoctl's `HandleInfo`: its Go fields have no JSON names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "UID", default)]
    pub uid: Option<String>,
    /// The handle's resourceVersion.
    #[serde(rename = "Revision", default)]
    pub revision: String,
}

/// Facts about the cluster the report records.
#[derive(Clone, Debug, Default)]
pub struct ReportMeta {
    pub version: String,
    pub cluster_guid: String,
    pub datastore_locked: bool,
    pub cluster_info_revision: String,
    pub cluster_type: String,
}

/// The addresses the check found leaked, as (ip, namespace, pod).
fn leaked_ips(problems: &[Problem]) -> BTreeSet<IpAddr> {
    problems
        .iter()
        .filter_map(|p| match p {
            Problem::PodGone { ip, .. } | Problem::AllocationNotUsedByPod { ip, .. } => Some(*ip),
            _ => None,
        })
        .collect()
}

/// The report of one check: its input and what it found.
pub fn build_report(input: &CheckInput, problems: &[Problem], meta: ReportMeta) -> CheckReport {
    let leaked = leaked_ips(problems);
    let mut users: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for u in input.in_use.iter().flatten() {
        users
            .entry(u.ip)
            .or_default()
            .push(format!("Workload({}/{})", u.namespace, u.pod));
    }
    let mut allocations: BTreeMap<String, Vec<ReportAllocation>> = BTreeMap::new();
    for a in Ipam::allocations(&input.blocks) {
        let get = |k: &str| a.attrs.get(k).unwrap_or("").to_string();
        let node = a
            .attrs
            .get("node")
            .map(str::to_string)
            .or_else(|| a.block_host.clone())
            .unwrap_or_default();
        let owners = users.get(&a.ip).cloned().unwrap_or_default();
        allocations
            .entry(a.ip.to_string())
            .or_default()
            .push(ReportAllocation {
                ip: a.ip.to_string(),
                handle: a.handle_id.clone().unwrap_or_default(),
                sequence_number: a.sequence_number,
                pod: get("pod"),
                namespace: get("namespace"),
                borrowed: a.block_host.as_deref() != Some(node.as_str()),
                node,
                type_: get("type"),
                creation_timestamp: get("timestamp"),
                in_use: !leaked.contains(&a.ip),
                owners,
            });
    }
    let by_id: HashMap<&str, &Handle> = input
        .handles
        .iter()
        .map(|h| (h.spec.handle_id.as_str(), h))
        .collect();
    let leaked_handles = problems
        .iter()
        .filter_map(|p| match p {
            Problem::HandleWithoutAddresses { handle } => by_id.get(handle.as_str()),
            _ => None,
        })
        .map(|h| handle_info(h))
        .collect();
    CheckReport {
        version: meta.version,
        cluster_guid: meta.cluster_guid,
        datastore_locked: meta.datastore_locked,
        cluster_info_revision: meta.cluster_info_revision,
        cluster_type: meta.cluster_type,
        allocations,
        leaked_handles,
        count: problems.len(),
        problems: problems.to_vec(),
    }
}

fn handle_info(h: &Handle) -> HandleInfo {
    HandleInfo {
        id: h.spec.handle_id.clone(),
        uid: h.metadata.uid.clone(),
        revision: h.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// One leaked allocation a report names: its address, handle and sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leak {
    pub ip: IpAddr,
    pub handle: Option<String>,
    pub sequence_number: Option<u64>,
}

/// What every report names as leaked (calicoctl's merge, by the whole allocation rather than the
/// address alone): allocations not in use in each report, and handles leaked at the same
/// revision in each.
pub fn merge(reports: &[CheckReport]) -> (BTreeSet<Leak>, Vec<HandleInfo>) {
    let mut leaks: Option<BTreeSet<Leak>> = None;
    let mut handles: Option<BTreeMap<String, HandleInfo>> = None;
    for r in reports {
        let these: BTreeSet<Leak> = r
            .allocations
            .values()
            .flatten()
            .filter(|a| !a.in_use)
            .filter_map(|a| {
                Some(Leak {
                    ip: a.ip.parse().ok()?,
                    handle: (!a.handle.is_empty()).then(|| a.handle.clone()),
                    sequence_number: a.sequence_number,
                })
            })
            .collect();
        leaks = Some(match leaks {
            None => these,
            Some(prev) => prev.intersection(&these).cloned().collect(),
        });
        let hs: BTreeMap<String, HandleInfo> = r
            .leaked_handles
            .iter()
            .map(|h| (h.id.clone(), h.clone()))
            .collect();
        handles = Some(match handles {
            None => hs,
            Some(prev) => hs
                .into_iter()
                .filter(|(id, h)| {
                    prev.get(id)
                        .is_some_and(|p| p.revision == h.revision && p.uid == h.uid)
                })
                .collect(),
        });
    }
    (
        leaks.unwrap_or_default(),
        handles.unwrap_or_default().into_values().collect(),
    )
}

/// Why a report's entry is not released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The address is not allocated any more (already released).
    Gone,
    /// The address is allocated under another handle or sequence number: released and handed
    /// out again since the report.
    Reallocated,
    /// The live check does not find it leaked (its pod came back, or uses it).
    InUse,
    /// The handle changed since the report (another resourceVersion or UID) or now holds
    /// addresses.
    HandleChanged,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::Gone => "no longer allocated",
            Skip::Reallocated => "allocated again since the report",
            Skip::InUse => "in use again (its pod exists or uses it)",
            Skip::HandleChanged => "handle changed since the report",
        })
    }
}

/// What a release from reports does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReleasePlan {
    /// Allocations to free, by the block holding them (one guarded write per block).
    pub by_block: BTreeMap<IpNet, Vec<Allocation>>,
    /// Handles to delete (each re-checked by the engine against the blocks before it goes).
    pub handles: Vec<String>,
    /// Entries left alone: the address or handle ID, and why.
    pub skipped: Vec<(String, Skip)>,
}

impl ReleasePlan {
    pub fn ip_count(&self) -> usize {
        self.by_block.values().map(Vec::len).sum()
    }
}

/// Matches the reports' leaks against a check of the live state (`live` is its input,
/// `live_problems` its findings).
pub fn plan(
    leaks: &BTreeSet<Leak>,
    handles: &[HandleInfo],
    live: &CheckInput,
    live_problems: &[Problem],
) -> ReleasePlan {
    let mut out = ReleasePlan::default();
    let still_leaked = leaked_ips(live_problems);
    let allocs = Ipam::allocations(&live.blocks);
    let mut by_ip: HashMap<IpAddr, Vec<&Allocation>> = HashMap::new();
    for a in &allocs {
        by_ip.entry(a.ip).or_default().push(a);
    }
    for l in leaks {
        let at_ip: &[&Allocation] = by_ip.get(&l.ip).map_or(&[], Vec::as_slice);
        let same: Vec<&&Allocation> = at_ip
            .iter()
            .filter(|a| a.handle_id == l.handle && a.sequence_number == l.sequence_number)
            .collect();
        let skip = if at_ip.is_empty() {
            Some(Skip::Gone)
        } else if same.is_empty() {
            Some(Skip::Reallocated)
        } else if !still_leaked.contains(&l.ip) {
            Some(Skip::InUse)
        } else {
            None
        };
        match skip {
            Some(s) => out.skipped.push((l.ip.to_string(), s)),
            None => {
                for a in same {
                    out.by_block.entry(a.block).or_default().push((*a).clone());
                }
            }
        }
    }
    let leaked_now: BTreeSet<&str> = live_problems
        .iter()
        .filter_map(|p| match p {
            Problem::HandleWithoutAddresses { handle } => Some(handle.as_str()),
            _ => None,
        })
        .collect();
    let live_handles: HashMap<&str, &Handle> = live
        .handles
        .iter()
        .map(|x| (x.spec.handle_id.as_str(), x))
        .collect();
    for h in handles {
        let live_h = live_handles.get(h.id.as_str());
        match live_h {
            None => out.skipped.push((h.id.clone(), Skip::Gone)),
            Some(x) if handle_info(x) != *h || !leaked_now.contains(h.id.as_str()) => {
                out.skipped.push((h.id.clone(), Skip::HandleChanged))
            }
            Some(_) => out.handles.push(h.id.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Block, CalicoKind, CrdMode, IPAMHandleSpec};
    use crate::ipam::block as blk;
    use crate::ipam::report::{self, InUse};

    fn block(cidr: &str) -> Block {
        let net: IpNet = cidr.parse().unwrap();
        Block::new(
            &crate::ipam::names::block_name(&net),
            &CrdMode::V1.resource(CalicoKind::IPAMBlock),
            blk::new_block(&net, Some("host:a".into()), 1, None),
        )
    }

    fn handle(id: &str, rv: &str) -> Handle {
        let mut h = Handle::new(
            id,
            &CrdMode::V1.resource(CalicoKind::IPAMHandle),
            IPAMHandleSpec {
                handle_id: id.into(),
                block: [("10.0.0.0/26".to_string(), 1)].into(),
                ..Default::default()
            },
        );
        h.metadata.resource_version = Some(rv.into());
        h.metadata.uid = Some(format!("uid-{id}"));
        h
    }

    fn attrs(pod: &str) -> crate::api::StrMap {
        [
            ("namespace".to_string(), "ns".to_string()),
            ("pod".into(), pod.into()),
            ("node".into(), "a".into()),
        ]
        .into()
    }

    /// Pod `live` holds .0 and uses it, pod `gone` held .1 and is gone; handle `h-empty` holds nothing.
    fn world() -> CheckInput {
        let mut b = block("10.0.0.0/26");
        blk::allocate(&mut b.spec, 1, Some("h-live"), &attrs("live"), |_| false);
        blk::allocate(&mut b.spec, 1, Some("h-gone"), &attrs("gone"), |_| false);
        CheckInput {
            blocks: vec![b],
            handles: vec![
                handle("h-live", "1"),
                handle("h-gone", "2"),
                handle("h-empty", "3"),
            ],
            pods: Some([("ns".to_string(), "live".to_string())].into()),
            in_use: Some(vec![InUse {
                ip: "10.0.0.0".parse().unwrap(),
                namespace: "ns".into(),
                pod: "live".into(),
            }]),
            ..Default::default()
        }
    }

    fn report_of(input: &CheckInput) -> CheckReport {
        build_report(
            input,
            &report::check(input),
            ReportMeta {
                version: "tortie test".into(),
                cluster_guid: "g".into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn the_report_marks_only_leaks_and_reads_back_like_calicoctls() {
        let r = report_of(&world());
        let a = &r.allocations["10.0.0.0"][0];
        assert!(
            a.in_use && a.owners == vec!["Workload(ns/live)".to_string()],
            "{a:?}"
        );
        let g = &r.allocations["10.0.0.1"][0];
        assert!(
            !g.in_use && g.handle == "h-gone" && g.sequence_number.is_some(),
            "{g:?}"
        );
        assert_eq!(
            r.leaked_handles,
            vec![HandleInfo {
                id: "h-empty".into(),
                uid: Some("uid-h-empty".into()),
                revision: "3".into()
            }]
        );
        // calicoctl's field names.
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "version",
            "clusterGUID",
            "datastoreLocked",
            "clusterInformationRevision",
            "clusterType",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["leakedHandles"][0]["ID"], "h-empty");
        assert_eq!(v["allocations"]["10.0.0.1"][0]["inUse"], false);
        // A calicoctl report (no tortie fields) reads.
        let calicoctl = r#"{"version":"v3.30.0","clusterGUID":"g","datastoreLocked":true,
            "clusterInformationRevision":"5","clusterType":"k8s,kdd",
            "allocations":{"10.0.0.1":[{"ip":"10.0.0.1","handle":"h-gone","sequenceNumber":3,
            "inUse":false,"owners":null}]},
            "leakedHandles":[{"ID":"h-empty","UID":"uid-h-empty","Revision":"3"}]}"#;
        let back: CheckReport = serde_json::from_str(calicoctl).unwrap();
        assert_eq!(back.allocations["10.0.0.1"][0].sequence_number, Some(3));
        assert_eq!(back.leaked_handles[0].revision, "3");
    }

    #[test]
    fn only_what_every_report_and_the_live_check_agree_on_is_released() {
        let input = world();
        let r = report_of(&input);
        let (leaks, handles) = merge(std::slice::from_ref(&r));
        assert_eq!(leaks.len(), 1);
        let p = plan(&leaks, &handles, &input, &report::check(&input));
        assert_eq!(p.ip_count(), 1);
        let only = &p.by_block.values().next().unwrap()[0];
        assert_eq!(only.ip.to_string(), "10.0.0.1");
        assert_eq!(p.handles, vec!["h-empty".to_string()]);
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);

        // The pod came back: nothing of it is released.
        let mut back = world();
        back.pods.as_mut().unwrap().insert(("ns".into(), "gone".into()));
        let p = plan(&leaks, &handles, &back, &report::check(&back));
        assert_eq!(p.ip_count(), 0);
        assert_eq!(p.skipped[0], ("10.0.0.1".to_string(), Skip::InUse));

        // Released and handed out again (another sequence number): left alone.
        let mut again = world();
        let b = &mut again.blocks[0].spec;
        blk::release(b, &[1]);
        b.sequence_number = Some(99);
        blk::assign(b, 1, Some("h-gone"), &attrs("gone")).unwrap();
        let p = plan(&leaks, &handles, &again, &report::check(&again));
        assert_eq!(p.skipped[0], ("10.0.0.1".to_string(), Skip::Reallocated));

        // Released meanwhile.
        let mut freed = world();
        blk::release(&mut freed.blocks[0].spec, &[1]);
        let p = plan(&leaks, &handles, &freed, &report::check(&freed));
        assert_eq!(p.skipped[0], ("10.0.0.1".to_string(), Skip::Gone));

        // A handle written since (another resourceVersion) stays.
        let mut touched = world();
        touched.handles[2].metadata.resource_version = Some("9".into());
        let p = plan(&leaks, &handles, &touched, &report::check(&touched));
        assert!(p.handles.is_empty());
        assert!(p.skipped.contains(&("h-empty".to_string(), Skip::HandleChanged)));
    }

    #[test]
    fn merged_reports_keep_only_common_leaks() {
        let input = world();
        let r1 = report_of(&input);
        let mut r2 = r1.clone();
        // In the second report the address is in use, and the handle moved on.
        r2.allocations.get_mut("10.0.0.1").unwrap()[0].in_use = true;
        r2.leaked_handles[0].revision = "4".into();
        let (leaks, handles) = merge(&[r1.clone(), r2]);
        assert!(leaks.is_empty());
        assert!(handles.is_empty());
        let (leaks, handles) = merge(&[r1.clone(), r1]);
        assert_eq!((leaks.len(), handles.len()), (1, 1));
    }
}
