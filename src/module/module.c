/* _poolparty: module definition, per-module state, error translation.
 *
 * Multi-phase init with per-module state and heap types only, so the
 * module loads in every subinterpreter (each gets its own copy of the
 * state) and declares per-interpreter-GIL support. */
#include "module.h"

#include <math.h>
#include <stdarg.h>

pp_module_state *
pp__state_from_type(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &pp__module_def);
    return module ? PyModule_GetState(module) : NULL;
}

/* Needs: the module's GIL.  Always returns NULL. */
PyObject *
pp__raise(pp_module_state *st, int code)
{
    switch (code) {
    case PP_ENOMEM:
        return PyErr_NoMemory();
    case PP_ETIMEDOUT:
        PyErr_SetString(PyExc_TimeoutError, pp_strerror(code));
        return NULL;
    case PP_ECLOSED:
    case PP_ESTATE:
        PyErr_SetString(PyExc_ValueError,
                        "Pool not running (it was closed or terminated; "
                        "create a new pool)");
        return NULL;
    case PP_EINVAL:
        PyErr_SetString(PyExc_ValueError, pp_strerror(code));
        return NULL;
    default:
        PyErr_Format(st ? st->core_error : PyExc_RuntimeError, "%s (%d)",
                     pp_strerror(code), code);
        return NULL;
    }
}

int
pp__as_u64(PyObject *obj, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* See module.h. */
PyObject *
pp__import_attr(const char *module_name, const char *attr)
{
#if PY_VERSION_HEX >= 0x030E0000
    return PyImport_ImportModuleAttrString(module_name, attr);
#else
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(module, attr);
    Py_DECREF(module);
    return value;
#endif
}

static PyObject *
import_pickle_loads(PyObject *Py_UNUSED(module))
{
    return pp__import_attr("pickle", "loads");
}

/* See module.h. */
int
pp__need_pickle_loads(PyObject *module)
{
    pp_module_state *st = PyModule_GetState(module);
    PyObject *loads =
        pp__get_or_make(module, &st->pickle_loads, import_pickle_loads);
    Py_XDECREF(loads);
    return loads != NULL ? 0 : -1;
}

/* See module.h.  make() may run Python code, so the field is checked
 * again before storing: whoever stored first wins. */
PyObject *
pp__get_or_make(PyObject *op, PyObject **field, PyObject *(*make)(PyObject *))
{
    PyObject *value;
    PP_LOCK_OBJECT(op);
    value = Py_XNewRef(*field);
    PP_UNLOCK_OBJECT();
    if (value != NULL) {
        return value;
    }
    PyObject *made = make(op);
    if (made == NULL) {
        return NULL;
    }
    PP_LOCK_OBJECT(op);
    if (*field == NULL) {
        *field = Py_NewRef(made);
    }
    value = Py_NewRef(*field);
    PP_UNLOCK_OBJECT();
    Py_DECREF(made);
    return value;
}

int
pp__u64_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t n,
             const char *usage, const char *at, ...)
{
    if (nargs != n) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    int rc = 0;
    va_list out;
    va_start(out, at);
    for (; rc == 0 && *at != '\0'; at++) {
        rc = pp__as_u64(args[*at - '0'], va_arg(out, uint64_t *));
    }
    va_end(out);
    return rc;
}

int
pp__timeout_seconds(PyObject *obj, double *seconds)
{
    if (obj == NULL || obj == Py_None) {
        return 1;
    }
    *seconds = PyFloat_AsDouble(obj);
    return *seconds == -1.0 && PyErr_Occurred() ? -1 : 0;
}

int
pp__timeout_ns(PyObject *obj, int64_t *out)
{
    double seconds = -1; /* None: forever */
    if (pp__timeout_seconds(obj, &seconds) < 0) {
        return -1;
    }
    if (isnan(seconds)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    if (seconds < 0 || seconds > 9.0e9) {
        *out = -1; /* 9e9 s, ~285 years: the same as forever */
    }
    else {
        *out = (int64_t)(seconds * 1e9);
    }
    return 0;
}

int
pp__timeout_arg(PyObject *const *args, Py_ssize_t nargs, const char *usage,
                int64_t *out)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    return nargs == 1 ? pp__timeout_ns(args[0], out) : 0;
}

pp_msg *
pp__task_from_pickle(const void *func, size_t func_size, PyObject *pickled,
                     PyObject *buffers, pp_pins *pins)
{
    pp_msg *task = NULL;
    if (!PyList_Check(buffers)) {
        PyErr_SetString(PyExc_TypeError, "poolparty: buffers must be a list");
        return NULL;
    }
    if (PyList_GET_SIZE(buffers) > 0) {
        int rc = pp__codec_encode_pickle5_msg(pickled, buffers, func,
                                              func_size, pins, &task);
        if (rc > 0) {
            PyErr_SetString(PyExc_TypeError,
                            "poolparty: out-of-band buffers must be "
                            "contiguous PickleBuffers beside a bytes pickle");
        }
        return task;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(pickled, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    task = pp_msg_new_task(0, 0, 0, func, func_size, view.buf,
                           (size_t)view.len);
    PyBuffer_Release(&view);
    if (task == NULL) {
        PyErr_NoMemory();
    }
    return task;
}

/* See module.h. */
int
pp__refuse_header_only(const void *func, size_t size)
{
    size_t header = pp__fn_header(func, size, NULL);
    if (header == 0 || header < size) {
        return 0;
    }
    PyErr_SetString(PyExc_ValueError,
                    "poolparty: the task's function is only the header of "
                    "a function sent by value, whose bytes no worker could "
                    "find; pass the whole data _engine.function_pickle() "
                    "returned for it (header and pickle, as bytes)");
    return -1;
}

pp_msg *
pp__task_from_buffers(uint64_t job, uint64_t index, uint64_t kind,
                      PyObject *func, PyObject *args, int header_only,
                      pp_pins *pins)
{
    Py_buffer fb, ab;
    if (PyObject_GetBuffer(func, &fb, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pp__refuse_header_only(fb.buf, (size_t)fb.len) < 0) {
        PyBuffer_Release(&fb);
        return NULL;
    }
    size_t func_part = header_only ? pp__fn_task_part(fb.buf, (size_t)fb.len)
                                   : (size_t)fb.len;
    if (PyTuple_Check(args)) {
        /* (pickle, out-of-band buffers) */
        pp_msg *task = NULL;
        if (PyTuple_GET_SIZE(args) == 2) {
            task = pp__task_from_pickle(fb.buf, func_part,
                                        PyTuple_GET_ITEM(args, 0),
                                        PyTuple_GET_ITEM(args, 1), pins);
        }
        else {
            PyErr_SetString(PyExc_TypeError,
                            "poolparty: expected a (pickle, buffers) pair");
        }
        PyBuffer_Release(&fb);
        if (task != NULL) {
            task->job = job;
            task->index = index;
            task->kind = (uint32_t)kind;
        }
        return task;
    }
    if (PyObject_GetBuffer(args, &ab, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&fb);
        return NULL;
    }
    pp_msg *task = pp_msg_new_task(job, index, (uint32_t)kind, fb.buf,
                                   func_part, ab.buf, (size_t)ab.len);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&ab);
    if (task == NULL) {
        PyErr_NoMemory();
    }
    return task;
}

PyObject *
pp__completion_payload(const pp_msg *msg, unsigned *kind)
{
    if (msg->kind == PP_DONE_OK && pp__codec_is(msg->data, msg->size)) {
        /* Decoded straight from the message: no bytes copy of it, no
         * Python call.  If it fails -- whatever it raised, even
         * SystemExit from an unpickled __reduce__ -- the exception fails
         * just this task. */
        PyObject *value = pp__codec_decode_msg(msg, 0);
        *kind = PP_DONE_DECODED;
        if (value == NULL) {
            *kind = PP_DONE_UNDECODABLE;
            value = PyErr_GetRaisedException();
        }
        return value;
    }
    *kind = msg->kind;
    return PyBytes_FromStringAndSize((const char *)msg->data,
                                     (Py_ssize_t)msg->size);
}

PyObject *
pp__completion_tuple_of(const pp_msg *msg, unsigned kind, PyObject *payload)
{
    if (payload == NULL) {
        return NULL;
    }
    return Py_BuildValue("(KKIIN)", (unsigned long long)msg->job,
                         (unsigned long long)msg->index, kind,
                         (unsigned)msg->worker, payload);
}

PyObject *
pp__completion_tuple(const pp_msg *msg)
{
    unsigned kind;
    PyObject *payload = pp__completion_payload(msg, &kind);
    return pp__completion_tuple_of(msg, kind, payload);
}

/* main_import(name) -> bool: from inside a pool worker or a
 * poolparty.Interpreter call, have the main interpreter import `name`
 * first; False (nothing done) elsewhere.
 * Runs under the calling (sub)interpreter's GIL. */
static PyObject *
module_main_import(PyObject *module, PyObject *arg)
{
    Py_ssize_t size;
    const char *name = PyUnicode_AsUTF8AndSize(arg, &size);
    if (name == NULL) {
        return NULL;
    }
    int rc = pp__engine_request_main_import(name, (size_t)size);
    if (rc == PP_ENOTFOUND) {
        /* Not a pool worker: a poolparty.Interpreter call, which can
         * switch back to the main interpreter itself. */
        rc = pp__interp_import_in_main(name, (size_t)size);
    }
    if (rc == PP_ENOTFOUND) {
        Py_RETURN_FALSE;
    }
    if (rc != PP_OK) {
        return pp__raise(PyModule_GetState(module), rc);
    }
    Py_RETURN_TRUE;
}

/* pp_buf.grow for encode(): the buffer is the bytes object being made
 * (b->owner), so the encoding is not copied again once done, as
 * pickle.dumps does.  3.15 soft-deprecates growing a bytes object in
 * place (_PyBytes_Resize) for PyBytesWriter (PEP 782), which does the
 * same: there b->owner is the writer.
 * Needs: the GIL of the bytes' interpreter. */
static int
grow_bytes(pp_buf *b, size_t capacity)
{
    if (capacity > (size_t)PY_SSIZE_T_MAX) {
        return -1;
    }
    Py_ssize_t size = (Py_ssize_t)capacity;
#if PY_VERSION_HEX >= 0x030F0000
    PyBytesWriter *writer = b->owner;
    if (writer == NULL) {
        b->owner = writer = PyBytesWriter_Create(size);
    }
    else if (PyBytesWriter_Resize(writer, size) < 0) {
        writer = NULL; /* still b->owner, for encode() to discard */
    }
    void *data = writer ? PyBytesWriter_GetData(writer) : NULL;
#else
    PyObject *bytes = b->owner;
    if (bytes == NULL) {
        bytes = PyBytes_FromStringAndSize(NULL, size);
    }
    else if (_PyBytes_Resize(&bytes, size) < 0) {
        bytes = NULL; /* _PyBytes_Resize freed it */
    }
    b->owner = bytes;
    void *data = bytes ? PyBytes_AS_STRING(bytes) : NULL;
#endif
    if (data == NULL) {
        PyErr_Clear(); /* the encoder raises its own MemoryError */
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

/* encode(obj) -> bytes, or None when obj is not plain data (use pickle).
 * Runs under the calling interpreter's GIL. */
static PyObject *
module_encode(PyObject *Py_UNUSED(module), PyObject *obj)
{
    pp_buf buf = {.grow = grow_bytes};
    int rc = pp__codec_encode(obj, &buf);
#if PY_VERSION_HEX >= 0x030F0000
    if (rc == 0) {
        return PyBytesWriter_FinishWithSize(buf.owner, (Py_ssize_t)buf.size);
    }
    PyBytesWriter_Discard(buf.owner);
#else
    PyObject *bytes = buf.owner;
    if (rc == 0) {
        /* Shrunk to what was written; on failure it freed it. */
        return _PyBytes_Resize(&bytes, (Py_ssize_t)buf.size) < 0 ? NULL
                                                                 : bytes;
    }
    Py_XDECREF(bytes);
#endif
    return rc > 0 ? Py_NewRef(Py_None) : NULL;
}

/* decode(buffer) -> obj, for a payload made by encode(). */
static PyObject *
module_decode(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *obj = pp__codec_decode(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return obj;
}

/* abandoned_workers(timeout=0) -> int: wait up to timeout seconds
 * (None: for ever) for every worker that terminate() abandoned to end
 * its interpreter; how many are left.  Main interpreter's GIL, released
 * while waiting. */
static PyObject *
module_abandoned_workers(PyObject *Py_UNUSED(module), PyObject *const *args,
                         Py_ssize_t nargs)
{
    int64_t timeout_ns = 0;
    if (pp__timeout_arg(args, nargs, "abandoned_workers(timeout=0)",
                        &timeout_ns) < 0) {
        return NULL;
    }
    uint32_t left;
    Py_BEGIN_ALLOW_THREADS
    left = pp__abandoned_wait(timeout_ns);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(left);
}

/* buffer_stats() -> dict: the codec's large-buffer counts (see
 * pp__codec_stats), for tests and benchmarks.  Any interpreter. */
static PyObject *
module_buffer_stats(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    uint64_t pinned, live, oob;
    pp__codec_stats(&pinned, &live, &oob);
    return Py_BuildValue("{sKsKsK}", "pinned", (unsigned long long)pinned,
                         "pins_live", (unsigned long long)live,
                         "out_of_band", (unsigned long long)oob);
}

/* message_cache_stats() -> dict: the threads' message caches (see
 * msg.c), for tests.  Any interpreter. */
static PyObject *
module_message_cache_stats(PyObject *Py_UNUSED(module),
                           PyObject *Py_UNUSED(ignored))
{
    uint64_t blocks, caches;
    pp_msg_cache_stats(&blocks, &caches);
    return Py_BuildValue("{sKsKsi}", "blocks", (unsigned long long)blocks,
                         "caches", (unsigned long long)caches, "spare_max",
                         PP_MSG_CACHE_SPARE_MAX);
}

/* assume_cpus(n) -> int: the cores engines made from now on take the
 * process to have, for the collector-first gate, whatever their pool
 * asked for (0, the default: what it asked for); for tests and
 * benchmarks; returns the previous setting.  Any interpreter. */
static PyObject *
module_assume_cpus(PyObject *Py_UNUSED(module), PyObject *arg)
{
    unsigned long n = PyLong_AsUnsignedLong(arg);
    if (n == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "assume_cpus(n): n too large");
        return NULL;
    }
    return PyLong_FromUnsignedLong(pp__engine_assume_cpus((uint32_t)n));
}

/* arena_stats() -> dict: the worker threads' arena caches (see
 * arena.c), for tests and benchmarks.  Any interpreter. */
static PyObject *
module_arena_stats(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    pp_arena_stats a;
    pp__arena_stats(&a);
    return Py_BuildValue(
        "{sKsKsKsKsKsIsnsO}", "hits", (unsigned long long)a.hits, "kept",
        (unsigned long long)a.kept, "passed", (unsigned long long)a.passed,
        "returned", (unsigned long long)a.returned, "held",
        (unsigned long long)a.held, "limit", a.limit, "arena_bytes",
        (Py_ssize_t)a.arena_bytes, "installed",
        a.installed ? Py_True : Py_False);
}

/* arena_limit(n) -> int: the most arenas each pool worker keeps from now
 * on (0: none; at most the slots there are); returns the previous bound.
 * For tests and benchmarks.  Any interpreter. */
static PyObject *
module_arena_limit(PyObject *Py_UNUSED(module), PyObject *arg)
{
    unsigned long n = PyLong_AsUnsignedLong(arg);
    if (n == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n > PP_ARENA_CACHE_SLOTS) {
        PyErr_Format(PyExc_ValueError,
                     "arena_limit(n): n must be at most %d, got %lu",
                     PP_ARENA_CACHE_SLOTS, n);
        return NULL;
    }
    return PyLong_FromUnsignedLong(pp__arena_set_limit((unsigned)n));
}

static PyMethodDef module_methods[] = {
    {"message_cache_stats", module_message_cache_stats, METH_NOARGS,
     "message_cache_stats() -> {'blocks', 'caches', 'spare_max'}: the "
     "small-message blocks the threads' caches own (spare or in a "
     "message), the caches alive (one per thread that made a small "
     "message and has not exited, or whose blocks are still out), in "
     "this process, and the most free blocks one cache keeps."},
    {"assume_cpus", module_assume_cpus, METH_O,
     "assume_cpus(n) -> int: the cores pools made from now on take this "
     "process to have, for the collector-first gate, whatever they asked "
     "for (0, the default: what they asked for), for tests and "
     "benchmarks; the previous setting."},
    {"arena_stats", module_arena_stats, METH_NOARGS,
     "arena_stats() -> {'hits', 'kept', 'passed', 'returned', 'held', "
     "'limit', 'arena_bytes', 'installed'}: the pool workers' caches of "
     "obmalloc arenas in this process: arenas taken from a cache, kept in "
     "one, freed past the bound, given back (idle or exiting workers), "
     "held now; the bound per worker."},
    {"arena_limit", module_arena_limit, METH_O,
     "arena_limit(n) -> int: the most obmalloc arenas each pool worker "
     "keeps from now on (0: none), for tests and benchmarks; the previous "
     "bound."},
    {"buffer_stats", module_buffer_stats, METH_NOARGS,
     "buffer_stats() -> {'pinned', 'pins_live', 'out_of_band'}: large "
     "buffers that travelled by reference, those still held, and pickle "
     "protocol 5 buffers sent beside their pickle, in this process."},
    {"abandoned_workers",
     (PyCFunction)(void (*)(void))module_abandoned_workers, METH_FASTCALL,
     "abandoned_workers(timeout=0) -> int: wait up to timeout seconds for "
     "the workers terminate() abandoned (blocked in C) to end; how many "
     "are left."},
    {"encode", module_encode, METH_O,
     "encode(obj) -> bytes, or None if obj is not plain data (None, bool, "
     "int, float, str, bytes, tuple, list, dict): shared references stay "
     "shared."},
    {"decode", module_decode, METH_O,
     "decode(data) -> the object encode() encoded."},
    {"main_import", module_main_import, METH_O,
     "main_import(name): from a pool worker, have the main interpreter "
     "import module `name` first (works around a CPython 3.12 crash); "
     "returns False outside a worker."},
    {"function_ref", pp__module_function_ref, METH_O,
     "function_ref(fn) -> (data, flags) that remember_function() was "
     "given for fn, or None."},
    {"remember_function",
     (PyCFunction)(void (*)(void))pp__module_remember_function,
     METH_FASTCALL,
     "remember_function(fn, data, flags): keep fn's task reference (bytes "
     "and PP_TASK_* flags) for function_ref() and Engine.submit_future(); "
     "only for functions that pickle by reference."},
    {"future_type", (PyCFunction)(void (*)(void))pp__module_future_type,
     METH_FASTCALL,
     "future_type(concurrent.futures.Future, InvalidStateError): the "
     "Future subclass SubinterpreterPoolExecutor.submit() returns (made "
     "once per module)."},
    {"result_types", (PyCFunction)(void (*)(void))pp__module_result_types,
     METH_FASTCALL,
     "result_types(ApplyResult, MapResult, IMapIterator, "
     "IMapUnorderedIterator, TimeoutError, report): SubinterpreterPool's "
     "result classes, subclasses of multiprocessing.pool's (made once per "
     "module)."},
    {NULL, NULL, 0, NULL},
};

int
pp__add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);
    if (*slot == NULL) {
        return -1;
    }
    return PyModule_AddType(module, *slot);
}

/* ---- module lifecycle ---------------------------------------------- */

static int
module_exec(PyObject *module)
{
    pp_module_state *st = PyModule_GetState(module);
    /* The first exec is the main interpreter's import, before any pool
     * exists, so no worker thread is inside obmalloc's arena code yet
     * (arena.c says why a thread of another interpreter would be
     * harmless anyway); later execs find it done. */
    pp__arena_install();
    st->core_error = PyErr_NewExceptionWithDoc(
        "_poolparty.CoreError",
        "An error inside poolparty's native core (a subinterpreter or a "
        "thread could not be created, ...).",
        PyExc_RuntimeError, NULL);
    if (st->core_error == NULL ||
        PyModule_AddObjectRef(module, "CoreError", st->core_error) < 0) {
        return -1;
    }
    if (pp__engine_type_add(module, st) < 0 ||
        pp__interpreter_type_add(module, st) < 0 ||
        pp__sampler_type_add(module, st) < 0 ||
        pp__fork_guard_add(module) < 0) {
        return -1;
    }
#define ADD_INT(name)                                                       \
    if (PyModule_AddIntConstant(module, #name, name) < 0) {                 \
        return -1;                                                          \
    }
    ADD_INT(PP_TASK_CALL)
    ADD_INT(PP_TASK_MAP)
    ADD_INT(PP_TASK_STARMAP)
    ADD_INT(PP_TASK_REUSE_FUNC)
    ADD_INT(PP_TASK_FUNC_BY_NAME)
    ADD_INT(PP_SITE_TEMPLATE_MIN_WORKERS)
    ADD_INT(PP_PIN_MIN)
    ADD_INT(PP_COLLECT_BATCH)
    ADD_INT(PP_DONE_OK)
    ADD_INT(PP_DONE_DECODED)
    ADD_INT(PP_DONE_UNDECODABLE)
    ADD_INT(PP_DONE_UNPICKLABLE_PARTS)
    ADD_INT(PP_DONE_ERROR)
    ADD_INT(PP_DONE_UNPICKLABLE)
    ADD_INT(PP_DONE_INIT_FAILED)
    ADD_INT(PP_DONE_MAIN_IMPORT)
    ADD_INT(PP_DESIGN_QUEUE)
    ADD_INT(PP_DESIGN_CALL)
    ADD_INT(PP_ENGINE_RUNNING)
    ADD_INT(PP_ENGINE_CLOSED)
    ADD_INT(PP_ENGINE_TERMINATING)
    ADD_INT(PP_ENGINE_STOPPED)
#undef ADD_INT
    /* Whether this is a free-threaded build: what
     * sysconfig.get_config_var("Py_GIL_DISABLED") says, without the 5-9 ms
     * that sysconfig's import and first look-up cost a pool's start. */
#ifdef Py_GIL_DISABLED
    if (PyModule_AddIntConstant(module, "FREE_THREADED", 1) < 0) {
        return -1;
    }
#else
    if (PyModule_AddIntConstant(module, "FREE_THREADED", 0) < 0) {
        return -1;
    }
#endif
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    pp_module_state *st = PyModule_GetState(module);
    if (pp__future_support_traverse(&st->future, visit, arg) < 0 ||
        pp__result_support_traverse(&st->result, visit, arg) < 0) {
        return -1;
    }
    Py_VISIT(st->pickle_loads);
    Py_VISIT(st->func_refs);
    Py_VISIT(st->engine_type);
    Py_VISIT(st->interpreter_type);
    Py_VISIT(st->sampler_type);
    Py_VISIT(st->core_error);
    return 0;
}

static int
module_clear(PyObject *module)
{
    pp_module_state *st = PyModule_GetState(module);
    pp__future_support_clear(&st->future);
    pp__result_support_clear(&st->result);
    Py_CLEAR(st->pickle_loads);
    Py_CLEAR(st->func_refs);
    Py_CLEAR(st->engine_type);
    Py_CLEAR(st->interpreter_type);
    Py_CLEAR(st->sampler_type);
    Py_CLEAR(st->core_error);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#ifdef Py_mod_gil
    /* All shared state is behind the core's own mutexes. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

PyModuleDef pp__module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_poolparty",
    .m_doc = "poolparty's native core: queues, workers and subinterpreters.",
    .m_size = sizeof(pp_module_state),
    .m_slots = module_slots,
    .m_methods = module_methods,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__poolparty(void)
{
    return PyModuleDef_Init(&pp__module_def);
}
