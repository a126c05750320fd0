/* Thread states: the one place that creates, attaches, detaches and
 * deletes them.
 *
 * THE RULES (CPython 3.12 and 3.13; every caller in the core keeps them):
 *
 * 1. A thread is attached to at most one thread state at a time, and
 *    holding a GIL means being attached to a thread state of that
 *    GIL's interpreter.  So moving from one interpreter to another is
 *    always detach, then attach (pp__ts_switch): never two at once.
 *    (Py_NewInterpreterFromConfig, called attached to the site template
 *    in interp.c, makes the same move itself: it detaches the
 *    template's thread state before it attaches the new one.)
 * 2. Attach and detach with PyEval_RestoreThread / PyEval_SaveThread,
 *    never PyThreadState_Swap: those two take and release the right
 *    GIL on both versions, whereas what a bare swap does with GILs
 *    changed between them.
 * 3. A thread state is used only on the OS thread that created it
 *    (CPython binds it to that thread when it is made).  A thread that
 *    needs an interpreter it has no thread state for makes a temporary
 *    one (pp__ts_new / pp__ts_attach_new) and deletes it before it
 *    leaves (pp__ts_delete_current).
 * 4. Deleting: the current one with pp__ts_delete_current (returns
 *    with none attached); another one of the same interpreter, not
 *    attached anywhere, with pp__ts_delete_other while attached to a
 *    thread state of that interpreter -- what Py_EndInterpreter, which
 *    insists on being its interpreter's last thread state, needs.
 * 5. The gilstate binding.  PyGILState_Ensure (used by C libraries that
 *    call back into Python from their own threads, and by CPython
 *    itself) finds a thread's thread state through one process-wide
 *    slot per OS thread.  CPython points that slot at the thread state
 *    most recently attached on the thread (tstate_activate in 3.13.5's
 *    Python/pystate.c), or made on it while the slot was empty, and
 *    empties it when that thread state is deleted.  Hence: a worker
 *    thread attached to its subinterpreter has it as its gilstate
 *    thread state, so callbacks made on that thread run in the worker's
 *    interpreter (a thread the task starts in C has an empty slot: its
 *    callbacks get the *main* interpreter); after a temporary thread
 *    state is deleted the slot is empty until the next attach, and a
 *    PyGILState_Ensure in between would make a main-interpreter one.
 *
 * Every function's contract says which thread state it needs ("no
 * tstate", "main GIL", "sub GIL": see pp_internal.h). */
#include "pp_internal.h"

/* Needs: nothing (any thread, attached or not).  3.13 made the call
 * public; 3.12 has only the private name (exported, same function). */
PyThreadState *
pp__ts_current(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#else
    return _PyThreadState_UncheckedGet();
#endif
}

/* Needs: no tstate; returns holding `ts`'s interpreter's GIL. */
void
pp__ts_attach(PyThreadState *ts)
{
    PyEval_RestoreThread(ts);
}

/* Needs: an attached tstate; returns it, with none attached. */
PyThreadState *
pp__ts_detach(void)
{
    return PyEval_SaveThread();
}

/* Needs: an attached tstate; returns the one it detached, with `to`
 * attached (rule 1). */
PyThreadState *
pp__ts_switch(PyThreadState *to)
{
    PyThreadState *from = PyEval_SaveThread();
    PyEval_RestoreThread(to);
    return from;
}

/* A new thread state of `interp` for this thread, not attached, or NULL
 * (out of memory).  Needs: no tstate. */
PyThreadState *
pp__ts_new(PyInterpreterState *interp)
{
    return PyThreadState_New(interp);
}

/* pp__ts_new, then attach it; NULL (nothing attached) if it could not
 * be made.  Needs: no tstate. */
PyThreadState *
pp__ts_attach_new(PyInterpreterState *interp)
{
    PyThreadState *ts = PyThreadState_New(interp);
    if (ts != NULL) {
        PyEval_RestoreThread(ts);
    }
    return ts;
}

/* Clear and delete the attached thread state, releasing its GIL.
 * Needs: an attached tstate; returns with none. */
void
pp__ts_delete_current(void)
{
    PyThreadState_Clear(PyThreadState_Get());
    PyThreadState_DeleteCurrent();
}

/* Clear and delete `ts`, which no thread is attached to.  Needs: a GIL
 * of `ts`'s interpreter through another thread state. */
void
pp__ts_delete_other(PyThreadState *ts)
{
    PyThreadState_Clear(ts);
    PyThreadState_Delete(ts);
}
