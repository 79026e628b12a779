/*
 * rt.h - the guest runtime's interface (guest side of hugevm_guest.h).
 *
 * A guest program provides hvg_main(); guest/rt.c provides the entry point
 * (_start, placed first in the image by guest/guest.ld), the calls to the
 * host and a console.  Build a program with the flags in guest/meson.build
 * (freestanding, no PIC, no red zone, no stack protector) and link it with
 * guest/guest.ld; examples/hello.c is the smallest one.
 */
#ifndef HUGEVM_GUEST_RT_H
#define HUGEVM_GUEST_RT_H

#include <stddef.h>
#include <stdint.h>

#include "hugevm_guest.h"

/* The program: runs on every vCPU with that vCPU's parameter page.  Its
 * return value is reported with HVG_CALL_DONE (0: success). */
int hvg_main(struct hvg_param *p);

/* Exit to the host with call nr (the call block of p already filled): a
 * one-byte `out`, so the TSS I/O bitmap opens the call port alone. */
static inline void hvg_out(uint32_t nr)
{
    __asm__ volatile("outb %b0, %1" : : "a"(nr), "i"(HVG_PORT) : "memory");
}

/* Call the host: returns its call_ret. */
int64_t hvg_call(struct hvg_param *p, uint32_t nr, uint64_t a0, uint64_t a1);
int64_t hvg_call4(struct hvg_param *p, uint32_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
                  uint64_t a3);

/* Console: text is buffered in the parameter page and flushed to the host
 * (one exit) when the buffer is full, at a newline, or by hvg_flush. */
void hvg_puts(struct hvg_param *p, const char *s);
void hvg_put_u64(struct hvg_param *p, uint64_t v);
void hvg_put_hex(struct hvg_param *p, uint64_t v);
void hvg_flush(struct hvg_param *p);

static inline uint64_t hvg_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

/* The compiler may emit calls to these even in freestanding code. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

#endif
