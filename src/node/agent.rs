//! The agent's BIRD loop: watch the node's own published object and the shards it names
//! ([`super::published`]), assemble the node's snapshot and render its BIRD files with the same
//! [`crate::bgp::render`] as `tortie render`, install each new version with
//! [`super::bird::apply`], and report the outcome on the Node (annotations [`ANN_APPLIED_HASH`],
//! [`ANN_STATUS`], the condition [`CONDITION`]) and as Events naming the published object and
//! field BIRD refused ([`super::outcome`]). An own object of the previous format (rendered files)
//! is installed as it is, so agents can be upgraded before the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tracing::{Instrument, info, info_span, warn};

use super::bird::{Applied, Reload, apply};
use super::outcome::{CONDITION, Source, decide};
use super::published::{
    ANN_APPLIED_HASH, ANN_HASH, ANN_NODE, ANN_STATUS, Contents, Published, ShardSlot, assemble, contents_of,
    layout, object_name, shard_name, shard_slot,
};
use crate::bgp::{CalicoSelectors, Rendered};

/// How long a missing BIRD control socket after an install counts as "BIRD starting" (retried
/// every second, not reported) before it is reported as a failed reload.
pub const BIRD_START_GRACE: Duration = Duration::from_secs(20);

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

/// What the BIRD part of the agent needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name (the Node object).
    pub node: String,
    /// Namespace where the operator publishes the per-node configs.
    pub namespace: String,
    /// BIRD's configuration directory.
    pub config_dir: PathBuf,
    /// The daemons to reload after an install.
    pub reload: Reload,
    /// Seconds between retries after a failed install or reload.
    pub retry_secs: u64,
    /// A folder of custom BIRD templates ([`super::template`]), re-read when it changes.
    pub template_dir: Option<PathBuf>,
}

/// Watches the node's published config and installs each new version; runs until an error
/// that retrying cannot fix (the watch itself retries with backoff).
pub async fn run(client: Client, args: Settings) -> anyhow::Result<()> {
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
    // Shard watches, one per name (RBAC allows list/watch of named objects only), started for the
    // count the own object names.
    let (shard_tx, mut shard_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut shard_watches = ShardWatches {
        client: client.clone(),
        namespace: args.namespace.clone(),
        tx: shard_tx,
        tasks: BTreeMap::new(),
    };
    let mut slots: BTreeMap<u32, ShardSlot> = BTreeMap::new();
    let selectors = CalicoSelectors::default();
    let mut render_reported: BTreeSet<String> = BTreeSet::new();
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
    // Since when BIRD's control socket has been missing after an install (BIRD not started yet).
    let mut socket_missing_since: Option<Instant> = None;
    let mut retry_after = Duration::from_secs(args.retry_secs.max(1));
    let mut custom = args.template_dir.clone().map(super::template::Custom::new);
    // A mounted ConfigMap changes under the agent: looked at every few seconds.
    let mut template_tick = tokio::time::interval(Duration::from_secs(5));
    info!(node = %args.node, object = %name, namespace = %args.namespace, "agent watching");
    loop {
        let retry = tokio::time::sleep(retry_after);
        tokio::select! {
            ev = changes.next() => {
                match ev {
                    None => anyhow::bail!("watch ended"),
                    Some(Err(e)) => { warn!(error = %e, "watch error (retrying)"); continue; }
                    Some(Ok(c)) => c.apply_to(&mut seen),
                }
            }
            Some((i, ev)) = shard_rx.recv() => apply_shard(&mut slots, i, ev),
            _ = retry, if failed => {}
            _ = template_tick.tick(), if custom.is_some() => {
                if !custom.as_ref().is_some_and(|c| c.changed()) {
                    continue;
                }
            }
        }
        if let Some(c) = custom.as_mut() {
            super::template::blocking(|| c.refresh());
            super::template::report(c, &nodes, &recorder, &args.node).await;
        }
        // Whatever else has arrived meanwhile (a new layout writes several shards) goes into the
        // same render.
        loop {
            if let Ok((i, ev)) = shard_rx.try_recv() {
                apply_shard(&mut slots, i, ev);
                continue;
            }
            match changes.next().now_or_never() {
                Some(Some(Ok(c))) => c.apply_to(&mut seen),
                Some(Some(Err(e))) => warn!(error = %e, "watch error (retrying)"),
                Some(None) => anyhow::bail!("watch ended"),
                None => break,
            }
        }
        let Some(obj) = seen.current() else { continue };
        let for_node = obj
            .metadata()
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_NODE))
            .cloned();
        if for_node.as_deref() != Some(args.node.as_str()) {
            warn!(object = %name, "published object is for another node; ignored");
            continue;
        }
        let rendered = match contents_of(&obj) {
            Err(e) => Err(e.to_string()),
            Ok(Contents::Files(files)) => {
                // The previous format: the operator rendered the files.
                let hash = obj
                    .metadata()
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANN_HASH))
                    .cloned()
                    .unwrap_or_default();
                Ok(Some((files, hash)))
            }
            Ok(Contents::Inputs(ni)) => {
                shard_watches.ensure(ni.shards, &mut slots);
                match layout(ni.shards, &slots) {
                    // Waiting for the rest of the layout.
                    None => Ok(None),
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(list)) => {
                        let (snap, opts) = assemble(&ni, list);
                        super::template::render(custom.as_mut(), &snap, &args.node, &opts, &selectors)
                            .map(|r: Rendered| {
                                for w in &r.warnings {
                                    if render_reported.insert(w.clone()) {
                                        warn!(warning = %w, "BGP input skipped");
                                    }
                                }
                                let hash = r.content_hash();
                                Some((r.files, hash))
                            })
                            .map_err(|e| e.to_string())
                    }
                }
            }
        };
        if let Some(c) = custom.as_mut() {
            super::template::report(c, &nodes, &recorder, &args.node).await;
        }
        let (files, hash) = match rendered {
            Ok(Some(x)) => x,
            Ok(None) => continue,
            Err(msg) => {
                // Not BIRD's doing: the inputs cannot make a config. BIRD keeps the last one.
                if render_reported.insert(msg.clone()) {
                    warn!(error = %msg, "cannot render this node's BIRD config");
                    let ev = Event {
                        type_: EventType::Warning,
                        reason: "BirdConfigNotRendered".into(),
                        note: Some(msg.chars().take(1000).collect()),
                        action: "Render".into(),
                        secondary: None,
                    };
                    let node_ref = Node {
                        metadata: kube::api::ObjectMeta {
                            name: Some(args.node.clone()),
                            ..Default::default()
                        },
                        ..Default::default()
                    }
                    .object_ref(&());
                    if let Err(e) = recorder.publish(&ev, &node_ref).await {
                        warn!(error = %e, "cannot record event");
                    }
                }
                continue;
            }
        };
        let dir = args.config_dir.clone();
        let reload = args.reload.clone();
        let span = info_span!("install", node = %args.node, hash = %hash.get(..12).unwrap_or(""));
        let pending = reload_pending;
        let to_install = files.clone();
        let result = tokio::task::spawn_blocking(move || apply(&dir, &to_install, &reload, pending))
            .instrument(span)
            .await?;
        match &result {
            Ok(Applied::Reloaded) => info!(hash = %hash, "installed and reloaded BIRD config"),
            Ok(Applied::Unchanged) => {}
            Err(e) => warn!(error = %e, "BIRD config not installed"),
        }
        failed = result.is_err();
        reload_pending = match &result {
            Ok(_) => false,
            Err(e) => reload_pending || e.installed_not_reloaded(),
        };
        // A BIRD that starts on the agent's first install (the chart's containers wait for it)
        // has no socket yet: retry every second for a while before reporting it as a failure.
        let starting = matches!(&result, Err(e) if e.installed_not_reloaded())
            && [&args.reload.bird_socket, &args.reload.bird6_socket]
                .into_iter()
                .flatten()
                .any(|s| !s.exists());
        retry_after = Duration::from_secs(args.retry_secs.max(1));
        if starting {
            let since = *socket_missing_since.get_or_insert_with(Instant::now);
            if since.elapsed() < BIRD_START_GRACE {
                info!(
                    "BIRD not started yet (no control socket); it reads the installed config when it starts"
                );
                retry_after = Duration::from_secs(1);
                continue;
            }
        } else {
            socket_missing_since = None;
        }
        let (source, related) = match &obj {
            Published::ConfigMap(c) => ("ConfigMap", c.object_ref(&())),
            Published::Secret(s) => ("Secret", s.object_ref(&())),
        };
        let source = Source {
            kind: source.into(),
            namespace: args.namespace.clone(),
            name: name.clone(),
        };
        // Decided once without the Node's condition only to know whether anything changed.
        let probe = decide(&result, &source, &files, &hash, None, jiff::Timestamp::now());
        let report = (hash.clone(), probe.status.clone());
        if last_reported.as_ref() != Some(&report) {
            let patch = serde_json::json!({"metadata": {"annotations": {ANN_APPLIED_HASH: if failed { serde_json::Value::Null } else { hash.clone().into() }, ANN_STATUS: probe.status}}});
            match nodes
                .patch(&args.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(n) => {
                    let previous = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION));
                    let out = decide(&result, &source, &files, &hash, previous, jiff::Timestamp::now());
                    // Strategic merge: conditions merge by type, the kubelet's stay untouched.
                    let cond = serde_json::json!({"status": {"conditions": [out.condition]}});
                    let mut reported = true;
                    if let Err(e) = nodes
                        .patch_status(&args.node, &PatchParams::default(), &Patch::Strategic(&cond))
                        .await
                    {
                        warn!(error = %e, "cannot set the Node's {CONDITION} condition");
                        reported = false;
                    }
                    if let Some((warning, reason, note)) = out.event {
                        let ev = Event {
                            type_: if warning {
                                EventType::Warning
                            } else {
                                EventType::Normal
                            },
                            reason: reason.into(),
                            note: Some(note),
                            action: "Install".into(),
                            secondary: Some(related),
                        };
                        if let Err(e) = recorder.publish(&ev, &n.object_ref(&())).await {
                            warn!(error = %e, "cannot record event");
                        }
                    }
                    if reported {
                        last_reported = Some(report);
                    }
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

/// One watch per shard name of the layout in use.
struct ShardWatches {
    client: Client,
    namespace: String,
    tx: tokio::sync::mpsc::UnboundedSender<(u32, watcher::Event<ConfigMap>)>,
    tasks: BTreeMap<u32, tokio::task::JoinHandle<()>>,
}

impl ShardWatches {
    /// Watches shards `0..count`, and no other (their slots are forgotten).
    fn ensure(&mut self, count: u32, slots: &mut BTreeMap<u32, ShardSlot>) {
        let extra: Vec<u32> = self.tasks.range(count..).map(|(i, _)| *i).collect();
        for i in extra {
            if let Some(t) = self.tasks.remove(&i) {
                t.abort();
            }
            slots.remove(&i);
        }
        for i in 0..count {
            if self.tasks.contains_key(&i) {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={}", shard_name(i)));
            let tx = self.tx.clone();
            self.tasks.insert(
                i,
                tokio::spawn(async move {
                    let mut events = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
                    while let Some(ev) = events.next().await {
                        match ev {
                            Ok(ev) => {
                                if tx.send((i, ev)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => warn!(shard = i, error = %e, "shard watch error (retrying)"),
                        }
                    }
                }),
            );
        }
    }
}

impl Drop for ShardWatches {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

fn apply_shard(slots: &mut BTreeMap<u32, ShardSlot>, i: u32, ev: watcher::Event<ConfigMap>) {
    match ev {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
            slots.insert(i, shard_slot(&o));
        }
        watcher::Event::Delete(_) | watcher::Event::Init => {
            slots.remove(&i);
        }
        watcher::Event::InitDone => {}
    }
}
