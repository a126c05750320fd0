/* _poolparty.GilSampler: the GIL contention sampler (gil_sampler.c) as a
 * Python object.  Methods run under the creating interpreter's GIL and
 * release it around starting and stopping the native threads. */
#include "module.h"

typedef struct {
    PyObject_HEAD
    pp_gil_sampler *sampler; /* NULL once stopped */
} SamplerObject;

#define SAMPLER(op) (((SamplerObject *)(op))->sampler)

/* GilSampler(engine=None, interval=0.001): starts sampling at once. */
static PyObject *
sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"engine", "interval", NULL};
    PyObject *engine_obj = Py_None;
    double interval = 0.001;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|Od", kwlist, &engine_obj,
                                     &interval)) {
        return NULL;
    }
    if (!(interval > 0 && interval < 60)) {
        PyErr_SetString(PyExc_ValueError,
                        "interval must be between 0 and 60 seconds");
        return NULL;
    }
    pp_module_state *st = pp__state_from_type(type);
    pp_engine *engine = NULL;
    if (engine_obj != Py_None) {
        engine = pp__engine_from_object(st, engine_obj);
        if (engine == NULL) {
            return NULL;
        }
    }
    PyObject *self = type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    pp_gil_sampler *sampler = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pp__gil_sampler_start(engine, (int64_t)(interval * 1e9), &sampler);
    if (rc != PP_OK && sampler != NULL) {
        double ignored_main;
        double *ignored = PyMem_RawCalloc(
            pp__gil_sampler_nworkers(sampler) + 1, sizeof(double));
        pp__gil_sampler_stop(sampler, &ignored_main,
                             ignored ? ignored : &ignored_main);
        PyMem_RawFree(ignored);
        pp__gil_sampler_free(sampler);
        sampler = NULL;
    }
    Py_END_ALLOW_THREADS
    if (rc != PP_OK) {
        Py_DECREF(self);
        return pp__raise(st, rc);
    }
    SAMPLER(self) = sampler;
    return self;
}

/* Stop and free the sampler; fills main/workers (caller-sized).  Needs:
 * the creating interpreter's GIL (released inside). */
static void
stop_sampler(PyObject *self, double *main_out, double *workers_out)
{
    pp_gil_sampler *sampler = SAMPLER(self);
    SAMPLER(self) = NULL;
    Py_BEGIN_ALLOW_THREADS
    pp__gil_sampler_stop(sampler, main_out, workers_out);
    pp__gil_sampler_free(sampler);
    Py_END_ALLOW_THREADS
}

static PyObject *
fraction_or_none(double fraction)
{
    if (fraction < 0) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(fraction);
}

/* stop() -> (main, [worker, ...]): fractions of time the sampler waited
 * for each GIL (None where it never got a sample). */
static PyObject *
sampler_stop(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (SAMPLER(self) == NULL) {
        PyErr_SetString(PyExc_ValueError, "the sampler was already stopped");
        return NULL;
    }
    uint32_t n = pp__gil_sampler_nworkers(SAMPLER(self));
    double main_fraction = -1;
    double *workers = PyMem_Calloc(n ? n : 1, sizeof(double));
    if (workers == NULL) {
        return PyErr_NoMemory();
    }
    stop_sampler(self, &main_fraction, workers);
    PyObject *list = PyList_New(n);
    for (uint32_t i = 0; list != NULL && i < n; i++) {
        PyObject *item = fraction_or_none(workers[i]);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    PyMem_Free(workers);
    if (list == NULL) {
        return NULL;
    }
    PyObject *main_obj = fraction_or_none(main_fraction);
    if (main_obj == NULL) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(NN)", main_obj, list);
}

static void
sampler_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (SAMPLER(self) != NULL) {
        uint32_t n = pp__gil_sampler_nworkers(SAMPLER(self));
        double main_fraction;
        double *workers = PyMem_Calloc(n ? n : 1, sizeof(double));
        if (workers != NULL) {
            stop_sampler(self, &main_fraction, workers);
            PyMem_Free(workers);
        }
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef sampler_methods[] = {
    {"stop", sampler_stop, METH_NOARGS,
     "stop() -> (main, [worker, ...]): stop sampling; each value is the "
     "fraction of time spent waiting for that GIL (None: no sample)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sampler_slots[] = {
    {Py_tp_new, sampler_new},
    {Py_tp_dealloc, sampler_dealloc},
    {Py_tp_methods, sampler_methods},
    {Py_tp_doc, "GilSampler(engine=None, interval=0.001): sample GIL "
                "contention of the main interpreter and of an engine's "
                "workers, from native threads, until stop()."},
    {0, NULL},
};

static PyType_Spec sampler_spec = {
    .name = "_poolparty.GilSampler",
    .basicsize = sizeof(SamplerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = sampler_slots,
};

int
pp__sampler_type_add(PyObject *module, pp_module_state *st)
{
    return pp__add_type(module, &sampler_spec, &st->sampler_type);
}
