/* The engine: one pool's queues and workers.
 *
 * LOCK ORDER (a lock on the left may be held while taking one on its
 * right, never the other way):
 *     any GIL        >  engine->mutex  >  pp_queue mutexes
 *     worker->life   >  a worker's sub GIL
 * engine->mutex is taken with a GIL held (the main one: submit, close;
 * a call-design worker's exit), and the queue mutexes under it (submit
 * pushes, close closes).  What makes that safe is the rule: no thread
 * waits for a GIL while it holds engine->mutex or a queue mutex (queue
 * mutexes are leaves, see queue.c).  worker->life is held while the
 * terminating thread attaches to a worker's interpreter (with no GIL of
 * its own), so every other taker of worker->life -- the worker in
 * publish_interp and retire_interp, an import request -- takes it with
 * no GIL held.  abandoned_lock, gate_lock (parked workers) and
 * fns.lock (the by-value function store, fnstore.c) are leaves: nothing
 * is taken or waited for under them.  The task a worker runs (task_state) takes no lock at all.
 *
 * Which field each lock guards is written next to the field. */
#include "pp_internal.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/resource.h>
#endif

typedef struct pp_worker {
    struct pp_engine *engine;
    uint32_t id;
    pthread_t thread;          /* PP_DESIGN_QUEUE only */
    int thread_started;        /* engine->mutex */
    pthread_mutex_t life;
    PyInterpreterState *interp; /* life: set while a task may run */
    unsigned long py_thread_id; /* life: the worker thread's ident */
    pthread_cond_t answered;    /* signalled under life */
    int import_answered;        /* life */
    int imports_cut;            /* life: terminate() stopped the waiting */
    int exited;                 /* engine->mutex: left its loop */
    /* The worker thread's own (the gate's measures, see timed_task): */
    int time_tasks;             /* its last result was a large one */
    int sent_part;              /* the task it runs sent a part */
    int abandoned;              /* engine->mutex: see pp__engine_abandon */
    /* The task this worker runs, so that abandoning the worker can fail
     * that task's result at once.  No lock (a pair of lock rounds per
     * task was a few percent of a no-op task's CPU): task_state is
     * (generation << 2) | TASK_IDLE, TASK_RUNNING or TASK_REPORTED; the
     * worker alone moves it to RUNNING, with a new generation, after
     * writing task_job and task_index, and back to IDLE; abandon moves
     * RUNNING to REPORTED with a compare-and-swap, which fails if the
     * worker ended that task (or began the next) meanwhile, so the job
     * and index abandon read before it are that task's.  See begin_task,
     * end_task, report_task. */
    atomic_uint_fast64_t task_state;
    atomic_uint_fast64_t task_job;
    atomic_uint_fast64_t task_index;
} pp_worker;

enum { TASK_IDLE = 0, TASK_RUNNING = 1, TASK_REPORTED = 2, TASK_MASK = 3 };

/* The worker this thread is, if it is one; lets code running inside a
 * worker's interpreter reach its engine without any PyObject. */
static _Thread_local pp_worker *current_worker;

struct pp_engine {
    atomic_long refcount;
    pp_design design;
    uint64_t maxtasks;          /* immutable; 0 = unlimited */
    pp_boot boot;               /* immutable after creation */
    pp_queue *tasks;            /* own lock */
    pp_queue *completions;      /* own lock */
    pthread_mutex_t mutex;
    pthread_cond_t exited;      /* signalled when live_workers drops */
    pthread_cond_t started;     /* signalled when booting drops */
    pp_engine_state state;      /* mutex */
    uint32_t live_workers;      /* mutex */
    uint32_t booting;           /* mutex: workers not yet at their first
                                   task (creating their interpreter) */
    pp_fn_store fns;            /* own leaf lock: by-value functions of
                                   the tasks queued or running */
    /* The collector first (see "The gate" below).  run_limit is
     * immutable: the workers that may start a task while the collector
     * is behind; nworkers when the cores are not oversubscribed. */
    uint32_t run_limit;
    /* The collector's account, kept once the gate is armed (see
     * pp__engine_gate_armed): */
    atomic_uint_fast64_t undecoded; /* completions it took and has not
                                       finished with */
    atomic_int collector_busy;      /* from pp__engine_decoding to its
                                       next pp__engine_waiting */
    atomic_uint_fast64_t released;  /* completions it finished since */
    atomic_uint_fast64_t decode_ns; /* its time per completion, averaged */
    /* A large result (a map chunk's part, or a task's result of
     * PP_TIMED_RESULT_BYTES or more), averaged: the CPU time a worker
     * spent making it, and the collector decoding it.  0 until some
     * came: only then does the gate know whether the collector keeps
     * up. */
    atomic_uint_fast64_t make_ns;
    atomic_uint_fast64_t decode_cpu_ns;
    /* Completions the collector took since its last large one: past
     * STALE_AFTER the two measures are old news (see collector_outpaced). */
    atomic_uint_fast64_t untimed_run;
    atomic_uint_fast32_t running;   /* workers not parked (gate_lock) */
    atomic_uint_fast32_t parked;    /* workers parked (gate_lock) */
    atomic_uint_fast64_t parks;     /* parks so far, for the stats */
    atomic_uint_fast64_t part_parks; /* those inside a chunk, at a part */
    atomic_uint_fast64_t stalls;    /* parks the collector left hanging */
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_open;       /* broadcast under gate_lock */
    int gate_off;                   /* gate_lock: terminate() opened it */
    uint64_t stalled_at;            /* gate_lock: `released` when the
                                       collector stalled, else UINT64_MAX */
    int nice;                   /* immutable: see yield_to_collector */
    uint32_t nworkers;          /* immutable */
    pp_worker workers[];
};

/* ---- reference counting and state ------------------------------------ */

void
pp__engine_incref(pp_engine *e)
{
    atomic_fetch_add(&e->refcount, 1);
}

/* Any thread; the last reference frees everything. */
void
pp__engine_decref(pp_engine *e)
{
    if (atomic_fetch_sub(&e->refcount, 1) != 1) {
        return;
    }
    for (uint32_t i = 0; i < e->nworkers; i++) {
        pthread_cond_destroy(&e->workers[i].answered);
        pthread_mutex_destroy(&e->workers[i].life);
    }
    pp_queue_free(e->tasks);
    pp_queue_free(e->completions);
    pp__fn_store_fini(&e->fns);
    pp__boot_fini(&e->boot);
    pthread_cond_destroy(&e->gate_open);
    pthread_mutex_destroy(&e->gate_lock);
    pthread_cond_destroy(&e->started);
    pthread_cond_destroy(&e->exited);
    pthread_mutex_destroy(&e->mutex);
    PyMem_RawFree(e);
}

/* An absolute CLOCK_REALTIME deadline `ns` from now. */
static struct timespec
realtime_after(int64_t ns)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    int64_t nsec = deadline.tv_nsec + ns % 1000000000;
    deadline.tv_sec += (time_t)(ns / 1000000000 + nsec / 1000000000);
    deadline.tv_nsec = (long)(nsec % 1000000000);
    return deadline;
}

/* ---- abandoned workers, process-wide ------------------------------- */

/* Workers that terminate() gave up waiting for (pp__engine_abandon):
 * each still holds a subinterpreter until its blocked call returns, and
 * CPython cannot finalize while one does, so interpreter exit waits for
 * this count to reach zero (pp__abandoned_wait).  Process-global, raw
 * C: no PyObject, one leaf mutex. */
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t abandoned_gone = PTHREAD_COND_INITIALIZER;
static uint32_t abandoned_alive; /* abandoned_lock */

/* Add `delta` (+n or -1) to the count.  Any thread, any GIL or none;
 * called under e->mutex (abandoned_lock is a leaf). */
static void
abandoned_add(int delta)
{
    pthread_mutex_lock(&abandoned_lock);
    abandoned_alive = (uint32_t)((int64_t)abandoned_alive + delta);
    pthread_cond_broadcast(&abandoned_gone);
    pthread_mutex_unlock(&abandoned_lock);
}

/* Needs: no tstate when it waits.  See pp_internal.h. */
uint32_t
pp__abandoned_wait(int64_t timeout_ns)
{
    struct timespec deadline = realtime_after(timeout_ns > 0 ? timeout_ns
                                                            : 0);
    pthread_mutex_lock(&abandoned_lock);
    while (abandoned_alive > 0 && timeout_ns != 0) {
        if (timeout_ns < 0) {
            pthread_cond_wait(&abandoned_gone, &abandoned_lock);
        }
        else if (pthread_cond_timedwait(&abandoned_gone, &abandoned_lock,
                                        &deadline) != 0) {
            break;
        }
    }
    uint32_t left = abandoned_alive;
    pthread_mutex_unlock(&abandoned_lock);
    return left;
}

/* One fewer worker the pool waits for; the last makes the engine
 * JOINED and returns 1: the caller then closes the completion queue
 * (after e->mutex), so that the collector delivers what is in it and
 * ends.  An abandoned worker's later completion is dropped there (its
 * task's result was failed when it was abandoned).  Needs e->mutex. */
static int
one_fewer_live_locked(pp_engine *e)
{
    e->live_workers--;
    pthread_cond_broadcast(&e->exited);
    if (e->live_workers > 0) {
        return 0;
    }
    pp_engine_state next;
    if (pp_engine_transition(e->state, PP_EV_JOINED, &next) == PP_OK) {
        e->state = next;
    }
    return 1;
}

/* A worker (NULL: one that never was) left its loop, its interpreter
 * ended.  Takes e->mutex. */
static void
worker_exited(pp_engine *e, pp_worker *w)
{
    pthread_mutex_lock(&e->mutex);
    int abandoned = w != NULL && w->abandoned;
    if (w != NULL) {
        w->exited = 1;
    }
    int last = !abandoned && one_fewer_live_locked(e);
    if (abandoned) {
        /* Under e->mutex, in the same step as `exited`: see abandon. */
        abandoned_add(-1);
    }
    pthread_mutex_unlock(&e->mutex);
    if (last) {
        pp_queue_close(e->completions);
    }
}

/* The worker starts `task`.  Only the worker's own thread; any GIL or
 * none.  The release store publishes job and index to report_task. */
static void
begin_task(pp_worker *w, const pp_msg *task)
{
    uint_fast64_t idle = atomic_load_explicit(&w->task_state,
                                              memory_order_relaxed);
    atomic_store_explicit(&w->task_job, task->job, memory_order_relaxed);
    atomic_store_explicit(&w->task_index, task->index, memory_order_relaxed);
    atomic_store_explicit(&w->task_state,
                          ((idle & ~(uint_fast64_t)TASK_MASK) + 4) |
                              TASK_RUNNING,
                          memory_order_release);
}

/* The worker is done with its task: 1 if its completion is still
 * wanted, 0 if abandoning the worker already failed that result.  Only
 * the worker's own thread; any GIL or none. */
static int
end_task(pp_worker *w)
{
    /* One read-modify-write, not a store: report_task may turn RUNNING
     * into REPORTED up to this very moment.  Clearing the state bits
     * leaves the generation and TASK_IDLE (0). */
    uint_fast64_t was =
        atomic_fetch_and(&w->task_state, ~(uint_fast64_t)TASK_MASK);
    return (was & TASK_MASK) != TASK_REPORTED;
}

/* Abandoning worker w: if it runs a task, mark it reported (its
 * completion will be dropped) and return 1 with its job and index; else
 * 0.  Any thread, any GIL or none. */
static int
report_task(pp_worker *w, uint64_t *job, uint64_t *index)
{
    uint_fast64_t state = atomic_load_explicit(&w->task_state,
                                               memory_order_acquire);
    while ((state & TASK_MASK) == TASK_RUNNING) {
        *job = atomic_load_explicit(&w->task_job, memory_order_relaxed);
        *index = atomic_load_explicit(&w->task_index, memory_order_relaxed);
        /* Fails if the worker ended this task or began another since
         * `state` was read: then look again (terminate() closed the
         * queue, so the worker runs out of tasks soon). */
        if (atomic_compare_exchange_weak(
                &w->task_state, &state,
                (state & ~(uint_fast64_t)TASK_MASK) | TASK_REPORTED)) {
            return 1;
        }
    }
    return 0;
}

/* Completions wake the collector in batches while workers have more
 * tasks queued: its completion queue lingers (queue.c) for at most
 * LINGER_NS after a take, and a worker's lazy push does not wake it
 * sooner unless LINGER_BATCH completions wait (what Engine.collect hands
 * out per call, PP_COLLECT_BATCH).  Each wake-up of the collector costs
 * it a main-GIL round and, downstream, a wake-up of the caller waiting
 * for those results; with one per completion, they were most of a tiny
 * task's cost (docs/design.md, "Completions in batches").  A result
 * never waits behind a task: the deadline holds whatever the workers
 * run meanwhile. */
#define LINGER_NS (200 * 1000)
#define LINGER_BATCH 64

/* ---- the gate: the collector first --------------------------------- */

/* Every result is rebuilt as objects by one thread, the collector, in
 * the main interpreter, one result after another: when results are
 * large, that serial work is what bounds the pool.  When the workers and
 * the collector are more threads than there are cores, the workers race
 * ahead of it and the scheduler shares the cores fairly among all of
 * them, so the collector -- the bottleneck -- runs at a fraction of a
 * core while the workers make a backlog.  So, on oversubscribed cores
 * only (run_limit < nworkers: nworkers + 1 > cores), a worker that has
 * finished a task while the collector is behind parks before taking the
 * next, as long as run_limit (cores - 1) other workers are not parked:
 * the collector keeps a core.  "Behind": the collector is busy (from
 * the moment it has the main GIL and starts on a batch to its next wait
 * for completions), and the completions it took and has not finished
 * (`undecoded`) plus the queued ones come to PARK_MIN_NS or more at its
 * measured time per completion (`decode_ns`): tiny results are not worth
 * a sleep and a wake-up.
 *
 * And only when the collector cannot keep up anyway.  With the cores
 * shared fairly among the workers and the collector, it keeps up as long
 * as it takes no longer to decode a result than one worker takes to make
 * it over nworkers: then a backlog is a passing one, and a parked worker
 * would only be missing at the map's end (data_floats: its decode a
 * third of its task, 1.18x the wall time parked at every backlog).  The
 * two are measured on large results only -- a map chunk's parts, whose
 * making is timed anyway (interp.c), and a task's result of
 * PP_TIMED_RESULT_BYTES or more (timed_task) -- as `make_ns` and
 * `decode_cpu_ns`.  Where no result is that large nothing is measured
 * and nobody parks (an imap of 4,096 floats a task, 32 KB each, lost 8 %
 * to parks).
 *
 * A parked worker goes on when the collector is no longer behind by
 * half that (it wakes them as it finishes a batch), when terminate()
 * opens the gate for good, or when the collector finished nothing for
 * PARK_STALL_NS (or four times what the batch it holds should take,
 * if longer): it may be running a callback that blocks, perhaps on
 * something only a later task does, so waiting longer could wait for
 * ever.  After such a stall no worker parks until the collector finishes
 * something again.  docs/design.md, "The collector first". */
#define PARK_MIN_NS ((uint64_t)50 * 1000)
#define PARK_STALL_NS ((int64_t)100 * 1000 * 1000)

/* The cores the gate takes this process to have, whatever an engine was
 * made with; 0, the default, leaves each engine's own.  For tests and
 * benchmarks. */
static atomic_uint assumed_cpus;

/* Any thread.  See pp_internal.h. */
uint32_t
pp__engine_assume_cpus(uint32_t cpus)
{
    return atomic_exchange(&assumed_cpus, cpus);
}

/* How far behind the collector is, in ns of its work: the completions it
 * took and has not finished, plus the queued ones, at its average time
 * per completion; 0 when it is not busy -- idle, lingering for more
 * (see queue.c) or waiting for the main GIL.  Busy includes what it does
 * between batches (delivering, and the main interpreter's garbage
 * collector, which the objects it made set off: a third of its time for
 * data_records).  Any GIL or none; no lock (snapshots: a parked worker
 * looks again when woken, and its wait is bounded). */
static uint64_t
collector_behind_ns(pp_engine *e)
{
    if (!atomic_load(&e->collector_busy)) {
        return 0;
    }
    return (atomic_load(&e->undecoded) + pp_queue_length(e->completions)) *
           atomic_load(&e->decode_ns);
}

/* A pool that made large results once and small ones since -- this
 * many completions, none timed -- no longer parks for them. */
#define STALE_AFTER 64

/* Whether the workers make results faster than the collector, with its
 * fair share of the cores, decodes them (see above): measured on large
 * results, so 0 until some came.  Any GIL or none; no lock. */
static int
collector_outpaced(pp_engine *e)
{
    uint64_t decode = atomic_load_explicit(&e->decode_cpu_ns,
                                           memory_order_relaxed);
    uint64_t make = atomic_load_explicit(&e->make_ns,
                                         memory_order_relaxed);
    return decode > 0 && make > 0 && decode * e->nworkers > make &&
           atomic_load_explicit(&e->untimed_run, memory_order_relaxed) <
               STALE_AFTER;
}

/* An average over the last few samples (weight 1/4 each).  Two threads
 * may race to store: one sample is lost, which an average can afford.
 * Any GIL or none. */
static void
average_into(atomic_uint_fast64_t *avg, int64_t sample)
{
    if (sample <= 0) {
        return;
    }
    uint64_t was = atomic_load_explicit(avg, memory_order_relaxed);
    atomic_store_explicit(avg,
                          was == 0 ? (uint64_t)sample
                                   : (was * 3 + (uint64_t)sample) / 4,
                          memory_order_relaxed);
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__engine_decoded_cpu(pp_engine *e, int64_t ns)
{
    average_into(&e->decode_cpu_ns, ns);
    if (atomic_load_explicit(&e->untimed_run, memory_order_relaxed) != 0) {
        atomic_store_explicit(&e->untimed_run, 0, memory_order_relaxed);
    }
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__engine_untimed(pp_engine *e, size_t count)
{
    /* Read first: an engine never armed writes nothing. */
    if (atomic_load_explicit(&e->make_ns, memory_order_relaxed) != 0 &&
        atomic_load_explicit(&e->untimed_run, memory_order_relaxed) <
            STALE_AFTER) {
        atomic_fetch_add_explicit(&e->untimed_run, count,
                                  memory_order_relaxed);
    }
}

/* Run `task` (run_task: the design's way) and say what making its result
 * cost, for the gate: the worker reads its CPU clock around a task only
 * while its last result was large (PP_TIMED_RESULT_BYTES or more), so
 * that a stream of small results pays nothing (a clock read is a system
 * call, a fifth of a no-op task), and not for a task that sent parts
 * (those were timed one by one).  Needs: what run_task needs. */
static pp_msg *
timed_task(pp_engine *e, pp_worker *w, pp_interp *it, const pp_msg *task,
           pp_msg *(*run_task)(pp_interp *, const pp_msg *))
{
    if (!pp__engine_gated(e)) {
        return run_task(it, task);
    }
    int64_t began = w->time_tasks
                        ? pp__clock_ns(CLOCK_THREAD_CPUTIME_ID) : -1;
    w->sent_part = 0;
    pp_msg *done = run_task(it, task);
    if (began >= 0 && done != NULL && !w->sent_part) {
        average_into(&e->make_ns,
                     pp__clock_ns(CLOCK_THREAD_CPUTIME_ID) - began);
    }
    w->time_tasks = done != NULL && done->size >= PP_TIMED_RESULT_BYTES;
    return done;
}

/* Any GIL or none.  See pp_internal.h. */
int
pp__engine_gated(const pp_engine *e)
{
    return e->run_limit < e->nworkers;
}

/* Whether a worker between tasks should park (see above).  The cheap
 * checks first: with cores to spare this is one compare.  Any GIL or
 * none; no lock. */
static int
should_park(pp_engine *e)
{
    return pp__engine_gated(e) &&
           atomic_load(&e->running) > e->run_limit &&
           collector_outpaced(e) && collector_behind_ns(e) >= PARK_MIN_NS;
}

/* Park the calling worker while the collector is behind (see above);
 * 1 if it did, 0 if it found it need not after all.  Needs: no tstate
 * (it blocks); takes gate_lock. */
static int
park(pp_engine *e)
{
    pthread_mutex_lock(&e->gate_lock);
    uint64_t seen = atomic_load(&e->released);
    /* Looked at again under the lock: two workers that finished at once
     * both saw the other running. */
    if (e->gate_off || seen == e->stalled_at ||
        atomic_load(&e->running) <= e->run_limit) {
        pthread_mutex_unlock(&e->gate_lock);
        return 0;
    }
    /* Counted before `behind` is read: the collector reads `parked`
     * after it changed `undecoded`, so either it sees this worker and
     * wakes it, or this worker sees what it released. */
    atomic_fetch_sub(&e->running, 1);
    atomic_fetch_add(&e->parked, 1);
    atomic_fetch_add(&e->parks, 1);
    /* A batch of large results (or slow callbacks) can take longer
     * than PARK_STALL_NS, and the collector reports its progress once
     * a batch: four times what the batch it holds should take. */
    uint64_t batch = atomic_load(&e->undecoded);
    batch = batch < LINGER_BATCH ? (batch > 0 ? batch : 1) : LINGER_BATCH;
    int64_t stall_ns = (int64_t)(atomic_load(&e->decode_ns) * batch * 4);
    stall_ns = stall_ns > PARK_STALL_NS ? stall_ns : PARK_STALL_NS;
    struct timespec deadline = realtime_after(stall_ns);
    while (!e->gate_off && collector_behind_ns(e) >= PARK_MIN_NS / 2) {
        if (pthread_cond_timedwait(&e->gate_open, &e->gate_lock,
                                   &deadline) != ETIMEDOUT) {
            continue;
        }
        uint64_t now = atomic_load(&e->released);
        if (now == seen) {
            /* Nothing finished in PARK_STALL_NS: stop waiting for it. */
            e->stalled_at = now;
            atomic_fetch_add(&e->stalls, 1);
            break;
        }
        seen = now;
        deadline = realtime_after(stall_ns);
    }
    atomic_fetch_sub(&e->parked, 1);
    atomic_fetch_add(&e->running, 1);
    pthread_mutex_unlock(&e->gate_lock);
    return 1;
}

/* Wake every parked worker.  Any GIL or none; takes gate_lock. */
static void
open_gate(pp_engine *e, int for_good)
{
    pthread_mutex_lock(&e->gate_lock);
    if (for_good) {
        e->gate_off = 1;
    }
    pthread_cond_broadcast(&e->gate_open);
    pthread_mutex_unlock(&e->gate_lock);
}

/* A worker leaves its loop for good: it no longer runs.  Takes
 * gate_lock. */
static void
leave_gate(pp_engine *e)
{
    atomic_fetch_sub(&e->running, 1);
    open_gate(e, 0);
}

/* Lower the calling worker thread's scheduling priority by e->nice
 * (0: leave it), once, as it starts: the pool asks for it when its
 * workers and the collector are more threads than the process has cores
 * (docs/design.md, "The collector first").  Then the scheduler runs the
 * collector -- the serial part -- as soon as it has work, and the workers
 * get every cycle it leaves: unlike parking, no core idles.  Linux only,
 * where PRIO_PROCESS 0 names the calling thread (elsewhere it would
 * renice the whole process, the caller's thread with it); a refusal
 * leaves the thread as it was.  The thread keeps the priority until it
 * exits, which it does when the engine stops.  Needs: nothing. */
static void
yield_to_collector(const pp_engine *e)
{
#ifdef __linux__
    if (e->nice > 0) {
        errno = 0;
        int now = getpriority(PRIO_PROCESS, 0);
        if (now != -1 || errno == 0) {
            (void)setpriority(PRIO_PROCESS, 0, now + e->nice);
        }
    }
#else
    (void)e;
#endif
}

/* Needs: no tstate.  See pp_internal.h. */
int
pp__engine_collect(pp_engine *e, int64_t timeout_ns, pp_msg **out,
                   size_t *count)
{
    return pp_queue_pop_all(e->completions, timeout_ns, out, count);
}

/* Any GIL or none.  See pp_internal.h. */
int
pp__engine_gate_armed(const pp_engine *e)
{
    return pp__engine_gated(e) &&
           atomic_load_explicit(&e->make_ns, memory_order_relaxed) != 0;
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__engine_waiting(pp_engine *e)
{
    /* Not busy until it starts on what it takes (see
     * collector_behind_ns).  With nothing queued it is about to wait or
     * linger for more: a parked worker goes on now.  (With some queued it
     * takes them at once and starts on them as soon as it has the main
     * GIL.) */
    atomic_store(&e->collector_busy, 0);
    if (atomic_load(&e->parked) > 0 && pp_queue_length(e->completions) == 0) {
        open_gate(e, 0);
    }
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__engine_decoding(pp_engine *e, size_t count)
{
    atomic_fetch_add(&e->undecoded, count);
    atomic_store(&e->collector_busy, 1);
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__engine_collected(pp_engine *e, size_t count, int64_t spent_ns)
{
    if (count == 0) {
        return;
    }
    average_into(&e->decode_ns, spent_ns / (int64_t)count);
    atomic_fetch_sub(&e->undecoded, count);
    atomic_fetch_add(&e->released, count);
    if (atomic_load(&e->parked) > 0 &&
        collector_behind_ns(e) < PARK_MIN_NS / 2) {
        open_gate(e, 0);
    }
}

void
pp__engine_gate_stats(pp_engine *e, pp_gate_stats *out)
{
    out->run_limit = e->run_limit;
    out->parks = atomic_load(&e->parks);
    out->part_parks = atomic_load(&e->part_parks);
    out->stalls = atomic_load(&e->stalls);
    out->parked = (uint32_t)atomic_load(&e->parked);
    out->undecoded = atomic_load(&e->undecoded);
    out->queued = pp_queue_length(e->completions);
    out->decode_ns = atomic_load(&e->decode_ns);
    out->make_ns = atomic_load(&e->make_ns);
    out->decode_cpu_ns = atomic_load(&e->decode_cpu_ns);
    out->untimed_run = atomic_load(&e->untimed_run);
}

/* Push a completion; if the collector is gone (queue closed, which only
 * happens after every worker exited) the message is dropped.  `lazy`:
 * the worker has other tasks to run, so a lingering collector may take
 * this one with the next batch.  Any GIL or none. */
static void
complete(pp_engine *e, pp_worker *w, pp_msg *done, int lazy)
{
    if (done == NULL) {
        return;
    }
    done->worker = w->id;
    /* With workers parked the collector is behind: a lingering one is
     * woken now, not at its deadline, while they wait on it. */
    if (lazy && pp__engine_gated(e)) {
        lazy = atomic_load_explicit(&e->parked, memory_order_relaxed) == 0;
    }
    int rc = lazy ? pp_queue_push_lazy(e->completions, done)
                  : pp_queue_push(e->completions, done);
    if (rc != PP_OK) {
        pp_msg_free(done);
    }
}

/* Whether a worker that just finished a task has more to do than the
 * pool can start at once: at least one queued task per worker.  Fewer,
 * and the pool is about to run dry, so its results should go now (a
 * caller may be waiting for them to submit more).  Any GIL or none; no
 * lock (the length is a snapshot either way: a lock would only make
 * it a snapshot taken a lock round later). */
static int
more_queued(pp_engine *e)
{
    return pp_queue_length(e->tasks) >= e->nworkers;
}

/* The worker is done with `task`, whose result is `done`: release it and
 * push `done` unless abandoning the worker already failed that task.
 * Any GIL or none. */
static void
finish_task(pp_engine *e, pp_worker *w, pp_msg *task, pp_msg *done)
{
    pp__fn_store_release(&e->fns, task);
    pp_msg_free(task);
    if (end_task(w)) {
        complete(e, w, done, more_queued(e));
    }
    else {
        pp_msg_free(done);
    }
}

/* ---- the worker (both designs) ------------------------------------- */

/* Make the interpreter visible to terminate().  Needs: no tstate (a
 * terminating thread may hold w->life while waiting for our GIL). */
static void
publish_interp(pp_worker *w, pp_interp *it)
{
    pthread_mutex_lock(&w->life);
    w->interp = it->interp;
    w->py_thread_id = PyThread_get_thread_ident();
    pthread_mutex_unlock(&w->life);
}

/* Hide the interpreter from terminate() before it is destroyed, so no
 * foreign thread state exists when Py_EndInterpreter checks that it is
 * the last.  Needs: no tstate. */
static void
retire_interp(pp_worker *w)
{
    pthread_mutex_lock(&w->life);
    w->interp = NULL;
    pthread_mutex_unlock(&w->life);
}

/* Pop the next task for a worker.  PP_OK or PP_ECLOSED.  A worker
 * that waits PP_ARENA_IDLE_NS for one gives its cached arenas back
 * first (arena.c), so an idle pool holds none.  Needs: no tstate (it
 * blocks). */
static int
next_task(pp_engine *e, pp_msg **task)
{
    if (pp__arena_held()) {
        int rc = pp_queue_pop(e->tasks, PP_ARENA_IDLE_NS, task);
        if (rc != PP_ETIMEDOUT) {
            return rc;
        }
        pp__arena_release();
    }
    return pp_queue_pop(e->tasks, -1, task);
}

/* A worker has its first interpreter (or failed to make one): it no
 * longer counts as booting.  When it has one, it takes a queued task in
 * the same step, under e->mutex, so that a discard waiting for the
 * workers to start (pp__engine_discard) cannot drop that task between
 * the two.  Then as next_task.  Needs: no tstate. */
static int
first_task(pp_engine *e, int made, pp_msg **task)
{
    pthread_mutex_lock(&e->mutex);
    e->booting--;
    int rc = made ? pp_queue_pop(e->tasks, 0, task) : PP_ECLOSED;
    pthread_cond_broadcast(&e->started);
    pthread_mutex_unlock(&e->mutex);
    return rc == PP_ETIMEDOUT ? next_task(e, task) : rc;
}

/* THE QUEUE-DESIGN WORKER LOOP.
 *
 * Runs on its own native thread, which belongs to no interpreter until
 * it creates one.  Per interpreter lifetime (one, or one per
 * `maxtasks` tasks):
 *   1. create the interpreter (no tstate -> sub GIL held);
 *   2. per task: take the next queued one, keeping the sub GIL (the
 *      queue mutex is a leaf); only when none is queued release the sub
 *      GIL and block on the task queue, taking the sub GIL back after;
 *      run the task, push its completion;
 *   3. release the GIL, retire the interpreter (w->life), end it.
 * The main interpreter's GIL is never taken here, which is the point:
 * workers never contend with the main interpreter or with each other,
 * only on the queue mutexes for a few instructions per task.  Keeping
 * the sub GIL between queued tasks saves a release and a take of it
 * per task; terminate() still gets it (to raise SystemExit) at the next
 * task's first bytecode, or when the queue it closed is found empty. */
static void *
queue_worker_main(void *arg)
{
    pp_worker *w = arg;
    pp_engine *e = w->engine;
    int stopping = 0;

    int booting = 1;

    yield_to_collector(e);
    current_worker = w;
    pp__arena_worker_begin();
    while (!stopping) {
        pp_interp *it = NULL;
        pp_msg *failure = NULL;
        if (pp__interp_create(&e->boot, w->id, &it, &failure) != PP_OK) {
            complete(e, w, failure, 0);
            if (booting) {
                first_task(e, 0, NULL);
            }
            break;
        }
        PyThreadState *ts = pp__ts_detach();
        publish_interp(w, it);
        uint64_t served = 0;
        int attached = 0;
        while (e->maxtasks == 0 || served < e->maxtasks) {
            pp_msg *task = NULL;
            int popped = PP_ETIMEDOUT;
            if (!booting && should_park(e)) {
                if (attached) {
                    ts = pp__ts_detach();
                    attached = 0;
                }
                park(e);
            }
            if (attached) {
                popped = pp_queue_pop(e->tasks, 0, &task);
                if (popped != PP_OK) {
                    ts = pp__ts_detach();
                    attached = 0;
                }
            }
            if (!attached) {
                popped = booting ? first_task(e, 1, &task)
                                 : next_task(e, &task);
                booting = 0;
            }
            if (popped != PP_OK) {
                stopping = 1;
                break;
            }
            begin_task(w, task);
            if (!attached) {
                pp__ts_attach(ts);
                attached = 1;
            }
            finish_task(e, w, task,
                        timed_task(e, w, it, task, pp__interp_run));
            served++;
        }
        if (attached) {
            ts = pp__ts_detach();
        }
        retire_interp(w);
        pp__ts_attach(ts);
        pp__interp_destroy_attached(it);
    }
    current_worker = NULL;
    pp__arena_worker_end();
    leave_gate(e);
    worker_exited(e, w);
    pp__engine_decref(e);
    return NULL;
}

/* Needs: main GIL.  See pp_internal.h. */
int
pp__engine_serve_calls(pp_engine *e, uint32_t worker)
{
    if (worker >= e->nworkers || e->design != PP_DESIGN_CALL) {
        worker_exited(e, NULL);
        return PP_EINVAL;
    }
    pp_worker *w = &e->workers[worker];
    int stopping = 0, booting = 1;
    PyThreadState *caller;

    yield_to_collector(e);
    current_worker = w;
    pp__arena_worker_begin();
    while (!stopping) {
        pp_interp *it = NULL;
        pp_msg *failure = NULL;
        caller = pp__ts_detach();
        int rc = pp__interp_create(&e->boot, w->id, &it, &failure);
        if (rc == PP_OK) {
            /* Created on this thread, so `it` is attached: detach. */
            pp__ts_detach();
            publish_interp(w, it);
        }
        pp__ts_attach(caller);
        if (rc != PP_OK) {
            complete(e, w, failure, 0);
            if (booting) {
                Py_BEGIN_ALLOW_THREADS
                first_task(e, 0, NULL);
                Py_END_ALLOW_THREADS
            }
            break;
        }
        uint64_t served = 0;
        while (e->maxtasks == 0 || served < e->maxtasks) {
            pp_msg *task = NULL;
            if (!booting && should_park(e)) {
                Py_BEGIN_ALLOW_THREADS
                park(e);
                Py_END_ALLOW_THREADS
            }
            /* A queued task is taken without releasing the main GIL (the
             * queue mutex is a leaf): one GIL round less per task. */
            int popped = booting ? PP_ETIMEDOUT
                                 : pp_queue_pop(e->tasks, 0, &task);
            if (popped == PP_OK) {
                begin_task(w, task);
            }
            else if (popped == PP_ETIMEDOUT) {
                Py_BEGIN_ALLOW_THREADS
                popped = booting ? first_task(e, 1, &task)
                                 : next_task(e, &task);
                if (popped == PP_OK) {
                    begin_task(w, task);
                }
                Py_END_ALLOW_THREADS
            }
            booting = 0;
            if (popped != PP_OK) {
                stopping = 1;
                break;
            }
            /* Here this thread holds the main GIL: the design's cost is
             * this hop through the main interpreter for every task. */
            finish_task(e, w, task,
                        timed_task(e, w, it, task, pp__interp_call));
            served++;
        }
        caller = pp__ts_detach();
        retire_interp(w);
        pp__interp_destroy(it);
        pp__ts_attach(caller);
    }
    current_worker = NULL;
    pp__arena_worker_end();
    leave_gate(e);
    worker_exited(e, w);
    return PP_OK;
}

/* ---- main-first imports (CPython 3.12) ------------------------------ */

/* CPython 3.12 frees memory twice at exit when a single-phase-init
 * extension module (_decimal, ...) is first loaded by an isolated
 * subinterpreter, which refuses it; if the main interpreter loaded it
 * first, the refusal is clean.  So on 3.12 poolparty._worker asks the
 * main interpreter to import every extension module before the worker
 * loads it.  The request rides the completion queue to the collector
 * thread; the worker waits on its own condition variable.
 *
 * Needs: sub GIL (released while waiting). */
int
pp__engine_request_main_import(const char *name, size_t size)
{
    pp_worker *w = current_worker;
    if (w == NULL) {
        return PP_ENOTFOUND;
    }
    pp_msg *request = pp_msg_new(0, 0, PP_DONE_MAIN_IMPORT, name, size);
    if (request == NULL) {
        return PP_ENOMEM;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->life);
    int cut = w->imports_cut;
    w->import_answered = 0;
    pthread_mutex_unlock(&w->life);
    if (!cut) {
        complete(w->engine, w, request, 0);
        request = NULL;
        /* terminate() cuts the wait short: the collector may be blocked
         * (in a callback) or gone, and the worker must get back to its
         * pending SystemExit. */
        pthread_mutex_lock(&w->life);
        while (!w->import_answered && !w->imports_cut) {
            pthread_cond_wait(&w->answered, &w->life);
        }
        pthread_mutex_unlock(&w->life);
    }
    Py_END_ALLOW_THREADS
    pp_msg_free(request);
    return PP_OK;
}

/* Needs: no tstate. */
int
pp__engine_answer_import(pp_engine *e, uint32_t worker)
{
    if (worker >= e->nworkers) {
        return PP_EINVAL;
    }
    pp_worker *w = &e->workers[worker];
    pthread_mutex_lock(&w->life);
    w->import_answered = 1;
    pthread_cond_signal(&w->answered);
    pthread_mutex_unlock(&w->life);
    return PP_OK;
}

/* ---- creation -------------------------------------------------------- */

/* Start the native threads of a queue-design engine.  PP_OK or
 * PP_ETHREAD (workers already started keep running and will exit once
 * the engine is closed).  Takes e->mutex. */
static int
start_queue_workers(pp_engine *e)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* CPython's recursion limit assumes a main-thread-sized stack. */
    pthread_attr_setstacksize(&attr, 16u * 1024u * 1024u);
    int rc = PP_OK;
    for (uint32_t i = 0; i < e->nworkers; i++) {
        pp_worker *w = &e->workers[i];
        pp__engine_incref(e); /* the thread's reference */
        if (pthread_create(&w->thread, &attr, queue_worker_main, w) != 0) {
            pp__engine_decref(e);
            leave_gate(e);
            pthread_mutex_lock(&e->mutex);
            e->live_workers--;
            w->exited = 1;
            e->booting--;
            pthread_cond_broadcast(&e->started);
            pthread_mutex_unlock(&e->mutex);
            rc = PP_ETHREAD;
            continue;
        }
        pthread_mutex_lock(&e->mutex);
        w->thread_started = 1;
        pthread_mutex_unlock(&e->mutex);
    }
    pthread_attr_destroy(&attr);
    return rc;
}

/* Any thread.  See pp_internal.h. */
int
pp__engine_new(pp_design design, uint32_t nworkers, uint64_t maxtasks,
               const char *sys_path, size_t sys_path_size,
               const void *payload, size_t payload_size, int nice,
               uint32_t cpus, pp_engine **out)
{
    /* Nice values span 40 steps (-20..19): a larger step would overflow
     * yield_to_collector's sum, and wrapped negative could raise the
     * workers' priority where the process is allowed to. */
    if (nworkers == 0 || nice < 0 || nice > 39) {
        return PP_EINVAL;
    }
    pp_engine *e = PyMem_RawCalloc(
        1, sizeof(pp_engine) + nworkers * sizeof(pp_worker));
    if (e == NULL) {
        return PP_ENOMEM;
    }
    atomic_init(&e->refcount, 1);
    e->design = design;
    e->maxtasks = maxtasks;
    e->nworkers = nworkers;
    e->nice = nice;
    e->live_workers = nworkers;
    e->booting = nworkers;
    e->state = PP_ENGINE_RUNNING;
    pthread_mutex_init(&e->mutex, NULL);
    pthread_cond_init(&e->exited, NULL);
    pthread_cond_init(&e->started, NULL);
    pp__fn_store_init(&e->fns);
    /* The collector's own core: see "The gate". */
    uint32_t assumed = atomic_load(&assumed_cpus);
    cpus = assumed != 0 ? assumed : cpus;
    e->run_limit = cpus == 0 || nworkers < cpus ? nworkers
                                                : (cpus > 1 ? cpus - 1 : 1);
    atomic_init(&e->undecoded, 0);
    atomic_init(&e->collector_busy, 0);
    atomic_init(&e->released, 0);
    atomic_init(&e->decode_ns, 0);
    atomic_init(&e->make_ns, 0);
    atomic_init(&e->decode_cpu_ns, 0);
    atomic_init(&e->untimed_run, 0);
    atomic_init(&e->running, nworkers);
    atomic_init(&e->parked, 0);
    atomic_init(&e->parks, 0);
    atomic_init(&e->part_parks, 0);
    atomic_init(&e->stalls, 0);
    pthread_mutex_init(&e->gate_lock, NULL);
    pthread_cond_init(&e->gate_open, NULL);
    e->stalled_at = UINT64_MAX;
    for (uint32_t i = 0; i < nworkers; i++) {
        e->workers[i].engine = e;
        e->workers[i].id = i;
        pthread_mutex_init(&e->workers[i].life, NULL);
        atomic_init(&e->workers[i].task_state, TASK_IDLE);
        atomic_init(&e->workers[i].task_job, 0);
        atomic_init(&e->workers[i].task_index, 0);
        pthread_cond_init(&e->workers[i].answered, NULL);
    }
    if (pp_queue_new(&e->tasks) != PP_OK ||
        pp_queue_new(&e->completions) != PP_OK ||
        pp__boot_init(&e->boot, sys_path, sys_path_size, payload,
                      payload_size) != PP_OK ||
        (nworkers >= PP_SITE_TEMPLATE_MIN_WORKERS &&
         pp__boot_use_site_template(&e->boot, nworkers) != PP_OK)) {
        pp__engine_decref(e);
        return PP_ENOMEM;
    }
    pp_queue_set_linger(e->completions, LINGER_NS, LINGER_BATCH);
    if (design == PP_DESIGN_QUEUE) {
        int rc = start_queue_workers(e);
        if (rc != PP_OK) {
            pp_msg_free_chain(pp__engine_terminate(e));
            *out = e; /* the caller must still stop and release it */
            return rc;
        }
    }
    *out = e;
    return PP_OK;
}

/* ---- operations ------------------------------------------------------ */

/* Any GIL or none. */
int
pp__engine_submit(pp_engine *e, pp_msg *task)
{
    task->next = NULL;
    return pp__engine_submit_chain(e, task, 1);
}

/* Any GIL or none.  See pp_internal.h. */
int
pp__engine_submit_fn(pp_engine *e, pp_msg *first, size_t count,
                     const void *func, size_t func_size)
{
    /* Held before the push: a worker may run and release a task as
     * soon as it is queued. */
    if (func != NULL &&
        pp__fn_store_hold(&e->fns, first, count, func, func_size) != PP_OK) {
        return PP_ENOMEM;
    }
    int rc = pp__engine_submit_chain(e, first, count);
    if (rc != PP_OK) {
        pp__fn_store_release_chain(&e->fns, first);
    }
    return rc;
}

/* Any GIL.  See pp_internal.h. */
int
pp__engine_function_bytes(const pp_msg *task, const unsigned char **data,
                          size_t *size)
{
    pp_worker *w = current_worker;
    if (w == NULL) {
        return PP_ENOTFOUND;
    }
    return pp__fn_store_find(&w->engine->fns, task, data, size);
}

/* Any GIL.  See pp_internal.h. */
int
pp__engine_runs(const pp_msg *task)
{
    pp_worker *w = current_worker;
    if (w == NULL) {
        return 0;
    }
    /* Only the worker's own thread writes these: no race.  A task run
     * by other means on a worker's thread (an Interpreter call from
     * inside a task) is not the one the worker began. */
    uint_fast64_t state = atomic_load_explicit(&w->task_state,
                                               memory_order_relaxed);
    return (state & TASK_MASK) != TASK_IDLE &&
           atomic_load_explicit(&w->task_job, memory_order_relaxed) ==
               task->job &&
           atomic_load_explicit(&w->task_index, memory_order_relaxed) ==
               task->index;
}

/* Needs: the worker's sub GIL.  See pp_internal.h. */
void
pp__engine_send_part(pp_msg *part, int64_t made_ns)
{
    pp_worker *w = current_worker;
    pp_engine *e = w->engine;
    /* A part of a task that abandoning the worker failed already would
     * only wait in the collector for a last message that never comes.
     * (Abandoning it between this look and the push leaves such a part
     * there until the engine goes: a leak of one part, on terminate().) */
    uint_fast64_t state = atomic_load_explicit(&w->task_state,
                                               memory_order_acquire);
    if ((state & TASK_MASK) != TASK_RUNNING) {
        pp_msg_free(part);
        return;
    }
    if (pp__engine_gated(e)) {
        average_into(&e->make_ns, made_ns);
        w->sent_part = 1;
    }
    complete(e, w, part, more_queued(e));
    /* A map chunk is one task but many parts: parking only between
     * tasks would leave a worker making a whole chunk's results (tens of
     * ms) while the collector is behind on them.  Its interpreter's GIL
     * is let go while it waits (nothing else of this worker needs it). */
    if (should_park(e)) {
        PyThreadState *ts = pp__ts_detach();
        if (park(e)) {
            atomic_fetch_add(&e->part_parks, 1);
        }
        pp__ts_attach(ts);
    }
}

void
pp__engine_function_stats(pp_engine *e, pp_fn_stats *out)
{
    pp__fn_store_stats(&e->fns, out);
}

/* Any GIL or none.  The chain is `count` tasks linked by ->next; the
 * engine owns them on PP_OK, the caller keeps them otherwise. */
int
pp__engine_submit_chain(pp_engine *e, pp_msg *first, size_t count)
{
    /* Checked under e->mutex so a submit racing close() either lands
     * before the queue closes or is refused; never lost in between. */
    pthread_mutex_lock(&e->mutex);
    pp_engine_state next;
    int rc = pp_engine_transition(e->state, PP_EV_SUBMIT, &next);
    if (rc == PP_OK) {
        rc = pp_queue_push_chain(e->tasks, first, count) == PP_OK ? PP_OK
                                                                 : PP_ESTATE;
    }
    pthread_mutex_unlock(&e->mutex);
    return rc;
}

/* Any GIL or none. */
void
pp__engine_close(pp_engine *e)
{
    pthread_mutex_lock(&e->mutex);
    pp_engine_state next;
    if (pp_engine_transition(e->state, PP_EV_CLOSE, &next) == PP_OK) {
        e->state = next;
    }
    /* Closing under e->mutex orders it after any submit that passed its
     * state check. */
    pp_queue_close(e->tasks);
    pthread_mutex_unlock(&e->mutex);
}

/* Raise SystemExit in the worker's running task.  Called with w->life
 * held; needs no tstate. */
static void
interrupt_worker(PyInterpreterState *interp, void *arg)
{
    pp_worker *w = arg;
    pp__interp_interrupt(interp, w->py_thread_id, PyExc_SystemExit);
}

/* Needs: no tstate. */
pp_msg *
pp__engine_terminate(pp_engine *e)
{
    pthread_mutex_lock(&e->mutex);
    pp_engine_state next;
    if (pp_engine_transition(e->state, PP_EV_TERMINATE, &next) == PP_OK) {
        e->state = next;
    }
    pp_queue_close(e->tasks);
    pthread_mutex_unlock(&e->mutex);
    /* A parked worker must get to its SystemExit, whatever the
     * collector does. */
    open_gate(e, 1);
    pp_msg *dropped = pp_queue_drain(e->tasks);
    pp__fn_store_release_chain(&e->fns, dropped);

    /* Interrupt what is running.  A worker idle in next_task() gets the
     * exception too but never runs Python again before it exits (and
     * clears it before ending its interpreter), so it is harmless there. */
    for (uint32_t i = 0; i < e->nworkers; i++) {
        pp__engine_with_worker_interp(e, i, interrupt_worker,
                                      &e->workers[i]);
    }
    /* A worker waiting for a main-first import (3.12) would otherwise
     * wait for the collector, which may be stuck in a callback. */
    for (uint32_t i = 0; i < e->nworkers; i++) {
        pp_worker *w = &e->workers[i];
        pthread_mutex_lock(&w->life);
        w->imports_cut = 1;
        pthread_cond_broadcast(&w->answered);
        pthread_mutex_unlock(&w->life);
    }
    return dropped;
}

/* Needs: no tstate.  See pp_internal.h. */
int
pp__engine_with_worker_interp(pp_engine *e, uint32_t worker,
                              void (*fn)(PyInterpreterState *, void *),
                              void *arg)
{
    if (worker >= e->nworkers) {
        return PP_EINVAL;
    }
    pp_worker *w = &e->workers[worker];
    int rc = PP_ENOTFOUND;
    pthread_mutex_lock(&w->life);
    if (w->interp != NULL) {
        fn(w->interp, arg);
        rc = PP_OK;
    }
    pthread_mutex_unlock(&w->life);
    return rc;
}

/* Needs: no tstate.  See pp_internal.h. */
int
pp__engine_abandon(pp_engine *e, uint64_t *jobs, uint64_t *indexes,
                   uint32_t *workers, uint32_t *count)
{
    uint32_t n = 0;
    int last = 0;
    pthread_mutex_lock(&e->mutex);
    if (e->state == PP_ENGINE_RUNNING || e->state == PP_ENGINE_CLOSED) {
        /* Only terminate() gives up on running tasks. */
        pthread_mutex_unlock(&e->mutex);
        return PP_ESTATE;
    }
    for (uint32_t i = 0; i < e->nworkers; i++) {
        pp_worker *w = &e->workers[i];
        if (w->exited || w->abandoned) {
            continue;
        }
        w->abandoned = 1;
        if (w->thread_started) {
            /* Nobody will join it: its thread ends on its own. */
            pthread_detach(w->thread);
            w->thread_started = 0;
        }
        workers[n] = w->id;
        /* A worker between tasks (ending its interpreter, say) is
         * abandoned too, with no task to report. */
        if (!report_task(w, &jobs[n], &indexes[n])) {
            jobs[n] = indexes[n] = UINT64_MAX;
        }
        n++;
        last = one_fewer_live_locked(e) || last;
    }
    /* Counted as abandoned in the same e->mutex step that stops counting
     * them as live: raised after the unlock, the count was low for a
     * moment, and a thread that saw the pool joined (join(), interpreter
     * exit) could then read no abandoned worker and let CPython finalize
     * under one still running; or a worker exiting in that moment took
     * the count below zero. */
    if (n > 0) {
        abandoned_add((int)n);
    }
    pthread_mutex_unlock(&e->mutex);
    if (last) {
        pp_queue_close(e->completions);
    }
    *count = n;
    return PP_OK;
}

uint32_t
pp__engine_nworkers(pp_engine *e)
{
    return e->nworkers;
}

/* Any GIL or none; no tstate when after_start.  See pp_internal.h. */
pp_msg *
pp__engine_discard(pp_engine *e, int after_start)
{
    pp_msg *dropped;
    if (!after_start) {
        dropped = pp_queue_drain(e->tasks);
        pp__fn_store_release_chain(&e->fns, dropped);
        return dropped;
    }
    pthread_mutex_lock(&e->mutex);
    while (e->booting > 0) {
        pthread_cond_wait(&e->started, &e->mutex);
    }
    /* Under e->mutex: ordered after each worker's first take. */
    dropped = pp_queue_drain(e->tasks);
    pthread_mutex_unlock(&e->mutex);
    pp__fn_store_release_chain(&e->fns, dropped);
    return dropped;
}

/* Any GIL or none. */
int
pp__engine_cancel(pp_engine *e, uint64_t job, uint64_t index)
{
    pp_msg *msg = NULL;
    int rc = pp_queue_remove(e->tasks, job, index, &msg);
    if (msg != NULL) {
        pp__fn_store_release(&e->fns, msg);
    }
    pp_msg_free(msg);
    return rc;
}

/* Any GIL or none.  The removed tasks, as a chain the caller frees. */
pp_msg *
pp__engine_cancel_job(pp_engine *e, uint64_t job)
{
    pp_msg *removed = pp_queue_remove_job(e->tasks, job);
    pp__fn_store_release_chain(&e->fns, removed);
    return removed;
}

/* Needs: no tstate. */
int
pp__engine_join(pp_engine *e, int64_t timeout_ns)
{
    int rc = PP_OK;
    struct timespec deadline = realtime_after(timeout_ns > 0 ? timeout_ns
                                                            : 0);
    pthread_mutex_lock(&e->mutex);
    if (e->state == PP_ENGINE_RUNNING) {
        rc = PP_ESTATE;
        goto done;
    }
    while (e->live_workers > 0) {
        if (timeout_ns < 0) {
            pthread_cond_wait(&e->exited, &e->mutex);
        }
        else if (pthread_cond_timedwait(&e->exited, &e->mutex,
                                        &deadline) != 0 &&
                 e->live_workers > 0) {
            rc = PP_ETIMEDOUT;
            goto done;
        }
    }
    /* Every worker has left its loop; reap the native threads so their
     * stacks are returned.  They are past their last lock. */
    for (uint32_t i = 0; i < e->nworkers; i++) {
        pp_worker *w = &e->workers[i];
        if (w->thread_started) {
            w->thread_started = 0;
            pthread_mutex_unlock(&e->mutex);
            pthread_join(w->thread, NULL);
            pthread_mutex_lock(&e->mutex);
        }
    }
done:
    pthread_mutex_unlock(&e->mutex);
    return rc;
}

size_t
pp__engine_pending(pp_engine *e)
{
    return pp_queue_length(e->tasks);
}

uint32_t
pp__engine_live_workers(pp_engine *e)
{
    pthread_mutex_lock(&e->mutex);
    uint32_t n = e->live_workers;
    pthread_mutex_unlock(&e->mutex);
    return n;
}

pp_engine_state
pp__engine_state(pp_engine *e)
{
    pthread_mutex_lock(&e->mutex);
    pp_engine_state s = e->state;
    pthread_mutex_unlock(&e->mutex);
    return s;
}
