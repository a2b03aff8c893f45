//! What `tortie install-cni` writes on a node, as pure functions: the conflist from the chart's
//! ConfigMap (Calico's `__KUBECONFIG_FILEPATH__` placeholder filled in) and the kubeconfig holding a
//! token of the CNI plugin's ServiceAccount. The command ([`crate::cli::install_cni`]) asks the
//! API for the token and writes the files.

use std::time::Duration;

use serde_json::Value;

/// The placeholder the chart's conflist carries where the plugin's kubeconfig path goes (the
/// same one Calico's install-cni substitutes).
pub const KUBECONFIG_PLACEHOLDER: &str = "__KUBECONFIG_FILEPATH__";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("network config {source_name}: not JSON: {error}")]
    NotJson {
        source_name: String,
        error: serde_json::Error,
    },
    #[error("network config {source_name}: {what}")]
    NotAConflist { source_name: String, what: String },
    #[error("the kubeconfig could not be rendered: {0}")]
    Kubeconfig(String),
}

/// The conflist to install: `template` (named `source_name` in errors) checked to be a CNI
/// network configuration list and every occurrence of [`KUBECONFIG_PLACEHOLDER`] in its strings
/// replaced by `kubeconfig_path`. Pretty JSON with a final newline.
pub fn conflist(template: &str, source_name: &str, kubeconfig_path: &str) -> Result<String, InstallError> {
    let bad = |what: &str| InstallError::NotAConflist {
        source_name: source_name.to_string(),
        what: what.to_string(),
    };
    let mut conf: Value = serde_json::from_str(template).map_err(|error| InstallError::NotJson {
        source_name: source_name.to_string(),
        error,
    })?;
    if !conf.is_object() {
        return Err(bad("not a JSON object"));
    }
    if conf["name"].as_str().is_none_or(str::is_empty) {
        return Err(bad("field `name`: missing or not a non-empty string"));
    }
    let Some(plugins) = conf["plugins"].as_array() else {
        return Err(bad(
            "field `plugins`: missing or not a list (a single-plugin .conf is not a conflist)",
        ));
    };
    if plugins.is_empty() {
        return Err(bad("field `plugins`: empty"));
    }
    for (i, p) in plugins.iter().enumerate() {
        if p["type"].as_str().is_none_or(str::is_empty) {
            return Err(bad(&format!(
                "field `plugins[{i}].type`: missing or not a non-empty string"
            )));
        }
    }
    substitute(&mut conf, kubeconfig_path);
    let mut out = serde_json::to_string_pretty(&conf).expect("a JSON value serializes");
    out.push('\n');
    Ok(out)
}

fn substitute(v: &mut Value, path: &str) {
    match v {
        Value::String(s) if s.contains(KUBECONFIG_PLACEHOLDER) => {
            *s = s.replace(KUBECONFIG_PLACEHOLDER, path)
        }
        Value::Array(items) => items.iter_mut().for_each(|x| substitute(x, path)),
        Value::Object(map) => map.values_mut().for_each(|x| substitute(x, path)),
        _ => {}
    }
}

/// DER certificates as one PEM bundle (what a kubeconfig's `certificate-authority-data` holds,
/// base64-encoded once more).
pub fn pem_bundle(ders: &[Vec<u8>]) -> String {
    let pems: Vec<pem::Pem> = ders
        .iter()
        .map(|d| pem::Pem::new("CERTIFICATE", d.clone()))
        .collect();
    pem::encode_many_config(
        &pems,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// What the CNI plugin's kubeconfig says.
#[derive(Debug, Clone)]
pub struct KubeconfigFor<'a> {
    /// The API server URL the plugin uses (on the host network: the node can reach it).
    pub server: &'a str,
    /// PEM of the CA that signed the API server's certificate; `None`: the system's roots.
    pub ca_pem: Option<&'a [u8]>,
    /// The ServiceAccount the token belongs to (the user's name in the file).
    pub user: &'a str,
    pub token: &'a str,
}

/// The kubeconfig as YAML, built from kube's own [`kube::config::Kubeconfig`] type so that what
/// the plugin reads back is what was meant.
pub fn kubeconfig(k: &KubeconfigFor<'_>) -> Result<String, InstallError> {
    let mut cluster = serde_json::json!({ "server": k.server });
    if let Some(pem) = k.ca_pem {
        cluster["certificate-authority-data"] = data_encoding::BASE64.encode(pem).into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "local", "cluster": cluster }],
        "users": [{ "name": k.user, "user": { "token": k.token } }],
        "contexts": [{ "name": "tortie-cni", "context": { "cluster": "local", "user": k.user } }],
        "current-context": "tortie-cni",
    });
    let typed: kube::config::Kubeconfig =
        serde_json::from_value(doc).map_err(|e| InstallError::Kubeconfig(e.to_string()))?;
    serde_saphyr::to_string(&typed).map_err(|e| InstallError::Kubeconfig(e.to_string()))
}

/// How long to wait before renewing a token that expires in `left`: the configured period, but
/// never later than two thirds of the way to the expiry (the API server may grant a shorter
/// lifetime than asked), and at least 10 s.
pub fn next_refresh(period: Duration, left: Duration) -> Duration {
    period.min(left * 2 / 3).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART_CONF: &str = r#"{
      "name": "k8s-pod-network", "cniVersion": "1.0.0",
      "plugins": [
        {"type": "ptp", "ipam": {"type": "tortie-ipam", "gateway": "node"},
         "kubernetes": {"kubeconfig": "__KUBECONFIG_FILEPATH__"}},
        {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
      ]
    }"#;

    #[test]
    fn the_conflist_gets_the_kubeconfig_path_and_keeps_everything_else() {
        let out = conflist(CHART_CONF, "/tortie/config", "/etc/cni/net.d/tortie-kubeconfig").unwrap();
        assert!(out.ends_with("}\n"));
        assert!(!out.contains(KUBECONFIG_PLACEHOLDER));
        let got: Value = serde_json::from_str(&out).unwrap();
        let mut want: Value = serde_json::from_str(CHART_CONF).unwrap();
        want["plugins"][0]["kubernetes"]["kubeconfig"] = "/etc/cni/net.d/tortie-kubeconfig".into();
        assert_eq!(got, want);
        // Key order is the chart's (the runtime does not care, a person reading it does).
        let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "cniVersion", "plugins"]);
    }

    #[test]
    fn the_placeholder_is_replaced_wherever_it_is() {
        let t = r#"{"name":"n","plugins":[{"type":"calico","kubernetes":{"kubeconfig":"__KUBECONFIG_FILEPATH__"},
                    "args":["--kc=__KUBECONFIG_FILEPATH__"]}]}"#;
        let got: Value = serde_json::from_str(&conflist(t, "x", "/k").unwrap()).unwrap();
        assert_eq!(got["plugins"][0]["kubernetes"]["kubeconfig"], "/k");
        assert_eq!(got["plugins"][0]["args"][0], "--kc=/k");
    }

    #[test]
    fn what_is_not_a_conflist_is_refused_naming_source_and_field() {
        for (t, want) in [
            ("{", "network config /tortie/config: not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"plugins":[{"type":"ptp"}]}"#, "field `name`"),
            (r#"{"name":"n","type":"ptp"}"#, "field `plugins`: missing"),
            (r#"{"name":"n","plugins":[]}"#, "field `plugins`: empty"),
            (
                r#"{"name":"n","plugins":[{"type":"ptp"},{"ipam":{}}]}"#,
                "field `plugins[1].type`",
            ),
        ] {
            let e = conflist(t, "/tortie/config", "/k").unwrap_err().to_string();
            assert!(e.starts_with("network config /tortie/config: "), "{t}: {e}");
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn pem_bundle_decodes_back_to_the_certificates() {
        let ders = vec![vec![1u8; 100], (0..=255u8).collect::<Vec<u8>>()];
        let text = pem_bundle(&ders);
        assert!(
            !text.contains('\r') && text.lines().all(|l| l.len() <= 64),
            "{text}"
        );
        let back: Vec<Vec<u8>> = pem::parse_many(&text)
            .unwrap()
            .into_iter()
            .map(|p| {
                assert_eq!(p.tag(), "CERTIFICATE");
                p.into_contents()
            })
            .collect();
        assert_eq!(back, ders);
    }

    #[test]
    fn the_kubeconfig_reads_back_as_the_plugins_client_config() {
        let ca = pem_bundle(&[vec![7u8; 40]]);
        let text = kubeconfig(&KubeconfigFor {
            server: "https://10.0.0.1:6443",
            ca_pem: Some(ca.as_bytes()),
            user: "tortie-cni",
            token: "eyJ.token\"with:odd'chars",
        })
        .unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("tortie-cni"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        let ca_back = data_encoding::BASE64
            .decode(cluster.certificate_authority_data.as_ref().unwrap().as_bytes())
            .unwrap();
        assert_eq!(ca_back, ca.as_bytes());
        assert_eq!(kc.auth_infos[0].name, "tortie-cni");
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(
            (ctx.cluster.as_str(), ctx.user.as_deref()),
            ("local", Some("tortie-cni"))
        );
        // The token survives YAML quoting exactly.
        use kube::config::KubeConfigOptions;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let cfg = rt
            .block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://10.0.0.1:6443/");
        let token = serde_json::to_value(
            kube::config::Kubeconfig::from_yaml(&text).unwrap().auth_infos[0]
                .auth_info
                .clone()
                .unwrap(),
        )
        .unwrap()["token"]
            .clone();
        assert_eq!(token, "eyJ.token\"with:odd'chars");
        assert_eq!(cfg.root_cert.unwrap(), vec![vec![7u8; 40]]);
    }

    #[test]
    fn without_a_ca_the_kubeconfig_has_no_ca_field() {
        let text = kubeconfig(&KubeconfigFor {
            server: "https://api.example:443",
            ca_pem: None,
            user: "u",
            token: "t",
        })
        .unwrap();
        assert!(!text.contains("certificate-authority"), "{text}");
    }

    #[test]
    fn refresh_comes_before_the_token_expires() {
        let h = Duration::from_secs(3600);
        assert_eq!(next_refresh(h, Duration::from_secs(86400)), h);
        // A token granted for 10 min (the API server's minimum) is renewed after 400 s.
        assert_eq!(
            next_refresh(h, Duration::from_secs(600)),
            Duration::from_secs(400)
        );
        assert_eq!(next_refresh(h, Duration::ZERO), Duration::from_secs(10));
    }
}
