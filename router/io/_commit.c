/* The store's COMMIT on a thread of its own that never takes the GIL.
 *
 * A Python writer thread takes the GIL three times per group on a message's path: to wake,
 * to come back from its file check, and to come back from the COMMIT's fsync. Each take
 * waits while the busy loop runs Python. This thread takes it never: the loop asks for a
 * commit, the thread checks the file, runs the COMMIT on the connection the loop's
 * statements ran on, and writes to an eventfd that the loop watches. The loop reads the
 * outcome once the eventfd is readable; the two threads never touch the outcome at once.
 *
 * The connection's handle comes from CPython's sqlite3.Connection, where it is the first
 * field after the object header: `router.io.commit_thread` passes only an exact
 * sqlite3.Connection, only on the CPython versions whose layout that is, and then checks
 * that the handle names the store's file. SQLite's functions are looked up in the library
 * the sqlite3 module loaded, so both work on the same SQLite.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct sqlite3 sqlite3;
typedef int (*exec_fn)(sqlite3 *, const char *, void *, void *, char **);
typedef int (*code_fn)(sqlite3 *);
typedef void (*free_fn)(void *);
typedef const char *(*filename_fn)(sqlite3 *, const char *);

typedef struct {
    PyObject_HEAD
    PyObject *conn; /* kept alive while the thread may use its handle */
    sqlite3 *db;
    exec_fn exec;
    code_fn extended_errcode;
    free_fn sqlite_free;
    filename_fn db_filename;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running; /* the thread was started and nobody has joined it yet */
    int joining;
    int requested;
    int stopping;
    int done_fd;
    char *path; /* NULL: no check of the file's identity */
    dev_t dev;
    ino_t ino;
    /* The last commit's outcome: written by the thread before it signals done_fd, read by
     * the loop after it reads done_fd, never both at once. */
    int rc;
    int extended;
    int replaced;
    char errmsg[512];
} Committer;

static void commit_once(Committer *c) {
    c->rc = 0;
    c->extended = 0;
    c->replaced = 0;
    c->errmsg[0] = '\0';
    if (c->path != NULL) {
        struct stat st;
        if (stat(c->path, &st) != 0 || st.st_dev != c->dev || st.st_ino != c->ino) {
            c->replaced = 1; /* not committed: the Python side says why and fails the group */
            return;
        }
    }
    char *err = NULL;
    c->rc = c->exec(c->db, "COMMIT", NULL, NULL, &err);
    if (c->rc != 0) {
        c->extended = c->extended_errcode(c->db);
        if (err != NULL)
            strncpy(c->errmsg, err, sizeof(c->errmsg) - 1);
    }
    if (err != NULL)
        c->sqlite_free(err);
}

static void *run(void *arg) {
    Committer *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (!c->requested && !c->stopping)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->requested) { /* stopping, nothing asked */
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        c->requested = 0;
        pthread_mutex_unlock(&c->mu);
        commit_once(c);
        uint64_t one = 1;
        while (write(c->done_fd, &one, sizeof(one)) < 0 && errno == EINTR) {
        }
    }
}

static PyObject *Committer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Committer *self = (Committer *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->done_fd = -1;
    return (PyObject *)self;
}

static int Committer_init(Committer *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"conn", "library", "path", "device", "inode", NULL};
    PyObject *conn, *path;
    const char *library;
    unsigned long long dev = 0, ino = 0;
    if (self->conn != NULL || self->path != NULL || self->done_fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "a Committer is set up once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OsOKK", keywords, &conn, &library, &path,
                                     &dev, &ino))
        return -1;
    void *handle = dlopen(library, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL) {
        PyErr_Format(PyExc_OSError, "%s is not loaded", library);
        return -1;
    }
    self->exec = (exec_fn)dlsym(handle, "sqlite3_exec");
    self->extended_errcode = (code_fn)dlsym(handle, "sqlite3_extended_errcode");
    self->sqlite_free = (free_fn)dlsym(handle, "sqlite3_free");
    self->db_filename = (filename_fn)dlsym(handle, "sqlite3_db_filename");
    dlclose(handle); /* the sqlite3 module keeps it loaded */
    if (!self->exec || !self->extended_errcode || !self->sqlite_free || !self->db_filename) {
        PyErr_Format(PyExc_OSError, "SQLite's functions are not found from %s", library);
        return -1;
    }
    if (path != Py_None) {
        PyObject *bytes = PyUnicode_EncodeFSDefault(path);
        if (bytes == NULL)
            return -1;
        self->path = strdup(PyBytes_AS_STRING(bytes));
        Py_DECREF(bytes);
        if (self->path == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->dev = (dev_t)dev;
        self->ino = (ino_t)ino;
    }
    self->db = *(sqlite3 **)((char *)conn + sizeof(PyObject));
    if (self->db == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return -1;
    }
    self->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->done_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    /* Signals go to the interpreter's threads, never to this one. */
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &before);
    int failed = pthread_create(&self->thread, NULL, run, self);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    if (failed) {
        errno = failed;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->running = 1;
    Py_INCREF(conn);
    self->conn = conn;
    return 0;
}

static PyObject *Committer_filename(Committer *self, PyObject *unused) {
    if (!self->running)
        Py_RETURN_NONE;
    const char *name = self->db_filename(self->db, "main");
    if (name == NULL)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(name);
}

static PyObject *Committer_commit(Committer *self, PyObject *unused) {
    int refused = 0;
    if (!self->running)
        refused = 1;
    else {
        /* Under the lock: a request made before `stopping` is served before the thread
         * ends (it ends only with none pending); one made after is refused. */
        pthread_mutex_lock(&self->mu);
        if (self->stopping)
            refused = 1;
        else {
            self->requested = 1;
            pthread_cond_signal(&self->cv);
        }
        pthread_mutex_unlock(&self->mu);
    }
    if (refused) {
        PyErr_SetString(PyExc_RuntimeError, "the commit thread is stopped");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Committer_outcome(Committer *self, PyObject *unused) {
    uint64_t n;
    if (self->done_fd < 0 || read(self->done_fd, &n, sizeof(n)) < 0)
        Py_RETURN_NONE; /* no commit finished since the last call */
    PyObject *message = PyUnicode_DecodeUTF8(self->errmsg, strlen(self->errmsg), "replace");
    if (message == NULL)
        return NULL;
    return Py_BuildValue("(iiON)", self->rc, self->extended,
                         self->replaced ? Py_True : Py_False, message);
}

static PyObject *Committer_fileno(Committer *self, PyObject *unused) {
    return PyLong_FromLong(self->done_fd);
}

static void stop(Committer *self) {
    if (!self->running)
        return;
    pthread_mutex_lock(&self->mu);
    int first = !self->joining; /* only one caller joins the thread */
    self->joining = 1;
    self->stopping = 1;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    if (!first)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL); /* after the commit asked for, if any */
    Py_END_ALLOW_THREADS
    self->running = 0;
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
}

static PyObject *Committer_stop(Committer *self, PyObject *unused) {
    stop(self);
    Py_RETURN_NONE;
}

static void Committer_dealloc(Committer *self) {
    stop(self);
    if (self->done_fd >= 0)
        close(self->done_fd);
    free(self->path);
    Py_XDECREF(self->conn);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Committer_methods[] = {
    {"filename", (PyCFunction)Committer_filename, METH_NOARGS,
     "The file of the handle the thread commits on."},
    {"commit", (PyCFunction)Committer_commit, METH_NOARGS,
     "Ask the thread to check the file and COMMIT; the eventfd turns readable when done."},
    {"outcome", (PyCFunction)Committer_outcome, METH_NOARGS,
     "(rc, extended code, replaced, message) of the commit just done, or None."},
    {"fileno", (PyCFunction)Committer_fileno, METH_NOARGS, "The eventfd to watch."},
    {"stop", (PyCFunction)Committer_stop, METH_NOARGS,
     "Stop the thread, after the commit asked for."},
    {NULL}};

static PyTypeObject CommitterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "router.io._commit.Committer",
    .tp_basicsize = sizeof(Committer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Committer_new,
    .tp_init = (initproc)Committer_init,
    .tp_dealloc = (destructor)Committer_dealloc,
    .tp_methods = Committer_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_commit", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__commit(void) {
    if (PyType_Ready(&CommitterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CommitterType);
    if (PyModule_AddObject(m, "Committer", (PyObject *)&CommitterType) < 0) {
        Py_DECREF(&CommitterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
