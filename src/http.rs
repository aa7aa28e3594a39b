//! The HTTPS listener shared by JMAP and the SNS feedback endpoint: rustls with the same
//! (reloadable) certificate as SMTP, HTTP/1.1 via hyper, an axum [`Router`] built by the
//! composition root. Bounded: a connection cap, a deadline on the TLS handshake and on request
//! headers (hyper applies it to every request on a kept-alive connection, so it is also the idle
//! limit), a total connection lifetime; on shutdown connections finish their request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::HttpConfig;
use crate::live::Live;

/// Binds every configured address and serves `router` on each until `stop`. Returns the bound
/// addresses (port 0 resolved) and the accept tasks.
pub async fn serve(
    config: &HttpConfig,
    tls: Arc<Live<rustls::ServerConfig>>,
    router: Router,
    stop: watch::Receiver<bool>,
) -> Result<(Vec<SocketAddr>, Vec<JoinHandle<()>>)> {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut bound = Vec::new();
    let mut tasks = Vec::new();
    for addr in &config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTPS {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "HTTPS listening (JMAP, SNS feedback)");
        bound.push(local);
        tasks.push(tokio::spawn(accept_loop(
            listener,
            tls.clone(),
            router.clone(),
            slots.clone(),
            Duration::from_secs(config.handshake_timeout_secs),
            Duration::from_secs(config.connection_lifetime_secs),
            stop.clone(),
        )));
    }
    Ok((bound, tasks))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Live<rustls::ServerConfig>>,
    router: Router,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    lifetime: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The ALPN-carrying config is rebuilt only when a reload swaps the certificate.
    let mut cached: Option<(Arc<rustls::ServerConfig>, TlsAcceptor)> = None;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = stopped(&mut stop) => return,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let current = tls.get();
        let acceptor = match &cached {
            Some((base, acceptor)) if Arc::ptr_eq(base, &current) => acceptor.clone(),
            _ => {
                let mut config = (*current).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let acceptor = TlsAcceptor::from(Arc::new(config));
                cached = Some((current, acceptor.clone()));
                acceptor
            }
        };
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "HTTPS handshake timed out");
                    return;
                }
            };
            // Handlers that need the client's address (e.g. a JMAP submission's Received
            // header) read it as `ConnectInfo<SocketAddr>`.
            let service = tower::ServiceExt::map_request(
                router.into_service(),
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                },
            );
            let service = TowerToHyperService::new(service);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let expiry = tokio::time::sleep(lifetime);
            tokio::pin!(expiry);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn.as_mut()).await;
                }
                _ = &mut expiry => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn.as_mut()).await;
                }
            }
        });
    }
}

/// Resolves once shutdown is signalled (the borrow of the flag ends here, keeping the callers'
/// futures `Send`).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
