//! TLS on the collector's listeners (OTLP/gRPC, OTLP/HTTP, API). The collector takes a ready
//! rustls `ServerConfig`; the `meshlens collector --tls-*` flags build one from the mesh CA the
//! agents use (`meshlens ca`), with client certificates verified when presented and, optionally,
//! required — as Linkerd's and Istio's control planes take their proxies' certificates. The HTTP
//! listeners handshake in [`crate::serve`]; the gRPC one takes its connections from [`incoming`],
//! which handshakes each in its own task so a slow client holds up no other.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A TLS connection, as tonic's server takes one.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Handshakes `stream` within `timeout`; `None` (counted by the caller) when it fails or is late.
pub async fn accept(
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

/// The TLS connections of `listener`, for tonic's `serve_with_incoming`: each handshake runs in
/// its own task, within `timeout`; failures are counted and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    counters: Arc<crate::counters::Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsIo>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
            let (tx, acceptor, counters) = (tx.clone(), acceptor.clone(), counters.clone());
            tokio::spawn(async move {
                match accept(&acceptor, stream, timeout).await {
                    Some(s) => {
                        let _ = tx.send(Ok(TlsIo(s))).await;
                    }
                    None => counters.tls_handshake_errors.add(1),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
