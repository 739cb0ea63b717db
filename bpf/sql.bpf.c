// SPDX-License-Identifier: GPL-2.0 OR MIT
/* Server-side statements of MySQL/MariaDB and PostgreSQL.
 *
 * MySQL/MariaDB: dispatch_command entry (the command and its packet) and
 * return (the duration); Diagnostics_area::set_error_status in between
 * marks the thread's statement failed. Everything is keyed by thread: one
 * connection per thread, so concurrent sessions never mix.
 *
 * PostgreSQL: pgstat_report_activity(state, text) marks every statement a
 * backend starts (simple query, Parse, Bind, Execute: all report their
 * text as STATE_RUNNING) and the return to idle; AbortCurrentTransaction
 * runs when a statement fails. Entry probes only: no return trap, and
 * PostgreSQL's longjmp error handling cannot skip them. */
#include "common.h"

/* One scratch record per CPU (a per-CPU array cannot hold values over
 * 32 KiB). Uprobe programs run with migration disabled, so the slot of the
 * current CPU is ours until we return. Sized by user space to the CPUs. */
CT_MAP(ARRAY, query_scratch, __u32, struct ct_query_start, 1);

/* Threads inside a recorded MySQL/MariaDB dispatch_command: failed flag. */
CT_MAP(LRU_HASH, dispatching, __u32 /* tid */, __u8, 16384);

static __always_inline struct ct_query_start *start_record(__u8 server, __u8 command)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct ct_query_start *q = bpf_map_lookup_elem(&query_scratch, &cpu);
	if (!q)
		return NULL;
	q->kind = CT_EV_QUERY_START;
	q->server = server;
	q->command = command;
	q->truncated = 0;
	q->len = 0;
	q->stmt_id = 0;
	q->title[0] = 0;
	fill_task(&q->task);
	return q;
}

/* The record's used part only: header and `len` bytes of text. */
static __always_inline void submit_start(struct ct_query_start *q)
{
	__u32 len = q->len;
	if (len > CT_QUERY_MAX)
		len = CT_QUERY_MAX;
	if (bpf_ringbuf_output(&events, q, offsetof(struct ct_query_start, text) + len, 0)) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		stat_add(CT_STAT_LOST_BYTES, q->len);
		return;
	}
	stat_add(CT_STAT_RECORDS, 1);
}

static __always_inline void copy_text(struct ct_query_start *q, const char *text, __u64 len)
{
	__u64 n = len;
	if (n > CT_QUERY_MAX) {
		n = CT_QUERY_MAX;
		q->truncated = 1;
	}
	/* Keep the bound visible to the verifier after clang's rewriting. */
	barrier_var(n);
	if (n > CT_QUERY_MAX)
		return;
	if (bpf_probe_read_user(q->text, n, text))
		n = 0;
	q->len = n;
}

static __always_inline void emit_end(__u32 kind, __u8 server, __u8 failed)
{
	struct ct_query_end *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return;
	}
	e->kind = kind;
	e->server = server;
	e->failed = failed;
	fill_task(&e->task);
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
}

static __always_inline bool recorded_command(__u32 cmd)
{
	return cmd == CT_COM_QUERY || cmd == CT_COM_STMT_PREPARE || cmd == CT_COM_STMT_EXECUTE;
}

static __always_inline int on_dispatch(__u8 server, __u32 cmd, const char *text, __u64 len, __u32 stmt_id)
{
	if (!recorded_command(cmd) || !current_task_wanted())
		return 0;
	struct ct_query_start *q = start_record(server, cmd);
	if (!q)
		return 0;
	if (cmd == CT_COM_STMT_EXECUTE)
		q->stmt_id = stmt_id;
	else
		copy_text(q, text, len);
	submit_start(q);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u8 failed = 0;
	bpf_map_update_elem(&dispatching, &tid, &failed, BPF_ANY);
	return 0;
}

/* MariaDB, MySQL 5.6: dispatch_command(enum_server_command, THD *, char *packet, uint length, ...) */
SEC("uprobe")
int BPF_KPROBE(mariadb_dispatch, __u32 cmd, void *thd, const char *packet, __u32 length)
{
	__u32 stmt_id = 0;
	if (cmd == CT_COM_STMT_EXECUTE)
		bpf_probe_read_user(&stmt_id, sizeof(stmt_id), packet);
	return on_dispatch(CT_SQL_MARIADB, cmd, packet, length, stmt_id);
}

/* MySQL 5.7/8.x: dispatch_command(THD *, const COM_DATA *, enum_server_command).
 * COM_DATA is a union; com_query and com_stmt_prepare start with
 * { const char *query; unsigned int length; }, com_stmt_execute with the id. */
SEC("uprobe")
int BPF_KPROBE(mysql_dispatch, void *thd, void *com_data, __u32 cmd)
{
	struct {
		const char *query;
		__u32 length;
	} q = {};
	bpf_probe_read_user(&q, sizeof(q), com_data);
	return on_dispatch(CT_SQL_MYSQL, cmd, q.query, q.length, (__u32)(unsigned long)q.query);
}

SEC("uretprobe")
int BPF_KRETPROBE(mysql_dispatch_return)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u8 *failed = bpf_map_lookup_elem(&dispatching, &tid);
	if (!failed)
		return 0;
	__u8 f = *failed;
	bpf_map_delete_elem(&dispatching, &tid);
	emit_end(CT_EV_QUERY_END, 0, f);
	return 0;
}

/* Diagnostics_area::set_error_status: the statement on this thread failed. */
SEC("uprobe")
int BPF_KPROBE(mysql_error)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u8 *failed = bpf_map_lookup_elem(&dispatching, &tid);
	if (failed)
		*failed = 1;
	return 0;
}

#define PG_STATE_RUNNING 2
#define PG_STATE_FASTPATH 4

/* pgstat_report_activity(BackendState state, const char *cmd_str) */
SEC("uprobe")
int BPF_KPROBE(pg_activity, __u32 state, const char *cmd_str)
{
	if (!current_task_wanted())
		return 0;
	if (state == PG_STATE_FASTPATH)
		return 0;
	if (state != PG_STATE_RUNNING) {
		emit_end(CT_EV_QUERY_END, CT_SQL_POSTGRES, 0);
		return 0;
	}
	if (!cmd_str)
		return 0;
	struct ct_query_start *q = start_record(CT_SQL_POSTGRES, 0);
	if (!q)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	unsigned long title = BPF_CORE_READ(task, mm, arg_start);
	if (bpf_probe_read_user_str(q->title, CT_TITLE_MAX, (void *)title) < 0)
		q->title[0] = 0;
	long n = bpf_probe_read_user_str(q->text, CT_QUERY_MAX, cmd_str);
	q->len = n > 0 ? n - 1 : 0;
	q->truncated = n == CT_QUERY_MAX;
	submit_start(q);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(pg_abort)
{
	if (current_task_wanted())
		emit_end(CT_EV_QUERY_FAIL, CT_SQL_POSTGRES, 1);
	return 0;
}
