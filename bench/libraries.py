"""The libraries scenario of bench/run: the per-call cost of every TLS
library cleartap captures, each against its own floor, in one run.

Each library's workload is a ping-pong of SIZE-byte messages between a
client and a server over loopback, both on that library: bench/tls_pair.c
(OpenSSL, as a reference beside the per-call table), bench/gnutls_pair.c
(libgnutls), bench/nss_pair.c (libnss3, PR_Write and
PR_Read), and the `pingpong` mode of the test peers: tests/go/tlspeer (Go
crypto/tls), tests/rustls/rustlspeer (rustls 0.23, symbols kept, as cargo
builds by default) and tests/boring/boringpeer stripped of every symbol
(BoringSSL, found from its code). Every workload prints tls_pair's JSON
line: its data calls (ssl_calls) and the plaintext a capture of both sides
sees (plaintext_bytes).

Modes: baseline (nothing attached); ct-floor, empty uprobe or uretprobe
programs at exactly the points cleartap attaches in that file (read from
the kernel while cleartap runs, so Go's return-instruction probes and
rustls's entry-only probes are copied as they are); cleartap (`cleartap
tls --format json` to a file). The probed file is one cleartap has not
seen (an executable built here, or a private copy of the system library
loaded through LD_LIBRARY_PATH), attached as cleartap attaches such files:
when a first, untimed run of the workload runs it, whose records are not
counted (not --hold-unchecked, which would stop other programs on the host
too). The cost is the CPU time of the workload's processes per data call,
as in the per-call table; interleaved repetitions, the median of each mode.

Checks, whatever the speed: cleartap captured every byte of every message
of both sides (the sent and the received bytes of the workload's records
each equal half of its plaintext_bytes) and lost nothing.
"""
import ctypes
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time

import scenarios
from empty_probes import EmptyProbes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [64, 16384]
ITERATIONS = {64: 5000, 16384: 1000}
MODES = ["baseline", "ct-floor", "cleartap"]


class Peer:
    """One library's workload: argv before SIZE ITERATIONS, the comm of its
    processes and the library name its records carry. The file cleartap
    probes is new to it, so that the uprobes attached after `ready` are
    that file's: an executable built here, or a private copy of a shared
    library loaded through LD_LIBRARY_PATH (the same code as the system's)."""

    def __init__(self, name, argv, comm, library, scratch, soname=None, siblings=()):
        self.name, self.argv, self.comm, self.library = name, argv, comm, library
        # As cleartap names a file: symbolic links resolved.
        self.env, self.probed = None, os.path.realpath(argv[0])
        if soname:
            private = os.path.join(scratch, f"{name}-lib")
            os.makedirs(private, exist_ok=True)
            self.probed = os.path.join(private, soname)
            for copied in (soname, *siblings):
                shutil.copyfile(linked(argv[0], copied), os.path.join(private, copied))
            self.env = {**os.environ, "LD_LIBRARY_PATH": private}
            # Its first run under cleartap, which makes cleartap attach the
            # copy, runs under another name: its records are not counted.
            self.first_argv = [os.path.join(scratch, f"first-{os.path.basename(argv[0])}"), *argv[1:]]
            shutil.copy(argv[0], self.first_argv[0])
        self.points, self.attached = [], ""

    def command(self, size, iterations, first=False):
        return [*(self.first_argv if first and self.env else self.argv), str(size), str(iterations)]


def run(env, quick):
    """Every library's rows; the dict bench/run writes under "libraries"."""
    for tool in ("bpftool", "certutil", "pk12util", "strip", "pkg-config"):
        if not shutil.which(tool):
            sys.exit(f"bench: libraries: {tool} is needed (scripts/install-deps --test)")
    peers, checks = build_peers(env), []
    for peer in peers:
        find_points(env, peer)
        print(f"libraries: {peer.name}: {len(peer.points)} probe points in {peer.probed} ({peer.attached})")
    # Three, not the per-call table's five: each cleartap repetition starts
    # cleartap and attaches a file, about a second of fixed cost.
    reps, found = (1 if quick else 3), [p for p in peers if p.points]
    for peer in peers:
        checks.append(scenarios.check(f"libraries: cleartap probes {peer.name}", peer.points,
                                      f"{len(peer.points)} uprobes in {peer.probed}"))
    rows = []
    for size in SIZES:
        n = ITERATIONS[size] // (5 if quick else 1)
        samples = {p.name: {m: [] for m in MODES} for p in found}
        for _ in range(reps):  # interleaved: drift hits every library and mode alike
            for peer in found:
                for mode in MODES:
                    samples[peer.name][mode].append(measure(env, peer, mode, size, n))
        for peer in found:
            row = summarise(peer, size, n, reps, samples[peer.name])
            checks += row.pop("checks")
            rows.append(row)
            print(f"libraries: {peer.name} {size} B done", flush=True)
    print()
    print(table(rows))
    return {"sizes": SIZES, "iterations": {s: ITERATIONS[s] // (5 if quick else 1) for s in SIZES},
            "repetitions": reps, "points": {p.name: {"file": p.probed, "attached": p.attached,
                                                     "uprobes": [[o, r] for _, o, r in p.points]} for p in peers},
            "rows": rows, "checks": checks}


# --- the workloads ----------------------------------------------------------

def build_peers(env):
    scratch, cert, key = env["scratch"], env["cert"], env["key"]
    gnutls, nss = compile_pair(scratch, "gnutls_pair", ["-lgnutls"]), compile_pair(scratch, "nss_pair", nss_flags())
    boring = stripped(cargo_peer("boring", "boringpeer"), os.path.join(scratch, "boringpeer-stripped"))
    rustls, go = cargo_peer("rustls", "rustlspeer"), scenarios.build_tlspeer(scratch)
    return [
        # libcrypto beside libssl: cleartap reads OpenSSL's version there.
        Peer("openssl", [env["pair"], cert, key], "tls_pair", "openssl", scratch, "libssl.so.3", ["libcrypto.so.3"]),
        Peer("gnutls", [gnutls, cert, key], "gnutls_pair", "gnutls", scratch, "libgnutls.so.30"),
        Peer("nss", [nss, nss_database(scratch, cert, key), "server"], "nss_pair", "nss", scratch, "libnspr4.so"),
        Peer("go", [go, "pingpong", cert, key], "tlspeer", "go", scratch),
        Peer("rustls", [rustls, "pingpong", cert, key], "rustlspeer", "rustls", scratch),
        Peer("boringssl (stripped)", [boring, "pingpong", cert, key], "boringpeer-stri", "boringssl", scratch),
    ]


def compile_pair(scratch, name, flags):
    out = os.path.join(scratch, name)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", out, os.path.join(ROOT, "bench", f"{name}.c"), *flags], check=True)
    return out


def nss_flags():
    found = subprocess.run(["pkg-config", "--cflags", "--libs", "nss"], capture_output=True, text=True)
    if found.returncode:
        sys.exit("bench: libraries: NSS's headers are missing (libnss3-dev: scripts/install-deps --test)")
    return found.stdout.split()


def nss_database(scratch, cert, key):
    """An NSS database holding the server's certificate and key as "server"."""
    db, p12 = os.path.join(scratch, "nssdb"), os.path.join(scratch, "server.p12")
    os.makedirs(db, exist_ok=True)
    for argv in (["certutil", "-N", "-d", f"sql:{db}", "--empty-password"],
                 ["openssl", "pkcs12", "-export", "-in", cert, "-inkey", key, "-name", "server",
                  "-passout", "pass:", "-out", p12],
                 ["pk12util", "-i", p12, "-d", f"sql:{db}", "-W", ""]):
        subprocess.run(argv, check=True, capture_output=True)
    return f"sql:{db}"


def linked(program, soname):
    """The file `program` loads for `soname` (ldd), symbolic links resolved."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith(soname + " ") and "=>" in line:
            return os.path.realpath(line.split("=>")[1].split("(")[0].strip())
    sys.exit(f"bench: libraries: {program} does not link {soname}")


def cargo_peer(kind, name):
    """tests/KIND/NAME built as the end-to-end tests build it, in the same
    target directory (CI's test run has built it already)."""
    target = os.path.join(ROOT, "target", f"{kind}-tests")
    manifest = os.path.join(ROOT, "tests", kind, name, "Cargo.toml")
    built = subprocess.run(["cargo", "build", "--quiet", "--locked", "--release", "--manifest-path", manifest],
                           env={**os.environ, "CARGO_TARGET_DIR": target}, capture_output=True, text=True)
    if built.returncode:
        sys.exit(f"bench: libraries: building {manifest} failed (scripts/install-deps --test):\n{built.stderr}")
    return os.path.join(target, "release", name)


def stripped(binary, out):
    subprocess.run(["strip", "--strip-all", "-o", out, binary], check=True)
    return out


# --- where cleartap probes ----------------------------------------------------

def find_points(env, peer):
    """Every uprobe cleartap attached to the peer's file, (path, file
    offset, is_retprobe), as the kernel has them: the uprobe links its
    programs hold (bpftool) created after `ready`, until it said it
    attached the file. Both bpftool 7.1 and the kernel's link info name
    the file as cleartap passed it (/proc/self/fd/N of a descriptor closed
    since), so the file is known by the time, and must be one."""
    out = os.path.join(env["scratch"], "points.out")
    tap, _, before = start_cleartap(env, peer, out)
    listed = subprocess.run(["bpftool", "perf", "show", "--json"], capture_output=True, text=True, check=True)
    programs = {e["prog_id"] for e in json.loads(listed.stdout or "[]") if e.get("pid") == tap.proc.pid}
    new = [link for link in uprobe_links() if link[0] > before and link[1] in programs]
    names = {name for _, _, name, _, _ in new}
    peer.attached = next((l.split(" (", 1)[1].rstrip(")") for l in tap.attached()
                          if l.startswith(f"cleartap: attached to {peer.probed} (")), "not attached")
    tap.stop()
    os.unlink(out)
    if len(names) > 1:
        sys.exit(f"bench: libraries: cleartap attached {len(names)} files while {peer.name} first ran, "
                 f"not only {peer.probed}: run again")
    peer.points = sorted((peer.probed, offset, ret) for _, _, _, offset, ret in new)


BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_GET_FD_BY_ID, BPF_LINK_GET_NEXT_ID = 15, 30, 31
BPF_LINK_TYPE_PERF_EVENT, BPF_PERF_EVENT_UPROBE, BPF_PERF_EVENT_URETPROBE = 7, 1, 2


def uprobe_links():
    """(link id, program id, file, offset, is_retprobe) of every uprobe
    link on the host: struct bpf_link_info's perf_event.uprobe (6.6+)."""
    found, link_id = [], 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("<II", link_id, 0), 16)
        if _bpf(BPF_LINK_GET_NEXT_ID, attr) < 0:
            return found  # ENOENT: the last one
        link_id = struct.unpack_from("<I", attr, 4)[0]
        fd = _bpf(BPF_LINK_GET_FD_BY_ID, ctypes.create_string_buffer(struct.pack("<I", link_id), 16))
        if fd < 0:
            continue  # gone since
        try:
            name = ctypes.create_string_buffer(4096)
            info = ctypes.create_string_buffer(256)
            struct.pack_into("<QI", info, 24, ctypes.addressof(name), len(name))
            query = ctypes.create_string_buffer(struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)), 16)
            if _bpf(BPF_OBJ_GET_INFO_BY_FD, query) < 0:
                continue
            kind, _, prog_id, event = struct.unpack_from("<IIII", info, 0)[:3] + struct.unpack_from("<I", info, 16)
            if kind == BPF_LINK_TYPE_PERF_EVENT and event in (BPF_PERF_EVENT_UPROBE, BPF_PERF_EVENT_URETPROBE):
                offset = struct.unpack_from("<I", info, 36)[0]
                found.append((link_id, prog_id, name.value.decode(errors="replace"), offset,
                              event == BPF_PERF_EVENT_URETPROBE))
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(command, attr):
    return _libc.syscall(321, command, attr, len(attr))  # bpf(2), x86-64


def start_cleartap(env, peer, out):
    """cleartap, ready and attached to the peer's file, as it attaches a
    file it has not seen: when a process runs or loads it (one short
    untimed run). Also that run's pid and the last uprobe link before it."""
    tap = scenarios.Cleartap(env["cleartap"], ["--format", "json", *scenarios.ring_args(env)], out)
    before = max((link[0] for link in uprobe_links()), default=0)
    first = run_workload(peer.command(64, 2, first=True), peer.env)
    for _ in range(200):
        if any(l.startswith(f"cleartap: attached to {peer.probed} (") for l in tap.attached()):
            # Its CPU "after ready" then counts from here: the consumer of
            # the timed run, without checking and attaching the file.
            tap.ready_cpu_s = scenarios.process_cpu_s(tap.proc.pid)
            return tap, first["pid"], before
        time.sleep(0.05)
    tap.stop()
    sys.exit(f"bench: libraries: cleartap did not attach to {peer.probed} within 10 s of its run")


# --- measuring ----------------------------------------------------------------

def run_workload(argv, env=None):
    """Its JSON line, with the CPU time of all its processes (uprobe
    handlers run in the traced tasks, so their cost lands there)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    if status != 0:
        sys.exit(f"bench: libraries: {' '.join(argv)} failed with status {status}")
    result = json.loads(out)
    result["cpu_s"], result["pid"] = usage.ru_utime + usage.ru_stime, proc.pid
    return result


def measure(env, peer, mode, size, iterations):
    argv = peer.command(size, iterations)
    if mode == "baseline":
        result = run_workload(argv, peer.env)
    elif mode == "ct-floor":
        probes = EmptyProbes(peer.points)
        result = run_workload(argv, peer.env)
        probes.remove()
    else:
        out = os.path.join(env["scratch"], "libraries.out")
        tap, first_run, _ = start_cleartap(env, peer, out)
        result = run_workload(argv, peer.env)
        result["tracer"] = tap.stop()
        result["captured"] = captured_bytes(out, peer, first_run)
        os.unlink(out)
    result["ns_per_call"] = result["cpu_s"] * 1e9 / result["ssl_calls"]
    return result


def captured_bytes(path, peer, first_run):
    """Bytes of the peer's records by direction (but the untimed first
    run's), and records of its processes from another library (there must
    be none)."""
    found = {"send": 0, "recv": 0, "other_library": 0}
    with open(path, "rb") as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") != "tls" or r.get("comm") != peer.comm or r.get("pid") == first_run:
                continue
            if r.get("library") != peer.library:
                found["other_library"] += 1
            else:
                found[r["direction"]] += r["len"]
    return found


def summarise(peer, size, iterations, reps, samples):
    median = {m: statistics.median(s["ns_per_call"] for s in samples[m]) for m in MODES}
    base = median["baseline"]
    consumer = statistics.median(s["tracer"]["cpu_after_ready_s"] * 1e9 / s["ssl_calls"]
                                 for s in samples["cleartap"])
    checks = [capture_check(peer, size, i, s) for i, s in enumerate(samples["cleartap"])]
    return {"library": peer.name, "size": size, "iterations": iterations, "repetitions": reps,
            "calls_per_round": statistics.median(s["ssl_calls"] / iterations for s in samples["baseline"]),
            "baseline_ns": base, "added_ns": {m: median[m] - base for m in MODES if m != "baseline"},
            "consumer_ns": consumer, "samples": samples, "checks": checks}


def capture_check(peer, size, rep, sample):
    half = sample["plaintext_bytes"] // 2
    got, tracer = sample["captured"], sample["tracer"]
    lost = tracer.get("lost_records", "?")
    ok = got["send"] == half and got["recv"] == half and got["other_library"] == 0 and lost == 0
    return scenarios.check(f"libraries: {peer.name} {size} B, repetition {rep + 1}: every message captured", ok,
                           f"sent {got['send']:,} and received {got['recv']:,} bytes captured of {half:,} each; "
                           f"{got['other_library']} records from another library; {lost} lost in the kernel")


def table(rows):
    lines = ["Per call, per library: CPU time of the workload's processes per data call (median of the "
             "repetitions). baseline: us per call; ct-floor, cleartap: ns added per call over the baseline; "
             "ct-ctfl: cleartap over its own floor (its programs' work); consumer: cleartap's own CPU per call "
             "from the attach on.",
             f"{'library':>21} {'size':>6} {'calls/rd':>8} {'baseline':>9} {'ct-floor':>8} {'cleartap':>8} "
             f"{'ct-ctfl':>8} {'ct/ctfl':>8} {'consumer':>8}"]
    for r in rows:
        a = r["added_ns"]
        lines.append(f"{r['library']:>21} {r['size']:>6} {r['calls_per_round']:>8.1f} {r['baseline_ns'] / 1000:>9.2f}"
                     f" {a['ct-floor']:>8.0f} {a['cleartap']:>8.0f} {a['cleartap'] - a['ct-floor']:>8.0f}"
                     f" {scenarios.ratio(a['cleartap'], a['ct-floor']):>8} {r['consumer_ns']:>8.0f}")
    return "\n".join(lines)
