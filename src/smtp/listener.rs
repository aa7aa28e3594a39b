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

/// The accept queue asked of the kernel (it caps it at `net.core.somaxconn`): at least this, or
/// `smtp.max_connections` when larger. A burst of connections beyond the queue is not refused
/// cleanly: under SYN cookies the kernel drops the client's final ACK, the client believes it
/// is connected and, SMTP being server-speaks-first, waits for a greeting that never comes
/// (tokio's default of 1,024 left 127 of 1,000 simultaneous clients hanging in
/// `scripts/bench-peer`'s idle-session workload).
const MIN_LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` (SO_REUSEADDR as the standard library's, so a restart
/// does not wait for TIME_WAIT) with an accept queue sized for `max_connections`.
pub fn bind(addr: std::net::SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let backlog = u32::try_from(max_connections)
        .unwrap_or(u32::MAX)
        .clamp(MIN_LISTEN_BACKLOG, 65_535);
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

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
