//! IPAM engine end to end against the real control plane (kube-apiserver + etcd from e2e/).
//!
//! Each test works in its own address space: the lab's pools (spec §8: `default-ipv4-ippool`
//! 10.48.0.0/24, `pool2-ipv4-ippool` 10.48.128.0/24, `external-pool` 10.48.2.0/24 blockSize 29)
//! shifted to `10.<k>.x.x` with a per-test `k`, unique pool and node names, and the test's
//! IPAMConfig given as an override so that tests never touch the cluster-wide singleton (except
//! `ipam_config_is_read_from_the_cluster`, which restores it).

mod support;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::*;
use tortie::api::{
    Affinity, Block, CalicoKind, CrdMode, Flag, Handle, IPAMConfigSpec, IPPoolSpec, IpamConfig, Pool,
};
use tortie::ipam::{
    AssignIpRequest, Attrs, AutoAssignRequest, Ipam, IpamError, ReleaseOptions, Shortfall, block as blk,
    names, report,
};

const MODE: CrdMode = CrdMode::V1;
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A per-test second octet, distinct within this process and unlikely to collide across processes.
fn unique_octet() -> u8 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (20 + (std::process::id().wrapping_mul(31).wrapping_add(n * 7)) % 230) as u8
}

struct Lab {
    client: kube::Client,
    k: u8,
    prefix: String,
    nodes: Vec<String>,
    pools: Vec<String>,
}

impl Lab {
    async fn new(test: &str, n_nodes: usize) -> Lab {
        let client = client().await;
        let k = unique_octet();
        let prefix = unique_name(test);
        let mut nodes = vec![];
        for i in 0..n_nodes {
            let name = format!("{prefix}-n{i}");
            let labels = [
                ("zone", if i % 2 == 0 { "even" } else { "odd" }),
                ("tortie-e2e-lab", prefix.as_str()),
            ];
            create_node(&client, &name, &labels, None, &[], &[]).await;
            nodes.push(name);
        }
        let lab = Lab {
            client,
            k,
            prefix,
            nodes,
            pools: vec![],
        };
        lab.purge().await;
        lab
    }

    fn net(&self, s: &str) -> IpNet {
        s.replace("10.48.", &format!("10.{}.", self.k))
            .replace("fd00:48:", &format!("fd00:{}:", self.k))
            .parse()
            .unwrap()
    }

    fn pool_name(&self, base: &str) -> String {
        format!("{}-{base}", self.prefix)
    }

    async fn pool(
        &mut self,
        base: &str,
        cidr: &str,
        block_size: Option<i32>,
        f: impl FnOnce(&mut IPPoolSpec),
    ) -> String {
        let name = self.pool_name(base);
        // Pools of parallel tests share the cluster: each test's pools select only its nodes.
        let mut spec = IPPoolSpec {
            cidr: self.net(cidr).to_string(),
            block_size,
            node_selector: Some(format!("tortie-e2e-lab == '{}'", self.prefix)),
            ..Default::default()
        };
        f(&mut spec);
        let pool = Pool::new(&name, &MODE.resource(CalicoKind::IPPool), spec);
        let api: Api<Pool> = Api::all_with(self.client.clone(), &MODE.resource(CalicoKind::IPPool));
        api.create(&PostParams::default(), &pool)
            .await
            .unwrap_or_else(|e| panic!("create IPPool {name}: {e}"));
        self.pools.push(name.clone());
        name
    }

    /// The seed 001 lab: pool2 and external-pool are Manual so unannotated pods use the default pool.
    async fn seed001(&mut self) {
        self.pool("default-ipv4-ippool", "10.48.0.0/24", Some(26), |_| {})
            .await;
        self.pool("pool2-ipv4-ippool", "10.48.128.0/24", Some(26), |s| {
            s.assignment_mode = Some("Manual".into())
        })
        .await;
        self.pool("external-pool", "10.48.2.0/24", Some(29), |s| {
            s.assignment_mode = Some("Manual".into())
        })
        .await;
    }

    async fn ipam(&self, cfg: IPAMConfigSpec) -> Ipam {
        ipam_engine(self.client.clone(), MODE, cfg).await
    }

    fn in_scope(&self, cidr: &str) -> bool {
        cidr.parse::<IpNet>().is_ok_and(|n| {
            self.net("10.48.0.0/16").contains(&n.network()) || self.net("fd00:48::/32").contains(&n.network())
        })
    }

    async fn blocks(&self) -> Vec<Block> {
        let mut v: Vec<Block> = list_calico::<Block>(&self.client, MODE, CalicoKind::IPAMBlock)
            .await
            .into_iter()
            .filter(|b| self.in_scope(&b.spec.cidr))
            .collect();
        v.sort_by(|a, b| a.spec.cidr.cmp(&b.spec.cidr));
        v
    }

    async fn affinities(&self) -> Vec<Affinity> {
        list_calico::<Affinity>(&self.client, MODE, CalicoKind::BlockAffinity)
            .await
            .into_iter()
            .filter(|a| self.in_scope(&a.spec.cidr))
            .collect()
    }

    async fn handles(&self) -> Vec<Handle> {
        list_calico::<Handle>(&self.client, MODE, CalicoKind::IPAMHandle)
            .await
            .into_iter()
            .filter(|h| {
                h.spec.block.keys().any(|k| self.in_scope(k)) || h.spec.handle_id.starts_with(&self.prefix)
            })
            .collect()
    }

    /// `ipam check` restricted to this test's address space; panics with the report on problems.
    async fn assert_check_clean(&self) {
        let scope = vec![self.net("10.48.0.0/16"), self.net("fd00:48::/32")];
        let input = report::CheckInput {
            blocks: self.blocks().await,
            handles: self.handles().await,
            affinities: self.affinities().await,
            pods: None,
            scope: Some(scope),
            ..Default::default()
        };
        let problems = report::check(&input);
        assert!(
            problems.is_empty(),
            "ipam check found problems:\n{}",
            report::render_problems(&problems)
        );
    }

    /// Deletes every IPAM object in this test's address space, and its pools.
    async fn purge(&self) {
        let (blocks, affinities, handles) =
            (self.blocks().await, self.affinities().await, self.handles().await);
        delete_ipam_objects(&self.client, MODE, &blocks, &affinities, &handles).await;
    }

    async fn cleanup(self) {
        self.purge().await;
        let pa: Api<Pool> = Api::all_with(self.client.clone(), &MODE.resource(CalicoKind::IPPool));
        for p in &self.pools {
            let _ = pa.delete(p, &DeleteParams::default()).await;
        }
        for n in &self.nodes {
            delete_node(&self.client, n).await;
        }
    }

    fn req(&self, handle: &str, node: &str, v4: usize) -> AutoAssignRequest {
        let mut r = AutoAssignRequest::new(&format!("{}-{handle}", self.prefix), node);
        r.attrs = Attrs::default().with(Attrs::NODE, node).with("type", "e2e");
        r.num_v4 = v4;
        r
    }
}

fn defaults() -> IPAMConfigSpec {
    IPAMConfigSpec::calico_defaults()
}

fn block_of(blocks: &[Block], ip: IpAddr) -> &Block {
    blocks
        .iter()
        .find(|b| b.spec.cidr.parse::<IpNet>().unwrap().contains(&ip))
        .unwrap_or_else(|| panic!("no block holds {ip}"))
}

#[tokio::test]
async fn seed001_three_nodes_allocate_into_affine_blocks() {
    let mut lab = Lab::new("ipam-seed001", 3).await;
    lab.seed001().await;
    let ipam = lab.ipam(defaults()).await;
    let mut all = HashSet::new();
    for (i, node) in lab.nodes.clone().iter().enumerate() {
        for p in 0..3 {
            let got = ipam
                .auto_assign(lab.req(&format!("d{i}-{p}"), node, 1))
                .await
                .unwrap();
            assert!(got.is_complete(), "{got:?}");
            let ip = got.v4.ips[0];
            assert_eq!(ip.prefix_len(), 26, "Calico returns the block prefix");
            assert!(
                lab.net("10.48.0.0/24").contains(&ip.addr()),
                "{ip} outside the default pool"
            );
            assert!(all.insert(ip.addr()), "{ip} handed out twice");
        }
        // A pool requested by name: pool2, /26 blocks affine to the node.
        let mut r = lab.req(&format!("p2-{i}"), node, 1);
        r.v4_pools = vec![lab.pool_name("pool2-ipv4-ippool")];
        let got = ipam.auto_assign(r).await.unwrap();
        assert!(
            lab.net("10.48.128.0/24").contains(&got.v4.ips[0].addr()),
            "{got:?}"
        );
        // The external pool by CIDR: /29 blocks.
        let mut r = lab.req(&format!("ext-{i}"), node, 2);
        r.v4_pools = vec![lab.net("10.48.2.0/24").to_string()];
        let got = ipam.auto_assign(r).await.unwrap();
        assert_eq!(got.v4.ips.len(), 2);
        assert!(
            got.v4
                .ips
                .iter()
                .all(|ip| ip.prefix_len() == 29 && lab.net("10.48.2.0/24").contains(&ip.addr()))
        );
        all.extend(got.v4.ips.iter().map(|i| i.addr()));
    }
    let blocks = lab.blocks().await;
    // Three nodes × (default, pool2, external) = 9 blocks, each affine to one node.
    assert_eq!(
        blocks.len(),
        9,
        "{:?}",
        blocks.iter().map(|b| &b.spec.cidr).collect::<Vec<_>>()
    );
    let affs = lab.affinities().await;
    for b in &blocks {
        let cidr: IpNet = b.spec.cidr.parse().unwrap();
        let host = b.spec.host().expect("affine block");
        assert!(lab.nodes.iter().any(|n| n == host));
        assert_eq!(b.metadata.name.as_deref().unwrap(), names::block_name(&cidr));
        assert!(blk::check(&b.spec).is_empty());
        assert!(!b.spec.strict_affinity);
        if lab.net("10.48.128.0/24").contains(&cidr.network()) {
            let k = lab.k;
            assert!(
                b.metadata
                    .name
                    .as_deref()
                    .unwrap()
                    .starts_with(&format!("10-{k}-128-"))
            );
            assert!(b.metadata.name.as_deref().unwrap().ends_with("-26"));
        }
        let a = affs
            .iter()
            .find(|a| a.spec.cidr == b.spec.cidr)
            .unwrap_or_else(|| panic!("no BlockAffinity for {}", b.spec.cidr));
        assert_eq!(
            a.metadata.name.as_deref().unwrap(),
            names::affinity_name(host, &cidr)
        );
        assert_eq!(a.spec.state, "confirmed");
        assert_eq!(a.spec.deleted, Flag::Str(false), "v1 stores deleted as a string");
        let labels = a.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(names::LABEL_HOSTNAME_HASH),
            Some(&names::hostname_hash(host))
        );
        assert_eq!(
            labels.get(names::LABEL_AFFINITY_TYPE).map(String::as_str),
            Some("host")
        );
        assert_eq!(labels.get(names::LABEL_IP_VERSION).map(String::as_str), Some("4"));
    }
    // Every address lies in a block affine to the node that asked.
    for b in &blocks {
        let cidr: IpNet = b.spec.cidr.parse().unwrap();
        for a in Ipam::allocations(std::slice::from_ref(b)) {
            assert_eq!(a.attrs.get("node"), b.spec.host(), "{} in {cidr}", a.ip);
        }
    }
    lab.assert_check_clean().await;
    // Release everything: handles go away, blocks stay (affine), addresses are free again.
    for h in lab.handles().await {
        let ips = ipam.ips_by_handle(&h.spec.handle_id).await.unwrap();
        let released = ipam.release_by_handle(&h.spec.handle_id).await.unwrap();
        assert_eq!(
            ips.iter().collect::<BTreeSet<_>>(),
            released.iter().collect::<BTreeSet<_>>()
        );
        assert!(
            ipam.release_by_handle(&h.spec.handle_id)
                .await
                .unwrap()
                .is_empty(),
            "idempotent"
        );
    }
    assert!(lab.handles().await.is_empty());
    assert!(
        lab.blocks()
            .await
            .iter()
            .all(|b| blk::is_empty(&b.spec) && b.spec.host().is_some())
    );
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn full_block_borrows_without_strict_affinity_and_fails_with_it() {
    let mut lab = Lab::new("ipam-borrow", 2).await;
    lab.pool("small", "10.48.0.0/25", Some(26), |_| {}).await; // two blocks
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let ipam = lab.ipam(defaults()).await;
    let got = ipam.auto_assign(lab.req("a-fill", &a, 64)).await.unwrap();
    assert!(got.is_complete());
    let a_block = got.v4.ips[0].trunc();
    assert!(
        got.v4.ips.iter().all(|i| i.trunc() == a_block),
        "64 addresses from one block"
    );
    ipam.auto_assign(lab.req("b-1", &b, 1)).await.unwrap();

    // strictAffinity true: node a's block is full, no block left to claim → clear shortfall.
    let strict = lab
        .ipam(IPAMConfigSpec {
            strict_affinity: true,
            ..defaults()
        })
        .await;
    let got = strict.auto_assign(lab.req("a-strict", &a, 1)).await.unwrap();
    assert!(got.v4.ips.is_empty());
    assert_eq!(got.v4.shortfall, Some(Shortfall::StrictAffinity));
    assert!(got.v4.describe("IPv4").contains(
        "Assigned 0 out of 1 requested IPv4 addresses; No more free affine blocks and strict affinity enabled"
    ));
    assert!(
        lab.handles()
            .await
            .iter()
            .all(|h| !h.spec.handle_id.ends_with("a-strict")),
        "no handle left behind"
    );

    // strictAffinity false: borrow one address from b's block; b keeps the block.
    let got = ipam.auto_assign(lab.req("a-borrow", &a, 1)).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    let ip = got.v4.ips[0].addr();
    let blocks = lab.blocks().await;
    let lender = block_of(&blocks, ip);
    assert_eq!(lender.spec.host(), Some(b.as_str()));
    let alloc = Ipam::allocations(std::slice::from_ref(lender))
        .into_iter()
        .find(|x| x.ip == ip)
        .unwrap();
    assert_eq!(
        alloc.attrs.get("node"),
        Some(a.as_str()),
        "the borrower is recorded"
    );
    assert_eq!(lab.affinities().await.len(), 2, "borrowing claims no affinity");
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn strict_affinity_claims_a_new_block() {
    let mut lab = Lab::new("ipam-strict", 1).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let a = lab.nodes[0].clone();
    let ipam = lab
        .ipam(IPAMConfigSpec {
            strict_affinity: true,
            ..defaults()
        })
        .await;
    let got = ipam.auto_assign(lab.req("fill", &a, 65)).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    let blocks: BTreeSet<IpNet> = got.v4.ips.iter().map(|i| i.trunc()).collect();
    assert_eq!(blocks.len(), 2, "a second block was claimed");
    assert!(
        lab.blocks()
            .await
            .iter()
            .all(|b| b.spec.host() == Some(a.as_str()))
    );
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn max_blocks_per_host_fails_without_borrowing() {
    let mut lab = Lab::new("ipam-maxblocks", 2).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let ipam = lab
        .ipam(IPAMConfigSpec {
            max_blocks_per_host: Some(1),
            ..defaults()
        })
        .await;
    ipam.auto_assign(lab.req("b", &b, 1)).await.unwrap(); // b's block has room to borrow from
    let got = ipam.auto_assign(lab.req("a", &a, 70)).await.unwrap();
    assert_eq!(got.v4.ips.len(), 64);
    assert_eq!(got.v4.shortfall, Some(Shortfall::BlockLimit { limit: 1 }));
    assert!(
        got.v4
            .describe("IPv4")
            .contains("limit of 1 blocks reached for this node")
    );
    let blocks = lab.blocks().await;
    assert!(
        got.v4
            .ips
            .iter()
            .all(|ip| block_of(&blocks, ip.addr()).spec.host() == Some(a.as_str())),
        "nothing borrowed"
    );
    // Per-request limit tightens the global one.
    let ipam20 = lab.ipam(defaults()).await;
    let mut r = lab.req("b2", &b, 64);
    r.max_blocks_per_host = Some(1);
    let got = ipam20.auto_assign(r).await.unwrap();
    assert_eq!(got.v4.ips.len(), 63);
    assert_eq!(got.v4.shortfall, Some(Shortfall::BlockLimit { limit: 1 }));
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn pool_exhausted_reports_calico_message() {
    let mut lab = Lab::new("ipam-exhaust", 2).await;
    lab.pool("tiny", "10.48.0.0/26", Some(26), |_| {}).await;
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let ipam = lab.ipam(defaults()).await;
    assert!(
        ipam.auto_assign(lab.req("a", &a, 60))
            .await
            .unwrap()
            .is_complete()
    );
    let got = ipam.auto_assign(lab.req("b", &b, 5)).await.unwrap();
    assert_eq!(got.v4.ips.len(), 4, "borrowed the last 4");
    let pool = lab.net("10.48.0.0/26");
    assert_eq!(
        got.v4.shortfall,
        Some(Shortfall::PoolsExhausted { pools: vec![pool] })
    );
    assert_eq!(
        got.v4.shortfall.unwrap().message(),
        format!("No IPs available in pools: [{pool}]")
    );
    let got = ipam.auto_assign(lab.req("c", &b, 1)).await.unwrap();
    assert_eq!(got.v4.ips.len(), 0);
    ipam.release_by_handle(&format!("{}-c", lab.prefix))
        .await
        .unwrap();
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn ipv6_and_dual_stack() {
    let mut lab = Lab::new("ipam-v6", 1).await;
    lab.pool("v4", "10.48.0.0/24", None, |_| {}).await;
    lab.pool("v6", "fd00:48::/120", None, |_| {}).await;
    let a = lab.nodes[0].clone();
    let ipam = lab.ipam(defaults()).await;
    let mut r = lab.req("dual", &a, 1);
    r.num_v6 = 2;
    let got = ipam.auto_assign(r).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    assert_eq!(got.v4.ips.len(), 1);
    assert_eq!(got.v6.ips.len(), 2);
    assert!(
        got.v6
            .ips
            .iter()
            .all(|ip| ip.prefix_len() == 122 && lab.net("fd00:48::/120").contains(&ip.addr()))
    );
    let v6_block = got.v6.ips[0].trunc();
    let blocks = lab.blocks().await;
    let b6 = blocks
        .iter()
        .find(|b| b.spec.cidr == v6_block.to_string())
        .expect("v6 block");
    assert_eq!(b6.metadata.name.as_deref().unwrap(), names::block_name(&v6_block));
    assert!(b6.metadata.name.as_deref().unwrap().ends_with("-122"));
    let a6 = lab
        .affinities()
        .await
        .into_iter()
        .find(|x| x.spec.cidr == v6_block.to_string())
        .unwrap();
    assert_eq!(
        a6.metadata
            .labels
            .unwrap()
            .get(names::LABEL_IP_VERSION)
            .map(String::as_str),
        Some("6")
    );
    lab.assert_check_clean().await;
    let released = ipam
        .release_by_handle(&format!("{}-dual", lab.prefix))
        .await
        .unwrap();
    assert_eq!(released.len(), 3);
    lab.cleanup().await;
}

#[tokio::test]
async fn explicit_addresses_and_guarded_release() {
    let mut lab = Lab::new("ipam-assignip", 2).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let ipam = lab.ipam(defaults()).await;
    let ip: IpAddr = lab.net("10.48.0.70/32").addr();
    let req = |h: &str, host: &str| AssignIpRequest {
        ip,
        handle_id: format!("{}-{h}", lab.prefix),
        attrs: Attrs::default().with("node", host),
        hostname: host.into(),
        intended_use: tortie::ipam::AllowedUse::Workload,
    };
    ipam.assign_ip(req("x", &a)).await.unwrap();
    let e = ipam.assign_ip(req("y", &a)).await.unwrap_err();
    assert!(matches!(e, IpamError::AlreadyAssigned { .. }), "{e}");
    assert!(e.to_string().contains("Address already assigned in block"), "{e}");
    // The block was claimed for a; with strict affinity b may not take an address in it.
    let strict = lab
        .ipam(IPAMConfigSpec {
            strict_affinity: true,
            ..defaults()
        })
        .await;
    let mut r = req("z", &b);
    r.ip = lab.net("10.48.0.71/32").addr();
    let e = strict.assign_ip(r.clone()).await.unwrap_err();
    assert!(
        e.to_string().contains("Block host affinity does not match"),
        "{e}"
    );
    ipam.assign_ip(r).await.unwrap(); // without strict affinity: allowed (borrowed)
    let e = ipam
        .assign_ip(AssignIpRequest {
            ip: "192.0.2.1".parse().unwrap(),
            ..req("q", &a)
        })
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::NotInPool(_)), "{e}");
    // A release guarded by the wrong handle changes nothing.
    let wrong = ReleaseOptions {
        ip,
        handle_id: Some("someone-else".into()),
        sequence_number: None,
    };
    let e = ipam.release_ips(&[wrong]).await.unwrap_err();
    assert!(e.to_string().contains("bad handle"), "{e}");
    assert_eq!(
        ipam.ips_by_handle(&format!("{}-x", lab.prefix)).await.unwrap(),
        vec![ip]
    );
    // A stale sequence number (re-allocated address) is refused too.
    let blocks = lab.blocks().await;
    let alloc = Ipam::allocations(&blocks)
        .into_iter()
        .find(|x| x.ip == ip)
        .unwrap();
    let stale = ReleaseOptions {
        ip,
        handle_id: alloc.handle_id.clone(),
        sequence_number: Some(alloc.sequence_number.unwrap() + 1),
    };
    assert!(
        ipam.release_ips(&[stale])
            .await
            .unwrap_err()
            .to_string()
            .contains("bad sequence number")
    );
    let good = ReleaseOptions {
        ip,
        handle_id: alloc.handle_id.clone(),
        sequence_number: alloc.sequence_number,
    };
    let out = ipam
        .release_ips(&[good, ReleaseOptions::ip(lab.net("10.48.0.99/32").addr())])
        .await
        .unwrap();
    assert_eq!(out.released, vec![ip]);
    assert_eq!(out.unallocated, vec![lab.net("10.48.0.99/32").addr()]);
    assert!(
        lab.handles()
            .await
            .iter()
            .all(|h| !h.spec.handle_id.ends_with("-x")),
        "emptied handle deleted"
    );
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocation_4_nodes_x_8_allocators() {
    const NODES: usize = 4;
    const ALLOCATORS: usize = 8;
    const EACH: usize = 6;
    let mut lab = Lab::new("ipam-concurrent", NODES).await;
    lab.pool("p", "10.48.0.0/22", Some(26), |_| {}).await;
    let started = std::time::Instant::now();
    let mut tasks = vec![];
    for n in 0..NODES {
        for w in 0..ALLOCATORS {
            // One engine per allocator: separate caches race through the apiserver, as separate
            // CNI processes would.
            let ipam = lab.ipam(defaults()).await;
            let node = lab.nodes[n].clone();
            let prefix = lab.prefix.clone();
            tasks.push(tokio::spawn(async move {
                let mut ips = vec![];
                for i in 0..EACH {
                    let mut r = AutoAssignRequest::new(&format!("{prefix}-{n}-{w}-{i}"), &node);
                    r.num_v4 = 1;
                    let got = ipam.auto_assign(r).await.expect("auto_assign");
                    assert!(got.is_complete(), "{got:?}");
                    ips.push(got.v4.ips[0].addr());
                }
                ips
            }));
        }
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        unique.len(),
        NODES * ALLOCATORS * EACH,
        "duplicate addresses handed out"
    );
    eprintln!(
        "concurrent: {} allocations from {NODES} nodes x {ALLOCATORS} allocators in {:.2} s",
        all.len(),
        elapsed.as_secs_f64()
    );
    let blocks = lab.blocks().await;
    for ip in &all {
        let b = block_of(&blocks, *ip);
        let alloc = Ipam::allocations(std::slice::from_ref(b))
            .into_iter()
            .find(|x| x.ip == *ip)
            .unwrap();
        assert_eq!(
            b.spec.host(),
            alloc.attrs.get("node"),
            "{ip} outside its node's blocks"
        );
    }
    // Separate engines of one node race for its first block: they share one (48 addresses of a
    // node fit in one /26), where listing affinities before blocks let a later process claim a
    // second and third block.
    for node in &lab.nodes {
        let owned: Vec<&Block> = blocks
            .iter()
            .filter(|b| b.spec.host() == Some(node.as_str()))
            .collect();
        assert_eq!(
            owned.len(),
            1,
            "{node} claimed {} blocks: {:?}",
            owned.len(),
            owned.iter().map(|b| &b.spec.cidr).collect::<Vec<_>>()
        );
    }
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// Calico-written state (the fixtures' shapes, 3.26–3.32) moved into this test's address space.
fn calico_fixture(lab: &Lab, file: &str, node: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo_dir().join("tests/fixtures/calico").join(file)).unwrap();
    let k = lab.k;
    let text = text
        .replace("10.48.0.0/26", &format!("10.{k}.0.0/26"))
        .replace("10-48-0-0-26", &format!("10-{k}-0-0-26"))
        .replace("node-a", node);
    let mut v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    // The CRDs installed here (like Calico's own) do not preserve unknown fields, so the fixture's
    // stand-ins for "fields of a newer Calico" cannot be stored; tests/roundtrip.rs covers them.
    if let Some(spec) = v["spec"].as_object_mut() {
        spec.remove("futureField");
        if let Some(attrs) = spec.get_mut("attributes").and_then(|a| a.as_array_mut()) {
            for a in attrs {
                a.as_object_mut().unwrap().remove("futureAttr");
            }
        }
    }
    v["metadata"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k == "name" || k == "labels" || k == "annotations");
    v
}

#[tokio::test]
async fn calico_written_state_is_adopted() {
    let mut lab = Lab::new("ipam-migrate", 1).await;
    lab.pool("default", "10.48.0.0/24", Some(26), |_| {}).await;
    let node = lab.nodes[0].clone();
    let block = calico_fixture(&lab, "calico332-ipamblock.yaml", &node);
    let aff = calico_fixture(&lab, "calico-blockaffinity-v1.yaml", &node);
    for doc in [&block, &aff] {
        kubectl_stdin_ok(&["create", "-f", "-"], &serde_json::to_string(doc).unwrap());
    }
    // The handles of the two addresses Calico allocated.
    let blk0: Block = serde_json::from_value(block.clone()).unwrap();
    let counts = blk::handle_counts(&blk0.spec);
    for (h, n) in &counts {
        let doc = serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMHandle",
            // Calico names a handle by its lower-cased ID.
            "metadata": {"name": h.to_lowercase()},
            "spec": {"handleID": h, "block": {format!("10.{}.0.0/26", lab.k): n}, "deleted": false}
        });
        kubectl_stdin_ok(&["create", "-f", "-"], &doc.to_string());
    }
    lab.assert_check_clean().await;

    let ipam = lab.ipam(defaults()).await;
    let got = ipam.auto_assign(lab.req("new", &node, 1)).await.unwrap();
    assert_eq!(
        got.v4.ips[0].addr(),
        lab.net("10.48.0.2/32").addr(),
        "continues at the next free ordinal of the existing block"
    );
    let b = lab.blocks().await.remove(0);
    assert_eq!(lab.blocks().await.len(), 1, "no new block claimed");
    // Every field Calico wrote survives tortie's write (spec and metadata annotations).
    let before: serde_json::Value = block["spec"].clone();
    let after = serde_json::to_value(&b.spec).unwrap();
    for (k, v) in before.as_object().unwrap() {
        if ![
            "allocations",
            "unallocated",
            "attributes",
            "sequenceNumber",
            "sequenceNumberForAllocation",
        ]
        .contains(&k.as_str())
        {
            assert_eq!(after.get(k), Some(v), "spec.{k} changed");
        }
    }
    assert_eq!(
        after["attributes"][1], before["attributes"][1],
        "Calico's attribute entry kept as written"
    );
    assert_eq!(
        b.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("projectcalico.org/metadata"))
            .map(String::as_str),
        Some(r#"{"creationTimestamp":null}"#)
    );
    assert_eq!(
        b.spec.sequence_number,
        Some(1754042400000000003),
        "64-bit sequence numbers exact"
    );
    assert_eq!(
        b.spec.affinity_claim_time.as_deref(),
        Some("2026-08-01T10:00:00Z")
    );
    // Release Calico's pod address by its handle.
    let pod_handle = counts.keys().find(|h| h.starts_with("k8s-pod-network.")).unwrap();
    let released = ipam.release_by_handle(pod_handle).await.unwrap();
    assert_eq!(released, vec![lab.net("10.48.0.1/32").addr()]);
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn ipam_config_is_read_from_the_cluster() {
    let mut lab = Lab::new("ipam-config", 1).await;
    lab.pool("p", "10.48.0.0/26", Some(26), |_| {}).await;
    let node = lab.nodes[0].clone();
    let api: Api<IpamConfig> = Api::all_with(lab.client.clone(), &MODE.resource(CalicoKind::IPAMConfig));
    let before = api.get_opt("default").await.unwrap();
    if before.is_some() {
        eprintln!("IPAMConfig default exists (another test owns it): skipped");
        lab.cleanup().await;
        return;
    }
    let cfg = IpamConfig::new(
        "default",
        &MODE.resource(CalicoKind::IPAMConfig),
        IPAMConfigSpec {
            strict_affinity: true,
            auto_allocate_blocks: false,
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &cfg).await.unwrap();
    let ipam = Ipam::new(lab.client.clone(), MODE).await.unwrap();
    let got = ipam.auto_assign(lab.req("x", &node, 1)).await;
    api.delete("default", &DeleteParams::default()).await.unwrap();
    let got = got.unwrap();
    assert_eq!(got.v4.shortfall, Some(Shortfall::NoAutoAllocate), "{got:?}");
    assert!(
        got.v4
            .describe("IPv4")
            .contains("failed to find or claim a block")
    );
    lab.cleanup().await;
}

#[tokio::test]
async fn cli_show_check_release() {
    let mut lab = Lab::new("ipam-cli", 1).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let node = lab.nodes[0].clone();
    let ns = lab.prefix.clone();
    create_namespace(&lab.client, &ns, &[]).await;
    create_pod(&lab.client, &ns, "live", Some(&node), &[]).await;
    let ipam = lab.ipam(defaults()).await;
    let mut ips = vec![];
    for pod in ["live", "gone"] {
        let mut r = lab.req(pod, &node, 1);
        r.attrs = Attrs::pod(&node, &ns, pod);
        ips.push(ipam.auto_assign(r).await.unwrap().v4.ips[0].addr());
    }
    let (live, gone) = (ips[0].to_string(), ips[1].to_string());
    // The kubelet's part: the live pod shows the address its sandbox got.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(lab.client.clone(), &ns);
    let status = serde_json::json!({"status": {"podIP": live, "podIPs": [{"ip": live}]}});
    pods.patch_status("live", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let out = tortie(&["ipam", "show", "--show-blocks"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pool = lab.net("10.48.0.0/24").to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("| IP Pool") && l.contains(&pool) && l.contains(" 2 (1%) |")),
        "{text}"
    );
    let out = tortie(&["ipam", "show", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["cidr"] == pool.as_str() && r["inUse"] == 2)
    );

    // The pod-less allocation is a leak: check counts it and exits 1; --show-problem-ips
    // names it.
    let out = tortie(&["ipam", "check", "--crd-mode", "v1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        !text.contains(&format!("{gone} is allocated"))
            && text.contains("IPs that are allocated in IPAM but not actually in use"),
        "{text}"
    );
    let out = tortie(&["ipam", "check", "--crd-mode", "v1", "--show-problem-ips"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{gone} is allocated to pod {ns}/gone")),
        "{text}"
    );
    assert!(!text.contains(&format!("{live} is allocated")), "{text}");
    assert!(!text.contains(&format!("{live} is used by")), "{text}");
    assert!(text.contains("Check complete; found"), "{text}");

    // release refuses the live pod's address, releases it with --force and the leaked one as is.
    let out = tortie(&["ipam", "release", "--ip", &live]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still exists; use --force"),
        "{out:?}"
    );
    let out = tortie(&["ipam", "release", "--ip", &gone]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("Successfully released IP address {gone}"))
    );
    let out = tortie(&["ipam", "release", "--ip", &gone]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not assigned"),
        "{out:?}"
    );
    let out = tortie(&["ipam", "release", "--ip", &live, "--force"]);
    assert!(out.status.success(), "{out:?}");
    // Issue 15: the live pod still uses the address, which the allocator may now hand out again.
    let out = tortie(&["ipam", "check", "--crd-mode", "v1", "--show-problem-ips"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{live} is used by pod {ns}/live but not allocated in any IPAMBlock"
        )),
        "{text}"
    );
    let out = tortie(&["ipam", "check", "--crd-mode", "v1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "inUseWithoutAllocation" && p["ip"] == live.as_str() && p["pod"] == "live"),
        "{v}"
    );
    lab.assert_check_clean().await;
    delete_namespace(&lab.client, &ns, std::time::Duration::from_secs(60)).await;
    lab.cleanup().await;
}

#[tokio::test]
async fn steady_state_allocation_is_two_writes_and_no_reads() {
    let mut lab = Lab::new("ipam-perf", 1).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let node = lab.nodes[0].clone();
    let log = RequestLog::default();
    let ipam = ipam_engine(counting_client(log.clone()).await, MODE, defaults()).await;
    let labels: std::collections::BTreeMap<String, String> =
        [("tortie-e2e-lab".to_string(), lab.prefix.clone())].into();
    let req = |i: usize| {
        let mut r = lab.req(&format!("pod-{i}"), &node, 1);
        r.node_labels = Some(labels.clone());
        r
    };
    assert!(ipam.auto_assign(req(0)).await.unwrap().is_complete()); // claims the block
    let claim: Vec<String> = log
        .take_all()
        .into_iter()
        .filter(|r| !r.contains("watch="))
        .collect();
    eprintln!(
        "first allocation (block claim): {} requests: {claim:#?}",
        claim.len()
    );

    const N: usize = 40;
    let t = std::time::Instant::now();
    for i in 1..=N {
        assert!(ipam.auto_assign(req(i)).await.unwrap().is_complete());
    }
    let elapsed = t.elapsed();
    let reqs: Vec<String> = log
        .take_all()
        .into_iter()
        .filter(|r| !r.contains("watch="))
        .collect();
    let writes = reqs
        .iter()
        .filter(|r| r.starts_with("POST") || r.starts_with("PUT"))
        .count();
    let reads = reqs.iter().filter(|r| r.starts_with("GET")).count();
    eprintln!(
        "steady state: {N} allocations, {} requests ({writes} writes, {reads} reads), {:.1} allocations/s",
        reqs.len(),
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(reads, 0, "no reads in the steady state: {reqs:#?}");
    assert_eq!(
        writes,
        2 * N,
        "one handle write and one block write per allocation: {reqs:#?}"
    );
    assert_eq!(reqs.len(), 2 * N);

    let released = ipam
        .release_by_handle(&format!("{}-pod-1", lab.prefix))
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    let rel: Vec<String> = log
        .take_all()
        .into_iter()
        .filter(|r| !r.contains("watch="))
        .collect();
    eprintln!("release_by_handle: {} requests: {rel:#?}", rel.len());
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// Concurrent requests of one node through one engine (as the node agent serves them) share the
/// block write: each writes its own IPAMHandle, and the block is written once for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_on_one_node_share_one_block_write() {
    let mut lab = Lab::new("ipam-batch", 1).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let node = lab.nodes[0].clone();
    let log = RequestLog::default();
    let ipam = ipam_engine(counting_client(log.clone()).await, MODE, defaults()).await;
    let labels: std::collections::BTreeMap<String, String> =
        [("tortie-e2e-lab".to_string(), lab.prefix.clone())].into();
    let req = |i: usize| {
        let mut r = lab.req(&format!("pod-{i}"), &node, 1);
        r.node_labels = Some(labels.clone());
        r.new_handle = true;
        r
    };
    assert!(ipam.auto_assign(req(0)).await.unwrap().is_complete()); // claims the block
    log.take_all();

    const N: usize = 8;
    let got = futures::future::join_all((1..=N).map(|i| ipam.auto_assign(req(i)))).await;
    let mut ips = HashSet::new();
    for g in got {
        let g = g.unwrap();
        assert!(g.is_complete(), "{g:?}");
        assert!(ips.insert(g.v4.ips[0].addr()), "duplicate: {g:?}");
    }
    let reqs: Vec<String> = log
        .take_all()
        .into_iter()
        .filter(|r| !r.contains("watch="))
        .collect();
    let handle_creates = reqs
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("/ipamhandles"))
        .count();
    let block_writes = reqs
        .iter()
        .filter(|r| r.starts_with("PUT") && r.contains("/ipamblocks/"))
        .count();
    eprintln!("{N} concurrent allocations: {reqs:#?}");
    assert_eq!(handle_creates, N, "one IPAMHandle per request: {reqs:#?}");
    assert_eq!(block_writes, 1, "one block write for the whole batch: {reqs:#?}");
    assert_eq!(reqs.len(), N + 1, "nothing else, no read: {reqs:#?}");
    // Each handle counts its one address in the block.
    for h in lab.handles().await {
        if h.spec.handle_id.starts_with(&lab.prefix) {
            assert_eq!(h.spec.block.values().sum::<u64>(), 1, "{h:?}");
        }
    }
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn requested_pool_ignores_selector_and_empty_block_is_given_back() {
    // Scenario 29: a pool requested by name is used even though its nodeSelector does not match;
    // once its block empties, the affinity is released because the pool does not select the node.
    let mut lab = Lab::new("ipam-selector", 1).await;
    let pool = lab
        .pool("elsewhere", "10.48.0.0/24", Some(26), |s| {
            s.node_selector = Some("!all()".into())
        })
        .await;
    let node = lab.nodes[0].clone();
    let ipam = lab.ipam(defaults()).await;
    let e = ipam.auto_assign(lab.req("auto", &node, 1)).await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("no configured Calico pools for node {node}")),
        "{e}"
    );
    let mut r = lab.req("named", &node, 1);
    r.v4_pools = vec![pool];
    let got = ipam.auto_assign(r).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    assert_eq!(lab.blocks().await.len(), 1);
    ipam.release_by_handle(&format!("{}-named", lab.prefix))
        .await
        .unwrap();
    assert!(
        lab.blocks().await.is_empty(),
        "empty block of a pool that does not select the node is released"
    );
    assert!(lab.affinities().await.is_empty());
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn a_pool_is_used_the_moment_its_create_returns() {
    // A CNI ADD right after `kubectl apply` of a pool: the engine's watch of pools may not have
    // the new pool yet while it holds others. Each node gets its own pool, created just before
    // the node's first allocation, so every allocation races the watch.
    let mut lab = Lab::new("ipam-fresh-pool", 8).await;
    lab.pool("none", "10.48.255.0/24", Some(26), |s| {
        s.node_selector = Some("!all()".into())
    })
    .await;
    let ipam = lab.ipam(defaults()).await;
    for (i, node) in lab.nodes.clone().iter().enumerate() {
        let pool = lab
            .pool(&format!("p{i}"), &format!("10.48.{i}.0/24"), Some(26), |s| {
                s.node_selector = Some(format!("kubernetes.io/hostname == '{node}'"))
            })
            .await;
        // Labels given, as the agent gives them from its watch: no GET to wait on.
        let mut r = lab.req(&format!("h{i}"), node, 1);
        r.node_labels = Some([("kubernetes.io/hostname".to_string(), node.clone())].into());
        let got = ipam
            .auto_assign(r)
            .await
            .unwrap_or_else(|e| panic!("allocation on {node} right after creating {pool}: {e}"));
        assert!(got.is_complete(), "{got:?}");
        let ip = got.v4.ips[0].addr();
        assert!(
            lab.net(&format!("10.48.{i}.0/24")).contains(&ip),
            "{ip} is not from {pool}"
        );
    }
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn a_node_labelled_a_moment_ago_gets_the_pool_that_selects_it() {
    // The engine caches node labels; a node that failed for want of a label and is then labelled
    // must not wait for that cache to expire.
    let mut lab = Lab::new("ipam-relabel", 1).await;
    let node = lab.nodes[0].clone();
    lab.pool("rack", "10.48.0.0/24", Some(26), |s| {
        s.node_selector = Some("rack == 'r1'".into())
    })
    .await;
    let ipam = lab.ipam(defaults()).await;
    let e = ipam.auto_assign(lab.req("before", &node, 1)).await.unwrap_err();
    assert!(matches!(e, IpamError::NoPools(_)), "{e}");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(lab.client.clone());
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"rack": "r1"}}})),
        )
        .await
        .unwrap();
    let got = ipam
        .auto_assign(lab.req("after", &node, 1))
        .await
        .unwrap_or_else(|e| panic!("allocation on {node} right after it was labelled: {e}"));
    assert!(got.is_complete(), "{got:?}");
    assert!(lab.net("10.48.0.0/24").contains(&got.v4.ips[0].addr()));
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

#[tokio::test]
async fn v3_crd_mode_writes_native_shapes() {
    install_crds(repo_dir().join("crds/v3"));
    let client = client().await;
    let k = unique_octet();
    let prefix = unique_name("ipam-v3");
    let node = format!("{prefix}-n0");
    create_node(
        &client,
        &node,
        &[("tortie-e2e-lab", prefix.as_str())],
        None,
        &[],
        &[],
    )
    .await;
    let v3 = CrdMode::V3;
    let pools: Api<Pool> = Api::all_with(client.clone(), &v3.resource(CalicoKind::IPPool));
    let spec = IPPoolSpec {
        cidr: format!("10.{k}.0.0/24"),
        node_selector: Some(format!("tortie-e2e-lab == '{prefix}'")),
        ..Default::default()
    };
    pools
        .create(
            &PostParams::default(),
            &Pool::new(&prefix, &v3.resource(CalicoKind::IPPool), spec),
        )
        .await
        .unwrap();
    let ipam = ipam_engine(client.clone(), v3, defaults()).await;
    let mut r = AutoAssignRequest::new(&format!("{prefix}-h"), &node);
    r.num_v4 = 2;
    let got = ipam.auto_assign(r).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    let block = got.v4.ips[0].trunc();
    let affs: Api<Affinity> = Api::all_with(client.clone(), &v3.resource(CalicoKind::BlockAffinity));
    let a = affs.get(&names::affinity_name(&node, &block)).await.unwrap();
    assert_eq!(
        a.spec.deleted,
        Flag::Bool(false),
        "v3 stores deleted as a boolean"
    );
    assert_eq!(a.spec.state, "confirmed");
    let blocks: Api<Block> = Api::all_with(client.clone(), &v3.resource(CalicoKind::IPAMBlock));
    let b = blocks.get(&names::block_name(&block)).await.unwrap();
    assert_eq!(b.spec.host(), Some(node.as_str()));
    assert_eq!(
        ipam.release_by_handle(&format!("{prefix}-h"))
            .await
            .unwrap()
            .len(),
        2
    );
    let handles: Api<Handle> = Api::all_with(client.clone(), &v3.resource(CalicoKind::IPAMHandle));
    assert!(
        handles
            .get_opt(&names::handle_name(&format!("{prefix}-h")))
            .await
            .unwrap()
            .is_none()
    );
    let dp = DeleteParams::default();
    let _ = blocks.delete(&names::block_name(&block), &dp).await;
    let _ = affs.delete(&names::affinity_name(&node, &block), &dp).await;
    let _ = pools.delete(&prefix, &dp).await;
    delete_node(&client, &node).await;
}

/// Issue 15: handle IDs that differ only in case are distinct handles (Calico's lower-cased
/// names made them share one object, and one leaked), and a handle Calico wrote for a mixed-case
/// ID under its lower-cased name is still found, reused by a repeated ADD and released.
#[tokio::test]
async fn handle_ids_differing_in_case_and_calicos_lower_cased_handles() {
    let mut lab = Lab::new("ipam-case", 1).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let node = lab.nodes[0].clone();
    let ipam = lab.ipam(defaults()).await;
    let id = |s: &str| format!("{}-{s}", lab.prefix);
    let first = |r: Result<tortie::ipam::AutoAssignResult, IpamError>| r.unwrap().v4.ips[0].addr();
    let a = first(ipam.auto_assign(lab.req("Case", &node, 1)).await);
    let b = first(ipam.auto_assign(lab.req("case", &node, 1)).await);
    assert_ne!(a, b);
    assert_eq!(ipam.ips_by_handle(&id("Case")).await.unwrap(), vec![a]);
    assert_eq!(ipam.ips_by_handle(&id("case")).await.unwrap(), vec![b]);
    lab.assert_check_clean().await;
    assert_eq!(ipam.release_by_handle(&id("Case")).await.unwrap(), vec![a]);
    assert_eq!(ipam.ips_by_handle(&id("case")).await.unwrap(), vec![b]);
    lab.assert_check_clean().await;
    assert_eq!(ipam.release_by_handle(&id("case")).await.unwrap(), vec![b]);

    // Move a mixed-case ID's handle to where Calico would have written it.
    let legacy_id = id("Legacy");
    let c = first(ipam.auto_assign(lab.req("Legacy", &node, 1)).await);
    let handles: Api<Handle> = Api::all_with(lab.client.clone(), &MODE.resource(CalicoKind::IPAMHandle));
    let ours_name = names::handle_name(&legacy_id);
    let calico_name = legacy_id.to_lowercase();
    assert_ne!(ours_name, calico_name);
    let ours = handles.get(&ours_name).await.unwrap();
    handles
        .delete(&ours_name, &DeleteParams::default())
        .await
        .unwrap();
    let moved = Handle::new(
        &calico_name,
        &MODE.resource(CalicoKind::IPAMHandle),
        ours.spec.clone(),
    );
    handles.create(&PostParams::default(), &moved).await.unwrap();
    // A fresh engine (nothing cached), as a CNI process is.
    let fresh = lab.ipam(defaults()).await;
    assert_eq!(fresh.ips_by_handle(&legacy_id).await.unwrap(), vec![c]);
    let mut again = lab.req("Legacy", &node, 1);
    again.new_handle = true;
    assert!(
        matches!(fresh.auto_assign(again).await, Err(IpamError::HandleExists(_))),
        "a repeated ADD must find Calico's handle, not make a second one"
    );
    assert!(handles.get_opt(&ours_name).await.unwrap().is_none());
    // The lower-case ID that Calico's name spells is another ID: it does not see that handle.
    assert!(fresh.ips_by_handle(&calico_name).await.unwrap().is_empty());
    assert_eq!(fresh.release_by_handle(&legacy_id).await.unwrap(), vec![c]);
    assert!(handles.get_opt(&calico_name).await.unwrap().is_none());
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// Issue 15: with a pool inside another, `tortie ipam show` counts each address for the pool that
/// owns its block, never for the wider pool as well.
#[tokio::test]
async fn nested_pools_count_each_address_once_in_ipam_show() {
    let mut lab = Lab::new("ipam-nested", 1).await;
    let outer = lab.pool("outer", "10.48.0.0/20", Some(26), |_| {}).await;
    let inner = lab
        .pool("inner", "10.48.8.0/24", Some(28), |s| {
            s.assignment_mode = Some("Manual".into())
        })
        .await;
    let node = lab.nodes[0].clone();
    let ipam = lab.ipam(defaults()).await;
    let mut r = lab.req("in", &node, 3);
    r.v4_pools = vec![inner.clone()];
    let got = ipam.auto_assign(r).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    let mut r = lab.req("out", &node, 2);
    r.v4_pools = vec![outer.clone()];
    assert!(ipam.auto_assign(r).await.unwrap().is_complete());

    let out = tortie(&["ipam", "show", "--show-blocks", "-o", "json", "--crd-mode", "v1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let pool_row = |name: &str| {
        rows.iter()
            .find(|r| r["grouping"] == "IP Pool" && r["owner"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {v}"))
    };
    assert_eq!(pool_row(&outer)["inUse"], 2, "{v}");
    assert_eq!(pool_row(&inner)["inUse"], 3, "{v}");
    // The inner pool's /28 block is listed once, under the inner pool.
    let inner_block = got.v4.ips[0].trunc().to_string();
    assert_eq!(
        rows.iter().filter(|r| r["cidr"] == inner_block.as_str()).count(),
        1,
        "{v}"
    );
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// Issue 15: a pool's block size changing while its blocks exist (admission forbids an update,
/// but a delete and re-create, or Calico's own CRDs, still allow it) must never produce
/// overlapping blocks or an address handed out twice. The engine skips candidate blocks that
/// overlap existing ones, assigns a specific address in the block that holds it whatever its
/// size, refuses (naming both blocks) the one block it cannot create, and releases by the block
/// that really holds the address.
#[tokio::test]
async fn block_size_changed_under_existing_blocks_never_overlaps() {
    let mut lab = Lab::new("ipam-relayout", 2).await;
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let pools: Api<Pool> = Api::all_with(lab.client.clone(), &MODE.resource(CalicoKind::IPPool));
    let pool = lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let mut handed: HashSet<IpAddr> = HashSet::new();
    let mut take = |ips: Vec<IpAddr>| {
        for ip in ips {
            assert!(handed.insert(ip), "{ip} handed out twice");
        }
    };

    // 1. Blocks of 26: a's block X.
    let ipam = lab.ipam(defaults()).await;
    let got = ipam.auto_assign(lab.req("a1", &a, 2)).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    take(got.all_ips().collect());
    let x: IpNet = lab.blocks().await[0].spec.cidr.parse().unwrap();
    assert_eq!(x.prefix_len(), 26);

    // 2. The same pool re-created with blockSize 25 over X (a fresh engine: another process).
    let recreate = |bs: i32| {
        let pools = pools.clone();
        let pool = pool.clone();
        let spec = IPPoolSpec {
            cidr: lab.net("10.48.0.0/24").to_string(),
            block_size: Some(bs),
            node_selector: Some(format!("tortie-e2e-lab == '{}'", lab.prefix)),
            ..Default::default()
        };
        async move {
            pools.delete(&pool, &DeleteParams::default()).await.unwrap();
            for _ in 0..100 {
                if pools.get_opt(&pool).await.unwrap().is_none() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let p = Pool::new(&pool, &MODE.resource(CalicoKind::IPPool), spec);
            pools.create(&PostParams::default(), &p).await.unwrap();
        }
    };
    recreate(25).await;
    let ipam = lab.ipam(defaults()).await;
    let req_ip = |ip: IpAddr, h: &str, host: &str| AssignIpRequest {
        ip,
        handle_id: format!("{}-{h}", lab.prefix),
        attrs: Attrs::default().with("node", host),
        hostname: host.into(),
        intended_use: tortie::ipam::AllowedUse::Workload,
    };
    // An address of X goes into X (not into a new /25 over it).
    let in_x = tortie::ipam::cidr::address_of(&x, 40);
    ipam.assign_ip(req_ip(in_x, "ip1", &b)).await.unwrap();
    take(vec![in_x]);
    // An address next to X: its /25 would cover X, so it is refused, naming both blocks.
    let sibling = tortie::ipam::cidr::net_of(x.network(), 25);
    let next_to_x = (0..128)
        .map(|o| tortie::ipam::cidr::address_of(&sibling, o))
        .find(|ip| !x.contains(ip))
        .unwrap();
    let e = ipam.assign_ip(req_ip(next_to_x, "ip2", &b)).await.unwrap_err();
    assert!(matches!(e, IpamError::BlockOverlap(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("IPAMBlock {sibling}")) && msg.contains(&format!("existing IPAMBlock {x}")),
        "{msg}"
    );
    // Automatic assignment claims the /25 that overlaps nothing.
    let got = ipam.auto_assign(lab.req("b1", &b, 3)).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    take(got.all_ips().collect());
    assert!(got.all_ips().all(|ip| !sibling.contains(&ip)), "{got:?}");

    // 3. Re-created again with blockSize 28: the free /26 next to X is cut into /28s, nothing
    // overlaps X or the /25.
    recreate(28).await;
    let ipam = lab.ipam(defaults()).await;
    let got = ipam.auto_assign(lab.req("a2", &a, 20)).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    assert!(got.v4.ips.iter().all(|ip| ip.prefix_len() == 28), "{got:?}");
    take(got.all_ips().collect());
    // The pool is now full for a: one more address can only be borrowed or fail, never overlap.
    let got = ipam.auto_assign(lab.req("a3", &a, 40)).await.unwrap();
    take(got.all_ips().collect());

    let blocks = lab.blocks().await;
    let nets: Vec<IpNet> = blocks.iter().map(|b| b.spec.cidr.parse().unwrap()).collect();
    for (i, n) in nets.iter().enumerate() {
        for m in &nets[i + 1..] {
            assert!(
                !tortie::ipam::cidr::overlaps(n, m),
                "blocks {n} and {m} overlap: {nets:?}"
            );
        }
    }
    let stored: Vec<IpAddr> = Ipam::allocations(&blocks).into_iter().map(|x| x.ip).collect();
    let unique: HashSet<IpAddr> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "an address stored twice: {stored:?}");
    assert_eq!(unique, handed);
    // Releasing X's address by IP finds X although the pool's blocks are /28 now.
    let out = ipam.release_ips(&[ReleaseOptions::ip(in_x)]).await.unwrap();
    assert_eq!(out.released, vec![in_x]);
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// An explicit address in a pool created a moment ago, asked of an engine that was already
/// running (its pool watch may not have the pool yet, as for a pod whose `ipAddrs` names an
/// address of a pool just applied): assigned, not refused as in no pool.
#[tokio::test]
async fn an_explicit_address_in_a_pool_just_created_is_assigned() {
    let mut lab = Lab::new("ipam-newpool", 1).await;
    let ipam = lab.ipam(defaults()).await;
    let node = lab.nodes[0].clone();
    for i in 0..8 {
        let cidr = format!("10.48.{i}.0/24");
        lab.pool(&format!("new{i}"), &cidr, Some(26), |_| {}).await;
        let ip = lab.net(&format!("10.48.{i}.7/32")).addr();
        ipam.assign_ip(AssignIpRequest {
            ip,
            handle_id: format!("{}-new{i}", lab.prefix),
            attrs: Attrs::default().with("node", &node),
            hostname: node.clone(),
            intended_use: tortie::ipam::AllowedUse::Workload,
        })
        .await
        .unwrap_or_else(|e| panic!("{ip} in the pool created just before: {e}"));
        ipam.release_by_handle(&format!("{}-new{i}", lab.prefix))
            .await
            .unwrap();
    }
    lab.cleanup().await;
}

/// IPReservations (Calico's semantics): reserved addresses are never auto-assigned, a block
/// wholly inside them is never claimed, a reserved ordinal stays free in its block (nothing is
/// written for it, so Calico's tools read the same block), and an explicit address is still
/// assigned (Calico's AssignIP does not look at reservations).
#[tokio::test]
async fn ip_reservations_are_never_auto_assigned() {
    use tortie::api::{IPReservationSpec, Reservation};
    let mut lab = Lab::new("ipam-reserved", 1).await;
    // Four blocks of four addresses.
    lab.pool("res", "10.48.0.0/28", Some(30), |_| {}).await;
    let node = lab.nodes[0].clone();
    let ar = MODE.resource(CalicoKind::IPReservation);
    let api: Api<Reservation> = Api::all_with(lab.client.clone(), &ar);
    let name = format!("{}-res", lab.prefix);
    let reserved = [
        lab.net("10.48.0.0/30").to_string(),
        lab.net("10.48.0.5/32").addr().to_string(),
        lab.net("10.48.0.9/32").to_string(),
        lab.net("10.48.0.13/32").addr().to_string(),
    ];
    let r = Reservation::new(
        &name,
        &ar,
        IPReservationSpec {
            reserved_cidrs: Some(reserved.to_vec()),
        },
    );
    api.create(&PostParams::default(), &r).await.unwrap();
    let ipam = lab.ipam(defaults()).await;
    let is_reserved = |ip: IpAddr| {
        reserved
            .iter()
            .any(|c| tortie::ipam::reserved::parse_entry(c).unwrap().contains(&ip))
    };
    let got = ipam.auto_assign(lab.req("a", &node, 10)).await.unwrap();
    assert_eq!(got.v4.ips.len(), 9, "16 addresses, 7 reserved: {:?}", got.v4.ips);
    assert!(got.v4.shortfall.is_some());
    for ip in &got.v4.ips {
        assert!(!is_reserved(ip.addr()), "{ip} is reserved");
    }
    let blocks = lab.blocks().await;
    assert_eq!(blocks.len(), 3, "the wholly reserved block is never claimed");
    assert!(
        blocks
            .iter()
            .all(|b| b.spec.cidr != lab.net("10.48.0.0/30").to_string())
    );
    // The reserved address stays free, in its block's unallocated list.
    let five: IpAddr = lab.net("10.48.0.5/32").addr();
    let b = block_of(&blocks, five);
    assert_eq!(b.spec.allocations[1], None);
    assert!(b.spec.unallocated.contains(&1));
    assert_eq!(ipam.reserved().count_in(&lab.net("10.48.0.0/28")), 7);
    let out = tortie(&["ipam", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = text
        .lines()
        .find(|l| l.contains(&format!(" {} ", lab.pool_name("res"))))
        .unwrap_or_else(|| panic!("no row for the pool in:\n{text}"));
    // IN USE 9, RESERVED 7 (44%), FREE 0: the pool's 16 addresses are all taken or reserved.
    assert!(
        row.contains(" 9 (56%) | ") && row.contains(" 7 (44%) | "),
        "{row}"
    );
    assert!(row.contains(" 0 (0%) |"), "{row}");
    // An explicit address inside a reservation is still assigned, as in Calico.
    ipam.assign_ip(AssignIpRequest {
        ip: five,
        handle_id: format!("{}-b", lab.prefix),
        attrs: Attrs::default().with("node", &node),
        hostname: node.clone(),
        intended_use: tortie::ipam::AllowedUse::Workload,
    })
    .await
    .unwrap();
    ipam.release_by_handle(&format!("{}-a", lab.prefix))
        .await
        .unwrap();
    ipam.release_by_handle(&format!("{}-b", lab.prefix))
        .await
        .unwrap();
    lab.assert_check_clean().await;
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    lab.cleanup().await;
}

/// An engine as the node agent runs it: the host's next block is claimed ahead.
async fn claiming_ahead(lab: &Lab, cfg: IPAMConfigSpec) -> Ipam {
    Ipam::new_with(
        lab.client.clone(),
        MODE,
        tortie::ipam::IpamOptions {
            config_override: Some(cfg),
            claim_ahead: true,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// The host's blocks, after waiting up to 10 s for there to be `want` of them.
async fn wait_for_blocks(lab: &Lab, host: &str, want: usize) -> Vec<Block> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mine: Vec<Block> = lab
            .blocks()
            .await
            .into_iter()
            .filter(|b| b.spec.host() == Some(host))
            .collect();
        if mine.len() >= want || std::time::Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The node agent's engine claims the host's next block in the background once fewer free
/// addresses are left than its recent load takes (one request at a time: fewer than 2), and only
/// one: the allocations that follow find it ready, no request claims, nothing more is claimed.
/// A node starting claims its first block before any pod asks, once.
#[tokio::test]
async fn the_next_block_is_claimed_ahead_of_the_requests_that_need_it() {
    let mut lab = Lab::new("ipam-ahead", 2).await;
    lab.pool("p", "10.48.0.0/24", Some(28), |_| {}).await;
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
    let ipam = claiming_ahead(&lab, defaults()).await;

    // A node starting: its first block, before any request.
    assert_eq!(lab.blocks().await.len(), 0);
    let first = ipam.claim_first_blocks(&b).await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let mine = wait_for_blocks(&lab, &b, 1).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].spec.cidr, first[0].to_string());
    let aff = lab.affinities().await;
    assert!(
        aff.iter()
            .any(|x| x.spec.node == b && x.spec.cidr == first[0].to_string() && x.spec.state == "confirmed"),
        "{aff:?}"
    );
    // Again (an agent restarting): the host has free addresses, nothing is claimed.
    assert!(ipam.claim_first_blocks(&b).await.unwrap().is_empty());
    // Its first pod uses that block.
    let got = ipam.auto_assign(lab.req("b0", &b, 1)).await.unwrap();
    assert!(first[0].contains(&got.v4.ips[0].addr()), "{got:?}");

    // One request at a time on a /28 (watermark 3): 13 addresses leave 3 free, nothing claimed yet.
    let mut ips = BTreeSet::new();
    for i in 0..13 {
        let got = ipam.auto_assign(lab.req(&format!("a{i}"), &a, 1)).await.unwrap();
        assert!(got.is_complete(), "{got:?}");
        ips.insert(got.v4.ips[0].addr());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(wait_for_blocks(&lab, &a, 1).await.len(), 1, "claimed too early");
    // The 14th leaves 2 free: the next block is claimed in the background.
    let got = ipam.auto_assign(lab.req("a13", &a, 1)).await.unwrap();
    ips.insert(got.v4.ips[0].addr());
    let mine = wait_for_blocks(&lab, &a, 2).await;
    assert_eq!(mine.len(), 2, "the next block was claimed ahead");
    let confirmed = lab
        .affinities()
        .await
        .into_iter()
        .filter(|x| x.spec.node == a && x.spec.state == "confirmed")
        .count();
    assert_eq!(confirmed, 2);
    // The rest of the first block and most of the second (4 left free): no further claim.
    for i in 14..28 {
        let got = ipam.auto_assign(lab.req(&format!("a{i}"), &a, 1)).await.unwrap();
        assert!(got.is_complete(), "{got:?}");
        assert!(ips.insert(got.v4.ips[0].addr()), "handed out twice");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        wait_for_blocks(&lab, &a, 2).await.len(),
        2,
        "only the one block ahead"
    );
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// Claiming ahead obeys the rules a request's claim obeys: nothing at maxBlocksPerHost, nothing
/// with autoAllocateBlocks off (neither the next block nor a starting node's first).
#[tokio::test]
async fn no_block_is_claimed_ahead_where_a_request_could_not_claim() {
    let mut lab = Lab::new("ipam-ahead-rules", 2).await;
    let pool = lab.pool("p", "10.48.0.0/24", Some(28), |_| {}).await;
    let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());

    // maxBlocksPerHost 1: the block fills up, no second one is claimed.
    let ipam = claiming_ahead(
        &lab,
        IPAMConfigSpec {
            max_blocks_per_host: Some(1),
            ..defaults()
        },
    )
    .await;
    for i in 0..16 {
        let got = ipam.auto_assign(lab.req(&format!("a{i}"), &a, 1)).await.unwrap();
        assert!(got.is_complete(), "{got:?}");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(wait_for_blocks(&lab, &a, 2).await.len(), 1, "maxBlocksPerHost 1");
    let got = ipam.auto_assign(lab.req("a16", &a, 1)).await.unwrap();
    assert_eq!(got.v4.shortfall, Some(Shortfall::BlockLimit { limit: 1 }));

    // autoAllocateBlocks off: b's block comes from an explicit address (which claims it),
    // automatic assignment uses it up, and no other block is claimed.
    let ipam = claiming_ahead(
        &lab,
        IPAMConfigSpec {
            auto_allocate_blocks: false,
            ..defaults()
        },
    )
    .await;
    assert!(
        ipam.claim_first_blocks(&b).await.unwrap().is_empty(),
        "no first block either"
    );
    let free: Vec<IpNet> = {
        let taken: Vec<IpNet> = lab
            .blocks()
            .await
            .iter()
            .map(|x| x.spec.cidr.parse().unwrap())
            .collect();
        (0..16)
            .map(|i| tortie::ipam::cidr::nth_block(&lab.net("10.48.0.0/24"), 28, i))
            .filter(|c| !taken.contains(c))
            .collect()
    };
    let ip = tortie::ipam::cidr::address_of(&free[0], 0);
    ipam.assign_ip(AssignIpRequest {
        ip,
        handle_id: format!("{}-explicit", lab.prefix),
        attrs: Attrs::default().with("node", &b),
        hostname: b.clone(),
        intended_use: tortie::ipam::AllowedUse::Workload,
    })
    .await
    .unwrap();
    for i in 0..15 {
        let got = ipam.auto_assign(lab.req(&format!("b{i}"), &b, 1)).await.unwrap();
        assert!(got.is_complete(), "{pool}: {got:?}");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        wait_for_blocks(&lab, &b, 2).await.len(),
        1,
        "autoAllocateBlocks off"
    );
    lab.assert_check_clean().await;
    lab.cleanup().await;
}

/// The layout guard after a block's creation runs beside the affinity's confirmation: a claim
/// that created a block overlapping one it did not know of (its listing was stale, as a racing
/// process with another view of the pools would have it) gives the new block and its affinity
/// back, confirmed or not, and the request claims a block that overlaps nothing.
#[tokio::test]
async fn a_claim_that_finds_an_overlap_after_creating_its_block_gives_it_back() {
    let mut lab = Lab::new("ipam-guard", 1).await;
    lab.pool("p", "10.48.0.0/24", Some(26), |_| {}).await;
    let a = lab.nodes[0].clone();
    let ipam = lab.ipam(defaults()).await;
    // The engine lists the blocks for a's first claim (none exist yet)...
    assert_eq!(ipam.warm_host(&a).await.unwrap(), 0);
    // ...then a /27 is created inside the /26 that a claims first.
    let net = lab.net("10.48.0.0/24");
    let first = tortie::ipam::cidr::nth_block(&net, 26, tortie::ipam::allocator::start_index(&a, 4));
    let inner = IpNet::new(first.network(), 27).unwrap();
    write_block(&lab.client, &inner.to_string(), None, &[]).await;

    let got = ipam.auto_assign(lab.req("x", &a, 1)).await.unwrap();
    assert!(got.is_complete(), "{got:?}");
    let ip = got.v4.ips[0].addr();
    assert!(!first.contains(&ip), "{ip} is in the overlapping block {first}");
    let blocks = lab.blocks().await;
    let nets: Vec<IpNet> = blocks.iter().map(|b| b.spec.cidr.parse().unwrap()).collect();
    assert!(
        !nets.contains(&first),
        "the overlapping block was given back: {nets:?}"
    );
    assert_eq!(nets.len(), 2, "{nets:?}");
    for (i, n) in nets.iter().enumerate() {
        for m in &nets[i + 1..] {
            assert!(!tortie::ipam::cidr::overlaps(n, m), "{n} and {m} overlap");
        }
    }
    let affs = lab.affinities().await;
    assert_eq!(affs.len(), 1, "only the block kept has an affinity: {affs:?}");
    assert_eq!(affs[0].spec.state, "confirmed");
    assert!(IpNet::new(ip, 26).unwrap().trunc().to_string() == affs[0].spec.cidr);
    lab.cleanup().await;
}
