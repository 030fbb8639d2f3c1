//! Upstream HTTP/1.1 connections, pooled per endpoint, and the one body type both proxies forward.
//!
//! hyper-util's general-purpose client looks up a pool by scheme and authority and rebuilds an
//! absolute URI on every request; here each endpoint owns its idle connections, found without a
//! lookup, and requests go out in origin form as they came. A connection returns to its pool when
//! its response body has been read to the end (a body dropped early closes it). A request that a
//! pooled connection refused before sending anything (the server had closed it) is retried once on a
//! new connection, as hyper-util does. HTTP/2 requests share one multiplexed connection per endpoint.
//! Between agents, connections are mutual TLS when the mesh has it ([`TlsTarget`]).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::MeshTls;

/// A boxed error.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per endpoint.
pub(crate) const MAX_IDLE: usize = 256;

/// The body of a forwarded request or response: no boxing on the common paths.
pub enum ProxyBody {
    /// Streamed from a peer.
    Incoming(Incoming),
    /// Streamed from an upstream connection that goes back to its pool at the end.
    Pooled(PooledBody),
    /// In memory (a replayable request body, or the agent's own answer).
    Full(Full<Bytes>),
    /// A caller's request body, ended with an error if it sends nothing for a while.
    Timed(TimedBody),
}

/// A request body from a caller that fails once no frame has come for `idle` while the body is
/// unfinished (Envoy's stream idle timeout, for the request side): a client dripping nothing holds
/// a request, an upstream connection and their buffers only that long. Whether it fired is kept in
/// a [`Stalled`] the proxy reads to answer 408.
pub struct TimedBody {
    body: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Stalled,
}

/// Set when a [`TimedBody`] ran out of time.
#[derive(Clone, Debug, Default)]
pub struct Stalled(Arc<std::sync::atomic::AtomicBool>);

impl Stalled {
    /// Whether the body stalled.
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A request body that sent nothing for the body idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub(crate) struct BodyStalled(pub Duration);

impl TimedBody {
    /// `body`, failing after `idle` without a frame; and the flag that says it did.
    pub fn new(body: Incoming, idle: Duration) -> (Self, Stalled) {
        let stalled = Stalled::default();
        (Self { body, idle, timer: None, stalled: stalled.clone() }, stalled)
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.stalled.0.store(true, std::sync::atomic::Ordering::Release);
                        Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl ProxyBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Full::new(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ProxyBody::Full(Full::new(Bytes::new()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            ProxyBody::Timed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Pooled(b) => b.body.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Timed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Pooled(b) => b.body.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Timed(b) => b.size_hint(),
        }
    }
}

/// A response body that gives its connection back when read to the end.
pub struct PooledBody {
    body: Incoming,
    conn: Option<(SendRequest<ProxyBody>, Arc<Upstream>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((conn, upstream)) = self.conn.take() {
            upstream.put(conn);
        }
    }

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            // A server that knows the length stops polling after the last byte: release then.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            _ => {}
        }
        polled.map_err(Into::into)
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

/// Why an upstream request failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(String),
    /// The connection broke before a response.
    Reset(hyper::Error),
}

/// A byte stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Mutual TLS towards an endpoint: the mesh configs, and the service it must prove to be.
#[derive(Clone)]
pub struct TlsTarget {
    /// The mesh TLS configs.
    pub tls: Arc<MeshTls>,
    /// `<app>.<namespace>.mesh`, which the verifier maps to the expected SPIFFE id.
    pub name: ServerName<'static>,
}

/// One endpoint's connections.
pub struct Upstream {
    /// `host:port` to connect to.
    pub addr: Arc<str>,
    /// Mutual TLS, when the mesh has it.
    pub tls: Option<TlsTarget>,
    idle: Mutex<Vec<SendRequest<ProxyBody>>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

impl Upstream {
    /// An endpoint at `addr` (`host:port`), with no connections yet.
    pub fn new(addr: &str) -> Self {
        Self::with_tls(addr, None)
    }

    /// An endpoint reached over mutual TLS when `tls` is given.
    pub fn with_tls(addr: &str, tls: Option<TlsTarget>) -> Self {
        Self { addr: addr.into(), tls, idle: Mutex::new(Vec::new()), h2: tokio::sync::Mutex::new(None) }
    }

    async fn stream(&self, timeout: Duration, h2: bool) -> Result<Box<dyn Io>, SendError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&*self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(format!("connecting to {}: {e}", self.addr))),
            Err(_) => return Err(SendError::Connect(format!("connecting to {}: no answer in {timeout:?}", self.addr))),
        };
        let _ = stream.set_nodelay(true);
        let Some(t) = &self.tls else { return Ok(Box::new(stream)) };
        let config = if h2 { t.tls.client_h2.clone() } else { t.tls.client_h1.clone() };
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(timeout, connector.connect(t.name.clone(), stream)).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(SendError::Connect(format!("mTLS with {}: {e}", self.addr))),
            Err(_) => Err(SendError::Connect(format!("mTLS with {}: no handshake in {timeout:?}", self.addr))),
        }
    }

    /// Sends an HTTP/2 request on this endpoint's one multiplexed connection (made on first use,
    /// and again when it closed).
    pub async fn send_h2(
        &self,
        mut req: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<ProxyBody>, SendError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        *req.uri_mut() = format!("{scheme}://{}{pq}", self.addr)
            .parse()
            .map_err(|e| SendError::Connect(format!("{}: {e}", self.addr)))?;
        let mut send = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let io = self.stream(connect_timeout, true).await?;
                    let (send, conn) = http2::Builder::new(TokioExecutor::new())
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|e| SendError::Connect(format!("HTTP/2 with {}: {e}", self.addr)))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "upstream h2 connection ended");
                        }
                    });
                    *slot = Some(send.clone());
                    send
                }
            }
        };
        send.ready().await.map_err(SendError::Reset)?;
        let resp = send.send_request(req).await.map_err(SendError::Reset)?;
        Ok(resp.map(ProxyBody::Incoming))
    }

    fn put(&self, conn: SendRequest<ProxyBody>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    fn take(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock();
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<ProxyBody>, SendError> {
        let io = self.stream(timeout, false).await?;
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(format!("connecting to {}: {e}", self.addr)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(send)
    }

    /// Sends `req` (origin form, headers as they go out) on a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<ProxyBody>, SendError> {
        let mut pooled = self.take();
        loop {
            let fresh = pooled.is_none();
            let mut conn = match pooled.take() {
                Some(c) => c,
                None => self.connect(connect_timeout).await?,
            };
            if conn.ready().await.is_err() {
                if fresh {
                    return Err(SendError::Connect(format!("{} closed the connection at once", self.addr)));
                }
                pooled = self.take();
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = if body.is_end_stream() {
                        self.put(conn);
                        ProxyBody::Incoming(body)
                    } else {
                        ProxyBody::Pooled(PooledBody { body, conn: Some((conn, self.clone())) })
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was sent on a connection the server had closed: once more, anew.
                    Some(unsent) if !fresh => {
                        req = unsent;
                        pooled = None;
                    }
                    _ => return Err(SendError::Reset(e.into_error())),
                },
            }
        }
    }
}
