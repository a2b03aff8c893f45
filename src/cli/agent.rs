//! `tortie agent`: keeps a node's BIRD configuration in step with what the operator published,
//! and serves the node's IPAM requests warm over a unix socket (`--ipam-socket`, see
//! [`crate::cni::server`]); either part can be turned off (`--no-bgp`, `--ipam-socket none`).
//!
//! One pass ([`apply`]): compare with what is installed (nothing to do when equal), stage the files
//! and have BIRD parse them (`bird -p`), swap each file in with a rename, then ask the running
//! daemons to re-read them (`birdc configure`). A config BIRD rejects never replaces a good one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tracing::{Instrument, info, info_span, warn};

use crate::controllers::bgp::{ANN_HASH, ANN_NODE, Published, files_of, object_name};

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
        tokio::select! {
            r = ipam => r?,
            r = bgp => r?,
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

/// Why BIRD refused a configuration, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("running {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} rejected {file}: {message}")]
    Rejected {
        program: String,
        file: String,
        message: String,
    },
    #[error("{program} -s {socket} configure failed: {message}")]
    Reload {
        program: String,
        socket: String,
        message: String,
    },
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("published config has an unexpected file name {0:?}")]
    BadName(String),
}

impl BirdError {
    /// The new files are in place but a daemon was not reloaded onto them (BIRD not running,
    /// its socket gone): the next attempt must reload even though the files look current.
    pub fn installed_not_reloaded(&self) -> bool {
        match self {
            BirdError::Reload { .. } => true,
            BirdError::Spawn { program, .. } => program.starts_with("birdc"),
            _ => false,
        }
    }
}

/// `bird -p -c <dir>/bird.cfg` (or `bird6` for the IPv6 set): parse only, no daemon needed.
/// Includes are resolved relative to the main file, so the whole set is checked.
pub fn bird_check(dir: &Path, v6: bool) -> Result<(), BirdError> {
    let (program, file) = if v6 {
        ("bird6", "bird6.cfg")
    } else {
        ("bird", "bird.cfg")
    };
    let path = dir.join(file);
    let out = Command::new(program)
        .arg("-p")
        .arg("-c")
        .arg(&path)
        .output()
        .map_err(|source| BirdError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if message.is_empty() {
        message = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(BirdError::Rejected {
        program: program.into(),
        file: path.display().to_string(),
        message,
    })
}

/// Control sockets of the running daemons; `None` skips that reload (e.g. no bird6 running).
#[derive(Clone, Debug, Default)]
pub struct Reload {
    pub bird_socket: Option<PathBuf>,
    pub bird6_socket: Option<PathBuf>,
}

/// What one [`apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The installed files already had this content: nothing written, no reload.
    Unchanged,
    /// Files replaced and the daemons reloaded.
    Reloaded,
}

/// The only names the agent writes: a published object cannot make it write elsewhere.
pub fn is_bird_file(name: &str) -> bool {
    matches!(
        name,
        "bird.cfg" | "bird_ipam.cfg" | "bird_aggr.cfg" | "bird6.cfg" | "bird6_ipam.cfg" | "bird6_aggr.cfg"
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BirdError + '_ {
    move |source| BirdError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Mode of every file the agent writes: any of them may hold a BGP password.
pub const FILE_MODE: u32 = 0o600;
/// Mode of BIRD's configuration directory (and of the staging directory inside it).
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` owner-only, or takes group and other access away from an existing one.
fn private_dir(dir: &Path) -> Result<(), BirdError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io(dir))?;
    let mode = std::fs::metadata(dir).map_err(io(dir))?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700 | DIR_MODE))
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Writes a new file that is [`FILE_MODE`] before its first byte, owned by `owner` (uid, gid):
/// the config directory's owner, so a BIRD running as that user (not root) can still read it.
fn write_private(path: &Path, body: &[u8], owner: (u32, u32)) -> Result<(), BirdError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io(path))?;
    // The umask may have taken bits away from FILE_MODE; never add any to it.
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io(path))?;
    let meta = f.metadata().map_err(io(path))?;
    if (meta.uid(), meta.gid()) != owner {
        std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1)).map_err(io(path))?;
    }
    f.write_all(body).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The installed file has `body` and is private (a file written by an older agent, 0644, is not).
fn installed_as(path: &Path, body: &[u8]) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == FILE_MODE)
        && std::fs::read(path).is_ok_and(|cur| cur == body)
}

/// Installs `files` into `dir` (BIRD's config directory) and reloads BIRD, unless unchanged.
/// `reload_pending`: an earlier call installed files but could not reload BIRD onto them
/// ([`BirdError::installed_not_reloaded`]), so identical files still need the reload.
///
/// Every file is [`FILE_MODE`] from its creation in an owner-only staging directory, and `dir`
/// is made [`DIR_MODE`]: a BGP password is never readable by another user, not even briefly.
pub fn apply(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    reload: &Reload,
    reload_pending: bool,
) -> Result<Applied, BirdError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    for name in files.keys() {
        if !is_bird_file(name) {
            return Err(BirdError::BadName(name.clone()));
        }
    }
    private_dir(dir)?;
    let unchanged = files.iter().all(|(n, body)| installed_as(&dir.join(n), body));
    if unchanged {
        if !reload_pending {
            return Ok(Applied::Unchanged);
        }
        reload_daemons(reload)?;
        return Ok(Applied::Reloaded);
    }
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    let owner = (meta.uid(), meta.gid());
    // Stage next to the live files (same filesystem, so the renames below are atomic).
    let stage = dir.join(format!(".tortie-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(&stage)
        .map_err(io(&stage))?;
    let staged = (|| {
        for (n, body) in files {
            write_private(&stage.join(n), body, owner)?;
        }
        for v6 in [false, true] {
            if files.contains_key(if v6 { "bird6.cfg" } else { "bird.cfg" }) {
                bird_check(&stage, v6)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    // Included files first, main files last: a daemon reading mid-way sees old mains.
    let mut order: Vec<&String> = files.keys().collect();
    order.sort_by_key(|n| (n.as_str() == "bird.cfg" || n.as_str() == "bird6.cfg", n.as_str()));
    for n in order {
        let from = stage.join(n);
        let to = dir.join(n);
        std::fs::rename(&from, &to).map_err(io(&to))?;
    }
    let _ = std::fs::remove_dir_all(&stage);
    reload_daemons(reload)?;
    Ok(Applied::Reloaded)
}

fn reload_daemons(reload: &Reload) -> Result<(), BirdError> {
    if let Some(s) = &reload.bird_socket {
        birdc_configure("birdc", s)?;
    }
    if let Some(s) = &reload.bird6_socket {
        birdc_configure("birdc6", s)?;
    }
    Ok(())
}

/// `birdc -s SOCKET configure`; BIRD answers `Reconfigured` (or `Reconfiguration in progress`).
pub fn birdc_configure(program: &str, socket: &Path) -> Result<(), BirdError> {
    let out = Command::new(program)
        .arg("-s")
        .arg(socket)
        .arg("configure")
        .output()
        .map_err(|source| BirdError::Spawn {
            program: program.into(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success()
        && (text.contains("Reconfigured")
            || text.contains("Reconfiguration in progress")
            || text.contains("Reconfiguration already in progress"));
    if ok {
        Ok(())
    } else {
        Err(BirdError::Reload {
            program: program.into(),
            socket: socket.display().to_string(),
            message: text.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bird_file_names_are_written() {
        assert!(is_bird_file("bird6_aggr.cfg"));
        assert!(!is_bird_file("../etc/passwd"));
        assert!(!is_bird_file("bird.cfg.bak"));
        let dir = tempfile::tempdir().unwrap();
        let files: BTreeMap<String, Vec<u8>> = [("../x".to_string(), b"x".to_vec())].into_iter().collect();
        assert!(matches!(
            apply(dir.path(), &files, &Reload::default(), false),
            Err(BirdError::BadName(_))
        ));
    }

    /// A fake `bird` on PATH that accepts every config (the modes are what is under test).
    fn with_fake_bird<T>(f: impl FnOnce() -> T) -> T {
        use std::os::unix::fs::PermissionsExt;
        static PATH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let bin = tempfile::tempdir().unwrap();
        for b in ["bird", "bird6"] {
            let p = bin.path().join(b);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin.path().to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        // SAFETY: tests that read PATH in this binary hold PATH_LOCK.
        unsafe { std::env::set_var("PATH", std::env::join_paths(paths).unwrap()) };
        let r = f();
        unsafe { std::env::set_var("PATH", old) };
        r
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_holding_passwords_are_private_from_the_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bird");
        let files: BTreeMap<String, Vec<u8>> = [
            (
                "bird.cfg".to_string(),
                b"protocol bgp x { password \"hunter2\"; }\n".to_vec(),
            ),
            ("bird_ipam.cfg".to_string(), b"# ipam\n".to_vec()),
        ]
        .into_iter()
        .collect();
        // A wide umask must not widen anything.
        let old_umask = unsafe { libc::umask(0) };
        let r = with_fake_bird(|| apply(&dir, &files, &Reload::default(), false));
        unsafe { libc::umask(old_umask) };
        assert_eq!(r.unwrap(), Applied::Reloaded);
        assert_eq!(mode(&dir), DIR_MODE, "config directory");
        for n in files.keys() {
            assert_eq!(mode(&dir.join(n)), FILE_MODE, "{n}");
        }
        assert!(
            std::fs::read_dir(&dir).unwrap().count() == files.len(),
            "the staging directory is gone"
        );

        // Files an older agent left world-readable, in a world-readable directory, are replaced
        // even though their content is current.
        for n in files.keys() {
            std::fs::set_permissions(dir.join(n), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = with_fake_bird(|| apply(&dir, &files, &Reload::default(), false));
        assert_eq!(r.unwrap(), Applied::Reloaded);
        assert_eq!(mode(&dir), DIR_MODE);
        for n in files.keys() {
            assert_eq!(mode(&dir.join(n)), FILE_MODE, "{n}");
            assert_eq!(std::fs::read(dir.join(n)).unwrap(), files[n]);
        }
        // And then nothing to do.
        let r = with_fake_bird(|| apply(&dir, &files, &Reload::default(), false));
        assert_eq!(r.unwrap(), Applied::Unchanged);
    }
}
