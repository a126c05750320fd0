/* _poolparty.Engine: the main interpreter's handle on a pp_engine.
 *
 * Every method runs in the interpreter that created the Engine (the
 * main one in practice) under its GIL, and releases that GIL around
 * anything that can block. */
#include "module.h"

typedef struct {
    PyObject_HEAD
    pp_engine *engine; /* owned reference; NULL only if __new__ failed */
    /* Job ids handed out by new_job() and submit_future(); atomic, as
     * free-threaded builds run those without a lock. */
    atomic_uint_fast64_t next_job;
    /* Completions taken from the core but not yet handed out: collect()
     * hands out at most PP_COLLECT_BATCH per call (see module.h).  Guarded by
     * the GIL, or by a critical section on free-threaded builds. */
    pp_msg *held;
    size_t held_count;
} EngineObject;


#define ENGINE(op) (((EngineObject *)(op))->engine)

pp_engine *
pp__engine_from_object(pp_module_state *st, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, st->engine_type) || ENGINE(obj) == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected a _poolparty.Engine");
        return NULL;
    }
    return ENGINE(obj);
}

/* Engine(design, nworkers, maxtasks, sys_path, payload) */
static PyObject *
engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"design", "nworkers", "maxtasks", "sys_path",
                             "payload", NULL};
    int design;
    unsigned int nworkers;
    unsigned long long maxtasks;
    Py_buffer sys_path = {0}, payload = {0};
    PyObject *self = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iIKy*y*", kwlist,
                                     &design, &nworkers, &maxtasks,
                                     &sys_path, &payload)) {
        return NULL;
    }
    pp_module_state *st = pp__state_from_type(type);
    if (design != PP_DESIGN_QUEUE && design != PP_DESIGN_CALL) {
        PyErr_SetString(PyExc_ValueError, "unknown dispatch design");
        goto done;
    }
    self = type->tp_alloc(type, 0);
    if (self == NULL) {
        goto done;
    }
    atomic_init(&((EngineObject *)self)->next_job, 1);
    pp_engine *engine = NULL;
    int rc;
    /* Queue-design workers start here and create their interpreters in
     * parallel; none of that needs our GIL. */
    Py_BEGIN_ALLOW_THREADS
    rc = pp__engine_new((pp_design)design, nworkers, maxtasks,
                        sys_path.buf, (size_t)sys_path.len, payload.buf,
                        (size_t)payload.len, &engine);
    Py_END_ALLOW_THREADS
    ENGINE(self) = engine;
    if (rc != PP_OK) {
        Py_CLEAR(self);
        pp__raise(st, rc);
    }
done:
    PyBuffer_Release(&sys_path);
    PyBuffer_Release(&payload);
    return self;
}

static void
engine_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    pp_msg_free_chain(((EngineObject *)self)->held);
    pp_engine *engine = ENGINE(self);
    if (engine != NULL) {
        /* Nobody can submit or collect any more: let the workers drain
         * what is queued and exit on their own; they hold their own
         * references to the engine. */
        pp__engine_close(engine);
        pp__engine_decref(engine);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* submit(job, index, kind, func_pickle, args_pickle) -- the per-task
 * hot path. */
static PyObject *
engine_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "submit(job, index, kind, "
                                         "func_pickle, args_pickle)");
        return NULL;
    }
    uint64_t job, index, kind;
    if (pp__as_u64(args[0], &job) < 0 || pp__as_u64(args[1], &index) < 0 ||
        pp__as_u64(args[2], &kind) < 0) {
        return NULL;
    }
    pp_msg *task = pp__task_from_buffers(job, index, kind, args[3], args[4]);
    if (task == NULL) {
        return NULL;
    }
    int rc = pp__engine_submit(ENGINE(self), task);
    if (rc != PP_OK) {
        pp_msg_free(task);
        return pp__raise(pp__state_from_type(Py_TYPE(self)), rc);
    }
    Py_RETURN_NONE;
}

/* dict[key] as a new reference, NULL (no exception) when missing, or
 * NULL with an exception. */
static PyObject *
dict_get_ref(PyObject *dict, PyObject *key)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *value = NULL;
    (void)PyDict_GetItemRef(dict, key, &value);
    return value;
#else
    return Py_XNewRef(PyDict_GetItemWithError(dict, key));
#endif
}

/* new_job() -> a job id no other task of this engine has. */
static PyObject *
engine_new_job(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t job = atomic_fetch_add(&((EngineObject *)self)->next_job, 1);
    return PyLong_FromUnsignedLongLong((unsigned long long)job);
}

/* submit_future(owner, futures, func_cache, fn, args, kwargs) -> Future
 * or None.  SubinterpreterPoolExecutor.submit()'s fast path, one C call:
 * the function's reference from func_cache ({id(fn): (fn, data,
 * flags)}, filled by _engine.function_pickle), the arguments through
 * the codec, a Future registered in futures under a new job id, and the
 * task queued.  None when any of it does not apply (fn not cached yet,
 * arguments that need pickle, the engine closed): the caller then takes
 * the Python path, which pickles and raises the right errors.  Needs:
 * main GIL. */
static PyObject *
engine_submit_future(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyTuple_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "submit_future(owner, futures, "
                                         "func_cache, fn, args, kwargs)");
        return NULL;
    }
    PyObject *owner = args[0], *futures = args[1], *cache = args[2];
    PyObject *fn = args[3], *fargs = args[4], *fkwargs = args[5];
    pp_future_support *support = &pp__state_from_type(Py_TYPE(self))->future;
    if (support->type == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *key = PyLong_FromVoidPtr(fn);
    if (key == NULL) {
        return NULL;
    }
    PyObject *entry = dict_get_ref(cache, key);
    Py_DECREF(key);
    if (entry == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    PyObject *result = NULL, *payload = NULL, *future = NULL,
             *job_key = NULL;
    pp_buf buf = {0};
    unsigned long flags;
    /* The entry keeps fn alive, so its id is fn's only while entry[0]
     * is fn. */
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3 ||
        PyTuple_GET_ITEM(entry, 0) != fn ||
        !PyBytes_Check(PyTuple_GET_ITEM(entry, 1))) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    flags = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(entry, 2));
    if (flags == (unsigned long)-1 && PyErr_Occurred()) {
        goto done;
    }
    if (fkwargs != Py_None && (!PyDict_Check(fkwargs) ||
                               PyDict_GET_SIZE(fkwargs) == 0)) {
        fkwargs = Py_None; /* as the Python path: `kwargs or None` */
    }
    payload = PyTuple_Pack(2, fargs, fkwargs);
    if (payload == NULL) {
        goto done;
    }
    int rc = pp__codec_encode(payload, &buf);
    if (rc != 0) {
        if (rc > 0) {
            result = Py_NewRef(Py_None); /* needs pickle */
        }
        goto done;
    }
    uint64_t job = atomic_fetch_add(&((EngineObject *)self)->next_job, 1);
    future = pp__future_new(support, owner, job);
    job_key = PyLong_FromUnsignedLongLong((unsigned long long)job);
    if (future == NULL || job_key == NULL) {
        goto done;
    }
    /* Registered before it is queued: on a free-threaded build the
     * result can come back before this call returns. */
    if (PyDict_SetItem(futures, job_key, future) < 0) {
        goto done;
    }
    PyObject *func = PyTuple_GET_ITEM(entry, 1);
    pp_msg *task = pp_msg_new_task(job, 0, PP_TASK_CALL | (uint32_t)flags,
                                   PyBytes_AS_STRING(func),
                                   (size_t)PyBytes_GET_SIZE(func), buf.data,
                                   buf.size);
    if (task == NULL) {
        PyErr_NoMemory();
        (void)PyDict_DelItem(futures, job_key);
        goto done;
    }
    rc = pp__engine_submit(ENGINE(self), task);
    if (rc != PP_OK) {
        /* Closed or terminated: the Python path says so properly. */
        pp_msg_free(task);
        if (PyDict_DelItem(futures, job_key) < 0) {
            goto done;
        }
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = Py_NewRef(future);
done:
    pp__buf_fini(&buf);
    Py_XDECREF(job_key);
    Py_XDECREF(future);
    Py_XDECREF(payload);
    Py_DECREF(entry);
    return result;
}

/* Chunks queued per lock round in submit_map: enough to make the lock
 * and the wake-up rare, few enough that workers start on the first
 * chunks while the rest are still being encoded. */
#define SUBMIT_BATCH 64

/* One chunk's argument payload: the codec's bytes for plain data, else
 * pickle_dumps(chunk).  Fills *task; 0, or -1 with an exception. */
static int
chunk_task(uint64_t job, uint64_t index, uint32_t kind, const Py_buffer *func,
           PyObject *chunk, PyObject *pickle_dumps, pp_msg **task)
{
    pp_buf buf = {0};
    int rc = pp__codec_encode(chunk, &buf);
    if (rc < 0) {
        pp__buf_fini(&buf);
        return -1;
    }
    if (rc == 0) {
        *task = pp_msg_new_task(job, index, kind, func->buf, (size_t)func->len,
                                buf.data, buf.size);
        pp__buf_fini(&buf);
    }
    else {
        pp__buf_fini(&buf);
        PyObject *pickled = PyObject_CallOneArg(pickle_dumps, chunk);
        if (pickled == NULL) {
            return -1;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(pickled, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(pickled);
            return -1;
        }
        *task = pp_msg_new_task(job, index, kind, func->buf, (size_t)func->len,
                                view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        Py_DECREF(pickled);
    }
    if (*task == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Queue the chain; on refusal free it and say from which chunk on the
 * engine refused.  0 when queued (or empty), 1 when refused. */
static int
push_chain(pp_engine *engine, pp_msg **first, pp_msg **last, size_t *count)
{
    if (*count == 0) {
        return 0;
    }
    int refused = pp__engine_submit_chain(engine, *first, *count) != PP_OK;
    if (refused) {
        pp_msg_free_chain(*first);
    }
    *first = *last = NULL;
    *count = 0;
    return refused;
}

/* submit_map(job, kind, func_pickle, items, chunksize, pickle_dumps)
 *   -> (failures, refused_from)
 *
 * A whole map in one call: items (a sequence) is cut into lists of
 * chunksize items, chunk i becoming task (job, i); each is encoded by the
 * codec, or by pickle_dumps(chunk) when it is not plain data, and tasks
 * are queued SUBMIT_BATCH at a time.  This is the per-item cost of
 * map(chunksize=1): one Python call per map instead of a Python round
 * and a lock round per chunk.
 *
 * failures lists (index, exception) for chunks whose encoding raised an
 * Exception (they are not queued; the caller fails their results, as
 * multiprocessing does); refused_from is None, or the first chunk index
 * the engine refused because it stopped accepting work (that chunk and
 * every later one were not queued).  A BaseException that is not an
 * Exception (KeyboardInterrupt) propagates, after the chunks before it
 * were queued. */
static PyObject *
engine_submit_map(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "submit_map(job, kind, func_pickle, "
                                         "items, chunksize, pickle_dumps)");
        return NULL;
    }
    uint64_t job, kind, chunksize;
    if (pp__as_u64(args[0], &job) < 0 || pp__as_u64(args[1], &kind) < 0 ||
        pp__as_u64(args[4], &chunksize) < 0) {
        return NULL;
    }
    if (chunksize == 0) {
        PyErr_SetString(PyExc_ValueError, "chunksize must be at least 1");
        return NULL;
    }
    PyObject *pickle_dumps = args[5];
    Py_buffer func;
    if (PyObject_GetBuffer(args[2], &func, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[3], "map() needs an iterable of "
                                             "items");
    PyObject *failures = PyList_New(0);
    PyObject *result = NULL;
    pp_msg *first = NULL, *last = NULL;
    size_t count = 0;
    PyObject *refused_from = NULL;
    if (seq == NULL || failures == NULL) {
        goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t step = chunksize > (uint64_t)PY_SSIZE_T_MAX
                          ? PY_SSIZE_T_MAX : (Py_ssize_t)chunksize;
    uint64_t index = 0;
    for (Py_ssize_t start = 0; start < n; index++) {
        Py_ssize_t size = n - start < step ? n - start : step;
        PyObject *chunk = PyList_New(size);
        if (chunk == NULL) {
            goto done;
        }
        /* Re-read the items each time: pickle_dumps runs Python code,
         * which may not resize seq (a list we hold), yet may replace
         * items in it. */
        PyObject **items = PySequence_Fast_ITEMS(seq);
        for (Py_ssize_t i = 0; i < size; i++) {
            PyList_SET_ITEM(chunk, i, Py_NewRef(items[start + i]));
        }
        start += size;
        pp_msg *task = NULL;
        int rc = chunk_task(job, index, (uint32_t)kind, &func, chunk,
                            pickle_dumps, &task);
        if (rc < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(chunk);
                goto done;
            }
            PyObject *exc = PyErr_GetRaisedException();
            PyObject *entry = Py_BuildValue("(KN)", (unsigned long long)index,
                                            exc);
            if (entry == NULL || PyList_Append(failures, entry) < 0) {
                Py_XDECREF(entry);
                Py_DECREF(chunk);
                goto done;
            }
            Py_DECREF(entry);
        }
        Py_DECREF(chunk);
        if (task != NULL) {
            if (last == NULL) {
                first = task;
            }
            else {
                last->next = task;
            }
            last = task;
            count++;
        }
        if (count == SUBMIT_BATCH) {
            uint64_t batch_first = first->index;
            if (push_chain(ENGINE(self), &first, &last, &count)) {
                refused_from = PyLong_FromUnsignedLongLong(batch_first);
                goto finish;
            }
        }
    }
    if (count > 0) {
        uint64_t batch_first = first->index;
        if (push_chain(ENGINE(self), &first, &last, &count)) {
            refused_from = PyLong_FromUnsignedLongLong(batch_first);
            goto finish;
        }
    }
    refused_from = Py_NewRef(Py_None);
finish:
    if (refused_from != NULL) {
        result = PyTuple_Pack(2, failures, refused_from);
        Py_DECREF(refused_from);
    }
done:
    /* On an error, what was encoded so far is still queued, so that the
     * caller never owns tasks it cannot see. */
    if (count > 0) {
        PyObject *pending_exc = PyErr_GetRaisedException();
        push_chain(ENGINE(self), &first, &last, &count);
        PyErr_SetRaisedException(pending_exc);
    }
    Py_XDECREF(failures);
    Py_XDECREF(seq);
    PyBuffer_Release(&func);
    return result;
}

/* collect(timeout=None) -> list of completions, [] on timeout, or None
 * once every worker has exited and all was collected. */
/* The fast path of SubinterpreterPoolExecutor.submit()'s results: a
 * successful codec result for a future of ours that nobody waits on is
 * decoded and set here, with no Python code, no tuple and no trip
 * through the collector's Python loop.  Anything else (errors, pickled
 * results, futures with waiters or callbacks, maps) is left to that
 * loop.  1 if done here, 0 if not, -1 with an exception.  Needs: main
 * GIL. */
static int
finish_future_here(pp_future_support *support, PyObject *futures,
                   const pp_msg *msg)
{
    if (support->type == NULL || msg->kind != PP_DONE_OK ||
        !pp__codec_is(msg->data, msg->size)) {
        return 0;
    }
    PyObject *key = PyLong_FromUnsignedLongLong((unsigned long long)msg->job);
    if (key == NULL) {
        return -1;
    }
    int done = 0;
    PyObject *future = dict_get_ref(futures, key);
    if (future == NULL) {
        done = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    if (!Py_IS_TYPE(future, support->type) ||
        !pp__future_finishes_fast(future)) {
        goto out;
    }
    PyObject *value = pp__codec_decode(msg->data, msg->size);
    if (value == NULL) {
        /* The Python loop decodes it again and fails just this task. */
        PyErr_Clear();
        goto out;
    }
    /* Decoding may have run a garbage collection, and with it any code,
     * and on a free-threaded build another thread may have made the
     * future's condition meanwhile: finish it only if that is still not
     * so, in one step.  Else the Python loop does it the stdlib's way. */
    if (pp__future_try_finish_fast(future, value)) {
        /* Finished: nothing else touches its entry any more. */
        done = PyDict_DelItem(futures, key) < 0 ? -1 : 1;
    }
    Py_DECREF(value);
out:
    Py_XDECREF(future);
    Py_DECREF(key);
    return done;
}

static PyObject *
engine_collect(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t timeout_ns;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError,
                        "collect(timeout=None, futures=None)");
        return NULL;
    }
    if (pp__timeout_ns(nargs ? args[0] : NULL, &timeout_ns) < 0) {
        return NULL;
    }
    PyObject *futures = nargs > 1 && args[1] != Py_None ? args[1] : NULL;
    if (futures != NULL && !PyDict_Check(futures)) {
        PyErr_SetString(PyExc_TypeError, "futures must be a dict");
        return NULL;
    }
    pp_future_support *support =
        futures ? &pp__state_from_type(Py_TYPE(self))->future : NULL;
    EngineObject *eo = (EngineObject *)self;
    pp_msg *first = NULL;
    size_t count = 0;
    PP_LOCK_OBJECT(self);
    first = eo->held;
    count = eo->held_count;
    eo->held = NULL;
    eo->held_count = 0;
    PP_UNLOCK_OBJECT();
    if (first == NULL) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = pp__engine_collect(ENGINE(self), timeout_ns, &first, &count);
        Py_END_ALLOW_THREADS
        if (rc == PP_ECLOSED) {
            Py_RETURN_NONE;
        }
        if (rc == PP_ETIMEDOUT) {
            return PyList_New(0);
        }
    }
    if (count > PP_COLLECT_BATCH) {
        pp_msg *last = first;
        for (size_t i = 1; i < PP_COLLECT_BATCH; i++) {
            last = last->next;
        }
        PP_LOCK_OBJECT(self);
        /* Anything held meanwhile (another caller) goes after ours. */
        pp_msg *rest_tail = last->next;
        while (rest_tail->next != NULL) {
            rest_tail = rest_tail->next;
        }
        rest_tail->next = eo->held;
        eo->held = last->next;
        eo->held_count += count - PP_COLLECT_BATCH;
        PP_UNLOCK_OBJECT();
        last->next = NULL;
    }
    PyObject *list = PyList_New(0);
    for (pp_msg *msg = first; list != NULL && msg != NULL; msg = msg->next) {
        if (futures != NULL) {
            int done = finish_future_here(support, futures, msg);
            if (done < 0) {
                Py_CLEAR(list);
                break;
            }
            if (done) {
                continue;
            }
        }
        PyObject *item = pp__completion_tuple(msg);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(item);
    }
    /* On failure the completions are lost with the exception; the
     * caller (the result handler) treats that as fatal for the pool. */
    pp_msg_free_chain(first);
    return list;
}

static PyObject *
engine_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    pp__engine_close(ENGINE(self));
    Py_RETURN_NONE;
}

/* A list of (job, index) for a chain of dropped tasks, which it frees.
 * New reference or NULL. */
static PyObject *
dropped_list(pp_msg *dropped)
{
    PyObject *list = PyList_New(0);
    for (pp_msg *m = dropped; list != NULL && m != NULL; m = m->next) {
        PyObject *item = Py_BuildValue("(KK)", (unsigned long long)m->job,
                                       (unsigned long long)m->index);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(item);
    }
    pp_msg_free_chain(dropped);
    return list;
}

/* terminate() -> list of (job, index) of the queued tasks it dropped. */
static PyObject *
engine_terminate(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    pp_msg *dropped;
    Py_BEGIN_ALLOW_THREADS
    dropped = pp__engine_terminate(ENGINE(self));
    Py_END_ALLOW_THREADS
    return dropped_list(dropped);
}

/* discard_queued() -> list of (job, index) of the queued tasks dropped;
 * running tasks and the workers carry on. */
static PyObject *
engine_discard_queued(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return dropped_list(pp__engine_discard(ENGINE(self)));
}

/* cancel(job, index) -> True if the queued task was removed unrun. */
static PyObject *
engine_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t job, index;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "cancel(job, index)");
        return NULL;
    }
    if (pp__as_u64(args[0], &job) < 0 || pp__as_u64(args[1], &index) < 0) {
        return NULL;
    }
    return PyBool_FromLong(pp__engine_cancel(ENGINE(self), job, index) ==
                           PP_OK);
}

/* cancel_job(job) -> [(job, index), ...] of the queued tasks removed. */
static PyObject *
engine_cancel_job(PyObject *self, PyObject *arg)
{
    uint64_t job;
    if (pp__as_u64(arg, &job) < 0) {
        return NULL;
    }
    return dropped_list(pp__engine_cancel_job(ENGINE(self), job));
}

/* join(timeout=None) -> True once every worker has exited. */
static PyObject *
engine_join(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t timeout_ns;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "join(timeout=None)");
        return NULL;
    }
    if (pp__timeout_ns(nargs ? args[0] : NULL, &timeout_ns) < 0) {
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pp__engine_join(ENGINE(self), timeout_ns);
    Py_END_ALLOW_THREADS
    if (rc == PP_ETIMEDOUT) {
        Py_RETURN_FALSE;
    }
    if (rc != PP_OK) {
        return pp__raise(pp__state_from_type(Py_TYPE(self)), rc);
    }
    Py_RETURN_TRUE;
}

/* serve_calls(worker) -- the body of a call-design worker thread. */
static PyObject *
engine_serve_calls(PyObject *self, PyObject *arg)
{
    uint64_t worker;
    if (pp__as_u64(arg, &worker) < 0) {
        return NULL;
    }
    int rc = pp__engine_serve_calls(ENGINE(self), (uint32_t)worker);
    if (rc != PP_OK) {
        return pp__raise(pp__state_from_type(Py_TYPE(self)), rc);
    }
    Py_RETURN_NONE;
}

/* answer_import(worker): the main interpreter has imported what worker
 * `worker` asked for (see pp__engine_request_main_import). */
static PyObject *
engine_answer_import(PyObject *self, PyObject *arg)
{
    uint64_t worker;
    if (pp__as_u64(arg, &worker) < 0) {
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pp__engine_answer_import(ENGINE(self), (uint32_t)worker);
    Py_END_ALLOW_THREADS
    if (rc != PP_OK) {
        return pp__raise(pp__state_from_type(Py_TYPE(self)), rc);
    }
    Py_RETURN_NONE;
}

static PyObject *
engine_get_pending(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(pp__engine_pending(ENGINE(self)));
}

static PyObject *
engine_get_live_workers(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(pp__engine_live_workers(ENGINE(self)));
}

static PyObject *
engine_get_state(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong((long)pp__engine_state(ENGINE(self)));
}

static PyMethodDef engine_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))engine_submit, METH_FASTCALL,
     "submit(job, index, kind, func_pickle, args_pickle): queue one task."},
    {"submit_map", (PyCFunction)(void (*)(void))engine_submit_map,
     METH_FASTCALL,
     "submit_map(job, kind, func_pickle, items, chunksize, pickle_dumps) -> "
     "(failures, refused_from): queue a whole map as chunks of chunksize "
     "items."},
    {"collect", (PyCFunction)(void (*)(void))engine_collect, METH_FASTCALL,
     "collect(timeout=None, futures=None): wait for completions and take "
     "all ready ones as (job, index, kind, worker, payload) tuples; [] on "
     "timeout, None once every worker has exited.  With `futures` ({job: "
     "Future}), plain results of futures nobody waits on are set here "
     "instead, and left out of the list."},
    {"new_job", engine_new_job, METH_NOARGS,
     "new_job(): a job id not used before on this engine."},
    {"submit_future", (PyCFunction)(void (*)(void))engine_submit_future,
     METH_FASTCALL,
     "submit_future(owner, futures, func_cache, fn, args, kwargs): queue "
     "fn(*args, **kwargs) and return its Future, or None if the Python "
     "path must do it."},
    {"close", engine_close, METH_NOARGS,
     "close(): accept no more tasks; queued ones still run."},
    {"terminate", engine_terminate, METH_NOARGS,
     "terminate(): drop queued tasks (returned as (job, index) pairs) and "
     "interrupt running ones."},
    {"discard_queued", engine_discard_queued, METH_NOARGS,
     "discard_queued(): drop queued tasks (returned as (job, index) pairs); "
     "running tasks and the workers carry on."},
    {"cancel", (PyCFunction)(void (*)(void))engine_cancel, METH_FASTCALL,
     "cancel(job, index): remove a queued task; True if it will not run."},
    {"cancel_job", engine_cancel_job, METH_O,
     "cancel_job(job): remove every queued task of a job; returns their "
     "(job, index) pairs."},
    {"join", (PyCFunction)(void (*)(void))engine_join, METH_FASTCALL,
     "join(timeout=None): wait for all workers to exit; False on timeout."},
    {"answer_import", engine_answer_import, METH_O,
     "answer_import(worker): wake a worker waiting for a main-first import."},
    {"serve_calls", engine_serve_calls, METH_O,
     "serve_calls(worker): run call-design worker `worker` on this thread "
     "until the engine stops."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"pending", engine_get_pending, NULL, "tasks queued, not yet started",
     NULL},
    {"live_workers", engine_get_live_workers, NULL,
     "workers that have not exited", NULL},
    {"state", engine_get_state, NULL, "lifecycle state (PP_ENGINE_*)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot engine_slots[] = {
    {Py_tp_new, engine_new},
    {Py_tp_dealloc, engine_dealloc},
    {Py_tp_methods, engine_methods},
    {Py_tp_getset, engine_getset},
    {Py_tp_doc, "Engine(design, nworkers, maxtasks, sys_path, payload): a "
                "pool's native queues and workers."},
    {0, NULL},
};

static PyType_Spec engine_spec = {
    .name = "_poolparty.Engine",
    .basicsize = sizeof(EngineObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = engine_slots,
};

int
pp__engine_type_add(PyObject *module, pp_module_state *st)
{
    return pp__add_type(module, &engine_spec, &st->engine_type);
}
