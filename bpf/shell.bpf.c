// SPDX-License-Identifier: GPL-2.0 OR MIT
/* Interactive shell input: the line bash's readline() or zsh's zleentry()
 * returns, plus, read at the entry of that call, whether it continues a
 * multi-line command and the exit status of the previous command.
 *
 * The status is the shell's own $? variable (bash last_command_exit_value,
 * zsh lastval) read when the next prompt is requested: one trap per prompt,
 * where hooking execute_command's return would trap on every command of
 * every bash script on the host. */
#include "common.h"

/* Where a shell binary keeps its state, relative to the hooked function:
 * variable address = probed function address + delta. Filled by user space
 * per executable, keyed by the executable's device and inode. For a bash
 * linked to libreadline.so the probed function is bash's own read_command
 * (the anchor), since readline's address says nothing about bash's. */
struct shell_binary {
	__s64 status_delta;     /* int $? */
	__s64 linecount_delta;  /* bash: int current_command_line_count; 0 if unknown */
	__u32 kind;             /* enum ct_shell_kind */
	__u32 _pad;
};

struct file_key {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

CT_MAP(HASH, shell_binaries, struct file_key, struct shell_binary, 256);

struct prompt {
	__s32 prev_status;
	__u8 status_valid;
	__u8 continuation;
	__u8 shell;
	__u8 done; /* its line was reported (the slot stays, marked) */
};

CT_MAP(LRU_HASH, prompts, __u32 /* tid */, struct prompt, 4096);

/* Shells that read at least one line: their exit is reported. */
CT_MAP(LRU_HASH, shells, __u32 /* pid */, __u8, 4096);

/* libreadline.so bash: its variables' addresses in this process, found by
 * the anchor probe before readline is called. */
struct shell_vars {
	__u64 status_addr;
	__u64 linecount_addr; /* 0 if unknown */
};

CT_MAP(LRU_HASH, bash_vars, __u32 /* pid */, struct shell_vars, 4096);

static __always_inline struct shell_binary *current_binary(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	struct file_key key = {
		.ino = BPF_CORE_READ(exe, f_inode, i_ino),
		.dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev),
	};
	return bpf_map_lookup_elem(&shell_binaries, &key);
}

static __always_inline void read_state(struct prompt *p, __u64 status_addr, __u64 linecount_addr)
{
	if (!bpf_probe_read_user(&p->prev_status, sizeof(p->prev_status), (void *)status_addr))
		p->status_valid = 1;
	int lines = 0;
	if (linecount_addr && !bpf_probe_read_user(&lines, sizeof(lines), (void *)linecount_addr))
		p->continuation = lines > 0;
}

static __always_inline void remember_prompt(struct prompt *p)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&prompts, &tid, p, BPF_ANY);
}

static __always_inline int on_prompt(struct pt_regs *ctx, __u8 shell, int zsh_context)
{
	if (!current_task_wanted())
		return 0;
	struct prompt p = { .shell = shell, .continuation = zsh_context > 0 };
	struct shell_binary *bin = current_binary();
	__u64 ip = PT_REGS_IP(ctx);
	if (bin && bin->kind == shell)
		read_state(&p, ip + bin->status_delta, bin->linecount_delta ? ip + bin->linecount_delta : 0);
	remember_prompt(&p);
	return 0;
}

static __always_inline void tty_name(char *dst)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	if (tty)
		bpf_probe_read_kernel_str(dst, CT_TTY_LEN, &tty->name);
}

static __always_inline int on_line(struct pt_regs *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct prompt *p = bpf_map_lookup_elem(&prompts, &tid);
	const char *line = (const char *)PT_REGS_RC(ctx);
	if (!p) {
		/* A shell's line read with no prompt on record: its entry was
		 * evicted from the LRU (over 4096 shells at a prompt at once),
		 * or came before the probes. The line is lost: counted, not
		 * silent. (Other programs calling a probed libreadline, bc say,
		 * have no prompt either, and are no shell.) */
		if (line && current_task_wanted() && current_binary())
			stat_add(CT_STAT_LOST_RECORDS, 1);
		return 0;
	}
	/* A second return for one prompt (the same file probed twice under two
	 * identities, as a 9p root can present it) is not a lost line. */
	if (p->done)
		return 0;
	struct prompt seen = *p;
	p->done = 1;
	if (!line) /* end of input */
		return 0;
	struct ct_shell_line *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return 0;
	}
	e->kind = CT_EV_SHELL_LINE;
	e->shell = seen.shell;
	e->continuation = seen.continuation;
	e->status_valid = seen.status_valid;
	e->prev_status = seen.prev_status;
	fill_task(&e->task);
	e->tty[0] = 0;
	tty_name(e->tty);
	long n = bpf_probe_read_user_str(e->line, sizeof(e->line), line);
	e->len = n > 0 ? n - 1 : 0;
	e->truncated = n == sizeof(e->line);
	__u32 pid = e->task.pid;
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
	__u8 one = 1;
	bpf_map_update_elem(&shells, &pid, &one, BPF_ANY);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(bash_readline_entry) { return on_prompt(ctx, CT_SHELL_BASH, -1); }
SEC("uretprobe")
int BPF_KRETPROBE(bash_readline_return) { return on_line(ctx); }

/* bash linked to libreadline.so: read_command (in bash) runs before every
 * command is read and says where this process keeps its variables; readline
 * (in the library, shared with python, gdb, ...) then only reports
 * processes the anchor has seen. */
SEC("uprobe")
int BPF_KPROBE(bash_anchor)
{
	struct shell_binary *bin = current_binary();
	if (!bin || bin->kind != CT_SHELL_BASH)
		return 0;
	__u64 ip = PT_REGS_IP(ctx);
	struct shell_vars vars = {
		.status_addr = ip + bin->status_delta,
		.linecount_addr = bin->linecount_delta ? ip + bin->linecount_delta : 0,
	};
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&bash_vars, &pid, &vars, BPF_ANY);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(bash_lib_readline_entry)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct shell_vars *vars = bpf_map_lookup_elem(&bash_vars, &pid);
	/* The executable check also rules out a stale entry of a reused pid. */
	struct shell_binary *bin = current_binary();
	if (!vars || !bin || bin->kind != CT_SHELL_BASH || !current_task_wanted())
		return 0;
	struct prompt p = { .shell = CT_SHELL_BASH };
	read_state(&p, vars->status_addr, vars->linecount_addr);
	remember_prompt(&p);
	return 0;
}

#define ZLE_CMD_READ 1
/* zleentry(int cmd, ...): for ZLE_CMD_READ the varargs are (char **lp,
 * char **rp, int flags, int context); context 0 is a new command line. */
SEC("uprobe")
int BPF_KPROBE(zsh_zleentry_entry, int cmd)
{
	if (cmd != ZLE_CMD_READ)
		return 0;
	return on_prompt(ctx, CT_SHELL_ZSH, (int)PT_REGS_PARM5(ctx));
}
SEC("uretprobe")
int BPF_KRETPROBE(zsh_zleentry_return) { return on_line(ctx); }

SEC("tracepoint/sched/sched_process_exit")
int shell_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	if (pid != (__u32)id || !bpf_map_lookup_elem(&shells, &pid))
		return 0;
	bpf_map_delete_elem(&shells, &pid);
	bpf_map_delete_elem(&bash_vars, &pid);
	struct ct_task_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		return 0;
	}
	e->kind = CT_EV_SHELL_EXIT;
	fill_task(&e->task);
	bpf_ringbuf_submit(e, 0);
	stat_add(CT_STAT_RECORDS, 1);
	return 0;
}
