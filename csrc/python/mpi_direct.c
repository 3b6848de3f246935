/*
 * scaleml._mpi_direct: MPI_Allreduce(MPI_SUM) on plain float32/float64 buffers,
 * called from C (a CPython extension on the stable ABI of Python 3.11, beside
 * the cffi core). It serves the drop-in's calls that MPI runs as they are: a
 * size class the engine lost to MPI (the tuner's MPI period) and calls below
 * min_count. There the drop-in must cost what mpi4py's Allreduce costs; mpi4py
 * spends about 0.5 us of Python-level work on its buffer messages, this call
 * about 0.1 us, which pays for the drop-in's own bookkeeping.
 *
 * allreduce_sum(comm, sendbuf, recvbuf) takes the call only when it is one
 * mpi4py would run as MPI_Allreduce(send, recv, count, FLOAT or DOUBLE, SUM):
 * recvbuf a writable C-contiguous buffer of native float32 or float64 ("f" or
 * "d"), sendbuf MPI.IN_PLACE or a C-contiguous buffer of the same format and
 * length, count < 2^31. It returns None for anything else, before touching
 * any buffer, and the caller hands the call to mpi4py (which then raises
 * mpi4py's errors for bad buffers). Taken, it returns whether index 0 of the
 * sum is NaN (the drop-in's sign that a rank joined with a bad buffer), and
 * raises mpi4py.MPI.Exception on an MPI error. The GIL is released while MPI
 * runs, as mpi4py does: the progress thread of a pending nonblocking call
 * must be able to run meanwhile.
 *
 * iallreduce_request(cls, checks, comm, sendbuf, recvbuf) is the nonblocking
 * form of the same calls: MPI_Iallreduce, and the request (SumRequest, the C
 * base of scaleml.nonblocking.MPIRequest, whose Wait is C too) made and queued
 * in the same call.
 */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <mpi4py/mpi4py.h>
#include <stddef.h>
#include <structmember.h>

static PyObject *in_place; /* mpi4py.MPI.IN_PLACE */
static PyObject *mpi_exception; /* mpi4py.MPI.Exception */

/* MPI_FLOAT or MPI_DOUBLE for a native "f" or "d" buffer, else MPI_DATATYPE_NULL. */
static MPI_Datatype float_type(const Py_buffer *b)
{
    const char *f = b->format;
    if (!f || !f[0] || f[1]) return MPI_DATATYPE_NULL;
    if (f[0] == 'f' && b->itemsize == 4) return MPI_FLOAT;
    if (f[0] == 'd' && b->itemsize == 8) return MPI_DOUBLE;
    return MPI_DATATYPE_NULL;
}

/* The call's buffers, when it is one this module takes (see the header): 1 taken (release with
 * release_buffers), 0 not (nothing held, no exception set). */
typedef struct {
    Py_buffer recv, send;
    int sending;
    MPI_Datatype type;
    int count;
} plain_call;

static int take_buffers(PyObject *sendbuf, PyObject *recvbuf, plain_call *call)
{
    if (PyObject_GetBuffer(recvbuf, &call->recv, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 0;
    }
    call->sending = sendbuf != in_place;
    if (call->sending && PyObject_GetBuffer(sendbuf, &call->send, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&call->recv);
        return 0;
    }
    call->type = float_type(&call->recv);
    Py_ssize_t count = call->recv.itemsize ? call->recv.len / call->recv.itemsize : 0;
    call->count = (int)count;
    if (call->type != MPI_DATATYPE_NULL && count <= INT_MAX &&
        (!call->sending || (float_type(&call->send) == call->type && call->send.len == call->recv.len)))
        return 1;
    if (call->sending) PyBuffer_Release(&call->send);
    PyBuffer_Release(&call->recv);
    return 0;
}

static void release_buffers(plain_call *call)
{
    if (call->sending) PyBuffer_Release(&call->send);
    PyBuffer_Release(&call->recv);
}

/* Index 0 of a float32 or float64 buffer is NaN (0 for an empty one). */
static int nan_first(const void *buf, MPI_Datatype type, Py_ssize_t count)
{
    if (count <= 0) return 0;
    return type == MPI_FLOAT ? isnan(((const float *)buf)[0]) : isnan(((const double *)buf)[0]);
}

/* NULL with mpi4py.MPI.Exception(err) set. */
static PyObject *raise_mpi_error(int err)
{
    PyObject *exc = PyObject_CallFunction(mpi_exception, "i", err);
    if (exc) {
        PyErr_SetObject(mpi_exception, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *allreduce_sum(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "allreduce_sum(comm, sendbuf, recvbuf) takes 3 arguments");
        return NULL;
    }
    MPI_Comm *comm = PyMPIComm_Get(args[0]);
    if (!comm) return NULL;
    plain_call call;
    if (!take_buffers(args[1], args[2], &call)) Py_RETURN_NONE;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = MPI_Allreduce(call.sending ? call.send.buf : MPI_IN_PLACE, call.recv.buf, call.count, call.type,
                        MPI_SUM, *comm);
    Py_END_ALLOW_THREADS
    int nan = nan_first(call.recv.buf, call.type, call.count);
    release_buffers(&call);
    if (err != MPI_SUCCESS) return raise_mpi_error(err);
    return PyBool_FromLong(nan);
}

/* ---- SumRequest: the drop-in's MPI_Iallreduce in an MPI period (the C base of
 * scaleml.nonblocking.MPIRequest, whose other methods are Python). Its start and
 * the common case of its Wait are here because they run on every call of a size
 * class MPI won: one C call each, where Python's request cost about 1 us more per
 * call than mpi4py's (bench/percall_overhead.py). The order and the checks are
 * _MPIChecks' (scaleml/nonblocking.py): a request is completed in start order,
 * under checks.lock; NaN at index 0 of the sum leads into checks._agree. Anything
 * but the oldest pending request with good buffers and no callback goes to
 * checks.complete(request, True), in Python. */
typedef struct {
    PyObject_HEAD
    PyObject *mpi;         /* the mpi4py.MPI.Request */
    PyObject *recv;        /* the sum (a float array), None once complete */
    PyObject *send;        /* the send buffer, kept alive until completion */
    PyObject *local_error; /* this rank's buffer error (it joined with NaN at index 0), or None */
    PyObject *checks;      /* the communicator's _MPIChecks */
    PyObject *error;       /* the exception the request failed with, or None */
    PyObject *callbacks;   /* done-callbacks, or None */
    char complete;
} SumRequest;

static PyTypeObject *sum_request_type;
static PyObject *str_lock, *str_pending, *str_acquire, *str_release, *str_popleft, *str_append, *str_finish,
    *str_agree, *str_complete;

static void sum_request_set(SumRequest *self, PyObject *mpi, PyObject *recv, PyObject *send, PyObject *local_error,
                            PyObject *checks)
{
    Py_INCREF(mpi);
    Py_INCREF(recv);
    Py_INCREF(send);
    Py_INCREF(local_error);
    Py_INCREF(checks);
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    self->mpi = mpi;
    self->recv = recv;
    self->send = send;
    self->local_error = local_error;
    self->checks = checks;
    self->error = Py_None;
    self->callbacks = Py_None;
    self->complete = 0;
}

static SumRequest *sum_request_alloc(PyTypeObject *type)
{
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    return (SumRequest *)alloc(type, 0);
}

/* MPIRequest(checks, mpi_request, recv, local_error, send=None): the mpi4py route's request (its start is
 * _MPIChecks.start or the drop-in's mpi4py call; iallreduce_request makes the others). */
static PyObject *sum_request_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"checks", "mpi_request", "recv", "local_error", "send", NULL};
    PyObject *checks, *mpi, *recv, *local_error, *send = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|O", keywords, &checks, &mpi, &recv, &local_error, &send))
        return NULL;
    if (!PyMPIRequest_Get(mpi)) return NULL;
    SumRequest *self = sum_request_alloc(type);
    if (!self) return NULL;
    sum_request_set(self, mpi, recv, send, local_error, checks);
    return (PyObject *)self;
}

static int sum_request_traverse(SumRequest *self, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE((PyObject *)self));
    Py_VISIT(self->mpi);
    Py_VISIT(self->recv);
    Py_VISIT(self->send);
    Py_VISIT(self->local_error);
    Py_VISIT(self->checks);
    Py_VISIT(self->error);
    Py_VISIT(self->callbacks);
    return 0;
}

static int sum_request_clear(SumRequest *self)
{
    Py_CLEAR(self->mpi);
    Py_CLEAR(self->recv);
    Py_CLEAR(self->send);
    Py_CLEAR(self->local_error);
    Py_CLEAR(self->checks);
    Py_CLEAR(self->error);
    Py_CLEAR(self->callbacks);
    return 0;
}

static void sum_request_dealloc(SumRequest *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    sum_request_clear(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF((PyObject *)type);
}

/* Call obj.name(arg...) and drop the result: 0, or -1 with an exception set. */
static int call_method(PyObject *obj, PyObject *name, PyObject *arg1, PyObject *arg2)
{
    PyObject *r = PyObject_CallMethodObjArgs(obj, name, arg1, arg2, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* With checks.lock held: complete and check this request if it is the oldest pending one with good buffers
 * and no callback; else checks.complete(self, True). 0, or -1 with an exception set. */
static int sum_request_wait_locked(SumRequest *self)
{
    if (self->complete) return 0;
    PyObject *pending = PyObject_GetAttr(self->checks, str_pending);
    if (!pending) return -1;
    int oldest = 0;
    Py_buffer recv = {0};
    MPI_Datatype type = MPI_DATATYPE_NULL;
    if (self->local_error == Py_None && self->callbacks == Py_None && self->recv) {
        Py_ssize_t length = PyObject_Length(pending);
        if (length < 0) goto fail;
        PyObject *first = length ? PySequence_GetItem(pending, 0) : NULL;
        if (length && !first) goto fail;
        oldest = first == (PyObject *)self;
        Py_XDECREF(first);
    }
    if (oldest) {
        if (PyObject_GetBuffer(self->recv, &recv, PyBUF_FORMAT) < 0)
            PyErr_Clear(); /* not a plain buffer: checks.complete reads it */
        else if ((type = float_type(&recv)) == MPI_DATATYPE_NULL)
            PyBuffer_Release(&recv);
    }
    if (type == MPI_DATATYPE_NULL) { /* everything else: Python's ordered completion */
        Py_DECREF(pending);
        return call_method(self->checks, str_complete, (PyObject *)self, Py_True);
    }
    MPI_Request *request = PyMPIRequest_Get(self->mpi);
    int err = MPI_ERR_REQUEST;
    if (request) {
        Py_BEGIN_ALLOW_THREADS
        err = MPI_Wait(request, MPI_STATUS_IGNORE);
        Py_END_ALLOW_THREADS
    }
    int nan = nan_first(recv.buf, type, recv.len / recv.itemsize);
    PyBuffer_Release(&recv);
    if (!request) goto fail;
    int rc = call_method(pending, str_popleft, NULL, NULL);
    Py_DECREF(pending);
    if (rc) return -1;
    if (err != MPI_SUCCESS) {
        PyObject *exc = PyObject_CallFunction(mpi_exception, "i", err);
        if (!exc) return -1;
        rc = call_method((PyObject *)self, str_finish, exc, NULL);
        Py_DECREF(exc);
        return rc;
    }
    if (nan) return call_method(self->checks, str_agree, (PyObject *)self, NULL);
    PyObject *recv_obj = self->recv, *send_obj = self->send;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    self->recv = self->send = Py_None;
    self->complete = 1;
    Py_DECREF(recv_obj); /* last: a release may run arbitrary code */
    Py_DECREF(send_obj);
    return 0;
fail:
    Py_DECREF(pending);
    return -1;
}

/* Wait(status=None) -> True: wait for the collective and check it; raise its exception if it failed. */
static PyObject *sum_request_wait(SumRequest *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    (void)args;
    if (nargs + (kwnames ? PyObject_Length(kwnames) : 0) > 1) {
        PyErr_SetString(PyExc_TypeError, "Wait(status=None) takes at most 1 argument");
        return NULL;
    }
    if (!self->complete) {
        if (!self->checks) {
            PyErr_SetString(PyExc_AttributeError, "Wait: the request has no _checks");
            return NULL;
        }
        PyObject *lock = PyObject_GetAttr(self->checks, str_lock);
        if (!lock) return NULL;
        if (call_method(lock, str_acquire, NULL, NULL)) {
            Py_DECREF(lock);
            return NULL;
        }
        int rc = sum_request_wait_locked(self);
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback); /* the lock is released whatever happened */
        int released = call_method(lock, str_release, NULL, NULL);
        Py_DECREF(lock);
        if (released) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            return NULL;
        }
        PyErr_Restore(type, value, traceback);
        if (rc) return NULL;
    }
    if (self->error && self->error != Py_None) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->error), self->error);
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* iallreduce_request(cls, checks, comm, sendbuf, recvbuf) -> cls | None: MPI_Iallreduce(MPI_SUM) of plain
 * float buffers as a new request of cls (a subclass of SumRequest) appended to checks.pending, or None
 * without touching anything when mpi4py must run the call (see allreduce_sum). */
static PyObject *iallreduce_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "iallreduce_request(cls, checks, comm, sendbuf, recvbuf) takes 5 arguments");
        return NULL;
    }
    PyObject *cls = args[0], *checks = args[1];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, sum_request_type)) {
        PyErr_SetString(PyExc_TypeError, "iallreduce_request: cls must be a subclass of SumRequest");
        return NULL;
    }
    MPI_Comm *comm = PyMPIComm_Get(args[2]);
    if (!comm) return NULL;
    plain_call call;
    if (!take_buffers(args[3], args[4], &call)) Py_RETURN_NONE;
    PyObject *pending = PyObject_GetAttr(checks, str_pending);
    PyObject *mpi = pending ? PyMPIRequest_New(MPI_REQUEST_NULL) : NULL;
    SumRequest *request = mpi ? sum_request_alloc((PyTypeObject *)cls) : NULL;
    if (!request) {
        release_buffers(&call);
        Py_XDECREF(mpi);
        Py_XDECREF(pending);
        return NULL;
    }
    sum_request_set(request, mpi, args[4], args[3], Py_None, checks);
    Py_DECREF(mpi);
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = MPI_Iallreduce(call.sending ? call.send.buf : MPI_IN_PLACE, call.recv.buf, call.count, call.type,
                         MPI_SUM, *comm, PyMPIRequest_Get(request->mpi));
    Py_END_ALLOW_THREADS
    release_buffers(&call); /* the request holds both objects until it completes */
    if (err != MPI_SUCCESS) {
        Py_DECREF(pending);
        Py_DECREF(request);
        return raise_mpi_error(err);
    }
    if (call_method(pending, str_append, (PyObject *)request, NULL)) {
        Py_DECREF(pending);
        Py_DECREF(request);
        return NULL;
    }
    Py_DECREF(pending);
    return (PyObject *)request;
}

static PyMemberDef sum_request_members[] = {
    {"_mpi", T_OBJECT, offsetof(SumRequest, mpi), 0, "the mpi4py.MPI.Request"},
    {"_recv", T_OBJECT, offsetof(SumRequest, recv), 0, "the sum (None once complete)"},
    {"_send", T_OBJECT, offsetof(SumRequest, send), 0, "the send buffer, kept alive until completion"},
    {"_local_error", T_OBJECT, offsetof(SumRequest, local_error), 0, "this rank's buffer error, or None"},
    {"_checks", T_OBJECT, offsetof(SumRequest, checks), 0, "the communicator's _MPIChecks"},
    {"_error", T_OBJECT, offsetof(SumRequest, error), 0, "the exception it failed with, or None"},
    {"_callbacks", T_OBJECT, offsetof(SumRequest, callbacks), 0, "done-callbacks, or None"},
    {"_complete", T_BOOL, offsetof(SumRequest, complete), 0, "whether it completed"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef sum_request_methods[] = {
    {"Wait", (PyCFunction)(void (*)(void))sum_request_wait, METH_FASTCALL | METH_KEYWORDS,
     "Wait(status=None) -> True: wait for the collective to complete; raise its exception if it failed."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sum_request_slots[] = {
    {Py_tp_new, sum_request_new},
    {Py_tp_dealloc, sum_request_dealloc},
    {Py_tp_traverse, sum_request_traverse},
    {Py_tp_clear, sum_request_clear},
    {Py_tp_members, sum_request_members},
    {Py_tp_methods, sum_request_methods},
    {Py_tp_doc, "The drop-in's MPI_Iallreduce request: its fields and Wait (scaleml.nonblocking.MPIRequest)."},
    {0, NULL},
};

static PyType_Spec sum_request_spec = {
    "scaleml._mpi_direct.SumRequest", sizeof(SumRequest), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, sum_request_slots,
};

static PyMethodDef methods[] = {
    {"allreduce_sum", (PyCFunction)(void (*)(void))allreduce_sum, METH_FASTCALL,
     "allreduce_sum(comm, sendbuf, recvbuf) -> bool | None: MPI_Allreduce(MPI_SUM) of plain float buffers\n"
     "(whether index 0 of the sum is NaN), or None without touching anything when mpi4py must run it."},
    {"iallreduce_request", (PyCFunction)(void (*)(void))iallreduce_request, METH_FASTCALL,
     "iallreduce_request(cls, checks, comm, sendbuf, recvbuf) -> cls | None: MPI_Iallreduce(MPI_SUM) of plain\n"
     "float buffers as a new request of cls (a SumRequest subclass) appended to checks.pending, or None as\n"
     "allreduce_sum."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "scaleml._mpi_direct", "MPI_Allreduce(MPI_SUM) of plain float buffers, from C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mpi_direct(void)
{
    if (import_mpi4py() < 0) return NULL;
    PyObject *mpi = PyImport_ImportModule("mpi4py.MPI");
    if (!mpi) return NULL;
    in_place = PyObject_GetAttrString(mpi, "IN_PLACE");
    mpi_exception = PyObject_GetAttrString(mpi, "Exception");
    Py_DECREF(mpi);
    if (!in_place || !mpi_exception) return NULL;
    PyObject **names[] = {&str_lock, &str_pending, &str_acquire, &str_release, &str_popleft, &str_append,
                          &str_finish, &str_agree, &str_complete};
    const char *texts[] = {"lock", "pending", "acquire", "release", "popleft", "append", "_finish", "_agree",
                           "complete"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!(*names[i] = PyUnicode_InternFromString(texts[i]))) return NULL;
    sum_request_type = (PyTypeObject *)PyType_FromSpec(&sum_request_spec);
    if (!sum_request_type) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF((PyObject *)sum_request_type);
    if (PyModule_AddObject(m, "SumRequest", (PyObject *)sum_request_type) < 0) {
        Py_DECREF(sum_request_type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
