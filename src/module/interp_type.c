/* _poolparty.Interpreter: one own-GIL subinterpreter that threads of
 * the creating interpreter call into, one task at a time per thread.
 *
 * Methods run under the creating interpreter's GIL.  `lock` keeps
 * close() from ending the interpreter while a call is inside it; it is
 * only ever taken with that GIL released (lock order: this lock, then
 * a sub GIL), so a call blocked on the sub GIL cannot deadlock a
 * closer. */
#include "module.h"

typedef struct {
    PyObject_HEAD
    pp_interp *it;         /* lock: NULL once closed */
    pthread_mutex_t lock;  /* held for the whole of a call or a close */
    /* What the getters read, without the lock (which a call holds for
     * its whole length): `it` itself may be freed meanwhile by close(),
     * which runs with the GIL released.  id is set once, at creation. */
    long long id;
    atomic_int closed;
    pp_boot boot;          /* owned; kept for the interpreter's life */
} InterpreterObject;

#define SELF(op) ((InterpreterObject *)(op))

/* Interpreter(sys_path, payload) */
static PyObject *
interpreter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"sys_path", "payload", NULL};
    Py_buffer sys_path = {0}, payload = {0};
    PyObject *self = NULL;
    pp_msg *failure = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*", kwlist,
                                     &sys_path, &payload)) {
        return NULL;
    }
    pp_module_state *st = pp__state_from_type(type);
    self = type->tp_alloc(type, 0);
    if (self == NULL) {
        goto done;
    }
    pthread_mutex_init(&SELF(self)->lock, NULL);
    atomic_init(&SELF(self)->closed, 0);
    if (pp__boot_init(&SELF(self)->boot, sys_path.buf, (size_t)sys_path.len,
                      payload.buf, (size_t)payload.len) != PP_OK) {
        Py_CLEAR(self);
        PyErr_NoMemory();
        goto done;
    }
    pp_interp *it = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pp__interp_create(&SELF(self)->boot, 0, &it, &failure);
    if (rc == PP_OK) {
        pp__ts_detach(); /* created attached: detach */
    }
    Py_END_ALLOW_THREADS
    if (rc != PP_OK) {
        Py_CLEAR(self);
        if (failure != NULL) {
            /* The Python layer decodes the payload into the original
             * exception; pass it along as the CoreError's args. */
            PyObject *detail = PyBytes_FromStringAndSize(
                (const char *)failure->data, (Py_ssize_t)failure->size);
            if (detail != NULL) {
                PyErr_SetObject(st->core_error, detail);
                Py_DECREF(detail);
            }
        }
        else {
            pp__raise(st, rc);
        }
        goto done;
    }
    SELF(self)->it = it;
    SELF(self)->id = (long long)PyInterpreterState_GetID(it->interp);
done:
    pp_msg_free(failure);
    PyBuffer_Release(&sys_path);
    PyBuffer_Release(&payload);
    return self;
}

/* End the interpreter if still open.  0 or PP_ESTATE if busy (only
 * when `wait` is 0).  Needs: the creating interpreter's GIL. */
static int
close_interp(InterpreterObject *self, int wait)
{
    int rc = PP_OK;
    Py_BEGIN_ALLOW_THREADS
    if (wait) {
        pthread_mutex_lock(&self->lock);
    }
    else if (pthread_mutex_trylock(&self->lock) != 0) {
        rc = PP_ESTATE;
    }
    if (rc == PP_OK) {
        pp_interp *it = self->it;
        self->it = NULL;
        atomic_store(&self->closed, 1);
        if (it != NULL) {
            pp__interp_destroy(it);
        }
        pthread_mutex_unlock(&self->lock);
    }
    Py_END_ALLOW_THREADS
    return rc;
}

static void
interpreter_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* No call can be running: it would hold a reference to self. */
    close_interp(SELF(self), 1);
    pthread_mutex_destroy(&SELF(self)->lock);
    pp__boot_fini(&SELF(self)->boot);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* Take the lock with the GIL released.  0, or -1 with ValueError when
 * the interpreter is closed (lock then not held). */
static int
acquire_open(InterpreterObject *self)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    Py_END_ALLOW_THREADS
    if (self->it == NULL) {
        pthread_mutex_unlock(&self->lock);
        PyErr_SetString(PyExc_ValueError,
                        "the interpreter is closed; create a new one");
        return -1;
    }
    return 0;
}

/* call(kind, func_pickle, args_pickle) -> (done_kind, payload) */
static PyObject *
interpreter_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t kind;
    if (pp__u64_args(args, nargs, 3, "call(kind, func_pickle, args_pickle)",
                     "0", &kind) < 0) {
        return NULL;
    }
    pp_msg *task = pp__task_from_buffers(0, 0, kind, args[1], args[2], 0,
                                         NULL);
    if (task == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    if (acquire_open(SELF(self)) == 0) {
        pp_msg *done = pp__interp_call(SELF(self)->it, task);
        pthread_mutex_unlock(&SELF(self)->lock);
        if (done == NULL) {
            PyErr_NoMemory();
        }
        else {
            /* A codec result may refer to the interpreter's pinned
             * buffers, which only the message carries: decoded here. */
            unsigned kind;
            PyObject *payload = pp__completion_payload(done, &kind);
            result = payload ? Py_BuildValue("(IN)", kind, payload) : NULL;
            pp_msg_free(done);
        }
    }
    pp_msg_free(task);
    return result;
}

/* exec(source) -> None, or raises CoreError(encoded error payload). */
static PyObject *
interpreter_exec(PyObject *self, PyObject *arg)
{
    const char *source = PyUnicode_AsUTF8(arg);
    if (source == NULL) {
        return NULL;
    }
    /* Copy: the str may be freed by another thread while we are in the
     * subinterpreter with our GIL released. */
    PyObject *keep = Py_NewRef(arg);
    pp_msg *failure = NULL;
    PyObject *result = NULL;
    if (acquire_open(SELF(self)) == 0) {
        int rc = pp__interp_exec(SELF(self)->it, source, &failure);
        pthread_mutex_unlock(&SELF(self)->lock);
        if (rc == PP_OK) {
            result = Py_NewRef(Py_None);
        }
        else {
            pp_module_state *st = pp__state_from_type(Py_TYPE(self));
            PyObject *detail = failure ? PyBytes_FromStringAndSize(
                                             (const char *)failure->data,
                                             (Py_ssize_t)failure->size)
                                       : NULL;
            if (detail != NULL) {
                PyErr_SetObject(st->core_error, detail);
                Py_DECREF(detail);
            }
            else if (!PyErr_Occurred()) {
                pp__raise(st, rc);
            }
        }
    }
    pp_msg_free(failure);
    Py_DECREF(keep);
    return result;
}

static PyObject *
interpreter_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    close_interp(SELF(self), 1);
    Py_RETURN_NONE;
}

static PyObject *
interpreter_get_closed(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load(&SELF(self)->closed));
}

static PyObject *
interpreter_get_id(PyObject *self, void *Py_UNUSED(closure))
{
    if (atomic_load(&SELF(self)->closed)) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLongLong(SELF(self)->id);
}

static PyMethodDef interpreter_methods[] = {
    {"call", (PyCFunction)(void (*)(void))interpreter_call, METH_FASTCALL,
     "call(kind, func_pickle, args_pickle) -> (done_kind, payload): run "
     "one pickled task inside the interpreter."},
    {"exec", interpreter_exec, METH_O,
     "exec(source): run source in the interpreter's __main__."},
    {"close", interpreter_close, METH_NOARGS,
     "close(): end the interpreter (waits for a running call)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef interpreter_getset[] = {
    {"closed", interpreter_get_closed, NULL, "True once closed", NULL},
    {"id", interpreter_get_id, NULL, "CPython's interpreter id, or None",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot interpreter_slots[] = {
    {Py_tp_new, interpreter_new},
    {Py_tp_dealloc, interpreter_dealloc},
    {Py_tp_methods, interpreter_methods},
    {Py_tp_getset, interpreter_getset},
    {Py_tp_doc, "Interpreter(sys_path, payload): an own-GIL subinterpreter "
                "called into from this interpreter's threads."},
    {0, NULL},
};

static PyType_Spec interpreter_spec = {
    .name = "_poolparty.Interpreter",
    .basicsize = sizeof(InterpreterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = interpreter_slots,
};

int
pp__interpreter_type_add(PyObject *module, pp_module_state *st)
{
    return pp__add_type(module, &interpreter_spec, &st->interpreter_type);
}
