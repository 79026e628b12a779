/*
 * wire_common.h - what the wire fuzzer (fuzz_wire.c) and its seed
 * generator (gen_wire_seeds.c) share: the sender's guest, which both build
 * the same way so that a seed's RESULT carries the digest the fuzzer's
 * sender computes, and a scripted channel (reads from a buffer, writes
 * appended to another).
 *
 * Input layout: byte 0 picks the side (even: the bytes a receiver reads
 * from its sender; odd: the bytes a sender reads from its receiver), the
 * rest is the wire.  A receiver's input with bit 1 of byte 0 set holds
 * several channels (parallel channels, migrate.h): the rest is pieces of
 * [u32 length][bytes], channel 0's first, then each further channel's, in
 * the order they join (WIRE_MULTI).
 */
#ifndef HUGEVM_FUZZ_WIRE_COMMON_H
#define HUGEVM_FUZZ_WIRE_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "chan.h"
#include "migrate.h"

/* 64 4K pages at 0x100..0x13f, three of them with data, no vCPUs (small:
 * every input migrates it once). */
static inline int wire_guest(struct machine *m, struct domain **d, struct guest **g)
{
    struct domain_config c;
    domain_config_default(&c);
    int rc = domain_create(m, &c, d);
    if (rc < 0)
        return rc;
    rc = domain_populate(*d, 0x100, 0x40, NULL);
    if (rc == 0) {
        static const gfn_t pages[] = {0x100, 0x120, 0x13f};
        for (unsigned i = 0; i < 3; i++) {
            enum p2m_type t;
            mfn_t mfn = p2m_get_entry((*d)->p2m, pages[i], &t, NULL);
            memset(machine_ptr(m, mfn), 0x31 + (int)i, 64 << i);
        }
        rc = guest_create_soft(*d, 0, NULL, NULL, g);
    }
    if (rc < 0) {
        domain_destroy(*d);
        *d = NULL;
    }
    return rc;
}

/* A channel reading [in, in + in_len) and appending what is written to
 * out (out NULL: discarded). */
struct script_chan {
    struct chan c;
    const uint8_t *in;
    size_t in_len, pos;
    uint8_t *out;
    size_t out_len, out_cap;
    bool cut;
};

#define WIRE_MULTI 0x2u

static inline long script_read(struct chan *c, void *buf, size_t len)
{
    struct script_chan *s = (struct script_chan *)c;
    if (__atomic_load_n(&s->cut, __ATOMIC_RELAXED)) /* a lane's channel is cut from another thread */
        return -ECONNRESET;
    size_t n = s->in_len - s->pos < len ? s->in_len - s->pos : len;
    memcpy(buf, s->in + s->pos, n);
    s->pos += n;
    return (long)n;
}

static inline long script_write(struct chan *c, const void *buf, size_t len)
{
    struct script_chan *s = (struct script_chan *)c;
    if (__atomic_load_n(&s->cut, __ATOMIC_RELAXED))
        return -EPIPE;
    if (!s->out_cap)
        return (long)len;
    if (s->out_len + len > s->out_cap)
        return -ENOSPC;
    memcpy(s->out + s->out_len, buf, len);
    s->out_len += len;
    return (long)len;
}

static inline int script_poll(struct chan *c, int ms)
{
    (void)c;
    (void)ms;
    return 1;
}

static inline int script_timeout(struct chan *c, int ms)
{
    (void)c;
    (void)ms;
    return 0;
}

static inline void script_cut(struct chan *c)
{
    __atomic_store_n(&((struct script_chan *)c)->cut, true, __ATOMIC_RELAXED);
}
static inline void script_close(struct chan *c) { (void)c; }

static const struct chan_ops script_ops = {
    .read = script_read,
    .write = script_write,
    .poll_in = script_poll,
    .set_timeout = script_timeout,
    .cut = script_cut,
    .close = script_close,
};

static inline void script_init(struct script_chan *s, const void *in, size_t in_len, void *out,
                               size_t out_cap)
{
    memset(s, 0, sizeof(*s));
    s->c = (struct chan){.ops = &script_ops, .fd = -1, .cipher = "none"};
    s->in = in;
    s->in_len = in_len;
    s->out = out;
    s->out_cap = out_cap;
}

#endif
