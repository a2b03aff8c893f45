//! `tortie agent`: keeps a node's BIRD configuration in step with what the operator published.

use std::path::Path;
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
