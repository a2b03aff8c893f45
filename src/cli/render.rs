//! `tortie render`: a node's BIRD files from a folder of manifests, no cluster needed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The node to render for (metadata.name of a Node in the manifests).
    #[arg(long)]
    pub node: String,
    /// Manifest files or folders (`*.yaml`, `*.yml`, `*.json`, read recursively). Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Write the files into this folder instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Router id: an IPv4 address or `hash` (Calico's CALICO_ROUTER_ID); default the node's IPv4.
    #[arg(long, env = "CALICO_ROUTER_ID")]
    pub router_id: Option<String>,
    /// The BIRD in use is Calico's fork: allow `krt_tunnel` (BIRD programs IPIP routes).
    #[arg(long, env = "TORTIE_BIRD_FORK")]
    pub bird_fork: bool,
    /// Also check the result with `bird -p -c` / `bird6 -p -c` (needs --out); with
    /// --template-dir, the templates are first checked on the built-in samples too.
    #[arg(long, requires = "out")]
    pub check: bool,
    /// Render with the custom BIRD templates in this folder (`bird.cfg.j2`, `bird_ipam.cfg.j2`,
    /// `bird_aggr.cfg.j2`, and `bird6*.cfg.j2` for IPv6 only; a missing one is the built-in).
    #[arg(long)]
    pub template_dir: Option<PathBuf>,
}

impl RenderArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut snap = Snapshot::default();
        let mut paths = Vec::new();
        for f in &self.files {
            collect(f, &mut paths)?;
        }
        paths.sort();
        for p in &paths {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            snap.add_manifests(&p.display().to_string(), &text)?;
        }
        let opts = RenderOptions {
            router_id: self.router_id.clone(),
            bird_fork: self.bird_fork,
        };
        // As the controller does: values BIRD would refuse are left out, each reported.
        for e in bgp::validate::sanitize(&mut snap) {
            eprintln!("warning: {e}; left out");
        }
        let templates = match &self.template_dir {
            None => bgp::Templates::builtin(),
            Some(dir) => {
                let t = bgp::Templates::from_dir(dir)?;
                if self.check {
                    crate::node::template::vet(&t)?;
                    eprintln!(
                        "the templates in {} pass bird -p on the built-in samples",
                        dir.display()
                    );
                }
                std::sync::Arc::new(t)
            }
        };
        let out = bgp::render_with(&snap, &self.node, &opts, &CalicoSelectors::default(), &templates)?;
        for w in &out.warnings {
            eprintln!("warning: {w}");
        }
        if let Some(n) = out.mesh_size.filter(|n| *n > bgp::MESH_ADVISORY_NODES) {
            eprintln!(
                "warning: the node-to-node mesh has {n} nodes; above {} nodes use route reflectors",
                bgp::MESH_ADVISORY_NODES
            );
        }
        match &self.out {
            None => {
                for (name, body) in &out.files {
                    super::out(&format!("==> {name} <==\n{}\n", String::from_utf8_lossy(body)))?;
                }
            }
            Some(dir) => {
                if out.has_password {
                    // A BGP password is in there: owner-only, as the agent writes them.
                    write_private(dir, &out.files)?;
                } else {
                    std::fs::create_dir_all(dir)?;
                    for (name, body) in &out.files {
                        std::fs::write(dir.join(name), body)?;
                    }
                }
                eprintln!(
                    "wrote {} files for node {} to {} (hash {})",
                    out.files.len(),
                    self.node,
                    dir.display(),
                    &out.content_hash()[..12]
                );
                if self.check {
                    for v6 in [false, true] {
                        super::agent::bird_check(dir, v6)?;
                    }
                    eprintln!("bird -p and bird6 -p accept them");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Writes `files` into `dir` mode 0600 from their first byte (a file already there is replaced,
/// not rewritten in place, so its old mode cannot stay); a directory created here is 0700.
fn write_private(dir: &Path, files: &std::collections::BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for (name, body) in files {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("replacing {}", path.display()));
            }
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(body)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(p)? {
            let e = e?.path();
            if e.is_dir() {
                collect(&e, out)?;
            } else if e
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
            {
                out.push(e);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn rendered_passwords_are_written_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bgp/password-from-secret/input");
        let out = tmp.path().join("out");
        // An older world-readable file in the way is replaced, not rewritten in place.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("bird.cfg"), "old").unwrap();
        std::fs::set_permissions(out.join("bird.cfg"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = RenderArgs {
            node: "n1".into(),
            files: vec![input],
            out: Some(out.clone()),
            router_id: None,
            bird_fork: false,
            check: false,
            template_dir: None,
        };
        args.run().unwrap();
        let cfg = std::fs::read_to_string(out.join("bird.cfg")).unwrap();
        assert!(cfg.contains("password"), "the case has a password:\n{cfg}");
        for e in std::fs::read_dir(&out).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        // A folder created for them is owner-only too.
        let fresh = tmp.path().join("a/b");
        RenderArgs {
            node: "n1".into(),
            files: vec![
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bgp/password-from-secret/input"),
            ],
            out: Some(fresh.clone()),
            router_id: None,
            bird_fork: false,
            check: false,
            template_dir: None,
        }
        .run()
        .unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
