/* _poolparty.Engine: the main interpreter's handle on a pp_engine --
 * creation, lifecycle (close, terminate, join, cancel), single-task
 * submit, and the getters.  The instance layout is in module.h; map
 * submission is in engine_map.c, completion delivery and the Future fast
 * path in engine_delivery.c.
 *
 * Every method runs in the interpreter that created the Engine (the
 * main one in practice) under its GIL, and releases that GIL around
 * anything that can block. */
#include "module.h"

#define ENGINE(op) PP_ENGINE(op)

pp_engine *
pp__engine_from_object(pp_module_state *st, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, st->engine_type) || ENGINE(obj) == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected a _poolparty.Engine");
        return NULL;
    }
    return ENGINE(obj);
}

/* Engine(design, nworkers, maxtasks, sys_path, payload, nice=0, cpus=0) */
static PyObject *
engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"design", "nworkers", "maxtasks", "sys_path",
                             "payload", "nice", "cpus", NULL};
    int design;
    unsigned int nworkers;
    unsigned long long maxtasks;
    int nice = 0;
    unsigned int cpus = 0;
    Py_buffer sys_path = {0}, payload = {0};
    PyObject *self = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iIKy*y*|iI", kwlist,
                                     &design, &nworkers, &maxtasks,
                                     &sys_path, &payload, &nice, &cpus)) {
        return NULL;
    }
    pp_module_state *st = pp__state_from_type(type);
    if (design != PP_DESIGN_QUEUE && design != PP_DESIGN_CALL) {
        PyErr_SetString(PyExc_ValueError, "unknown dispatch design");
        goto done;
    }
    if (nice < 0 || nice > 39) {
        PyErr_SetString(PyExc_ValueError, "nice must be 0 to 39");
        goto done;
    }
    self = type->tp_alloc(type, 0);
    if (self == NULL) {
        goto done;
    }
    atomic_init(&((pp_engine_object *)self)->next_job, 1);
    pp__pins_init(&((pp_engine_object *)self)->pins);
    pp_engine *engine = NULL;
    int rc;
    /* Queue-design workers start here and create their interpreters in
     * parallel; none of that needs our GIL. */
    Py_BEGIN_ALLOW_THREADS
    rc = pp__engine_new((pp_design)design, nworkers, maxtasks,
                        sys_path.buf, (size_t)sys_path.len, payload.buf,
                        (size_t)payload.len, nice, cpus, &engine);
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

/* The only references an Engine holds are bind_futures()'s, and the
 * owner usually holds the Engine: a cycle the garbage collector breaks. */
static int
engine_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return pp__engine_delivery_traverse(self, visit, arg);
}

static int
engine_clear(PyObject *self)
{
    pp__engine_delivery_clear(self);
    return 0;
}

static void
engine_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    pp__engine_delivery_free(self);
    /* Tasks still queued get their own copy of the buffers they refer
     * to: the caller's objects go now. */
    pp__pins_fini(&((pp_engine_object *)self)->pins);
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
    uint64_t job, index, kind;
    if (pp__u64_args(args, nargs, 5,
                     "submit(job, index, kind, func_pickle, args_pickle)",
                     "012", &job, &index, &kind) < 0) {
        return NULL;
    }
    /* A by-value function's bytes go to the engine's store, once; the
     * task carries its header (function_pickle hands out bytes). */
    int stored = PyBytes_Check(args[3]);
    pp_msg *task = pp__task_from_buffers(job, index, kind, args[3], args[4],
                                         stored,
                                         &((pp_engine_object *)self)->pins);
    if (task == NULL) {
        return NULL;
    }
    int rc = stored ? pp__engine_submit_fn(
                          ENGINE(self), task, 1, PyBytes_AS_STRING(args[3]),
                          (size_t)PyBytes_GET_SIZE(args[3]))
                    : pp__engine_submit(ENGINE(self), task);
    if (rc != PP_OK) {
        pp_msg_free(task);
        return pp__raise(pp__state_from_type(Py_TYPE(self)), rc);
    }
    Py_RETURN_NONE;
}

/* new_job() -> a job id no other task of this engine has. */
static PyObject *
engine_new_job(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t job = atomic_fetch_add(&((pp_engine_object *)self)->next_job, 1);
    return PyLong_FromUnsignedLongLong((unsigned long long)job);
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

/* discard_queued(after_start=False) -> list of (job, index) of the
 * queued tasks dropped; running tasks and the workers carry on. */
static PyObject *
engine_discard_queued(PyObject *self, PyObject *const *args,
                      Py_ssize_t nargs)
{
    int after_start = 0;
    if (nargs > 1 ||
        (nargs == 1 && (after_start = PyObject_IsTrue(args[0])) < 0)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError,
                            "discard_queued(after_start=False)");
        }
        return NULL;
    }
    pp_msg *dropped;
    Py_BEGIN_ALLOW_THREADS
    dropped = pp__engine_discard(ENGINE(self), after_start);
    Py_END_ALLOW_THREADS
    return dropped_list(dropped);
}

/* cancel(job, index) -> True if the queued task was removed unrun. */
static PyObject *
engine_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t job, index;
    if (pp__u64_args(args, nargs, 2, "cancel(job, index)", "01", &job,
                     &index) < 0) {
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
    int64_t timeout_ns = -1;
    if (pp__timeout_arg(args, nargs, "join(timeout=None)", &timeout_ns) < 0) {
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

/* abandon() -> ([(job, index), ...], [worker, ...]): after terminate(),
 * stop waiting for the workers still alive (see pp__engine_abandon);
 * the tasks they were running, whose results the caller must fail now,
 * and their ids. */
static PyObject *
engine_abandon(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    pp_engine *engine = ENGINE(self);
    uint32_t n = pp__engine_nworkers(engine), count = 0;
    uint64_t *jobs = PyMem_Calloc(n, sizeof(uint64_t));
    uint64_t *indexes = PyMem_Calloc(n, sizeof(uint64_t));
    uint32_t *workers = PyMem_Calloc(n, sizeof(uint32_t));
    PyObject *tasks = NULL, *ids = NULL, *result = NULL;
    if (jobs == NULL || indexes == NULL || workers == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pp__engine_abandon(engine, jobs, indexes, workers, &count);
    Py_END_ALLOW_THREADS
    if (rc != PP_OK) {
        pp__raise(pp__state_from_type(Py_TYPE(self)), rc);
        goto done;
    }
    tasks = PyList_New(0);
    ids = PyList_New(0);
    if (tasks == NULL || ids == NULL) {
        goto done;
    }
    for (uint32_t i = 0; i < count; i++) {
        PyObject *id = PyLong_FromUnsignedLong(workers[i]);
        if (id == NULL || PyList_Append(ids, id) < 0) {
            Py_XDECREF(id);
            goto done;
        }
        Py_DECREF(id);
        if (jobs[i] == UINT64_MAX) {
            continue; /* between tasks: nothing to fail */
        }
        PyObject *pair = Py_BuildValue("(KK)", (unsigned long long)jobs[i],
                                       (unsigned long long)indexes[i]);
        if (pair == NULL || PyList_Append(tasks, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    }
    result = PyTuple_Pack(2, tasks, ids);
done:
    Py_XDECREF(tasks);
    Py_XDECREF(ids);
    PyMem_Free(jobs);
    PyMem_Free(indexes);
    PyMem_Free(workers);
    return result;
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

/* function_store: the engine's store of by-value functions
 * (pp_fn_store) as a dict of its counters.  Main GIL. */
static PyObject *
engine_get_function_store(PyObject *self, void *Py_UNUSED(closure))
{
    pp_fn_stats st;
    pp__engine_function_stats(ENGINE(self), &st);
    return Py_BuildValue("{snsnsnsnsKsKsK}", "entries",
                         (Py_ssize_t)st.entries, "bytes", (Py_ssize_t)st.bytes,
                         "idle_bytes", (Py_ssize_t)st.idle_bytes, "idle_limit",
                         (Py_ssize_t)PP_FN_IDLE_BYTES, "copies",
                         (unsigned long long)st.copies, "copied_bytes",
                         (unsigned long long)st.copied_bytes, "fetches",
                         (unsigned long long)st.fetches);
}

/* gate: the collector-first gate (engine.c) as a dict of its
 * counters.  Main GIL. */
static PyObject *
engine_get_gate(PyObject *self, void *Py_UNUSED(closure))
{
    pp_gate_stats st;
    pp__engine_gate_stats(ENGINE(self), &st);
    return Py_BuildValue(
        "{sIsIsKsKsKsKsKsKsKsKsK}", "run_limit", st.run_limit, "parked",
        st.parked, "parks", (unsigned long long)st.parks, "part_parks",
        (unsigned long long)st.part_parks, "stalls",
        (unsigned long long)st.stalls, "undecoded",
        (unsigned long long)st.undecoded, "queued",
        (unsigned long long)st.queued, "decode_ns",
        (unsigned long long)st.decode_ns, "make_ns",
        (unsigned long long)st.make_ns, "decode_cpu_ns",
        (unsigned long long)st.decode_cpu_ns, "untimed_run",
        (unsigned long long)st.untimed_run);
}

static PyMethodDef engine_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))engine_submit, METH_FASTCALL,
     "submit(job, index, kind, func_pickle, args_pickle): queue one task."},
    {"submit_map", (PyCFunction)(void (*)(void))pp__engine_type_submit_map,
     METH_FASTCALL,
     "submit_map(job, kind, func_pickle, items, chunksize, pickle_dumps) -> "
     "(failures, refused_from): queue a whole map as chunks of chunksize "
     "items."},
    {"collect", (PyCFunction)(void (*)(void))pp__engine_type_collect,
     METH_FASTCALL,
     "collect(timeout=None): wait for completions and take up to "
     "PP_COLLECT_BATCH ready ones as (job, index, kind, worker, payload) "
     "tuples; [] on timeout, None once every worker has exited.  Plain "
     "results of bind_futures() futures nobody waits on are set here "
     "instead, and left out of the list."},
    {"bind_futures",
     (PyCFunction)(void (*)(void))pp__engine_type_bind_futures,
     METH_VARARGS | METH_KEYWORDS,
     "bind_futures(*, owner) -> dict: once per Engine, turn on "
     "submit_future(); its futures call owner.cancel_future(future, job) "
     "and wait in the returned {job: Future} dict until finished."},
    {"new_job", engine_new_job, METH_NOARGS,
     "new_job(): a job id not used before on this engine."},
    {"submit_apply",
     (PyCFunction)(void (*)(void))pp__engine_type_submit_apply,
     METH_FASTCALL,
     "submit_apply(fn, args, kwargs, callback, error_callback): queue "
     "fn(*args, **kwargs) and return its ApplyResult, registered in the "
     "bound dict, or None if the Python path must do it."},
    {"submit_future",
     (PyCFunction)(void (*)(void))pp__engine_type_submit_future,
     METH_FASTCALL,
     "submit_future(fn, args, kwargs): queue fn(*args, **kwargs) and "
     "return its Future, or None if the Python path must do it."},
    {"close", engine_close, METH_NOARGS,
     "close(): accept no more tasks; queued ones still run."},
    {"terminate", engine_terminate, METH_NOARGS,
     "terminate(): drop queued tasks (returned as (job, index) pairs) and "
     "interrupt running ones."},
    {"discard_queued", (PyCFunction)(void (*)(void))engine_discard_queued,
     METH_FASTCALL,
     "discard_queued(after_start=False): drop queued tasks (returned as "
     "(job, index) pairs); running tasks and the workers carry on.  "
     "after_start: first let workers still starting take a task each."},
    {"cancel", (PyCFunction)(void (*)(void))engine_cancel, METH_FASTCALL,
     "cancel(job, index): remove a queued task; True if it will not run."},
    {"cancel_job", engine_cancel_job, METH_O,
     "cancel_job(job): remove every queued task of a job; returns their "
     "(job, index) pairs."},
    {"join", (PyCFunction)(void (*)(void))engine_join, METH_FASTCALL,
     "join(timeout=None): wait for all workers to exit; False on timeout."},
    {"abandon", engine_abandon, METH_NOARGS,
     "abandon() -> (tasks, workers): after terminate(), stop waiting for "
     "the workers still running (blocked in C); they end on their own "
     "when their call returns.  tasks: the (job, index) they ran."},
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
    {"function_store", engine_get_function_store, NULL,
     "the by-value function store: entries and bytes kept now (for queued "
     "or running tasks, plus idle ones up to idle_limit bytes); copies and "
     "copied_bytes stored so far; fetches by workers so far", NULL},
    {"parts", pp__engine_type_get_parts, NULL,
     "chunk parts collected so far (docs/design.md, \"A chunk in parts\")",
     NULL},
    {"gate", engine_get_gate, NULL,
     "the collector-first gate: run_limit (workers that may start a task "
     "while the collector is behind; the pool's size when the cores are "
     "not oversubscribed), parked now, parks so far (part_parks: those "
     "inside a map chunk, at a part) and stalls so far, "
     "undecoded (completions the collector holds, once the gate is "
     "armed), queued (those waiting "
     "for it), decode_ns (its average time per completion), "
     "make_ns and decode_cpu_ns (a large result or a map chunk's part: "
     "a worker's CPU time making it, the collector's decoding it; "
     "averages), untimed_run (completions since the last large one; "
     "from 64 on, the two are stale and nobody parks)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot engine_slots[] = {
    {Py_tp_new, engine_new},
    {Py_tp_dealloc, engine_dealloc},
    {Py_tp_traverse, engine_traverse},
    {Py_tp_clear, engine_clear},
    {Py_tp_methods, engine_methods},
    {Py_tp_getset, engine_getset},
    {Py_tp_doc, "Engine(design, nworkers, maxtasks, sys_path, payload, nice=0, "
                "cpus=0): a pool's native queues and workers; nice > 0: each "
                "worker thread lowers its scheduling priority by that much; "
                "cpus > 0: the cores the process may use, for the "
                "collector-first gate (0: the gate is off)."},
    {0, NULL},
};

static PyType_Spec engine_spec = {
    .name = "_poolparty.Engine",
    .basicsize = sizeof(pp_engine_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_GC,
    .slots = engine_slots,
};

int
pp__engine_type_add(PyObject *module, pp_module_state *st)
{
    return pp__add_type(module, &engine_spec, &st->engine_type);
}
