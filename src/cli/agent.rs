//! `tortie agent`: keeps a node's BIRD configuration in step with what the operator published,
//! and serves the node's IPAM requests warm over a unix socket (`--ipam-socket`, see
//! [`crate::cni::server`]); either part can be turned off (`--no-bgp`, `--ipam-socket none`).
//!
//! The work is in [`crate::node`]; this is the command line and the loops that drive it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tracing::{Instrument, info, info_span, warn};

use crate::api::CrdMode;
use crate::controllers::bgp::{ANN_HASH, ANN_NODE, Published, files_of, object_name};
pub use crate::node::bird::{
    Applied, BirdError, DIR_MODE, FILE_MODE, Reload, apply, bird_check, birdc_configure, is_bird_file,
};
use crate::node::report::{self, Sockets};

/// Node annotation: content hash of the BIRD config the agent last installed.
pub const ANN_APPLIED_HASH: &str = "tortie.projectcalico.org/bird-config-hash";
/// Node annotation: `Applied`, or `Error: <why>` when BIRD rejected the config or the reload.
pub const ANN_STATUS: &str = "tortie.projectcalico.org/bird-config-status";

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
    /// Do not manage BIRD (an IPAM-only agent).
    #[arg(long, env = "TORTIE_NO_BGP")]
    pub no_bgp: bool,
    /// Longest time between two reads of BIRD's sockets for the CalicoNodeStatus objects naming
    /// this node (an object's shorter updatePeriodSeconds wins), e.g. `10s`, `1m`.
    #[arg(long, env = "TORTIE_STATUS_INTERVAL", default_value = "10s", value_parser = super::run::parse_duration)]
    pub status_interval: Duration,
    /// Do not write CalicoNodeStatus status.
    #[arg(long, env = "TORTIE_NO_STATUS")]
    pub no_status: bool,
    /// Calico CRD mode (for CalicoNodeStatus): auto (detect from the API groups), v1 or v3.
    #[arg(long, value_enum, default_value_t = super::run::ModeArg::Auto, env = "TORTIE_CRD_MODE")]
    pub crd_mode: super::run::ModeArg,
}

impl AgentArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        init_tracing();
        let client = Client::try_default().await?;
        let socket = self.ipam_socket_path();
        if socket.is_none() && self.no_bgp {
            anyhow::bail!("--no-bgp and no --ipam-socket: the agent would have nothing to do");
        }
        let ipam = async {
            match &socket {
                Some(path) if self.no_bgp => run_ipam_server(client.clone(), &self.node, path).await,
                // Beside BIRD the server is an accelerator: tortie-ipam works without it, so a
                // failure (RBAC, CRDs missing) is retried instead of taking BGP down with it.
                Some(path) => loop {
                    if let Err(e) = run_ipam_server(client.clone(), &self.node, path).await {
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

/// Warms the IPAM engine and watches for `node`, then answers on `socket` until it fails.
pub async fn run_ipam_server(client: Client, node: &str, socket: &Path) -> anyhow::Result<()> {
    let shared = crate::cni::server::warm(client, node).await?;
    let listener = crate::cni::server::bind(socket)?;
    info!(node, socket = %socket.display(), "IPAM server listening");
    crate::cni::server::serve(listener, shared).await?;
    Ok(())
}

/// What the agent last saw of its node's published object.
#[derive(Default)]
struct Seen {
    map: Option<ConfigMap>,
    secret: Option<Secret>,
}

impl Seen {
    /// The Secret wins: the controller switches to it when a password appears.
    fn current(&self) -> Option<Published> {
        self.secret
            .clone()
            .map(Published::Secret)
            .or_else(|| self.map.clone().map(Published::ConfigMap))
    }
}

/// Watches the node's published config and installs each new version; runs until an error
/// that retrying cannot fix (the watch itself retries with backoff).
pub async fn run_agent(client: Client, args: AgentArgs) -> anyhow::Result<()> {
    let name = object_name(&args.node);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let maps = watcher::watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &args.namespace),
        cfg.clone(),
    )
    .default_backoff()
    .map(|e| e.map(Change::Map));
    let secrets = watcher::watcher(Api::<Secret>::namespaced(client.clone(), &args.namespace), cfg)
        .default_backoff()
        .map(|e| e.map(Change::Secret));
    let mut changes = std::pin::pin!(futures::stream::select(maps, secrets));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tortie-agent".into(),
            instance: Some(args.node.clone()),
        },
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let mut seen = Seen::default();
    let mut failed = false;
    // Files installed whose reload failed: "unchanged" files are then not yet running.
    let mut reload_pending = false;
    let mut last_reported: Option<(String, String)> = None;
    info!(node = %args.node, object = %name, namespace = %args.namespace, "agent watching");
    loop {
        let retry = tokio::time::sleep(Duration::from_secs(args.retry_secs.max(1)));
        tokio::select! {
            ev = changes.next() => {
                match ev {
                    None => anyhow::bail!("watch ended"),
                    Some(Err(e)) => { warn!(error = %e, "watch error (retrying)"); continue; }
                    Some(Ok(c)) => c.apply_to(&mut seen),
                }
            }
            _ = retry, if failed => {}
        }
        let Some(obj) = seen.current() else { continue };
        let (hash, for_node) = {
            let meta = match &obj {
                Published::ConfigMap(c) => &c.metadata,
                Published::Secret(s) => &s.metadata,
            };
            let a = meta.annotations.clone().unwrap_or_default();
            (
                a.get(ANN_HASH).cloned().unwrap_or_default(),
                a.get(ANN_NODE).cloned(),
            )
        };
        if for_node.as_deref() != Some(args.node.as_str()) {
            warn!(object = %name, "published object is for another node; ignored");
            continue;
        }
        let files = files_of(&obj);
        let dir = args.config_dir.clone();
        let reload = args.reload();
        let span = info_span!("install", node = %args.node, hash = %hash.get(..12).unwrap_or(""));
        let pending = reload_pending;
        let result = tokio::task::spawn_blocking(move || apply(&dir, &files, &reload, pending))
            .instrument(span)
            .await?;
        let (status, event) = match &result {
            Ok(Applied::Reloaded) => {
                info!(hash = %hash, "installed and reloaded BIRD config");
                (
                    "Applied".to_string(),
                    Some((
                        EventType::Normal,
                        "BirdConfigApplied",
                        format!("BIRD reloaded with config {hash}"),
                    )),
                )
            }
            Ok(Applied::Unchanged) => ("Applied".to_string(), None),
            Err(e) => {
                warn!(error = %e, "BIRD config not installed");
                (
                    format!("Error: {e}").chars().take(1000).collect(),
                    Some((EventType::Warning, "BirdConfigRejected", e.to_string())),
                )
            }
        };
        failed = result.is_err();
        reload_pending = match &result {
            Ok(_) => false,
            Err(e) => reload_pending || e.installed_not_reloaded(),
        };
        let report = (hash.clone(), status.clone());
        if last_reported.as_ref() != Some(&report) {
            let patch = serde_json::json!({"metadata": {"annotations": {ANN_APPLIED_HASH: if failed { serde_json::Value::Null } else { hash.clone().into() }, ANN_STATUS: status}}});
            match nodes
                .patch(&args.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(n) => {
                    if let Some((t, reason, note)) = event {
                        let ev = Event {
                            type_: t,
                            reason: reason.into(),
                            note: Some(note.chars().take(1000).collect()),
                            action: "Install".into(),
                            secondary: None,
                        };
                        if let Err(e) = recorder.publish(&ev, &n.object_ref(&())).await {
                            warn!(error = %e, "cannot record event");
                        }
                    }
                    last_reported = Some(report);
                }
                Err(e) => warn!(error = %e, "cannot report on the Node"),
            }
        }
    }
}

enum Change {
    Map(watcher::Event<ConfigMap>),
    Secret(watcher::Event<Secret>),
}

impl Change {
    fn apply_to(self, seen: &mut Seen) {
        match self {
            Change::Map(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => seen.map = Some(o),
            Change::Map(watcher::Event::Delete(_)) => seen.map = None,
            Change::Map(watcher::Event::Init) => seen.map = None,
            Change::Secret(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => seen.secret = Some(o),
            Change::Secret(watcher::Event::Delete(_)) => seen.secret = None,
            Change::Secret(watcher::Event::Init) => seen.secret = None,
            Change::Map(watcher::Event::InitDone) | Change::Secret(watcher::Event::InitDone) => {}
        }
    }
}
