// SPDX-License-Identifier: GPL-2.0 OR MIT
/* NSS's TLS secrets (included by tls.bpf.c; design: docs/nss-secrets.md).
 *
 * NSS keeps its secrets inside its PKCS#11 token (softoken), which
 * computes them with freebl. So they are read where freebl computes them,
 * and named where libssl asks for them:
 * - TLS 1.2: freebl's TLS_P_hash/TLS_PRF(master, "key expansion",
 *   server_random || client_random, ...) has the master secret and the
 *   client random at entry: one probe, one line.
 * - TLS 1.3: libnss3's PK11_DeriveWithFlags(base, CKM_HKDF_DERIVE, params)
 *   carries the HKDF label ("tls13 c hs traffic", ...) in params.pInfo;
 *   the one freebl HMAC_Finish that runs inside that call computes the
 *   secret (read at its return). The client random is the ClientHello's,
 *   which libssl hashes into the connection's transcript context with
 *   PK11_DigestOp: remembered per context; and libssl clones that context
 *   (PK11_CloneContext) for the transcript hash right before each secret's
 *   derive, on the same thread, so the thread's last clone names the
 *   connection. The thread's last ClientHello is the fallback. */

#define NSS_CKM_HKDF_DERIVE 0x402a
#define NSS_MASTER_SECRET_LEN 48
#define NSS_HKDF_LABEL_AT 9 /* u16 length, u8 label length, "tls13 " */
#define NSS_INFO_READ 24    /* enough for the prefix and the longest label */
#define NSS_CLIENT_HELLO 1
#define NSS_SERVER_HELLO 2  /* and HelloRetryRequest, a ServerHello */
#define NSS_MESSAGE_HASH 0xfe

/* What a thread's NSS is doing: its last ClientHello's random, the last
 * context it cloned, and the TLS 1.3 secret being derived (0: none) with
 * its client random. */
struct nss_thread {
	__u8 client_random[CT_RANDOM_LEN];
	__u32 has_random;
	__u32 label;       /* enum nss_label */
	__u32 key_size;    /* what the derive asked for */
	__u32 has_label_random;
	__u8 label_random[CT_RANDOM_LEN]; /* the derived secret's connection's */
	__u64 cloned;      /* PK11_CloneContext's argument (0: used or none) */
	__u64 result;      /* HMAC_Finish's output buffer (0: not reached yet) */
	__u64 result_len;  /* where HMAC_Finish writes the output's length */
};

/* The client random of a transcript context, by its address in its
 * process. Contexts are freed and their addresses reused: an entry is
 * overwritten when a ClientHello is hashed at the start of a context at
 * the same address, dropped when a transcript restarts there without one
 * (HelloRetryRequest), and evicted when least used. A stale entry stays
 * only for a context that hashes no ClientHello first: not a transcript
 * (a signature's or a PRF's hash), whose clones no labelled derive
 * follows. */
struct nss_context_key {
	__u64 context;
	__u32 tgid;
	__u32 _pad;
};

struct nss_random {
	__u8 bytes[CT_RANDOM_LEN];
};

CT_MAP(LRU_HASH, nss_contexts, struct nss_context_key, struct nss_random, 16384);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* thread id */
	__type(value, struct nss_thread);
} nss_threads SEC(".maps");

enum nss_label {
	NSS_NONE,
	NSS_C_HS,
	NSS_S_HS,
	NSS_C_AP,
	NSS_S_AP,
	NSS_EXP,
	NSS_C_E,
};

static __always_inline bool nss_same(const __u8 *have, const char *want, int n)
{
#pragma unroll
	for (int i = 0; i < 12; i++) {
		if (i < n && have[i] != (__u8)want[i])
			return false;
	}
	return true;
}

/* The secret an HKDF info names: "tls13 " then the label, whose length the
 * byte before says. */
static __always_inline __u32 nss_label_of(const __u8 *info)
{
	static const char prefix[] = "tls13 ";
	if (!nss_same(info + 3, prefix, 6))
		return NSS_NONE;
	const __u8 *label = info + NSS_HKDF_LABEL_AT;
	switch (info[2]) {
	case 6 + 12:
		if (nss_same(label, "c hs traffic", 12))
			return NSS_C_HS;
		if (nss_same(label, "s hs traffic", 12))
			return NSS_S_HS;
		if (nss_same(label, "c ap traffic", 12))
			return NSS_C_AP;
		if (nss_same(label, "s ap traffic", 12))
			return NSS_S_AP;
		return NSS_NONE;
	case 6 + 10:
		return nss_same(label, "exp master", 10) ? NSS_EXP : NSS_NONE;
	case 6 + 11:
		return nss_same(label, "c e traffic", 11) ? NSS_C_E : NSS_NONE;
	}
	return NSS_NONE;
}

/* The key log line's label for a secret. */
static __always_inline void nss_keylog_label(struct ct_tls_secret *e, __u32 label)
{
#define NSS_LABEL(text) do { \
	__builtin_memcpy(e->label, text, sizeof(text) - 1); \
	e->label_len = sizeof(text) - 1; \
} while (0)
	switch (label) {
	case NSS_C_HS: NSS_LABEL("CLIENT_HANDSHAKE_TRAFFIC_SECRET"); break;
	case NSS_S_HS: NSS_LABEL("SERVER_HANDSHAKE_TRAFFIC_SECRET"); break;
	case NSS_C_AP: NSS_LABEL("CLIENT_TRAFFIC_SECRET_0"); break;
	case NSS_S_AP: NSS_LABEL("SERVER_TRAFFIC_SECRET_0"); break;
	case NSS_EXP: NSS_LABEL("EXPORTER_SECRET"); break;
	default: NSS_LABEL("CLIENT_EARLY_TRAFFIC_SECRET");
	}
#undef NSS_LABEL
}

static __always_inline struct nss_thread *nss_thread_slot(__u32 tid, bool create)
{
	struct nss_thread *t = bpf_map_lookup_elem(&nss_threads, &tid);
	if (t || !create)
		return t;
	struct nss_thread fresh = {};
	bpf_map_update_elem(&nss_threads, &tid, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&nss_threads, &tid);
}

/* A handshake message's length: its 3-byte big-endian field. */
static __always_inline __u32 nss_message_len(const __u8 *head)
{
	return (__u32)head[1] << 16 | (__u32)head[2] << 8 | head[3];
}

/* Where the second ClientHello starts in bytes that restart a transcript
 * after a HelloRetryRequest (head: their first bytes): after the
 * message_hash that stands for the first ClientHello, and after the
 * HelloRetryRequest when it is hashed in the same call (NSS does so on
 * both sides: seen with tstclnt and selfserv). */
static __always_inline __u32 nss_after_retry(const __u8 *data, __u32 len, const __u8 *head)
{
	__u8 next[4];
	__u32 at = 4 + nss_message_len(head);
	if (at <= len - sizeof(next) && !bpf_probe_read_user(next, sizeof(next), data + at) &&
	    next[0] == NSS_SERVER_HELLO)
		at += 4 + nss_message_len(next);
	return at;
}

/* PK11_DigestOp(ctx, data, len): a ClientHello (type 1, a 3-byte length
 * that fits, legacy version 3.3) starts a transcript; its random follows.
 * Remembered for the context (the connection's transcript) and the
 * thread. */
SEC("uprobe")
int BPF_KPROBE(nss_digest_op, void *context, const __u8 *data, __u32 len)
{
	__u8 head[6 + CT_RANDOM_LEN];
	__u32 at = 0;
	if (len < sizeof(head) || !current_task_wanted() || bpf_probe_read_user(head, sizeof(head), data))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct nss_context_key key = { .context = (__u64)context, .tgid = pid_tgid >> 32 };
	bool restarted = head[0] == NSS_MESSAGE_HASH;
	if (restarted) {
		at = nss_after_retry(data, len, head);
		if (at > len - sizeof(head) || bpf_probe_read_user(head, sizeof(head), data + at))
			goto not_hello;
	}
	__u32 body = nss_message_len(head);
	if (head[0] != NSS_CLIENT_HELLO || head[4] != 3 || head[5] != 3 || body > len - at - 4 ||
	    body < 2 + CT_RANDOM_LEN)
		goto not_hello;
	bpf_map_update_elem(&nss_contexts, &key, head + 6, BPF_ANY);
	struct nss_thread *t = nss_thread_slot((__u32)pid_tgid, true);
	if (!t)
		return 0;
	__builtin_memcpy(t->client_random, head + 6, CT_RANDOM_LEN);
	t->has_random = 1;
	return 0;
not_hello:
	/* A restarted transcript without its ClientHello yet (it comes in a
	 * later call): what the address held before is another transcript's. */
	if (restarted)
		bpf_map_delete_elem(&nss_contexts, &key);
	return 0;
}

/* PK11_CloneContext(ctx): libssl's transcript hash for a secret clones the
 * connection's transcript context just before the secret's derive. */
SEC("uprobe")
int BPF_KPROBE(nss_clone_context, void *context)
{
	if (!current_task_wanted())
		return 0;
	struct nss_thread *t = nss_thread_slot((__u32)bpf_get_current_pid_tgid(), true);
	if (t)
		t->cloned = (__u64)context;
	return 0;
}

/* The client random of the secret a derive starts: its transcript's, else
 * the thread's last ClientHello's. */
static __always_inline void nss_take_random(struct nss_thread *t, __u64 pid_tgid)
{
	struct nss_context_key key = { .context = t->cloned, .tgid = pid_tgid >> 32 };
	struct nss_random *r = t->cloned ? bpf_map_lookup_elem(&nss_contexts, &key) : NULL;
	t->cloned = 0;
	t->has_label_random = r || t->has_random;
	if (r)
		__builtin_memcpy(t->label_random, r->bytes, CT_RANDOM_LEN);
	else if (t->has_random)
		__builtin_memcpy(t->label_random, t->client_random, CT_RANDOM_LEN);
}

/* PK11_DeriveWithFlags(base, mechanism, SECItem *params, target, op,
 * keySize, flags): an HKDF expand naming a secret is remembered until it
 * returns. params->data is a CK_HKDF_PARAMS (PKCS#11 3.0): pInfo at 48,
 * ulInfoLen at 56. */
SEC("uprobe")
int BPF_KPROBE(nss_derive, void *base, __u64 mechanism, void *params, __u64 target, __u64 op, int key_size)
{
	if (mechanism != NSS_CKM_HKDF_DERIVE || key_size <= 0 || key_size > CT_SECRET_MAX || !current_task_wanted())
		return 0;
	struct { __u32 type; __u32 _pad; __u64 data; __u32 len; } item;
	struct { __u64 info; __u64 info_len; } hkdf;
	__u8 info[NSS_INFO_READ];
	if (bpf_probe_read_user(&item, sizeof(item), params) || item.len < 64 ||
	    bpf_probe_read_user(&hkdf, sizeof(hkdf), (void *)(item.data + 48)) || hkdf.info_len < sizeof(info) ||
	    bpf_probe_read_user(info, sizeof(info), (void *)hkdf.info))
		return 0;
	__u32 label = nss_label_of(info);
	if (label == NSS_NONE)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct nss_thread *t = nss_thread_slot((__u32)pid_tgid, true);
	if (!t)
		return 0;
	nss_take_random(t, pid_tgid);
	t->label = label;
	t->key_size = key_size;
	t->result = 0;
	return 0;
}

/* The derive is over: a label must not outlive it (a derive that computed
 * nothing would hand it to the next unrelated HMAC). */
SEC("uretprobe")
int BPF_KRETPROBE(nss_derive_return)
{
	struct nss_thread *t = nss_thread_slot((__u32)bpf_get_current_pid_tgid(), false);
	if (t)
		t->label = NSS_NONE;
	return 0;
}

/* freebl's HMAC_Finish(cx, result, &len, max), inside a derive: where
 * the output goes. */
SEC("uprobe")
int BPF_KPROBE(nss_hmac_finish, void *cx, void *result, void *result_len)
{
	struct nss_thread *t = nss_thread_slot((__u32)bpf_get_current_pid_tgid(), false);
	if (!t || t->label == NSS_NONE || t->result)
		return 0;
	t->result = (__u64)result;
	t->result_len = (__u64)result_len;
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(nss_hmac_finish_return)
{
	struct nss_thread *t = nss_thread_slot((__u32)bpf_get_current_pid_tgid(), false);
	if (!t || t->label == NSS_NONE || !t->result)
		return 0;
	__u32 label = t->label;
	t->label = NSS_NONE;
	__u32 len = 0;
	/* One HMAC block is the whole secret: its length is what was asked. */
	if (bpf_probe_read_user(&len, sizeof(len), (void *)t->result_len) || len != t->key_size)
		return 0;
	struct ct_tls_secret *e = reserve_secret();
	if (!e)
		return 0;
	nss_keylog_label(e, label);
	e->random_len = CT_RANDOM_LEN;
	if (t->has_label_random)
		__builtin_memcpy(e->client_random, t->label_random, CT_RANDOM_LEN);
	else
		e->missing |= 2;
	e->secret_len = len;
	if (!copy_field(e->secret, sizeof(e->secret), len, t->result))
		e->missing |= 4;
	submit_secret(e);
	return 0;
}

/* TLS 1.2 and older: the key block's PRF, whose secret is the master
 * secret and whose seed is server_random || client_random. */
static __always_inline int nss_key_expansion(const void *secret, const char *label, const void *seed)
{
	static const char wanted[] = "key expansion";
	struct { __u32 type; __u32 _pad; __u64 data; __u32 len; } master, randoms;
	char have[sizeof(wanted)];
	if (!current_task_wanted() || bpf_probe_read_user(have, sizeof(have), label))
		return 0;
#pragma unroll
	for (int i = 0; i < sizeof(wanted); i++) {
		if (have[i] != wanted[i])
			return 0;
	}
	if (bpf_probe_read_user(&master, sizeof(master), secret) ||
	    bpf_probe_read_user(&randoms, sizeof(randoms), seed) || randoms.len != 2 * CT_RANDOM_LEN)
		return 0;
	struct ct_tls_secret *e = reserve_secret();
	if (!e)
		return 0;
	__builtin_memcpy(e->label, "CLIENT_RANDOM", 13);
	e->label_len = 13;
	e->random_len = CT_RANDOM_LEN;
	if (bpf_probe_read_user(e->client_random, CT_RANDOM_LEN, (void *)(randoms.data + CT_RANDOM_LEN)))
		e->missing |= 2;
	e->secret_len = master.len;
	if (master.len != NSS_MASTER_SECRET_LEN ||
	    !copy_field(e->secret, sizeof(e->secret), master.len, master.data))
		e->missing |= 4;
	submit_secret(e);
	return 0;
}

/* TLS_P_hash(hash, secret, label, seed, out, isFIPS) */
SEC("uprobe")
int BPF_KPROBE(nss_p_hash, __u64 hash, void *secret, const char *label, void *seed)
{
	return nss_key_expansion(secret, label, seed);
}

/* TLS_PRF(secret, label, seed, out, isFIPS) */
SEC("uprobe")
int BPF_KPROBE(nss_prf, void *secret, const char *label, void *seed)
{
	return nss_key_expansion(secret, label, seed);
}
