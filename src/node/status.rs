//! BGP session status, pure: BIRD 1.6's control-socket answers (`show status`, `show protocols`,
//! `show protocols all`) parsed into sessions, those turned into a CalicoNodeStatus `status` the
//! way calico-node fills it, and the two timing decisions (is an object due for a write; is a
//! written status stale because its agent is gone). No I/O here; [`super::bird::query`] talks to
//! the socket and [`super::report`] to the apiserver.
//!
//! Session names carry the peer type, as Calico renders them and `calicoctl node status` reads
//! them: `Mesh_<ip>`, `Node_<ip>`, `Global_<ip>`, optionally `_port_<n>`, with the address's dots
//! or colons written as `_`. Other protocols (kernel, device, `Local_Workload_*`) are not sessions
//! of the status.

use std::time::Duration;

use crate::api::nodestatus::{AgentStatus, BgpStatus, CalicoNodeStatusSpec, CalicoNodeStatusStatus};
use crate::api::nodestatus::{DaemonStatus, LearnedFrom, PeerStatus, Route, RouteStatus};

/// Address family of a BIRD daemon (`bird` or `bird6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Where a session comes from, from its name's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// `Mesh_`: the node-to-node mesh.
    Mesh,
    /// `Node_`: a BGPPeer for some nodes (`node` or `nodeSelector`, even `all()`).
    Node,
    /// `Global_`: a BGPPeer for every node.
    Global,
}

impl PeerKind {
    /// Calico's `type` value in the status.
    pub fn api_type(self) -> &'static str {
        match self {
            PeerKind::Mesh => "NodeMesh",
            PeerKind::Node => "NodePeer",
            PeerKind::Global => "GlobalPeer",
        }
    }

    /// What `calicoctl node status` prints in PEER TYPE.
    pub fn display(self) -> &'static str {
        match self {
            PeerKind::Mesh => "node-to-node mesh",
            PeerKind::Node => "node specific",
            PeerKind::Global => "global",
        }
    }

    /// From Calico's `type` value.
    pub fn from_api(s: &str) -> Option<PeerKind> {
        match s {
            "NodeMesh" => Some(PeerKind::Mesh),
            "NodePeer" => Some(PeerKind::Node),
            "GlobalPeer" => Some(PeerKind::Global),
            _ => None,
        }
    }
}

/// One BGP session of a daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// BIRD's protocol name, e.g. `Mesh_10_0_0_2`.
    pub name: String,
    pub kind: PeerKind,
    /// The peer's address: BIRD's `Neighbor address` when details were read, else from the name.
    pub peer_ip: String,
    /// BIRD's protocol state: `up` when Established, `start` while connecting, `down`...
    pub state: String,
    /// When the protocol entered that state, as BIRD prints it.
    pub since: String,
    /// BGP state: `Established`, `Active`, `Connect`, `Passive`, `Idle`...
    pub bgp_state: String,
    /// The rest of BIRD's info column, e.g. `Socket: Connection refused`.
    pub info: String,
    /// Routes the session imported and exported (`show protocols all` only).
    pub imported: Option<u64>,
    pub exported: Option<u64>,
}

impl Session {
    pub fn established(&self) -> bool {
        self.state == "up"
    }
}

/// `show status` of one daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Daemon {
    pub version: String,
    pub router_id: String,
    pub server_time: String,
    pub last_boot: String,
    pub last_reconfiguration: String,
}

/// What BIRD said that this module cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("BIRD answered with error {code}: {message}")]
    Bird { code: u16, message: String },
    #[error("unknown BIRD table heading {0:?} (expected name proto table state since info)")]
    Heading(String),
    #[error("unexpected line from BIRD: {0:?}")]
    Line(String),
    #[error("BIRD's answer ended without its final line")]
    Truncated,
}

/// A reply's last line: four digits and a space (`0000 `, `0013 Daemon is up and running`).
pub fn is_final_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b' '
}

/// Splits a raw reply into (code, text) lines; continuation lines (leading space) carry the code
/// of the line they continue. The greeting (`0001`) is skipped.
fn coded_lines(reply: &str) -> Result<Vec<(u16, &str)>, ParseError> {
    let mut out = vec![];
    let mut code: Option<u16> = None;
    let mut ended = false;
    for raw in reply.lines() {
        let line = raw.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let b = line.as_bytes();
        if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4] == b' ') {
            let c: u16 = line[..4].parse().unwrap_or(0);
            let text = &line[5..];
            if c >= 8000 {
                return Err(ParseError::Bird {
                    code: c,
                    message: text.trim().to_string(),
                });
            }
            if b[4] == b' ' && c != 1 {
                ended = true;
            }
            code = Some(c);
            if c != 1 {
                out.push((c, text));
            }
        } else if let Some(stripped) = line.strip_prefix(' ') {
            match code {
                Some(c) if !ended => out.push((c, stripped)),
                _ => return Err(ParseError::Line(line.to_string())),
            }
        } else {
            return Err(ParseError::Line(line.to_string()));
        }
    }
    if !ended {
        return Err(ParseError::Truncated);
    }
    Ok(out)
}

/// `show status`.
pub fn parse_status(reply: &str) -> Result<Daemon, ParseError> {
    let mut d = Daemon::default();
    for (code, text) in coded_lines(reply)? {
        let text = text.trim();
        if code == 1000 {
            d.version = text.strip_prefix("BIRD ").unwrap_or(text).to_string();
        } else if let Some(v) = text.strip_prefix("Router ID is ") {
            d.router_id = v.to_string();
        } else if let Some(v) = text.strip_prefix("Current server time is ") {
            d.server_time = v.to_string();
        } else if let Some(v) = text.strip_prefix("Last reboot on ") {
            d.last_boot = v.to_string();
        } else if let Some(v) = text.strip_prefix("Last reconfiguration on ") {
            d.last_reconfiguration = v.to_string();
        }
    }
    Ok(d)
}

/// Type and address from a session name (`Mesh_10_0_0_2`, `Node_fd00__8_port_1790`).
pub fn session_peer(name: &str, family: Family) -> Option<(PeerKind, String)> {
    let (prefix, rest) = name.split_once('_')?;
    let kind = match prefix {
        "Mesh" => PeerKind::Mesh,
        "Node" => PeerKind::Node,
        "Global" => PeerKind::Global,
        _ => return None,
    };
    if rest.is_empty() {
        return None;
    }
    let addr = match rest.rfind("_port_") {
        Some(i) if rest[i + 6..].bytes().all(|c| c.is_ascii_digit()) && i + 6 < rest.len() => &rest[..i],
        _ => rest,
    };
    let sep = match family {
        Family::V4 => ".",
        Family::V6 => ":",
    };
    Some((kind, addr.replace('_', sep)))
}

/// `show protocols` or `show protocols all`: the BGP sessions of Calico's three kinds, in BIRD's
/// order; with `all`, each has its neighbor address and route counts.
pub fn parse_protocols(reply: &str, family: Family) -> Result<Vec<Session>, ParseError> {
    let mut out: Vec<Session> = vec![];
    // Whether the last table row was a session (details that follow belong to it).
    let mut current = false;
    for (code, text) in coded_lines(reply)? {
        match code {
            2002 => {
                let h: Vec<&str> = text.split_whitespace().collect();
                if h != ["name", "proto", "table", "state", "since", "info"] {
                    return Err(ParseError::Heading(text.to_string()));
                }
            }
            1002 => {
                current = false;
                let cols: Vec<&str> = text.split_whitespace().collect();
                if cols.len() < 5 || cols[1] != "BGP" {
                    continue;
                }
                let Some((kind, peer_ip)) = session_peer(cols[0], family) else {
                    continue;
                };
                out.push(Session {
                    name: cols[0].to_string(),
                    kind,
                    peer_ip,
                    state: cols[3].to_string(),
                    since: cols[4].to_string(),
                    bgp_state: cols.get(5).map(|s| s.to_string()).unwrap_or_default(),
                    info: cols.get(6..).map(|r| r.join(" ")).unwrap_or_default(),
                    imported: None,
                    exported: None,
                });
                current = true;
            }
            1006 if current => {
                let s = out.last_mut().expect("current session");
                let (key, value) = match text.split_once(':') {
                    Some((k, v)) => (k.trim(), v.trim()),
                    None => continue,
                };
                match key {
                    "Neighbor address" if !value.is_empty() => s.peer_ip = value.to_string(),
                    "BGP state" if !value.is_empty() => s.bgp_state = value.to_string(),
                    "Routes" => {
                        // `1 imported, 2 exported, 0 preferred` (BIRD 1.6 may add `N filtered, `).
                        for part in value.split(',') {
                            let mut w = part.split_whitespace();
                            if let (Some(n), Some(what)) = (w.next(), w.next()) {
                                match what {
                                    "imported" => s.imported = n.parse().ok(),
                                    "exported" => s.exported = n.parse().ok(),
                                    _ => {}
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One line of `show route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdRoute {
    pub dest: String,
    /// The next hop; `N/A` for device, blackhole and unreachable routes (as calico-node writes).
    pub gateway: String,
    /// The interface, or `blackhole` / `unreachable` / `prohibited`.
    pub iface: String,
    /// The protocol that brought it: `static1`, `direct1`, `Mesh_10_0_0_2`...
    pub from: String,
    /// BIRD's preferred route for the destination (`*`), the one in the kernel's table.
    pub primary: bool,
}

/// `show route`: a destination's other routes follow it on lines without the destination.
pub fn parse_routes(reply: &str) -> Result<Vec<BirdRoute>, ParseError> {
    let mut out: Vec<BirdRoute> = vec![];
    for (code, text) in coded_lines(reply)? {
        if code != 1007 {
            continue;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let (dest, rest) = if text.starts_with(char::is_whitespace) {
            match out.last() {
                Some(prev) => (prev.dest.clone(), &words[..]),
                None => return Err(ParseError::Line(text.to_string())),
            }
        } else {
            match words.split_first() {
                Some((d, rest)) => (d.to_string(), rest),
                None => continue,
            }
        };
        let na = || "N/A".to_string();
        let (gateway, iface) = match rest {
            ["via", gw, "on", iface, ..] => (gw.to_string(), iface.to_string()),
            ["dev", iface, ..] => (na(), iface.to_string()),
            [kind @ ("blackhole" | "unreachable" | "prohibited"), ..] => (na(), kind.to_string()),
            _ => return Err(ParseError::Line(text.to_string())),
        };
        let from = text
            .split_once('[')
            .and_then(|(_, r)| r.split_whitespace().next())
            .map(|f| f.trim_end_matches(']').to_string())
            .unwrap_or_default();
        out.push(BirdRoute {
            dest,
            gateway,
            iface,
            from,
            primary: text.contains("] *"),
        });
    }
    Ok(out)
}

/// A route as Calico's status holds it; `None` for routes of protocols Calico does not name
/// (a `Local_Workload_` session).
fn api_route(r: &BirdRoute, family: Family) -> Option<Route> {
    let source = |t: &str| LearnedFrom {
        source_type: Some(t.into()),
        peer_ip: None,
    };
    let learned = if r.from.starts_with("kernel") {
        source("Kernel")
    } else if r.from.starts_with("static") {
        source("Static")
    } else if r.from.starts_with("direct") {
        source("Direct")
    } else {
        let (kind, ip) = session_peer(&r.from, family)?;
        LearnedFrom {
            source_type: Some(
                if kind == PeerKind::Mesh {
                    "NodeMesh"
                } else {
                    "BGPPeer"
                }
                .into(),
            ),
            peer_ip: Some(ip),
        }
    };
    Some(Route {
        type_: Some(if r.primary { "FIB" } else { "RIB" }.into()),
        destination: non_empty(&r.dest),
        gateway: non_empty(&r.gateway),
        interface: non_empty(&r.iface),
        learned_from: Some(learned),
    })
}

fn routes(o: &Observed, family: Family) -> Vec<Route> {
    match o {
        Observed::Up { routes, .. } => routes.iter().filter_map(|r| api_route(r, family)).collect(),
        _ => vec![],
    }
}

/// What the agent saw of one daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// This node runs no such daemon (no socket configured).
    Absent,
    /// Its socket did not answer, or the answer could not be read.
    Unreachable(String),
    Up {
        daemon: Daemon,
        sessions: Vec<Session>,
        /// `show route`, read only when an object asks for Routes.
        routes: Vec<BirdRoute>,
    },
}

/// BGP states Calico's status may hold; BIRD's others (`Passive`, `Down`) are left out, as
/// calico-node does.
fn api_bgp_state(s: &str) -> Option<String> {
    matches!(
        s,
        "Idle" | "Connect" | "Active" | "OpenSent" | "OpenConfirm" | "Established" | "Close"
    )
    .then(|| s.to_string())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn daemon_status(o: &Observed) -> DaemonStatus {
    match o {
        Observed::Absent => DaemonStatus::default(),
        Observed::Unreachable(_) => DaemonStatus {
            state: Some("NotReady".into()),
            ..Default::default()
        },
        Observed::Up { daemon, .. } => DaemonStatus {
            state: Some("Ready".into()),
            version: non_empty(&daemon.version),
            router_id: non_empty(&daemon.router_id),
            last_boot_time: non_empty(&daemon.last_boot),
            last_reconfiguration_time: non_empty(&daemon.last_reconfiguration),
        },
    }
}

/// (peers, established, not established) of one family.
fn peers(o: &Observed) -> (Vec<PeerStatus>, i64, i64) {
    let Observed::Up { sessions, .. } = o else {
        return (vec![], 0, 0);
    };
    let up = sessions.iter().filter(|s| s.established()).count() as i64;
    let peers = sessions
        .iter()
        .map(|s| PeerStatus {
            peer_ip: non_empty(&s.peer_ip),
            type_: Some(s.kind.api_type().into()),
            state: api_bgp_state(&s.bgp_state),
            since: non_empty(&s.since),
        })
        .collect();
    (peers, up, sessions.len() as i64 - up)
}

/// The status an object asks for (`spec.classes`), from what the agent saw. Sections of classes
/// not asked for are Calico's empty values.
pub fn build_status(
    spec: &CalicoNodeStatusSpec,
    v4: &Observed,
    v6: &Observed,
    now: jiff::Timestamp,
) -> CalicoNodeStatusStatus {
    let agent = if spec.wants("Agent") {
        AgentStatus {
            bird_v4: daemon_status(v4),
            bird_v6: daemon_status(v6),
        }
    } else {
        AgentStatus::default()
    };
    let bgp = if spec.wants("BGP") {
        let (peers_v4, up4, down4) = peers(v4);
        let (peers_v6, up6, down6) = peers(v6);
        BgpStatus {
            number_established_v4: up4,
            number_not_established_v4: down4,
            number_established_v6: up6,
            number_not_established_v6: down6,
            peers_v4,
            peers_v6,
        }
    } else {
        BgpStatus::default()
    };
    let routes = if spec.wants("Routes") {
        RouteStatus {
            routes_v4: routes(v4, Family::V4),
            routes_v6: routes(v6, Family::V6),
        }
    } else {
        RouteStatus::default()
    };
    CalicoNodeStatusStatus {
        last_updated: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
        agent: Some(agent),
        bgp: Some(bgp),
        routes: Some(routes),
    }
}

/// Whether an object is due for a write now. `written`: when this agent last wrote it, and for
/// which generation. Period 0 (Calico: "disable refresh") writes once per generation; otherwise
/// every period, also when nothing changed: the write is the heartbeat [`staleness`] relies on.
/// `None` period: calico-node ignores such objects, and so does the agent.
pub fn due(
    period_seconds: Option<i64>,
    generation: Option<i64>,
    written: Option<(jiff::Timestamp, Option<i64>)>,
    now: jiff::Timestamp,
) -> bool {
    let Some(period) = period_seconds else {
        return false;
    };
    let Some((at, gen_written)) = written else {
        return true;
    };
    if gen_written != generation {
        return true;
    }
    if period <= 0 {
        return false;
    }
    // Half a second early rather than a whole tick late.
    now.duration_since(at).as_secs_f64() + 0.5 >= period as f64
}

/// How a reader should take a written status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// No agent has written it yet.
    NeverUpdated,
    /// Written within three update periods.
    Fresh,
    /// Refresh is off (`updatePeriodSeconds: 0`): the status is from one moment, however old.
    Snapshot,
    /// Not written for more than three update periods: its agent is gone or stuck, and the
    /// sessions it shows may be long gone too.
    Stale { age: Duration },
}

/// Judges a status by its `lastUpdated` against `updatePeriodSeconds`.
pub fn staleness(
    period_seconds: Option<i64>,
    last_updated: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Freshness {
    let Some(at) = last_updated else {
        return Freshness::NeverUpdated;
    };
    let period = period_seconds.unwrap_or(0);
    if period <= 0 {
        return Freshness::Snapshot;
    }
    let age = now.duration_since(at);
    let age = Duration::from_secs_f64(age.as_secs_f64().max(0.0));
    if age > Duration::from_secs(3 * period as u64) {
        Freshness::Stale { age }
    } else {
        Freshness::Fresh
    }
}

/// One row of `tortie node status`'s table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub peer: String,
    pub kind: String,
    pub state: String,
    pub since: String,
    pub info: String,
}

/// Rows from a live daemon, as `calicoctl node status` prints them, plus the route counts the
/// status object has no field for.
pub fn rows_of_sessions(sessions: &[Session]) -> Vec<Row> {
    sessions
        .iter()
        .map(|s| {
            let mut info = s.bgp_state.clone();
            if !s.info.is_empty() {
                info = format!("{info} {}", s.info);
            }
            if let (Some(i), Some(e)) = (s.imported, s.exported) {
                info = format!("{info} ({i} imported, {e} exported)");
            }
            Row {
                peer: s.peer_ip.clone(),
                kind: s.kind.display().into(),
                state: s.state.clone(),
                since: s.since.clone(),
                info: info.trim().to_string(),
            }
        })
        .collect()
}

/// Rows from a status object's peers. The object keeps BGP states only, so STATE is BIRD's
/// word for it (`up` when Established, else `start`).
pub fn rows_of_peers(peers: &[PeerStatus]) -> Vec<Row> {
    peers
        .iter()
        .map(|p| {
            let state = p.state.clone().unwrap_or_default();
            Row {
                peer: p.peer_ip.clone().unwrap_or_default(),
                kind: p
                    .type_
                    .as_deref()
                    .and_then(PeerKind::from_api)
                    .map(|k| k.display().to_string())
                    .or_else(|| p.type_.clone())
                    .unwrap_or_default(),
                state: if state == "Established" { "up" } else { "start" }.into(),
                since: p.since.clone().unwrap_or_default(),
                info: if state.is_empty() { "-".into() } else { state },
            }
        })
        .collect()
}

/// The table `calicoctl node status` prints (its go-pretty default style).
pub fn render_table(rows: &[Row]) -> String {
    let mut t = crate::table::TextTable::new(&["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]);
    for r in rows {
        t.row([&r.peer, &r.kind, &r.state, &r.since, &r.info]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = include_str!("../../tests/fixtures/bird/node1-status.txt");
    const PROTOCOLS: &str = include_str!("../../tests/fixtures/bird/node1-protocols.txt");
    const PROTOCOLS_ALL: &str = include_str!("../../tests/fixtures/bird/node1-protocols-all.txt");
    const V6_ALL: &str = include_str!("../../tests/fixtures/bird/v6-protocols-all.txt");
    const V6_STATUS: &str = include_str!("../../tests/fixtures/bird/v6-status.txt");
    const ROUTES: &str = include_str!("../../tests/fixtures/bird/node1-route.txt");
    const V6_ROUTES: &str = include_str!("../../tests/fixtures/bird/v6-route.txt");
    const LOOPBACK_ROUTES: &str = include_str!("../../tests/fixtures/bird/loopback-route.txt");

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn show_status_of_a_real_bird() {
        let d = parse_status(STATUS).unwrap();
        assert_eq!(d.version, "1.6.8");
        assert_eq!(d.router_id, "10.255.0.1");
        assert_eq!(d.last_boot, "2026-12-06 21:38:25");
        assert_eq!(d.last_reconfiguration, "2026-12-06 21:38:25");
        assert_eq!(d.server_time, "2026-12-06 21:38:40");
        // Without the greeting, as the socket client hands it over.
        assert_eq!(parse_status(V6_STATUS).unwrap().router_id, "10.254.0.1");
    }

    #[test]
    fn show_protocols_keeps_calicos_sessions_only() {
        let s = parse_protocols(PROTOCOLS, Family::V4).unwrap();
        let got: Vec<(&str, PeerKind, &str, &str, &str, &str)> = s
            .iter()
            .map(|s| {
                (
                    s.peer_ip.as_str(),
                    s.kind,
                    s.state.as_str(),
                    s.since.as_str(),
                    s.bgp_state.as_str(),
                    s.info.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                // The port is not part of the address.
                (
                    "10.255.0.8",
                    PeerKind::Global,
                    "start",
                    "21:38:25",
                    "Connect",
                    "Socket: No route to host"
                ),
                (
                    "10.255.0.9",
                    PeerKind::Global,
                    "start",
                    "21:38:25",
                    "Connect",
                    "Socket: No route to host"
                ),
                ("10.255.0.2", PeerKind::Mesh, "up", "21:38:27", "Established", ""),
                ("10.255.0.3", PeerKind::Mesh, "start", "21:38:25", "Passive", ""),
                (
                    "192.168.1.10",
                    PeerKind::Node,
                    "start",
                    "21:38:25",
                    "Active",
                    "Socket: Network is unreachable"
                ),
            ]
        );
        assert!(s.iter().all(|s| s.imported.is_none()));
    }

    #[test]
    fn show_protocols_all_adds_neighbor_and_route_counts() {
        let s = parse_protocols(PROTOCOLS_ALL, Family::V4).unwrap();
        assert_eq!(s.len(), 5, "{s:#?}");
        let mesh = s.iter().find(|s| s.name == "Mesh_10_255_0_2").unwrap();
        assert_eq!((mesh.imported, mesh.exported), (Some(1), Some(2)));
        assert_eq!(mesh.bgp_state, "Established");
        assert_eq!(mesh.peer_ip, "10.255.0.2");
        let node = s.iter().find(|s| s.name == "Node_192_168_1_10").unwrap();
        // `BGP state:` is newer than the summary line read moments before.
        assert_eq!(node.bgp_state, "Idle");
        assert_eq!((node.imported, node.exported), (Some(0), Some(0)));
        // Details of the kernel and static protocols do not leak into a session.
        assert!(s.iter().all(|s| s.exported != Some(1)));
    }

    #[test]
    fn ipv6_names_and_ports() {
        let s = parse_protocols(V6_ALL, Family::V6).unwrap();
        let got: Vec<(&str, PeerKind, &str)> = s
            .iter()
            .map(|s| (s.peer_ip.as_str(), s.kind, s.bgp_state.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("fd00:255::2", PeerKind::Mesh, "Established"),
                ("fd00:255::8", PeerKind::Node, "Connect"),
            ]
        );
        // From the name alone (plain `show protocols`), as calicoctl reads it.
        assert_eq!(
            session_peer("Node_fd00_255__8_port_1790", Family::V6),
            Some((PeerKind::Node, "fd00:255::8".into()))
        );
        assert_eq!(
            session_peer("Global_10_192_0_1_port_166", Family::V4),
            Some((PeerKind::Global, "10.192.0.1".into()))
        );
        assert_eq!(session_peer("Local_Workload_10_0_0_5", Family::V4), None);
        assert_eq!(session_peer("Mesh_", Family::V4), None);
        assert_eq!(session_peer("kernel1", Family::V4), None);
    }

    #[test]
    fn bird_errors_and_broken_answers_are_errors() {
        assert_eq!(
            parse_protocols(
                "0001 BIRD 1.6.8 ready.\n9002 nosuch is not a protocol\n",
                Family::V4
            ),
            Err(ParseError::Bird {
                code: 9002,
                message: "nosuch is not a protocol".into()
            })
        );
        assert!(matches!(
            parse_protocols("2002-name proto table state\n0000 \n", Family::V4),
            Err(ParseError::Heading(_))
        ));
        // Cut off before the final line.
        let cut: String = PROTOCOLS.lines().take(5).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse_protocols(&cut, Family::V4), Err(ParseError::Truncated));
        assert!(matches!(
            parse_status("garbage\n0013 Daemon is up and running\n"),
            Err(ParseError::Line(_))
        ));
        assert!(is_final_line("0000 \n") && is_final_line("0013 Daemon is up and running"));
        assert!(!is_final_line("1002-x") && !is_final_line(" 0000 "));
    }

    fn spec(classes: &[&str]) -> CalicoNodeStatusSpec {
        CalicoNodeStatusSpec {
            node: Some("node-1".into()),
            classes: Some(classes.iter().map(|c| c.to_string()).collect()),
            update_period_seconds: Some(10),
        }
    }

    fn up() -> Observed {
        Observed::Up {
            daemon: parse_status(STATUS).unwrap(),
            sessions: parse_protocols(PROTOCOLS_ALL, Family::V4).unwrap(),
            routes: parse_routes(ROUTES).unwrap(),
        }
    }

    #[test]
    fn status_follows_calicos_shape() {
        let now = ts("2026-12-06T21:40:00Z");
        let st = build_status(&spec(&["Agent", "BGP"]), &up(), &Observed::Absent, now);
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["lastUpdated"], "2026-12-06T21:40:00Z");
        assert_eq!(
            json["agent"]["birdV4"],
            serde_json::json!({"state": "Ready", "version": "1.6.8", "routerID": "10.255.0.1", "lastBootTime": "2026-12-06 21:38:25", "lastReconfigurationTime": "2026-12-06 21:38:25"})
        );
        assert_eq!(json["agent"]["birdV6"], serde_json::json!({}));
        let bgp = &json["bgp"];
        assert_eq!(bgp["numberEstablishedV4"], 1);
        assert_eq!(bgp["numberNotEstablishedV4"], 4);
        assert_eq!(bgp["numberEstablishedV6"], 0);
        assert_eq!(bgp["numberNotEstablishedV6"], 0);
        assert!(bgp.get("peersV6").is_none());
        assert_eq!(
            bgp["peersV4"][2],
            serde_json::json!({"peerIP": "10.255.0.2", "type": "NodeMesh", "state": "Established", "since": "21:38:27"})
        );
        // BIRD's Passive is not one of Calico's states: left out, as calico-node does.
        assert_eq!(
            bgp["peersV4"][3],
            serde_json::json!({"peerIP": "10.255.0.3", "type": "NodeMesh", "since": "21:38:25"})
        );
        assert_eq!(bgp["peersV4"][4]["type"], "NodePeer");
        assert_eq!(bgp["peersV4"][0]["type"], "GlobalPeer");
        // Routes not asked for.
        assert_eq!(json["routes"], serde_json::json!({}));
    }

    #[test]
    fn show_route_of_a_real_bird() {
        let r = parse_routes(ROUTES).unwrap();
        let got: Vec<(&str, &str, &str, &str, bool)> = r
            .iter()
            .map(|r| {
                (
                    r.dest.as_str(),
                    r.gateway.as_str(),
                    r.iface.as_str(),
                    r.from.as_str(),
                    r.primary,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.96.0.0/12", "N/A", "blackhole", "static1", true),
                // A second route to the same destination: the line has no destination.
                ("10.96.0.0/12", "10.255.0.2", "eth0", "Mesh_10_255_0_2", false),
                ("10.48.0.0/26", "N/A", "blackhole", "static1", true),
                ("10.255.0.0/24", "N/A", "eth0", "direct1", true),
            ]
        );
        let r = parse_routes(LOOPBACK_ROUTES).unwrap();
        assert_eq!(
            (
                r[0].dest.as_str(),
                r[0].iface.as_str(),
                r[0].from.as_str(),
                r[0].primary
            ),
            ("10.2.0.0/24", "unreachable", "Mesh_127_0_0_2", true)
        );
        assert_eq!(parse_routes(V6_ROUTES).unwrap()[0].dest, "fd00:255::/64");
        // A continuation before any destination, or a route kind never seen: errors, not guesses.
        assert!(parse_routes("1007-   via 10.0.0.1 on eth0 [x 1] *\n0000 \n").is_err());
        assert!(parse_routes("1007-10.0.0.0/8 multipath [x 1] *\n0000 \n").is_err());
    }

    #[test]
    fn routes_follow_calicos_shape() {
        let v6 = Observed::Up {
            daemon: Daemon::default(),
            sessions: vec![],
            routes: parse_routes(V6_ROUTES).unwrap(),
        };
        let st = build_status(&spec(&["Routes"]), &up(), &v6, t0());
        let json = serde_json::to_value(st.routes.unwrap()).unwrap();
        assert_eq!(
            json["routesV4"][1],
            serde_json::json!({"type": "RIB", "destination": "10.96.0.0/12", "gateway": "10.255.0.2", "interface": "eth0", "learnedFrom": {"sourceType": "NodeMesh", "peerIP": "10.255.0.2"}})
        );
        assert_eq!(
            json["routesV4"][0],
            serde_json::json!({"type": "FIB", "destination": "10.96.0.0/12", "gateway": "N/A", "interface": "blackhole", "learnedFrom": {"sourceType": "Static"}})
        );
        assert_eq!(json["routesV4"][3]["learnedFrom"]["sourceType"], "Direct");
        assert_eq!(json["routesV6"][0]["destination"], "fd00:255::/64");
        // A route from a session Calico does not name is left out.
        let odd = BirdRoute {
            dest: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
            iface: "eth0".into(),
            from: "Local_Workload_10_0_0_1".into(),
            primary: true,
        };
        assert_eq!(api_route(&odd, Family::V4), None);
        let peer = BirdRoute {
            from: "Global_10_0_0_9_port_179".into(),
            ..odd
        };
        let learned = api_route(&peer, Family::V4).unwrap().learned_from.unwrap();
        assert_eq!(learned.source_type.as_deref(), Some("BGPPeer"));
        assert_eq!(learned.peer_ip.as_deref(), Some("10.0.0.9"));
    }

    #[test]
    fn classes_not_asked_for_stay_empty_and_a_dead_daemon_is_not_ready() {
        let now = ts("2026-12-06T21:40:00Z");
        let st = build_status(
            &spec(&["BGP"]),
            &up(),
            &Observed::Unreachable("connection refused".into()),
            now,
        );
        assert_eq!(st.agent, Some(AgentStatus::default()));
        let bgp = st.bgp.unwrap();
        assert_eq!(bgp.peers_v4.len(), 5);
        // The IPv6 daemon's failure does not wipe the IPv4 sessions.
        assert_eq!((bgp.number_established_v6, bgp.peers_v6.len()), (0, 0));
        let st = build_status(
            &spec(&["Agent"]),
            &Observed::Unreachable("x".into()),
            &Observed::Absent,
            now,
        );
        assert_eq!(st.agent.unwrap().bird_v4.state.as_deref(), Some("NotReady"));
        assert_eq!(st.bgp, Some(BgpStatus::default()));
        let json = serde_json::to_value(BgpStatus::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"numberEstablishedV4": 0, "numberNotEstablishedV4": 0, "numberEstablishedV6": 0, "numberNotEstablishedV6": 0}),
            "Calico's required counts are always written"
        );
    }

    #[test]
    fn when_an_object_is_due() {
        let t0 = ts("2026-12-06T21:40:00Z");
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        // Never written: now. No period: never (calico-node ignores such objects).
        assert!(due(Some(10), Some(1), None, t0));
        assert!(!due(None, Some(1), None, t0));
        // Every period, also without changes (the heartbeat).
        assert!(!due(Some(10), Some(1), Some((t0, Some(1))), at(5)));
        assert!(due(Some(10), Some(1), Some((t0, Some(1))), at(10)));
        // A new generation (spec changed): at once.
        assert!(due(Some(10), Some(2), Some((t0, Some(1))), at(1)));
        // Period 0: once per generation.
        assert!(!due(Some(0), Some(1), Some((t0, Some(1))), at(100_000)));
        assert!(due(Some(0), Some(2), Some((t0, Some(1))), at(1)));
    }

    #[test]
    fn a_status_not_refreshed_for_three_periods_is_stale() {
        let t0 = ts("2026-12-06T21:40:00Z");
        let at = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
        assert_eq!(staleness(Some(10), None, t0), Freshness::NeverUpdated);
        assert_eq!(staleness(Some(10), Some(t0), at(30)), Freshness::Fresh);
        assert_eq!(
            staleness(Some(10), Some(t0), at(31)),
            Freshness::Stale {
                age: Duration::from_secs(31)
            }
        );
        assert_eq!(staleness(Some(0), Some(t0), at(1_000_000)), Freshness::Snapshot);
        // A writer's clock ahead of the reader's is not "stale".
        assert_eq!(staleness(Some(10), Some(at(5)), t0), Freshness::Fresh);
    }

    #[test]
    fn table_looks_like_calicoctls() {
        let rows = rows_of_sessions(&parse_protocols(PROTOCOLS_ALL, Family::V4).unwrap());
        let t = render_table(&rows[2..3]);
        assert_eq!(
            t,
            "+--------------+-------------------+-------+----------+--------------------------------------+\n\
             | PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |                 INFO                 |\n\
             +--------------+-------------------+-------+----------+--------------------------------------+\n\
             | 10.255.0.2   | node-to-node mesh | up    | 21:38:27 | Established (1 imported, 2 exported) |\n\
             +--------------+-------------------+-------+----------+--------------------------------------+\n"
        );
        let st = build_status(&spec(&["BGP"]), &up(), &Observed::Absent, t0());
        let rows = rows_of_peers(&st.bgp.unwrap().peers_v4);
        assert_eq!(rows[2].state, "up");
        assert_eq!(rows[2].info, "Established");
        assert_eq!(rows[3].state, "start");
        assert_eq!(rows[3].info, "-");
        assert_eq!(rows[4].kind, "node specific");
    }

    proptest::proptest! {
        /// Whatever comes out of the socket (a BIRD fork, a truncated answer, another program),
        /// the parsers answer with sessions or an error, never a panic.
        #[test]
        fn parsers_never_panic(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "[0-9]{4}[- ][ -~]{0,40}",
                    " [ -~]{0,60}",
                    "(1002-|1006-|1007-| )(Mesh|Node|Global|Local_Workload)_[0-9a-f_]{0,20}(_port_[0-9]{0,6})? [ -~]{0,40}",
                    "[ -~\u{80}-\u{10ffff}]{0,30}",
                ],
                0..12,
            ),
            v6 in proptest::bool::ANY,
        ) {
            let reply = lines.join("\n");
            let family = if v6 { Family::V6 } else { Family::V4 };
            let _ = parse_protocols(&reply, family);
            let _ = parse_status(&reply);
            let _ = parse_routes(&reply);
            for l in &lines {
                let _ = session_peer(l, family);
            }
        }

        /// A real answer cut anywhere is an error (never a shorter list taken as the whole).
        #[test]
        fn a_cut_answer_is_an_error(cut in 0usize..PROTOCOLS_ALL.len() - "0000 \n".len()) {
            // ASCII, so any cut is a char boundary.
            let part = &PROTOCOLS_ALL[..cut];
            proptest::prop_assert!(parse_protocols(part, Family::V4).is_err());
        }
    }

    fn t0() -> jiff::Timestamp {
        ts("2026-12-06T21:40:00Z")
    }
}
