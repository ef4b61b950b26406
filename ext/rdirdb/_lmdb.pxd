# C-level interface of rdirdb._lmdb, cimported by the other native modules.

from rdirdb.lmdb cimport MDB_env, MDB_txn, MDB_cursor, MDB_dbi, MDB_val

cdef extern from "pthread.h" nogil:
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass


cdef int check(int rc, const char *what) except -1


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
    cdef object _children
    cdef dict _dbis
    cdef object __weakref__

    cdef int _ensure_open(self) except -1
    cdef MDB_dbi dbi(self, name) except? 0
    cdef int begin_raw(self, MDB_txn **txn, bint write) except -1
    cdef int end_raw(self, MDB_txn *txn, bint commit, bint write=*) except -1
    cdef int grow(self, size_t needed) except -1
    cdef int map_full(self, const char *what) except -1
    cdef int reserve(self) except -1
    cdef char *_map_base(self, MDB_dbi main, size_t psize, size_t used) noexcept nogil
    cdef void _warm_steps(self, MDB_dbi main, size_t limit, size_t *warmed, bint *skip) noexcept


cdef class Transaction:
    cdef MDB_txn *_txn
    cdef readonly Environment env
    cdef readonly bint write
    cdef bint _sync_meta
    cdef object _children
    cdef object __weakref__

    cdef int _ensure_open(self) except -1
    cdef int _finish(self, bint commit) except -1
    cdef int fail(self, int rc, const char *what) except -1


cdef class Cursor:
    cdef MDB_cursor *_cursor
    cdef readonly Transaction txn
    cdef MDB_val _key
    cdef MDB_val _value
    cdef bint _positioned
    cdef object __weakref__

    cdef int _ensure_open(self) except -1
    cdef bint _move(self, int op) except -1
