//! The operator's controllers. Every replica keeps the watch caches ([`Stores`]) warm and serves
//! reads (metrics, readiness); only the Lease holder runs [`run_leader`], which starts the
//! controllers that write. Pure decisions live in `podcidr`, `pools`, `gc_plan` and the `decide`
//! functions of `installation` and `ippool`; their reconcilers read the stores, decide, and
//! write. The files import each other without circles (tests/import_dag.rs).

pub mod bgp;
pub mod conditions;
pub mod defaults;
pub mod gc;
pub mod gc_plan;
pub mod installation;
pub mod ippool;
pub mod pod;
pub mod podcidr;
pub mod pools;
mod store;

pub use pod::SlimPod;

use std::sync::Arc;
use std::time::Duration;

use kube::api::ApiResource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tokio_util::sync::CancellationToken;

pub use store::{BgpStores, Blocks, CachedBlock, Stores, Watched};

use crate::api::{CalicoKind, CrdMode};
use crate::metrics::Metrics;

/// Which controllers run (all by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Part {
    Installation,
    Ippool,
    Gc,
    /// The BGP controller (per-node BIRD configuration, see [`bgp`]).
    Bgp,
}

/// Settings shared by the controllers.
#[derive(Clone, Debug)]
pub struct Config {
    pub gc_grace: Duration,
    pub gc_interval: Duration,
    /// Label selector limiting the IPPools this instance manages (and the blocks its GC touches).
    pub pool_selector: Option<String>,
    pub parts: Vec<Part>,
    pub identity: String,
    /// The operator's namespace (the BGP controller publishes there).
    pub namespace: String,
    /// Role in `namespace` through which node agents read the published BIRD configs; the BGP
    /// controller keeps its rule to exactly those objects' names ([`bgp::agent_role_rules`]).
    pub agent_role: Option<String>,
}

/// What every reconciler gets.
pub struct Ctx {
    pub client: Client,
    pub mode: CrdMode,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    reporter: Reporter,
    /// One Recorder per note: kube's Recorder folds Events with the same object, reason and
    /// action into one series that keeps the FIRST note, so a second, different problem of the
    /// same reason (another overlap, another bad podSubnet) would never be shown.
    recorders: std::sync::Mutex<std::collections::HashMap<String, Recorder>>,
    pub config: Config,
    pub gc_state: tokio::sync::Mutex<gc_plan::GcState>,
    /// The IPAM engine, through which every IPAM object write goes (started on first use: it
    /// watches pools and IPAMConfig).
    ipam: tokio::sync::OnceCell<crate::ipam::Ipam>,
}

impl Ctx {
    pub fn new(client: Client, mode: CrdMode, stores: Stores, metrics: Arc<Metrics>, config: Config) -> Self {
        let reporter = Reporter {
            controller: "tortie".into(),
            instance: Some(config.identity.clone()),
        };
        Ctx {
            client,
            mode,
            stores,
            metrics,
            reporter,
            recorders: Default::default(),
            config,
            gc_state: Default::default(),
            ipam: Default::default(),
        }
    }

    /// The IPAM engine if some controller has started it (never starts it).
    pub fn ipam_if_started(&self) -> Option<&crate::ipam::Ipam> {
        self.ipam.get()
    }

    /// The IPAM engine (the one writer of IPAMBlocks, IPAMHandles and BlockAffinities).
    pub async fn ipam(&self) -> Result<&crate::ipam::Ipam, Error> {
        Ok(self
            .ipam
            .get_or_try_init(|| {
                // The watch cache holds every block: the engine keeps none of its own, and the
                // GC primes it with the watched copy of a block before writing it.
                let opts = crate::ipam::IpamOptions {
                    no_block_cache: true,
                    ..Default::default()
                };
                crate::ipam::Ipam::new_with(self.client.clone(), self.mode, opts)
            })
            .await?)
    }

    pub fn resource(&self, kind: CalicoKind) -> ApiResource {
        self.mode.resource(kind)
    }

    /// Publishes an Event; failures are logged, never fatal (Events are best effort).
    pub async fn event<K: Resource>(
        &self,
        obj: &K,
        dt: &K::DynamicType,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        let recorder = {
            let mut m = self.recorders.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: the series of a dropped Recorder just starts afresh.
            if m.len() >= 256 {
                m.clear();
            }
            m.entry(format!("{reason}\n{}", ev.note.as_deref().unwrap_or_default()))
                .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
                .clone()
        };
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(dt)).await {
            tracing::warn!(error = %e, reason, "could not publish Event");
        }
    }
}

fn truncate(mut s: String, n: usize) -> String {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Errors of the controllers' Kubernetes side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
    #[error("object {0} has no name")]
    Unnamed(String),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
}

impl Error {
    /// A short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
            Error::Unnamed(_) => "unnamed",
            Error::Ipam(e) if e.is_conflict() => "conflict",
            Error::Ipam(_) => "ipam",
        }
    }
}

/// Runs the writing controllers until `stop` is cancelled (or the task is aborted on lease loss).
pub async fn run_leader(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(defaults::run(
        ctx.client.clone(),
        ctx.mode,
        ctx.config.gc_grace,
        stop.clone(),
    ));
    for part in ctx.config.parts.clone() {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        match part {
            Part::Installation => tasks.spawn(installation::run(ctx, stop)),
            Part::Ippool => tasks.spawn(ippool::run(ctx, stop)),
            Part::Gc => tasks.spawn(gc::run(ctx, stop)),
            Part::Bgp => tasks.spawn(run_bgp(ctx, stop)),
        };
    }
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => return,
                Some(Err(e)) if e.is_panic() => tracing::error!(error = %e, "a controller panicked"),
                Some(_) => {}
            },
            _ = stop.cancelled() => break,
        }
    }
    // Ours drain on `stop`; whatever has not finished in time is aborted.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

/// The BGP controller has no stop signal of its own: it is aborted with the others, and
/// restarted after an error.
async fn run_bgp(ctx: Arc<Ctx>, stop: CancellationToken) {
    let config = bgp::Config {
        instance: ctx.config.identity.clone(),
        agent_role: ctx.config.agent_role.clone(),
        ..Default::default()
    };
    while !stop.is_cancelled() {
        let run = bgp::run(
            ctx.client.clone(),
            ctx.mode,
            ctx.config.namespace.clone(),
            ctx.stores.clone(),
            config.clone(),
        );
        tokio::select! {
            r = run => if let Err(e) = r {
                tracing::warn!(error = %e, "BGP controller failed; restarting in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// A stream that yields every `every`, the first time one period from now (periodic resyncs).
pub(crate) fn tick(every: Duration) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        |mut i| async move {
            i.tick().await;
            Some(((), i))
        },
    )
}
