/* A test-only extension: C code that calls back into Python through
 * PyGILState_Ensure, as ctypes and cffi callbacks, Cython's `with gil`
 * and pybind11's gil_scoped_acquire do.  Built by
 * tests/python/test_gilstate_callbacks.py into a temporary directory
 * (CPython 3.12 refuses _ctypes in isolated subinterpreters, so ctypes
 * cannot show this there).  Multi-phase init with per-interpreter GIL
 * support, so that it loads inside poolparty's workers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

/* The calling thread's interpreter id as seen through PyGILState: the
 * interpreter of the thread state PyGILState_Ensure attaches. */
static int64_t
ensured_interp_id(int *had_gil)
{
    PyGILState_STATE st = PyGILState_Ensure();
    *had_gil = st == PyGILState_LOCKED;
    int64_t id = PyInterpreterState_GetID(PyInterpreterState_Get());
    PyGILState_Release(st);
    return id;
}

/* call(func) -> (own id, id under PyGILState_Ensure with the GIL
 * released first, id under PyGILState_Ensure with the GIL held,
 * func() or None).  func is called, under PyGILState_Ensure from code
 * that released the GIL (ctypes' and Cython's pattern), only when that
 * thread state is this interpreter's: calling it in another interpreter
 * would use this interpreter's objects under the wrong GIL. */
static PyObject *
call(PyObject *module, PyObject *func)
{
    (void)module;
    int64_t own = PyInterpreterState_GetID(PyInterpreterState_Get());
    int had_gil = 0;
    int64_t held = ensured_interp_id(&had_gil);
    int64_t released;
    PyObject *result = NULL;
    int called = 0;
    Py_BEGIN_ALLOW_THREADS
    PyGILState_STATE st = PyGILState_Ensure();
    released = PyInterpreterState_GetID(PyInterpreterState_Get());
    if (released == own) {
        result = PyObject_CallNoArgs(func);
        called = 1;
    }
    PyGILState_Release(st);
    Py_END_ALLOW_THREADS
    if (called && result == NULL) {
        return NULL;
    }
    if (!called) {
        result = Py_NewRef(Py_None);
    }
    return Py_BuildValue("LLLN", (long long)own, (long long)released,
                         (long long)held, result);
}

struct thread_box {
    int64_t id;
};

static void *
thread_main(void *arg)
{
    struct thread_box *box = arg;
    int had_gil;
    box->id = ensured_interp_id(&had_gil);
    return NULL;
}

/* from_c_thread() -> the interpreter id a new C thread gets from
 * PyGILState_Ensure (CPython gives such threads the main interpreter). */
static PyObject *
from_c_thread(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    struct thread_box box = {-1};
    pthread_t thread;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pthread_create(&thread, NULL, thread_main, &box);
    if (rc == 0) {
        pthread_join(thread, NULL);
    }
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_create failed");
        return NULL;
    }
    return PyLong_FromLongLong((long long)box.id);
}

static PyMethodDef methods[] = {
    {"call", call, METH_O, NULL},
    {"from_c_thread", from_c_thread, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#ifdef Py_GIL_DISABLED
    /* No C state to guard: loading it must not turn the GIL back on for
     * the rest of a free-threaded test run (CPython warns when it does). */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ppgilstate",
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_ppgilstate(void)
{
    return PyModuleDef_Init(&def);
}
