//! BIRD supervision on the node: install a configuration safely (`bird -p` check, atomic swap,
//! private files), ask the daemons to reload it, and talk to their control sockets.
//!
//! One install ([`apply`]): compare with what is installed (nothing to do when equal), stage the
//! files and have BIRD parse them (`bird -p`), swap each file in with a rename, then ask the running
//! daemons to re-read them (`configure` on the control socket, as `birdc configure` does). A config
//! BIRD rejects never replaces a good one. Only the daemons whose files changed are checked and
//! reloaded: an IPv4-only change leaves bird6 alone, and the other way round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    #[error("reloading {program} (control socket {socket}): {message}")]
    Reload {
        program: String,
        socket: String,
        message: String,
    },
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("published config has an unexpected file name {0:?}")]
    BadName(String),
    #[error("BIRD control socket {socket}: {source}")]
    Socket { socket: String, source: std::io::Error },
    #[error("BIRD control socket {socket}: {message}")]
    Protocol { socket: String, message: String },
}

impl BirdError {
    /// The new files are in place but a daemon was not reloaded onto them (BIRD not running,
    /// its socket gone): the next attempt must reload even though the files look current.
    pub fn installed_not_reloaded(&self) -> bool {
        matches!(self, BirdError::Reload { .. })
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
/// `durable`: on disk before this returns (fsync).
fn write_private(path: &Path, body: &[u8], owner: (u32, u32), durable: bool) -> Result<(), BirdError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io(path))?;
    // The umask may have taken bits away from FILE_MODE (never added any): put them back.
    let meta = f.metadata().map_err(io(path))?;
    if meta.permissions().mode() & 0o777 != FILE_MODE {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(io(path))?;
    }
    if (meta.uid(), meta.gid()) != owner {
        std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1)).map_err(io(path))?;
    }
    f.write_all(body).map_err(io(path))?;
    if durable {
        f.sync_all().map_err(io(path))?;
    }
    Ok(())
}

/// The installed file has `body` and is private (a file written by an older agent, 0644, is not).
fn installed_as(path: &Path, body: &[u8]) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == FILE_MODE)
        && std::fs::read(path).is_ok_and(|cur| cur == body)
}

/// Where one [`apply`] spent its time, for the agent's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Comparing with the installed files and writing the staged ones.
    pub write: Duration,
    /// `bird -p` (and `bird6 -p`) on the staged files.
    pub check: Duration,
    /// Renaming the staged files over the live ones.
    pub swap: Duration,
    /// `configure` on the control sockets, until BIRD answered.
    pub reload: Duration,
}

/// The files of one daemon: `bird.cfg` and its includes, or `bird6.cfg` and its includes.
fn is_v6_file(name: &str) -> bool {
    name.starts_with("bird6")
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
    apply_timed(dir, files, reload, reload_pending).0
}

/// [`apply`], and where its time went.
pub fn apply_timed(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    reload: &Reload,
    reload_pending: bool,
) -> (Result<Applied, BirdError>, Timings) {
    let mut t = Timings::default();
    let r = install(dir, files, reload, reload_pending, &mut t);
    (r, t)
}

fn install(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    reload: &Reload,
    reload_pending: bool,
    t: &mut Timings,
) -> Result<Applied, BirdError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let started = Instant::now();
    for name in files.keys() {
        if !is_bird_file(name) {
            return Err(BirdError::BadName(name.clone()));
        }
    }
    private_dir(dir)?;
    // The files that differ from the installed ones, and so which daemon's set changed. Installed
    // files were all checked by BIRD before they went in, so an unchanged set needs neither a
    // check nor a reload, and an unchanged file of a changed set is not replaced.
    let changed: Vec<&String> = files
        .iter()
        .filter(|(n, body)| !installed_as(&dir.join(n), body))
        .map(|(n, _)| n)
        .collect();
    let v6 = changed.iter().any(|n| is_v6_file(n));
    let v4 = changed.iter().any(|n| !is_v6_file(n));
    if changed.is_empty() {
        t.write = started.elapsed();
        if !reload_pending {
            return Ok(Applied::Unchanged);
        }
        let r = Instant::now();
        reload_daemons(reload, true, true)?;
        t.reload = r.elapsed();
        return Ok(Applied::Reloaded);
    }
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    let owner = (meta.uid(), meta.gid());
    // Stage next to the live files (same filesystem, so the renames below are atomic): the whole
    // set of each changed daemon, as BIRD resolves includes next to the main file.
    let stage = dir.join(format!(".tortie-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(&stage)
        .map_err(io(&stage))?;
    let staged = (|| {
        // A daemon's first set is made durable: BIRD's container starts on the main file's
        // presence, so after a machine crash it must not find a main file whose includes were
        // lost. Later sets replace files BIRD already runs, and only need to reach it (through
        // the page cache); a set torn by a crash differs from the published one and the agent
        // installs it again when it starts. An fsync per file cost tens of milliseconds per
        // change on a busy disk, most of a reload.
        let first_v4 = !dir.join("bird.cfg").exists();
        let first_v6 = !dir.join("bird6.cfg").exists();
        for (n, body) in files {
            let (changed, first) = if is_v6_file(n) {
                (v6, first_v6)
            } else {
                (v4, first_v4)
            };
            if changed {
                write_private(&stage.join(n), body, owner, first)?;
            }
        }
        t.write = started.elapsed();
        let c = Instant::now();
        for (is_v6, set_changed) in [(false, v4), (true, v6)] {
            if set_changed && files.contains_key(if is_v6 { "bird6.cfg" } else { "bird.cfg" }) {
                bird_check(&stage, is_v6)?;
            }
        }
        t.check = c.elapsed();
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    let s = Instant::now();
    // Included files first, main files last: a daemon reading mid-way sees old mains.
    let mut order = changed;
    order.sort_by_key(|n| (n.as_str() == "bird.cfg" || n.as_str() == "bird6.cfg", n.as_str()));
    for n in order {
        let from = stage.join(n);
        let to = dir.join(n);
        if let Err(e) = replace(&from, &to) {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(io(&to)(e));
        }
    }
    t.swap = s.elapsed();
    let r = Instant::now();
    // A daemon whose reload failed earlier is reloaded whatever changed now.
    let reloaded = reload_daemons(reload, v4 || reload_pending, v6 || reload_pending);
    t.reload = r.elapsed();
    // The staged copies of unchanged files go once BIRD runs the new config.
    let _ = std::fs::remove_dir_all(&stage);
    reloaded?;
    Ok(Applied::Reloaded)
}

/// Puts `from` in place of `to` atomically. An existing `to` is exchanged with `from`
/// (`renameat2(RENAME_EXCHANGE)`; the old file is left at `from`): ext4 writes out a file renamed
/// over another one before the rename returns (`auto_da_alloc`), which on a busy disk was the
/// slowest step of a reload, and it does not for an exchange. A new `to`, or a filesystem without
/// exchange, gets a plain rename.
fn replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            std::fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reloads the daemons asked for (`v4`: bird, `v6`: bird6) that have a control socket.
fn reload_daemons(reload: &Reload, v4: bool, v6: bool) -> Result<(), BirdError> {
    if let Some(s) = reload.bird_socket.as_ref().filter(|_| v4) {
        configure("bird", s)?;
    }
    if let Some(s) = reload.bird6_socket.as_ref().filter(|_| v6) {
        configure("bird6", s)?;
    }
    Ok(())
}

/// Asks the daemon on `socket` to re-read its configuration file: `configure` on its control
/// socket, as `birdc -s SOCKET configure` sends it, without spawning birdc. BIRD answers
/// `0003 Reconfigured`, `0004 Reconfiguration in progress` or `0005 Reconfiguration already in
/// progress, queueing new config`; anything else (a `8002` configuration error, a daemon shutting
/// down, no daemon) is a failed reload naming `program` (`bird`, `bird6`) and the socket.
pub fn configure(program: &str, socket: &Path) -> Result<(), BirdError> {
    let failed = |message: String| BirdError::Reload {
        program: program.into(),
        socket: socket.display().to_string(),
        message,
    };
    let replies = query(socket, &["configure"]).map_err(|e| failed(e.to_string()))?;
    let reply = replies.first().map(String::as_str).unwrap_or_default();
    if reload_accepted(reply) {
        Ok(())
    } else {
        Err(failed(reply.trim().to_string()))
    }
}

/// Whether BIRD's answer to `configure` (raw, up to its final line) says it runs the new config.
pub fn reload_accepted(reply: &str) -> bool {
    reply
        .lines()
        .rfind(|l| crate::node::status::is_final_line(l))
        .is_some_and(|l| matches!(&l[..4], "0003" | "0004" | "0005"))
}

/// How long one answer from BIRD may take (calicoctl waits 2 s per line; BIRD 1.6 answers
/// `show protocols all` for hundreds of sessions well within this).
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends each command to BIRD's control socket and returns each raw reply (BIRD's numbered lines,
/// up to and including the final `NNNN ` line), as `birdc` would see them before formatting.
/// Blocking: call from a blocking task.
pub fn query(socket: &Path, commands: &[&str]) -> Result<Vec<String>, BirdError> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let name = socket.display().to_string();
    let sock_err = |source| BirdError::Socket {
        socket: name.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(sock_err)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(sock_err)?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT)).map_err(sock_err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(sock_err)?);
    let mut writer = stream;
    let read_reply = |reader: &mut BufReader<UnixStream>| -> Result<String, BirdError> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(sock_err)? == 0 {
                return Err(BirdError::Protocol {
                    socket: name.clone(),
                    message: "BIRD closed the socket mid-answer".into(),
                });
            }
            reply.push_str(&line);
            if crate::node::status::is_final_line(&line) {
                return Ok(reply);
            }
            if reply.len() > MAX_REPLY_BYTES {
                return Err(BirdError::Protocol {
                    socket: name.clone(),
                    message: format!("answer longer than {MAX_REPLY_BYTES} bytes"),
                });
            }
        }
    };
    let greeting = read_reply(&mut reader)?;
    if !greeting.starts_with("0001 ") {
        return Err(BirdError::Protocol {
            socket: name.clone(),
            message: format!("unexpected greeting {:?}", greeting.trim()),
        });
    }
    let mut out = Vec::with_capacity(commands.len());
    for c in commands {
        writer.write_all(format!("{c}\n").as_bytes()).map_err(sock_err)?;
        out.push(read_reply(&mut reader)?);
    }
    Ok(out)
}

/// A bound on one answer, so a confused peer on the socket cannot make the agent grow forever.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

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
        with_fake_birds("exit 0", "exit 0", f)
    }

    /// Fake `bird` and `bird6` on PATH running the given shell bodies.
    fn with_fake_birds<T>(bird: &str, bird6: &str, f: impl FnOnce() -> T) -> T {
        use std::os::unix::fs::PermissionsExt;
        static PATH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let bin = tempfile::tempdir().unwrap();
        for (b, body) in [("bird", bird), ("bird6", bird6)] {
            let p = bin.path().join(b);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
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

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(n, b)| (n.to_string(), b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn only_the_daemon_whose_files_changed_is_checked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bird");
        let first = set(&[
            ("bird.cfg", "# v4 1\n"),
            ("bird_ipam.cfg", "# ipam 1\n"),
            ("bird6.cfg", "# v6 1\n"),
            ("bird6_ipam.cfg", "# ipam6 1\n"),
        ]);
        let r = with_fake_bird(|| apply(&dir, &first, &Reload::default(), false));
        assert_eq!(r.unwrap(), Applied::Reloaded);
        // An IPv4 change with a bird6 that refuses everything: bird6 is not asked.
        let mut v4 = first.clone();
        v4.insert("bird_ipam.cfg".into(), b"# ipam 2\n".to_vec());
        let r = with_fake_birds("exit 0", "echo no >&2; exit 1", || {
            apply(&dir, &v4, &Reload::default(), false)
        });
        assert_eq!(r.unwrap(), Applied::Reloaded);
        assert_eq!(std::fs::read(dir.join("bird_ipam.cfg")).unwrap(), b"# ipam 2\n");
        // An IPv6 change is checked by bird6 (and bird, refusing everything now, is not asked);
        // refused, it leaves the installed files alone.
        let mut v6 = v4.clone();
        v6.insert("bird6.cfg".into(), b"# v6 2\n".to_vec());
        let r = with_fake_birds("exit 1", "echo bad6 >&2; exit 1", || {
            apply(&dir, &v6, &Reload::default(), false)
        });
        match r {
            Err(BirdError::Rejected { program, message, .. }) => {
                assert_eq!(program, "bird6");
                assert_eq!(message, "bad6");
            }
            other => panic!("expected bird6's rejection, got {other:?}"),
        }
        assert_eq!(std::fs::read(dir.join("bird6.cfg")).unwrap(), b"# v6 1\n");
        let r = with_fake_birds("exit 1", "exit 0", || apply(&dir, &v6, &Reload::default(), false));
        assert_eq!(r.unwrap(), Applied::Reloaded);
        assert_eq!(std::fs::read(dir.join("bird6.cfg")).unwrap(), b"# v6 2\n");
    }

    #[test]
    fn a_reload_is_accepted_only_on_birds_success_codes() {
        assert!(reload_accepted(
            "0002-Reading configuration from /etc/bird/bird.cfg\n0003 Reconfigured\n"
        ));
        assert!(reload_accepted("0004 Reconfiguration in progress\n"));
        assert!(reload_accepted(
            "0005 Reconfiguration already in progress, queueing new config\n"
        ));
        assert!(!reload_accepted(
            "0002-Reading configuration from /etc/bird/bird.cfg\n8002 /etc/bird/bird.cfg, line 3: syntax error\n"
        ));
        assert!(!reload_accepted("0006 Reconfiguration ignored, shutting down\n"));
        assert!(!reload_accepted("9001 Parse error\n"));
        assert!(!reload_accepted(""));
        // A continuation line is not the answer.
        assert!(!reload_accepted("0003-Reconfigured\n"));
    }

    /// A BIRD-speaking peer on a unix socket: greets, answers `configure` with `reply`.
    fn fake_daemon(reply: &'static str) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, BufReader, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"0001 BIRD 1.6.8 ready.\n").unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            s.write_all(reply.as_bytes()).unwrap();
            line
        });
        (dir, path, h)
    }

    #[test]
    fn configure_speaks_birds_control_protocol() {
        let (_d, sock, h) = fake_daemon("0002-Reading configuration from /x/bird.cfg\n0003 Reconfigured\n");
        configure("bird", &sock).unwrap();
        assert_eq!(h.join().unwrap(), "configure\n");
        let (_d, sock, h) = fake_daemon("8002 /x/bird.cfg, line 1: syntax error\n");
        let e = configure("bird6", &sock).unwrap_err();
        h.join().unwrap();
        assert!(e.installed_not_reloaded(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("bird6") && text.contains("syntax error") && text.contains("bird.ctl"),
            "{text}"
        );
        // No daemon: a failed reload naming the socket, to be retried.
        let e = configure("bird", &_d.path().join("none.ctl")).unwrap_err();
        assert!(
            e.installed_not_reloaded() && e.to_string().contains("none.ctl"),
            "{e}"
        );
    }
}
