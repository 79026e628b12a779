/*
 * testutil.h - fixtures shared by the cmocka tests.  Include after
 * <cmocka.h>.  Header-only: each test binary is one translation unit.
 */
#ifndef HUGEVM_TESTUTIL_H
#define HUGEVM_TESTUTIL_H

#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <setjmp.h> /* cmocka.h's prerequisites */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "domain.h"
#include "frames.h"
#include "machine.h"

/* Fail the test with the audit's own message when a validator objects. */
/* HUGEVM_TEST_FILTER=PATTERN runs only the cases whose names match
 * (cmocka's * and ? wildcards): one case under TCG, or to time it.  Every
 * test's main calls it before running its group. */
static inline void hv_test_filter(void)
{
    const char *f = getenv("HUGEVM_TEST_FILTER");
    if (f && *f)
        cmocka_set_test_filter(f);
}

#define AUDIT_OK(expr)                                                         \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ != 0)                                                          \
            fail_msg("%s: %s", #expr, hv_audit_last());                        \
    } while (0)

/* Every validator that covers a domain: p2m, accounting (PoD included) and
 * the machine's frame allocator. */
static inline void audit_all(const struct domain *d)
{
    AUDIT_OK(domain_audit(d));
    AUDIT_OK(frames_audit(d->m->frames));
}

static inline struct machine *new_machine_policy(uint64_t bytes, enum frame_policy pol)
{
    struct machine *m;
    assert_int_equal(machine_create(&m, bytes, pol), 0);
    return m;
}

static inline struct machine *new_machine(uint64_t bytes)
{
    return new_machine_policy(bytes, FRAME_POLICY_FRAGPOOL);
}

/* A domain of m with the default configuration (cfg NULL) or cfg. */
static inline struct domain *new_domain_cfg(struct machine *m, const struct domain_config *cfg)
{
    struct domain_config c;
    struct domain *d;
    if (cfg)
        c = *cfg;
    else
        domain_config_default(&c);
    assert_int_equal(domain_create(m, &c, &d), 0);
    return d;
}

static inline struct domain *new_domain(struct machine *m) { return new_domain_cfg(m, NULL); }

/* A default domain of m with `bytes` of RAM laid out and populated as an
 * HVM builder does (domain_populate_guest). */
static inline struct domain *new_guest(struct machine *m, uint64_t bytes)
{
    struct domain *d = new_domain(m);
    assert_int_equal(domain_populate_guest(d, bytes, NULL), 0);
    return d;
}

/* Every frame of m is free again, and the allocator's invariants hold. */
static inline void assert_machine_empty(struct machine *m)
{
    struct frame_stats st;
    AUDIT_OK(frames_audit(m->frames));
    frames_get_stats(m->frames, &st);
    assert_int_equal(st.free_frames, m->nr_frames);
}

/* The end of a test with one domain d on m: d destroyed, every frame back
 * (nothing leaked, nothing freed twice), m destroyed. */
static inline void down_guest(struct domain *d, struct machine *m)
{
    domain_destroy(d);
    assert_machine_empty(m);
    machine_destroy(m);
}

/* Run `call` with the n-th allocation (any site) failing; `fired` says
 * whether the fault was reached (the loops that use it stop at the first n
 * that is not: the call then made fewer than n allocations). */
#define UNDER_FAULT(n, fired, rc, call)                                        \
    do {                                                                       \
        unsigned long h0_ = hv_fault_hits;                                     \
        fault_arm((n), FAULT_SITE_ALL);                                        \
        (rc) = (call);                                                         \
        fault_disarm();                                                        \
        (fired) = hv_fault_hits != h0_;                                        \
    } while (0)

/* Fisher-Yates over v[0, n) with r (the same permutation for the same r). */
static inline void shuffle_gfns(gfn_t *v, size_t n, struct hv_rng *r)
{
    for (size_t i = n ? n - 1 : 0; i > 0; i--) {
        size_t j = (size_t)hv_rng_below(r, i + 1);
        gfn_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* The built hugevm binary: $HUGEVM_BIN (meson sets it), else tools/hugevm
 * next to this test's directory.  False when it is not executable. */
static inline bool hugevm_path(char *out, size_t len)
{
    const char *env = getenv("HUGEVM_BIN");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return access(out, X_OK) == 0;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return false;
    self[n] = 0;
    snprintf(out, len, "%s/../tools/hugevm", dirname(self));
    return access(out, X_OK) == 0;
}

#endif
