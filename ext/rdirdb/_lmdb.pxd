# C-level interface of rdirdb._lmdb, cimported by the other native modules.

from rdirdb.lmdb cimport MDB_env, MDB_txn, MDB_cursor, MDB_dbi, MDB_val

cdef extern from "pthread.h" nogil:
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t


cdef int check(int rc, const char *what) except -1

# A write done without the GIL in a transaction (see Transaction.write_then_commit):
# returns an LMDB code.
ctypedef int (*txn_writer)(MDB_txn *txn, void *state) noexcept nogil


cdef struct _Touch:  # Environment.pretouch()'s state, shared with its thread (no Python object)
    MDB_env *env
    MDB_dbi main
    pthread_mutex_t *warm_lock  # the environment's: close() waits for a step
    bint *warm_stop
    pthread_rwlock_t *resize_lock
    size_t *reserved
    size_t upto       # the newest free-list record whose pages it touched
    size_t end        # the pages past the last one in use it touched end here
    bint off          # this kernel cannot (no MADV_POPULATE_WRITE)
    pthread_mutex_t lock
    pthread_cond_t cond
    pthread_t thread
    int pid           # the process that runs the thread (none yet, or a forked child's parent)
    bint wanted, quit


cdef class Environment:
    cdef MDB_env *_env
    cdef pthread_rwlock_t _resize_lock
    cdef bint _lock_ready
    cdef pthread_mutex_t _warm_lock
    cdef bint _warm_stop
    cdef readonly str path
    cdef readonly bint readonly
    cdef readonly bint durable
    cdef readonly bint writemap
    cdef size_t _reserved
    cdef _Touch _touch
    cdef readonly bint pretouching  # a thread pretouches after each write (see pretouch())
    cdef object _children
    cdef dict _dbis
    cdef object __weakref__

    cdef int _ensure_open(self) except -1
    cdef MDB_dbi dbi(self, name) except? 0
    cdef int begin_raw(self, MDB_txn **txn, bint write) except -1
    cdef int end_raw(self, MDB_txn *txn, bint commit, bint write=*) except -1
    cdef int _end_nogil(self, MDB_txn *txn, bint commit, bint meta_sync) noexcept nogil
    cdef int _end_check(self, int rc) except -1
    cdef int grow(self, size_t needed) except -1
    cdef int map_full(self, const char *what) except -1
    cdef int reserve(self) except -1
    cdef void _warm_steps(self, MDB_dbi main, size_t limit, size_t *warmed, bint *skip) noexcept
    cdef int _kick_pretouch(self) except -1
    cdef void _stop_pretouch(self) noexcept nogil


cdef class Transaction:
    cdef MDB_txn *_txn
    cdef readonly Environment env
    cdef readonly bint write
    cdef bint _sync_meta
    cdef object _children
    cdef object __weakref__

    cdef int _ensure_open(self) except -1
    cdef int _finish(self, bint commit) except -1
    cdef MDB_txn *_detach(self) except? NULL
    cdef int _ended(self, bint commit) except -1
    cdef int fail(self, int rc, const char *what) except -1
    cdef int write_then_commit(self, txn_writer write, void *state) except? -1


cdef class Cursor:
    cdef MDB_cursor *_cursor
    cdef readonly Transaction txn
    cdef MDB_val _key
    cdef MDB_val _value
    cdef bint _positioned
    cdef object __weakref__

    cdef int _ensure_open(self) except -1
    cdef bint _move(self, int op) except -1
