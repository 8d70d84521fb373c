//! The probes: one TCP connect, HTTP GET or UDP exchange with a backend, with its timeout.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xdplb_model::health::HealthKind;

/// Most bytes read looking for an HTTP status line.
const MAX_STATUS_LINE: usize = 512;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("HTTP status {got}, expected {want}")]
    Status { got: u16, want: u16 },
    #[error("not an HTTP response: {0}")]
    NotHttp(String),
}

/// Probes `addr` once as `kind` says, within `timeout`.
pub(crate) async fn probe(
    kind: &HealthKind,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let run = async {
        match kind {
            HealthKind::None => Ok(()),
            HealthKind::Tcp => probe_tcp(addr).await,
            HealthKind::Http {
                path,
                expect_status,
            } => probe_http(addr, path, *expect_status).await,
            HealthKind::Udp { payload } => probe_udp(addr, payload.as_bytes()).await,
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn probe_tcp(addr: SocketAddrV4) -> Result<(), ProbeError> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(ProbeError::Connect)
}

async fn probe_http(addr: SocketAddrV4, path: &str, expect: u16) -> Result<(), ProbeError> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: xdplb-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let mut head = Vec::with_capacity(MAX_STATUS_LINE);
    let mut chunk = [0u8; 256];
    while head.len() < MAX_STATUS_LINE && !head.contains(&b'\n') {
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let got = parse_status_line(&head)?;
    if got != expect {
        return Err(ProbeError::Status { got, want: expect });
    }
    Ok(())
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub(crate) fn parse_status_line(head: &[u8]) -> Result<u16, ProbeError> {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let line = line.trim_end();
    let shown = || line.chars().take(60).collect::<String>();
    let mut words = line.split(' ');
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ProbeError::NotHttp(format!("{:?}", shown())));
    }
    let code = words.next().unwrap_or_default();
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=599).contains(&c) => Ok(c),
        _ => Err(ProbeError::NotHttp(format!("{:?}", shown()))),
    }
}

async fn probe_udp(addr: SocketAddrV4, payload: &[u8]) -> Result<(), ProbeError> {
    let socket = tokio::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(ProbeError::Io)?;
    socket.connect(addr).await.map_err(ProbeError::Io)?;
    socket.send(payload).await.map_err(ProbeError::Io)?;
    let mut buf = [0u8; 2048];
    // An ICMP port unreachable comes back as ConnectionRefused.
    socket
        .recv(&mut buf)
        .await
        .map(drop)
        .map_err(ProbeError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r\nServer: x\r\n").expect("200"),
            200
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n").expect("503"),
            503
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 204").expect("no reason, no newline"),
            204
        );
        for bad in [
            &b"b1 10.0.0.1:4000\n"[..],
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/2 200\r\n",
            b"",
            b"HTTP/1.1 abc\r\n",
        ] {
            assert!(
                parse_status_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
