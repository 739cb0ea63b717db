"""Empty uprobe + uretprobe BPF programs at any (file, offset), for the
trap floor at the points cleartap probes. bpftrace attaches only to
symbols, and cleartap may probe a function a stripped library does not
name (OpenSSL's ssl_*_internal); tracefs events would cost more than an
empty program (they build a record before the filter drops it). So this
loads `r0 = 0; exit` itself, through the bpf() and perf_event_open()
system calls, the way libbpf attaches a uprobe on kernels without links."""
import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_BPF = 321  # x86-64
SYS_PERF_EVENT_OPEN = 298
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_KPROBE = 2
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
PERF_FLAG_FD_CLOEXEC = 8
# r0 = 0; exit
EMPTY_PROGRAM = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _syscall(number, *args):
    ret = _libc.syscall(number, *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _load_empty_program():
    insns = ctypes.create_string_buffer(EMPTY_PROGRAM, len(EMPTY_PROGRAM))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_KPROBE, 2, ctypes.addressof(insns), ctypes.addressof(license))
    return _syscall(SYS_BPF, BPF_PROG_LOAD, attr, 128)


def _uprobe_pmu():
    with open("/sys/bus/event_source/devices/uprobe/type") as f:
        pmu = int(f.read())
    with open("/sys/bus/event_source/devices/uprobe/format/retprobe") as f:
        bit = int(f.read().strip().split(":")[1])  # "config:0"
    return pmu, 1 << bit


class EmptyProbes:
    """An empty uprobe and uretprobe on each (path, file offset), or only
    the one a (path, file offset, is_retprobe) point names, live until
    `remove()`."""

    def __init__(self, points):
        pmu, retprobe = _uprobe_pmu()
        self.fds = [_load_empty_program()]
        for path, offset, *kind in points:
            name = ctypes.create_string_buffer(path.encode())
            for config in [retprobe if k else 0 for k in kind] or (0, retprobe):
                attr = ctypes.create_string_buffer(128)
                struct.pack_into("<IIQ", attr, 0, pmu, 128, config)
                struct.pack_into("<QQ", attr, 56, ctypes.addressof(name), offset)  # config1, config2
                fd = _syscall(SYS_PERF_EVENT_OPEN, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
                self.fds.append(fd)
                _libc.ioctl(fd, PERF_EVENT_IOC_SET_BPF, self.fds[0])
                if _libc.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) < 0:
                    raise OSError(ctypes.get_errno(), f"enabling a uprobe on {path}+{offset:#x}")

    def remove(self):
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds = []
