/*
 * guest_fpu.c - a test guest (for test_guest.c's xsave test): it loads
 * x87, SSE and (where CPUID and XCR0 offer it) AVX registers with values
 * of its own vCPU, sets the x87 control word and MXCSR away from their
 * defaults, and then spins, reading the TSC, until the host sets the word
 * `go`; the host saves the vCPUs meanwhile and resumes them on a new VM.
 * Then it stores every one of those registers and the TSC into its result
 * page (ext[0] + (8 + vcpu) pages), which the host compares with what was
 * loaded.  Everything from the loads to the stores is one asm statement,
 * so no compiled code touches the registers in between.  The image is one
 * for all vCPUs, so the values to load are kept per vCPU (one array shared
 * by all was a race: a vCPU could load another's values where their stores
 * interleaved, taken for a failed restore in test_xsave_kvm).
 *
 * Result page (u64 words):
 *  0 go       (host: 1 once the guest was resumed)
 *  1 spinning (guest: 1 once the registers are loaded)
 *  2 the last TSC read before go
 *  3 the first TSC read after go
 *  4 1 when AVX was used
 *  8..       xmm0..15 (16 bytes each), then ymm0..15's upper halves
 *            (16 bytes each), then st0..st7 (16 bytes each, 10 used),
 *            then the x87 control word (u16) and MXCSR (u32) in one word
 *  1024..    an FXSAVE image stored right after the loads (before the
 *            save): what this vCPU loaded, so the host can tell a wrong
 *            load from a wrong restore
 *  1536..    ymm0..15's upper halves, stored with it
 *  the loaded values: byte k of xmm i is 0x40 + 16 * (i & 7) + k + vcpu,
 *  of ymm i's upper half 0x80 + i + k + vcpu; st i holds the integer
 *  (8 - i) * 1000 + vcpu; control word 0x0f7f, MXCSR 0x7f80
 */
#include "rt.h"

static uint8_t xmm_in_v[HVG_MAX_VCPUS][16][16], ymm_in_v[HVG_MAX_VCPUS][16][16];
static int64_t st_in_v[HVG_MAX_VCPUS][8];
static const uint16_t cw_in = 0x0f7f;
static const uint32_t mxcsr_in = 0x7f80;

static int has_avx(void)
{
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!((c >> 27) & 1) || !((c >> 28) & 1)) /* OSXSAVE, AVX */
        return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}

int hvg_main(struct hvg_param *p)
{
    if (p->vcpu >= HVG_MAX_VCPUS)
        return 1;
    uint8_t(*xmm_in)[16] = xmm_in_v[p->vcpu], (*ymm_in)[16] = ymm_in_v[p->vcpu];
    int64_t *st_in = st_in_v[p->vcpu];
    uint8_t *page = (uint8_t *)(uintptr_t)(p->ext[0].gpa + (8 + p->vcpu) * 4096);
    volatile uint64_t *w = (volatile uint64_t *)page;
    int avx = has_avx();
    for (unsigned i = 0; i < 16; i++)
        for (unsigned k = 0; k < 16; k++) {
            xmm_in[i][k] = (uint8_t)(0x40 + 16 * (i & 7) + k + p->vcpu);
            ymm_in[i][k] = (uint8_t)(0x80 + i + k + p->vcpu);
        }
    for (unsigned i = 0; i < 8; i++)
        st_in[i] = (int64_t)(i + 1) * 1000 + p->vcpu; /* pushed first: st7 at the end */
    w[4] = (uint64_t)avx;
    register uint8_t *r8 __asm__("r8") = page;
    register uint64_t r9 __asm__("r9") = (uint64_t)avx;
    /* rdi: xmm_in, rsi: ymm_in, rbx: st_in, r8: the page, r9: avx */
    __asm__ volatile(
        "fninit\n\t"
        "fldcw (%[cw])\n\t"
        "ldmxcsr (%[mx])\n\t"
        "fildq 0(%%rbx)\n\t"
        "fildq 8(%%rbx)\n\t"
        "fildq 16(%%rbx)\n\t"
        "fildq 24(%%rbx)\n\t"
        "fildq 32(%%rbx)\n\t"
        "fildq 40(%%rbx)\n\t"
        "fildq 48(%%rbx)\n\t"
        "fildq 56(%%rbx)\n\t"
        "testq %%r9, %%r9\n\t"
        "jz 1f\n\t"
        /* AVX: ymm i = {xmm_in[i], ymm_in[i]} */
        ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n\t"
        "vmovdqu \\n*16(%%rdi), %%xmm\\n\n\t"
        "vinsertf128 $1, \\n*16(%%rsi), %%ymm\\n, %%ymm\\n\n\t"
        ".endr\n\t"
        "jmp 2f\n"
        "1:\n\t"
        ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n\t"
        "movdqu \\n*16(%%rdi), %%xmm\\n\n\t"
        ".endr\n"
        "2:\n\t"
        /* what was loaded, before the save */
        "fxsave64 1024(%%r8)\n\t"
        "testq %%r9, %%r9\n\t"
        "jz 5f\n\t"
        ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n\t"
        "vextractf128 $1, %%ymm\\n, 1536+\\n*16(%%r8)\n\t"
        ".endr\n"
        "5:\n\t"
        "movq $1, 8(%%r8)\n\t"
        /* spin: the last TSC read in word 2, until word 0 (go) */
        "3:\n\t"
        "rdtsc\n\t"
        "shlq $32, %%rdx\n\t"
        "orq %%rdx, %%rax\n\t"
        "movq %%rax, 16(%%r8)\n\t"
        "cmpq $0, 0(%%r8)\n\t"
        "je 3b\n\t"
        "rdtsc\n\t"
        "shlq $32, %%rdx\n\t"
        "orq %%rdx, %%rax\n\t"
        "movq %%rax, 24(%%r8)\n\t"
        /* store */
        ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n\t"
        "movdqu %%xmm\\n, " "64+\\n*16(%%r8)\n\t"
        ".endr\n\t"
        "testq %%r9, %%r9\n\t"
        "jz 4f\n\t"
        ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n\t"
        "vextractf128 $1, %%ymm\\n, 320+\\n*16(%%r8)\n\t"
        ".endr\n\t"
        "vzeroupper\n"
        "4:\n\t"
        "fstpt 576(%%r8)\n\t"
        "fstpt 592(%%r8)\n\t"
        "fstpt 608(%%r8)\n\t"
        "fstpt 624(%%r8)\n\t"
        "fstpt 640(%%r8)\n\t"
        "fstpt 656(%%r8)\n\t"
        "fstpt 672(%%r8)\n\t"
        "fstpt 688(%%r8)\n\t"
        "fnstcw 704(%%r8)\n\t"
        "stmxcsr 708(%%r8)\n\t"
        "fninit\n\t"
        "movl $0x1f80, 712(%%r8)\n\t"
        "ldmxcsr 712(%%r8)\n\t"
        "movl $0, 712(%%r8)\n\t"
        :
        : "D"(xmm_in), "S"(ymm_in), "b"(st_in), [cw] "r"(&cw_in), [mx] "r"(&mxcsr_in),
          "r"(r8), "r"(r9)
        : "rax", "rdx", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
          "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
          "xmm15", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");
    return 0;
}
