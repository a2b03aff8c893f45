//! `tortie ipam show`: pool and block usage, borrowed addresses, one address, the configuration.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Args;
use ipnet::IpNet;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use serde::Serialize;

use super::super::output::Format;
use super::{CliError, Conn, print, render};
use crate::api::{CrdMode, IPAMConfigSpec};
use crate::ipam::report::{self, IpInfo, IpState, Usage};
use crate::table::TextTable;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Who holds this address: its handle, owner attributes (pod, namespace, node), block and
    /// pool, and whether the pod still exists; or that it is not assigned, or reserved.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["show_blocks", "show_borrowed", "show_configuration"])]
    pub ip: Option<IpAddr>,
    /// Also one row per block, under the pool that owns it (blocks in no pool last, as
    /// "orphaned allocation block").
    #[arg(long)]
    pub show_blocks: bool,
    /// Also the borrowed addresses: allocated by a node from a block affine to another node.
    #[arg(long)]
    pub show_borrowed: bool,
    /// The IPAM configuration in effect (Calico's defaults when no `default` object exists).
    #[arg(long, conflicts_with_all = ["show_blocks", "show_borrowed"])]
    pub show_configuration: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl ShowArgs {
    pub(super) async fn run(self, c: &Conn) -> Result<ExitCode, CliError> {
        let text = if let Some(ip) = self.ip {
            let blocks = c.ipam.list_blocks().await?;
            let reservations = reservations(&c.client, c.mode).await?;
            let info = report::ip_info(&c.ipam.pools(), &blocks, &reservations, ip);
            let pod_exists = match info.pod() {
                Some((ns, pod)) => {
                    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client.clone(), ns);
                    match api.get_metadata_opt(pod).await {
                        Ok(m) => Some(m.is_some()),
                        // Not allowed to look: say nothing about the pod.
                        Err(kube::Error::Api(s)) if s.code == 403 => None,
                        Err(e) => return Err(CliError::Pods(e)),
                    }
                }
                None => None,
            };
            let shown = ShownIp {
                info: &info,
                pod_exists,
            };
            render(&shown, self.output, || render_ip(shown.info, pod_exists))?
        } else if self.show_configuration {
            let found = c
                .ipam
                .store()
                .get_config()
                .await
                .map_err(crate::ipam::IpamError::from)?;
            let shown = ShownConfig::of(found.as_ref().map(|o| &o.spec), c.mode);
            render(&shown, self.output, || render_config(&shown))?
        } else {
            let blocks = c.ipam.list_blocks().await?;
            let mut u = report::usage(&c.ipam.pools(), &blocks, &c.ipam.reserved(), self.show_blocks);
            if !self.show_borrowed {
                u.borrowed.clear();
            }
            render(&u, self.output, || {
                render_usage(&u, self.output == Format::Wide, self.show_borrowed)
            })?
        };
        print(&text);
        Ok(ExitCode::SUCCESS)
    }
}

/// IPReservations as (name, CIDR): read without a typed model so that `show --ip` works whether
/// or not the cluster has the kind (absent: none).
async fn reservations(client: &kube::Client, mode: CrdMode) -> Result<Vec<(String, IpNet)>, CliError> {
    let ar = ApiResource {
        group: mode.group().into(),
        version: mode.version().into(),
        api_version: mode.api_version(),
        kind: "IPReservation".into(),
        plural: "ipreservations".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(vec![]),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            eprintln!(
                "note: not allowed to list IPReservations ({}); reservations are not shown",
                s.message
            );
            return Ok(vec![]);
        }
        Err(e) => {
            return Err(CliError::Read {
                what: "IPReservations".into(),
                source: e,
            });
        }
    };
    let mut out = vec![];
    for o in list.items {
        let name = o.metadata.name.clone().unwrap_or_default();
        let cidrs = o.data["spec"]["reservedCIDRs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in cidrs.iter().filter_map(|v| v.as_str()) {
            let net = c
                .parse::<IpNet>()
                .ok()
                .or_else(|| c.parse::<IpAddr>().ok().map(IpNet::from));
            if let Some(n) = net {
                out.push((name.clone(), n.trunc()));
            }
        }
    }
    Ok(out)
}

/// `show --ip` as JSON/YAML: the address's facts and whether its pod exists.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShownIp<'a> {
    #[serde(flatten)]
    info: &'a IpInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_exists: Option<bool>,
}

fn render_ip(i: &IpInfo, pod_exists: Option<bool>) -> String {
    let mut s = String::new();
    let place = match (&i.block, &i.pool) {
        (Some(b), Some(p)) => format!("block {b} of IPPool {p}"),
        (Some(b), None) => format!("block {b}, which lies in no IPPool"),
        (None, Some(p)) => format!("IPPool {p}; no block holds it yet"),
        (None, None) => "no IPPool".to_string(),
    };
    match i.state {
        IpState::NotAssigned => {
            s.push_str(&format!("{} is not assigned (in {place})\n", i.ip));
            for r in &i.reserved_by {
                s.push_str(&format!("Reserved by IPReservation {r}: never allocated\n"));
            }
            return s;
        }
        IpState::Reserved => s.push_str(&format!(
            "IP {} is reserved (handle {}: Windows' reserved addresses of a block)\n",
            i.ip,
            i.handle_id.as_deref().unwrap_or("-")
        )),
        IpState::Cooling => s.push_str(&format!(
            "IP {} was released and is cooling down before it is handed out again\n",
            i.ip
        )),
        IpState::Assigned => s.push_str(&format!("IP {} is in use\n", i.ip)),
    }
    s.push_str(&format!(
        "Handle ID: {}\n",
        i.handle_id.as_deref().unwrap_or("<none>")
    ));
    let attrs = |title: &str, m: &std::collections::BTreeMap<String, String>| {
        let mut t = format!("{title}:\n");
        for (k, v) in m {
            t.push_str(&format!("  {k}: {v}\n"));
        }
        t
    };
    if i.attributes.is_empty() {
        s.push_str("No Active Owner attributes defined\n");
    } else {
        s.push_str(&attrs("Active Owner Attributes", &i.attributes));
    }
    if !i.alternate_attributes.is_empty() {
        s.push_str(&attrs("Alternate Owner Attributes", &i.alternate_attributes));
    }
    s.push_str(&format!(
        "Block: {place}, affinity {}{}\n",
        i.block_affinity.as_deref().unwrap_or("<none>"),
        if i.borrowed {
            " (borrowed by another node)"
        } else {
            ""
        }
    ));
    for r in &i.reserved_by {
        s.push_str(&format!(
            "Reserved by IPReservation {r} (allocated before it was reserved)\n"
        ));
    }
    if let (Some((ns, pod)), Some(exists)) = (i.pod(), pod_exists) {
        if exists {
            s.push_str(&format!("Pod {ns}/{pod} exists\n"));
        } else {
            s.push_str(&format!(
                "Pod {ns}/{pod} no longer exists: the address is leaked (the operator's GC releases it after its grace period; `tortie ipam release --ip {}` now)\n",
                i.ip
            ));
        }
    }
    s
}

/// `show --show-configuration`: the effective settings and where they come from.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShownConfig {
    /// `IPAMConfig default`, or Calico's defaults when it does not exist.
    source: String,
    strict_affinity: bool,
    auto_allocate_blocks: bool,
    max_blocks_per_host: u32,
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        skip_serializing_if = "Option::is_none"
    )]
    kube_virt_vm_address_persistence: Option<String>,
    ip_cooldown_seconds: i64,
}

impl ShownConfig {
    fn of(found: Option<&IPAMConfigSpec>, mode: CrdMode) -> ShownConfig {
        let kind = mode.kind_and_plural(crate::api::CalicoKind::IPAMConfig).0;
        let (source, spec) = match found {
            Some(s) => (format!("{kind} default"), s.clone()),
            None => (
                format!("Calico's defaults (no {kind} default)"),
                IPAMConfigSpec::calico_defaults(),
            ),
        };
        ShownConfig {
            source,
            strict_affinity: spec.strict_affinity,
            auto_allocate_blocks: spec.auto_allocate_blocks,
            max_blocks_per_host: spec.effective_max_blocks_per_host(),
            kube_virt_vm_address_persistence: spec.kube_virt_vm_address_persistence.clone(),
            ip_cooldown_seconds: spec.ip_cooldown_seconds.unwrap_or(0),
        }
    }
}

fn render_config(c: &ShownConfig) -> String {
    let mut t = TextTable::new(&["PROPERTY", "VALUE"]);
    t.row(["StrictAffinity", &c.strict_affinity.to_string()])
        .row(["AutoAllocateBlocks", &c.auto_allocate_blocks.to_string()])
        .row(["MaxBlocksPerHost", &c.max_blocks_per_host.to_string()])
        .row([
            "KubeVirtVMAddressPersistence",
            c.kube_virt_vm_address_persistence.as_deref().unwrap_or("-"),
        ])
        .row(["IPCooldownSeconds", &c.ip_cooldown_seconds.to_string()]);
    format!("{}Source: {}\n", t.render(), c.source)
}

fn pct(part: u128, total: u128) -> String {
    if total == 0 {
        "0%".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / total as f64)
    }
}

/// calicoctl's usage table (wide: more columns), then the borrowed addresses if asked.
pub(super) fn render_usage(u: &Usage, wide: bool, borrowed: bool) -> String {
    let mut header = vec![
        "GROUPING",
        "CIDR",
        "OWNER",
        "IPS TOTAL",
        "IPS IN USE",
        "IPS RESERVED",
        "IPS FREE",
    ];
    if wide {
        header.extend(["IPS COOLING", "BORROWED", "BLOCKS", "DISABLED"]);
    }
    let mut t = TextTable::new(&header).right_align(&[3, 4, 5, 6, 7, 8, 9]);
    for r in &u.rows {
        let mut row = vec![
            r.grouping.clone(),
            r.cidr.clone(),
            r.owner.clone(),
            r.total.to_string(),
            format!("{} ({})", r.in_use, pct(r.in_use, r.total)),
            format!("{} ({})", r.reserved, pct(r.reserved, r.total)),
            format!("{} ({})", r.free, pct(r.free, r.total)),
        ];
        if wide {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            row.extend([
                format!("{} ({})", r.cooling, pct(r.cooling, r.total)),
                r.borrowed.to_string(),
                opt(r.blocks.map(|b| b.to_string())),
                opt(r.disabled.map(|d| d.to_string())),
            ]);
        }
        t.row(row);
    }
    let mut s = t.render();
    if borrowed {
        let mut b = TextTable::new(&[
            "IP",
            "BORROWING-NODE",
            "BLOCK",
            "BLOCK OWNER",
            "TYPE",
            "ALLOCATED-TO",
        ]);
        for x in &u.borrowed {
            b.row([
                x.ip.to_string(),
                x.borrowing_node.clone(),
                x.block.clone(),
                x.block_owner.clone(),
                x.type_.clone(),
                x.allocated_to.clone(),
            ]);
        }
        s.push('\n');
        s.push_str(&b.render());
        if u.unclassified > 0 {
            s.push_str(&format!(
                "\nNote: found {} IP allocations without an explicit node association. Unable to determine if they are borrowed.\n",
                u.unclassified
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::report::{Borrowed, UsageRow};

    fn usage() -> Usage {
        Usage {
            rows: vec![UsageRow {
                grouping: "IP Pool".into(),
                cidr: "10.0.0.0/24".into(),
                owner: "default".into(),
                total: 256,
                in_use: 3,
                reserved: 8,
                free: 245,
                cooling: 1,
                borrowed: 2,
                blocks: Some(1),
                disabled: Some(false),
            }],
            borrowed: vec![Borrowed {
                ip: "10.0.0.1".parse().unwrap(),
                borrowing_node: "b".into(),
                block: "10.0.0.0/26".into(),
                block_owner: "a".into(),
                type_: "pod".into(),
                allocated_to: "default/web".into(),
            }],
            unclassified: 1,
        }
    }

    #[test]
    fn usage_table_wide_and_borrowed() {
        let t = render_usage(&usage(), false, false);
        assert!(
            t.contains(
                "| IP Pool  | 10.0.0.0/24 | default |       256 |     3 (1%) |       8 (3%) | 245 (96%) |"
            ),
            "{t}"
        );
        assert!(!t.contains("COOLING") && !t.contains("BORROWING-NODE"), "{t}");
        let w = render_usage(&usage(), true, true);
        assert!(w.contains("IPS COOLING") && w.contains("DISABLED"), "{w}");
        assert!(
            w.contains("| 10.0.0.1 | b              | 10.0.0.0/26 | a           | pod  | default/web  |"),
            "{w}"
        );
        assert!(
            w.contains("found 1 IP allocations without an explicit node"),
            "{w}"
        );
    }

    #[test]
    fn one_address_says_who_holds_it() {
        let mut i = IpInfo {
            ip: "10.0.0.5".parse().unwrap(),
            state: IpState::Assigned,
            handle_id: Some("k8s-pod-network.abc".into()),
            attributes: [
                ("namespace".to_string(), "default".to_string()),
                ("pod".into(), "web".into()),
                ("node".into(), "n1".into()),
            ]
            .into(),
            alternate_attributes: Default::default(),
            block: Some("10.0.0.0/26".into()),
            block_affinity: Some("host:n1".into()),
            borrowed: false,
            sequence_number: Some(4),
            pool: Some("default".into()),
            reserved_by: vec![],
        };
        let t = render_ip(&i, Some(false));
        for want in [
            "IP 10.0.0.5 is in use",
            "Handle ID: k8s-pod-network.abc",
            "  node: n1",
            "Block: block 10.0.0.0/26 of IPPool default, affinity host:n1",
            "Pod default/web no longer exists",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
        i.state = IpState::NotAssigned;
        i.reserved_by = vec!["keep (10.0.0.0/29)".into()];
        let t = render_ip(&i, None);
        assert!(
            t.starts_with("10.0.0.5 is not assigned (in block 10.0.0.0/26 of IPPool default)"),
            "{t}"
        );
        assert!(t.contains("Reserved by IPReservation keep (10.0.0.0/29)"), "{t}");
    }
}
