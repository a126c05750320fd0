/* A cache of free obmalloc arenas for pool worker threads.
 *
 * Why: a task that builds a large result (65,536 ints is 2 MiB of
 * objects) takes fresh obmalloc arenas (1 MiB each on 64-bit 3.12 and
 * 3.13), its worker encodes the result and frees it, and obmalloc then
 * gives every wholly free arena but one back to the arena allocator
 * (bpo-37257 keeps the one), which munmaps it.  The next task mmaps
 * again and faults every page in anew, and each munmap sends TLB
 * shootdowns to the cores running the process's other threads (the
 * collector, the other workers).  Here a worker thread keeps up to
 * `limit` freed arenas and hands them out again.
 *
 * How: one process-wide wrapper installed with the public
 * PyObject_SetArenaAllocator, around the allocator that was there (it
 * gets every request it does not serve, so arenas made before the
 * install are freed by the allocator that made them).  CPython reads
 * that allocator (_PyRuntime's obj_arena: one per process, not per
 * interpreter) without a lock from whichever thread makes or frees an
 * arena, under that interpreter's GIL; several own-GIL interpreters do
 * so at once.  Only threads marked as pool workers (pp__arena_worker_
 * begin) cache, in thread-local slots, so nothing here takes a lock;
 * every other thread goes straight to the wrapped allocator.  A worker
 * gives its arenas back when it has waited a while for a task
 * (pp__arena_release, from engine.c's next_task) and when it exits
 * (pp__arena_worker_end, after its interpreter is ended).
 *
 * Free-threaded builds allocate objects with mimalloc, not obmalloc
 * (the arena allocator only backs thread stack chunks there): nothing
 * is installed and every function is a no-op. */
#include "pp_internal.h"

/* obmalloc's ARENA_SIZE (pycore_obmalloc.h): 1 MiB with 64-bit
 * pointers, 256 KiB otherwise.  Only blocks of exactly this size are
 * cached; the allocator also backs frame-stack chunks of other sizes
 * (pystate.c), which pass through. */
#define ARENA_BYTES (sizeof(void *) > 4 ? (size_t)1 << 20 : (size_t)1 << 18)

#ifndef Py_GIL_DISABLED

/* The allocator that was installed before ours.  Written once, before
 * ours is installed (install_once), read-only after. */
static PyObjectArenaAllocator wrapped;

/* Arenas a worker keeps at most; pp__arena_set_limit changes it (tests,
 * benchmarks).  Read by the workers with no lock (a worker that reads
 * an old bound keeps one arena more or fewer once). */
static atomic_uint limit = PP_ARENA_CACHE_DEFAULT;

/* Process-wide counts for pp__arena_stats (relaxed: counts only). */
static atomic_uint_fast64_t n_hits;     /* arenas handed out again */
static atomic_uint_fast64_t n_kept;     /* freed arenas a worker kept */
static atomic_uint_fast64_t n_passed;   /* freed past the bound */
static atomic_uint_fast64_t n_returned; /* given back (idle, exit) */
static atomic_int_fast64_t n_held;      /* in the caches now */

/* This thread's cache.  Only its own thread touches it. */
typedef struct {
    int on; /* a pool worker: pp__arena_worker_begin .. _end */
    unsigned count;
    void *slot[PP_ARENA_CACHE_SLOTS];
} arena_cache;

static _Thread_local arena_cache my;

/* The arena allocator's alloc: this thread's last kept arena if it
 * caches one, else the wrapped allocator's.  Runs under the GIL of the
 * interpreter obmalloc allocates for (any), no lock (thread-local). */
static void *
arena_alloc(void *ctx, size_t size)
{
    if (my.count > 0 && size == ARENA_BYTES) {
        atomic_fetch_add_explicit(&n_hits, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&n_held, 1, memory_order_relaxed);
        return my.slot[--my.count];
    }
    return wrapped.alloc(ctx, size);
}

/* The arena allocator's free: a pool worker keeps the arena while it
 * holds fewer than `limit`, else (and every other thread) the wrapped
 * allocator frees it.  NULL is never kept: 3.13's free_obmalloc_arenas,
 * at an interpreter's end, frees its unused arena slots too, with
 * address 0, and a kept NULL handed out would read as out of memory.
 * Same GIL and lock as arena_alloc. */
static void
arena_free(void *ctx, void *ptr, size_t size)
{
    if (my.on && size == ARENA_BYTES && ptr != NULL) {
        unsigned bound = atomic_load_explicit(&limit, memory_order_relaxed);
        if (my.count < bound) {
            my.slot[my.count++] = ptr;
            atomic_fetch_add_explicit(&n_kept, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&n_held, 1, memory_order_relaxed);
            return;
        }
        atomic_fetch_add_explicit(&n_passed, 1, memory_order_relaxed);
    }
    wrapped.free(ctx, ptr, size);
}

static pthread_once_t installed = PTHREAD_ONCE_INIT;

/* Wrap the installed arena allocator, once per process.  Our ctx is the
 * wrapped one's, and arena_alloc/arena_free pass it through: obmalloc
 * reads the allocator's function and ctx without a lock, so a thread of
 * another own-GIL interpreter that makes or frees an arena while we
 * install can pair the old function with the new ctx or the reverse;
 * with one ctx either pair is right (and each pointer is written
 * whole).  Blocks cross freely between the two functions: ours hands
 * out only blocks the wrapped one made, and frees through it.
 * Needs: the GIL of the interpreter importing us (pthread_once runs it
 * once per process). */
static void
install_once(void)
{
    PyObject_GetArenaAllocator(&wrapped);
    if (wrapped.alloc == NULL || wrapped.free == NULL) {
        return; /* nothing to wrap: leave it alone */
    }
    PyObjectArenaAllocator ours = {wrapped.ctx, arena_alloc, arena_free};
    PyObject_SetArenaAllocator(&ours);
}

/* Needs: any GIL.  See pp_internal.h. */
void
pp__arena_install(void)
{
    pthread_once(&installed, install_once);
}

/* Needs: no tstate or any GIL.  See pp_internal.h. */
void
pp__arena_worker_begin(void)
{
    my.on = 1;
}

/* Needs: no tstate or any GIL.  See pp_internal.h. */
void
pp__arena_release(void)
{
    unsigned n = my.count;
    if (n == 0) {
        return;
    }
    while (my.count > 0) {
        wrapped.free(wrapped.ctx, my.slot[--my.count], ARENA_BYTES);
    }
    atomic_fetch_add_explicit(&n_returned, n, memory_order_relaxed);
    atomic_fetch_sub_explicit(&n_held, (int_fast64_t)n,
                              memory_order_relaxed);
}

/* Needs: no tstate or any GIL.  See pp_internal.h. */
int
pp__arena_held(void)
{
    return my.count > 0;
}

/* Needs: no tstate or any GIL.  See pp_internal.h. */
void
pp__arena_worker_end(void)
{
    pp__arena_release();
    my.on = 0;
}

/* Any GIL or none.  See pp_internal.h. */
unsigned
pp__arena_set_limit(unsigned n)
{
    if (n > PP_ARENA_CACHE_SLOTS) {
        n = PP_ARENA_CACHE_SLOTS;
    }
    return atomic_exchange(&limit, n);
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__arena_stats(pp_arena_stats *out)
{
    out->hits = atomic_load_explicit(&n_hits, memory_order_relaxed);
    out->kept = atomic_load_explicit(&n_kept, memory_order_relaxed);
    out->passed = atomic_load_explicit(&n_passed, memory_order_relaxed);
    out->returned = atomic_load_explicit(&n_returned, memory_order_relaxed);
    int_fast64_t held = atomic_load_explicit(&n_held, memory_order_relaxed);
    out->held = held > 0 ? (uint64_t)held : 0;
    out->limit = atomic_load_explicit(&limit, memory_order_relaxed);
    out->arena_bytes = ARENA_BYTES;
    out->installed = wrapped.alloc != NULL;
}

#else /* Py_GIL_DISABLED: mimalloc, no arenas to cache */

void
pp__arena_install(void)
{
}

void
pp__arena_worker_begin(void)
{
}

void
pp__arena_release(void)
{
}

int
pp__arena_held(void)
{
    return 0;
}

void
pp__arena_worker_end(void)
{
}

unsigned
pp__arena_set_limit(unsigned n)
{
    (void)n;
    return 0;
}

void
pp__arena_stats(pp_arena_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->arena_bytes = ARENA_BYTES;
}

#endif /* Py_GIL_DISABLED */
