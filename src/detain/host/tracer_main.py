"""The tracer process itself (host/tracer.py says why it exists and how it is started).

A ptrace tracer for one run. It attaches (PTRACE_SEIZE) to the sandbox process while that
process waits in its fork-exec step, and from then on follows every process and thread it
creates. The sandbox process loads a seccomp filter that returns SECCOMP_RET_TRACE for the
syscalls worth reporting only, so the job stops here for those and runs untouched
otherwise. At each such stop the arguments are read from the tracee's registers
(PTRACE_GET_SYSCALL_INFO) and memory (process_vm_readv), the syscall is let through to
its exit stop for the outcome, and one JSON record is written. Every string comes from
the job and is written only inside a JSON string, capped: no byte of the job's can start,
end or shape a record.

Arguments: OUTPUT_FD REQUEST_FD GO_FD MAX_RECORDS RESERVE STRING_CAP MACHINERY NR=NAME,...
SENSITIVE [FLUSH_EVERY]. MACHINERY is the sandbox tool the process first execs (bwrap),
whose own processes are not the job's ('-': none, the first exec is the job's). Of
MAX_RECORDS, RESERVE each are kept for execs, for connections and for opens and writes of
SENSITIVE paths (a JSON list of substrings: credentials, persistence): a flood of chmods
cannot push out a later exec or a .pth written. Records
are flushed every FLUSH_EVERY (default 64; 1 where a reader forwards them as they come).
Stdlib only, imports next to nothing.

At an exec's stop the new image is read from /proc/PID/exe: an image that is no file
(`/memfd:NAME (deleted)`, a file deleted since) marks the record `fileless`, whatever
path or descriptor (`execveat(fd, "", AT_EMPTY_PATH)`, /proc/self/fd/N) named it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import sys
import time

PTRACE_CONT, PTRACE_SYSCALL = 7, 24
PTRACE_GETEVENTMSG, PTRACE_SEIZE, PTRACE_LISTEN = 0x4201, 0x4206, 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E
OPTIONS = (0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x80  # SYSGOOD FORK VFORK CLONE EXEC SECCOMP
           | 0x100000)  # EXITKILL: if this tracer dies, every tracee dies with it
EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC, EVENT_SECCOMP, EVENT_STOP = 1, 2, 3, 4, 7, 128
OP_EXIT, OP_SECCOMP = 2, 3
STOP_SIGNALS = (19, 20, 21, 22)  # SIGSTOP SIGTSTP SIGTTIN SIGTTOU
SIGTRAP = 5
WALL = 0x40000000
ARGV_CAP = 64
# Bytes of records written in all, under what the host reads back (TRACE_CAP, 16 MiB, in
# host/tracer.py): 20,000 records of 64 escaped 512-character arguments would be gigabytes
# in the run dir. Past ORDINARY_BYTES only execs, connections and sensitive opens are kept.
BYTE_CAP = 15 << 20
ORDINARY_BYTES = 12 << 20
FLUSH_EVERY = 64
# Argument layout per syscall: which args are paths (P), a sockaddr (S: ptr, len), flags.
PATHS = {"open": (0,), "creat": (0,), "openat": (1,), "openat2": (1,), "execve": (0,),
         "execveat": (1,), "unlink": (0,), "unlinkat": (1,), "rename": (0, 1),
         "renameat": (1, 3), "renameat2": (1, 3), "chmod": (0,), "fchmodat": (1,),
         "mkdir": (0,), "mkdirat": (1,), "symlink": (0, 1), "symlinkat": (0, 2),
         "link": (0, 1), "linkat": (1, 3)}
DIRFD = {"openat": 0, "openat2": 0, "execveat": 0, "unlinkat": 0, "renameat": 0,
         "renameat2": 0, "fchmodat": 0, "mkdirat": 0, "linkat": 0}
FLAGS = {"open": 1, "openat": 2}
VITAL = {"execve": "exec", "execveat": "exec", "connect": "network", "bind": "network",
         "listen": "network", "sendto": "network", "sendmsg": "network"}
OPENS = ("open", "openat", "openat2", "creat")
SOCKADDR = {"connect": (1, 2), "bind": (1, 2), "sendto": (4, 5)}


class _Info(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("ip", ctypes.c_uint64), ("sp", ctypes.c_uint64),
                ("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6),
                ("ret_data", ctypes.c_uint32), ("pad2", ctypes.c_uint32)]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long
_libc.process_vm_readv.restype = ctypes.c_ssize_t


def _ptrace(request: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    return _libc.ptrace(request, pid, addr, data)


def read_memory(pid: int, address: int, size: int) -> bytes:
    """Up to `size` bytes at `address`, stopping at the first unreadable page."""
    out = bytearray()
    while size > 0 and address:
        chunk = min(size, 4096 - (address % 4096))
        buffer = ctypes.create_string_buffer(chunk)
        local = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), chunk)
        remote = _IoVec(address, chunk)
        got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            break
        out += buffer.raw[:got]
        if got < chunk:
            break
        address += got
        size -= got
    return bytes(out)


class Tracer:
    def __init__(self, output: int, cap_records: int, reserve: int, string_cap: int,
                 machinery: str | None, names: dict[int, str],
                 sensitive: tuple[str, ...] = (), flush_every: int = FLUSH_EVERY) -> None:
        self.out = os.fdopen(output, "w", encoding="utf-8")
        self.cap, self.string_cap, self.machinery, self.names = (cap_records, string_cap,
                                                                 machinery, names)
        self.reserve, self.sensitive, self.flush_every = reserve, sensitive, flush_every
        self.ordinary = max(0, cap_records - reserve * (len(set(VITAL.values())) + 1))
        self.reserved: dict[str, int] = {}  # vital kind -> records written past `ordinary`
        self.dropped_vital = 0
        self.procs: dict[int, dict] = {}  # tid -> {"ppid", "exe", "job"}
        self.pending: dict[int, dict] = {}  # tid -> the record waiting for its exit stop
        self.early: set[int] = set()
        self.written = self.dropped = self.bytes = 0
        self.started = time.monotonic()
        self.info = _Info()

    def string(self, pid: int, address: int) -> dict | str | None:
        if not address:
            return None
        raw = read_memory(pid, address, self.string_cap + 1)
        end = raw.find(b"\0")
        cut = end < 0 and len(raw) > self.string_cap
        text = (raw if end < 0 else raw[:end])[:self.string_cap]
        value = text.decode("utf-8", "backslashreplace")
        return {"text": value, "truncated": True} if cut else value

    def argv(self, pid: int, address: int) -> list:
        out: list = []
        while address and len(out) < ARGV_CAP:
            raw = read_memory(pid, address, 8)
            if len(raw) < 8:
                break
            pointer = struct.unpack("<Q", raw)[0]
            if not pointer:
                return out
            out.append(self.string(pid, pointer))
            address += 8
        if len(out) >= ARGV_CAP:
            out.append({"text": "", "truncated": True})
        return out

    def sockaddr(self, pid: int, address: int, length: int) -> dict | None:
        if not address:
            return None
        raw = read_memory(pid, address, max(0, min(length, 128)))
        if len(raw) < 2:
            return {"family": None}
        family = struct.unpack("<H", raw[:2])[0]
        if family == 2 and len(raw) >= 8:
            return {"family": "inet", "host": ".".join(str(b) for b in raw[4:8]),
                    "port": struct.unpack(">H", raw[2:4])[0]}
        if family == 10 and len(raw) >= 24:
            groups = struct.unpack(">8H", raw[8:24])
            return {"family": "inet6", "host": ":".join(f"{g:x}" for g in groups),
                    "port": struct.unpack(">H", raw[2:4])[0]}
        if family == 1:
            path = raw[2:]
            abstract = path[:1] == b"\0"
            path = path[1:] if abstract else path.split(b"\0", 1)[0]
            return {"family": "unix", "path": path[:self.string_cap].decode(
                "utf-8", "backslashreplace"), "abstract": abstract}
        return {"family": family}

    def resolved(self, pid: int, path: object, dirfd: object) -> str | None:
        """A relative path made absolute from the dir it is relative to (the dir fd's or
        the cwd's link, as this tracer sees it), capped; None for an absolute one."""
        text = path.get("text") if isinstance(path, dict) else path
        if not isinstance(text, str) or text.startswith("/"):
            return None
        link = f"/proc/{pid}/cwd" if dirfd == "cwd" else f"/proc/{pid}/fd/{dirfd}"
        try:
            base = os.readlink(link.encode()).decode("utf-8", "backslashreplace")
        except OSError:
            return None
        return os.path.join(base, text)[:self.string_cap]

    def image(self, pid: int) -> str | None:
        """What `pid` runs now (/proc/PID/exe's target, capped), or None when unreadable."""
        try:
            target = os.readlink(f"/proc/{pid}/exe".encode())
        except OSError:
            return None
        return target[:self.string_cap].decode("utf-8", "backslashreplace")

    def entry(self, pid: int, name: str, args: list[int]) -> dict:
        proc = self.procs.setdefault(pid, _proc(pid))
        record: dict = {"type": "syscall", "syscall": name, "pid": proc["tgid"],
                        "ppid": proc["ppid"],
                        "exe": proc["exe"], "t": round(time.monotonic() - self.started, 6)}
        paths = [self.string(pid, args[i]) for i in PATHS.get(name, ())]
        if paths:
            record["paths"] = paths
        if name in DIRFD:
            dirfd = ctypes.c_int32(args[DIRFD[name]] & 0xFFFFFFFF).value
            record["dirfd"] = "cwd" if dirfd == -100 else dirfd
        if name in OPENS and paths:
            resolved = self.resolved(pid, paths[0], record.get("dirfd", "cwd"))
            if resolved is not None:
                record["resolved"] = resolved
        if name in FLAGS:
            record["flags"] = args[FLAGS[name]] & 0xFFFFFFFF
        elif name == "openat2":
            raw = read_memory(pid, args[2], 8)
            record["flags"] = struct.unpack("<Q", raw)[0] & 0xFFFFFFFF if len(raw) == 8 else None
        elif name == "creat":
            record["flags"] = 0o1101
        if name in ("execve", "execveat"):
            record["argv"] = self.argv(pid, args[1 if name == "execve" else 2])
        if name in SOCKADDR:
            where, length = SOCKADDR[name]
            record["address"] = self.sockaddr(pid, args[where], args[length])
        elif name == "sendmsg":
            raw = read_memory(pid, args[1], 12)
            if len(raw) == 12:
                pointer, length = struct.unpack("<QI", raw)
                record["address"] = self.sockaddr(pid, pointer, length)
        if name in ("chmod", "fchmodat"):
            record["mode"] = args[1 if name == "chmod" else 2] & 0o7777
        return record

    def vital(self, record: dict) -> str | None:
        """The kind of a record worth its reserve: an exec, a connection, a sensitive open."""
        name = record.get("syscall")
        if name in VITAL:
            return VITAL[name]
        if name in OPENS or name in PATHS:  # opens, and the writes (renames, chmods ...)
            for path in record.get("paths") or ():
                text = path.get("text") if isinstance(path, dict) else path
                if isinstance(text, str) and any(s in text for s in self.sensitive):
                    return "sensitive"
        return None

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"  # ASCII: one byte a char
        if self.written >= self.ordinary or self.bytes + len(line) > ORDINARY_BYTES:
            kind = self.vital(record)
            if kind is None or self.reserved.get(kind, 0) >= self.reserve \
                    or self.written >= self.cap or self.bytes + len(line) > BYTE_CAP:
                self.dropped += 1
                self.dropped_vital += kind is not None
                return
            self.reserved[kind] = self.reserved.get(kind, 0) + 1
        self.written += 1
        self.bytes += len(line)
        self.out.write(line)
        if self.written % self.flush_every == 0:
            self.out.flush()

    def finish_syscall(self, pid: int, rval: int, is_error: bool) -> None:
        record = self.pending.pop(pid, None)
        if record is None:
            return
        record["result"] = errno.errorcode.get(-rval, str(-rval)) if is_error else "ok"
        proc = self.procs.get(pid)
        if record["syscall"] in ("execve", "execveat") and not is_error and proc is not None:
            exe = record.get("paths", [None])[0]
            image = record.get("image")
            if isinstance(image, str) and (image.startswith("/memfd:")
                                           or image.endswith(" (deleted)")):
                record["fileless"] = True
                exe = image  # later records of this process name what it runs
            proc["exe"] = exe if isinstance(exe, str) else None
            if not proc["job"] and (self.machinery is None or exe != self.machinery):
                proc["job"] = True
            record["exe"] = proc["exe"]
        if proc is not None and proc["job"]:
            self.write(record)

    def stop(self, pid: int, status: int) -> int:
        """Handle one stop of `pid`; returns the signal to deliver on resume."""
        sig, event = os.WSTOPSIG(status), status >> 16
        if event == EVENT_SECCOMP or sig == SIGTRAP | 0x80:
            if _ptrace(PTRACE_GET_SYSCALL_INFO, pid, ctypes.sizeof(self.info),
                       ctypes.addressof(self.info)) <= 0:
                return 0
            if self.info.op == OP_SECCOMP:
                name = self.names.get(self.info.nr, f"syscall {self.info.nr}")
                self.pending[pid] = self.entry(pid, name, list(self.info.args))
            elif self.info.op == OP_EXIT:
                rval = ctypes.c_int64(self.info.nr).value  # the union's first field
                self.finish_syscall(pid, rval, bool(self.info.args[0] & 0xFF))
            return 0
        if event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
            message = ctypes.c_ulong()
            if _ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(message)) == 0:
                parent = self.procs.setdefault(pid, _proc(pid))
                thread = event == EVENT_CLONE  # a thread (or a clone the kernel reports so)
                self.procs[message.value] = {
                    **parent, "tgid": parent["tgid"] if thread else message.value,
                    "ppid": parent["ppid"] if thread else parent["tgid"]}
                if parent["job"] and not thread:
                    self.write({"type": "fork", "pid": message.value, "ppid": parent["tgid"],
                                "exe": parent["exe"]})
                if message.value in self.early:  # it stopped first: it may run on now
                    self.early.discard(message.value)
                    _ptrace(PTRACE_CONT, message.value)
            return 0
        if event == EVENT_EXEC:
            message = ctypes.c_ulong()
            if _ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(message)) == 0:
                former = message.value
                if former != pid and former in self.pending:
                    self.pending[pid] = self.pending.pop(former)
            if pid in self.pending:
                self.pending[pid]["image"] = self.image(pid)
            return 0
        if event == EVENT_STOP:
            if sig in STOP_SIGNALS:
                _ptrace(PTRACE_LISTEN, pid)
                return -1
            if pid not in self.procs:  # a new child before its parent's fork event:
                self.early.add(pid)  # held until that event says whose it is
                return -1
            return 0
        return sig

    def run(self, first: int) -> None:
        self.procs[first] = {**_proc(first), "job": self.machinery is None}
        while True:
            try:
                pid, status = os.waitpid(-1, WALL)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.procs.pop(pid, None)
                self.pending.pop(pid, None)
                continue
            if not os.WIFSTOPPED(status):
                continue
            deliver = self.stop(pid, status)
            if deliver >= 0:
                request = PTRACE_SYSCALL if pid in self.pending else PTRACE_CONT
                _ptrace(request, pid, 0, deliver)
        self.write_end()

    def write_end(self) -> None:
        end = {"type": "end", "records": self.written, "dropped": self.dropped,
               "dropped_vital": self.dropped_vital, "cap": self.cap,
               "byte_cap": BYTE_CAP, "reserve": self.reserve}
        self.out.write(json.dumps(end) + "\n")
        self.out.close()


def _proc(pid: int) -> dict:
    """What is known of a process first seen at `pid` (its thread group, parent, image)."""
    return {"tgid": pid, "ppid": None, "exe": None, "job": False}


def main() -> None:
    output, request, go, cap, reserve, string_cap = (int(a) for a in sys.argv[2:8])
    machinery = None if sys.argv[8] == "-" else sys.argv[8]
    names = {int(nr): name for nr, name in (p.split("=") for p in sys.argv[9].split(","))}
    sensitive = tuple(s for s in json.loads(sys.argv[10]) if isinstance(s, str))
    flush_every = int(sys.argv[11]) if len(sys.argv) > 11 else FLUSH_EVERY
    tracer = Tracer(output, cap, reserve, string_cap, machinery, names, sensitive,
                    max(1, flush_every))
    with os.fdopen(request, "rb") as pipe:
        line = pipe.readline(32)
    if not line.strip().isdigit():
        return  # the sandbox process was never started
    first = int(line)
    if _ptrace(PTRACE_SEIZE, first, 0, OPTIONS) != 0:
        err = ctypes.get_errno()
        tracer.out.write(json.dumps({"type": "error", "error": os.strerror(err)}) + "\n")
        tracer.out.close()
        return  # the sandbox process reads EOF on its go pipe and refuses to start
    os.write(go, b"1")
    os.close(go)
    tracer.run(first)


if __name__ == "__main__":  # run as a file: inside a micro-VM (argv[1], the source root, unused)
    main()
    os._exit(0)  # the records are closed: the interpreter's teardown is slow under emulation
