//! `[metrics] listen`: the exposition text served over HTTP on a loopback
//! address, for a Prometheus or an agent on the device itself.
//!
//! Owns the listener and a deliberately tiny HTTP/1.x: `GET /metrics`
//! answers 200 with [`super::metrics::collect`]'s text, anything else 404 or
//! 405, every connection closed after one answer. Bounded: a request head
//! of at most [`MAX_HEAD`] bytes read within [`READ_DEADLINE`], at most
//! [`MAX_CONNECTIONS`] answered at once (more are closed unanswered and
//! counted in the log). The config only accepts loopback addresses
//! (`config.rs`), so nothing listens on a network interface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::server::ControlContext;

/// The longest request head read; a longer one is answered 400.
pub const MAX_HEAD: usize = 8 * 1024;
/// The longest wait for a whole request head.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Connections answered at once.
pub const MAX_CONNECTIONS: usize = 4;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (the bytes up to the blank line, or all that came).
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else { return Route::BadRequest };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// Why the listener did not start.
#[derive(Debug, thiserror::Error)]
#[error("listening for metrics on {addr}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` now (so a taken port is reported at start), then serves
/// until shutdown.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError { addr, source })
}

pub async fn serve(listener: TcpListener, ctx: Arc<ControlContext>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(refused, "metrics listener busy; connection closed unanswered");
            }
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(READ_DEADLINE * 2, answer(stream, &ctx)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, ctx: &Arc<ControlContext>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_DEADLINE, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let route = match read {
        Ok(Ok(())) if head.len() <= MAX_HEAD => route(&head),
        Ok(Ok(())) => Route::BadRequest,
        // Too slow or broken: close without an answer.
        _ => return Ok(()),
    };
    let head_only = head.starts_with(b"HEAD ");
    let (status, body) = match route {
        Route::Metrics => match super::metrics::collect(ctx).await {
            Ok(text) => ("200 OK", text),
            Err(e) => ("500 Internal Server Error", format!("{}\n", crate::error_chain(&e))),
        },
        Route::NotFound => ("404 Not Found", "only /metrics is served here\n".to_string()),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "only GET /metrics\n".to_string()),
        Route::BadRequest => ("400 Bad Request", "not an HTTP/1 request\n".to_string()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        for bad in
            [&b""[..], b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/2\r\n", b"\xff\xfe", b"GET  /metrics HTTP/1.1"]
        {
            assert_eq!(route(bad), Route::BadRequest, "{bad:?}");
        }
    }
}
