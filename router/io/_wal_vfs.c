/* A VFS for the store's writer connection that hands a COMMIT's WAL frames to the kernel in
 * a few large writes instead of two small ones per page.
 *
 * SQLite writes each frame of a commit to the WAL as a 24-byte header and a page, each its
 * own pwrite, then syncs the file. A group of a few dozen messages dirties about a hundred
 * pages: two hundred system calls on the commit's path. Here the WAL file's writes that
 * follow one another are kept in memory and written out, 64 KiB at a time, before anything
 * else touches the file: its sync, a read, its size, a truncation, a file control, a write
 * elsewhere, its close. With `synchronous` FULL or EXTRA, SQLite syncs the WAL at every
 * commit and publishes its frames to readers (the WAL index) only after that sync, so nothing
 * can read a frame still held here; a process that dies while frames are held dies before
 * the sync, as if it had died before writing them, and that commit was never reported. So
 * the store opens only such a connection through it (`router.io.store`). Nor are frames held
 * once a database opened through it is not power-safe (SQLite then pads a commit and writes
 * its last frame again after the sync). A write-out that fails fails the call that made it:
 * the store's writer keeps its cache from spilling (`cache_spill` off, its migrations run on
 * another connection), so all of a commit's frames are written inside that commit, which
 * then fails. Every other file, and every other call, goes to the default VFS unchanged.
 *
 * The structures below are SQLite's own (sqlite3.h, stable since 3.7), declared here so the
 * build needs no SQLite headers. The functions are looked up in the library the sqlite3
 * module loaded, so the VFS is registered with the SQLite the store's connections use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef long long sqlite3_int64;
typedef struct sqlite3_io_methods sqlite3_io_methods;
typedef struct sqlite3_file {
    const sqlite3_io_methods *pMethods;
} sqlite3_file;
struct sqlite3_io_methods {
    int iVersion;
    int (*xClose)(sqlite3_file *);
    int (*xRead)(sqlite3_file *, void *, int, sqlite3_int64);
    int (*xWrite)(sqlite3_file *, const void *, int, sqlite3_int64);
    int (*xTruncate)(sqlite3_file *, sqlite3_int64);
    int (*xSync)(sqlite3_file *, int);
    int (*xFileSize)(sqlite3_file *, sqlite3_int64 *);
    int (*xLock)(sqlite3_file *, int);
    int (*xUnlock)(sqlite3_file *, int);
    int (*xCheckReservedLock)(sqlite3_file *, int *);
    int (*xFileControl)(sqlite3_file *, int, void *);
    int (*xSectorSize)(sqlite3_file *);
    int (*xDeviceCharacteristics)(sqlite3_file *);
    int (*xShmMap)(sqlite3_file *, int, int, int, void volatile **);
    int (*xShmLock)(sqlite3_file *, int, int, int);
    void (*xShmBarrier)(sqlite3_file *);
    int (*xShmUnmap)(sqlite3_file *, int);
    int (*xFetch)(sqlite3_file *, sqlite3_int64, int, void **);
    int (*xUnfetch)(sqlite3_file *, sqlite3_int64, void *);
};
typedef struct sqlite3_vfs sqlite3_vfs;
typedef void (*sqlite3_syscall_ptr)(void);
struct sqlite3_vfs {
    int iVersion;
    int szOsFile;
    int mxPathname;
    sqlite3_vfs *pNext;
    const char *zName;
    void *pAppData;
    int (*xOpen)(sqlite3_vfs *, const char *, sqlite3_file *, int, int *);
    int (*xDelete)(sqlite3_vfs *, const char *, int);
    int (*xAccess)(sqlite3_vfs *, const char *, int, int *);
    int (*xFullPathname)(sqlite3_vfs *, const char *, int, char *);
    void *(*xDlOpen)(sqlite3_vfs *, const char *);
    void (*xDlError)(sqlite3_vfs *, int, char *);
    void (*(*xDlSym)(sqlite3_vfs *, void *, const char *))(void);
    void (*xDlClose)(sqlite3_vfs *, void *);
    int (*xRandomness)(sqlite3_vfs *, int, char *);
    int (*xSleep)(sqlite3_vfs *, int);
    int (*xCurrentTime)(sqlite3_vfs *, double *);
    int (*xGetLastError)(sqlite3_vfs *, int, char *);
    int (*xCurrentTimeInt64)(sqlite3_vfs *, sqlite3_int64 *);
    int (*xSetSystemCall)(sqlite3_vfs *, const char *, sqlite3_syscall_ptr);
    sqlite3_syscall_ptr (*xGetSystemCall)(sqlite3_vfs *, const char *);
    const char *(*xNextSystemCall)(sqlite3_vfs *, const char *);
};
#define SQLITE_OK 0
#define SQLITE_OPEN_MAIN_DB 0x00000100
#define SQLITE_OPEN_WAL 0x00080000
#define SQLITE_IOCAP_POWERSAFE_OVERWRITE 0x00001000
#define SQLITE_FCNTL_POWERSAFE_OVERWRITE 13

#define VFS_NAME "router-wal"
/* The default VFS writes at most 128 KiB - 1 per call (os_unix.c). */
#define PIECE (64 * 1024)
/* A write that would hold more is written straight through, after what is held. */
#define HOLD_LIMIT (8 * 1024 * 1024)
/* A buffer grown past this by a large commit is freed at its sync. */
#define KEEP_LIMIT (4 * 1024 * 1024)

typedef struct {
    sqlite3_file base;
    sqlite3_file *real; /* the default VFS's file, right after this struct */
    int wal;            /* its writes are held */
    int held;           /* bytes held, from `at` on */
    int cap;
    sqlite3_int64 at;
    char *buf;
} WalFile;

static sqlite3_vfs *root; /* the default VFS, which does all the work */
static sqlite3_vfs vfs;
/* Set for good once a database opened through this VFS is not power-safe (`psow=0` in its
 * URI, or a build without power-safe overwrites): SQLite decides from the database file,
 * when it opens the WAL, whether to write a commit's last frame again after its sync. */
static volatile int not_powersafe;

#define REAL(f) (((WalFile *)(f))->real)
#define CALL(f, method, ...) (REAL(f)->pMethods->method(REAL(f), __VA_ARGS__))

static int write_out(WalFile *p) {
    int n = p->held;
    p->held = 0;
    for (int done = 0; done < n; done += PIECE) {
        int piece = n - done < PIECE ? n - done : PIECE;
        int rc = p->real->pMethods->xWrite(p->real, p->buf + done, piece, p->at + done);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static int hold(WalFile *p, const void *data, int n, sqlite3_int64 at) {
    if (p->held > 0 && at != p->at + p->held) { /* not the next byte: what is held goes first */
        int rc = write_out(p);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (p->held + n > p->cap) {
        int cap = p->cap ? p->cap : PIECE;
        while (cap < p->held + n)
            cap *= 2;
        char *grown = cap <= HOLD_LIMIT ? realloc(p->buf, cap) : NULL;
        if (grown == NULL) { /* too large, or no memory: straight through, in order */
            int rc = write_out(p);
            return rc != SQLITE_OK ? rc : p->real->pMethods->xWrite(p->real, data, n, at);
        }
        p->buf = grown;
        p->cap = cap;
    }
    if (p->held == 0)
        p->at = at;
    memcpy(p->buf + p->held, data, n);
    p->held += n;
    return SQLITE_OK;
}

/* Every call but a write, a lock or the shared memory's sees the file as written. */
#define FIRST_WRITE_OUT(f)                                                                     \
    do {                                                                                       \
        WalFile *p_ = (WalFile *)(f);                                                          \
        if (p_->held > 0) {                                                                    \
            int rc_ = write_out(p_);                                                           \
            if (rc_ != SQLITE_OK)                                                              \
                return rc_;                                                                    \
        }                                                                                      \
    } while (0)

static int wClose(sqlite3_file *f) {
    WalFile *p = (WalFile *)f;
    int rc = p->held > 0 ? write_out(p) : SQLITE_OK;
    int closed = p->real->pMethods->xClose(p->real);
    free(p->buf);
    p->buf = NULL;
    p->cap = 0;
    return rc != SQLITE_OK ? rc : closed;
}
static int wRead(sqlite3_file *f, void *b, int n, sqlite3_int64 at) {
    FIRST_WRITE_OUT(f);
    return CALL(f, xRead, b, n, at);
}
static int wWrite(sqlite3_file *f, const void *b, int n, sqlite3_int64 at) {
    WalFile *p = (WalFile *)f;
    if (p->wal && !not_powersafe)
        return hold(p, b, n, at);
    FIRST_WRITE_OUT(f);
    return CALL(f, xWrite, b, n, at);
}
static int wTruncate(sqlite3_file *f, sqlite3_int64 size) {
    FIRST_WRITE_OUT(f);
    return CALL(f, xTruncate, size);
}
static int wSync(sqlite3_file *f, int flags) {
    WalFile *p = (WalFile *)f;
    FIRST_WRITE_OUT(f);
    if (p->cap > KEEP_LIMIT) {
        free(p->buf);
        p->buf = NULL;
        p->cap = 0;
    }
    return CALL(f, xSync, flags);
}
static int wFileSize(sqlite3_file *f, sqlite3_int64 *size) {
    FIRST_WRITE_OUT(f);
    return CALL(f, xFileSize, size);
}
static int wLock(sqlite3_file *f, int level) { return CALL(f, xLock, level); }
static int wUnlock(sqlite3_file *f, int level) { return CALL(f, xUnlock, level); }
static int wReserved(sqlite3_file *f, int *out) { return CALL(f, xCheckReservedLock, out); }
static int wFileControl(sqlite3_file *f, int op, void *arg) {
    if (op == SQLITE_FCNTL_POWERSAFE_OVERWRITE && arg != NULL && *(int *)arg == 0)
        not_powersafe = 1; /* set off (a negative value only asks): on the safe side */
    FIRST_WRITE_OUT(f);
    return CALL(f, xFileControl, op, arg);
}
static int wSectorSize(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int wDevice(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int wShmMap(sqlite3_file *f, int page, int size, int extend, void volatile **out) {
    return CALL(f, xShmMap, page, size, extend, out);
}
static int wShmLock(sqlite3_file *f, int offset, int n, int flags) {
    return CALL(f, xShmLock, offset, n, flags);
}
static void wShmBarrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int wShmUnmap(sqlite3_file *f, int delete) { return CALL(f, xShmUnmap, delete); }
static int wFetch(sqlite3_file *f, sqlite3_int64 at, int n, void **out) {
    FIRST_WRITE_OUT(f);
    return CALL(f, xFetch, at, n, out);
}
static int wUnfetch(sqlite3_file *f, sqlite3_int64 at, void *page) {
    return CALL(f, xUnfetch, at, page);
}

/* One table per version the default VFS's files may have: a file claims no method its
 * real file lacks. */
#define METHODS(version)                                                                       \
    {version,  wClose,     wRead,       wWrite,    wTruncate,    wSync,   wFileSize,          \
     wLock,    wUnlock,    wReserved,   wFileControl, wSectorSize, wDevice, wShmMap,         \
     wShmLock, wShmBarrier, wShmUnmap,  wFetch,    wUnfetch}
static const sqlite3_io_methods methods[3] = {METHODS(1), METHODS(2), METHODS(3)};

static int wOpen(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out) {
    WalFile *p = (WalFile *)f;
    memset(p, 0, sizeof(*p));
    p->real = (sqlite3_file *)((char *)p + sizeof(WalFile));
    int rc = root->xOpen(root, name, p->real, flags, out);
    int version = p->real->pMethods != NULL ? p->real->pMethods->iVersion : 0;
    if (rc != SQLITE_OK || version < 1) {
        if (p->real->pMethods != NULL) /* an open that failed may still need its close */
            p->real->pMethods->xClose(p->real);
        p->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : 1 /* SQLITE_ERROR */;
    }
    int powersafe = p->real->pMethods->xDeviceCharacteristics(p->real) &
                    SQLITE_IOCAP_POWERSAFE_OVERWRITE;
    if ((flags & SQLITE_OPEN_MAIN_DB) && !powersafe)
        not_powersafe = 1;
    p->wal = (flags & SQLITE_OPEN_WAL) != 0 && !not_powersafe;
    p->base.pMethods = &methods[(version > 3 ? 3 : version) - 1];
    return SQLITE_OK;
}
static int vDelete(sqlite3_vfs *v, const char *n, int sync) { return root->xDelete(root, n, sync); }
static int vAccess(sqlite3_vfs *v, const char *n, int flags, int *out) {
    return root->xAccess(root, n, flags, out);
}
static int vFullPathname(sqlite3_vfs *v, const char *n, int size, char *out) {
    return root->xFullPathname(root, n, size, out);
}
static void *vDlOpen(sqlite3_vfs *v, const char *n) { return root->xDlOpen(root, n); }
static void vDlError(sqlite3_vfs *v, int size, char *out) { root->xDlError(root, size, out); }
static void (*vDlSym(sqlite3_vfs *v, void *h, const char *symbol))(void) {
    return root->xDlSym(root, h, symbol);
}
static void vDlClose(sqlite3_vfs *v, void *h) { root->xDlClose(root, h); }
static int vRandomness(sqlite3_vfs *v, int n, char *out) { return root->xRandomness(root, n, out); }
static int vSleep(sqlite3_vfs *v, int us) { return root->xSleep(root, us); }
static int vCurrentTime(sqlite3_vfs *v, double *out) { return root->xCurrentTime(root, out); }
static int vLastError(sqlite3_vfs *v, int n, char *out) { return root->xGetLastError(root, n, out); }
static int vCurrentTimeInt64(sqlite3_vfs *v, sqlite3_int64 *out) {
    return root->xCurrentTimeInt64(root, out);
}

typedef sqlite3_vfs *(*find_fn)(const char *);
typedef int (*register_fn)(sqlite3_vfs *, int);

static PyObject *register_vfs(PyObject *module, PyObject *arg) {
    if (root != NULL) /* once per process: the GIL orders the calls */
        return PyUnicode_FromString(VFS_NAME);
    const char *library = PyUnicode_AsUTF8(arg);
    if (library == NULL)
        return NULL;
    void *handle = dlopen(library, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL)
        return PyErr_Format(PyExc_OSError, "%s is not loaded", library);
    find_fn find = (find_fn)dlsym(handle, "sqlite3_vfs_find");
    register_fn add = (register_fn)dlsym(handle, "sqlite3_vfs_register");
    dlclose(handle); /* the sqlite3 module keeps it loaded */
    if (find == NULL || add == NULL)
        return PyErr_Format(PyExc_OSError, "SQLite's VFS functions are not found from %s", library);
    sqlite3_vfs *base = find(NULL);
    if (base == NULL || base->iVersion < 2 || base->xCurrentTimeInt64 == NULL)
        return PyErr_Format(PyExc_OSError, "SQLite's default VFS cannot be wrapped");
    vfs.iVersion = 2;
    vfs.szOsFile = (int)sizeof(WalFile) + base->szOsFile;
    vfs.mxPathname = base->mxPathname;
    vfs.zName = VFS_NAME;
    vfs.xOpen = wOpen;
    vfs.xDelete = vDelete;
    vfs.xAccess = vAccess;
    vfs.xFullPathname = vFullPathname;
    vfs.xDlOpen = vDlOpen;
    vfs.xDlError = vDlError;
    vfs.xDlSym = vDlSym;
    vfs.xDlClose = vDlClose;
    vfs.xRandomness = vRandomness;
    vfs.xSleep = vSleep;
    vfs.xCurrentTime = vCurrentTime;
    vfs.xGetLastError = vLastError;
    vfs.xCurrentTimeInt64 = vCurrentTimeInt64;
    root = base;
    int rc = add(&vfs, 0);
    if (rc != SQLITE_OK) {
        root = NULL;
        return PyErr_Format(PyExc_OSError, "SQLite refused the VFS (result code %d)", rc);
    }
    return PyUnicode_FromString(VFS_NAME);
}

static PyMethodDef functions[] = {
    {"register", register_vfs, METH_O,
     "Register the VFS with the SQLite that `library` (the sqlite3 module's file) loaded, "
     "once; its name, for a connection's URI."},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wal_vfs", NULL, -1, functions};

PyMODINIT_FUNC PyInit__wal_vfs(void) { return PyModule_Create(&module); }
