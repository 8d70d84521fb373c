/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the packet parser: Ethernet, IPv4 with options, TCP,
 * UDP and the ICMP header, into one struct packet, and the sanity checks of a
 * packet addressed to a VIP (fragments, land). A VLAN-tagged frame is the
 * kernel's (see parse_packet()). Every bounds check sits next to the access it
 * guards. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/icmp.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "xdplb.h"
#include "explain.h"

/* A stage returns an XDP action, or LB_CONTINUE to hand on. */
#define LB_CONTINUE (-1)

#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct packet {
	void *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4; /* TCP, UDP or ICMP header, checked for its full size */
	struct flow_key4 key; /* wire-order 5-tuple as received */
	__u32 len; /* frame length, for byte counters */
	__u8 tcp_flags; /* TCP flag byte (FIN=0x01 SYN=0x02 RST=0x04 ACK=0x10) */
	__u8 reason; /* enum lb_reason of the verdict */
	__u8 flags; /* PKT_F_*: what earlier stages learnt about the packet */
	__u32 rl_policy; /* with PKT_F_RL_NEW_FLOWS: the client's rate-limit policy id */
	__u32 fw_word; /* with PKT_F_FW_WORD: the firewall's verdict word of the source */
};

/* The firewall matched an allow rule: later stages (rate limiting) exempt it. */
#define PKT_F_FW_ALLOWED 0x01
/* The client's rate-limit policy has scope new-flows (pkt->rl_policy): the
 * flow-creation path charges the packet, established flows pass. */
#define PKT_F_RL_NEW_FLOWS 0x02
/* A first fragment (MF, offset 0): the ports are here, the rest of the
 * datagram comes in later fragments without them (see vip_packet_sane()). */
#define PKT_F_FRAGMENT 0x04
/* pkt->fw_word holds the firewall's verdict word (bpf/firewall.h): it is
 * looked up once per packet, however many stages ask. */
#define PKT_F_FW_WORD 0x08

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Records why the packet gets @action and returns @action. */
static __always_inline int verdict(struct packet *pkt, enum lb_reason reason, int action)
{
	pkt->reason = reason;
	return action;
}

/* A TCP/UDP header cut short: dropped, unless the packet is a first fragment
 * (then it is nobody's flow we can tell, and the kernel gets it). */
static __always_inline int cut_short(struct packet *pkt)
{
	if (pkt->flags & PKT_F_FRAGMENT)
		return verdict(pkt, LB_REASON_PASS_FRAGMENT, XDP_PASS);
	return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
}

/* The IPv4 header at @ip is whole, version 4, ihl >= 5, and its tot_len is
 * neither shorter than the header nor longer than the frame (it may be
 * shorter: Ethernet padding). */
static __always_inline bool ipv4_header_sane(const struct iphdr *ip, const void *data_end)
{
	__u32 tot_len;

	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return false;
	tot_len = bpf_ntohs(ip->tot_len);
	return tot_len >= ip->ihl * 4u && (void *)ip + tot_len <= data_end;
}

/**
 * tagged_frame - the verdict of a frame with an 802.1Q or 802.1ad tag: the
 * kernel's, untouched
 *
 * XDP cannot send on a VLAN: XDP_TX would put the frame back on the client's
 * VLAN, and a route through a VLAN device has no XDP transmit (see "VLANs" in
 * docs/ARCHITECTURE.md). The IPv4 header behind one or two tags, if sane, is
 * still set in pkt->ip, so that a firewall of scope "all" drops a tagged
 * frame from a blocked source as it drops an untagged one.
 */
static __always_inline int tagged_frame(struct packet *pkt, void *data, void *data_end)
{
	struct vlan_hdr *vlan = data + sizeof(struct ethhdr);
	struct iphdr *ip;
	__u16 proto;

	if ((void *)(vlan + 1) > data_end)
		return verdict(pkt, LB_REASON_PASS_VLAN, XDP_PASS);
	proto = vlan->encap_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		vlan++;
		if ((void *)(vlan + 1) > data_end)
			return verdict(pkt, LB_REASON_PASS_VLAN, XDP_PASS);
		proto = vlan->encap_proto;
	}
	ip = (void *)(vlan + 1);
	if (proto == bpf_htons(ETH_P_IP) && ipv4_header_sane(ip, data_end))
		pkt->ip = ip;
	return verdict(pkt, LB_REASON_PASS_VLAN, XDP_PASS);
}

/**
 * parse_packet - fill @pkt from the frame in @ctx
 *
 * Returns LB_CONTINUE for an IPv4 TCP or UDP packet whose headers are all
 * present (a first fragment too, marked PKT_F_FRAGMENT) and for an ICMP
 * packet with its 8-byte header (key ports 0: bpf/icmp.h reads the rest),
 * otherwise a verdict: XDP_PASS for anything the kernel should see as if we
 * were not here (non-IP, VLAN-tagged frames, other L4 protocols, later
 * fragments, a first fragment too short for its L4 header, L2/L3 garbage),
 * XDP_DROP for an unfragmented TCP/UDP packet whose L4 header is cut short
 * (every receiver would discard it).
 */
static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 proto;
	__u32 ihl_len, tot_len;

	pkt->data_end = data_end;
	pkt->len = data_end - data;
	if ((void *)(eth + 1) > data_end)
		return verdict(pkt, LB_REASON_PASS_MALFORMED, XDP_PASS);
	pkt->eth = eth;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return tagged_frame(pkt, data, data_end);
	if (proto != bpf_htons(ETH_P_IP))
		return verdict(pkt, LB_REASON_PASS_NOT_IP, XDP_PASS);

	ip = (void *)(eth + 1);
	if (!ipv4_header_sane(ip, data_end))
		return verdict(pkt, LB_REASON_PASS_MALFORMED, XDP_PASS);
	ihl_len = ip->ihl * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	pkt->ip = ip;
	/* A later fragment has no L4 header: nothing to balance or restore on. */
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return verdict(pkt, LB_REASON_PASS_FRAGMENT, XDP_PASS);
	if (ip->frag_off & bpf_htons(IP_MF))
		pkt->flags |= PKT_F_FRAGMENT;

	pkt->key.proto = ip->protocol;
	pkt->key.saddr_be = ip->saddr;
	pkt->key.daddr_be = ip->daddr;

	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)ip + ihl_len;

		if ((void *)(tcp + 1) > data_end || tcp->doff < 5 ||
		    ihl_len + tcp->doff * 4 > tot_len)
			return cut_short(pkt);
		pkt->l4 = tcp;
		pkt->key.sport_be = tcp->source;
		pkt->key.dport_be = tcp->dest;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		return LB_CONTINUE;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)ip + ihl_len;

		if ((void *)(udp + 1) > data_end || ihl_len + sizeof(*udp) > tot_len)
			return cut_short(pkt);
		pkt->l4 = udp;
		pkt->key.sport_be = udp->source;
		pkt->key.dport_be = udp->dest;
		return LB_CONTINUE;
	}
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)ip + ihl_len;

		if ((void *)(icmp + 1) > data_end || ihl_len + sizeof(*icmp) > tot_len)
			return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
		pkt->l4 = icmp;
		return LB_CONTINUE;
	}
	return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
}

/**
 * vip_packet_sane - refuse packets to a VIP (or to the SNAT ports) that the
 * balancer must not forward
 *
 * A first fragment: its ports would pick a backend, but the later fragments
 * carry none and could not follow it, so the datagram could never be
 * reassembled there (see "Fragments" in docs/ARCHITECTURE.md). Dropped and
 * counted (drop_fragment). A packet from the destination address to itself
 * (a "land" packet): only a spoofer sends it, and its NAT reply would be
 * routed back to the VIP, that is to us. Dropped (drop_land).
 *
 * Returns LB_CONTINUE or XDP_DROP.
 */
static __always_inline int vip_packet_sane(struct packet *pkt)
{
	if (pkt->flags & PKT_F_FRAGMENT)
		return verdict(pkt, LB_REASON_DROP_FRAGMENT, XDP_DROP);
	if (pkt->key.saddr_be == pkt->key.daddr_be)
		return verdict(pkt, LB_REASON_DROP_LAND, XDP_DROP);
	return LB_CONTINUE;
}
