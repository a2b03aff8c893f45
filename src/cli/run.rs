//! `tortie run`: the operator. Every replica watches and serves /healthz, /readyz and /metrics;
//! the Lease holder alone runs the writing controllers, and stops them the moment it loses the
//! Lease. SIGTERM (or Ctrl-C) drains the controllers and releases the Lease for a fast handover.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Args, ValueEnum};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info, warn};

use crate::api::CrdMode;
use crate::controllers::{self, Config, Ctx, Part, Stores};
use crate::ipam::usage::{PoolRef, Usage};
use crate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Auto,
    V1,
    V3,
}

/// A Go-style duration flag (`15m`, `30s`, `1h30m`, `0`). Not `kube::core::Duration`'s parser: it
/// panics on a value too large for a `Duration` (`99999999999999999999h`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    crate::bgp::snapshot::parse_duration_secs(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 15m, 30s or 1h30m"))
        .and_then(|secs| Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is too long")))
}

/// Run the operator: Installation, IPPool, IPAM GC and BGP controllers under leader election.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespace of the leader-election Lease (and of the operator itself).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tortie-system")]
    pub namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TORTIE_LEASE_NAME", default_value = "tortie-operator")]
    pub lease_name: String,
    /// Identity in the Lease (default: POD_NAME, else host name and process id).
    #[arg(long, env = "TORTIE_IDENTITY")]
    pub identity: Option<String>,
    /// How long a Lease stays valid without renewal; a dead leader is replaced after at most this.
    #[arg(long, env = "TORTIE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Port of /healthz, /readyz and /metrics.
    #[arg(long, env = "TORTIE_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// Addresses /healthz, /readyz and /metrics listen on (comma-separated). Loopback by
    /// default: on the host network, 0.0.0.0 would serve them on every address of the node. The
    /// chart sets the pod's IP (the node's address on the host network, which probes and
    /// Prometheus reach) and 127.0.0.1 (which `kubectl port-forward` reaches).
    #[arg(
        long,
        env = "TORTIE_BIND_ADDRESS",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    pub bind_address: Vec<std::net::IpAddr>,
    /// Log format. The level filter comes from TORTIE_LOG or RUST_LOG (default info).
    #[arg(long, env = "TORTIE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long an allocation must look leaked before the GC releases it (0 disables leak GC).
    /// Allocations on deleted nodes are released at once.
    #[arg(long, env = "TORTIE_GC_GRACE_PERIOD", default_value = "15m", value_parser = parse_duration)]
    pub gc_grace_period: Duration,
    /// Time between GC passes (default: half the grace period, between 1s and 5m).
    #[arg(long, env = "TORTIE_GC_INTERVAL", value_parser = parse_duration)]
    pub gc_interval: Option<Duration>,
    /// Calico CRD group to use: auto-detect, classic crd.projectcalico.org/v1, or projectcalico.org/v3.
    #[arg(long, env = "TORTIE_CRD_MODE", value_enum, default_value_t = ModeArg::Auto)]
    pub crd_mode: ModeArg,
    /// Only manage IPPools matching this label selector (the GC then stays inside them).
    #[arg(long, env = "TORTIE_POOL_SELECTOR")]
    pub pool_selector: Option<String>,
    /// Role (in the operator's namespace) bound to the node agents: the BGP controller sets its
    /// only rule to reading the published per-node BIRD configs by name, nothing else there.
    #[arg(long, env = "TORTIE_AGENT_ROLE")]
    pub agent_role: Option<String>,
    /// Controllers to run, comma-separated (e.g. `installation,ippool,gc`).
    #[arg(
        long,
        env = "TORTIE_CONTROLLERS",
        value_enum,
        value_delimiter = ',',
        default_value = "installation,ippool,gc,bgp"
    )]
    pub controllers: Vec<Part>,
}

impl RunArgs {
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        init_tracing(self.log_format);
        let client = super::connect()
            .await
            .context("connecting to the Kubernetes API")?;
        let mode = match self.crd_mode {
            ModeArg::V1 => CrdMode::V1,
            ModeArg::V3 => CrdMode::V3,
            ModeArg::Auto => CrdMode::detect(&client)
                .await
                .context("detecting the Calico CRD mode")?,
        };
        let identity = self.identity();
        let gc_interval = self.gc_interval.unwrap_or_else(|| {
            (self.gc_grace_period / 2).clamp(Duration::from_secs(1), Duration::from_secs(300))
        });
        info!(%identity, %mode, namespace = %self.namespace, lease = %self.lease_name, "starting tortie operator");

        let metrics = Arc::new(Metrics::new());
        let mut stores = Stores::start(&client, mode, self.pool_selector.as_deref());
        if self.controllers.contains(&crate::controllers::Part::Bgp) {
            stores.bgp = Some(crate::controllers::BgpStores::start(
                &client,
                mode,
                &self.namespace,
            ));
        }
        let config = Config {
            gc_grace: self.gc_grace_period,
            gc_interval,
            pool_selector: self.pool_selector.clone(),
            parts: self.controllers.clone(),
            identity: identity.clone(),
            namespace: self.namespace.clone(),
            agent_role: self.agent_role.clone(),
        };
        let ctx = Arc::new(Ctx::new(
            client.clone(),
            mode,
            stores.clone(),
            metrics.clone(),
            config,
        ));

        let shutdown = CancellationToken::new();
        tokio::spawn(signal_handler(shutdown.clone()));

        let servers = serve(ctx.clone(), &self.bind_address, self.metrics_port, &shutdown).await?;

        let result = lead(ctx, &self, identity, shutdown.clone()).await;
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), servers.join_all()).await;
        match result {
            Ok(()) => {
                info!("stopped");
                Ok(std::process::ExitCode::SUCCESS)
            }
            Err(e) => Err(e),
        }
    }

    /// `--identity`, else POD_NAME, else the host name and process id.
    fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    hostname::get()
                        .map(|h| h.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "tortie".into()),
                    std::process::id()
                )
            })
    }
}

/// Serves /healthz, /readyz and /metrics on every bind address until `shutdown`.
async fn serve(
    ctx: Arc<Ctx>,
    addrs: &[std::net::IpAddr],
    port: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinSet<std::io::Result<()>>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(ctx);
    let mut servers = tokio::task::JoinSet::new();
    for addr in listen_addresses(addrs, port) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} (--bind-address)"))?;
        info!(%addr, "serving /healthz /readyz /metrics");
        let (app, stop) = (app.clone(), shutdown.clone());
        servers.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
    }
    Ok(servers)
}

/// The sockets to listen on: each address once, in the order given.
fn listen_addresses(addrs: &[std::net::IpAddr], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let sa = SocketAddr::new(*a, port);
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// Holds the Lease and runs the controllers only while holding it.
async fn lead(
    ctx: Arc<Ctx>,
    args: &RunArgs,
    identity: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let duration = args.lease_duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace(grace)
        .with_field_manager(format!("tortie-lease-{identity}"))
        .build()
        .await
        .context("setting up the leader-election Lease")?;
    let (mut leader, lease_task) = manager.watch().await;
    let mut work: Option<(tokio::task::JoinHandle<()>, CancellationToken)> = None;
    let outcome = loop {
        let is_leader = *leader.borrow_and_update();
        ctx.metrics.leader.set(is_leader as i64);
        match (is_leader, work.is_some()) {
            (true, false) => {
                info!("acquired the Lease: starting controllers");
                let stop = CancellationToken::new();
                let c = ctx.clone();
                let s = stop.clone();
                work = Some((
                    tokio::spawn(async move {
                        // Decide only on complete caches.
                        while !c.stores.synced() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        controllers::run_leader(c, s).await
                    }),
                    stop,
                ));
            }
            (false, true) => {
                // Lost the Lease: stop writing now, without draining.
                warn!("lost the Lease: stopping controllers");
                if let Some((h, _)) = work.take() {
                    h.abort();
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = leader.changed() => if r.is_err() {
                break Err(anyhow::anyhow!("the leader-election task stopped"));
            },
        }
    };
    if let Some((h, stop)) = work.take() {
        stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), h).await.is_err() {
            warn!("controllers did not stop within 10s");
        }
    }
    ctx.metrics.leader.set(0);
    // Closing the channel makes the lease task release the Lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the Lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing the Lease failed"),
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("releasing the Lease timed out"),
    }
    outcome
}

async fn signal_handler(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
        }
        token.cancel();
        // A second signal, or a drain that takes too long, ends the process at once.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(30));
            error!("shutdown did not finish within 30s: exiting");
            std::process::exit(1);
        });
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        warn!("second signal: exiting now");
        std::process::exit(1);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    }
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    if ctx.stores.synced() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watch caches not synced yet")
    }
}

async fn metrics_handler(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    let leader = ctx.metrics.leader.get() == 1;
    let usage = leader.then(|| ipam_usage(&ctx));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.scrape(usage.as_ref()),
    )
}

/// The IPAM counts of the watch caches.
fn ipam_usage(ctx: &Ctx) -> Usage {
    let pools: Vec<PoolRef> = ctx
        .stores
        .pools
        .all()
        .iter()
        .filter_map(|p| PoolRef::from_pool(p))
        .collect();
    let nodes = ctx.stores.nodes.all();
    // IPReservations come from the IPAM engine's watch (up once a controller has used it).
    let reserved = ctx
        .ipam_if_started()
        .map(|i| i.reserved().nets())
        .unwrap_or_default();
    let mut u = Usage::start(
        &pools,
        nodes.iter().filter_map(|n| n.metadata.name.as_deref()),
        &reserved,
    );
    // The per-node counts read each allocation's attributes: every block is decoded from the
    // compact cache, one at a time.
    for b in ctx.stores.blocks.all() {
        u.add(&pools, &b.block().spec);
    }
    u.finish(&pools)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TORTIE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,kube=warn,kube_lease_manager=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(super::colour_logs())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn durations_parse_like_go_and_never_panic() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("10").unwrap_err().contains("not a duration"));
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn controllers_default_to_all_four_and_read_as_a_comma_list() {
        let all = [Part::Installation, Part::Ippool, Part::Gc, Part::Bgp];
        assert_eq!(T::try_parse_from(["t"]).unwrap().run.controllers, all);
        assert_eq!(
            T::try_parse_from(["t", "--controllers=ippool,gc"])
                .unwrap()
                .run
                .controllers,
            [Part::Ippool, Part::Gc]
        );
        let help = T::command().render_long_help().to_string();
        assert!(help.contains("[default: installation,ippool,gc,bgp]"), "{help}");
    }

    #[test]
    fn metrics_listen_on_loopback_unless_told_otherwise() {
        let def = T::try_parse_from(["tortie"]).unwrap().run;
        assert_eq!(
            listen_addresses(&def.bind_address, def.metrics_port),
            vec!["127.0.0.1:9090".parse::<SocketAddr>().unwrap()]
        );
        let chart = T::try_parse_from(["tortie", "--bind-address", "10.0.0.5,127.0.0.1,10.0.0.5"])
            .unwrap()
            .run;
        assert_eq!(
            listen_addresses(&chart.bind_address, 9090),
            ["10.0.0.5:9090", "127.0.0.1:9090"]
                .map(|s| s.parse::<SocketAddr>().unwrap())
                .to_vec()
        );
        let v6 = T::try_parse_from(["tortie", "--bind-address", "fd00::1,::1"])
            .unwrap()
            .run;
        assert_eq!(
            listen_addresses(&v6.bind_address, 1)[0].to_string(),
            "[fd00::1]:1"
        );
        let bad = T::try_parse_from(["tortie", "--bind-address", "localhost"])
            .err()
            .expect("a host name is no address");
        assert!(bad.to_string().contains("--bind-address"), "{bad}");
    }
}
