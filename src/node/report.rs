//! The CalicoNodeStatus writer: like calico-node, the agent fills the status of the
//! CalicoNodeStatus objects users create for its node (`spec.node`), with the classes they ask
//! for, every `updatePeriodSeconds`. It reads BIRD's control sockets only while such an object
//! exists, and writes with server-side apply to the status subresource (field manager
//! [`FIELD_MANAGER`]), so it never touches the spec.
//!
//! One deliberate difference: calico-node skips a write when nothing changed, so its
//! `lastUpdated` says nothing about whether it is still alive. The agent writes every period
//! (one small patch per object and period, at the rate the object's author chose): a status
//! whose `lastUpdated` is older than three periods is then known to be stale
//! ([`super::status::staleness`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use super::bird;
use super::status::{self, Family, Observed};
use crate::api::{CrdMode, NodeStatus};

/// Field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "tortie-agent";

/// Control sockets of this node's daemons; `None`: no such daemon.
#[derive(Clone, Debug, Default)]
pub struct Sockets {
    pub v4: Option<PathBuf>,
    pub v6: Option<PathBuf>,
}

/// Reads one daemon: `show status`, `show protocols all` and, with `routes`, `show route`, in
/// one connection. Blocking.
pub fn observe_one(socket: Option<&Path>, family: Family, routes: bool) -> Observed {
    let Some(socket) = socket else {
        return Observed::Absent;
    };
    let mut commands = vec!["show status", "show protocols all"];
    if routes {
        commands.push("show route");
    }
    let replies = match bird::query(socket, &commands) {
        Ok(r) => r,
        Err(e) => return Observed::Unreachable(e.to_string()),
    };
    let parsed = status::parse_status(&replies[0]).and_then(|daemon| {
        Ok(Observed::Up {
            daemon,
            sessions: status::parse_protocols(&replies[1], family)?,
            routes: match replies.get(2) {
                Some(r) => status::parse_routes(r)?,
                None => vec![],
            },
        })
    });
    parsed.unwrap_or_else(|e| Observed::Unreachable(format!("{}: {e}", socket.display())))
}

/// Reads both daemons. Blocking.
pub fn observe(sockets: &Sockets, routes: bool) -> (Observed, Observed) {
    (
        observe_one(sockets.v4.as_deref(), Family::V4, routes),
        observe_one(sockets.v6.as_deref(), Family::V6, routes),
    )
}

/// The objects naming `node`, with a period (calico-node ignores those without one).
fn mine(store: &Store<NodeStatus>, node: &str) -> Vec<std::sync::Arc<NodeStatus>> {
    store
        .state()
        .into_iter()
        .filter(|o| o.spec.node.as_deref() == Some(node) && o.spec.update_period_seconds.is_some())
        .collect()
}

/// How long to sleep: `interval`, or less when an object asks for a shorter period; at least 1 s.
pub fn tick(interval: Duration, periods: impl IntoIterator<Item = i64>) -> Duration {
    let shortest = periods
        .into_iter()
        .filter(|p| *p > 0)
        .map(|p| Duration::from_secs(p as u64))
        .min();
    let t = match shortest {
        Some(p) => p.min(interval),
        None => interval,
    };
    t.max(Duration::from_secs(1))
}

/// Runs until the watch cannot be set up; write failures are logged and retried next period.
pub async fn run(
    client: Client,
    mode: CrdMode,
    node: String,
    sockets: Sockets,
    interval: Duration,
) -> anyhow::Result<()> {
    let ar = mode.node_status_resource();
    let api: Api<NodeStatus> = Api::all_with(client, &ar);
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let kick = changed.clone();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => kick.notify_one(),
                Err(e) => warn!(error = %e, "CalicoNodeStatus watch error (retrying)"),
            }
        }
    });
    store.wait_until_ready().await?;
    info!(%node, mode = %mode, "writing the status of this node's CalicoNodeStatus objects");
    // When the agent last wrote each object, and for which generation.
    let mut written: HashMap<String, (jiff::Timestamp, Option<i64>)> = HashMap::new();
    let mut no_subresource_warned = false;
    loop {
        let objs = mine(&store, &node);
        let names: HashSet<String> = objs.iter().map(|o| o.name_any()).collect();
        written.retain(|n, _| names.contains(n));
        let now = jiff::Timestamp::now();
        let due: Vec<_> = objs
            .iter()
            .filter(|o| {
                status::due(
                    o.spec.update_period_seconds,
                    o.metadata.generation,
                    written.get(&o.name_any()).copied(),
                    now,
                )
            })
            .cloned()
            .collect();
        if !due.is_empty() {
            let s = sockets.clone();
            // `show route` is the big answer: only when someone asks for it.
            let routes = due.iter().any(|o| o.spec.wants("Routes"));
            let (v4, v6) = tokio::task::spawn_blocking(move || observe(&s, routes)).await?;
            for (family, o) in [("IPv4", &v4), ("IPv6", &v6)] {
                if let Observed::Unreachable(e) = o {
                    debug!(family, error = %e, "BIRD not answering");
                }
            }
            for o in due {
                let name = o.name_any();
                let now = jiff::Timestamp::now();
                let st = status::build_status(&o.spec, &v4, &v6, now);
                let patch = serde_json::json!({
                    "apiVersion": ar.api_version,
                    "kind": ar.kind,
                    "metadata": {"name": name},
                    "status": st,
                });
                match api
                    .patch_status(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        written.insert(name, (now, o.metadata.generation));
                    }
                    // Deleted meanwhile, or Calico's own CRDs before 3.33 (no status subresource).
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        if store
                            .get(&reflector::ObjectRef::new_with(&name, ar.clone()))
                            .is_some()
                            && !no_subresource_warned
                        {
                            warn!(object = %name, "the CalicoNodeStatus CRD has no status subresource (Calico's CRDs before 3.33?): status not written");
                            no_subresource_warned = true;
                        }
                        written.insert(name, (now, o.metadata.generation));
                    }
                    Err(e) => warn!(object = %name, error = %e, "cannot write CalicoNodeStatus status"),
                }
            }
        }
        let objs = mine(&store, &node);
        let t = tick(interval, objs.iter().filter_map(|o| o.spec.update_period_seconds));
        // A new or changed object is served at once, not a tick later.
        tokio::select! {
            _ = tokio::time::sleep(t) => {}
            _ = changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_shortest_period_within_the_interval() {
        let ten = Duration::from_secs(10);
        assert_eq!(tick(ten, []), ten);
        assert_eq!(tick(ten, [0, 60]), ten);
        assert_eq!(tick(ten, [3, 60]), Duration::from_secs(3));
        assert_eq!(tick(Duration::ZERO, []), Duration::from_secs(1));
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_no_socket_is_absent() {
        assert_eq!(observe_one(None, Family::V4, true), Observed::Absent);
        let dir = tempfile::tempdir().unwrap();
        match observe_one(Some(&dir.path().join("bird.ctl")), Family::V6, false) {
            Observed::Unreachable(e) => assert!(e.contains("bird.ctl"), "{e}"),
            o => panic!("{o:?}"),
        }
    }
}
