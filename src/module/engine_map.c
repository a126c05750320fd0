/* Engine.submit_map: a whole map queued by one call -- items cut into
 * chunks, each chunk encoded (the codec, else pickle) into a task, tasks
 * queued a batch at a time.
 *
 * Runs in the main interpreter under its GIL (pickling calls back into
 * Python); the core's queue mutex is taken once per batch. */
#include "module.h"

/* Chunks queued per lock round: enough to make the lock and the wake-up
 * rare, few enough that workers start on the first chunks while the
 * rest are still being encoded. */
#define SUBMIT_BATCH 64

/* One chunk's argument payload: the codec's bytes for plain data, else
 * pickle_dumps(chunk).  Fills *task; 0, or -1 with an exception.  Needs:
 * main GIL. */
static int
chunk_task(uint64_t job, uint64_t index, uint32_t kind, const Py_buffer *func,
           PyObject *chunk, PyObject *pickle_dumps, pp_pins *pins,
           pp_msg **task)
{
    /* Encoded straight into the message, after the function (of a
     * by-value one, its header: the engine keeps its bytes). */
    size_t func_part = pp__fn_task_part(func->buf, (size_t)func->len);
    /* A starmap's argument tuples travel unnumbered, their items
     * inline: nothing can see a tuple that is unpacked into a call. */
    int rc = (kind & PP_TASK_KIND_MASK) == PP_TASK_STARMAP
                 ? pp__codec_encode_star_msg(chunk, func->buf, func_part,
                                             pins, task)
                 : pp__codec_encode_msg(chunk, func->buf, func_part, pins,
                                        task);
    if (rc < 0) {
        return -1;
    }
    if (rc > 0) {
        /* pickle_dumps(chunk, buffers) leaves pickle protocol 5's
         * out-of-band buffers in the list, to travel beside it. */
        PyObject *buffers = PyList_New(0);
        PyObject *pickled = buffers ? PyObject_CallFunctionObjArgs(
                                          pickle_dumps, chunk, buffers, NULL)
                                    : NULL;
        *task = pickled ? pp__task_from_pickle(func->buf, func_part, pickled,
                                               buffers, pins)
                        : NULL;
        Py_XDECREF(pickled);
        Py_XDECREF(buffers);
        if (*task == NULL) {
            return -1;
        }
    }
    (*task)->job = job;
    (*task)->index = index;
    (*task)->kind = kind;
    return 0;
}

/* *chunk made a list of items[0..size) (new references): the list
 * chunk_empty left there when it has that size, else a new one -- a
 * list made and freed per task was a tenth of the caller's CPU in a map
 * of 20,000 no-op tasks (perf).  0, or -1 with an exception.  Needs:
 * main GIL. */
static int
chunk_fill(PyObject **chunk, PyObject *const *items, Py_ssize_t size)
{
    if (*chunk != NULL && PyList_GET_SIZE(*chunk) != size) {
        Py_CLEAR(*chunk);
    }
    int reused = *chunk != NULL;
    if (!reused && (*chunk = PyList_New(size)) == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyList_SET_ITEM(*chunk, i, Py_NewRef(items[i]));
    }
    if (reused) {
        PyObject_GC_Track(*chunk); /* whole again: see chunk_empty */
    }
    return 0;
}

/* The chunk encoded: its items let go, the list kept for the next
 * chunk_fill while only this call holds it.  pickle_dumps runs Python
 * code that may have kept a reference (a __reduce__): such a list is
 * left whole to its holder, and dropped here.  The items' references
 * are never their last (the snapshot holds them too); and the emptied
 * list is out of the garbage collector's sight until it is filled, so
 * that no Python code (a finalizer calling gc.get_objects()) can see
 * its empty slots.  Needs: main GIL. */
static void
chunk_empty(PyObject **chunk)
{
    if (Py_REFCNT(*chunk) != 1) {
        Py_CLEAR(*chunk);
        return;
    }
    PyObject_GC_UnTrack(*chunk);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(*chunk); i++) {
        PyObject *item = PyList_GET_ITEM(*chunk, i);
        PyList_SET_ITEM(*chunk, i, NULL);
        Py_DECREF(item);
    }
}

/* Queue the chain of tasks of function `func`; on refusal free it.  0
 * when queued (or empty), 1 when refused.  Takes the queue mutex; GIL
 * held (briefly, as every push). */
static int
push_chain(pp_engine *engine, const Py_buffer *func, pp_msg **first,
           pp_msg **last, size_t *count)
{
    if (*count == 0) {
        return 0;
    }
    int refused = pp__engine_submit_fn(engine, *first, *count, func->buf,
                                       (size_t)func->len) != PP_OK;
    if (refused) {
        pp_msg_free_chain(*first);
    }
    *first = *last = NULL;
    *count = 0;
    return refused;
}

/* submit_map(job, kind, func_pickle, items, chunksize, pickle_dumps)
 *   -> (failures, refused_from)
 *
 * items (a sequence) is cut into lists of chunksize items, chunk i
 * becoming task (job, i); each is encoded by the codec, or by
 * pickle_dumps(chunk) when it is not plain data, and tasks are queued
 * SUBMIT_BATCH at a time.  This is the per-item cost of
 * map(chunksize=1): one Python call per map instead of a Python round
 * and a lock round per chunk.
 *
 * failures lists (index, exception) for chunks whose encoding raised an
 * Exception (they are not queued; the caller fails their results, as
 * multiprocessing does); refused_from is None, or the first chunk index
 * the engine refused because it stopped accepting work (that chunk and
 * every later one were not queued).  A BaseException that is not an
 * Exception (KeyboardInterrupt) propagates, after the chunks before it
 * were queued.  New reference or NULL.  Needs: main GIL. */
PyObject *
pp__engine_type_submit_map(PyObject *self, PyObject *const *args,
                           Py_ssize_t nargs)
{
    uint64_t job, kind, chunksize;
    if (pp__u64_args(args, nargs, 6,
                     "submit_map(job, kind, func_pickle, items, chunksize, "
                     "pickle_dumps)",
                     "014", &job, &kind, &chunksize) < 0) {
        return NULL;
    }
    if (chunksize == 0) {
        PyErr_SetString(PyExc_ValueError, "chunksize must be at least 1");
        return NULL;
    }
    PyObject *pickle_dumps = args[5];
    Py_buffer func;
    if (PyObject_GetBuffer(args[2], &func, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pp__refuse_header_only(func.buf, (size_t)func.len) < 0) {
        PyBuffer_Release(&func);
        return NULL;
    }
    /* A snapshot (a tuple is its own): pickle_dumps runs Python code (a
     * __reduce__, a garbage collection), and so may another thread on a
     * free-threaded build, either of which could shrink the caller's
     * list under the reads below. */
    PyObject *seq = PySequence_Tuple(args[3]);
    PyObject *failures = PyList_New(0);
    PyObject *result = NULL;
    pp_msg *first = NULL, *last = NULL;
    size_t count = 0;
    PyObject *refused_from = NULL;
    PyObject *chunk = NULL; /* see chunk_fill */
    if (seq == NULL || failures == NULL) {
        goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t step = chunksize > (uint64_t)PY_SSIZE_T_MAX
                          ? PY_SSIZE_T_MAX : (Py_ssize_t)chunksize;
    uint64_t index = 0;
    for (Py_ssize_t start = 0; start < n; index++) {
        Py_ssize_t size = n - start < step ? n - start : step;
        if (chunk_fill(&chunk, PySequence_Fast_ITEMS(seq) + start, size) <
            0) {
            goto done;
        }
        start += size;
        pp_msg *task = NULL;
        int rc = chunk_task(job, index, (uint32_t)kind, &func, chunk,
                            pickle_dumps, &((pp_engine_object *)self)->pins,
                            &task);
        chunk_empty(&chunk);
        if (rc < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                goto done;
            }
            PyObject *exc = PyErr_GetRaisedException();
            PyObject *entry = Py_BuildValue("(KN)", (unsigned long long)index,
                                            exc);
            if (entry == NULL || PyList_Append(failures, entry) < 0) {
                Py_XDECREF(entry);
                goto done;
            }
            Py_DECREF(entry);
        }
        if (task != NULL) {
            if (last == NULL) {
                first = task;
            }
            else {
                last->next = task;
            }
            last = task;
            count++;
        }
        if (count == SUBMIT_BATCH) {
            uint64_t batch_first = first->index;
            if (push_chain(PP_ENGINE(self), &func, &first, &last, &count)) {
                refused_from = PyLong_FromUnsignedLongLong(batch_first);
                goto finish;
            }
        }
    }
    if (count > 0) {
        uint64_t batch_first = first->index;
        if (push_chain(PP_ENGINE(self), &func, &first, &last, &count)) {
            refused_from = PyLong_FromUnsignedLongLong(batch_first);
            goto finish;
        }
    }
    refused_from = Py_NewRef(Py_None);
finish:
    if (refused_from != NULL) {
        result = PyTuple_Pack(2, failures, refused_from);
        Py_DECREF(refused_from);
    }
done:
    /* On an error, what was encoded so far is still queued, so that the
     * caller never owns tasks it cannot see. */
    if (count > 0) {
        PyObject *pending_exc = PyErr_GetRaisedException();
        push_chain(PP_ENGINE(self), &func, &first, &last, &count);
        PyErr_SetRaisedException(pending_exc);
    }
    Py_XDECREF(chunk);
    Py_XDECREF(failures);
    Py_XDECREF(seq);
    PyBuffer_Release(&func);
    return result;
}
