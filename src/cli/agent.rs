//! `tortie agent`: keeps a node's BIRD configuration in step with what the operator published.
//!
//! One pass ([`apply`]): compare with what is installed (nothing to do when equal), stage the files
//! and have BIRD parse them (`bird -p`), swap each file in with a rename, then ask the running
//! daemons to re-read them (`birdc configure`). A config BIRD rejects never replaces a good one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Installs `files` into `dir` (BIRD's config directory) and reloads BIRD, unless unchanged.
pub fn apply(dir: &Path, files: &BTreeMap<String, Vec<u8>>, reload: &Reload) -> Result<Applied, BirdError> {
    for name in files.keys() {
        if !is_bird_file(name) {
            return Err(BirdError::BadName(name.clone()));
        }
    }
    let unchanged = files
        .iter()
        .all(|(n, body)| std::fs::read(dir.join(n)).is_ok_and(|cur| &cur == body));
    if unchanged {
        return Ok(Applied::Unchanged);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Stage next to the live files (same filesystem, so the renames below are atomic).
    let stage = dir.join(format!(".tortie-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(io(&stage))?;
    let staged = (|| {
        for (n, body) in files {
            let p = stage.join(n);
            std::fs::write(&p, body).map_err(io(&p))?;
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
    if let Some(s) = &reload.bird_socket {
        birdc_configure("birdc", s)?;
    }
    if let Some(s) = &reload.bird6_socket {
        birdc_configure("birdc6", s)?;
    }
    Ok(Applied::Reloaded)
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
            apply(dir.path(), &files, &Reload::default()),
            Err(BirdError::BadName(_))
        ));
    }
}
