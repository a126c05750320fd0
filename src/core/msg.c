/* Messages: the only containers that carry work between interpreters.
 *
 * Memory comes from malloc rather than PyMem_RawMalloc: messages are
 * created and freed by threads that may hold any interpreter's GIL or
 * none, and the C unit tests link this file without libpython.
 *
 * THE MESSAGE CACHES.  Nearly every message is made on one thread and
 * freed on another: a task by the caller and a worker, a completion by
 * a worker and the collector.  glibc's free() of a block from another
 * thread's arena locks that arena, against its owner's malloc() and
 * the other threads' free(); for tiny tasks that lock, its futex
 * wake-ups and the arenas' trimming and refaulting were a third of a
 * task's CPU (docs/design.md, "Messages that stay home").  So a small
 * message (at most BLOCK bytes in all) lives in a block of exactly
 * BLOCK bytes that belongs to the thread that first allocated it:
 *   - its owner keeps its free blocks on a list of its own (`local`,
 *     no atomics) and allocates from it;
 *   - any other thread gives a block back by pushing it onto the
 *     owner's `returned` stack (one compare-and-swap, no lock), which
 *     the owner takes whole when `local` runs dry;
 *   - both are bounded (LOCAL_MAX, RETURNED_MAX): past them a block
 *     goes back to malloc, so memory never grows past what was in
 *     flight at once plus those bounds per thread;
 *   - the owner thread's exit (a pthread key's destructor) frees its
 *     spare blocks and closes `returned` with the CLOSED mark, so that
 *     a late give-back frees its block instead; the cache itself goes
 *     with its last block (`refs`).
 * `returned` is only ever pushed onto one node at a time and taken
 * whole, never popped one node at a time, so a compare-and-swap cannot
 * be fooled by a node that left and came back (ABA).  Bigger messages
 * have blocks of their own size (home NULL), malloc'd and freed as
 * before. */
#include "poolparty/pp.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* A cached block's size, header included: a no-op task (function name,
 * its codec-encoded argument and the encoder's first 256 bytes of
 * room) and a small result fit. */
#define BLOCK 512
/* Free blocks an owner keeps on its own list, and that other threads
 * may give back to it before they free theirs instead (a completion
 * batch is 64; a map's chunks come back in thousands). */
#define LOCAL_MAX PP_MSG_CACHE_LOCAL
#define RETURNED_MAX PP_MSG_CACHE_RETURNED
/* `returned` of a cache whose owner exited. */
#define CLOSED ((pp_msg *)1)

typedef struct pp_msg_cache {
    /* The owner's line. */
    pp_msg *local;            /* owner thread only: free blocks */
    size_t nlocal;            /* owner thread only */
    atomic_size_t refs;       /* the owner's (until it exits) + one per
                                 block allocated and not yet freed */
    struct pp_msg_cache *prev, *next; /* every cache (caches_lock) */
    /* The givers' line, apart so that their compare-and-swaps do not
     * keep taking the owner's fields away from its core. */
    _Alignas(64) _Atomic(pp_msg *) returned; /* given back, or CLOSED */
    atomic_size_t nreturned;  /* >= the blocks on `returned`: each giver
                                 counts before it pushes */
} pp_msg_cache;

/* This thread's cache, or NULL until it allocates a small message. */
static _Thread_local pp_msg_cache *my_cache;
static pthread_key_t cache_key; /* the same, for its destructor */
static pthread_once_t cache_key_once = PTHREAD_ONCE_INIT;
static int cache_key_ok;

/* Every cache alive, for pp_msg_cache_stats.  A leaf lock, taken only
 * when a cache is made or freed and for the stats. */
static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static pp_msg_cache *caches; /* caches_lock */

/* Drop one reference; the last frees the cache.  Any thread. */
static void
cache_unref(pp_msg_cache *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1) {
        return;
    }
    pthread_mutex_lock(&caches_lock);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    }
    else {
        caches = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    pthread_mutex_unlock(&caches_lock);
    free(c);
}

/* Hand a cached block back to malloc.  Any thread. */
static void
block_free(pp_msg *block)
{
    pp_msg_cache *c = block->home;
    free(block);
    cache_unref(c);
}

/* Free a chain of cached blocks (linked by ->next).  Any thread. */
static void
block_free_chain(pp_msg *first)
{
    while (first != NULL) {
        pp_msg *next = first->next;
        block_free(first);
        first = next;
    }
}

/* Take every block given back to c, leaving `returned` set to `rest`
 * (NULL, or CLOSED at the owner's exit); their number in *n.  The
 * owner's thread (or its exit). */
static pp_msg *
take_returned(pp_msg_cache *c, pp_msg *rest, size_t *n)
{
    pp_msg *given = atomic_exchange(&c->returned, rest);
    size_t count = 0;
    for (pp_msg *m = given; m != NULL; m = m->next) {
        count++;
    }
    /* Each giver counted before it pushed: exactly these are off it. */
    atomic_fetch_sub(&c->nreturned, count);
    *n = count;
    return given;
}

/* The pthread key's destructor: this thread is exiting.  Its spare
 * blocks go back to malloc; `returned` is closed in the same atomic
 * step that takes what it holds, so that a give-back racing this exit
 * either lands before (freed here) or sees CLOSED (frees its block
 * itself).  No GIL. */
static void
cache_exit(void *arg)
{
    pp_msg_cache *c = arg;
    my_cache = NULL;
    block_free_chain(c->local); /* nobody reads local again */
    size_t n;
    block_free_chain(take_returned(c, CLOSED, &n));
    cache_unref(c); /* the owner's */
}

static void
make_cache_key(void)
{
    cache_key_ok = pthread_key_create(&cache_key, cache_exit) == 0;
}

/* This thread's cache, made on first use; NULL when it cannot be
 * (no memory, no key: small messages then get blocks of their own). */
static pp_msg_cache *
this_cache(void)
{
    if (my_cache != NULL) {
        return my_cache;
    }
    pthread_once(&cache_key_once, make_cache_key);
    if (!cache_key_ok) {
        return NULL;
    }
    pp_msg_cache *c = aligned_alloc(_Alignof(pp_msg_cache), sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    memset(c, 0, sizeof(*c));
    atomic_init(&c->returned, NULL);
    atomic_init(&c->nreturned, 0);
    atomic_init(&c->refs, 1);
    if (pthread_setspecific(cache_key, c) != 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_lock(&caches_lock);
    c->next = caches;
    if (caches != NULL) {
        caches->prev = c;
    }
    caches = c;
    pthread_mutex_unlock(&caches_lock);
    my_cache = c;
    return c;
}

/* A BLOCK-byte block from this thread's cache (its own list, else what
 * others gave back, else malloc), or NULL.  Any thread. */
static pp_msg *
block_alloc(void)
{
    pp_msg_cache *c = this_cache();
    if (c == NULL) {
        return NULL;
    }
    if (c->local == NULL && atomic_load_explicit(&c->returned,
                                                 memory_order_relaxed)) {
        c->local = take_returned(c, NULL, &c->nlocal);
    }
    pp_msg *block = c->local;
    if (block != NULL) {
        c->local = block->next;
        c->nlocal--;
        return block;
    }
    block = malloc(BLOCK);
    if (block == NULL) {
        return NULL;
    }
    atomic_fetch_add(&c->refs, 1);
    block->home = c;
    return block;
}

/* Give a cached block back to its owner's cache, or to malloc past the
 * bounds or after the owner exited.  Any thread. */
static void
block_give_back(pp_msg *block)
{
    pp_msg_cache *c = block->home;
    if (c == my_cache) {
        if (c->nlocal < LOCAL_MAX) {
            block->next = c->local;
            c->local = block;
            c->nlocal++;
            return;
        }
        block_free(block);
        return;
    }
    /* Counted before the push: once pushed, the block is the owner's
     * and c may be freed at any moment (the owner exits and frees it),
     * so nothing of c is touched after a successful push. */
    if (atomic_fetch_add(&c->nreturned, 1) >= RETURNED_MAX) {
        atomic_fetch_sub(&c->nreturned, 1);
        block_free(block);
        return;
    }
    pp_msg *head = atomic_load_explicit(&c->returned, memory_order_relaxed);
    do {
        if (head == CLOSED) {
            atomic_fetch_sub(&c->nreturned, 1);
            block_free(block); /* c lives until this block's reference */
            return;
        }
        block->next = head;
    } while (!atomic_compare_exchange_weak_explicit(
        &c->returned, &head, block, memory_order_release,
        memory_order_relaxed));
}

/* Any thread, no lock. */
pp_msg *
pp_msg_alloc(size_t size)
{
    if (size > SIZE_MAX - sizeof(pp_msg)) {
        return NULL;
    }
    if (sizeof(pp_msg) + size <= BLOCK) {
        pp_msg *block = block_alloc();
        if (block != NULL) {
            return block;
        }
    }
    pp_msg *msg = malloc(sizeof(pp_msg) + size);
    if (msg != NULL) {
        msg->home = NULL;
    }
    return msg;
}

/* Any thread, no lock. */
pp_msg *
pp_msg_resize(pp_msg *msg, size_t size)
{
    if (msg == NULL) {
        return pp_msg_alloc(size);
    }
    if (size > SIZE_MAX - sizeof(pp_msg)) {
        return NULL;
    }
    if (msg->home == NULL) {
        return realloc(msg, sizeof(pp_msg) + size);
    }
    if (sizeof(pp_msg) + size <= BLOCK) {
        return msg; /* it fits where it is */
    }
    pp_msg *bigger = malloc(sizeof(pp_msg) + size);
    if (bigger == NULL) {
        return NULL;
    }
    memcpy(bigger, msg, BLOCK);
    bigger->home = NULL;
    block_give_back(msg);
    return bigger;
}

/* Any thread, no lock. */
void
pp_msg_release(pp_msg *msg)
{
    if (msg == NULL) {
        return;
    }
    if (msg->home != NULL) {
        block_give_back(msg);
    }
    else {
        free(msg);
    }
}

/* Takes caches_lock. */
void
pp_msg_cache_stats(uint64_t *blocks, uint64_t *ncaches)
{
    *blocks = *ncaches = 0;
    pthread_mutex_lock(&caches_lock);
    for (pp_msg_cache *c = caches; c != NULL; c = c->next) {
        /* refs: the blocks, and the owner's while `returned` is open. */
        size_t refs = atomic_load(&c->refs);
        *blocks += refs - (atomic_load(&c->returned) != CLOSED);
        (*ncaches)++;
    }
    pthread_mutex_unlock(&caches_lock);
}

/* A new message owning a copy of `data`; NULL when out of memory or
 * when `size` would overflow.  Any thread, no lock. */
pp_msg *
pp_msg_new(uint64_t job, uint64_t index, uint32_t kind, const void *data,
           size_t size)
{
    pp_msg *msg = pp_msg_alloc(size);
    if (msg == NULL) {
        return NULL;
    }
    msg->next = NULL;
    msg->job = job;
    msg->index = index;
    msg->kind = kind;
    msg->worker = 0;
    msg->size = size;
    msg->func_size = 0;
    msg->pins = NULL;
    msg->fn_held = NULL;
    msg->first = 0;
    if (data != NULL && size > 0) {
        memcpy(msg->data, data, size);
    }
    return msg;
}

/* NULL when out of memory or when the sizes would overflow.  Any thread,
 * no lock. */
pp_msg *
pp_msg_new_task(uint64_t job, uint64_t index, uint32_t kind,
                const void *func, size_t func_size, const void *args,
                size_t args_size)
{
    if (func_size > SIZE_MAX - args_size) {
        return NULL;
    }
    pp_msg *msg = pp_msg_new(job, index, kind, NULL, func_size + args_size);
    if (msg == NULL) {
        return NULL;
    }
    if (func_size) {
        memcpy(msg->data, func, func_size);
    }
    if (args_size) {
        memcpy(msg->data + func_size, args, args_size);
    }
    msg->func_size = func_size;
    return msg;
}

/* One for the process: every pinned message is the codec's.  Atomic:
 * each interpreter's first pin owner sets it (the same function). */
static _Atomic(void (*)(struct pp_pin *)) pin_dropper;

void
pp_msg_set_pin_dropper(void (*drop)(struct pp_pin *first))
{
    atomic_store(&pin_dropper, drop);
}

/* Any thread, no lock. */
void
pp_msg_free(pp_msg *msg)
{
    if (msg != NULL && msg->pins != NULL) {
        atomic_load(&pin_dropper)(msg->pins);
    }
    pp_msg_release(msg);
}

/* Any thread, no lock; the chain must not be in a queue. */
void
pp_msg_free_chain(pp_msg *first)
{
    while (first != NULL) {
        pp_msg *next = first->next;
        pp_msg_free(first);
        first = next;
    }
}

const char *
pp_strerror(int code)
{
    switch (code) {
    case PP_OK:
        return "success";
    case PP_ENOMEM:
        return "out of memory";
    case PP_ECLOSED:
        return "the pool is closed";
    case PP_ETIMEDOUT:
        return "timed out";
    case PP_ENOTFOUND:
        return "not found";
    case PP_EINTERP:
        return "could not create a subinterpreter";
    case PP_ETHREAD:
        return "could not start a native thread";
    case PP_ESTATE:
        return "not allowed in the pool's current state";
    case PP_EINVAL:
        return "invalid argument";
    default:
        return "unknown poolparty error";
    }
}
