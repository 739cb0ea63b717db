// SPDX-License-Identifier: GPL-2.0 OR MIT
/* New processes and newly opened TLS libraries, so that user space can
 * attach to a binary or library it has not seen before the program gets
 * to its first TLS byte. Shares the ring buffer of the capture programs. */
#include "common.h"

/* The file name prefixes of the TLS libraries the capture watches for
 * ("libssl.so", ...): the first watch_count entries, filled by user space
 * from its registry of libraries (src/sources/mod.rs, TLS_SOURCES). */
#define CT_MAX_WATCHED 8
#define CT_PREFIX_LEN 16
const volatile __u32 watch_count = 0;
const volatile char watch_prefixes[CT_MAX_WATCHED][CT_PREFIX_LEN] = {};

/* path[start...] begins with prefix. Each index is masked into the
 * buffer: the verifier cannot follow the bound on start through the
 * compiler's arithmetic (start <= CT_PATH_LEN - CT_PREFIX_LEN, so the mask
 * changes nothing). */
static __always_inline bool has_prefix(const char *path, __u32 start, const volatile char *prefix)
{
	for (int i = 0; i < CT_PREFIX_LEN; i++) {
		if (prefix[i] == 0)
			return true;
		if (path[(start + i) & (CT_PATH_LEN - 1)] != prefix[i])
			return false;
	}
	return true;
}

/* --hold-unchecked: a process that execs a file, or opens a TLS library,
 * that user space has not checked yet is stopped until it has (and has
 * attached to it), so that even a program's first TLS byte is captured.
 * Off by default: a parent waiting with WUNTRACED sees it stop. Processes
 * with a controlling terminal are never held, because that parent is
 * then a job-control shell (it would report the job stopped and take the
 * terminal back) or script(1) (it stops itself to mirror its child). */
const volatile __u32 hold_unchecked = 0;

#define CT_SIGSTOP 19

struct file_key {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

/* Files user space has checked (attached or found nothing to attach):
 * their execs and opens are not held. LRU: one evicted is held once more,
 * and user space, which remembers it, continues the process at once. */
CT_MAP(LRU_HASH, checked_files, struct file_key, __u8, 16384);

/* Processes stopped and not yet continued, by tgid: user space deletes
 * each as it continues it, and continues whatever is left when it exits
 * by any way but SIGKILL, held processes whose event it never read
 * included. Full (16384 held at once): no further hold. */
CT_MAP(HASH, held_processes, __u32, __u8, 16384);

static __always_inline bool has_controlling_tty(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, signal, tty) != NULL;
}

/* The event only if it reached the ring buffer: a process is stopped only
 * when user space will hear of it and continue it. */
static __always_inline void emit_file_event(__u32 kind, const char *path, struct file *file)
{
	struct ct_file_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return;
	}
	/* On the stack: a map key in ring buffer memory is refused by 5.10. */
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	e->kind = kind;
	e->pid = pid;
	struct file_key key = {};
	if (file) {
		key.ino = BPF_CORE_READ(file, f_inode, i_ino);
		key.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	}
	e->ino = key.ino;
	e->dev = key.dev;
	e->held = 0;
	__u8 one = 1;
	if (hold_unchecked && file && !has_controlling_tty() &&
	    !bpf_map_lookup_elem(&checked_files, &key) &&
	    bpf_map_update_elem(&held_processes, &pid, &one, BPF_ANY) == 0) {
		if (bpf_send_signal(CT_SIGSTOP) == 0)
			e->held = 1;
		else
			bpf_map_delete_elem(&held_processes, &pid);
	}
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	/* Woken at once, whatever the ring holds: every ms before the attach
	 * is a ms of the new program's TLS missed (a plain submit wakes no one
	 * while unread TLS records that were submitted without a wake-up wait). */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	stat_add(CT_STAT_RECORDS, 1);
}

SEC("tracepoint/sched/sched_process_exec")
int sched_process_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	if (!current_task_wanted())
		return 0;
	unsigned short loc = 0;
	bpf_probe_read_kernel(&loc, sizeof(loc), &ctx->__data_loc_filename);
	/* The new program's file: exec has set it by now. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	emit_file_event(CT_EV_EXEC, (const char *)ctx + (loc & 0xffff), exe);
	return 0;
}

struct name_buf {
	char path[CT_PATH_LEN];
};

CT_MAP(PERCPU_ARRAY, scratch, __u32, struct name_buf, 1);

/* The name a thread is opening, kept from the syscall's entry (a copy:
 * the process could change its own memory before the exit) until its
 * result says whether the open succeeded. */
CT_MAP(LRU_HASH, pending_opens, __u32, struct name_buf, 4096);

/* Library files already reported, per process and inode: a process
 * opening the same file again and again makes one event. The process is
 * part of the key so that no process can hide a file from the capture by
 * opening it first (under a name user space cannot resolve, say): every
 * other process opening it is still reported. */
struct lib_file {
	__u64 ino;
	__u32 dev;
	__u32 tgid;
};

CT_MAP(LRU_HASH, reported_libs, struct lib_file, __u8, 8192);

SEC("tracepoint/syscalls/sys_enter_openat")
int sys_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	__u32 zero = 0;
	struct name_buf *buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf || !watch_count)
		return 0;
	/* Opened for writing (O_WRONLY or O_RDWR): a file being copied or
	 * installed, not a library being loaded. Parsed now it could be half
	 * written, and then its inode would count as seen; the loader's own
	 * open (read-only) reports it once it is whole. */
	__u64 flags = 0;
	bpf_probe_read_kernel(&flags, sizeof(flags), &ctx->args[2]);
	if (flags & 3)
		return 0;
	const char *user_path = NULL;
	bpf_probe_read_kernel(&user_path, sizeof(user_path), &ctx->args[1]);
	long len = bpf_probe_read_user_str(buf->path, sizeof(buf->path), user_path);
	if (len <= 0)
		return 0;
	/* The basename starts after the last '/': scan back from the end, so a
	 * typical path costs a few iterations and the verifier keeps no
	 * state across them. */
	for (int j = 1; j < CT_PATH_LEN; j++) {
		long i = len - 1 - j;
		if (i < 0)
			return 0;
		if (buf->path[i & (CT_PATH_LEN - 1)] != '/')
			continue;
		if (i > CT_PATH_LEN - CT_PREFIX_LEN - 1)
			return 0;
		for (int p = 0; p < CT_MAX_WATCHED && p < watch_count; p++) {
			if (has_prefix(buf->path, i + 1, watch_prefixes[p])) {
				if (current_task_wanted()) {
					__u32 tid = (__u32)bpf_get_current_pid_tgid();
					bpf_map_update_elem(&pending_opens, &tid, buf, BPF_ANY);
				}
				return 0;
			}
		}
		return 0;
	}
	return 0;
}

/* A library open that succeeded, on a file not reported before: an event.
 * Failed opens (the loader trying each directory of its search path, or a
 * process flooding names that exist nowhere) make none. */
SEC("tracepoint/syscalls/sys_exit_openat")
int sys_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct name_buf *buf = bpf_map_lookup_elem(&pending_opens, &tid);
	if (!buf)
		return 0;
	long ret = 0;
	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx->ret);
	struct file *file = fd_to_file(ret);
	if (file) {
		struct lib_file key = {
			.ino = BPF_CORE_READ(file, f_inode, i_ino),
			.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev),
			.tgid = bpf_get_current_pid_tgid() >> 32,
		};
		__u8 one = 1;
		if (bpf_map_update_elem(&reported_libs, &key, &one, BPF_NOEXIST) == 0)
			emit_file_event(CT_EV_LIB_OPEN, buf->path, file);
	}
	bpf_map_delete_elem(&pending_opens, &tid);
	return 0;
}
