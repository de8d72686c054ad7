//! How `drover serve` accepts connections: its own accept loop over hyper's
//! HTTP/1.1 connections, so that a flood of idle or slow connections from
//! one client cannot starve `/healthz` and the clients that send requests.
//!
//! - **Bounded connections.** At most [`HttpLimits::max_connections`] open
//!   (further capped by the file descriptors the process may hold). A new
//!   connection over the bound is not refused: the oldest connection that
//!   has no request in flight is closed instead, first among those that have
//!   not yet sent a whole request (idle or slowloris sockets), else the one
//!   idle the longest since its last answer. A client that sends its request
//!   right after connecting is served, whatever else is open; per-IP limits
//!   would not help against one client.
//! - **Timeouts.** A connection must deliver its first request head within
//!   the header read timeout (408 otherwise); between requests a keep-alive
//!   connection waits at most the idle timeout.
//! - **Small idle connections.** Until a whole request head has arrived a
//!   connection is a socket and a buffer of the bytes received so far, not a
//!   hyper connection (hyper allocates 16 KiB of buffers per connection).
//! - **JSON refusals.** The first request head is checked here (414, 431,
//!   408); the refusals hyper makes itself on later requests of a keep-alive
//!   connection (400, 414, 431 with an empty body) are rewritten on their way
//!   out into the same `{"error"}` shape (see [`Refusal::of_hyper_response`]).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

/// The HTTP layer's limits (`drover serve` flags; docs/configuration.md).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpLimits {
    /// Open connections at most (also capped by the file descriptor limit).
    pub max_connections: usize,
    /// From accept to a complete first request head (TLS handshake included).
    pub header_read_timeout: Duration,
    /// A keep-alive connection between two requests (and while it sends the
    /// next head).
    pub idle_timeout: Duration,
    /// A request head (request line and headers) at most this many bytes.
    pub max_header_bytes: usize,
}

/// Far more than the fleet's agents and operators need; an attacker's
/// sockets beyond it push out each other, not the clients. A waiting
/// connection costs about 2 KiB (measured, `drover bench connections`), one
/// idle between requests about 20 KiB (hyper's buffers): at most ~400 MB.
/// Every eviction is a reconnect an attacker can make, so a bound close to
/// the open-files limit (which usually caps it) means the least churn.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// nginx's `client_header_timeout` is 60 s; a request head is a few hundred
/// bytes, so 10 s is generous even on a bad link and frees slowloris sockets
/// six times sooner.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `keepalive_timeout` is 75 s; agents beat every second or two, so
/// a minute keeps their connections and closes the abandoned ones.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx allows 4 header buffers of 8 KiB; the API's heads are far smaller.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// The longest request line (method, path and query, version): 414 beyond.
/// Paths of the API are short; 8 KiB is nginx's and hyper's usual bound.
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
/// Header fields at most per request (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// File descriptors kept for everything but HTTP connections: the store,
/// logs, child processes' pipes, outgoing connections to the services.
const RESERVED_FDS: usize = 1024;
/// A refusal is written with this patience: a client that does not read it
/// is simply closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Raises the soft limit of open files to the hard limit and returns how
/// many connections fit beside [`RESERVED_FDS`] (`None`: no limit known).
pub fn raise_open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some((limit.rlim_cur as usize).saturating_sub(RESERVED_FDS).max(1))
}

/// Connections the kernel queues before the accept loop takes them: a
/// newcomer's SYN must not be dropped behind a burst of reconnecting
/// attackers (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish and closes the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let fd_bound = raise_open_files_limit();
    let max_connections = fd_bound.map_or(limits.max_connections, |fds| limits.max_connections.min(fds)).max(1);
    if max_connections < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            effective = max_connections,
            "the open files limit caps HTTP connections below max_connections"
        );
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size((limits.max_header_bytes + 1).max(8192))
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let (stop, stopping) = watch::channel(false);
    let shared =
        Arc::new(Shared { app, tls, limits, http, registry: Arc::new(Registry::new(max_connections)), stopping });
    tracing::debug!(max_connections, "accepting HTTP connections");

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) despite the
                    // bound: free one; other errors (a connection reset
                    // before accept) concern one client only.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        tracing::warn!(error = %e, "out of file descriptors; closing the oldest idle connection");
                        shared.registry.evict_one();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            },
        };
        let Some(slot) = shared.registry.admit() else {
            // Every open connection has a request in flight: nothing to
            // push out, so this one waits for nobody.
            drop(stream);
            continue;
        };
        tokio::spawn(connection(shared.clone(), stream, peer, slot));
    }
    drop(listener);
    let _ = stop.send(true);
    shared.registry.wait_all_closed().await;
    Ok(())
}

struct Shared {
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    http: hyper::server::conn::http1::Builder,
    registry: Arc<Registry>,
    stopping: watch::Receiver<bool>,
}

/// One connection from accept to close.
async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let mut stopping = shared.stopping.clone();
    // The handshake and the first head share one deadline.
    let deadline = tokio::time::Instant::now() + shared.limits.header_read_timeout;
    let mut io = match &shared.tls {
        None => Io::Plain(stream),
        Some(tls) => {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout_at(deadline, tls.accept(stream)) => handshake,
                _ = slot.conn.close.notified() => return,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            match handshake {
                Ok(Ok(tls)) => Io::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_elapsed) => return,
            }
        }
    };
    let mut head = Vec::new();
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, read_head(&mut io, &mut head, shared.limits.max_header_bytes)) => read,
        _ = slot.conn.close.notified() => return,
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    match read {
        Ok(Ok(Some(HeadCheck::Complete))) => {}
        Ok(Ok(Some(HeadCheck::Refused(refusal)))) => return refusal.send(&mut io).await,
        // Closed by the client, or a socket error.
        Ok(Ok(None)) | Ok(Err(_)) => return,
        // A socket that never sent a byte is closed without a word (it
        // may not even speak HTTP); a started head gets its 408.
        Err(_elapsed) if head.is_empty() => return,
        Err(_elapsed) => return Refusal::Timeout.send(&mut io).await,
    }
    let io = Prefixed { max_header_bytes: shared.limits.max_header_bytes, ..Prefixed::new(head, io) };
    // Boxed: the waiting phase above stays small; hyper's state is only
    // paid for by connections that sent a whole request.
    Box::pin(serve_requests(shared, io, peer, slot, stopping)).await
}

/// Serves requests with hyper until the client or the server closes.
async fn serve_requests(
    shared: Arc<Shared>,
    io: Prefixed<Io>,
    peer: SocketAddr,
    slot: Slot,
    mut stopping: watch::Receiver<bool>,
) {
    let conn = slot.conn.clone();
    let registry = shared.registry.clone();
    let app = shared.app.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = registry.begin_request(&conn);
        let mut app = app.clone();
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        async move {
            let response = tower_service::Service::call(&mut app, request).await;
            drop(in_flight);
            response
        }
    });
    let served = shared.http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut graceful = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            // Only a connection without a request in flight is evicted.
            _ = slot.conn.close.notified() => return,
            _ = stopping.wait_for(|stop| *stop), if !graceful => {
                served.as_mut().graceful_shutdown();
                graceful = true;
            }
        }
    }
}

/// Reads into `head` until it holds a whole request head or one over the
/// limits; `None` when the client closed first.
async fn read_head(io: &mut Io, head: &mut Vec<u8>, max_header_bytes: usize) -> io::Result<Option<HeadCheck>> {
    loop {
        let scanned = head.len().saturating_sub(3);
        // Grows by at least 64 bytes at a time (Vec's BufMut): a dribbling
        // client costs what it sent, not a fixed buffer.
        if io.read_buf(head).await? == 0 {
            return Ok(None);
        }
        if let Some(check) = check_head(head, scanned, max_header_bytes) {
            return Ok(Some(check));
        }
    }
}

enum HeadCheck {
    Complete,
    Refused(Refusal),
}

/// Whether `head` (new bytes from `scanned` on) holds a complete request
/// head, one over the limits, or needs more bytes (`None`). Parsing proper
/// is hyper's; this only finds the end of the head and counts.
fn check_head(head: &[u8], scanned: usize, max_header_bytes: usize) -> Option<HeadCheck> {
    // Empty lines before the request line are allowed (RFC 9112 2.2).
    let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(head.len());
    let request_line_len = head[start..].iter().position(|&b| b == b'\n').unwrap_or(head.len() - start);
    if request_line_len > MAX_REQUEST_LINE_BYTES {
        return Some(HeadCheck::Refused(Refusal::UriTooLong));
    }
    let end = find_head_end(&head[start..], scanned.saturating_sub(start)).map(|end| start + end);
    let head_len = end.unwrap_or(head.len());
    if head_len > max_header_bytes {
        return Some(HeadCheck::Refused(Refusal::HeadersTooLarge { max_header_bytes }));
    }
    let lines = head[start..head_len].iter().filter(|&&b| b == b'\n').count();
    if lines > MAX_HEADERS + 2 {
        return Some(HeadCheck::Refused(Refusal::HeadersTooLarge { max_header_bytes }));
    }
    end.map(|_| HeadCheck::Complete)
}

/// The end of a request head (after its empty line), searching from `from`.
fn find_head_end(head: &[u8], from: usize) -> Option<usize> {
    let from = from.min(head.len());
    (from..head.len()).find_map(|i| {
        if head[i] != b'\n' || i == 0 {
            return None;
        }
        match head[i - 1] {
            b'\n' => Some(i + 1),
            b'\r' if i >= 2 && head[i - 2] == b'\n' => Some(i + 1),
            _ => None,
        }
    })
}

/// A refusal the HTTP layer makes before any handler sees the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    UriTooLong,
    HeadersTooLarge { max_header_bytes: usize },
    Timeout,
}

impl Refusal {
    fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::UriTooLong => (414, "URI Too Long"),
            Refusal::HeadersTooLarge { .. } => (431, "Request Header Fields Too Large"),
            Refusal::Timeout => (408, "Request Timeout"),
        }
    }

    fn message(self) -> String {
        match self {
            Refusal::BadRequest => {
                "malformed HTTP request: the request line or a header could not be parsed".to_string()
            }
            Refusal::UriTooLong => format!("the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes"),
            Refusal::HeadersTooLarge { max_header_bytes } => format!(
                "the request head is larger than {max_header_bytes} bytes or has more than {MAX_HEADERS} header fields"
            ),
            Refusal::Timeout => "the request head did not arrive in time".to_string(),
        }
    }

    /// The whole response: `{"error"}`, then the connection closes.
    pub fn response(self) -> Vec<u8> {
        let (code, reason) = self.status();
        let body = serde_json::json!({ "error": self.message() }).to_string();
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// hyper answers a request head it cannot parse by itself, with an empty
    /// body: `HTTP/1.1 400|414|431 …` and `content-length: 0`. No handler
    /// writes such a response (every error of ours has a JSON body), so it
    /// is recognised by its bytes.
    fn of_hyper_response(buf: &[u8], max_header_bytes: usize) -> Option<Refusal> {
        let refusal = match buf.get(..13)? {
            b"HTTP/1.1 400 " => Refusal::BadRequest,
            b"HTTP/1.1 414 " => Refusal::UriTooLong,
            b"HTTP/1.1 431 " => Refusal::HeadersTooLarge { max_header_bytes },
            _ => return None,
        };
        let empty_body = buf.ends_with(b"\r\n\r\n")
            && buf.windows(19).any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0"))
            && buf.len() < 512;
        empty_body.then_some(refusal)
    }

    async fn send(self, io: &mut Io) {
        let response = self.response();
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            io.write_all(&response).await?;
            io.shutdown().await
        })
        .await;
    }
}

/// A connection's socket, with or without TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What hyper reads and writes: first the bytes already read (the first
/// head), then the socket; hyper's empty refusals are replaced by JSON ones.
struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
    /// A JSON refusal being written in place of hyper's, and how far.
    replacement: Option<(Vec<u8>, usize)>,
    max_header_bytes: usize,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, read: 0, inner, replacement: None, max_header_bytes: DEFAULT_MAX_HEADER_BYTES }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read < this.prefix.len() {
            let n = (this.prefix.len() - this.read).min(buf.remaining());
            buf.put_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() {
            match Refusal::of_hyper_response(buf, this.max_header_bytes) {
                Some(refusal) => this.replacement = Some((refusal.response(), 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper closes the connection after its refusal: whatever it writes
        // from here on is taken as written (there is nothing else).
        let Some((response, written)) = this.replacement.as_mut() else { unreachable!("set above") };
        while *written < response.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &response[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The open connections, in the two queues eviction takes from: those
/// without a whole request yet (by accept order) and those idle between
/// requests (by the end of their last answer). A connection with a request
/// in flight is in neither and is never evicted.
struct Registry {
    inner: Mutex<Queues>,
    max_connections: usize,
    all_closed: Notify,
}

#[derive(Default)]
struct Queues {
    next_key: u64,
    /// Connections whose tasks have not ended (sockets still open).
    open: usize,
    /// Of those, evicted but not yet closed: not counted against the bound.
    evicting: usize,
    waiting: BTreeMap<u64, Arc<Conn>>,
    idle: BTreeMap<u64, Arc<Conn>>,
}

/// One connection as the registry knows it.
struct Conn {
    /// Notified when the connection is evicted.
    close: Notify,
    /// Where it is, encoded: see the `PLACE_` constants; changed only under
    /// the registry's lock.
    place: AtomicU64,
}

const PLACE_BUSY: u64 = 0;
const PLACE_EVICTED: u64 = 1;
/// `PLACE_WAITING | key`: in `waiting` under `key`; likewise idle.
const PLACE_WAITING: u64 = 1 << 62;
const PLACE_IDLE: u64 = 1 << 63;
const KEY_MASK: u64 = PLACE_WAITING - 1;

impl Registry {
    fn new(max_connections: usize) -> Self {
        Registry {
            inner: Mutex::new(Queues { next_key: 2, ..Queues::default() }),
            max_connections,
            all_closed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A panic while holding it leaves plain counters and maps: usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection, evicting one first when at the bound.
    /// `None`: at the bound and every connection has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut q = self.lock();
        if q.open - q.evicting >= self.max_connections && !q.evict_one() {
            return None;
        }
        let conn = Arc::new(Conn { close: Notify::new(), place: AtomicU64::new(PLACE_BUSY) });
        let key = q.take_key();
        conn.place.store(PLACE_WAITING | key, Ordering::Relaxed);
        q.waiting.insert(key, conn.clone());
        q.open += 1;
        Some(Slot { registry: self.clone(), conn })
    }

    fn evict_one(&self) -> bool {
        self.lock().evict_one()
    }

    /// Marks `conn` busy until the returned guard is dropped.
    fn begin_request(self: &Arc<Self>, conn: &Arc<Conn>) -> InFlight {
        let mut q = self.lock();
        let place = conn.place.load(Ordering::Relaxed);
        if place != PLACE_EVICTED {
            q.remove(place);
            conn.place.store(PLACE_BUSY, Ordering::Relaxed);
        }
        InFlight { registry: self.clone(), conn: conn.clone() }
    }

    async fn wait_all_closed(&self) {
        loop {
            let closed = self.all_closed.notified();
            if self.lock().open == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Queues {
    fn take_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key & KEY_MASK
    }

    fn remove(&mut self, place: u64) {
        if place & PLACE_WAITING != 0 {
            self.waiting.remove(&(place & KEY_MASK));
        } else if place & PLACE_IDLE != 0 {
            self.idle.remove(&(place & KEY_MASK));
        }
    }

    /// Closes the oldest connection without a whole request, else the one
    /// idle the longest. False when every connection is busy.
    fn evict_one(&mut self) -> bool {
        let Some((_, conn)) = self.waiting.pop_first().or_else(|| self.idle.pop_first()) else {
            return false;
        };
        conn.place.store(PLACE_EVICTED, Ordering::Relaxed);
        conn.close.notify_one();
        self.evicting += 1;
        true
    }
}

/// A connection's registration; dropping it (the task ends) unregisters.
struct Slot {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut q = self.registry.lock();
        let place = self.conn.place.load(Ordering::Relaxed);
        if place == PLACE_EVICTED {
            q.evicting -= 1;
        } else {
            q.remove(place);
        }
        self.conn.place.store(PLACE_EVICTED, Ordering::Relaxed);
        q.open -= 1;
        if q.open == 0 {
            self.registry.all_closed.notify_one();
        }
    }
}

/// A request in flight on a connection; dropped when its answer is ready,
/// the connection becomes idle (evictable again).
struct InFlight {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut q = self.registry.lock();
        if self.conn.place.load(Ordering::Relaxed) == PLACE_BUSY {
            let key = q.take_key();
            self.conn.place.store(PLACE_IDLE | key, Ordering::Relaxed);
            q.idle.insert(key, self.conn.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str) -> Option<Result<(), Refusal>> {
        check_head(head.as_bytes(), 0, 1024).map(|c| match c {
            HeadCheck::Complete => Ok(()),
            HeadCheck::Refused(r) => Err(r),
        })
    }

    #[test]
    fn a_head_is_complete_at_its_empty_line() {
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Ok(())));
        assert_eq!(check("GET / HTTP/1.1\nHost: a\n\n"), Some(Ok(())));
        assert_eq!(check("\r\nGET / HTTP/1.1\r\n\r\n"), Some(Ok(())));
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(check("GET / HTT"), None);
        assert_eq!(check(""), None);
    }

    #[test]
    fn long_request_lines_and_big_heads_are_refused() {
        let line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE_BYTES));
        assert_eq!(
            check_head(line.as_bytes(), 0, 1 << 20).map(|c| matches!(c, HeadCheck::Refused(Refusal::UriTooLong))),
            Some(true)
        );
        // Still without an end of line: refused as soon as it is too long.
        let partial = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE_BYTES));
        assert!(matches!(check_head(partial.as_bytes(), 0, 1 << 20), Some(HeadCheck::Refused(Refusal::UriTooLong))));
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n", "b".repeat(2000));
        assert_eq!(check(&big), Some(Err(Refusal::HeadersTooLarge { max_header_bytes: 1024 })));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: 1\n")).collect();
        let many = format!("GET / HTTP/1.1\n{many}\n");
        assert!(matches!(check_head(many.as_bytes(), 0, 1 << 20), Some(HeadCheck::Refused(_))));
    }

    #[test]
    fn hyper_empty_refusals_are_recognised_and_ours_are_not() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 12:00:00 GMT\r\n\r\n";
        assert!(Refusal::of_hyper_response(hyper, 10).is_some());
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"error\":\"no\"}";
        assert_eq!(Refusal::of_hyper_response(ours, 10), None);
        let json = Refusal::BadRequest.response();
        let body = &json[json.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(value["error"].as_str().unwrap().contains("malformed"));
    }

    #[tokio::test]
    async fn at_the_bound_the_oldest_waiting_connection_goes_then_the_longest_idle() {
        let registry = Arc::new(Registry::new(2));
        let first = registry.admit().unwrap();
        let second = registry.admit().unwrap();
        // `first` has a request in flight: it is never evicted.
        let busy = registry.begin_request(&first.conn);
        let third = registry.admit().unwrap();
        assert_eq!(second.conn.place.load(Ordering::Relaxed), PLACE_EVICTED);
        drop(second);
        drop(busy); // `first` is idle now, `third` still waiting
        let fourth = registry.admit().unwrap();
        assert_eq!(third.conn.place.load(Ordering::Relaxed), PLACE_EVICTED);
        drop(third);
        let in_flight = (registry.begin_request(&first.conn), registry.begin_request(&fourth.conn));
        assert!(registry.admit().is_none(), "every connection busy: the new one is refused");
        drop(in_flight);
        assert!(registry.admit().is_some());
    }
}
