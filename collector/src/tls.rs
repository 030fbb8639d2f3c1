//! TLS on the collector's listeners (OTLP/gRPC, OTLP/HTTP, API). The collector takes a ready
//! rustls `ServerConfig`; the `meshlens collector --tls-*` flags build one from the mesh CA the
//! agents use (`meshlens ca`), with client certificates verified when presented and, optionally,
//! required — as Linkerd's and Istio's control planes take their proxies' certificates. The HTTP
//! listeners handshake in [`crate::serve`]; the gRPC one takes its connections, plain or TLS, from
//! [`incoming`], which caps them and handshakes each in its own task so a slow client holds up no
//! other.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// One accepted OTLP/gRPC connection, plain or TLS, as tonic's server takes it; it holds its slot
/// of the listener's `max_connections` until it closes.
pub(crate) struct GrpcConn {
    io: GrpcIo,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

enum GrpcIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for GrpcConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            GrpcIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            GrpcIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            GrpcIo::Plain(s) => Pin::new(s).poll_flush(cx),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            GrpcIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            GrpcIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            GrpcIo::Plain(s) => s.is_write_vectored(),
            GrpcIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Handshakes `stream` within `timeout`; `None` (counted by the caller) when it fails or is late.
pub(crate) async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake refused");
            None
        }
        Err(_) => None,
    }
}

/// The connections of the OTLP/gRPC `listener`, for tonic's `serve_with_incoming`: at most
/// `max_connections` open (past it a new one is closed at once, counted, as on the HTTP
/// listeners); with `tls`, each handshake runs in its own task within `timeout`, failures counted.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeout: Duration,
    max_connections: usize,
    counters: Arc<crate::counters::Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<GrpcConn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = async { let _ = shutdown.wait_for(|&s| s).await; } => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                counters.connections_refused.add(1);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx.send(Ok(GrpcConn { io: GrpcIo::Plain(stream), _slot: slot })).await.is_err() {
                    break;
                }
                continue;
            };
            let (tx, counters) = (tx.clone(), counters.clone());
            tokio::spawn(async move {
                match accept(&acceptor, stream, timeout).await {
                    Some(s) => {
                        let _ = tx.send(Ok(GrpcConn { io: GrpcIo::Tls(Box::new(s)), _slot: slot })).await;
                    }
                    None => counters.tls_handshake_errors.add(1),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
