//! `tortie node status`: BGP session status as `calicoctl node status` prints it, from the
//! CalicoNodeStatus objects the nodes' agents fill in, or (`--local`) straight from this node's
//! BIRD sockets. A status whose agent stopped writing is printed as STALE, never as healthy.
//! `tortie node diags`: see [`diags`].

pub mod diags;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::run::ModeArg;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

use crate::api::nodestatus::{BgpStatus, DaemonStatus, RouteStatus};
use crate::api::{CrdMode, NodeStatus};
use crate::node::report::{FIELD_MANAGER, observe_one};
use crate::node::status::{self, Family, Freshness, Observed};

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// BGP session status of the nodes (calicoctl node status). Exit status 1 when a status is
    /// stale, missing, or BIRD cannot be asked.
    Status(StatusArgs),
    /// Collect what support needs about one node into a .tar.gz (calicoctl node diags): the Node
    /// and its conditions, its published BGP inputs and rendered BIRD files (passwords redacted),
    /// CalicoNodeStatus, Events, IPAM blocks and affinities, operator and agent logs.
    Diags(diags::DiagsArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this node's CalicoNodeStatus objects.
    #[arg(long)]
    pub node: Option<String>,
    /// Ask this node's BIRD directly (as calicoctl does), not the cluster.
    #[arg(long)]
    pub local: bool,
    /// With --local: the IPv4 daemon's control socket (default: /var/run/calico/bird.ctl, else
    /// /var/run/bird/bird.ctl, as calicoctl).
    #[arg(long, env = "TORTIE_BIRD_SOCKET")]
    pub bird_socket: Option<PathBuf>,
    /// With --local: the IPv6 daemon's control socket (default: /var/run/calico/bird6.ctl, else
    /// /var/run/bird/bird6.ctl).
    #[arg(long, env = "TORTIE_BIRD6_SOCKET")]
    pub bird6_socket: Option<PathBuf>,
    /// Calico CRD mode: auto (detect from the API groups), v1 or v3.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto, env = "TORTIE_CRD_MODE")]
    pub crd_mode: ModeArg,
}

impl NodeArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            NodeCommand::Status(a) if a.local => Ok(a.local()),
            NodeCommand::Status(a) => a.cluster().await,
            NodeCommand::Diags(a) => a.run().await,
        }
    }
}

/// The first of calicoctl's two socket locations that exists.
fn default_socket(file: &str) -> PathBuf {
    let calico = PathBuf::from("/var/run/calico").join(file);
    if calico.exists() {
        calico
    } else {
        PathBuf::from("/var/run/bird").join(file)
    }
}

impl StatusArgs {
    fn local(self) -> ExitCode {
        let v4 = self.bird_socket.unwrap_or_else(|| default_socket("bird.ctl"));
        let v6 = self.bird6_socket.unwrap_or_else(|| default_socket("bird6.ctl"));
        let mut ok = true;
        for (family, socket) in [(Family::V4, v4), (Family::V6, v6)] {
            let v = if family == Family::V4 { "4" } else { "6" };
            match observe_one(Some(&socket), family, false) {
                Observed::Up { sessions, .. } => {
                    print!("\nIPv{v} BGP status\n");
                    if sessions.is_empty() {
                        println!("No IPv{v} peers found.");
                    } else {
                        print!("{}", status::render_table(&status::rows_of_sessions(&sessions)));
                    }
                }
                // No bird6 is normal on an IPv4-only node.
                Observed::Unreachable(_) if family == Family::V6 && !socket.exists() => {
                    print!(
                        "\nINFO: BIRDv6 socket {} not found: no IPv6 BGP.\n",
                        socket.display()
                    );
                }
                Observed::Unreachable(e) => {
                    print!("\nError querying BIRD: unable to read the BIRDv{v} socket: {e}\n");
                    ok = false;
                }
                Observed::Absent => {}
            }
        }
        println!();
        if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }

    async fn cluster(self) -> anyhow::Result<ExitCode> {
        let client = super::connect().await?;
        let mode = match self.crd_mode {
            ModeArg::V1 => CrdMode::V1,
            ModeArg::V3 => CrdMode::V3,
            ModeArg::Auto => CrdMode::detect(&client).await?,
        };
        let api: Api<NodeStatus> = Api::all_with(client, &mode.node_status_resource());
        let mut objs: Vec<NodeStatus> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|o| self.node.is_none() || o.spec.node == self.node)
            .collect();
        objs.sort_by(|a, b| (&a.spec.node, a.name_any()).cmp(&(&b.spec.node, b.name_any())));
        if objs.is_empty() {
            let node = self.node.as_deref().unwrap_or("NODE");
            println!(
                "No CalicoNodeStatus{}. Create one and the node's agent fills it in:\n\n  apiVersion: {}\n  kind: CalicoNodeStatus\n  metadata:\n    name: {node}\n  spec:\n    node: {node}\n    classes: [Agent, BGP]\n    updatePeriodSeconds: 10",
                self.node
                    .as_deref()
                    .map(|n| format!(" for node {n}"))
                    .unwrap_or_default(),
                mode.api_version(),
            );
            return Ok(ExitCode::FAILURE);
        }
        let now = jiff::Timestamp::now();
        let mut ok = true;
        for o in &objs {
            let (text, fresh) = describe(o, now);
            print!("{text}");
            ok &= fresh;
        }
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
}

fn daemon_line(family: &str, d: &DaemonStatus) -> Option<String> {
    let state = d.state.as_deref()?;
    let mut s = format!("BIRDv{family}: {state}");
    if let Some(v) = &d.version {
        s.push_str(&format!(", version {v}"));
    }
    if let Some(r) = &d.router_id {
        s.push_str(&format!(", router ID {r}"));
    }
    if let Some(t) = &d.last_reconfiguration_time {
        s.push_str(&format!(", last reconfigured {t}"));
    }
    Some(s)
}

/// One object as text, and whether it is current (not stale, not empty).
pub fn describe(o: &NodeStatus, now: jiff::Timestamp) -> (String, bool) {
    let node = o.spec.node.clone().unwrap_or_default();
    let period = o.spec.update_period_seconds;
    let st = o.status.clone().unwrap_or_default();
    let last = st.last_updated.as_ref().map(|t| t.0);
    // calico-node writes only when something changed, so the age of its lastUpdated says
    // nothing about whether it still runs: only a tortie agent's status is judged stale.
    let foreign = status_writer(o).filter(|m| m != FIELD_MANAGER);
    let freshness = match (&foreign, last) {
        (Some(_), Some(_)) => Freshness::Fresh,
        _ => status::staleness(period, last, now),
    };
    let mut out = format!(
        "Node {node} (CalicoNodeStatus {}, every {}s",
        o.name_any(),
        period.map(|p| p.to_string()).unwrap_or("?".into())
    );
    if let Some(t) = last {
        out.push_str(&format!(", updated {t}"));
    }
    out.push_str(")\n");
    if let (Some(m), Some(_)) = (&foreign, last) {
        out.push_str(&format!(
            "Written by {m}, which refreshes lastUpdated only on a change: its age is not judged.\n"
        ));
    }
    let stale = match &freshness {
        Freshness::NeverUpdated => {
            out.push_str(&format!(
                "No status yet: no agent has reported for node {node} (is `tortie agent` running there, and BGP on?).\n\n"
            ));
            return (out, false);
        }
        Freshness::Stale { age } => {
            out.push_str(&format!(
                "STALE: not updated for {}s, more than 3 x updatePeriodSeconds ({}s): the node's agent is gone or stuck. Its last report follows; the sessions may be down now.\n",
                age.as_secs(),
                period.unwrap_or(0)
            ));
            true
        }
        Freshness::Snapshot => {
            out.push_str("updatePeriodSeconds is 0: a one-time report, not refreshed.\n");
            false
        }
        Freshness::Fresh => false,
    };
    if o.spec.wants("Agent")
        && let Some(a) = &st.agent
    {
        for (f, d) in [("4", &a.bird_v4), ("6", &a.bird_v6)] {
            if let Some(l) = daemon_line(f, d) {
                out.push_str(&l);
                if stale {
                    out.push_str(" (STALE)");
                }
                out.push('\n');
            }
        }
    }
    if o.spec.wants("BGP") {
        let bgp = st.bgp.clone().unwrap_or_default();
        let routes = if o.spec.wants("Routes") {
            st.routes.clone()
        } else {
            None
        };
        out.push_str(&peer_tables(&bgp, routes.as_ref(), stale));
    } else {
        out.push_str("(BGP sessions not asked for: spec.classes has no BGP)\n");
    }
    out.push('\n');
    (out, !stale)
}

/// The manager of the object's last status write, from its managed fields (`None` when the
/// server did not send them).
fn status_writer(o: &NodeStatus) -> Option<String> {
    let fields = o.metadata.managed_fields.as_ref()?;
    let writes_status = |f: &ManagedFieldsEntry| {
        f.subresource.as_deref() == Some("status")
            || f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0.get("f:status").is_some())
    };
    let mut writers: Vec<&ManagedFieldsEntry> = fields.iter().filter(|f| writes_status(f)).collect();
    writers.sort_by_key(|f| f.time.as_ref().map(|t| t.0));
    writers.last().and_then(|f| f.manager.clone())
}

fn peer_tables(bgp: &BgpStatus, routes: Option<&RouteStatus>, stale: bool) -> String {
    let mut out = String::new();
    for (v, peers, learned) in [
        ("4", &bgp.peers_v4, routes.map(|r| &r.routes_v4)),
        ("6", &bgp.peers_v6, routes.map(|r| &r.routes_v6)),
    ] {
        out.push_str(&format!(
            "\nIPv{v} BGP status{}\n",
            if stale { " (STALE)" } else { "" }
        ));
        if peers.is_empty() {
            out.push_str(&format!("No IPv{v} peers found.\n"));
            continue;
        }
        let mut rows = status::rows_of_peers(peers);
        // The object has no per-session route counts; with the Routes class they can be told
        // from where each route was learned.
        if let Some(learned) = learned {
            for r in &mut rows {
                let n = learned
                    .iter()
                    .filter(|x| {
                        x.learned_from.as_ref().and_then(|l| l.peer_ip.as_deref()) == Some(r.peer.as_str())
                    })
                    .count();
                r.info = format!("{} ({n} routes learned)", r.info);
            }
        }
        if stale {
            for r in &mut rows {
                r.info = format!("STALE, last seen {}", r.info);
                r.state = "unknown".into();
            }
        }
        out.push_str(&status::render_table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::nodestatus::{CalicoNodeStatusSpec, CalicoNodeStatusStatus, PeerStatus};

    fn obj(period: i64, last: Option<&str>) -> NodeStatus {
        let mut o = NodeStatus::new(
            "n1",
            &CrdMode::V1.node_status_resource(),
            CalicoNodeStatusSpec {
                node: Some("node-1".into()),
                classes: Some(vec!["BGP".into()]),
                update_period_seconds: Some(period),
            },
        );
        o.status = last.map(|t| CalicoNodeStatusStatus {
            last_updated: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                t.parse().unwrap(),
            )),
            bgp: Some(BgpStatus {
                number_established_v4: 1,
                peers_v4: vec![PeerStatus {
                    peer_ip: Some("10.0.0.2".into()),
                    type_: Some("NodeMesh".into()),
                    state: Some("Established".into()),
                    since: Some("21:38:27".into()),
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        o
    }

    #[test]
    fn a_fresh_status_shows_its_sessions_as_they_are() {
        let now: jiff::Timestamp = "2026-12-06T21:40:20Z".parse().unwrap();
        let (text, ok) = describe(&obj(10, Some("2026-12-06T21:40:00Z")), now);
        assert!(ok, "{text}");
        assert!(
            text.contains("| 10.0.0.2     | node-to-node mesh | up    | 21:38:27 | Established |"),
            "{text}"
        );
        assert!(!text.contains("STALE"), "{text}");
        assert!(text.contains("No IPv6 peers found."), "{text}");
    }

    #[test]
    fn route_counts_come_from_the_routes_class() {
        use crate::api::nodestatus::{LearnedFrom, Route};
        let now: jiff::Timestamp = "2026-12-06T21:40:20Z".parse().unwrap();
        let mut o = obj(10, Some("2026-12-06T21:40:00Z"));
        o.spec.classes = Some(vec!["BGP".into(), "Routes".into()]);
        let learned = |d: &str, peer: &str| Route {
            destination: Some(d.into()),
            learned_from: Some(LearnedFrom {
                source_type: Some("NodeMesh".into()),
                peer_ip: Some(peer.into()),
            }),
            ..Default::default()
        };
        o.status.as_mut().unwrap().routes = Some(RouteStatus {
            routes_v4: vec![
                learned("10.48.1.0/26", "10.0.0.2"),
                learned("10.48.2.0/26", "10.0.0.2"),
                learned("10.48.3.0/26", "10.0.0.3"),
            ],
            ..Default::default()
        });
        let (text, _) = describe(&o, now);
        assert!(text.contains("| Established (2 routes learned) |"), "{text}");
    }

    #[test]
    fn calico_nodes_status_is_not_judged_by_its_age() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let now: jiff::Timestamp = "2026-12-06T23:00:00Z".parse().unwrap();
        let mut o = obj(10, Some("2026-12-06T21:40:00Z"));
        let entry = |m: &str, at: &str| ManagedFieldsEntry {
            manager: Some(m.into()),
            subresource: Some("status".into()),
            time: Some(Time(at.parse().unwrap())),
            ..Default::default()
        };
        o.metadata.managed_fields = Some(vec![entry("calico-node", "2026-12-06T21:40:00Z")]);
        let (text, ok) = describe(&o, now);
        assert!(ok && !text.contains("STALE"), "{text}");
        assert!(text.contains("Written by calico-node"), "{text}");
        // The last writer is a tortie agent: judged.
        o.metadata.managed_fields = Some(vec![
            entry("calico-node", "2026-12-06T21:00:00Z"),
            entry(FIELD_MANAGER, "2026-12-06T21:40:00Z"),
        ]);
        let (text, ok) = describe(&o, now);
        assert!(!ok && text.contains("STALE"), "{text}");
    }

    #[test]
    fn a_stale_status_never_looks_healthy() {
        let now: jiff::Timestamp = "2026-12-06T21:41:00Z".parse().unwrap();
        let (text, ok) = describe(&obj(10, Some("2026-12-06T21:40:00Z")), now);
        assert!(!ok);
        assert!(text.contains("STALE: not updated for 60s"), "{text}");
        assert!(!text.contains("| up "), "{text}");
        assert!(text.contains("STALE, last seen Established"), "{text}");
        let (text, ok) = describe(&obj(10, None), now);
        assert!(!ok);
        assert!(text.contains("No status yet"), "{text}");
    }
}
