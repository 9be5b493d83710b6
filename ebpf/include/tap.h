/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Layout shared by the tap programs (ebpf/tap.c) and the agent. The Rust mirror of every struct,
 * map name and program name here is crates/abi/src/lib.rs: change both together (both sides
 * assert sizes and offsets at compile time).
 */
#ifndef PODTAP_TAP_H
#define PODTAP_TAP_H

#include <linux/types.h>

/* Direction of a copy, from the pod's point of view. */
#define TAP_DIR_FROM_POD 0 /* host veth TC ingress: the pod sent it */
#define TAP_DIR_TO_POD 1   /* host veth TC egress: the pod receives it */

/* tap_config.filter_flags: which prefilter conditions are active (all active ones must match). */
#define TAP_FILTER_CIDR (1u << 0)  /* source or destination address in TAP_FILTER_CIDRS */
#define TAP_FILTER_PROTO (1u << 1) /* IP protocol set in TAP_FILTER_PROTOS */
#define TAP_FILTER_PORT (1u << 2)  /* TCP/UDP/SCTP source or destination port set in TAP_FILTER_PORTS */

/* tap_config.flags */
#define TAP_F_GSO_WHOLE (1u << 0) /* copy GSO super-packets whole (up to TAP_MAX_COPY) so user
                                     space can segment them; otherwise they are cut at snaplen */
#define TAP_F_EXCLUDE (1u << 1)   /* never copy packets matching TAP_EXCLUDE (tunnel traffic) */

/* The largest copy the program makes (bytes of packet data in one ring record). */
#define TAP_MAX_COPY 65536

/* The one entry of TAP_CONFIG. */
struct tap_config {
	__u32 snaplen;      /* bytes of each packet copied (GSO super-packets: see TAP_F_GSO_WHOLE) */
	__u32 flags;        /* TAP_F_* */
	__u32 filter_flags; /* TAP_FILTER_* */
	__u32 wakeup_bytes; /* wake the reader once this much data is pending (0: every record) */
	__u32 tunnel_ifindex; /* in-kernel sending: clone non-GSO packets to this VXLAN device
	                         (0: every copy goes through the ring) */
	__u32 _pad;
};

/* Header of every TAP_RING record; captured_len bytes of packet data follow it. */
struct tap_record {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u32 ifindex;      /* the host-side veth */
	__u32 packet_len;   /* skb->len: the packet's length, before any cut */
	__u32 captured_len; /* bytes that follow */
	__u16 gso_size;     /* L4 payload per segment for GSO super-packets, else 0 */
	__u16 gso_segs;     /* segments in a GSO super-packet, else 0 */
	__u8 direction;     /* TAP_DIR_* */
	__u8 _pad[7];
};

/* Key of TAP_COUNTERS: one entry per tapped veth and direction, created by the agent. */
struct tap_key {
	__u32 ifindex;
	__u32 direction;
};

/* Value of TAP_COUNTERS (per CPU). Packets are wire packets: a GSO super-packet counts as its
 * number of segments. */
struct tap_counters {
	__u64 packets;        /* seen on the veth */
	__u64 bytes;          /* seen on the veth (skb->len) */
	__u64 filtered;       /* not copied: the prefilter did not match */
	__u64 copied;         /* copied into the ring */
	__u64 ring_full;      /* not copied: no room in the ring */
	__u64 truncated;      /* copied, but cut at snaplen or TAP_MAX_COPY */
	__u64 gso;            /* GSO super-packets seen (skbs, each counted in packets as segments) */
	__u64 load_failed;    /* not copied: reading the packet failed */
	__u64 excluded;       /* not copied: tunnel traffic (TAP_EXCLUDE) */
	__u64 redirected;     /* copies sent in the kernel (clone to the tunnel device) */
	__u64 redirect_failed; /* in-kernel copies the kernel refused */
	__u64 _reserved;
};

/* Key of TAP_EXCLUDE: packets to or from addr with this protocol and (for UDP) destination
 * port are never copied. podtap's own tunnels: (broker, UDP, 4789) and (broker, GRE, 0). */
struct tap_exclude_key {
	__u32 addr; /* IPv4, network order */
	__u16 port; /* UDP destination port, host order; 0 for GRE */
	__u8 proto;
	__u8 _pad;
};

/* Key of TAP_FILTER_CIDRS (LPM trie): IPv4 addresses as IPv4-mapped IPv6 (::ffff:a.b.c.d). */
struct tap_cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

_Static_assert(sizeof(struct tap_config) == 24, "tap_config layout");
_Static_assert(sizeof(struct tap_record) == 32, "tap_record layout");
_Static_assert(__builtin_offsetof(struct tap_record, captured_len) == 16, "tap_record layout");
_Static_assert(__builtin_offsetof(struct tap_record, direction) == 24, "tap_record layout");
_Static_assert(sizeof(struct tap_key) == 8, "tap_key layout");
_Static_assert(sizeof(struct tap_counters) == 96, "tap_counters layout");
_Static_assert(sizeof(struct tap_exclude_key) == 8, "tap_exclude_key layout");
_Static_assert(sizeof(struct tap_cidr_key) == 20, "tap_cidr_key layout");

#endif
