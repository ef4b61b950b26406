# cython: language_level=3
from libc.stdint cimport int64_t

from rdirdb._batch cimport Batch


cdef int64_t _int64(object value, str field, Py_ssize_t index) except? -1
cdef bytes _order_key(bytes text)
cdef int _encode_chunk_object(Batch batch, object rec, Py_ssize_t i, bint key_only) except -1
