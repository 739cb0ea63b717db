/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* The records kernel programs put in the ring buffer. This is the single
 * definition: libbpf-cargo generates the Rust types from it. Every record
 * starts with a __u32 kind (enum ct_event_kind). */
#ifndef CLEARTAP_EVENTS_H
#define CLEARTAP_EVENTS_H

#define CT_COMM_LEN 16

enum ct_event_kind {
	CT_EV_TLS_DATA = 1,
	CT_EV_EXEC = 2,       /* a process called execve: maybe a new binary to probe */
	CT_EV_LIB_OPEN = 3,   /* a process opened a file named like a TLS library */
	CT_EV_SHELL_LINE = 4, /* a line an interactive shell read (struct ct_shell_line) */
	CT_EV_SHELL_EXIT = 5, /* a shell that read lines exited (struct ct_task_event) */
	CT_EV_EXEC_START = 6, /* execve/execveat entered (struct ct_exec_start) */
	CT_EV_EXEC_RESULT = 7,/* execve/execveat returned (struct ct_exec_result) */
	CT_EV_QUERY_START = 8,/* a database server starts a statement (struct ct_query_start) */
	CT_EV_QUERY_END = 9,  /* the statement of that thread ended (struct ct_query_end) */
	CT_EV_QUERY_FAIL = 10,/* the statement of that thread failed (struct ct_query_end) */
	CT_EV_TLS_SECRET = 11,/* a TLS secret as a key log line says it (struct ct_tls_secret) */
	CT_EV_SSL_KEYS = 12,  /* OpenSSL's secrets of one handshake, raw (struct ct_ssl_keys) */
	CT_EV_PACKET = 13,    /* a packet seen by the TC classifier (struct ct_packet + bytes) */
	CT_EV_SOCK_OWNER = 14,/* a process connected or accepted a socket (struct ct_sock_owner) */
};

enum ct_stat {
	CT_STAT_RECORDS = 0,	/* records committed to the ring buffer */
	CT_STAT_LOST_RECORDS,	/* records that found the ring buffer full */
	CT_STAT_LOST_BYTES,	/* payload bytes in those records */
	CT_STAT_TRUNCATED_BYTES,/* bytes beyond the per-call ceiling */
	CT_STAT_CONN_ENTRIES,	/* entries created in the connection map (none is deleted:
				 * created - present = evicted by the LRU) */
	CT_STAT_LOST_PACKETS,	/* packets that found the packet ring buffer full */
	CT_STAT_CUT_PACKETS,	/* packets longer than the largest record: cut */
	CT_STAT_UNSEEN_STARTS,	/* TLS calls not captured: their entry was lost (the
				 * thread's slot evicted, or calls nested three deep) */
	CT_STAT_MAX,
};

/* Record flags. */
enum ct_flags {
	CT_FLAG_FAULT = 1,     /* user memory could not be read: data[] is zeros */
	CT_FLAG_TRUNCATED = 2, /* the call exceeded the per-call bound (payload.h): the rest is counted lost */
};

enum ct_direction {
	CT_DIR_SEND = 1,
	CT_DIR_RECV = 2,
};

/* Functions a TLS record can come from. */
enum ct_tls_function {
	CT_FN_SSL_WRITE = 1,
	CT_FN_SSL_READ,
	CT_FN_SSL_WRITE_EX,
	CT_FN_SSL_READ_EX,
	CT_FN_GNUTLS_RECORD_SEND,
	CT_FN_GNUTLS_RECORD_RECV,
	CT_FN_GNUTLS_RECORD_SEND2,
	CT_FN_GNUTLS_RECORD_RECV_SEQ,
	CT_FN_PR_WRITE,
	CT_FN_PR_READ,
	CT_FN_PR_SEND,
	CT_FN_PR_RECV,
	CT_FN_GO_WRITE, /* crypto/tls.(*Conn).Write */
	CT_FN_GO_READ,  /* crypto/tls.(*Conn).Read */
	CT_FN_SSL_WRITE_INTERNAL, /* OpenSSL's ssl_write_internal: see src/sources/openssl.rs */
	CT_FN_SSL_READ_INTERNAL,
	CT_FN_SSL_WRITE_EX2, /* OpenSSL 3.3+ */
	CT_FN_RUSTLS_WRITE, /* <rustls::conn::connection::Writer as std::io::Write>::write */
	CT_FN_RUSTLS_READ,  /* <rustls::conn::connection::Reader as std::io::Read>::read */
};

struct ct_tuple {
	__u16 family; /* 0: unknown (not an inet socket, or fd not found) */
	__u16 lport;
	__u16 rport;
	__u16 _pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

/* Header of one chunk of the plaintext of one SSL_* call; `len` payload
 * bytes follow it in the record. A call larger than one chunk arrives as
 * several records with the same conn/call_seq and increasing offset. */
struct ct_tls_data {
	__u32 kind;
	__u32 flags;
	__u64 ts_ns;     /* CLOCK_MONOTONIC at the call's return */
	__u64 conn;      /* the SSL* (opaque; unique within pid while open) */
	__u64 call_seq;  /* per-connection call counter, from 1: gaps = lost calls */
	__u64 func_ip;   /* address of the probed function in the process */
	__u64 caller;    /* return address of the probed call (internal probe
			  * points only, to name the API function; else 0) */
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__s32 fd;        /* -1 when no syscall revealed it yet */
	__u32 call_len;  /* plaintext bytes of the whole call */
	__u32 offset;    /* offset of this chunk within the call */
	__u32 len;       /* bytes in data[] */
	__u8 function;   /* enum ct_tls_function */
	__u8 direction;  /* enum ct_direction */
	__u16 library_id;/* which attached file (the uprobe's cookie); 0: unknown */
	struct ct_tuple tuple;
	char comm[CT_COMM_LEN];
};

#define CT_SECRET_LABEL_MAX 32
#define CT_RANDOM_LEN 32
#define CT_SECRET_MAX 64

/* One secret of a handshake: an NSS key log line is
 * "<label> <hex client_random> <hex secret>". Lengths are as the program
 * passed them; a field that is too long or unreadable is not copied and
 * its bit is set in `missing` (user space reports it instead of writing
 * a wrong line). */
struct ct_tls_secret {
	__u32 kind;
	__u32 pid;
	__u32 label_len;
	__u32 random_len;
	__u32 secret_len;
	__u32 missing;   /* 1: label, 2: client_random, 4: secret */
	/* Where the label is in the process when it could not be read here
	 * (missing & 1), else 0: a constant in the program's read-only data,
	 * whose page may not have been faulted in yet (a probe cannot fault),
	 * so user space reads it from the process. */
	__u64 label_addr;
	char label[CT_SECRET_LABEL_MAX];
	__u8 client_random[CT_RANDOM_LEN];
	__u8 secret[CT_SECRET_MAX];
};

/* Where OpenSSL keeps the secrets (user space fills it per library from
 * the generated layout table; see src/sources/openssl_layout.rs). Offsets
 * from the SSL* handle; CT_NO_OFFSET: the field does not exist. */
#define CT_NO_OFFSET 0xffffffff
struct ct_ssl_layout {
	__u32 ssl_type;
	__u32 version;
	__u32 session;
	__u32 s3;
	__u32 s3_is_pointer;
	__u32 s3_client_random;
	__u32 handshake_secret;
	__u32 handshake_traffic_hash;
	__u32 client_app_traffic_secret;
	__u32 server_app_traffic_secret;
	__u32 exporter_master_secret;
	__u32 session_master_key_length;
	__u32 session_master_key;
	__u32 session_cipher;
	__u32 cipher_id;
};

/* The secrets of one OpenSSL handshake, read once it completed. User space
 * checks them for sanity and turns them into key log lines (deriving the
 * TLS 1.3 handshake traffic secrets). A field that could not be read has
 * its bit set in `missing` (1 << the field's order below). */
struct ct_ssl_keys {
	__u32 kind;
	__u32 pid;
	__u32 library_id;
	__s32 ssl_type;
	__s32 version;
	__u32 cipher_id;
	__u64 master_key_length;
	__u32 missing;
	__u32 _pad;
	__u8 client_random[CT_RANDOM_LEN];
	__u8 master_key[CT_SECRET_MAX];
	__u8 handshake_secret[CT_SECRET_MAX];
	__u8 handshake_traffic_hash[CT_SECRET_MAX];
	__u8 client_app_traffic_secret[CT_SECRET_MAX];
	__u8 server_app_traffic_secret[CT_SECRET_MAX];
	__u8 exporter_master_secret[CT_SECRET_MAX];
};

/* A packet at TC ingress or egress; `caplen` bytes of it follow. */
struct ct_packet {
	__u32 kind;
	__u32 ifindex;
	__u64 ts_ns;     /* CLOCK_MONOTONIC */
	__u32 len;       /* on the wire (for GSO packets: the whole aggregate) */
	__u32 caplen;
	__u8 outbound;   /* 1: egress, 0: ingress */
	__u8 _pad[7];
};

/* A process connected or accepted an inet socket: who owns this tuple. */
struct ct_sock_owner {
	__u32 kind;
	__u32 pid;
	__u32 uid;
	__u32 _pad;
	struct ct_tuple tuple;
	char comm[CT_COMM_LEN];
};

#define CT_PATH_LEN 256

/* A process exec'd, or opened a file whose name looks like a TLS library:
 * user space checks it and attaches before the program gets to TLS. */
struct ct_file_event {
	__u32 kind;
	__u32 pid;
	/* The file's identity as the kernel has it (inode number, s_dev): the
	 * key of procwatch's checked_files once user space has checked it. */
	__u64 ino;
	__u32 dev;
	/* 1: the process was stopped (SIGSTOP, --hold-unchecked) until user
	 * space has checked this file and continues it. */
	__u32 held;
	char path[CT_PATH_LEN];
};

/* Identity of the task an event comes from. */
struct ct_task {
	__u64 ts_ns;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	char comm[CT_COMM_LEN];
};

enum ct_shell_kind {
	CT_SHELL_BASH = 1,
	CT_SHELL_ZSH = 2,
};

#define CT_LINE_MAX 16384
#define CT_TTY_LEN 32

/* One line read by an interactive shell, with what the shell knew when
 * it asked for it: whether this continues a multi-line command, and the
 * exit status of the previous command (the shell's $?). */
struct ct_shell_line {
	__u32 kind;
	__u8 shell;          /* enum ct_shell_kind */
	__u8 continuation;   /* 1: a continuation line of the same command */
	__u8 status_valid;   /* 0: the previous status could not be read */
	__u8 truncated;      /* the line was longer than CT_LINE_MAX - 1 */
	__s32 prev_status;
	__u32 len;           /* bytes of line[], without the NUL */
	struct ct_task task;
	char tty[CT_TTY_LEN];
	char line[CT_LINE_MAX];
};

struct ct_task_event {
	__u32 kind;
	__u32 _pad;
	struct ct_task task;
};

#define CT_ARGS_MAX 16384
#define CT_ARGC_MAX 256

/* execve/execveat at entry: the file name and argv, NUL-separated. */
struct ct_exec_start {
	__u32 kind;
	__u32 argc;          /* arguments copied */
	__u32 args_len;      /* bytes used in args[] */
	__u8 truncated;      /* more arguments or bytes than fit */
	__u8 _pad[3];
	struct ct_task task;
	char filename[CT_PATH_LEN];
	char args[2 * CT_ARGS_MAX]; /* only the first CT_ARGS_MAX bytes are used */
};

struct ct_exec_result {
	__u32 kind;
	__s32 ret;           /* 0 on success, -errno on failure */
	struct ct_task task;
	/* On success: the arguments as the new program sees them (its
	 * mm->arg_start..arg_end, NUL-separated), which a thread of the caller
	 * cannot change after the entry copy was read. */
	__u32 args_len;      /* bytes used in args[] */
	__u8 truncated;      /* the arguments are longer than args[] */
	__u8 _pad[3];
	char args[CT_ARGS_MAX];
};

enum ct_sql_server {
	CT_SQL_MARIADB = 1,  /* and MySQL 5.6: dispatch_command(cmd, THD*, char*, uint, ...) */
	CT_SQL_MYSQL = 2,    /* MySQL 5.7/8.x: dispatch_command(THD*, const COM_DATA*, cmd) */
	CT_SQL_POSTGRES = 3,
};

/* Protocol commands worth recording (MySQL's enum_server_command). */
enum ct_sql_command {
	CT_COM_QUERY = 3,
	CT_COM_STMT_PREPARE = 22,
	CT_COM_STMT_EXECUTE = 23,
};

#define CT_QUERY_MAX 65536
/* A PostgreSQL backend's process title ("postgres: USER DB CLIENT STATE"). */
#define CT_TITLE_MAX 128

/* A statement starts: its text (or, for an execution of a prepared
 * statement, its id). Only `len` bytes of text[] are in the record. */
struct ct_query_start {
	__u32 kind;
	__u8 server;     /* enum ct_sql_server */
	__u8 command;    /* enum ct_sql_command; 0 for PostgreSQL */
	__u8 truncated;  /* the text was longer than CT_QUERY_MAX */
	__u8 _pad;
	__u32 len;
	__u32 stmt_id;   /* COM_STMT_EXECUTE */
	struct ct_task task;
	/* PostgreSQL: the backend's title, read from its argv area at the
	 * statement (as /proc/PID/cmdline would show it; a backend that
	 * exits before user space reads /proc has it here still). Empty for
	 * MariaDB and MySQL. */
	char title[CT_TITLE_MAX];
	char text[CT_QUERY_MAX];
};

struct ct_query_end {
	__u32 kind;
	__u8 server;
	__u8 failed;
	__u16 _pad;
	struct ct_task task;
};

#endif
