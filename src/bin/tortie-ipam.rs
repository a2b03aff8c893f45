//! `tortie-ipam`: the CNI IPAM plugin. The container runtime (or a main plugin such as `calico`,
//! `ptp` or `bridge`) runs it with the CNI environment and the network config on stdin; the result
//! or a CNI error goes to stdout as JSON, logs to stderr or `log_file_path`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::Value;
use tortie::cni::{self, CniEnv, CniError, Command, NetConf};

fn main() -> ExitCode {
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let mut stdin = vec![];
    let read = std::io::stdin().read_to_end(&mut stdin);
    // The version to answer errors in: the config's, when it can be read at all.
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| cni::result::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".into());
    let outcome = match read {
        Err(e) => Err(CniError::Io(format!("reading stdin: {e}"))),
        Ok(_) => run(&vars, &stdin),
    };
    let (out, code) = match outcome {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(code = e.code(), "{e}");
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &v);
        let _ = stdout.write_all(b"\n");
    }
    code
}

fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_vars(|k| vars.get(k).map(String::as_str))?;
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string));
        return Ok(Some(cni::result::version_json(requested.as_deref())));
    }
    let conf = NetConf::parse(stdin)?;
    init_logging(&conf);
    cni::result::check_version(&conf.cni_version)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::Io(format!("starting the async runtime: {e}")))?;
    rt.block_on(cni::plugin::run(&env, &conf, stdin))
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
