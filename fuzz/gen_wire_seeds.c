/*
 * gen_wire_seeds.c - the wire fuzzer's seed corpus: one whole, successful
 * migration of wire_common.h's guest, seen from each side.  The sender
 * runs against a scripted receiver (READY, RESULT {ok} with the guest's
 * digest, RESUMED: the sender seed) and what it writes (HELLO, DATA,
 * DONE, COMMIT) is the receiver seed; compressed once more.  Usage:
 * gen_wire_seeds DIR.
 */
#include <endian.h>
#include <stdio.h>
#include <xxhash.h>

#include "wire_common.h"

static size_t put_frame(uint8_t *out, uint16_t type, const void *body, uint32_t len)
{
    struct mig_frame h = {htole32(MIG_MAGIC), htole16(type), 0, htole32(len), htole32(len),
                          htole64(XXH3_64bits(body, len))};
    memcpy(out, &h, sizeof(h));
    if (len)
        memcpy(out + sizeof(h), body, len);
    return sizeof(h) + len;
}

/* What a receiver answers a migration it takes: READY {flags, SYNC and
 * page tables taken}, SYNCED {1} (the sender's one SYNC), RESULT {ok, the
 * digest}, RESUMED.  Its length. */
static size_t receiver_reply(uint8_t *out, uint32_t flags, uint64_t digest, uint64_t pages)
{
    struct mig_hello ready = {htole32(MIG_VERSION),
                              htole32(flags | MIG_HELLO_SYNC | MIG_HELLO_SEGS)};
    uint64_t one = htole64(1);
    size_t n = put_frame(out, MIG_READY, &ready, sizeof(ready));
    n += put_frame(out + n, MIG_SYNCED, &one, sizeof(one));
    struct mig_result res;
    memset(&res, 0, sizeof(res));
    res.verified = htole32(1);
    res.digest = htole64(digest);
    res.pages = htole64(pages);
    n += put_frame(out + n, MIG_RESULT, &res, sizeof(res));
    return n + put_frame(out + n, MIG_RESUMED, NULL, 0);
}

static int write_seed(const char *dir, const char *name, uint8_t side, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputc(side, f) == EOF || fwrite(p, 1, n, f) != n) {
        perror(path);
        return 1;
    }
    return fclose(f) != 0;
}

/* The receiver seed as a post-copy sender would have sent it: HELLO asks
 * for post-copy, and before DONE a PC_PENDING piece names a few pfns. */
static int postcopy_seed(const char *dir, const uint8_t *in, size_t n)
{
    uint8_t *out = malloc(n + 4096);
    size_t o = 0;
    if (!out)
        return 1;
    for (size_t at = 0; at + sizeof(struct mig_frame) <= n;) {
        struct mig_frame h;
        memcpy(&h, in + at, sizeof(h));
        uint32_t len = le32toh(h.wire_len);
        const uint8_t *body = in + at + sizeof(h);
        if (le16toh(h.type) == MIG_HELLO) {
            struct mig_hello hello;
            memcpy(&hello, body, sizeof(hello));
            hello.flags = htole32(le32toh(hello.flags) | MIG_HELLO_POSTCOPY);
            o += put_frame(out + o, MIG_HELLO, &hello, sizeof(hello));
        } else {
            if (le16toh(h.type) == MIG_DONE) {
                struct {
                    struct mig_pc_pending h;
                    uint64_t w[2];
                } pp = {{htole32(2), htole32(1), htole64(1024)},
                        {htole64(0xf0f0ULL), htole64(1ULL << 63)}};
                o += put_frame(out + o, MIG_PC_PENDING, &pp, sizeof(pp));
            }
            memcpy(out + o, in + at, sizeof(h) + len);
            o += sizeof(h) + len;
        }
        at += sizeof(h) + len;
    }
    int rc = write_seed(dir, "receiver_postcopy", 0, out, o);
    free(out);
    return rc;
}

/* A parallel-channels migration: each further channel's receiver says
 * READY {channels}; what the sender writes on it is kept. */
struct chan_seed {
    struct script_chan sc[MIG_MAX_CHANNELS];
    uint8_t reply[64];
    size_t reply_len;
    unsigned n;
};

static struct chan *seed_channel(void *ctx, char *err, size_t len)
{
    struct chan_seed *cs = ctx;
    (void)err;
    (void)len;
    uint8_t *out = malloc(16 << 20);
    if (!out)
        return NULL;
    script_init(&cs->sc[cs->n], cs->reply, cs->reply_len, out, 16 << 20);
    return &cs->sc[cs->n++].c;
}

/* The receiver seed of a migration over 3 channels (WIRE_MULTI). */
static int channels_seed(const char *dir)
{
    struct machine *m;
    struct domain *d;
    struct guest *g;
    if (machine_create(&m, 64 * MiB, FRAME_POLICY_FRAGPOOL) < 0 || wire_guest(m, &d, &g) < 0)
        return 1;
    uint64_t pages, digest = migrate_digest(d, &pages);
    static uint8_t reply[4096];
    static struct chan_seed cs;
    struct mig_hello ready = {htole32(MIG_VERSION), htole32(MIG_HELLO_CHANNELS)};
    cs.reply_len = put_frame(cs.reply, MIG_READY, &ready, sizeof(ready));
    size_t rl = receiver_reply(reply, MIG_HELLO_CHANNELS, digest, pages);
    uint8_t *out0 = malloc(16 << 20);
    struct script_chan sc;
    script_init(&sc, reply, rl, out0, 16 << 20);
    struct migrate_opts o = {.timeout_ms = 1000, .channels = 3, .open_channel = seed_channel,
                             .open_ctx = &cs};
    struct migrate_report *rep = calloc(1, sizeof(*rep));
    if (!out0 || !rep || migrate_send(g, &sc.c, &o, rep) != 0 || rep->channels != 3) {
        fprintf(stderr, "gen_wire_seeds: channels migration failed: %s\n", rep ? rep->err : "");
        return 1;
    }
    size_t total = 4 + sc.out_len;
    for (unsigned i = 0; i < cs.n; i++)
        total += 4 + cs.sc[i].out_len;
    uint8_t *seed = malloc(total), *p = seed;
    if (!seed)
        return 1;
    for (unsigned i = 0; i <= cs.n; i++) {
        struct script_chan *c = i ? &cs.sc[i - 1] : &sc;
        uint32_t n = htole32((uint32_t)c->out_len);
        memcpy(p, &n, 4);
        memcpy(p + 4, c->out, c->out_len);
        p += 4 + c->out_len;
    }
    int rc = write_seed(dir, "receiver_channels", WIRE_MULTI, seed, total);
    free(seed);
    for (unsigned i = 0; i < cs.n; i++)
        free(cs.sc[i].out);
    free(out0);
    free(rep);
    guest_destroy(g);
    domain_destroy(d);
    machine_destroy(m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_wire_seeds DIR\n");
        return 2;
    }
    struct machine *m;
    if (machine_create(&m, 64 * MiB, FRAME_POLICY_FRAGPOOL) < 0)
        return 1;
    int rc = 0;
    for (int z = 0; z < 2; z++) {
        struct domain *d;
        struct guest *g;
        if (wire_guest(m, &d, &g) < 0)
            return 1;
        uint64_t pages;
        uint64_t digest = migrate_digest(d, &pages);
        static uint8_t reply[4096];
        size_t rl = receiver_reply(reply, 0, digest, pages);
        size_t cap = 16 << 20;
        uint8_t *out = malloc(cap);
        struct script_chan sc;
        script_init(&sc, reply, rl, out, cap);
        struct migrate_opts o = {.timeout_ms = 1000, .compress = z == 1};
        struct migrate_report *rep = calloc(1, sizeof(*rep));
        if (!out || !rep || migrate_send(g, &sc.c, &o, rep) != 0) {
            fprintf(stderr, "gen_wire_seeds: migration failed: %s\n", rep ? rep->err : "");
            return 1;
        }
        rc |= write_seed(argv[1], z ? "receiver_zstd" : "receiver", 0, out, sc.out_len);
        if (!z)
            rc |= postcopy_seed(argv[1], out, sc.out_len);
        if (!z)
            rc |= write_seed(argv[1], "sender", 1, reply, rl);
        free(rep);
        free(out);
        guest_destroy(g);
        domain_destroy(d);
    }
    machine_destroy(m);
    return rc | channels_seed(argv[1]);
}
