/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* The registers the probes read beyond the C calling convention, for each
 * architecture the kernel programs are built for (build.rs passes
 * __TARGET_ARCH_x86 or __TARGET_ARCH_arm64). Every read of a register
 * that PT_REGS_PARMn and PT_REGS_RC do not cover goes through here, so a
 * probe never reads an x86 register name on arm64 or the reverse. */
#ifndef CLEARTAP_REGS_H
#define CLEARTAP_REGS_H

#include <bpf/bpf_tracing.h>

#if defined(__TARGET_ARCH_x86)

/* Go's internal register ABI on amd64 (Go 1.17+): integer arguments and
 * results in RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11; g in R14. */
#define CT_GO_PARM1(x) (__PT_REGS_CAST(x)->ax)
#define CT_GO_PARM2(x) (__PT_REGS_CAST(x)->bx)
#define CT_GO_PARM3(x) (__PT_REGS_CAST(x)->cx)
#define CT_GO_PARM4(x) (__PT_REGS_CAST(x)->di)
#define CT_GO_PARM5(x) (__PT_REGS_CAST(x)->si)
#define CT_GO_PARM7(x) (__PT_REGS_CAST(x)->r9)
#define CT_GO_PARM8(x) (__PT_REGS_CAST(x)->r10)
#define CT_GO_G(x) (__PT_REGS_CAST(x)->r14)
/* The second word of a two-word return value (RDX:RAX). */
#define CT_REGS_RC2(x) (__PT_REGS_CAST(x)->dx)

/* At a function's first instruction, the address it returns to: CALL
 * pushed it, so it is the word at the stack pointer (PT_REGS_RET is SP). */
static __always_inline void ct_entry_return_address(struct pt_regs *ctx, __u64 *ra)
{
	bpf_probe_read_user(ra, sizeof(*ra), (void *)PT_REGS_RET(ctx));
}

/* At a function's first instruction, its 7th integer argument (C and
 * Rust): the stack word above the return address. 0 if unreadable. */
static __always_inline __u64 ct_entry_parm7(struct pt_regs *ctx)
{
	__u64 v = 0;
	bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8));
	return v;
}

#elif defined(__TARGET_ARCH_arm64)

/* Go's internal register ABI on arm64 (Go 1.18+): integer arguments and
 * results in R0..R15, the same first eight as the C convention; g in R28
 * (no PT_REGS_* macro names it). */
#define CT_GO_PARM1(x) PT_REGS_PARM1(x)
#define CT_GO_PARM2(x) PT_REGS_PARM2(x)
#define CT_GO_PARM3(x) PT_REGS_PARM3(x)
#define CT_GO_PARM4(x) PT_REGS_PARM4(x)
#define CT_GO_PARM5(x) PT_REGS_PARM5(x)
#define CT_GO_PARM7(x) PT_REGS_PARM7(x)
#define CT_GO_PARM8(x) PT_REGS_PARM8(x)
#define CT_GO_G(x) (__PT_REGS_CAST(x)->regs[28])
/* The second word of a two-word return value (X1:X0). */
#define CT_REGS_RC2(x) PT_REGS_PARM2(x)

/* At a function's first instruction, the address it returns to: BL put
 * it in the link register X30 (PT_REGS_RET). */
static __always_inline void ct_entry_return_address(struct pt_regs *ctx, __u64 *ra)
{
	*ra = PT_REGS_RET(ctx);
}

/* A function's 7th integer argument (C and Rust): in x6. */
static __always_inline __u64 ct_entry_parm7(struct pt_regs *ctx)
{
	return PT_REGS_PARM7(ctx);
}

#else
#error "cleartap's kernel programs are built for x86 or arm64 (__TARGET_ARCH_x86 / __TARGET_ARCH_arm64)"
#endif

#endif /* CLEARTAP_REGS_H */
