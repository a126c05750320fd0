/* _poolparty.Future: a concurrent.futures.Future whose hot paths are C.
 *
 * SubinterpreterPoolExecutor.submit() hands these out.  Most of what a
 * stdlib Future costs to create, finish and read is the
 * threading.Condition and the lists its __init__ makes, and they are
 * about six objects for the garbage collector to go over while it lives
 * (measured in docs/design.md, "Measured costs").  This
 * subclass keeps its state in C fields and makes the Condition and the
 * waiter and callback lists only when something needs them: a result()
 * or exception() that has to wait, add_done_callback(), wait() and
 * as_completed() (which use the private _condition, _state and
 * _waiters, provided here as properties).  A future nobody waits on
 * before it finishes is therefore one object, finished and read in C.
 *
 * It is a real subclass of concurrent.futures.Future (asyncio's
 * wrap_future checks that) made at run time by future_type(base), since
 * the base is a Python class that the module cannot import at load
 * time: the module also loads inside every worker.
 *
 * THE RULE that keeps the fast paths right: a Future whose condition is
 * NULL has no waiter and no callback, since both are registered under
 * the condition.  So finishing it with the condition NULL is only a
 * state change; with a condition, it goes through the stdlib's own
 * set_result/set_exception, which take the condition and tell every
 * waiter.  A thread that makes the condition then re-checks the state
 * under it, so a fast finish in between is always seen.  Fields are
 * read and written only in C stretches that call no Python code: under
 * the GIL that makes them atomic; on free-threaded builds
 * FUTURE_LOCK (a per-object critical section) does.
 *
 * Runs in the main interpreter, under its GIL. */
#include "module.h"

typedef enum {
    FS_PENDING,
    FS_RUNNING,
    FS_CANCELLED,
    FS_CANCELLED_AND_NOTIFIED,
    FS_FINISHED,
    FS_COUNT
} future_state;

/* concurrent.futures._base's state strings, in future_state's order. */
static const char *const STATE_NAMES[FS_COUNT] = {
    "PENDING", "RUNNING", "CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED",
};

typedef struct {
    PyObject_HEAD
    future_state state;
    uint64_t job;          /* the task's job id when owner is set */
    PyObject *result;      /* set when FINISHED without an exception */
    PyObject *exception;   /* set when FINISHED with one */
    PyObject *condition;   /* threading.Condition, made on first need */
    PyObject *waiters;     /* list, made on first need */
    PyObject *callbacks;   /* list, made on first need */
    PyObject *owner;       /* owner.cancel_future(future, job) takes a
                              queued task back; NULL for a plain future */
} FutureObject;

#define FUT(op) ((FutureObject *)(op))

#define FUTURE_LOCK(op) PP_LOCK_OBJECT(op)
#define FUTURE_UNLOCK() PP_UNLOCK_OBJECT()

static pp_future_support *
support_of(PyObject *op)
{
    pp_module_state *st = pp__state_from_type(Py_TYPE(op));
    return st ? &st->future : NULL;
}

static int
is_done(future_state state)
{
    return state == FS_CANCELLED || state == FS_CANCELLED_AND_NOTIFIED ||
           state == FS_FINISHED;
}

/* ---- creation ------------------------------------------------------- */

/* A new PENDING future of `support`'s type, owned by `owner` (may be
 * NULL).  New reference or NULL with an exception. */
PyObject *
pp__future_new(pp_future_support *support, PyObject *owner, uint64_t job)
{
    PyTypeObject *type = support->type;
    /* object.__new__, not tp_alloc: it also sets up the instance dict
     * that the base class's instances have. */
    PyObject *op = PyBaseObject_Type.tp_new(type, support->no_args, NULL);
    if (op == NULL) {
        return NULL;
    }
    FUT(op)->owner = Py_XNewRef(owner);
    FUT(op)->job = job;
    return op;
}

/* Future(): a plain PENDING future, as concurrent.futures.Future() is. */
static int
future_init(PyObject *Py_UNUSED(op), PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Future() takes no arguments");
        return -1;
    }
    return 0;
}

/* ---- finishing ------------------------------------------------------ */

/* Finish with `value` as result (is_exception 0) or exception if that
 * runs no Python code: nobody has made the condition, so nobody waits
 * and no callback is registered.  One locked step.  1 if finished; 0 if
 * not (nothing changed, no exception), with *seen the state found. */
static int
finish_fast(PyObject *op, PyObject *value, int is_exception,
            future_state *seen)
{
    FutureObject *self = FUT(op);
    int finished = 0;
    FUTURE_LOCK(op);
    *seen = self->state;
    if (self->condition == NULL && !is_done(*seen)) {
        if (is_exception) {
            self->exception = Py_NewRef(value);
        }
        else {
            self->result = Py_NewRef(value);
        }
        self->state = FS_FINISHED;
        finished = 1;
    }
    FUTURE_UNLOCK();
    return finished;
}

/* set_result / set_exception.  0, or -1 with an exception:
 * InvalidStateError when already done, or whatever a waiter or callback
 * raised through the stdlib path. */
static int
finish(PyObject *op, PyObject *value, int is_exception)
{
    future_state seen;
    if (finish_fast(op, value, is_exception, &seen)) {
        return 0;
    }
    pp_future_support *support = support_of(op);
    if (support == NULL) {
        return -1;
    }
    if (is_done(seen)) {
        PyErr_Format(support->invalid_state_error, "%s: %R",
                     STATE_NAMES[seen], op);
        return -1;
    }
    /* Someone may wait: the stdlib's way, under the condition. */
    PyObject *res = PyObject_CallFunctionObjArgs(
        is_exception ? support->base_set_exception : support->base_set_result,
        op, value, NULL);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* 1 if the future can be finished without running any Python code: it
 * is PENDING or RUNNING and nobody has made its condition. */
int
pp__future_finishes_fast(PyObject *op)
{
    int fast;
    FUTURE_LOCK(op);
    fast = FUT(op)->condition == NULL && !is_done(FUT(op)->state);
    FUTURE_UNLOCK();
    return fast;
}

/* See module.h. */
int
pp__future_try_finish_fast(PyObject *op, PyObject *value)
{
    future_state seen;
    return finish_fast(op, value, 0, &seen);
}

static PyObject *
future_set_result(PyObject *op, PyObject *value)
{
    if (finish(op, value, 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
future_set_exception(PyObject *op, PyObject *value)
{
    if (finish(op, value, 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- reading -------------------------------------------------------- */

/* result(timeout=None) / exception(timeout=None): when finished, read
 * here; otherwise (to wait, or to raise CancelledError) the stdlib's
 * method. */
static PyObject *
read_or_wait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames, int want_exception)
{
    FutureObject *self = FUT(op);
    PyObject *result = NULL, *exception = NULL;
    int finished = 0;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    /* The stdlib's method checks the arguments: only (), (timeout) and
     * (timeout=...) are read here, where a finished future ignores the
     * timeout as the stdlib does. */
    int plain_call = nargs + nkw == 0 || (nargs == 1 && nkw == 0) ||
                     (nargs == 0 && nkw == 1 &&
                      PyUnicode_CompareWithASCIIString(
                          PyTuple_GET_ITEM(kwnames, 0), "timeout") == 0);
    FUTURE_LOCK(op);
    /* And only when its exception, if any, is an instance: `raise
     * self._exception` makes an instance of a class and refuses anything
     * else, which the stdlib's method then does. */
    if (self->state == FS_FINISHED && plain_call &&
        (self->exception == NULL ||
         PyExceptionInstance_Check(self->exception))) {
        finished = 1;
        result = Py_XNewRef(self->result);
        exception = Py_XNewRef(self->exception);
    }
    FUTURE_UNLOCK();
    if (!finished) {
        pp_future_support *support = support_of(op);
        if (support == NULL) {
            return NULL;
        }
        PyObject *method = want_exception ? support->base_exception
                                          : support->base_result;
        /* method(self, *args, **kwargs) */
        PyObject *small[4];
        if (nargs + nkw > 3) {
            PyErr_SetString(PyExc_TypeError, "takes at most one argument "
                                             "(timeout)");
            return NULL;
        }
        small[0] = op;
        for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
            small[i + 1] = args[i];
        }
        return PyObject_Vectorcall(method, small, (size_t)(nargs + 1),
                                   kwnames);
    }
    if (want_exception) {
        Py_XDECREF(result);
        return exception ? exception : Py_NewRef(Py_None);
    }
    if (exception != NULL) {
        Py_XDECREF(result);
        /* As `raise self._exception`: the same object, its traceback
         * growing from here. */
        PyErr_SetObject((PyObject *)Py_TYPE(exception), exception);
        Py_DECREF(exception);
        return NULL;
    }
    return result ? result : Py_NewRef(Py_None);
}

static PyObject *
future_result(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    return read_or_wait(op, args, nargs, kwnames, 0);
}

static PyObject *
future_exception(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    return read_or_wait(op, args, nargs, kwnames, 1);
}

PP_LOCKED_READER(future_state, state_of, FUT(op)->state)

static PyObject *
future_done(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(is_done(state_of(op)));
}

static PyObject *
future_cancelled(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    future_state state = state_of(op);
    return PyBool_FromLong(state == FS_CANCELLED ||
                           state == FS_CANCELLED_AND_NOTIFIED);
}

static PyObject *
future_running(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(state_of(op) == FS_RUNNING);
}

/* cancel(): a queued task is taken back by its owner (the executor),
 * which then marks the future cancelled; otherwise the stdlib's
 * cancel(), which refuses once the task runs or has finished. */
static PyObject *
future_cancel(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FutureObject *self = FUT(op);
    PyObject *owner = NULL;
    uint64_t job = 0;
    FUTURE_LOCK(op);
    if (self->state == FS_PENDING && self->owner != NULL) {
        owner = Py_NewRef(self->owner);
        job = self->job;
    }
    FUTURE_UNLOCK();
    if (owner != NULL) {
        PyObject *res = PyObject_CallMethod(owner, "cancel_future", "OK", op,
                                            (unsigned long long)job);
        Py_DECREF(owner);
        return res;
    }
    pp_future_support *support = support_of(op);
    if (support == NULL) {
        return NULL;
    }
    return PyObject_CallOneArg(support->base_cancel, op);
}

/* _pp_bind(owner, job): who can take this future's task back. */
static PyObject *
future_bind(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t job;
    if (nargs != 2 || pp__as_u64(args[1], &job) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "_pp_bind(owner, job)");
        }
        return NULL;
    }
    PyObject *old;
    FUTURE_LOCK(op);
    old = FUT(op)->owner;
    FUT(op)->owner = Py_NewRef(args[0]);
    FUT(op)->job = job;
    FUTURE_UNLOCK();
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

/* ---- the private attributes the stdlib's functions use --------------- */

static PyObject *
get_state(PyObject *op, void *Py_UNUSED(closure))
{
    pp_future_support *support = support_of(op);
    if (support == NULL) {
        return NULL;
    }
    return Py_NewRef(support->state_names[state_of(op)]);
}

static int
set_state(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || !PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "_state must be a state name");
        return -1;
    }
    for (int s = 0; s < FS_COUNT; s++) {
        if (PyUnicode_CompareWithASCIIString(value, STATE_NAMES[s]) == 0) {
            FUTURE_LOCK(op);
            FUT(op)->state = (future_state)s;
            FUTURE_UNLOCK();
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown future state %R", value);
    return -1;
}

/* A field that reads as None when unset. */
static PyObject *
get_field(PyObject *op, PyObject **field)
{
    PyObject *value;
    FUTURE_LOCK(op);
    value = Py_XNewRef(*field);
    FUTURE_UNLOCK();
    return value ? value : Py_NewRef(Py_None);
}

static int
set_field(PyObject *op, PyObject **field, PyObject *value)
{
    PyObject *old;
    if (value == Py_None) {
        value = NULL;
    }
    FUTURE_LOCK(op);
    old = *field;
    *field = Py_XNewRef(value);
    FUTURE_UNLOCK();
    Py_XDECREF(old); /* after: it may run any code */
    return 0;
}

static PyObject *
get_result(PyObject *op, void *Py_UNUSED(closure))
{
    return get_field(op, &FUT(op)->result);
}

static int
set_result_attr(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_field(op, &FUT(op)->result, value);
}

static PyObject *
get_exception(PyObject *op, void *Py_UNUSED(closure))
{
    return get_field(op, &FUT(op)->exception);
}

static int
set_exception_attr(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_field(op, &FUT(op)->exception, value);
}

static PyObject *
make_list(PyObject *Py_UNUSED(op))
{
    return PyList_New(0);
}

static PyObject *
make_condition(PyObject *op)
{
    pp_future_support *support = support_of(op);
    if (support == NULL) {
        return NULL;
    }
    return PyObject_CallNoArgs(support->condition_class);
}

static PyObject *
get_condition(PyObject *op, void *Py_UNUSED(closure))
{
    return pp__get_or_make(op, &FUT(op)->condition, make_condition);
}

static PyObject *
get_waiters(PyObject *op, void *Py_UNUSED(closure))
{
    return pp__get_or_make(op, &FUT(op)->waiters, make_list);
}

static PyObject *
get_callbacks(PyObject *op, void *Py_UNUSED(closure))
{
    return pp__get_or_make(op, &FUT(op)->callbacks, make_list);
}

/* Setting these replaces them (concurrent.futures.Future.__init__ run on
 * one of ours, say). */
static int
set_condition(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_field(op, &FUT(op)->condition, value);
}

static int
set_waiters(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_field(op, &FUT(op)->waiters, value);
}

static int
set_callbacks(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_field(op, &FUT(op)->callbacks, value);
}

/* ---- GC ------------------------------------------------------------- */

#define FUTURE_REFS(X)                                                     \
    X(result) X(exception) X(condition) X(waiters) X(callbacks) X(owner)
#define NOTHING_ELSE(op) (void)(op)
PP_GC_FUNCTIONS(future, FutureObject, FUTURE_REFS, NOTHING_ELSE)

/* ---- the type ------------------------------------------------------- */

static PyMethodDef future_methods[] = {
    {"result", (PyCFunction)(void (*)(void))future_result,
     METH_FASTCALL | METH_KEYWORDS,
     "result(timeout=None): the call's return value; waits up to timeout "
     "seconds (TimeoutError), raises CancelledError or the call's "
     "exception."},
    {"exception", (PyCFunction)(void (*)(void))future_exception,
     METH_FASTCALL | METH_KEYWORDS,
     "exception(timeout=None): the exception the call raised, or None."},
    {"done", future_done, METH_NOARGS,
     "done(): True if the call finished or was cancelled."},
    {"cancelled", future_cancelled, METH_NOARGS,
     "cancelled(): True if the call was cancelled."},
    {"running", future_running, METH_NOARGS,
     "running(): always False for poolparty's tasks: workers do not report "
     "when they start one (that would cost every task)."},
    {"cancel", future_cancel, METH_NOARGS,
     "cancel(): take the task back if no worker has started it; True if "
     "it will not run."},
    {"set_result", future_set_result, METH_O,
     "set_result(result): finish with a result (for executors and tests)."},
    {"set_exception", future_set_exception, METH_O,
     "set_exception(exception): finish with an exception."},
    {"_pp_bind", (PyCFunction)(void (*)(void))future_bind, METH_FASTCALL,
     "_pp_bind(owner, job): set who takes the queued task back on "
     "cancel()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef future_getset[] = {
    {"_state", get_state, set_state, NULL, NULL},
    {"_result", get_result, set_result_attr, NULL, NULL},
    {"_exception", get_exception, set_exception_attr, NULL, NULL},
    {"_condition", get_condition, set_condition, NULL, NULL},
    {"_waiters", get_waiters, set_waiters, NULL, NULL},
    {"_done_callbacks", get_callbacks, set_callbacks, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot future_slots[] = {
    {Py_tp_doc, "A concurrent.futures.Future for one task of a "
                "SubinterpreterPoolExecutor."},
    {Py_tp_init, future_init},
    PP_GC_SLOTS(future),
    {Py_tp_methods, future_methods},
    {Py_tp_getset, future_getset},
    {0, NULL},
};

static PyType_Spec future_spec = {
    .name = "poolparty.Future",
    .basicsize = sizeof(FutureObject),
    /* Not immutable: its base, a Python class, is not (3.14 refuses
     * that mix). */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = future_slots,
};

/* future_type(base, invalid_state_error) -> the Future type, made once
 * per module from concurrent.futures.Future and InvalidStateError.  All
 * or nothing: the support fields are set only once everything was
 * found. */
PyObject *
pp__module_future_type(PyObject *module, PyObject *const *args,
                       Py_ssize_t nargs)
{
    pp_module_state *st = PyModule_GetState(module);
    pp_future_support *support = &st->future;
    if (support->type != NULL) {
        return Py_NewRef(support->type);
    }
    if (nargs != 2 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1],
                          (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError,
                        "future_type(concurrent.futures.Future, "
                        "concurrent.futures.InvalidStateError)");
        return NULL;
    }
    PyObject *base = args[0];
    pp_future_support made = {0};
    static const char *const methods[] = {"result", "exception", "set_result",
                                          "set_exception", "cancel"};
    PyObject **slots[] = {&made.base_result, &made.base_exception,
                          &made.base_set_result, &made.base_set_exception,
                          &made.base_cancel};
    for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
        *slots[m] = PyObject_GetAttrString(base, methods[m]);
        if (*slots[m] == NULL) {
            goto error;
        }
    }
    for (int s = 0; s < FS_COUNT; s++) {
        made.state_names[s] = PyUnicode_InternFromString(STATE_NAMES[s]);
        if (made.state_names[s] == NULL) {
            goto error;
        }
    }
    /* concurrent.futures imported threading already: fetched now, so
     * that no thread races to fetch it later. */
    made.condition_class = pp__import_attr("threading", "Condition");
    made.no_args = PyTuple_New(0);
    if (made.condition_class == NULL || made.no_args == NULL ||
        pp__need_pickle_loads(module) < 0) {
        goto error;
    }
    made.invalid_state_error = Py_NewRef(args[1]);
    made.type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &future_spec,
                                                         base);
    if (made.type == NULL) {
        goto error;
    }
    if (support->type != NULL) {
        /* Another thread made it meanwhile (free-threaded builds). */
        pp__future_support_clear(&made);
        return Py_NewRef(support->type);
    }
    *support = made;
    return Py_NewRef(support->type);

error:
    pp__future_support_clear(&made);
    return NULL;
}

#define SUPPORT_REFS(X)                                                    \
    X(type) X(no_args) X(base_result) X(base_exception) X(base_set_result) \
        X(base_set_exception) X(base_cancel) X(invalid_state_error)        \
            X(condition_class)

int
pp__future_support_traverse(pp_future_support *self, visitproc visit,
                            void *arg)
{
    SUPPORT_REFS(PP_VISIT_REF)
    for (int s = 0; s < FS_COUNT; s++) {
        Py_VISIT(self->state_names[s]);
    }
    return 0;
}

void
pp__future_support_clear(pp_future_support *self)
{
    SUPPORT_REFS(PP_CLEAR_REF)
    for (int s = 0; s < FS_COUNT; s++) {
        Py_CLEAR(self->state_names[s]);
    }
}
