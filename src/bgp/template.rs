//! BIRD text from the render model ([`super::model`]) through minijinja templates.
//!
//! The built-in templates (`src/bgp/templates/*.j2`, embedded) give Calico's G3 layout. A
//! cluster may supply its own ([`Templates::from_dir`]): a folder of `*.j2` files where
//! `bird.cfg.j2`, `bird_ipam.cfg.j2` and `bird_aggr.cfg.j2` replace the built-in template of that
//! file for both families, and `bird6.cfg.j2`, `bird6_ipam.cfg.j2`, `bird6_aggr.cfg.j2` only for
//! IPv6. Any other `*.j2` file can be included or imported; the built-in templates are there as
//! `builtin/<name>` (e.g. `{% include "builtin/bird.cfg.j2" %}`).
//!
//! Every environment is strict: an undefined variable is an error naming the template and line,
//! never empty text in the output. Blocks trim their own line (`trim_blocks`, `lstrip_blocks`),
//! and a template's last newline is kept. Templates are compiled once per [`Templates`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, UndefinedBehavior, Value};

use super::model::FamilyModel;

/// The files of one family and the template kind that renders each.
const ROLES: [&str; 3] = ["bird.cfg", "bird_ipam.cfg", "bird_aggr.cfg"];

/// The built-in templates, by file name.
pub const BUILTIN: [(&str, &str); 3] = [
    ("bird.cfg.j2", include_str!("templates/bird.cfg.j2")),
    ("bird_ipam.cfg.j2", include_str!("templates/bird_ipam.cfg.j2")),
    ("bird_aggr.cfg.j2", include_str!("templates/bird_aggr.cfg.j2")),
];

/// A template that cannot be loaded or rendered: names the template file and, when minijinja
/// knows it, the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("reading BIRD templates from {dir}: {message}")]
    Io { dir: String, message: String },
    #[error(
        "BIRD template folder {dir} has none of bird.cfg.j2, bird_ipam.cfg.j2, bird_aggr.cfg.j2, bird6.cfg.j2, bird6_ipam.cfg.j2, bird6_aggr.cfg.j2"
    )]
    NoTemplate { dir: String },
    #[error("BIRD template {file}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        /// The template's path (a custom one) or `builtin/<name>`.
        file: String,
        line: Option<usize>,
        message: String,
    },
}

/// Compiled templates: the built-in set, or a custom folder over it.
pub struct Templates {
    env: Environment<'static>,
    /// Output file name -> template name in `env`.
    used: BTreeMap<String, String>,
    /// Folder of the custom templates (none: built-in).
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("used", &self.used)
            .field("dir", &self.dir)
            .finish()
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    for (name, src) in BUILTIN {
        env.add_template_owned(format!("builtin/{name}"), src)
            .expect("the built-in BIRD templates compile");
    }
    env
}

impl Templates {
    /// The built-in templates, compiled once per process.
    pub fn builtin() -> Arc<Templates> {
        static B: OnceLock<Arc<Templates>> = OnceLock::new();
        B.get_or_init(|| {
            let used = file_names()
                .map(|(file, role)| (file, format!("builtin/{role}.j2")))
                .collect();
            Arc::new(Templates {
                env: environment(),
                used,
                dir: None,
            })
        })
        .clone()
    }

    /// Custom templates from `dir` (see the module docs), compiled; a syntax error names the
    /// file and line.
    pub fn from_dir(dir: &Path) -> Result<Templates, TemplateError> {
        let io = |e: std::io::Error| TemplateError::Io {
            dir: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut sources = BTreeMap::new();
        for e in std::fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().to_string();
            // A mounted ConfigMap also holds `..data` and timestamped folders.
            if name.starts_with('.') || !name.ends_with(".j2") {
                continue;
            }
            let path = e.path();
            if !std::fs::metadata(&path).map_err(io)?.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| TemplateError::Template {
                file: path.display().to_string(),
                line: None,
                message: e.to_string(),
            })?;
            sources.insert(name, text);
        }
        Self::from_sources(dir, sources)
    }

    /// Custom templates given as file name -> text (`dir` names them in errors).
    pub fn from_sources(dir: &Path, sources: BTreeMap<String, String>) -> Result<Templates, TemplateError> {
        let mut env = environment();
        for (name, text) in &sources {
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| template_error(Some(dir), &e, name))?;
        }
        let mut used = BTreeMap::new();
        let mut custom = false;
        for (file, role) in file_names() {
            let own = format!("{file}.j2");
            let shared = format!("{role}.j2");
            let name = if sources.contains_key(&own) {
                own
            } else if sources.contains_key(&shared) {
                shared
            } else {
                used.insert(file, format!("builtin/{role}.j2"));
                continue;
            };
            custom = true;
            used.insert(file, name);
        }
        if !custom {
            return Err(TemplateError::NoTemplate {
                dir: dir.display().to_string(),
            });
        }
        Ok(Templates {
            env,
            used,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// The folder of custom templates, if these are.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The template file that renders output file `file` (`bird_ipam.cfg`): its path when
    /// custom, `builtin/<name>` otherwise.
    pub fn source_of(&self, file: &str) -> Option<String> {
        let name = self.used.get(file)?;
        Some(self.display_name(name))
    }

    fn display_name(&self, name: &str) -> String {
        match &self.dir {
            Some(d) if !name.starts_with("builtin/") => d.join(name).display().to_string(),
            _ => name.to_string(),
        }
    }

    /// Output file names rendered from a custom template (not the built-in one).
    pub fn custom_files(&self) -> Vec<String> {
        self.used
            .iter()
            .filter(|(_, t)| !t.starts_with("builtin/"))
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Renders one family's three files into `out`.
    pub fn render_family(
        &self,
        model: &FamilyModel,
        out: &mut BTreeMap<String, Vec<u8>>,
    ) -> Result<(), TemplateError> {
        let ctx = Value::from_serialize(model);
        for role in ROLES {
            let file = if model.v6 {
                role.replacen("bird", "bird6", 1)
            } else {
                role.to_string()
            };
            let name = &self.used[&file];
            let text = self
                .env
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| template_error(self.dir.as_deref(), &e, name))?;
            out.insert(file, text.into_bytes());
        }
        Ok(())
    }
}

/// (output file, the built-in template's file without `.j2`) for the six files.
fn file_names() -> impl Iterator<Item = (String, &'static str)> {
    ROLES.into_iter().flat_map(|role| {
        [
            (role.to_string(), role),
            (role.replacen("bird", "bird6", 1), role),
        ]
    })
}

fn template_error(dir: Option<&Path>, e: &minijinja::Error, fallback: &str) -> TemplateError {
    let name = e.name().unwrap_or(fallback);
    let file = match dir {
        Some(d) if !name.starts_with("builtin/") => d.join(name).display().to_string(),
        _ => name.to_string(),
    };
    let mut message = e.kind().to_string();
    if let Some(d) = e.detail() {
        message = format!("{message}: {d}");
    }
    // An error inside an included template: minijinja keeps the chain.
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(inner) = s.downcast_ref::<minijinja::Error>() {
            let n = inner.name().unwrap_or("?");
            message.push_str(&format!(
                " (from {}{})",
                n,
                inner.line().map(|l| format!(" line {l}")).unwrap_or_default()
            ));
        }
        src = s.source();
    }
    TemplateError::Template {
        file,
        line: e.line(),
        message,
    }
}

/// A sample input custom templates are rendered for, and the output checked with `bird -p`,
/// before they are used.
pub struct Sample {
    pub name: &'static str,
    pub node: &'static str,
    pub opts: super::RenderOptions,
    pub snapshot: super::Snapshot,
}

/// The built-in samples: a dual-stack mesh with services, a route reflector, BGPFilters with
/// iBGP/eBGP rules, an IPv6-only node.
pub fn samples() -> Vec<Sample> {
    let list: [(&str, &str, Option<&str>, &str); 4] = [
        ("mesh", "n1", None, include_str!("templates/samples/mesh.yaml")),
        (
            "reflector",
            "n1",
            None,
            include_str!("templates/samples/reflector.yaml"),
        ),
        (
            "filters",
            "kube-master",
            None,
            include_str!("templates/samples/filters.yaml"),
        ),
        (
            "v6",
            "n1",
            Some("hash"),
            include_str!("templates/samples/v6.yaml"),
        ),
    ];
    list.into_iter()
        .map(|(name, node, router_id, text)| {
            let mut snapshot = super::Snapshot::default();
            snapshot
                .add_manifests(name, text)
                .expect("the built-in samples parse");
            Sample {
                name,
                node,
                opts: super::RenderOptions {
                    router_id: router_id.map(str::to_string),
                    bird_fork: false,
                },
                snapshot,
            }
        })
        .collect()
}
