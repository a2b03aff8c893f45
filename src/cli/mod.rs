//! The `tortie` command line: one clap subcommand per job.

pub mod agent;
pub mod crd;
pub mod ipam;
pub mod render;
pub mod run;

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
    /// Per-node agent: install the node's published BIRD config and reload BIRD; serve the node's
    /// IPAM requests warm over a unix socket.
    Agent(agent::AgentArgs),
    /// Render one node's BIRD configuration from a folder of manifests (no cluster needed).
    Render(render::RenderArgs),
    /// IPAM tools (calicoctl ipam): show, check, release.
    Ipam(ipam::IpamArgs),
    /// Run the operator (Installation, IPPool, IPAM GC and BGP controllers, leader-elected).
    Run(run::RunArgs),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Crd(args) => args.run(),
            Command::Render(args) => args.run(),
            Command::Agent(args) => args.run().await,
            Command::Run(args) => args.run().await,
            Command::Ipam(args) => args.run().await,
        }
    }
}
