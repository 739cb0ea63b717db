// SPDX-License-Identifier: GPL-2.0 OR MIT
/* Never loaded. One global of each ring buffer record type, so that
 * libbpf-cargo generates their Rust definitions from bpf/events.h: the
 * records are defined once, in C, for both sides. */
/* Kernel types of the architecture built for (build.rs): bpf/vmlinux.h
 * is x86_64's, bpf/arm64/vmlinux.h arm64's (scripts/gen-vmlinux-arm64). */
#if defined(__TARGET_ARCH_arm64)
#include "arm64/vmlinux.h"
#else
#include "vmlinux.h"
#endif
#include <bpf/bpf_helpers.h>
#include "events.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct ct_tls_data ct_tls_data_type;
struct ct_file_event ct_file_event_type;
struct ct_shell_line ct_shell_line_type;
struct ct_task_event ct_task_event_type;
struct ct_exec_start ct_exec_start_type;
struct ct_exec_result ct_exec_result_type;
struct ct_query_start ct_query_start_type;
struct ct_query_end ct_query_end_type;
struct ct_tls_secret ct_tls_secret_type;
struct ct_ssl_keys ct_ssl_keys_type;
struct ct_ssl_layout ct_ssl_layout_type;
struct ct_packet ct_packet_type;
struct ct_sock_owner ct_sock_owner_type;

/* The enums too: their values reach Rust as constants (`crate::events`). */
enum ct_event_kind ct_event_kind_type;
enum ct_stat ct_stat_type;
enum ct_flags ct_flags_type;
enum ct_direction ct_direction_type;
enum ct_tls_function ct_tls_function_type;
enum ct_shell_kind ct_shell_kind_type;
enum ct_sql_server ct_sql_server_type;
enum ct_sql_command ct_sql_command_type;
