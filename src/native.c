/*
 * native.c - the `native` program backend (guest.h): guest programs run as
 * host code, one host thread per vCPU, on the domain's p2m mirrored at host
 * virtual address == gpa.
 *
 * Mirror.  [0x10000, top) of the host's address space is reserved
 * (MAP_FIXED_NOREPLACE, so nothing of the process is ever replaced; a
 * range already in use is an error that says so: under ASan only the low
 * 2 GiB are free) and every RAM leaf of the p2m is mapped there from the
 * machine memfd at its frame's offset, runs contiguous in gfn and mfn by
 * one mmap; everything else stays PROT_NONE.  gfns below 0x10 are never
 * mapped (mmap_min_addr); the guest ABI does not use them.  A sync after a
 * memory change maps everything again (the vCPUs are parked).
 *
 * Execution.  A vCPU thread jumps to the program's entry on the guest's
 * stack (hv_native_enter) with `in_guest` set.  The program's `out` is a
 * general-protection fault at CPL 3 (no I/O permission), delivered as
 * SIGSEGV on the thread's alternate stack; the handler decodes the
 * instruction at rip (out imm8/dx, al), serves the call there
 * (guest_serve_call is async-signal-safe), advances rip and returns into the
 * guest, so the guest's registers never leave the CPU.  DONE, a fault (an
 * access outside RAM: PROT_NONE; #GP, #UD, #DE, #BP: SIGSEGV, SIGILL,
 * SIGFPE, SIGTRAP) and a stop leave the guest for good through siglongjmp
 * to the vCPU loop; a paused vCPU parks inside the handler of the kick
 * signal.  Signals that arrive while a thread is not in guest code go to
 * the handlers installed before (ASan's, the default).
 *
 * Dirty log (live migration).  The mirror is registered with a
 * userfaultfd in asynchronous write-protect mode (Linux 6.7+: the kernel
 * resolves a write to a protected page itself, no fault reaches us) and
 * PAGEMAP_SCAN reports the pages written since the last scan and protects
 * them again in one call, so a harvest costs one ioctl per 512 written
 * runs.  Host writes through the mirror (call results in the parameter
 * pages) are logged the same way.  A sync that maps the mirror again while
 * logging first scans what was written into `pending` (a fresh mapping
 * forgets it), then registers and protects the new mappings.
 *
 * vCPU state (save, migration).  A paused vCPU is parked inside the kick
 * signal's handler, whose ucontext holds every register of the guest code
 * it interrupted: get_state copies them (general registers, rip, rflags,
 * the FXSAVE image) into the HVCTX_PROG_VCPU layout (KVM's structures; no
 * system registers: the host's are used).  A vCPU resumed elsewhere enters
 * guest code by sending itself the kick signal with the state to load: the
 * handler writes it into its own ucontext and sigreturn jumps there.  The
 * guest's code, stacks and data are guest memory at the same addresses in
 * any process, so the state is complete.
 *
 * Limits: no pause of a vCPU outside its own thread's signal handler, no
 * guest page tables (the host's are used), so none of KVM's counters; a
 * native vCPU resumes on the native backend only.
 */
#include "guest.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "machine.h"
#include "p2m.h"

#define LOW_GPA 0x10000ULL

/* The asynchronous write-protect ABI of Linux 6.7+ (uapi userfaultfd.h and
 * fs.h), for headers older than the running kernel. */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef PAGEMAP_SCAN
struct page_region {
    uint64_t start, end, categories;
};
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
#define SCAN_VEC 512
#define ALTSTACK_BYTES (64 * 1024)

struct nrun {
    uint64_t gpa, bytes;
    mfn_t mfn;   /* RAM: the first frame */
    uint64_t pod; /* 1: a PoD placeholder (no frame yet) */
};

/* The mirror's runs as published to lock-free readers (signal handlers,
 * gpa_ptr): replaced whole, the old one kept until no reader can hold it
 * (freed by the next sync, which runs with every vCPU parked, or destroy). */
struct nmap {
    struct nmap *retired_next;
    size_t n;
    struct nrun v[];
};

struct ncpu {
    struct native *n;
    unsigned i;
    uint64_t entry, rsp, rdi;
    bool reset;
    volatile int in_guest;
    pthread_t thread;
    volatile int thread_known;
    sigjmp_buf jb;
    struct guest_exit *ex;
    ucontext_t *parked_uc;  /* while parked in the kick handler */
    bool restore;           /* enter guest code with `state` */
    struct hvctx_prog_vcpu state;
    void *altstack;
    stack_t old_ss; /* the thread's alternate stack before ours (ASan's) */
};

struct native {
    struct guest_exec x;
    struct domain *d;
    uint64_t top; /* reserved [LOW_GPA, top) */
    bool reserved;
    struct nmap *map;      /* published (atomic) */
    struct nmap *retired;
    size_t retired_bytes;
    pthread_mutex_t mu;    /* sync, pod_mapped and log-dirty changes, one at a time */
    unsigned nr;
    /* The mirror's userfaultfds: uffd, RAM's asynchronous write-protect
     * while logging (Linux 6.7+); pod_uffd, PoD placeholders' missing
     * pages and writes to zero pages (the fault server's).  -1: none. */
    int uffd, pod_uffd;
    bool logging;
    int pagemap;
    uint64_t *pending;     /* written before a remap, bit per gfn below top */
    struct page_region *vec;
    struct ncpu cpu[HVG_MAX_VCPUS];
};

static __thread struct ncpu *cur_cpu;
static struct sigaction old_act[NSIG];
static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;
static int kick_sig;

/* Switch to the guest's stack and jump to its entry (never returns: the
 * vCPU leaves through siglongjmp). */
void hv_native_enter(uint64_t rsp, uint64_t rip, uint64_t rdi);
__asm__(".text\n"
        ".globl hv_native_enter\n"
        ".type hv_native_enter, @function\n"
        "hv_native_enter:\n"
        "    movq %rdi, %rsp\n"
        "    movq %rdx, %rdi\n"
        "    xorl %eax, %eax\n"
        "    xorl %ebx, %ebx\n"
        "    xorl %ebp, %ebp\n"
        "    jmp *%rsi\n"
        ".size hv_native_enter, . - hv_native_enter\n");

/* The run holding gpa in map m (RAM or placeholder), or NULL. */
static const struct nrun *map_find(const struct nmap *m, uint64_t gpa)
{
    if (!m)
        return NULL;
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->v[mid].gpa + m->v[mid].bytes <= gpa)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < m->n && m->v[lo].gpa <= gpa ? &m->v[lo] : NULL;
}

/* The RAM run holding gpa, or NULL (async-signal-safe). */
static const struct nrun *run_find(const struct native *n, uint64_t gpa)
{
    const struct nrun *r = map_find(__atomic_load_n(&n->map, __ATOMIC_ACQUIRE), gpa);
    return r && !r->pod ? r : NULL;
}

/* ---- signals ---------------------------------------------------------------- */

static void chain(int sig, siginfo_t *si, void *uc)
{
    struct sigaction *o = &old_act[sig];
    if (o->sa_flags & SA_SIGINFO) {
        if (o->sa_sigaction)
            o->sa_sigaction(sig, si, uc);
        return;
    }
    if (o->sa_handler == SIG_IGN)
        return;
    if (o->sa_handler == SIG_DFL) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    o->sa_handler(sig);
}

static void leave(struct ncpu *c)
{
    c->in_guest = 0;
    siglongjmp(c->jb, 1);
}

/* ---- vCPU state: a ucontext <-> KVM's register layouts ----------------------- */

static const int greg_of[16] = {REG_RAX, REG_RBX, REG_RCX, REG_RDX, REG_RSI, REG_RDI,
                                REG_RSP, REG_RBP, REG_R8,  REG_R9,  REG_R10, REG_R11,
                                REG_R12, REG_R13, REG_R14, REG_R15};
/* rflags bits a user may change (CF PF AF ZF SF TF DF OF, AC, ID) */
#define RFLAGS_USER 0x244dd5ULL

static void save_state(const ucontext_t *uc, struct hvctx_prog_vcpu *s)
{
    uint64_t regs[18];
    for (unsigned k = 0; k < 16; k++)
        regs[k] = (uint64_t)uc->uc_mcontext.gregs[greg_of[k]];
    regs[16] = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    regs[17] = (uint64_t)uc->uc_mcontext.gregs[REG_EFL];
    memcpy(s->regs, regs, sizeof(regs));
    /* struct kvm_fpu: fpr[8][16], fcw, fsw, ftwx, pad, last_opcode,
     * last_ip, last_dp, xmm[16][16], mxcsr, pad */
    const struct _libc_fpstate *f = uc->uc_mcontext.fpregs;
    if (!f)
        return;
    uint8_t *p = s->fpu;
    memcpy(p, f->_st, 128);
    memcpy(p + 128, &f->cwd, 2);
    memcpy(p + 130, &f->swd, 2);
    p[132] = (uint8_t)f->ftw;
    memcpy(p + 134, &f->fop, 2);
    memcpy(p + 136, &f->rip, 8);
    memcpy(p + 144, &f->rdp, 8);
    memcpy(p + 152, f->_xmm, 256);
    memcpy(p + 408, &f->mxcsr, 4);
}

static void load_state(ucontext_t *uc, const struct hvctx_prog_vcpu *s)
{
    uint64_t regs[18];
    memcpy(regs, s->regs, sizeof(regs));
    for (unsigned k = 0; k < 16; k++)
        uc->uc_mcontext.gregs[greg_of[k]] = (greg_t)regs[k];
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)regs[16];
    uint64_t fl = (uint64_t)uc->uc_mcontext.gregs[REG_EFL];
    uc->uc_mcontext.gregs[REG_EFL] = (greg_t)((fl & ~RFLAGS_USER) | (regs[17] & RFLAGS_USER));
    struct _libc_fpstate *f = uc->uc_mcontext.fpregs;
    if (!f)
        return;
    const uint8_t *p = s->fpu;
    uint32_t mxcsr;
    memcpy(f->_st, p, 128);
    memcpy(&f->cwd, p + 128, 2);
    memcpy(&f->swd, p + 130, 2);
    f->ftw = p[132];
    memcpy(&f->fop, p + 134, 2);
    memcpy(&f->rip, p + 136, 8);
    memcpy(&f->rdp, p + 144, 8);
    memcpy(f->_xmm, p + 152, 256);
    memcpy(&mxcsr, p + 408, 4);
    /* reserved MXCSR bits would make sigreturn fail: keep what the CPU takes */
    f->mxcsr = mxcsr & (f->mxcr_mask ? f->mxcr_mask : 0xffbfu);
}

static void on_signal(int sig, siginfo_t *si, void *ucv)
{
    struct ncpu *c = cur_cpu;
    ucontext_t *uc = ucv;
    if (!c || !c->in_guest) {
        if (sig != kick_sig) {
            chain(sig, si, ucv);
        }
        return;
    }
    struct native *n = c->n;
    struct guest *g = n->x.g;
    struct guest_exit *ex = c->ex;
    greg_t *r = uc->uc_mcontext.gregs;
    uint64_t rip = (uint64_t)r[REG_RIP];
    if (sig == kick_sig) {
        if (c->restore) {
            /* native_run of a resumed vCPU: sigreturn enters guest code
             * with the saved state */
            c->restore = false;
            load_state(uc, &c->state);
            return;
        }
        c->parked_uc = uc;
        bool stop = guest_park(g, c->i);
        c->parked_uc = NULL;
        if (stop) {
            ex->kind = GUEST_EXIT_KICK;
            leave(c);
        }
        return;
    }
    ex->rip = rip;
    if (sig == SIGSEGV && si->si_code == SI_KERNEL) {
        /* #GP: an `out` (or `in`) without I/O permission, or a real #GP */
        const struct nrun *rr = run_find(n, rip);
        const uint8_t *ip = (const uint8_t *)(uintptr_t)rip;
        if (rr && rr->gpa + rr->bytes - rip >= 2) {
            unsigned port = 0, len = 0;
            if (ip[0] == 0xe6 || ip[0] == 0xe7)
                port = ip[1], len = 2;
            else if (ip[0] == 0xee || ip[0] == 0xef)
                port = (unsigned)(r[REG_RDX] & 0xffff), len = 1;
            /* the call is a one-byte out (al), as under KVM's I/O bitmap */
            if (len && port == HVG_PORT && (ip[0] == 0xe6 || ip[0] == 0xee)) {
                uint32_t nr = (uint32_t)(r[REG_RAX] & 0xff);
                if (nr == HVG_CALL_DONE) {
                    ex->kind = GUEST_EXIT_CALL;
                    ex->call = nr;
                    leave(c);
                }
                int rc = guest_serve_call(g, c->i, nr);
                if (rc != 1) {
                    ex->kind = GUEST_EXIT_ERROR;
                    ex->err = rc < 0 ? rc : -EPROTO;
                    snprintf(ex->what, sizeof(ex->what), "call %u at rip %#llx failed", nr,
                             (unsigned long long)rip);
                    leave(c);
                }
                r[REG_RIP] = (greg_t)(rip + len);
                return;
            }
            if (len || ip[0] == 0xe4 || ip[0] == 0xe5 || ip[0] == 0xec || ip[0] == 0xed) {
                ex->kind = GUEST_EXIT_ERROR;
                ex->err = -EPROTO;
                snprintf(ex->what, sizeof(ex->what), "port access (opcode %#x, port %#x) at rip "
                         "%#llx: only `out %#x` is a call", ip[0], port,
                         (unsigned long long)rip, HVG_PORT);
                leave(c);
            }
        }
        ex->kind = GUEST_EXIT_EXCEPTION;
        ex->vector = 13;
        ex->error_code = (uint64_t)r[REG_ERR];
        leave(c);
    }
    if (sig == SIGSEGV || sig == SIGBUS) {
        uint64_t a = (uint64_t)(uintptr_t)si->si_addr;
        bool write = (r[REG_ERR] & 2) != 0;
        if (a < n->top && !run_find(n, a)) {
            ex->kind = GUEST_EXIT_FAULT;
            ex->gpa = a;
            ex->write = write;
        } else {
            ex->kind = GUEST_EXIT_EXCEPTION;
            ex->vector = 14;
            ex->addr = a;
            ex->error_code = (uint64_t)r[REG_ERR];
        }
        leave(c);
    }
    ex->kind = GUEST_EXIT_EXCEPTION;
    ex->vector = sig == SIGILL ? 6 : sig == SIGFPE ? 0 : sig == SIGTRAP ? 3 : 13;
    leave(c);
}

/* Install on_signal where another handler sits now (someone, a test
 * framework for one, may have replaced it since), keeping that one to
 * chain to.  Called before any vCPU of a guest starts. */
static void install_handlers(void)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGRTMIN + 4};
    pthread_mutex_lock(&mu);
    kick_sig = SIGRTMIN + 4;
    for (unsigned k = 0; k < ARRAY_SIZE(sigs); k++) {
        struct sigaction cur;
        if (sigaction(sigs[k], NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
            cur.sa_sigaction == on_signal)
            continue;
        struct sigaction sa = {0};
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        /* a kick waits until a call served in the trap handler is done: a
         * vCPU must not park halfway through a memory call */
        sigaddset(&sa.sa_mask, kick_sig);
        sigaction(sigs[k], &sa, &old_act[sigs[k]]);
    }
    pthread_mutex_unlock(&mu);
}

int guest_kick_signal(void)
{
    pthread_once(&handlers_once, install_handlers);
    return kick_sig;
}

void guest_signals_install(void)
{
    install_handlers();
}

/* ---- mirror ----------------------------------------------------------------- */

static int wp_scan(struct native *n, uint64_t *bm);
static int wp_scan_range(struct native *n, uint64_t lo, uint64_t hi, uint64_t *bm);

struct ncollect {
    struct nrun *v;
    size_t n, cap;
    uint64_t top;
    bool placeholders; /* PoD leaves too (when there is a userfaultfd) */
    int rc;
};

static int ncollect_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                         ept_entry_t *e)
{
    struct ncollect *c = ctx;
    (void)e;
    bool pod = type == p2m_pod && c->placeholders;
    if (!p2m_is_ram(type) && !pod)
        return 0;
    if (pod)
        mfn = 0;
    uint64_t gpa = gfn << PAGE_SHIFT, bytes = order_pages(order) << PAGE_SHIFT;
    if (gpa + bytes <= LOW_GPA)
        return 0;
    if (gpa < LOW_GPA) {
        mfn += (LOW_GPA - gpa) >> PAGE_SHIFT;
        bytes -= LOW_GPA - gpa;
        gpa = LOW_GPA;
    }
    if (gpa + bytes > c->top)
        return -ERANGE;
    if (c->n) {
        struct nrun *l = &c->v[c->n - 1];
        if (l->gpa + l->bytes == gpa && l->pod == pod &&
            (pod || l->mfn + (l->bytes >> PAGE_SHIFT) == mfn)) {
            l->bytes += bytes;
            return 0;
        }
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct nrun *v = realloc(c->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = (struct nrun){gpa, bytes, mfn, pod};
    return 0;
}

static void *map_none(uint64_t lo, uint64_t hi)
{
    return mmap((void *)(uintptr_t)lo, hi - lo, PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

/* A placeholder for PoD gfns: anonymous memory no page of which is ever
 * filled here (a touch is a missing-page fault for the fault server). */
static void *map_placeholder(uint64_t lo, uint64_t bytes)
{
    return mmap((void *)(uintptr_t)lo, bytes, PROT_READ | PROT_WRITE | PROT_EXEC,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

static int uffd_register(int fd, uint64_t lo, uint64_t bytes, uint64_t mode)
{
    struct uffdio_register r = {.range = {.start = lo, .len = bytes}, .mode = mode};
    return ioctl(fd, UFFDIO_REGISTER, &r) < 0 ? -errno : 0;
}

static void uffd_unregister(int fd, uint64_t lo, uint64_t bytes)
{
    struct uffdio_range r = {.start = lo, .len = bytes};
    (void)ioctl(fd, UFFDIO_UNREGISTER, &r);
}

/* Registration of one run as the mirror's state wants it: a placeholder
 * for missing pages, RAM for write-protect while logging (and protected
 * now: what was written before is the caller's to have collected). */
static int uffd_apply(struct native *n, const struct nrun *r)
{
    if (r->pod) /* missing pages, and writes to a zero page a read mapped */
        return n->pod_uffd < 0 ? 0
                               : uffd_register(n->pod_uffd, r->gpa, r->bytes,
                                               UFFDIO_REGISTER_MODE_MISSING |
                                                   UFFDIO_REGISTER_MODE_WP);
    if (n->uffd < 0)
        return 0;
    if (!n->logging) {
        uffd_unregister(n->uffd, r->gpa, r->bytes);
        return 0;
    }
    int rc = uffd_register(n->uffd, r->gpa, r->bytes, UFFDIO_REGISTER_MODE_WP);
    return rc < 0 ? rc : wp_scan_range(n, r->gpa, r->gpa + r->bytes, NULL);
}

/* Publish m as the mirror's runs; the old ones are retired. */
static void map_publish(struct native *n, struct nmap *m)
{
    struct nmap *old = __atomic_exchange_n(&n->map, m, __ATOMIC_ACQ_REL);
    if (old) {
        old->retired_next = n->retired;
        n->retired = old;
        n->retired_bytes += sizeof(*old) + old->n * sizeof(struct nrun);
    }
}

static void map_free_retired(struct native *n)
{
    while (n->retired) {
        struct nmap *r = n->retired;
        n->retired = r->retired_next;
        free(r);
    }
    n->retired_bytes = 0;
}

static struct nmap *map_new(size_t n)
{
    struct nmap *m = malloc(sizeof(*m) + (n ? n : 1) * sizeof(struct nrun));
    if (m) {
        m->retired_next = NULL;
        m->n = n;
    }
    return m;
}

/* Every run mapped again with MAP_FIXED (an atomic replacement: a host
 * thread reading the parameter pages meanwhile never finds them
 * unmapped): RAM from the machine memfd, PoD gfns as placeholders (when
 * this host has a userfaultfd; else PROT_NONE, and a touch is an error),
 * every gap PROT_NONE.  Every vCPU is parked.  On failure the whole range
 * is PROT_NONE. */
static long native_sync(struct guest_exec *x)
{
    struct native *n = (struct native *)x;
    struct ncollect c = {.top = n->top, .placeholders = n->pod_uffd >= 0};
    /* d->lock for the whole sync (then n->mu, the order pod_mapped takes
     * them in): the PoD fault server maps nothing between the walk and
     * the mappings */
    pthread_mutex_lock(&n->d->lock);
    pthread_mutex_lock(&n->mu);
    map_free_retired(n); /* no reader left: the vCPUs are parked */
    int rc = p2m_for_each_leaf(n->d->p2m, 0, P2M_GFN_LIMIT, ncollect_leaf, &c);
    long pages = 0;
    uint64_t at = LOW_GPA;
    struct nmap *cur = n->map, *m = rc == 0 ? map_new(c.n) : NULL;
    if (rc == 0 && !m)
        rc = -ENOMEM;
    if (rc == 0) {
        memcpy(m->v, c.v, c.n * sizeof(*c.v));
        for (size_t i = 0; i < c.n; i++)
            pages += c.v[i].pod ? 0 : (long)(c.v[i].bytes >> PAGE_SHIFT);
    }
    free(c.v);
    if (rc == 0 && cur && cur->n == m->n && memcmp(cur->v, m->v, m->n * sizeof(*m->v)) == 0) {
        /* nothing moved (a log-dirty change, a harvest): keep the mappings,
         * and with them what the host and the dirty log know of them */
        free(m);
        pthread_mutex_unlock(&n->mu);
        pthread_mutex_unlock(&n->d->lock);
        return pages;
    }
    if (rc == 0 && n->logging) {
        /* mapping again forgets what was written: collect it first */
        rc = wp_scan(n, n->pending);
    }
    for (size_t i = 0; rc == 0 && i <= m->n; i++) {
        uint64_t lo = i < m->n ? m->v[i].gpa : n->top;
        if (lo > at && map_none(at, lo) == MAP_FAILED) {
            rc = -errno;
            break;
        }
        if (i == m->n)
            break;
        const struct nrun *r = &m->v[i];
        void *q = r->pod ? map_placeholder(r->gpa, r->bytes)
                         : mmap((void *)(uintptr_t)r->gpa, r->bytes,
                                PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED,
                                n->d->m->fd, (off_t)machine_offset(r->mfn));
        if (q == MAP_FAILED) {
            rc = -errno;
            break;
        }
        if (!r->pod)
            (void)madvise(q, r->bytes, MADV_HUGEPAGE);
        rc = uffd_apply(n, r);
        at = r->gpa + r->bytes;
    }
    if (rc < 0) {
        (void)map_none(LOW_GPA, n->top);
        free(m);
        m = map_new(0);
    }
    map_publish(n, m);
    pthread_mutex_unlock(&n->mu);
    pthread_mutex_unlock(&n->d->lock);
    return rc < 0 ? rc : pages;
}

static void *native_gpa_ptr(struct guest_exec *x, uint64_t gpa)
{
    struct native *n = (struct native *)x;
    return run_find(n, gpa) ? (void *)(uintptr_t)gpa : NULL;
}

/* ---- populate-on-demand: the fault server's side ------------------------------- */

static size_t native_retired(struct guest_exec *x)
{
    return ((struct native *)x)->retired_bytes;
}

static int native_pod_fd(struct guest_exec *x)
{
    return ((struct native *)x)->pod_uffd;
}

static uint64_t native_hva_gfn(struct guest_exec *x, uint64_t hva)
{
    struct native *n = (struct native *)x;
    return hva >= LOW_GPA && hva < n->top ? hva >> PAGE_SHIFT : INVALID_GFN;
}

static uint64_t native_gfn_hva(struct guest_exec *x, uint64_t gfn)
{
    (void)x;
    return gfn << PAGE_SHIFT;
}

/* gfn's leaf [gfn, gfn + 2^order) became RAM at mfn (d->lock held, vCPUs
 * running): map it over its placeholder and publish runs that say so. */
static int native_pod_mapped(struct guest_exec *x, uint64_t gfn, unsigned order, mfn_t mfn)
{
    struct native *n = (struct native *)x;
    uint64_t lo = gfn << PAGE_SHIFT, bytes = order_pages(order) << PAGE_SHIFT;
    pthread_mutex_lock(&n->mu);
    const struct nmap *cur = n->map;
    const struct nrun *r = map_find(cur, lo);
    int rc = 0;
    if (!r || !r->pod || lo + bytes > r->gpa + r->bytes) {
        rc = -EINVAL; /* not a placeholder here: a sync will map it */
        goto out;
    }
    void *q = mmap((void *)(uintptr_t)lo, bytes, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_SHARED | MAP_FIXED, n->d->m->fd, (off_t)machine_offset(mfn));
    if (q == MAP_FAILED) {
        rc = -errno;
        goto out;
    }
    (void)madvise(q, bytes, MADV_HUGEPAGE);
    struct nmap *m = map_new(cur->n + 2);
    if (!m) {
        rc = -ENOMEM;
        goto out;
    }
    size_t k = 0, at = (size_t)(r - cur->v);
    for (size_t i = 0; i < at; i++)
        m->v[k++] = cur->v[i];
    if (lo > r->gpa)
        m->v[k++] = (struct nrun){r->gpa, lo - r->gpa, 0, 1};
    struct nrun ram = {lo, bytes, mfn, 0};
    m->v[k++] = ram;
    if (lo + bytes < r->gpa + r->bytes)
        m->v[k++] = (struct nrun){lo + bytes, r->gpa + r->bytes - lo - bytes, 0, 1};
    for (size_t i = at + 1; i < cur->n; i++)
        m->v[k++] = cur->v[i];
    m->n = k;
    map_publish(n, m);
    rc = uffd_apply(n, &ram);
out:
    pthread_mutex_unlock(&n->mu);
    return rc;
}

/* ---- vCPUs ------------------------------------------------------------------- */

static int native_reset(struct guest_exec *x, unsigned i, uint64_t entry, uint64_t rsp,
                        uint64_t rdi)
{
    struct native *n = (struct native *)x;
    if (i >= n->nr)
        return -EINVAL;
    struct ncpu *c = &n->cpu[i];
    if (c->thread_known)
        return -EBUSY; /* a native vCPU's context cannot be set from outside */
    c->entry = entry;
    c->rsp = rsp;
    c->rdi = rdi;
    c->reset = true;
    return 0;
}

static int native_run(struct guest_exec *x, unsigned i, struct guest_exit *ex)
{
    struct native *n = (struct native *)x;
    struct ncpu *c = &n->cpu[i];
    if (!c->reset) {
        /* left the guest for good (DONE, fault, stop): nothing to resume */
        ex->kind = GUEST_EXIT_ERROR;
        ex->err = -ESRCH;
        snprintf(ex->what, sizeof(ex->what), "the native vCPU cannot resume after it left");
        return 0;
    }
    if (!c->altstack) {
        c->altstack = malloc(ALTSTACK_BYTES);
        if (!c->altstack)
            return -ENOMEM;
        stack_t ss = {.ss_sp = c->altstack, .ss_size = ALTSTACK_BYTES};
        if (sigaltstack(&ss, &c->old_ss) < 0)
            return -errno;
    }
    c->thread = pthread_self();
    __atomic_store_n(&c->thread_known, 1, __ATOMIC_RELEASE);
    cur_cpu = c;
    c->ex = ex;
    c->reset = false;
    if (sigsetjmp(c->jb, 1) == 0) {
        c->in_guest = 1;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        /* a kick between the loop's look and here parks in the handler */
        if (__atomic_load_n(&n->x.g->halt, __ATOMIC_ACQUIRE)) {
            c->in_guest = 0;
            ex->kind = GUEST_EXIT_KICK;
            return 0;
        }
        if (c->restore) {
            /* the handler loads the saved state into its ucontext */
            (void)pthread_kill(pthread_self(), kick_sig);
            ex->kind = GUEST_EXIT_ERROR;
            ex->err = -EIO;
            snprintf(ex->what, sizeof(ex->what), "the saved state was not entered");
            c->in_guest = 0;
            return -EIO;
        }
        hv_native_enter(c->rsp, c->entry, c->rdi);
    }
    /* siglongjmp from the handler: ex is filled */
    c->in_guest = 0;
    return 0;
}

static int native_get_state(struct guest_exec *x, unsigned i, struct hvctx_prog_vcpu *s)
{
    struct native *n = (struct native *)x;
    if (i >= n->nr)
        return -EINVAL;
    struct ncpu *c = &n->cpu[i];
    if (c->restore) { /* not entered yet: the state it was given */
        memcpy(s->regs, c->state.regs, sizeof(s->regs));
        memcpy(s->fpu, c->state.fpu, sizeof(s->fpu));
        return 0;
    }
    /* parked in the kick handler (the guest is paused): its ucontext */
    ucontext_t *uc = __atomic_load_n(&c->parked_uc, __ATOMIC_ACQUIRE);
    if (!uc && c->reset && !__atomic_load_n(&c->in_guest, __ATOMIC_ACQUIRE)) {
        /* not entered yet (paused before its first run): its entry */
        uint64_t regs[18] = {0};
        regs[5] = c->rdi;
        regs[6] = c->rsp;
        regs[16] = c->entry;
        regs[17] = 0x202; /* IF, reserved bit 1 */
        memcpy(s->regs, regs, sizeof(regs));
        uint16_t fcw = 0x37f;
        uint32_t mxcsr = 0x1f80;
        memset(s->fpu, 0, sizeof(s->fpu));
        memcpy(s->fpu + 128, &fcw, 2);
        memcpy(s->fpu + 408, &mxcsr, 4);
        return 0;
    }
    if (!uc)
        return -ESRCH; /* not in guest code (finished or failed) */
    save_state(uc, s);
    return 0;
}

static int native_set_state(struct guest_exec *x, unsigned i, const struct hvctx_prog_vcpu *s)
{
    struct native *n = (struct native *)x;
    if (i >= n->nr)
        return -EINVAL;
    struct ncpu *c = &n->cpu[i];
    if (c->thread_known)
        return -EBUSY;
    /* the native backend runs guest code as host code: never enter it
     * anywhere but guest RAM, on a stack in guest RAM */
    uint64_t regs[18];
    memcpy(regs, s->regs, sizeof(regs));
    if (!run_find(n, regs[16]) || !run_find(n, regs[6] - 8))
        return -EPERM;
    c->state = *s;
    c->restore = true;
    c->reset = true;
    return 0;
}

static void native_kick(struct guest_exec *x, unsigned i)
{
    struct native *n = (struct native *)x;
    struct ncpu *c = &n->cpu[i];
    if (__atomic_load_n(&c->thread_known, __ATOMIC_ACQUIRE))
        (void)pthread_kill(c->thread, kick_sig);
}

static int native_host_mapping(struct guest_exec *x, uint64_t *rss, uint64_t *pmd)
{
    struct native *n = (struct native *)x;
    struct host_mapping hm;
    int rc = host_mapping_measure(LOW_GPA, n->top, &hm);
    *rss = hm.rss_bytes;
    *pmd = hm.pmd_mapped_bytes;
    return rc;
}

static void native_thread_exit(struct guest_exec *x, unsigned i)
{
    struct native *n = (struct native *)x;
    struct ncpu *c = &n->cpu[i];
    /* give the thread its old alternate stack back: whoever set it up
     * (ASan) frees it when the thread ends */
    if (c->altstack)
        (void)sigaltstack(&c->old_ss, NULL);
    cur_cpu = NULL;
}

/* ---- the dirty log ------------------------------------------------------------ */

/* PAGEMAP_SCAN over [lo, hi): OR the pages written since the last scan
 * into bm (a bit per gfn; NULL: forget them) and protect them again. */
static int wp_scan_range(struct native *n, uint64_t lo, uint64_t hi, uint64_t *bm)
{
    if (n->pagemap < 0)
        return 0; /* not logging */
    struct pm_scan_arg a = {
        .size = sizeof(a),
        .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        .start = lo,
        .end = hi,
        .vec = (uint64_t)(uintptr_t)n->vec,
        .vec_len = SCAN_VEC,
        .category_mask = PAGE_IS_WRITTEN,
        .return_mask = PAGE_IS_WRITTEN,
    };
    for (;;) {
        long k = ioctl(n->pagemap, PAGEMAP_SCAN, &a);
        if (k < 0)
            return -errno;
        for (long r = 0; bm && r < k; r++)
            for (uint64_t gfn = n->vec[r].start >> PAGE_SHIFT;
                 gfn < n->vec[r].end >> PAGE_SHIFT; gfn++)
                bm[gfn / 64] |= 1ULL << (gfn % 64);
        if (a.walk_end >= hi || (k < SCAN_VEC && a.walk_end == 0))
            return 0;
        a.start = a.walk_end;
    }
}

/* Every RAM run (placeholders have no page to protect: a touch there is a
 * missing-page fault, and the page it gets is logged when it is mapped). */
static int wp_scan(struct native *n, uint64_t *bm)
{
    const struct nmap *m = n->map;
    for (size_t i = 0; m && i < m->n; i++) {
        if (m->v[i].pod)
            continue;
        int rc = wp_scan_range(n, m->v[i].gpa, m->v[i].gpa + m->v[i].bytes, bm);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void log_off(struct native *n)
{
    n->logging = false;
    const struct nmap *m = n->map;
    for (size_t i = 0; m && i < m->n && n->uffd >= 0; i++)
        if (!m->v[i].pod)
            uffd_unregister(n->uffd, m->v[i].gpa, m->v[i].bytes);
    if (n->pagemap >= 0)
        close(n->pagemap);
    n->pagemap = -1;
    free(n->pending);
    free(n->vec);
    n->pending = NULL;
    n->vec = NULL;
}

static int native_log_dirty(struct guest_exec *x, bool on)
{
    struct native *n = (struct native *)x;
    pthread_mutex_lock(&n->mu);
    int rc = 0;
    if (!on) {
        log_off(n);
        goto out;
    }
    if (n->logging)
        goto out;
    if (n->uffd < 0) {
        rc = -ENOTSUP; /* before Linux 6.7, or no userfaultfd */
        goto out;
    }
    n->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    n->pending = calloc((size_t)((n->top >> PAGE_SHIFT) + 63) / 64, 8);
    n->vec = calloc(SCAN_VEC, sizeof(*n->vec));
    rc = n->pagemap < 0 ? -errno : (!n->pending || !n->vec) ? -ENOMEM : 0;
    n->logging = rc == 0;
    const struct nmap *m = n->map;
    for (size_t i = 0; rc == 0 && m && i < m->n; i++)
        if (!m->v[i].pod)
            rc = uffd_apply(n, &m->v[i]);
    if (rc < 0)
        log_off(n);
out:
    pthread_mutex_unlock(&n->mu);
    return rc;
}

/* A userfaultfd with these features, or -1 (not available here, or not
 * these features: the dirty log's asynchronous write-protect needs Linux
 * 6.7).  Two per mirror: the dirty log's (RAM, write-protect resolved by
 * the kernel) and PoD's (placeholders: missing pages and writes to the
 * zero page a read mapped, both for the fault server). */
static int uffd_open(uint64_t features)
{
    /* user-mode faults only (the native guest's): allowed without privilege */
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0 && errno == EINVAL) /* a kernel before 5.11 */
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) == 0)
        return fd;
    close(fd);
    return -1;
}

int native_dirty_log_probe(char *why, size_t len)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0 && errno == EINVAL)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        snprintf(why, len, "userfaultfd: %s%s", strerror(e),
                 e == EPERM ? " (vm.unprivileged_userfaultfd is 0: run as root)" : "");
        return -e;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED |
                                         UFFD_FEATURE_WP_HUGETLBFS_SHMEM};
    int rc = ioctl(fd, UFFDIO_API, &api) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0)
        snprintf(why, len, "this kernel's userfaultfd has no asynchronous write-protect "
                 "(Linux 6.7+), which the native backend's dirty log needs");
    return rc == -EINVAL ? -ENOTSUP : rc;
}

static uint64_t native_dirty_gfns(struct guest_exec *x)
{
    return ((struct native *)x)->top >> PAGE_SHIFT;
}

static int native_harvest(struct guest_exec *x, uint64_t *bm, uint64_t nr)
{
    struct native *n = (struct native *)x;
    pthread_mutex_lock(&n->mu);
    int rc = !n->logging || nr < n->top >> PAGE_SHIFT ? -EINVAL : wp_scan(n, bm);
    if (rc == 0) { /* on failure pending is kept: the next harvest reports it */
        size_t words = (size_t)((n->top >> PAGE_SHIFT) + 63) / 64;
        for (size_t w = 0; w < words; w++) {
            bm[w] |= n->pending[w];
            n->pending[w] = 0;
        }
    }
    pthread_mutex_unlock(&n->mu);
    return rc;
}

static const char *native_dirty_source(struct guest_exec *x)
{
    (void)x;
    return "userfaultfd asynchronous write-protect + PAGEMAP_SCAN on the native mirror";
}

static void native_destroy(struct guest_exec *x)
{
    struct native *n = (struct native *)x;
    log_off(n);
    if (n->uffd >= 0)
        close(n->uffd); /* unregisters everything */
    if (n->pod_uffd >= 0)
        close(n->pod_uffd);
    if (n->reserved)
        munmap((void *)(uintptr_t)LOW_GPA, n->top - LOW_GPA);
    for (unsigned i = 0; i < n->nr; i++)
        free(n->cpu[i].altstack); /* the threads are joined: no altstack in use */
    map_free_retired(n);
    free(n->map);
    pthread_mutex_destroy(&n->mu);
    free(n);
}

static const struct guest_exec_ops native_ops = {
    .name = "native",
    .reset = native_reset,
    .run = native_run,
    .kick = native_kick,
    .sync = native_sync,
    .gpa_ptr = native_gpa_ptr,
    .mmu_pages = NULL,
    .host_mapping = native_host_mapping,
    .get_state = native_get_state,
    .set_state = native_set_state,
    .thread_exit = native_thread_exit,
    .log_dirty = native_log_dirty,
    .harvest = native_harvest,
    .dirty_gfns = native_dirty_gfns,
    .dirty_source = native_dirty_source,
    .pod_fd = native_pod_fd,
    .hva_gfn = native_hva_gfn,
    .gfn_hva = native_gfn_hva,
    .pod_mapped = native_pod_mapped,
    .retired_bytes = native_retired,
    .destroy = native_destroy,
};

struct ntop {
    gfn_t end;
};
static int ntop_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                     ept_entry_t *e)
{
    struct ntop *t = ctx;
    (void)mfn, (void)e;
    if ((p2m_is_ram(type) || type == p2m_pod) && gfn + order_pages(order) > t->end)
        t->end = gfn + order_pages(order);
    return 0;
}

int native_exec_create(struct guest *g, struct domain *d, unsigned nr, struct guest_exec **out,
                       char *why, size_t len)
{
    struct native *n = hv_calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->x.ops = &native_ops;
    n->x.g = g;
    n->x.guest_page_order = 0;
    n->d = d;
    n->nr = nr;
    n->pagemap = -1;
    pthread_mutex_init(&n->mu, NULL);
    n->uffd = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED |
                        UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    n->pod_uffd = uffd_open(UFFD_FEATURE_THREAD_ID);
    for (unsigned i = 0; i < nr; i++) {
        n->cpu[i].n = n;
        n->cpu[i].i = i;
    }
    struct ntop t = {0};
    pthread_mutex_lock(&d->lock);
    (void)p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, ntop_leaf, &t);
    /* a guest resumed from saved memory may have ballooned out the top of
     * its workload memory: the mirror covers its extents as its parameter
     * page names them (untrusted: only the reservation grows, by at most
     * the machine's size), so that a deflate there can be mapped */
    enum p2m_type pt;
    mfn_t pm = p2m_get_entry(d->p2m, HVG_PARAM_GPA(0) >> PAGE_SHIFT, &pt, NULL);
    if (p2m_is_ram(pt)) {
        struct hvg_param hp;
        memcpy(&hp, machine_ptr(d->m, pm), sizeof(hp));
        for (uint32_t k = 0; hp.magic == HVG_MAGIC && k < hp.nr_extents &&
                             k < HVG_MAX_EXTENTS; k++) {
            gfn_t e = hp.ext[k].gpa >> PAGE_SHIFT;
            if (hp.ext[k].pages <= d->m->nr_frames && e < P2M_GFN_LIMIT - hp.ext[k].pages &&
                e + hp.ext[k].pages > t.end && e + hp.ext[k].pages - t.end <= d->m->nr_frames)
                t.end = e + hp.ext[k].pages;
        }
    }
    pthread_mutex_unlock(&d->lock);
    n->top = ((t.end << PAGE_SHIFT) + (2 * MiB) - 1) & ~(2 * MiB - 1);
    if (n->top <= LOW_GPA) {
        snprintf(why, len, "the domain has no RAM above gpa %#llx", (unsigned long long)LOW_GPA);
        native_destroy(&n->x);
        return -EINVAL;
    }
    void *p = mmap((void *)(uintptr_t)LOW_GPA, n->top - LOW_GPA, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED || p != (void *)(uintptr_t)LOW_GPA) {
        int e = p == MAP_FAILED ? errno : EEXIST;
        if (p != MAP_FAILED)
            munmap(p, n->top - LOW_GPA); /* an old kernel ignored NOREPLACE */
        snprintf(why, len, "the native backend needs host addresses [%#llx, %#llx) for the "
                 "guest-physical space, and %s (under ASan only the low 2 GiB are free: use a "
                 "smaller guest or the kvm backend)", (unsigned long long)LOW_GPA,
                 (unsigned long long)n->top, e == EEXIST ? "part of it is in use" : strerror(e));
        native_destroy(&n->x);
        return -ENOSPC;
    }
    n->reserved = true;
    long s = native_sync(&n->x);
    if (s < 0) {
        snprintf(why, len, "mirroring the p2m at gpa == host address: %s", strerror((int)-s));
        native_destroy(&n->x);
        return (int)s;
    }
    install_handlers();
    *out = &n->x;
    return 0;
}
