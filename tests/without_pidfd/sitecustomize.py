"""A kernel without ``pidfd_open(2)``, for tests/test_daemon_without_pidfd.py.

Linux before 5.3 (the TX2's L4T R32 runs 4.9) has no ``pidfd_open``: the call fails with
``ENOSYS``. A Python process started with this folder first on its ``PYTHONPATH`` and
``ADAPTD_TEST_NO_PIDFD`` set installs, before anything else runs, a seccomp filter that has the
kernel answer ``pidfd_open`` with ``ENOSYS`` and lets every other call through. The filter holds
for the process and every process it starts (a filter is inherited and kept across ``exec``), so
the daemon and its workers run their own code, unchanged, as on such a kernel. The call's number,
434, is the same on every architecture.
"""

import os

if os.environ.get("ADAPTD_TEST_NO_PIDFD"):
    import ctypes
    import errno

    class _Instruction(ctypes.Structure):   # struct sock_filter
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class _Program(ctypes.Structure):       # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]

    _LOAD_NR, _JUMP_IF_EQUAL, _RETURN = 0x20, 0x15, 0x06   # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    _ERRNO, _ALLOW = 0x00050000, 0x7FFF0000                  # SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW
    _PIDFD_OPEN = 434
    _code = (_Instruction * 4)(
        _Instruction(_LOAD_NR, 0, 0, 0),                       # seccomp_data.nr
        _Instruction(_JUMP_IF_EQUAL, 0, 1, _PIDFD_OPEN),
        _Instruction(_RETURN, 0, 0, _ERRNO | errno.ENOSYS),
        _Instruction(_RETURN, 0, 0, _ALLOW))
    _program = _Program(len(_code), _code)
    _libc = ctypes.CDLL(None, use_errno=True)
    _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 \
            or _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(_program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"the seccomp filter was refused: {os.strerror(ctypes.get_errno())}")
