/* _poolparty.Engine: the main interpreter's handle on a pp_engine.
 *
 * Every method runs in the interpreter that created the Engine (the
 * main one in practice) under its GIL, and releases that GIL around
 * anything that can block. */
#include "module.h"

typedef struct {
    PyObject_HEAD
    pp_engine *engine; /* owned reference; NULL only if __new__ failed */
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

/* collect(timeout=None) -> list of completions, [] on timeout, or None
 * once every worker has exited and all was collected. */
static PyObject *
engine_collect(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t timeout_ns;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "collect(timeout=None)");
        return NULL;
    }
    if (pp__timeout_ns(nargs ? args[0] : NULL, &timeout_ns) < 0) {
        return NULL;
    }
    pp_msg *first = NULL;
    size_t count = 0;
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
    PyObject *list = PyList_New((Py_ssize_t)count);
    pp_msg *msg = first;
    for (size_t i = 0; list != NULL && i < count; i++, msg = msg->next) {
        PyObject *item = pp__completion_tuple(msg);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
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
    {"collect", (PyCFunction)(void (*)(void))engine_collect, METH_FASTCALL,
     "collect(timeout=None): wait for completions and take all ready ones "
     "as (job, index, kind, worker, payload) tuples; [] on timeout, None "
     "once every worker has exited."},
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
