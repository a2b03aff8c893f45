//! A cluster's own BIRD templates on the node (`--bird-template-dir`, the chart mounts a
//! ConfigMap there). Before custom templates are used they are rendered for the built-in samples
//! ([`crate::bgp::template::samples`]) and every output is checked with `bird -p`/`bird6 -p`;
//! each render of the node's real inputs is checked the same way before it is installed. Refused
//! templates are never used: the node gets the output of the last accepted templates (the built-in
//! ones when none was), and the refusal is reported on the Node (condition [`CONDITION`], Event)
//! naming the template file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};

use super::bird::{BirdError, bird_check};
use crate::bgp::{CalicoSelectors, RenderError, TemplateError, Templates};

/// Node condition type: `True` while the node's custom BIRD templates are refused.
pub const CONDITION: &str = "BirdTemplateRejected";
/// Event and condition reasons.
pub const REASON_ACCEPTED: &str = "BirdTemplateAccepted";
pub const REASON_REJECTED: &str = "BirdTemplateRejected";

/// Why custom templates were refused.
#[derive(Debug, thiserror::Error)]
pub enum VetError {
    #[error(transparent)]
    Load(#[from] TemplateError),
    #[error("rendering {input}: {source}")]
    Render { input: String, source: RenderError },
    #[error(transparent)]
    Bird(Box<Refusal>),
    #[error("cannot check with bird -p: {0}")]
    Check(BirdError),
}

/// BIRD refused a rendered file.
#[derive(Debug, thiserror::Error)]
#[error(
    "{program} rejected {file} (from template {template}) rendered for {input}{}: {message}",
    line.as_ref().map(|l| format!(" at {l}")).unwrap_or_default()
)]
pub struct Refusal {
    pub program: String,
    pub input: String,
    pub file: String,
    pub template: String,
    /// `line L column C (in `block`)` of the rendered file, when BIRD said.
    pub line: Option<String>,
    pub message: String,
}

/// Renders every built-in sample with `templates` and checks the output with `bird -p`.
pub fn vet(templates: &Templates) -> Result<(), VetError> {
    let sel = CalicoSelectors::default();
    for s in crate::bgp::template::samples() {
        let input = format!("sample {:?}", s.name);
        let out =
            crate::bgp::render_with(&s.snapshot, s.node, &s.opts, &sel, templates).map_err(|source| {
                VetError::Render {
                    input: input.clone(),
                    source,
                }
            })?;
        check_output(templates, &out.files, &input)?;
    }
    Ok(())
}

/// Checks rendered files with `bird -p` and `bird6 -p` in a private scratch folder; a refusal
/// names the file, the template that wrote it and BIRD's line.
pub fn check_output(
    templates: &Templates,
    files: &BTreeMap<String, Vec<u8>>,
    input: &str,
) -> Result<(), VetError> {
    let tmp = tempfile::tempdir().map_err(|e| {
        VetError::Check(BirdError::Io {
            path: std::env::temp_dir().display().to_string(),
            source: e,
        })
    })?;
    for (name, body) in files {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).map_err(|source| {
            VetError::Check(BirdError::Io {
                path: p.display().to_string(),
                source,
            })
        })?;
    }
    for v6 in [false, true] {
        match bird_check(tmp.path(), v6) {
            Ok(()) => {}
            Err(BirdError::Rejected { program, message, .. }) => {
                let located = super::outcome::locate(&message, files);
                let file = located
                    .as_ref()
                    .and_then(|(f, _)| f.strip_prefix("data[")?.split(']').next().map(str::to_string))
                    .unwrap_or_else(|| if v6 { "bird6.cfg" } else { "bird.cfg" }.to_string());
                let mut template = templates.source_of(&file).unwrap_or_default();
                if template.starts_with("builtin/") {
                    // A built-in template's file refused: a custom one broke what it relies on.
                    let custom: Vec<String> = templates
                        .custom_files()
                        .iter()
                        .filter_map(|f| templates.source_of(f))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    if !custom.is_empty() {
                        template = format!("{template}, with custom {}", custom.join(", "));
                    }
                }
                let (line, message) = match located {
                    Some((field, what)) => (field.split_once("] ").map(|(_, l)| l.to_string()), what),
                    None => (None, message),
                };
                return Err(VetError::Bird(Box::new(Refusal {
                    program,
                    input: input.to_string(),
                    file,
                    template,
                    line,
                    message,
                })));
            }
            Err(e) => return Err(VetError::Check(e)),
        }
    }
    Ok(())
}

/// SHA-256 over the folder's `*.j2` files (names and contents); changes when the ConfigMap does.
pub fn fingerprint(dir: &Path) -> String {
    let mut h = Sha256::new();
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(r) => r
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && n.ends_with(".j2"))
            })
            .collect(),
        Err(e) => return format!("unreadable: {e}"),
    };
    names.sort();
    for p in names {
        h.update(p.display().to_string().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&p).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the agent reports about its templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub rejected: bool,
    pub message: String,
}

/// The agent's custom templates: the folder, what was last vetted, what is in use.
pub struct Custom {
    dir: PathBuf,
    seen: Option<String>,
    /// The last accepted custom templates (none: the built-in ones are in use).
    active: Option<Arc<Templates>>,
    /// The last verdict reported.
    reported: Option<Verdict>,
    /// The verdict of the folder's current content.
    current: Option<Verdict>,
    /// Why the node's own inputs rendered with the accepted templates failed `bird -p`, if so.
    output_refused: Option<String>,
}

impl Custom {
    pub fn new(dir: PathBuf) -> Custom {
        Custom {
            dir,
            seen: None,
            active: None,
            reported: None,
            current: None,
            output_refused: None,
        }
    }

    /// The folder's content changed since it was last vetted.
    pub fn changed(&self) -> bool {
        self.seen.as_deref() != Some(fingerprint(&self.dir).as_str())
    }

    /// Re-reads and vets the folder when it changed (blocking: runs `bird -p`).
    pub fn refresh(&mut self) {
        let fp = fingerprint(&self.dir);
        if self.seen.as_deref() == Some(fp.as_str()) {
            return;
        }
        self.seen = Some(fp);
        self.output_refused = None;
        let dir = self.dir.display().to_string();
        let empty = std::fs::read_dir(&self.dir).map_or(true, |r| {
            !r.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                !n.starts_with('.') && n.ends_with(".j2")
            })
        });
        if empty {
            // An absent or empty ConfigMap: the built-in templates, nothing to refuse.
            self.active = None;
            self.current = Some(Verdict {
                rejected: false,
                message: format!("no custom BIRD templates in {dir}; the built-in ones are in use"),
            });
            return;
        }
        let loaded = Templates::from_dir(&self.dir)
            .map_err(VetError::from)
            .and_then(|t| {
                vet(&t)?;
                Ok(t)
            });
        self.current = Some(match loaded {
            Ok(t) => {
                let files = t.custom_files().join(", ");
                self.active = Some(Arc::new(t));
                Verdict {
                    rejected: false,
                    message: format!(
                        "custom BIRD templates in {dir} accepted (bird -p checked them on the built-in samples); they render {files}"
                    ),
                }
            }
            Err(e) => Verdict {
                rejected: true,
                message: format!("custom BIRD templates in {dir} refused: {e}; {}", self.fallback()),
            },
        });
    }

    fn fallback(&self) -> &'static str {
        if self.active.is_some() {
            "the last accepted templates stay in use"
        } else {
            "the built-in templates stay in use"
        }
    }

    /// The templates to render with: the last accepted custom ones, else the built-in ones.
    pub fn templates(&self) -> Option<Arc<Templates>> {
        self.active.clone()
    }

    /// The node's real inputs rendered with the custom templates did not pass `bird -p`:
    /// reported until they pass again (the caller renders with the built-in ones meanwhile).
    pub fn refuse_output(&mut self, e: &VetError) {
        self.output_refused = Some(format!(
            "custom BIRD templates in {} refused: {e}; the built-in templates render this node's config",
            self.dir.display()
        ));
    }

    /// The node's real inputs passed with the custom templates.
    pub fn accept_output(&mut self) {
        self.output_refused = None;
    }

    /// The verdict to report, if it differs from the last one reported.
    pub fn to_report(&self) -> Option<Verdict> {
        let v = match &self.output_refused {
            Some(m) => Some(Verdict {
                rejected: true,
                message: m.clone(),
            }),
            None => self.current.clone(),
        };
        v.filter(|v| self.reported.as_ref() != Some(v))
    }

    /// `v` was reported.
    pub fn reported(&mut self, v: Verdict) {
        self.reported = Some(v);
    }
}

/// The Node condition for `v`, keeping the transition time of `previous` while the status stays.
pub fn condition(v: &Verdict, previous: Option<&NodeCondition>, now: jiff::Timestamp) -> NodeCondition {
    let status = if v.rejected { "True" } else { "False" };
    let transition = previous
        .filter(|p| p.status == status)
        .and_then(|p| p.last_transition_time.clone())
        .unwrap_or(Time(now));
    NodeCondition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: Some(
            if v.rejected {
                REASON_REJECTED
            } else {
                REASON_ACCEPTED
            }
            .into(),
        ),
        message: Some(v.message.chars().take(1000).collect()),
        last_transition_time: Some(transition),
        last_heartbeat_time: Some(Time(now)),
    }
}

/// Runs blocking work (`bird -p`) without stalling a multi-threaded runtime's other tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Renders the node's files: with the accepted custom templates when their output passes
/// `bird -p`, else (and without custom templates) with the built-in ones.
pub fn render(
    custom: Option<&mut Custom>,
    snap: &crate::bgp::Snapshot,
    node: &str,
    opts: &crate::bgp::RenderOptions,
    selectors: &dyn crate::bgp::SelectorEngine,
) -> Result<crate::bgp::Rendered, RenderError> {
    let builtin = || crate::bgp::render(snap, node, opts, selectors);
    let Some(c) = custom else { return builtin() };
    let Some(t) = c.templates() else { return builtin() };
    let input = format!("node {node}'s inputs");
    let checked = match crate::bgp::render_with(snap, node, opts, selectors, &t) {
        Ok(r) => blocking(|| check_output(&t, &r.files, &input)).map(|()| r),
        // The inputs themselves cannot be rendered: the built-in templates say the same.
        Err(e @ RenderError::Template(_)) => Err(VetError::Render { input, source: e }),
        Err(e) => return Err(e),
    };
    match checked {
        Ok(r) => {
            c.accept_output();
            Ok(r)
        }
        Err(e) => {
            c.refuse_output(&e);
            builtin()
        }
    }
}

/// Reports the templates' verdict on the Node (condition [`CONDITION`], Event) when it changed.
pub async fn report(
    c: &mut Custom,
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    recorder: &kube::runtime::events::Recorder,
    node: &str,
) {
    use kube::Resource;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::events::{Event, EventType};
    let Some(v) = c.to_report() else { return };
    if v.rejected {
        tracing::warn!(message = %v.message, "custom BIRD templates refused");
    } else {
        tracing::info!(message = %v.message, "BIRD templates");
    }
    let n = match nodes.get(node).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the Node to report on its BIRD templates");
            return;
        }
    };
    let previous = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION));
    let cond = condition(&v, previous, jiff::Timestamp::now());
    let patch = serde_json::json!({"status": {"conditions": [cond]}});
    if let Err(e) = nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::warn!(error = %e, "cannot set the Node's {CONDITION} condition");
        return;
    }
    let ev = Event {
        type_: if v.rejected {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: if v.rejected {
            REASON_REJECTED
        } else {
            REASON_ACCEPTED
        }
        .into(),
        note: Some(v.message.chars().take(1000).collect()),
        action: "LoadTemplates".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &n.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot record event");
    }
    c.reported(v);
}
