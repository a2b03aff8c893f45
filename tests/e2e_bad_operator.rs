//! The operator's bad-input corpus (`tests/bad-inputs/operator/`): manifests that pass admission
//! but are wrong for the cluster. A real `tortie run` (every controller) must report each one with
//! a status condition and a Warning Event naming the object and the field, and must stay alive,
//! healthy and still reconcile a valid pool afterwards.
//!
//! A binary of its own: it owns the cluster's Installation singleton and kubeadm-config, which
//! the cases change. The file format is described in `tests/bad-inputs/README.md`.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use support::*;
use tortie::api::{CalicoKind, Installation, Pool};

const POD_SUBNET: &str = "10.32.0.0/12,fd00:32::/48";
const WAIT: Duration = Duration::from_secs(45);

const BASE_INSTALLATION: &str = "apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata:\n  name: default\nspec:\n  cni: {type: Calico}\n  calicoNetwork:\n    ipPools:\n    - {name: base-ipv4, cidr: 10.32.0.0/16, encapsulation: None, natOutgoing: Disabled}\n";

/// A condition of an object's status: (status, reason, message).
fn condition(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

struct Env {
    client: kube::Client,
    pools: Api<Pool>,
    insts: Api<Installation>,
    events: Api<Event>,
}

impl Env {
    async fn pool_cond(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let p = self.pools.get_opt(name).await.ok()??;
        condition(&p.status?.conditions, type_)
    }

    async fn inst_cond(&self, type_: &str) -> Option<(String, String, String)> {
        let i = self.insts.get_opt("default").await.ok()??;
        condition(&i.status?.conditions, type_)
    }

    /// Warning Events about `kind/name` with `reason`, newest last.
    async fn events(&self, kind: &str, name: &str, reason: &str) -> Vec<String> {
        let lp =
            ListParams::default().fields(&format!("involvedObject.kind={kind},involvedObject.name={name}"));
        let Ok(list) = self.events.list(&lp).await else {
            return vec![];
        };
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
            .map(|e| e.message.unwrap_or_default())
            .collect()
    }

    /// The base Installation, Ready with its one pool.
    async fn reset_installation(&self) {
        kubectl_stdin_ok(&["apply", "-f", "-"], BASE_INSTALLATION);
        wait_until("the base Installation Ready", Duration::from_secs(90), || async {
            let ready = self.inst_cond("Ready").await?;
            let generation = self.insts.get("default").await.ok()?.metadata.generation;
            let observed = self.insts.get("default").await.ok()?.status?.observed_generation;
            (ready.0 == "True" && observed == generation).then_some(())
        })
        .await;
    }

    /// Deletes the case's IPPools (names starting with `prefix`) and waits until they are gone.
    async fn delete_pools(&self, prefix: &str) {
        let names: Vec<String> = self
            .pools
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .filter(|n| n.starts_with(prefix))
            .collect();
        for n in &names {
            let _ = self.pools.delete(n, &DeleteParams::default()).await;
        }
        for n in &names {
            wait_until(&format!("IPPool {n} gone"), Duration::from_secs(60), || async {
                self.pools.get_opt(n).await.ok()?.is_none().then_some(())
            })
            .await;
        }
    }
}

#[tokio::test]
async fn operator_corpus_is_reported_with_a_condition_and_an_event_and_the_operator_survives() {
    let client = client().await;
    let mode = mode(&client).await;
    let env = Env {
        pools: Api::all_with(client.clone(), &mode.resource(CalicoKind::IPPool)),
        insts: Api::all(client.clone()),
        events: Api::namespaced(client.clone(), "default"),
        client,
    };
    kubectl_stdin_ok(&["apply", "-f", "-"], &kubeadm_config(POD_SUBNET));
    let id = unique_name("bad-op");
    let op = Operator::start(&id, &["--lease-name", &id]);
    op.wait_ready().await;
    env.reset_installation().await;

    let files = corpus::files("operator", Some("yaml"), 30);
    let mut failures = vec![];
    let started = Instant::now();
    for (n, f) in files.iter().enumerate() {
        let case_started = Instant::now();
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let case_id = format!("{}-c{n}", &id[..id.len().min(40)]);
        let text = std::fs::read_to_string(f).unwrap().replace("__ID__", &case_id);
        let h = corpus::header(&text);
        let object = h["object"][0].clone();
        let reason = h["reason"][0].clone();
        let expects = h.get("expect").cloned().unwrap_or_default();
        assert!(!expects.is_empty(), "{name}: no `# expect:` line");
        let (kind, obj_name) = object.split_once(' ').unwrap();

        // One document at a time; a pool gets its status before the next document, so that
        // "made before" is unambiguous for overlap precedence.
        let mut applied = Ok(());
        for doc in text.split("\n---\n").skip(1) {
            let out = kubectl_stdin(&["apply", "-f", "-"], doc);
            if !out.status.success() {
                applied = Err(format!(
                    "{name}: refused at admission (the case must pass admission): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                break;
            }
            if doc.contains("\nkind: IPPool\n") {
                let pname = doc
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("name: "))
                    .unwrap()
                    .to_string();
                let got = tokio::time::timeout(WAIT, async {
                    while env.pool_cond(&pname, "Ready").await.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
                .await;
                if got.is_err() {
                    applied = Err(format!("{name}: IPPool {pname} got no status within {WAIT:?}"));
                    break;
                }
            }
        }
        if let Err(e) = applied {
            failures.push(e);
        } else {
            // The condition.
            let got = tokio::time::timeout(WAIT, async {
                loop {
                    let c = match kind {
                        "IPPool" => env.pool_cond(obj_name, "Ready").await.filter(|c| c.0 == "False"),
                        _ => env.inst_cond("Degraded").await.filter(|c| c.0 == "True"),
                    };
                    // An IPPool has one problem; an Installation lists all of them in one
                    // message, whose reason is the first one's (the Event carries the case's).
                    if let Some(c) = c
                        && (kind == "IPPool" || expects.iter().all(|e| c.2.contains(e.as_str())))
                    {
                        return c;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await;
            match got {
                Err(_) => {
                    let now = match kind {
                        "IPPool" => env.pool_cond(obj_name, "Ready").await,
                        _ => env.inst_cond("Degraded").await,
                    };
                    failures.push(format!(
                        "{name}: no {reason} condition on {object} within {WAIT:?}; now {now:?}"
                    ));
                }
                Ok((_, got_reason, msg)) => {
                    // An Installation reports all its problems in one message; its reason is the
                    // first one's, so the case's reason must be in the Events below.
                    if kind == "IPPool" && got_reason != reason {
                        failures.push(format!("{name}: reason {got_reason}, expected {reason}: {msg}"));
                    } else if let Some(m) = expects.iter().find(|e| !msg.contains(e.as_str())) {
                        failures.push(format!("{name}: condition message lacks {m:?}: {msg}"));
                    } else {
                        // The Event: same reason, the same facts.
                        let ev_name = if kind == "IPPool" { obj_name } else { "default" };
                        let ev = tokio::time::timeout(WAIT, async {
                            loop {
                                let evs = env.events(kind, ev_name, &reason).await;
                                if let Some(e) = evs
                                    .into_iter()
                                    .find(|e| expects.iter().all(|x| e.contains(x.as_str())))
                                {
                                    return e;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        })
                        .await;
                        if ev.is_err() {
                            let seen = env.events(kind, ev_name, &reason).await;
                            failures.push(format!(
                                "{name}: no Warning Event {reason} on {kind}/{ev_name} containing {expects:?}; seen: {seen:?}"
                            ));
                        }
                    }
                }
            }
        }
        // Undo the case: the Installation back to its base, kubeadm-config restored, the
        // case's pools deleted (the operator's finalizer drains them).
        if text.contains("kind: ConfigMap") {
            kubectl_stdin_ok(&["apply", "-f", "-"], &kubeadm_config(POD_SUBNET));
        }
        if text.contains("kind: Installation") || text.contains("kind: ConfigMap") {
            env.reset_installation().await;
        }
        env.delete_pools(&case_id).await;
        eprintln!("{name}: {:.1}s", case_started.elapsed().as_secs_f64());
        assert!(
            matches!(op.get("/healthz").await, Some((200, _))),
            "after {name}: /healthz is not 200; log:\n{}",
            op.log_text()
        );
    }
    eprintln!(
        "operator corpus: {} cases in {:.1}s",
        files.len(),
        started.elapsed().as_secs_f64()
    );

    // Never crashed, never stalled: still healthy, and a valid pool still becomes Ready.
    assert!(
        matches!(op.get("/healthz").await, Some((200, _))),
        "/healthz after the corpus; log:\n{}",
        op.log_text()
    );
    let good = format!("{id}-good");
    kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: {good}\nspec:\n  cidr: 10.46.0.0/24\n  blockSize: 26\n"
        ),
    );
    let t = Instant::now();
    wait_until("a valid pool Ready after the corpus", WAIT, || async {
        env.pool_cond(&good, "Ready").await.filter(|c| c.0 == "True")
    })
    .await;
    eprintln!(
        "valid pool Ready {:.1}s after creation",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        env.inst_cond("Ready").await.map(|c| c.0).as_deref(),
        Some("True"),
        "the base Installation is not Ready at the end"
    );
    assert!(
        failures.is_empty(),
        "{} of {} operator cases failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
    env.delete_pools(&good).await;
    let _ = env.insts.delete("default", &DeleteParams::default()).await;
    let _ = &env.client;
    drop(op);
}
