//! The bad-input corpus of the CNI plugin, walked against the real control plane with the real
//! `tortie-ipam` binary run as a container runtime runs it:
//! - `tests/bad-inputs/annotations/`: pod and namespace annotations (and `CNI_ARGS IP=`);
//! - `tests/bad-inputs/cni/`: network configs and CNI environments.
//!
//! Every case must fail with its CNI error code and a message naming the annotation or field,
//! and allocate nothing. The file format is described in `tests/bad-inputs/README.md`.
//! Pools made here are `assignmentMode: Manual` with CIDRs unique to this process (so parallel
//! tests never allocate from them by accident) and are deleted at the end.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::cni::{self, Out, handle, plugin, pod_args, unique_cidr};
use support::*;
use tortie::api::{CalicoKind, CrdMode, Pool};

/// Runs the plugin with the CNI environment and `stdin`, the way a runtime does.
async fn exec(command: &str, container: &str, args: &str, stdin: &[u8]) -> Out {
    cni::exec(
        &[plugin().to_str().unwrap()],
        command,
        container,
        args,
        stdin,
        &[],
    )
    .await
}

/// An IPv6 /120 unique to this process, in fd74::/16.
fn unique_v6() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let text = format!("fd74:{:x}:{:x}::/120", std::process::id() & 0xffff, n);
    text.parse::<IpNet>().unwrap().to_string()
}

/// The `n`-th address of a CIDR.
fn nth(cidr: &str, n: usize) -> String {
    let net: IpNet = cidr.parse().unwrap();
    tortie::cni::gateway::nth(net, n).unwrap().to_string()
}

/// Replaces `$NAME` placeholders, longest names first (`$OK_CIDR` before `$OK`).
fn substitute(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut keys: Vec<&&str> = vars.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let mut out = text.to_string();
    for k in keys {
        out = out.replace(&format!("${k}"), &vars[*k]);
    }
    out
}

struct Ctx {
    client: kube::Client,
    mode: CrdMode,
    made: Vec<String>,
}

impl Ctx {
    async fn new() -> Ctx {
        let client = client().await;
        let mode = CrdMode::detect(&client).await.unwrap();
        Ctx {
            client,
            mode,
            made: vec![],
        }
    }

    fn pools(&self) -> Api<Pool> {
        Api::all_with(self.client.clone(), &self.mode.resource(CalicoKind::IPPool))
    }

    /// A Manual pool with a unique name; `extra` holds more spec fields.
    async fn pool(&mut self, prefix: &str, cidr: &str, block_size: i32, extra: Value) -> String {
        let name = manual_pool(&self.client, self.mode, prefix, cidr, block_size, &extra).await;
        self.made.push(name.clone());
        name
    }

    /// Every (address, handle) allocated in the cluster.
    async fn allocations(&self) -> Vec<(IpAddr, Option<String>)> {
        allocations(&self.client, self.mode)
            .await
            .into_iter()
            .map(|a| (a.ip, a.handle))
            .collect()
    }

    /// Panics unless `handle` holds no address and has no IPAMHandle.
    async fn assert_nothing_held(&self, handle: &str, what: &str) {
        let ips: Vec<IpAddr> = self
            .allocations()
            .await
            .into_iter()
            .filter(|(_, h)| h.as_deref() == Some(handle))
            .map(|(ip, _)| ip)
            .collect();
        let exists = live_handle(&self.client, self.mode, handle).await.is_some();
        assert!(
            ips.is_empty() && !exists,
            "{what}: handle {handle} holds {ips:?} (IPAMHandle exists: {exists})"
        );
    }

    async fn done(&mut self) {
        for name in std::mem::take(&mut self.made) {
            // Pools held by the test finalizer are released first.
            let _ = self
                .pools()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            match self.pools().delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => panic!("delete IPPool {name}: {e}"),
            }
        }
    }
}

/// One annotation case (YAML after the `#` header).
#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct AnnotationCase {
    pod: BTreeMap<String, String>,
    namespace: BTreeMap<String, String>,
    ipam: BTreeMap<String, Value>,
    /// Appended to `CNI_ARGS`.
    args: Option<String>,
}

#[tokio::test]
async fn annotation_corpus_fails_naming_the_annotation_and_allocates_nothing() {
    let mut ctx = Ctx::new().await;
    let node = unique_name("bad-ann-node");
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;

    // Fixtures the cases name with `$PLACEHOLDERS`.
    let ok_cidr = unique_cidr(24);
    let ok = ctx.pool("bad-ok", &ok_cidr, 26, json!({})).await;
    let off_cidr = unique_cidr(24);
    let off = ctx
        .pool("bad-off", &off_cidr, 26, json!({"disabled": true}))
        .await;
    let del_cidr = unique_cidr(24);
    let del = ctx.pool("bad-del", &del_cidr, 26, json!({})).await;
    let tiny_cidr = unique_cidr(30);
    let tiny = ctx.pool("bad-tiny", &tiny_cidr, 30, json!({})).await;
    let lb_cidr = unique_cidr(24);
    let lb = ctx
        .pool("bad-lb", &lb_cidr, 26, json!({"allowedUses": ["LoadBalancer"]}))
        .await;
    let v6_cidr = unique_v6();
    let v6 = ctx.pool("bad-v6", &v6_cidr, 122, json!({})).await;
    let v6off_cidr = unique_v6();
    let v6off = ctx
        .pool("bad-v6off", &v6off_cidr, 122, json!({"disabled": true}))
        .await;
    // A pool being deleted: a finalizer of the test's own holds it in that state.
    ctx.pools()
        .patch(
            &del,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["tortie.test/hold"]}})),
        )
        .await
        .unwrap();
    ctx.pools().delete(&del, &DeleteParams::default()).await.unwrap();

    // The holder of `$TAKEN`, and pods filling `$TINY`.
    let fix_ns = unique_name("bad-ann-fixtures");
    create_namespace(&ctx.client, &fix_ns, &[]).await;
    let taken = nth(&ok_cidr, 10);
    let taken_json = format!(r#"["{taken}"]"#);
    create_pod(
        &ctx.client,
        &fix_ns,
        "holder",
        Some(&node),
        &[("cni.projectcalico.org/ipAddrs", &taken_json)],
    )
    .await;
    let mut fixture_cids = vec![("holder".to_string(), unique_name("holder"))];
    let tiny_ann = format!(r#"["{tiny}"]"#);
    for i in 0..4 {
        let pod = format!("filler-{i}");
        create_pod(
            &ctx.client,
            &fix_ns,
            &pod,
            Some(&node),
            &[("cni.projectcalico.org/ipv4pools", &tiny_ann)],
        )
        .await;
        fixture_cids.push((pod, unique_name("filler")));
    }
    let mut fixture_ips = vec![];
    for (pod, cid) in &fixture_cids {
        let stdin = serde_json::to_vec(&cni::conf(&node, &json!({}))).unwrap();
        let out = exec("ADD", cid, &pod_args(&fix_ns, pod), &stdin).await;
        assert!(out.ok, "fixture {pod}: {} {}", out.stdout, out.stderr);
        fixture_ips.push(out.json["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert!(
        fixture_ips[0].starts_with(&format!("{taken}/")),
        "{fixture_ips:?}"
    );

    let ok_half = ok_cidr.replace("/24", "/25");
    let vars: BTreeMap<&str, String> = [
        ("OK", ok.clone()),
        ("OK_CIDR", ok_cidr.clone()),
        ("OK_HALF", ok_half),
        ("OK_IP", nth(&ok_cidr, 20)),
        ("OK_IP2", nth(&ok_cidr, 21)),
        ("OFF", off),
        ("OFF_IP", nth(&off_cidr, 5)),
        ("DEL", del),
        ("DEL_IP", nth(&del_cidr, 5)),
        ("TINY", tiny),
        ("TINY_CIDR", tiny_cidr.clone()),
        ("LB", lb),
        ("LB_IP", nth(&lb_cidr, 5)),
        ("V6", v6),
        ("V6_CIDR", v6_cidr.clone()),
        ("V6_IP", nth(&v6_cidr, 5)),
        ("V6_IP2", nth(&v6_cidr, 6)),
        ("V6OFF", v6off),
        ("TAKEN", taken),
        ("NODE", node.clone()),
    ]
    .into_iter()
    .collect();

    let files = corpus::files("annotations", Some("yaml"), 50);
    let mut failures = vec![];
    let mut namespaces = vec![];
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let text = substitute(&std::fs::read_to_string(f).unwrap(), &vars);
        let h = corpus::header(&text);
        let code: u64 = h["code"][0].parse().unwrap();
        let expects = h.get("expect").cloned().unwrap_or_default();
        assert!(!expects.is_empty(), "{name}: no `# expect:` line");
        let case: AnnotationCase = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ns = unique_name(&format!("bad-ann-{}", &name[..3]));
        let ns_ann: Vec<(&str, &str)> = case
            .namespace
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        create_namespace(&ctx.client, &ns, &ns_ann).await;
        namespaces.push(ns.clone());
        let pod_ann: Vec<(&str, &str)> = case.pod.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        create_pod(&ctx.client, &ns, "pod", Some(&node), &pod_ann).await;
        let ipam = serde_json::to_value(&case.ipam).unwrap();
        let stdin = serde_json::to_vec(&cni::conf(&node, &ipam)).unwrap();
        let mut args = pod_args(&ns, "pod");
        if let Some(a) = &case.args {
            args = format!("{args};{a}");
        }
        let cid = unique_name("bad-ann");
        let out = exec("ADD", &cid, &args, &stdin).await;
        let msg = out.json["msg"].as_str().unwrap_or("");
        if out.ok || out.json["code"].as_u64() != Some(code) {
            failures.push(format!(
                "{name}: expected error {code}, got exit ok={} {}\n  stderr: {}",
                out.ok,
                out.stdout.trim(),
                out.stderr.lines().last().unwrap_or("")
            ));
        } else if let Some(missing) = expects.iter().find(|e| !msg.contains(e.as_str())) {
            failures.push(format!("{name}: {missing:?} not in message {msg:?}"));
        } else if !out.json["details"].is_string() || out.json.get("ips").is_some() {
            failures.push(format!("{name}: malformed error object {}", out.json));
        }
        ctx.assert_nothing_held(&handle(&cid), &name).await;
        // The runtime's DEL after a failed ADD succeeds.
        let del_stdin = serde_json::to_vec(&cni::conf(&node, &json!({}))).unwrap();
        let d = exec("DEL", &cid, &pod_args(&ns, "pod"), &del_stdin).await;
        if !d.ok {
            failures.push(format!("{name}: DEL after the failed ADD failed: {}", d.stdout));
        }
    }

    // The fixtures still hold exactly what they had: no case took or released anything.
    let now: Vec<(IpAddr, Option<String>)> = ctx.allocations().await;
    for ((pod, cid), ip) in fixture_cids.iter().zip(&fixture_ips) {
        let ip: IpNet = ip.parse().unwrap();
        let held: Vec<IpAddr> = now
            .iter()
            .filter(|(_, h)| h.as_deref() == Some(handle(cid).as_str()))
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(held, vec![ip.addr()], "fixture {pod}");
    }
    for (pod, cid) in &fixture_cids {
        let stdin = serde_json::to_vec(&cni::conf(&node, &json!({}))).unwrap();
        assert!(exec("DEL", cid, &pod_args(&fix_ns, pod), &stdin).await.ok);
        ctx.assert_nothing_held(&handle(cid), pod).await;
    }
    eprintln!("annotation corpus: {} cases", files.len());
    assert!(
        failures.is_empty(),
        "{} of {} annotation cases failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
    ctx.done().await;
    for ns in namespaces.iter().chain([&fix_ns]) {
        let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
    delete_node(&ctx.client, &node).await;
}

#[tokio::test]
async fn cni_config_corpus_is_refused_naming_the_key() {
    let ctx = Ctx::new().await;
    let node = unique_name("bad-cni-node");
    create_node(&ctx.client, &node, &[], None, &[], &[]).await;
    let ns = unique_name("bad-cni");
    create_namespace(&ctx.client, &ns, &[]).await;
    create_pod(&ctx.client, &ns, "pod", Some(&node), &[]).await;
    let garbage = std::env::temp_dir().join(format!("tortie-bad-kubeconfig-{}", std::process::id()));
    std::fs::write(&garbage, "this: [is not: a kubeconfig\n").unwrap();
    let vars: BTreeMap<&str, String> = [
        ("NODE", node.clone()),
        ("KUBECONFIG", cluster().kubeconfig.to_string_lossy().into_owned()),
        ("GARBAGE", garbage.to_string_lossy().into_owned()),
        // One character past the longest container ID an ADD takes.
        ("TOO_LONG_ID", "a".repeat(tortie::cni::env::MAX_CONTAINER_ID + 1)),
    ]
    .into_iter()
    .collect();

    let files = corpus::files("cni", Some("conf"), 45);
    let mut failures = vec![];
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let text = substitute(&std::fs::read_to_string(f).unwrap(), &vars);
        let h = corpus::header(&text);
        let code: u64 = h["code"][0].parse().unwrap();
        let command = h
            .get("command")
            .map(|c| c[0].clone())
            .unwrap_or_else(|| "ADD".into());
        let args = h
            .get("args")
            .map(|a| a[0].clone())
            .unwrap_or_else(|| pod_args(&ns, "pod"));
        let expects = h.get("expect").cloned().unwrap_or_default();
        assert!(!expects.is_empty(), "{name}: no `# expect:` line");
        let stdin: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        // `# container:` sets CNI_CONTAINERID (`\r` written as the two characters `\r`).
        let cid = h
            .get("container")
            .map(|c| c[0].replace("\\r", "\r"))
            .unwrap_or_else(|| unique_name("bad-cni"));
        let out = exec(&command, &cid, &args, stdin.as_bytes()).await;
        if code == 0 {
            // A command that must answer despite the input (VERSION).
            if !out.ok {
                failures.push(format!("{name}: expected success, got {}", out.stdout.trim()));
            } else if let Some(missing) = expects.iter().find(|e| !out.stdout.contains(e.as_str())) {
                failures.push(format!("{name}: {missing:?} not in {:?}", out.stdout));
            }
            continue;
        }
        let msg = out.json["msg"].as_str().unwrap_or("");
        if out.ok || out.json["code"].as_u64() != Some(code) {
            failures.push(format!(
                "{name}: expected error {code}, got exit ok={} {}\n  stderr: {}",
                out.ok,
                out.stdout.trim(),
                out.stderr.lines().last().unwrap_or("")
            ));
        } else if let Some(missing) = expects.iter().find(|e| !msg.contains(e.as_str())) {
            failures.push(format!("{name}: {missing:?} not in message {msg:?}"));
        } else if !out.json["details"].is_string() || out.json["cniVersion"].as_str().is_none() {
            failures.push(format!("{name}: malformed error object {}", out.json));
        }
        ctx.assert_nothing_held(&handle(&cid), &name).await;
    }
    let _ = std::fs::remove_file(&garbage);
    eprintln!("CNI config corpus: {} cases", files.len());
    assert!(
        failures.is_empty(),
        "{} of {} CNI config cases failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
    let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    delete_node(&ctx.client, &node).await;
}
