/* SubinterpreterPool's results in C: ApplyResult, MapResult and the imap
 * iterators.
 *
 * apply_async()/apply(), map()/map_async()/starmap()/starmap_async() and
 * imap()/imap_unordered() hand these out.  multiprocessing's own result
 * objects take a threading.Event or Condition each, and are set by
 * Python code on the collector thread, which then fights the caller for
 * the main GIL (8 us per apply_async against ThreadPool's 4.4 us).  These
 * keep their state in C fields and are finished in C, by Engine.collect()
 * for successful results (pp__result_deliver) or by _set() from the Python
 * loop for the rest; callbacks run there, on the collector thread, as
 * multiprocessing runs them on its result handler thread.
 *
 * They are real subclasses of multiprocessing.pool's ApplyResult,
 * MapResult, IMapIterator and IMapUnorderedIterator (isinstance(r,
 * AsyncResult) holds), made at run time by result_types(), since the
 * module also loads inside every worker, where multiprocessing has no
 * business being imported.
 *
 * Waiting: a thread that must wait (get(), wait(), an imap's next())
 * sleeps on a native lock (wake_t below, made on first wait) with the
 * GIL released; no threading.Event or Condition, each of which costs
 * a Python lock per wait.  THE RULE: the finisher records the result
 * and looks for sleepers in one locked step, and a waiter counts itself
 * a sleeper and looks for the result in one locked step; so either the
 * waiter sees the result or the finisher sees the waiter, and no
 * wake-up is lost.  (The stdlib's _event is there too, made when
 * somebody asks for it and set with the result.)  Fields change only in
 * C stretches that call no Python code: under the GIL that makes them
 * atomic; on free-threaded builds PP_LOCK_OBJECT (a per-object critical
 * section) does.
 *
 * Runs in the main interpreter, under its GIL. */
#include "module.h"

#include <time.h>

/* Where threads wait for a result without Python.  `lock` is held while
 * there is nothing to wake for; a finisher that finds sleepers releases
 * it once (`posted`), the sleeper that takes it clears `posted` and, if
 * more sleep and there is still something for them, posts again; so
 * every sleeper is woken in turn.  A sleeper must look again after
 * waking: another may have taken what it was woken for.  Fields guarded
 * by the owner's object lock; `lock` itself lives until the owner is
 * freed. */
typedef struct {
    PyThread_type_lock lock; /* NULL until the first wait */
    Py_ssize_t sleepers;
    int posted;
} wake_t;

/* An ApplyResult's or MapResult's progress.  FINISHING: the outcome is
 * recorded and the callbacks are running; ready() says True only once
 * they returned, as multiprocessing sets its Event after them. */
typedef enum { RS_PENDING, RS_FINISHING, RS_DONE } result_state;

/* ApplyResult and MapResult (one layout: an apply is a map of one). */
typedef struct {
    PyObject_HEAD
    result_state state;
    int success;
    uint64_t job;
    PyObject *cache;          /* the pool's {job: result}; NULL once left */
    PyObject *value;          /* apply: the result; map: the list */
    PyObject *error;          /* the (first) exception */
    PyObject *callback;       /* NULL when none */
    PyObject *error_callback; /* NULL when none */
    PyObject *event;          /* threading.Event, made if asked for */
    wake_t wake;
    Py_ssize_t chunksize;     /* map only */
    Py_ssize_t number_left;   /* chunks still to come */
} ResultObject;

/* imap() and imap_unordered(): chunks of results, yielded item by item,
 * in order of index or of arrival.  A chunk's items go into the ready
 * list one by one as it arrives, and its list is dropped there: kept
 * whole until read, every chunk was a container for the garbage
 * collector to go over (an imap of 20,000 no-op tasks at chunksize=1
 * spent a tenth of the collector thread's time in young collections).
 * A failed chunk is one entry, (failure_mark, exception): the mark is a
 * private object() that no task can return. */
typedef struct {
    PyObject_HEAD
    int unordered;
    uint64_t job;
    PyObject *cache;     /* as above */
    /* Results and failures in yield order, from ready_head on; the slots
     * before it hold None. */
    PyObject *ready;
    Py_ssize_t ready_head;
    /* Ordered: the chunks that came early, a ring made on need (a list
     * whose size is a power of two): chunk i in slot i % size, None
     * where there is none.  It was a dict {index: entry}: half of an
     * imap's chunks come early from two workers, and each cost a key
     * object, an insertion and a deletion. */
    PyObject *early;
    uint64_t received;   /* ordered: next index due; unordered: count */
    int64_t length;      /* chunks in all; -1 until known */
    wake_t wake;
} IMapObject;

#define RES(op) ((ResultObject *)(op))
#define IMAP(op) ((IMapObject *)(op))

static pp_result_support *
support_of(PyObject *op)
{
    pp_module_state *st = pp__state_from_type(Py_TYPE(op));
    return st ? &st->result : NULL;
}

/* Remove `job` from `*cache` and drop the reference, once: what
 * multiprocessing's `del self._cache[self._job]` does when a result is
 * complete.  Errors are reported, not raised: the result is complete
 * either way.  Needs: main GIL, no object lock. */
static void
leave_cache(PyObject **cache_field, uint64_t job, PyObject *op)
{
    PyObject *cache;
    PP_LOCK_OBJECT(op);
    cache = *cache_field;
    *cache_field = NULL;
    PP_UNLOCK_OBJECT();
    if (cache == NULL) {
        return;
    }
    PyObject *key = PyLong_FromUnsignedLongLong((unsigned long long)job);
    if (key == NULL || PyDict_DelItem(cache, key) < 0) {
        if (PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear(); /* not registered (a result made by hand) */
        }
        else {
            PyErr_WriteUnraisable(op);
        }
    }
    Py_XDECREF(key);
    Py_DECREF(cache);
}

/* Register `op` as cache[job].  0, or -1 with an exception. */
static int
enter_cache(PyObject *cache, uint64_t job, PyObject *op)
{
    PyObject *key = PyLong_FromUnsignedLongLong((unsigned long long)job);
    if (key == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(cache, key, op);
    Py_DECREF(key);
    return rc;
}

/* Call a user callback with `arg`; what it raises (even SystemExit: this
 * is the collector thread) is handed to support->report(what, exc), or
 * printed as unraisable.  Needs: main GIL. */
static void
run_callback(pp_result_support *support, PyObject *callback, PyObject *arg,
             const char *what)
{
    PyObject *res = PyObject_CallOneArg(callback, arg);
    if (res != NULL) {
        Py_DECREF(res);
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *reported = NULL;
    if (support != NULL && support->report != NULL) {
        reported = PyObject_CallFunction(support->report, "sO", what, exc);
    }
    if (reported == NULL) {
        if (PyErr_Occurred()) {
            PyErr_WriteUnraisable(callback);
        }
        else {
            PyErr_SetRaisedException(Py_NewRef(exc));
            PyErr_WriteUnraisable(callback);
        }
    }
    Py_XDECREF(reported);
    Py_DECREF(exc);
}

/* ---- waiting ----------------------------------------------------------- */

static double
monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wake one sleeper, if any and none is being woken.  Needs: the object
 * lock. */
static void
wake_post(wake_t *w)
{
    if (w->sleepers > 0 && !w->posted) {
        w->posted = 1;
        PyThread_release_lock(w->lock);
    }
}

/* Block on `lock` (GIL released) until posted, `deadline` (monotonic
 * seconds, < 0: none) or a signal handler raising.  1 woken, 0 timed
 * out, -1 with an exception.  Needs: the GIL, no object lock. */
static int
wake_sleep(PyThread_type_lock lock, double deadline)
{
    for (;;) {
        long long us = -1;
        if (deadline >= 0) {
            double left = deadline - monotonic_s();
            us = left > 0 ? (long long)(left * 1e6) : 0;
            if (us > PY_TIMEOUT_MAX) {
                us = PY_TIMEOUT_MAX;
            }
        }
        PyLockStatus got;
        Py_BEGIN_ALLOW_THREADS
        got = PyThread_acquire_lock_timed(lock, us, 1);
        Py_END_ALLOW_THREADS
        if (got == PY_LOCK_ACQUIRED) {
            return 1;
        }
        if (got == PY_LOCK_FAILURE) {
            return 0;
        }
        /* Interrupted by a signal: run its handler (Ctrl-C raises here,
         * in the main thread), then sleep on. */
        if (Py_MakePendingCalls() < 0) {
            return -1;
        }
    }
}

/* Wait until ready(op) (read under the object lock) or `deadline`
 * passes.  0 when ready, 1 on timeout, -1 with an exception (out of
 * memory, or what a signal handler raised).  Needs: the GIL, no object
 * lock. */
static int
wait_until(PyObject *op, wake_t *w, int (*ready)(PyObject *),
           double deadline)
{
    for (;;) {
        int is_ready, no_memory = 0;
        PyThread_type_lock lock = NULL;
        PP_LOCK_OBJECT(op);
        is_ready = ready(op);
        if (!is_ready) {
            if (w->lock == NULL) {
                /* Made taken: nothing to wake for yet. */
                w->lock = PyThread_allocate_lock();
                if (w->lock != NULL) {
                    (void)PyThread_acquire_lock(w->lock, WAIT_LOCK);
                }
            }
            no_memory = w->lock == NULL;
            if (!no_memory) {
                w->sleepers++;
                lock = w->lock;
            }
        }
        PP_UNLOCK_OBJECT();
        if (is_ready) {
            return 0;
        }
        if (no_memory) {
            PyErr_NoMemory();
            return -1;
        }
        int woke = wake_sleep(lock, deadline);
        PP_LOCK_OBJECT(op);
        w->sleepers--;
        if (woke == 1) {
            w->posted = 0;
            if (ready(op)) {
                wake_post(w); /* the next sleeper's turn */
            }
        }
        PP_UNLOCK_OBJECT();
        if (woke < 0) {
            return -1;
        }
        if (woke == 0) {
            int now_ready;
            PP_LOCK_OBJECT(op);
            now_ready = ready(op);
            PP_UNLOCK_OBJECT();
            return now_ready ? 0 : 1;
        }
    }
}

static void
wake_free(wake_t *w)
{
    if (w->lock != NULL) {
        PyThread_free_lock(w->lock);
        w->lock = NULL;
    }
}

/* Seconds from a timeout argument to a deadline (< 0: none).  0, or -1
 * with an exception. */
static int
deadline_from(PyObject *timeout, double *deadline)
{
    double seconds;
    int rc = pp__timeout_seconds(timeout, &seconds);
    *deadline = rc == 0 ? monotonic_s() + (seconds > 0 ? seconds : 0) : -1;
    return rc < 0 ? -1 : 0;
}

/* The constructors' work is all in tp_new: this only keeps the base
 * classes' __init__ (which makes an Event and takes a pool) from
 * running. */
static int
noop_init(PyObject *Py_UNUSED(op), PyObject *Py_UNUSED(args),
          PyObject *Py_UNUSED(kwargs))
{
    return 0;
}

/* ---- ApplyResult and MapResult --------------------------------------- */

/* Run the callbacks of a result whose outcome is recorded (FINISHING),
 * then make it ready and wake its waiters.  Needs: main GIL, no object
 * lock. */
static void
result_complete(PyObject *op)
{
    ResultObject *self = RES(op);
    pp_result_support *support = support_of(op);
    if (support == NULL) {
        PyErr_WriteUnraisable(op);
    }
    /* Read without the lock: FINISHING freezes these fields. */
    if (self->success && self->callback != NULL) {
        run_callback(support, self->callback, self->value, "callback");
    }
    else if (!self->success && self->error_callback != NULL) {
        run_callback(support, self->error_callback, self->error,
                     "error_callback");
    }
    PyObject *event;
    PP_LOCK_OBJECT(op);
    self->state = RS_DONE;
    wake_post(&self->wake);
    event = Py_XNewRef(self->event);
    PP_UNLOCK_OBJECT();
    if (event != NULL) {
        PyObject *res = PyObject_CallMethod(event, "set", NULL);
        if (res == NULL) {
            PyErr_WriteUnraisable(op);
        }
        Py_XDECREF(res);
        Py_DECREF(event);
    }
    leave_cache(&self->cache, self->job, op);
}

/* An apply's outcome.  Ignored once the result has one.  Needs: main
 * GIL. */
static void
apply_set(PyObject *op, int ok, PyObject *value)
{
    ResultObject *self = RES(op);
    int complete = 0;
    PP_LOCK_OBJECT(op);
    if (self->state == RS_PENDING) {
        self->success = ok;
        if (ok) {
            Py_XSETREF(self->value, Py_NewRef(value));
        }
        else {
            Py_XSETREF(self->error, Py_NewRef(value));
        }
        self->state = RS_FINISHING;
        complete = 1;
    }
    PP_UNLOCK_OBJECT();
    if (complete) {
        result_complete(op);
    }
}

/* Chunk `index` of a map: its results go into the list, or its error is
 * kept if it is the first.  The result completes with the last chunk,
 * as multiprocessing's MapResult does (ready only when every chunk is
 * in).  Needs: main GIL. */
static void
map_set(PyObject *op, uint64_t index, int ok, PyObject *value)
{
    ResultObject *self = RES(op);
    int complete = 0;
    PyObject *chunk = NULL;
    if (ok && self->success) {
        chunk = PySequence_Fast(value, "a map chunk's results");
        if (chunk == NULL) {
            ok = 0;
            value = PyErr_GetRaisedException();
        }
    }
    else {
        Py_INCREF(value);
    }
    PP_LOCK_OBJECT(op);
    if (self->state == RS_PENDING && self->number_left > 0) {
        self->number_left--;
        if (ok && self->success && chunk != NULL) {
            Py_ssize_t n = PyList_GET_SIZE(self->value);
            Py_ssize_t start = (Py_ssize_t)index * self->chunksize;
            Py_ssize_t size = PySequence_Fast_GET_SIZE(chunk);
            PyObject **items = PySequence_Fast_ITEMS(chunk);
            for (Py_ssize_t i = 0; i < size && start + i < n; i++) {
                /* The slot holds None, immortal: nothing to release. */
                PyList_SET_ITEM(self->value, start + i, Py_NewRef(items[i]));
            }
        }
        else if (!ok && self->success) {
            self->success = 0;
            self->error = Py_NewRef(value);
        }
        if (self->number_left == 0) {
            self->state = RS_FINISHING;
            complete = 1;
        }
    }
    PP_UNLOCK_OBJECT();
    Py_XDECREF(chunk);
    if (chunk == NULL) {
        Py_DECREF(value);
    }
    if (complete) {
        result_complete(op);
    }
}

/* A new, zeroed object of `type` for the pool's `cache` (a dict, else
 * TypeError), made by object.__new__, not tp_alloc: that also sets up
 * the instance dict the base class's instances have.  New reference or
 * NULL.  Needs: main GIL. */
static PyObject *
new_object(PyTypeObject *type, PyObject *cache)
{
    if (!PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict");
        return NULL;
    }
    pp_result_support *support = &pp__state_from_type(type)->result;
    return PyBaseObject_Type.tp_new(type, support->no_args, NULL);
}

/* A pending result of `type` with the fields both kinds have; the
 * caller registers it in the cache.  New reference or NULL. */
static PyObject *
result_alloc(PyTypeObject *type, PyObject *cache, uint64_t job,
             PyObject *callback, PyObject *error_callback)
{
    PyObject *op = new_object(type, cache);
    if (op == NULL) {
        return NULL;
    }
    ResultObject *self = RES(op);
    self->job = job;
    self->success = 1;
    self->callback = callback == Py_None ? NULL : Py_XNewRef(callback);
    self->error_callback =
        error_callback == Py_None ? NULL : Py_XNewRef(error_callback);
    return op;
}

/* See module.h. */
PyObject *
pp__apply_result_new(pp_result_support *support, PyObject *cache,
                     uint64_t job, PyObject *callback,
                     PyObject *error_callback)
{
    PyObject *op = result_alloc(support->apply_type, cache, job, callback,
                                error_callback);
    if (op != NULL) {
        RES(op)->number_left = 1;
        RES(op)->cache = Py_NewRef(cache);
    }
    return op;
}

/* ApplyResult(cache, job, callback=None, error_callback=None): a pending
 * result registered as cache[job]. */
static PyObject *
apply_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"cache", "job", "callback", "error_callback",
                             NULL};
    PyObject *cache, *callback = Py_None, *error_callback = Py_None;
    unsigned long long job;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OK|OO", kwlist, &cache,
                                     &job, &callback, &error_callback)) {
        return NULL;
    }
    PyObject *op = pp__apply_result_new(&pp__state_from_type(type)->result,
                                        cache, job, callback, error_callback);
    if (op == NULL) {
        return NULL;
    }
    if (enter_cache(cache, job, op) < 0) {
        Py_DECREF(op);
        return NULL;
    }
    return op;
}

/* MapResult(cache, job, chunksize, length, callback=None,
 * error_callback=None): a pending map of `length` items in chunks of
 * `chunksize`, registered as cache[job]; with chunksize 0 (an empty
 * map) it is ready at once and not registered, and, as in
 * multiprocessing, its callback is not called. */
static PyObject *
map_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"cache", "job", "chunksize", "length",
                             "callback", "error_callback", NULL};
    PyObject *cache, *callback = Py_None, *error_callback = Py_None;
    unsigned long long job;
    Py_ssize_t chunksize, length;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OKnn|OO", kwlist, &cache,
                                     &job, &chunksize, &length, &callback,
                                     &error_callback)) {
        return NULL;
    }
    if (chunksize < 0 || length < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "chunksize and length must be >= 0");
        return NULL;
    }
    PyObject *op = result_alloc(type, cache, job, callback, error_callback);
    if (op == NULL) {
        return NULL;
    }
    ResultObject *self = RES(op);
    self->value = PyList_New(length);
    if (self->value == NULL) {
        Py_DECREF(op);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < length; i++) {
        PyList_SET_ITEM(self->value, i, Py_None); /* immortal */
    }
    self->chunksize = chunksize;
    if (chunksize == 0) {
        self->state = RS_DONE;
        return op;
    }
    self->number_left = length / chunksize + (length % chunksize != 0);
    self->cache = Py_NewRef(cache);
    if (enter_cache(cache, job, op) < 0) {
        Py_DECREF(op);
        return NULL;
    }
    return op;
}

PP_LOCKED_READER(result_state, result_state_of, RES(op)->state)

/* ready(): True once the result is in and its callback has run. */
static PyObject *
result_ready(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(result_state_of(op) == RS_DONE);
}

/* successful(): whether the call returned; ValueError if not ready. */
static PyObject *
result_successful(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (result_state_of(op) != RS_DONE) {
        return PyErr_Format(PyExc_ValueError, "%R not ready", op);
    }
    return PyBool_FromLong(RES(op)->success);
}

/* The one optional argument, `timeout`, of get(), wait() and next():
 * *timeout is borrowed (NULL when not given).  0, or -1 with a
 * TypeError naming `what`. */
static int
timeout_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            const char *what, PyObject **timeout)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(
                         PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)) {
        PyErr_Format(PyExc_TypeError, "%s(timeout=None)", what);
        return -1;
    }
    *timeout = nargs + nkw == 1 ? args[0] : NULL;
    return 0;
}

/* Needs: the object lock. */
static int
result_is_done(PyObject *op)
{
    return RES(op)->state == RS_DONE;
}

/* Wait until done or `timeout` seconds passed.  0, or -1 with an
 * exception. */
static int
result_wait_for(PyObject *op, PyObject *timeout)
{
    double deadline;
    if (deadline_from(timeout, &deadline) < 0) {
        return -1;
    }
    return wait_until(op, &RES(op)->wake, result_is_done, deadline) < 0
               ? -1 : 0;
}

/* wait(timeout=None): until the result is ready, at most timeout s. */
static PyObject *
result_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    PyObject *timeout;
    if (timeout_arg(args, nargs, kwnames, "wait", &timeout) < 0 ||
        result_wait_for(op, timeout) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* get(timeout=None): the value, or raise the call's exception; raises
 * multiprocessing.TimeoutError if not ready after timeout seconds. */
static PyObject *
result_get(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    PyObject *timeout;
    if (timeout_arg(args, nargs, kwnames, "get", &timeout) < 0) {
        return NULL;
    }
    if (result_state_of(op) != RS_DONE) {
        if (result_wait_for(op, timeout) < 0) {
            return NULL;
        }
        if (result_state_of(op) != RS_DONE) {
            pp_result_support *support = support_of(op);
            if (support != NULL) {
                PyErr_SetNone(support->timeout_error);
            }
            return NULL;
        }
    }
    /* DONE freezes the outcome. */
    ResultObject *self = RES(op);
    if (self->success) {
        return Py_NewRef(self->value);
    }
    /* As `raise self._value`: the same object, its traceback growing. */
    if (PyExceptionInstance_Check(self->error)) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->error), self->error);
    }
    else {
        PyErr_SetObject(self->error, NULL);
    }
    return NULL;
}

/* _set(index, (ok, value)): what the collector's Python loop (and
 * terminate()) call, as for multiprocessing's results. */
static int
parse_set(PyObject *const *args, Py_ssize_t nargs, uint64_t *index, int *ok,
          PyObject **value)
{
    if (nargs != 2 || !PyTuple_Check(args[1]) ||
        PyTuple_GET_SIZE(args[1]) != 2) {
        PyErr_SetString(PyExc_TypeError, "_set(index, (ok, value))");
        return -1;
    }
    if (pp__as_u64(args[0], index) < 0) {
        return -1;
    }
    *ok = PyObject_IsTrue(PyTuple_GET_ITEM(args[1], 0));
    if (*ok < 0) {
        return -1;
    }
    *value = PyTuple_GET_ITEM(args[1], 1);
    return 0;
}

/* _set(index, (ok, value)) of every result type: what the collector
 * hands over in C (pp__result_deliver), from the pool's Python loop. */
static PyObject *
result_set_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t index;
    int ok;
    PyObject *value;
    pp_result_support *support = support_of(op);
    if (support == NULL || parse_set(args, nargs, &index, &ok, &value) < 0 ||
        pp__result_deliver(support, op, index, ok, value) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
make_event(PyObject *op)
{
    pp_result_support *support = support_of(op);
    return support ? PyObject_CallNoArgs(support->event_class) : NULL;
}

/* _event: made on first use (the stdlib's wait() reads it), and set at
 * once if the result is ready; see THE RULE above. */
static PyObject *
get_event(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *event = pp__get_or_make(op, &RES(op)->event, make_event);
    /* Stored before the state is read: a finisher that came between saw
     * it and set it; one that came before left it to us. */
    if (event != NULL && result_state_of(op) == RS_DONE) {
        PyObject *res = PyObject_CallMethod(event, "set", NULL);
        if (res == NULL) {
            Py_CLEAR(event);
        }
        Py_XDECREF(res);
    }
    return event;
}

static PyObject *
get_success(PyObject *op, void *Py_UNUSED(closure))
{
    if (result_state_of(op) == RS_PENDING) {
        PyErr_SetString(PyExc_AttributeError, "_success: not ready");
        return NULL;
    }
    return PyBool_FromLong(RES(op)->success);
}

static PyObject *
get_value(PyObject *op, void *Py_UNUSED(closure))
{
    ResultObject *self = RES(op);
    PyObject *value;
    PP_LOCK_OBJECT(op);
    value = Py_XNewRef(self->success ? self->value : self->error);
    PP_UNLOCK_OBJECT();
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_value: not ready");
    }
    return value;
}

static PyObject *
get_result_job(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong((unsigned long long)RES(op)->job);
}

static PyObject *
get_result_cache(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *cache;
    PP_LOCK_OBJECT(op);
    cache = Py_XNewRef(RES(op)->cache);
    PP_UNLOCK_OBJECT();
    return cache ? cache : Py_NewRef(Py_None);
}

#define RESULT_REFS(X)                                                     \
    X(cache) X(value) X(error) X(callback) X(error_callback) X(event)
/* Nobody sleeps on a freed object. */
#define RESULT_RELEASE(op) wake_free(&RES(op)->wake)
PP_GC_FUNCTIONS(result, ResultObject, RESULT_REFS, RESULT_RELEASE)

/* ApplyResult's and MapResult's methods. */
static PyMethodDef result_methods[] = {
    {"ready", result_ready, METH_NOARGS,
     "ready(): True once the call has completed (and its callback ran)."},
    {"successful", result_successful, METH_NOARGS,
     "successful(): whether the call completed without raising; "
     "ValueError if it is not ready."},
    {"wait", (PyCFunction)(void (*)(void))result_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None): until the result is ready, at most timeout "
     "seconds."},
    {"get", (PyCFunction)(void (*)(void))result_get,
     METH_FASTCALL | METH_KEYWORDS,
     "get(timeout=None): the result when it arrives; raises the "
     "call's exception, or multiprocessing.TimeoutError after "
     "timeout seconds."},
    {"_set", (PyCFunction)(void (*)(void))result_set_method, METH_FASTCALL,
     "_set(index, (ok, value)): chunk index's outcome (for the pool)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef result_getset[] = {
    PP_READONLY("_event", get_event),
    PP_READONLY("_success", get_success),
    PP_READONLY("_value", get_value),
    PP_READONLY("_job", get_result_job),
    PP_READONLY("_cache", get_result_cache),
    {NULL, NULL, NULL, NULL, NULL},
};

/* The slots of every result type but its doc (and an iterator's). */
#define RESULT_TYPE_SLOTS(GC, NEW, METHODS, GETSET)                        \
    {Py_tp_new, NEW}, {Py_tp_init, noop_init}, PP_GC_SLOTS(GC),           \
        {Py_tp_methods, METHODS}, {Py_tp_getset, GETSET}, {0, NULL}

static PyType_Slot apply_slots[] = {
    {Py_tp_doc, "The AsyncResult of SubinterpreterPool.apply_async()."},
    RESULT_TYPE_SLOTS(result, apply_new, result_methods, result_getset),
};

static PyType_Slot map_slots[] = {
    {Py_tp_doc, "The MapResult of SubinterpreterPool.map_async() and "
                "starmap_async()."},
    RESULT_TYPE_SLOTS(result, map_new, result_methods, result_getset),
};

/* ---- imap and imap_unordered ------------------------------------------ */

/* Append an entry (see imap_entry) to the ready list: a chunk's items,
 * or a failure.  0, or -1 with an exception.  Needs: the object lock. */
static int
imap_ready_append(IMapObject *self, PyObject *entry)
{
    if (!PyList_CheckExact(entry)) {
        return PyList_Append(self->ready, entry);
    }
    if (PyList_GET_SIZE(entry) == 1) {
        return PyList_Append(self->ready, PyList_GET_ITEM(entry, 0));
    }
    Py_ssize_t n = PyList_GET_SIZE(self->ready);
    return PyList_SetSlice(self->ready, n, n, entry);
}

/* The slot of chunk `index` in the early ring.  Needs: the object lock,
 * an early ring. */
static Py_ssize_t
early_slot(IMapObject *self, uint64_t index)
{
    return (Py_ssize_t)(index & (uint64_t)(PyList_GET_SIZE(self->early) - 1));
}

/* Keep chunk `index`, due after `received`, in the early ring, grown
 * (to twice its size, 64 at first) until it spans `index`.  0, or -1
 * with an exception.  Needs: the object lock. */
static int
imap_keep_early(IMapObject *self, uint64_t index, PyObject *entry)
{
    uint64_t ahead = index - self->received;
    Py_ssize_t size = self->early ? PyList_GET_SIZE(self->early) : 0;
    if (ahead >= (uint64_t)size) {
        Py_ssize_t grown_size = size ? size : 64;
        while ((uint64_t)grown_size <= ahead) {
            if (grown_size > PY_SSIZE_T_MAX / 2) {
                PyErr_NoMemory();
                return -1;
            }
            grown_size *= 2;
        }
        PyObject *grown = PyList_New(grown_size);
        if (grown == NULL) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < grown_size; i++) {
            PyList_SET_ITEM(grown, i, Py_None); /* immortal */
        }
        /* Every entry moves to its chunk's slot in the grown ring: the
         * chunk in old slot p is the one after `received` that p holds. */
        for (Py_ssize_t p = 0; p < size; p++) {
            PyObject *kept = PyList_GET_ITEM(self->early, p);
            if (kept != Py_None) {
                uint64_t at = self->received +
                              (((uint64_t)p - self->received) &
                               (uint64_t)(size - 1));
                PyList_SET_ITEM(grown, (Py_ssize_t)(at & (uint64_t)(
                                           grown_size - 1)), kept);
                PyList_SET_ITEM(self->early, p, Py_None);
            }
        }
        Py_XSETREF(self->early, grown);
    }
    if (PyList_CheckExact(entry) && PyObject_GC_IsTracked(entry)) {
        /* A chunk's list is the collector's alone (decoded or unpickled
         * there, never handed to other code), so no cycle can run
         * through it: untracked, the thousands that can wait here when
         * a worker falls behind are nothing for the young collections
         * that they set off to go over (84 per 200,000 no-op items,
         * a seventh of the collector's time, before). */
        PyObject_GC_UnTrack(entry);
    }
    Py_ssize_t slot = early_slot(self, index);
    PyObject *old = PyList_GET_ITEM(self->early, slot);
    PyList_SET_ITEM(self->early, slot, Py_NewRef(entry));
    Py_DECREF(old);
    return 0;
}

/* Chunk `index` (an entry: see imap_entry) has arrived.
 * Needs: main GIL, no object lock. */
static void
imap_put(PyObject *op, uint64_t index, PyObject *entry)
{
    IMapObject *self = IMAP(op);
    int complete, failed = 0;
    PP_LOCK_OBJECT(op);
    if (self->unordered) {
        failed = imap_ready_append(self, entry) < 0;
        self->received += !failed;
    }
    else if (index == self->received) {
        failed = imap_ready_append(self, entry) < 0;
        self->received += !failed;
        /* Chunks that came early and are now due: the next slot's, up
         * to the first that has none. */
        while (!failed && self->early != NULL) {
            Py_ssize_t slot = early_slot(self, self->received);
            PyObject *due = PyList_GET_ITEM(self->early, slot);
            if (due == Py_None) {
                break;
            }
            PyList_SET_ITEM(self->early, slot, Py_None);
            failed = imap_ready_append(self, due) < 0;
            Py_DECREF(due);
            self->received += !failed;
        }
    }
    else if (index > self->received) {
        failed = imap_keep_early(self, index, entry) < 0;
    }
    /* (An index already received cannot come again: dropped.) */
    complete = self->length >= 0 && self->received == (uint64_t)self->length;
    wake_post(&self->wake);
    PP_UNLOCK_OBJECT();
    if (failed) {
        /* Out of memory: the reader would hang on this chunk. */
        PyErr_WriteUnraisable(op);
    }
    if (complete) {
        leave_cache(&self->cache, self->job, op);
    }
}

/* The number of chunks, once known.  Needs: main GIL, no object lock. */
static void
imap_set_length(PyObject *op, int64_t length)
{
    IMapObject *self = IMAP(op);
    int complete;
    PP_LOCK_OBJECT(op);
    self->length = length;
    complete = self->received == (uint64_t)length;
    if (complete) {
        wake_post(&self->wake);
    }
    PP_UNLOCK_OBJECT();
    if (complete) {
        leave_cache(&self->cache, self->job, op);
    }
}

typedef enum { TAKE_NONE, TAKE_ITEM, TAKE_ERROR, TAKE_END } take_outcome;

/* The exception of a failure entry, borrowed, or NULL if `entry` is a
 * result.  The module's support is looked up only for a pair: most
 * entries are not, and the look-up walks the type's MRO. */
static PyObject *
imap_failure(PyObject *op, PyObject *entry)
{
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
        return NULL;
    }
    pp_result_support *support = support_of(op);
    return support != NULL &&
                   PyTuple_GET_ITEM(entry, 0) == support->failure_mark
               ? PyTuple_GET_ITEM(entry, 1)
               : NULL;
}

/* Read slots an imap's ready list may keep before it is compacted (see
 * imap_take): small lists are left alone, where the move is not worth it. */
#define READY_COMPACT_MIN 1024

/* The next item, if one is there: TAKE_ITEM with *out the item,
 * TAKE_ERROR with *out a chunk's exception, TAKE_END when every chunk
 * was read, TAKE_NONE when the next one has not arrived.  *out is a new
 * reference.  Needs: main GIL, no object lock. */
static take_outcome
imap_take(PyObject *op, PyObject **out)
{
    IMapObject *self = IMAP(op);
    take_outcome outcome = TAKE_NONE;
    PyObject *entry = NULL;
    PP_LOCK_OBJECT(op);
    Py_ssize_t n = PyList_GET_SIZE(self->ready);
    if (self->ready_head < n) {
        entry = PyList_GET_ITEM(self->ready, self->ready_head);
        /* None is immortal: no reference to take. */
        PyList_SET_ITEM(self->ready, self->ready_head, Py_None);
        self->ready_head++;
        if (self->ready_head == n ||
            (self->ready_head >= READY_COMPACT_MIN &&
             self->ready_head >= n - self->ready_head)) {
            /* Drop the read slots (they hold None) when all were read, or
             * when they are at least half the list: a consumer that stays
             * a little behind never reads it empty, and the list would
             * keep a slot for every item ever read.  Moving the unread
             * ones costs at most as many as were read since. */
            if (PyList_SetSlice(self->ready, 0, self->ready_head, NULL) < 0) {
                PyErr_Clear(); /* shrinking cannot fail in practice */
            }
            else {
                self->ready_head = 0;
            }
        }
        outcome = TAKE_ITEM;
    }
    else if (self->length >= 0 && self->received == (uint64_t)self->length) {
        outcome = TAKE_END;
    }
    PP_UNLOCK_OBJECT();
    if (entry != NULL) {
        PyObject *exc = imap_failure(op, entry);
        if (exc != NULL) {
            /* The entry is released here, out of the lock: that may run
             * code (the exception's last reference is ours now). */
            *out = Py_NewRef(exc);
            Py_DECREF(entry);
            outcome = TAKE_ERROR;
        }
        else {
            *out = entry;
        }
    }
    return outcome;
}

/* 1 if a reader would not wait now (an item, an error or the end is
 * there).  Needs: the object lock. */
static int
imap_available(PyObject *op)
{
    IMapObject *self = IMAP(op);
    return self->ready_head < PyList_GET_SIZE(self->ready) ||
           (self->length >= 0 && self->received == (uint64_t)self->length);
}

/* The next result, waiting up to `timeout` (NULL or None: forever).
 * NULL with no exception at the end; NULL with an exception for a failed
 * chunk, a timeout (multiprocessing.TimeoutError) or an interrupted
 * wait. */
static PyObject *
imap_next_timeout(PyObject *op, PyObject *timeout)
{
    double deadline;
    if (deadline_from(timeout, &deadline) < 0) {
        return NULL;
    }
    for (;;) {
        PyObject *item = NULL;
        switch (imap_take(op, &item)) {
        case TAKE_ITEM:
            return item;
        case TAKE_ERROR:
            if (PyExceptionInstance_Check(item)) {
                PyErr_SetObject((PyObject *)Py_TYPE(item), item);
            }
            else {
                PyErr_SetObject(item, NULL);
            }
            Py_DECREF(item);
            return NULL;
        case TAKE_END:
            return NULL;
        case TAKE_NONE:
            break;
        }
        int waited = wait_until(op, &IMAP(op)->wake, imap_available,
                                deadline);
        if (waited < 0) {
            return NULL;
        }
        if (waited == 1) {
            pp_result_support *support = support_of(op);
            if (support != NULL) {
                PyErr_SetNone(support->timeout_error);
            }
            return NULL;
        }
    }
}

static PyObject *
imap_iternext(PyObject *op)
{
    return imap_next_timeout(op, NULL);
}

/* next(timeout=None): as __next__, with multiprocessing.TimeoutError
 * after timeout seconds. */
static PyObject *
imap_next_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(
                         PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)) {
        PyErr_SetString(PyExc_TypeError, "next(timeout=None)");
        return NULL;
    }
    PyObject *item = imap_next_timeout(op, nargs + nkw ? args[0] : NULL);
    if (item == NULL && !PyErr_Occurred()) {
        PyErr_SetNone(PyExc_StopIteration);
    }
    return item;
}

/* An entry from an outcome: the chunk as a list, or the failure as
 * (failure_mark, exception).  New reference or NULL. */
static PyObject *
imap_entry(pp_result_support *support, int ok, PyObject *value)
{
    if (!ok) {
        return PyTuple_Pack(2, support->failure_mark, value);
    }
    if (PyList_CheckExact(value)) {
        return Py_NewRef(value);
    }
    return PySequence_List(value);
}

/* _set_length(chunks): how many chunks there are, once the input ended. */
static PyObject *
imap_set_length_method(PyObject *op, PyObject *arg)
{
    uint64_t length;
    if (pp__as_u64(arg, &length) < 0) {
        return NULL;
    }
    imap_set_length(op, (int64_t)length);
    Py_RETURN_NONE;
}

/* IMap(cache, job, length=None) / IMapUnordered(...): registered as
 * cache[job]; `length` is the number of chunks when known up front. */
static PyObject *
imap_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"cache", "job", "length", NULL};
    PyObject *cache, *length_obj = Py_None;
    unsigned long long job;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OK|O", kwlist, &cache,
                                     &job, &length_obj)) {
        return NULL;
    }
    uint64_t length = 0;
    if (length_obj != Py_None && pp__as_u64(length_obj, &length) < 0) {
        return NULL;
    }
    PyObject *op = new_object(type, cache);
    if (op == NULL) {
        return NULL;
    }
    IMapObject *self = IMAP(op);
    self->unordered = type == support_of(op)->imap_unordered_type;
    self->job = job;
    self->length = length_obj == Py_None ? -1 : (int64_t)length;
    self->ready = PyList_New(0);
    if (self->ready == NULL) {
        Py_DECREF(op);
        return NULL;
    }
    if (self->length == 0) {
        return op; /* nothing to wait for: not registered */
    }
    self->cache = Py_NewRef(cache);
    if (enter_cache(cache, job, op) < 0) {
        Py_DECREF(op);
        return NULL;
    }
    return op;
}

static PyObject *
get_imap_job(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong((unsigned long long)IMAP(op)->job);
}

#define IMAP_REFS(X) X(cache) X(ready) X(early)
#define IMAP_RELEASE(op) wake_free(&IMAP(op)->wake)
PP_GC_FUNCTIONS(imap, IMapObject, IMAP_REFS, IMAP_RELEASE)

static PyMethodDef imap_methods[] = {
    {"next", (PyCFunction)(void (*)(void))imap_next_method,
     METH_FASTCALL | METH_KEYWORDS,
     "next(timeout=None): the next result; multiprocessing.TimeoutError "
     "after timeout seconds."},
    {"_set", (PyCFunction)(void (*)(void))result_set_method, METH_FASTCALL,
     "_set(index, (ok, chunk)): chunk `index` arrived (for the pool)."},
    {"_set_length", imap_set_length_method, METH_O,
     "_set_length(chunks): the number of chunks (for the pool)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef imap_getset[] = {
    PP_READONLY("_job", get_imap_job),
    {NULL, NULL, NULL, NULL, NULL},
};

#define IMAP_TYPE_SLOTS                                                    \
    {Py_tp_iter, PyObject_SelfIter}, {Py_tp_iternext, imap_iternext},      \
        RESULT_TYPE_SLOTS(imap, imap_new, imap_methods, imap_getset)

static PyType_Slot imap_slots[] = {
    {Py_tp_doc, "The iterator of SubinterpreterPool.imap(): results in "
                "order."},
    IMAP_TYPE_SLOTS,
};

static PyType_Slot imap_unordered_slots[] = {
    {Py_tp_doc, "The iterator of SubinterpreterPool.imap_unordered(): "
                "results as they complete."},
    IMAP_TYPE_SLOTS,
};

/* The four types, in result_types()'s order.  Not immutable: their
 * bases, Python classes, are not (3.14 refuses that mix). */
#define RESULT_TYPE_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC)
static PyType_Spec result_specs[] = {
    {"poolparty.ApplyResult", sizeof(ResultObject), 0, RESULT_TYPE_FLAGS,
     apply_slots},
    {"poolparty.MapResult", sizeof(ResultObject), 0, RESULT_TYPE_FLAGS,
     map_slots},
    {"poolparty.IMapIterator", sizeof(IMapObject), 0, RESULT_TYPE_FLAGS,
     imap_slots},
    {"poolparty.IMapUnorderedIterator", sizeof(IMapObject), 0,
     RESULT_TYPE_FLAGS, imap_unordered_slots},
};

/* ---- delivery from the collector -------------------------------------- */

/* See module.h. */
int
pp__result_deliver(pp_result_support *support, PyObject *result,
                   uint64_t index, int ok, PyObject *value)
{
    PyTypeObject *type = Py_TYPE(result);
    if (type == support->apply_type) {
        apply_set(result, ok, value);
        return 1;
    }
    if (type == support->map_type) {
        map_set(result, index, ok, value);
        return 1;
    }
    if (type == support->imap_type || type == support->imap_unordered_type) {
        PyObject *entry = imap_entry(support, ok, value);
        if (entry == NULL) {
            return -1;
        }
        imap_put(result, index, entry);
        Py_DECREF(entry);
        return 1;
    }
    return 0;
}

/* See module.h. */
int
pp__result_is_ours(pp_result_support *support, PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    return support->apply_type != NULL &&
           (type == support->apply_type || type == support->map_type ||
            type == support->imap_type ||
            type == support->imap_unordered_type);
}

/* See module.h. */
int
pp__result_registered(pp_result_support *support, PyObject *result)
{
    PyTypeObject *type = Py_TYPE(result);
    int registered;
    PP_LOCK_OBJECT(result);
    registered = (type == support->apply_type || type == support->map_type
                      ? RES(result)->cache
                      : IMAP(result)->cache) != NULL;
    PP_UNLOCK_OBJECT();
    return registered;
}

/* ---- the types, made once per module ---------------------------------- */

/* result_types(ApplyResult, MapResult, IMapIterator,
 * IMapUnorderedIterator, TimeoutError, report) -> the four subclasses
 * (multiprocessing.pool's classes, multiprocessing.TimeoutError, and
 * report(what, exc), called when a callback raises).  All or nothing. */
PyObject *
pp__module_result_types(PyObject *module, PyObject *const *args,
                        Py_ssize_t nargs)
{
    pp_module_state *st = PyModule_GetState(module);
    pp_result_support *support = &st->result;
    if (support->apply_type == NULL) {
        if (nargs != 6 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
            !PyType_Check(args[2]) || !PyType_Check(args[3]) ||
            !PyType_Check(args[4]) || !PyCallable_Check(args[5])) {
            PyErr_SetString(PyExc_TypeError,
                            "result_types(ApplyResult, MapResult, "
                            "IMapIterator, IMapUnorderedIterator, "
                            "TimeoutError, report)");
            return NULL;
        }
        pp_result_support made = {0};
        made.event_class = pp__import_attr("threading", "Event");
        made.no_args = PyTuple_New(0);
        made.failure_mark =
            PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
        made.timeout_error = Py_NewRef(args[4]);
        made.report = Py_NewRef(args[5]);
        if (made.event_class == NULL || made.no_args == NULL ||
            made.failure_mark == NULL || pp__need_pickle_loads(module) < 0) {
            pp__result_support_clear(&made);
            return NULL;
        }
        PyTypeObject **slots[] = {&made.apply_type, &made.map_type,
                                  &made.imap_type,
                                  &made.imap_unordered_type};
        for (int i = 0; i < 4; i++) {
            *slots[i] = (PyTypeObject *)PyType_FromModuleAndSpec(
                module, &result_specs[i], args[i]);
            if (*slots[i] == NULL) {
                pp__result_support_clear(&made);
                return NULL;
            }
        }
        if (support->apply_type != NULL) {
            /* Another thread made them meanwhile (free-threaded). */
            pp__result_support_clear(&made);
        }
        else {
            *support = made;
        }
    }
    return PyTuple_Pack(4, support->apply_type, support->map_type,
                        support->imap_type, support->imap_unordered_type);
}

#define SUPPORT_REFS(X)                                                    \
    X(apply_type) X(map_type) X(imap_type) X(imap_unordered_type)          \
        X(event_class) X(timeout_error) X(report) X(no_args)             \
            X(failure_mark)

int
pp__result_support_traverse(pp_result_support *self, visitproc visit,
                            void *arg)
{
    SUPPORT_REFS(PP_VISIT_REF)
    return 0;
}

void
pp__result_support_clear(pp_result_support *self)
{
    SUPPORT_REFS(PP_CLEAR_REF)
}
