//! Accept loops: one per listening socket. The connection caps are applied before the greeting.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::conn::{self, ConnContext};
use super::guard::ConnectionLimiter;
use super::reply;
use super::session::PortKind;

pub async fn accept_loop(
    listener: TcpListener,
    port: PortKind,
    ctx: Arc<ConnContext>,
    limiter: Arc<ConnectionLimiter>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (mut tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = limiter.try_acquire(peer.ip()) else {
            ctx.metrics.connections_refused.inc();
            tracing::info!(%peer, "connection refused: too many connections");
            tokio::spawn(async move {
                // Best effort, bounded: on the TLS port the client will not understand it anyway.
                if port == PortKind::Submission {
                    let text = reply::too_many_connections().to_wire();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        tcp.write_all(text.as_bytes()),
                    )
                    .await;
                }
                let _ = tcp.shutdown().await;
            });
            continue;
        };
        ctx.metrics.connections.inc();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            conn::serve(tcp, peer, port, ctx, shutdown).await;
            drop(permit);
        });
    }
}
