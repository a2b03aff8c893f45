//! `tortie ipam` verbs (calicoctl's IPAM commands) end to end: the real `tortie` binary against
//! the real control plane (kube-apiserver + etcd from e2e/), state made with the engine.
//!
//! Every test works in its own address space (`10.<k>.x.x`) with its own pools, nodes and
//! namespace. Each allocation whose attributes name a pod names a pod that exists, unless the test
//! means it to be leaked: `release_from_report` releases leaks cluster-wide, and must only find
//! its own.

mod support;

use std::net::IpAddr;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::Value;
use support::*;
use tortie::api::{Block, CalicoKind, CrdMode, IPAMConfigSpec, IPPoolSpec, IpamConfig, Pool};
use tortie::ipam::{AssignIpRequest, Attrs, AutoAssignRequest, Ipam, store::Store};

const MODE: CrdMode = CrdMode::V1;
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A per-test second octet, distinct within this process and unlikely to collide across processes.
fn unique_octet() -> u8 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (20 + (std::process::id().wrapping_mul(37).wrapping_add(n * 11)) % 230) as u8
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(o), stderr(o)))
}

/// The cells of a table's rows (lines starting with `|`), trimmed; the first is the header.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Column `col` of the first row `pick` selects.
#[track_caller]
fn cell(text: &str, pick: impl Fn(&[String]) -> bool, col: &str) -> String {
    let rows = rows(text);
    let i = rows[0]
        .iter()
        .position(|h| h == col)
        .unwrap_or_else(|| panic!("no column {col}:\n{text}"));
    let row = rows[1..]
        .iter()
        .find(|r| pick(r))
        .unwrap_or_else(|| panic!("no such row:\n{text}"));
    row[i].clone()
}

struct Lab {
    client: kube::Client,
    k: u8,
    prefix: String,
    ns: String,
    nodes: Vec<String>,
    ipam: Ipam,
}

impl Lab {
    async fn new(test: &str, n_nodes: usize) -> Lab {
        let client = client().await;
        let k = unique_octet();
        let prefix = unique_name(test);
        let mut nodes = vec![];
        for i in 0..n_nodes {
            let name = format!("{prefix}-n{i}");
            create_node(
                &client,
                &name,
                &[("tortie-e2e-lab", prefix.as_str())],
                None,
                &[],
                &[],
            )
            .await;
            nodes.push(name);
        }
        create_namespace(&client, &prefix, &[]).await;
        // The lab's own configuration: the cluster-wide IPAMConfig is `configure`'s to change.
        let ipam = ipam_engine(client.clone(), MODE, IPAMConfigSpec::calico_defaults()).await;
        Lab {
            client,
            k,
            ns: prefix.clone(),
            prefix,
            nodes,
            ipam,
        }
    }

    fn net(&self, s: &str) -> IpNet {
        s.replace("10.48.", &format!("10.{}.", self.k)).parse().unwrap()
    }

    fn pools(&self) -> Api<Pool> {
        Api::all_with(self.client.clone(), &MODE.resource(CalicoKind::IPPool))
    }

    async fn pool(&self, base: &str, cidr: &str, labels: &[(&str, &str)]) -> String {
        let name = format!("{}-{base}", self.prefix);
        let mut pool = Pool::new(
            &name,
            &MODE.resource(CalicoKind::IPPool),
            IPPoolSpec {
                cidr: self.net(cidr).to_string(),
                block_size: Some(26),
                node_selector: Some(format!("tortie-e2e-lab == '{}'", self.prefix)),
                ..Default::default()
            },
        );
        if !labels.is_empty() {
            pool.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        self.pools().create(&PostParams::default(), &pool).await.unwrap();
        name
    }

    /// One address for `pod` (a pod of that name exists unless `live` is false) on `node`.
    async fn alloc(&self, node: &str, pod: &str, live: bool) -> IpAddr {
        if live {
            create_pod(&self.client, &self.ns, pod, Some(node), &[]).await;
        }
        let mut r = AutoAssignRequest::new(&format!("{}-{pod}", self.prefix), node);
        r.attrs = Attrs::pod(node, &self.ns, pod);
        r.num_v4 = 1;
        let got = self.ipam.auto_assign(r).await.unwrap();
        assert!(got.is_complete(), "{got:?}");
        got.v4.ips[0].addr()
    }

    /// The kubelet's part: the pod shows the address its sandbox got.
    async fn show_ip(&self, pod: &str, ip: IpAddr) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let status =
            serde_json::json!({"status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
        pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    async fn blocks(&self) -> Vec<Block> {
        let api: Api<Block> = Api::all_with(self.client.clone(), &MODE.resource(CalicoKind::IPAMBlock));
        let scope = self.net("10.48.0.0/16");
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|b| b.spec.cidr.parse::<IpNet>().is_ok_and(|n| scope.contains(&n)))
            .collect()
    }

    fn allocated(&self, blocks: &[Block], ip: IpAddr) -> bool {
        Ipam::allocations(blocks).iter().any(|a| a.ip == ip)
    }

    async fn cleanup(self) {
        for h in Ipam::allocations(&self.blocks().await)
            .into_iter()
            .filter_map(|a| a.handle_id)
        {
            let _ = self.ipam.release_by_handle(&h).await;
        }
        let store = Store::new(self.client.clone(), MODE);
        for b in self.blocks().await {
            let _ = store.delete_block(&b).await;
        }
        for p in self.pools().list(&Default::default()).await.unwrap().items {
            if p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains(&self.prefix))
            {
                let _ = self
                    .pools()
                    .delete(p.metadata.name.as_deref().unwrap(), &DeleteParams::default())
                    .await;
            }
        }
        delete_namespace(&self.client, &self.ns, Duration::from_secs(60)).await;
        for n in &self.nodes {
            delete_node(&self.client, n).await;
        }
    }
}

#[tokio::test]
async fn show_an_address_the_blocks_and_the_borrowed() {
    let lab = Lab::new("cli-show", 2).await;
    let pool = lab.pool("p", "10.48.0.0/24", &[]).await;
    let (n0, n1) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let web = lab.alloc(&n0, "web", true).await;
    // n1 takes an address out of n0's block (borrowing; strictAffinity is off).
    let block = IpNet::new(web, 26).unwrap().trunc();
    let borrowed = tortie::ipam::cidr::address_of(&block, 9);
    create_pod(&lab.client, &lab.ns, "guest", Some(&n1), &[]).await;
    lab.ipam
        .assign_ip(AssignIpRequest {
            ip: borrowed,
            handle_id: format!("{}-guest", lab.prefix),
            attrs: Attrs::pod(&n1, &lab.ns, "guest"),
            hostname: n1.clone(),
            intended_use: tortie::ipam::AllowedUse::Workload,
        })
        .await
        .unwrap();

    // --ip: who holds it.
    let text = ok(&tortie(&["ipam", "show", "--ip", &web.to_string()]));
    for want in [
        format!("IP {web} is in use"),
        format!("Handle ID: {}-web", lab.prefix),
        "Active Owner Attributes:".to_string(),
        format!("  node: {n0}"),
        "  pod: web".to_string(),
        format!("Block: block {block} of IPPool {pool}, affinity host:{n0}"),
        format!("Pod {}/web exists", lab.ns),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    let v = json(&tortie(&[
        "ipam",
        "show",
        "--ip",
        &borrowed.to_string(),
        "-o",
        "json",
    ]));
    assert_eq!(v["state"], "assigned", "{v}");
    assert_eq!(v["borrowed"], true, "{v}");
    assert_eq!(v["attributes"]["node"], n1.as_str(), "{v}");
    assert_eq!(v["podExists"], true, "{v}");
    let free = tortie::ipam::cidr::address_of(&block, 40);
    let text = ok(&tortie(&["ipam", "show", "--ip", &free.to_string()]));
    assert_eq!(
        text,
        format!("{free} is not assigned (in block {block} of IPPool {pool})\n")
    );
    let nowhere = "192.0.2.77";
    let text = ok(&tortie(&["ipam", "show", "--ip", nowhere]));
    assert!(
        text.starts_with("192.0.2.77 is not assigned (in no IPPool)"),
        "{text}"
    );
    let v = json(&tortie(&["ipam", "show", "--ip", nowhere, "-o", "json"]));
    assert_eq!(v["state"], "notAssigned");

    // --show-blocks: the block under its pool, with its affinity.
    let text = ok(&tortie(&["ipam", "show", "--show-blocks"]));
    let row = text
        .lines()
        .find(|l| l.contains(&format!(" {block} ")))
        .unwrap_or_else(|| panic!("no row for {block}:\n{text}"));
    assert!(
        row.starts_with("| Block ") && row.contains(&format!("host:{n0}")) && row.contains(" 2 (3%) |"),
        "{row}"
    );
    assert!(!text.contains("BORROWING-NODE"), "{text}");
    // -o wide: the borrowed count and the pool's block count.
    let text = ok(&tortie(&["ipam", "show", "-o", "wide"]));
    let cell = |col: &str| cell(&text, |r| r[2] == pool, col);
    assert_eq!(
        (
            cell("BORROWED"),
            cell("BLOCKS"),
            cell("DISABLED"),
            cell("IPS IN USE")
        ),
        (
            "1".to_string(),
            "1".to_string(),
            "false".to_string(),
            "2 (1%)".to_string()
        ),
        "{text}"
    );
    // --show-borrowed: n1's address in n0's block.
    let text = ok(&tortie(&["ipam", "show", "--show-borrowed"]));
    let row = text
        .lines()
        .find(|l| l.contains(&format!(" {borrowed} ")))
        .unwrap_or_else(|| panic!("no row for {borrowed}:\n{text}"));
    for cell in [
        n1.as_str(),
        &block.to_string(),
        n0.as_str(),
        "pod",
        &format!("{}/guest", lab.ns),
    ] {
        assert!(row.contains(&format!(" {cell} ")), "{cell} not in {row}");
    }
    let v = json(&tortie(&["ipam", "show", "--show-borrowed", "-o", "json"]));
    assert!(
        v["borrowed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["ip"] == borrowed.to_string() && b["type"] == "pod"),
        "{v}"
    );
    // --ip with another view is refused by the parser.
    let out = tortie(&["ipam", "show", "--ip", &web.to_string(), "--show-blocks"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    lab.cleanup().await;
}

/// IPS RESERVED: the addresses IPReservations cover, per pool and per block, as calicoctl's
/// column; an address allocated before it was reserved counts in IN USE and RESERVED, and FREE
/// is what is neither.
#[tokio::test]
async fn show_counts_reserved_addresses_in_their_own_column() {
    let lab = Lab::new("cli-reserved", 1).await;
    let pool = lab.pool("p", "10.48.0.0/24", &[]).await;
    let web = lab.alloc(&lab.nodes[0].clone(), "web", true).await;
    let block = IpNet::new(web, 26).unwrap().trunc();
    // The allocated address and its neighbour (one in use, one free), and a /28 of the pool in
    // no block.
    let pair = IpNet::new(web, 31).unwrap().trunc();
    let elsewhere = ["10.48.0.0/28", "10.48.0.64/28", "10.48.0.128/28"]
        .iter()
        .map(|c| lab.net(c))
        .find(|n| !block.contains(n))
        .unwrap();
    let res = format!("{}-res", lab.prefix);
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: IPReservation\nmetadata:\n  name: {res}\nspec:\n  reservedCIDRs: [\"{pair}\", \"{elsewhere}\"]\n"
        ),
    );
    let text = ok(&tortie(&["ipam", "show", "--show-blocks"]));
    let pool_cell = |col: &str| cell(&text, |r| r[0] == "IP Pool" && r[2] == pool, col);
    assert_eq!(
        (
            pool_cell("IPS TOTAL"),
            pool_cell("IPS IN USE"),
            pool_cell("IPS RESERVED"),
            pool_cell("IPS FREE")
        ),
        (
            "256".to_string(),
            "1 (0%)".to_string(),
            "18 (7%)".to_string(),
            // 256 - 1 in use - 17 reserved and free.
            "238 (93%)".to_string()
        ),
        "{text}"
    );
    let block_cell = |col: &str| cell(&text, |r| r[0] == "Block" && r[1] == block.to_string(), col);
    assert_eq!(
        (
            block_cell("IPS IN USE"),
            block_cell("IPS RESERVED"),
            block_cell("IPS FREE")
        ),
        ("1 (2%)".to_string(), "2 (3%)".to_string(), "62 (97%)".to_string()),
        "{text}"
    );
    // The column sits where calicoctl has it, between IN USE and FREE.
    let header = rows(&text)[0].join("|");
    assert!(header.contains("IPS IN USE|IPS RESERVED|IPS FREE"), "{header}");
    let v = json(&tortie(&["ipam", "show", "-o", "json"]));
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["owner"] == pool.as_str())
        .unwrap_or_else(|| panic!("no row for {pool}: {v}"));
    assert_eq!(
        (row["reserved"].as_u64(), row["free"].as_u64()),
        (Some(18), Some(238)),
        "{row}"
    );
    kubectl(&["delete", "ipreservations.crd.projectcalico.org", &res]);
    lab.cleanup().await;
}

#[tokio::test]
async fn kubeconfig_and_context_flags() {
    let kc = cluster().kubeconfig.display().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap()
    };
    // No KUBECONFIG, no ~/.kube/config: the flag alone names the cluster.
    ok(&run(&[
        "--kubeconfig",
        &kc,
        "ipam",
        "show",
        "--show-configuration",
    ]));
    ok(&run(&[
        "ipam",
        "--kubeconfig",
        &kc,
        "--context",
        "tortie-e2e",
        "show",
        "--show-configuration",
    ]));
    let out = run(&[
        "ipam",
        "show",
        "--kubeconfig",
        &kc,
        "--context",
        "no-such-context",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-context"), "{}", stderr(&out));
    let out = run(&["node", "status", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/kubeconfig"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn check_writes_a_report_and_release_frees_only_what_is_still_leaked() {
    let lab = Lab::new("cli-report", 1).await;
    lab.pool("p", "10.48.0.0/24", &[]).await;
    let n0 = lab.nodes[0].clone();
    let live = lab.alloc(&n0, "live", true).await;
    lab.show_ip("live", live).await;
    let gone = lab.alloc(&n0, "gone", false).await;
    let back = lab.alloc(&n0, "back", false).await;
    let again = lab.alloc(&n0, "again", false).await;
    // A handle holding nothing (leaked handle).
    let store = Store::new(lab.client.clone(), MODE);
    let empty_id = format!("{}-empty", lab.prefix);
    store.create_handle(&empty_id, Default::default()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = tortie(&[
        "ipam",
        "check",
        "--show-problem-ips",
        "-o",
        report.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!("Report written to {}", report.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{gone} is allocated to pod {}/gone", lab.ns)),
        "{text}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let alloc = |ip: IpAddr| r["allocations"][ip.to_string()][0].clone();
    assert_eq!(alloc(live)["inUse"], true, "{r}");
    assert_eq!(alloc(live)["owners"][0], format!("Workload({}/live)", lab.ns));
    for ip in [gone, back, again] {
        assert_eq!(alloc(ip)["inUse"], false, "{ip}: {r}");
        assert!(alloc(ip)["sequenceNumber"].is_u64(), "{r}");
    }
    assert!(
        r["leakedHandles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["ID"] == empty_id.as_str()),
        "{r}"
    );
    assert!(
        r["clusterGUID"].is_string() && r["version"].as_str().unwrap().starts_with("tortie "),
        "{r}"
    );
    // -o json prints the same report; -o wide adds the problems table.
    let v = json(&tortie(&["ipam", "check", "-o", "json"]));
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "podGone" && p["ip"] == gone.to_string())
    );
    let text = stdout(&tortie(&["ipam", "check", "-o", "wide"]));
    assert!(
        text.contains("| podGone ") && text.contains(&format!(" {gone} ")),
        "{text}"
    );

    // Since the report: `back`'s pod came back, `again`'s address was released and handed out
    // again to the same handle (a new sequence number).
    create_pod(&lab.client, &lab.ns, "back", Some(&n0), &[]).await;
    let hid = format!("{}-again", lab.prefix);
    lab.ipam.release_by_handle(&hid).await.unwrap();
    lab.ipam
        .assign_ip(AssignIpRequest {
            ip: again,
            handle_id: hid.clone(),
            attrs: Attrs::pod(&n0, &lab.ns, "again"),
            hostname: n0.clone(),
            intended_use: tortie::ipam::AllowedUse::Workload,
        })
        .await
        .unwrap();

    // A report of another cluster is refused whole.
    let mut other = r.clone();
    other["clusterGUID"] = Value::String("another-cluster".into());
    let other_file = dir.path().join("other.json");
    std::fs::write(&other_file, other.to_string()).unwrap();
    let out = tortie(&["ipam", "release", "--from-report", other_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the report is of another cluster"),
        "{}",
        stderr(&out)
    );
    let out = tortie(&["ipam", "release", "--from-report", "/nonexistent/report.json"]);
    assert!(
        stderr(&out).contains("/nonexistent/report.json: reading the report"),
        "{}",
        stderr(&out)
    );

    let out = tortie(&["ipam", "release", "--from-report", report.to_str().unwrap()]);
    let text = ok(&out);
    assert!(text.contains(&format!("skipped {back}: in use again")), "{text}");
    assert!(
        text.contains(&format!("skipped {again}: allocated again since the report")),
        "{text}"
    );
    let blocks = lab.blocks().await;
    assert!(!lab.allocated(&blocks, gone), "{gone} still allocated\n{text}");
    for ip in [live, back, again] {
        assert!(lab.allocated(&blocks, ip), "{ip} was released\n{text}");
    }
    assert!(store.get_handle(&empty_id).await.unwrap().is_none(), "{text}");
    assert!(
        store
            .get_handle(&format!("{}-gone", lab.prefix))
            .await
            .unwrap()
            .is_none(),
        "{text}"
    );
    // Nothing left to release from the same report.
    let text = ok(&tortie(&[
        "ipam",
        "release",
        "--from-report",
        report.to_str().unwrap(),
    ]));
    assert!(text.contains("Released 0 IPs successfully"), "{text}");
    assert!(
        text.contains(&format!("skipped {gone}: no longer allocated")),
        "{text}"
    );
    lab.cleanup().await;
}

#[tokio::test]
async fn configure_sets_the_ipam_configuration_in_both_crd_modes() {
    let client = client().await;
    let out = tortie(&["ipam", "configure"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = tortie(&["ipam", "configure", "--strictaffinity=yes"]);
    assert!(stderr(&out).contains("use true or false"), "{}", stderr(&out));
    let out = tortie(&["ipam", "configure", "--max-blocks-per-host=-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let api: Api<IpamConfig> = Api::all_with(client.clone(), &MODE.resource(CalicoKind::IPAMConfig));
    let _ = api.delete("default", &DeleteParams::default()).await;
    let v = json(&tortie(&["ipam", "show", "--show-configuration", "-o", "json"]));
    assert_eq!(v["maxBlocksPerHost"], 20, "{v}");
    assert!(
        v["source"].as_str().unwrap().starts_with("Calico's defaults"),
        "{v}"
    );

    let text = ok(&tortie(&[
        "ipam",
        "configure",
        "--strictaffinity=true",
        "--max-blocks-per-host=7",
    ]));
    assert_eq!(
        text,
        "Successfully set StrictAffinity to: true\nSuccessfully set MaxBlocksPerHost to: 7\n"
    );
    let c = api.get("default").await.unwrap();
    assert!(
        c.spec.strict_affinity && c.spec.auto_allocate_blocks,
        "{:?}",
        c.spec
    );
    assert_eq!(c.spec.max_blocks_per_host, Some(7));
    // One setting changes, the other stays.
    ok(&tortie(&["ipam", "configure", "--strictaffinity=false"]));
    let c = api.get("default").await.unwrap();
    assert_eq!(
        (c.spec.strict_affinity, c.spec.max_blocks_per_host),
        (false, Some(7))
    );
    let text = ok(&tortie(&["ipam", "show", "--show-configuration"]));
    assert!(
        text.contains("| MaxBlocksPerHost ") && text.contains("| 7 "),
        "{text}"
    );
    assert!(text.contains("Source: IPAMConfig default"), "{text}");

    // v3 mode: the native IPAMConfiguration.
    install_crds(repo_dir().join("crds/v3"));
    ok(&tortie(&[
        "ipam",
        "--crd-mode",
        "v3",
        "configure",
        "--strictaffinity=true",
    ]));
    let v3: Api<IpamConfig> = Api::all_with(client.clone(), &CrdMode::V3.resource(CalicoKind::IPAMConfig));
    assert!(v3.get("default").await.unwrap().spec.strict_affinity);
    let v = json(&tortie(&[
        "ipam",
        "--crd-mode",
        "v3",
        "show",
        "--show-configuration",
        "-o",
        "json",
    ]));
    assert_eq!(
        (v["strictAffinity"].clone(), v["source"].clone()),
        (Value::Bool(true), Value::from("IPAMConfiguration default"))
    );
    let _ = v3.delete("default", &DeleteParams::default()).await;
    let _ = api.delete("default", &DeleteParams::default()).await;
}

#[tokio::test]
async fn split_keeps_every_block_and_allocation() {
    let lab = Lab::new("cli-split", 1).await;
    let pool = lab.pool("p", "10.48.0.0/24", &[]).await;
    let n0 = lab.nodes[0].clone();
    let a = lab.alloc(&n0, "a", true).await;
    // What the operator's IPPool controller would have put on the pool.
    let fin = serde_json::json!({"metadata": {"finalizers": ["tortie.io/ippool-drain"]}});
    lab.pools()
        .patch(&pool, &PatchParams::default(), &Patch::Merge(&fin))
        .await
        .unwrap();
    let before = lab.blocks().await;

    let out = tortie(&["ipam", "split", "3", "--name", &pool]);
    assert!(stderr(&out).contains("power of 2"), "{}", stderr(&out));
    let out = tortie(&["ipam", "split", "8", "--name", &pool]);
    assert!(
        stderr(&out).contains("split into at most 4 pools"),
        "{}",
        stderr(&out)
    );
    let out = tortie(&["ipam", "split", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let text = ok(&tortie(&[
        "ipam",
        "split",
        "2",
        "--cidr",
        &lab.net("10.48.0.0/24").to_string(),
    ]));
    let (c0, c1) = (format!("split-{pool}-0"), format!("split-{pool}-1"));
    assert!(
        text.contains(&format!("Created {c0} with CIDR {}", lab.net("10.48.0.0/25"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("Created {c1} with CIDR {}", lab.net("10.48.0.128/25"))),
        "{text}"
    );
    wait_until("the parent pool is deleted", Duration::from_secs(30), || async {
        lab.pools().get_opt(&pool).await.unwrap().is_none().then_some(())
    })
    .await;
    for c in [&c0, &c1] {
        let p = lab.pools().get(c).await.unwrap();
        assert_eq!(p.spec.block_size, Some(26));
        assert_eq!(
            p.spec.node_selector.as_deref(),
            Some(format!("tortie-e2e-lab == '{}'", lab.prefix).as_str())
        );
        assert!(!p.spec.is_disabled());
    }
    // The blocks and their allocations did not move.
    let after = lab.blocks().await;
    assert_eq!(Ipam::allocations(&before), Ipam::allocations(&after));
    assert!(lab.allocated(&after, a));
    // The child holding the node's block counts its address (which child: the block the node's
    // name hashes to).
    let owner = if lab.net("10.48.0.0/25").contains(&a) {
        &c0
    } else {
        &c1
    };
    let v = json(&tortie(&["ipam", "show", "-o", "json"]));
    let in_use = |name: &str| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["owner"] == name)
            .map(|r| r["inUse"].clone())
    };
    assert_eq!(in_use(owner), Some(Value::from(1)), "{v}");
    let other = if owner == &c0 { &c1 } else { &c0 };
    assert_eq!(in_use(other), Some(Value::from(0)), "{v}");
    // A pool the Installation manages is not split (the operator would re-create it).
    let managed = lab
        .pool("m", "10.48.4.0/24", &[("app.kubernetes.io/managed-by", "tortie")])
        .await;
    let out = tortie(&["ipam", "split", "2", "--name", &managed]);
    assert!(
        stderr(&out).contains("comes from the Installation"),
        "{}",
        stderr(&out)
    );
    lab.cleanup().await;
}

/// A kubeconfig that may read the IPAM objects and pods but not ClusterInformation (as the chart's
/// operator account, which only creates it): check still reports (naming no cluster), and a
/// report that names a cluster is not released, since the cluster cannot be compared.
#[tokio::test]
async fn check_and_release_without_read_access_to_cluster_information() {
    let lab = Lab::new("cli-rbac", 0).await;
    let sa = lab.prefix.clone();
    let rbac = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {sa}}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [crd.projectcalico.org]
  resources: [ippools, ipamconfigs, ipreservations, ipamblocks, ipamhandles, blockaffinities]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {sa}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {sa}}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]
"#,
        ns = lab.ns
    );
    kubectl_stdin_ok(&["apply", "-f", "-"], &rbac);
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("sa.kubeconfig");
    let c = cluster();
    let out = std::process::Command::new("bash")
        .arg(repo_dir().join("demo/sa-kubeconfig.sh"))
        .args([&lab.ns, &sa])
        .arg(&kc)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KUBECTL", &c.kubectl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let kc = kc.to_str().unwrap();
    let report = dir.path().join("r.json");
    let out = tortie(&[
        "--kubeconfig",
        kc,
        "ipam",
        "check",
        "--crd-mode",
        "v1",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(
        stdout(&out).contains("Check complete"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("not allowed to read ClusterInformation default"),
        "{}",
        stderr(&out)
    );
    let mut r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["clusterGUID"], "");
    r["clusterGUID"] = Value::String("0123456789abcdef".into());
    std::fs::write(&report, r.to_string()).unwrap();
    let out = tortie(&[
        "--kubeconfig",
        kc,
        "ipam",
        "release",
        "--crd-mode",
        "v1",
        "--from-report",
        report.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("may not read ClusterInformation default to compare"),
        "{}",
        stderr(&out)
    );
    kubectl(&["delete", "clusterrolebinding,clusterrole", &sa]);
    lab.cleanup().await;
}
