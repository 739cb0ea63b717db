// SPDX-License-Identifier: GPL-2.0 OR MIT
/* TLS plaintext from library functions shaped like SSL_write/SSL_read:
 * (handle, buffer, length) with the byte count in the return value, or the
 * _ex shape with the byte count written through a pointer argument.
 *
 * Entry probe: remember the arguments per thread. System call tracepoints
 * on the same thread while the call is active reveal the socket fd (no
 * library struct offsets needed). Return probe: the call's outcome decides
 * what was really sent or received; the whole payload is copied then. */
#include "payload.h"
#include "regs.h"

/* A thread's socket I/O, for calls that make none of their own (see "Calls
 * without socket I/O" below). */
struct thread_io {
	__u64 last_sk;        /* last socket I/O system call, either way */
	__s32 last_fd;
	__u32 track;          /* 1: note this thread's socket I/O */
	__u64 read_sk;        /* last socket read that no call took yet (0: none) */
	__s32 read_fd;
	__u32 _pad;
	__u64 pending_writer; /* connection whose socket the thread's next
			       * socket write names (0: none) */
};

/* One slot per thread, reused from call to call: a slot is written in
 * place at entry and marked done (handle 0) at return, which costs less
 * than creating and deleting an LRU entry per call. */
struct active_call {
	__u64 handle;  /* 0: no call in progress on this thread */
	__u64 buf;
	__u64 len_ptr; /* _ex shape: where the byte count is written */
	__u64 ip;
	__u64 caller;  /* return address, read at internal probe points */
	__u64 sk;      /* the socket behind fd, found with it */
	__s32 fd;
	__u32 library_id;
	struct thread_io io; /* kept from call to call */
	__u8 dir;      /* CT_DIR_SEND, CT_DIR_RECV, or CALL_DIR_UNKNOWN */
	__u8 parked;   /* 1: the call this one runs inside waits in parked_calls */
	__u8 layered;  /* 1: this call runs inside one of the same direction
			* (SSL_write_ex -> SSL_write_ex2) and reports for both */
	__u8 fn;       /* enum ct_tls_function, or CALL_FN_NONE */
	__u8 _pad[4];
};

/* The direction of each plaintext function: the one list that the return
 * probes and the entry's nesting check (call_dir) both read. */
static __always_inline __u8 fn_dir(__u64 fn)
{
	switch (fn) {
	case CT_FN_SSL_WRITE:
	case CT_FN_SSL_WRITE_EX:
	case CT_FN_SSL_WRITE_EX2:
	case CT_FN_SSL_WRITE_INTERNAL:
	case CT_FN_GNUTLS_RECORD_SEND:
	case CT_FN_GNUTLS_RECORD_SEND2:
	case CT_FN_PR_WRITE:
	case CT_FN_PR_SEND:
	case CT_FN_GO_WRITE:
	case CT_FN_RUSTLS_WRITE:
		return CT_DIR_SEND;
	default:
		return CT_DIR_RECV;
	}
}

/* Set by user space: the kernel has bpf_get_attach_cookie (5.15). */
const volatile bool has_attach_cookie = false;

/* Which attached file this probe belongs to: user space gives every file
 * an id as the uprobe's cookie (its low 32 bits), so a record names its
 * library without reading the process's maps (which are gone with a
 * short-lived process). */
static __always_inline __u32 library_id(void *ctx)
{
	return has_attach_cookie ? (__u32)bpf_get_attach_cookie(ctx) : 0;
}

#define CALL_DIR_UNKNOWN 0xff
/* No plaintext function: SSL_do_handshake's entry, and slots made by
 * anything but an entry (ct_tls_function starts at 1). */
#define CALL_FN_NONE 0

/* LRU: slots of threads that are gone (or idle the longest) are the ones
 * reused when it is full; a thread killed mid-call leaks nothing. */
CT_MAP(LRU_HASH, active_calls, __u64 /* pid_tgid */, struct active_call, 16384);

/* A call that another call started inside (see "Calls inside calls"),
 * waiting for that inner call's return. One per thread: a third level
 * drops both outer calls, counted. */
CT_MAP(LRU_HASH, parked_calls, __u64 /* pid_tgid */, struct active_call, 1024);

struct conn_key {
	__u64 handle;
	__u32 tgid;
	__u32 _pad;
};

struct conn_state {
	__s32 fd;
	__u32 portpair;        /* of `sk` when `tuple` was read */
	__u64 calls;
	__u64 sk;              /* the socket `tuple` was read from; 0: none yet */
	struct ct_tuple tuple;
	__u32 tied;            /* 1: its calls make no socket I/O (memory BIO):
				* the socket comes from the thread's I/O */
	__u32 _pad;
};

/* Per-connection state. The fd is cached because a read served from the
 * library's own buffer makes no system call. LRU: bounded, evicts idle. */
CT_MAP(LRU_HASH, conns, struct conn_key, struct conn_state, 65536);

CT_MAP(PROG_ARRAY, emit_continue, __u32, __u32, 1);

/* --- Calls inside calls ------------------------------------------------------
 * A thread has one slot, so a call that starts while another is running
 * takes it. Two cases, told apart by direction (known at entry: each
 * function has an entry program of its own):
 *  - the same direction: the library's own layering (SSL_write_ex calls
 *    SSL_write_ex2, gnutls_record_send calls gnutls_record_send2). The
 *    inner call reports the bytes for both, and the outer one's return
 *    finds nothing to report;
 *  - the other direction: a callback into the program (node runs
 *    JavaScript inside the SSL_read that finishes a handshake, and that
 *    JavaScript may SSL_write). The outer call is parked and comes back to
 *    the slot when the inner one returns, so both are reported.
 * A third level of the other direction drops both outer calls, counted as
 * calls not captured. SSL_do_handshake's entry has no direction: a call
 * inside it, or it inside a call, takes the slot. */

/* `c` starts while `slot`'s call runs on the same thread. */
static __always_inline void start_inside(struct active_call *slot, struct active_call *c, __u64 id)
{
	if (slot->dir == CALL_DIR_UNKNOWN || c->dir == CALL_DIR_UNKNOWN)
		return;
	c->parked = slot->parked;
	if (slot->dir == c->dir) {
		c->layered = 1;
		return;
	}
	if (!slot->parked && !bpf_map_update_elem(&parked_calls, &id, slot, BPF_ANY)) {
		c->parked = 1;
		return;
	}
	/* No room (a third level, or the map full): both outer calls go. */
	stat_add(CT_STAT_UNSEEN_STARTS, slot->parked ? 2 : 1);
	if (slot->parked)
		bpf_map_delete_elem(&parked_calls, &id);
	c->parked = 0;
}

/* The call that `slot`'s call ran inside takes the slot back. */
static __always_inline void resume_outer(struct active_call *slot, __u64 id)
{
	struct active_call *outer = bpf_map_lookup_elem(&parked_calls, &id);
	struct thread_io io = slot->io;
	if (outer) {
		*slot = *outer;
		slot->io = io;
		bpf_map_delete_elem(&parked_calls, &id);
	} else {
		/* Evicted from the parked table: that call is not captured. */
		stat_add(CT_STAT_UNSEEN_STARTS, 1);
		slot->handle = 0;
		slot->parked = 0;
	}
}

/* len_ptr: where an _ex-shaped function writes its byte count (0: the
 * byte count is the return value). with_caller: remember the return
 * address, which names the API function behind an internal probe point.
 * fn: the probed function (a constant of each entry program), which its
 * return reads from the slot. */
static __always_inline int on_entry(struct pt_regs *ctx, __u64 len_ptr, bool with_caller, __u8 fn)
{
	if (!current_task_wanted())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct active_call c = {
		.handle = PT_REGS_PARM1(ctx),
		.buf = PT_REGS_PARM2(ctx),
		.len_ptr = len_ptr,
		.ip = PT_REGS_IP(ctx),
		.fd = -1,
		.library_id = library_id(ctx),
		.fn = fn,
		.dir = fn == CALL_FN_NONE ? CALL_DIR_UNKNOWN : fn_dir(fn),
	};
	if (with_caller)
		ct_entry_return_address(ctx, &c.caller);
	struct active_call *slot = bpf_map_lookup_elem(&active_calls, &id);
	if (slot) {
		/* What the thread's system calls told before this call. */
		c.io = slot->io;
		if (slot->handle)
			start_inside(slot, &c, id);
		*slot = c;
	} else
		bpf_map_update_elem(&active_calls, &id, &c, BPF_ANY);
	return 0;
}

/* The call in progress on this thread, now ended: its slot is marked done
 * so that a return whose entry was filtered out finds nothing. A wanted
 * thread with no slot at all lost it to the LRU (more threads with calls
 * than the table holds): that call is not captured, and is counted so the
 * loss is said. (A call already running when its file is attached makes
 * no return event at all: a uretprobe takes hold at the entry, and the
 * entry probe is attached first.) */
static __always_inline bool end_call(struct active_call *out)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct active_call *found = bpf_map_lookup_elem(&active_calls, &id);
	if (!found) {
		if (current_task_wanted())
			stat_add(CT_STAT_UNSEEN_STARTS, 1);
		return false;
	}
	if (!found->handle) {
		/* The outer call of a layered pair: its inner call reported. */
		if (found->parked)
			resume_outer(found, id);
		return false;
	}
	*out = *found;
	if (found->parked && !found->layered)
		resume_outer(found, id);
	else
		found->handle = 0;
	found->layered = 0;
	return true;
}

static __always_inline __u64 bytes_done(struct pt_regs *ctx, struct active_call *c)
{
	/* These functions return int: the upper half of rax is garbage. */
	int ret = (int)PT_REGS_RC(ctx);
	__u64 n = 0;
	if (!c->len_ptr)
		return ret > 0 ? ret : 0;
	/* SSL_*_ex return 1 on success; OpenSSL's internal functions return
	 * a positive value on success, as SSL_write itself tests. */
	if (ret > 0)
		bpf_probe_read_user(&n, sizeof(n), (void *)c->len_ptr);
	return n;
}

static __always_inline struct conn_state *conn_for(struct conn_key *k, int fd)
{
	struct conn_state *cs = bpf_map_lookup_elem(&conns, k);
	if (!cs) {
		struct conn_state fresh = { .fd = fd };
		if (!bpf_map_update_elem(&conns, k, &fresh, BPF_NOEXIST))
			stat_add(CT_STAT_CONN_ENTRIES, 1);
		cs = bpf_map_lookup_elem(&conns, k);
		if (!cs)
			return NULL;
	}
	if (fd >= 0)
		cs->fd = fd;
	return cs;
}

/* The tuple of a call's connection. A connection's addresses do not
 * change, so they are read once per socket (five reads) and kept: a call
 * then costs one read, of the port pair, which also catches a freed
 * socket's address reused by another connection on the same handle. A
 * syscall in this call names the socket; a call served from the library's
 * buffer made none, and its bytes came from the socket already seen (or,
 * the first time, from the one behind the cached fd). */
static __always_inline void conn_tuple(struct conn_state *cs, struct active_call *c, struct ct_tuple *out)
{
	struct sock *sk = (struct sock *)c->sk;
	if (!sk && cs->sk) {
		*out = cs->tuple;
		return;
	}
	if (!sk)
		sk = fd_to_sock(cs->fd);
	if (!sk) {
		__builtin_memset(out, 0, sizeof(*out));
		return;
	}
	__u32 ports = 0;
	bpf_core_read(&ports, sizeof(ports), &sk->__sk_common.skc_portpair);
	if (cs->sk != (__u64)sk || cs->portpair != ports) {
		__builtin_memset(&cs->tuple, 0, sizeof(cs->tuple));
		sock_to_tuple(sk, &cs->tuple);
		cs->sk = (__u64)sk;
		cs->portpair = ports;
	}
	*out = cs->tuple;
}

/* The number of a connection's next call: user space reads a jump in it
 * as calls lost (src/context/gaps.rs, streams.rs).
 *
 * With `fetch` an atomic fetch-and-add (BPF_ATOMIC | BPF_FETCH, Linux
 * 5.12) numbers calls exactly even when two CPUs enter the same
 * connection at once. Kernels before 5.12 refuse that instruction anywhere
 * in a program, even in a branch the verifier would prune (a pass over
 * every instruction rejects it first: "BPF_STX uses reserved fields"), so
 * a `.rodata` flag cannot gate it: every program that numbers calls is
 * built twice, NAME (fetch) and NAME_nofetch (the fallback below), and
 * user space loads one of each pair from a probe of the kernel
 * (kernel::has_atomic_fetch). Why not a second object: both variants
 * share the maps and the rest of the code, and a pair picked by autoload
 * is how the bpf_loop continuation is picked already.
 *
 * The fallback is a plain read and write, not an atomic add followed by a
 * read: 5.8-5.11 have no atomic that returns a value, and the two differ
 * only when two threads number calls of one connection at the same
 * instant. Then the plain increment gives both calls the same number (one
 * increment is lost, no number is skipped), while add-then-read would
 * skip a number, i.e. report a call lost that was not. A repeated number
 * is at worst a gap reported on that connection's decoded stream where
 * nothing was lost. Only a library whose connection is used by two
 * threads at once can meet it: Go's concurrent Read and Write on one
 * tls.Conn (an OpenSSL, GnuTLS or NSS session is not used that way), and
 * there even exact numbers can reach the ring buffer out of order. */
static __always_inline __u64 next_call_seq(struct conn_state *cs, bool fetch)
{
	if (fetch)
		return __sync_fetch_and_add(&cs->calls, 1) + 1;
	__u64 seq = cs->calls + 1;
	cs->calls = seq;
	return seq;
}

static __always_inline void fill_header(struct ct_tls_data *h, struct active_call *c,
					struct conn_state *cs, __u64 n, __u8 fn, __u8 dir, bool fetch)
{
	__u64 id = bpf_get_current_pid_tgid();
	h->kind = CT_EV_TLS_DATA;
	h->flags = 0;
	h->ts_ns = bpf_ktime_get_ns();
	h->conn = c->handle;
	h->call_seq = next_call_seq(cs, fetch);
	h->func_ip = c->ip;
	h->caller = c->caller;
	h->pid = id >> 32;
	h->tid = (__u32)id;
	h->uid = (__u32)bpf_get_current_uid_gid();
	h->fd = cs->fd;
	h->offset = 0;
	h->len = 0;
	h->function = fn;
	h->direction = dir;
	h->library_id = c->library_id;
	__u64 max = has_bpf_loop ? CT_CALL_MAX_LOOP : CT_CALL_MAX_TAIL;
	if (n > max) {
		stat_add(CT_STAT_TRUNCATED_BYTES, n - max);
		h->flags |= CT_FLAG_TRUNCATED;
		n = max;
	}
	h->call_len = n;
	conn_tuple(cs, c, &h->tuple);
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* The n bytes of a finished call on connection cs, as records. */
static __always_inline int emit_conn_call(void *ctx, struct active_call *c, struct conn_state *cs, __u64 n,
					  __u8 fn, __u8 dir, bool fetch)
{
	struct emit_state *st = emit_state_get();
	if (!cs || !st) {
		/* The connection map refused an entry (memory pressure on the
		 * LRU): the call is lost, and counted as such. */
		stat_add(CT_STAT_LOST_RECORDS, 1);
		stat_add(CT_STAT_LOST_BYTES, n);
		return 0;
	}
	fill_header(&st->hdr, c, cs, n, fn, dir, fetch);
	st->buf = c->buf;
	if (emit_some_chunks(st))
		bpf_tail_call(ctx, &emit_continue, 0);
	return 0;
}

/* The n bytes of a finished call, as records. */
static __always_inline int emit_call(void *ctx, struct active_call *c, __u64 n, __u8 fn, __u8 dir,
				     bool fetch)
{
	struct conn_key k = { .handle = c->handle, .tgid = bpf_get_current_pid_tgid() >> 32 };
	return emit_conn_call(ctx, c, conn_for(&k, c->fd), n, fn, dir, fetch);
}

/* --- OpenSSL secrets ------------------------------------------------------
 * Read from the library's private structs at offsets user space generated
 * from OpenSSL's sources (per library, by the probe's cookie), once per
 * handshake: after SSL_do_handshake succeeds, or at the first SSL_read/
 * SSL_write that finds the handshake done (handshakes driven implicitly by
 * SSL_read, as node does). User space validates every field. */

/* Set by user space when secrets are wanted (--keylog, -w). */
const volatile bool capture_secrets = false;

/* By library id (0 on kernels without attach cookies). */
CT_MAP(HASH, ssl_layouts, __u32, struct ct_ssl_layout, 256);

/* The first 8 bytes of the client random whose secrets a connection has
 * reported: a new handshake on the same SSL* reports again. */
CT_MAP(LRU_HASH, ssl_keys_sent, struct conn_key, __u64, 65536);

#define TLS1_3_VERSION 0x0304

static __always_inline bool read_field(void *dst, __u32 size, __u64 base, __u32 offset)
{
	return offset != CT_NO_OFFSET && bpf_probe_read_user(dst, size, (void *)(base + offset)) == 0;
}

static __always_inline bool nonzero64(const __u8 *p)
{
	__u64 head = 0;
	__builtin_memcpy(&head, p, sizeof(head));
	return head != 0;
}

/* Where the client random is: s3 is a pointer in 1.1.x, inline in 3.x. */
static __always_inline __u64 client_random_at(struct ct_ssl_layout *l, __u64 ssl)
{
	__u64 s3 = ssl + l->s3;
	if (l->s3_is_pointer && bpf_probe_read_user(&s3, sizeof(s3), (void *)(ssl + l->s3)))
		return 0;
	return s3 ? s3 + l->s3_client_random : 0;
}

static __always_inline void fill_ssl_keys(struct ct_ssl_keys *e, struct ct_ssl_layout *l, __u64 ssl,
					  __u64 random_at)
{
	__u64 session = 0, cipher = 0;
	e->kind = CT_EV_SSL_KEYS;
	e->missing = 0;
	e->ssl_type = 0;
	if (l->ssl_type != CT_NO_OFFSET && !read_field(&e->ssl_type, 4, ssl, l->ssl_type))
		e->missing |= 1;
	if (!read_field(&e->version, 4, ssl, l->version))
		e->missing |= 2;
	if (!read_field(&session, 8, ssl, l->session) || !session ||
	    !read_field(&e->master_key_length, 8, session, l->session_master_key_length) ||
	    !read_field(e->master_key, CT_SECRET_MAX, session, l->session_master_key))
		e->missing |= 4;
	if (!read_field(&cipher, 8, session, l->session_cipher) || !cipher ||
	    !read_field(&e->cipher_id, 4, cipher, l->cipher_id))
		e->missing |= 8;
	if (bpf_probe_read_user(e->client_random, CT_RANDOM_LEN, (void *)random_at))
		e->missing |= 16;
	if (!read_field(e->handshake_secret, CT_SECRET_MAX, ssl, l->handshake_secret) ||
	    !read_field(e->handshake_traffic_hash, CT_SECRET_MAX, ssl, l->handshake_traffic_hash) ||
	    !read_field(e->client_app_traffic_secret, CT_SECRET_MAX, ssl, l->client_app_traffic_secret) ||
	    !read_field(e->server_app_traffic_secret, CT_SECRET_MAX, ssl, l->server_app_traffic_secret) ||
	    !read_field(e->exporter_master_secret, CT_SECRET_MAX, ssl, l->exporter_master_secret))
		e->missing |= 32;
}

/* A handshake is done when its final secrets exist: the application
 * traffic secrets in TLS 1.3, the master key before. */
static __always_inline bool handshake_done(struct ct_ssl_keys *e)
{
	if (e->missing & 6)
		return false;
	if (e->version == TLS1_3_VERSION)
		return nonzero64(e->client_app_traffic_secret) && nonzero64(e->server_app_traffic_secret);
	return e->master_key_length > 0;
}

static __always_inline void report_ssl_keys(__u64 ssl, __u32 lib)
{
	struct ct_ssl_layout *l = bpf_map_lookup_elem(&ssl_layouts, &lib);
	if (!l)
		return;
	__u64 random_at = client_random_at(l, ssl);
	__u64 head = 0;
	if (!random_at || bpf_probe_read_user(&head, sizeof(head), (void *)random_at) || !head)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	struct conn_key k = { .handle = ssl, .tgid = id >> 32 };
	__u64 *sent = bpf_map_lookup_elem(&ssl_keys_sent, &k);
	if (sent && *sent == head)
		return;
	struct ct_ssl_keys *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return;
	}
	e->pid = id >> 32;
	e->library_id = lib;
	fill_ssl_keys(e, l, ssl, random_at);
	if (!handshake_done(e)) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
	bpf_map_update_elem(&ssl_keys_sent, &k, &head, BPF_ANY);
}

/* SSL_do_handshake: 1 when the handshake completed. */
SEC("uretprobe")
int BPF_KRETPROBE(ssl_handshake_return)
{
	struct active_call c;
	if (!end_call(&c))
		return 0;
	if ((int)PT_REGS_RC(ctx) == 1)
		report_ssl_keys(c.handle, c.library_id);
	return 0;
}

/* --- Calls without socket I/O of their own ---------------------------------
 * Some TLS code never touches the socket: rustls (its caller moves the TLS
 * bytes) and libraries on memory BIOs (node feeds OpenSSL through BIOs of
 * its own, from libuv's reads and into libuv's writes). Such a call makes
 * no system call for note_fd to see, so it is tied to its thread's socket
 * I/O around it:
 *  - a read takes the socket the thread read from last, unless a call
 *    took that read already: the bytes just decrypted came from it;
 *  - a write takes the socket the thread wrote to right after the
 *    connection's previous write (the caller sends what was just
 *    encrypted: node's EncOut, rustls's complete_io), learned per
 *    connection in tied_writers and used only while its fd still holds
 *    that very socket (a freed connection's address is reused by the next
 *    connection, which a client's e2e test caught).
 * A thread notes its socket I/O (note_fd) from its first such call on
 * (rustls: from creating a connection). Where this is wrong: docs/capture.md
 * ("Calls without socket I/O"). */

struct tied_sock {
	__u64 sk;
	__s32 fd;
	__u32 _pad;
};

/* Connection (conn_key) -> the socket its thread wrote to right after a
 * write of it: the socket of its next writes. */
CT_MAP(LRU_HASH, tied_writers, struct conn_key, struct tied_sock, 16384);

/* fd still names the socket sk (not closed, not reused for another). */
static __always_inline bool sock_still_at(__u64 sk, int fd)
{
	return sk && (__u64)fd_to_sock(fd) == sk;
}

/* Sets c->fd and c->sk from the thread's socket I/O (see above); false
 * when it tells nothing for this call. */
static __always_inline bool tie_to_thread_io(struct active_call *c, __u8 dir)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct active_call *slot = bpf_map_lookup_elem(&active_calls, &id);
	if (!slot)
		return false;
	slot->io.track = 1;
	if (dir == CT_DIR_SEND) {
		slot->io.pending_writer = c->handle;
		struct conn_key k = { .handle = c->handle, .tgid = id >> 32 };
		struct tied_sock *learned = bpf_map_lookup_elem(&tied_writers, &k);
		if (!learned || !sock_still_at(learned->sk, learned->fd))
			return false;
		c->fd = learned->fd;
		c->sk = learned->sk;
		return true;
	}
	if (!slot->io.read_sk)
		return false;
	c->fd = slot->io.read_fd;
	c->sk = slot->io.read_sk;
	slot->io.read_sk = 0;
	return true;
}

/* A call that made no socket I/O (its fd unknown). On a connection whose
 * socket a call of its own showed (a socket BIO: this call was served
 * from the library's buffer) the cached socket stands, as before. On a
 * memory BIO the call is tied to its thread's socket I/O; else it takes
 * the connection's last tied socket while its fd still holds it (calls
 * that move no plaintext, a handshake driven by SSL_read, teach it too);
 * else, for a call that moves plaintext, the socket its thread used last:
 * a client's first write, which node makes from inside the SSL_read that
 * ends the handshake (its callback runs JavaScript), right after reading
 * that connection's socket. That guess never comes from a call moving no
 * plaintext: node starts a client's handshake with an SSL_read right
 * after writing another connection's ClientHello. With none of these the
 * record has no socket (fd -1, no tuple). */
static __always_inline int on_return_without_io(struct pt_regs *ctx, struct active_call *c, __u64 n,
						 __u8 fn, __u8 dir, bool fetch)
{
	struct conn_key k = { .handle = c->handle, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct conn_state *cs = conn_for(&k, -1);
	if (cs && (cs->fd < 0 || cs->tied)) {
		cs->tied = 1;
		if (tie_to_thread_io(c, dir)) {
			cs->fd = c->fd;
		} else if (sock_still_at(cs->sk, cs->fd)) {
			c->fd = cs->fd;
			c->sk = cs->sk;
		} else if (n && c->io.last_sk) {
			c->fd = c->io.last_fd;
			c->sk = c->io.last_sk;
			cs->fd = c->fd;
		} else {
			cs->fd = -1;
			cs->sk = 0;
		}
		if (n == 0 && c->sk) {
			struct ct_tuple learned;
			conn_tuple(cs, c, &learned); /* cs->sk and its tuple */
		}
	}
	if (n == 0)
		return 0;
	return emit_conn_call(ctx, c, cs, n, fn, dir, fetch);
}

/* The return of every library function but rustls's: the function is the
 * one its entry recorded, so one program serves them all, on kernels
 * without uprobe cookies too (one copy per function there was 46 of the
 * 49 s its programs took to load on 5.10 under emulation). */
static __always_inline int on_return(struct pt_regs *ctx, bool fetch)
{
	struct active_call c;
	if (!end_call(&c) || c.fn == CALL_FN_NONE)
		return 0;
	__u8 fn = c.fn;
	__u8 dir = fn_dir(fn);
	if (capture_secrets && (fn <= CT_FN_SSL_READ_EX || fn >= CT_FN_SSL_WRITE_INTERNAL))
		report_ssl_keys(c.handle, c.library_id);

	__u64 n = bytes_done(ctx, &c);
	if (c.fd < 0)
		return on_return_without_io(ctx, &c, n, fn, dir, fetch);
	if (n == 0)
		return 0;
	return emit_call(ctx, &c, n, fn, dir, fetch);
}

/* Continuation of a large call: same per-CPU state, every next chunk.
 * Loaded only where the kernel has bpf_loop. */
SEC("uprobe")
int emit_more_loop(struct pt_regs *ctx)
{
	struct emit_state *st = emit_state_get();
	if (st)
		emit_all_chunks(st);
	return 0;
}

/* Continuation of a large call on older kernels: the next chunks, then
 * itself again. */
SEC("uprobe")
int emit_more(struct pt_regs *ctx)
{
	struct emit_state *st = emit_state_get();
	if (!st)
		return 0;
	if (emit_some_chunks(st)) {
		bpf_tail_call(ctx, &emit_continue, 0);
		/* Only reached past the kernel's tail call limit. */
		stat_add(CT_STAT_TRUNCATED_BYTES, st->hdr.call_len - st->hdr.offset);
	}
	return 0;
}

/* Entry probes: one per shape and function, the function a constant (so
 * that its return knows it where uprobes have no cookies, < 5.15), named
 * <shape>_entry_<symbol in lower case> (src/sources/mod.rs,
 * TlsHook::entry_program). The shapes: */
#define PLAIN_ENTRY(symbol, fn) \
	SEC("uprobe") int BPF_KPROBE(plain_entry_##symbol) { return on_entry(ctx, 0, false, fn); }
#define EX_ENTRY(symbol, fn) \
	SEC("uprobe") int BPF_KPROBE(ex_entry_##symbol) { return on_entry(ctx, PT_REGS_PARM4(ctx), false, fn); }
/* OpenSSL's ssl_read_internal/ssl_write_internal: the count pointer is
 * the 4th argument, or the 5th (ssl_write_internal since 3.3). */
#define INTERNAL_ENTRY(symbol, fn) \
	SEC("uprobe") int BPF_KPROBE(internal_entry_##symbol) { return on_entry(ctx, PT_REGS_PARM4(ctx), true, fn); }
#define INTERNAL5_ENTRY(symbol, fn) \
	SEC("uprobe") int BPF_KPROBE(internal5_entry_##symbol) { return on_entry(ctx, PT_REGS_PARM5(ctx), true, fn); }
/* SSL_write_ex2(ssl, buf, num, flags, written), OpenSSL 3.3+. SSL_write_ex
 * calls it: when both are probed, the inner entry takes the thread's slot
 * and its return ends the call, so the outer return finds it done and the
 * bytes are reported once. */
#define EX5_ENTRY(symbol, fn) \
	SEC("uprobe") int BPF_KPROBE(ex5_entry_##symbol) { return on_entry(ctx, PT_REGS_PARM5(ctx), false, fn); }
#define NSPR_ENTRY(symbol, fn) \
	SEC("uprobe") int BPF_KPROBE(nspr_entry_##symbol, void *fd) { return on_nspr_entry(ctx, fd, fn); }

/* NSPR carries files and plain sockets too. A TLS descriptor is layered:
 * the SSL layer sits on the socket, so PRFileDesc.lower is set. Plain
 * sockets and files are a single layer. PRFileDesc is public, stable ABI:
 * { methods, secret, lower, higher, dtor, identity }. */
static __always_inline int on_nspr_entry(struct pt_regs *ctx, void *fd, __u8 fn)
{
	void *lower = NULL;
	if (bpf_probe_read_user(&lower, sizeof(lower), (char *)fd + 2 * sizeof(void *)) || !lower) {
		/* Not TLS: its return must find a done slot, not none, or
		 * end_call would count a call never started as lost. */
		__u64 id = bpf_get_current_pid_tgid();
		if (!bpf_map_lookup_elem(&active_calls, &id)) {
			struct active_call done = {.fd = -1};
			bpf_map_update_elem(&active_calls, &id, &done, BPF_NOEXIST);
		}
		return 0;
	}
	return on_entry(ctx, 0, false, fn);
}

PLAIN_ENTRY(ssl_write, CT_FN_SSL_WRITE)
PLAIN_ENTRY(ssl_read, CT_FN_SSL_READ)
EX_ENTRY(ssl_write_ex, CT_FN_SSL_WRITE_EX)
EX_ENTRY(ssl_read_ex, CT_FN_SSL_READ_EX)
EX5_ENTRY(ssl_write_ex2, CT_FN_SSL_WRITE_EX2)
INTERNAL_ENTRY(ssl_write_internal, CT_FN_SSL_WRITE_INTERNAL)
INTERNAL_ENTRY(ssl_read_internal, CT_FN_SSL_READ_INTERNAL)
INTERNAL5_ENTRY(ssl_write_internal, CT_FN_SSL_WRITE_INTERNAL)
PLAIN_ENTRY(gnutls_record_send, CT_FN_GNUTLS_RECORD_SEND)
PLAIN_ENTRY(gnutls_record_recv, CT_FN_GNUTLS_RECORD_RECV)
PLAIN_ENTRY(gnutls_record_send2, CT_FN_GNUTLS_RECORD_SEND2)
PLAIN_ENTRY(gnutls_record_recv_seq, CT_FN_GNUTLS_RECORD_RECV_SEQ)
NSPR_ENTRY(pr_write, CT_FN_PR_WRITE)
NSPR_ENTRY(pr_read, CT_FN_PR_READ)
NSPR_ENTRY(pr_send, CT_FN_PR_SEND)
NSPR_ENTRY(pr_recv, CT_FN_PR_RECV)

/* SSL_do_handshake's entry (its return is ssl_handshake_return). */
SEC("uprobe")
int BPF_KPROBE(handshake_entry) { return on_entry(ctx, 0, false, CALL_FN_NONE); }

/* --- rustls ---------------------------------------------------------------
 * rustls is linked into Rust executables; its plaintext passes through two
 * concrete (non-generic) functions that a user's crate calls across crates
 * (src/sources/rustls.rs):
 *   <rustls::conn::connection::Writer as std::io::Write>::write(&mut self, buf: &[u8])
 *   <rustls::conn::connection::Reader as std::io::Read>::read(&mut self, buf: &mut [u8])
 * Rust's ABI on x86_64: self in rdi, the slice as (ptr, len) in rsi, rdx;
 * the io::Result<usize> comes back as two registers: rax 0 (Ok) with the
 * count in rdx, or rax 1 (Err) with the error in rdx (checked with objdump
 * on rustls 0.23.46 built by Rust 1.95). The Writer's first word is the
 * connection (&mut ConnectionCommon, its PlaintextSink); the Reader's is
 * the connection's received-plaintext buffer.
 *
 * rustls never sees the socket: its caller moves the TLS bytes
 * (Stream/StreamOwned's complete_io, tokio-rustls's read_tls/write_tls),
 * before a read returns plaintext and after a write took it. So its calls
 * are tied to their thread's socket I/O (see "Calls without socket I/O":
 * learned per Writer connection for writes), and where that tells nothing
 * (a connection's first write, a read served from rustls's buffer) take
 * the socket the thread last used, which is the connection's when a
 * thread drives one connection at a time (Stream, a thread per
 * connection, a handshake just before). The record's `conn` is that
 * socket (both directions of a connection then share it and one call
 * numbering), or the rustls handle while no socket is known. */
SEC("uprobe")
int BPF_KPROBE(rustls_entry)
{
	if (!current_task_wanted())
		return 0;
	__u64 handle = 0;
	bpf_probe_read_user(&handle, sizeof(handle), (void *)PT_REGS_PARM1(ctx));
	__u64 id = bpf_get_current_pid_tgid();
	struct active_call c = {
		.handle = handle,
		.buf = PT_REGS_PARM2(ctx),
		.ip = PT_REGS_IP(ctx),
		.fd = -1,
		.library_id = library_id(ctx),
		.io = { .last_fd = -1, .track = 1 },
	};
	struct active_call *slot = bpf_map_lookup_elem(&active_calls, &id);
	if (slot) {
		c.io = slot->io;
		*slot = c;
	} else {
		bpf_map_update_elem(&active_calls, &id, &c, BPF_ANY);
	}
	return 0;
}

/* ClientConnection::new, ServerConnection::new: the thread that creates a
 * connection usually drives its handshake; from here its socket I/O is
 * remembered, so that the first plaintext call finds its socket. */
SEC("uprobe")
int BPF_KPROBE(rustls_mark)
{
	if (!current_task_wanted())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct active_call *slot = bpf_map_lookup_elem(&active_calls, &id);
	if (slot) {
		slot->io.track = 1;
		return 0;
	}
	struct active_call c = { .fd = -1, .io = { .last_fd = -1, .track = 1 } };
	bpf_map_update_elem(&active_calls, &id, &c, BPF_NOEXIST);
	return 0;
}

static __always_inline int on_rustls_return(struct pt_regs *ctx, __u8 fn, bool fetch)
{
	__u8 dir = fn_dir(fn);
	struct active_call c;
	if (!end_call(&c))
		return 0;
	if (PT_REGS_RC(ctx) != 0) /* Err */
		return 0;
	__u64 n = CT_REGS_RC2(ctx);
	if (n == 0)
		return 0;
	if (!tie_to_thread_io(&c, dir) && c.io.last_sk) {
		c.fd = c.io.last_fd;
		c.sk = c.io.last_sk;
	}
	if (c.sk)
		c.handle = c.sk;
	return emit_call(ctx, &c, n, fn, dir, fetch);
}

SEC("uretprobe")
int BPF_KRETPROBE(rustls_write_return) { return on_rustls_return(ctx, CT_FN_RUSTLS_WRITE, true); }
SEC("uretprobe")
int BPF_KRETPROBE(rustls_write_return_nofetch) { return on_rustls_return(ctx, CT_FN_RUSTLS_WRITE, false); }
SEC("uretprobe")
int BPF_KRETPROBE(rustls_read_return) { return on_rustls_return(ctx, CT_FN_RUSTLS_READ, true); }
SEC("uretprobe")
int BPF_KRETPROBE(rustls_read_return_nofetch) { return on_rustls_return(ctx, CT_FN_RUSTLS_READ, false); }

/* The return of every entry above (see on_return). */
SEC("uretprobe")
int BPF_KRETPROBE(tls_return) { return on_return(ctx, true); }
SEC("uretprobe")
int BPF_KRETPROBE(tls_return_nofetch) { return on_return(ctx, false); }

/* The thread's first socket write after a write of its pending_writer
 * connection: that connection's socket, unless a read already tied the
 * connection to another socket that its fd still holds (node keeps a
 * congested connection's ciphertext while the thread writes others; the
 * connection's own flush comes later and is learned then). */
static __always_inline void learn_writer(struct thread_io *io, __u64 id, struct sock *sk, int fd)
{
	struct conn_key k = { .handle = io->pending_writer, .tgid = id >> 32 };
	struct conn_state *cs = bpf_map_lookup_elem(&conns, &k);
	if (cs && cs->tied && cs->sk && cs->sk != (__u64)sk && sock_still_at(cs->sk, cs->fd))
		return;
	struct tied_sock ts = { .sk = (__u64)sk, .fd = fd };
	bpf_map_update_elem(&tied_writers, &k, &ts, BPF_ANY);
	io->pending_writer = 0;
}

/* The first I/O system call on a socket that a thread makes inside an
 * active call carries the connection's fd. Every other thread exits after
 * one lookup, but threads whose calls make no socket I/O of their own
 * (rustls, memory BIOs) also note every socket I/O (see "Calls without
 * socket I/O"). */
static __always_inline int note_fd(struct trace_event_raw_sys_enter *ctx, bool send)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct active_call *c = bpf_map_lookup_elem(&active_calls, &id);
	if (!c)
		return 0;
	long fd = 0;
	if (c->io.track) {
		bpf_probe_read_kernel(&fd, sizeof(fd), &ctx->args[0]);
		struct sock *sk = fd_to_sock((int)fd);
		if (sk) {
			c->io.last_fd = (int)fd;
			c->io.last_sk = (__u64)sk;
			if (!send) {
				c->io.read_fd = (int)fd;
				c->io.read_sk = (__u64)sk;
			} else if (c->io.pending_writer) {
				learn_writer(&c->io, id, sk, (int)fd);
			}
		}
	}
	if (!c->handle || c->fd >= 0)
		return 0;
	bpf_probe_read_kernel(&fd, sizeof(fd), &ctx->args[0]);
	struct sock *sk = fd_to_sock((int)fd);
	if (sk) {
		c->fd = (int)fd;
		c->sk = (__u64)sk;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int sys_enter_write(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, true); }
SEC("tracepoint/syscalls/sys_enter_read")
int sys_enter_read(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, false); }
SEC("tracepoint/syscalls/sys_enter_sendto")
int sys_enter_sendto(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, true); }
SEC("tracepoint/syscalls/sys_enter_recvfrom")
int sys_enter_recvfrom(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, false); }
SEC("tracepoint/syscalls/sys_enter_sendmsg")
int sys_enter_sendmsg(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, true); }
SEC("tracepoint/syscalls/sys_enter_recvmsg")
int sys_enter_recvmsg(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, false); }
SEC("tracepoint/syscalls/sys_enter_writev")
int sys_enter_writev(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, true); }
SEC("tracepoint/syscalls/sys_enter_readv")
int sys_enter_readv(struct trace_event_raw_sys_enter *ctx) { return note_fd(ctx, false); }

/* Go crypto/tls, Go >= 1.17 on amd64 and >= 1.18 on arm64 (register ABI,
 * see regs.h): arguments and results in registers, and one register holds
 * the running goroutine. Never a uretprobe on Go code: when a
 * goroutine's stack grows the runtime copies it, and the return address a
 * uretprobe planted would send the program astray. Read is probed after
 * its stack check and at each of its RET instructions instead, keyed by
 * goroutine (it may resume on another thread). Probes sit after the stack
 * check, not at the entry: a call that grows the stack runs the entry
 * again, and Write would be reported twice. */
struct go_key {
	__u64 g;
	__u32 tgid;
	__u32 _pad;
};

CT_MAP(LRU_HASH, go_reads, struct go_key, struct active_call, 16384);

/* tls.Conn starts with `conn net.Conn` (an interface: itab, data); its
 * data is a *net.TCPConn, whose first word is the *netFD; netFD starts
 * with poll.FD { fdmu fdMutex (16 bytes); Sysfd int }. The same layout
 * from Go 1.9 to today. Anything else behind the interface gives an fd that
 * is not a socket, and then no fd rather than a wrong one. */
#define GO_CONN_DATA 8
#define GO_FD_SYSFD 16

static __always_inline void go_conn_fd(struct active_call *c)
{
	__u64 data = 0, netfd = 0;
	__s64 sysfd = -1;
	if (bpf_probe_read_user(&data, sizeof(data), (void *)(c->handle + GO_CONN_DATA)) ||
	    bpf_probe_read_user(&netfd, sizeof(netfd), (void *)data) ||
	    bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + GO_FD_SYSFD)))
		return;
	if (sysfd < 0 || sysfd > 0x7fffffff)
		return;
	struct sock *sk = fd_to_sock((int)sysfd);
	if (sk) {
		c->fd = (int)sysfd;
		c->sk = (__u64)sk;
	}
}

static __always_inline struct active_call go_call(struct pt_regs *ctx)
{
	struct active_call c = {
		.handle = CT_GO_PARM1(ctx), .buf = CT_GO_PARM2(ctx), .ip = PT_REGS_IP(ctx), .fd = -1, .library_id = library_id(ctx),
	};
	go_conn_fd(&c);
	return c;
}

/* (*Conn).Write(b []byte) (int, error): all of b is written or the
 * connection is broken for good, so the data is taken here. */
static __always_inline int on_go_write(struct pt_regs *ctx, bool fetch)
{
	if (!current_task_wanted())
		return 0;
	__u64 n = CT_GO_PARM3(ctx);
	if (n == 0)
		return 0;
	struct active_call c = go_call(ctx);
	return emit_call(ctx, &c, n, CT_FN_GO_WRITE, CT_DIR_SEND, fetch);
}

/* In two variants: see next_call_seq. */
SEC("uprobe")
int go_write(struct pt_regs *ctx) { return on_go_write(ctx, true); }
SEC("uprobe")
int go_write_nofetch(struct pt_regs *ctx) { return on_go_write(ctx, false); }

SEC("uprobe")
int go_read_entry(struct pt_regs *ctx)
{
	if (!current_task_wanted())
		return 0;
	struct go_key k = { .g = CT_GO_G(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct active_call c = go_call(ctx);
	bpf_map_update_elem(&go_reads, &k, &c, BPF_ANY);
	return 0;
}

/* At a RET of (*Conn).Read: the first result register (rax, x0) is n. */
static __always_inline int on_go_read_return(struct pt_regs *ctx, bool fetch)
{
	struct go_key k = { .g = CT_GO_G(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct active_call *found = bpf_map_lookup_elem(&go_reads, &k);
	if (!found)
		return 0;
	struct active_call c = *found;
	bpf_map_delete_elem(&go_reads, &k);
	__s64 n = (__s64)CT_GO_PARM1(ctx);
	if (n <= 0)
		return 0;
	return emit_call(ctx, &c, n, CT_FN_GO_READ, CT_DIR_RECV, fetch);
}

SEC("uprobe")
int go_read_return(struct pt_regs *ctx) { return on_go_read_return(ctx, true); }
SEC("uprobe")
int go_read_return_nofetch(struct pt_regs *ctx) { return on_go_read_return(ctx, false); }

/* Copy a user buffer of `len` bytes into dst[max]; false if it does not
 * fit or cannot be read. */
static __always_inline bool copy_field(void *dst, __u32 max, __u64 len, __u64 src)
{
	if (len > max)
		return false;
	__u32 n = len;
	barrier_var(n);
	if (n > max)
		return false;
	return bpf_probe_read_user(dst, n, (void *)src) == 0;
}

/* Sleepable variants of the secret probes (NAME_sleepable, SEC
 * "uprobe.s", Linux 6.0): a probe cannot fault a page in, so a field
 * whose page is not mapped yet (a label in the program's read-only data
 * before its first use, a program fresh from disk) would read as
 * missing. These touch the first and last byte of each field with
 * bpf_copy_from_user first, which faults its pages in as the caller is
 * about to do itself, and then read as NAME does. The faults come before
 * the ring buffer reservation: no record waits on them. User space loads
 * one of each pair (kernel::has_sleepable_uprobes); where only NAME
 * loads, a label still missing is read from the process afterwards
 * (label_addr). A field longer than its place in the record is refused
 * anyway: nothing of it is touched. The faults happen in the calling
 * thread, on its own memory. */
static __always_inline void fault_in(__u64 addr, __u64 len, __u32 max)
{
	char byte;
	if (!addr || !len || len > max)
		return;
	bpf_copy_from_user(&byte, 1, (void *)addr);
	if (len > 1)
		bpf_copy_from_user(&byte, 1, (void *)(addr + len - 1));
}

#define SECRET_FIELD_MAX(field) sizeof(((struct ct_tls_secret *)0)->field)

/* A secret record with its kind and pid set, or NULL (counted lost). */
static __always_inline struct ct_tls_secret *reserve_secret(void)
{
	struct ct_tls_secret *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return NULL;
	}
	e->kind = CT_EV_TLS_SECRET;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->missing = 0;
	e->label_addr = 0;
	return e;
}

/* A secret record whose label is the C string at `label` (GnuTLS and
 * BoringSSL pass one), with the 32-byte client random's length set; NULL
 * when the ring buffer is full (counted lost). */
static __always_inline struct ct_tls_secret *reserve_labelled_secret(const char *label)
{
	struct ct_tls_secret *e = reserve_secret();
	if (!e)
		return NULL;
	long n = bpf_probe_read_user_str(e->label, sizeof(e->label), label);
	e->label_len = n > 0 ? n - 1 : 0;
	if (n <= 1)
		e->missing |= 1;
	if (n < 0)
		e->label_addr = (__u64)label;
	e->random_len = CT_RANDOM_LEN;
	return e;
}

static __always_inline void submit_secret(struct ct_tls_secret *e)
{
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
}

/* A key log line's three parts, each a (pointer, length) of the caller's:
 * one secret record. */
static __always_inline int emit_secret(__u64 label, __u64 label_len, __u64 random, __u64 random_len,
				       __u64 secret, __u64 secret_len, bool sleepable)
{
	if (!current_task_wanted())
		return 0;
	if (sleepable) {
		fault_in(label, label_len, SECRET_FIELD_MAX(label));
		fault_in(random, random_len, SECRET_FIELD_MAX(client_random));
		fault_in(secret, secret_len, SECRET_FIELD_MAX(secret));
	}
	struct ct_tls_secret *e = reserve_secret();
	if (!e)
		return 0;
	e->label_len = label_len;
	e->random_len = random_len;
	e->secret_len = secret_len;
	if (!copy_field(e->label, sizeof(e->label), label_len, label)) {
		e->missing |= 1;
		e->label_addr = label;
	}
	if (!copy_field(e->client_random, sizeof(e->client_random), random_len, random))
		e->missing |= 2;
	if (!copy_field(e->secret, sizeof(e->secret), secret_len, secret))
		e->missing |= 4;
	submit_secret(e);
	return 0;
}

/* (*Config).writeKeyLog(label string, clientRandom, secret []byte): called
 * for every secret whether or not the program set a KeyLogWriter. */
static __always_inline int go_keylog_body(struct pt_regs *ctx, bool sleepable)
{
	return emit_secret(CT_GO_PARM2(ctx), CT_GO_PARM3(ctx), CT_GO_PARM4(ctx), CT_GO_PARM5(ctx),
			   CT_GO_PARM7(ctx), CT_GO_PARM8(ctx), sleepable);
}
SEC("uprobe")
int go_keylog(struct pt_regs *ctx) { return go_keylog_body(ctx, false); }
SEC("uprobe.s")
int go_keylog_sleepable(struct pt_regs *ctx) { return go_keylog_body(ctx, true); }

/* <T as rustls::KeyLog>::log(&self, label: &str, client_random: &[u8],
 * secret: &[u8]), on each implementation the program has: rustls calls
 * the program's logger for every secret (src/sources/rustls.rs). Each
 * slice is two arguments (pointer, length), so the secret's length is the
 * 7th (checked with objdump on rustls 0.23.46 built by Rust 1.95). */
static __always_inline int rustls_keylog_body(struct pt_regs *ctx, bool sleepable)
{
	return emit_secret(PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx),
			   PT_REGS_PARM6(ctx), ct_entry_parm7(ctx), sleepable);
}
SEC("uprobe")
int rustls_keylog(struct pt_regs *ctx) { return rustls_keylog_body(ctx, false); }
SEC("uprobe.s")
int rustls_keylog_sleepable(struct pt_regs *ctx) { return rustls_keylog_body(ctx, true); }

/* GnuTLS (3.6.13+) hands every secret to session->internals.keylog_func;
 * this probe sits on the default one gnutls_init installs: (session, label,
 * const gnutls_datum_t *secret). The client random's offset in the session
 * comes from disassembling gnutls_session_get_random (user space). */
/* Library id -> the offset of the client random in its session. */
CT_MAP(HASH, gnutls_random_offsets, __u32, __u32, 64);

static __always_inline int gnutls_keylog_body(struct pt_regs *ctx, bool sleepable)
{
	void *session = (void *)PT_REGS_PARM1(ctx);
	const char *label = (const char *)PT_REGS_PARM2(ctx);
	void *datum = (void *)PT_REGS_PARM3(ctx);
	if (!current_task_wanted())
		return 0;
	__u32 lib = library_id(ctx);
	__u32 *random_offset = bpf_map_lookup_elem(&gnutls_random_offsets, &lib);
	if (!random_offset)
		return 0;
	__u64 random = (__u64)session + *random_offset;
	struct { __u64 data; __u32 size; } secret = {};
	if (sleepable)
		fault_in((__u64)datum, sizeof(secret), sizeof(secret));
	bpf_probe_read_user(&secret, sizeof(secret), datum);
	if (sleepable) {
		/* A C string: its place in the record, whatever its length. */
		fault_in((__u64)label, SECRET_FIELD_MAX(label), SECRET_FIELD_MAX(label));
		fault_in(random, CT_RANDOM_LEN, CT_RANDOM_LEN);
		fault_in(secret.data, secret.size, SECRET_FIELD_MAX(secret));
	}
	struct ct_tls_secret *e = reserve_labelled_secret(label);
	if (!e)
		return 0;
	if (bpf_probe_read_user(e->client_random, CT_RANDOM_LEN, (void *)random))
		e->missing |= 2;
	e->secret_len = secret.size;
	if (!copy_field(e->secret, sizeof(e->secret), secret.size, secret.data))
		e->missing |= 4;
	submit_secret(e);
	return 0;
}
SEC("uprobe")
int gnutls_keylog(struct pt_regs *ctx) { return gnutls_keylog_body(ctx, false); }
SEC("uprobe.s")
int gnutls_keylog_sleepable(struct pt_regs *ctx) { return gnutls_keylog_body(ctx, true); }

/* BoringSSL passes every secret it derives to its internal
 * ssl_log_secret(const SSL *ssl, const char *label, Span<const uint8_t>
 * secret) (the Span in two registers: data, size), which returns at once
 * when no key log callback is set: probed at its entry, it sees them all.
 * The client random is ssl->s3->client_random; both offsets come from the
 * function's own code (user space, discover::boringssl). */
struct ct_boringssl_offsets {
	__u32 s3;     /* of the s3 pointer in the SSL */
	__u32 random; /* of client_random in the s3 struct */
};

/* By library id. */
CT_MAP(HASH, boringssl_random_offsets, __u32, struct ct_boringssl_offsets, 64);

static __always_inline int boringssl_keylog_body(struct pt_regs *ctx, bool sleepable)
{
	char *ssl = (char *)PT_REGS_PARM1(ctx);
	const char *label = (const char *)PT_REGS_PARM2(ctx);
	__u64 secret = PT_REGS_PARM3(ctx), secret_len = PT_REGS_PARM4(ctx);
	if (!current_task_wanted())
		return 0;
	__u32 lib = library_id(ctx);
	struct ct_boringssl_offsets *offsets = bpf_map_lookup_elem(&boringssl_random_offsets, &lib);
	if (!offsets)
		return 0;
	char *s3 = 0;
	if (sleepable)
		fault_in((__u64)ssl + offsets->s3, sizeof(s3), sizeof(s3));
	bool have_s3 = !bpf_probe_read_user(&s3, sizeof(s3), ssl + offsets->s3);
	if (sleepable) {
		/* A C string: its place in the record, whatever its length. */
		fault_in((__u64)label, SECRET_FIELD_MAX(label), SECRET_FIELD_MAX(label));
		if (have_s3)
			fault_in((__u64)s3 + offsets->random, CT_RANDOM_LEN, CT_RANDOM_LEN);
		fault_in(secret, secret_len, SECRET_FIELD_MAX(secret));
	}
	struct ct_tls_secret *e = reserve_labelled_secret(label);
	if (!e)
		return 0;
	if (!have_s3 || bpf_probe_read_user(e->client_random, CT_RANDOM_LEN, s3 + offsets->random))
		e->missing |= 2;
	e->secret_len = secret_len;
	if (!copy_field(e->secret, sizeof(e->secret), secret_len, secret))
		e->missing |= 4;
	submit_secret(e);
	return 0;
}
SEC("uprobe")
int boringssl_keylog(struct pt_regs *ctx) { return boringssl_keylog_body(ctx, false); }
SEC("uprobe.s")
int boringssl_keylog_sleepable(struct pt_regs *ctx) { return boringssl_keylog_body(ctx, true); }

/* NSS: its secrets are computed inside its PKCS#11 token (docs/nss-secrets.md). */
#include "nss_secrets.h"
