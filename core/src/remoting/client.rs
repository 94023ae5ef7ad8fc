//! The remoting client: one connection per address, requests correlated by opaque.

use super::RemotingError;
use crate::protocol::{next_frame, RemotingCommand, DEFAULT_MAX_FRAME};
use crate::rt::net::{AsyncReadExt, AsyncWriteExt, TcpStream};
use crate::rt::sync::{mpsc, oneshot, Notify};
use bytes::BytesMut;
use futures_util::FutureExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Handles requests a server sends to the client (NOTIFY_CONSUMER_IDS_CHANGED…): gets the
/// server's address and the request, returns the response for non-oneway requests.
pub type RequestHandler = Arc<dyn Fn(&str, RemotingCommand) -> Option<RemotingCommand> + Send + Sync>;

struct Conn {
    tx: mpsc::UnboundedSender<RemotingCommand>,
    pending: Mutex<BTreeMap<i32, oneshot::Sender<RemotingCommand>>>,
    closed: AtomicBool,
    close: Notify,
}

struct Inner {
    conns: Mutex<BTreeMap<String, Arc<Conn>>>,
    opaque: AtomicI32,
    handler: Mutex<Option<RequestHandler>>,
    connect_timeout: Duration,
}

/// A cheap-to-clone handle; all clones share connections.
#[derive(Clone)]
pub struct RemotingClient {
    inner: Arc<Inner>,
}

impl Default for RemotingClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RemotingClient {
    pub fn new() -> Self {
        RemotingClient {
            inner: Arc::new(Inner {
                conns: Mutex::new(BTreeMap::new()),
                opaque: AtomicI32::new(0),
                handler: Mutex::new(None),
                connect_timeout: Duration::from_secs(3),
            }),
        }
    }

    pub fn set_request_handler(&self, h: RequestHandler) {
        *self.inner.handler.lock().unwrap() = Some(h);
    }

    /// Sends a request and waits for its response, at most `timeout`. A timed-out request
    /// closes the connection (RocketMQ's `clientCloseSocketIfTimeout`), so a stuck or
    /// partitioned peer is reconnected fresh next time.
    pub async fn invoke(
        &self,
        addr: &str,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        // An open connection costs no time of the budget (and no clock read to tell).
        let (conn, left) = match self.open_conn(addr) {
            Some(c) => (c, timeout),
            None => {
                let start = crate::rt::instant();
                let c = crate::rt::time::timeout(timeout, self.conn(addr))
                    .await
                    .map_err(|_| RemotingError::Timeout(addr.to_string(), timeout.as_millis() as u64))??;
                (c, timeout.saturating_sub(start.elapsed()))
            }
        };
        let opaque = self.inner.opaque.fetch_add(1, Ordering::Relaxed);
        cmd.opaque = opaque;
        cmd.flag &= !crate::protocol::FLAG_ONEWAY;
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap().insert(opaque, tx);
        if conn.closed.load(Ordering::Acquire) || conn.tx.send(cmd).is_err() {
            conn.pending.lock().unwrap().remove(&opaque);
            return Err(RemotingError::Closed(addr.to_string()));
        }
        match crate::rt::time::timeout(left, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(RemotingError::Closed(addr.to_string())),
            Err(_) => {
                conn.pending.lock().unwrap().remove(&opaque);
                conn.close.notify_one();
                Err(RemotingError::Timeout(addr.to_string(), timeout.as_millis() as u64))
            }
        }
    }

    /// Sends a oneway request: no response, no wait beyond connecting.
    pub async fn invoke_oneway(&self, addr: &str, mut cmd: RemotingCommand) -> Result<(), RemotingError> {
        let conn = crate::rt::time::timeout(self.inner.connect_timeout, self.conn(addr))
            .await
            .map_err(|_| RemotingError::Timeout(addr.to_string(), self.inner.connect_timeout.as_millis() as u64))??;
        cmd.opaque = self.inner.opaque.fetch_add(1, Ordering::Relaxed);
        cmd.flag |= crate::protocol::FLAG_ONEWAY;
        conn.tx.send(cmd).map_err(|_| RemotingError::Closed(addr.to_string()))
    }

    /// Closes the connection to `addr`, if any; pending requests fail with `Closed`.
    pub fn close(&self, addr: &str) {
        if let Some(c) = self.inner.conns.lock().unwrap().remove(addr) {
            c.close.notify_one();
        }
    }

    /// Closes every connection.
    pub fn close_all(&self) {
        let all = std::mem::take(&mut *self.inner.conns.lock().unwrap());
        for c in all.values() {
            c.close.notify_one();
        }
    }

    /// The open connection to `addr`, if there is one (no connect, so no timeout to set).
    fn open_conn(&self, addr: &str) -> Option<Arc<Conn>> {
        self.inner.conns.lock().unwrap().get(addr).filter(|c| !c.closed.load(Ordering::Acquire)).cloned()
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, RemotingError> {
        if let Some(c) = self.open_conn(addr) {
            return Ok(c);
        }
        let sock =
            crate::rt::net::resolve(addr).await.map_err(|e| RemotingError::Connect(addr.into(), e.to_string()))?;
        let stream = TcpStream::connect(sock).await.map_err(|e| RemotingError::Connect(addr.into(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
            close: Notify::new(),
        });
        {
            let mut conns = self.inner.conns.lock().unwrap();
            if let Some(c) = conns.get(addr) {
                if !c.closed.load(Ordering::Acquire) {
                    return Ok(c.clone()); // another caller connected first; ours is dropped
                }
            }
            conns.insert(addr.to_string(), conn.clone());
        }
        let inner = Arc::downgrade(&self.inner);
        let (c2, a2) = (conn.clone(), addr.to_string());
        crate::rt::spawn(async move {
            let reason = run(stream, &c2, rx, &a2, &inner).await;
            tracing::debug!(addr = %a2, "client connection closed: {reason}");
            c2.closed.store(true, Ordering::Release);
            c2.pending.lock().unwrap().clear();
            if let Some(inner) = inner.upgrade() {
                let mut conns = inner.conns.lock().unwrap();
                if conns.get(&a2).is_some_and(|c| Arc::ptr_eq(c, &c2)) {
                    conns.remove(&a2);
                }
            }
        });
        Ok(conn)
    }
}

/// The most responses the connection task hands to their callers before it lets them run and
/// writes what they queued. A read often brings a response for every sender at once (32 under
/// the benchmark); handing them all out first would hold the first new request back until the
/// last sender had built its own, so the peer would idle through the whole turn and get one
/// burst. In turns of eight the peer starts on the first requests while the rest are built.
/// At 32 senders against one broker, SYNC_FLUSH 128 B went from 21–36k to 40–51k msgs/s and
/// ASYNC_FLUSH from 66–76k to 69–123k; turns of 2 and 4 were slower (more syscalls), 16 no
/// better than none (BENCHMARKS.md, "Responses handed out in turns", also for its cost to a
/// CPU-starved replication setup).
const DELIVER_PER_TURN: usize = 8;

/// The connection task: writes what callers queue, reads responses and hands them out (at
/// most [`DELIVER_PER_TURN`] per turn), and answers requests the server sends.
/// Encodes `first` and every request queued behind it, for one write.
fn encode_queued(
    first: Option<RemotingCommand>,
    rx: &mut mpsc::UnboundedReceiver<RemotingCommand>,
    wbuf: &mut BytesMut,
) {
    if let Some(cmd) = first {
        cmd.encode(wbuf);
    }
    while let Ok(cmd) = rx.try_recv() {
        cmd.encode(wbuf);
    }
}

async fn run(
    mut stream: TcpStream,
    conn: &Conn,
    mut rx: mpsc::UnboundedReceiver<RemotingCommand>,
    addr: &str,
    inner: &std::sync::Weak<Inner>,
) -> String {
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    // Responses are left in `rbuf` from the last turn: let their callers run first.
    let mut more = false;
    let mut poll = crate::rt::net::BusyPoll::new(crate::rt::net::busy_poll_max());
    loop {
        if more {
            crate::rt::task::yield_now().await;
            encode_queued(None, &mut rx, &mut wbuf);
        } else if wbuf.is_empty() {
            // With requests out, their answers (or a caller's next request) may come within
            // the polling window.
            enum Polled {
                Read(std::io::Result<usize>),
                Queued(RemotingCommand),
            }
            let found = if conn.pending.lock().unwrap().is_empty() {
                None
            } else {
                poll.spin(|| match stream.read_buf(&mut rbuf).now_or_never() {
                    Some(r) => Some(Polled::Read(r)),
                    None => rx.try_recv().ok().map(Polled::Queued),
                })
                .await
            };
            match found {
                Some(Polled::Read(Ok(0))) => return "closed by peer".into(),
                Some(Polled::Read(Err(e))) => return format!("read failed: {e}"),
                Some(Polled::Read(Ok(_))) => {}
                Some(Polled::Queued(cmd)) => encode_queued(Some(cmd), &mut rx, &mut wbuf),
                None => {
                    poll.sleeping();
                    crate::rt::select! {
                        biased;
                        _ = conn.close.notified() => return "closed locally".into(),
                        m = rx.recv() => {
                            let Some(cmd) = m else { return "client dropped".into() };
                            encode_queued(Some(cmd), &mut rx, &mut wbuf);
                        }
                        r = stream.read_buf(&mut rbuf) => {
                            match r {
                                Ok(0) => return "closed by peer".into(),
                                Err(e) => return format!("read failed: {e}"),
                                Ok(_) => poll.woke(),
                            }
                        }
                    }
                }
            }
        }
        if !wbuf.is_empty() {
            if let Err(e) = stream.write_all(&wbuf).await {
                return format!("write failed: {e}");
            }
            if let Err(e) = stream.flush().await {
                return format!("write failed: {e}");
            }
            wbuf.clear();
        }
        let mut delivered = 0;
        more = false;
        loop {
            if delivered == DELIVER_PER_TURN {
                more = true;
                break;
            }
            let frame = match next_frame(&mut rbuf, DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("malformed frame: {e}"),
            };
            let cmd = match RemotingCommand::decode(frame) {
                Ok(c) => c,
                Err(e) => return format!("malformed frame: {e}"),
            };
            if cmd.is_response() {
                if let Some(tx) = conn.pending.lock().unwrap().remove(&cmd.opaque) {
                    let _ = tx.send(cmd);
                    delivered += 1;
                }
            } else {
                // Answers to the server's requests go out with the next write.
                let handler = inner.upgrade().and_then(|i| i.handler.lock().unwrap().clone());
                let oneway = cmd.is_oneway();
                let reply = match handler {
                    Some(h) => h(addr, cmd.clone()),
                    None => Some(super::server::not_supported(&cmd)),
                };
                if let (false, Some(r)) = (oneway, reply) {
                    r.encode(&mut wbuf);
                }
            }
        }
    }
}
