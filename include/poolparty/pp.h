/* poolparty's native core: the public header.
 *
 * Read docs/design.md first.  In short: a pool ("engine") owns two
 * pp_queues of pp_msg (tasks in, completions out) and a set of
 * workers.  Each worker owns one subinterpreter with its own GIL.
 *
 *  - Design "queue": a worker is a native thread that creates its
 *    subinterpreter and loops *inside* it, popping tasks.
 *  - Design "call": a worker is a thread of the main interpreter that
 *    pops a task with the main GIL released, then calls into its
 *    subinterpreter once per task (pp__interp_call in pp_internal.h).
 *
 * No PyObject ever travels between interpreters: tasks and results
 * are bytes (the core's codec for plain data, else a pickle) inside
 * pp_msg, in memory the core owns (malloc: msg.c needs no Python and
 * no GIL).  Large buffers that cannot change are not copied in: the
 * message refers to the sender's memory (pp_msg.pins) and the receiver
 * copies from it, raw; the sender's object stays with the sender.
 *
 * Error codes: functions return PP_OK (0) or a negative PP_E* code and
 * never set a Python exception, except where a contract says
 * otherwise.  pp__raise in src/module/module.c is the one place that
 * turns codes into exceptions.
 */
#ifndef POOLPARTY_PP_H
#define POOLPARTY_PP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes ------------------------------------------------ */

enum {
    PP_OK = 0,
    PP_ENOMEM = -1,     /* allocation failed */
    PP_ECLOSED = -2,    /* queue or engine closed: no more work */
    PP_ETIMEDOUT = -3,  /* a timed wait ran out */
    PP_ENOTFOUND = -4,  /* no such message / worker */
    PP_EINTERP = -5,    /* a subinterpreter could not be created */
    PP_ETHREAD = -6,    /* a native thread could not be started */
    PP_ESTATE = -7,     /* operation not allowed in the current state */
    PP_EINVAL = -8,     /* bad argument */
};

/* A short English description of a PP_E* code; never NULL. */
const char *pp_strerror(int code);

/* ---- messages ----------------------------------------------------- */

/* What a task message asks a worker to do.  A task's data is two
 * encodings back to back: the function (func_size bytes: a pickle, or a
 * name with PP_TASK_FUNC_BY_NAME), then its arguments (codec or
 * pickle). */
typedef enum {
    PP_TASK_CALL = 1,    /* func; (args, kwargs)  -> func(*args, **kwargs) */
    PP_TASK_MAP = 2,     /* func; items           -> [func(x) for x]      */
    PP_TASK_STARMAP = 3, /* func; items           -> [func(*x) for x]     */
    PP_TASK_KIND_MASK = 0xff,
    /* The function is pickled by reference (a module-level function,
     * builtin or class): a worker may keep the object it unpickled for
     * the next task whose function pickle is the same bytes.  Without
     * this flag every task unpickles its own copy, as multiprocessing
     * does. */
    PP_TASK_REUSE_FUNC = 0x100,
    /* The function bytes are not a pickle but "module\0qualname", what a
     * by-reference pickle holds: the worker imports the module and
     * follows the name, as unpickling would, without the pickle module;
     * or a by-value reference ("\0v" token, name, cloudpickle's bytes),
     * unpickled once per worker; a task queued on an engine carries
     * only the reference's header, the engine keeping the bytes (see
     * fnstore.c).  _worker.resolve_function resolves both.  Set
     * together with PP_TASK_REUSE_FUNC. */
    PP_TASK_FUNC_BY_NAME = 0x200,
} pp_task_kind;

/* How a task ended; the kind of a completion message. */
typedef enum {
    PP_DONE_OK = 16,          /* payload: the result, codec or pickle */
    PP_DONE_ERROR = 17,       /* payload: _worker.encode_error() output */
    PP_DONE_UNPICKLABLE = 18, /* payload: same, result could not be pickled */
    PP_DONE_INIT_FAILED = 19, /* a worker failed to start; payload as ERROR */
    /* 20 was PP_DONE_CANCELLED, never produced: a task dropped before
     * it ran (terminate, cancel) comes back to the caller as its
     * (job, index), not as a completion. */
    PP_DONE_MAIN_IMPORT = 21, /* not a completion: a worker asks the main
                                 interpreter to import the module named by
                                 the payload first, and waits for the
                                 answer (CPython 3.12, see engine.c) */
    PP_DONE_PART = 22,        /* payload: the codec's list of some of a map
                                 chunk's results, from position `first`
                                 on; more of the chunk follows, its last
                                 message an ordinary completion.  Engine
                                 .collect merges them: no one else sees
                                 one (docs/design.md, "A chunk in parts") */
} pp_done_kind;

/* One task or one completion.  Owned by exactly one party at a time:
 * whoever allocated it until it is pushed, then the queue, then
 * whoever popped it, who must pp_msg_free() it. */
typedef struct pp_msg {
    struct pp_msg *next; /* intrusive queue link; NULL outside a queue */
    uint64_t job;        /* submitter's job id */
    uint64_t index;      /* chunk index within the job */
    uint32_t kind;       /* pp_task_kind or pp_done_kind */
    uint32_t worker;     /* worker that produced a completion */
    size_t size;         /* bytes in data */
    size_t func_size;    /* tasks: the function pickle's share of data */
    uint64_t first;      /* completions: the chunk position of the first
                            result carried; 0 but for the later parts of
                            a chunk sent in parts (PP_DONE_PART) and its
                            last message */
    /* Large buffers the data refers to instead of carrying them (the
     * codec's pinned buffers, see codec.c), or NULL; pp_msg_free hands
     * them to the pin dropper (pp_msg_set_pin_dropper). */
    struct pp_pin *pins;
    /* Tasks: the entry of an engine's store of by-value functions that
     * this task holds (fnstore.c), or NULL.  Set when the hold is taken,
     * cleared when it is dropped, so that only a task that took a hold
     * can drop one. */
    struct pp_fn_entry *fn_held;
    /* msg.c's: the thread cache this message's block goes back to, or
     * NULL for a block of its own size (see msg.c). */
    struct pp_msg_cache *home;
    unsigned char data[];
} pp_msg;

/* A new message with `size` bytes of data copied from `data` (which
 * may be NULL to leave them uninitialised).  NULL when out of memory.
 * No GIL needed. */
pp_msg *pp_msg_new(uint64_t job, uint64_t index, uint32_t kind,
                   const void *data, size_t size);
/* A new task message whose data is `func` then `args` (copied).  NULL
 * when out of memory.  No GIL needed. */
pp_msg *pp_msg_new_task(uint64_t job, uint64_t index, uint32_t kind,
                        const void *func, size_t func_size, const void *args,
                        size_t args_size);
/* What pp_msg_free hands a message's pins to: the codec's (codec.c),
 * which needs no GIL, set before it makes the first pinned message
 * (this part of the core links without the codec).  Any thread. */
void pp_msg_set_pin_dropper(void (*drop)(struct pp_pin *first));
/* Free a message (NULL is fine).  No GIL needed. */
void pp_msg_free(pp_msg *msg);
/* Free a whole NULL-terminated chain linked through `next`. */
void pp_msg_free_chain(pp_msg *first);
/* Room for a message of `size` data bytes whose fields the caller sets
 * (`home` aside), or NULL.  pp_msg_resize changes that room as realloc
 * does (msg NULL: a new one), keeping the fields and data; pp_msg_free
 * or pp_msg_release (which leaves the pins alone) gives it back.  No
 * GIL needed. */
pp_msg *pp_msg_alloc(size_t size);
pp_msg *pp_msg_resize(pp_msg *msg, size_t size);
void pp_msg_release(pp_msg *msg);
/* A thread's message cache keeps at most PP_MSG_CACHE_LOCAL free blocks
 * it freed itself and PP_MSG_CACHE_RETURNED that other threads gave
 * back (msg.c); past them blocks go back to malloc.  Its own list can
 * hold more than PP_MSG_CACHE_LOCAL: when it runs dry the owner takes
 * the whole given-back stack into it, and others may give back as many
 * again meanwhile, so the spare blocks a cache can hold is
 * PP_MSG_CACHE_SPARE_MAX. */
#define PP_MSG_CACHE_LOCAL 256
#define PP_MSG_CACHE_RETURNED 1024
#define PP_MSG_CACHE_SPARE_MAX                                                \
    ((PP_MSG_CACHE_LOCAL > PP_MSG_CACHE_RETURNED ? PP_MSG_CACHE_LOCAL       \
                                                 : PP_MSG_CACHE_RETURNED) + \
     PP_MSG_CACHE_RETURNED)
/* The blocks of the threads' message caches (spare or carrying a
 * message), and the caches alive, process-wide (snapshots, for tests). */
void pp_msg_cache_stats(uint64_t *blocks, uint64_t *caches);

/* ---- queues -------------------------------------------------------- */

/* Opaque unbounded FIFO of pp_msg, safe for many producers and many
 * consumers.  Waiting blocks on a condition variable; nothing polls.
 * No function here touches Python: call them with no GIL held when
 * they may block. */
typedef struct pp_queue pp_queue;

/* Allocate an open, empty queue into *out.  PP_OK or PP_ENOMEM. */
int pp_queue_new(pp_queue **out);
/* Free the queue and every message still in it.  No thread may be
 * using it any more. */
void pp_queue_free(pp_queue *q);
/* Append msg; the queue owns it on PP_OK.  PP_ECLOSED if closed (the
 * caller keeps ownership). */
int pp_queue_push(pp_queue *q, pp_msg *msg);
/* Append a chain of `count` messages linked by ->next (FIFO order);
 * the queue owns them all on PP_OK.  PP_ECLOSED if closed (the caller
 * keeps them). */
int pp_queue_push_chain(pp_queue *q, pp_msg *first, size_t count);
/* Pop the oldest message into *out, waiting up to timeout_ns
 * (negative: forever; 0: don't wait).  PP_OK, PP_ETIMEDOUT, or
 * PP_ECLOSED once the queue is closed *and* empty.  A waiting thread
 * is handed the next pushed message at the push: from then on it is
 * this thread's, and drain/remove do not see it. */
int pp_queue_pop(pp_queue *q, int64_t timeout_ns, pp_msg **out);
/* Like pp_queue_pop but takes every queued message at once (a chain
 * in FIFO order) after waiting for the first one; *count is set to
 * its length. */
int pp_queue_pop_all(pp_queue *q, int64_t timeout_ns, pp_msg **out,
                     size_t *count);
/* Lingering, for a pop_all consumer that prefers fewer wake-ups to
 * prompter ones: once a pop_all took several messages (a backlog),
 * its next wait lasts at
 * most `linger_ns` before it looks again, and pp_queue_push_lazy does
 * not wake it sooner unless `batch` messages are then queued.
 * Ordinary pushes always wake it; a wait that ends with nothing queued
 * makes the next one wake for any push.  linger_ns 0 (the default):
 * every push wakes. */
void pp_queue_set_linger(pp_queue *q, int64_t linger_ns, size_t batch);
/* As pp_queue_push, but it leaves a lingering pop_all asleep (see
 * pp_queue_set_linger): the message waits for its deadline or batch. */
int pp_queue_push_lazy(pp_queue *q, pp_msg *msg);
/* 1 while a pop_all lingers (a snapshot, for tests). */
int pp_queue_lingering(pp_queue *q);
/* Refuse further pushes and wake every waiter.  Messages already
 * queued can still be popped.  Idempotent. */
void pp_queue_close(pp_queue *q);
/* Remove and return every queued message as a chain (NULL if none). */
pp_msg *pp_queue_drain(pp_queue *q);
/* Remove every queued message of this job; returns them as a chain in
 * FIFO order (NULL if none). */
pp_msg *pp_queue_remove_job(pp_queue *q, uint64_t job);
/* Remove the queued message with this (job, index) into *out.
 * PP_OK or PP_ENOTFOUND (it was never queued or a worker took it). */
int pp_queue_remove(pp_queue *q, uint64_t job, uint64_t index,
                    pp_msg **out);
/* Messages queued right now (a snapshot). */
size_t pp_queue_length(pp_queue *q);
/* Threads waiting in pp_queue_pop for a hand-off right now (a
 * snapshot). */
size_t pp_queue_waiting(pp_queue *q);

/* ---- engine lifecycle (pure state machine) ------------------------- */

/* The states an engine moves through.  Kept as a pure function so the
 * rules can be unit-tested without threads or Python. */
typedef enum {
    PP_ENGINE_RUNNING = 0,     /* accepts tasks */
    PP_ENGINE_CLOSED = 1,      /* no new tasks; queued ones still run */
    PP_ENGINE_TERMINATING = 2, /* queued tasks dropped, running ones
                                  interrupted */
    PP_ENGINE_STOPPED = 3,     /* all workers gone */
} pp_engine_state;

typedef enum {
    PP_EV_SUBMIT = 0,    /* a task is submitted */
    PP_EV_CLOSE = 1,     /* close(): finish queued work */
    PP_EV_TERMINATE = 2, /* terminate(): drop queued, interrupt running */
    PP_EV_JOINED = 3,    /* the last worker has exited */
} pp_engine_event;

/* The state after `event` in `state` into *next.  PP_OK, or
 * PP_ESTATE if the event is refused (e.g. SUBMIT once closed); *next
 * is then unchanged. */
int pp_engine_transition(pp_engine_state state, pp_engine_event event,
                         pp_engine_state *next);

#ifdef __cplusplus
}
#endif

#endif /* POOLPARTY_PP_H */
