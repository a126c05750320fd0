/* A codec for plain data that keeps shared references shared.
 *
 * Results travel between interpreters as bytes.  pickle writes every
 * float and every int of a list out in full, and the receiver builds a
 * new object for each: a list of 65,536 references to one float becomes
 * 65,536 floats.  This codec handles the plain types (None, bool, int
 * that fits 64 bits, float, str, bytes, tuple, list, dict -- exact types
 * only) and writes an object the second time as a back-reference, and a
 * run of one object repeated in a list or tuple as one REPEAT; such a
 * list decodes as fast as `[x] * n`.  Anything else makes the encoder
 * give up, and the caller falls back to pickle.
 *
 * Format: MAGIC, then one value.  A value is a tag byte and its body;
 * lengths and indexes are unsigned LEB128 varints.  Objects are numbered
 * in the order the decoder creates them: scalars, lists and dicts when
 * they start, tuples when they end (a tuple exists only once its items
 * do), so REF n means "the n-th object created".  A tuple that contains
 * itself (through a list or dict) cannot be rebuilt in that order; the
 * encoder detects it and gives up.
 *
 * All functions run under the GIL of the interpreter whose objects they
 * touch; the byte buffers are raw memory (pp_buf) that any interpreter
 * may read. */
#include "pp_internal.h"

#include <string.h>

enum {
    T_NONE = 0,
    T_TRUE = 1,
    T_FALSE = 2,
    T_INT = 3,    /* 8 bytes, little-endian two's complement */
    T_FLOAT = 4,  /* 8 bytes, IEEE 754 little-endian */
    T_STR = 5,    /* varint length, UTF-8 */
    T_BYTES = 6,  /* varint length, bytes */
    T_TUPLE = 7,  /* varint n, n items (REPEAT allowed) */
    T_LIST = 8,   /* varint n, n items (REPEAT allowed) */
    T_DICT = 9,   /* varint n, n (key, value) pairs */
    T_REF = 10,   /* varint index of an object created earlier */
    T_REPEAT = 11 /* inside a tuple/list: varint k, the previous item k
                     more times */
};

#define MAX_DEPTH 200
#define IN_PROGRESS ((uint64_t)-1)

/* ---- growable output buffer ---------------------------------------- */

void
pp__buf_fini(pp_buf *b)
{
    PyMem_RawFree(b->data);
    b->data = NULL;
    b->size = b->capacity = 0;
}

/* 0, or -1 when out of memory.  No GIL needed. */
static int
buf_reserve(pp_buf *b, size_t extra)
{
    if (b->capacity - b->size >= extra) {
        return 0;
    }
    size_t want = b->capacity ? b->capacity : 256;
    while (want - b->size < extra) {
        if (want > SIZE_MAX / 2) {
            return -1;
        }
        want *= 2;
    }
    unsigned char *data = PyMem_RawRealloc(b->data, want);
    if (data == NULL) {
        return -1;
    }
    b->data = data;
    b->capacity = want;
    return 0;
}

static int
put(pp_buf *b, const void *data, size_t size)
{
    if (buf_reserve(b, size) < 0) {
        return -1;
    }
    memcpy(b->data + b->size, data, size);
    b->size += size;
    return 0;
}

static int
put_byte(pp_buf *b, unsigned char byte)
{
    return put(b, &byte, 1);
}

static int
put_varint(pp_buf *b, uint64_t value)
{
    unsigned char bytes[10];
    size_t n = 0;
    do {
        unsigned char byte = value & 0x7f;
        value >>= 7;
        bytes[n++] = byte | (value ? 0x80 : 0);
    } while (value);
    return put(b, bytes, n);
}

static int
put_u64(pp_buf *b, uint64_t value)
{
    unsigned char bytes[8];
    for (int i = 0; i < 8; i++) {
        bytes[i] = (unsigned char)(value >> (8 * i));
    }
    return put(b, bytes, 8);
}

/* ---- identity memo: object pointer -> creation index ----------------- */

typedef struct {
    PyObject **keys;   /* borrowed: the encoded object keeps them alive */
    uint64_t *values;
    size_t capacity;   /* a power of two, or 0 */
    size_t used;
} memo;

static void
memo_fini(memo *m)
{
    PyMem_RawFree(m->keys);
    PyMem_RawFree(m->values);
    memset(m, 0, sizeof(*m));
}

static size_t
memo_slot(const memo *m, PyObject *key)
{
    size_t mask = m->capacity - 1;
    size_t i = ((uintptr_t)key >> 4) * 0x9E3779B97F4A7C15u & mask;
    while (m->keys[i] != NULL && m->keys[i] != key) {
        i = (i + 1) & mask;
    }
    return i;
}

/* The index stored for key, or NULL if none. */
static uint64_t *
memo_get(memo *m, PyObject *key)
{
    if (m->capacity == 0) {
        return NULL;
    }
    size_t i = memo_slot(m, key);
    return m->keys[i] == key ? &m->values[i] : NULL;
}

/* 0, or -1 when out of memory. */
static int
memo_put(memo *m, PyObject *key, uint64_t value)
{
    if ((m->used + 1) * 2 > m->capacity) {
        size_t capacity = m->capacity ? m->capacity * 2 : 64;
        memo bigger = {PyMem_RawCalloc(capacity, sizeof(PyObject *)),
                       PyMem_RawCalloc(capacity, sizeof(uint64_t)),
                       capacity, 0};
        if (bigger.keys == NULL || bigger.values == NULL) {
            memo_fini(&bigger);
            return -1;
        }
        for (size_t i = 0; i < m->capacity; i++) {
            if (m->keys[i] != NULL) {
                size_t j = memo_slot(&bigger, m->keys[i]);
                bigger.keys[j] = m->keys[i];
                bigger.values[j] = m->values[i];
                bigger.used++;
            }
        }
        memo_fini(m);
        *m = bigger;
    }
    size_t i = memo_slot(m, key);
    if (m->keys[i] == NULL) {
        m->used++;
    }
    m->keys[i] = key;
    m->values[i] = value;
    return 0;
}

/* ---- encoder --------------------------------------------------------- */

typedef struct {
    pp_buf *out;
    memo seen;
    uint64_t created; /* objects the decoder will have created so far */
} encoder;

/* Results of the encoder's functions. */
#define ENC_OK 0
#define ENC_UNSUPPORTED 1 /* fall back to pickle */
#define ENC_ERROR (-1)    /* exception set (MemoryError) */

static int encode_value(encoder *e, PyObject *obj, int depth);

static int
enc_nomem(void)
{
    PyErr_NoMemory();
    return ENC_ERROR;
}

/* Items of a tuple or list, with runs of one object as REPEAT. */
static int
encode_items(encoder *e, PyObject *const *items, Py_ssize_t n, int depth)
{
    Py_ssize_t i = 0;
    while (i < n) {
        int rc = encode_value(e, items[i], depth + 1);
        if (rc != ENC_OK) {
            return rc;
        }
        Py_ssize_t run = 1;
        while (i + run < n && items[i + run] == items[i]) {
            run++;
        }
        if (run > 1 && (put_byte(e->out, T_REPEAT) < 0 ||
                        put_varint(e->out, (uint64_t)(run - 1)) < 0)) {
            return enc_nomem();
        }
        i += run;
    }
    return ENC_OK;
}

/* Register obj as the next object the decoder creates. */
static int
remember(encoder *e, PyObject *obj)
{
    if (memo_put(&e->seen, obj, e->created++) < 0) {
        return enc_nomem();
    }
    return ENC_OK;
}

static int
encode_value(encoder *e, PyObject *obj, int depth)
{
    pp_buf *out = e->out;
    if (depth > MAX_DEPTH) {
        return ENC_UNSUPPORTED;
    }
    if (obj == Py_None) {
        return put_byte(out, T_NONE) < 0 ? enc_nomem() : ENC_OK;
    }
    if (obj == Py_True || obj == Py_False) {
        return put_byte(out, obj == Py_True ? T_TRUE : T_FALSE) < 0
                   ? enc_nomem()
                   : ENC_OK;
    }
    uint64_t *known = memo_get(&e->seen, obj);
    if (known != NULL) {
        if (*known == IN_PROGRESS) {
            return ENC_UNSUPPORTED; /* a tuple inside itself */
        }
        return put_byte(out, T_REF) < 0 || put_varint(out, *known) < 0
                   ? enc_nomem()
                   : ENC_OK;
    }
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyLong_Type) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow || (value == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return ENC_UNSUPPORTED;
        }
        if (put_byte(out, T_INT) < 0 || put_u64(out, (uint64_t)value) < 0) {
            return enc_nomem();
        }
        return remember(e, obj);
    }
    if (type == &PyFloat_Type) {
        double value = PyFloat_AS_DOUBLE(obj);
        uint64_t bits;
        memcpy(&bits, &value, sizeof(bits));
        if (put_byte(out, T_FLOAT) < 0 || put_u64(out, bits) < 0) {
            return enc_nomem();
        }
        return remember(e, obj);
    }
    if (type == &PyUnicode_Type) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &size);
        if (utf8 == NULL) { /* lone surrogates: pickle copes */
            PyErr_Clear();
            return ENC_UNSUPPORTED;
        }
        if (put_byte(out, T_STR) < 0 || put_varint(out, (uint64_t)size) < 0 ||
            put(out, utf8, (size_t)size) < 0) {
            return enc_nomem();
        }
        return remember(e, obj);
    }
    if (type == &PyBytes_Type) {
        Py_ssize_t size = PyBytes_GET_SIZE(obj);
        if (put_byte(out, T_BYTES) < 0 ||
            put_varint(out, (uint64_t)size) < 0 ||
            put(out, PyBytes_AS_STRING(obj), (size_t)size) < 0) {
            return enc_nomem();
        }
        return remember(e, obj);
    }
    if (type == &PyList_Type) {
        Py_ssize_t n = PyList_GET_SIZE(obj);
        if (put_byte(out, T_LIST) < 0 || put_varint(out, (uint64_t)n) < 0) {
            return enc_nomem();
        }
        int rc = remember(e, obj);
        if (rc != ENC_OK) {
            return rc;
        }
        /* No Python code runs while we hold the GIL here, so the list
         * cannot change under us. */
        return encode_items(e, PySequence_Fast_ITEMS(obj), n, depth);
    }
    if (type == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (put_byte(out, T_TUPLE) < 0 || put_varint(out, (uint64_t)n) < 0 ||
            memo_put(&e->seen, obj, IN_PROGRESS) < 0) {
            return enc_nomem();
        }
        int rc = encode_items(e, PySequence_Fast_ITEMS(obj), n, depth);
        if (rc != ENC_OK) {
            return rc;
        }
        return remember(e, obj);
    }
    if (type == &PyDict_Type) {
        Py_ssize_t n = PyDict_GET_SIZE(obj);
        if (put_byte(out, T_DICT) < 0 || put_varint(out, (uint64_t)n) < 0) {
            return enc_nomem();
        }
        int rc = remember(e, obj);
        Py_ssize_t pos = 0, seen = 0;
        PyObject *key, *value;
        while (rc == ENC_OK && PyDict_Next(obj, &pos, &key, &value)) {
            rc = encode_value(e, key, depth + 1);
            if (rc == ENC_OK) {
                rc = encode_value(e, value, depth + 1);
            }
            seen++;
        }
        return rc == ENC_OK && seen != n ? ENC_UNSUPPORTED : rc;
    }
    return ENC_UNSUPPORTED;
}

/* Needs: the GIL of obj's interpreter.  See pp_internal.h. */
int
pp__codec_encode(PyObject *obj, pp_buf *out)
{
    encoder e = {out, {0}, 0};
    out->size = 0;
    int rc = put(out, PP_CODEC_MAGIC, sizeof(PP_CODEC_MAGIC) - 1) < 0
                 ? enc_nomem()
                 : encode_value(&e, obj, 0);
    memo_fini(&e.seen);
    return rc;
}

/* ---- decoder --------------------------------------------------------- */

typedef struct {
    const unsigned char *pos, *end;
    PyObject **made;   /* strong references, in creation order */
    size_t nmade, capacity;
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

static int
get_u64(decoder *d, uint64_t *out)
{
    if (d->end - d->pos < 8) {
        return -1;
    }
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) {
        value |= (uint64_t)d->pos[i] << (8 * i);
    }
    d->pos += 8;
    *out = value;
    return 0;
}

/* Record a created object (a new strong reference is taken). */
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

static PyObject *decode_value(decoder *d, int depth);

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

/* Fill (*items)[0..n) with new references, expanding REPEATs.  The
 * array holds *capacity slots and is grown with PyMem_Realloc only when an
 * item would not fit, never past n: a caller that passes capacity n (a
 * list's own storage) never sees it moved.  On failure every slot filled
 * is cleared back to NULL.  Needs: the GIL. */
static int
decode_items(decoder *d, PyObject ***items, size_t *capacity, Py_ssize_t n,
             int depth)
{
    Py_ssize_t i = 0;
    while (i < n) {
        uint64_t k = 1;
        int repeat = d->pos < d->end && *d->pos == T_REPEAT && i > 0;
        if (repeat) {
            d->pos++;
            if (get_varint(d, &k) < 0 || k > (uint64_t)(n - i)) {
                corrupt();
                goto fail;
            }
        }
        if ((size_t)i + k > *capacity) {
            size_t want = *capacity * 2 > (size_t)i + k ? *capacity * 2
                                                        : (size_t)i + k;
            if (want > (size_t)n) {
                want = (size_t)n;
            }
            PyObject **bigger = PyMem_Realloc(*items, want * sizeof(**items));
            if (bigger == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            *items = bigger;
            *capacity = want;
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
        PyObject *item = decode_value(d, depth + 1);
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
decode_item_array(decoder *d, Py_ssize_t n, int depth)
{
    size_t remaining = (size_t)(d->end - d->pos);
    size_t capacity = (size_t)n < remaining ? (size_t)n : remaining;
    PyObject **items = PyMem_Malloc((capacity ? capacity : 1) *
                                    sizeof(*items));
    if (items == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (decode_items(d, &items, &capacity, n, depth) < 0) {
        PyMem_Free(items);
        return NULL;
    }
    return items;
}

static PyObject *
decode_value(decoder *d, int depth)
{
    if (depth > MAX_DEPTH + 1 || d->pos >= d->end) {
        return corrupt();
    }
    unsigned char tag = *d->pos++;
    uint64_t n;
    PyObject *obj = NULL;
    switch (tag) {
    case T_NONE:
        return Py_NewRef(Py_None);
    case T_TRUE:
        return Py_NewRef(Py_True);
    case T_FALSE:
        return Py_NewRef(Py_False);
    case T_INT:
        if (get_u64(d, &n) < 0) {
            return corrupt();
        }
        obj = PyLong_FromLongLong((long long)n);
        break;
    case T_FLOAT: {
        if (get_u64(d, &n) < 0) {
            return corrupt();
        }
        double value;
        memcpy(&value, &n, sizeof(value));
        obj = PyFloat_FromDouble(value);
        break;
    }
    case T_STR:
    case T_BYTES:
        if (get_varint(d, &n) < 0 || n > (uint64_t)(d->end - d->pos)) {
            return corrupt();
        }
        obj = tag == T_STR
                  ? PyUnicode_DecodeUTF8((const char *)d->pos, (Py_ssize_t)n,
                                         "strict")
                  : PyBytes_FromStringAndSize((const char *)d->pos,
                                              (Py_ssize_t)n);
        d->pos += n;
        break;
    case T_REF:
        if (get_varint(d, &n) < 0 || n >= d->nmade) {
            return corrupt();
        }
        return Py_NewRef(d->made[n]);
    case T_LIST:
        if (get_varint(d, &n) < 0 || n > (uint64_t)PY_SSIZE_T_MAX / 8) {
            return corrupt();
        }
        if (n <= (uint64_t)(d->end - d->pos) || n <= LIST_PREALLOC_MAX) {
            /* Each item takes at least a byte, or the list is small
             * enough to trust its length: fill it in place.  PyList_New
             * zero-fills, so a half-built list is safe to free. */
            obj = PyList_New((Py_ssize_t)n);
            if (obj == NULL || made(d, obj) < 0) {
                Py_XDECREF(obj);
                return NULL;
            }
            PyObject **slots = PySequence_Fast_ITEMS(obj);
            size_t capacity = (size_t)n;
            if (decode_items(d, &slots, &capacity, (Py_ssize_t)n,
                             depth) < 0) {
                Py_DECREF(obj);
                return NULL;
            }
            return obj;
        }
        else {
            /* Longer than its input (REPEATs, or damage): the list is
             * numbered before its items (it may contain itself), so it
             * starts empty and takes them at the end. */
            obj = PyList_New(0);
            if (obj == NULL || made(d, obj) < 0) {
                Py_XDECREF(obj);
                return NULL;
            }
            PyObject **items = decode_item_array(d, (Py_ssize_t)n, depth);
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
            memcpy(PySequence_Fast_ITEMS(filled), items,
                   (size_t)n * sizeof(*items));
            PyMem_Free(items);
            int rc = PyList_SetSlice(obj, 0, 0, filled);
            Py_DECREF(filled);
            if (rc < 0) {
                Py_DECREF(obj);
                return NULL;
            }
            return obj;
        }
    case T_TUPLE: {
        if (get_varint(d, &n) < 0 || n > (uint64_t)PY_SSIZE_T_MAX / 8) {
            return corrupt();
        }
        /* Items first (the tuple is numbered after them). */
        PyObject **items = decode_item_array(d, (Py_ssize_t)n, depth);
        if (items == NULL) {
            return NULL;
        }
        obj = PyTuple_New((Py_ssize_t)n);
        for (uint64_t i = 0; i < n; i++) {
            if (obj != NULL) {
                PyTuple_SET_ITEM(obj, (Py_ssize_t)i, items[i]);
            }
            else {
                Py_DECREF(items[i]);
            }
        }
        PyMem_Free(items);
        break;
    }
    case T_DICT:
        if (get_varint(d, &n) < 0) {
            return corrupt();
        }
        obj = PyDict_New();
        if (obj == NULL || made(d, obj) < 0) {
            Py_XDECREF(obj);
            return NULL;
        }
        for (uint64_t i = 0; i < n; i++) {
            PyObject *key = decode_value(d, depth + 1);
            PyObject *value = key ? decode_value(d, depth + 1) : NULL;
            int rc = value ? PyDict_SetItem(obj, key, value) : -1;
            Py_XDECREF(key);
            Py_XDECREF(value);
            if (rc < 0) {
                Py_DECREF(obj);
                return NULL;
            }
        }
        return obj;
    default:
        return corrupt();
    }
    if (obj != NULL && made(d, obj) < 0) {
        Py_CLEAR(obj);
    }
    return obj;
}

/* Needs: the GIL of the interpreter that will own the result. */
PyObject *
pp__codec_decode(const unsigned char *data, size_t size)
{
    size_t magic = sizeof(PP_CODEC_MAGIC) - 1;
    if (size < magic || memcmp(data, PP_CODEC_MAGIC, magic) != 0) {
        return corrupt();
    }
    decoder d = {data + magic, data + size, NULL, 0, 0};
    PyObject *obj = decode_value(&d, 0);
    if (obj != NULL && d.pos != d.end) {
        Py_CLEAR(obj);
        corrupt();
    }
    for (size_t i = 0; i < d.nmade; i++) {
        Py_DECREF(d.made[i]);
    }
    PyMem_Free(d.made);
    return obj;
}
