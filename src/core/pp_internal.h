/* Internal interfaces of the core that use CPython's C API.
 *
 * Naming: pp_ public (include/poolparty/pp.h), pp__ internal but shared
 * between files, plain static names file-local.
 *
 * GIL vocabulary used in every contract below:
 *   "no tstate"  - the calling thread has no attached thread state (it
 *                  holds no GIL at all; e.g. inside Py_BEGIN_ALLOW_THREADS)
 *   "main GIL"   - attached to a main-interpreter thread state
 *   "sub GIL"    - attached to a thread state of the pp_interp named
 */
#ifndef POOLPARTY_PP_INTERNAL_H
#define POOLPARTY_PP_INTERNAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "poolparty/pp.h"

#if PY_VERSION_HEX < 0x030C0000
#error "poolparty needs CPython 3.12 or newer (per-interpreter GIL, PEP 684)"
#endif

/* ---- thread states (tstate.c: its rules are at its top) ---------- */

PyThreadState *pp__ts_current(void);
void pp__ts_attach(PyThreadState *ts);
PyThreadState *pp__ts_detach(void);
PyThreadState *pp__ts_switch(PyThreadState *to);
PyThreadState *pp__ts_new(PyInterpreterState *interp);
PyThreadState *pp__ts_attach_new(PyInterpreterState *interp);
void pp__ts_delete_current(void);
void pp__ts_delete_other(PyThreadState *ts);

/* A template interpreter that pool workers are created from, so that
 * they start without importing `site` under the lifecycle lock (see
 * interp.c).  Opaque; guarded by that lock. */
typedef struct pp_site_template pp_site_template;

/* What every new worker interpreter is started with.  Raw memory,
 * immutable after creation, shared read-only by all workers of a pool;
 * holds no PyObject. */
typedef struct pp_boot {
    char *sys_path;          /* NUL-terminated entries, back to back */
    size_t sys_path_size;    /* bytes in sys_path, all terminators included */
    unsigned char *payload;  /* codec data: poolparty._worker.bootstrap's
                                argument */
    size_t payload_size;
    /* NULL, or set once by pp__boot_use_site_template before any
     * worker starts; what it points to changes under the lifecycle
     * lock. */
    pp_site_template *site_template;
} pp_boot;

/* Copy the two buffers into a new boot.  PP_OK or PP_ENOMEM.  No tstate
 * needed. */
int pp__boot_init(pp_boot *boot, const char *sys_path, size_t sys_path_size,
                  const void *payload, size_t payload_size);

/* Have the next `creations` interpreters created with `boot` come from
 * a template interpreter (made by the first of them, ended after the
 * last), which pays off for pools of PP_SITE_TEMPLATE_MIN_WORKERS or
 * more.  Does nothing where this CPython cannot do it.  PP_OK or
 * PP_ENOMEM.  No tstate needed; call before any worker starts. */
int pp__boot_use_site_template(pp_boot *boot, uint32_t creations);
#define PP_SITE_TEMPLATE_MIN_WORKERS 6

/* Free the buffers; end the template if no worker ended it.  Any
 * thread, with or without a tstate. */
void pp__boot_fini(pp_boot *boot);

/* ---- the plain-data codec (codec.c) -------------------------------- */

/* Opening bytes of a codec payload; pickle's start with 0x80 and the
 * core's plain-text errors with ASCII, so the three never mix up. */
#define PP_CODEC_MAGIC "\xb5pp2"

/* A growable byte buffer; {0} is an empty one in raw memory
 * (PyMem_RawRealloc).  With `grow` set, the memory belongs to `owner`
 * instead (a bytes object, a message), so that what is encoded into it
 * need not be copied again: grow(b, capacity) makes room for at least
 * `capacity` bytes and sets data and capacity, 0 or -1 (no exception);
 * pp__buf_fini leaves such memory alone. */
typedef struct pp_buf {
    unsigned char *data;
    size_t size, capacity;
    int (*grow)(struct pp_buf *b, size_t capacity);
    void *owner;
} pp_buf;
void pp__buf_fini(pp_buf *b);

/* ---- pinned buffers (codec.c) ----------------------------------------
 *
 * A large buffer that cannot change (a bytes, a read-only PickleBuffer
 * over one, a bytearray or array nobody else can reach) travels by
 * reference: the encoder keeps the sender's object alive in a pp_pin,
 * the message refers to its memory, and the receiver copies straight
 * from it -- one copy in all.  The lifetime protocol (docs/design.md,
 * "Who owns each buffer"):
 *   - a pin has two holds: its message's (dropped by pp_msg_free, any
 *     thread, no GIL) and its owner's list's;
 *   - the sender's object is released only by the owner, under the
 *     sender's GIL: pp__pins_sweep releases the pins whose message is
 *     gone; pp__pins_fini (the sender is ending) copies the data of the
 *     pins still in a message into raw memory first, under the pin's
 *     lock, which a reader holds while it copies;
 *   - a pin is freed with its last hold.
 * A pin's PyObject is the sender's and is touched only under its GIL
 * by its owner: the receiver reads only the raw memory. */
typedef struct pp_pin pp_pin;
typedef struct pp_pins {
    pthread_mutex_t lock; /* leaf: guards head */
    pp_pin *head;         /* every pin this side made that is still held */
    atomic_size_t count;  /* pins on head: written under lock, read
                             without it by a sweep with nothing to do */
    int ready;            /* pp__pins_init ran */
} pp_pins;
/* Buffers of at least this many bytes are pinned rather than copied. */
#define PP_PIN_MIN ((size_t)64 << 10)
/* No tstate needed. */
void pp__pins_init(pp_pins *p);
/* The bytes msg carries, its pinned buffers' included.  No tstate
 * needed; the message must be alive. */
size_t pp__codec_msg_bytes(const pp_msg *msg);
/* Pins made and still alive, out-of-band buffers sent, since the
 * process started.  No tstate needed. */
void pp__codec_stats(uint64_t *pinned, uint64_t *pins_live, uint64_t *oob);
/* Release the objects of the pins whose messages are gone.  Needs: the
 * GIL of the interpreter that made the pins; no lock held. */
void pp__pins_sweep(pp_pins *p);

/* ---- the worker threads' arena cache (arena.c: why, at its top) ---- */

/* Slots in each worker thread's cache, and the bound it starts with
 * (pp__arena_set_limit changes it): 1 MiB arenas a worker keeps. */
#define PP_ARENA_CACHE_SLOTS 64
#define PP_ARENA_CACHE_DEFAULT 8
/* How long a worker waits for a task before it gives its arenas back. */
#define PP_ARENA_IDLE_NS (20 * 1000 * 1000)

typedef struct {
    uint64_t hits;     /* arenas a worker took from its cache */
    uint64_t kept;     /* freed arenas a worker kept */
    uint64_t passed;   /* freed by a worker whose cache was full */
    uint64_t returned; /* given back: idle workers, exiting ones */
    uint64_t held;     /* in the caches now */
    unsigned limit;    /* the bound now */
    size_t arena_bytes;
    int installed;     /* 0 on free-threaded builds */
} pp_arena_stats;

/* Wrap the process's arena allocator (once; later calls do nothing).
 * Needs: any GIL (module exec). */
void pp__arena_install(void);
/* This thread is a pool worker from now on: the arenas it frees are
 * kept for it, up to the bound.  No tstate or any GIL. */
void pp__arena_worker_begin(void);
/* Whether this thread's cache holds an arena.  No tstate or any GIL. */
int pp__arena_held(void);
/* Give this thread's kept arenas back to the wrapped allocator.  No
 * tstate or any GIL (CPython's arena allocators need none). */
void pp__arena_release(void);
/* As pp__arena_release, and this thread caches no more.  Call after
 * the thread's last interpreter is ended.  No tstate or any GIL. */
void pp__arena_worker_end(void);
/* Set the bound (at most PP_ARENA_CACHE_SLOTS); returns the old one.
 * Any GIL or none. */
unsigned pp__arena_set_limit(unsigned n);
/* The process's counts.  Any GIL or none. */
void pp__arena_stats(pp_arena_stats *out);
/* Let go of every pin: data still in a message is copied out first.
 * Needs: the GIL of the interpreter that made the pins, which is about
 * to end or to drop the owner. */
void pp__pins_fini(pp_pins *p);

/* Encode obj into out (replacing its contents).  0 on success; 1 when
 * obj holds something the codec does not do (the caller uses pickle
 * instead), no exception set; -1 with MemoryError.  Needs: the GIL of
 * obj's interpreter. */
int pp__codec_encode(PyObject *obj, pp_buf *out);

/* Encode obj straight into a new message, after `prefix_size` bytes
 * copied from `prefix` (a task's function pickle; func_size is set to
 * it), so that the encoding is never copied again.  Returns as
 * pp__codec_encode; on 0 *out is the message (job, index and kind 0: the
 * caller sets them and owns it), else NULL.  Needs: the GIL of obj's
 * interpreter. */
int pp__codec_encode_msg(PyObject *obj, const void *prefix, size_t prefix_size,
                         pp_pins *pins, pp_msg **out);
/* The same for a pickle protocol 5 stream and its out-of-band buffers
 * (the PickleBuffers pickle.dumps gave its buffer_callback, a list):
 * the buffers beside the stream, pinned into `pins` or copied.  1 when
 * a buffer is not contiguous (pickle it in-band instead).  `pins` may
 * be NULL in both: every buffer is then copied into the message. */
int pp__codec_encode_pickle5_msg(PyObject *stream, PyObject *buffers,
                                 const void *prefix, size_t prefix_size,
                                 pp_pins *pins, pp_msg **out);

/* Decode a payload made by pp__codec_encode.  New reference, or NULL
 * with an exception.  Needs: the GIL of the receiving interpreter. */
PyObject *pp__codec_decode(const unsigned char *data, size_t size);
/* Decode msg's codec payload from byte `offset` on: its pinned buffers
 * and out-of-band pickles too, which pp__codec_decode refuses (a bytes
 * copy of the payload carries neither).  Needs: the receiving GIL. */
PyObject *pp__codec_decode_msg(const pp_msg *msg, size_t offset);

/* A starmap chunk (a list of argument tuples that no other thread can
 * reach) into a new message as pp__codec_encode_msg does, but with the
 * tuples' items inline and the tuples unnumbered (T_STARS), when every
 * item is an exact tuple; else the chunk as any value.  Returns as
 * pp__codec_encode_msg.  Needs: the GIL of chunk's interpreter. */
int pp__codec_encode_star_msg(PyObject *chunk, const void *prefix,
                              size_t prefix_size, pp_pins *pins,
                              pp_msg **out);
/* Called by pp__codec_decode_star_msg for argument tuple i of n, its
 * items borrowed in args[0..nargs) (valid until it returns): 0, or -1
 * with an exception to stop. */
typedef int (*pp_star_sink)(void *ctx, Py_ssize_t n, Py_ssize_t i,
                            PyObject *const *args, Py_ssize_t nargs);
/* If msg's payload from `offset` is a starmap chunk that
 * pp__codec_encode_star_msg wrote as T_STARS, decode its argument
 * tuples one at a time straight into arrays handed to sink, without
 * making the tuples: 0 when all were, -1 with an exception (the
 * sink's, or a corrupt payload's); 1, nothing done, for any other
 * payload.  Needs: the receiving GIL. */
int pp__codec_decode_star_msg(const pp_msg *msg, size_t offset,
                              pp_star_sink sink, void *ctx);

/* `clock` (CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID...) now, in ns.
 * Any thread, no GIL. */
static inline int64_t
pp__clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* 1 if data starts with PP_CODEC_MAGIC. */
static inline int
pp__codec_is(const unsigned char *data, size_t size)
{
    return size >= sizeof(PP_CODEC_MAGIC) - 1 &&
           memcmp(data, PP_CODEC_MAGIC, sizeof(PP_CODEC_MAGIC) - 1) == 0;
}

/* ---- by-value functions kept by the engine (fnstore.c) ------------ */

/* The size of the header of a by-value function reference
 * ("\0v<token>\0module\0qualname\0", see poolparty._byvalue), with the
 * token in *token (when not NULL); 0 when `data` is not one.  A task
 * built for an engine carries just this header as its function (the
 * bytes after it go to the engine's store).  No tstate needed. */
size_t pp__fn_header(const unsigned char *data, size_t size, uint64_t *token);
/* How much of function reference `func` a task for an engine carries:
 * the header of a by-value reference, else all of it. */
size_t pp__fn_task_part(const void *func, size_t size);

/* The function bytes of the by-value tasks an engine has queued or
 * running, each kept once.  An entry is held by each such task; with
 * no holds it stays idle until idle entries pass PP_FN_IDLE_BYTES, the
 * least recently used going first (see fnstore.c).  Raw memory; `lock`
 * is a leaf: these take it with any GIL or none. */
#define PP_FN_IDLE_BYTES ((size_t)32 << 20)
typedef struct pp_fn_entry pp_fn_entry;
typedef struct pp_fn_store {
    pthread_mutex_t lock;
    pp_fn_entry *held;     /* lock: entries some task holds */
    pp_fn_entry *idle;     /* lock: the rest, most recently released
                              first, to idle_last */
    pp_fn_entry *idle_last; /* lock */
    size_t count;          /* lock: entries now */
    size_t bytes;          /* lock: their bytes now */
    size_t idle_bytes;     /* lock: bytes of entries with no holds */
    uint64_t copies;       /* lock: entries ever stored */
    uint64_t copied_bytes; /* lock: bytes ever copied in */
    atomic_uint_fast64_t fetches; /* reads by workers (no lock: a count) */
} pp_fn_store;
typedef struct pp_fn_stats {
    size_t entries, bytes, idle_bytes;
    uint64_t copies, copied_bytes, fetches;
} pp_fn_stats;
void pp__fn_store_init(pp_fn_store *s);
/* Free every entry.  Nobody may use the store any more. */
void pp__fn_store_fini(pp_fn_store *s);
/* Hold the function of the chain of `count` tasks starting at `first`,
 * whose function part is the header of `func` (a whole by-value
 * reference, header and bytes), copying the bytes in if they are not
 * stored yet: one hold per task, recorded in its fn_held.  Does nothing
 * unless func is such a reference.  PP_OK or PP_ENOMEM (no hold taken). */
int pp__fn_store_hold(pp_fn_store *s, pp_msg *first, size_t count,
                      const unsigned char *func, size_t size);
/* Drop the hold of each task of the chain that has one (the task is
 * done or dropped); an entry goes idle with its last hold, and idle
 * ones past PP_FN_IDLE_BYTES are freed.  No lock taken when no task of
 * the chain holds one. */
void pp__fn_store_release_chain(pp_fn_store *s, pp_msg *first);
/* The same for one task (its ->next is ignored). */
void pp__fn_store_release(pp_fn_store *s, pp_msg *task);
/* The stored bytes of the function whose entry task holds, in *data and
 * *size, valid while it holds it.  PP_OK, or PP_ENOTFOUND when the task
 * holds none. */
int pp__fn_store_find(pp_fn_store *s, const pp_msg *task,
                      const unsigned char **data, size_t *size);
void pp__fn_store_stats(pp_fn_store *s, pp_fn_stats *out);

/* One own-GIL subinterpreter and the Python objects that run tasks in
 * it.
 *
 * THE AUDITED PLACE: the PyObject fields below belong to `interp`, not
 * to the interpreter whose thread happens to hold this struct.  They
 * are read, called and released only while attached to a thread
 * state of `interp` (the sub GIL).  Nothing else in the core stores a
 * PyObject reachable from another interpreter. */
typedef struct pp_interp {
    PyInterpreterState *interp;
    PyThreadState *home;          /* created with the interpreter, bound
                                     to the OS thread that created it */
    pthread_t home_thread;
    /* loads, dumps, protocol: NULL until a task first needs pickle. */
    PyObject *loads;              /* pickle.loads          (sub GIL) */
    PyObject *dumps;              /* pickle.dumps          (sub GIL) */
    PyObject *protocol;           /* int 5                 (sub GIL) */
    PyObject *buffer_kw;          /* ("buffer_callback",)  (sub GIL) */
    PyObject *encode_error;       /* _worker.encode_error  (sub GIL) */
    PyObject *call_in_frame;      /* _worker.call_in_frame (sub GIL) */
    PyObject *map_in_frame;       /* _worker.map_in_frame  (sub GIL) */
    PyObject *resolve_function;   /* _worker.resolve_function (sub GIL) */
    PyObject *dumps_by_value;     /* _worker.dumps_by_value (sub GIL) */
    /* The last by-reference function unpickled here, kept with its
     * pickle so that the tasks of one map() unpickle it once. */
    PyObject *func;               /* (sub GIL) */
    unsigned char *func_pickle;   /* PyMem_Raw; func_pickle_size bytes */
    size_t func_pickle_size;
    pp_pins pins;                 /* the results' pinned buffers */
} pp_interp;

/* Create an isolated subinterpreter with its own GIL, set its sys.path,
 * import poolparty._worker and run _worker.bootstrap(decoded payload).
 *
 * Needs: no tstate.  On PP_OK returns with the new interpreter's home
 * thread state attached (sub GIL held) and *out owned by the caller.
 * On failure returns PP_EINTERP with no tstate attached, and
 * *failure (when not NULL) a PP_DONE_INIT_FAILED message describing
 * why, owned by the caller. */
int pp__interp_create(const pp_boot *boot, uint32_t worker, pp_interp **out,
                      pp_msg **failure);

/* Run one task message and return its completion (never NULL: when
 * memory runs out, a short static-text error is tried, then NULL).
 * Needs: sub GIL of `it`.  The task stays owned by the caller. */
pp_msg *pp__interp_run(pp_interp *it, const pp_msg *task);

/* Call into `it` from a thread of the main interpreter: release the
 * main GIL, run the task under the sub GIL, take the main GIL back.
 * Needs: main GIL.  Thread states for threads other than the home
 * thread are made per call. */
pp_msg *pp__interp_call(pp_interp *it, const pp_msg *task);

/* Run `source` in the interpreter's __main__ namespace.  PP_OK, or
 * PP_EINTERP with *failure (when not NULL) a PP_DONE_ERROR message.
 * Needs: main GIL (like pp__interp_call). */
int pp__interp_exec(pp_interp *it, const char *source, pp_msg **failure);

/* From a thread that came into a subinterpreter through pp__interp_call
 * or pp__interp_exec: import module `name` in the main interpreter (whose
 * thread state this thread set aside), unless it is already in the main
 * interpreter's sys.modules; whether the import works does not matter.
 * PP_OK once done, PP_ENOTFOUND when this thread did not come from the
 * main interpreter.  Needs: sub GIL; returns with it. */
int pp__interp_import_in_main(const char *name, size_t size);

/* End the interpreter and free `it`.  Needs: sub GIL of `it`, attached
 * through its home thread state, on the home thread.  Returns with no
 * tstate. */
void pp__interp_destroy_attached(pp_interp *it);

/* End the interpreter from any thread and free `it`.  Needs: no
 * tstate; no other thread may be using `it`. */
void pp__interp_destroy(pp_interp *it);

/* Raise `exc_type` (a static builtin exception type, shared by all
 * interpreters) asynchronously in the thread `thread_id` of `interp`
 * at its next bytecode boundary.  Needs: no tstate; the interpreter
 * must stay alive for the duration (the caller guarantees it). */
void pp__interp_interrupt(PyInterpreterState *interp,
                          unsigned long thread_id, PyObject *exc_type);

/* ---- the engine ---------------------------------------------------- */

typedef enum {
    PP_DESIGN_QUEUE = 0, /* native worker threads loop inside their sub */
    PP_DESIGN_CALL = 1,  /* main-interpreter threads call in per task */
} pp_design;

typedef struct pp_engine pp_engine;

/* A new engine with `nworkers` worker slots.  For PP_DESIGN_QUEUE the
 * native worker threads start at once, each creating its interpreter
 * in parallel; for PP_DESIGN_CALL the caller runs pp_engine_serve_calls
 * on threads of its own.  `maxtasks` 0 means unlimited.  `nice` > 0:
 * each worker thread lowers its scheduling priority by that much as it
 * starts (engine.c, yield_to_collector).  `cpus`: the cores the
 * process may run on, for the gate (engine.c); 0 leaves the gate off
 * (pp__engine_assume_cpus overrides both).  Takes
 * ownership of nothing; copies `boot`'s buffers.  Needs: any (no GIL
 * is waited for). */
int pp__engine_new(pp_design design, uint32_t nworkers, uint64_t maxtasks,
                   const char *sys_path, size_t sys_path_size,
                   const void *payload, size_t payload_size, int nice,
                   uint32_t cpus, pp_engine **out);
void pp__engine_incref(pp_engine *e);
/* Drop a reference; the last one frees the engine, which must then be
 * stopped (or never started). */
void pp__engine_decref(pp_engine *e);

/* Queue a task; the engine owns it on PP_OK.  PP_ESTATE when the engine
 * no longer accepts work (caller keeps the message).  Any GIL or none. */
int pp__engine_submit(pp_engine *e, pp_msg *task);
/* The same for `count` tasks linked by ->next, queued in one step. */
int pp__engine_submit_chain(pp_engine *e, pp_msg *first, size_t count);

/* pp__engine_submit_chain for tasks whose function part is `func`
 * cut to its by-value header (pp__fn_header), if it has one: the
 * engine keeps func's bytes for them (pp_fn_store) until they are done.
 * PP_ENOMEM when that copy fails (the caller keeps the tasks). */
int pp__engine_submit_fn(pp_engine *e, pp_msg *first, size_t count,
                         const void *func, size_t func_size);

/* From a worker's own thread (either design), running `task`: the
 * bytes of its by-value function kept by the engine, in *data and
 * *size, valid while the task runs.  PP_OK, or PP_ENOTFOUND when this
 * thread is no pool worker or the engine has no such bytes.  Any GIL. */
int pp__engine_function_bytes(const pp_msg *task, const unsigned char **data,
                              size_t *size);
void pp__engine_function_stats(pp_engine *e, pp_fn_stats *out);

/* A chunk in parts (docs/design.md, "A chunk in parts"): 1 if this
 * thread is a pool worker running `task` now, so that it may send some
 * of the task's results ahead with pp__engine_send_part; else 0.  Any
 * GIL. */
int pp__engine_runs(const pp_msg *task);
/* Push `part`, a PP_DONE_PART of the task this worker runs, to the
 * collector; or free it if terminate() gave that task up already.
 * `made_ns`: the worker's CPU time making and encoding it.  Then, if the
 * collector is behind (the gate), park until it is not.  Only on a
 * worker thread for which pp__engine_runs said 1, with the worker's
 * interpreter attached (its GIL held; released while parked).  Takes
 * ownership of part. */
void pp__engine_send_part(pp_msg *part, int64_t made_ns);
/* The gate measures what a result costs to make and to decode only on
 * results this large (encoded) and on a map chunk's parts: where results
 * are smaller, parking is not worth its sleep and wake-up, and the clock
 * reads are not worth their system calls (engine.c, "the gate"). */
#define PP_TIMED_RESULT_BYTES ((size_t)64 * 1024)
/* The collector spent `ns` of its CPU time decoding one part, or one
 * completion of PP_TIMED_RESULT_BYTES or more: the gate's other measure
 * (see pp__engine_send_part).  Any GIL or none. */
void pp__engine_decoded_cpu(pp_engine *e, int64_t ns);
/* The collector finished `count` completions that were neither parts
 * nor large: once a run of them is long enough the gate's measures are
 * stale, and a pool that made large results once stops parking for
 * small ones (engine.c, "the gate").  Any GIL or none. */
void pp__engine_untimed(pp_engine *e, size_t count);

/* Wait up to timeout_ns for completions and take all that are ready;
 * the caller reports starting on them to pp__engine_decoding, and those
 * it finishes with to pp__engine_collected.
 * PP_OK, PP_ETIMEDOUT, or PP_ECLOSED once every worker has exited and
 * everything was collected.  Needs: no tstate (it blocks). */
int pp__engine_collect(pp_engine *e, int64_t timeout_ns, pp_msg **out,
                       size_t *count);
/* The gate's account of the collector (engine.c, "the gate"): kept only
 * once the gate is armed -- the engine is gated and has timed a large
 * result (a worker parks only then) -- so that a pool of small results
 * pays nothing for it; and once kept, kept for good, every completion
 * counted from pp__engine_decoding to pp__engine_collected.  So the
 * collector starts keeping it at a batch it takes fresh from the core,
 * none held from before.  This needs one collecting thread per engine,
 * as the pools have (a second one could hold a batch taken before the
 * account began).  All: any GIL or none. */
int pp__engine_gate_armed(const pp_engine *e);
/* The collector is about to wait (pp__engine_collect) for completions:
 * it is not busy. */
void pp__engine_waiting(pp_engine *e);
/* The collector has the main GIL again and starts on the `count`
 * completions pp__engine_collect gave it: from now on they count as
 * undecoded, which parked workers wait on.  Not before: a collector
 * waiting for the main GIL -- the caller's thread running Python -- is
 * not behind on work a parked worker would make room for. */
void pp__engine_decoding(pp_engine *e, size_t count);

/* Whether the gate can park this engine's workers (run_limit below
 * nworkers: see pp__engine_new's `cpus`); when not, the collector's
 * progress is neither timed nor counted.  Any GIL or none. */
int pp__engine_gated(const pp_engine *e);

/* The collector finished with `count` of the completions it took
 * (handed them out, and freed them), in `spent_ns`: its progress, which
 * parked workers wait for (the gate, engine.c; see
 * pp__engine_gate_armed).  Any GIL or none. */
void pp__engine_collected(pp_engine *e, size_t count, int64_t spent_ns);

/* The gate (engine.c): workers that may start a task while the
 * collector is behind, parks and stalls so far, workers parked now,
 * completions the collector holds and those queued for it, its average
 * ns per completion. */
typedef struct {
    uint32_t run_limit;
    uint32_t parked;
    uint64_t parks;
    uint64_t part_parks;
    uint64_t stalls;
    uint64_t undecoded;
    uint64_t queued;
    uint64_t decode_ns;
    uint64_t make_ns;
    uint64_t decode_cpu_ns;
    uint64_t untimed_run;
} pp_gate_stats;
void pp__engine_gate_stats(pp_engine *e, pp_gate_stats *out);

/* Cores that engines made from now on take the process to have, for the
 * gate, instead of the `cpus` they are made with (0, the default: their
 * own); returns the previous setting.  For tests and benchmarks.  Any
 * thread. */
uint32_t pp__engine_assume_cpus(uint32_t cpus);

/* Stop taking work; queued tasks still run, then workers exit. */
void pp__engine_close(pp_engine *e);

/* Stop taking work, drop every queued task (returned as a chain for the
 * caller to report), and interrupt running tasks at their next bytecode
 * boundary.  Needs: no tstate (it attaches to each worker's interpreter
 * briefly). */
pp_msg *pp__engine_terminate(pp_engine *e);

/* Stop waiting for the workers that have not exited yet, after
 * terminate(): each is *abandoned* -- the engine no longer counts it
 * (join() returns without it, its native thread is detached) and it
 * ends on its own once its blocked call returns (SystemExit is pending
 * there), ending its interpreter as usual; its completion is then
 * dropped.  For each, writes into the caller's arrays (nworkers long)
 * its id and the (job, index) of the task it was running, or UINT64_MAX
 * twice if none, so that the caller fails those results now.  PP_OK
 * (*count 0 once every worker has exited), or PP_ESTATE unless
 * terminate() came first.  Needs: no tstate. */
int pp__engine_abandon(pp_engine *e, uint64_t *jobs, uint64_t *indexes,
                       uint32_t *workers, uint32_t *count);

/* Abandoned workers, in every engine of the process, that still hold a
 * subinterpreter: waits up to timeout_ns (0: not at all; negative: for
 * ever) for there to be none, and returns how many are left.  Interpreter exit must wait for
 * them: CPython cannot finalize under a running subinterpreter.  Needs:
 * no tstate when timeout_ns > 0. */
uint32_t pp__abandoned_wait(int64_t timeout_ns);

/* Drop every queued task (returned as a chain) but keep the workers and
 * whatever they are running.  With after_start, first wait until every
 * worker has made its interpreter and taken a task if one was queued,
 * as a stdlib executor's new thread takes one as it starts.  Any GIL or
 * none; no tstate with after_start (it blocks). */
pp_msg *pp__engine_discard(pp_engine *e, int after_start);

/* Remove a queued, not yet started task.  PP_OK (the task will never
 * run) or PP_ENOTFOUND. */
int pp__engine_cancel(pp_engine *e, uint64_t job, uint64_t index);
/* Remove every queued, not yet started task of a job; returns them as
 * a chain for the caller to free (NULL if none). */
pp_msg *pp__engine_cancel_job(pp_engine *e, uint64_t job);

/* Wait up to timeout_ns for every worker to exit (abandoned ones are
 * not waited for).  PP_OK or PP_ETIMEDOUT; PP_ESTATE if the engine was
 * never told to stop.
 * Needs: no tstate. */
int pp__engine_join(pp_engine *e, int64_t timeout_ns);

/* PP_DESIGN_CALL only: be worker `worker` until the engine stops.
 * Creates the worker's interpreter on this thread, then per task: pops
 * with the main GIL released, takes the main GIL, calls into the
 * subinterpreter.  Needs: main GIL; returns with it. */
int pp__engine_serve_calls(pp_engine *e, uint32_t worker);

/* From a worker's own thread, under its sub GIL: ask the main
 * interpreter to import module `name` before this worker does, and wait
 * (sub GIL released) for the answer.  PP_OK once answered, PP_ENOTFOUND
 * when this thread is not a pool worker (nothing is asked). */
int pp__engine_request_main_import(const char *name, size_t size);

/* The main interpreter has handled worker `worker`'s import request.
 * Needs: no tstate. */
int pp__engine_answer_import(pp_engine *e, uint32_t worker);

/* Call fn(interp, arg) with worker `worker`'s interpreter, holding the
 * worker's life lock so that the interpreter cannot end meanwhile.  fn
 * may attach to it (pp__ts_attach_new) but must
 * delete its thread state before returning.  PP_OK, PP_ENOTFOUND when
 * that worker has no live interpreter right now, PP_EINVAL for a bad
 * index.  Needs: no tstate. */
int pp__engine_with_worker_interp(pp_engine *e, uint32_t worker,
                                  void (*fn)(PyInterpreterState *, void *),
                                  void *arg);
uint32_t pp__engine_nworkers(pp_engine *e);

/* ---- GIL sampler ----------------------------------------------------- */

/* Measures GIL contention the way gilknocker does for the main GIL: a
 * native thread per interpreter repeatedly takes that interpreter's GIL
 * and records how long each acquisition waited; contention is the total
 * wait over the elapsed time.  It samples the main interpreter and, with
 * an engine, each worker's own GIL. */
typedef struct pp_gil_sampler pp_gil_sampler;

/* Start sampling every `interval_ns`.  `engine` may be NULL (main GIL
 * only); otherwise a reference is held until pp__gil_sampler_free.
 * Needs: no tstate. */
int pp__gil_sampler_start(pp_engine *engine, int64_t interval_ns,
                          pp_gil_sampler **out);
/* Stop the sampler threads and write the contention of the main GIL and
 * of each worker (as fractions 0..1; a worker never sampled gets -1)
 * into main_out and workers_out[nworkers].  Needs: no tstate. */
void pp__gil_sampler_stop(pp_gil_sampler *s, double *main_out,
                          double *workers_out);
uint32_t pp__gil_sampler_nworkers(pp_gil_sampler *s);
void pp__gil_sampler_free(pp_gil_sampler *s);

/* Snapshot counters. */
size_t pp__engine_pending(pp_engine *e);
uint32_t pp__engine_live_workers(pp_engine *e);
pp_engine_state pp__engine_state(pp_engine *e);

#endif /* POOLPARTY_PP_INTERNAL_H */
