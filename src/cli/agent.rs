//! `tortie agent`: keeps a node's BIRD configuration in step with what the operator published,
//! and serves the node's IPAM requests warm over a unix socket (`--ipam-socket`, see
//! [`crate::cni::server`]); either part can be turned off (`--no-bgp`, `--ipam-socket none`).
//!
//! The work is in [`crate::node`]; this is the command line and what starts each part.
//!
//! The agent does not run BIRD: in the chart's DaemonSet `bird` (and `bird6`) are containers of
//! the same pod, sharing the config directory (`--config-dir`) and the control sockets
//! (`--bird-socket`, `--bird6-socket`) through emptyDirs. The kubelet restarts a dead BIRD and
//! only BIRD's containers hold network capabilities; an agent restart leaves routing alone. BIRD
//! starts once the agent has installed a first config that `bird -p` accepted; a later config BIRD
//! refuses is never installed (BIRD keeps the last good one) and is reported on the Node (condition
//! `BirdConfigRejected`, Event, annotation) naming the published object and field
//! ([`crate::node::outcome`]). See the chart README, section BIRD.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kube::Client;
use tracing::{info, warn};

use crate::api::CrdMode;
pub use crate::node::bird::{
    Applied, BirdError, DIR_MODE, FILE_MODE, Reload, Timings, apply, apply_timed, bird_check, configure,
    is_bird_file,
};
pub use crate::node::published::{ANN_APPLIED_HASH, ANN_STATUS};
use crate::node::report::{self, Sockets};

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// This node's name (the Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Namespace where the operator publishes the per-node configs.
    #[arg(long, env = "TORTIE_NAMESPACE", default_value = "tortie-system")]
    pub namespace: String,
    /// BIRD's configuration directory (bird.cfg and the files it includes).
    #[arg(long, env = "TORTIE_BIRD_DIR", default_value = "/etc/bird")]
    pub config_dir: PathBuf,
    /// Control socket of the IPv4 daemon (`bird -s`).
    #[arg(long, env = "TORTIE_BIRD_SOCKET", default_value = "/run/bird/bird.ctl")]
    pub bird_socket: PathBuf,
    /// Control socket of the IPv6 daemon (`bird6 -s`), if one runs.
    #[arg(long, env = "TORTIE_BIRD6_SOCKET")]
    pub bird6_socket: Option<PathBuf>,
    /// Install files but do not ask BIRD to reload (BIRD not running yet, dry runs).
    #[arg(long)]
    pub no_reload: bool,
    /// Seconds between retries after a failed install or reload.
    #[arg(long, default_value_t = 10)]
    pub retry_secs: u64,
    /// Unix socket where `tortie-ipam` sends this node's CNI requests to a warm IPAM engine
    /// (the network config's `ipam.socket`); `none` or empty: no IPAM server.
    #[arg(long, env = "TORTIE_IPAM_SOCKET", default_value = crate::cni::wire::DEFAULT_SOCKET)]
    pub ipam_socket: String,
    /// With the IPAM server: claim the node's first block when the server starts and its next
    /// block in the background when few free addresses are left (fewer than three times the
    /// recent number of ADDs at once, at most 32), so that pods do not wait for a block claim. Only where
    /// a pod's own request could claim (pools selecting the node, autoAllocateBlocks,
    /// maxBlocksPerHost). `false`: blocks are claimed by the ADD that needs one.
    #[arg(long, env = "TORTIE_CLAIM_BLOCKS_AHEAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub claim_blocks_ahead: bool,
    /// Do not manage BIRD (an IPAM-only agent).
    #[arg(long, env = "TORTIE_NO_BGP")]
    pub no_bgp: bool,
    /// How often the agent looks for CalicoNodeStatus objects of this node that are due (a
    /// shorter updatePeriodSeconds wins; new and changed objects are served at once); BIRD's
    /// sockets are read only for due objects. E.g. `10s`, `1m`.
    #[arg(long, env = "TORTIE_STATUS_INTERVAL", default_value = "10s", value_parser = super::run::parse_duration)]
    pub status_interval: Duration,
    /// Do not write CalicoNodeStatus status.
    #[arg(long, env = "TORTIE_NO_STATUS")]
    pub no_status: bool,
    /// A folder of custom BIRD templates (`bird.cfg.j2`, `bird_ipam.cfg.j2`, `bird_aggr.cfg.j2`,
    /// ...; the chart mounts a ConfigMap here). Checked with `bird -p` on built-in samples and on
    /// this node's inputs before use; refused ones are reported (Node condition
    /// `BirdTemplateRejected`) and the built-in templates stay in use.
    #[arg(long, env = "TORTIE_BIRD_TEMPLATE_DIR")]
    pub bird_template_dir: Option<PathBuf>,
    /// Calico CRD mode (for CalicoNodeStatus): auto (detect from the API groups), v1 or v3.
    #[arg(long, value_enum, default_value_t = super::run::ModeArg::Auto, env = "TORTIE_CRD_MODE")]
    pub crd_mode: super::run::ModeArg,
}

impl AgentArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        init_tracing();
        let client = super::connect().await?;
        let socket = self.ipam_socket_path();
        if socket.is_none() && self.no_bgp {
            anyhow::bail!("--no-bgp and no --ipam-socket: the agent would have nothing to do");
        }
        let ipam = async {
            match &socket {
                Some(path) if self.no_bgp => {
                    run_ipam_server(client.clone(), &self.node, path, self.claim_blocks_ahead).await
                }
                // Beside BIRD the server is an accelerator: tortie-ipam works without it, so a
                // failure (RBAC, CRDs missing) is retried instead of taking BGP down with it.
                Some(path) => loop {
                    if let Err(e) =
                        run_ipam_server(client.clone(), &self.node, path, self.claim_blocks_ahead).await
                    {
                        warn!(error = %e, "IPAM server stopped (tortie-ipam runs in-process meanwhile); retrying in 30 s");
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                },
                None => std::future::pending().await,
            }
        };
        let bgp = async {
            if self.no_bgp {
                std::future::pending().await
            } else {
                run_agent(client.clone(), self.clone()).await
            }
        };
        let status = async {
            if self.no_bgp || self.no_status {
                return std::future::pending().await;
            }
            let mode = match self.crd_mode {
                super::run::ModeArg::V1 => CrdMode::V1,
                super::run::ModeArg::V3 => CrdMode::V3,
                super::run::ModeArg::Auto => CrdMode::detect(&client).await?,
            };
            let sockets = Sockets {
                v4: Some(self.bird_socket.clone()),
                v6: self.bird6_socket.clone(),
            };
            // Status is a report, not the agent's job: a failure (RBAC, CRD missing) is retried
            // without taking BGP down with it.
            loop {
                if let Err(e) = report::run(
                    client.clone(),
                    mode,
                    self.node.clone(),
                    sockets.clone(),
                    self.status_interval,
                )
                .await
                {
                    warn!(error = %e, "CalicoNodeStatus writer stopped; retrying in 30 s");
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            r = ipam => r?,
            r = bgp => r?,
            r = status => r?,
        }
        Ok(ExitCode::SUCCESS)
    }

    fn ipam_socket_path(&self) -> Option<PathBuf> {
        match self.ipam_socket.as_str() {
            "" | "none" => None,
            p => Some(PathBuf::from(p)),
        }
    }

    fn reload(&self) -> Reload {
        if self.no_reload {
            return Reload::default();
        }
        Reload {
            bird_socket: Some(self.bird_socket.clone()),
            bird6_socket: self.bird6_socket.clone(),
        }
    }
}

/// Logs to stderr, filtered by `TORTIE_LOG` (else `RUST_LOG`, else info).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TORTIE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(super::colour_logs())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Warms the IPAM engine and watches for `node`, then answers on `socket` until it fails. With
/// `claim_ahead`, the node's first block is claimed once the socket is bound (requests reach the
/// server from then on, and wait for that claim rather than start one of their own).
pub async fn run_ipam_server(
    client: Client,
    node: &str,
    socket: &Path,
    claim_ahead: bool,
) -> anyhow::Result<()> {
    let shared = crate::cni::server::warm_with(client, node, claim_ahead).await?;
    let listener = crate::cni::server::bind(socket)?;
    info!(node, socket = %socket.display(), "IPAM server listening");
    let first = claim_ahead.then(|| crate::cni::server::claim_first_blocks(&shared, node));
    let served = crate::cni::server::serve(listener, shared).await;
    if let Some(t) = first {
        t.abort();
    }
    served?;
    Ok(())
}

/// Watches the node's published config and installs each new version ([`crate::node::agent`]).
pub async fn run_agent(client: Client, args: AgentArgs) -> anyhow::Result<()> {
    let reload = args.reload();
    crate::node::agent::run(
        client,
        crate::node::agent::Settings {
            node: args.node,
            namespace: args.namespace,
            config_dir: args.config_dir,
            reload,
            retry_secs: args.retry_secs,
            template_dir: args.bird_template_dir,
        },
    )
    .await
}
