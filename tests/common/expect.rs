//! Checks on what the program sent, shared by the BPF_PROG_TEST_RUN suites: the verdict, the
//! whole output frame against one built from scratch, and ICMP "fragmentation needed" replies.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};

use super::lab::{action_name, XDP_TX};
use xdplb_testkit::packet::*;
use xdplb_testkit::Run;

/// Checks the verdict alone.
pub fn expect_action(run: &Run, action: u32, what: &str) -> Result<()> {
    ensure!(
        run.action == action,
        "{what}: verdict {}, expected {}",
        action_name(run.action),
        action_name(action)
    );
    Ok(())
}

/// Checks the verdict and that the output frame is exactly `want`.
pub fn expect_frame(run: &Run, action: u32, want: &[u8], what: &str) -> Result<()> {
    expect_action(run, action, what)?;
    let d = diff(&run.out, want);
    ensure!(
        d.is_empty(),
        "{what}: the output frame is not the expected one: {d}"
    );
    Ok(())
}

/// The IPv4 address at `off` in `b`.
pub fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

/// Checks that `run` is the ICMP "fragmentation needed" reply to `pkt` with next-hop MTU `mtu`:
/// back out where it came from (XDP_TX) with the MACs swapped, VIP -> client, type 3 code 4,
/// quoting the original IPv4 header and its first 8 L4 bytes; both checksums from scratch.
pub fn expect_frag_needed(run: &Run, pkt: &Packet, mtu: u16, what: &str) -> Result<()> {
    expect_action(run, XDP_TX, what)?;
    let l3 = pkt.l3_offset();
    let out = &run.out;
    ensure!(
        out.len() == l3 + 56,
        "{what}: output of {} bytes, expected {} (L2 {l3} + IPv4 20 + ICMP 8 + quote 28)",
        out.len(),
        l3 + 56
    );
    ensure!(
        out[0..6] == pkt.eth_src && out[6..12] == pkt.eth_dst,
        "{what}: MACs {}/{} are not the incoming ones swapped ({} <- {})",
        mac_str(&out[0..6].try_into().unwrap()),
        mac_str(&out[6..12].try_into().unwrap()),
        mac_str(&pkt.eth_src),
        mac_str(&pkt.eth_dst)
    );
    let ip = &out[l3..];
    ensure!(ip[0] == 0x45, "{what}: version/ihl {:#04x}", ip[0]);
    ensure!(
        get_be16(ip, 2) == 56,
        "{what}: tot_len {}, expected 56",
        get_be16(ip, 2)
    );
    ensure!(
        get_be16(ip, 6) & !IP_DF == 0,
        "{what}: the ICMP packet is a fragment ({:#06x})",
        get_be16(ip, 6)
    );
    ensure!(ip[8] > 0, "{what}: TTL 0");
    ensure!(
        ip[9] == IPPROTO_ICMP,
        "{what}: protocol {}, expected 1",
        ip[9]
    );
    ensure!(
        ip_at(ip, 12) == pkt.dst && ip_at(ip, 16) == pkt.src,
        "{what}: {} -> {}, expected {} -> {}",
        ip_at(ip, 12),
        ip_at(ip, 16),
        pkt.dst,
        pkt.src
    );
    let icmp = &ip[20..56];
    ensure!(
        icmp[0] == 3 && icmp[1] == 4,
        "{what}: ICMP type {} code {}, expected 3/4",
        icmp[0],
        icmp[1]
    );
    ensure!(
        get_be16(icmp, 4) == 0 && get_be16(icmp, 6) == mtu,
        "{what}: unused {:#06x} / next-hop MTU {}, expected 0 / {mtu}",
        get_be16(icmp, 4),
        get_be16(icmp, 6)
    );
    let quote = &pkt.ip_bytes()[..28];
    ensure!(
        &icmp[8..] == quote,
        "{what}: the quote is not the original IPv4 header + 8 bytes: {}",
        diff(&icmp[8..], quote)
    );
    verify_checksums(out, false).with_context(|| format!("{what}: checksums"))?;
    // The whole frame, rebuilt from scratch; TOS, id, DF and TTL (unspecified) as the program chose.
    let want = Packet {
        eth_dst: pkt.eth_src,
        eth_src: pkt.eth_dst,
        vlans: pkt.vlans.clone(),
        tos: ip[1],
        ip_id: get_be16(ip, 4),
        frag: get_be16(ip, 6),
        ttl: ip[8],
        src: pkt.dst,
        dst: pkt.src,
        ip_options: Vec::new(),
        l4: Transport::Icmp {
            kind: 3,
            code: 4,
            rest: [0, 0, (mtu >> 8) as u8, mtu as u8],
        },
        payload: quote.to_vec(),
    };
    expect_frame(run, XDP_TX, &want.build(), what)
}

/// The outer header the LB must write in front of `inner` for IPIP: RFC 2003 (TOS and DF copied
/// from the inner header), id 0, TTL 64, protocol 4, `source` -> `backend`. Without DF the id is
/// per packet (RFC 6864): [`ipip_outer_sent`].
pub fn ipip_outer(inner: &Packet, source: Ipv4Addr, backend: Ipv4Addr) -> Ipv4Header {
    Ipv4Header {
        tos: inner.tos,
        id: 0,
        frag: inner.frag & IP_DF,
        ttl: 64,
        proto: IPPROTO_IPIP,
        src: source,
        dst: backend,
    }
}

/// [`ipip_outer`] for the frame `sent` by the program: with DF the id stays 0; without DF it is the
/// one `sent` carries, a per-packet counter whose values tests/tunnel.rs checks (distinct per flow).
pub fn ipip_outer_sent(
    inner: &Packet,
    source: Ipv4Addr,
    backend: Ipv4Addr,
    sent: &[u8],
) -> Ipv4Header {
    let mut outer = ipip_outer(inner, source, backend);
    if inner.frag & IP_DF == 0 && sent.len() >= 14 + 20 {
        outer.id = get_be16(sent, 14 + 4);
    }
    outer
}
