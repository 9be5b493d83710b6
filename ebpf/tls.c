// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * podtap's decrypted view: uprobes on OpenSSL's SSL_read/SSL_write (and the _ex variants) in the
 * processes of selected pods copy the plaintext those calls move, and tell which connection it
 * belongs to.
 *
 * Which connection: a call that does socket I/O (the usual socket BIO) makes a read/write/
 * send/recv syscall while it runs; the syscall tracepoints note that fd for the calling thread,
 * and the socket's addresses are read from the kernel's struct sock (CO-RE, no vmlinux.h: the
 * few fields used are declared below with preserve_access_index). SSL_set_fd tells it too.
 * Libraries that use memory BIOs and do their own socket I/O (gRPC) are bound by thread: an
 * SSL_read takes the socket the thread read last, an SSL_write the socket the thread writes
 * next (a BIND event tells user space, which holds the earlier chunks until then).
 *
 * The uprobes are attached per process (the agent follows the pods' processes); the syscall
 * tracepoints are system-wide and return at once for any process not in TLS_PIDS.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "tls.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The kernel fields used, for CO-RE relocation against the running kernel's BTF. */
struct in6_addr___pt {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	struct in6_addr___pt skc_v6_daddr;
	struct in6_addr___pt skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct socket {
	short type;
	struct sock *sk;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

#define S_IFMT_ 0170000
#define S_IFSOCK_ 0140000
#define SOCK_STREAM_ 1
#define IPPROTO_TCP_ 6
#define AF_INET_ 2
#define AF_INET6_ 10

/* Wake the reader once this much is pending; it also polls every 10 ms. */
#define WAKEUP_BYTES (256 * 1024)

/* An SSL call in flight on a thread (key: pid_tgid). */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 len_ptr; /* _ex variants: where the library writes the byte count */
	__s32 fd;      /* the socket a syscall of this call used, -1 if none yet */
	__u8 direction;
	__u8 _pad[3];
};

/* What a thread did outside SSL calls (key: pid_tgid), for memory-BIO libraries. */
struct tls_thread {
	__u64 pending_ssl; /* an SSL_write that did no socket I/O: bind it to the next write */
	__s32 read_fd;     /* the TCP socket the thread read last, -1 if none */
	__s32 _pad;
};

struct tls_ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} TLS_RING SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, __u16); /* tap id of the process's pod */
} TLS_PIDS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tls_call);
} TLS_CALLS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tls_thread);
} TLS_THREADS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_ssl_key);
	__type(value, __s32); /* fd */
} TLS_FDS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_record);
} TLS_SCRATCH SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_counters);
} TLS_COUNTERS SEC(".maps");

static __always_inline struct tls_counters *counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&TLS_COUNTERS, &zero);
}

/* The TCP connection behind fd in the current task, or -1 (not a TCP socket, or unreadable). */
static __always_inline int tuple_of_fd(int fd, struct tls_tuple *t)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return -1;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return -1;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT_) != S_IFSOCK_)
		return -1;
	struct socket *so = BPF_CORE_READ(f, private_data);
	if (!so || BPF_CORE_READ(so, type) != SOCK_STREAM_)
		return -1;
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP_)
		return -1;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__builtin_memset(t, 0, sizeof(*t));
	if (family == AF_INET_) {
		__be32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(t->local_addr, &l, 4);
		__builtin_memcpy(t->remote_addr, &r, 4);
	} else if (family == AF_INET6_) {
		BPF_CORE_READ_INTO(&t->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->remote_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		return -1;
	}
	t->family = family;
	t->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return 0;
}

static __always_inline __u64 wakeup_flags(void)
{
	return bpf_ringbuf_query(&TLS_RING, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
										: BPF_RB_NO_WAKEUP;
}

/* Tells user space that (tgid, ssl) uses the connection behind fd. */
static __always_inline void emit_bind(__u32 tgid, __u32 tid, __u64 ssl, int fd)
{
	struct tls_event *e = bpf_ringbuf_reserve(&TLS_RING, sizeof(*e), 0);
	struct tls_counters *c = counters();
	if (!e) {
		if (c)
			c->ring_full++;
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp_ns = bpf_ktime_get_ns();
	e->ssl = ssl;
	e->tgid = tgid;
	e->tid = tid;
	e->fd = fd;
	e->kind = TLS_EV_BIND;
	tuple_of_fd(fd, &e->tuple);
	bpf_ringbuf_submit(e, wakeup_flags());
	if (c)
		c->binds++;
}

static __always_inline int on_enter(struct pt_regs *ctx, __u8 direction, int ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call call = {
		.ssl = PT_REGS_PARM1(ctx),
		.buf = PT_REGS_PARM2(ctx),
		.len_ptr = ex ? PT_REGS_PARM4(ctx) : 0,
		.fd = -1,
		.direction = direction,
	};
	bpf_map_update_elem(&TLS_CALLS, &id, &call, BPF_ANY);
	return 0;
}

SEC("uprobe/SSL_read")
int tls_read_enter(struct pt_regs *ctx) { return on_enter(ctx, TLS_DIR_READ, 0); }

SEC("uprobe/SSL_write")
int tls_write_enter(struct pt_regs *ctx) { return on_enter(ctx, TLS_DIR_WRITE, 0); }

/* Also attached to OpenSSL's ssl_read_internal / ssl_write_internal (same arguments as the
 * _ex functions; crates/agent/src/tls/placement.rs finds them): one probe for all four entry
 * points, on an instruction the kernel emulates. */
SEC("uprobe/SSL_read_ex")
int tls_read_ex_enter(struct pt_regs *ctx) { return on_enter(ctx, TLS_DIR_READ, 1); }

SEC("uprobe/SSL_write_ex")
int tls_write_ex_enter(struct pt_regs *ctx) { return on_enter(ctx, TLS_DIR_WRITE, 1); }

/* One program for the four uretprobes: what the call was is in TLS_CALLS. */
SEC("uretprobe/SSL_ret")
int tls_ret(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct tls_call *call = bpf_map_lookup_elem(&TLS_CALLS, &id);
	if (!call)
		return 0;
	struct tls_call c = *call;
	bpf_map_delete_elem(&TLS_CALLS, &id);

	int ret = (int)PT_REGS_RC(ctx);
	__u64 len = 0;
	if (c.len_ptr) {
		/* The _ex contract (SSL_read_ex, and ssl_read_internal/ssl_write_internal, which the
		 * agent probes when it finds them): success is > 0, the length is in *len_ptr. */
		if (ret <= 0)
			return 0;
		if (bpf_probe_read_user(&len, sizeof(len), (void *)c.len_ptr))
			return 0;
	} else {
		if (ret <= 0)
			return 0;
		len = ret;
	}
	if (len == 0)
		return 0;

	struct tls_ssl_key key = {.ssl = c.ssl, .tgid = tgid};
	struct tls_thread *th = bpf_map_lookup_elem(&TLS_THREADS, &id);
	int fd = c.fd;
	if (fd >= 0) {
		bpf_map_update_elem(&TLS_FDS, &key, &fd, BPF_ANY);
	} else {
		__s32 *known = bpf_map_lookup_elem(&TLS_FDS, &key);
		if (known) {
			fd = *known;
		} else if (c.direction == TLS_DIR_READ && th && th->read_fd >= 0) {
			fd = th->read_fd;
			bpf_map_update_elem(&TLS_FDS, &key, &fd, BPF_ANY);
		} else if (c.direction == TLS_DIR_WRITE) {
			struct tls_thread fresh = {.pending_ssl = c.ssl, .read_fd = -1};
			if (th)
				th->pending_ssl = c.ssl;
			else
				bpf_map_update_elem(&TLS_THREADS, &id, &fresh, BPF_ANY);
		}
	}

	__u32 zero = 0;
	struct tls_record *rec = bpf_map_lookup_elem(&TLS_SCRATCH, &zero);
	struct tls_counters *cnt = counters();
	if (!rec || !cnt)
		return 0;
	cnt->calls++;
	cnt->bytes += len;

	struct tls_event *e = &rec->event;
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp_ns = bpf_ktime_get_ns();
	e->ssl = c.ssl;
	e->tgid = tgid;
	e->tid = (__u32)id;
	e->call_len = len > 0xffffffffULL ? 0xffffffffU : (__u32)len;
	e->fd = fd;
	e->kind = TLS_EV_DATA;
	e->direction = c.direction;
	if (fd < 0 || tuple_of_fd(fd, &e->tuple))
		cnt->no_socket++;

	for (int i = 0; i < TLS_MAX_CHUNKS; i++) {
		__u64 off = (__u64)i * TLS_MAX_CHUNK;
		if (off >= len)
			break;
		__u64 n = len - off;
		if (n > TLS_MAX_CHUNK)
			n = TLS_MAX_CHUNK;
		e->offset = off;
		e->captured_len = n;
		if (bpf_probe_read_user(rec->data, n, (void *)(c.buf + off))) {
			cnt->read_failed++;
			break;
		}
		if (bpf_ringbuf_output(&TLS_RING, rec, sizeof(struct tls_event) + n, wakeup_flags())) {
			cnt->ring_full++;
			break;
		}
		cnt->events++;
	}
	if (len > (__u64)TLS_MAX_CHUNK * TLS_MAX_CHUNKS)
		cnt->truncated += len - (__u64)TLS_MAX_CHUNK * TLS_MAX_CHUNKS;
	return 0;
}

/* SSL_set_fd(ssl, fd): the connection is known before any data. */
SEC("uprobe/SSL_set_fd")
int tls_set_fd(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_ssl_key key = {.ssl = PT_REGS_PARM1(ctx), .tgid = tgid};
	__s32 fd = (int)PT_REGS_PARM2(ctx);
	bpf_map_update_elem(&TLS_FDS, &key, &fd, BPF_ANY);
	return 0;
}

/* SSL_free(ssl): the pointer may be reused for another connection. */
SEC("uprobe/SSL_free")
int tls_free(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_ssl_key key = {.ssl = PT_REGS_PARM1(ctx), .tgid = tgid};
	bpf_map_delete_elem(&TLS_FDS, &key);
	return 0;
}

/* The syscall tracepoints' context: common fields, syscall number, then the arguments. */
struct sys_enter_ctx {
	__u64 _common;
	__s64 nr;
	__u64 args[6];
};

static __always_inline int on_socket_syscall(struct sys_enter_ctx *ctx, int is_write)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!bpf_map_lookup_elem(&TLS_PIDS, &tgid))
		return 0;
	int fd = (int)ctx->args[0];
	struct tls_call *call = bpf_map_lookup_elem(&TLS_CALLS, &id);
	struct tls_tuple t;
	if (call) {
		if (call->fd < 0 && tuple_of_fd(fd, &t) == 0)
			call->fd = fd;
		return 0;
	}
	struct tls_thread *th = bpf_map_lookup_elem(&TLS_THREADS, &id);
	if (is_write) {
		if (th && th->pending_ssl && tuple_of_fd(fd, &t) == 0) {
			struct tls_ssl_key key = {.ssl = th->pending_ssl, .tgid = tgid};
			__s32 f = fd;
			bpf_map_update_elem(&TLS_FDS, &key, &f, BPF_ANY);
			emit_bind(tgid, (__u32)id, th->pending_ssl, fd);
			th->pending_ssl = 0;
		}
		return 0;
	}
	if (tuple_of_fd(fd, &t))
		return 0;
	if (th) {
		th->read_fd = fd;
	} else {
		struct tls_thread fresh = {.pending_ssl = 0, .read_fd = fd};
		bpf_map_update_elem(&TLS_THREADS, &id, &fresh, BPF_ANY);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_read")
int tls_sys_read(struct sys_enter_ctx *ctx) { return on_socket_syscall(ctx, 0); }

SEC("tracepoint/syscalls/sys_enter_write")
int tls_sys_write(struct sys_enter_ctx *ctx) { return on_socket_syscall(ctx, 1); }
