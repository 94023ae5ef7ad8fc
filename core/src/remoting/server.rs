//! The remoting server: accept loop, one task per connection, graceful drain.

use super::BoxFuture;
use crate::protocol::{code::response, next_frame, RemotingCommand, DEFAULT_MAX_FRAME};
use crate::rt::net::{AsyncReadExt, AsyncWriteExt, TcpListener, TcpStream};
use crate::rt::sync::{mpsc, watch, Notify};
use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves requests. `process` returns `None` for oneway requests (and anything else that
/// gets no answer).
pub trait Processor: Send + Sync + 'static {
    fn process(self: Arc<Self>, conn: Connection, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>>;
    /// Called once when a connection ends, for whatever reason.
    fn on_close(&self, _conn: &Connection) {}
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub max_frame: usize,
    /// A connection with no traffic either way for this long is closed (RocketMQ: 120 s).
    pub idle_timeout: Duration,
    /// The longest a connection polls for its next request before it sleeps
    /// ([`BusyPoll`](crate::rt::net::BusyPoll); zero: never).
    pub busy_poll: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(120),
            busy_poll: crate::rt::net::busy_poll_max(),
        }
    }
}

/// A peer's connection, as processors see it: who it is and a way to send it requests.
#[derive(Clone, Debug)]
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    tx: mpsc::UnboundedSender<RemotingCommand>,
    closed: Arc<AtomicBool>,
    /// Opaques of server-initiated requests, per connection (no process-wide state: under
    /// madsim every node shares statics).
    next_opaque: Arc<AtomicI32>,
}

impl Connection {
    /// Sends a server-initiated oneway request (NOTIFY_CONSUMER_IDS_CHANGED). False when the
    /// connection is gone.
    pub fn send_oneway(&self, mut cmd: RemotingCommand) -> bool {
        cmd.flag |= crate::protocol::FLAG_ONEWAY;
        cmd.opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        !self.is_closed() && self.tx.send(cmd).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

struct Shared {
    active: AtomicUsize,
    drained: Notify,
    next_id: AtomicU64,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const KILLED: u8 = 2;

/// A running server. Dropping it stops accepting; open connections carry on. Call
/// [`Server::shutdown`] to drain them.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<u8>,
    shared: Arc<Shared>,
    /// The accept loop, which owns the listener: once it has ended, the port is free again.
    accepting: std::sync::Mutex<Option<crate::rt::task::JoinHandle<()>>>,
}

impl Server {
    pub async fn bind<P: Processor>(addr: &str, processor: Arc<P>, cfg: ServerConfig) -> std::io::Result<Server> {
        Self::serve(TcpListener::bind(addr).await?, processor, cfg)
    }

    /// Serves on a listener already bound (so the caller can learn its port first).
    pub fn serve<P: Processor>(listener: TcpListener, processor: Arc<P>, cfg: ServerConfig) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(RUNNING);
        let shared =
            Arc::new(Shared { active: AtomicUsize::new(0), drained: Notify::new(), next_id: AtomicU64::new(1) });
        let accepting = crate::rt::spawn(accept_loop(listener, processor, cfg, stop_rx, shared.clone()));
        Ok(Server { local_addr, stop, shared, accepting: std::sync::Mutex::new(Some(accepting)) })
    }

    /// Drops the listener and every connection at once, in-flight requests unanswered (a
    /// process crash, as peers see it). The port is free when it returns, as after a real
    /// crash, so a broker restarted at once can bind it (a restart right after `abort` used
    /// to race the accept loop and fail with AddrInUse now and then).
    pub async fn abort(&self) {
        let _ = self.stop.send(KILLED);
        let accepting = self.accepting.lock().unwrap().take();
        if let Some(accepting) = accepting {
            let _ = accepting.await;
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets every connection finish the requests it has read, then closes
    /// them. Waits at most `grace` for the connections; the listening port is free when it
    /// returns (a process restarted at once, or a test, can bind it again).
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(DRAINING);
        let accepting = self.accepting.lock().unwrap().take();
        if let Some(accepting) = accepting {
            let _ = accepting.await;
        }
        let wait = async {
            loop {
                let notified = self.shared.drained.notified();
                if self.shared.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if crate::rt::time::timeout(grace, wait).await.is_err() {
            tracing::warn!(
                open = self.shared.active.load(Ordering::Acquire),
                "connections still open after the shutdown grace period"
            );
        }
    }
}

async fn accept_loop<P: Processor>(
    listener: TcpListener,
    processor: Arc<P>,
    cfg: ServerConfig,
    mut stop: watch::Receiver<u8>,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = crate::rt::select! {
            biased;
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                shared.active.fetch_add(1, Ordering::AcqRel);
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (p, c, s, st) = (processor.clone(), cfg.clone(), shared.clone(), stop.clone());
                crate::rt::spawn(async move {
                    serve_connection(stream, peer, id, p, c, st).await;
                    if s.active.fetch_sub(1, Ordering::AcqRel) == 1 {
                        s.drained.notify_waiters();
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                crate::rt::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection<P: Processor>(
    mut stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    processor: Arc<P>,
    cfg: ServerConfig,
    mut stop: watch::Receiver<u8>,
) {
    let (tx, mut out_rx) = mpsc::unbounded_channel();
    let conn =
        Connection { id, peer, tx, closed: Arc::new(AtomicBool::new(false)), next_opaque: Arc::new(AtomicI32::new(0)) };
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut inflight: FuturesUnordered<BoxFuture<Option<RemotingCommand>>> = FuturesUnordered::new();
    let mut idle = crate::rt::time::interval(cfg.idle_timeout / 4);
    idle.tick().await;
    let mut last_activity = crate::rt::instant();
    let mut poll = crate::rt::net::BusyPoll::new(cfg.busy_poll);
    let mut draining = *stop.borrow() != RUNNING;
    let mut stop_open = true;
    let reason: String = loop {
        // Every complete frame read so far becomes a running request.
        if !draining {
            let mut bad = None;
            loop {
                match next_frame(&mut rbuf, cfg.max_frame) {
                    Ok(Some(frame)) => match RemotingCommand::decode(frame) {
                        Ok(cmd) if cmd.is_response() => {} // answers to our oneway notifications
                        Ok(cmd) => inflight.push(processor.clone().process(conn.clone(), cmd)),
                        Err(e) => {
                            bad = Some(format!("malformed frame: {e}"));
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        bad = Some(format!("malformed frame: {e}"));
                        break;
                    }
                }
            }
            if let Some(reason) = bad {
                break reason;
            }
        }
        // Collect whatever is ready without waiting.
        while let Some(Some(resp)) = inflight.next().now_or_never() {
            if let Some(r) = resp {
                r.encode(&mut wbuf);
            }
        }
        while let Ok(cmd) = out_rx.try_recv() {
            cmd.encode(&mut wbuf);
        }
        if !wbuf.is_empty() {
            if let Err(e) = write_all(&mut stream, &wbuf).await {
                break format!("write failed: {e}");
            }
            wbuf.clear();
            last_activity = crate::rt::instant();
            continue;
        }
        if draining && inflight.is_empty() {
            break "server shutting down".to_string();
        }
        if !draining {
            // The next request or a finished one, if it comes within the polling window.
            enum Polled {
                Read(std::io::Result<usize>),
                Served(Option<RemotingCommand>),
            }
            let found = poll
                .spin(|| match stream.read_buf(&mut rbuf).now_or_never() {
                    Some(r) => Some(Polled::Read(r)),
                    None => inflight.next().now_or_never().flatten().map(Polled::Served),
                })
                .await;
            match found {
                Some(Polled::Served(resp)) => {
                    if let Some(r) = resp {
                        r.encode(&mut wbuf);
                    }
                    continue;
                }
                Some(Polled::Read(Ok(0))) => break "closed by peer".to_string(),
                Some(Polled::Read(Ok(_))) => {
                    last_activity = crate::rt::instant();
                    continue;
                }
                Some(Polled::Read(Err(e))) => break format!("read failed: {e}"),
                None => poll.sleeping(),
            }
        }
        crate::rt::select! {
            biased;
            Some(resp) = inflight.next(), if !inflight.is_empty() => {
                if let Some(r) = resp {
                    r.encode(&mut wbuf);
                }
            }
            r = stream.read_buf(&mut rbuf), if !draining => match r {
                Ok(0) => break "closed by peer".to_string(),
                Ok(_) => {
                    poll.woke();
                    last_activity = crate::rt::instant();
                }
                Err(e) => break format!("read failed: {e}"),
            },
            Some(cmd) = out_rx.recv() => cmd.encode(&mut wbuf),
            r = stop.changed(), if stop_open => match r {
                Err(_) => stop_open = false, // the Server handle is gone: serve on
                Ok(()) if *stop.borrow() == KILLED => break "server killed".to_string(),
                Ok(()) => draining = true,
            },
            _ = idle.tick() => {
                if last_activity.elapsed() >= cfg.idle_timeout {
                    break format!("idle for {} s", cfg.idle_timeout.as_secs());
                }
            }
        }
    };
    conn.closed.store(true, Ordering::Release);
    tracing::debug!(%peer, conn = id, "connection closed: {reason}");
    if reason.starts_with("malformed") {
        tracing::warn!(%peer, "closing connection: {reason}");
    }
    processor.on_close(&conn);
}

/// Writes and flushes (madsim's sockets send on flush).
pub(crate) async fn write_all(stream: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

/// The answer to a request code nobody serves (RocketMQ's wording).
pub fn not_supported(req: &RemotingCommand) -> RemotingCommand {
    req.error(response::REQUEST_CODE_NOT_SUPPORTED, format!(" request type {} not supported", req.code))
}
