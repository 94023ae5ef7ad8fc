//! TCP through the seam: tokio's sockets in production, madsim's simulated ones under
//! `--cfg madsim`. Only the calls both provide are re-exported.

pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::{TcpListener, TcpStream};

/// Resolves "host:port" (an IP literal or a name) to a socket address.
pub async fn resolve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("cannot resolve {addr}")))
}
