//! `tortie install-cni`: puts `tortie-ipam` on a node the way Calico's install-cni does for
//! calico-ipam. Run by the chart's agent DaemonSet with the host's CNI directories mounted under
//! `--host-root`:
//!
//! * `install` (init container): copy the plugin into the CNI bin dir, write the conflist (the
//!   chart's ConfigMap, Calico's `__KUBECONFIG_FILEPATH__` filled in) and a kubeconfig holding a
//!   token of the CNI plugin's own ServiceAccount;
//! * `refresh` (sidecar): rewrite that kubeconfig with a fresh token before the old one expires.
//!
//! The token comes from the TokenRequest API, asked with this pod's ServiceAccount (the node
//! agent's), which may mint tokens of the CNI account and nothing else. Every file is replaced by
//! a rename; the staged file is created owner-only (mode given to open(2)), so the token is never
//! readable by others, not even half-written, and gets its final mode only once complete.
//! What is pure (conflist and kubeconfig text) is in [`crate::cni::install`].

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

use crate::cni::install::{self, KubeconfigFor};

/// The kubeconfig and the staged files: owner read/write only.
pub const PRIVATE_MODE: u32 = 0o600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Copy tortie-ipam, write the conflist and the kubeconfig, then exit.
    Install,
    /// Write the kubeconfig now and again before each token expires, until stopped.
    Refresh,
}

#[derive(Args, Debug, Clone)]
pub struct InstallCniArgs {
    /// What to do.
    #[arg(value_enum, default_value_t = Step::Install)]
    pub step: Step,
    /// Where the host's filesystem is mounted; the directories below are paths on the host.
    #[arg(long, env = "TORTIE_HOST_ROOT", default_value = "/host")]
    pub host_root: PathBuf,
    /// The host's CNI plugin directory.
    #[arg(long, env = "TORTIE_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI network config directory.
    #[arg(long, env = "TORTIE_CNI_NET_DIR", default_value = "/etc/cni/net.d")]
    pub net_dir: PathBuf,
    /// File name of the conflist in the network config directory. The runtime uses the first
    /// file in name order: it must sort before any other network's (e.g. 10-calico.conflist).
    #[arg(long, env = "TORTIE_CNI_CONF_NAME", default_value = "05-tortie.conflist")]
    pub conf_name: String,
    /// The conflist to install, with `__KUBECONFIG_FILEPATH__` where the kubeconfig's path goes
    /// (the chart's ConfigMap, key `config`).
    #[arg(long, env = "TORTIE_CNI_CONFIG", default_value = "/tortie/config")]
    pub config: PathBuf,
    /// The plugin binary to install (default: `tortie-ipam` beside this executable).
    #[arg(long, env = "TORTIE_IPAM_BIN")]
    pub ipam_bin: Option<PathBuf>,
    /// File name of the plugin's kubeconfig in the network config directory.
    #[arg(long, env = "TORTIE_CNI_KUBECONFIG_NAME", default_value = "tortie-kubeconfig")]
    pub kubeconfig_name: String,
    /// Namespace of the CNI plugin's ServiceAccount (default: this pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The CNI plugin's ServiceAccount, whose token goes into the kubeconfig.
    #[arg(long, env = "TORTIE_CNI_SERVICEACCOUNT", default_value = "tortie-cni")]
    pub service_account: String,
    /// Lifetime asked for the plugin's token (the API server may grant less; at least 10m).
    #[arg(long, env = "TORTIE_CNI_TOKEN_LIFETIME", default_value = "24h", value_parser = super::run::parse_duration)]
    pub token_lifetime: Duration,
    /// How often `refresh` renews the token (sooner when the granted lifetime is shorter).
    #[arg(long, env = "TORTIE_CNI_TOKEN_REFRESH", default_value = "1h", value_parser = super::run::parse_duration)]
    pub token_refresh: Duration,
    /// API server URL written into the kubeconfig (default: the one this command talks to). The
    /// plugin runs on the host network: the address must be reachable from the node.
    #[arg(long, env = "TORTIE_CNI_APISERVER")]
    pub apiserver: Option<String>,
}

impl InstallCniArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        tracing_subscriber::fmt()
            .with_ansi(super::colour_logs())
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
            )
            .init();
        self.check()?;
        let config = super::client_config()
            .await
            .context("reading the Kubernetes client config")?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config.clone()).context("connecting to the Kubernetes API")?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &namespace);
        let writer = KubeconfigWriter {
            args: &self,
            config: &config,
            namespace: &namespace,
            sas: &sas,
        };
        match self.step {
            Step::Install => {
                self.install_plugin()?;
                writer.write().await?;
                self.install_conflist()?;
            }
            Step::Refresh => refresh(&writer, self.token_refresh).await,
        }
        Ok(ExitCode::SUCCESS)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.token_lifetime < Duration::from_secs(600) {
            anyhow::bail!(
                "--token-lifetime {:?}: the API server grants tokens of at least 10m",
                self.token_lifetime
            );
        }
        if self.token_refresh >= self.token_lifetime {
            anyhow::bail!(
                "--token-refresh {:?} is not shorter than --token-lifetime {:?}: the token would expire first",
                self.token_refresh,
                self.token_lifetime
            );
        }
        for (flag, name) in [
            ("--conf-name", &self.conf_name),
            ("--kubeconfig-name", &self.kubeconfig_name),
        ] {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                anyhow::bail!("{flag} {name:?}: a plain file name is needed");
            }
        }
        Ok(())
    }

    /// A host path under the host root.
    fn on_host(&self, host_path: &Path) -> PathBuf {
        self.host_root
            .join(host_path.strip_prefix("/").unwrap_or(host_path))
    }

    /// The kubeconfig's path as the plugin sees it on the host.
    fn kubeconfig_path(&self) -> PathBuf {
        self.net_dir.join(&self.kubeconfig_name)
    }

    fn install_plugin(&self) -> anyhow::Result<()> {
        let src = match &self.ipam_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name("tortie-ipam"),
        };
        let dir = self.on_host(&self.bin_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut from =
            std::fs::File::open(&src).with_context(|| format!("opening the plugin {}", src.display()))?;
        replace_with(&dir.join("tortie-ipam"), 0o755, |f| {
            std::io::copy(&mut from, f).map(drop)
        })?;
        info!(path = %self.bin_dir.join("tortie-ipam").display(), "installed the CNI plugin");
        Ok(())
    }

    fn install_conflist(&self) -> anyhow::Result<()> {
        let template = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading the network config {}", self.config.display()))?;
        let text = install::conflist(
            &template,
            &self.config.display().to_string(),
            &self.kubeconfig_path().display().to_string(),
        )?;
        let dir = self.on_host(&self.net_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        replace(&dir.join(&self.conf_name), 0o644, text.as_bytes())?;
        info!(path = %self.net_dir.join(&self.conf_name).display(), "wrote the network config");
        Ok(())
    }
}

struct KubeconfigWriter<'a> {
    args: &'a InstallCniArgs,
    config: &'a kube::Config,
    namespace: &'a str,
    sas: &'a Api<ServiceAccount>,
}

impl KubeconfigWriter<'_> {
    /// Asks for a token of the CNI account and writes the kubeconfig; returns the time the token
    /// has left as granted.
    async fn write(&self) -> anyhow::Result<Duration> {
        let a = self.args;
        let ask = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(a.token_lifetime.as_secs() as i64),
                ..Default::default()
            },
            ..Default::default()
        };
        let granted = self
            .sas
            .create_token_request(&a.service_account, &PostParams::default(), &ask)
            .await
            .with_context(|| {
                format!(
                    "asking a token of ServiceAccount {}/{}",
                    self.namespace, a.service_account
                )
            })?
            .status
            .context("the TokenRequest answer has no status")?;
        if granted.token.is_empty() {
            anyhow::bail!("the TokenRequest answer holds no token");
        }
        let ca = match &self.config.root_cert_file {
            // In a pod: the mounted CA file, read each time (it can be rotated).
            Some(f) => {
                Some(std::fs::read(f).with_context(|| format!("reading the cluster CA {}", f.display()))?)
            }
            None => self
                .config
                .root_cert
                .as_deref()
                .map(|ders| install::pem_bundle(ders).into_bytes()),
        };
        let server = match &a.apiserver {
            Some(s) => s.clone(),
            None => self
                .config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_string(),
        };
        let text = install::kubeconfig(&KubeconfigFor {
            server: &server,
            ca_pem: ca.as_deref(),
            user: &a.service_account,
            token: &granted.token,
        })?;
        let dir = a.on_host(&a.net_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        replace(&dir.join(&a.kubeconfig_name), PRIVATE_MODE, text.as_bytes())?;
        let left = granted
            .expiration_timestamp
            .0
            .duration_since(jiff::Timestamp::now());
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        info!(
            path = %a.kubeconfig_path().display(),
            account = %format!("{}/{}", self.namespace, a.service_account),
            expires_in_s = left.as_secs(),
            "wrote the plugin's kubeconfig"
        );
        Ok(left)
    }
}

/// Renews the kubeconfig until SIGTERM or Ctrl-C; a failed attempt is retried after 30 s.
async fn refresh(writer: &KubeconfigWriter<'_>, period: Duration) {
    let stop = terminated();
    tokio::pin!(stop);
    loop {
        let wait = match writer.write().await {
            Ok(left) => install::next_refresh(period, left),
            Err(e) => {
                warn!(error = %super::error_line(&e), "renewing the plugin's token failed; retrying in 30s");
                Duration::from_secs(30)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => {
                info!("stopping");
                return;
            }
        }
    }
}

/// SIGTERM (the kubelet stopping the pod; as PID 1 the default action would be to ignore it) or
/// Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Replaces `dest` with `body` (see [`replace_with`]).
pub fn replace(dest: &Path, mode: u32, body: &[u8]) -> anyhow::Result<()> {
    replace_with(dest, mode, |f| f.write_all(body))
}

/// Creates the staging file for `dest`: in its directory (so the final rename is atomic), named so
/// no CNI runtime loads it (`.tortie-*.tmp`), and owner-only from its creation (mode passed to
/// open(2) with O_EXCL: never a moment where others could open it).
pub fn stage(dest: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".tortie-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))
        .tempfile_in(dir)
}

/// Replaces `dest` atomically: what `fill` writes goes into a [`stage`]d file, which gets `mode`
/// only once complete and synced, then is renamed over `dest`.
pub fn replace_with(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let at = |what: &str| format!("{what} {}", dest.display());
    let mut tmp = stage(dest).with_context(|| at("staging"))?;
    fill(tmp.as_file_mut()).with_context(|| at("writing"))?;
    let f = tmp.as_file();
    f.sync_all().with_context(|| at("syncing"))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| at("setting the mode of"))?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| at("replacing"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn a_staged_file_is_owner_only_before_its_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        // Even with a umask that would let everyone read what is created.
        let old = unsafe { libc::umask(0) };
        let staged = stage(&dir.path().join("tortie-kubeconfig"));
        unsafe { libc::umask(old) };
        let staged = staged.unwrap();
        let m = staged.as_file().metadata().unwrap();
        assert_eq!(m.len(), 0);
        assert_eq!(m.mode() & 0o777, PRIVATE_MODE);
        let name = staged.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".tortie-") && name.ends_with(".tmp"), "{name}");
    }

    #[test]
    fn replace_gives_the_final_mode_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("tortie-kubeconfig");
        // An older kubeconfig that was readable by all is replaced, not rewritten in place.
        std::fs::write(&kc, "old").unwrap();
        std::fs::set_permissions(&kc, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace(&kc, PRIVATE_MODE, b"token: new").unwrap();
        assert_eq!(std::fs::read_to_string(&kc).unwrap(), "token: new");
        assert_eq!(mode(&kc), 0o600);
        let conf = dir.path().join("05-tortie.conflist");
        replace(&conf, 0o644, b"{}").unwrap();
        assert_eq!(mode(&conf), 0o644);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tortie-ipam");
        std::fs::write(&f, "old").unwrap();
        let e = replace_with(&f, 0o755, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(format!("{e:#}").contains("writing"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn args(extra: &[&str]) -> InstallCniArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: InstallCniArgs,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(extra);
        T::try_parse_from(argv).unwrap().a
    }

    #[test]
    fn host_paths_land_under_the_host_root() {
        let a = args(&["--host-root=/host"]);
        assert_eq!(a.on_host(&a.net_dir), Path::new("/host/etc/cni/net.d"));
        assert_eq!(a.kubeconfig_path(), Path::new("/etc/cni/net.d/tortie-kubeconfig"));
        assert_eq!(a.step, Step::Install);
    }

    #[test]
    fn bad_flags_are_named() {
        for (argv, want) in [
            (&["--token-lifetime=5m"][..], "--token-lifetime"),
            (
                &["--token-lifetime=1h", "--token-refresh=2h"][..],
                "--token-refresh",
            ),
            (&["--conf-name=../x.conflist"][..], "--conf-name"),
            (&["--kubeconfig-name="][..], "--kubeconfig-name"),
        ] {
            let e = args(argv).check().unwrap_err().to_string();
            assert!(e.starts_with(want), "{argv:?}: {e}");
        }
        args(&[]).check().unwrap();
    }
}
