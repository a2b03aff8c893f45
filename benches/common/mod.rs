//! What the system benchmarks (`benches/system.rs`, `benches/operator.rs`) share beyond the test
//! harness (`tests/support`, which gives them the cluster, kubectl and clients): apiserver request
//! counts, percentiles and the results file both write into.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use kube::Client;

pub mod bgp_inputs;
use serde_json::{Value, json};

/// Sections of an earlier run kept in `out` that this run does not redo (each bench binary owns
/// some section ids; both write into the same file).
pub fn earlier_sections(out: &Path, redo: &[String]) -> Vec<Value> {
    let mut sections = vec![];
    if let Ok(old) = std::fs::read_to_string(out)
        && let Ok(old) = serde_json::from_str::<Value>(&old)
    {
        for s in old["sections"].as_array().cloned().unwrap_or_default() {
            let id = s["id"].as_str().unwrap_or_default().to_string();
            if !redo.contains(&id) {
                sections.push(s);
            }
        }
    }
    sections
}

/// One target of a section, as `bench/report.py` reads it: `id` is stable (the report lists the
/// targets it expects by id and flags any a run did not measure), `what` the target in words,
/// `value` this run's figure, `previous` the previous run's figure (shown beside it), `anchor` what
/// else it compares with (Calico's figure, or "-").
pub fn target(
    id: &str,
    what: &str,
    met: bool,
    value: impl Into<String>,
    previous: &str,
    anchor: &str,
) -> Value {
    json!({"id": id, "what": what, "met": met, "value": value.into(), "previous": previous, "anchor": anchor})
}

/// Runs the sections `what` one by one (`run(id)` measures one), writing `out` after each, so a
/// later failure keeps what was measured; sections of `out` not in `what` are kept. Each records
/// how long it took (`seconds`). A section that panics is recorded as failed (the panic message
/// in its notes, no figures: the report shows its targets as not measured) and the others still
/// run. Returns whether every section succeeded.
pub fn run_sections(out: &Path, what: &[String], mut run: impl FnMut(&str) -> Value) -> bool {
    let mut sections = earlier_sections(out, what);
    let mut ok = true;
    for w in what {
        let t = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(w)));
        let mut s = match result {
            Ok(s) => {
                println!("{}", serde_json::to_string_pretty(&s).unwrap());
                s
            }
            Err(e) => {
                ok = false;
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                eprintln!("section {w} FAILED: {msg}");
                json!({"id": w, "order": 99, "title": format!("{w} (failed in this run)"),
                       "inputs": "This section failed; its figures are missing.", "notes": [msg]})
            }
        };
        s["seconds"] = json!((t.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        sections.push(s);
        write_results(out, &mut sections);
    }
    ok
}

pub fn write_results(out: &Path, sections: &mut [Value]) {
    sections.sort_by_key(|s| s["order"].as_u64().unwrap_or(99));
    let doc = json!({
        "machine": machine(),
        "date": jiff::Timestamp::now().to_string(),
        "sections": sections,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    eprintln!("wrote {}", out.display());
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    format!("{cpus} CPUs, {mem} GiB RAM, debug assertions off (release build)")
}

/// Key of [`request_counts`] that counts 409 Conflict answers (also counted under their verb).
pub const CONFLICTS: &str = "409 conflicts";

/// Keys of [`request_counts`] for the requests of block claims (also counted under their verb).
pub const CLAIM_WRITES: &str = "block-claim writes";
pub const CLAIM_READS: &str = "block-claim reads";

/// Requests the apiserver answered, by verb, for the resources IPAM touches (from its own
/// `apiserver_request_total`), plus [`CONFLICTS`].
pub async fn request_counts(client: &Client) -> BTreeMap<String, f64> {
    let req = http::Request::get("/metrics").body(vec![]).unwrap();
    let text = client.request_text(req).await.unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let get = |k: &str| {
            labels
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let resource = get("resource");
        let group = get("group");
        let relevant = group == "crd.projectcalico.org"
            || (group.is_empty() && matches!(resource.as_str(), "pods" | "namespaces" | "nodes"));
        if !relevant || get("subresource") == "status" && resource == "pods" {
            continue;
        }
        let verb = get("verb").to_ascii_lowercase();
        let n = value.parse::<f64>().unwrap_or(0.0);
        *out.entry(verb.clone()).or_insert(0.0) += n;
        // Compare-and-swap losers: each one is a retry of a write.
        if get("code") == "409" {
            *out.entry(CONFLICTS.to_string()).or_insert(0.0) += n;
        }
        // A node's first address claims a block (Calico's two-phase claim: affinity create,
        // block create, affinity confirm, after listing what is free); every later address of
        // that block is the steady state the targets speak of.
        let write = matches!(
            verb.as_str(),
            "post" | "create" | "put" | "update" | "patch" | "delete"
        );
        let claim = resource == "blockaffinities"
            || (resource == "ipamblocks" && matches!(verb.as_str(), "post" | "create" | "list"));
        if claim {
            let key = if write { CLAIM_WRITES } else { CLAIM_READS };
            *out.entry(key.to_string()).or_insert(0.0) += n;
        }
    }
    out
}

pub fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
