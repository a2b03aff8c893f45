//! `tortie ipam show|check|release`: calicoctl's IPAM tooling on tortie's engine.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::api::CrdMode;
use crate::controllers::SlimPod;
use crate::controllers::pod::pod_info;
use crate::ipam::usage::PoolRef;
use crate::ipam::{Ipam, ReleaseOptions, report};

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

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Pool usage (and per-block usage, borrowed addresses).
    Show {
        /// One row per block, and the borrowed addresses.
        #[arg(long)]
        show_blocks: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Consistency check of blocks, handles and affinities; exit status 1 when problems are found.
    Check {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Release one address (refused while a live pod holds it, unless --force).
    Release {
        #[arg(long)]
        ip: IpAddr,
        /// Release even if the pod recorded for the address still exists.
        #[arg(long)]
        force: bool,
    },
}

/// Errors of the ipam subcommands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("connecting to the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error("listing Pods: {0}")]
    Pods(#[source] kube::Error),
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
    #[error("encoding output: {0}")]
    Encode(String),
}

fn emit<T: serde::Serialize>(v: &T, o: Output) -> Result<String, CliError> {
    match o {
        Output::Json => serde_json::to_string_pretty(v)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Encode(e.to_string())),
        Output::Yaml => serde_saphyr::to_string(v).map_err(|e| CliError::Encode(e.to_string())),
        Output::Table => unreachable!("tables are rendered by the caller"),
    }
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

impl IpamArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        Ok(self.execute().await?)
    }

    async fn execute(self) -> Result<ExitCode, CliError> {
        let client = kube::Client::try_default().await.map_err(CliError::Client)?;
        let mode = match self.crd_mode {
            ModeArg::V1 => CrdMode::V1,
            ModeArg::V3 => CrdMode::V3,
            ModeArg::Auto => CrdMode::detect(&client).await.map_err(CliError::Client)?,
        };
        let ipam = Ipam::new(client.clone(), mode).await?;
        match self.command {
            IpamCommand::Show { show_blocks, output } => {
                let blocks = ipam.list_blocks().await?;
                let mut u = report::usage(&ipam.pools(), &blocks, show_blocks);
                if !show_blocks {
                    u.borrowed.clear();
                }
                let mut text = match output {
                    Output::Table => report::render_usage(&u),
                    o => emit(&u, o)?,
                };
                // Addresses IPReservations keep from allocation (counted as free above).
                if output == Output::Table {
                    let reserved = ipam.reserved();
                    for p in ipam.pools().iter().filter_map(PoolRef::from_pool) {
                        let n = reserved.count_in(&p.cidr);
                        if n > 0 {
                            text.push_str(&format!(
                                "IPS RESERVED in IP Pool {} ({}): {n}, never allocated (IPReservation)\n",
                                p.name, p.cidr
                            ));
                        }
                    }
                }
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            IpamCommand::Check { output } => {
                let (pods, in_use) = live_pods(&client).await?;
                let input = report::CheckInput {
                    blocks: ipam.list_blocks().await?,
                    handles: ipam.list_handles().await?,
                    affinities: ipam.list_affinities().await?,
                    pods: Some(pods),
                    in_use: Some(in_use),
                    pools: Some(ipam.pools().iter().filter_map(PoolRef::from_pool).collect()),
                    scope: None,
                };
                let problems = report::check(&input);
                let text = match output {
                    Output::Table => {
                        let mut s = format!(
                            "Checking {} blocks, {} handles, {} affinities.\n",
                            input.blocks.len(),
                            input.handles.len(),
                            input.affinities.len()
                        );
                        s.push_str(&report::render_problems(&problems));
                        s
                    }
                    o => emit(
                        &serde_json::json!({ "problems": problems, "count": problems.len() }),
                        o,
                    )?,
                };
                print!("{text}");
                Ok(if problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            IpamCommand::Release { ip, force } => {
                let blocks = ipam.list_blocks().await?;
                let alloc = Ipam::allocations(&blocks)
                    .into_iter()
                    .find(|a| a.ip == ip)
                    .ok_or(CliError::NotAssigned(ip))?;
                if !force
                    && let (Some(ns), Some(pod)) = (alloc.attrs.get("namespace"), alloc.attrs.get("pod"))
                {
                    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
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
                let out = ipam.release_block_allocations(&alloc.block, &[opt]).await?;
                if out.released.is_empty() {
                    return Err(CliError::NotAssigned(ip));
                }
                println!("Successfully released IP address {ip}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
