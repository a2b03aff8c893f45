//! BGP session status end to end: two real BIRD 1.6 daemons peer over loopback (high ports, the
//! host's network namespace, no kernel routes touched); the agent reads their control socket the
//! way calico-node does, fills a CalicoNodeStatus on the real apiserver in both CRD modes, and
//! `tortie node status` prints it, as STALE once the agent is gone. Needs the Debian `bird`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tortie::node::report::observe_one;
use tortie::node::status::{Family, Observed, PeerKind};

const TIMEOUT: Duration = Duration::from_secs(40);

/// Two BIRDs, 127.0.0.1 and 127.0.0.2, in one iBGP session named as Calico names a mesh peering;
/// each announces one static blackhole route. Stopped on drop.
struct Pair {
    dir: tempfile::TempDir,
    daemons: Vec<Option<Child>>,
}

impl Pair {
    fn start() -> Pair {
        let dir = tempfile::Builder::new().prefix("tns").tempdir_in("/tmp").unwrap();
        let ports = [free_port(), free_port()];
        let mut daemons = vec![];
        for i in 0..2 {
            let (me, peer) = (i + 1, 2 - i);
            let cfg = format!(
                "router id 127.0.0.{me};\nlisten bgp address 127.0.0.{me} port {};\nprotocol device {{ scan time 10; }}\nprotocol static {{ route 10.{me}.0.0/24 blackhole; }}\nprotocol bgp Mesh_127_0_0_{peer} {{\n  local 127.0.0.{me} as 64512;\n  neighbor 127.0.0.{peer} port {} as 64512;\n  multihop;\n  source address 127.0.0.{me};\n  import all;\n  export all;\n  connect retry time 1;\n}}\n",
                ports[i],
                ports[1 - i]
            );
            let path = dir.path().join(format!("bird{me}.cfg"));
            std::fs::write(&path, cfg).unwrap();
            let child = Command::new("bird")
                .arg("-f")
                .arg("-c")
                .arg(&path)
                .arg("-s")
                .arg(dir.path().join(format!("bird{me}.ctl")))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("bird runs (apt-get install -y bird)");
            daemons.push(Some(child));
        }
        let p = Pair { dir, daemons };
        for s in [p.socket(1), p.socket(2)] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !s.exists() {
                assert!(Instant::now() < deadline, "bird did not open {}", s.display());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        p
    }

    fn socket(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("bird{n}.ctl"))
    }

    fn stop(&mut self, n: usize) {
        if let Some(mut c) = self.daemons[n - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until daemon 1 sees its session in `up` (or not) state.
    fn wait_session(&self, up: bool) -> Observed {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let o = observe_one(Some(&self.socket(1)), Family::V4, false);
            if let Observed::Up { sessions, .. } = &o
                && sessions.len() == 1
                && sessions[0].established() == up
            {
                return o;
            }
            assert!(Instant::now() < deadline, "session never {up}: {o:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop(1);
        self.stop(2);
    }
}

#[test]
fn a_real_bird_is_read_as_calicoctl_reads_it() {
    let mut pair = Pair::start();
    let o = pair.wait_session(true);
    let Observed::Up { daemon, sessions, .. } = o else {
        unreachable!()
    };
    assert_eq!(daemon.router_id, "127.0.0.1");
    assert!(daemon.version.starts_with("1.6"), "{daemon:?}");
    let s = &sessions[0];
    assert_eq!(
        (s.kind, s.peer_ip.as_str(), s.bgp_state.as_str()),
        (PeerKind::Mesh, "127.0.0.2", "Established")
    );
    // Each side announces its one static route.
    let deadline = Instant::now() + TIMEOUT;
    let mut s = s.clone();
    while s.imported != Some(1) || s.exported != Some(1) {
        assert!(Instant::now() < deadline, "routes never exchanged: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
        if let Observed::Up { sessions, .. } = observe_one(Some(&pair.socket(1)), Family::V4, false) {
            s = sessions[0].clone();
        }
    }

    let missing6 = pair.dir.path().join("bird6.ctl");
    let local = |pair: &Pair| {
        let out = Command::new(env!("CARGO_BIN_EXE_tortie"))
            .args(["node", "status", "--local", "--bird-socket"])
            .arg(pair.socket(1))
            .arg("--bird6-socket")
            .arg(&missing6)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };
    let (ok, out) = local(&pair);
    assert!(ok, "{out}");
    assert!(out.contains("IPv4 BGP status"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("| 127.0.0.2 ")
            && l.contains("| node-to-node mesh |")
            && l.contains("| up ")
            && l.contains("Established (1 imported, 1 exported)")),
        "{out}"
    );
    assert!(out.contains("INFO: BIRDv6 socket"), "{out}");

    // The peer goes away: the session leaves `up`, and the table says so.
    pair.stop(2);
    pair.wait_session(false);
    let (ok, out) = local(&pair);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("| 127.0.0.2 ") && l.contains("| start ")),
        "{out}"
    );
    // BIRD itself gone: an error, not an empty table.
    pair.stop(1);
    let (ok, out) = local(&pair);
    assert!(!ok, "{out}");
    assert!(out.contains("Error querying BIRD"), "{out}");
}

fn status_of(mode: &str, name: &str) -> Value {
    let kind = if mode == "v1" {
        "caliconodestatuses.crd.projectcalico.org"
    } else {
        "caliconodestatuses.projectcalico.org"
    };
    let out = kubectl_ok(&["get", kind, name, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["status"].clone()
}

fn wait_status(mode: &str, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let s = status_of(mode, name);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "[{mode}] {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn manifest(mode: &str, name: &str, node: &str, classes: &str, period: u32) -> String {
    let api = if mode == "v1" {
        "crd.projectcalico.org/v1"
    } else {
        "projectcalico.org/v3"
    };
    format!(
        "apiVersion: {api}\nkind: CalicoNodeStatus\nmetadata:\n  name: {name}\nspec:\n  node: {node}\n  classes: {classes}\n  updatePeriodSeconds: {period}\n"
    )
}

/// `tortie agent` writing status only (BGP config install without reload, no IPAM server).
fn agent(mode: &str, node: &str, socket: &Path, config_dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args([
            "agent",
            "--no-reload",
            "--ipam-socket",
            "none",
            "--status-interval",
            "1s",
        ])
        .args(["--node", node, "--crd-mode", mode, "--namespace", "tortie-system"])
        .arg("--config-dir")
        .arg(config_dir)
        .arg("--bird-socket")
        .arg(socket)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env("TORTIE_LOG", "info,kube=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn the_agent_fills_calico_node_status_and_node_status_marks_it_stale_when_the_agent_is_gone() {
    install_crds("crds/v3");
    let pair = Pair::start();
    pair.wait_session(true);
    for mode in ["v1", "v3"] {
        let node = unique_name("ns-node");
        let other = unique_name("ns-other");
        kubectl_stdin_ok(
            &["apply", "-f", "-"],
            &format!(
                "{}---\n{}",
                // 2 s: stale after 6 s, which a loaded machine's agent does not miss.
                manifest(mode, &node, &node, "[Agent, BGP, Routes]", 2),
                manifest(mode, &other, &other, "[BGP]", 2)
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut a = agent(mode, &node, &pair.socket(1), dir.path());
        let st = wait_status(mode, &node, "the agent reports the session", |s| {
            s["bgp"]["numberEstablishedV4"] == 1
        });
        assert_eq!(
            st["bgp"]["peersV4"],
            serde_json::json!([{"peerIP": "127.0.0.2", "type": "NodeMesh", "state": "Established", "since": st["bgp"]["peersV4"][0]["since"]}]),
            "[{mode}] {st:#}"
        );
        assert_eq!(st["bgp"]["numberNotEstablishedV4"], 0);
        assert_eq!(st["bgp"]["numberEstablishedV6"], 0);
        assert_eq!(st["agent"]["birdV4"]["state"], "Ready", "[{mode}] {st:#}");
        assert_eq!(st["agent"]["birdV4"]["routerID"], "127.0.0.1");
        // No bird6 on this node: nothing claimed about it.
        assert_eq!(st["agent"]["birdV6"], serde_json::json!({}));
        // Routes: its own static route, and the peer's, learned over the mesh session.
        let st = wait_status(mode, &node, "the peer's route is reported", |s| {
            s["routes"]["routesV4"].as_array().is_some_and(|r| r.len() == 2)
        });
        let routes = st["routes"]["routesV4"].as_array().unwrap();
        let by_dest = |d: &str| routes.iter().find(|r| r["destination"] == d).cloned();
        assert_eq!(
            by_dest("10.2.0.0/24"),
            Some(
                serde_json::json!({"type": "FIB", "destination": "10.2.0.0/24", "gateway": "N/A", "interface": "unreachable", "learnedFrom": {"sourceType": "NodeMesh", "peerIP": "127.0.0.2"}})
            ),
            "[{mode}] {st:#}"
        );
        assert_eq!(
            by_dest("10.1.0.0/24").unwrap()["learnedFrom"]["sourceType"],
            "Static",
            "[{mode}] {st:#}"
        );
        // The heartbeat: lastUpdated moves every period even though nothing changed.
        let first = st["lastUpdated"].as_str().unwrap().to_string();
        wait_status(mode, &node, "lastUpdated refreshed", |s| {
            s["lastUpdated"].as_str().is_some_and(|t| t != first)
        });
        // Another node's object is not this agent's business.
        assert_eq!(status_of(mode, &other), Value::Null, "[{mode}]");

        let out = tortie(&["node", "status", "--node", &node, "--crd-mode", mode]);
        let t = output_text(&out);
        assert!(out.status.success(), "[{mode}] {t}");
        assert!(t.contains("BIRDv4: Ready"), "[{mode}] {t}");
        assert!(
            t.lines().any(|l| l.starts_with("| 127.0.0.2 ")
                && l.contains("| node-to-node mesh |")
                && l.contains("| up ")
                && l.contains("| Established (1 routes learned) |")),
            "[{mode}] {t}"
        );
        assert!(!t.contains("STALE"), "[{mode}] {t}");

        // The agent dies: after three periods the status is stale and never shown as up.
        let _ = a.kill();
        let _ = a.wait();
        std::thread::sleep(Duration::from_secs(7));
        let out = tortie(&["node", "status", "--node", &node, "--crd-mode", mode]);
        let t = output_text(&out);
        assert!(!out.status.success(), "[{mode}] {t}");
        assert!(t.contains("STALE: not updated for"), "[{mode}] {t}");
        assert!(!t.contains("| up "), "[{mode}] {t}");
        assert!(t.contains("STALE, last seen Established"), "[{mode}] {t}");

        // The other object has no report at all: said so, not printed as an empty table.
        let out = tortie(&["node", "status", "--node", &other, "--crd-mode", mode]);
        let t = output_text(&out);
        assert!(!out.status.success(), "[{mode}] {t}");
        assert!(t.contains("No status yet"), "[{mode}] {t}");
        kubectl_stdin_ok(
            &["delete", "-f", "-"],
            &format!(
                "{}---\n{}",
                manifest(mode, &node, &node, "[BGP]", 1),
                manifest(mode, &other, &other, "[BGP]", 1)
            ),
        );
    }
}
