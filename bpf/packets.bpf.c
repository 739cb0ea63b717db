// SPDX-License-Identifier: GPL-2.0 OR MIT
/* Packets for pcapng: a TC classifier on ingress and egress copies each
 * packet (up to the snap length) into its own ring buffer, and system call
 * tracepoints say which process owns which TCP/UDP tuple, so a packet can
 * name its process. The classifier never changes a packet's fate: it
 * always answers "next" (TCX_NEXT == TC_ACT_UNSPEC == -1). */
#include "common.h"

#define TC_NEXT -1
#define EINPROGRESS 115

/* Set by user space: bytes of each packet to keep (0xffffffff: all). */
const volatile __u32 snaplen = 0xffffffff;
/* As for `events` (payload.h): wake the consumer per batch, not per packet. */
const volatile __u64 packet_wakeup_bytes = 0;

/* Packets have their own ring, sized by user space: a burst of traffic
 * must not crowd out plaintext records, and the other way round. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} packets SEC(".maps");

static __always_inline __u64 packet_wakeup(void)
{
	if (!packet_wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&packets, BPF_RB_AVAIL_DATA) >= packet_wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										      : BPF_RB_NO_WAKEUP;
}

/* Reserve a record of a fixed size class (the ring buffer takes constant
 * sizes only) and copy min(cap, SIZE) bytes straight from the packet. */
#define EMIT_PACKET_OF_CLASS(SIZE)                                                       \
	do {                                                                             \
		struct ct_packet *p = bpf_ringbuf_reserve(&packets, sizeof(*p) + (SIZE), 0); \
		if (!p) {                                                                \
			stat_add(CT_STAT_LOST_PACKETS, 1);                               \
			return;                                                          \
		}                                                                        \
		/* m = bytes - 1, checked, then hidden from the compiler: it must  \
		 * pass m + 1, whose range [1, SIZE] even old verifiers see (6.12  \
		 * refuses a length it can only prove <= SIZE, not > 0). */       \
		__u32 m = (cap < (SIZE) ? cap : (SIZE)) - 1;                             \
		p->kind = CT_EV_PACKET;                                                  \
		p->ifindex = skb->ifindex;                                               \
		p->ts_ns = bpf_ktime_get_ns();                                           \
		p->len = skb->len;                                                       \
		p->outbound = outbound;                                                  \
		p->caplen = 0;                                                           \
		if (m < (SIZE)) {                                                        \
			barrier_var(m);                                                  \
			if (!bpf_skb_load_bytes(skb, 0, (void *)(p + 1), m + 1))         \
				p->caplen = m + 1;                                       \
		}                                                                        \
		bpf_ringbuf_submit(p, packet_wakeup());                                  \
		return;                                                                  \
	} while (0)

/* GSO aggregates reach 64 KiB of payload plus headers; BIG TCP ones more.
 * The largest record is Wireshark's largest packet (256 KiB): longer ones
 * are cut there, and counted. */
#define CT_PACKET_GSO 65792
#define CT_PACKET_MAX 262144

static __always_inline void capture(struct __sk_buff *skb, __u8 outbound)
{
	__u32 cap = skb->len < snaplen ? skb->len : snaplen;
	if (cap > CT_PACKET_MAX) {
		stat_add(CT_STAT_CUT_PACKETS, 1);
		cap = CT_PACKET_MAX;
	}
	if (cap <= 128)
		EMIT_PACKET_OF_CLASS(128);
	if (cap <= 2048)
		EMIT_PACKET_OF_CLASS(2048);
	if (cap <= 16384)
		EMIT_PACKET_OF_CLASS(16384);
	if (cap <= CT_PACKET_GSO)
		EMIT_PACKET_OF_CLASS(CT_PACKET_GSO);
	EMIT_PACKET_OF_CLASS(CT_PACKET_MAX);
}

SEC("tcx/ingress")
int packet_ingress(struct __sk_buff *skb)
{
	capture(skb, 0);
	return TC_NEXT;
}

SEC("tcx/egress")
int packet_egress(struct __sk_buff *skb)
{
	capture(skb, 1);
	return TC_NEXT;
}

/* --- socket owners ---------------------------------------------------- */

/* The fd of a connect() in progress, per thread. */
CT_MAP(LRU_HASH, connecting, __u64, __s32, 16384);

static __always_inline void report_owner(int fd)
{
	struct sock *sk = fd_to_sock(fd);
	if (!sk)
		return;
	struct ct_sock_owner *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return;
	}
	__builtin_memset(&e->tuple, 0, sizeof(e->tuple));
	sock_to_tuple(sk, &e->tuple);
	if (!e->tuple.family) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->kind = CT_EV_SOCK_OWNER;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int owner_connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	long fd = 0;
	bpf_probe_read_kernel(&fd, sizeof(fd), &ctx->args[0]);
	__s32 fd32 = fd;
	bpf_map_update_elem(&connecting, &id, &fd32, BPF_ANY);
	return 0;
}

/* A non-blocking connect returns -EINPROGRESS with the local port bound. */
SEC("tracepoint/syscalls/sys_exit_connect")
int owner_connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__s32 *fd = bpf_map_lookup_elem(&connecting, &id);
	if (!fd)
		return 0;
	int sock_fd = *fd;
	bpf_map_delete_elem(&connecting, &id);
	long ret = 0;
	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx->ret);
	if (ret == 0 || ret == -EINPROGRESS)
		report_owner(sock_fd);
	return 0;
}

static __always_inline int accepted(struct trace_event_raw_sys_exit *ctx)
{
	long ret = -1;
	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx->ret);
	if (ret >= 0)
		report_owner((int)ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int owner_accept4_exit(struct trace_event_raw_sys_exit *ctx) { return accepted(ctx); }
SEC("tracepoint/syscalls/sys_exit_accept")
int owner_accept_exit(struct trace_event_raw_sys_exit *ctx) { return accepted(ctx); }
