/* The _poolparty extension module: per-module state and the types it
 * defines.  Everything here runs in whichever interpreter imported the
 * module, under that interpreter's GIL; objects never leave it. */
#ifndef POOLPARTY_MODULE_H
#define POOLPARTY_MODULE_H

#include "../core/pp_internal.h"

/* Lock an object's fields against other threads: the GIL does it on
 * default builds (a block, nothing more); free-threaded builds (3.13t)
 * take a per-object critical section. */
#ifdef Py_GIL_DISABLED
#define PP_LOCK_OBJECT(op) Py_BEGIN_CRITICAL_SECTION(op)
#define PP_UNLOCK_OBJECT() Py_END_CRITICAL_SECTION()
#else
#define PP_LOCK_OBJECT(op) { (void)(op);
#define PP_UNLOCK_OBJECT() }
#endif
/* static TYPE NAME(PyObject *op): FIELD (an expression of op, such as
 * a state the collector thread changes) read under op's lock. */
#define PP_LOCKED_READER(TYPE, NAME, FIELD)                                \
    static TYPE NAME(PyObject *op)                                         \
    {                                                                      \
        TYPE value;                                                        \
        PP_LOCK_OBJECT(op);                                                \
        value = (FIELD);                                                   \
        PP_UNLOCK_OBJECT();                                                \
        return value;                                                      \
    }

/* Completions Engine.collect() turns into Python objects per call.  Not
 * all that are ready: every tuple it makes counts towards the garbage
 * collector's next young-generation pass until the caller frees it, so
 * a batch of thousands (workers outrunning the collector) set off a pass
 * that went over every large result still young (data_pass's, measured
 * in docs/design.md, "The collector and the garbage collector"). */
#define PP_COLLECT_BATCH 64
/* ... and stops early once it has decoded this many payload bytes: the
 * decoding holds the main GIL, so a batch of large results would keep
 * a caller's thread (an imap consumer) waiting for it well past the
 * interpreter's switch interval.  Between collect() calls the GIL can
 * change hands. */
#define PP_COLLECT_BYTES (1u << 20)

/* What the Future type (future_type.c) needs; all NULL until
 * _poolparty.future_type() makes it. */
typedef struct {
    PyTypeObject *type;
    PyObject *state_names[5]; /* "PENDING", ... "FINISHED", interned */
    PyObject *no_args;        /* () */
    /* concurrent.futures.Future's own methods, for the slow paths */
    PyObject *base_result;
    PyObject *base_exception;
    PyObject *base_set_result;
    PyObject *base_set_exception;
    PyObject *base_cancel;
    PyObject *invalid_state_error;
    PyObject *condition_class; /* threading.Condition */
} pp_future_support;

/* What the pool's result types (result_type.c) need; all NULL until
 * _poolparty.result_types() makes them. */
typedef struct {
    PyTypeObject *apply_type;          /* multiprocessing's ApplyResult */
    PyTypeObject *map_type;            /* ... MapResult */
    PyTypeObject *imap_type;           /* ... IMapIterator */
    PyTypeObject *imap_unordered_type; /* ... IMapUnorderedIterator */
    PyObject *event_class;             /* threading.Event */
    PyObject *timeout_error;           /* multiprocessing.TimeoutError */
    PyObject *report;                  /* report(what, exc) */
    PyObject *no_args;                 /* () */
    PyObject *failure_mark; /* an object() of ours: see result_type.c */
} pp_result_support;

typedef struct {
    pp_future_support future;
    pp_result_support result;
    /* pickle.loads, for the results collect() unpickles: made with the
     * first Future or result types (pp__need_pickle_loads), so a target
     * collect() finishes in C is always of a module that has it. */
    PyObject *pickle_loads;
    /* The function-reference cache (engine_delivery.c): {id(fn): (fn,
     * (data, flags))}, made on first use.  Its layout is private to
     * engine_delivery.c; Python reaches it only through
     * _poolparty.function_ref() and _poolparty.remember_function(). */
    PyObject *func_refs;
    PyTypeObject *engine_type;
    PyTypeObject *interpreter_type;
    PyTypeObject *sampler_type;
    PyObject *core_error; /* _poolparty.CoreError */
} pp_module_state;

extern PyModuleDef pp__module_def;

/* The state of the module that defined `type`'s instances' class.
 * Borrowed; never NULL for our own types. */
pp_module_state *pp__state_from_type(PyTypeObject *type);

/* THE place that turns a PP_E* code into a Python exception.  Always
 * returns NULL so callers can `return pp__raise(st, rc);`.  Needs: the
 * GIL of the module's interpreter. */
PyObject *pp__raise(pp_module_state *st, int code);

/* Make st->pickle_loads if there is none yet (imported here, not at
 * module load: a worker imports pickle only when a task needs it).  0 or
 * -1 with an exception.  Needs: the module's GIL. */
int pp__need_pickle_loads(PyObject *module);

/* Read a non-negative integer that fits in uint64.  0 or -1 with an
 * exception. */
int pp__as_u64(PyObject *obj, uint64_t *out);
/* module_name.attr, the module imported if need be (3.14 made that one
 * call, PyImport_ImportModuleAttrString).  New reference or NULL with
 * an exception. */
PyObject *pp__import_attr(const char *module_name, const char *attr);
/* The object in op's *field, made by make(op) if there is none yet; all
 * callers get the same one.  New reference or NULL with an exception.
 * Needs: op's interpreter's GIL. */
PyObject *pp__get_or_make(PyObject *op, PyObject **field,
                          PyObject *(*make)(PyObject *));
/* Check that a METH_FASTCALL method got `n` arguments, else TypeError
 * with `usage` (its signature); then read the arguments at the positions
 * `at` lists ("014": the first, second and fifth) as pp__as_u64 does,
 * into the uint64_t pointers that follow, in order.  0 or -1 with an
 * exception. */
int pp__u64_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t n,
                 const char *usage, const char *at, ...);
/* A timeout argument's seconds into *seconds: 1 (*seconds untouched)
 * when it is missing (NULL) or None, 0, or -1 with an exception. */
int pp__timeout_seconds(PyObject *obj, double *seconds);
/* Seconds (float, None or negative = forever) to nanoseconds (-1 =
 * forever).  0 or -1 with an exception. */
int pp__timeout_ns(PyObject *obj, int64_t *out);
/* The one optional argument of a METH_FASTCALL method
 * name(timeout=...), as pp__timeout_ns reads it, into *out (untouched
 * when not given); TypeError with `usage` for more.  0 or -1 with an
 * exception. */
int pp__timeout_arg(PyObject *const *args, Py_ssize_t nargs,
                    const char *usage, int64_t *out);
/* 0, or -1 with ValueError saying what to pass instead when `func` is a
 * by-value function's header alone ("\0v<token>\0module\0qualname\0",
 * see fnstore.c): a worker finds its bytes only in its engine's store,
 * held there by tasks submitted with them, so such a task could never
 * run.  Needs: the caller's GIL. */
int pp__refuse_header_only(const void *func, size_t size);
/* A task message from the function's pickle (a bytes-like object) and
 * the arguments': a bytes-like object, or a (pickle, buffers) pair
 * (pickle protocol 5's out-of-band buffers, see _engine.dumps); with
 * header_only, of a by-value function reference only its header
 * (pp__fn_task_part: the task is for an engine, which keeps the bytes).
 * Large buffers are pinned into `pins` (NULL: copied).  NULL with an
 * exception. */
pp_msg *pp__task_from_buffers(uint64_t job, uint64_t index, uint64_t kind,
                              PyObject *func, PyObject *args,
                              int header_only, pp_pins *pins);
/* A task message (job, index, kind 0) of `func_size` bytes of function
 * reference and a pickle with its out-of-band buffers (a list, maybe
 * empty).  NULL with an exception.  Needs: main GIL. */
pp_msg *pp__task_from_pickle(const void *func, size_t func_size,
                             PyObject *pickled, PyObject *buffers,
                             pp_pins *pins);

/* A completion's kinds in collect()'s tuples (never in a pp_msg): a
 * successful codec result, already decoded (the payload is the value),
 * or one that failed to decode (the payload is the exception). */
#define PP_DONE_DECODED 64
#define PP_DONE_UNDECODABLE 65
/* A chunk in parts whose last results could not be sent: payload the
 * pair (the parts' results, the PP_DONE_UNPICKLABLE payload). */
#define PP_DONE_UNPICKLABLE_PARTS 66

/* A completion's payload bytes, with its kind in *kind, or for a codec
 * result the value, with PP_DONE_DECODED (PP_DONE_UNDECODABLE and the
 * exception when decoding it raised: the payload may refer to pinned
 * buffers, which only the message carries).  New reference or NULL.
 * Needs: main GIL. */
PyObject *pp__completion_payload(const pp_msg *msg, unsigned *kind);
/* (job, index, kind, worker, payload) for a completion, the last two as
 * pp__completion_payload gives them.  New reference or NULL.  Needs:
 * main GIL. */
PyObject *pp__completion_tuple(const pp_msg *msg);
/* The same with `kind` and `payload` given (the reference stolen; NULL
 * is passed through as a failure). */
PyObject *pp__completion_tuple_of(const pp_msg *msg, unsigned kind,
                                  PyObject *payload);

/* _poolparty.Engine's instance.  Three files share it, each owning its
 * fields: engine_type.c (the handle: creation, lifecycle, getters),
 * engine_map.c (submit_map: chunking and encoding; no fields of its own)
 * and engine_delivery.c (collect() and the Future fast path).
 * Fields other than `engine` and `next_job` are guarded by the GIL, or by
 * PP_LOCK_OBJECT(self) on free-threaded builds. */
typedef struct {
    PyObject_HEAD
    pp_engine *engine; /* owned reference; NULL only if __new__ failed */
    /* Job ids handed out by new_job() and submit_future(); atomic, as
     * free-threaded builds run those without a lock. */
    atomic_uint_fast64_t next_job;
    /* engine_delivery.c: completions taken from the core but not yet
     * handed out (collect() hands out at most PP_COLLECT_BATCH per call,
     * fewer when they are large) */
    pp_msg *held;
    pp_msg *held_tail; /* the last of them when known: NULL when none,
                        * or not looked for (see hold_front) */
    size_t held_count;
    /* engine_delivery.c: the collector keeps the gate's account of its
     * completions (pp__engine_gate_armed); set once, under the object's
     * lock, with nothing held. */
    int gate_counting;
    /* engine_delivery.c: set once by bind_futures(), NULL before.  The
     * Future fast path's contract, see "Completion delivery" below. */
    PyObject *future_owner;
    PyObject *futures;
    /* engine_delivery.c: the chunks that came in part so far (see "A
     * chunk in parts" in docs/design.md), {(job, index): their results
     * so far, a list, or the exception that decoding a part raised};
     * NULL until the first part.  collect()'s alone, as is the count
     * of parts it took, ever (Engine.parts, for the tests). */
    PyObject *parts;
    uint64_t parts_taken;
    /* The arguments' pinned buffers (codec.c): tasks refer to the
     * caller's large bytes instead of copying them; collect() releases
     * those whose task is done, dealloc copies out the rest. */
    pp_pins pins;
} pp_engine_object;

#define PP_ENGINE(op) (((pp_engine_object *)(op))->engine)

/* Completion delivery, the contract between the collector (Python) and
 * engine_delivery.c.
 *
 * Engine.bind_futures(owner=) -> dict, once per Engine: from then on
 * submit_future(fn, args, kwargs) makes Futures whose cancel() calls
 * owner.cancel_future(future, job), and registers each in the returned
 * dict as {job id: Future} before queueing its task.  collect(timeout)
 * finishes, and removes from the dict, every such Future whose result
 * is successful (plain or pickled) and that nobody waits on; every other
 * completion comes back as a (job, index, kind, worker, payload) tuple,
 * for the owner to deliver and to remove from the dict.  A pool binds
 * the dict too, as its {job: result} cache: submit_apply(fn, args,
 * kwargs, callback, error_callback) is apply_async() the same way, and
 * collect() hands successful results (plain or pickled) of the result
 * types of result_type.c to them (pp__result_deliver), which then leave
 * the dict themselves.
 * Job ids come from new_job() or these calls, never from elsewhere.  The function
 * references submit_future uses come from the module's cache, filled by
 * _poolparty.remember_function(fn, data, flags). */

/* Engine methods defined outside engine_type.c, for its method table.
 * Each: main GIL, as every Engine method. */
PyObject *pp__engine_type_submit_map(PyObject *self, PyObject *const *args,
                                     Py_ssize_t nargs);
PyObject *pp__engine_type_collect(PyObject *self, PyObject *const *args,
                                  Py_ssize_t nargs);
PyObject *pp__engine_type_submit_future(PyObject *self,
                                        PyObject *const *args,
                                        Py_ssize_t nargs);
PyObject *pp__engine_type_bind_futures(PyObject *self, PyObject *args,
                                       PyObject *kwargs);
PyObject *pp__engine_type_submit_apply(PyObject *self, PyObject *const *args,
                                       Py_ssize_t nargs);
/* Engine.parts: how many chunk parts collect() took. */
PyObject *pp__engine_type_get_parts(PyObject *self, void *closure);
/* engine_delivery.c's part of the Engine's GC and dealloc: visit, clear
 * (references only) and free (also the held completions). */
int pp__engine_delivery_traverse(PyObject *self, visitproc visit, void *arg);
void pp__engine_delivery_clear(PyObject *self);
void pp__engine_delivery_free(PyObject *self);
/* _poolparty.function_ref(fn) and remember_function(fn, data, flags) */
PyObject *pp__module_function_ref(PyObject *module, PyObject *fn);
PyObject *pp__module_remember_function(PyObject *module,
                                       PyObject *const *args,
                                       Py_ssize_t nargs);

/* The pp_engine behind an Engine object (borrowed), or NULL with a
 * TypeError if `obj` is not one. */
pp_engine *pp__engine_from_object(pp_module_state *st, PyObject *obj);

/* The instance dict of our heap types whose base is a Python class (the
 * Future, the pool's results): their tp_traverse and tp_clear visit and
 * clear it, through the API 3.13 made public. */
static inline int
pp__visit_instance_dict(PyObject *op, visitproc visit, void *arg)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_VisitManagedDict(op, visit, arg);
#else
    return _PyObject_VisitManagedDict(op, visit, arg);
#endif
}

static inline void
pp__clear_instance_dict(PyObject *op)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject_ClearManagedDict(op);
#else
    _PyObject_ClearManagedDict(op);
#endif
}

/* An object's references listed once, for tp_traverse and tp_clear
 * alike: REFS(X) expands X(field) for each PyObject * field of `self`. */
#define PP_VISIT_REF(field) Py_VISIT(self->field);
#define PP_CLEAR_REF(field) Py_CLEAR(self->field);

/* NAME_traverse, NAME_clear and NAME_dealloc of a GC type whose base is
 * a Python class (the Future, the pool's results), objects of C type
 * TYPE: they visit and clear the fields REFS(X) names (see above), the
 * type and the instance dict; dealloc then calls RELEASE(op) to free
 * what else the object owns.  PP_GC_SLOTS(NAME) are their slots. */
#define PP_GC_FUNCTIONS(NAME, TYPE, REFS, RELEASE)                         \
    static int NAME##_traverse(PyObject *op, visitproc visit, void *arg)  \
    {                                                                      \
        TYPE *self = (TYPE *)op;                                           \
        Py_VISIT(Py_TYPE(op));                                             \
        REFS(PP_VISIT_REF)                                                 \
        return pp__visit_instance_dict(op, visit, arg);                    \
    }                                                                      \
    static int NAME##_clear(PyObject *op)                                  \
    {                                                                      \
        TYPE *self = (TYPE *)op;                                           \
        REFS(PP_CLEAR_REF)                                                 \
        pp__clear_instance_dict(op);                                       \
        return 0;                                                          \
    }                                                                      \
    static void NAME##_dealloc(PyObject *op)                               \
    {                                                                      \
        PyTypeObject *tp = Py_TYPE(op);                                    \
        PyObject_GC_UnTrack(op);                                           \
        PyObject_ClearWeakRefs(op);                                        \
        (void)NAME##_clear(op);                                            \
        RELEASE(op);                                                       \
        tp->tp_free(op);                                                   \
        Py_DECREF(tp);                                                     \
    }
/* A read-only attribute's PyGetSetDef entry. */
#define PP_READONLY(NAME, GET) {NAME, GET, NULL, NULL, NULL}
#define PP_GC_SLOTS(NAME)                                                  \
    {Py_tp_traverse, NAME##_traverse}, {Py_tp_clear, NAME##_clear},        \
        {Py_tp_dealloc, NAME##_dealloc}

/* Create a heap type from `spec` for `module`, store it in *slot and
 * add it to the module.  0 or -1 with an exception. */
int pp__add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot);

/* The Future type (future_type.c).  pp__future_new: a PENDING future
 * whose cancel() asks owner.cancel_future(future, job); new reference
 * or NULL.  pp__future_finishes_fast: 1 when finishing it runs no Python
 * code (nobody waits on it or has a callback on it yet). */
PyObject *pp__future_new(pp_future_support *support, PyObject *owner,
                         uint64_t job);
int pp__future_finishes_fast(PyObject *future);
/* Finish `future` with result `value` only if that runs no Python code,
 * checked and done in one locked step: 1 if finished, 0 if not. */
int pp__future_try_finish_fast(PyObject *future, PyObject *value);
/* _poolparty.future_type(base, invalid_state_error) */
PyObject *pp__module_future_type(PyObject *module, PyObject *const *args,
                                 Py_ssize_t nargs);
int pp__future_support_traverse(pp_future_support *support, visitproc visit,
                                void *arg);
void pp__future_support_clear(pp_future_support *support);

/* Add fork_guard_arm(), fork_guard_disarm() and FORK_CHILD_EXIT
 * (fork_guard.c) to the module.  0 or -1 with an exception. */
int pp__fork_guard_add(PyObject *module);

/* The pool's result types (result_type.c).  pp__result_deliver: give
 * `result` chunk `index`'s outcome if it is one of ours (1), else 0; -1
 * with an exception.  May run callbacks, and the result leaves its
 * cache when complete.  pp__result_is_ours: 1 if `obj` is one of these
 * types.  Both: main GIL, no lock held. */
int pp__result_deliver(pp_result_support *support, PyObject *result,
                       uint64_t index, int ok, PyObject *value);
int pp__result_is_ours(pp_result_support *support, PyObject *obj);
/* 1 while `result`, one of these types, is still in its cache (not yet
 * complete), else 0.  Main GIL. */
int pp__result_registered(pp_result_support *support, PyObject *result);
/* A pending ApplyResult for job `job` that leaves `cache` (a dict) when
 * complete; the caller registers it there.  New reference or NULL. */
PyObject *pp__apply_result_new(pp_result_support *support, PyObject *cache,
                               uint64_t job, PyObject *callback,
                               PyObject *error_callback);
/* _poolparty.result_types(ApplyResult, MapResult, IMapIterator,
 * IMapUnorderedIterator, TimeoutError, report) */
PyObject *pp__module_result_types(PyObject *module, PyObject *const *args,
                                  Py_ssize_t nargs);
int pp__result_support_traverse(pp_result_support *support, visitproc visit,
                                void *arg);
void pp__result_support_clear(pp_result_support *support);

/* Type creation, called from module exec. 0 or -1 with an exception. */
int pp__engine_type_add(PyObject *module, pp_module_state *st);
int pp__interpreter_type_add(PyObject *module, pp_module_state *st);
int pp__sampler_type_add(PyObject *module, pp_module_state *st);

#endif /* POOLPARTY_MODULE_H */
