//! `tortie ipam check` (and its report) and `tortie ipam release` (one address, or the leaks of
//! reports, re-checked against the cluster first).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::core::{ApiResource, NotUsed, Object};

use super::super::output::{self, Format};
use super::{CliError, Conn, live_pods, print, render};
use crate::api::cluster::ClusterInformationSpec;
use crate::ipam::block::{AllocRef, GcEdit};
use crate::ipam::leaks::{self, CheckReport, ReportMeta};
use crate::ipam::report::{self, CheckInput, Problem};
use crate::ipam::usage::PoolRef;
use crate::ipam::{Ipam, ReleaseOptions};
use crate::table::TextTable;

/// What `check -o` asks for: a format on stdout, or a file for the report.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckOutput {
    Format(Format),
    File(PathBuf),
}

fn parse_check_output(s: &str) -> Result<CheckOutput, String> {
    if s.is_empty() {
        return Err("give a format (table, wide, json, yaml) or a file path".into());
    }
    Ok(match Format::from_str(s, false) {
        Ok(f) => CheckOutput::Format(f),
        Err(_) => CheckOutput::File(PathBuf::from(s)),
    })
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// List every problem found (leaked addresses with their pod and handle, addresses in use
    /// but not allocated, handles without addresses, ...), not only the counts.
    #[arg(long)]
    pub show_problem_ips: bool,
    /// table, wide (the problems as a table too), json or yaml (the report on stdout); any other
    /// value is a FILE the report is written to (as calicoctl's `-o`), the counts on stdout.
    #[arg(short = 'o', long, value_name = "FORMAT|FILE", default_value = "table", value_parser = parse_check_output)]
    pub output: CheckOutput,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The address to release.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "from_report",
        required_unless_present = "from_report"
    )]
    pub ip: Option<IpAddr>,
    /// A report of `tortie ipam check -o FILE` (or calicoctl's). Repeat it to release only what
    /// every report names leaked (reports taken apart in time give more certainty).
    #[arg(long, value_name = "FILE")]
    pub from_report: Vec<PathBuf>,
    /// With --ip: release even if the pod recorded for the address still exists.
    #[arg(long)]
    pub force: bool,
}

/// This build's name in reports.
fn version() -> String {
    format!("tortie {}", env!("CARGO_PKG_VERSION"))
}

/// What could be read of ClusterInformation `default`.
enum ClusterInfo {
    Found(ClusterInformationSpec, String),
    Absent,
    /// The kubeconfig may not read it (an account without `get` on `clusterinformations/default`).
    Forbidden,
}

/// ClusterInformation `default`: its spec and resourceVersion.
async fn cluster_info(c: &Conn) -> Result<ClusterInfo, CliError> {
    let ar = ApiResource {
        group: c.mode.group().into(),
        version: c.mode.version().into(),
        api_version: c.mode.api_version(),
        kind: "ClusterInformation".into(),
        plural: "clusterinformations".into(),
    };
    let api: Api<Object<ClusterInformationSpec, NotUsed>> = Api::all_with(c.client.clone(), &ar);
    match api.get_opt("default").await {
        Ok(Some(o)) => {
            let rv = o.metadata.resource_version.clone().unwrap_or_default();
            Ok(ClusterInfo::Found(o.spec, rv))
        }
        Ok(None) => Ok(ClusterInfo::Absent),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(ClusterInfo::Forbidden),
        Err(e) => Err(CliError::Read {
            what: "ClusterInformation default".into(),
            source: e,
        }),
    }
}

/// Everything a check looks at, listed (a spinner on a terminal while the lists come in).
async fn check_input(c: &Conn) -> Result<CheckInput, CliError> {
    let pb = output::spinner("Listing IPAM blocks");
    let blocks = c.ipam.list_blocks().await?;
    pb.set_message(format!("{} blocks; listing IPAM handles", blocks.len()));
    let handles = c.ipam.list_handles().await?;
    pb.set_message(format!(
        "{} blocks, {} handles; listing block affinities",
        blocks.len(),
        handles.len()
    ));
    let affinities = c.ipam.list_affinities().await?;
    pb.set_message(format!(
        "{} blocks, {} handles, {} affinities; listing pods",
        blocks.len(),
        handles.len(),
        affinities.len()
    ));
    let (pods, in_use) = live_pods(&c.client).await?;
    pb.finish_and_clear();
    Ok(CheckInput {
        blocks,
        handles,
        affinities,
        pods: Some(pods),
        in_use: Some(in_use),
        pools: Some(c.ipam.pools().iter().filter_map(PoolRef::from_pool).collect()),
        scope: None,
    })
}

/// The counts calicoctl prints, for tortie's problem kinds.
fn summary(input: &CheckInput, problems: &[Problem], c: &Conn, show: bool) -> String {
    let count = |f: fn(&Problem) -> bool| problems.iter().filter(|p| f(p)).count();
    let allocations: usize = Ipam::allocations(&input.blocks).len();
    let users: BTreeSet<IpAddr> = input.in_use.iter().flatten().map(|u| u.ip).collect();
    let active_pools = c.ipam.pools().iter().filter(|p| !p.spec.is_disabled()).count();
    let leaked = count(|p| {
        matches!(
            p,
            Problem::PodGone { .. } | Problem::AllocationNotUsedByPod { .. }
        )
    });
    let outside = count(|p| matches!(p, Problem::InUseOutsidePools { .. }));
    let unallocated = count(|p| matches!(p, Problem::InUseWithoutAllocation { .. }));
    let leaked_handles = count(|p| matches!(p, Problem::HandleWithoutAddresses { .. }));
    let missing: BTreeSet<&str> = problems
        .iter()
        .filter_map(|p| match p {
            Problem::MissingHandle { handle, .. } => Some(handle.as_str()),
            _ => None,
        })
        .collect();
    let missing_count = count(|p| matches!(p, Problem::MissingHandle { .. }));
    let other = problems.len() - leaked - outside - unallocated - leaked_handles - missing_count;
    let mut s = String::from("Checking IPAM for inconsistencies...\n\n");
    s.push_str(&format!(
        "Found {} IPAM blocks recording {allocations} allocations, {active_pools} active IP pools, {} IPAM handles, {} block affinities.\n",
        input.blocks.len(),
        input.handles.len(),
        input.affinities.len()
    ));
    s.push_str(&format!(
        "Found {} pods using {} IPs.\n\n",
        input.pods.as_ref().map_or(0, |p| p.len()),
        users.len()
    ));
    s.push_str(&format!(
        "Found {leaked} IPs that are allocated in IPAM but not actually in use.\n"
    ));
    s.push_str(&format!(
        "Found {outside} in-use IPs that are not in active IP pools.\n"
    ));
    s.push_str(&format!(
        "Found {unallocated} in-use IPs that are in active IP pools but have no corresponding IPAM allocation.\n"
    ));
    s.push_str(&format!(
        "Found {leaked_handles} handles with no matching IPs (and {} handles with matches).\n",
        input.handles.len().saturating_sub(leaked_handles)
    ));
    s.push_str(&format!(
        "Found {} handles mentioned in blocks with no matching handle resource.\n",
        missing.len()
    ));
    s.push_str(&format!(
        "Found {other} other problems (blocks, affinities, handle counts, addresses used twice).\n"
    ));
    if show {
        for p in problems {
            s.push_str(&format!("  - {p}\n"));
        }
    }
    s.push_str(&format!("Check complete; found {} problems.\n", problems.len()));
    s
}

/// The problems as a table (`-o wide`).
fn problems_table(problems: &[Problem]) -> String {
    let mut t = TextTable::new(&["PROBLEM", "IP", "DETAIL"]);
    for p in problems {
        let v = serde_json::to_value(p).unwrap_or_default();
        t.row([
            v["kind"].as_str().unwrap_or("").to_string(),
            v["ip"].as_str().unwrap_or("-").to_string(),
            p.to_string(),
        ]);
    }
    t.render()
}

async fn report_meta(c: &Conn) -> Result<ReportMeta, CliError> {
    let ci = cluster_info(c).await?;
    Ok(match ci {
        ClusterInfo::Found(spec, rv) => ReportMeta {
            version: version(),
            cluster_guid: spec.cluster_guid.unwrap_or_default(),
            datastore_locked: spec.datastore_ready == Some(false),
            cluster_info_revision: rv,
            cluster_type: spec.cluster_type.unwrap_or_default(),
        },
        ClusterInfo::Absent => ReportMeta {
            version: version(),
            ..Default::default()
        },
        ClusterInfo::Forbidden => {
            eprintln!(
                "note: not allowed to read ClusterInformation default: the report names no cluster (clusterGUID empty)"
            );
            ReportMeta {
                version: version(),
                ..Default::default()
            }
        }
    })
}

impl CheckArgs {
    pub(super) async fn run(self, c: &Conn) -> Result<ExitCode, CliError> {
        let input = check_input(c).await?;
        let problems = report::check(&input);
        let rep = leaks::build_report(&input, &problems, report_meta(c).await?);
        let text = match &self.output {
            CheckOutput::Format(f) => render(&rep, *f, || {
                let mut s = summary(&input, &problems, c, self.show_problem_ips);
                if *f == Format::Wide && !problems.is_empty() {
                    s.push('\n');
                    s.push_str(&problems_table(&problems));
                }
                s
            })?,
            CheckOutput::File(path) => {
                let json = serde_json::to_string_pretty(&rep).map_err(|e| CliError::File {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                std::fs::write(path, json + "\n").map_err(|e| CliError::File {
                    path: path.clone(),
                    detail: format!("writing the report: {e}"),
                })?;
                let mut s = summary(&input, &problems, c, self.show_problem_ips);
                s.push_str(&format!("Report written to {}\n", path.display()));
                s
            }
        };
        print(&text);
        Ok(if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

fn read_report(path: &PathBuf) -> Result<CheckReport, CliError> {
    let file = |detail: String| CliError::File {
        path: path.clone(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| file(format!("reading the report: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| file(format!("not a check report: {e}")))
}

impl ReleaseArgs {
    /// Refuses unreadable reports before anything is asked of the cluster.
    pub(super) fn validate(&self) -> Result<(), CliError> {
        for p in &self.from_report {
            read_report(p)?;
        }
        Ok(())
    }

    pub(super) async fn run(self, c: &Conn) -> Result<ExitCode, CliError> {
        match self.ip {
            Some(ip) => release_one(c, ip, self.force).await,
            None => release_from_reports(c, &self.from_report).await,
        }
    }
}

async fn release_one(c: &Conn, ip: IpAddr, force: bool) -> Result<ExitCode, CliError> {
    let blocks = c.ipam.list_blocks().await?;
    let alloc = Ipam::allocations(&blocks)
        .into_iter()
        .find(|a| a.ip == ip)
        .ok_or(CliError::NotAssigned(ip))?;
    if !force && let (Some(ns), Some(pod)) = (alloc.attrs.get("namespace"), alloc.attrs.get("pod")) {
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
        if pods
            .get_metadata_opt(pod)
            .await
            .map_err(CliError::Pods)?
            .is_some()
        {
            return Err(CliError::LivePod {
                ip,
                namespace: ns.into(),
                pod: pod.into(),
            });
        }
    }
    // Guarded by what we just read: an address re-allocated meanwhile is not freed.
    let opt = ReleaseOptions {
        ip,
        handle_id: alloc.handle_id.clone(),
        sequence_number: alloc.sequence_number,
    };
    let out = c.ipam.release_block_allocations(&alloc.block, &[opt]).await?;
    if out.released.is_empty() {
        return Err(CliError::NotAssigned(ip));
    }
    print(&format!("Successfully released IP address {ip}\n"));
    Ok(ExitCode::SUCCESS)
}

async fn release_from_reports(c: &Conn, files: &[PathBuf]) -> Result<ExitCode, CliError> {
    let mut reports = Vec::new();
    let guid = match cluster_info(c).await? {
        ClusterInfo::Found(s, _) => Some(s.cluster_guid.unwrap_or_default()),
        ClusterInfo::Absent => Some(String::new()),
        ClusterInfo::Forbidden => None,
    };
    for f in files {
        let r = read_report(f)?;
        // Without read access the cluster cannot be told apart: only a report that names no
        // cluster either is taken (each entry is still re-checked against the cluster).
        let Some(guid) = guid
            .clone()
            .or_else(|| r.cluster_guid.is_empty().then(String::new))
        else {
            return Err(CliError::Refused(format!(
                "{}: the report names cluster {:?}, and this kubeconfig may not read ClusterInformation default to compare; refusing to release",
                f.display(),
                r.cluster_guid
            )));
        };
        if r.cluster_guid != guid {
            return Err(CliError::Refused(format!(
                "{}: the report is of another cluster (clusterGUID {:?}, this cluster's is {:?}); refusing to release",
                f.display(),
                r.cluster_guid,
                guid
            )));
        }
        if r.version != version() {
            eprintln!(
                "note: {} was written by {:?}; each entry is re-checked against the cluster before it is released",
                f.display(),
                r.version
            );
        }
        reports.push(r);
    }
    let (leaked, handles) = leaks::merge(&reports);
    print(&format!(
        "The reports name {} leaked IPs and {} leaked handles; checking them against the cluster...\n",
        leaked.len(),
        handles.len()
    ));
    let input = check_input(c).await?;
    let problems = report::check(&input);
    let plan = leaks::plan(&leaked, &handles, &input, &problems);

    let pb = output::bar((plan.by_block.len() + plan.handles.len()) as u64, "Releasing");
    let (mut released, mut errors) = (0usize, 0usize);
    let mut lines = String::new();
    for (block, allocs) in &plan.by_block {
        let free: Vec<AllocRef> = allocs
            .iter()
            .filter_map(|a| {
                Some(AllocRef {
                    ordinal: a.ordinal,
                    handle_id: a.handle_id.clone()?,
                    sequence_number: a.sequence_number,
                })
            })
            .collect();
        // Allocations without a handle: a guarded release by sequence number.
        let bare: Vec<ReleaseOptions> = allocs
            .iter()
            .filter(|a| a.handle_id.is_none())
            .map(|a| ReleaseOptions {
                ip: a.ip,
                handle_id: None,
                sequence_number: a.sequence_number,
            })
            .collect();
        let mut freed = 0;
        if !free.is_empty() {
            let edit = GcEdit {
                free,
                ..Default::default()
            };
            match c.ipam.release_guarded(block, &edit).await {
                Ok(r) => freed += r.freed.len(),
                Err(e) => {
                    errors += 1;
                    pb.suspend(|| eprintln!("IPAMBlock {block}: {e}"));
                }
            }
        }
        if !bare.is_empty() {
            match c.ipam.release_block_allocations(block, &bare).await {
                Ok(r) => freed += r.released.len(),
                Err(e) => {
                    errors += 1;
                    pb.suspend(|| eprintln!("IPAMBlock {block}: {e}"));
                }
            }
        }
        if freed < allocs.len() {
            lines.push_str(&format!(
                "  {} of {} addresses in block {block} changed just before the release: left alone\n",
                allocs.len() - freed,
                allocs.len()
            ));
        }
        released += freed;
        pb.inc(1);
    }
    let mut deleted = 0usize;
    for h in &plan.handles {
        match c.ipam.delete_unreferenced_handle(h).await {
            Ok(true) => deleted += 1,
            Ok(false) => {
                lines.push_str(&format!("  handle {h}: holds addresses again, left alone\n"));
            }
            Err(e) => {
                errors += 1;
                pb.suspend(|| eprintln!("IPAMHandle {h}: {e}"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    let mut s = String::new();
    for (what, why) in &plan.skipped {
        s.push_str(&format!("  skipped {what}: {why}\n"));
    }
    s.push_str(&lines);
    s.push_str(&format!(
        "Released {released} IPs successfully; {} skipped.\n",
        leaked.len().saturating_sub(released)
    ));
    s.push_str(&format!(
        "Released {deleted} handles; {} skipped; {errors} errors.\n",
        handles.len().saturating_sub(deleted)
    ));
    print(&s);
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output_is_a_format_or_a_file() {
        assert_eq!(parse_check_output("json"), Ok(CheckOutput::Format(Format::Json)));
        assert_eq!(parse_check_output("wide"), Ok(CheckOutput::Format(Format::Wide)));
        assert_eq!(
            parse_check_output("report.json"),
            Ok(CheckOutput::File("report.json".into()))
        );
        assert_eq!(
            parse_check_output("./json"),
            Ok(CheckOutput::File("./json".into()))
        );
        assert!(parse_check_output("").is_err());
    }
}
