//! `tortie crd`: the CRDs generated from the Rust types.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::api::{CrdMode, crd};

#[derive(Args, Debug)]
pub struct CrdArgs {
    /// Which Calico CRD mode: v1 (crd.projectcalico.org/v1) or v3 (projectcalico.org/v3).
    #[arg(long, value_enum, default_value_t = CrdMode::V1)]
    pub mode: CrdMode,
    /// Write one file per CRD (`<group>_<plural>.yaml`) into this directory instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl CrdArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let crds = crd::crds(self.mode);
        match self.out {
            None => super::out(&crd::to_yaml(&crds)?)?,
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                for c in &crds {
                    let path = dir.join(crd::file_name(c));
                    std::fs::write(&path, crd::to_yaml(std::slice::from_ref(c))?)?;
                }
                eprintln!(
                    "wrote {} CRDs ({} mode) to {}",
                    crds.len(),
                    self.mode,
                    dir.display()
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
