/* A codec for plain data that keeps shared references shared.
 *
 * Arguments and results travel between interpreters as bytes.  This
 * codec handles the plain types (None, bool, int, float, str, bytes,
 * bytearray, tuple, list, dict -- exact types only) at least as fast as
 * pickle protocol 5, and, unlike pickle, keeps every shared reference
 * shared: a list of 65,536 references to one float travels as one float
 * and one REPEAT, and decodes as fast as `[x] * n`.  Anything else makes
 * the encoder give up, and the caller falls back to pickle.
 *
 * Where the time goes (docs/design.md, "The codec for plain data"): an
 * identity memo of every object costs more than writing the object
 * itself.  So only an object with more than one reference is looked up
 * and numbered: one whose only reference is the container being encoded
 * cannot be met a second time.  That leaves distinct values -- the
 * common case -- at the cost of their bytes.
 *
 * Format: MAGIC, then one value.  A value is a tag byte and its body;
 * lengths and indexes are unsigned LEB128 varints, fixed-size numbers
 * are in the machine's own byte order (both ends are in one process).
 * A tag with T_NUMBERED set gives its object the next number: lists,
 * dicts and scalars when they start, tuples when they end (a tuple
 * exists only once its items do); REF n means "the n-th numbered
 * object".  A tuple that contains itself (through a list or dict)
 * cannot be rebuilt in that order; the encoder detects it and gives up.
 *
 * All functions run under the GIL of the interpreter whose objects they
 * touch; the byte buffers are raw memory (pp_buf) that any interpreter
 * may read. */
#include "pp_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum {
    T_NONE = 0,
    T_TRUE = 1,
    T_FALSE = 2,
    T_INT8 = 3,      /* 1 byte, signed */
    T_INT32 = 4,     /* 4 bytes */
    T_INT64 = 5,     /* 8 bytes */
    T_BIGINT = 6,    /* varint n, n ASCII bytes: hex as int(s, 0) reads */
    T_FLOAT = 7,     /* 8 bytes, a C double */
    T_STR1 = 8,      /* varint n, n code points below 256, one byte each */
    T_STR8 = 9,      /* varint n, n bytes of UTF-8 (surrogates passed) */
    T_BYTES = 10,    /* varint n, n bytes */
    T_BYTEARRAY = 11, /* varint n, n bytes */
    T_TUPLE = 12,    /* varint n, n items (REPEAT allowed) */
    T_LIST = 13,     /* varint n, n items (REPEAT allowed) */
    T_DICT = 14,     /* varint n, n (key, value) pairs */
    T_REF = 15,      /* varint number of an object numbered earlier */
    T_REPEAT = 16,   /* inside a tuple/list: varint k, the previous item k
                        more times */
    T_ARRAY = 17,    /* array.array: 1 byte typecode, varint n, n bytes */
    T_MEMORYVIEW = 18, /* 1 byte readonly, varint f, f bytes of format,
                          varint n, n bytes (one dimension) */
    T_PINNED = 19,  /* varint k: the next value (bytes, bytearray, array,
                       memoryview) has its n bytes in the message's k-th
                       pin instead of inline; only in a message */
    T_PICKLE5 = 20, /* varint b, b values (bytes or bytearray: the
                       out-of-band buffers), varint n, n bytes of a
                       pickle protocol 5 stream; only in a message */
    /* Runs: inside a tuple/list, varint k (1 or more), then k unnumbered
     * items of one kind, back to back: */
    T_FLOATS = 21,  /* k C doubles */
    T_INTS32 = 22,  /* k int32s */
    T_INTS64 = 23   /* k int64s */
};
/* array.array typecodes the codec sends (numbers; 'u'/'w' go to pickle). */
#define ARRAY_TYPECODES "bBhHiIlLqQfd"
#define T_NUMBERED 0x80 /* flag on a tag: number the object it makes */

/* Enough room for any tag, varint and fixed-size number together. */
#define SMALL 24
#define IN_PROGRESS ((uint64_t)-1)
/* Containers nested deeper than this are pickle's (encoding) or an error
 * (decoding), whatever the interpreter's own limit: 3.13 allows 10,000
 * C levels, which a decode on a thread with a 1 or 2 MB stack
 * (threading.stack_size(), the collector thread's too) overflowed at
 * 210-420 bytes a level -- a segfault, as under ASan on the main
 * thread, whose frames are bigger.  (3.12's C limit is 1,500.) */
#define MAX_DEPTH 1000u

/* ---- large buffers ----------------------------------------------------- */

/* Buffers this large are written or read once, just after they are
 * allocated: fresh memory, whose first touch costs a page fault per 4 KB
 * page, more than the copy (docs/design.md, "Measured costs").
 * Transparent huge pages (where the kernel offers them on request, as
 * with "madvise") take one fault per 2 MB. */
#define HUGE_MIN ((size_t)4 << 20)
#define HUGE_PAGE ((uintptr_t)2 << 20)

static void
advise_huge(void *data, size_t size)
{
#ifdef MADV_HUGEPAGE
    if (size >= HUGE_MIN) {
        uintptr_t start = ((uintptr_t)data + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
        uintptr_t end = ((uintptr_t)data + size) & ~(HUGE_PAGE - 1);
        if (end > start) {
            (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
        }
    }
#else
    (void)data;
    (void)size;
#endif
}

/* A buffer this large that is written in full at once (a decoded bytes
 * or bytearray, a list's storage) has its pages faulted in by one system
 * call first: fresh memory otherwise takes a page fault -- a trap into
 * the kernel -- per 4 KB page as the copy reaches it, which cost a third
 * more (docs/design.md, "Measured costs").  Not from HUGE_MIN on: huge
 * pages take one fault per 2 MB, and the call's walk over memory already
 * there (a buffer reused warm) made an 8 MB decode 7 % slower. */
#define POPULATE_MIN ((size_t)64 << 10)

/* Fault in the whole pages of [data, data + size), writable, before the
 * caller writes them all; pages already there cost a look-up each.
 * Advice only: a kernel without MADV_POPULATE_WRITE (before Linux 5.14)
 * refuses it, and the copy faults them in as before. */
static void
populate(void *data, size_t size)
{
#ifdef MADV_POPULATE_WRITE
    if (size >= POPULATE_MIN && size < HUGE_MIN) {
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t start = ((uintptr_t)data + page - 1) & ~(page - 1);
        uintptr_t end = ((uintptr_t)data + size) & ~(page - 1);
        /* Only when its first or last page is not there yet (memory
         * fresh from the system): over memory malloc reused, the call's
         * walk is pure cost (a warm 1 MB decode 31 -> 42 us). */
        unsigned char first = 0, last = 0;
        if (end > start &&
            (mincore((void *)start, (size_t)page, &first) < 0 ||
             mincore((void *)(end - page), (size_t)page, &last) < 0 ||
             !(first & last & 1))) {
            (void)madvise((void *)start, end - start, MADV_POPULATE_WRITE);
        }
    }
#else
    (void)data;
    (void)size;
#endif
}

/* ---- pinned buffers (the protocol is in pp_internal.h) --------------- */

/* Process-wide counts, for tests and benchmarks (pp__codec_stats). */
static atomic_uint_fast64_t pins_made, pins_freed, out_of_band;

struct pp_pin {
    pthread_mutex_t lock;       /* held while data is read or replaced */
    const unsigned char *data;  /* the sender's memory, or `copy` */
    size_t size;
    unsigned char *copy;        /* malloc'd by pp__pins_fini, else NULL */
    PyObject *obj;              /* the sender's (its GIL, its owner) */
    atomic_int holds;           /* the message's and the owner's */
    int exclusive;              /* obj: a mutable one nobody else holds */
    pp_pin *next_in_msg;        /* the message's pins, in encoding order */
    pp_pin *next_in_owner;      /* the owner's list (its lock) */
};

/* Drop one hold; the last frees the pin.  Any thread, no GIL: the
 * object was released by then (the owner's hold goes last but for a
 * message still queued, and then the object went in pp__pins_fini). */
static void
pin_unhold(pp_pin *pin)
{
    if (atomic_fetch_sub(&pin->holds, 1) == 1) {
        atomic_fetch_add(&pins_freed, 1);
        pthread_mutex_destroy(&pin->lock);
        free(pin->copy);
        free(pin);
    }
}

/* The pin dropper (pp_msg_free): the message is gone.  Any thread, no
 * GIL. */
static void
drop_msg_pins(pp_pin *first)
{
    while (first != NULL) {
        pp_pin *next = first->next_in_msg;
        pin_unhold(first);
        first = next;
    }
}

size_t
pp__codec_msg_bytes(const pp_msg *msg)
{
    size_t size = msg->size;
    for (const pp_pin *pin = msg->pins; pin != NULL; pin = pin->next_in_msg) {
        size += pin->size;
    }
    return size;
}

void
pp__codec_stats(uint64_t *pinned, uint64_t *pins_live, uint64_t *oob)
{
    uint64_t freed = atomic_load(&pins_freed);
    *pinned = atomic_load(&pins_made);
    *pins_live = *pinned - freed;
    *oob = atomic_load(&out_of_band);
}

void
pp__pins_init(pp_pins *p)
{
    pp_msg_set_pin_dropper(drop_msg_pins);
    pthread_mutex_init(&p->lock, NULL);
    p->head = NULL;
    atomic_init(&p->count, 0);
    p->ready = 1;
}

/* Take the pins whose message is gone (or, with `all`, every pin) off
 * the owner's list, as a chain through next_in_owner.  Needs: nothing
 * but the owner's lock, taken here. */
static pp_pin *
pins_take(pp_pins *p, int all)
{
    pp_pin *taken = NULL;
    size_t n = 0;
    pthread_mutex_lock(&p->lock);
    pp_pin **link = &p->head;
    while (*link != NULL) {
        pp_pin *pin = *link;
        if (all || atomic_load(&pin->holds) == 1) {
            *link = pin->next_in_owner;
            pin->next_in_owner = taken;
            taken = pin;
            n++;
        }
        else {
            link = &pin->next_in_owner;
        }
    }
    atomic_fetch_sub_explicit(&p->count, n, memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
    return taken;
}

/* The sender's object of a pin that a message still refers to (queued,
 * or being decoded: the pin's lock waits for that reader) is about to
 * go: give the message a copy of its own.  0, or -1 out of memory (the
 * object must then be leaked, so that its memory stays valid for the
 * reader: a large buffer's memory is the raw allocator's, not the
 * ending interpreter's arenas).  Needs: nothing but the pin's lock,
 * taken here. */
static int
pin_copy_out(pp_pin *pin)
{
    pthread_mutex_lock(&pin->lock);
    unsigned char *copy = malloc(pin->size ? pin->size : 1);
    if (copy != NULL) {
        memcpy(copy, pin->data, pin->size);
        pin->copy = copy;
        pin->data = copy;
    }
    pthread_mutex_unlock(&pin->lock);
    return copy != NULL ? 0 : -1;
}

/* Release the objects of the pins pins_take(p, all) takes, and their
 * owner's holds.  Needs: the pins' interpreter's GIL.  The objects are
 * released outside the owner's lock: a release may run code (a
 * PickleBuffer's exporter) that encodes, and so takes that lock. */
static void
release_pins(pp_pins *p, int all)
{
    pp_pin *pin = pins_take(p, all);
    while (pin != NULL) {
        pp_pin *next = pin->next_in_owner;
        if (atomic_load(&pin->holds) == 1 || pin_copy_out(pin) == 0) {
            Py_CLEAR(pin->obj);
        }
        pin_unhold(pin);
        pin = next;
    }
}

/* Needs: the pins' interpreter's GIL. */
void
pp__pins_sweep(pp_pins *p)
{
    /* Nothing pinned, as nearly always: no lock round per task.  A pin
     * another thread adds meanwhile (free-threaded builds) is not yet
     * done with, and waits for the next sweep. */
    if (p->ready && atomic_load_explicit(&p->count, memory_order_relaxed)) {
        release_pins(p, 0);
    }
}

/* Needs: the pins' interpreter's GIL. */
void
pp__pins_fini(pp_pins *p)
{
    if (!p->ready) {
        return;
    }
    release_pins(p, 1);
    pthread_mutex_destroy(&p->lock);
    p->ready = 0;
}

/* ---- growable output buffer ---------------------------------------- */

void
pp__buf_fini(pp_buf *b)
{
    if (b->grow == NULL) {
        PyMem_RawFree(b->data);
        b->data = NULL;
        b->size = b->capacity = 0;
    }
}

/* 0, or -1 when out of memory.  No GIL needed. */
static int
buf_grow(pp_buf *b, size_t extra)
{
    /* Doubling, or just what is asked when that is more: an 8 MB blob
     * then takes 8 MB, not 16. */
    if (extra > SIZE_MAX / 2 - b->size || b->capacity > SIZE_MAX / 2) {
        return -1;
    }
    size_t want = b->capacity ? b->capacity * 2 : 256;
    if (want < b->size + extra) {
        want = b->size + extra;
    }
    if (b->grow != NULL) {
        return b->grow(b, want);
    }
    unsigned char *data = PyMem_RawRealloc(b->data, want);
    if (data == NULL) {
        return -1;
    }
    b->data = data;
    b->capacity = want;
    return 0;
}

/* Room for `extra` more bytes; 0, or -1 when out of memory.  The emit_*
 * functions below write into room reserved this way. */
static inline int
reserve(pp_buf *b, size_t extra)
{
    return b->capacity - b->size >= extra ? 0 : buf_grow(b, extra);
}

static inline void
emit_byte(pp_buf *b, unsigned char byte)
{
    b->data[b->size++] = byte;
}

/* At most 10 bytes. */
static inline void
emit_varint(pp_buf *b, uint64_t value)
{
    do {
        unsigned char byte = value & 0x7f;
        value >>= 7;
        b->data[b->size++] = byte | (value ? 0x80 : 0);
    } while (value);
}

static inline void
emit_raw(pp_buf *b, const void *data, size_t size)
{
    memcpy(b->data + b->size, data, size);
    b->size += size;
}

/* ---- identity memo: object pointer -> number ------------------------- */

typedef struct {
    PyObject *key; /* borrowed: the encoded object keeps it alive */
    uint64_t value;
} memo_entry;

/* The first table a memo uses lives inside it: most messages number a
 * handful of objects (a task's argument tuple and the int in it), and a
 * table allocated and freed for each cost a tenth of a no-op imap task's
 * CPU (perf).  A memo is never copied or moved once used (it is a field
 * of an encoder on its caller's stack): `table` may point into it. */
#define MEMO_INLINE 8

typedef struct {
    memo_entry *table; /* NULL, `inline_table` or PyMem_Raw memory */
    size_t capacity;   /* a power of two, or 0 */
    size_t used;
    memo_entry inline_table[MEMO_INLINE];
} memo;

static void
memo_fini(memo *m)
{
    if (m->table != m->inline_table) {
        PyMem_RawFree(m->table);
    }
    m->table = NULL;
    m->capacity = m->used = 0;
}

static size_t
memo_slot(const memo *m, PyObject *key)
{
    size_t mask = m->capacity - 1;
    size_t i = ((uintptr_t)key >> 4) * 0x9E3779B97F4A7C15u & mask;
    while (m->table[i].key != NULL && m->table[i].key != key) {
        i = (i + 1) & mask;
    }
    return i;
}

/* The number stored for key, or NULL if none. */
static uint64_t *
memo_get(memo *m, PyObject *key)
{
    if (m->capacity == 0) {
        return NULL;
    }
    size_t i = memo_slot(m, key);
    return m->table[i].key == key ? &m->table[i].value : NULL;
}

/* 0, or -1 when out of memory. */
static int
memo_put(memo *m, PyObject *key, uint64_t value)
{
    if (m->capacity == 0) {
        memset(m->inline_table, 0, sizeof(m->inline_table));
        m->table = m->inline_table;
        m->capacity = MEMO_INLINE;
    }
    else if (m->table == m->inline_table
                 ? (m->used + 1) * 4 > MEMO_INLINE * 3
                 : (m->used + 1) * 2 > m->capacity) {
        /* The inline table fills to three quarters, an allocated one
         * to half: at half, a message numbering four objects (a task's
         * argument tuple, a list, two shared items) allocated and
         * cleared a 1 KB table (a tiny message's encode 0.22 -> 0.17
         * us without). */
        size_t capacity = m->capacity < 64 ? 64 : m->capacity * 2;
        memo_entry *table = PyMem_RawCalloc(capacity, sizeof(memo_entry));
        if (table == NULL) {
            return -1;
        }
        memo bigger = {.table = table, .capacity = capacity};
        for (size_t i = 0; i < m->capacity; i++) {
            if (m->table[i].key != NULL) {
                bigger.table[memo_slot(&bigger, m->table[i].key)] =
                    m->table[i];
                bigger.used++;
            }
        }
        memo_fini(m);
        m->table = bigger.table;
        m->capacity = bigger.capacity;
        m->used = bigger.used;
    }
    size_t i = memo_slot(m, key);
    if (m->table[i].key == NULL) {
        m->used++;
    }
    m->table[i].key = key;
    m->table[i].value = value;
    return 0;
}

/* ---- encoder --------------------------------------------------------- */

/* A dict key's number, by its position in the dict (encode_key). */
#define KEYS_KEPT 16
typedef struct {
    PyObject *key; /* borrowed, as the memo's */
    uint64_t number;
} key_number;

typedef struct {
    pp_buf *out;
    memo seen;
    uint64_t numbered; /* objects numbered so far */
#ifdef Py_GIL_DISABLED
    PyObject *copies; /* see copy_to_encode(); NULL until the first */
#endif
    unsigned depth; /* containers being encoded, see MAX_DEPTH */
    /* Pinning (encoding into a message for an owner): the pins made so
     * far, in order, handed to the message at the end. */
    pp_pins *owner;       /* NULL: every buffer is copied */
    pp_pin *pins, **pins_tail;
    uint64_t npins;
    /* 1 while every object from the top value down to the one being
     * encoded has a single reference (the task's result itself, made
     * for it): nobody else can reach a mutable buffer there, so it may
     * be pinned instead of copied. */
    int exclusive;
    /* Last: encoder_init leaves it to the first dict (most messages
     * have none). */
    int keys_ready;
    key_number keys[KEYS_KEPT];
} encoder;

/* Results of the encoder's functions. */
#define ENC_OK 0
#define ENC_UNSUPPORTED 1 /* fall back to pickle */
#define ENC_ERROR (-1)    /* exception set (MemoryError) */
#define ENC_DONE 2        /* internal: written as a back-reference */

static int
enc_nomem(void)
{
    PyErr_NoMemory();
    return ENC_ERROR;
}

static int encode_other(encoder *e, PyObject *obj, Py_ssize_t alone);
static int encode_blob(pp_buf *out, unsigned char tag, const void *data,
                       size_t size);
static int encode_str(pp_buf *out, unsigned char flag, PyObject *obj);

/* A value that a container holds with `alone` references when nobody
 * else does (see encode_items).  The common scalars -- unshared str,
 * floats and ints of one digit, ints of -128..127, None and bools --
 * are written here, inline in the caller's loop; the rest in
 * encode_other, whose frame (every other type's locals) was a third of
 * encoding 65,536 short str (perf). */
static inline int
encode_item(encoder *e, PyObject *obj, Py_ssize_t alone)
{
    pp_buf *out = e->out;
    PyTypeObject *type = Py_TYPE(obj);
    if (reserve(out, SMALL) < 0) {
        return enc_nomem();
    }
    if (type == &PyLong_Type &&
        PyUnstable_Long_IsCompact((PyLongObject *)obj)) {
        Py_ssize_t value = PyUnstable_Long_CompactValue((PyLongObject *)obj);
        if (value >= -128 && value <= 127) {
            /* Not worth a memo lookup; -5..256 are singletons anyway. */
            emit_byte(out, T_INT8);
            emit_byte(out, (unsigned char)(signed char)value);
            return ENC_OK;
        }
        if (Py_REFCNT(obj) <= alone) { /* |value| < 2**30 */
            int32_t small = (int32_t)value;
            emit_byte(out, T_INT32);
            emit_raw(out, &small, sizeof(small));
            return ENC_OK;
        }
    }
    else if (Py_REFCNT(obj) <= alone) {
        if (type == &PyUnicode_Type) {
            /* The size unknown to the compiler, so that it calls memcpy:
             * a size it knew to be small it copied with `rep movs`, 4x
             * slower on short strings. */
            return PyUnicode_KIND(obj) == PyUnicode_1BYTE_KIND
                       ? encode_blob(out, T_STR1, PyUnicode_1BYTE_DATA(obj),
                                     (size_t)PyUnicode_GET_LENGTH(obj))
                       : encode_str(out, 0, obj);
        }
        if (type == &PyFloat_Type) {
            double d = PyFloat_AS_DOUBLE(obj);
            emit_byte(out, T_FLOAT);
            emit_raw(out, &d, sizeof(d));
            return ENC_OK;
        }
    }
    else if (obj == Py_None || obj == Py_True || obj == Py_False) {
        emit_byte(out, obj == Py_None   ? T_NONE
                       : obj == Py_True ? T_TRUE
                                        : T_FALSE);
        return ENC_OK;
    }
    return encode_other(e, obj, alone);
}

/* One value, with the one reference a container (or the caller) holds. */
static inline int
encode_value(encoder *e, PyObject *obj)
{
    return encode_item(e, obj, 1);
}

/* An object that has more than one reference may be met again.  Met
 * before: writes its REF (SMALL bytes reserved) and returns ENC_DONE.
 * Else numbers it -- a tuple only once its items are written, so it is
 * marked in progress until then -- and sets *flag to T_NUMBERED. */
static int
shared(encoder *e, PyObject *obj, unsigned char *flag)
{
    uint64_t *known = memo_get(&e->seen, obj);
    if (known != NULL) {
        if (*known == IN_PROGRESS) {
            return ENC_UNSUPPORTED; /* a tuple inside itself */
        }
        emit_byte(e->out, T_REF);
        emit_varint(e->out, *known);
        return ENC_DONE;
    }
    uint64_t number = PyTuple_CheckExact(obj) ? IN_PROGRESS : e->numbered++;
    if (memo_put(&e->seen, obj, number) < 0) {
        return enc_nomem();
    }
    *flag = T_NUMBERED;
    return ENC_OK;
}

/* Runs of fewer items go one by one: the header costs what a few
 * items' tags save.  Runs of more are cut at RUN_MAX items, so that a
 * run's count takes two varint bytes, written once the run ends. */
#define RUN_MIN 4
#define RUN_MAX 16383
/* Items a run reserves room for at a time: a run that stops early has
 * not grown the output for the whole list. */
#define RUN_STEP 256

/* The value of an exact int, *overflow set when it needs more than 64
 * bits.  An int of one digit (under 2**30), as most are, is read inline
 * (CPython's PyUnstable_Long_CompactValue, a macro: no call, no symbol):
 * the call was most of encoding 65,536 ints.  Needs: the GIL. */
static inline long long
int_value(PyObject *obj, int *overflow)
{
    if (PyUnstable_Long_IsCompact((PyLongObject *)obj)) {
        *overflow = 0;
        return (long long)PyUnstable_Long_CompactValue((PyLongObject *)obj);
    }
    long long value = PyLong_AsLongLongAndOverflow(obj, overflow);
    if (value == -1 && PyErr_Occurred()) {
        /* An exact int always converts or overflows; never raised. */
        PyErr_Clear();
        *overflow = 1;
    }
    return value;
}

/* The value of an int that a run may carry: an exact int of 64 bits or
 * less that is not shared (`alone` references, or -128..127, which
 * encode_value never numbers either).  1 with *value set, else 0. */
static inline int
run_int(PyObject *item, Py_ssize_t alone, int64_t *value)
{
    if (!PyLong_CheckExact(item)) {
        return 0;
    }
    int overflow;
    long long v = int_value(item, &overflow);
    if (overflow) {
        return 0;
    }
    if (Py_REFCNT(item) > alone && (v < -128 || v > 127)) {
        return 0;
    }
    *value = v;
    return 1;
}

/* The k int32s at `values` as int64s in place, back to front (each is
 * written at or above where it was read, over ones already moved). */
static void
widen(unsigned char *values, Py_ssize_t k)
{
    for (Py_ssize_t j = k - 1; j >= 0; j--) {
        int32_t small;
        memcpy(&small, values + (size_t)j * 4, sizeof(small));
        int64_t value = small;
        memcpy(values + (size_t)j * 8, &value, sizeof(value));
    }
}

/* The unshared floats, or ints, at the start of items[0..n) as one
 * T_FLOATS, T_INTS32 or T_INTS64 run: their numbers back to back, no tag
 * each (the decoder then makes them in one tight loop, as
 * array.tolist() does); unshared: `alone` references (see
 * encode_items).  *taken: how many items it wrote, 0 when they make no
 * run (nothing written).  ENC_OK or ENC_ERROR.  Needs: the GIL of the
 * items' interpreter. */
static Py_NO_INLINE int
encode_run(encoder *e, PyObject *const *items, Py_ssize_t n,
           Py_ssize_t alone, Py_ssize_t *taken)
{
    pp_buf *out = e->out;
    /* The caller saw n >= RUN_MIN and an exact float or int first. */
    int floats = PyFloat_CheckExact(items[0]);
    *taken = 0;
    int64_t value;
    if (floats ? Py_REFCNT(items[0]) != alone
               : !run_int(items[0], alone, &value)) {
        /* Shared (an argument chunk's items, which the caller's list
         * holds too): no run, and no room reserved for one -- that grew
         * every small chunk's message past its cached block, and made a
         * map with chunksize=10 twice as slow. */
        return ENC_OK;
    }
    Py_ssize_t most = n < RUN_MAX ? n : RUN_MAX, k = 0;
    /* Ints go 4 bytes each until one needs more, when those written so
     * far are widened in place: writing 8 and halving them all after
     * was a tenth of encoding 65,536 ints (perf). */
    size_t width = floats ? 8 : 4;
    /* The numbers go 3 bytes in, after the tag and count to come; room
     * for at most RUN_STEP more at a time, and never past the items there
     * are: no more than the run will take, so that a list's room
     * (encode_items) is not outgrown. */
    Py_ssize_t end = 0; /* items there is room for, `width` bytes each */
    while (k < most) {
        if (k == end) {
            end = most - k < RUN_STEP ? most : k + RUN_STEP;
            if (reserve(out, 3 + (size_t)end * width) < 0) {
                return enc_nomem();
            }
        }
        unsigned char *values = out->data + out->size + 3;
        PyObject *item = items[k];
        if (floats) {
            if (!PyFloat_CheckExact(item) || Py_REFCNT(item) != alone) {
                break;
            }
            double number = PyFloat_AS_DOUBLE(item);
            memcpy(values + (size_t)k * 8, &number, sizeof(number));
        }
        else {
            if (!run_int(item, alone, &value)) {
                break;
            }
            if (width == 4 && value >= INT32_MIN && value <= INT32_MAX) {
                int32_t small = (int32_t)value;
                memcpy(values + (size_t)k * 4, &small, sizeof(small));
            }
            else {
                if (width == 4) {
                    if (reserve(out, 3 + (size_t)end * 8) < 0) {
                        return enc_nomem();
                    }
                    values = out->data + out->size + 3;
                    widen(values, k);
                    width = 8;
                }
                memcpy(values + (size_t)k * 8, &value, sizeof(value));
            }
        }
        k++;
    }
    if (k < RUN_MIN) {
        return ENC_OK;
    }
    unsigned char tag = floats ? T_FLOATS : width == 4 ? T_INTS32 : T_INTS64;
    /* k < 2**14: two varint bytes (a longer form than needed for
     * k < 128, which the decoder reads the same). */
    out->data[out->size] = tag;
    out->data[out->size + 1] = (unsigned char)(0x80 | (k & 0x7f));
    out->data[out->size + 2] = (unsigned char)(k >> 7);
    out->size += 3 + (size_t)k * width;
    *taken = k;
    return ENC_OK;
}

#define RESERVE_MIN 4096

/* Items of a tuple or list: runs of unshared numbers as one run each
 * (encode_run), runs of one object as REPEAT.  An unshared item has
 * `alone` references: its container's, plus the copy's when the items
 * are read from one (a free-threaded build's list; counted as 1, every
 * list item looked shared there: no run was ever made, and every other
 * item went through the memo, 4x the time of a tuple's).  No Python
 * code runs while the encoder holds the GIL (it makes no object the
 * garbage collector tracks), so the items cannot change under it. */
static int
encode_items(encoder *e, PyObject *const *items, Py_ssize_t n,
             Py_ssize_t alone)
{
    Py_ssize_t i = 0;
    /* A long list of distinct values takes at least 4 bytes an item
     * (the narrowest int of a run; a str of 2 characters or more; 8 if
     * it starts with a float), and its runs' headers: room for them at
     * once, instead of doubling from 256 bytes, each
     * doubling a copy into fresh memory whose pages fault in again (as
     * much of a worker's time as encoding 65,536 ints was, perf).  Not
     * for a repeat ([x] * n: a few bytes) or shared items. */
    if (n >= RESERVE_MIN && items[0] != items[1] &&
        Py_REFCNT(items[0]) <= alone &&
        reserve(e->out, (size_t)n * (PyFloat_CheckExact(items[0]) ? 8 : 4) +
                            (size_t)(n / RUN_MAX + 1) * 3 + SMALL) < 0) {
        return enc_nomem();
    }
    while (i < n) {
        PyObject *item = items[i];
        int rc;
        if (n - i >= RUN_MIN &&
            (PyFloat_CheckExact(item) || PyLong_CheckExact(item))) {
            Py_ssize_t taken;
            rc = encode_run(e, items + i, n - i, alone, &taken);
            if (rc != ENC_OK) {
                return rc;
            }
            if (taken > 0) {
                i += taken;
                continue;
            }
        }
        rc = encode_item(e, item, alone);
        if (rc != ENC_OK) {
            return rc;
        }
        Py_ssize_t run = 1;
        while (i + run < n && items[i + run] == item) {
            run++;
        }
        if (run > 1) {
            if (reserve(e->out, SMALL) < 0) {
                return enc_nomem();
            }
            emit_byte(e->out, T_REPEAT);
            emit_varint(e->out, (uint64_t)(run - 1));
        }
        i += run;
    }
    return ENC_OK;
}

/* tag, varint size, then size bytes from data. */
static int
encode_blob(pp_buf *out, unsigned char tag, const void *data, size_t size)
{
    if (reserve(out, SMALL + size) < 0) {
        return enc_nomem();
    }
    emit_byte(out, tag);
    emit_varint(out, (uint64_t)size);
    emit_raw(out, data, size);
    return ENC_OK;
}

/* How a buffer may be pinned: not at all, or its bytes are immutable
 * (a bytes: whoever else holds it), or it is mutable and only its
 * container holds it (or the caller, for the top value; see `exclusive`
 * in encode_other), which out_of_reach must confirm. */
enum { PIN_NO, PIN_IMMUTABLE, PIN_EXCLUSIVE };

/* Whether nobody can reach obj again, which one reference holds (its
 * container's, under exclusive containers): no weak reference to it may
 * hand it out; nor may the collector, which encoder_fini sees to.  Its
 * buffer exports (a memoryview, a PickleBuffer, a C Py_buffer) would
 * each hold a reference.  Needs: obj's GIL. */
static int
out_of_reach(PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    Py_ssize_t offset = type->tp_weaklistoffset;
    if (offset == 0) {
        return 1; /* not weakly referenceable (a bytearray) */
    }
    if (offset < 0 || PyType_HasFeature(type, Py_TPFLAGS_MANAGED_WEAKREF)) {
        return 0; /* its list is elsewhere: suppose it has some */
    }
    return *(PyObject **)((char *)obj + offset) == NULL;
}

/* Pin `size` bytes at `data`, kept alive by `keep` (a new reference is
 * taken), as the encoder's next pin, and write its T_PINNED: the value
 * written next carries no bytes of its own.  `how` is a PIN_*.  0 when
 * it is not worth it or not possible here (the caller copies), 1 when
 * pinned, ENC_ERROR.  Needs: the GIL of keep's interpreter; SMALL bytes
 * reserved. */
static int
try_pin(encoder *e, PyObject *keep, const void *data, size_t size, int how)
{
    if (e->owner == NULL || size < PP_PIN_MIN || how == PIN_NO ||
        (how == PIN_EXCLUSIVE && !out_of_reach(keep))) {
        return 0;
    }
    pp_pin *pin = calloc(1, sizeof(*pin));
    if (pin == NULL) {
        return enc_nomem();
    }
    pthread_mutex_init(&pin->lock, NULL);
    pin->data = data;
    pin->size = size;
    pin->obj = Py_NewRef(keep);
    pin->exclusive = how == PIN_EXCLUSIVE;
    atomic_init(&pin->holds, 2);
    atomic_fetch_add(&pins_made, 1);
    *e->pins_tail = pin;
    e->pins_tail = &pin->next_in_msg;
    emit_byte(e->out, T_PINNED);
    emit_varint(e->out, e->npins++);
    return 1;
}

/* A buffer's tag and size, then its bytes, or no bytes when pinned
 * (`pin`, a PIN_*, says whether it may be: nothing can change it).
 * Needs: the GIL of keep's interpreter. */
static int
encode_bytes_of(encoder *e, unsigned char tag, PyObject *keep,
                const void *data, size_t size, int pin)
{
    if (reserve(e->out, SMALL) < 0) {
        return enc_nomem();
    }
    int pinned = try_pin(e, keep, data, size, pin);
    if (pinned < 0) {
        return pinned;
    }
    if (pinned) {
        if (reserve(e->out, SMALL) < 0) {
            return enc_nomem();
        }
        emit_byte(e->out, tag);
        emit_varint(e->out, (uint64_t)size);
        return ENC_OK;
    }
    return encode_blob(e->out, tag, data, size);
}

/* An int beyond 64 bits, as hex text (linear in its size, and with no
 * digit limit, unlike decimal). */
static int
encode_bigint(pp_buf *out, unsigned char flag, PyObject *obj)
{
    PyObject *hex = PyNumber_ToBase(obj, 16);
    if (hex == NULL) {
        PyErr_Clear();
        return ENC_UNSUPPORTED;
    }
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(hex, &size);
    int rc = text == NULL ? enc_nomem()
                          : encode_blob(out, T_BIGINT | flag, text,
                                        (size_t)size);
    Py_DECREF(hex);
    return rc;
}

static int
encode_str(pp_buf *out, unsigned char flag, PyObject *obj)
{
    if (PyUnicode_KIND(obj) == PyUnicode_1BYTE_KIND) {
        /* ASCII and Latin-1: the string's own bytes, no UTF-8 step. */
        return encode_blob(out, T_STR1 | flag, PyUnicode_1BYTE_DATA(obj),
                           (size_t)PyUnicode_GET_LENGTH(obj));
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &size);
    if (utf8 != NULL) {
        return encode_blob(out, T_STR8 | flag, utf8, (size_t)size);
    }
    /* Lone surrogates: pass them through, as pickle does. */
    PyErr_Clear();
    PyObject *bytes = PyUnicode_AsEncodedString(obj, "utf-8", "surrogatepass");
    if (bytes == NULL) {
        PyErr_Clear();
        return ENC_UNSUPPORTED;
    }
    int rc = encode_blob(out, T_STR8 | flag, PyBytes_AS_STRING(bytes),
                         (size_t)PyBytes_GET_SIZE(bytes));
    Py_DECREF(bytes);
    return rc;
}

/* An array.array of numbers, or a one-dimensional C-contiguous
 * memoryview: its format and its bytes, copied now (so, like a
 * bytearray, later changes are not sent).  Anything else in a buffer is
 * pickle's (which refuses memoryviews). */
static int
encode_buffer(encoder *e, unsigned char flag, PyObject *obj, int memoryview,
              int exclusive)
{
    pp_buf *out = e->out;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) <
        0) {
        PyErr_Clear();
        return ENC_UNSUPPORTED;
    }
    const char *format = view.format ? view.format : "B";
    size_t format_size = strlen(format);
    int rc = ENC_UNSUPPORTED;
    if (memoryview ? view.ndim == 1 && format_size < 64
                   : format_size == 1 && strchr(ARRAY_TYPECODES, *format)) {
        size_t size = (size_t)view.len;
        /* Pinned when nothing can change it: an array nobody else
         * holds, a memoryview of a bytes (the bytes is what is kept:
         * the view may be released meanwhile). */
        PyObject *base = memoryview ? PyMemoryView_GET_BASE(obj) : obj;
        int pin = memoryview ? (base != NULL && PyBytes_CheckExact(base)
                                    ? PIN_IMMUTABLE
                                    : PIN_NO)
                             : (exclusive ? PIN_EXCLUSIVE : PIN_NO);
        rc = reserve(out, 3 * SMALL + format_size) < 0 ? enc_nomem()
                                                        : ENC_OK;
        int pinned = rc == ENC_OK ? try_pin(e, base, view.buf, size, pin)
                                  : 0;
        if (pinned < 0) {
            rc = pinned;
        }
        if (rc == ENC_OK && !pinned && reserve(out, SMALL + size) < 0) {
            rc = enc_nomem();
        }
        if (rc == ENC_OK && memoryview) {
            emit_byte(out, T_MEMORYVIEW | flag);
            emit_byte(out, view.readonly ? 1 : 0);
            emit_varint(out, (uint64_t)format_size);
            emit_raw(out, format, format_size);
        }
        else if (rc == ENC_OK) {
            emit_byte(out, T_ARRAY | flag);
            emit_byte(out, (unsigned char)*format);
        }
        if (rc == ENC_OK) {
            emit_varint(out, (uint64_t)size);
            if (!pinned) {
                emit_raw(out, view.buf, size);
            }
        }
    }
    PyBuffer_Release(&view);
    return rc;
}

#ifdef Py_GIL_DISABLED
/* A free-threaded build has no GIL to keep other threads from changing a
 * list or dict while it is encoded (its item array freed under the
 * encoder by an append): encode `copy`, made under the object's own lock
 * (PyList_AsTuple, PyDict_Copy).  Copies are kept until the encoding
 * ends, so that no object the memo points at is freed meanwhile -- its
 * address taken by a new object would be encoded as a reference to the
 * first.  Borrowed (kept alive by e->copies), or NULL with an exception.
 * Needs: the encoder's thread. */
static PyObject *
copy_to_encode(encoder *e, PyObject *copy)
{
    if (copy == NULL) {
        return NULL;
    }
    if (e->copies == NULL && (e->copies = PyList_New(0)) == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    int rc = PyList_Append(e->copies, copy);
    Py_DECREF(copy);
    return rc < 0 ? NULL : copy;
}
#endif

/* A dict's key: encode_value's, but a record -- a dict with the keys of
 * the one before, in the same order -- finds its keys' numbers in
 * e->keys by position, not in the memo: keys are interned (shared), so
 * every key of every record was a memo lookup (2,048 records of five
 * keys: 0.190 -> 0.167 ms without them).  Only a str is kept there: it
 * has no items, so its number is final once it is written.  A kept key
 * stays alive as the memo's do: its dict holds it. */
static inline int
encode_key(encoder *e, PyObject *key, Py_ssize_t position)
{
    if (position >= KEYS_KEPT || Py_REFCNT(key) == 1 ||
        !PyUnicode_CheckExact(key)) {
        return encode_value(e, key);
    }
    if (!e->keys_ready) {
        memset(e->keys, 0, sizeof(e->keys));
        e->keys_ready = 1;
    }
    key_number *kept = &e->keys[position];
    if (kept->key != key) {
        uint64_t *known = memo_get(&e->seen, key);
        uint64_t before = e->numbered;
        uint64_t number = known != NULL ? *known : before;
        int rc = encode_value(e, key); /* a REF, or numbered `number` */
        if (rc != ENC_OK) {
            return rc;
        }
        /* Kept only if the memo holds the key under `number`.  On a
         * free-threaded build another thread can drop a reference between
         * the check above and encode_item's, and the key is then written
         * unnumbered: a later REF to `number` would name another object. */
        if (known == NULL && e->numbered != before + 1) {
            kept->key = NULL;
            return ENC_OK;
        }
        kept->key = key;
        kept->number = number;
        return ENC_OK;
    }
    if (reserve(e->out, SMALL) < 0) {
        return enc_nomem();
    }
    emit_byte(e->out, T_REF);
    emit_varint(e->out, kept->number);
    return ENC_OK;
}

/* Containers are counted against the interpreter's recursion limit (too
 * deep: pickle's turn, which raises RecursionError or copes) one level in
 * GUARD_EVERY: a guard round (Py_EnterRecursiveCall and its Leave, each a
 * call and a thread-local look-up) per container: 2,048 records (a
 * dict and a list each) 0.190 -> 0.172 ms without them, and 0.152 with
 * encode_key too.  Entry always counts (depth 0), so a caller
 * already at the limit still sends its value to pickle; MAX_DEPTH bounds
 * the codec's own stack whatever the limit. */
#define GUARD_EVERY 8u

/* A list, tuple or dict (see GUARD_EVERY for its recursion bound). */
static int
encode_container(encoder *e, PyObject *obj, unsigned char flag)
{
    pp_buf *out = e->out;
    PyTypeObject *type = Py_TYPE(obj);
    int guard = e->depth % GUARD_EVERY == 0;
    if (e->depth >= MAX_DEPTH) {
        return ENC_UNSUPPORTED;
    }
    if (guard && Py_EnterRecursiveCall(" while encoding for poolparty")) {
        PyErr_Clear();
        return ENC_UNSUPPORTED;
    }
    e->depth++;
    int exclusive = e->exclusive;
    e->exclusive = exclusive && Py_REFCNT(obj) == 1;
    int rc = ENC_OK;
    PyObject *items = obj; /* what is read: obj, or a copy of it */
    Py_ssize_t alone = 1;  /* an unshared item's references */
#ifdef Py_GIL_DISABLED
    if (type != &PyTuple_Type) {
        items = copy_to_encode(e, type == &PyList_Type ? PyList_AsTuple(obj)
                                                       : PyDict_Copy(obj));
        if (items == NULL) {
            rc = ENC_ERROR;
            goto done;
        }
        /* The copy holds the items too: a list's, a dict's values.  A
         * dict's keys are still counted as shared at 2: a split table's
         * are not the copy's to hold, and a key that more than one dict
         * holds would look unshared. */
        alone = 2;
    }
#endif
    if (type == &PyList_Type || type == &PyTuple_Type) {
        Py_ssize_t n = Py_SIZE(items);
        emit_byte(out, (type == &PyList_Type ? T_LIST : T_TUPLE) | flag);
        emit_varint(out, (uint64_t)n);
        rc = encode_items(e, PySequence_Fast_ITEMS(items), n, alone);
        if (rc == ENC_OK && flag && type == &PyTuple_Type &&
            memo_put(&e->seen, obj, e->numbered++) < 0) {
            rc = enc_nomem();
        }
    }
    else {
        Py_ssize_t n = PyDict_GET_SIZE(items), pos = 0, seen = 0;
        PyObject *key, *value;
        emit_byte(out, T_DICT | flag);
        emit_varint(out, (uint64_t)n);
        while (rc == ENC_OK && PyDict_Next(items, &pos, &key, &value)) {
            rc = encode_key(e, key, seen);
            if (rc == ENC_OK) {
                rc = encode_item(e, value, alone);
            }
            seen++;
        }
        if (rc == ENC_OK && seen != n) {
            rc = ENC_UNSUPPORTED;
        }
    }
#ifdef Py_GIL_DISABLED
done:
#endif
    e->depth--;
    e->exclusive = exclusive;
    if (guard) {
        Py_LeaveRecursiveCall();
    }
    return rc;
}

/* encode_item's value when it is none of the common scalars it writes
 * itself (or the output must grow). */
static Py_NO_INLINE int
encode_other(encoder *e, PyObject *obj, Py_ssize_t alone)
{
    pp_buf *out = e->out;
    if (reserve(out, SMALL) < 0) {
        return enc_nomem();
    }
    PyTypeObject *type = Py_TYPE(obj);
    unsigned char flag = 0;
    long long value = 0;
    int rc, overflow = 0;
    if (type == &PyLong_Type) {
        /* Not -128..127, nor None or a bool: encode_item wrote those. */
        value = int_value(obj, &overflow);
    }
    /* One reference -- the container's, or the caller's for the top
     * value -- and it cannot be met again: no memo.  Nor reached by
     * anyone else, if its containers cannot be (a mutable buffer can
     * then be pinned: nothing will write to it).  A free-threaded
     * build's reference counts are split between threads: never so
     * there. */
#ifdef Py_GIL_DISABLED
    int exclusive = 0;
#else
    int exclusive = e->exclusive && Py_REFCNT(obj) == 1;
#endif
    if (Py_REFCNT(obj) > alone) {
        rc = shared(e, obj, &flag);
        if (rc != ENC_OK) {
            return rc == ENC_DONE ? ENC_OK : rc;
        }
    }
    if (type == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(obj);
        emit_byte(out, T_FLOAT | flag);
        emit_raw(out, &d, sizeof(d));
        return ENC_OK;
    }
    if (type == &PyLong_Type) {
        if (overflow) {
            return encode_bigint(out, flag, obj);
        }
        if (value >= INT32_MIN && value <= INT32_MAX) {
            int32_t small = (int32_t)value;
            emit_byte(out, T_INT32 | flag);
            emit_raw(out, &small, sizeof(small));
        }
        else {
            int64_t big = (int64_t)value;
            emit_byte(out, T_INT64 | flag);
            emit_raw(out, &big, sizeof(big));
        }
        return ENC_OK;
    }
    if (type == &PyUnicode_Type) {
        return encode_str(out, flag, obj);
    }
    if (type == &PyList_Type || type == &PyTuple_Type ||
        type == &PyDict_Type) {
        return encode_container(e, obj, flag);
    }
    if (type == &PyBytes_Type) {
        /* Immutable: pinned when large, whoever else holds it. */
        return encode_bytes_of(e, T_BYTES | flag, obj, PyBytes_AS_STRING(obj),
                               (size_t)PyBytes_GET_SIZE(obj), PIN_IMMUTABLE);
    }
    if (type == &PyByteArray_Type) {
        /* Copied now, unless nobody else holds it: what the task does to
         * it later is not sent.  Under its lock on a free-threaded
         * build: another thread may resize it meanwhile. */
#ifdef Py_GIL_DISABLED
        Py_BEGIN_CRITICAL_SECTION(obj);
#endif
        rc = encode_bytes_of(e, T_BYTEARRAY | flag, obj,
                             PyByteArray_AS_STRING(obj),
                             (size_t)PyByteArray_GET_SIZE(obj),
                             exclusive ? PIN_EXCLUSIVE : PIN_NO);
#ifdef Py_GIL_DISABLED
        Py_END_CRITICAL_SECTION();
#endif
        return rc;
    }
    if (type == &PyMemoryView_Type ||
        strcmp(type->tp_name, "array.array") == 0) {
        return encode_buffer(e, flag, obj, type == &PyMemoryView_Type,
                             exclusive);
    }
    return ENC_UNSUPPORTED;
}

/* An encoder writing into out, pinning for owner (or NULL). */
static void
encoder_init(encoder *e, pp_buf *out, pp_pins *owner)
{
    memset(e, 0, offsetof(encoder, keys));
    e->out = out;
    e->owner = owner;
    e->pins_tail = &e->pins;
    e->exclusive = 1;
}

/* Release what the encoder holds; its pins too, unless `pins_to`
 * (the message the encoding went into) takes them, when they join the
 * owner's list as well.  Needs: the GIL of the encoded objects. */
static void
encoder_fini(encoder *e, pp_msg *pins_to)
{
    memo_fini(&e->seen);
#ifdef Py_GIL_DISABLED
    Py_XDECREF(e->copies);
#endif
    if (e->pins == NULL) {
        return;
    }
    if (pins_to != NULL) {
        pins_to->pins = e->pins;
        pthread_mutex_lock(&e->owner->lock);
        for (pp_pin *pin = e->pins; pin != NULL; pin = pin->next_in_msg) {
            pin->next_in_owner = e->owner->head;
            e->owner->head = pin;
            atomic_fetch_add_explicit(&e->owner->count, 1,
                                      memory_order_relaxed);
            if (pin->exclusive && PyObject_GC_IsTracked(pin->obj)) {
                /* Out of the collector's sight while pinned, or
                 * gc.get_objects() would hand it to anyone.  Here, after
                 * the encoding: had it failed, the object would have
                 * stayed its container's, tracked. */
                PyObject_GC_UnTrack(pin->obj);
            }
        }
        pthread_mutex_unlock(&e->owner->lock);
        return;
    }
    /* No message took them: both holds, the owner's and the message's,
     * go here. */
    for (pp_pin *pin = e->pins, *next; pin != NULL; pin = next) {
        next = pin->next_in_msg;
        Py_CLEAR(pin->obj);
        pin_unhold(pin);
        pin_unhold(pin);
    }
}

/* Append the codec's opening bytes; ENC_OK or ENC_ERROR. */
static int
encode_magic(pp_buf *out)
{
    if (reserve(out, sizeof(PP_CODEC_MAGIC) - 1) < 0) {
        return enc_nomem();
    }
    emit_raw(out, PP_CODEC_MAGIC, sizeof(PP_CODEC_MAGIC) - 1);
    return ENC_OK;
}

/* Needs: the GIL of obj's interpreter.  See pp_internal.h. */
int
pp__codec_encode(PyObject *obj, pp_buf *out)
{
    encoder e;
    encoder_init(&e, out, NULL);
    out->size = 0;
    int rc = encode_magic(out);
    if (rc == ENC_OK) {
        rc = encode_value(&e, obj);
    }
    encoder_fini(&e, NULL);
    return rc;
}

/* pp_buf.grow for a message being encoded into: owner is the pp_msg
 * (pp_msg_alloc's, as pp_msg_new's), data its payload.  No GIL needed. */
static int
grow_msg(pp_buf *b, size_t capacity)
{
    pp_msg *msg = pp_msg_resize(b->owner, capacity); /* checks overflow */
    if (msg == NULL) {
        return -1;
    }
    b->owner = msg;
    b->data = msg->data;
    b->capacity = capacity;
    advise_huge(msg->data, capacity);
    return 0;
}

/* A pickle protocol 5 stream and its out-of-band buffers, as
 * T_PICKLE5: each buffer a bytes (read-only) or bytearray (writable),
 * as pickle itself would carry it in-band; one held by a bytes is
 * pinned when large, the rest copied.  Needs: the GIL of their
 * interpreter. */
static int
encode_pickle5(encoder *e, PyObject *stream, PyObject *buffers)
{
    if (!PyBytes_CheckExact(stream) || !PyList_CheckExact(buffers)) {
        return ENC_UNSUPPORTED;
    }
    pp_buf *out = e->out;
    Py_ssize_t n = PyList_GET_SIZE(buffers);
    if (reserve(out, SMALL) < 0) {
        return enc_nomem();
    }
    emit_byte(out, T_PICKLE5);
    emit_varint(out, (uint64_t)n);
    int rc = ENC_OK;
    for (Py_ssize_t i = 0; rc == ENC_OK && i < n; i++) {
        PyObject *item = PyList_GET_ITEM(buffers, i);
        const Py_buffer *raw = PyObject_TypeCheck(item, &PyPickleBuffer_Type)
                                   ? PyPickleBuffer_GetBuffer(item)
                                   : NULL;
        Py_buffer view;
        if (raw == NULL ||
            PyObject_GetBuffer(item, &view, PyBUF_FULL_RO) < 0) {
            PyErr_Clear();
            return ENC_UNSUPPORTED; /* released, or not a PickleBuffer */
        }
        if (!PyBuffer_IsContiguous(&view, 'C')) {
            rc = ENC_UNSUPPORTED;
        }
        else {
            PyObject *base = raw->obj;
            if (base != NULL && PyMemoryView_Check(base)) {
                base = PyMemoryView_GET_BASE(base);
            }
            int pin = base != NULL && PyBytes_CheckExact(base)
                          ? PIN_IMMUTABLE
                          : PIN_NO;
            rc = encode_bytes_of(e, view.readonly ? T_BYTES : T_BYTEARRAY,
                                 base, view.buf, (size_t)view.len, pin);
        }
        PyBuffer_Release(&view);
    }
    if (rc == ENC_OK) {
        atomic_fetch_add(&out_of_band, (uint64_t)n);
        rc = encode_blob(out, T_BYTES, PyBytes_AS_STRING(stream),
                         (size_t)PyBytes_GET_SIZE(stream));
    }
    return rc;
}

/* What goes into a message after its prefix: one value (b unused), or
 * a pickle stream a and its buffers b. */
typedef int (*encode_body)(encoder *e, PyObject *a, PyObject *b);

static int
encode_one(encoder *e, PyObject *a, PyObject *Py_UNUSED(b))
{
    return encode_value(e, a);
}

/* A new message: prefix, MAGIC, body(a, b); its pins join `pins`.
 * Returns as pp__codec_encode_msg.  Needs: the GIL of a and b's
 * interpreter. */
static int
encode_into_msg(encode_body body, PyObject *a, PyObject *b,
                const void *prefix, size_t prefix_size, pp_pins *pins,
                pp_msg **out)
{
    pp_buf buf = {.grow = grow_msg};
    *out = NULL;
    if (prefix_size > SIZE_MAX / 2 || grow_msg(&buf, prefix_size + 256) < 0) {
        return enc_nomem();
    }
    if (prefix_size) {
        emit_raw(&buf, prefix, prefix_size);
    }
    encoder e;
    encoder_init(&e, &buf, pins != NULL && pins->ready ? pins : NULL);
    int rc = encode_magic(&buf);
    if (rc == ENC_OK) {
        rc = body(&e, a, b);
    }
    pp_msg *msg = buf.owner;
    if (rc != ENC_OK) {
        encoder_fini(&e, NULL);
        pp_msg_release(msg);
        return rc;
    }
    /* Give back what doubling left over, beyond a page: a queued
     * message should hold what it carries, not twice that. */
    if (buf.capacity - buf.size > 4096) {
        pp_msg *smaller = pp_msg_resize(msg, buf.size);
        msg = smaller != NULL ? smaller : msg;
    }
    msg->next = NULL;
    msg->job = msg->index = 0;
    msg->kind = msg->worker = 0;
    msg->size = buf.size;
    msg->func_size = prefix_size;
    msg->pins = NULL;
    msg->fn_held = NULL;
    msg->first = 0;
    encoder_fini(&e, msg);
    *out = msg;
    return ENC_OK;
}

/* Needs: the GIL of obj's interpreter.  See pp_internal.h. */
int
pp__codec_encode_msg(PyObject *obj, const void *prefix, size_t prefix_size,
                     pp_pins *pins, pp_msg **out)
{
    return encode_into_msg(encode_one, obj, NULL, prefix, prefix_size, pins,
                           out);
}

/* Needs: the GIL of the stream's interpreter.  See pp_internal.h. */
int
pp__codec_encode_pickle5_msg(PyObject *stream, PyObject *buffers,
                             const void *prefix, size_t prefix_size,
                             pp_pins *pins, pp_msg **out)
{
    return encode_into_msg(encode_pickle5, stream, buffers, prefix,
                           prefix_size, pins, out);
}

/* ---- a starmap chunk's argument tuples ------------------------------- */

/* T_STARS, only as a whole payload: varint n, then n argument tuples,
 * each as varint k and its k items (runs and REPEATs allowed), the
 * tuple itself never numbered.  A starmap task unpacks them into its
 * calls, so their identity is never seen; the worker decodes each
 * tuple's items straight into a vectorcall's argument array
 * (pp__codec_decode_star_msg), and makes no tuple.  Outside the enum:
 * the other tags are the general codec's to number. */
#define T_STARS 0x3f

/* 1 if every item of args is numbered by encode_value (it has more
 * than one reference: None, True and False, immortal, always do) or is
 * a number (an exact int or float), else 0.  Only then may args travel unnumbered: met
 * again (repeated in the chunk, or inside an argument), it is written
 * anew, and its items must then be the same objects -- a REF each --
 * except numbers, which arrive equal (pickle, multiprocessing's way,
 * keeps no number's identity either). */
static int
star_items_numbered(PyObject *args)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); i++) {
        PyObject *item = PyTuple_GET_ITEM(args, i);
        if (Py_REFCNT(item) == 1 && !PyLong_CheckExact(item) &&
            !PyFloat_CheckExact(item)) {
            return 0;
        }
    }
    return 1;
}

/* chunk, a list that no other thread can reach, as T_STARS when all its
 * items are exact tuples whose items are numbered (star_items_numbered),
 * else as any value.  A free-threaded build always takes the latter:
 * another thread may drop a reference between the check and the
 * encoding.  The tuples' items are encoded at the depth the list and
 * tuple would put them at, so that what encodes also decodes
 * (MAX_DEPTH).  Needs: the GIL of chunk's interpreter. */
static int
encode_stars(encoder *e, PyObject *chunk, PyObject *Py_UNUSED(b))
{
    Py_ssize_t n = PyList_CheckExact(chunk) ? PyList_GET_SIZE(chunk) : 0;
#ifdef Py_GIL_DISABLED
    n = 0;
#endif
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *args = PyList_GET_ITEM(chunk, i);
        if (!PyTuple_CheckExact(args) || !star_items_numbered(args)) {
            n = 0; /* stops the loop too */
        }
    }
    if (n == 0) {
        return encode_value(e, chunk);
    }
    /* The guard the list's level would take (GUARD_EVERY): a caller
     * already at the recursion limit sends its chunk to pickle. */
    if (Py_EnterRecursiveCall(" while encoding for poolparty")) {
        PyErr_Clear();
        return ENC_UNSUPPORTED;
    }
    if (reserve(e->out, SMALL) < 0) {
        Py_LeaveRecursiveCall();
        return enc_nomem();
    }
    emit_byte(e->out, T_STARS);
    emit_varint(e->out, (uint64_t)n);
    /* Every item but a number has another holder, so no buffer below
     * is pinned as exclusive: nothing to track in e->exclusive. */
    int rc = ENC_OK;
    e->depth += 2;
    for (Py_ssize_t i = 0; rc == ENC_OK && i < n; i++) {
        PyObject *args = PyList_GET_ITEM(chunk, i);
        if (reserve(e->out, SMALL) < 0) {
            rc = enc_nomem();
            break;
        }
        emit_varint(e->out, (uint64_t)PyTuple_GET_SIZE(args));
        rc = encode_items(e, PySequence_Fast_ITEMS(args),
                          PyTuple_GET_SIZE(args), 1);
    }
    e->depth -= 2;
    Py_LeaveRecursiveCall();
    return rc;
}

/* Needs: the GIL of chunk's interpreter.  See pp_internal.h. */
int
pp__codec_encode_star_msg(PyObject *chunk, const void *prefix,
                          size_t prefix_size, pp_pins *pins, pp_msg **out)
{
    return encode_into_msg(encode_stars, chunk, NULL, prefix, prefix_size,
                           pins, out);
}

/* ---- decoder --------------------------------------------------------- */

typedef struct {
    const unsigned char *pos, *end;
    PyObject **made; /* strong references to the numbered objects */
    size_t nmade, capacity;
    unsigned depth; /* containers being decoded, see MAX_DEPTH */
    /* Decoding a message (pp__codec_decode_msg): its pins, read in
     * order; else in_msg is 0 and T_PINNED and T_PICKLE5 are refused
     * (a bytes copy of a payload has no pins, and pickle must not run
     * on data from anywhere but a message). */
    int in_msg;
    pp_pin *pin_next;       /* the next pin a T_PINNED may name */
    uint64_t npins;         /* pins named so far */
    pp_pin *pinned;         /* named by the T_PINNED just read */
    pp_pin *locked;         /* the pin being read (its lock held) */
} decoder;

static PyObject *
corrupt(void)
{
    PyErr_SetString(PyExc_ValueError, "poolparty: corrupt codec data");
    return NULL;
}

static int
get_varint(decoder *d, uint64_t *out)
{
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (d->pos >= d->end) {
            return -1;
        }
        unsigned char byte = *d->pos++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* Copy `size` bytes out of the input; -1 if it is shorter. */
static inline int
get_raw(decoder *d, void *out, size_t size)
{
    if ((size_t)(d->end - d->pos) < size) {
        return -1;
    }
    memcpy(out, d->pos, size);
    d->pos += size;
    return 0;
}

/* A varint length that the rest of the input holds; -1 if not. */
static int
get_length(decoder *d, uint64_t *n)
{
    return get_varint(d, n) < 0 || *n > (uint64_t)(d->end - d->pos) ? -1 : 0;
}

/* The n bytes of a buffer value: inline, or in the pin that a T_PINNED
 * just named, whose lock is then held until the value is made (the
 * sender may be ending and replacing the pin's memory with a copy).
 * -1 if damaged. */
static int
get_blob(decoder *d, const unsigned char **data, uint64_t *n)
{
    pp_pin *pin = d->pinned;
    if (pin == NULL) {
        if (get_length(d, n) < 0) {
            return -1;
        }
        *data = d->pos;
        d->pos += *n;
        return 0;
    }
    d->pinned = NULL;
    if (get_varint(d, n) < 0 || *n != pin->size) {
        return -1;
    }
    pthread_mutex_lock(&pin->lock);
    d->locked = pin;
    *data = pin->data;
    return 0;
}

/* Release a memoryview over memory that is about to go, keeping any
 * exception set.  Needs: the GIL. */
static void
release_view(PyObject *view)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *released = PyObject_CallMethod(view, "release", NULL);
    Py_XDECREF(released);
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
    Py_DECREF(view);
}

/* Number a created object (a new strong reference is taken). */
static int
made(decoder *d, PyObject *obj)
{
    if (d->nmade == d->capacity) {
        size_t capacity = d->capacity ? d->capacity * 2 : 64;
        PyObject **bigger = PyMem_Realloc(d->made, capacity * sizeof(*bigger));
        if (bigger == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        d->made = bigger;
        d->capacity = capacity;
    }
    d->made[d->nmade++] = Py_NewRef(obj);
    return 0;
}

static PyObject *decode_value(decoder *d);
/* Py_INCREF(obj) `count` times.  A default build adds them in one step,
 * as CPython's own list repeat does (data_pass's 65,536 copies of one
 * float were half the decode time one by one); Py_SET_REFCNT leaves
 * immortal objects alone.  A free-threaded build takes them one by one:
 * its reference count is split between the owning thread and others.
 * Needs: the GIL of obj's interpreter. */
static void
add_references(PyObject *obj, Py_ssize_t count)
{
#ifdef Py_GIL_DISABLED
    for (Py_ssize_t j = 0; j < count; j++) {
        Py_INCREF(obj);
    }
#else
    Py_SET_REFCNT(obj, Py_REFCNT(obj) + count);
#endif
}

/* Room in the array *items of *capacity slots for `want` of them: grown
 * with PyMem_Realloc, never past n.  0, or -1 with an exception. */
static int
grow_items(PyObject ***items, size_t *capacity, size_t want, size_t n)
{
    if (want <= *capacity) {
        return 0;
    }
    if (*capacity * 2 > want) {
        want = *capacity * 2;
    }
    if (want > n) {
        want = n;
    }
    PyObject **bigger = PyMem_Realloc(*items, want * sizeof(**items));
    if (bigger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *items = bigger;
    *capacity = want;
    return 0;
}

/* The k numbers of a run (encode_run) of `tag` from d, as new objects in
 * slots[0..k); the input holds them (checked by the caller).  0, or -1
 * with an exception and no slot set.  Needs: the GIL. */
static int
decode_run(decoder *d, unsigned char tag, PyObject **slots, size_t k)
{
    const unsigned char *at = d->pos;
    size_t j = 0;
    /* One loop per kind, with nothing in it but making the object. */
    if (tag == T_FLOATS) {
        for (; j < k; j++, at += 8) {
            double value;
            memcpy(&value, at, sizeof(value));
            if ((slots[j] = PyFloat_FromDouble(value)) == NULL) {
                goto fail;
            }
        }
    }
    else if (tag == T_INTS32) {
        for (; j < k; j++, at += 4) {
            int32_t value;
            memcpy(&value, at, sizeof(value));
            if ((slots[j] = PyLong_FromLong(value)) == NULL) {
                goto fail;
            }
        }
    }
    else {
        for (; j < k; j++, at += 8) {
            int64_t value;
            memcpy(&value, at, sizeof(value));
            if ((slots[j] = PyLong_FromLongLong(value)) == NULL) {
                goto fail;
            }
        }
    }
    d->pos = at;
    return 0;

fail:
    while (j > 0) {
        Py_CLEAR(slots[--j]);
    }
    return -1;
}

/* Fill (*items)[0..n) with new references, expanding runs and REPEATs.
 * The array holds *capacity slots and is grown (grow_items) only when
 * an item would not fit: a caller that passes capacity n (a list's own
 * storage) never sees it moved.  On failure every slot filled is
 * cleared back to NULL.  Needs: the GIL. */
static int
decode_items(decoder *d, PyObject ***items, size_t *capacity, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        uint64_t k = 1;
        unsigned char next = d->pos < d->end ? *d->pos : T_NONE;
        if (next == T_FLOATS || next == T_INTS32 || next == T_INTS64) {
            size_t width = next == T_INTS32 ? 4 : 8;
            d->pos++;
            if (get_varint(d, &k) < 0 || k == 0 || k > (uint64_t)(n - i) ||
                k > (uint64_t)(d->end - d->pos) / width) {
                corrupt();
                goto fail;
            }
            if (grow_items(items, capacity, (size_t)i + k, (size_t)n) < 0 ||
                decode_run(d, next, *items + i, (size_t)k) < 0) {
                goto fail;
            }
            i += (Py_ssize_t)k;
            continue;
        }
        int repeat = next == T_REPEAT && i > 0;
        if (repeat) {
            d->pos++;
            if (get_varint(d, &k) < 0 || k > (uint64_t)(n - i)) {
                corrupt();
                goto fail;
            }
        }
        if (grow_items(items, capacity, (size_t)i + k, (size_t)n) < 0) {
            goto fail;
        }
        PyObject **slots = *items;
        if (repeat) {
            PyObject *previous = slots[i - 1];
            for (uint64_t j = 0; j < k; j++) {
                slots[i + (Py_ssize_t)j] = previous;
            }
            i += (Py_ssize_t)k;
            add_references(previous, (Py_ssize_t)k);
            continue;
        }
        PyObject *item = decode_value(d);
        if (item == NULL) {
            goto fail;
        }
        slots[i++] = item;
    }
    return 0;

fail:
    while (i > 0) {
        Py_CLEAR((*items)[--i]);
    }
    return -1;
}

/* Lists up to this many items are allocated at the length they claim
 * (32 MB of pointers at most, even when that length is damaged);
 * longer ones only as their items arrive (see decode_item_array).  The
 * in-place path is 4x faster for data_pass's 65,536 REPEATs of one
 * float. */
#define LIST_PREALLOC_MAX ((uint64_t)1 << 22)

/* Decode n items into a new PyMem array of new references, growing it
 * as items arrive: a damaged length may claim far more items than the
 * input holds (2**40 of them, in the fuzz tests), and an array sized from
 * the claim alone would be touched in full -- a free-threaded 3.13 zero-
 * fills a new list, and ran out of 24 GB doing it.  Only REPEATs make
 * a list longer than its input, and they are checked against n.  NULL
 * with an exception on failure.  Needs: the GIL. */
static PyObject **
decode_item_array(decoder *d, Py_ssize_t n)
{
    size_t remaining = (size_t)(d->end - d->pos);
    size_t capacity = (size_t)n < remaining ? (size_t)n : remaining;
    PyObject **items = PyMem_Malloc((capacity ? capacity : 1) *
                                    sizeof(*items));
    if (items == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (decode_items(d, &items, &capacity, n) < 0) {
        PyMem_Free(items);
        return NULL;
    }
    return items;
}

/* Decode the n items of `obj`, a new list or tuple of n, straight into
 * its item array.  obj, or NULL with an exception (obj freed).  Needs:
 * the GIL. */
static PyObject *
fill_in_place(decoder *d, PyObject *obj, uint64_t n)
{
    PyObject **slots = PySequence_Fast_ITEMS(obj);
    size_t capacity = (size_t)n;
    if (decode_items(d, &slots, &capacity, (Py_ssize_t)n) < 0) {
        Py_DECREF(obj);
        return NULL;
    }
    return obj;
}

/* A list of n items, numbered (if it is) before them: it may contain
 * itself.  New reference or NULL with an exception.  Needs: the GIL. */
static PyObject *
decode_list(decoder *d, uint64_t n, int numbered)
{
    if (n > (uint64_t)PY_SSIZE_T_MAX / 8) {
        return corrupt();
    }
    if (n <= (uint64_t)(d->end - d->pos) || n <= LIST_PREALLOC_MAX) {
        /* Each item takes at least a byte, or the list is small enough
         * to trust its length: fill it in place.  PyList_New zero-fills,
         * so a half-built list is safe to free. */
        PyObject *obj = PyList_New((Py_ssize_t)n);
        if (obj == NULL || (numbered && made(d, obj) < 0)) {
            Py_XDECREF(obj);
            return NULL;
        }
        /* Every slot is about to be written (a corrupt length costs at
         * most HUGE_MIN bytes: populate stops below it). */
        populate(PySequence_Fast_ITEMS(obj),
                 (size_t)n * sizeof(PyObject *));
        return fill_in_place(d, obj, n);
    }
    /* Longer than its input (REPEATs, or damage): the list starts empty,
     * numbered, and takes its items at the end. */
    PyObject *obj = PyList_New(0);
    if (obj == NULL || (numbered && made(d, obj) < 0)) {
        Py_XDECREF(obj);
        return NULL;
    }
    PyObject **items = decode_item_array(d, (Py_ssize_t)n);
    PyObject *filled = items ? PyList_New((Py_ssize_t)n) : NULL;
    if (filled == NULL) {
        if (items != NULL) {
            for (uint64_t i = 0; i < n; i++) {
                Py_DECREF(items[i]);
            }
            PyMem_Free(items);
        }
        Py_DECREF(obj);
        return NULL;
    }
    memcpy(PySequence_Fast_ITEMS(filled), items, (size_t)n * sizeof(*items));
    PyMem_Free(items);
    int rc = PyList_SetSlice(obj, 0, 0, filled);
    Py_DECREF(filled);
    if (rc < 0) {
        Py_CLEAR(obj);
    }
    return obj;
}

/* A tuple of n items (numbered by the caller, after them).  Needs: the
 * GIL. */
static PyObject *
decode_tuple(decoder *d, uint64_t n)
{
    if (n > (uint64_t)PY_SSIZE_T_MAX / 8) {
        return corrupt();
    }
    if (n <= (uint64_t)(d->end - d->pos) || n <= LIST_PREALLOC_MAX) {
        /* In place, as a list: a new tuple's items are NULL until set,
         * which its deallocator and the garbage collector allow. */
        PyObject *obj = PyTuple_New((Py_ssize_t)n);
        return obj ? fill_in_place(d, obj, n) : NULL;
    }
    PyObject **items = decode_item_array(d, (Py_ssize_t)n);
    if (items == NULL) {
        return NULL;
    }
    PyObject *obj = PyTuple_New((Py_ssize_t)n);
    for (uint64_t i = 0; i < n; i++) {
        if (obj != NULL) {
            PyTuple_SET_ITEM(obj, (Py_ssize_t)i, items[i]);
        }
        else {
            Py_DECREF(items[i]);
        }
    }
    PyMem_Free(items);
    return obj;
}

/* A dict of n pairs, numbered (if it is) before them.  Needs: the GIL. */
static PyObject *
decode_dict(decoder *d, uint64_t n, int numbered)
{
    PyObject *obj = PyDict_New();
    if (obj == NULL || (numbered && made(d, obj) < 0)) {
        Py_XDECREF(obj);
        return NULL;
    }
    for (uint64_t i = 0; i < n; i++) {
        PyObject *key = decode_value(d);
        PyObject *value = key ? decode_value(d) : NULL;
        int rc = value ? PyDict_SetItem(obj, key, value) : -1;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (rc < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    return obj;
}

/* A list, tuple or dict, the recursion bounded as the interpreter
 * bounds its own.  Needs: the GIL. */
static PyObject *
decode_container(decoder *d, unsigned char tag, int numbered)
{
    uint64_t n;
    if (get_varint(d, &n) < 0) {
        return corrupt();
    }
    if (d->depth >= MAX_DEPTH) {
        PyErr_SetString(PyExc_RecursionError,
                        "poolparty: codec data nested too deeply");
        return NULL;
    }
    if (Py_EnterRecursiveCall(" while decoding poolparty data")) {
        return NULL;
    }
    d->depth++;
    PyObject *obj = tag == T_LIST    ? decode_list(d, n, numbered)
                    : tag == T_TUPLE ? decode_tuple(d, n)
                                     : decode_dict(d, n, numbered);
    d->depth--;
    Py_LeaveRecursiveCall();
    if (obj != NULL && numbered && tag == T_TUPLE && made(d, obj) < 0) {
        Py_CLEAR(obj);
    }
    return obj;
}

/* An array.array or a memoryview written by encode_buffer, its bytes
 * copied once out of the input.  Needs: the GIL. */
static PyObject *
decode_buffer(decoder *d, unsigned char tag)
{
    uint64_t n, format_size = 1;
    if (d->pos >= d->end) {
        return corrupt();
    }
    unsigned char first = *d->pos++; /* typecode, or readonly */
    char format[64] = {(char)first, 0};
    if (tag == T_MEMORYVIEW) {
        if (get_length(d, &format_size) < 0 || format_size == 0 ||
            format_size >= sizeof(format)) {
            return corrupt();
        }
        memcpy(format, d->pos, (size_t)format_size);
        format[format_size] = '\0';
        d->pos += format_size;
    }
    else if (first == 0 || strchr(ARRAY_TYPECODES, first) == NULL) {
        return corrupt();
    }
    /* The array is made before its bytes are read: no Python code (an
     * import) runs while a pin's lock is held. */
    PyObject *array = NULL;
    if (tag == T_ARRAY) {
        PyObject *module = PyImport_ImportModule("array");
        array = module ? PyObject_CallMethod(module, "array", "C", (int)first)
                       : NULL;
        Py_XDECREF(module);
        if (array == NULL) {
            return NULL;
        }
    }
    const unsigned char *bytes;
    if (get_blob(d, &bytes, &n) < 0) {
        Py_XDECREF(array);
        return corrupt();
    }
    const char *data = (const char *)bytes;
    if (tag == T_MEMORYVIEW) {
        /* Over a bytes when it was read-only, else over a bytearray; cast
         * from bytes to its format (which checks it). */
        PyObject *base = first ? PyBytes_FromStringAndSize(data, (Py_ssize_t)n)
                               : PyByteArray_FromStringAndSize(
                                     data, (Py_ssize_t)n);
        PyObject *view = base ? PyMemoryView_FromObject(base) : NULL;
        Py_XDECREF(base);
        if (view == NULL || strcmp(format, "B") == 0) {
            return view;
        }
        PyObject *cast = PyObject_CallMethod(view, "cast", "s", format);
        Py_DECREF(view);
        if (cast == NULL) { /* a format or length that does not fit */
            PyErr_Clear();
            return corrupt();
        }
        return cast;
    }
    PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)n,
                                             PyBUF_READ);
    PyObject *done = view ? PyObject_CallMethod(array, "frombytes", "O", view)
                          : NULL;
    if (view != NULL) {
        /* Nothing may keep reading the input once this returns. */
        release_view(view);
    }
    if (done == NULL) {
        Py_CLEAR(array);
    }
    Py_XDECREF(done);
    return array;
}

/* The value after a T_PINNED, its bytes read from the pin.  Needs: the
 * GIL. */
static PyObject *
decode_pinned(decoder *d)
{
    uint64_t k;
    if (!d->in_msg || d->pinned != NULL || get_varint(d, &k) < 0 ||
        k != d->npins || d->pin_next == NULL || d->pos >= d->end) {
        return corrupt();
    }
    unsigned char tag = *d->pos & (unsigned char)~T_NUMBERED;
    if (tag != T_BYTES && tag != T_BYTEARRAY && tag != T_ARRAY &&
        tag != T_MEMORYVIEW) {
        return corrupt();
    }
    d->pinned = d->pin_next;
    d->pin_next = d->pin_next->next_in_msg;
    d->npins++;
    PyObject *obj = decode_value(d);
    d->pinned = NULL; /* unread if the value was damaged */
    if (d->locked != NULL) {
        pthread_mutex_unlock(&d->locked->lock);
        d->locked = NULL;
    }
    return obj;
}

/* Where pickle_loads keeps its pair in the interpreter's own dict. */
#define LOADS_KEY "poolparty.codec.loads"

/* (pickle.loads, ("buffers",)): what decode_pickle5 calls, made once
 * per interpreter and kept in its PyInterpreterState_GetDict() (which
 * the interpreter clears when it ends), not imported per message.  New
 * reference, or NULL with an exception.  Needs: the GIL. */
static PyObject *
pickle_loads(void)
{
    PyObject *cache = PyInterpreterState_GetDict(PyInterpreterState_Get());
    if (cache == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "poolparty: no interpreter dict to keep pickle in");
        return NULL;
    }
    PyObject *call;
#if PY_VERSION_HEX >= 0x030D0000
    /* A strong reference at once: on a free-threaded build another
     * thread may store its own pair meanwhile, freeing a borrowed one. */
    if (PyDict_GetItemStringRef(cache, LOADS_KEY, &call) != 0) {
        return call; /* found, or NULL with an exception */
    }
#else
    call = PyDict_GetItemString(cache, LOADS_KEY);
    if (call != NULL) {
        return Py_NewRef(call);
    }
#endif
    PyObject *module = PyImport_ImportModule("_pickle");
    PyObject *loads = module ? PyObject_GetAttrString(module, "loads") : NULL;
    Py_XDECREF(module);
    call = loads ? Py_BuildValue("(N(s))", loads, "buffers") : NULL;
    if (call != NULL && PyDict_SetItemString(cache, LOADS_KEY, call) < 0) {
        Py_CLEAR(call);
    }
    return call;
}

/* A pickle protocol 5 stream unpickled with its out-of-band buffers
 * (encode_pickle5).  Needs: the GIL. */
static PyObject *
decode_pickle5(decoder *d)
{
    uint64_t n, size;
    if (!d->in_msg || get_varint(d, &n) < 0 ||
        n > (uint64_t)(d->end - d->pos)) {
        return corrupt();
    }
    PyObject *buffers = PyList_New(0), *obj = NULL;
    for (uint64_t i = 0; buffers != NULL && i < n; i++) {
        PyObject *item = decode_value(d);
        if (item != NULL && !PyBytes_CheckExact(item) &&
            !PyByteArray_CheckExact(item)) {
            Py_SETREF(item, corrupt());
        }
        if (item == NULL || PyList_Append(buffers, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(buffers);
            break;
        }
        Py_DECREF(item);
    }
    if (buffers == NULL) {
        return NULL;
    }
    if (d->pos >= d->end || *d->pos++ != T_BYTES ||
        get_length(d, &size) < 0) {
        Py_DECREF(buffers);
        return corrupt();
    }
    const unsigned char *stream = d->pos;
    d->pos += size;
    PyObject *call = pickle_loads();
    PyObject *view = call ? PyMemoryView_FromMemory((char *)stream,
                                                    (Py_ssize_t)size,
                                                    PyBUF_READ)
                          : NULL;
    PyObject *args[2] = {view, buffers};
    obj = view ? PyObject_Vectorcall(PyTuple_GET_ITEM(call, 0), args, 1,
                                     PyTuple_GET_ITEM(call, 1))
               : NULL;
    if (view != NULL) {
        /* The stream is the message's, which goes once this returns. */
        release_view(view);
    }
    Py_XDECREF(call);
    Py_DECREF(buffers);
    return obj;
}

/* ---- a starmap chunk's argument tuples (T_STARS) --------------------- */

/* An argument tuple of this many items or fewer is decoded into an
 * array on the stack; a longer one into the heap. */
#define STAR_ARGS_INLINE 8

/* After the T_STARS tag: its count of tuples, checked against the input
 * left (each takes at least its own count's byte).  0, or -1 with an
 * exception. */
static int
star_count(decoder *d, uint64_t *n)
{
    if (get_varint(d, n) < 0 || *n > (uint64_t)(d->end - d->pos)) {
        corrupt();
        return -1;
    }
    return 0;
}

/* The items of the next argument tuple, as new references in *args:
 * `slots` (STAR_ARGS_INLINE of them) when they fit, else a new PyMem
 * array; *nargs how many.  0, or -1 with an exception (nothing held).
 * Needs: the GIL. */
static int
star_args(decoder *d, PyObject **slots, PyObject ***args, Py_ssize_t *nargs)
{
    uint64_t k;
    if (get_varint(d, &k) < 0 || k > (uint64_t)PY_SSIZE_T_MAX / 8) {
        corrupt();
        return -1;
    }
    if (k <= STAR_ARGS_INLINE) {
        /* capacity >= k: decode_items never moves the stack array. */
        size_t capacity = STAR_ARGS_INLINE;
        *args = slots;
        if (decode_items(d, args, &capacity, (Py_ssize_t)k) < 0) {
            return -1;
        }
    }
    else if ((*args = decode_item_array(d, (Py_ssize_t)k)) == NULL) {
        return -1;
    }
    *nargs = (Py_ssize_t)k;
    return 0;
}

/* A T_STARS (its tag read) as what it stands for, a list of tuples:
 * for a worker that calls a builtin in a Python frame, and for
 * pp__codec_decode.  New reference or NULL with an exception.  Needs:
 * the GIL. */
static PyObject *
decode_star_list(decoder *d)
{
    uint64_t n;
    if (star_count(d, &n) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    d->depth = 2; /* as encode_stars: inside a list and a tuple */
    for (uint64_t i = 0; list != NULL && i < n; i++) {
        uint64_t k;
        PyObject *args = get_varint(d, &k) < 0 ? corrupt()
                                                : decode_tuple(d, k);
        if (args == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, args);
    }
    d->depth = 0;
    return list;
}

/* An int written as hex text by encode_bigint.  Needs: the GIL. */
static PyObject *
decode_bigint(decoder *d)
{
    uint64_t n;
    if (get_length(d, &n) < 0 || n == 0) {
        return corrupt();
    }
    char *text = PyMem_Malloc((size_t)n + 1);
    if (text == NULL) {
        return PyErr_NoMemory();
    }
    memcpy(text, d->pos, (size_t)n);
    text[n] = '\0';
    d->pos += n;
    char *end;
    PyObject *obj = PyLong_FromString(text, &end, 0);
    if (obj != NULL && end != text + n) {
        Py_CLEAR(obj);
        corrupt();
    }
    PyMem_Free(text);
    return obj;
}

static PyObject *
decode_value(decoder *d)
{
    if (d->pos >= d->end) {
        return corrupt();
    }
    unsigned char tag = *d->pos++;
    int numbered = (tag & T_NUMBERED) != 0;
    tag &= (unsigned char)~T_NUMBERED;
    uint64_t n;
    PyObject *obj = NULL;
    switch (tag) {
    case T_FLOAT: {
        double value;
        if (get_raw(d, &value, sizeof(value)) < 0) {
            return corrupt();
        }
        obj = PyFloat_FromDouble(value);
        break;
    }
    case T_INT8:
        if (d->pos >= d->end) {
            return corrupt();
        }
        return PyLong_FromLong((signed char)*d->pos++);
    case T_INT32: {
        int32_t value;
        if (get_raw(d, &value, sizeof(value)) < 0) {
            return corrupt();
        }
        obj = PyLong_FromLong(value);
        break;
    }
    case T_INT64: {
        int64_t value;
        if (get_raw(d, &value, sizeof(value)) < 0) {
            return corrupt();
        }
        obj = PyLong_FromLongLong(value);
        break;
    }
    case T_BIGINT:
        obj = decode_bigint(d);
        break;
    case T_ARRAY:
    case T_MEMORYVIEW:
        obj = decode_buffer(d, tag);
        break;
    case T_STR1:
    case T_STR8:
    case T_BYTES:
    case T_BYTEARRAY: {
        const unsigned char *bytes;
        if (get_blob(d, &bytes, &n) < 0) {
            return corrupt();
        }
        const char *data = (const char *)bytes;
        Py_ssize_t size = (Py_ssize_t)n;
        if (tag == T_STR1 || tag == T_STR8) {
            obj = tag == T_STR1 ? PyUnicode_FromKindAndData(
                                      PyUnicode_1BYTE_KIND, data, size)
                                : PyUnicode_DecodeUTF8(data, size,
                                                       "surrogatepass");
            break;
        }
        obj = tag == T_BYTES ? PyBytes_FromStringAndSize(NULL, size)
                             : PyByteArray_FromStringAndSize(NULL, size);
        if (obj != NULL) {
            char *into = tag == T_BYTES ? PyBytes_AS_STRING(obj)
                                        : PyByteArray_AS_STRING(obj);
            advise_huge(into, (size_t)size);
            populate(into, (size_t)size);
            memcpy(into, data, (size_t)size);
        }
        break;
    }
    case T_LIST:
    case T_TUPLE:
    case T_DICT:
        return decode_container(d, tag, numbered);
    case T_PINNED:
        return decode_pinned(d);
    case T_PICKLE5:
        obj = decode_pickle5(d);
        break;
    case T_STARS:
        return d->depth == 0 ? decode_star_list(d) : corrupt();
    case T_NONE:
        return Py_NewRef(Py_None);
    case T_TRUE:
        return Py_NewRef(Py_True);
    case T_FALSE:
        return Py_NewRef(Py_False);
    case T_REF:
        if (get_varint(d, &n) < 0 || n >= d->nmade) {
            return corrupt();
        }
        return Py_NewRef(d->made[n]);
    default:
        return corrupt();
    }
    if (obj != NULL && numbered && made(d, obj) < 0) {
        Py_CLEAR(obj);
    }
    return obj;
}

/* Decode what d is set up for.  Needs: the receiving GIL. */
static PyObject *
decode_all(decoder *d, const unsigned char *data, size_t size)
{
    size_t magic = sizeof(PP_CODEC_MAGIC) - 1;
    if (size < magic || memcmp(data, PP_CODEC_MAGIC, magic) != 0) {
        return corrupt();
    }
    d->pos = data + magic;
    d->end = data + size;
    PyObject *obj = decode_value(d);
    if (obj != NULL && d->pos != d->end) {
        Py_CLEAR(obj);
        corrupt();
    }
    for (size_t i = 0; i < d->nmade; i++) {
        Py_DECREF(d->made[i]);
    }
    PyMem_Free(d->made);
    return obj;
}

/* Needs: the GIL of the interpreter that will own the result. */
PyObject *
pp__codec_decode(const unsigned char *data, size_t size)
{
    decoder d = {0};
    return decode_all(&d, data, size);
}

/* Needs: the receiving GIL.  See pp_internal.h. */
PyObject *
pp__codec_decode_msg(const pp_msg *msg, size_t offset)
{
    decoder d = {0};
    d.in_msg = 1;
    d.pin_next = msg->pins;
    return decode_all(&d, msg->data + offset, msg->size - offset);
}

/* Needs: the receiving GIL.  See pp_internal.h. */
int
pp__codec_decode_star_msg(const pp_msg *msg, size_t offset,
                          pp_star_sink sink, void *ctx)
{
    const unsigned char *data = msg->data + offset;
    size_t size = msg->size - offset, magic = sizeof(PP_CODEC_MAGIC) - 1;
    if (size <= magic || memcmp(data, PP_CODEC_MAGIC, magic) != 0 ||
        data[magic] != T_STARS) {
        return 1;
    }
    decoder d = {0};
    d.in_msg = 1;
    d.pin_next = msg->pins;
    d.pos = data + magic + 1;
    d.end = data + size;
    d.depth = 2; /* as encode_stars */
    uint64_t n;
    int rc = star_count(&d, &n);
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        PyObject *slots[STAR_ARGS_INLINE], **args;
        Py_ssize_t nargs;
        rc = star_args(&d, slots, &args, &nargs);
        if (rc < 0) {
            break;
        }
        rc = sink(ctx, (Py_ssize_t)n, (Py_ssize_t)i, args, nargs);
        for (Py_ssize_t j = 0; j < nargs; j++) {
            Py_DECREF(args[j]);
        }
        if (args != slots) {
            PyMem_Free(args);
        }
    }
    if (rc == 0 && d.pos != d.end) {
        corrupt();
        rc = -1;
    }
    for (size_t i = 0; i < d.nmade; i++) {
        Py_DECREF(d.made[i]);
    }
    PyMem_Free(d.made);
    return rc;
}
