/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Shared by every kernel program of cleartap: the event ring buffer, the
 * in-kernel filters, loss counters and the fd -> socket -> tuple walk. */
#ifndef CLEARTAP_COMMON_H
#define CLEARTAP_COMMON_H

/* Kernel types of the architecture built for (build.rs): bpf/vmlinux.h
 * is x86_64's, bpf/arm64/vmlinux.h arm64's (scripts/gen-vmlinux-arm64). */
#if defined(__TARGET_ARCH_arm64)
#include "arm64/vmlinux.h"
#else
#include "vmlinux.h"
#endif
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "events.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Filters, set by user space before load. Zero/empty means "no filter". */
const volatile __u32 filter_pid = 0;
const volatile __u32 filter_uid_enabled = 0;
const volatile __u32 filter_uid = 0;
const volatile __u32 filter_comm_enabled = 0;
const volatile char filter_comm[CT_COMM_LEN] = {};
const volatile __u64 filter_cgroup_id = 0;   /* cgroup v2 id of the subtree root */
const volatile __u32 filter_cgroup_level = 0; /* its depth below the root */

/* A map with keys and values, declared on one line:
 *   CT_MAP(LRU_HASH, conns, struct conn_key, struct conn_state, 65536);
 * is the map `conns` of type BPF_MAP_TYPE_LRU_HASH, at most 65536 entries
 * (user space may resize it before load). The BTF-defined struct libbpf
 * reads is the usual one; only ring buffers, which have no key, are
 * written out. */
#define CT_MAP(_kind, _name, _key, _value, _max_entries) \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_##_kind);      \
		__uint(max_entries, _max_entries);       \
		__type(key, _key);                       \
		__type(value, _value);                   \
	} _name SEC(".maps")

/* One ring buffer for every event; its size is set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

/* Per-CPU counters, summed by user space (see enum ct_stat). */
CT_MAP(PERCPU_ARRAY, stats, __u32, __u64, CT_STAT_MAX);

static __always_inline void stat_add(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += n;
}

/* True when the current task passes --pid/--uid/--comm. Called before any
 * copy so that a filtered-out process costs only the trap. */
static __always_inline bool current_task_wanted(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (filter_pid && (__u32)(pid_tgid >> 32) != filter_pid)
		return false;
	if (filter_uid_enabled && (__u32)bpf_get_current_uid_gid() != filter_uid)
		return false;
	if (filter_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) != filter_cgroup_id)
		return false;
	if (filter_comm_enabled) {
		char comm[CT_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
		for (int i = 0; i < CT_COMM_LEN; i++) {
			if (comm[i] != filter_comm[i])
				return false;
			if (comm[i] == 0)
				break;
		}
	}
	return true;
}

/* pid, tid, parent pid, uid, comm and time of the current task. */
static __always_inline void fill_task(struct ct_task *t)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	t->ts_ns = bpf_ktime_get_ns();
	t->pid = id >> 32;
	t->tid = (__u32)id;
	t->ppid = BPF_CORE_READ(task, real_parent, tgid);
	t->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(t->comm, sizeof(t->comm));
}

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define AF_INET 2
#define AF_INET6 10

/* The file behind the current task's fd, or NULL. Reads kernel structs
 * through CO-RE only: no offsets of ours. */
static __always_inline struct file *fd_to_file(int fd)
{
	if (fd < 0)
		return NULL;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_core_read(&file, sizeof(file), &fds[fd]);
	return file;
}

/* The socket behind the current task's fd, or NULL when the fd is not a
 * socket. */
static __always_inline struct sock *fd_to_sock(int fd)
{
	struct file *file = fd_to_file(fd);
	if (!file)
		return NULL;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* Fill the connection tuple of an inet socket (NULL or another family:
 * left unknown). */
static __always_inline void sock_to_tuple(struct sock *sk, struct ct_tuple *t)
{
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET) {
		bpf_core_read(t->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(t->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		bpf_core_read(t->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return;
	}
	t->family = family;
	t->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

#endif
