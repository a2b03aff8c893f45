//! `tortie ipam split`: Calico's pool split ([`crate::ipam::split`] decides the children); the
//! pool objects are written here, no IPAM object is touched.

use std::process::ExitCode;

use clap::{ArgGroup, Args};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{CliError, Conn, print};
use crate::api::{CalicoKind, Pool};
use crate::controllers::ippool::FINALIZER;
use crate::controllers::pools::{MANAGED_BY, MANAGER};
use crate::ipam::split;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("pool").required(true).args(["cidr", "name"])))]
pub struct SplitArgs {
    /// How many pools to split into: a power of 2 (2, 4, 8, ...), each at least one block wide.
    #[arg(value_name = "NUMBER")]
    pub number: u32,
    /// The pool to split, by its CIDR.
    #[arg(long)]
    pub cidr: Option<String>,
    /// The pool to split, by name.
    #[arg(long)]
    pub name: Option<String>,
}

fn write_err(what: String) -> impl FnOnce(kube::Error) -> CliError {
    move |source| CliError::Write { what, source }
}

impl SplitArgs {
    async fn find(&self, c: &Conn) -> Result<Pool, CliError> {
        let api = c.ipam.store().pools_api();
        let read = |source| CliError::Read {
            what: "IPPools".into(),
            source,
        };
        if let Some(name) = &self.name {
            return api
                .get_opt(name)
                .await
                .map_err(read)?
                .ok_or_else(|| CliError::Refused(format!("IPPool {name} does not exist")));
        }
        let want = self.cidr.clone().unwrap_or_default();
        let want_net = want.parse::<ipnet::IpNet>().ok().map(|n| n.trunc());
        let pools = api.list(&Default::default()).await.map_err(read)?;
        pools
            .items
            .into_iter()
            .find(|p| p.spec.cidr == want || (want_net.is_some() && p.spec.net() == want_net))
            .ok_or_else(|| CliError::Refused(format!("no IPPool has spec.cidr {want}")))
    }

    pub(super) async fn run(self, c: &Conn) -> Result<ExitCode, CliError> {
        let parent = self.find(c).await?;
        let name = parent.name_any();
        if parent.metadata.deletion_timestamp.is_some() {
            return Err(CliError::Refused(format!("IPPool {name} is being deleted")));
        }
        if parent.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER) {
            return Err(CliError::Refused(format!(
                "IPPool {name} comes from the Installation (label {MANAGED_BY}={MANAGER}): the operator would create it again; list the split CIDRs in Installation default's spec.calicoNetwork.ipPools instead"
            )));
        }
        let children = split::children(&parent, self.number)?;
        let api = c.ipam.store().pools_api();
        let ar = c.mode.resource(CalicoKind::IPPool);
        let pp = PostParams {
            dry_run: false,
            field_manager: Some("tortie-cli".into()),
        };
        // 1. The children, with the parent's labels and annotations.
        for (child, spec) in &children {
            let mut p = Pool::new(child, &ar, spec.clone());
            p.metadata.labels = parent.metadata.labels.clone();
            p.metadata.annotations = parent.metadata.annotations.clone();
            match api.create(&pp, &p).await {
                Ok(_) => {}
                // A re-run after an interruption: the same child is already there.
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    let have = api
                        .get(child)
                        .await
                        .map_err(write_err(format!("reading IPPool {child}")))?;
                    if have.spec.cidr != spec.cidr {
                        return Err(CliError::Refused(format!(
                            "IPPool {child} exists with spec.cidr {}, not {}",
                            have.spec.cidr, spec.cidr
                        )));
                    }
                }
                Err(e) => return Err(write_err(format!("creating IPPool {child}"))(e)),
            }
        }
        // 2. The parent hands out nothing more, 3. goes.
        let disable = json!({"spec": {"disabled": true}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&disable))
            .await
            .map_err(write_err(format!("disabling IPPool {name}")))?;
        api.delete(&name, &DeleteParams::default())
            .await
            .map_err(write_err(format!("deleting IPPool {name}")))?;
        // The drain finalizer would hold the parent until every address inside it is released,
        // which its children now own: take it off (Calico's split deletes the pool unchecked).
        for _ in 0..10 {
            let Some(p) = api
                .get_opt(&name)
                .await
                .map_err(write_err(format!("reading IPPool {name}")))?
            else {
                break;
            };
            let rest: Vec<&String> = p.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            if rest.len() == p.finalizers().len() {
                break;
            }
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": p.resource_version()}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(e) => return Err(write_err(format!("removing the finalizer of IPPool {name}"))(e)),
            }
        }
        let mut s = format!(
            "IP Pool {name} was successfully split into {} smaller pools.\n",
            children.len()
        );
        for (child, spec) in &children {
            s.push_str(&format!("Created {child} with CIDR {}.\n", spec.cidr));
        }
        print(&s);
        Ok(ExitCode::SUCCESS)
    }
}
