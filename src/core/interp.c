/* Subinterpreter lifecycle and the task runner.
 *
 * Every function states which GIL it needs (see pp_internal.h for the
 * vocabulary).  Thread states are made, attached, detached and deleted
 * only through tstate.c, whose rules hold here. */
#include "pp_internal.h"

#include <pthread.h>
#include <string.h>

static const char NOMEM_TEXT[] = "poolparty: out of memory in a worker";

/* ---- the process-wide interpreter lifecycle lock ----------------- */

/* CPython 3.12 and 3.13 write runtime-wide state while an interpreter
 * is created or ended -- the static builtin types' per-interpreter
 * slots and counts, type flags, version tags (python/cpython#127108,
 * #129824, #131485) -- without a lock of their own.  Two threads doing
 * it at once intermittently fail creation with "Failed to import
 * encodings module" (seen here on 3.13.0 while one worker of a
 * maxtasksperchild pool was replaced as another ended).  So every
 * Py_NewInterpreterFromConfig and Py_EndInterpreter in the process that
 * goes through poolparty takes this lock.  It is a leaf lock: its holder
 * never waits for another lock or for a GIL other than the ones of the
 * interpreter it creates or ends and of the site template it creates
 * from (below), which runs no code. */
static pthread_mutex_t lifecycle_lock = PTHREAD_MUTEX_INITIALIZER;

/* Creation failures that survive the lock (a race with code running in
 * another interpreter) are transient: try a few times before giving
 * up.  A persistent cause fails every attempt the same way. */
#define CREATE_ATTEMPTS 3

/* ---- the site template ------------------------------------------- */

/* Py_NewInterpreterFromConfig copies the config of the interpreter whose
 * thread state is current (the main interpreter's when there is none)
 * and, when that config says site_import, imports `site` while it
 * creates.  That is about a third of a creation (measured in
 * docs/design.md, "Measured costs"), all of it under lifecycle_lock, so
 * a pool of 16 pays it 16 times one after the other.
 *
 * A big pool instead first creates one interpreter the plain way, the
 * template, clears site_import in the template's own config, and
 * creates its workers while attached to the template, so that they
 * copy that config.  Each worker then runs site.main() itself in
 * prepare(), after the lock is released and alongside the others: the
 * same .pth files, sitecustomize and builtins as before, only off the
 * serial path.  The template costs one more creation and end, so small
 * pools do without (PP_SITE_TEMPLATE_MIN_WORKERS).
 *
 * The one field is written through _Py_GetConfig(), the current
 * interpreter's config (exported by 3.12 and 3.13, declared only in
 * 3.13's internal headers): no public API sets a subinterpreter's
 * site_import, and _PyInterpreterState_SetConfig would rewrite
 * process-wide state (the raw allocator, C stdio buffering, argv)
 * while other threads run.  The template is ours alone and runs no
 * code, so nothing reads its config while we write it.  On CPython
 * versions not checked here pools are made the plain way. */
#if PY_VERSION_HEX < 0x030E0000
#define HAVE_SITE_TEMPLATE 1
#if PY_VERSION_HEX >= 0x030D0000
PyAPI_FUNC(const PyConfig *) _Py_GetConfig(void);
#endif
#endif

typedef enum {
    TEMPLATE_UNMADE, /* the first creation that uses it makes it */
    TEMPLATE_LIVE,
    TEMPLATE_GONE    /* ended, or could not be made */
} template_state;

struct pp_site_template {
    template_state state;       /* lifecycle_lock */
    PyInterpreterState *interp; /* lifecycle_lock; set while LIVE */
    PyThreadState *home;        /* lifecycle_lock; the one it was made
                                   with, detached, kept while LIVE */
    uint32_t creations_left;    /* lifecycle_lock */
};

#ifdef HAVE_SITE_TEMPLATE

/* Needs: no tstate; lifecycle_lock. */
static void
make_template(pp_site_template *t, const PyInterpreterConfig *config)
{
    PyThreadState *ts = NULL;
    PyStatus status = Py_NewInterpreterFromConfig(&ts, config);
    if (PyStatus_Exception(status) || ts == NULL) {
        t->state = TEMPLATE_GONE; /* workers are made the plain way */
        return;
    }
    PyConfig *own = (PyConfig *)_Py_GetConfig();
    int had_site = own->site_import;
    own->site_import = 0;
    t->interp = PyThreadState_GetInterpreter(ts);
    if (!had_site) {
        /* `python -S`: no site to put off.  Not kept. */
        Py_EndInterpreter(ts);
        t->interp = NULL;
        t->state = TEMPLATE_GONE;
        return;
    }
    t->state = TEMPLATE_LIVE;
    /* Kept until the end: on 3.12 an interpreter whose last thread state
     * was deleted crashes the next PyThreadState_New ("init_threadstate:
     * thread state already initialized": it reuses the first one's
     * storage).  Every creating thread attaches one of its own. */
    t->home = ts;
    pp__ts_detach();
}

/* Needs: no tstate; lifecycle_lock. */
static void
end_template(pp_site_template *t)
{
    if (t->state == TEMPLATE_LIVE) {
        PyThreadState *ts = pp__ts_attach_new(t->interp);
        if (ts != NULL) {
            /* Py_EndInterpreter insists on being the last thread state. */
            pp__ts_delete_other(t->home);
            Py_EndInterpreter(ts); /* returns with no tstate */
        }
        /* else out of memory: the template is left behind. */
    }
    t->interp = NULL;
    t->home = NULL;
    t->state = TEMPLATE_GONE;
}

/* Create an interpreter while attached to the template, so that it
 * copies the template's config.  On success returns with *made attached,
 * like Py_NewInterpreterFromConfig.  Needs: no tstate; lifecycle_lock;
 * the template LIVE. */
static PyStatus
new_from_template(pp_site_template *t, PyThreadState **made,
                  const PyInterpreterConfig *config)
{
    PyThreadState *ts = pp__ts_attach_new(t->interp);
    if (ts == NULL) {
        return PyStatus_NoMemory();
    }
    PyStatus status = Py_NewInterpreterFromConfig(made, config);
    if (PyStatus_Exception(status) || *made == NULL) {
        /* A failed creation puts `ts` back as it was: attached. */
        pp__ts_delete_current();
        return status;
    }
    /* Now `*made` is attached and `ts` must go, which needs the
     * template's GIL: creation released it (3.12 and 3.13 alike, checked:
     * taking it again here would deadlock otherwise). */
    pp__ts_switch(ts);
    pp__ts_delete_current();
    pp__ts_attach(*made);
    return status;
}

/* A worker made from the template copied site_import = 0 from it, and
 * CPython set its sys.flags.no_site from that.  Put back what the
 * parent has, so that nothing in the worker -- code reading sys.flags,
 * interpreters it creates -- sees a `python -S` that never was.  0 or
 * -1 with an exception.  Needs: sub GIL (the worker's). */
static int
site_back_on(void)
{
    ((PyConfig *)_Py_GetConfig())->site_import = 1;
    PyObject *flags = PySys_GetObject("flags"); /* borrowed */
    if (flags == NULL || !PyTuple_Check(flags)) {
        PyErr_SetString(PyExc_RuntimeError, "sys.flags is missing");
        return -1;
    }
    /* sys.flags is a struct sequence: find no_site's slot by name. */
    for (PyMemberDef *m = Py_TYPE(flags)->tp_members; m && m->name; m++) {
        if (strcmp(m->name, "no_site") != 0) {
            continue;
        }
        Py_ssize_t i = (Py_ssize_t)((m->offset - offsetof(PyTupleObject,
                                                          ob_item)) /
                                    sizeof(PyObject *));
        if (i < 0 || i >= PyTuple_GET_SIZE(flags)) {
            return 0;
        }
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL) {
            return -1;
        }
        PyObject *old = PyTuple_GET_ITEM(flags, i);
        PyStructSequence_SetItem(flags, i, zero); /* steals zero */
        Py_XDECREF(old);
        return 0;
    }
    return 0;
}

#endif /* HAVE_SITE_TEMPLATE */

/* No tstate needed. */
int
pp__boot_use_site_template(pp_boot *boot, uint32_t creations)
{
#ifdef HAVE_SITE_TEMPLATE
    pp_site_template *t = PyMem_RawCalloc(1, sizeof(*t));
    if (t == NULL) {
        return PP_ENOMEM;
    }
    t->state = TEMPLATE_UNMADE;
    t->creations_left = creations;
    boot->site_template = t;
#else
    (void)boot;
    (void)creations;
#endif
    return PP_OK;
}

/* Create an interpreter, from boot's template while it has creations
 * left; *site_deferred says that `site` was not imported.  Needs: no
 * tstate. */
static PyStatus
new_interpreter_locked(const pp_boot *boot, PyThreadState **tstate,
                       const PyInterpreterConfig *config, int *site_deferred)
{
    PyStatus status;
    *site_deferred = 0;
    pthread_mutex_lock(&lifecycle_lock);
#ifdef HAVE_SITE_TEMPLATE
    pp_site_template *t = boot->site_template;
    int use = t != NULL && t->creations_left > 0;
    if (use) {
        t->creations_left--;
        if (t->state == TEMPLATE_UNMADE) {
            make_template(t, config);
        }
        use = t->state == TEMPLATE_LIVE;
    }
    if (use) {
        status = new_from_template(t, tstate, config);
        *site_deferred = !PyStatus_Exception(status) && *tstate != NULL;
    }
    else {
        status = Py_NewInterpreterFromConfig(tstate, config);
    }
    if (t != NULL && t->creations_left == 0 && t->state == TEMPLATE_LIVE) {
        /* Its last creation: end it now rather than with the pool, since
         * any live subinterpreter kills the child of os.fork(). */
        int made = !PyStatus_Exception(status) && *tstate != NULL;
        if (made) {
            pp__ts_detach();
        }
        end_template(t);
        if (made) {
            pp__ts_attach(*tstate);
        }
    }
#else
    (void)boot;
    status = Py_NewInterpreterFromConfig(tstate, config);
#endif
    pthread_mutex_unlock(&lifecycle_lock);
    return status;
}

/* Joins the threading.Thread threads a task left running in this
 * interpreter, so that Py_EndInterpreter, which would wait for them
 * itself, does not wait while holding lifecycle_lock and so keep every
 * other pool in the process from starting or stopping.  Best effort:
 * Py_EndInterpreter still joins whatever this missed.  Needs: sub GIL. */
static void
join_leftover_threads(void)
{
    PyObject *name = PyUnicode_FromString("threading");
    if (name == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *threading = PyImport_GetModule(name);
    Py_DECREF(name);
    if (threading == NULL) {
        /* Never imported: no thread to wait for. */
        PyErr_Clear();
        return;
    }
    PyObject *threads = PyObject_CallMethod(threading, "enumerate", NULL);
    /* The interpreter's "main" Thread object (whichever thread first
     * imported threading) is only marked done by the finalization itself:
     * joining it here would wait forever.  This thread is skipped by its
     * ident: threading.current_thread() would make a _DummyThread for it,
     * whose clean-up then fails noisily at finalization ("Exception
     * ignored in: _DeleteDummyThreadOnDel.__del__"). */
    PyObject *main = PyObject_CallMethod(threading, "main_thread", NULL);
    PyObject *self_ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (threads != NULL && main != NULL && self_ident != NULL &&
        PyList_Check(threads)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(threads); i++) {
            PyObject *thread = PyList_GET_ITEM(threads, i);
            if (thread == main) {
                continue;
            }
            PyObject *ident = PyObject_GetAttrString(thread, "ident");
            int is_self = ident == NULL
                              ? -1
                              : PyObject_RichCompareBool(ident, self_ident,
                                                         Py_EQ);
            Py_XDECREF(ident);
            PyObject *daemon = is_self == 0
                                   ? PyObject_GetAttrString(thread, "daemon")
                                   : NULL;
            int is_daemon = daemon == NULL ? 1 : PyObject_IsTrue(daemon);
            Py_XDECREF(daemon);
            if (is_daemon == 0) {
                PyObject *res = PyObject_CallMethod(thread, "join", NULL);
                Py_XDECREF(res);
            }
            PyErr_Clear();
        }
    }
    PyErr_Clear();
    /* A task that made a threading.Thread on this thread made a
     * _DummyThread for it too (3.13: a subinterpreter's "main" Thread has
     * the main interpreter's main-thread ident), kept alive by a
     * thread-local whose __del__ would run only when this thread state is
     * cleared, after threading's globals are gone: "Exception ignored in:
     * _DeleteDummyThreadOnDel.__del__ ... TypeError".  Drop it now, while
     * threading still works. */
    PyObject *info = PyObject_GetAttrString(threading, "_thread_local_info");
    if (info != NULL &&
        PyObject_DelAttrString(info, "_track_dummy_thread_ref") < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(info);
    PyErr_Clear();
    Py_XDECREF(threads);
    Py_XDECREF(main);
    Py_XDECREF(self_ident);
    Py_DECREF(threading);
}

/* Runs the interpreter's atexit callbacks now, which Py_EndInterpreter
 * would otherwise run under lifecycle_lock: a callback that blocks (a
 * task registered one that reads a pipe, flushes to a stuck socket,
 * joins something) then held that process-wide lock, and with it every
 * other pool's start and end, for as long as it blocked.  Run here, it
 * holds up only its own worker, which terminate() can abandon.  atexit
 * forgets the callbacks it ran, so Py_EndInterpreter finds none.  Best
 * effort; errors are reported by atexit itself.  Needs: sub GIL. */
static void
run_exit_callbacks(void)
{
    PyObject *name = PyUnicode_FromString("atexit");
    PyObject *atexit = name ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    if (atexit != NULL) {
        PyObject *res = PyObject_CallMethod(atexit, "_run_exitfuncs", NULL);
        Py_XDECREF(res);
        Py_DECREF(atexit);
    }
    PyErr_Clear();
}

/* Ends the interpreter of `ts`, its last thread state.  Needs: that
 * interpreter's GIL through `ts`.  What of the ending can run the
 * interpreter's own code, and so block, runs before the lock (see
 * join_leftover_threads, run_exit_callbacks), and the lock is waited
 * for with the GIL released, so that the interpreter's own threads can
 * run meanwhile: one stuck interpreter never stalls the others. */
static void
end_interpreter_locked(PyThreadState *ts)
{
    join_leftover_threads();
    run_exit_callbacks();
    if (pthread_mutex_trylock(&lifecycle_lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&lifecycle_lock);
        Py_END_ALLOW_THREADS
    }
    Py_EndInterpreter(ts);
    pthread_mutex_unlock(&lifecycle_lock);
}

/* ---- boot -------------------------------------------------------- */

/* No tstate needed. */
int
pp__boot_init(pp_boot *boot, const char *sys_path, size_t sys_path_size,
              const void *payload, size_t payload_size)
{
    memset(boot, 0, sizeof(*boot));
    boot->sys_path = PyMem_RawMalloc(sys_path_size ? sys_path_size : 1);
    boot->payload = PyMem_RawMalloc(payload_size ? payload_size : 1);
    if (boot->sys_path == NULL || boot->payload == NULL) {
        pp__boot_fini(boot);
        return PP_ENOMEM;
    }
    if (sys_path_size) {
        memcpy(boot->sys_path, sys_path, sys_path_size);
    }
    if (payload_size) {
        memcpy(boot->payload, payload, payload_size);
    }
    boot->sys_path_size = sys_path_size;
    boot->payload_size = payload_size;
    return PP_OK;
}

/* Any thread, with or without a tstate. */
void
pp__boot_fini(pp_boot *boot)
{
    pp_site_template *t = boot->site_template;
#ifdef HAVE_SITE_TEMPLATE
    /* Left LIVE only when some worker never came to create its
     * interpreter (its thread failed to start).  The state is read
     * without the lock, as the pool's threads are gone by now, and the
     * lock is not taken without need: another pool's creations may hold
     * it for a while, and this may run in the middle of that pool's
     * constructor (a garbage collection ending this pool). */
    if (t != NULL && t->state == TEMPLATE_LIVE) {
        PyThreadState *caller = pp__ts_current();
        if (caller != NULL) {
            pp__ts_detach(); /* lifecycle_lock is taken with no GIL */
        }
        pthread_mutex_lock(&lifecycle_lock);
        end_template(t);
        pthread_mutex_unlock(&lifecycle_lock);
        if (caller != NULL) {
            pp__ts_attach(caller);
        }
    }
#endif
    PyMem_RawFree(t);
    PyMem_RawFree(boot->sys_path);
    PyMem_RawFree(boot->payload);
    memset(boot, 0, sizeof(*boot));
}

/* ---- errors as messages ------------------------------------------- */

/* A message whose payload is UTF-8 text (not a pickle: the Python side
 * tells them apart by pickle's 0x80 opening byte). */
static pp_msg *
text_message(uint64_t job, uint64_t index, uint32_t kind, const char *text)
{
    return pp_msg_new(job, index, kind, text, strlen(text));
}

/* Turn the raised exception into a completion message of `kind`.
 * `value` is the unpicklable result for PP_DONE_UNPICKLABLE, else NULL.
 * Clears the error.  Needs: sub GIL; `encode` may be NULL while the
 * worker module is not imported yet. */
static pp_msg *
error_message(PyObject *encode, uint64_t job, uint64_t index, uint32_t kind,
              PyObject *value)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *encoded = NULL;
    pp_msg *msg = NULL;

    if (encode != NULL && exc != NULL) {
        encoded = value ? PyObject_CallFunctionObjArgs(encode, exc, value,
                                                       NULL)
                        : PyObject_CallOneArg(encode, exc);
    }
    if (encoded != NULL && PyBytes_Check(encoded)) {
        msg = pp_msg_new(job, index, kind, PyBytes_AS_STRING(encoded),
                         (size_t)PyBytes_GET_SIZE(encoded));
        goto done;
    }
    /* Encoding failed too (MemoryError, a broken __repr__, a worker that
     * could not import its module): fall back to the type's name and
     * str(), built with as little Python as possible. */
    PyErr_Clear();
    const char *type_name = exc ? Py_TYPE(exc)->tp_name : "SystemError";
    PyObject *text = exc ? PyObject_Str(exc) : NULL;
    const char *detail = text ? PyUnicode_AsUTF8(text) : NULL;
    PyErr_Clear();
    char buffer[1024];
    snprintf(buffer, sizeof(buffer), "%s: %s", type_name,
             detail ? detail : "(no message could be produced)");
    msg = text_message(job, index, kind, buffer);
    Py_XDECREF(text);

done:
    Py_XDECREF(encoded);
    Py_XDECREF(exc);
    if (msg == NULL) {
        msg = text_message(job, index, kind, NOMEM_TEXT);
    }
    return msg;
}

/* ---- creation ---------------------------------------------------- */

/* Set sys.path from the NUL-separated list.  0 or -1 with an exception.
 * Needs: sub GIL. */
static int
set_sys_path(const pp_boot *boot)
{
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return -1;
    }
    size_t pos = 0;
    while (pos < boot->sys_path_size) {
        const char *entry = boot->sys_path + pos;
        size_t len = strnlen(entry, boot->sys_path_size - pos);
        /* The parent encoded with os.fsencode; undo it the same way so
         * undecodable bytes survive the trip. */
        PyObject *item = PyUnicode_DecodeFSDefaultAndSize(entry,
                                                          (Py_ssize_t)len);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return -1;
        }
        Py_DECREF(item);
        pos += len + 1;
    }
    int rc = PySys_SetObject("path", list);
    Py_DECREF(list);
    return rc;
}

#ifdef HAVE_SITE_TEMPLATE
/* What creating the interpreter would have done with site_import on
 * (see "the site template" above): site.main() adds the site
 * directories, runs their .pth files, sitecustomize and usercustomize,
 * and installs exit(), help() and the rest.  It runs with the parent's
 * sys.path already set, so that whatever the .pth files add is found
 * there, and before poolparty itself is imported, which an editable
 * install may need a .pth import hook for.  0 or -1 with an exception.
 * Needs: sub GIL. */
static int
run_site(void)
{
    PyObject *site = PyImport_ImportModule("site");
    if (site == NULL) {
        return -1;
    }
    PyObject *res = PyObject_CallMethod(site, "main", NULL);
    Py_DECREF(site);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}
#endif

/* Fill it's PyObject fields and run the bootstrap; first site.main()
 * when creation left it out.  0 or -1 with an exception.  Needs: sub
 * GIL. */
static int
prepare(pp_interp *it, const pp_boot *boot, int site_deferred)
{
    int rc = -1;
    PyObject *worker = NULL, *boot_args = NULL, *res = NULL;

    if (set_sys_path(boot) < 0) {
        goto done;
    }
#ifdef HAVE_SITE_TEMPLATE
    if (site_deferred) {
        /* Then the parent's sys.path again: it is what every worker
         * gets, whatever site would add or reorder. */
        if (site_back_on() < 0 || run_site() < 0 || set_sys_path(boot) < 0) {
            goto done;
        }
    }
#else
    (void)site_deferred;
#endif
    worker = PyImport_ImportModule("poolparty._worker");
    if (worker == NULL) {
        goto done;
    }
    it->encode_error = PyObject_GetAttrString(worker, "encode_error");
    it->call_in_frame = PyObject_GetAttrString(worker, "call_in_frame");
    it->map_in_frame = PyObject_GetAttrString(worker, "map_in_frame");
    it->resolve_function = PyObject_GetAttrString(worker, "resolve_function");
    it->dumps_by_value = PyObject_GetAttrString(worker, "dumps_by_value");
    if (it->encode_error == NULL || it->call_in_frame == NULL ||
        it->map_in_frame == NULL || it->resolve_function == NULL ||
        it->dumps_by_value == NULL) {
        goto done;
    }
    /* The payload is codec data (see _engine.boot_payload): no pickle
     * needed to start. */
    boot_args = pp__codec_decode(boot->payload, boot->payload_size);
    if (boot_args == NULL) {
        goto done;
    }
    res = PyObject_CallMethod(worker, "bootstrap", "(O)", boot_args);
    if (res == NULL) {
        goto done;
    }
    rc = 0;

done:
    Py_XDECREF(res);
    Py_XDECREF(boot_args);
    Py_XDECREF(worker);
    return rc;
}

/* Import the C pickler into `it` the first time a task needs it.  Not at
 * start-up: tasks whose function travels by name and whose data is
 * plain never do, and _pickle brings functools, collections and more
 * (eight imports; its cost is in docs/design.md, "Measured costs").  0
 * or -1 with an exception.  Needs: sub GIL. */
static int
need_pickle(pp_interp *it)
{
    if (it->loads != NULL) {
        return 0;
    }
    /* The C pickler itself: `pickle` would also import re and more. */
    PyObject *pickle = PyImport_ImportModule("_pickle");
    if (pickle == NULL) {
        return -1;
    }
    PyObject *loads = PyObject_GetAttrString(pickle, "loads");
    PyObject *dumps = PyObject_GetAttrString(pickle, "dumps");
    PyObject *protocol = PyLong_FromLong(5);
    PyObject *buffer_kw = Py_BuildValue("(s)", "buffer_callback");
    Py_DECREF(pickle);
    if (loads == NULL || dumps == NULL || protocol == NULL ||
        buffer_kw == NULL) {
        Py_XDECREF(loads);
        Py_XDECREF(dumps);
        Py_XDECREF(protocol);
        Py_XDECREF(buffer_kw);
        return -1;
    }
    it->dumps = dumps;
    it->protocol = protocol;
    it->buffer_kw = buffer_kw;
    it->loads = loads; /* last: it says the other two are set */
    return 0;
}

/* Release it's PyObject fields.  Needs: sub GIL. */
static void
release_objects(pp_interp *it)
{
    /* First: releasing a pinned result may need nothing below, but a
     * result still queued gets its own copy before the interpreter
     * that holds the original ends. */
    pp__pins_fini(&it->pins);
    Py_CLEAR(it->loads);
    Py_CLEAR(it->dumps);
    Py_CLEAR(it->protocol);
    Py_CLEAR(it->buffer_kw);
    Py_CLEAR(it->encode_error);
    Py_CLEAR(it->call_in_frame);
    Py_CLEAR(it->map_in_frame);
    Py_CLEAR(it->resolve_function);
    Py_CLEAR(it->dumps_by_value);
    Py_CLEAR(it->func);
    PyMem_RawFree(it->func_pickle);
    it->func_pickle = NULL;
    it->func_pickle_size = 0;
}

/* Needs: no tstate.  See pp_internal.h. */
int
pp__interp_create(const pp_boot *boot, uint32_t worker, pp_interp **out,
                  pp_msg **failure)
{
    if (failure) {
        *failure = NULL;
    }
    pp_interp *it = PyMem_RawCalloc(1, sizeof(*it));
    if (it == NULL) {
        if (failure) {
            *failure = text_message(0, 0, PP_DONE_INIT_FAILED, NOMEM_TEXT);
        }
        return PP_EINTERP;
    }
    pp__pins_init(&it->pins);
    /* Isolated: own GIL and allocator, single-phase-init extensions
     * refused (they would share state with the main interpreter), no
     * fork/exec/daemon threads.  Plain threads stay allowed: tasks may
     * use them. */
    PyInterpreterConfig config = {
        .use_main_obmalloc = 0,
        .allow_fork = 0,
        .allow_exec = 0,
        .allow_threads = 1,
        .allow_daemon_threads = 0,
        .check_multi_interp_extensions = 1,
        .gil = PyInterpreterConfig_OWN_GIL,
    };
    PyThreadState *tstate = NULL;
    PyStatus status;
    int site_deferred = 0;
    for (int attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
        tstate = NULL;
        status = new_interpreter_locked(boot, &tstate, &config,
                                        &site_deferred);
        if (!PyStatus_Exception(status) && tstate != NULL) {
            break;
        }
    }
    if (PyStatus_Exception(status) || tstate == NULL) {
        if (failure) {
            char buffer[512];
            snprintf(buffer, sizeof(buffer),
                     "poolparty: could not create a subinterpreter: %s%s%s",
                     status.func ? status.func : "",
                     status.func ? ": " : "",
                     status.err_msg ? status.err_msg : "unknown error");
            *failure = text_message(0, 0, PP_DONE_INIT_FAILED, buffer);
        }
        PyMem_RawFree(it);
        return PP_EINTERP;
    }
    it->interp = PyThreadState_GetInterpreter(tstate);
    it->home = tstate;
    it->home_thread = pthread_self();

    if (prepare(it, boot, site_deferred) < 0) {
        pp_msg *msg = error_message(it->encode_error, 0, 0,
                                    PP_DONE_INIT_FAILED, NULL);
        if (msg) {
            msg->worker = worker;
        }
        if (failure) {
            *failure = msg;
        }
        else {
            pp_msg_free(msg);
        }
        pp__interp_destroy_attached(it);
        return PP_EINTERP;
    }
    *out = it;
    return PP_OK;
}

/* ---- running a task ------------------------------------------------ */

/* Unpickle `size` bytes at `data` in place (pickle copies out what it
 * keeps, so the view is released before returning).  New reference or
 * NULL with an exception.  Needs: sub GIL. */
static PyObject *
unpickle(pp_interp *it, const unsigned char *data, size_t size)
{
    if (pp__codec_is(data, size)) {
        return pp__codec_decode(data, size);
    }
    if (need_pickle(it) < 0) {
        return NULL;
    }
    PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)size,
                                             PyBUF_READ);
    if (view == NULL) {
        return NULL;
    }
    PyObject *obj = PyObject_CallOneArg(it->loads, view);
    /* Make sure nothing that kept the view can read the message after
     * it is freed -- with loads()'s exception, if any, set aside: calling
     * into Python with it set would replace it with a SystemError. */
    PyObject *exc = obj == NULL ? PyErr_GetRaisedException() : NULL;
    PyObject *released = PyObject_CallMethod(view, "release", NULL);
    if (released == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(released);
    Py_DECREF(view);
    if (exc != NULL) {
        PyErr_SetRaisedException(exc);
    }
    return obj;
}

/* The function of a task that carries only its by-value header
 * (`header`, as bytes): its bytes come from the engine's store, once
 * per worker, and _worker.resolve_function unpickles and keeps it.
 * New reference or NULL with an exception.  Needs: sub GIL. */
static PyObject *
fetch_by_value(pp_interp *it, const pp_msg *task, PyObject *header)
{
    const unsigned char *data;
    size_t size;
    if (pp__engine_function_bytes(task, &data, &size) != PP_OK) {
        PyErr_SetString(PyExc_RuntimeError,
                        "poolparty: this task's by-value function is "
                        "not in its pool's function store (a task was "
                        "queued without it); please report this");
        return NULL;
    }
    /* Copied into this interpreter's own bytes: the store's memory is
     * the engine's, read here while this task holds it. */
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data,
                                                (Py_ssize_t)size);
    if (bytes == NULL) {
        return NULL;
    }
    PyObject *func = PyObject_CallFunctionObjArgs(it->resolve_function,
                                                  header, bytes, NULL);
    Py_DECREF(bytes);
    if (func == Py_None) {
        Py_SETREF(func, NULL);
        PyErr_SetString(PyExc_RuntimeError,
                        "poolparty: resolve_function returned None");
    }
    return func;
}

/* The task's function: the cached object when the task allows reuse and
 * its pickle is the cached one's, else freshly unpickled (and cached if
 * reusable).  New reference or NULL with an exception.  Needs: sub GIL. */
static PyObject *
task_function(pp_interp *it, const pp_msg *task)
{
    int reuse = (task->kind & PP_TASK_REUSE_FUNC) != 0;
    if (reuse && it->func != NULL && it->func_pickle_size == task->func_size &&
        memcmp(it->func_pickle, task->data, task->func_size) == 0) {
        return Py_NewRef(it->func);
    }
    PyObject *func;
    if (task->kind & PP_TASK_FUNC_BY_NAME) {
        PyObject *name = PyBytes_FromStringAndSize((const char *)task->data,
                                                   (Py_ssize_t)task->func_size);
        if (name == NULL) {
            return NULL;
        }
        func = PyObject_CallOneArg(it->resolve_function, name);
        if (func == Py_None) {
            /* A by-value header this worker has not unpickled yet. */
            Py_SETREF(func, fetch_by_value(it, task, name));
        }
        Py_DECREF(name);
    }
    else {
        func = unpickle(it, task->data, task->func_size);
    }
    if (func == NULL || !reuse) {
        return func;
    }
    unsigned char *copy = PyMem_RawMalloc(task->func_size ? task->func_size
                                                          : 1);
    if (copy != NULL) {
        memcpy(copy, task->data, task->func_size);
        PyMem_RawFree(it->func_pickle);
        it->func_pickle = copy;
        it->func_pickle_size = task->func_size;
        Py_XSETREF(it->func, Py_NewRef(func));
    }
    return func;
}

/* func(*args, **kwargs) from an unpickled (args, kwargs) pair.  New
 * reference or NULL with an exception.  Needs: sub GIL. */
static PyObject *
run_call(pp_interp *it, PyObject *func, PyObject *spec)
{
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "poolparty: malformed task (expected an "
                        "(args, kwargs) pair)");
        return NULL;
    }
    PyObject *args = PyTuple_GET_ITEM(spec, 0);
    PyObject *kwargs = PyTuple_GET_ITEM(spec, 1);
    if (!PyTuple_Check(args) || (kwargs != Py_None && !PyDict_Check(kwargs))) {
        PyErr_SetString(PyExc_TypeError,
                        "poolparty: malformed task arguments");
        return NULL;
    }
    if (PyCFunction_Check(func)) {
        /* eval(), exec(), globals(), vars()... need a Python frame to
         * call them from, as they have in a multiprocessing worker. */
        return PyObject_CallFunctionObjArgs(it->call_in_frame, func, args,
                                            kwargs, NULL);
    }
    return PyObject_Call(func, args, kwargs == Py_None ? NULL : kwargs);
}

/* ---- a chunk in parts ------------------------------------------------ */

/* A worker running a map chunk sends the results it has made so far
 * ahead, as a PP_DONE_PART, once it has spent PART_NS of CPU on them
 * since the chunk began or its last part went: the collector decodes
 * them while the rest are made, instead of waiting for the whole chunk
 * and decoding the last one alone after the workers are done
 * (docs/design.md, "A chunk in parts").  A chunk that takes less --
 * 1,000 no-op tasks -- stays one message.  CPU time, not the wall
 * clock: a worker that the system preempts has made nothing more. */
#define PART_NS ((int64_t)2 * 1000 * 1000)
/* The clock (a system call, ~0.25 us) is read after every result while
 * results come slowly; while they come fast the stride between reads
 * doubles, up to this many results, so that a no-op task pays a few ns
 * for it. */
#define PART_STRIDE_MAX 256

typedef struct {
    const pp_msg *task;
    pp_pins *pins;
    int on;              /* parts may go: a pool worker's own map chunk
                            whose results the codec takes */
    Py_ssize_t sent;     /* results sent ahead: the next part's first */
    Py_ssize_t check_at; /* results made when the clock is read next */
    Py_ssize_t stride;
    int64_t since;       /* CPU ns: the chunk began or its last part went */
    int64_t looked;      /* CPU ns: the clock was read last */
} parts_t;

/* This thread's CPU time, in ns.  Any thread, any GIL or none. */
static int64_t
cpu_ns(void)
{
    return pp__clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/* Parts for `task`, if it is a chunk this thread runs as a pool worker
 * (not an Interpreter's call).  Needs: sub GIL. */
static void
parts_init(parts_t *p, pp_interp *it, const pp_msg *task)
{
    uint32_t kind = task->kind & PP_TASK_KIND_MASK;
    p->task = task;
    p->pins = &it->pins;
    p->on = (kind == PP_TASK_MAP || kind == PP_TASK_STARMAP) &&
            pp__engine_runs(task);
    p->sent = 0;
    p->check_at = 1;
    p->stride = 1;
    p->since = p->looked = 0;
}

/* The chunk's `n` results are about to be made: its clock starts (not
 * read for a chunk of one, which never sends a part).  Needs: sub GIL. */
static void
parts_start(parts_t *p, Py_ssize_t n)
{
    if (p->on && n > 1) {
        p->since = p->looked = cpu_ns();
    }
}

/* A new list of results[start:end], moved out of `results` (their slots
 * hold None after): so that the codec sees each with its one reference
 * (it numbers only shared objects), and so that a part's results go as
 * soon as it is sent, their memory reused for the results still to come
 * (kept until the chunk ended, a chunk of large results took fresh
 * memory for each).  New reference or NULL with an exception.  Needs:
 * sub GIL. */
static PyObject *
take_results(PyObject *results, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *taken = PyList_New(end - start);
    if (taken == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = start; i < end; i++) {
        PyList_SET_ITEM(taken, i - start, PyList_GET_ITEM(results, i));
        PyList_SET_ITEM(results, i, Py_None); /* immortal */
    }
    return taken;
}

/* Send results[sent:made] ahead if their time has come.  0, or -1 with
 * an exception (which fails the chunk, as a failed encoding of the
 * whole did).  Needs: sub GIL. */
static int
parts_send(parts_t *p, PyObject *results, Py_ssize_t made)
{
    int64_t now = cpu_ns();
    if (now - p->since < PART_NS) {
        /* Aim at a read every PART_NS / 16 to PART_NS / 4. */
        if (now - p->looked < PART_NS / 16) {
            p->stride = Py_MIN(p->stride * 2, PART_STRIDE_MAX);
        }
        else if (now - p->looked > PART_NS / 4) {
            p->stride = Py_MAX(p->stride / 2, 1);
        }
        p->looked = now;
        p->check_at = made + p->stride;
        return 0;
    }
    PyObject *part = take_results(results, p->sent, made);
    if (part == NULL) {
        return -1;
    }
    pp_msg *msg = NULL;
    int rc = pp__codec_encode_msg(part, NULL, 0, p->pins, &msg);
    if (rc > 0) {
        /* Not plain data: they and the rest go with the chunk's last
         * message, through pickle. */
        for (Py_ssize_t i = p->sent; i < made; i++) {
            PyList_SET_ITEM(results, i, PyList_GET_ITEM(part, i - p->sent));
            PyList_SET_ITEM(part, i - p->sent, Py_None); /* immortal */
        }
        p->on = 0;
    }
    Py_DECREF(part);
    if (rc != 0) {
        return rc < 0 ? -1 : 0;
    }
    msg->job = p->task->job;
    msg->index = p->task->index;
    msg->kind = PP_DONE_PART;
    msg->first = (uint64_t)p->sent;
    /* What the part cost this worker, making and encoding it: the gate
     * weighs it against what it costs the collector to decode. */
    now = cpu_ns();
    pp__engine_send_part(msg, now - p->since);
    p->sent = made;
    p->since = p->looked = now;
    p->check_at = made + p->stride;
    return 0;
}

/* After the first `made` of a chunk's `n` results are in `results`:
 * send them ahead if they are due (never the last: that goes as the
 * chunk's completion).  0, or -1 with an exception.  Needs: sub GIL. */
static inline int
parts_after(parts_t *p, PyObject *results, Py_ssize_t made, Py_ssize_t n)
{
    if (!p->on || made < p->check_at || made >= n) {
        return 0;
    }
    return parts_send(p, results, made);
}

/* The results a chunk in parts still has to send, those after the
 * parts (moved out of `results`).  New reference or NULL with an
 * exception.  Needs: sub GIL. */
static PyObject *
parts_rest(const parts_t *p, PyObject *results)
{
    return take_results(results, p->sent, PyList_GET_SIZE(results));
}

/* [func(x) for x in items] or [func(*x) for x in items], some of it sent
 * ahead in parts.  New reference or NULL with an exception.  Needs: sub
 * GIL. */
static PyObject *
run_map(pp_interp *it, PyObject *func, PyObject *items, int star,
        parts_t *parts)
{
    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError,
                        "poolparty: malformed task (expected a list of "
                        "items)");
        return NULL;
    }
    if (PyCFunction_Check(func)) {
        /* As in run_call: builtins get a Python frame to run in. */
        return PyObject_CallFunctionObjArgs(it->map_in_frame, func, items,
                                            star ? Py_True : Py_False, NULL);
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *results = PyList_New(n);
    if (results == NULL) {
        return NULL;
    }
    parts_start(parts, n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        PyObject *value;
        if (star) {
            PyObject *args = PySequence_Tuple(item);
            if (args == NULL) {
                Py_DECREF(results);
                return NULL;
            }
            value = PyObject_Call(func, args, NULL);
            Py_DECREF(args);
        }
        else {
            value = PyObject_CallOneArg(func, item);
        }
        if (value == NULL) {
            Py_DECREF(results);
            return NULL;
        }
        PyList_SET_ITEM(results, i, value);
        if (parts_after(parts, results, i + 1, n) < 0) {
            Py_DECREF(results);
            return NULL;
        }
    }
    return results;
}

/* pp_star_sink of run_star: results[i] = func(*args). */
typedef struct {
    PyObject *func;
    PyObject *results; /* NULL until the first call */
    parts_t *parts;
} star_run;

static int
star_call(void *ctx, Py_ssize_t n, Py_ssize_t i, PyObject *const *args,
          Py_ssize_t nargs)
{
    star_run *run = ctx;
    if (run->results == NULL) {
        if ((run->results = PyList_New(n)) == NULL) {
            return -1;
        }
        parts_start(run->parts, n);
    }
    PyObject *value = PyObject_Vectorcall(run->func, args, (size_t)nargs,
                                          NULL);
    if (value == NULL) {
        return -1;
    }
    PyList_SET_ITEM(run->results, i, value);
    return parts_after(run->parts, run->results, i + 1, n);
}

/* A starmap task whose chunk the codec wrote as T_STARS: each tuple's
 * items decoded straight into the call's arguments, no tuple made (a
 * builtin, which runs in map_in_frame's Python frame, gets the list of
 * tuples instead).  *result the list of results; 0, -1 with an
 * exception, or 1 (not such a task: nothing done).  Needs: sub GIL. */
static int
run_star(PyObject *func, const pp_msg *task, parts_t *parts,
         PyObject **result)
{
    *result = NULL;
    if ((task->kind & PP_TASK_KIND_MASK) != PP_TASK_STARMAP ||
        PyCFunction_Check(func)) {
        return 1;
    }
    star_run run = {.func = func, .parts = parts};
    int rc = pp__codec_decode_star_msg(task, task->func_size, star_call,
                                       &run);
    if (rc == 0 && run.results == NULL) {
        run.results = PyList_New(0);
        rc = run.results != NULL ? 0 : -1;
    }
    if (rc != 0) {
        Py_CLEAR(run.results);
    }
    *result = run.results;
    return rc;
}

/* A result that pickle refused, pickled by value instead (a lambda, an
 * instance of a class the worker got by value), or NULL with pickle's
 * exception still set when that fails too.  New reference.  Needs: sub
 * GIL; pickle's exception set. */
static PyObject *
dumps_by_value(pp_interp *it, PyObject *result)
{
    PyObject *refused = PyErr_GetRaisedException();
    PyObject *pickled = PyObject_CallOneArg(it->dumps_by_value, result);
    if (pickled != NULL && PyBytes_Check(pickled)) {
        Py_XDECREF(refused);
        return pickled;
    }
    Py_XDECREF(pickled);
    PyErr_Clear();
    PyErr_SetRaisedException(refused);
    return NULL;
}

/* pickle.dumps's buffer_callback in pickle_out_of_band, bound to the
 * list `self` that collects the out-of-band buffers: a C-contiguous
 * buffer is appended and goes out of band (None: false); any other goes
 * in-band (True), copied into the stream as pickle does with no
 * callback -- so one pass of pickle serves both.  Needs: sub GIL. */
static PyObject *
collect_buffer(PyObject *self, PyObject *buffer)
{
    if (PyObject_TypeCheck(buffer, &PyPickleBuffer_Type)) {
        const Py_buffer *view = PyPickleBuffer_GetBuffer(buffer);
        if (view == NULL) {
            return NULL; /* released */
        }
        if (!PyBuffer_IsContiguous(view, 'C')) {
            Py_RETURN_TRUE;
        }
    }
    if (PyList_Append(self, buffer) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef collect_buffer_def = {
    "collect_buffer", collect_buffer, METH_O,
    "Out-of-band buffers for poolparty (a pickle buffer_callback)."};

/* A result pickled with its out-of-band buffers (pickle protocol 5's
 * PickleBuffers) beside the stream, into *done: PP_OK, or PP_EINVAL
 * when pickle or the codec refused it (*done NULL, pickle's exception
 * set in the first case only; the caller pickles it in-band).  One
 * pickle call with its keyword from it->buffer_kw: no dict, no bound
 * method.  Needs: sub GIL. */
static int
pickle_out_of_band(pp_interp *it, PyObject *result, pp_msg **done)
{
    *done = NULL;
    PyObject *buffers = PyList_New(0);
    PyObject *callback = buffers ? PyCFunction_New(&collect_buffer_def,
                                                   buffers)
                                 : NULL;
    PyObject *args[3] = {result, it->protocol, callback};
    PyObject *stream = callback ? PyObject_Vectorcall(it->dumps, args, 2,
                                                      it->buffer_kw)
                                : NULL;
    int rc = PP_EINVAL;
    if (stream != NULL && PyList_GET_SIZE(buffers) == 0) {
        /* No buffers: an ordinary pickle, copied into the message. */
        *done = pp_msg_new(0, 0, PP_DONE_OK, PyBytes_AS_STRING(stream),
                           (size_t)PyBytes_GET_SIZE(stream));
        rc = PP_OK;
        if (*done == NULL) {
            PyErr_NoMemory();
            rc = PP_ENOMEM;
        }
    }
    else if (stream != NULL) {
        int encoded = pp__codec_encode_pickle5_msg(stream, buffers, NULL, 0,
                                                   &it->pins, done);
        rc = encoded == 0 ? PP_OK : encoded > 0 ? PP_EINVAL : PP_ENOMEM;
    }
    Py_XDECREF(stream);
    Py_XDECREF(callback);
    Py_XDECREF(buffers);
    return rc;
}

/* Needs: sub GIL.  See pp_internal.h. */
pp_msg *
pp__interp_run(pp_interp *it, const pp_msg *task)
{
    PyObject *func = NULL, *spec = NULL, *result = NULL, *pickled = NULL;
    pp_msg *done = NULL;
    parts_t parts;

    parts_init(&parts, it, task);
    /* The pinned results of earlier tasks that the main interpreter has
     * read since: their objects go now, under this interpreter's GIL. */
    pp__pins_sweep(&it->pins);
    func = task_function(it, task);
    if (func == NULL) {
        goto error;
    }
    int star = run_star(func, task, &parts, &result);
    if (star < 0) {
        goto error;
    }
    if (star == 0) {
        goto encode;
    }
    /* The arguments may refer to the caller's pinned buffers. */
    spec = pp__codec_is(task->data + task->func_size,
                        task->size - task->func_size)
               ? pp__codec_decode_msg(task, task->func_size)
               : unpickle(it, task->data + task->func_size,
                          task->size - task->func_size);
    if (spec == NULL) {
        goto error;
    }
    switch (task->kind & PP_TASK_KIND_MASK) {
    case PP_TASK_CALL:
        result = run_call(it, func, spec);
        break;
    case PP_TASK_MAP:
        result = run_map(it, func, spec, 0, &parts);
        break;
    case PP_TASK_STARMAP:
        result = run_map(it, func, spec, 1, &parts);
        break;
    default:
        PyErr_Format(PyExc_ValueError, "poolparty: unknown task kind %u",
                     (unsigned)task->kind);
    }
    if (result == NULL) {
        goto error;
    }
encode:
    /* A chunk in parts: what they did not carry.  (If it cannot be
     * sent, the collector puts the parts' reprs in front of its repr, as
     * if the chunk had failed whole.) */
    if (parts.sent > 0) {
        Py_SETREF(result, parts_rest(&parts, result));
        if (result == NULL) {
            goto error;
        }
    }
    /* Plain data goes through the codec, which keeps shared references
     * shared; anything else through pickle. */
    int encoded = pp__codec_encode_msg(result, NULL, 0, &it->pins, &done);
    if (encoded < 0) {
        goto error;
    }
    if (encoded > 0) {
        if (need_pickle(it) < 0) {
            goto error;
        }
        int rc = pickle_out_of_band(it, result, &done);
        if (rc == PP_ENOMEM) {
            goto error;
        }
        if (rc != PP_OK && !PyErr_Occurred()) {
            /* Buffers the codec refused (collect_buffer sends it only
             * C-contiguous ones): in-band, as pickle does without a
             * buffer_callback. */
            pickled = PyObject_CallFunctionObjArgs(it->dumps, result,
                                                   it->protocol, NULL);
        }
    }
    if (done != NULL) {
        done->job = task->job;
        done->index = task->index;
        done->kind = PP_DONE_OK;
        goto done;
    }
    if (pickled == NULL) {
        pickled = dumps_by_value(it, result);
    }
    if (pickled == NULL) {
        done = error_message(it->encode_error, task->job, task->index,
                             PP_DONE_UNPICKLABLE, result);
        goto done;
    }
    if (!PyBytes_Check(pickled)) {
        PyErr_SetString(PyExc_TypeError, "pickle.dumps did not return bytes");
        goto error;
    }
    done = pp_msg_new(task->job, task->index, PP_DONE_OK,
                      PyBytes_AS_STRING(pickled),
                      (size_t)PyBytes_GET_SIZE(pickled));
    if (done == NULL) {
        /* The result was made but cannot be carried: report it as the
         * task's MemoryError rather than lose the task. */
        PyErr_NoMemory();
        goto error;
    }
    goto done;

error:
    done = error_message(it->encode_error, task->job, task->index,
                         PP_DONE_ERROR, NULL);
done:
    if (done != NULL) {
        done->first = (uint64_t)parts.sent;
    }
    Py_XDECREF(pickled);
    Py_XDECREF(result);
    Py_XDECREF(spec);
    Py_XDECREF(func);
    return done;
}

/* ---- calling in from the main interpreter ----------------------------- */

/* Attach to `it` on this thread: its home thread state when this is the
 * home thread, else a fresh one that *temporary tells the caller to
 * delete.  Needs: no tstate; returns with the sub GIL. */
static void
enter(pp_interp *it, int *temporary)
{
    *temporary = !pthread_equal(it->home_thread, pthread_self());
    if (*temporary) {
        /* gilstate (tstate.c rule 5): this thread's slot now points
         * into `it` until leave() deletes the thread state. */
        pp__ts_attach_new(it->interp);
    }
    else {
        pp__ts_attach(it->home);
    }
}

/* Leave `it` (undoing enter).  Needs: sub GIL; returns with no tstate. */
static void
leave(int temporary)
{
    if (temporary) {
        pp__ts_delete_current();
    }
    else {
        pp__ts_detach();
    }
}

/* The main-interpreter thread state this thread set aside to run in a
 * subinterpreter (pp__interp_call, pp__interp_exec), or NULL: what
 * pp__interp_import_in_main switches back to. */
static _Thread_local PyThreadState *set_aside_main = NULL;

/* Needs: main GIL.  See pp_internal.h. */
pp_msg *
pp__interp_call(pp_interp *it, const pp_msg *task)
{
    int temporary;
    PyThreadState *outer = set_aside_main;
    PyThreadState *caller = pp__ts_detach();
    set_aside_main = caller;
    enter(it, &temporary);
    pp_msg *done = pp__interp_run(it, task);
    leave(temporary);
    set_aside_main = outer;
    pp__ts_attach(caller);
    return done;
}

/* Needs: sub GIL.  See pp_internal.h. */
int
pp__interp_import_in_main(const char *name, size_t size)
{
    PyThreadState *main_ts = set_aside_main;
    if (main_ts == NULL) {
        return PP_ENOTFOUND;
    }
    PyThreadState *sub_ts = pp__ts_switch(main_ts);
    /* The main tstate was set aside in the middle of a call: keep
     * whatever it had raised out of the way of the import. */
    PyObject *pending = PyErr_GetRaisedException();
    PyObject *modname = PyUnicode_DecodeUTF8(name, (Py_ssize_t)size, NULL);
    if (modname != NULL) {
        /* A module already in sys.modules may be one that another main
         * thread is importing right now while it waits for this call:
         * waiting for its import lock would deadlock. */
        PyObject *known = PyImport_GetModule(modname);
        if (known == NULL && !PyErr_Occurred()) {
            PyObject *module = PyImport_Import(modname);
            Py_XDECREF(module);
        }
        Py_XDECREF(known);
        Py_DECREF(modname);
    }
    PyErr_Clear();
    PyErr_SetRaisedException(pending);
    pp__ts_switch(sub_ts);
    return PP_OK;
}

/* Needs: main GIL.  See pp_internal.h. */
int
pp__interp_exec(pp_interp *it, const char *source, pp_msg **failure)
{
    int temporary, rc = PP_OK;
    PyThreadState *outer = set_aside_main;
    PyThreadState *caller = pp__ts_detach();
    set_aside_main = caller;
    enter(it, &temporary);

    PyObject *main_module = PyImport_AddModule("__main__"); /* borrowed */
    PyObject *globals = main_module ? PyModule_GetDict(main_module) : NULL;
    PyObject *res = globals ? PyRun_String(source, Py_file_input, globals,
                                           globals)
                            : NULL;
    if (res == NULL) {
        pp_msg *msg = error_message(it->encode_error, 0, 0, PP_DONE_ERROR,
                                    NULL);
        if (failure) {
            *failure = msg;
        }
        else {
            pp_msg_free(msg);
        }
        rc = PP_EINTERP;
    }
    Py_XDECREF(res);
    leave(temporary);
    set_aside_main = outer;
    pp__ts_attach(caller);
    return rc;
}

/* ---- destruction --------------------------------------------------- */

/* Needs: sub GIL through it->home, on the home thread. */
void
pp__interp_destroy_attached(pp_interp *it)
{
    release_objects(it);
    /* terminate() may have left an interrupt pending on this idle
     * thread; it would fire inside threading._shutdown below and be
     * printed as an unraisable exception. */
    PyThreadState_SetAsyncExc(PyThread_get_thread_ident(), NULL);
    /* Py_EndInterpreter joins the interpreter's non-daemon threads
     * and then insists on being its last thread state. */
    end_interpreter_locked(it->home);
    PyMem_RawFree(it);
}

/* Needs: no tstate; nobody else uses `it`. */
void
pp__interp_destroy(pp_interp *it)
{
    if (pthread_equal(it->home_thread, pthread_self())) {
        pp__ts_attach(it->home);
        pp__interp_destroy_attached(it);
        return;
    }
    /* From a foreign thread: attach with a thread state of our own, get
     * rid of the home one (Py_EndInterpreter wants to be the last),
     * then end the interpreter through ours. */
    PyThreadState *ts = pp__ts_attach_new(it->interp);
    release_objects(it);
    pp__ts_delete_other(it->home);
    end_interpreter_locked(ts);
    PyMem_RawFree(it);
}

/* Needs: no tstate; the caller keeps `interp` alive. */
void
pp__interp_interrupt(PyInterpreterState *interp, unsigned long thread_id,
                     PyObject *exc_type)
{
    /* Waits for the worker's GIL: a running worker drops it within one
     * switch interval because we asked for it. */
    if (pp__ts_attach_new(interp) == NULL) {
        return;
    }
    PyThreadState_SetAsyncExc(thread_id, exc_type);
    pp__ts_delete_current();
}
