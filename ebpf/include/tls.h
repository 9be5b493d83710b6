/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Layout shared by the TLS plaintext programs (ebpf/tls.c) and the agent. The Rust mirror of
 * every struct and name here is crates/abi/src/tls.rs: change both together (both sides assert
 * sizes at compile time).
 *
 * What is captured: the plaintext an OpenSSL SSL_read/SSL_write call (or its _ex variant)
 * returned or took, read from the caller's buffer after the call. Keys, session secrets and the
 * SSL structure's contents are never read: the SSL pointer is used only as an opaque id.
 */
#ifndef PODTAP_TLS_H
#define PODTAP_TLS_H

#include <linux/types.h>

/* tls_event.kind */
#define TLS_EV_DATA 0 /* plaintext follows the header */
#define TLS_EV_BIND 1 /* (tgid, ssl) now known to use the connection in the header; no data */

/* tls_event.direction */
#define TLS_DIR_READ 0  /* SSL_read: the peer sent it to the probed process */
#define TLS_DIR_WRITE 1 /* SSL_write: the probed process sent it */

/* The most plaintext one event carries; a longer call becomes several events. */
#define TLS_MAX_CHUNK 16384
/* Events one call may produce (TLS_MAX_CHUNK each); the rest is counted as truncated. */
#define TLS_MAX_CHUNKS 8

/* The connection, as the probed process's socket sees it (local = the probed process). */
struct tls_tuple {
	__u8 local_addr[16];  /* IPv4 in the first 4 bytes (family 2), else IPv6 */
	__u8 remote_addr[16];
	__u16 local_port;     /* host order */
	__u16 remote_port;    /* host order */
	__u16 family;         /* AF_INET (2) / AF_INET6 (10); 0 = unknown */
	__u16 _pad;
};

/* Header of every TLS_RING record. */
struct tls_event {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC, when the call returned */
	__u64 ssl;          /* the SSL* (an id only) */
	__u32 tgid;
	__u32 tid;
	__u32 call_len;     /* plaintext bytes of the whole call */
	__u32 offset;       /* where this chunk starts within the call */
	__u32 captured_len; /* bytes that follow */
	__s32 fd;           /* the socket, or -1 if not known yet */
	__u8 kind;          /* TLS_EV_* */
	__u8 direction;     /* TLS_DIR_* */
	__u8 _pad[6];
	struct tls_tuple tuple; /* family 0: not known (yet) */
};

/* One record as it sits in the per-CPU scratch buffer before it is copied to the ring. */
struct tls_record {
	struct tls_event event;
	__u8 data[TLS_MAX_CHUNK];
};

/* Value of TLS_COUNTERS (per CPU, one entry). */
struct tls_counters {
	__u64 calls;        /* SSL_read/SSL_write calls that returned data */
	__u64 bytes;        /* plaintext bytes those calls moved */
	__u64 events;       /* data events written to the ring */
	__u64 ring_full;    /* data events lost: no room in the ring */
	__u64 truncated;    /* bytes not captured: calls longer than TLS_MAX_CHUNKS chunks */
	__u64 read_failed;  /* events lost: reading the caller's buffer failed */
	__u64 no_socket;    /* data events sent without a known connection */
	__u64 binds;        /* bind events */
};

_Static_assert(sizeof(struct tls_tuple) == 40, "tls_tuple layout");
_Static_assert(sizeof(struct tls_event) == 88, "tls_event layout");
_Static_assert(__builtin_offsetof(struct tls_event, tuple) == 48, "tls_event layout");
_Static_assert(sizeof(struct tls_counters) == 64, "tls_counters layout");

#endif
