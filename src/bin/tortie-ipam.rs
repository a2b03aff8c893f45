//! `tortie-ipam`: the CNI IPAM plugin. The container runtime (or a main plugin such as `calico`,
//! `ptp` or `bridge`) runs it with the CNI environment and the network config on stdin; the result
//! or a CNI error goes to stdout as JSON, logs to stderr or `log_file_path`.
//!
//! The request goes to the node agent's warm IPAM server when its socket answers (`ipam.socket`),
//! else it is run in this process; both give the same results and errors.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::Value;
use tortie::cni::client::{self, CallError};
use tortie::cni::wire::{self, Response};
use tortie::cni::{self, CniEnv, CniError, Command, NetConf};

const HELP: &str = "tortie-ipam: the CNI IPAM plugin of tortie (Calico's calico-ipam, same network config).
The container runtime runs it with CNI_COMMAND and the other CNI_* variables set and the network
config on stdin; see examples/cni/README.md.

Usage: tortie-ipam [--version | --help]";

/// What ends up on stdout, and the exit status.
enum Outcome {
    Done(Option<Value>),
    Failed(CniError),
    /// The agent's error, already in CNI form.
    Remote {
        code: u32,
        msg: String,
        output: Value,
    },
}

fn main() -> ExitCode {
    // A person asking (as with calico-ipam -v). A runtime sets CNI_COMMAND: then arguments are
    // never looked at.
    if let (None, Some(a)) = (std::env::var_os("CNI_COMMAND"), std::env::args().nth(1)) {
        return match a.as_str() {
            "--version" | "-v" | "version" => {
                println!(
                    "tortie-ipam {}\nCNI spec versions: {}",
                    env!("CARGO_PKG_VERSION"),
                    cni::result::SUPPORTED_VERSIONS.join(", ")
                );
                ExitCode::SUCCESS
            }
            "--help" | "-h" | "help" => {
                println!("{HELP}");
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!("tortie-ipam: unknown argument {a:?}\n\n{HELP}");
                ExitCode::from(2)
            }
        };
    }
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let mut stdin = vec![];
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) => Outcome::Failed(CniError::Io(format!("reading stdin: {e}"))),
        Ok(_) => run(&vars, &stdin),
    };
    let (out, code) = match outcome {
        Outcome::Done(v) => (v, ExitCode::SUCCESS),
        Outcome::Failed(e) => {
            tracing::error!(code = e.code(), "{e}");
            (Some(e.to_json(&wire::error_version(&stdin))), ExitCode::FAILURE)
        }
        Outcome::Remote { code, msg, output } => {
            tracing::error!(code, "{msg}");
            (Some(output), ExitCode::FAILURE)
        }
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &v);
        let _ = stdout.write_all(b"\n");
    }
    code
}

fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    let env = match CniEnv::from_vars(|k| vars.get(k).map(String::as_str)) {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(e),
    };
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string));
        return Outcome::Done(Some(cni::result::version_json(requested.as_deref())));
    }
    let mut conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    init_logging(&conf);
    if let Err(e) = cni::result::check_version(&conf.cni_version) {
        return Outcome::Failed(e);
    }
    let started = Instant::now();
    if let Some(socket) = conf.ipam.socket.clone() {
        match via_agent(Path::new(&socket), vars, stdin, &conf) {
            Ok(Some(o)) => return o,
            Ok(None) => {}
            Err(e) => return Outcome::Failed(e),
        }
        // What is left of the deadline is the in-process run's.
        match conf.ipam.timeout.checked_sub(started.elapsed()) {
            Some(left) if !left.is_zero() => conf.ipam.timeout = left,
            _ => return Outcome::Failed(cni::plugin::deadline_error(&conf)),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Outcome::Failed(CniError::Io(format!("starting the async runtime: {e}"))),
    };
    match rt.block_on(cni::plugin::run(&env, &conf, stdin)) {
        Ok(v) => Outcome::Done(v),
        Err(e) => Outcome::Failed(e),
    }
}

/// The agent's answer; `Ok(None)` when the request is to run in-process instead.
fn via_agent(
    socket: &Path,
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    conf: &NetConf,
) -> Result<Option<Outcome>, CniError> {
    let node = cni::plugin::node_name(conf)?;
    let req = wire::Request {
        env: wire::cni_env(vars),
        // It parsed as JSON, so it is UTF-8.
        stdin: String::from_utf8_lossy(stdin).into_owned(),
        node,
    };
    let sock = socket.display();
    match client::call(socket, &req, conf.ipam.timeout) {
        Ok(Response::Ok { output }) => {
            tracing::debug!(socket = %sock, "answered by the node agent");
            Ok(Some(Outcome::Done(output)))
        }
        Ok(Response::Failed { code, msg, output }) => {
            tracing::debug!(socket = %sock, "answered by the node agent (an error)");
            Ok(Some(Outcome::Remote { code, msg, output }))
        }
        Ok(Response::Refused { reason }) => {
            tracing::info!(socket = %sock, "node agent declined ({reason}); running in-process");
            Ok(None)
        }
        Err(CallError::Unavailable(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(socket = %sock, "no node agent socket; running in-process");
            Ok(None)
        }
        Err(CallError::Unavailable(e)) => {
            tracing::info!(socket = %sock, "node agent not answering ({e}); running in-process");
            Ok(None)
        }
        Err(CallError::TimedOut) => Err(cni::plugin::deadline_error(conf)),
        Err(e @ CallError::Broken(_)) => {
            tracing::warn!(socket = %sock, "{e}; running in-process");
            Ok(None)
        }
    }
}

/// Calico's `log_level` names (`debug`, `info`, `warning`, `error`, ...) mapped onto tracing's;
/// logs never go to stdout, which carries the result.
fn init_logging(conf: &NetConf) {
    let level = match conf.log_level.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("debug") | Some("trace") => "debug",
        Some("warning") | Some("warn") => "warn",
        Some("error") | Some("fatal") | Some("panic") => "error",
        Some("none") | Some("off") => "off",
        _ => "info",
    };
    let filter =
        tracing_subscriber::EnvFilter::new(format!("{level},kube=warn,hyper=warn,tower=warn,rustls=warn"));
    let file = conf.log_file_path.as_ref().and_then(|p| {
        if let Some(dir) = std::path::Path::new(p).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::OpenOptions::new().create(true).append(true).open(p).ok()
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
