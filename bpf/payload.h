/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Copying a whole user-space payload into the ring buffer, in chunks.
 *
 * One ring buffer reservation per chunk and one copy from user memory
 * straight into it (no per-CPU scratch copy of the data). Chunk sizes come
 * in classes so a 64-byte payload does not reserve 32 KiB. A call larger
 * than CT_CHUNKS_PER_PROG chunks continues in a tail call: on kernels with
 * bpf_loop (5.17) one continuation program loops over every remaining
 * chunk, so a call is bounded only by its 32-bit length; on older kernels
 * the continuation tail-calls itself, and the kernel's limit of 33 tail
 * calls bounds one call at CT_CALL_MAX_TAIL bytes. Bytes beyond the bound
 * are counted, never silently cut. */
#ifndef CLEARTAP_PAYLOAD_H
#define CLEARTAP_PAYLOAD_H

#include "common.h"

#define CT_CHUNK_MAX 32768
#define CT_CHUNKS_PER_PROG 16
#define CT_TAIL_CALLS_MAX 33
#define CT_CALL_MAX_TAIL ((__u64)CT_CHUNK_MAX * CT_CHUNKS_PER_PROG * (CT_TAIL_CALLS_MAX + 1))
#define CT_CALL_MAX_LOOP 0xffffffffULL /* call_len is 32 bits */

/* Set by user space: the kernel has bpf_loop (then emit_more_loop is the
 * continuation). */
const volatile bool has_bpf_loop = false;

struct emit_state {
	struct ct_tls_data hdr; /* template for every chunk of the call */
	__u64 buf;              /* user address of the payload */
};

CT_MAP(PERCPU_ARRAY, emit_state, __u32, struct emit_state, 1);

static __always_inline struct emit_state *emit_state_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&emit_state, &zero);
}

/* Set by user space: wake the consumer only once this many bytes wait in
 * the ring buffer (0: for every record). It polls every few milliseconds
 * anyway, and on a busy host a wake-up per record (a context switch each)
 * costs more than the record. */
const volatile __u64 wakeup_batch_bytes = 0;

static __always_inline __u64 wakeup_flags(void)
{
	if (!wakeup_batch_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_batch_bytes ? BPF_RB_FORCE_WAKEUP
										       : BPF_RB_NO_WAKEUP;
}

/* Reserve a record with room for SIZE bytes, copy min(rem, SIZE) bytes. */
#define EMIT_CHUNK_OF_CLASS(SIZE)                                                   \
	do {                                                                        \
		struct ct_tls_data *e =                                             \
			bpf_ringbuf_reserve(&events, sizeof(*e) + (SIZE), 0);       \
		if (!e)                                                             \
			return -1;                                                  \
		__u32 n = rem < (SIZE) ? rem : (SIZE);                              \
		__builtin_memcpy(e, &st->hdr, sizeof(*e));                          \
		e->len = n;                                                         \
		if (bpf_probe_read_user((void *)(e + 1), n,                                 \
					(void *)(st->buf + st->hdr.offset)))        \
			e->flags |= CT_FLAG_FAULT;                                  \
		bpf_ringbuf_submit(e, wakeup_flags());                              \
		st->hdr.offset += n;                                                \
		return 0;                                                           \
	} while (0)

static __always_inline int emit_one_chunk(struct emit_state *st, __u32 rem)
{
	if (rem <= 128)
		EMIT_CHUNK_OF_CLASS(128);
	if (rem <= 1024)
		EMIT_CHUNK_OF_CLASS(1024);
	if (rem <= 8192)
		EMIT_CHUNK_OF_CLASS(8192);
	EMIT_CHUNK_OF_CLASS(CT_CHUNK_MAX);
}

/* Emit up to CT_CHUNKS_PER_PROG chunks of the pending call. Returns true
 * when bytes remain (the caller tail-calls to continue). On a full ring
 * buffer the rest of the call is dropped and counted: records are always
 * whole, and the consumer sees the call end short of call_len. */
static __always_inline bool emit_some_chunks(struct emit_state *st)
{
	for (int i = 0; i < CT_CHUNKS_PER_PROG; i++) {
		__u32 rem = st->hdr.call_len - st->hdr.offset;
		if (rem == 0)
			return false;
		if (emit_one_chunk(st, rem) < 0) {
			stat_add(CT_STAT_LOST_RECORDS, 1);
			stat_add(CT_STAT_LOST_BYTES, rem);
			st->hdr.offset = st->hdr.call_len;
			return false;
		}
		stat_add(CT_STAT_RECORDS, 1);
	}
	return st->hdr.offset < st->hdr.call_len;
}

/* One chunk per iteration of bpf_loop: 0 to go on, 1 to stop. */
static long emit_chunk_cb(__u64 index, void *ctx)
{
	struct emit_state *st = emit_state_get();
	if (!st)
		return 1;
	__u32 rem = st->hdr.call_len - st->hdr.offset;
	if (rem == 0)
		return 1;
	if (emit_one_chunk(st, rem) < 0) {
		stat_add(CT_STAT_LOST_RECORDS, 1);
		stat_add(CT_STAT_LOST_BYTES, rem);
		st->hdr.offset = st->hdr.call_len;
		return 1;
	}
	stat_add(CT_STAT_RECORDS, 1);
	return 0;
}

/* Every remaining chunk of the pending call (needs bpf_loop). */
static __always_inline void emit_all_chunks(struct emit_state *st)
{
	__u32 rem = st->hdr.call_len - st->hdr.offset;
	__u32 chunks = rem / CT_CHUNK_MAX + 1;
	bpf_loop(chunks, emit_chunk_cb, NULL, 0);
}

#endif
