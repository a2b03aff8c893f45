//! The node agent's IPAM server: one warm [`Shared`] (engine, pool and config watches, this
//! node's pods, all namespaces) answering `tortie-ipam` over a unix socket. Each connection is a
//! task of its own; ADDs for the node still queue on the engine's per-host lock, everything else
//! (pod lookups, DELs of other blocks, framing) runs concurrently.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::bytes::Bytes;
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, info, info_span, warn};

use super::env::{CniEnv, Command};
use super::error::CniError;
use super::plugin::{PodCache, Shared};
use super::wire::{self, Request, Response, WireError};
use super::{NetConf, result};
use crate::ipam::Ipam;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("IPAM socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the IPAM engine: {0}")]
    Engine(#[from] crate::ipam::IpamError),
    #[error("watching {0} did not complete its first listing within 60 s")]
    NotReady(&'static str),
}

/// Starts the engine and the watches for `node` and waits until they have listed once, so that
/// the first answer is already a warm one. The engine claims the node's next block ahead
/// ([`warm_with`]).
pub async fn warm(client: kube::Client, node: &str) -> Result<Arc<Shared>, ServerError> {
    warm_with(client, node, true).await
}

/// [`warm`]; `claim_ahead`: the engine claims the node's next block in the background when few
/// free addresses are left ([`crate::ipam::IpamOptions::claim_ahead`]).
pub async fn warm_with(
    client: kube::Client,
    node: &str,
    claim_ahead: bool,
) -> Result<Arc<Shared>, ServerError> {
    let mode = crate::api::CrdMode::detect(&client).await.map_err(|e| {
        ServerError::Engine(crate::ipam::IpamError::BadRequest(format!(
            "listing API groups: {e}"
        )))
    })?;
    let opts = crate::ipam::IpamOptions {
        claim_ahead,
        ..Default::default()
    };
    let ipam = Ipam::new_with(client.clone(), mode, opts).await?;
    match ipam.warm_host(node).await {
        Ok(n) => info!(node, blocks = n, "IPAM cache warmed"),
        Err(e) => warn!(node, error = %e, "could not preload the node's blocks (they load on first use)"),
    }
    warm_connections(&ipam, node).await;
    let pods = spawn_meta_reflector(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    );
    let namespaces = spawn_meta_reflector(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    );
    let limit = Duration::from_secs(60);
    tokio::time::timeout(limit, pods.wait_until_ready())
        .await
        .map_err(|_| ServerError::NotReady("pods"))?
        .map_err(|_| ServerError::NotReady("pods"))?;
    tokio::time::timeout(limit, namespaces.wait_until_ready())
        .await
        .map_err(|_| ServerError::NotReady("namespaces"))?
        .map_err(|_| ServerError::NotReady("namespaces"))?;
    Ok(Arc::new(Shared::warm(
        client,
        ipam,
        PodCache {
            node: node.to_string(),
            pods,
            namespaces,
        },
    )))
}

/// API connections opened before the first pods: a burst of ADDs holds one connection per
/// handle write, block write and claim at once, and each connection opened during the burst
/// costs its request a TLS handshake (tens of milliseconds on a busy node). A few cheap reads at
/// once leave that many connections in the client's pool.
const WARM_CONNECTIONS: usize = 16;

async fn warm_connections(ipam: &Ipam, node: &str) {
    let reads = (0..WARM_CONNECTIONS).map(|_| ipam.store().node_labels(node));
    let failed = futures::future::join_all(reads)
        .await
        .iter()
        .filter(|r| r.is_err())
        .count();
    if failed > 0 {
        debug!(
            failed,
            "some connection warm-up reads failed (connections open on first use)"
        );
    }
}

/// Claims the node's first blocks in the background ([`Ipam::claim_first_blocks`]) so that its
/// first pods find one ready. Called once the socket is bound: from then on tortie-ipam reaches
/// this server, and an ADD arriving during the claim waits for it (the host's claim lock) rather
/// than claiming a block of its own. A failure is logged: the first ADD then claims.
pub fn claim_first_blocks(shared: &Shared, node: &str) -> tokio::task::JoinHandle<()> {
    let ipam = shared.warm_ipam().cloned();
    let node = node.to_string();
    let span = info_span!("claim_first_blocks", node = %node);
    tokio::spawn(
        async move {
            let Some(ipam) = ipam else { return };
            match ipam.claim_first_blocks(&node).await {
                Ok(blocks) if blocks.is_empty() => debug!("no block to claim ahead"),
                Ok(blocks) => info!(?blocks, "claimed the node's first blocks ahead of its pods"),
                Err(e) => warn!(error = %e, "could not claim the node's first block ahead (its first ADD claims it)"),
            }
        }
        .instrument(span),
    )
}

/// A metadata-only reflector (annotations and labels are all requests use), running until the
/// process ends; a watch error is retried with backoff.
fn spawn_meta_reflector<K>(
    api: Api<PartialObjectMeta<K>>,
    cfg: watcher::Config,
) -> reflector::Store<PartialObjectMeta<K>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let writer = reflector::store::Writer::default();
    let reader = writer.as_reader();
    let stream = watcher(api, cfg).default_backoff();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(reflector(writer, stream));
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                debug!(error = %e, "watch error (retrying)");
            }
        }
    });
    reader
}

/// Binds the socket: its directory is created, a stale socket file from an earlier run removed.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let l = UnixListener::bind(path).map_err(err)?;
    // Only root (the container runtime) may allocate addresses.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

/// Accepts connections until the listener fails; each is answered by a task of its own.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &shared).await {
                warn!(error = %e, "IPAM socket connection");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

async fn connection(stream: UnixStream, shared: &Shared) -> Result<(), ConnError> {
    let mut framed = Framed::new(stream, wire::codec());
    let body = match framed.next().await {
        Some(body) => body?,
        // Connected and left without a word: a liveness probe.
        None => return Ok(()),
    };
    let req: Request = wire::decode(&body)?;
    let resp = answer(shared, req).await;
    let body = Bytes::from(wire::body(&resp));
    SinkExt::<Bytes>::send(&mut framed, body).await?;
    // Flushed and shut down: the plugin reads to the end of its one answer.
    SinkExt::<Bytes>::close(&mut framed).await?;
    Ok(())
}

/// One request, decided by the same code as the in-process path.
pub async fn answer(shared: &Shared, req: Request) -> Response {
    let stdin = req.stdin.as_bytes();
    let env = match CniEnv::from_vars(|k| req.env.get(k).map(String::as_str)) {
        Ok(e) => e,
        Err(e) => return Response::failed(&e, stdin),
    };
    if env.command == Command::Version {
        return Response::Refused {
            reason: "VERSION is answered by the plugin".into(),
        };
    }
    let conf = match NetConf::parse(stdin).and_then(|c| result::check_version(&c.cni_version).map(|_| c)) {
        Ok(c) => c,
        Err(e) => return Response::failed(&e, stdin),
    };
    if let Some(m) = conf.crd_mode
        && m != shared.mode()
    {
        return Response::Refused {
            reason: format!(
                "the config asks for {m} objects, the agent serves {}",
                shared.mode()
            ),
        };
    }
    let span = info_span!("ipam-request", node = %req.node);
    let out: Result<Option<serde_json::Value>, CniError> =
        shared.run(&env, &conf, stdin, &req.node).instrument(span).await;
    match out {
        Ok(output) => Response::Ok { output },
        Err(e) => {
            warn!(code = e.code(), command = ?env.command, container = %env.container_id, "{e}");
            Response::failed(&e, stdin)
        }
    }
}
