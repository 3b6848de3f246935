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
 */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <mpi4py/mpi4py.h>

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

static PyObject *iallreduce_sum(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "iallreduce_sum(comm, sendbuf, recvbuf) takes 3 arguments");
        return NULL;
    }
    MPI_Comm *comm = PyMPIComm_Get(args[0]);
    if (!comm) return NULL;
    plain_call call;
    if (!take_buffers(args[1], args[2], &call)) Py_RETURN_NONE;
    MPI_Request request = MPI_REQUEST_NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = MPI_Iallreduce(call.sending ? call.send.buf : MPI_IN_PLACE, call.recv.buf, call.count, call.type,
                         MPI_SUM, *comm, &request);
    Py_END_ALLOW_THREADS
    release_buffers(&call); /* the caller keeps both objects until the request completes */
    if (err != MPI_SUCCESS) return raise_mpi_error(err);
    return PyMPIRequest_New(request);
}

static PyObject *wait_nan_first(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait_nan_first(request, recvbuf) takes 2 arguments");
        return NULL;
    }
    MPI_Request *request = PyMPIRequest_Get(args[0]);
    if (!request) return NULL;
    Py_buffer recv;
    if (PyObject_GetBuffer(args[1], &recv, PyBUF_FORMAT) < 0) return NULL;
    MPI_Datatype type = float_type(&recv);
    if (type == MPI_DATATYPE_NULL) {
        PyBuffer_Release(&recv);
        PyErr_SetString(PyExc_TypeError, "wait_nan_first: recvbuf is not float32 or float64");
        return NULL;
    }
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = MPI_Wait(request, MPI_STATUS_IGNORE);
    Py_END_ALLOW_THREADS
    int nan = nan_first(recv.buf, type, recv.len / recv.itemsize);
    PyBuffer_Release(&recv);
    if (err != MPI_SUCCESS) return raise_mpi_error(err);
    return PyBool_FromLong(nan);
}

static PyMethodDef methods[] = {
    {"allreduce_sum", (PyCFunction)(void (*)(void))allreduce_sum, METH_FASTCALL,
     "allreduce_sum(comm, sendbuf, recvbuf) -> bool | None: MPI_Allreduce(MPI_SUM) of plain float buffers\n"
     "(whether index 0 of the sum is NaN), or None without touching anything when mpi4py must run it."},
    {"iallreduce_sum", (PyCFunction)(void (*)(void))iallreduce_sum, METH_FASTCALL,
     "iallreduce_sum(comm, sendbuf, recvbuf) -> MPI.Request | None: MPI_Iallreduce(MPI_SUM) of plain float\n"
     "buffers, or None as allreduce_sum. The request holds no reference to the buffers: keep them alive."},
    {"wait_nan_first", (PyCFunction)(void (*)(void))wait_nan_first, METH_FASTCALL,
     "wait_nan_first(request, recvbuf) -> bool: MPI_Wait, then whether index 0 of recvbuf is NaN."},
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
    return PyModule_Create(&module);
}
