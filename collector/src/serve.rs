//! The collector's HTTP listeners (OTLP/HTTP and the API), served by hand on hyper so every
//! connection is bounded: at most `max_connections` at once per listener (past it a new
//! connection is closed at once and counted), request headers read within `header_read_timeout`
//! (slowloris: a byte every few seconds is closed at the deadline, counted), a connection with no
//! request in flight for `idle_timeout` closed (the rule of `meshlens_model::idle`: an HTTP/2
//! preface and nothing else is such a connection; an SSE stream is a request in flight), and HTTP/2
//! connections pinged so a dead peer's is dropped. On shutdown each connection finishes its requests
//! and closes.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshlens_model::idle::{Held, Streams};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::counters::Counters;

/// Limits of one listener.
#[derive(Clone, Debug)]
pub(crate) struct ListenerLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// TLS, when the listener serves it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = async { let _ = shutdown.wait_for(|&s| s).await; } => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.connections_refused.add(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, counters, stop) = (builder.clone(), router.clone(), counters.clone(), shutdown.clone());
        let (tls, timeout) = (limits.tls.clone().map(tokio_rustls::TlsAcceptor::from), limits.header_read_timeout);
        let idle = limits.idle_timeout;
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(&builder, TokioIo::new(stream), router, &counters, stop, idle).await,
                Some(acceptor) => match crate::tls::accept(&acceptor, stream, timeout).await {
                    Some(s) => connection(&builder, TokioIo::new(s), router, &counters, stop, idle).await,
                    None => counters.tls_handshake_errors.add(1),
                },
            }
        });
    }
    // Let open requests finish, within reason.
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while connections.join_next().await.is_some() {} }).await;
    Ok(())
}

/// Serves one connection until it ends, is idle for `idle`, or finishes its requests once `stop`
/// turns true.
async fn connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    router: axum::Router,
    counters: &Counters,
    mut stop: watch::Receiver<bool>,
    idle: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let streams = Streams::new();
    let in_flight = streams.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (mut router, active) = (router.clone(), in_flight.start());
        async move {
            let resp = tower::Service::call(&mut router, req.map(axum::body::Body::new)).await;
            resp.map(|r| r.map(|b| axum::body::Body::new(Held::new(b, active))))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stop.wait_for(|&s| s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = streams.wait_idle(idle, tokio::time::sleep) => {
            // GOAWAY (or a close between HTTP/1 requests); a peer that does not answer its ping
            // is dropped after one more timeout.
            counters.idle_connections_closed.add(1);
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(idle, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        counters.connection_errors.add(1);
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
