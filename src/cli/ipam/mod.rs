//! `tortie ipam show|check|release|configure|split`: calicoctl's IPAM tooling on tortie's engine.
//! Every IPAM write goes through [`crate::ipam`]; the decisions are pure functions there
//! (`report`, `leaks`, `split`, `config`), this module lists, asks and prints.

mod check;
mod configure;
mod show;
mod split;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use kube::api::{Api, ListParams};

use super::output::{self, Format};
use crate::api::CrdMode;
use crate::controllers::SlimPod;
use crate::controllers::pod::pod_info;
use crate::ipam::{Ipam, report};

#[derive(Args, Debug)]
pub struct IpamArgs {
    /// Calico CRD mode: auto (detect from the API groups), v1 or v3.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto, env = "TORTIE_CRD_MODE", global = true)]
    pub crd_mode: ModeArg,
    #[command(subcommand)]
    pub command: IpamCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Auto,
    V1,
    V3,
}

#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Pool usage (calicoctl ipam show); with a flag, one address, the blocks, the borrowed
    /// addresses or the IPAM configuration instead.
    ///
    /// IN USE counts every allocated address of the blocks a pool owns (a block belongs to the
    /// most specific pool that could have carved it); FREE includes the space not yet carved into
    /// blocks. `-o wide` adds COOLING (released addresses not yet reusable), BORROWED (addresses
    /// of a block allocated by another node) and, for pools, BLOCKS and DISABLED.
    Show(show::ShowArgs),
    /// Consistency check of blocks, handles, affinities and pods (calicoctl ipam check).
    ///
    /// Prints a count per kind of problem; --show-problem-ips lists each. Exit status 1 when
    /// problems are found. `-o FILE` (any value that is not a format name: `-o report.json`,
    /// `-o ./json`) writes calicoctl's report to FILE, which `tortie ipam release --from-report`
    /// (and calicoctl) read; `-o json|yaml` prints the same report.
    Check(check::CheckArgs),
    /// Release one address (refused while a live pod holds it, unless --force), or the leaks a
    /// check report names (calicoctl ipam release).
    ///
    /// With --from-report, an address is released only while every report names it leaked AND a
    /// check of the cluster made now still finds it leaked under the same handle and allocation
    /// sequence number: an address whose pod came back, or that was released and handed out
    /// again since the report, is left alone (listed as skipped). A handle is deleted only at
    /// the resourceVersion the reports recorded and while no block holds an address of it.
    /// Unlike calicoctl, no datastore lock is needed (the live re-check stands in for it).
    Release(check::ReleaseArgs),
    /// Change the IPAM configuration (calicoctl ipam configure): the object `default`
    /// (IPAMConfig in v1 mode, IPAMConfiguration in v3), created with Calico's defaults when
    /// missing. Allocators (the CNI plugin, the agent) read it on their next request.
    Configure(configure::ConfigureArgs),
    /// Split an IPPool into 2^n equal pools (calicoctl ipam split), safe while pods run.
    ///
    /// The children (`split-<name>-<i>`) get the parent's spec with their own CIDR, enabled.
    /// Each is at least one block wide, so every existing block, its allocations and its
    /// affinity stay as they are, inside one child. Order: the children are created, the parent
    /// is disabled and deleted (its drain finalizer removed: its addresses now belong to the
    /// children); the children become allocatable once the operator sees the parent gone.
    /// Unlike calicoctl, no datastore lock is needed: no IPAM object is written.
    Split(split::SplitArgs),
}

/// Errors of the ipam subcommands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Connect(#[from] super::KubeConfigError),
    #[error("detecting the Calico CRD mode: {0}")]
    Mode(#[source] kube::Error),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error("listing Pods: {0}")]
    Pods(#[source] kube::Error),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("IP address {0} is not assigned")]
    NotAssigned(IpAddr),
    #[error(
        "IP address {ip} is held by pod {namespace}/{pod}, which still exists; use --force to release it anyway"
    )]
    LivePod {
        ip: IpAddr,
        namespace: String,
        pod: String,
    },
    #[error(transparent)]
    Encode(#[from] output::EncodeError),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Split(#[from] crate::ipam::split::SplitError),
    #[error("{what}: {source}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Live pods, and the addresses they use as the GC reads them (status.podIPs, Calico's and
/// Multus' annotations): what Calico's check reads from WorkloadEndpoints. A host-network pod
/// uses its node's address, a finished pod none (its sandbox is gone).
async fn live_pods(
    client: &kube::Client,
) -> Result<(BTreeSet<(String, String)>, Vec<report::InUse>), CliError> {
    let pods: Api<SlimPod> = Api::all(client.clone());
    let list = pods.list(&ListParams::default()).await.map_err(CliError::Pods)?;
    let mut live = BTreeSet::new();
    let mut in_use = Vec::new();
    for p in &list.items {
        let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
            continue;
        };
        live.insert((ns.clone(), name.clone()));
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let mut ips = pod_info(p).map(|i| i.ips).unwrap_or_default();
        ips.sort();
        ips.dedup();
        in_use.extend(ips.into_iter().map(|ip| report::InUse {
            ip,
            namespace: ns.clone(),
            pod: name.clone(),
        }));
    }
    Ok((live, in_use))
}

/// The cluster, its CRD mode and the IPAM engine on it.
pub(super) struct Conn {
    client: kube::Client,
    mode: CrdMode,
    ipam: Ipam,
}

impl IpamArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        Ok(self.execute().await?)
    }

    async fn connect(&self) -> Result<Conn, CliError> {
        let client = super::connect().await?;
        let mode = match self.crd_mode {
            ModeArg::V1 => CrdMode::V1,
            ModeArg::V3 => CrdMode::V3,
            ModeArg::Auto => CrdMode::detect(&client).await.map_err(CliError::Mode)?,
        };
        let ipam = Ipam::new(client.clone(), mode).await?;
        Ok(Conn { client, mode, ipam })
    }

    async fn execute(self) -> Result<ExitCode, CliError> {
        // Bad flags are refused before anything is read.
        if let IpamCommand::Release(a) = &self.command {
            a.validate()?;
        }
        let c = self.connect().await?;
        match self.command {
            IpamCommand::Show(a) => a.run(&c).await,
            IpamCommand::Check(a) => a.run(&c).await,
            IpamCommand::Release(a) => a.run(&c).await,
            IpamCommand::Configure(a) => a.run(&c).await,
            IpamCommand::Split(a) => a.run(&c).await,
        }
    }
}

/// Prints `text` to stdout.
fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
}

/// `value` as the format asks, or `table` (built lazily) for the table formats.
fn render<T: serde::Serialize>(
    value: &T,
    f: Format,
    table: impl FnOnce() -> String,
) -> Result<String, CliError> {
    Ok(match output::encode(value, f)? {
        Some(s) => s,
        None => table(),
    })
}
