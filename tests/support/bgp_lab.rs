//! BGP: what the controller published for a node ([`published_files`]), and a lab in network
//! namespaces: one hub namespace with a bridge, one namespace per node, a
//! real BIRD 1.6 daemon in each. Everything lives in namespaces the lab creates (unique prefix)
//! and is torn down by `Drop`, also when a test fails. Needs root and `ip netns`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kube::Client;

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails loudly when the machine cannot run the lab (these tests must not silently pass).
pub fn require_netns() {
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "these tests need root and `ip netns` (iproute2)");
    for b in ["bird", "birdc"] {
        assert!(
            Command::new(b).arg("--version").output().is_ok()
                || Command::new("which")
                    .arg(b)
                    .output()
                    .is_ok_and(|o| o.status.success()),
            "{b} missing: apt-get install -y bird"
        );
    }
}

fn squash(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running BIRD in a namespace.
pub struct Daemon {
    pub ns: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("birdc runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `show protocols` lines of BGP sessions: (name, Established?).
    pub fn bgp_sessions(&self) -> Vec<(String, bool)> {
        self.birdc(&["show", "protocols"])
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
            .map(|l| {
                let name = l.split_whitespace().next().unwrap().to_string();
                (name, l.contains("Established"))
            })
            .collect()
    }

    /// `show route`, with runs of blanks collapsed so tests can match `A via B`.
    pub fn routes(&self) -> String {
        squash(&self.birdc(&["show", "route"]))
    }

    pub fn kernel_routes(&self) -> String {
        squash(&run(&["ip", "-n", &self.ns, "route", "show", "proto", "bird"]))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("birdc")
                .arg("-s")
                .arg(&self.socket)
                .arg("down")
                .output();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The namespaces of one lab; dropping it stops the daemons and deletes every namespace.
pub struct Lab {
    pub prefix: String,
    pub hub: String,
    pub work: tempfile::TempDir,
    namespaces: Vec<String>,
    links: u32,
    pub daemons: BTreeMap<String, Daemon>,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        require_netns();
        // Short, unique per process and lab: ns names and socket paths stay small.
        let prefix = format!(
            "tb{}{}{}",
            tag,
            std::process::id() % 100000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let hub = format!("{prefix}-hub");
        let mut lab = Lab {
            prefix,
            hub: hub.clone(),
            work: tempfile::Builder::new()
                .prefix("tbgp")
                .tempdir_in("/tmp")
                .unwrap(),
            namespaces: Vec::new(),
            links: 0,
            daemons: BTreeMap::new(),
        };
        run(&["ip", "netns", "add", &hub]);
        lab.namespaces.push(hub.clone());
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        lab
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{}", self.prefix, node)
    }

    /// A namespace for `node` linked to the hub bridge, with `addrs` (CIDRs) on its eth0.
    pub fn add_host(&mut self, node: &str, addrs: &[&str]) {
        let ns = self.ns(node);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.links += 1;
        let peer = format!("v{}", self.links);
        run(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer, "netns",
            &self.hub,
        ]);
        run(&["ip", "-n", &self.hub, "link", "set", &peer, "master", "br0"]);
        run(&["ip", "-n", &self.hub, "link", "set", &peer, "up"]);
        for a in addrs {
            let dev = if a.ends_with("/32") { "lo" } else { "eth0" };
            run(&["ip", "-n", &ns, "addr", "add", a, "dev", dev]);
        }
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    }

    pub fn ip(&self, node: &str, args: &[&str]) {
        let ns = self.ns(node);
        let mut cmd = vec!["ip", "-n", &ns];
        cmd.extend_from_slice(args);
        run(&cmd);
    }

    /// The node's BIRD config directory (created on demand).
    pub fn config_dir(&self, node: &str) -> PathBuf {
        let d = self.work.path().join(node);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// (file, inode, modification time) of every file in the node's config directory. The agent
    /// replaces a file by renaming a new one over it, and reloads BIRD only after doing so, so an
    /// unchanged identity means no reload. (BIRD's own "Last reconfiguration" is no use for this:
    /// BIRD 1.6 converts its monotonic clock to wall time at whole seconds when it prints, so the
    /// printed time of one reconfiguration moves by a second between calls.)
    pub fn config_identity(&self, node: &str) -> Vec<(String, u64, std::time::SystemTime)> {
        use std::os::unix::fs::MetadataExt;
        let mut out: Vec<_> = std::fs::read_dir(self.config_dir(node))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let m = e.metadata().ok()?;
                m.is_file().then(|| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        m.ino(),
                        m.modified().unwrap(),
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        self.work.path().join(format!("{node}.ctl"))
    }

    /// Starts BIRD for `node` on `<config_dir>/bird.cfg`.
    pub fn start_bird(&mut self, node: &str) {
        let dir = self.config_dir(node);
        let socket = self.socket(node);
        let log = std::fs::File::create(self.work.path().join(format!("{node}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "bird", "-f", "-c"])
            .arg(dir.join("bird.cfg"))
            .arg("-s")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("bird starts");
        let d = Daemon {
            ns: self.ns(node),
            dir,
            socket: socket.clone(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "bird for {node} did not open its socket: {}",
                std::fs::read_to_string(self.work.path().join(format!("{node}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemons.insert(node.to_string(), d);
    }

    pub fn daemon(&self, node: &str) -> &Daemon {
        &self.daemons[node]
    }

    /// Polls `f` until it returns Some, or panics with `what` and the lab's state after `timeout`.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Lab) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() > deadline {
                let mut state = String::new();
                for (n, d) in &self.daemons {
                    state.push_str(&format!(
                        "--- {n}\n{}\n{}\nkernel:\n{}\n",
                        d.birdc(&["show", "protocols"]),
                        d.routes(),
                        d.kernel_routes()
                    ));
                }
                panic!("timed out waiting for {what}\n{state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every BGP session of every daemon is Established; returns how many.
    pub fn wait_all_established(&self, timeout: Duration) -> usize {
        let t0 = Instant::now();
        let n = self.wait_for("all BGP sessions Established", timeout, |lab| {
            let mut n = 0;
            for d in lab.daemons.values() {
                let s = d.bgp_sessions();
                if s.is_empty() || s.iter().any(|(_, up)| !up) {
                    return None;
                }
                n += s.len();
            }
            Some(n)
        });
        // A figure for reports, not an assertion.
        eprintln!(
            "{}: {n} BGP sessions Established after {:?}",
            self.prefix,
            t0.elapsed()
        );
        n
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = self.daemons.keys().cloned().collect();
        for n in names {
            if let Some(mut d) = self.daemons.remove(&n) {
                d.stop();
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Writes rendered files into a directory (what an agent does, minus checks).
pub fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    for (n, b) in files {
        std::fs::write(dir.join(n), b).unwrap();
    }
}

/// The BIRD files `node`'s agent would install from what the BGP controller published in `ns`
/// (its own ConfigMap or Secret plus the shards, assembled and rendered as the agent does), with
/// their content hash; `None` while something is missing.
pub async fn published_files(
    client: &Client,
    ns: &str,
    node: &str,
) -> Option<(std::collections::BTreeMap<String, String>, String)> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{Api, ListParams};
    use tortie::node::published::{self, Published};
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = published::object_name(node);
    let own = match secrets.get_opt(&name).await.ok()? {
        Some(s) => Published::Secret(s),
        None => Published::ConfigMap(cms.get_opt(&name).await.ok()??),
    };
    let shards = cms
        .list(&ListParams::default().labels(&format!("{}=true", published::LABEL_SHARD)))
        .await
        .ok()?
        .items;
    let r = published::render_published(&own, &shards, &tortie::bgp::CalicoSelectors::default()).ok()??;
    let hash = r.content_hash();
    let files = r
        .files
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    Some((files, hash))
}

/// A snapshot of the objects `docs` (JSON manifests, as `kubectl get -o json` gives them).
pub fn snapshot_of(docs: &[serde_json::Value]) -> tortie::bgp::Snapshot {
    let text = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut snap = tortie::bgp::Snapshot::default();
    snap.add_manifests("gen", &text).unwrap();
    snap
}

/// The BGP controller publishing into `ns` on watch caches of its own, with a short debounce, as
/// the BGP tests run it (abort the handle to stop it).
pub fn spawn_bgp_controller(
    client: &Client,
    mode: tortie::api::CrdMode,
    ns: &str,
) -> tokio::task::JoinHandle<Result<(), tortie::controllers::bgp::Error>> {
    use tortie::controllers::bgp as ctrl;
    tokio::spawn(ctrl::run(
        client.clone(),
        mode,
        ns.to_string(),
        tortie::controllers::Stores::start(client, mode, None),
        ctrl::Config {
            debounce: Duration::from_millis(100),
            ..Default::default()
        },
    ))
}
