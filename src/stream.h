/*
 * stream.h - the migration stream: wire format, byte sinks/sources, record
 * writer and reader.  (docs/stream.md has the octet diagrams.)
 *
 * Layout (libxc migration stream v2/v3, x86 HVM):
 *
 *   image header   24 bytes, big-endian
 *   domain header  16 bytes, little-endian (as is everything after it)
 *   record*        8-byte header {type u32, body_length u32}, then the body
 *                  zero-padded to a multiple of 8; body_length excludes the
 *                  padding and is at most STREAM_MAX_BODY (128 MiB)
 *
 * A record type with bit 31 set is optional: a reader that does not know it
 * skips it.  hugevm's own optional records use types 0x8048560x ("HV").
 *
 * Byte sinks and sources are a struct stream_io of callbacks, so the same
 * writer and reader run over a memory buffer, a file and (later) a socket.
 *
 * Reader errors: every error the reader (or restore, through
 * stream_reader_fail) reports names the record by index (0 = the first
 * record after the domain header), its type and the byte offset of its
 * header, plus the offset of the offending byte when it is known.  Limits
 * (lengths, counts) are checked before the reader allocates anything.
 */
#ifndef HUGEVM_STREAM_H
#define HUGEVM_STREAM_H

#include "common.h"

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t by value */
#include <xxhash.h>
#include <endian.h>

/* ---- wire format ---------------------------------------------------------- */

#define STREAM_MARKER 0xffffffffffffffffULL
#define STREAM_ID 0x58454e46u /* "XENF" */
#define STREAM_VERSION 3u
#define STREAM_OPT_BIG_ENDIAN 0x1u
#define STREAM_DHDR_X86_HVM 2u
#define STREAM_MAX_BODY (128u * 1024u * 1024u)
#define STREAM_REC_OPTIONAL 0x80000000u

enum stream_rec_type {
    STREAM_REC_END = 0x00000000u,
    STREAM_REC_PAGE_DATA = 0x00000001u,
    STREAM_REC_X86_PV_INFO = 0x00000002u,
    STREAM_REC_X86_PV_P2M_FRAMES = 0x00000003u,
    STREAM_REC_X86_PV_VCPU_BASIC = 0x00000004u,
    STREAM_REC_X86_PV_VCPU_EXTENDED = 0x00000005u,
    STREAM_REC_X86_PV_VCPU_XSAVE = 0x00000006u,
    STREAM_REC_SHARED_INFO = 0x00000007u,
    STREAM_REC_X86_TSC_INFO = 0x00000008u,
    STREAM_REC_HVM_CONTEXT = 0x00000009u,
    STREAM_REC_HVM_PARAMS = 0x0000000au,
    STREAM_REC_TOOLSTACK = 0x0000000bu,
    STREAM_REC_X86_PV_VCPU_MSRS = 0x0000000cu,
    STREAM_REC_VERIFY = 0x0000000du,
    STREAM_REC_CHECKPOINT = 0x0000000eu,
    STREAM_REC_CHECKPOINT_DIRTY_PFN_LIST = 0x0000000fu,
    STREAM_REC_STATIC_DATA_END = 0x00000010u,
    STREAM_REC_X86_CPUID_POLICY = 0x00000011u,
    STREAM_REC_X86_MSR_POLICY = 0x00000012u,
};
/* hugevm optional records (bit 31 set: outside an enum's int range) */
#define STREAM_REC_HV_CONFIG 0x80485601u /* hugevm context blob: domain config, PoD */
#define STREAM_REC_HV_LAYOUT 0x80485602u /* the source's 1G and 2M RAM extents */
#define STREAM_REC_HV_CHECKSUM 0x80485603u /* xxh64 of every byte before it */
/* "PAGE_DATA", "0x80485602 (hugevm LAYOUT)", "unknown" ... */
const char *stream_rec_name(uint32_t type);

/* PAGE_DATA pfn entries: pfn in bits 0-51, type in bits 60-63. */
#define STREAM_PFN_MASK ((1ULL << 52) - 1)
#define STREAM_PFN_TYPE_SHIFT 60
enum stream_page_type {
    STREAM_PAGE_NOTAB = 0x0,  /* normal page: 4096 bytes of data follow */
    STREAM_PAGE_L1TAB = 0x1,  /* PV page-table types 1-4: not valid for HVM */
    STREAM_PAGE_L4TAB = 0x4,
    STREAM_PAGE_BROKEN = 0xd, /* broken page, no data */
    STREAM_PAGE_XALLOC = 0xe, /* allocate, no data (hugevm: an all-zero page) */
    STREAM_PAGE_XTAB = 0xf,   /* hole: not populated, no data */
};
static inline uint64_t stream_pfn_entry(gfn_t pfn, unsigned type)
{
    return (pfn & STREAM_PFN_MASK) | ((uint64_t)type << STREAM_PFN_TYPE_SHIFT);
}
static inline gfn_t stream_entry_pfn(uint64_t e) { return e & STREAM_PFN_MASK; }
static inline unsigned stream_entry_type(uint64_t e)
{
    return (unsigned)(e >> STREAM_PFN_TYPE_SHIFT);
}
/*
 * Memory digest (migration, MIG_VERSION 4): the sum modulo 2^64 of one term
 * per RAM pfn, stream_digest_term(pfn, XXH3-64 of the page's 4096 bytes).
 * A sum does not depend on the order in which pages arrive, so both sides
 * keep it up to date as pages are sent and received (a page sent again
 * replaces its term; a pfn sent as a hole removes it) and nothing reads all
 * of memory at the pause.  A term is never 0 (0 marks "no term").  Against
 * faults (not an adversary: TLS is that) a wrong, missing or extra term
 * changes the sum except with probability 2^-64.
 */
static inline uint64_t stream_digest_term(gfn_t pfn, uint64_t page_hash)
{
    uint64_t rec[2] = {htole64(pfn), htole64(page_hash)};
    uint64_t t = XXH3_64bits(rec, sizeof(rec));
    return t ? t : 1;
}
/* XXH3-64 of an all-zero page. */
uint64_t stream_zero_page_hash(void);

/* Bits 52-59 must be zero. */
#define STREAM_PFN_RESERVED_MASK (0xffULL << 52)

/* Image header: every field big-endian on the wire. */
struct stream_image_header {
    uint64_t marker;   /* STREAM_MARKER */
    uint32_t id;       /* STREAM_ID */
    uint32_t version;  /* 2 or 3 */
    uint16_t options;  /* bit 0: big-endian records (hugevm: never) */
    uint16_t reserved1;
    uint32_t reserved2;
};
_Static_assert(sizeof(struct stream_image_header) == 24, "image header");

struct stream_domain_header {
    uint32_t type;       /* STREAM_DHDR_X86_HVM */
    uint16_t page_shift; /* 12 */
    uint16_t reserved;
    uint32_t xen_major;  /* the producer's version */
    uint32_t xen_minor;
};
_Static_assert(sizeof(struct stream_domain_header) == 16, "domain header");

struct stream_rhdr {
    uint32_t type;
    uint32_t length; /* body bytes, excluding padding */
};
_Static_assert(sizeof(struct stream_rhdr) == 8, "record header");

struct stream_page_data_header {
    uint32_t count; /* > 0 */
    uint32_t reserved;
    /* uint64_t pfn[count]; then 4096 bytes per data-carrying entry */
};
_Static_assert(sizeof(struct stream_page_data_header) == 8, "PAGE_DATA header");

struct stream_x86_tsc_info {
    uint32_t mode;
    uint32_t khz;
    uint64_t nsec;
    uint32_t incarnation;
    uint32_t reserved;
};
_Static_assert(sizeof(struct stream_x86_tsc_info) == 24, "X86_TSC_INFO");

struct stream_hvm_params_header {
    uint32_t count;
    uint32_t reserved;
    /* struct stream_hvm_param param[count]; */
};
struct stream_hvm_param {
    uint64_t index;
    uint64_t value;
};
_Static_assert(sizeof(struct stream_hvm_params_header) == 8, "HVM_PARAMS header");
_Static_assert(sizeof(struct stream_hvm_param) == 16, "HVM_PARAMS entry");

/* HV_LAYOUT body: count u32, reserved u32, count x u64 extent entries
 * (gfn in bits 0-51, order in bits 56-63; orders 9 and 18 only). */
struct stream_hv_layout_header {
    uint32_t count;
    uint32_t reserved;
};
_Static_assert(sizeof(struct stream_hv_layout_header) == 8, "HV_LAYOUT header");
#define STREAM_EXTENT_ORDER_SHIFT 56
static inline uint64_t stream_extent_entry(gfn_t gfn, unsigned order)
{
    return (gfn & STREAM_PFN_MASK) | ((uint64_t)order << STREAM_EXTENT_ORDER_SHIFT);
}

/* HV_CHECKSUM body: the xxh64 (seed 0) of bytes [0, covered) of the
 * stream, covered being the offset of this record's header.  An unknown
 * algo is skipped like an unknown optional record. */
#define STREAM_CSUM_XXH64 1u
struct stream_hv_checksum {
    uint32_t algo;     /* STREAM_CSUM_XXH64 */
    uint32_t reserved; /* 0 */
    uint64_t covered;  /* bytes hashed: the offset of this record */
    uint64_t hash;
};
_Static_assert(sizeof(struct stream_hv_checksum) == 24, "HV_CHECKSUM");

/* ---- byte sinks and sources ---------------------------------------------- */

struct stream_io {
    /* Read up to len (> 0) bytes: returns the count read (> 0), 0 at the
     * end of the stream, or -errno. */
    long (*read)(void *ctx, void *buf, size_t len);
    /* Write all len bytes: 0 or -errno. */
    int (*write)(void *ctx, const void *buf, size_t len);
    /* Push buffered bytes out (may be NULL): 0 or -errno. */
    int (*flush)(void *ctx);
    /* Optional (a sink that hashes what it holds: migration's frames):
     * write one page (PAGE_SIZE bytes, which may change meanwhile: a
     * running guest's) and put in *hash the XXH3-64 of exactly the bytes
     * written.  0 or -errno. */
    int (*write_page)(void *ctx, const void *page, uint64_t *hash);
    /* Optional (a source that hashed what it delivered): the XXH3-64 of
     * the PAGE_SIZE stream bytes from stream offset `offset` on, if it
     * hashed exactly those as one page lately; false: hash them yourself. */
    bool (*page_hash)(void *ctx, uint64_t offset, uint64_t *hash);
    void *ctx;
};

/* A memory buffer: a source over [buf, buf + len) or a growing sink. */
struct stream_mem {
    uint8_t *buf;
    size_t len; /* bytes held (sink) / available (source) */
    size_t cap;
    size_t pos; /* read position (source) */
    bool owned; /* buf was allocated by the sink */
};
void stream_mem_source(struct stream_mem *m, struct stream_io *io,
                       const void *buf, size_t len);
void stream_mem_sink(struct stream_mem *m, struct stream_io *io);
/* Pre-size a sink (avoids regrowth copies).  -ENOMEM. */
int stream_mem_reserve(struct stream_mem *m, size_t cap) HV_MUST_CHECK;
void stream_mem_free(struct stream_mem *m);

/* A file descriptor (file, pipe, socket), buffered both ways.  The fd is
 * not closed by stream_fd_free.  -ENOMEM.
 *
 * Reading a regular file maps it (read-only, shared) from the fd's offset
 * at the first read and copies out of the page cache with copy_bulk: a
 * read() would copy twice as slowly (cached stores) as the mapped copy.
 * stream_fd_free puts the fd's offset where the reader stopped.  A file
 * that grows is remapped at its old end.  One that another process
 * truncates while it is read would raise SIGBUS in the copy: the copy runs
 * under a guard (a SIGBUS handler, installed once, for faults inside this
 * thread's mapping only; stream.c says why), the mapping is dropped and
 * reading goes on with read() at the same offset, so a shrunk file is a
 * truncated stream (-ENODATA, with the byte offset), never a signal. */
struct stream_fd {
    int fd;
    uint8_t *buf;
    size_t cap, len, pos; /* write: buf[0, len) pending; read: [pos, len) */
    int mapped;           /* 0: not decided yet, 1: reading from map, -1: read() */
    const uint8_t *map;   /* regular file: [0, map_len) of it */
    uint64_t map_len, map_pos;
    unsigned bus_faults;  /* copies the file's truncation cut short (then read()) */
    /* stream_fd_alias: [alias, alias + alias_len) is [0, alias_len) of alias_fd */
    const uint8_t *alias;
    uint64_t alias_len;   /* 0: no alias (or the kernel refused to move bytes) */
    int alias_fd;
    int pipe[2];          /* splice's pipe for reads into the alias (-1: none yet) */
    uint64_t alias_bytes; /* bytes moved inside the kernel through the alias */
};
int stream_fd_open(struct stream_fd *f, struct stream_io *io, int fd) HV_MUST_CHECK;
void stream_fd_free(struct stream_fd *f);
/*
 * Tell f that the bytes at [base, base + len) of this process are also the
 * bytes [0, len) of the file `fd`: a file mapped MAP_SHARED at base (the
 * machine's memfd).  Then a large write (STREAM_FD_DIRECT or more) lying
 * inside that range goes out with sendfile from `fd`, and a large read
 * from a mapped regular file into that range comes in with splice into
 * `fd`: the kernel copies between page caches and never touches the
 * range's user addresses.  The bytes are the same either way; what
 * changes is the cost under a shadow-paging hypervisor (this host's PVM),
 * where the kernel's first access to each 4K page of a user mapping traps
 * (5-16 us, again after every user access to it), so write() of 2 GiB
 * that the process itself filled took 6-10 s against 0.6-1.0 s with
 * sendfile (README: save and restore).  When the kernel refuses the move
 * (an O_APPEND file, a sink sendfile cannot write to), the alias is
 * dropped and the bytes go through write()/the mapping as without it.
 * fd is neither duplicated nor closed: it must stay open while f is used.
 */
void stream_fd_alias(struct stream_fd *f, const void *base, uint64_t len, int fd);

/* ---- writer --------------------------------------------------------------- */

struct stream_writer {
    struct stream_io *io;
    uint64_t offset;   /* bytes written */
    uint64_t records;  /* records written */
    uint32_t body_left; /* of the record being written in parts */
    uint32_t pad;
    bool in_record;
    bool hashing;      /* every byte goes into xxh (stream_writer_hash) */
    XXH64_state_t xxh;
};
void stream_writer_init(struct stream_writer *w, struct stream_io *io);
/* Hash every byte written from now on (call before the headers), for
 * stream_write_checksum. */
void stream_writer_hash(struct stream_writer *w);
/* An HV_CHECKSUM record over every byte written so far (-EINVAL unless
 * hashing since the start). */
int stream_write_checksum(struct stream_writer *w) HV_MUST_CHECK;
/* Image header (version 3) and x86 HVM domain header. */
int stream_write_headers(struct stream_writer *w) HV_MUST_CHECK;
/* A whole record (len <= STREAM_MAX_BODY; body may be NULL when len 0). */
int stream_write_record(struct stream_writer *w, uint32_t type, const void *body,
                        uint32_t len) HV_MUST_CHECK;
/* A record in parts: begin with the exact body length, write exactly that
 * many bytes with stream_write_part, end (which pads). */
int stream_record_begin(struct stream_writer *w, uint32_t type, uint32_t len) HV_MUST_CHECK;
int stream_write_part(struct stream_writer *w, const void *p, size_t len) HV_MUST_CHECK;
/* One page of the record (PAGE_SIZE bytes); *hash gets the XXH3-64 of the
 * bytes written (the sink's copy when it has write_page: a page that
 * changes meanwhile is hashed as it was written, not as it is after). */
int stream_write_page(struct stream_writer *w, const void *page,
                      uint64_t *hash) HV_MUST_CHECK;
int stream_record_end(struct stream_writer *w) HV_MUST_CHECK;
int stream_writer_flush(struct stream_writer *w) HV_MUST_CHECK;

/* ---- reader --------------------------------------------------------------- */

#define STREAM_ERR_LEN 320

struct stream_reader {
    struct stream_io *io;
    uint64_t offset;      /* bytes consumed */
    uint64_t index;       /* index of the current record (0 = first) */
    uint64_t rec_offset;  /* offset of the current record's header */
    uint32_t type;        /* current record */
    uint32_t length;
    uint32_t body_left;   /* unread body bytes (padding excluded) */
    uint32_t pad_left;
    bool in_record;
    bool started;         /* a record header has been read */
    uint32_t version;     /* from the image header */
    struct stream_domain_header dhdr;
    bool hashing;         /* stream_reader_hash: every byte consumed goes into xxh */
    uint64_t hash_before; /* hashing: xxh64 of [0, rec_offset) for an HV_CHECKSUM record */
    XXH64_state_t xxh;
    char err[STREAM_ERR_LEN];
};
void stream_reader_init(struct stream_reader *r, struct stream_io *io);
/* Hash every byte consumed from now on (call before the headers): at an
 * HV_CHECKSUM record header, hash_before holds the hash of the bytes
 * before it. */
void stream_reader_hash(struct stream_reader *r);

/* Read and check both headers.  Errors: -ENODATA (truncated), -EBADMSG
 * (marker, id, options, domain type, page shift), -EPROTONOSUPPORT
 * (version not 2 or 3), or the source's -errno. */
int stream_read_headers(struct stream_reader *r) HV_MUST_CHECK;

/* Skip what is left of the current record, then read the next record
 * header.  -EMSGSIZE when its length is over STREAM_MAX_BODY, -ENODATA at
 * a truncated header. */
int stream_next_record(struct stream_reader *r, struct stream_rhdr *h) HV_MUST_CHECK;
/* Read exactly len bytes of the current body (-EBADMSG past its end,
 * -ENODATA when the stream ends first). */
int stream_read_body(struct stream_reader *r, void *buf, size_t len) HV_MUST_CHECK;
/* The XXH3-64 of the page read lately from stream offset `offset` on, now
 * at `page`: the source's when it hashed it as it arrived (io->page_hash),
 * else computed over `page` (and *own, when not NULL, is set). */
uint64_t stream_page_hash(const struct stream_reader *r, uint64_t offset, const void *page,
                          bool *own);
/* Consume the rest of the body and the padding. */
int stream_skip_body(struct stream_reader *r) HV_MUST_CHECK;

/* Record an error about the current record (or the headers) in r->err:
 * "record #I TYPE (0xT) at offset O: <message>" and return rc.  `at` is the
 * offset of the offending byte (or UINT64_MAX when only the record is
 * known). */
int stream_reader_fail(struct stream_reader *r, int rc, uint64_t at,
                       const char *fmt, ...) HV_PRINTF(4, 5);

#endif
