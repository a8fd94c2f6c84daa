"""Process-wide settings the serving process applies before it starts the event loop."""

import ctypes
import logging

from appliance import service


def test_the_allocator_accepts_the_large_buffer_settings(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance"):
        service._keep_large_buffers_warm()
    assert not caplog.records
    # A 1 MiB buffer now comes from the heap, below the program break; by
    # default glibc would mmap it, far above.
    libc = ctypes.CDLL(None)
    libc.sbrk.restype = ctypes.c_void_p
    libc.malloc.restype = ctypes.c_void_p
    block = libc.malloc(1 << 20)
    try:
        assert block < libc.sbrk(0)
    finally:
        libc.free(ctypes.c_void_p(block))
