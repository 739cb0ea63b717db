// SPDX-License-Identifier: GPL-2.0 OR MIT
/* Every execve/execveat on the host: the file name and argv at entry
 * (user memory is still the caller's), the result at exit, with argv as
 * the new program sees it on success. User space joins the two by pid. */
#include "common.h"

static __always_inline void copy_argv(struct ct_exec_start *e, const char *const *argv)
{
	__u32 off = 0;
	for (int i = 0; i < CT_ARGC_MAX; i++) {
		const char *arg = NULL;
		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
			break;
		if (off >= CT_ARGS_MAX) {
			e->truncated = 1;
			break;
		}
		/* args[] is twice CT_ARGS_MAX: any offset below CT_ARGS_MAX has
		 * CT_ARGS_MAX bytes of room, which the verifier can see. */
		/* An empty argument is its NUL, 1 byte; 6.1 and 6.12 return 0 for
		 * it instead (seen in tests/vm) and may not write the NUL: it is
		 * written first, and a 0 counts as 1 without a branch (one more
		 * branch per argument blows up 6.1's verifier: E2BIG). */
		e->args[off & (CT_ARGS_MAX - 1)] = 0;
		long n = bpf_probe_read_user_str(&e->args[off & (CT_ARGS_MAX - 1)], CT_ARGS_MAX, arg);
		if (n < 0)
			break;
		off += n + (((__u64)(n - 1)) >> 63); /* n == 0 counts as 1 */
		e->argc++;
		if (i == CT_ARGC_MAX - 1) {
			const char *more = NULL;
			bpf_probe_read_user(&more, sizeof(more), &argv[i + 1]);
			e->truncated = more != NULL;
		}
	}
	if (off > CT_ARGS_MAX) {
		off = CT_ARGS_MAX;
		e->truncated = 1;
	}
	e->args_len = off;
}

static __always_inline int on_exec_start(const char *filename, const char *const *argv)
{
	if (!current_task_wanted())
		return 0;
	struct ct_exec_start *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return 0;
	}
	e->kind = CT_EV_EXEC_START;
	e->argc = 0;
	e->truncated = 0;
	fill_task(&e->task);
	e->filename[0] = 0;
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);
	copy_argv(e, argv);
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
	return 0;
}

static __always_inline unsigned long arg(struct trace_event_raw_sys_enter *ctx, int i)
{
	unsigned long v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), &ctx->args[i & 7]);
	return v;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int sys_enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	return on_exec_start((const char *)arg(ctx, 0), (const char *const *)arg(ctx, 1));
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int sys_enter_execveat(struct trace_event_raw_sys_enter *ctx)
{
	return on_exec_start((const char *)arg(ctx, 1), (const char *const *)arg(ctx, 2));
}

/* The argument strings the kernel copied into the new program's stack at
 * exec: at the exit of a successful execve, current->mm is the new one. */
static __always_inline void copy_new_args(struct ct_exec_result *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	if (!start || end <= start)
		return;
	unsigned long len = end - start;
	if (len > CT_ARGS_MAX - 1) {
		len = CT_ARGS_MAX - 1;
		e->truncated = 1;
	}
	if (bpf_probe_read_user(e->args, len & (CT_ARGS_MAX - 1), (const void *)start) == 0)
		e->args_len = len;
}

static __always_inline int on_exec_result(struct trace_event_raw_sys_exit *ctx)
{
	/* The filters ran at entry against the caller; after a successful
	 * exec the comm is the new program's, so only pid/uid/cgroup would
	 * still match. User space drops results without a start. */
	struct ct_exec_result *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return 0;
	}
	long ret = 0;
	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx->ret);
	e->kind = CT_EV_EXEC_RESULT;
	e->ret = (__s32)ret;
	e->args_len = 0;
	e->truncated = 0;
	fill_task(&e->task);
	if (ret == 0)
		copy_new_args(e);
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int sys_exit_execve(struct trace_event_raw_sys_exit *ctx) { return on_exec_result(ctx); }

SEC("tracepoint/syscalls/sys_exit_execveat")
int sys_exit_execveat(struct trace_event_raw_sys_exit *ctx) { return on_exec_result(ctx); }
