// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * The pod tap: TC classifiers on the host side of pod veths. Where a pod's packet enters podtap.
 *
 * tap_from_pod runs on the veth's ingress (packets the pod sends), tap_to_pod on its egress
 * (packets the pod receives). Each counts the packet, applies the optional prefilter from maps,
 * and copies up to snaplen bytes into TAP_RING. It never changes, delays or drops the packet:
 * it always returns TC_ACT_UNSPEC (TCX_NEXT), and when the ring is full the copy is dropped and
 * counted, not the packet.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "tap.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tap_config);
} TAP_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* the agent sets the real size at load time */
} TAP_RING SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tap_key);
	__type(value, struct tap_counters);
} TAP_COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tap_cidr_key);
	__type(value, __u8);
} TAP_FILTER_CIDRS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} TAP_FILTER_PROTOS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} TAP_FILTER_PORTS SEC(".maps");

/* Tap point label per veth: tap id (15 bits) | 0x8000 for the to-pod direction is added by the
 * program. Carried as the VXLAN GBP id of in-kernel copies (through skb->mark). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* ifindex */
	__type(value, __u16);
} TAP_IDS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct tap_exclude_key);
	__type(value, __u8);
} TAP_EXCLUDE SEC(".maps");

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IPPROTO_SCTP_ 132

/* What the prefilter looks at. */
struct flow_view {
	struct tap_cidr_key src;
	struct tap_cidr_key dst;
	__u8 proto;
	__u8 has_ports;
	__u16 sport;
	__u16 dport;
};

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP_;
}

/* Reads the L3/L4 fields the prefilter needs. Returns 0 for IPv4/IPv6, -1 otherwise. */
static __always_inline int read_flow(struct __sk_buff *skb, struct flow_view *f)
{
	__u32 off = ETH_HLEN;
	__u16 proto = skb->protocol; /* network order; VLAN tags may already be stripped */
	__be16 inner;

	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		if (bpf_skb_load_bytes(skb, off + 2, &inner, sizeof(inner)) < 0)
			return -1;
		proto = inner;
		off += 4;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		f->src.addr[10] = 0xff;
		f->src.addr[11] = 0xff;
		f->dst.addr[10] = 0xff;
		f->dst.addr[11] = 0xff;
		__builtin_memcpy(&f->src.addr[12], &ip.saddr, 4);
		__builtin_memcpy(&f->dst.addr[12], &ip.daddr, 4);
		f->proto = ip.protocol;
		/* Only the first fragment carries the ports. */
		if (has_ports(ip.protocol) && !(ip.frag_off & bpf_htons(0x1fff))) {
			off += ip.ihl * 4;
			f->has_ports = 1;
		}
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(f->src.addr, &ip6.saddr, 16);
		__builtin_memcpy(f->dst.addr, &ip6.daddr, 16);
		/* Extension headers are not walked: ports are matched when TCP/UDP/SCTP follows
		 * the fixed header directly, which is what pod traffic carries. */
		f->proto = ip6.nexthdr;
		if (has_ports(ip6.nexthdr)) {
			off += sizeof(ip6);
			f->has_ports = 1;
		}
	} else {
		return -1;
	}

	if (f->has_ports) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0) {
			f->has_ports = 0;
		} else {
			f->sport = bpf_ntohs(ports[0]);
			f->dport = bpf_ntohs(ports[1]);
		}
	}
	return 0;
}

static __always_inline int port_listed(__u16 port)
{
	__u32 key = port;
	__u8 *v = bpf_map_lookup_elem(&TAP_FILTER_PORTS, &key);
	return v && *v;
}

/* Returns 1 when the packet passes every active prefilter condition. */
static __always_inline int prefilter_pass(struct __sk_buff *skb, __u32 filter_flags)
{
	struct flow_view f = {};

	if (!filter_flags)
		return 1;
	if (read_flow(skb, &f) < 0)
		return 0; /* an active prefilter only passes IP packets */

	if (filter_flags & TAP_FILTER_CIDR) {
		f.src.prefixlen = 128;
		f.dst.prefixlen = 128;
		if (!bpf_map_lookup_elem(&TAP_FILTER_CIDRS, &f.src) &&
		    !bpf_map_lookup_elem(&TAP_FILTER_CIDRS, &f.dst))
			return 0;
	}
	if (filter_flags & TAP_FILTER_PROTO) {
		__u32 key = f.proto;
		__u8 *v = bpf_map_lookup_elem(&TAP_FILTER_PROTOS, &key);
		if (!v || !*v)
			return 0;
	}
	if (filter_flags & TAP_FILTER_PORT) {
		if (!f.has_ports || !(port_listed(f.sport) || port_listed(f.dport)))
			return 0;
	}
	return 1;
}

/* Returns 1 when the packet is podtap tunnel traffic listed in TAP_EXCLUDE (either direction),
 * so that a tap never copies its own output. */
static __always_inline int excluded(struct __sk_buff *skb)
{
	struct flow_view f = {};
	struct tap_exclude_key k = {};
	__u32 a;

	if (read_flow(skb, &f) < 0 || f.src.addr[10] != 0xff || f.src.addr[11] != 0xff)
		return 0; /* IPv4 only */
	k.proto = f.proto;
	k.port = f.proto == IPPROTO_UDP && f.has_ports ? f.dport : 0;
	if (f.proto != IPPROTO_UDP && f.proto != 47 /* GRE */)
		return 0;
	__builtin_memcpy(&a, &f.dst.addr[12], 4);
	k.addr = a;
	if (bpf_map_lookup_elem(&TAP_EXCLUDE, &k))
		return 1;
	__builtin_memcpy(&a, &f.src.addr[12], 4);
	k.addr = a;
	k.port = f.proto == IPPROTO_UDP && f.has_ports ? f.sport : 0;
	return bpf_map_lookup_elem(&TAP_EXCLUDE, &k) != 0;
}

/*
 * Reserves a ring record for `cap` bytes in the smallest size class that fits (the ring only
 * hands out constant sizes) and copies the packet into it. Returns 0 on success, 1 when the
 * ring is full, 2 when reading the packet failed.
 */
#define COPY_CLASS(N)                                                                          \
	if (cap <= (N)) {                                                                      \
		struct tap_record *rec =                                                       \
			bpf_ringbuf_reserve(&TAP_RING, sizeof(struct tap_record) + (N), 0);    \
		if (!rec)                                                                      \
			return 1;                                                              \
		*rec = *hdr;                                                                   \
		if (bpf_skb_load_bytes(skb, 0, (void *)(rec + 1), cap) < 0) {                  \
			bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);                            \
			return 2;                                                              \
		}                                                                              \
		bpf_ringbuf_submit(rec, wake);                                                 \
		return 0;                                                                      \
	}

static __noinline int copy_to_ring(struct __sk_buff *skb, struct tap_record *hdr, __u64 wake)
{
	__u32 cap = hdr->captured_len;

	if (cap == 0 || cap > TAP_MAX_COPY)
		return 2;
	COPY_CLASS(64)
	COPY_CLASS(128)
	COPY_CLASS(256)
	COPY_CLASS(512)
	COPY_CLASS(1024)
	COPY_CLASS(1536)
	COPY_CLASS(2048)
	COPY_CLASS(4096)
	COPY_CLASS(8192)
	COPY_CLASS(16384)
	COPY_CLASS(32768)
	COPY_CLASS(TAP_MAX_COPY)
	return 2;
}

static __always_inline int tap(struct __sk_buff *skb, __u32 direction)
{
	__u32 zero = 0;
	struct tap_config *cfg = bpf_map_lookup_elem(&TAP_CONFIG, &zero);
	struct tap_key key = {.ifindex = skb->ifindex, .direction = direction};
	struct tap_counters *c = bpf_map_lookup_elem(&TAP_COUNTERS, &key);
	__u32 len = skb->len;
	__u32 segs = skb->gso_segs;
	__u32 wire_packets = segs > 1 ? segs : 1;

	/* Veths the agent did not register have no counters: not ours, leave them alone. */
	if (!cfg || !c)
		return TC_ACT_UNSPEC;

	c->packets += wire_packets;
	c->bytes += len;
	if (segs > 1)
		c->gso++;

	if ((cfg->flags & TAP_F_EXCLUDE) && excluded(skb)) {
		c->excluded += wire_packets;
		return TC_ACT_UNSPEC;
	}
	if (!prefilter_pass(skb, cfg->filter_flags)) {
		c->filtered += wire_packets;
		return TC_ACT_UNSPEC;
	}

	/* In-kernel sending: clone the packet to the tunnel device, its tap label in skb->mark for
	 * the device's VXLAN GBP header, and give the packet back its own mark. GSO super-packets
	 * take the ring (user space cuts them into wire packets first). */
	if (cfg->tunnel_ifindex && segs <= 1) {
		__u32 ifindex = skb->ifindex;
		__u16 *tap_id = bpf_map_lookup_elem(&TAP_IDS, &ifindex);
		__u32 saved = skb->mark;
		skb->mark = (tap_id ? (*tap_id & 0x7fff) : 0) | (direction == TAP_DIR_TO_POD ? 0x8000 : 0);
		long err = bpf_clone_redirect(skb, cfg->tunnel_ifindex, 0);
		skb->mark = saved;
		if (err == 0)
			c->redirected++;
		else
			c->redirect_failed++;
		return TC_ACT_UNSPEC;
	}

	__u32 cap = len;
	__u32 limit = cfg->snaplen;
	if (segs > 1 && (cfg->flags & TAP_F_GSO_WHOLE))
		limit = TAP_MAX_COPY;
	if (limit > TAP_MAX_COPY)
		limit = TAP_MAX_COPY;
	if (cap > limit)
		cap = limit;

	struct tap_record hdr = {
		.timestamp_ns = bpf_ktime_get_ns(),
		.ifindex = skb->ifindex,
		.packet_len = len,
		.captured_len = cap,
		.gso_size = segs > 1 ? skb->gso_size : 0,
		.gso_segs = segs > 1 ? segs : 0,
		.direction = direction,
	};

	/* Batched, edge-triggered wakeups: wake the reader once, when the pending data crosses
	 * wakeup_bytes, not for every record above it (each wakeup is an irq_work, a self-IPI: in a
	 * VM, an exit per packet). The reader drains the ring completely before it sleeps and also
	 * polls every 10 ms, so a crossing missed by racing CPUs costs at most that. */
	__u64 wake = BPF_RB_NO_WAKEUP;
	__u64 pending = bpf_ringbuf_query(&TAP_RING, BPF_RB_AVAIL_DATA);
	__u64 record = sizeof(struct tap_record) + cap;
	if (cfg->wakeup_bytes == 0 ||
	    (pending < cfg->wakeup_bytes && pending + record >= cfg->wakeup_bytes))
		wake = BPF_RB_FORCE_WAKEUP;

	switch (copy_to_ring(skb, &hdr, wake)) {
	case 0:
		c->copied++;
		if (cap < len)
			c->truncated++;
		break;
	case 1:
		c->ring_full += wire_packets;
		break;
	default:
		c->load_failed += wire_packets;
		break;
	}
	return TC_ACT_UNSPEC;
}

SEC("classifier/tap_from_pod")
int tap_from_pod(struct __sk_buff *skb)
{
	return tap(skb, TAP_DIR_FROM_POD);
}

SEC("classifier/tap_to_pod")
int tap_to_pod(struct __sk_buff *skb)
{
	return tap(skb, TAP_DIR_TO_POD);
}
