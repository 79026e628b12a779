/*
 * guest_memcalls.c - a test guest (for test_guest.c): memory calls, bad and
 * good, each result written to word k of the page at ext[0] + 5 pages.
 *  0 op 9                      -EINVAL
 *  1 order 3                   -EINVAL
 *  2 513 extents               -E2BIG
 *  3 list in the VGA hole      -EFAULT
 *  4 a gfn in the system area  -EINVAL
 *  5 an unaligned 2M gfn       -EINVAL
 *  6 one good gfn, one beyond the p2m: -EINVAL, nothing done
 *  7 populate 2M over RAM      0 (the extent is mapped: the call stops)
 *  8 decrease 2M               1
 *  9 populate it again as 2M   1
 * 10 decrease it again once it is gone: nothing there stops the call: 0
 * 15 0x600d: the end was reached
 */
#include "rt.h"

static uint64_t list[520];

int hvg_main(struct hvg_param *p)
{
    volatile int64_t *out = (volatile int64_t *)(uintptr_t)(p->ext[0].gpa + 5 * 4096);
    uint64_t g = (p->ext[0].gpa >> 12) + 1024; /* 2M aligned: ext[0] starts at 4 MiB */
    uint64_t lp = (uint64_t)(uintptr_t)list;
    list[0] = g;
    out[0] = hvg_call4(p, HVG_CALL_MEMORY, 9, 9, lp, 1);
    out[1] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 3, lp, 1);
    out[2] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 513);
    out[3] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, 0xa0000, 1);
    list[0] = 0x200;
    out[4] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 1);
    list[0] = g + 1;
    out[5] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 1);
    list[0] = g;
    list[1] = 1ULL << 40;
    out[6] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 2);
    out[7] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_POPULATE, 9, lp, 1);
    out[8] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 1);
    out[9] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_POPULATE, 9, lp, 1);
    /* decrease it, then decrease it again: nothing there stops the call */
    (void)hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 1);
    out[10] = hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_DECREASE, 9, lp, 1);
    /* give it back so that tot_pages is what it was */
    (void)hvg_call4(p, HVG_CALL_MEMORY, HVG_MEM_POPULATE, 9, lp, 1);
    out[15] = 0x600d;
    return 0;
}
