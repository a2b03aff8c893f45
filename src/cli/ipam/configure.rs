//! `tortie ipam configure`: calicoctl's flags onto the IPAM configuration object, written by the
//! engine ([`crate::ipam::config`]).

use std::process::ExitCode;

use clap::{ArgGroup, Args};

use super::{CliError, Conn, print};
use crate::ipam::config::ConfigChange;

/// Go's `strconv.ParseBool`, which calicoctl uses for `--strictaffinity`.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid value {s:?}: use true or false")),
    }
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("setting")
        .required(true)
        .multiple(true)
        .args(["strictaffinity", "max_blocks_per_host", "kubevirt_ip_persistence"])
))]
pub struct ConfigureArgs {
    /// true: a node allocates only from blocks affine to it and never borrows another node's
    /// addresses (when its blocks are full and no block is free, allocation fails); false:
    /// Calico's default.
    #[arg(long, value_name = "true|false", value_parser = parse_go_bool)]
    pub strictaffinity: Option<bool>,
    /// The most blocks one node may hold; 0 means Calico's default, 20.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(i32::MAX)))]
    pub max_blocks_per_host: Option<u32>,
    /// Whether KubeVirt VMs keep their addresses across lifecycle events (stored for Calico's
    /// KubeVirt support; tortie's allocator does not read it).
    #[arg(long, value_parser = ["Enabled", "Disabled"])]
    pub kubevirt_ip_persistence: Option<String>,
}

impl ConfigureArgs {
    pub(super) async fn run(self, c: &Conn) -> Result<ExitCode, CliError> {
        let change = ConfigChange {
            strict_affinity: self.strictaffinity,
            max_blocks_per_host: self.max_blocks_per_host,
            kube_virt_vm_address_persistence: self.kubevirt_ip_persistence.clone(),
        };
        let spec = c.ipam.configure(&change).await?;
        let mut s = String::new();
        if self.strictaffinity.is_some() {
            s.push_str(&format!(
                "Successfully set StrictAffinity to: {}\n",
                spec.strict_affinity
            ));
        }
        if let Some(n) = self.max_blocks_per_host {
            s.push_str(&format!("Successfully set MaxBlocksPerHost to: {n}\n"));
        }
        if let Some(p) = &spec.kube_virt_vm_address_persistence
            && self.kubevirt_ip_persistence.is_some()
        {
            s.push_str(&format!(
                "Successfully set KubeVirtVMAddressPersistence to: {p}\n"
            ));
        }
        print(&s);
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictaffinity_reads_like_calicoctl() {
        for t in ["1", "t", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true));
        }
        for f in ["0", "f", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false));
        }
        assert!(parse_go_bool("yes").unwrap_err().contains("use true or false"));
    }
}
