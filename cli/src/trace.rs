//! `lbctl trace`: a live, bounded, filtered sample of the packets the balancer handles (the
//! `Trace` stream), one line per packet (time, client -> VIP, backend, verdict, reason) or one
//! JSON object per line with `--json`; `--pcap FILE` also writes the frames, as the balancer
//! sent them on, in the classic libpcap format (LINKTYPE_ETHERNET, microsecond stamps).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::client::{Lbd, RpcError};
use crate::highargs::{invalid, parse_addr_port, parse_proto, ArgError, Globals, Protocol};
use crate::lowargs::TraceArgs;
use crate::pb;

/// `lbctl trace`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub vip: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub proto: Option<Protocol>,
    pub client: Option<Ipv4Net>,
    pub count: u32,
    pub seconds: u32,
    pub snaplen: u32,
    pub pcap: Option<PathBuf>,
}

fn bounded(what: &'static str, s: &str, lo: u32, hi: u32) -> Result<u32, ArgError> {
    match s.parse::<u32>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(invalid(what, s, format!("an integer from {lo} to {hi}"))),
    }
}

impl TryFrom<TraceArgs> for Trace {
    type Error = ArgError;

    fn try_from(low: TraceArgs) -> Result<Self, ArgError> {
        let (vip, port) = match low.vip.as_deref() {
            None => (None, None),
            Some(s) => match s.parse::<Ipv4Addr>() {
                Ok(a) => (Some(a), None),
                Err(_) => {
                    let a = parse_addr_port("--vip", s)
                        .map_err(|_| invalid("--vip", s, "ADDR or ADDR:PORT, like 10.0.0.10:80"))?;
                    (Some(*a.ip()), Some(a.port()))
                }
            },
        };
        let proto = low
            .proto
            .as_deref()
            .map(|p| parse_proto("--proto", p))
            .transpose()?;
        let client = match low.client.as_deref() {
            None => None,
            Some(s) => Some(
                xdplb_model::cidr::parse_cidr(s)
                    .map_err(|e| invalid("--client", s, e.expected()))?,
            ),
        };
        Ok(Trace {
            vip,
            port,
            proto,
            client,
            count: bounded("--count", &low.count, 1, 100_000)?,
            seconds: bounded("--seconds", &low.seconds, 1, 3600)?,
            snaplen: bounded("--snaplen", &low.snaplen, 64, 9216)?,
            pcap: low.pcap,
        })
    }
}

impl Trace {
    fn request(&self) -> pb::TraceRequest {
        pb::TraceRequest {
            vip_address: self.vip.map(|a| a.to_string()).unwrap_or_default(),
            vip_port: self.port.map(u32::from).unwrap_or(0),
            protocol: match self.proto {
                None => pb::Protocol::Unspecified,
                Some(Protocol::Tcp) => pb::Protocol::Tcp,
                Some(Protocol::Udp) => pb::Protocol::Udp,
            } as i32,
            client: self.client.map(|c| c.to_string()).unwrap_or_default(),
            count: self.count,
            seconds: self.seconds,
            snaplen: self.snaplen,
        }
    }
}

/// A pcap file (classic libpcap format).
pub struct Pcap<W: Write> {
    out: W,
    pub packets: u64,
}

/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;

impl<W: Write> Pcap<W> {
    /// Writes the file header: magic (microsecond stamps), version 2.4, zone 0, sigfigs 0,
    /// the snap length, Ethernet.
    pub fn new(mut out: W, snaplen: u32) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend(0xa1b2_c3d4u32.to_le_bytes());
        h.extend(2u16.to_le_bytes());
        h.extend(4u16.to_le_bytes());
        h.extend(0i32.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        h.extend(snaplen.to_le_bytes());
        h.extend(LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out, packets: 0 })
    }

    /// One packet: its stamp, the captured bytes and the frame's whole length.
    pub fn packet(&mut self, time_unix_ns: u64, frame: &[u8], len: u32) -> std::io::Result<()> {
        let sec = (time_unix_ns / 1_000_000_000) as u32;
        let usec = ((time_unix_ns % 1_000_000_000) / 1000) as u32;
        let mut h = Vec::with_capacity(16);
        h.extend(sec.to_le_bytes());
        h.extend(usec.to_le_bytes());
        h.extend((frame.len() as u32).to_le_bytes());
        h.extend(len.max(frame.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(frame)?;
        self.packets += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `HH:MM:SS.uuuuuu` (UTC) of a Unix time in ns.
fn clock(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ns % 1_000_000_000 / 1000
    )
}

fn proto_name(p: u32) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        0 => "-".into(),
        n => format!("proto-{n}"),
    }
}

/// TCP flags as tcpdump writes them (`[S.]` a SYN-ACK).
fn tcp_flags(f: u32) -> String {
    let mut s = String::from("[");
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    s.push(']');
    s
}

fn endpoint(addr: &str, port: u32, proto: u32) -> String {
    if addr.is_empty() {
        "-".into()
    } else if proto == 6 || proto == 17 {
        format!("{addr}:{port}")
    } else {
        addr.to_string()
    }
}

/// One packet's line: time, protocol, client -> destination, TCP flags, backend, verdict, reason.
pub fn line(e: &pb::TraceEvent) -> String {
    let mut s = format!(
        "{} {} {} -> {}",
        clock(e.time_unix_ns),
        proto_name(e.protocol),
        endpoint(&e.source, e.source_port, e.protocol),
        endpoint(&e.destination, e.destination_port, e.protocol)
    );
    if e.protocol == 6 {
        s.push(' ');
        s.push_str(&tcp_flags(e.tcp_flags));
    }
    s.push_str(" backend ");
    s.push_str(if e.backend.is_empty() {
        "-"
    } else {
        &e.backend
    });
    s.push(' ');
    s.push_str(&e.verdict);
    s.push(' ');
    s.push_str(&e.reason);
    if e.lost > 0 {
        s.push_str(&format!(" ({} lost before)", e.lost));
    }
    s
}

/// `--json`: one object per packet.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    time_unix_ns: u64,
    protocol: u32,
    source: &'a str,
    source_port: u32,
    destination: &'a str,
    destination_port: u32,
    tcp_flags: u32,
    backend: &'a str,
    verdict: &'a str,
    reason: &'a str,
    ifindex: u32,
    rx_queue: u32,
    frame_len: u32,
    lost: u64,
}

impl<'a> From<&'a pb::TraceEvent> for EventJson<'a> {
    fn from(e: &'a pb::TraceEvent) -> Self {
        EventJson {
            time_unix_ns: e.time_unix_ns,
            protocol: e.protocol,
            source: &e.source,
            source_port: e.source_port,
            destination: &e.destination,
            destination_port: e.destination_port,
            tcp_flags: e.tcp_flags,
            backend: &e.backend,
            verdict: &e.verdict,
            reason: &e.reason,
            ifindex: e.ifindex,
            rx_queue: e.rx_queue,
            frame_len: e.frame_len,
            lost: e.lost,
        }
    }
}

/// Runs the trace until lbd ends it (count or time reached) or Ctrl-C.
pub async fn run(cmd: &Trace, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut pcap = match &cmd.pcap {
        Some(path) => Some(
            Pcap::new(
                BufWriter::new(
                    File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                cmd.snaplen,
            )
            .with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => None,
    };
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let mut stream = match tokio::time::timeout(args.timeout, lbd.trace.trace(cmd.request())).await
    {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return Err(RpcError(status).into()),
        Err(_) => bail!("no reply from lbd within {:?}", args.timeout),
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // lbd ends the stream by itself within the trace's time; a little patience on top.
    let patience = std::time::Duration::from_secs(u64::from(cmd.seconds)) + args.timeout;
    let deadline = tokio::time::Instant::now() + patience;
    let mut packets = 0u64;
    let ended = loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            next = tokio::time::timeout_at(deadline, stream.message()) => next,
        };
        let e = match next {
            Err(_) => break Err(anyhow::anyhow!("lbd did not end the trace in time")),
            Ok(Err(status)) => break Err(RpcError(status).into()),
            Ok(Ok(None)) => break Ok(()),
            Ok(Ok(Some(e))) => e,
        };
        packets += 1;
        if args.json {
            crate::output::write_json(out, &EventJson::from(&e))?;
        } else {
            writeln!(out, "{}", line(&e))?;
        }
        out.flush()?;
        if let Some(p) = pcap.as_mut() {
            p.packet(e.time_unix_ns, &e.frame, e.frame_len)
                .context("cannot write the pcap file")?;
        }
    };
    if let Some(p) = pcap {
        let n = p.packets;
        p.finish().context("cannot write the pcap file")?;
        if let Some(path) = &cmd.pcap {
            eprintln!("lbctl: {n} packets written to {}", path.display());
        }
    }
    if !args.json && packets == 0 {
        eprintln!("lbctl: no packet matched");
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_layout() {
        let mut p = Pcap::new(Vec::new(), 1518).expect("header");
        p.packet(1_700_000_000_123_456_789, &[0xaa; 60], 74)
            .expect("packet");
        let b = p.finish().expect("finish");
        assert_eq!(b.len(), 24 + 16 + 60);
        assert_eq!(&b[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(b[24..28].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 60);
        assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 74);
    }

    #[test]
    fn a_line_per_packet() {
        let e = pb::TraceEvent {
            time_unix_ns: 3_723_000_001_000,
            source: "192.0.2.7".into(),
            source_port: 40000,
            destination: "10.0.0.10".into(),
            destination_port: 80,
            protocol: 6,
            tcp_flags: 0x02,
            verdict: "XDP_TX".into(),
            reason: "tx_nat_forward".into(),
            backend: "10.0.2.1:8080".into(),
            ..Default::default()
        };
        assert_eq!(
            line(&e),
            "01:02:03.000001 tcp 192.0.2.7:40000 -> 10.0.0.10:80 [S] backend 10.0.2.1:8080 XDP_TX tx_nat_forward"
        );
    }
}
