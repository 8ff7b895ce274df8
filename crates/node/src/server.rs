//! The HTTPS accept loop. It is hand-written (rather than `axum::serve`) so
//! each connection's TLS client certificate can be attached to its requests,
//! and so connections past the caps of [`ConnGate`] are closed at once.

use crate::conn_gate::{ConnGate, Refusal};
use crate::write_deadline::{WriteDeadline, MIN_RATE, WRITE_STALL};
use crate::{api, tls, Shared};
use axum::Extension;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The authenticated client of a connection, if it presented a certificate.
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity(pub Option<comity_core::Hash>);

pub async fn serve(
    shared: Arc<Shared>,
    listen: SocketAddr,
    tls: rustls::ServerConfig,
    gate: ConnGate,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let router = api::router(shared.clone());
    let handle = tokio::spawn(async move {
        let refused = Arc::new(RefusalLog::default());
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match gate.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    refused.note(peer, why);
                    continue; // dropping `tcp` closes it
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let router = router.clone();
            let (shared, refused) = (shared.clone(), refused.clone());
            tokio::spawn(async move {
                // The place is held until the connection ends; one in the
                // reserve is given back soon by an idle socket.
                let slot = slot;
                let handshake = if slot.probation.is_some() {
                    PROBATION_HANDSHAKE
                } else {
                    HANDSHAKE
                };
                let tcp = WriteDeadline::new(tcp, WRITE_STALL, MIN_RATE);
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    failed => {
                        if let Ok(Err(e)) = failed {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        if let Some(why) = slot.probation {
                            refused.note(peer, why); // past a cap, and not shown to be a peer
                        }
                        return;
                    }
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(tls::client_id);
                // Past a cap only the other nodes are served (see `ConnGate`).
                if let Some(why) = slot.probation {
                    if !client.is_some_and(|fp| (shared.trust)(&fp)) {
                        refused.note(peer, why);
                        return;
                    }
                }
                let svc = TowerToHyperService::new(router.layer(Extension(ClientIdentity(client))));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(tls), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
    Ok((addr, handle))
}

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// The same for a connection on probation in the peers' reserve: a peer
/// completes it at once, a socket left idle gives its place back soon.
const PROBATION_HANDSHAKE: Duration = Duration::from_secs(2);

/// Counts refused connections, and warns of them at most every
/// [`RefusalLog::EVERY`] with how many there were, so a flood does not
/// flood the log too.
#[derive(Default)]
struct RefusalLog(std::sync::Mutex<(Option<std::time::Instant>, u64)>);

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&self, peer: SocketAddr, why: Refusal) {
        metrics::counter!("comity_connections_refused_total", "reason" => why.as_str())
            .increment(1);
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (since, count) = &mut *g;
        *count += 1;
        if since.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        tracing::warn!(
            %peer,
            reason = why.as_str(),
            refused = *count,
            "closing new connections: too many open (limits.max_connections, max_connections_per_ip)"
        );
        *since = Some(std::time::Instant::now());
        *count = 0;
    }
}
