//! `tortie node diags`: what a support engineer needs about one node, collected through the API
//! (and, with `--local`, from this machine) into a `.tar.gz` archive or a directory.
//!
//! Collected: the Node (object and conditions), its published BGP inputs (`tortie-bird-<node>`
//! and the shards, plus the BIRD files they render to), its CalicoNodeStatus objects, the Events
//! about the node and about tortie's objects, its IPAM blocks, affinities and the addresses it
//! holds elsewhere, and the logs of the operator's pods and of the node's agent pod (the
//! `pods/log` subresource). Secrets never reach the archive: password values of the published
//! object are replaced, every file is scrubbed of them, and BIRD `password` lines are redacted.
//! What could not be read (not found, not allowed) is listed in `summary.txt`, never fatal but
//! for the Node itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::super::run::ModeArg;
use crate::api::{CrdMode, NodeStatus};
use crate::ipam::store::Store;
use crate::node::published::{self, NodeInputs, Published};
use crate::table::TextTable;

/// What replaces a secret value.
pub const REDACTED: &str = "<redacted>";

#[derive(Args, Debug)]
pub struct DiagsArgs {
    /// The node to collect for (in an agent pod: its NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Where to write: an archive when the name ends in .tar.gz or .tgz, else a directory
    /// (default: tortie-diags-<node>-<UTC time>.tar.gz here).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The namespace tortie runs in: the published objects, the operator's and agents' pods.
    #[arg(long, env = "TORTIE_NAMESPACE", default_value = "tortie-system")]
    pub namespace: String,
    /// Also this machine's side (run it on the node): the agent's BIRD files and BIRD's own
    /// status over its control sockets.
    #[arg(long)]
    pub local: bool,
    /// With --local: the directory the agent writes BIRD's files to.
    #[arg(long, env = "TORTIE_BIRD_DIR", default_value = "/etc/bird")]
    pub bird_dir: PathBuf,
    /// With --local: the IPv4 daemon's control socket.
    #[arg(long, env = "TORTIE_BIRD_SOCKET", default_value = "/run/bird/bird.ctl")]
    pub bird_socket: PathBuf,
    /// With --local: the IPv6 daemon's control socket, if it runs.
    #[arg(long, env = "TORTIE_BIRD6_SOCKET")]
    pub bird6_socket: Option<PathBuf>,
    /// Last lines of each container's log.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..))]
    pub log_lines: i64,
    /// Calico CRD mode: auto (detect from the API groups), v1 or v3.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto, env = "TORTIE_CRD_MODE")]
    pub crd_mode: ModeArg,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagsError {
    #[error("node {0:?} not found: `kubectl get nodes` lists the names")]
    NoSuchNode(String),
    #[error("reading Node {node:?}: {source}")]
    Node { node: String, source: kube::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} exists already: name another --output")]
    Exists(PathBuf),
    #[error("packing {dir} into {archive}: {why} (the files are left in {dir})")]
    Pack {
        dir: PathBuf,
        archive: PathBuf,
        why: String,
    },
}

/// The collection under way: the directory, the values to scrub, what was written and what not.
struct Collector {
    dir: PathBuf,
    secrets: Vec<String>,
    files: Vec<String>,
    missing: Vec<String>,
}

impl Collector {
    fn write(&mut self, rel: &str, text: &str) -> Result<(), DiagsError> {
        let path = self.dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|source| DiagsError::Io {
                path: p.to_path_buf(),
                source,
            })?;
        }
        let clean = scrub(text, &self.secrets);
        std::fs::write(&path, clean).map_err(|source| DiagsError::Io { path, source })?;
        self.files.push(rel.to_string());
        Ok(())
    }

    fn yaml<T: Serialize>(&mut self, rel: &str, v: &T) -> Result<(), DiagsError> {
        let text = serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# not encodable: {e}\n"));
        self.write(rel, &text)
    }

    /// Something that could not be collected, said once on stderr and in the summary.
    fn miss(&mut self, what: &str, why: impl std::fmt::Display) {
        let line = format!("{what}: {why}");
        eprintln!("  ! {line}");
        self.missing.push(line);
    }
}

fn step(what: &str) {
    eprintln!("- {what}");
}

/// Why a read failed, for a person: 403 and 404 named as such.
fn why(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!("not allowed ({})", s.message),
        kube::Error::Api(s) if s.code == 404 => "not found".to_string(),
        e => e.to_string(),
    }
}

/// Replaces every secret value in `text` (longest first, so no part of one survives).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut v: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in v {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

/// BIRD configuration with the value of every `password "..."` statement replaced.
pub fn redact_bird(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("password") && t[8..].starts_with([' ', '\t', '"']) {
            let indent = &line[..line.len() - t.len()];
            let nl = if line.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!("{indent}password \"{REDACTED}\";{nl}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// A published object's data for the archive, with every password value replaced and returned.
pub fn redact_published(p: &Published) -> (BTreeMap<String, String>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut data = BTreeMap::new();
    for (k, v) in published::files_of(p) {
        let text = String::from_utf8_lossy(&v).into_owned();
        let shown = if k == published::KEY_NODE {
            match serde_json::from_str::<NodeInputs>(&text) {
                Ok(mut ni) => {
                    for keys in ni.passwords.values_mut() {
                        for v in keys.values_mut() {
                            secrets.push(std::mem::replace(v, REDACTED.to_string()));
                        }
                    }
                    serde_json::to_string_pretty(&ni).unwrap_or(text)
                }
                // Not readable as inputs: left to the line redaction and the scrub.
                Err(_) => redact_bird(&text),
            }
        } else {
            // The previous format carries rendered BIRD files.
            redact_bird(&text)
        };
        data.insert(k, shown);
    }
    (data, secrets)
}

/// The archive's or directory's path.
fn output_path(args: &DiagsArgs, now: jiff::Timestamp) -> (PathBuf, bool) {
    let p = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "tortie-diags-{}-{}.tar.gz",
            args.node,
            now.strftime("%Y%m%dT%H%M%SZ")
        ))
    });
    let s = p.to_string_lossy();
    let archive = s.ends_with(".tar.gz") || s.ends_with(".tgz");
    (p, archive)
}

/// The directory inside the archive: its name without the extension.
fn stem(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tortie-diags".into());
    name.trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz")
        .to_string()
}

impl DiagsArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let now = jiff::Timestamp::now();
        let (out, archive) = output_path(&self, now);
        if out.exists() {
            return Err(DiagsError::Exists(out).into());
        }
        let client = super::super::connect().await?;
        let mode = match self.crd_mode {
            ModeArg::V1 => CrdMode::V1,
            ModeArg::V3 => CrdMode::V3,
            ModeArg::Auto => CrdMode::detect(&client).await?,
        };
        // The Node first: a name that is no node's is a mistake, and nothing is written. An
        // account that may not read Nodes (the agent's own) collects the rest.
        let nodes: Api<Node> = Api::all(client.clone());
        let node = match nodes.get_opt(&self.node).await {
            Ok(Some(n)) => Ok(n),
            Ok(None) => return Err(DiagsError::NoSuchNode(self.node.clone()).into()),
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 403) => Err(e),
            Err(source) => {
                return Err(DiagsError::Node {
                    node: self.node.clone(),
                    source,
                }
                .into());
            }
        };
        let tmp;
        let dir = if archive {
            let parent = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            tmp = tempfile::Builder::new()
                .prefix(".tortie-diags-")
                .tempdir_in(parent)
                .map_err(|source| DiagsError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            tmp.path().join(stem(&out))
        } else {
            out.clone()
        };
        std::fs::create_dir_all(&dir).map_err(|source| DiagsError::Io {
            path: dir.clone(),
            source,
        })?;
        eprintln!(
            "Collecting diagnostics for node {} into {}",
            self.node,
            out.display()
        );
        let mut c = Collector {
            dir: dir.clone(),
            secrets: Vec::new(),
            files: Vec::new(),
            missing: Vec::new(),
        };
        // The published object first: its password values are scrubbed from everything after.
        self.published(&client, &mut c).await?;
        match node {
            Ok(node) => self.node_object(node, &mut c)?,
            Err(e) => c.miss(&format!("Node {}", self.node), why(&e)),
        }
        self.node_status(&client, mode, &mut c).await?;
        self.events(&client, &mut c).await?;
        self.ipam(&client, mode, &mut c).await?;
        self.logs(&client, &mut c).await?;
        if self.local {
            self.local_files(&mut c)?;
        }
        let summary = summary(&self.node, now, &c.files, &c.missing);
        c.write("summary.txt", &summary)?;
        let n = c.files.len();
        if archive {
            pack(&dir, &out)?;
        }
        eprintln!(
            "Wrote {} ({n} files{})",
            out.display(),
            if c.missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} item(s) could not be collected, listed in summary.txt",
                    c.missing.len()
                )
            }
        );
        Ok(ExitCode::SUCCESS)
    }

    async fn published(&self, client: &Client, c: &mut Collector) -> Result<(), DiagsError> {
        let name = published::object_name(&self.node);
        step(&format!("published BGP inputs ({name} and the shards)"));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &self.namespace);
        let own = match secrets.get_opt(&name).await {
            Ok(Some(s)) => Some(Published::Secret(s)),
            Ok(None) => None,
            Err(e) => {
                c.miss(&format!("Secret {}/{name}", self.namespace), why(&e));
                None
            }
        };
        let own = match own {
            Some(o) => Some(o),
            None => match cms.get_opt(&name).await {
                Ok(Some(m)) => Some(Published::ConfigMap(m)),
                Ok(None) => {
                    c.miss(
                        &format!("{name} in {}", self.namespace),
                        "not published (no BGP controller running, BGP off, or another --namespace)",
                    );
                    None
                }
                Err(e) => {
                    c.miss(&format!("ConfigMap {}/{name}", self.namespace), why(&e));
                    None
                }
            },
        };
        let shards = match cms
            .list(&ListParams::default().labels(&format!("{}=true", published::LABEL_SHARD)))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                c.miss(&format!("shards (ConfigMaps) in {}", self.namespace), why(&e));
                vec![]
            }
        };
        if let Some(own) = &own {
            let (data, found) = redact_published(own);
            c.secrets.extend(found);
            let mut meta = own.metadata().clone();
            meta.managed_fields = None;
            let shown = serde_json::json!({
                "kind": own.kind(),
                "metadata": meta,
                "data": data,
            });
            c.yaml(&format!("published/{name}.yaml"), &shown)?;
            match published::render_published(own, &shards, &crate::bgp::CalicoSelectors::default()) {
                Ok(Some(r)) => {
                    for (f, bytes) in &r.files {
                        c.write(
                            &format!("published/rendered/{f}"),
                            &redact_bird(&String::from_utf8_lossy(bytes)),
                        )?;
                    }
                    c.write(
                        "published/rendered/content-hash.txt",
                        &format!("{}\n", r.content_hash()),
                    )?;
                }
                Ok(None) => c.miss(
                    "rendered BIRD files",
                    "the shards of the node's layout are not all there yet",
                ),
                Err(e) => c.miss("rendered BIRD files", e),
            }
        }
        for s in &shards {
            let mut s = s.clone();
            s.metadata.managed_fields = None;
            c.yaml(&format!("published/shards/{}.yaml", s.name_any()), &s)?;
        }
        Ok(())
    }

    fn node_object(&self, mut node: Node, c: &mut Collector) -> Result<(), DiagsError> {
        step(&format!("Node {} and its conditions", self.node));
        node.metadata.managed_fields = None;
        let mut t = TextTable::new(&["TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"]);
        for cond in node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
        {
            t.row([
                cond.type_.clone(),
                cond.status.clone(),
                cond.reason.clone().unwrap_or_default(),
                cond.last_transition_time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                cond.message.clone().unwrap_or_default(),
            ]);
        }
        let mut text = t.render();
        for key in [published::ANN_STATUS, published::ANN_APPLIED_HASH] {
            if let Some(v) = node.annotations().get(key) {
                text.push_str(&format!("{key}: {v}\n"));
            }
        }
        c.write("node/conditions.txt", &text)?;
        c.yaml("node/node.yaml", &node)
    }

    async fn node_status(&self, client: &Client, mode: CrdMode, c: &mut Collector) -> Result<(), DiagsError> {
        step("CalicoNodeStatus objects of the node");
        let api: Api<NodeStatus> = Api::all_with(client.clone(), &mode.node_status_resource());
        match api.list(&ListParams::default()).await {
            Ok(l) => {
                let now = jiff::Timestamp::now();
                let mine: Vec<NodeStatus> = l
                    .items
                    .into_iter()
                    .filter(|o| o.spec.node.as_deref() == Some(self.node.as_str()))
                    .collect();
                if mine.is_empty() {
                    c.miss("CalicoNodeStatus", format!("none for node {}", self.node));
                }
                let mut text = String::new();
                for mut o in mine {
                    text.push_str(&super::describe(&o, now).0);
                    o.metadata.managed_fields = None;
                    c.yaml(&format!("caliconodestatus/{}.yaml", o.name_any()), &o)?;
                }
                if !text.is_empty() {
                    c.write("caliconodestatus/status.txt", &text)?;
                }
            }
            Err(e) => c.miss("CalicoNodeStatus", why(&e)),
        }
        Ok(())
    }

    async fn events(&self, client: &Client, c: &mut Collector) -> Result<(), DiagsError> {
        step("Events about the node and tortie's objects");
        let api: Api<Event> = Api::all(client.clone());
        match api.list(&ListParams::default()).await {
            Ok(l) => {
                let mut kept: Vec<Event> = l
                    .items
                    .into_iter()
                    .filter(|e| event_is_relevant(e, &self.node))
                    .collect();
                kept.sort_by_key(event_time);
                let mut t = TextTable::new(&[
                    "LAST SEEN",
                    "TYPE",
                    "REASON",
                    "OBJECT",
                    "FROM",
                    "COUNT",
                    "MESSAGE",
                ]);
                for e in &kept {
                    let o = &e.involved_object;
                    t.row([
                        event_time(e).map(|t| t.to_string()).unwrap_or_default(),
                        e.type_.clone().unwrap_or_default(),
                        e.reason.clone().unwrap_or_default(),
                        format!(
                            "{}/{}",
                            o.kind.clone().unwrap_or_default(),
                            o.name.clone().unwrap_or_default()
                        ),
                        event_source(e),
                        e.count.unwrap_or(1).to_string(),
                        e.message.clone().unwrap_or_default().replace('\n', " "),
                    ]);
                }
                c.write("events.txt", &format!("{} event(s)\n{}", kept.len(), t.render()))?;
            }
            Err(e) => c.miss("Events", why(&e)),
        }
        Ok(())
    }

    async fn ipam(&self, client: &Client, mode: CrdMode, c: &mut Collector) -> Result<(), DiagsError> {
        step("IPAM blocks, affinities and addresses of the node");
        let store = Store::new(client.clone(), mode);
        let blocks = match store.list_blocks().await {
            Ok(b) => b,
            Err(e) => {
                c.miss("IPAM blocks", e);
                vec![]
            }
        };
        let affinities = match store.list_affinities().await {
            Ok(a) => a,
            Err(e) => {
                c.miss("block affinities", e);
                vec![]
            }
        };
        let host = format!("host:{}", self.node);
        let mut summary = TextTable::new(&["BLOCK", "AFFINITY", "ALLOCATED", "BY THIS NODE", "FREE"])
            .right_align(&[2, 3, 4]);
        for b in &blocks {
            let own = b.spec.affinity.as_deref() == Some(host.as_str());
            let by_node = b
                .spec
                .allocations
                .iter()
                .flatten()
                .filter(|&&a| {
                    b.spec
                        .attributes
                        .get(a)
                        .and_then(|x| x.secondary.as_ref())
                        .and_then(|s| s.get("node"))
                        == Some(self.node.as_str())
                })
                .count();
            if !own && by_node == 0 {
                continue;
            }
            summary.row([
                b.spec.cidr.clone(),
                b.spec.affinity.clone().unwrap_or_else(|| "-".into()),
                b.spec.allocations.iter().flatten().count().to_string(),
                by_node.to_string(),
                b.spec.unallocated.len().to_string(),
            ]);
            let mut b = b.clone();
            b.metadata.managed_fields = None;
            c.yaml(&format!("ipam/blocks/{}.yaml", b.name_any()), &b)?;
        }
        c.write(
            "ipam/summary.txt",
            &format!(
                "Blocks affine to {} and blocks holding its addresses (borrowed):\n{}",
                self.node,
                summary.render()
            ),
        )?;
        let mine: Vec<_> = affinities
            .into_iter()
            .filter(|a| a.spec.node == self.node)
            .map(|mut a| {
                a.metadata.managed_fields = None;
                a
            })
            .collect();
        c.yaml("ipam/affinities.yaml", &mine)
    }

    async fn logs(&self, client: &Client, c: &mut Collector) -> Result<(), DiagsError> {
        step(&format!(
            "logs of the operator's pods and node {}'s agent pod (pods/log)",
            self.node
        ));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let mut wanted = vec![];
        for (component, on_node) in [("operator", false), ("agent", true)] {
            let mut lp = ListParams::default().labels(&format!("app.kubernetes.io/component={component}"));
            if on_node {
                lp = lp.fields(&format!("spec.nodeName={}", self.node));
            }
            match pods.list(&lp).await {
                Ok(l) if l.items.is_empty() => c.miss(
                    &format!("{component} pods in {}", self.namespace),
                    if on_node {
                        format!("none on node {}", self.node)
                    } else {
                        "none".to_string()
                    },
                ),
                Ok(l) => wanted.extend(l.items),
                Err(e) => c.miss(&format!("{component} pods in {}", self.namespace), why(&e)),
            }
        }
        for p in wanted {
            let name = p.name_any();
            let statuses = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            for container in p.spec.iter().flat_map(|s| s.containers.iter()) {
                let restarted = statuses
                    .iter()
                    .any(|s| s.name == container.name && s.restart_count > 0);
                for previous in [false, true] {
                    if previous && !restarted {
                        continue;
                    }
                    let lp = LogParams {
                        container: Some(container.name.clone()),
                        tail_lines: Some(self.log_lines),
                        timestamps: true,
                        previous,
                        ..Default::default()
                    };
                    let suffix = if previous { ".previous" } else { "" };
                    match pods.logs(&name, &lp).await {
                        Ok(text) => c.write(
                            &format!("logs/{name}/{}{suffix}.log", container.name),
                            &redact_bird(&text),
                        )?,
                        Err(e) => c.miss(
                            &format!(
                                "log of {}/{name} container {}{suffix}",
                                self.namespace, container.name
                            ),
                            why(&e),
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    fn local_files(&self, c: &mut Collector) -> Result<(), DiagsError> {
        step(&format!(
            "this machine: {} and BIRD's status",
            self.bird_dir.display()
        ));
        match std::fs::read_dir(&self.bird_dir) {
            Ok(entries) => {
                let mut names: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                names.sort();
                for p in names {
                    let file = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    match std::fs::read(&p) {
                        Ok(b) => c.write(
                            &format!("local/bird-dir/{file}"),
                            &redact_bird(&String::from_utf8_lossy(&b)),
                        )?,
                        Err(e) => c.miss(&p.display().to_string(), e),
                    }
                }
            }
            Err(e) => c.miss(&self.bird_dir.display().to_string(), e),
        }
        let mut text = String::new();
        for (family, socket) in [
            (crate::node::status::Family::V4, Some(&self.bird_socket)),
            (crate::node::status::Family::V6, self.bird6_socket.as_ref()),
        ] {
            let Some(socket) = socket else { continue };
            let v = if family == crate::node::status::Family::V4 {
                "4"
            } else {
                "6"
            };
            match crate::node::report::observe_one(Some(socket), family, false) {
                crate::node::status::Observed::Up { daemon, sessions, .. } => {
                    text.push_str(&format!(
                        "BIRDv{v} ({}): version {}, router ID {}, up since {}, last reconfigured {}\n",
                        socket.display(),
                        daemon.version,
                        daemon.router_id,
                        daemon.last_boot,
                        daemon.last_reconfiguration
                    ));
                    text.push_str(&crate::node::status::render_table(
                        &crate::node::status::rows_of_sessions(&sessions),
                    ));
                }
                crate::node::status::Observed::Unreachable(e) => {
                    c.miss(&format!("BIRDv{v} socket {}", socket.display()), e)
                }
                crate::node::status::Observed::Absent => {}
            }
        }
        if !text.is_empty() {
            c.write("local/bird-status.txt", &text)?;
        }
        Ok(())
    }
}

/// An Event about the node (or its published object), or one a tortie component reported.
pub fn event_is_relevant(e: &Event, node: &str) -> bool {
    let name = e.involved_object.name.as_deref().unwrap_or("");
    name == node || name == published::object_name(node) || event_source(e).starts_with("tortie")
}

fn event_source(e: &Event) -> String {
    e.reporting_component
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
        .unwrap_or_default()
}

fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn summary(node: &str, now: jiff::Timestamp, files: &[String], missing: &[String]) -> String {
    let mut s = format!(
        "tortie node diags for node {node}\ncollected at {now} by tortie {}\n\nFiles:\n",
        env!("CARGO_PKG_VERSION")
    );
    for f in files {
        s.push_str(&format!("  {f}\n"));
    }
    s.push_str("\nNot collected:\n");
    if missing.is_empty() {
        s.push_str("  (nothing)\n");
    }
    for m in missing {
        s.push_str(&format!("  {m}\n"));
    }
    s.push_str(
        "\nSecrets: BGP password values are replaced by <redacted> in every file.\n\
         Agent logs on a node without API access: kubectl logs -n <namespace> <agent pod> -c <container>.\n",
    );
    s
}

/// `dir` into the gzip'ed tar `archive` (with the system's tar), then `dir` removed.
fn pack(dir: &Path, archive: &Path) -> Result<(), DiagsError> {
    let fail = |why: String| DiagsError::Pack {
        dir: dir.to_path_buf(),
        archive: archive.to_path_buf(),
        why,
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().unwrap_or_default();
    let tmp_archive = parent.join("archive.tar.gz");
    let out = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tmp_archive)
        .arg("-C")
        .arg(parent)
        .arg(name)
        .output()
        .map_err(|e| fail(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    std::fs::rename(&tmp_archive, archive)
        .or_else(|_| std::fs::copy(&tmp_archive, archive).map(|_| ()))
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};

    #[test]
    fn bird_password_lines_are_redacted_and_nothing_else() {
        let cfg = "protocol bgp Mesh_10_0_0_2 from bgp_template {\n  neighbor 10.0.0.2 as 64512;\n  password \"s3cr3t\";\n\tpassword\t\"x\";\n  passwords_are_not_this;\n}\n";
        let r = redact_bird(cfg);
        assert!(!r.contains("s3cr3t") && !r.contains("\"x\""), "{r}");
        assert!(r.contains("  password \"<redacted>\";\n"), "{r}");
        assert!(r.contains("\tpassword \"<redacted>\";\n"), "{r}");
        assert!(r.contains("passwords_are_not_this;"), "{r}");
        assert!(r.contains("neighbor 10.0.0.2 as 64512;"), "{r}");
        assert_eq!(redact_bird("no newline"), "no newline");
    }

    #[test]
    fn scrub_replaces_every_secret_longest_first() {
        let s = scrub(
            "a=hunter2 b=hunter22 c=hunter2",
            &["hunter2".into(), "hunter22".into(), String::new()],
        );
        assert_eq!(s, "a=<redacted> b=<redacted> c=<redacted>");
    }

    #[test]
    fn published_passwords_are_replaced_and_returned() {
        let mut ni = NodeInputs {
            node: "n1".into(),
            shards: 1,
            ..Default::default()
        };
        ni.passwords
            .entry("bgp-secrets".into())
            .or_default()
            .insert("peer".into(), "pa55word".into());
        let s = Secret {
            data: Some(
                [(
                    published::KEY_NODE.to_string(),
                    k8s_openapi::ByteString(ni.to_json().into_bytes()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let (data, secrets) = redact_published(&Published::Secret(s));
        assert_eq!(secrets, vec!["pa55word".to_string()]);
        let shown = &data[published::KEY_NODE];
        assert!(!shown.contains("pa55word") && shown.contains(REDACTED), "{shown}");
        assert!(shown.contains("bgp-secrets"), "{shown}");
    }

    #[test]
    fn events_about_the_node_or_from_tortie() {
        let ev = |name: &str, from: &str| Event {
            involved_object: ObjectReference {
                name: Some(name.into()),
                ..Default::default()
            },
            source: Some(EventSource {
                component: Some(from.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(event_is_relevant(&ev("n1", "kubelet"), "n1"));
        assert!(event_is_relevant(&ev("tortie-bird-n1", "x"), "n1"));
        assert!(event_is_relevant(
            &ev("default-ipv4-ippool", "tortie-ippool"),
            "n1"
        ));
        assert!(!event_is_relevant(&ev("n2", "kubelet"), "n1"));
    }

    #[test]
    fn output_names() {
        let args = |o: Option<&str>| DiagsArgs {
            node: "n1".into(),
            output: o.map(PathBuf::from),
            namespace: "tortie-system".into(),
            local: false,
            bird_dir: "/etc/bird".into(),
            bird_socket: "/run/bird/bird.ctl".into(),
            bird6_socket: None,
            log_lines: 10,
            crd_mode: ModeArg::Auto,
        };
        let now: jiff::Timestamp = "2026-12-07T03:04:05Z".parse().unwrap();
        let (p, a) = output_path(&args(None), now);
        assert_eq!(p, PathBuf::from("tortie-diags-n1-20261207T030405Z.tar.gz"));
        assert!(a);
        assert_eq!(stem(&p), "tortie-diags-n1-20261207T030405Z");
        let (p, a) = output_path(&args(Some("/tmp/d")), now);
        assert_eq!((p, a), (PathBuf::from("/tmp/d"), false));
        assert!(output_path(&args(Some("x.tgz")), now).1);
    }
}
