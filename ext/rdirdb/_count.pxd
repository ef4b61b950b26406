# cython: language_level=3
from rdirdb._lmdb cimport Environment
from rdirdb.lmdb cimport MDB_dbi


cdef tuple chunk_status(Environment env, const MDB_dbi *dbis, const bint *canonical, object prefix,
                        object marker, object limit, object incident)
cdef Py_ssize_t count_prefix(Environment env, MDB_dbi dbi, object prefix) except -1
