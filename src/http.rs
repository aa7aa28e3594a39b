//! The HTTPS listener shared by JMAP and the SNS feedback endpoint: rustls with the same
//! (reloadable) certificate as SMTP, HTTP/1.1 via hyper, an axum [`Router`] built by the
//! composition root. Bounded: a connection cap, a deadline on the TLS handshake and on request
//! headers (hyper applies it to every request on a kept-alive connection, so it is also the idle
//! limit), a total connection lifetime; on shutdown connections finish their request. One client
//! address holds at most `max_connections_per_ip` connections, and a request body must arrive
//! within `body_timeout_secs` and at `body_min_rate` on average ([`PacedBody`]): the SMTP side's
//! rules (`smtp::guard`), so a slow dribble from one address cannot lock others out.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
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
use crate::smtp::guard::ConnectionLimiter;

/// How a request body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// The whole body within this.
    pub deadline: Duration,
    /// No rate is asked during this first stretch (a client's first write may lag).
    pub grace: Duration,
    /// Octets per second on average after the grace; 0: none.
    pub min_rate: u64,
}

/// Limits of one listener, from [`HttpConfig`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
    lifetime: Duration,
    pace: BodyPace,
}

/// Binds every configured address and serves `router` on each until `stop`. Returns the bound
/// addresses (port 0 resolved) and the accept tasks. With `acme_tls_alpn`, the listener also
/// negotiates `acme-tls/1` for the CA's TLS-ALPN-01 validator (RFC 8737), whose certificate the
/// ACME resolver in `tls` picks, and closes such a connection after the handshake.
pub async fn serve(
    config: &HttpConfig,
    tls: Arc<Live<rustls::ServerConfig>>,
    acme_tls_alpn: bool,
    router: Router,
    stop: watch::Receiver<bool>,
) -> Result<(Vec<SocketAddr>, Vec<JoinHandle<()>>)> {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // The total is the semaphore's; this counts per client.
    let per_ip = ConnectionLimiter::new(usize::MAX, config.max_connections_per_ip.max(1));
    let handshake_timeout = Duration::from_secs(config.handshake_timeout_secs);
    let limits = Limits {
        handshake_timeout,
        lifetime: Duration::from_secs(config.connection_lifetime_secs),
        pace: BodyPace {
            deadline: Duration::from_secs(config.body_timeout_secs),
            grace: handshake_timeout,
            min_rate: config.body_min_rate,
        },
    };
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
            acme_tls_alpn,
            router.clone(),
            slots.clone(),
            per_ip.clone(),
            limits,
            stop.clone(),
        )));
    }
    Ok((bound, tasks))
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Live<rustls::ServerConfig>>,
    acme_tls_alpn: bool,
    router: Router,
    slots: Arc<Semaphore>,
    per_ip: Arc<ConnectionLimiter>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let Limits {
        handshake_timeout,
        lifetime,
        pace,
    } = limits;
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
        // Over its address's share: closed before the handshake, its slot given back.
        let Some(ip_permit) = per_ip.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "HTTPS connection refused: too many from this address");
            drop(tcp);
            continue;
        };
        let current = tls.get();
        let acceptor = match &cached {
            Some((base, acceptor)) if Arc::ptr_eq(base, &current) => acceptor.clone(),
            _ => {
                let mut config = (*current).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                if acme_tls_alpn {
                    config
                        .alpn_protocols
                        .push(crate::acme::challenge::ACME_TLS_ALPN.to_vec());
                }
                let acceptor = TlsAcceptor::from(Arc::new(config));
                cached = Some((current, acceptor.clone()));
                acceptor
            }
        };
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = (permit, ip_permit);
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
            // RFC 8737 §3: the validator only looks at the certificate; nothing is served.
            if stream.get_ref().1.alpn_protocol() == Some(crate::acme::challenge::ACME_TLS_ALPN) {
                return;
            }
            // Handlers that need the client's address (e.g. a JMAP submission's Received
            // header) read it as `ConnectInfo<SocketAddr>`.
            let service = tower::ServiceExt::map_request(
                router.into_service(),
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(|body| axum::body::Body::new(PacedBody::new(body, pace)));
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

/// A request body that fails (the handler sees a read error and the connection closes) when it
/// does not arrive within [`BodyPace::deadline`], or falls below [`BodyPace::min_rate`] on
/// average after the grace. The clock starts when the handler first reads the body.
pub struct PacedBody<B> {
    inner: B,
    pace: BodyPace,
    started: Option<tokio::time::Instant>,
    received: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// Why a [`PacedBody`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("request body too slow: {0}")]
pub struct TooSlow(&'static str);

impl<B> PacedBody<B> {
    pub fn new(inner: B, pace: BodyPace) -> Self {
        PacedBody {
            inner,
            pace,
            started: None,
            received: 0,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// When the body fails if nothing more arrives: the deadline, or the moment the average
    /// rate would fall below the floor.
    fn give_up_at(&self, started: tokio::time::Instant) -> (tokio::time::Instant, &'static str) {
        let deadline = started + self.pace.deadline;
        if self.pace.min_rate == 0 {
            return (deadline, "not received in time");
        }
        let covered = Duration::from_secs_f64(self.received as f64 / self.pace.min_rate as f64);
        let floor = started + self.pace.grace + covered;
        if floor < deadline {
            (floor, "below the minimum rate")
        } else {
            (deadline, "not received in time")
        }
    }
}

impl<B> hyper::body::Body for PacedBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(tokio::time::Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let (at, why) = this.give_up_at(started);
                if this.timer.deadline() != at {
                    this.timer.as_mut().reset(at);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TooSlow(why))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    /// A request body fed by the test, one chunk at a time.
    struct Drip(tokio::sync::mpsc::Receiver<bytes::Bytes>);

    impl hyper::body::Body for Drip {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    /// A body sending `chunk` octets every `every`, `count` times.
    fn drip(chunk: usize, every: Duration, count: usize) -> Drip {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..count {
                if tx
                    .send(bytes::Bytes::from(vec![b'x'; chunk]))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Drip(rx)
    }

    const PACE: BodyPace = BodyPace {
        deadline: Duration::from_secs(600),
        grace: Duration::from_secs(10),
        min_rate: 1024,
    };

    /// Rule (issue 15, HTTPS lock-out): a body dribbled at 1 octet per 10 s fails soon after the
    /// grace, however long the deadline; a body at the minimum rate gets the whole deadline; a
    /// quick one passes.
    #[tokio::test(start_paused = true)]
    async fn slow_bodies_fail_at_the_rate_floor_or_the_deadline() {
        let start = tokio::time::Instant::now();
        let slow = PacedBody::new(drip(1, Duration::from_secs(10), 1000), PACE);
        let err = slow.collect().await.expect_err("a dribble is cut off");
        assert!(err.to_string().contains("minimum rate"), "{err}");
        let took = start.elapsed();
        assert!(took <= Duration::from_secs(11), "{took:?}");

        let start = tokio::time::Instant::now();
        let steady = PacedBody::new(drip(2048, Duration::from_secs(1), 10_000), PACE);
        let err = steady
            .collect()
            .await
            .expect_err("the deadline still holds");
        assert!(err.to_string().contains("in time"), "{err}");
        assert_eq!(start.elapsed().as_secs(), 600);

        let quick = PacedBody::new(drip(100_000, Duration::from_millis(10), 3), PACE);
        assert_eq!(quick.collect().await.unwrap().to_bytes().len(), 300_000);
    }

    /// Rule (issue 15, HTTPS lock-out): one address holds at most `max_connections_per_ip`
    /// connections; the next is closed at once instead of waiting out the handshake timeout.
    #[tokio::test]
    async fn connections_per_address_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let tls = crate::config::TlsConfig {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: dir.path().join("ca.pem"),
            generate_dev_cert: true,
            acme: None,
        };
        let tls = Live::new(crate::tls::server_config(&tls).unwrap());
        let config = HttpConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            handshake_timeout_secs: 60,
            max_connections_per_ip: 2,
            ..HttpConfig::default()
        };
        let (_stop_tx, stop) = watch::channel(false);
        let (bound, _tasks) = serve(&config, tls, false, Router::new(), stop)
            .await
            .unwrap();
        let _a = tokio::net::TcpStream::connect(bound[0]).await.unwrap();
        let _b = tokio::net::TcpStream::connect(bound[0]).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(bound[0]).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("the third connection is closed, not left to the 60 s handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
