/* The fork guard: a child of os.fork() made while subinterpreters are
 * alive exits at once, with a message, instead of crashing or hanging.
 *
 * CPython 3.12-3.15 delete every other interpreter in
 * PyOS_AfterFork_Child without a current thread state
 * (python/cpython#101437, #139759): measured here, 3.13 aborts the
 * child ("Fatal Python error: PyThreadState_Get"), 3.12 deadlocks it
 * (most runs) or segfaults it.  A pthread_atfork child handler runs
 * inside fork() itself, before that, and is the last code of ours the
 * child can run: it writes one line to stderr and calls _exit().
 *
 * Only forks that will run PyOS_AfterFork_Child are stopped: os.fork()
 * and subprocess with a preexec_fn, the two that call Python's
 * "before" fork hooks, where poolparty's hook arms the guard.
 * subprocess and multiprocessing's spawn/forkserver launchers fork (or
 * vfork) without those hooks and exec at once, with no Python in the
 * child: they are left alone.  The armed thread is recorded because
 * another thread may fork through subprocess meanwhile, and the child
 * keeps only the thread that forked.
 *
 * Process-wide state below, no PyObject: set under the main GIL by the
 * hooks, read by the child's single thread. */
#include "module.h"

#include <unistd.h>

/* EX_SOFTWARE (sysexits.h): an internal error, not the program's. */
#define FORK_CHILD_EXIT 70

static const char CHILD_MESSAGE[] =
    "poolparty: this process was forked (os.fork) while subinterpreters "
    "were alive; CPython crashes or hangs such a child before it runs any "
    "Python code (python/cpython#101437), so it exits now with status " Py_STRINGIFY(FORK_CHILD_EXIT) ". "
    "Close and join pools before forking, or start processes with "
    "multiprocessing's 'forkserver' or 'spawn' start method.\n";

static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_failed;          /* set once, by register_handler */
static atomic_int armed;            /* a Python fork is under way */
static pthread_t armed_thread;      /* which thread forks; valid if armed */

/* Needs: nothing (only the forking thread exists); async-signal-safe
 * calls only.  Returns in the child only when no other interpreter
 * exists or the fork was not armed. */
static void
child_after_fork(void)
{
    int was_armed = atomic_exchange(&armed, 0);
    if (!was_armed || !pthread_equal(armed_thread, pthread_self())) {
        return;
    }
    /* Plain reads of the runtime's interpreter list: the threads that
     * could change it are gone. */
    PyInterpreterState *main_interp = PyInterpreterState_Main();
    for (PyInterpreterState *it = PyInterpreterState_Head(); it != NULL;
         it = PyInterpreterState_Next(it)) {
        if (it != main_interp) {
            ssize_t ignored =
                write(STDERR_FILENO, CHILD_MESSAGE, sizeof CHILD_MESSAGE - 1);
            (void)ignored;
            _exit(FORK_CHILD_EXIT);
        }
    }
}

/* Needs: nothing.  Run once per process by pthread_once. */
static void
register_handler(void)
{
    handler_failed = pthread_atfork(NULL, NULL, child_after_fork) != 0;
}

/* _poolparty.fork_guard_arm(): called by poolparty's os.register_at_fork
 * "before" hook.  Needs: the main GIL.  Returns None, or raises
 * OSError if the handler could not be registered (the fork goes on
 * unguarded; the hook reports it). */
static PyObject *
fork_guard_arm(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    pthread_once(&handler_once, register_handler);
    if (handler_failed) {
        PyErr_SetString(PyExc_OSError,
                        "poolparty: pthread_atfork failed; the fork guard "
                        "is off");
        return NULL;
    }
    armed_thread = pthread_self();
    atomic_store(&armed, 1);
    Py_RETURN_NONE;
}

/* _poolparty.fork_guard_disarm(): the "after_in_parent" hook.  Needs:
 * the main GIL.  Returns None. */
static PyObject *
fork_guard_disarm(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    atomic_store(&armed, 0);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fork_guard_arm", fork_guard_arm, METH_NOARGS,
     "fork_guard_arm(): the os.fork() under way exits its child at once "
     "(status " Py_STRINGIFY(FORK_CHILD_EXIT) ", a message on stderr) if subinterpreters are alive."},
    {"fork_guard_disarm", fork_guard_disarm, METH_NOARGS,
     "fork_guard_disarm(): the fork is over (parent side)."},
    {NULL, NULL, 0, NULL},
};

int
pp__fork_guard_add(PyObject *module)
{
    if (PyModule_AddFunctions(module, methods) < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "FORK_CHILD_EXIT",
                                   FORK_CHILD_EXIT);
}
