//! BIRD supervision on the node: install a configuration safely (`bird -p` check, atomic swap,
//! private files), ask the daemons to reload it, and talk to their control sockets.
//!
//! One install ([`apply`]): compare with what is installed (nothing to do when equal), stage the
//! files and have BIRD parse them (`bird -p`), swap each file in with a rename, then ask the running
//! daemons to re-read them (`birdc configure`). A config BIRD rejects never replaces a good one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
    #[error("BIRD control socket {socket}: {source}")]
    Socket { socket: String, source: std::io::Error },
    #[error("BIRD control socket {socket}: {message}")]
    Protocol { socket: String, message: String },
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
