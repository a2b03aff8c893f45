//! `tortie run` as a real process against the test cluster, and its HTTP server (/metrics,
//! /readyz).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `tortie run` process; killed when dropped.
pub struct Operator {
    child: Option<Child>,
    pub port: u16,
    pub identity: String,
    pub log: PathBuf,
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Operator {
    /// Starts `tortie run --identity <identity> <args>` on a free metrics port, leases in `default`.
    pub fn start(identity: &str, args: &[&str]) -> Operator {
        let c = super::cluster();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("tortie-op-{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // TORTIE_BIN: a copy of the binary, for shared target dirs where another build may replace it.
        let bin = std::env::var("TORTIE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tortie").to_string());
        let child = Command::new(bin)
            .arg("run")
            .args([
                "--identity",
                identity,
                "--namespace",
                "default",
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--metrics-port", &port.to_string()])
            .args(args)
            .env("KUBECONFIG", &c.kubeconfig)
            .env("TORTIE_LOG", "info,tortie=debug,kube=warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn tortie run");
        Operator {
            child: Some(child),
            port,
            identity: identity.to_string(),
            log,
        }
    }

    /// GET a path of the operator's HTTP server: (status code, body); None while it is not up.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let (port, path) = (self.port, path.to_string());
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Some((code, body))
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of a sample line `name{labels} value` in /metrics.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let m = self.metrics().await;
        m.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub async fn wait_ready(&self) {
        super::wait_until(
            &format!("operator {} ready", self.identity),
            Duration::from_secs(60),
            || async { matches!(self.get("/readyz").await, Some((200, _))).then_some(()) },
        )
        .await;
    }

    pub async fn is_leader(&self) -> bool {
        self.metric("tortie_leader").await == Some(1.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: the process dies without releasing anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        for _ in 0..200 {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
