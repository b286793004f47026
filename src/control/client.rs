//! Client side of the control socket, for `sparkctl`: finding the socket and
//! one blocking request/response exchange.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{self, FrameError, Request, Response};

pub const SYSTEM_SOCKET: &str = "/run/sparkd/sparkd.sock";
pub const DEMO_SOCKET: &str = "var/sparkd.sock";

/// `--socket`, else `$SPARKD_SOCKET`, else the systemd path when it exists,
/// else `./var/sparkd.sock` when that exists, else the systemd path.
pub fn find_socket(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("SPARKD_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if Path::new(SYSTEM_SOCKET).exists() {
        return SYSTEM_SOCKET.into();
    }
    if Path::new(DEMO_SOCKET).exists() {
        return DEMO_SOCKET.into();
    }
    SYSTEM_SOCKET.into()
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach sparkd at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to sparkd at {path}: {source}")]
    Protocol {
        path: PathBuf,
        #[source]
        source: FrameError,
    },
}

pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Unreachable { path: socket.to_path_buf(), source })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    protocol::call(&mut stream, req).map_err(|source| ClientError::Protocol { path: socket.to_path_buf(), source })
}
