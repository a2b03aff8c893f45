//! The `tortie` command line: one clap subcommand per job.

pub mod crd;

use clap::{Parser, Subcommand};

/// Calico-compatible IPAM and BGP control plane for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "tortie", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions of a CRD mode (or write them into a directory).
    Crd(crd::CrdArgs),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Crd(args) => args.run(),
        }
    }
}
