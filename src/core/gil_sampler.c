/* The GIL contention sampler.
 *
 * One native thread per sampled interpreter.  Each sample: note the
 * time, take the interpreter's GIL through a thread state of our own,
 * note the time again (the difference is how long the GIL was held by
 * someone else), release it, then sleep `interval`.  Contention is the
 * sum of those waits over the elapsed time: 0 for an idle GIL; close to
 * switch_interval / (switch_interval + interval) for a GIL that is
 * never released voluntarily (CPython hands it over after the switch
 * interval, 5 ms by default), the same quantity gilknocker reports for
 * the main GIL.
 *
 * Like gilknocker, sampling perturbs what it measures: each sample asks
 * the holder to drop the GIL.
 *
 * Locking: `mutex` guards `stopping` and pairs with `wake` so that stop
 * interrupts the sleeps at once.  A worker's interpreter is sampled only
 * inside pp__engine_with_worker_interp (its life lock held), so it
 * cannot end while we hold a thread state in it. */
#include "pp_internal.h"

#include <time.h>

typedef struct {
    struct pp_gil_sampler *sampler;
    int64_t worker;        /* -1: the main interpreter */
    pthread_t thread;
    int started;
    int64_t waited_ns;     /* written by this thread only until joined */
    int64_t first_ns;      /* time of the first sample, or 0 */
    int64_t last_ns;       /* time of the last sample */
} sample_target;

struct pp_gil_sampler {
    pp_engine *engine;     /* NULL: main interpreter only */
    int64_t interval_ns;
    pthread_mutex_t mutex;
    pthread_cond_t wake;   /* CLOCK_MONOTONIC */
    int stopping;          /* mutex */
    uint32_t ntargets;
    sample_target targets[];
};

static int64_t
now_ns(void)
{
    return pp__clock_ns(CLOCK_MONOTONIC);
}

/* Take and release `interp`'s GIL once; returns the nanoseconds spent
 * waiting for it.  Needs: no tstate. */
static int64_t
knock(PyInterpreterState *interp)
{
    PyThreadState *ts = pp__ts_new(interp);
    if (ts == NULL) {
        return 0;
    }
    int64_t t0 = now_ns();
    pp__ts_attach(ts);
    int64_t waited = now_ns() - t0;
    pp__ts_delete_current();
    return waited;
}

static void
knock_worker(PyInterpreterState *interp, void *arg)
{
    *(int64_t *)arg = knock(interp);
}

/* Sleep `interval` unless stopped first.  1 when stopping.  Needs: no
 * tstate. */
static int
pause_or_stop(pp_gil_sampler *s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    int64_t nsec = deadline.tv_nsec + s->interval_ns;
    deadline.tv_sec += (time_t)(nsec / 1000000000);
    deadline.tv_nsec = (long)(nsec % 1000000000);
    pthread_mutex_lock(&s->mutex);
    while (!s->stopping &&
           pthread_cond_timedwait(&s->wake, &s->mutex, &deadline) == 0) {
    }
    int stopping = s->stopping;
    pthread_mutex_unlock(&s->mutex);
    return stopping;
}

/* A sampler thread; belongs to no interpreter between samples. */
static void *
sample_loop(void *arg)
{
    sample_target *t = arg;
    pp_gil_sampler *s = t->sampler;
    do {
        int64_t waited = 0;
        int sampled = 1;
        if (t->worker < 0) {
            waited = knock(PyInterpreterState_Main());
        }
        else {
            sampled = pp__engine_with_worker_interp(
                          s->engine, (uint32_t)t->worker, knock_worker,
                          &waited) == PP_OK;
        }
        if (sampled) {
            int64_t now = now_ns();
            if (t->first_ns == 0) {
                t->first_ns = now - waited;
            }
            t->last_ns = now;
            t->waited_ns += waited;
        }
    } while (!pause_or_stop(s));
    return NULL;
}

/* Needs: no tstate. */
int
pp__gil_sampler_start(pp_engine *engine, int64_t interval_ns,
                      pp_gil_sampler **out)
{
    uint32_t nworkers = engine ? pp__engine_nworkers(engine) : 0;
    uint32_t ntargets = 1 + nworkers;
    pp_gil_sampler *s = PyMem_RawCalloc(
        1, sizeof(*s) + ntargets * sizeof(sample_target));
    if (s == NULL) {
        return PP_ENOMEM;
    }
    s->engine = engine;
    if (engine) {
        pp__engine_incref(engine);
    }
    s->interval_ns = interval_ns > 0 ? interval_ns : 1000000;
    s->ntargets = ntargets;
    pthread_mutex_init(&s->mutex, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &attr);
    pthread_condattr_destroy(&attr);

    int rc = PP_OK;
    for (uint32_t i = 0; i < ntargets; i++) {
        sample_target *t = &s->targets[i];
        t->sampler = s;
        t->worker = (int64_t)i - 1;
        if (pthread_create(&t->thread, NULL, sample_loop, t) != 0) {
            rc = PP_ETHREAD;
            break;
        }
        t->started = 1;
    }
    *out = s;
    return rc;
}

/* Needs: no tstate. */
void
pp__gil_sampler_stop(pp_gil_sampler *s, double *main_out,
                     double *workers_out)
{
    pthread_mutex_lock(&s->mutex);
    s->stopping = 1;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->mutex);
    for (uint32_t i = 0; i < s->ntargets; i++) {
        sample_target *t = &s->targets[i];
        if (t->started) {
            pthread_join(t->thread, NULL);
            t->started = 0;
        }
        int64_t span = t->last_ns - t->first_ns;
        double fraction = span > 0 ? (double)t->waited_ns / (double)span
                                   : -1.0;
        if (fraction > 1.0) {
            fraction = 1.0;
        }
        if (t->worker < 0) {
            *main_out = fraction;
        }
        else {
            workers_out[t->worker] = fraction;
        }
    }
}

uint32_t
pp__gil_sampler_nworkers(pp_gil_sampler *s)
{
    return s->ntargets - 1;
}

/* The sampler must be stopped. */
void
pp__gil_sampler_free(pp_gil_sampler *s)
{
    if (s == NULL) {
        return;
    }
    if (s->engine) {
        pp__engine_decref(s->engine);
    }
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mutex);
    PyMem_RawFree(s);
}
