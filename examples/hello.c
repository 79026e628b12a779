/*
 * hello.c - the smallest hugevm guest program of your own.
 *
 * Build it against the guest ABI (guest/hugevm_guest.h) and runtime
 * (guest/rt.c), linked at HVG_PROG_GPA by guest/guest.ld:
 *
 *   gcc -std=c11 -O2 -ffreestanding -nostdlib -static -no-pie -fno-pic \
 *       -fno-stack-protector -fcf-protection=none -mno-red-zone \
 *       -fno-asynchronous-unwind-tables -I guest -T guest/guest.ld \
 *       -o hello.elf guest/rt.c examples/hello.c
 *   hugevm run --guest-program hello.elf --vcpus 2
 *
 * Every vCPU says hello on the console, sums the first word of every page
 * of its slice of the workload memory after writing its vCPU number there,
 * publishes the result in its parameter page (st.checksum) and returns 0.
 */
#include "rt.h"

int hvg_main(struct hvg_param *p)
{
    uint64_t pages = 0, sum = 0;
    for (uint32_t e = 0; e < p->nr_extents; e++)
        pages += p->ext[e].pages;
    uint64_t lo = pages * p->vcpu / p->nr_vcpus, hi = pages * (p->vcpu + 1) / p->nr_vcpus;
    hvg_puts(p, "hello from vCPU ");
    hvg_put_u64(p, p->vcpu);
    hvg_puts(p, " of ");
    hvg_put_u64(p, p->nr_vcpus);
    hvg_puts(p, ": pages ");
    hvg_put_u64(p, lo);
    hvg_puts(p, "-");
    hvg_put_u64(p, hi);
    hvg_puts(p, "\n");
    uint64_t i = 0;
    for (uint32_t e = 0; e < p->nr_extents; e++) {
        for (uint64_t k = 0; k < p->ext[e].pages; k++, i++) {
            if (i < lo || i >= hi)
                continue;
            volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(p->ext[e].gpa + (k << 12));
            *w = p->vcpu + 1;
            sum += *w;
        }
    }
    p->st.checksum = sum;
    p->st.ops = hi - lo;
    return 0;
}
