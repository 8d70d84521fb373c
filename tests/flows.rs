//! The flow-table bugs of issue 16, reproduced through BPF_PROG_TEST_RUN on the real program.
//! Each test fails on the flow tables of today and is ignored until the redesign (issue 16)
//! lands: `cargo test -p xdplb --test flows -- --ignored` shows them failing.

mod common;

use anyhow::ensure;
use xdplb_model::state::Protocol;

use common::lab::*;
use xdplb_testkit::packet::{Packet, TCP_RST};

/// In full NAT only a SYN starts a flow: an ACK without one would claim an SNAT port the
/// backend never saw (it answers RST), so an ACK flood fills the tables and reflects RSTs.
#[test]
fn a_nat_flow_starts_only_with_a_syn() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let client = sa(CLIENT, 45000);
        let ack = data_segment(neighbour_mac(CLIENT), client, VIP);
        let run = lb.run(lb.net.veth0, &ack.build())?;
        ensure!(
            run.action == XDP_DROP,
            "an ACK without a flow got {}, expected a drop",
            action_name(run.action)
        );
        lb.expect_flow_entries(0, "after an ACK without a flow")?;
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 0,
            "the ACK made a new flow"
        );
        // The SYN of the same tuple does start the flow.
        let run = lb.run(lb.net.veth0, &client_syn(client, VIP).build())?;
        ensure!(
            run.action == XDP_TX,
            "the SYN got {}",
            action_name(run.action)
        );
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 1,
            "the SYN made no flow"
        );
        Ok(())
    });
}

/// A SYN (without ACK) on an entry that FIN or RST marked closing starts a fresh flow rather
/// than inheriting the closing entry's short life.
#[test]
fn a_syn_after_rst_starts_a_fresh_flow() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let client = sa(CLIENT, 45001);
        let mac = neighbour_mac(CLIENT);
        for (what, pkt) in [
            ("SYN", client_syn(client, VIP)),
            ("RST", Packet::tcp(mac, VETH0_MAC, client, VIP, TCP_RST)),
            ("SYN again", client_syn(client, VIP)),
        ] {
            let run = lb.run(lb.net.veth0, &pkt.build())?;
            ensure!(
                run.action == XDP_TX,
                "{what} got {}",
                action_name(run.action)
            );
        }
        let new = lb.vip_counters(&vip)?.new_flows;
        ensure!(
            new == 2,
            "{new} new flows: the second SYN did not start a fresh flow"
        );
        Ok(())
    });
}
