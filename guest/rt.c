/*
 * rt.c - the guest runtime: entry point, calls to the host, console.
 * Freestanding; see rt.h and hugevm_guest.h for the contracts.
 */
#include "rt.h"

/* Entry: rsp = HVG_STACK_TOP(vcpu) (16-byte aligned), rdi = the parameter
 * page.  hvg_start never returns; if it did, report DONE forever. */
__asm__(".section .text.start, \"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "    andq $-16, %rsp\n"
        "    call hvg_start\n"
        "1:  movl $1, %eax\n"
        "    outb %al, $0xf4\n"
        "    jmp 1b\n"
        ".text\n");

void hvg_start(struct hvg_param *p);

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int64_t hvg_call4(struct hvg_param *p, uint32_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
                  uint64_t a3)
{
    volatile struct hvg_param *vp = p;
    vp->args[0] = a0;
    vp->args[1] = a1;
    vp->args[2] = a2;
    vp->args[3] = a3;
    vp->call = nr;
    hvg_out(nr);
    return vp->call_ret;
}

int64_t hvg_call(struct hvg_param *p, uint32_t nr, uint64_t a0, uint64_t a1)
{
    return hvg_call4(p, nr, a0, a1, 0, 0);
}

void hvg_flush(struct hvg_param *p)
{
    if (p->console_len)
        hvg_call(p, HVG_CALL_CONSOLE, 0, 0);
    ((volatile struct hvg_param *)p)->console_len = 0;
}

static void putc_(struct hvg_param *p, char c)
{
    if (p->console_len >= sizeof(p->console))
        hvg_flush(p);
    p->console[p->console_len++] = c;
    if (c == '\n')
        hvg_flush(p);
}

void hvg_puts(struct hvg_param *p, const char *s)
{
    while (*s)
        putc_(p, *s++);
}

void hvg_put_u64(struct hvg_param *p, uint64_t v)
{
    char b[21];
    int i = 20;
    b[i] = 0;
    do
        b[--i] = (char)('0' + v % 10);
    while (v /= 10);
    hvg_puts(p, b + i);
}

void hvg_put_hex(struct hvg_param *p, uint64_t v)
{
    char b[19];
    b[0] = '0';
    b[1] = 'x';
    for (int i = 0; i < 16; i++)
        b[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xf];
    b[18] = 0;
    hvg_puts(p, b);
}

void hvg_start(struct hvg_param *p)
{
    int rc = hvg_main(p);
    hvg_flush(p);
    ((volatile struct hvg_param *)p)->phase = HVG_PHASE_DONE;
    for (;;)
        hvg_call(p, HVG_CALL_DONE, (uint64_t)(int64_t)rc, 0);
}
