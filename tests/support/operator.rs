//! Helpers for tests that run `tortie run` as a real process against the e2e control plane,
//! and that write Calico IPAM objects the way Calico's CNI plugin leaves them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, PostParams};
use tortie::api::{
    Affinity, AllocationAttribute, Block, BlockAffinitySpec, CalicoKind, CrdMode, Handle, IPAMBlockSpec,
    IPAMHandleSpec,
};

use crate::support;

/// A `tortie run` process; killed when dropped.
pub struct Operator {
    child: Option<Child>,
    pub port: u16,
    pub identity: String,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Operator {
    /// Starts `tortie run --identity <identity> <args>` on a free metrics port, leases in `default`.
    pub fn start(identity: &str, args: &[&str]) -> Operator {
        let c = support::cluster();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("tortie-op-{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // TORTIE_BIN: a copy of the binary, for shared target dirs where another build may replace it.
        let bin = std::env::var("TORTIE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tortie").to_string());
        let child = Command::new(bin)
            .arg("run")
            .args([
                "--identity",
                identity,
                "--namespace",
                "default",
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--metrics-port", &port.to_string()])
            .args(args)
            .env("KUBECONFIG", &c.kubeconfig)
            .env("TORTIE_LOG", "info,tortie=debug,kube=warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn tortie run");
        Operator {
            child: Some(child),
            port,
            identity: identity.to_string(),
            log,
        }
    }

    /// GET a path of the operator's HTTP server: (status code, body); None while it is not up.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let (port, path) = (self.port, path.to_string());
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Some((code, body))
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of a sample line `name{labels} value` in /metrics.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let m = self.metrics().await;
        m.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub async fn wait_ready(&self) {
        support::wait_until(
            &format!("operator {} ready", self.identity),
            Duration::from_secs(60),
            || async { matches!(self.get("/readyz").await, Some((200, _))).then_some(()) },
        )
        .await;
    }

    pub async fn is_leader(&self) -> bool {
        self.metric("tortie_leader").await == Some(1.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: the process dies without releasing anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        for _ in 0..200 {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn mode(client: &Client) -> CrdMode {
    CrdMode::detect(client).await.expect("detect CRD mode")
}

/// One pod allocation: (ordinal, pod name, node) in namespace `ns`.
pub struct Alloc<'a> {
    pub ordinal: usize,
    pub handle: String,
    pub secondary: Vec<(&'a str, String)>,
}

impl<'a> Alloc<'a> {
    /// A pod's address, as Calico's CNI plugin records it.
    pub fn pod(ordinal: usize, ns: &str, pod: &str, node: &str) -> Alloc<'a> {
        Alloc {
            ordinal,
            handle: format!("k8s-pod-network.{ns}.{pod}-{ordinal}"),
            secondary: vec![
                ("namespace", ns.to_string()),
                ("pod", pod.to_string()),
                ("node", node.to_string()),
                ("timestamp", tortie::ipam::go_timestamp_now()),
            ],
        }
    }

    /// A node's IPIP tunnel address.
    pub fn tunnel(ordinal: usize, node: &str) -> Alloc<'a> {
        Alloc {
            ordinal,
            handle: format!("ipip-tunnel-addr-{node}"),
            secondary: vec![
                ("node", node.to_string()),
                ("type", "ipipTunnelAddress".to_string()),
            ],
        }
    }
}

/// Writes an IPAMBlock (and the handles and the affinity) as Calico would have left them.
pub async fn write_block(client: &Client, cidr: &str, host: Option<&str>, allocs: &[Alloc<'_>]) -> Block {
    let mode = mode(client).await;
    let net: ipnet::IpNet = cidr.parse().unwrap();
    let size = 1usize << (net.max_prefix_len() - net.prefix_len());
    let mut spec = IPAMBlockSpec {
        cidr: cidr.into(),
        affinity: host.map(|h| format!("host:{h}")),
        allocations: vec![None; size],
        sequence_number: Some(1_754_042_400_000_000_000),
        sequence_number_for_allocation: Some(BTreeMap::new()),
        deleted: Some(false),
        strict_affinity: false,
        ..Default::default()
    };
    for a in allocs {
        spec.attributes.push(AllocationAttribute {
            handle_id: Some(a.handle.clone()),
            secondary: Some(
                a.secondary
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        });
        spec.allocations[a.ordinal] = Some(spec.attributes.len() - 1);
        spec.sequence_number_for_allocation.as_mut().unwrap().insert(
            a.ordinal.to_string(),
            1_754_042_400_000_000_000 + a.ordinal as u64,
        );
    }
    spec.unallocated = (0..size).filter(|o| spec.allocations[*o].is_none()).collect();
    let name = tortie::ipam::names::block_name(&net);
    let api: Api<Block> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMBlock));
    let block = Block::new(&name, &mode.resource(CalicoKind::IPAMBlock), spec);
    let created = api
        .create(&PostParams::default(), &block)
        .await
        .expect("create IPAMBlock");
    let h_api: Api<Handle> = Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMHandle));
    let mut per_handle: BTreeMap<String, u64> = BTreeMap::new();
    for a in allocs {
        *per_handle.entry(a.handle.clone()).or_default() += 1;
    }
    for (h, n) in per_handle {
        let spec = IPAMHandleSpec {
            handle_id: h.clone(),
            block: [(cidr.to_string(), n)].into_iter().collect(),
            deleted: Some(false),
            ..Default::default()
        };
        let obj = Handle::new(
            &tortie::ipam::names::handle_name(&h),
            &mode.resource(CalicoKind::IPAMHandle),
            spec,
        );
        h_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create IPAMHandle");
    }
    if let Some(h) = host {
        let a_api: Api<Affinity> = Api::all_with(client.clone(), &mode.resource(CalicoKind::BlockAffinity));
        let spec = BlockAffinitySpec {
            state: "confirmed".into(),
            node: h.into(),
            type_: Some("host".into()),
            cidr: cidr.into(),
            deleted: mode.affinity_flag(false),
            ..Default::default()
        };
        let obj = Affinity::new(
            &tortie::ipam::names::affinity_name(h, &net),
            &mode.resource(CalicoKind::BlockAffinity),
            spec,
        );
        a_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create BlockAffinity");
    }
    created
}

/// Creates an IPPool labelled `tortie-test=<test>` (so a scoped operator sees it), allowed
/// outside the pod CIDR (other tests may set a kubeadm podSubnet meanwhile).
pub fn apply_pool(name: &str, test: &str, cidr: &str, block_size: u8, extra_spec: &str) {
    let c = support::cluster();
    let _ = c;
    let manifest = format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: {name}\n  labels: {{tortie-test: {test}}}\n  annotations: {{tortie.io/allow-outside-pod-cidr: \"true\"}}\nspec:\n  cidr: {cidr}\n  blockSize: {block_size}\n{extra_spec}"
    );
    support::kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
}
