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

#include "domain.h"

/* Fail the test with the audit's own message when a validator objects. */
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
