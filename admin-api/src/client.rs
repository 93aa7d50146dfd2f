//! A minimal blocking HTTP/1.1 client for `meshd ctl` (one request per connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Couldn't connect or talk.
    #[error("admin API at {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// Not an HTTP answer.
    #[error("admin API at {0}: malformed response")]
    Malformed(SocketAddr),
}

/// Talks to one node's admin API.
#[derive(Clone, Debug)]
pub struct Client {
    addr: SocketAddr,
    token: String,
}

impl Client {
    /// A client for the API at `addr` with this token.
    pub fn new(addr: SocketAddr, token: String) -> Self {
        Client { addr, token }
    }

    /// Sends a request; returns the status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), ClientError> {
        let io = |e| ClientError::Io(self.addr, e);
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(io)?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(io)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(io)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or(ClientError::Malformed(self.addr))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or(ClientError::Malformed(self.addr))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, body))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
