//! Custom BIRD templates in a running agent, against a real apiserver (the BGP controller
//! publishes the node's inputs, the agent renders them with `--bird-template-dir`): a template
//! `bird -p` refuses is never used (the built-in output is installed) and is reported on the Node
//! as condition `BirdTemplateRejected=True` and a Warning Event naming the template file and line;
//! fixing the template switches the installed files to it and the condition to False.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use tortie::api::CrdMode;
use tortie::cli::agent;
use tortie::controllers::bgp as ctrl;

struct Cleanup {
    node: String,
    namespace: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = support::kubectl(&["delete", "node", &self.node, "--ignore-not-found", "--wait=false"]);
        let _ = support::kubectl(&[
            "delete",
            "namespace",
            &self.namespace,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_bad_template_reports_it_and_takes_the_fixed_one() {
    let client = support::client().await;
    let mode = CrdMode::detect(&client).await.expect("CRD mode");
    let ns = support::unique_name("tmpl-e2e");
    support::create_namespace(&client, &ns, &[]).await;
    let node = support::unique_name("tmpl");
    let _cleanup = Cleanup {
        node: node.clone(),
        namespace: ns.clone(),
    };
    let addr = format!("100.67.{}.1/24", std::process::id() % 250);
    support::create_node(
        &client,
        &node,
        &[],
        None,
        &[],
        &[("projectcalico.org/IPv4Address", &addr)],
    )
    .await;
    let controller = tokio::spawn(ctrl::run(
        client.clone(),
        mode,
        ns.clone(),
        tortie::controllers::Stores::start(&client, mode, None),
        ctrl::Config {
            debounce: Duration::from_millis(100),
            ..Default::default()
        },
    ));

    let tmp = tempfile::tempdir().unwrap();
    let templates = tmp.path().join("templates");
    let config = tmp.path().join("bird");
    std::fs::create_dir(&templates).unwrap();
    let bad = templates.join("bird_aggr.cfg.j2");
    std::fs::write(
        &bad,
        "not bird at all;\n{% include \"builtin/bird_aggr.cfg.j2\" %}",
    )
    .unwrap();
    let args = agent::AgentArgs {
        node: node.clone(),
        namespace: ns.clone(),
        config_dir: config.clone(),
        bird_socket: tmp.path().join("bird.ctl"),
        bird6_socket: None,
        no_reload: true,
        retry_secs: 1,
        ipam_socket: "none".into(),
        claim_blocks_ahead: true,
        no_bgp: false,
        status_interval: Duration::from_secs(10),
        no_status: true,
        crd_mode: tortie::cli::run::ModeArg::Auto,
        bird_template_dir: Some(templates.clone()),
    };
    let agent_task = tokio::spawn(agent::run_agent(client.clone(), args));

    let nodes: Api<Node> = Api::all(client.clone());
    let condition = |status: &'static str| {
        let nodes = nodes.clone();
        let node = node.clone();
        async move {
            let n = nodes.get(&node).await.ok()?;
            n.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "BirdTemplateRejected" && c.status == status)
        }
    };
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = |reason: &'static str| {
        let events = events.clone();
        let node = node.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node.as_str())
                })
        }
    };

    // Refused: reported with the template file and BIRD's line, built-in files installed.
    let cond = support::wait_until(
        "condition BirdTemplateRejected=True",
        Duration::from_secs(60),
        || condition("True"),
    )
    .await;
    let msg = cond.message.unwrap_or_default();
    assert!(
        msg.contains(&format!("(from template {})", bad.display())) && msg.contains("at line 1 column"),
        "{msg}"
    );
    assert_eq!(cond.reason.as_deref(), Some("BirdTemplateRejected"));
    let ev = support::wait_until(
        "a Warning Event BirdTemplateRejected",
        Duration::from_secs(30),
        || event("BirdTemplateRejected"),
    )
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(
        ev.note.unwrap_or_default().contains(&bad.display().to_string()),
        "the Event names the template"
    );
    let installed = support::wait_until(
        "the built-in files installed",
        Duration::from_secs(60),
        || async { read(&config.join("bird_aggr.cfg")) },
    )
    .await;
    assert!(installed.starts_with("# Generated by tortie\n"), "{installed}");
    assert!(
        read(&config.join("bird.cfg"))
            .unwrap()
            .contains(&format!("router id {};", addr.split('/').next().unwrap()))
    );

    // Fixed: accepted, the condition goes False and the node's files come from the template.
    std::fs::write(
        &bad,
        "# site aggregate\n{% include \"builtin/bird_aggr.cfg.j2\" %}",
    )
    .unwrap();
    let cond = support::wait_until(
        "condition BirdTemplateRejected=False",
        Duration::from_secs(60),
        || condition("False"),
    )
    .await;
    assert_eq!(cond.reason.as_deref(), Some("BirdTemplateAccepted"));
    support::wait_until("the custom files installed", Duration::from_secs(60), || async {
        read(&config.join("bird_aggr.cfg")).filter(|t| t.starts_with("# site aggregate\n"))
    })
    .await;
    support::wait_until(
        "a Normal Event BirdTemplateAccepted",
        Duration::from_secs(30),
        || event("BirdTemplateAccepted"),
    )
    .await;
    agent_task.abort();
    controller.abort();
}
