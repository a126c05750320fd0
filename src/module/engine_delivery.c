/* Completion delivery and the Executor's Future fast path.
 *
 * Engine.collect() hands the collector thread the completions, a
 * bounded batch at a time; Engine.submit_future() is
 * SubinterpreterPoolExecutor.submit() in one C call, and collect()
 * finishes that path's successful results in C.  The contract with the
 * Python side (bind_futures, the {job: Future} dict, the function
 * reference cache) is written in module.h under "Completion delivery";
 * the layouts here are this file's own.
 *
 * Everything runs in the main interpreter under its GIL; collect()
 * releases it while it waits for completions. */
#include "module.h"

/* Function references kept at most; past that the cache starts over (a
 * program calling more distinct functions than this pays a pickle.dumps
 * per new function, as without the cache). */
#define FUNC_REFS_MAX 256

/* dict[key] as a new reference, NULL (no exception) when missing, or
 * NULL with an exception. */
static PyObject *
dict_get_ref(PyObject *dict, PyObject *key)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *value = NULL;
    (void)PyDict_GetItemRef(dict, key, &value);
    return value;
#else
    return Py_XNewRef(PyDict_GetItemWithError(dict, key));
#endif
}

/* ---- the function reference cache -------------------------------- */

/* fn's (data, flags) pair from the cache: a new reference, NULL (no
 * exception) when fn is not in it, or NULL with an exception.  Entries
 * are (fn, (data, flags)) keyed by id(fn): the entry keeps fn alive, so
 * the id is fn's only while entry[0] is fn.  Needs: main GIL. */
static PyObject *
func_ref_get(pp_module_state *st, PyObject *fn)
{
    if (st->func_refs == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(fn);
    if (key == NULL) {
        return NULL;
    }
    PyObject *entry = dict_get_ref(st->func_refs, key);
    Py_DECREF(key);
    if (entry == NULL) {
        return NULL;
    }
    PyObject *pair = NULL;
    if (PyTuple_GET_ITEM(entry, 0) == fn) {
        pair = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
    }
    Py_DECREF(entry);
    return pair;
}

/* function_ref(fn) -> (data, flags) remembered for fn, or None. */
PyObject *
pp__module_function_ref(PyObject *module, PyObject *fn)
{
    PyObject *pair = func_ref_get(PyModule_GetState(module), fn);
    if (pair == NULL && !PyErr_Occurred()) {
        return Py_NewRef(Py_None);
    }
    return pair;
}

/* remember_function(fn, data, flags): what _engine.function_pickle
 * found fn's reference to be (data: bytes, flags: PP_TASK_* bits), for
 * it and for submit_future to reuse. */
PyObject *
pp__module_remember_function(PyObject *module, PyObject *const *args,
                             Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "remember_function(fn, data: bytes, flags: int)");
        return NULL;
    }
    uint64_t flags;
    if (pp__as_u64(args[2], &flags) < 0) {
        return NULL;
    }
    pp_module_state *st = PyModule_GetState(module);
    if (st->func_refs == NULL) {
        st->func_refs = PyDict_New();
        if (st->func_refs == NULL) {
            return NULL;
        }
    }
    if (PyDict_GET_SIZE(st->func_refs) >= FUNC_REFS_MAX) {
        PyDict_Clear(st->func_refs);
    }
    PyObject *key = PyLong_FromVoidPtr(args[0]);
    PyObject *entry = Py_BuildValue("(O(OO))", args[0], args[1], args[2]);
    int rc = -1;
    if (key != NULL && entry != NULL) {
        rc = PyDict_SetItem(st->func_refs, key, entry);
    }
    Py_XDECREF(key);
    Py_XDECREF(entry);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- binding an owner for futures -------------------------------- */

/* bind_futures(*, owner) -> the {job: Future} dict of this engine's
 * fast-path futures.  Once per Engine. */
PyObject *
pp__engine_type_bind_futures(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"owner", NULL};
    PyObject *owner;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$O:bind_futures", kwlist,
                                     &owner)) {
        return NULL;
    }
    PyObject *futures = PyDict_New();
    if (futures == NULL) {
        return NULL;
    }
    pp_engine_object *eo = (pp_engine_object *)self;
    int bound_before;
    PP_LOCK_OBJECT(self);
    bound_before = eo->futures != NULL;
    if (!bound_before) {
        eo->future_owner = Py_NewRef(owner);
        eo->futures = Py_NewRef(futures);
    }
    PP_UNLOCK_OBJECT();
    if (bound_before) {
        Py_DECREF(futures);
        PyErr_SetString(PyExc_RuntimeError,
                        "bind_futures(): this Engine has an owner already");
        return NULL;
    }
    return futures;
}

/* The bound owner and dict as new references in *owner, *futures; both
 * NULL when unbound.  Needs: main GIL. */
static void
bound_futures(PyObject *self, PyObject **owner, PyObject **futures)
{
    pp_engine_object *eo = (pp_engine_object *)self;
    PP_LOCK_OBJECT(self);
    *owner = Py_XNewRef(eo->future_owner);
    *futures = Py_XNewRef(eo->futures);
    PP_UNLOCK_OBJECT();
}

/* ---- submit_future and submit_apply -------------------------------- */

/* Makes the result object of a fast-path call for job `job`: PENDING,
 * not yet in `results`.  New reference, or NULL with an exception. */
typedef PyObject *(*make_result_fn)(pp_module_state *st, PyObject *owner,
                                    PyObject *results, uint64_t job,
                                    PyObject *const *extra);

/* The fast path of one call, fn(*fargs, **fkwargs), in one C call: fn's
 * reference from the cache, the arguments through the codec, a result
 * object from make() registered in the bound dict under a new job id,
 * and the task queued.  None when any of it does not apply (no owner
 * bound, fn not cached yet, arguments that need pickle, the engine
 * closed): the caller then takes the Python path, which pickles and
 * raises the right errors.  Needs: main GIL. */
static PyObject *
submit_call(PyObject *self, PyObject *fn, PyObject *fargs, PyObject *fkwargs,
            make_result_fn make, PyObject *const *extra)
{
    pp_module_state *st = pp__state_from_type(Py_TYPE(self));
    PyObject *owner, *futures;
    bound_futures(self, &owner, &futures);
    if (futures == NULL) {
        Py_XDECREF(owner);
        return Py_NewRef(Py_None);
    }
    PyObject *result = NULL, *payload = NULL, *future = NULL,
             *job_key = NULL;
    pp_msg *task = NULL;
    unsigned long flags;
    PyObject *ref = func_ref_get(st, fn);
    if (ref == NULL) {
        if (!PyErr_Occurred()) {
            result = Py_NewRef(Py_None);
        }
        goto done;
    }
    flags = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(ref, 1));
    if (flags == (unsigned long)-1 && PyErr_Occurred()) {
        goto done;
    }
    if (fkwargs != Py_None && (!PyDict_Check(fkwargs) ||
                               PyDict_GET_SIZE(fkwargs) == 0)) {
        fkwargs = Py_None; /* as the Python path: `kwargs or None` */
    }
    payload = PyTuple_Pack(2, fargs, fkwargs);
    if (payload == NULL) {
        goto done;
    }
    /* Encoded straight into the task, after the function's reference
     * (of a by-value one, its header: the engine keeps its bytes). */
    PyObject *func = PyTuple_GET_ITEM(ref, 0);
    const char *func_data = PyBytes_AS_STRING(func);
    size_t func_size = (size_t)PyBytes_GET_SIZE(func);
    int rc = pp__codec_encode_msg(payload, func_data,
                                  pp__fn_task_part(func_data, func_size),
                                  &((pp_engine_object *)self)->pins, &task);
    if (rc != 0) {
        if (rc > 0) {
            result = Py_NewRef(Py_None); /* needs pickle */
        }
        goto done;
    }
    uint64_t job =
        atomic_fetch_add(&((pp_engine_object *)self)->next_job, 1);
    future = make(st, owner, futures, job, extra);
    job_key = PyLong_FromUnsignedLongLong((unsigned long long)job);
    if (future == NULL || job_key == NULL) {
        goto done;
    }
    /* Registered before it is queued: on a free-threaded build the
     * result can come back before this call returns. */
    if (PyDict_SetItem(futures, job_key, future) < 0) {
        goto done;
    }
    task->job = job;
    task->kind = PP_TASK_CALL | (uint32_t)flags;
    rc = pp__engine_submit_fn(PP_ENGINE(self), task, 1, func_data,
                              func_size);
    if (rc == PP_OK) {
        task = NULL; /* the queue's now */
    }
    else {
        /* Closed or terminated: the Python path says so properly. */
        if (PyDict_DelItem(futures, job_key) < 0) {
            goto done;
        }
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = Py_NewRef(future);
done:
    pp_msg_free(task);
    Py_XDECREF(job_key);
    Py_XDECREF(future);
    Py_XDECREF(payload);
    Py_XDECREF(ref);
    Py_XDECREF(owner);
    Py_DECREF(futures);
    return result;
}

static PyObject *
make_future(pp_module_state *st, PyObject *owner,
            PyObject *Py_UNUSED(results), uint64_t job,
            PyObject *const *Py_UNUSED(extra))
{
    return pp__future_new(&st->future, owner, job);
}

/* submit_future(fn, args, kwargs) -> Future or None: the executor's
 * submit(), see submit_call.  Needs: main GIL. */
PyObject *
pp__engine_type_submit_future(PyObject *self, PyObject *const *args,
                              Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "submit_future(fn, args: tuple, kwargs)");
        return NULL;
    }
    if (pp__state_from_type(Py_TYPE(self))->future.type == NULL) {
        return Py_NewRef(Py_None);
    }
    return submit_call(self, args[0], args[1], args[2], make_future, NULL);
}

static PyObject *
make_apply(pp_module_state *st, PyObject *Py_UNUSED(owner),
           PyObject *results, uint64_t job, PyObject *const *extra)
{
    return pp__apply_result_new(&st->result, results, job, extra[0],
                                extra[1]);
}

/* submit_apply(fn, args, kwargs, callback, error_callback) ->
 * ApplyResult or None: the pool's apply_async(), see submit_call; the
 * bound dict is the pool's result cache.  Needs: main GIL. */
PyObject *
pp__engine_type_submit_apply(PyObject *self, PyObject *const *args,
                             Py_ssize_t nargs)
{
    if (nargs != 5 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "submit_apply(fn, args: tuple, kwargs, callback, "
                        "error_callback)");
        return NULL;
    }
    if (pp__state_from_type(Py_TYPE(self))->result.apply_type == NULL) {
        return Py_NewRef(Py_None);
    }
    return submit_call(self, args[0], args[1], args[2], make_apply,
                       args + 3);
}

/* ---- collect ------------------------------------------------------ */

/* The pool result that a collect() handed the previous plain
 * completion to: the chunks of one map or imap come in runs of the same
 * job, and a run looks its result up in the dict once, not per chunk. */
typedef struct {
    uint64_t job;
    PyObject *result; /* strong reference; NULL when none */
} recent_result;

/* A successful completion's value: the codec's decoding, or
 * pickle_loads of its bytes, as the Python loop does.  New reference;
 * NULL with an exception if unpickling raised (whatever it raised fails
 * just this task, see *unpickled), or NULL with the exception cleared if
 * the codec failed (the Python loop decodes it again and fails just this
 * task).  pickle_loads is never NULL: it is made with the types a target
 * must be of to get here.  *unpickled: 1 if pickle ran.  Needs: main
 * GIL. */
static PyObject *
result_value(PyObject *pickle_loads, const pp_msg *msg, int *unpickled)
{
    *unpickled = !pp__codec_is(msg->data, msg->size);
    if (!*unpickled) {
        PyObject *value = pp__codec_decode_msg(msg, 0);
        if (value == NULL) {
            PyErr_Clear();
        }
        return value;
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)msg->data,
                                               (Py_ssize_t)msg->size);
    PyObject *value =
        data ? PyObject_CallOneArg(pickle_loads, data) : NULL;
    Py_XDECREF(data);
    return value;
}

/* The fast path of the bound objects' results: a successful result
 * (codec or pickle) for a Future of ours that nobody waits on, or for
 * one of the pool's result objects (result_type.c), is decoded and set
 * here, with no tuple and no trip through the collector's Python loop
 * (a pool result may run its callback; a pickled result spent more in
 * that loop than in pickle).  Anything else (errors, futures with
 * waiters or callbacks) is left to that loop; so is a value whose
 * unpickling raised, and one unpickled for a future that gained a
 * waiter meanwhile, each as *handout, the loop's tuple of an
 * undecodable or a decoded completion, so that nothing is unpickled
 * twice.  `given`, when not NULL, is the value, decoded already (a
 * chunk that came in parts; borrowed).  `recent` is the pool result of
 * the previous call, updated here.  1 if done here, 0 if not, -1 with
 * an exception.
 * Needs: main GIL. */
static int
finish_here(pp_module_state *st, PyObject *futures, const pp_msg *msg,
            PyObject *given, recent_result *recent, PyObject **handout)
{
    *handout = NULL;
    if (msg->kind != PP_DONE_OK) {
        return 0;
    }
    int done = 0, future = 0, unpickled = 0;
    PyObject *key = NULL, *value = NULL, *target = NULL;
    /* Still registered is what the dict would say: a result leaves it
     * only when complete, and then says so itself. */
    if (recent->result != NULL && recent->job == msg->job &&
        pp__result_registered(&st->result, recent->result)) {
        target = Py_NewRef(recent->result);
    }
    else {
        key = PyLong_FromUnsignedLongLong((unsigned long long)msg->job);
        if (key == NULL) {
            return -1;
        }
        target = dict_get_ref(futures, key);
        if (target == NULL) {
            done = PyErr_Occurred() ? -1 : 0;
            goto out;
        }
        future = st->future.type != NULL &&
                 Py_IS_TYPE(target, st->future.type);
        if (future ? !pp__future_finishes_fast(target)
                   : !pp__result_is_ours(&st->result, target)) {
            goto out;
        }
        if (!future) {
            Py_XSETREF(recent->result, Py_NewRef(target));
            recent->job = msg->job;
        }
    }
    value = given != NULL ? Py_NewRef(given)
                          : result_value(st->pickle_loads, msg, &unpickled);
    if (value == NULL) {
        if (unpickled) {
            *handout = pp__completion_tuple_of(msg, PP_DONE_UNDECODABLE,
                                     PyErr_GetRaisedException());
            done = *handout == NULL ? -1 : 0;
        }
        goto out;
    }
    if (!future) {
        /* It leaves the dict itself once complete. */
        done = pp__result_deliver(&st->result, target, msg->index, 1, value);
    }
    /* Decoding may have run a garbage collection, and with it any code,
     * and on a free-threaded build another thread may have made the
     * future's condition meanwhile: finish it only if that is still not
     * so, in one step.  Else the Python loop does it the stdlib's way. */
    else if (pp__future_try_finish_fast(target, value)) {
        /* Finished: nothing else touches its entry any more.  It counts
         * as handed out even if its removal fails (held again, it would
         * be finished twice: InvalidStateError); the entry then only
         * lingers. */
        if (PyDict_DelItem(futures, key) < 0) {
            PyErr_WriteUnraisable(key);
        }
        done = 1;
    }
    else if (unpickled || given != NULL) {
        /* Not decoded again: unpickling can have side effects (and
         * parts are gone). */
        *handout = pp__completion_tuple_of(msg, PP_DONE_DECODED,
                                           Py_NewRef(value));
        done = *handout == NULL ? -1 : 0;
    }
out:
    Py_XDECREF(value);
    Py_XDECREF(target);
    Py_XDECREF(key);
    return done;
}

/* ---- a chunk in parts (docs/design.md, "A chunk in parts") ---------- */

/* The key of msg's chunk in eo->parts.  New reference or NULL.
 * Needs: main GIL. */
static PyObject *
part_key(const pp_msg *msg)
{
    return Py_BuildValue("(KK)", (unsigned long long)msg->job,
                         (unsigned long long)msg->index);
}

/* Take a PP_DONE_PART: decode it and add its results to its chunk's so
 * far.  A part that fails to decode fails its chunk, as a whole chunk
 * that failed to decode would (the rest of its parts are dropped, its
 * last message delivers the exception).  0, or -1 with an exception
 * and nothing changed (out of memory: the part is taken again by the
 * next call).  Needs: main GIL. */
static int
take_part(pp_engine_object *eo, const pp_msg *msg)
{
    int rc = -1;
    PyObject *sofar = NULL, *value = NULL;
    PyObject *key = part_key(msg);
    if (key == NULL ||
        (eo->parts == NULL && (eo->parts = PyDict_New()) == NULL)) {
        goto done;
    }
    sofar = dict_get_ref(eo->parts, key);
    if (sofar == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (sofar != NULL && !PyList_CheckExact(sofar)) {
        rc = 0; /* failed already */
        goto done;
    }
    Py_ssize_t have = sofar != NULL ? PyList_GET_SIZE(sofar) : 0;
    if (msg->first != (uint64_t)have) {
        /* A chunk's parts come from one worker through one FIFO queue,
         * in order: a gap means a part was lost, and the results after
         * it would land in the wrong places.  Fail the chunk instead. */
        PyErr_Format(PyExc_RuntimeError,
                     "poolparty: a chunk's part starts at its result %llu, "
                     "after %zd (please report this)",
                     (unsigned long long)msg->first, have);
    }
    else {
        value = pp__codec_decode_msg(msg, 0);
    }
    if (value != NULL && !PyList_CheckExact(value)) {
        Py_SETREF(value, NULL);
        PyErr_SetString(PyExc_TypeError,
                        "poolparty: a chunk's part is not a list");
    }
    if (value == NULL) {
        value = PyErr_GetRaisedException();
        rc = PyDict_SetItem(eo->parts, key, value);
    }
    else if (sofar == NULL) {
        rc = PyDict_SetItem(eo->parts, key, value);
    }
    else {
        Py_ssize_t n = PyList_GET_SIZE(sofar);
        rc = PyList_SetSlice(sofar, n, n, value);
    }
done:
    Py_XDECREF(value);
    Py_XDECREF(sofar);
    Py_XDECREF(key);
    return rc;
}

/* The last message of msg's chunk, if parts of it came before: if msg
 * carries the rest of the results, *merged is all of them, in order
 * (*kind PP_DONE_DECODED), or the exception that decoding a part or msg
 * raised (PP_DONE_UNDECODABLE); if the rest could not be sent, the pair
 * (the parts' results, msg's payload) (PP_DONE_UNPICKLABLE_PARTS); a
 * task that raised fails the chunk as it is (*merged NULL).
 * *key is the chunk's key in eo->parts, for parts_delivered, or NULL
 * when no parts came.  The entry stays, as the pair (kind, merged),
 * until the chunk is delivered: a delivery that fails (out of memory)
 * keeps msg for the next call, which finds that pair instead of
 * decoding msg again.  0, or -1 with an exception.  Needs: main GIL. */
static int
end_parts(pp_engine_object *eo, PyObject *pickle_loads, const pp_msg *msg,
          PyObject **key, PyObject **merged, unsigned *kind)
{
    *key = *merged = NULL;
    *kind = msg->kind;
    /* Nothing in parts (every no-op map): no lookup. */
    if (eo->parts == NULL || PyDict_GET_SIZE(eo->parts) == 0) {
        return 0;
    }
    int rc = -1;
    PyObject *value = NULL, *sofar = NULL, *entry = NULL;
    *key = part_key(msg);
    if (*key == NULL) {
        goto done;
    }
    sofar = dict_get_ref(eo->parts, *key);
    if (sofar == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        Py_CLEAR(*key);
        goto done;
    }
    if (PyTuple_CheckExact(sofar)) {
        /* Merged by a call whose delivery failed. */
        *kind = (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(sofar, 0));
        *merged = Py_NewRef(PyTuple_GET_ITEM(sofar, 1));
        rc = 0;
        goto done;
    }
    if (msg->kind == PP_DONE_UNPICKLABLE && PyList_CheckExact(sofar)) {
        /* The rest could not be sent: the collector's Python loop makes
         * the error with the parts' reprs in front of the rest's, as the
         * whole chunk's repr would have been (decode(), _engine.py). */
        *merged = Py_BuildValue("(Oy#)", sofar, (const char *)msg->data,
                                (Py_ssize_t)msg->size);
        *kind = PP_DONE_UNPICKLABLE_PARTS;
    }
    else if (msg->kind != PP_DONE_OK) {
        rc = 0; /* the task raised: the chunk fails as it is */
        goto done;
    }
    else if (!PyList_CheckExact(sofar)) {
        *merged = Py_NewRef(sofar); /* a part's exception */
        *kind = PP_DONE_UNDECODABLE;
    }
    else {
        int unpickled;
        value = result_value(pickle_loads, msg, &unpickled);
        if (value == NULL && !unpickled) {
            /* result_value dropped the codec's exception: make it again. */
            value = pp__codec_decode_msg(msg, 0);
        }
        if (value != NULL && !PyList_Check(value)) {
            Py_SETREF(value, NULL);
            PyErr_SetString(PyExc_TypeError,
                            "poolparty: a chunk's last part is not a list");
        }
        *merged = value != NULL ? Py_NewRef(sofar)
                                : PyErr_GetRaisedException();
        *kind = value != NULL ? PP_DONE_DECODED : PP_DONE_UNDECODABLE;
    }
    entry = *merged != NULL ? Py_BuildValue("(IO)", *kind, *merged) : NULL;
    if (entry == NULL) {
        goto done;
    }
    /* Last, so that nothing is changed when something fails before. */
    if (value != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(sofar);
        if (PyList_SetSlice(sofar, n, n, value) < 0) {
            goto done;
        }
    }
    /* Replaces the value of a key that is there: cannot fail. */
    rc = PyDict_SetItem(eo->parts, *key, entry);
done:
    if (rc < 0) {
        Py_CLEAR(*merged);
        Py_CLEAR(*key);
    }
    Py_XDECREF(entry);
    Py_XDECREF(value);
    Py_XDECREF(sofar);
    return rc;
}

/* The chunk of `key` (end_parts) is delivered: its entry goes.  Takes
 * the reference to key (NULL is fine).  Needs: main GIL. */
static void
parts_delivered(pp_engine_object *eo, PyObject *key)
{
    if (key != NULL && PyDict_DelItem(eo->parts, key) < 0) {
        PyErr_WriteUnraisable(key); /* cannot be: the key is there */
    }
    Py_XDECREF(key);
}

/* Start fetching a completion's header and the start of its data into
 * the cache (NULL is fine).  Needs: nothing. */
static inline void
prefetch_msg(const pp_msg *msg)
{
#if defined(__GNUC__) || defined(__clang__)
    if (msg != NULL) {
        __builtin_prefetch(msg);
        __builtin_prefetch(msg->data);
    }
#else
    (void)msg;
#endif
}

/* Put the chain of `count` completions from `first` in front of the
 * held ones.  `tail` is its last message when known, else NULL: it is
 * found only if something is held already and must be linked behind
 * it, which takes another caller holding completions meanwhile.  (A
 * backlog of thousands of completions, walked to its end on every take,
 * cost the collector one more cache miss per completion: a tenth of its
 * time for an imap of no-op tasks, by perf.)  Needs: main GIL. */
static void
hold_front(PyObject *self, pp_msg *first, pp_msg *tail, size_t count)
{
    pp_engine_object *eo = (pp_engine_object *)self;
    int linked;
    PP_LOCK_OBJECT(self);
    linked = eo->held == NULL;
    if (linked) {
        eo->held = first;
        eo->held_tail = tail;
        eo->held_count = count;
    }
    PP_UNLOCK_OBJECT();
    if (linked) {
        return;
    }
    if (tail == NULL) {
        for (tail = first; tail->next != NULL; tail = tail->next) {
        }
    }
    PP_LOCK_OBJECT(self);
    tail->next = eo->held;
    if (eo->held == NULL) {
        eo->held_tail = tail;
    }
    eo->held = first;
    eo->held_count += count;
    PP_UNLOCK_OBJECT();
}

/* Put the chain from `first` back in front of the held completions:
 * collect() could not hand them out.  Needs: main GIL. */
static void
hold_again(PyObject *self, pp_msg *first)
{
    size_t count = 1;
    pp_msg *tail = first;
    for (; tail->next != NULL; tail = tail->next) {
        count++;
    }
    hold_front(self, first, tail, count);
}

/* CLOCK_MONOTONIC now, in ns. */
static int64_t
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* collect(timeout=None) -> list of completions as (job, index, kind,
 * worker, payload) tuples, [] on timeout, or None once every worker has
 * exited and all was collected.  At most PP_COLLECT_BATCH per call,
 * fewer when large (see module.h); the futures' fast results are
 * finished here and left out (see "Completion delivery" in module.h).  Needs: main GIL, released
 * while waiting. */
PyObject *
pp__engine_type_collect(PyObject *self, PyObject *const *args,
                        Py_ssize_t nargs)
{
    int64_t timeout_ns = -1;
    if (pp__timeout_arg(args, nargs, "collect(timeout=None)",
                        &timeout_ns) < 0) {
        return NULL;
    }
    pp_engine_object *eo = (pp_engine_object *)self;
    pp_msg *first = NULL, *tail = NULL;
    size_t count = 0;
    /* The caller's buffers that finished tasks referred to go here, under
     * the main GIL (see codec.c's pins). */
    pp__pins_sweep(&eo->pins);
    int counting; /* the gate's account: see pp__engine_gate_armed */
    PP_LOCK_OBJECT(self);
    first = eo->held;
    tail = eo->held_tail;
    count = eo->held_count;
    eo->held = eo->held_tail = NULL;
    eo->held_count = 0;
    if (first == NULL && !eo->gate_counting &&
        pp__engine_gate_armed(PP_ENGINE(self))) {
        eo->gate_counting = 1;
    }
    counting = eo->gate_counting;
    PP_UNLOCK_OBJECT();
    if (first == NULL) {
        int rc;
        if (counting) {
            pp__engine_waiting(PP_ENGINE(self));
        }
        Py_BEGIN_ALLOW_THREADS
        rc = pp__engine_collect(PP_ENGINE(self), timeout_ns, &first, &count);
        Py_END_ALLOW_THREADS
        if (rc == PP_ECLOSED) {
            /* Nothing comes any more: parts of chunks that terminate()
             * abandoned (their failure went by another path) wait for a
             * last message that never comes.  Their results go now, not
             * with the Engine. */
            Py_CLEAR(eo->parts);
            Py_RETURN_NONE;
        }
        if (rc == PP_ETIMEDOUT) {
            return PyList_New(0);
        }
        if (counting) {
            pp__engine_decoding(PP_ENGINE(self), count);
        }
    }
    /* How long the batch takes is the engine's measure of how far behind
     * the collector is (the gate, engine.c). */
    int64_t started = counting ? monotonic_ns() : -1;
    /* Parts and large completions are timed whenever the engine is gated
     * (the collector's side of the gate's measure: the workers time
     * their side, which arms the gate). */
    int timing = pp__engine_gated(PP_ENGINE(self));
    size_t untimed = 0;
    PyObject *owner, *futures;
    bound_futures(self, &owner, &futures);
    Py_XDECREF(owner);
    pp_module_state *st = pp__state_from_type(Py_TYPE(self));
    PyObject *list = PyList_New(0);
    /* The first completion not handed out (on an error), and the one
     * before it. */
    pp_msg *failed = list == NULL ? first : NULL, *before = NULL;
    pp_msg *msg = first;
    size_t taken = 0, bytes = 0;
    recent_result recent = {0, NULL};
    /* The collector's CPU time when it began on a part or a large
     * completion, which the gate weighs against the worker's time to make
     * it (engine.c); -1 for any other.  CPU time, not the wall clock: the
     * gate asks how much of a core decoding takes, whatever share of one
     * it is given.  Reported when the next one begins, or the batch ends
     * well. */
    int64_t timed_from = -1;
    /* At most PP_COLLECT_BATCH, or fewer that carry PP_COLLECT_BYTES
     * (at least one); the rest stay held for the next calls. */
    for (; failed == NULL && msg != NULL; before = msg, msg = msg->next) {
        if (taken == PP_COLLECT_BATCH ||
            (taken > 0 && bytes >= PP_COLLECT_BYTES)) {
            break;
        }
        /* The next completion, fetched while this one is handed out: it
         * was written on a worker's core and is seldom in this one's
         * cache, and the chain can only be walked a step at a time (a
         * walk ahead to count the batch missed once per completion, a
         * quarter of the collector's time for an imap of no-op tasks). */
        prefetch_msg(msg->next);
        bytes += pp__codec_msg_bytes(msg);
        taken++;
        if (timed_from >= 0) {
            pp__engine_decoded_cpu(
                PP_ENGINE(self),
                pp__clock_ns(CLOCK_THREAD_CPUTIME_ID) - timed_from);
            timed_from = -1;
        }
        if (timing && (msg->kind == PP_DONE_PART ||
                       msg->size >= PP_TIMED_RESULT_BYTES)) {
            /* 2 ms of a worker's CPU, or a result of 64 KB or more: two
             * clock reads are nothing to it. */
            timed_from = pp__clock_ns(CLOCK_THREAD_CPUTIME_ID);
        }
        else {
            untimed++;
        }
        if (msg->kind == PP_DONE_PART) {
            if (take_part(eo, msg) < 0) {
                failed = msg;
                break;
            }
            eo->parts_taken++;
            continue;
        }
        PyObject *item = NULL, *key = NULL, *merged = NULL;
        unsigned kind;
        if (end_parts(eo, st->pickle_loads, msg, &key, &merged, &kind) < 0) {
            failed = msg;
            break;
        }
        if (futures != NULL && (merged == NULL || kind == PP_DONE_DECODED)) {
            /* The executor's Futures, or the pool's results. */
            int done = finish_here(st, futures, msg, merged, &recent, &item);
            if (done != 0) {
                Py_XDECREF(merged);
                if (done < 0) {
                    Py_XDECREF(key);
                    failed = msg;
                    break;
                }
                parts_delivered(eo, key);
                continue;
            }
        }
        if (item == NULL) {
            item = merged != NULL
                       ? pp__completion_tuple_of(msg, kind, Py_NewRef(merged))
                       : pp__completion_tuple(msg);
        }
        Py_XDECREF(merged);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_XDECREF(key);
            failed = msg;
            break;
        }
        Py_DECREF(item);
        parts_delivered(eo, key);
    }
    if (timed_from >= 0 && failed == NULL) {
        pp__engine_decoded_cpu(
            PP_ENGINE(self),
            pp__clock_ns(CLOCK_THREAD_CPUTIME_ID) - timed_from);
    }
    if (timing && untimed > 0) {
        pp__engine_untimed(PP_ENGINE(self), untimed);
    }
    Py_XDECREF(recent.result);
    Py_XDECREF(futures);
    if (before != NULL) {
        before->next = NULL; /* ends the chain handed out */
    }
    size_t handed = failed != NULL && taken > 0 ? taken - 1 : taken;
    if (failed != NULL) {
        /* Out of memory, say.  Lose nothing (those results would never
         * come) and deliver nothing twice: the completions from `failed`
         * on stay held for the next call.  If some were handed out, they
         * are returned and the error is dropped -- the next call meets it
         * again if it persists; if none were, it is raised. */
        hold_again(self, failed);
        if (before == NULL) {
            Py_XDECREF(list);
            return NULL;
        }
        PyErr_Clear();
    }
    else if (msg != NULL) {
        hold_front(self, msg, tail, count - taken);
    }
    pp_msg_free_chain(first);
    if (counting) {
        pp__engine_collected(PP_ENGINE(self), handed,
                             monotonic_ns() - started);
    }
    return list;
}

/* See module.h.  Needs: main GIL. */
PyObject *
pp__engine_type_get_parts(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(
        (unsigned long long)((pp_engine_object *)self)->parts_taken);
}

/* ---- the Engine's GC, this file's part --------------------------- */

int
pp__engine_delivery_traverse(PyObject *self, visitproc visit, void *arg)
{
    pp_engine_object *eo = (pp_engine_object *)self;
    Py_VISIT(eo->future_owner);
    Py_VISIT(eo->futures);
    Py_VISIT(eo->parts);
    return 0;
}

void
pp__engine_delivery_clear(PyObject *self)
{
    pp_engine_object *eo = (pp_engine_object *)self;
    Py_CLEAR(eo->future_owner);
    Py_CLEAR(eo->futures);
    Py_CLEAR(eo->parts);
}

void
pp__engine_delivery_free(PyObject *self)
{
    pp_engine_object *eo = (pp_engine_object *)self;
    pp__engine_delivery_clear(self);
    pp_msg_free_chain(eo->held);
    eo->held = eo->held_tail = NULL;
    eo->held_count = 0;
}
