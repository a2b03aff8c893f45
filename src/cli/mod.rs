//! The `tortie` command line: one clap subcommand per job.

pub mod agent;
pub mod crd;
pub mod install_cni;
pub mod ipam;
pub mod node;
pub mod output;
pub mod render;
pub mod run;

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Calico-compatible IPAM and BGP control plane for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "tortie", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Which cluster to talk to, for every subcommand that does (as kubectl's flags of the same
/// names). Without them: `KUBECONFIG` (or `~/.kube/config`) and its current context, else the
/// in-cluster service account.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path of the kubeconfig file to use.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// Errors of building the API client from the kubeconfig flags.
#[derive(Debug, thiserror::Error)]
pub enum KubeConfigError {
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig: {0}")]
    Config(#[source] kube::config::KubeconfigError),
    /// Not transparent: `error_line` finds the inner error in the chain and says it plainly.
    #[error("{0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("connecting to the cluster: {0}")]
    Client(#[source] kube::Error),
}

impl KubeArgs {
    /// The client these flags select.
    pub async fn client(&self) -> Result<kube::Client, KubeConfigError> {
        kube::Client::try_from(self.config().await?).map_err(KubeConfigError::Client)
    }

    /// The client configuration these flags select.
    pub async fn config(&self) -> Result<kube::Config, KubeConfigError> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let opts = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|source| KubeConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                kube::Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(KubeConfigError::Config)?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&opts)
                .await
                .map_err(KubeConfigError::Config)?,
            (None, None) => kube::Config::infer().await?,
        };
        Ok(config)
    }
}

/// The flags given on this command line, for subcommands whose `run` takes no arguments.
static KUBE_ARGS: OnceLock<KubeArgs> = OnceLock::new();

/// A client for the cluster the command line named (`--kubeconfig`, `--context`), else the
/// default one (what `kube::Client::try_default` picks).
pub async fn connect() -> Result<kube::Client, KubeConfigError> {
    KUBE_ARGS.get().cloned().unwrap_or_default().client().await
}

/// The client configuration the command line named, for commands that need more than a client
/// (the cluster's CA and server address).
pub async fn client_config() -> Result<kube::Config, KubeConfigError> {
    KUBE_ARGS.get().cloned().unwrap_or_default().config().await
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions of a CRD mode (or write them into a directory).
    Crd(crd::CrdArgs),
    /// Per-node agent: install the node's published BIRD config and reload BIRD; serve the node's
    /// IPAM requests warm over a unix socket.
    Agent(agent::AgentArgs),
    /// Render one node's BIRD configuration from a folder of manifests (no cluster needed).
    Render(render::RenderArgs),
    /// IPAM tools (calicoctl ipam): show, check, release, configure, split.
    Ipam(ipam::IpamArgs),
    /// Node tools (calicoctl node): status of the nodes' BGP sessions.
    Node(node::NodeArgs),
    /// Install tortie-ipam, its network config and a kubeconfig of the CNI ServiceAccount on this
    /// node (the chart's DaemonSet runs it), or keep that kubeconfig's token fresh.
    InstallCni(install_cni::InstallCniArgs),
    /// Run the operator (Installation, IPPool, IPAM GC and BGP controllers, leader-elected).
    Run(run::RunArgs),
    /// Print a shell completion script: `source <(tortie completion bash)`, or write it where
    /// your shell loads completions from (zsh: a file `_tortie` on `$fpath`; fish:
    /// `~/.config/fish/completions/tortie.fish`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        let _ = KUBE_ARGS.set(self.kube.clone());
        match self.command {
            Command::Crd(args) => args.run(),
            Command::Render(args) => args.run(),
            Command::Agent(args) => args.run().await,
            Command::Run(args) => args.run().await,
            Command::Ipam(args) => args.run().await,
            Command::Node(args) => args.run().await,
            Command::InstallCni(args) => args.run().await,
            Command::Completion { shell } => {
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "tortie", &mut std::io::stdout());
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    }
}

/// Writes command output to stdout. A reader that went away (`tortie crd | head`) ends the output
/// quietly: `println!` would panic on the broken pipe.
pub(crate) fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        r => Ok(r?),
    }
}

/// stdout's reader closed the pipe: nothing more to say, and nothing to report.
#[derive(Debug, thiserror::Error)]
#[error("the output's reader closed the pipe")]
pub struct ReaderGone;

/// Colour in logs only for a person at a terminal: never in files, pipes or container logs, and
/// never with `NO_COLOR` set (no-color.org).
pub(crate) fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// One line for a failed command: the error and its causes, each said once. kube's errors embed
/// their source in their own message, so anyhow's `{:#}` repeats the same text several times, and
/// an API error would print its whole `Status` struct.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = vec![];
    for cause in e.chain() {
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            parts.push(api_status_text(status));
            break;
        }
        let text = cause.to_string();
        let shown = if cause.downcast_ref::<kube::config::InferConfigError>().is_some() {
            "not running in a pod, and no kubeconfig could be read (set KUBECONFIG)".to_string()
        } else {
            text.clone()
        };
        push_cause(&mut parts, &text, shown);
    }
    parts.join(": ")
}

fn api_status_text(s: &kube::core::Status) -> String {
    match (s.reason.is_empty(), s.code) {
        (true, 0) => s.message.clone(),
        (true, code) => format!("{} (HTTP {code})", s.message),
        (false, code) => format!("{} ({}, HTTP {code})", s.message, s.reason),
    }
}

/// Appends a cause, dropping what the previous part already says: a message that ends with its
/// cause's text loses that suffix, and a cause already quoted inside the previous part is skipped.
fn push_cause(parts: &mut Vec<String>, text: &str, shown: String) {
    if text.is_empty() {
        return;
    }
    if let Some(last) = parts.last_mut() {
        if let Some(head) = last.strip_suffix(text) {
            let head = head.trim_end_matches([' ', ':']).to_string();
            if head.is_empty() {
                parts.pop();
            } else {
                *last = head;
            }
        } else if last.contains(text) {
            return;
        }
    }
    parts.push(shown);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner says no")]
    struct Inner;

    #[test]
    fn a_cause_embedded_in_its_parent_is_said_once() {
        let e = anyhow::Error::new(Outer(Inner)).context("connecting");
        assert_eq!(error_line(&e), "connecting: outer: inner says no");
    }

    #[test]
    fn a_missing_kubeconfig_is_one_short_line() {
        let err = kube::config::Kubeconfig::read_from("/nonexistent/kubeconfig").unwrap_err();
        let e = anyhow::Error::new(err).context("connecting to the cluster");
        let line = error_line(&e);
        assert_eq!(line.matches("No such file").count(), 1, "{line}");
        assert!(line.starts_with("connecting to the cluster: "), "{line}");
        assert!(line.len() < 200, "{line}");
    }

    #[test]
    fn an_api_error_is_its_message_and_reason_not_a_struct() {
        let status = kube::core::Status::failure("ippools \"x\" not found", "NotFound");
        let e = anyhow::Error::new(kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            ..status
        })))
        .context("reading IPPool x");
        assert_eq!(
            error_line(&e),
            "reading IPPool x: ippools \"x\" not found (NotFound, HTTP 404)"
        );
    }
}
