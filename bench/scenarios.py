"""The whole-system scenarios of bench/run, beside its per-call table:
stream, nginx, burst, scale and soak. Each returns a dict that goes into
the results JSON and prints its own lines. No speed is asserted: a missed
target is measured and reported. What must hold whatever the speed (the
captured stream is the sent one, captured + lost = moved, every record
attributed right) goes into the dict's "checks", which bench/run turns
into its exit status.
"""
import atexit
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from empty_probes import EmptyProbes

CONN_TABLE = re.compile(r"connection table: (\d+) entries created, (\d+) evicted")
SUMMARY = re.compile(r"(\d+) records, (\d+) bytes captured; lost in the kernel: (\d+) records \((\d+) bytes\)"
                     r"(?:; (\d+) bytes beyond the per-call limit)?")


def summary_counts(line):
    """records, bytes, lost_records, lost_bytes, truncated_bytes from
    cleartap's summary line; {} when the line is not one."""
    m = SUMMARY.search(line or "")
    if not m:
        return {}
    names = ["records", "bytes", "lost_records", "lost_bytes", "truncated_bytes"]
    return {k: int(v or 0) for k, v in zip(names, m.groups())}


def check(name, ok, detail):
    """One correctness check: what must hold whatever the speed."""
    return {"check": name, "ok": bool(ok), "detail": detail}


class Cleartap:
    """`cleartap tls ...` started, ready, and stopped with SIGINT."""

    def __init__(self, binary, args, out_path):
        self.out = open(out_path, "wb")
        self.start_time = time.monotonic()
        self.proc = subprocess.Popen([binary, "tls", *args], stdout=self.out, stderr=subprocess.PIPE)
        # A scenario that fails leaves no cleartap tracing (or holding
        # processes, with --hold-unchecked) after the run.
        atexit.register(self._abandon)
        self.stderr = []
        # (when read, line) of the lines after ready: for the first-run latency.
        self.stderr_times = []
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.stderr.append(text)
            if text == "ready":
                self.ready_s = time.monotonic() - self.start_time
                self.ready_cpu_s = process_cpu_s(self.proc.pid)
                # Keep reading: a full pipe would block cleartap's warnings.
                self.reader = threading.Thread(target=self._drain_stderr, daemon=True)
                self.reader.start()
                return
        sys.exit("bench: cleartap exited before ready:\n" + "\n".join(self.stderr))

    def _abandon(self):
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.stderr.append(text)
            self.stderr_times.append((time.monotonic(), text))

    def attached(self):
        """Files attached so far (each adds the fds of its uprobe links)."""
        return [l for l in self.stderr if l.startswith("cleartap: attached to ")]

    def fd_kinds(self):
        """Open fds by what they are (bpf-link, perf_event, socket, ...)."""
        kinds = {}
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
            except OSError:
                continue
            kind = target.split(":", 1)[0] + (":" + target.split(":", 1)[1] if target.startswith("anon_inode") else "")
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        """Returns cpu seconds, peak RSS, and the summary's counts."""
        self.proc.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        self.reader.join(timeout=10)
        self.out.close()
        found = [summary_counts(l) for l in self.stderr]
        found = [c for c in found if c]
        counts = found[-1] if found else {}
        table = [m for m in map(CONN_TABLE.search, self.stderr) if m]
        if table:
            counts["conn_entries"], counts["conn_evicted"] = map(int, table[-1].groups())
        cpu = usage.ru_utime + usage.ru_stime
        # After ready: the consumer's work, without loading and attaching.
        return {"cpu_s": cpu, "cpu_after_ready_s": cpu - self.ready_cpu_s, "rss_kib": usage.ru_maxrss, **counts}


def process_cpu_s(pid):
    """User + system CPU of a live process, all its threads (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Floor:
    """Empty uprobe+uretprobe pairs on the library (bpftrace): the trap alone."""

    def __init__(self, script, scratch):
        self.out = open(os.path.join(scratch, "floor.out"), "wb")
        self.proc = subprocess.Popen(["bpftrace", "-e", script], stdout=self.out, stderr=subprocess.DEVNULL)
        for _ in range(600):
            with open(self.out.name, "rb") as f:
                if b"Attaching" in f.read(4096):
                    time.sleep(1.0)  # bpftrace prints before the last probe is live
                    return
            if self.proc.poll() is not None:
                sys.exit("bench: bpftrace failed")
            time.sleep(0.05)
        sys.exit("bench: bpftrace did not attach")

    def stop(self):
        """SIGINT; SIGKILL after 30 s: bpftrace sometimes misses the SIGINT
        (seen here: it then sleeps forever and the benchmark with it)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("bench: bpftrace ignored SIGINT for 30 s: killed", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def under(mode, env, fn, cleartap_args=(), out_name="cleartap.out", fmt="json", kernel_cpu=False):
    """Runs fn() under `mode` (baseline, floor, cleartap); returns
    (fn's result, cleartap's stop() or None, cleartap's ready time).
    cleartap writes `--format fmt` (json or binary). kernel_cpu: the
    stats also say how much CPU the BPF programs of the ct-floor or of
    cleartap took while fn() ran (`bpf_cpu_s`, see `BpfCpu`)."""
    tracer = None
    if mode == "floor":
        tracer = Floor(env["floor_script"], env["scratch"])
    elif mode == "ct-floor":
        probes = EmptyProbes(env["ct_points"])
        cpu = BpfCpu(os.getpid()) if kernel_cpu else None
        result = fn()
        stats = {"bpf_cpu_s": cpu.seconds()} if cpu else None
        probes.remove()
        return result, stats
    elif mode == "cleartap":
        out = os.path.join(env["scratch"], out_name)
        tracer = Cleartap(env["cleartap"], ["--lib", env["lib"], "--format", fmt,
                                            *ring_args(env, cleartap_args), *cleartap_args], out)
    cpu = BpfCpu(tracer.proc.pid) if kernel_cpu and mode == "cleartap" else None
    result = fn()
    bpf_cpu_s = cpu.seconds() if cpu else None
    stats = tracer.stop() if tracer else None
    if bpf_cpu_s is not None:
        stats["bpf_cpu_s"] = bpf_cpu_s
    return result, stats


class BpfCpu:
    """The CPU the BPF programs held by `pid` took from now until
    seconds(): the kernel's own count (run_time_ns, kept while
    kernel.bpf_stats_enabled is 1). That time is spent in the traced
    programs' threads, so it shows in neither side's own process CPU."""

    def __init__(self, pid):
        self.pid = pid
        self.start = self._run_time_ns()

    def _run_time_ns(self):
        ids = set()
        for fd in os.listdir(f"/proc/{self.pid}/fdinfo"):
            try:
                with open(f"/proc/{self.pid}/fdinfo/{fd}") as f:
                    ids.update(int(l.split()[1]) for l in f if l.startswith("prog_id:"))
            except OSError:
                continue
        progs = json.loads(subprocess.run(["bpftool", "prog", "show", "--json"], check=True,
                                          capture_output=True, text=True).stdout)
        return {p["id"]: p.get("run_time_ns", 0) for p in progs if p["id"] in ids}

    def seconds(self):
        now = self._run_time_ns()
        return sum(t - self.start.get(i, 0) for i, t in now.items()) / 1e9


class BpfStats:
    """kernel.bpf_stats_enabled on for a block (it costs each program run
    two clock reads, so the whole scenario runs with it, every mode alike)."""
    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self):
        with open(self.PATH) as f:
            self.before = f.read().strip()
        with open(self.PATH, "w") as f:
            f.write("1")

    def __exit__(self, *_):
        with open(self.PATH, "w") as f:
            f.write(self.before)


def ring_args(env, args=()):
    """bench/run's --ringbuf-size, unless the scenario sets its own."""
    return [] if "--ringbuf-size" in args else env.get("ringbuf_args", [])


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


# --- stream --------------------------------------------------------------

def stream(env, total):
    """One connection, `total` bytes in 256 KiB SSL_writes: MiB/s under each
    mode; then the checks: the client's captured stream, every hole filled
    from the sent stream, hashes to the SHA-256 the workload sent (so every
    captured byte is right and in its place), every hole that a later
    record of the connection can mark is marked by a gap of exactly its
    size, and captured + lost = moved (both ends)."""
    chunk = 256 << 10
    rows = {}
    # cleartap twice: JSON lines, and binary records (the bulk format).
    modes = (("baseline", "json"), ("floor", "json"), ("cleartap", "json"), ("cleartap-binary", "binary"))
    for row, fmt in modes:
        mode = "cleartap" if row.startswith("cleartap") else row
        run = lambda: json.loads(subprocess.run(
            [env["stream"], env["cert"], env["key"], str(total), str(chunk)],
            check=True, capture_output=True, text=True).stdout)
        # The capture holds a whole 256 KiB call at once many times over.
        # Written with -o, as a bulk capture would be (a file cleartap
        # creates is written past the page cache: src/output/direct.rs).
        out = os.path.join(env["scratch"], "stream.out")
        args = ["--comm", "tls_stream", "--decode", "raw", "-o", out]
        result, stats = under(mode, env, run, args, os.devnull, fmt)
        rows[row] = {"mib_s": result["mib_s"], "sha256": result["sha256"], "cleartap": stats}
        if stats:
            rows[row]["output_bytes"] = os.path.getsize(out)
            rows[row]["capture"] = rebuild_stream(binary_records(out) if fmt == "binary" else json_records(out),
                                                  total, chunk)
            os.unlink(out)
    for row in ("cleartap", "cleartap-binary"):
        stream_checks(rows, row, total)
    return rows


def stream_checks(rows, row, total):
    """The checks and the printed summary of one cleartap row of the stream."""
    c = rows[row]
    got, s = c["capture"], c["cleartap"]
    c["captured_sha256_equal"] = got["sha256"] == c["sha256"]
    # Both ends: the client's writes and the server's reads, then the
    # server's 64-byte digest written and read back.
    moved = 2 * total + 2 * 64
    accounted = s.get("bytes", 0) + s.get("lost_bytes", 0) + s.get("truncated_bytes", 0)
    name = "stream" if row == "cleartap" else "stream (binary)"
    c["checks"] = [
        check(f"{name}: captured stream (holes filled from the sent one) has the sent SHA-256",
              c["captured_sha256_equal"] and got["wrong_records"] == 0,
              f"{got['sha256']} vs sent {c['sha256']}; {got['records']} records, {got['wrong_records']} "
              f"with other bytes than sent there, {got['overlaps']} overlapping; {got['hole_bytes']} bytes in "
              f"{got['holes']} holes"),
        check(f"{name}: every hole marked by a gap of its size", got["unmarked_holes"] == 0,
              f"{got['unmarked_holes']} of {got['holes']} holes not marked exactly"
              + "".join(f"; a {w} hole, which no record can mark, not counted" for w in got["unmarkable_holes"])),
        check(f"{name}: captured + lost = moved", accounted == moved,
              f"{s.get('bytes')} captured + {s.get('lost_bytes')} lost + {s.get('truncated_bytes', 0)} "
              f"truncated = {accounted} vs {moved} moved"),
    ]
    print(f"\n{name}: {total >> 20} MiB over one connection (256 KiB SSL_write calls), "
          f"{c['output_bytes'] / 2**20:.0f} MiB of output")
    print(f"  MiB/s: baseline {rows['baseline']['mib_s']:.0f}, floor {rows['floor']['mib_s']:.0f}, "
          f"cleartap {c['mib_s']:.0f} ({ratio(c['mib_s'], rows['floor']['mib_s'])} of the floor, "
          f"{ratio(c['mib_s'], rows['baseline']['mib_s'])} of the baseline)")
    print(f"  captured stream SHA-256 {'equals' if c['captured_sha256_equal'] else 'DIFFERS FROM'} the "
          f"sent one (holes filled: {got['hole_bytes']} bytes in {got['holes']}); lost {s.get('lost_records')} "
          f"records ({s.get('lost_bytes')} bytes); "
          f"cleartap cpu {s['cpu_s']:.1f} s ({s['cpu_s'] * 1000 / (s.get('bytes', 0) / 2**20 or 1):.1f} ms per "
          f"captured MiB; {s['cpu_after_ready_s'] * 1000 / (s.get('bytes', 0) / 2**20 or 1):.2f} after ready), "
          f"peak RSS {s['rss_kib'] / 1024:.0f} MiB")


def json_records(path):
    """The TLS records of a JSON lines file, each with its payload as `data`."""
    with open(path, "rb") as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "tls":
                r["data"] = base64.b64decode(r.pop("data_b64"))
                yield r


def binary_records(path):
    """The TLS records of a --format binary file (src/output/binary.rs):
    each `T` record's head is its JSON line up to the payload, its data
    the payload."""
    with open(path, "rb") as f:
        magic = f.read(12 + 25)
        assert magic[:1] == b"M" and magic[12:] == b"cleartap binary records 1", "not a binary capture"
        while header := f.read(12):
            kind, head_len, data_len = header[0:1], *struct.unpack("<II", header[4:12])
            head, data = f.read(head_len), f.read(data_len)
            assert len(head) == head_len and len(data) == data_len, "cut short"
            if kind == b"T":
                r = json.loads(head + b"}")
                r["data"] = data
                yield r


def sent_bytes(call, length):
    """What tls_stream's write number `call` (from 0) sent: zeros, and
    every 64th byte (call + its index) mod 256."""
    data = bytearray(length)
    marks = (length + 63) // 64
    start = call & 0xFF
    data[0::64] = (bytes(range(256)) * (marks // 256 + 2))[start:start + marks]
    return bytes(data)


def rebuild_stream(captured, total, chunk):
    """The client's stream as captured: its SSL_write records placed by
    call_seq (from 1) and offset, holes filled from the sent bytes.
    Returns the SHA-256, how many records carry other bytes than were sent
    at their place, the holes, and how many holes a gap does not mark
    with exactly their size."""
    digest = hashlib.sha256()
    pos = holes = hole_bytes = wrong = overlaps = unmarked = records = 0
    conn = None
    trailing_gap = None
    unmarkable = []

    def fill(upto):
        nonlocal pos
        while pos < upto:
            call, offset = divmod(pos, chunk)
            n = min(upto - pos, chunk - offset)
            digest.update(sent_bytes(call, offset + n)[offset:])
            pos += n

    for r in captured:
        if r["function"] != "SSL_write":
            if conn == (r["pid"], r["conn"]) and r.get("gap"):
                trailing_gap = r["gap"]  # the client's digest read, after the last write
            continue
        conn = (r["pid"], r["conn"])
        records += 1
        data = r["data"]
        at = (r["call_seq"] - 1) * chunk + r["offset"]
        if at < pos:
            overlaps += 1
            continue
        if at > pos:
            gap = r.get("gap") or {}
            marked = gap.get("calls_lost", 0) * chunk + gap.get("bytes_lost", 0)
            holes, hole_bytes = holes + 1, hole_bytes + at - pos
            if records == 1 and not gap:
                unmarkable.append("leading")  # no earlier record of the connection to compare with
            else:
                unmarked += marked != at - pos
            fill(at)
        call, offset = divmod(at, chunk)
        wrong += data != sent_bytes(call, offset + len(data))[offset:]
        digest.update(data)
        pos += len(data)
    if pos < total:
        marked = (trailing_gap or {}).get("calls_lost", 0) * chunk + (trailing_gap or {}).get("bytes_lost", 0)
        holes, hole_bytes = holes + 1, hole_bytes + total - pos
        if trailing_gap is None:
            unmarkable.append("trailing")  # nothing after it on the connection to carry a gap
        else:
            unmarked += marked != total - pos
        fill(total)
    return {"sha256": digest.hexdigest(), "records": records, "wrong_records": wrong, "overlaps": overlaps,
            "holes": holes, "hole_bytes": hole_bytes, "unmarked_holes": unmarked,
            "unmarkable_holes": unmarkable}


# --- nginx ---------------------------------------------------------------

NGINX_CONF = """daemon off; master_process off; worker_processes 1;
error_log {dir}/error.log; pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert}; ssl_certificate_key {key};
    root {dir}/www;
  }}
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_nginx(env):
    d = os.path.join(env["scratch"], "nginx")
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    for size in (1024, 65536):
        with open(os.path.join(d, "www", f"{size}.bin"), "wb") as f:
            f.write(os.urandom(size))
    port = free_port()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port, cert=env["cert"], key=env["key"]))
    proc = subprocess.Popen(["nginx", "-c", os.path.join(d, "nginx.conf"), "-p", d],
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("bench: nginx did not start")


def wrk(port, size, seconds):
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", f"https://127.0.0.1:{port}/{size}.bin"],
                         check=True, capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def nginx(env, seconds):
    """Debian's nginx over HTTPS, keep-alive, driven by wrk on loopback
    (both are captured: wrk uses the same libssl). cleartap's JSON goes to
    /dev/null here: gigabytes of bodies would fill the disk."""
    proc, port = start_nginx(env)
    rows = {}
    modes = ("baseline", "floor", "ct-floor", "cleartap") if env.get("ct_points") else ("baseline", "floor", "cleartap")
    # Also `--decode raw` (records only, no HTTP exchanges): what decoding
    # and printing HTTP costs, against the same floors.
    modes += ("cleartap-raw",)
    try:
        with BpfStats():
            for size in (1024, 65536):
                row = {}
                for mode in modes:
                    env_out = dict(env, scratch=env["scratch"])
                    args = ["--decode", "raw"] if mode == "cleartap-raw" else []
                    rps, stats = under(mode.removesuffix("-raw"), env_out, lambda: wrk(port, size, seconds), args,
                                       out_name="/dev/null", kernel_cpu=True)
                    row[mode] = {"req_s": rps, "cleartap": stats}
                rows[size] = row
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait()
    print(f"\nnginx: HTTPS keep-alive, wrk -t1 -c16 for {seconds} s per run, req/s")
    for size, row in rows.items():
        b, f, c = (row[m]["req_s"] for m in ("baseline", "floor", "cleartap"))
        ct = row.get("ct-floor", {}).get("req_s")
        s = row["cleartap"]["cleartap"]
        at_ct = f", ct-floor {ct:>8.0f}" if ct else ""
        print(f"  {size // 1024:>3} KiB body: baseline {b:>8.0f}, floor {f:>8.0f}{at_ct}, cleartap {c:>8.0f}: "
              f"{ratio(c, f)} of the floor, {ratio(c, ct)} of the ct-floor, {ratio(c, b)} of the baseline; "
              f"lost {s.get('lost_records')} records; {us_per_record(s)} us per record; "
              f"peak RSS {s['rss_kib'] / 1024:.0f} MiB")
        raw = row["cleartap-raw"]
        r = raw["cleartap"]
        print(f"           --decode raw: {raw['req_s']:>8.0f}: {ratio(raw['req_s'], ct)} of the ct-floor; "
              f"lost {r.get('lost_records')} records; {us_per_record(r)} us per record")
        print(f"           CPU per request: {cpu_per_request(row, seconds)}")
    return rows


def cpu_per_request(row, seconds):
    """Where the CPU of each request goes beyond the traced programs' own
    work: the kernel programs (run in nginx's and wrk's threads) and
    cleartap's process after ready, in us, for the ct-floor and both
    cleartap modes."""
    parts = []
    for mode in ("ct-floor", "cleartap", "cleartap-raw"):
        r = row.get(mode)
        stats = (r or {}).get("cleartap") or {}
        if not r or stats.get("bpf_cpu_s") is None:
            continue
        requests = r["req_s"] * seconds
        text = f"{mode}: programs {stats['bpf_cpu_s'] / requests * 1e6:.2f}"
        if "cpu_after_ready_s" in stats:
            text += f" + cleartap {stats['cpu_after_ready_s'] / requests * 1e6:.2f}"
        parts.append(text)
    return "; ".join(parts) + " us"


def us_per_record(stats):
    """cleartap's CPU after ready per record it captured."""
    records = stats.get("records") or 0
    return f"{stats['cpu_after_ready_s'] / records * 1e6:.2f}" if records else "n/a"


# --- burst ---------------------------------------------------------------

def burst(env, iterations):
    """Four tls_pair processes at once, 64-byte messages: the highest event
    rate two cores make. With the default ring buffer nothing may be lost.
    Then 1 KiB messages into a 4 KiB ring buffer, which cannot keep up on
    purpose: captured + lost must equal what the workload moved, exactly,
    and the records after each hole must mark it."""
    results = {}
    runs = (("default buffer, 64 B", [], 64), ("4 KiB buffer, 1 KiB", ["--ringbuf-size", "4K"], 1024))
    for name, args, size in runs:
        def run():
            procs = [subprocess.Popen([env["pair"], env["cert"], env["key"], str(size), str(iterations)],
                                      stdout=subprocess.PIPE) for _ in range(4)]
            start = time.monotonic()
            outs = [json.loads(p.communicate()[0]) for p in procs]
            return outs, time.monotonic() - start

        (outs, seconds), stats = under("cleartap", env, run, ["--comm", "tls_pair", *args], "burst.out")
        moved = sum(o["plaintext_bytes"] for o in outs)
        gaps = count_gaps(os.path.join(env["scratch"], "burst.out"))
        results[name] = {"seconds": seconds, "plaintext_bytes": moved, "gap_records": gaps, "cleartap": stats,
                         "ringbuf_size": args[1] if args else (ring_args(env)[1:] or ["default"])[0]}
    os.unlink(os.path.join(env["scratch"], "burst.out"))
    print("\nburst: 4 x tls_pair at once, all captured")
    checks = []
    for name, r in results.items():
        s = r["cleartap"]
        accounted = s.get("bytes", 0) + s.get("lost_bytes", 0) + s.get("truncated_bytes", 0)
        exact = accounted == r["plaintext_bytes"]
        checks.append(check(f"burst, {name}: captured + lost = moved", exact,
                            f"{s.get('bytes')} captured + {s.get('lost_bytes')} lost + "
                            f"{s.get('truncated_bytes', 0)} truncated = {accounted} vs {r['plaintext_bytes']} moved"))
        checks.append(check(f"burst, {name}: losses are marked", not s.get("lost_records") or r["gap_records"] > 0,
                            f"{s.get('lost_records')} records lost, {r['gap_records']} records carry a gap"))
        print(f"  {name}: {s.get('records', 0) / r['seconds']:,.0f} records/s; lost {s.get('lost_records')} "
              f"records ({s.get('lost_bytes')} bytes); captured + lost = moved: "
              f"{'exact' if exact else 'NOT EXACT'} ({s.get('bytes')} + {s.get('lost_bytes')} vs "
              f"{r['plaintext_bytes']}); records marking a gap: {r['gap_records']}; cleartap cpu "
              f"{s['cpu_s'] * 1e6 / max(s.get('records', 0), 1):.1f} us per record")
    results["checks"] = checks
    return results


def count_gaps(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if b'"gap":' in line)


# --- scale ---------------------------------------------------------------

SCALE_CLIENT = r"""
import os, socket, ssl, sys, time
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) for _ in range(count)]
print("open", flush=True)
sys.stdin.readline()
end = time.monotonic() + seconds
sent = 0
while time.monotonic() < end:
    for c in conns:
        c.sendall(b"who: pid=%d port=%d\n" % (os.getpid(), c.getsockname()[1]))
        sent += 1
    time.sleep(0.2)
print(sent, flush=True)
"""

SCALE_SERVER = r"""
import selectors, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(2048)
print(listener.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is listener:
            raw, _ = listener.accept()
            try:
                sel.register(ctx.wrap_socket(raw, server_side=True), selectors.EVENT_READ)
            except (ssl.SSLError, OSError):
                pass
        else:
            try:
                if not key.fileobj.recv(65536):
                    sel.unregister(key.fileobj)
            except (ssl.SSLError, OSError):
                sel.unregister(key.fileobj)
"""


def scale(env, processes=20, per_process=50, seconds=5):
    """1,000 TLS connections from 20 processes, open before cleartap starts:
    time to ready, attribution of every record (each names its pid and
    port), and the kernel memory of cleartap's maps. The connection map is
    sized for 1,024 (both ends of each connection are captured: 2,000), so
    its LRU evicts and the evictions are counted; tuples are read at every
    call, so attribution must not suffer."""
    server = subprocess.Popen([sys.executable, "-c", SCALE_SERVER, env["cert"], env["key"]],
                              stdout=subprocess.PIPE, text=True)
    port = server.stdout.readline().strip()
    clients = [subprocess.Popen([sys.executable, "-c", SCALE_CLIENT, port, str(per_process), str(seconds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    for c in clients:
        c.stdout.readline()
    out = os.path.join(env["scratch"], "scale.out")
    args = ["--comm", "python3", "--format", "json", "--decode", "raw", "--max-connections", "1024",
            *ring_args(env)]
    tracer = Cleartap(env["cleartap"], args, out)
    map_kib = cleartap_map_memory(tracer.proc.pid)
    for c in clients:
        c.stdin.write("go\n")
        c.stdin.flush()
    sent = sum(int(c.communicate()[0]) for c in clients)
    stats = tracer.stop()
    server.kill()
    server.wait()
    right, wrong = attribution(out)
    os.unlink(out)
    lost = stats.get("lost_records", 0)
    checks = [
        check("scale: no record attributed to another pid or port", wrong == 0,
              f"{wrong} wrong, {right} right"),
        # Each message is one SSL_write, so one record; with nothing lost,
        # every one must be there.
        check("scale: every message sent is captured and attributed right", right == sent if not lost else right > 0,
              f"{right} right of {sent} sent" + (f" ({lost} records lost in the kernel)" if lost else "")),
    ]
    print(f"\nscale: {processes} processes x {per_process} TLS connections open before start")
    print(f"  start to ready: {tracer.ready_s:.2f} s; records attributed right: {right}, wrong: {wrong}; "
          f"kernel memory of cleartap's maps: {map_kib / 1024:.1f} MiB; connection map (1,024 entries): "
          f"{stats.get('conn_entries')} created, {stats.get('conn_evicted')} evicted; lost "
          f"{stats.get('lost_records')} records; peak RSS {stats['rss_kib'] / 1024:.0f} MiB")
    return {"ready_s": tracer.ready_s, "right": right, "wrong": wrong, "sent": sent, "map_kib": map_kib,
            "cleartap": stats, "checks": checks}


def attribution(path):
    pattern = re.compile(rb"who: pid=(\d+) port=(\d+)")
    right = wrong = 0
    with open(path, "rb") as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") != "tls" or r["direction"] != "send":
                continue
            for pid, port in pattern.findall(base64.b64decode(r["data_b64"])):
                ok = r["pid"] == int(pid) and (r["local"] or "").endswith(":" + port.decode())
                right, wrong = right + ok, wrong + (not ok)
    return right, wrong


def cleartap_map_memory(pid):
    """Sum of the memlock of the BPF maps cleartap holds (from the fdinfo
    of its map fds), in KiB."""
    memlock = {}  # map id -> bytes: one map can be held through several fds
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if "map_id" in info and "memlock" in info:
            memlock[info["map_id"].strip()] = int(info["memlock"].strip())
    return sum(memlock.values()) // 1024


# --- soak ----------------------------------------------------------------

def soak(env, seconds):
    """The nginx 1 KiB scenario under full capture for `seconds`: RSS and
    open fds at start and end, losses."""
    proc, port = start_nginx(env)
    tracer = Cleartap(env["cleartap"], ["--lib", env["lib"], "--format", "json", *ring_args(env)], "/dev/null")
    try:
        wrk(port, 1024, 10)
        start = {"rss_kib": tracer.rss_kib(), "fds": tracer.open_fds(), "fd_kinds": tracer.fd_kinds(),
                 "attached": len(tracer.attached())}
        rps = wrk(port, 1024, max(seconds - 10, 1))
        end = {"rss_kib": tracer.rss_kib(), "fds": tracer.open_fds(), "fd_kinds": tracer.fd_kinds(),
               "attached": len(tracer.attached())}
    finally:
        stats = tracer.stop()
        proc.send_signal(signal.SIGQUIT)
        proc.wait()
    growth = (end["rss_kib"] - start["rss_kib"]) / max(start["rss_kib"], 1)
    print(f"\nsoak: {seconds} s of nginx 1 KiB under full capture: {rps:.0f} req/s; RSS "
          f"{start['rss_kib'] / 1024:.1f} -> {end['rss_kib'] / 1024:.1f} MiB ({growth:+.1%}); open fds "
          f"{start['fds']} -> {end['fds']}; lost {stats.get('lost_records')} records")
    # New fds are expected only from files attached during the run (a
    # program with TLS started on the host adds its uprobe links).
    later = tracer.attached()[start["attached"]:end["attached"]]
    print(f"soak: fds by kind at start {start['fd_kinds']}, at end {end['fd_kinds']}; "
          f"{len(later)} files attached during the run" + "".join(f"\n    {l}" for l in later))
    return {"seconds": seconds, "req_s": rps, "start": start, "end": end, "cleartap": stats}


# --- agent ---------------------------------------------------------------

class NatsServer:
    """`nats-server -js` on a free loopback port, its store under scratch."""

    def __init__(self, scratch):
        self.port = free_port()
        store = os.path.join(scratch, "nats-store")
        self.proc = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                      "-sd", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"nats://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("bench: nats-server did not listen (scripts/install-deps --test installs it)")

    def cpu_s(self):
        return process_cpu_s(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


AGENT_CONFIG = """host = "bench"
spool_dir = "{spool}"
[sources.tls]
lib = "{lib}"
[sinks.nats]
url = "{url}"
stream = "CLEARTAP_AGENT_BENCH"
plaintext = true
"""

METRIC = re.compile(r"^(cleartap_[a-z_]+)(?:\{[^}]*\})? (\d+)$", re.M)


def agent(env, events, seconds, burst_records_s=None):
    """The agent's NATS sink alone (bench/sink_throughput.rs: 1 KiB events
    through the spool and the publisher to one local JetStream server,
    events/s until the last ack), then the whole agent (tls source, NATS
    sink) keeping up with the nginx 1 KiB scenario: req/s, events/s, the
    spool's largest size (it grows only when the sink falls behind), the
    agent's CPU and peak RSS."""
    nats = NatsServer(env["scratch"])
    try:
        before = nats.cpu_s()
        sink = sink_throughput(env, nats.url, events)
        sink["broker_cpu_s"] = nats.cpu_s() - before
        under_nginx = agent_under_nginx(env, nats.url, seconds)
    finally:
        nats.stop()
        shutil.rmtree(os.path.join(env["scratch"], "nats-store"), ignore_errors=True)
    intake = events / sink["send_seconds"]
    print(f"\nagent: NATS sink alone, {events:,} events of 1 KiB to one local JetStream server: "
          f"{sink['events_s']:,.0f} events/s acked ({sink['mib_s']:.0f} MiB/s); the spool took them at "
          f"{intake:,.0f} events/s; nats-server used {sink['broker_cpu_s']:.1f} s of CPU in "
          f"{sink['seconds']:.1f} s")
    if burst_records_s:
        print(f"  over the capture's burst rate ({burst_records_s:,.0f} records/s): acked "
              f"{ratio(sink['events_s'], burst_records_s)}, spool intake {ratio(intake, burst_records_s)}")
    a = under_nginx
    print(f"agent: tls source + NATS sink under nginx 1 KiB for {seconds} s: {a['req_s']:.0f} req/s, "
          f"{a['events'] / seconds:,.0f} events/s; published {a['published']:,}, acked {a['acked']:,} "
          f"(all acked {a['drain_s']:.1f} s after the load ended); spool at most {a['spool_max'] / 1024:.0f} KiB; "
          f"dropped {a['dropped']}, kernel lost {a['kernel_lost']}; agent cpu {a['cpu_s']:.1f} s "
          f"({a['cpu_s'] * 1e6 / max(a['events'], 1):.1f} us per event), peak RSS {a['rss_kib'] / 1024:.0f} MiB")
    return {"sink": dict(sink, intake_events_s=intake), "nginx": under_nginx, "burst_records_s": burst_records_s}


def sink_throughput(env, url, events):
    spool = os.path.join(env["scratch"], "sink-spool")
    out = subprocess.run([env["sink_bench"], url, str(events), "1024", spool],
                         check=True, capture_output=True, text=True).stdout
    shutil.rmtree(spool, ignore_errors=True)
    return json.loads(out)


def metrics(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    except OSError:
        return {}
    found = {}
    for name, value in METRIC.findall(body):
        found[name] = found.get(name, 0) + int(value)
    return found


def agent_under_nginx(env, url, seconds):
    proc, port = start_nginx(env)
    config = os.path.join(env["scratch"], "agent.toml")
    with open(config, "w") as f:
        f.write(AGENT_CONFIG.format(spool=os.path.join(env["scratch"], "agent-spool"), lib=env["lib"], url=url))
    metrics_port = free_port()
    agent = subprocess.Popen([env["cleartap"], "agent", "--config", config, "--metrics",
                              f"127.0.0.1:{metrics_port}"], stderr=subprocess.PIPE)
    stderr = []
    for line in agent.stderr:
        stderr.append(line.decode(errors="replace").rstrip())
        if stderr[-1] == "ready":
            break
    else:
        proc.send_signal(signal.SIGQUIT)
        sys.exit("bench: the agent exited before ready:\n" + "\n".join(stderr))
    threading.Thread(target=lambda: stderr.extend(l.decode(errors="replace").rstrip() for l in agent.stderr),
                     daemon=True).start()
    spool_max, stop = [0], threading.Event()

    def watch_spool():
        while not stop.wait(0.25):
            spool_max[0] = max(spool_max[0], metrics(metrics_port).get("cleartap_spool_bytes", 0))

    watcher = threading.Thread(target=watch_spool, daemon=True)
    watcher.start()
    try:
        rps = wrk(port, 1024, seconds)
        ended = time.monotonic()
        while True:  # the sink catches up: every published event acked
            m = metrics(metrics_port)
            if m.get("cleartap_nats_acked_total", 0) >= m.get("cleartap_events_total", 1) or \
                    time.monotonic() - ended > 60:
                break
            time.sleep(0.1)
        drain_s = time.monotonic() - ended
    finally:
        stop.set()
        watcher.join()
        agent.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(agent.pid, 0)
        agent.returncode = 0
        proc.send_signal(signal.SIGQUIT)
        proc.wait()
    return {"req_s": rps, "events": m.get("cleartap_events_total", 0),
            "published": m.get("cleartap_nats_published_total", 0), "acked": m.get("cleartap_nats_acked_total", 0),
            "dropped": m.get("cleartap_events_dropped_total", 0) + m.get("cleartap_spool_dropped_total", 0),
            "kernel_lost": m.get("cleartap_kernel_lost_records_total", 0), "spool_max": spool_max[0],
            "drain_s": drain_s, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_kib": usage.ru_maxrss}


# --- first run ------------------------------------------------------------

GO = "/opt/cleartap-test/gobin/go/bin/go"


def build_tlspeer(scratch):
    """tests/go/tlspeer, an HTTPS client and server in Go's crypto/tls that
    writes down every byte each side passes to and gets from its tls.Conn."""
    out = os.path.join(scratch, "tlspeer")
    # The end-to-end tests' build cache: the standard library is not built again.
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "go-tests")
    env = {**os.environ, "GOCACHE": os.path.join(cache, "cache"), "GOPATH": os.path.join(cache, "gopath"),
           "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "go", "tlspeer")
    subprocess.run([GO, "build", "-o", out], cwd=src, env=env, check=True)
    return out


def truth_of(truth_dir, suffix):
    files = [f for f in os.listdir(truth_dir) if f.endswith(suffix)]
    return b"".join(open(os.path.join(truth_dir, f), "rb").read() for f in sorted(files))


def captured_streams(out_path, pid):
    """The bytes cleartap captured for `pid`, per direction, in order."""
    streams = {"send": bytearray(), "recv": bytearray()}
    with open(out_path, "rb") as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "tls" and r.get("pid") == pid:
                streams[r["direction"]] += base64.b64decode(r["data_b64"])
    return streams


def first_run(env, count, body=64 << 10):
    """The first-run scenario twice: racing the attach (the default), and
    with --hold-unchecked (each client stopped at its exec until probed);
    and the kernel's own floor under the race."""
    return {"race": first_run_mode(env, count, body, hold=False),
            "hold": first_run_mode(env, count, body, hold=True),
            "uprobe_register": uprobe_register_floor(env, 20)}


def uprobe_register_floor(env, rounds, pause_ms=300):
    """What registering one uprobe costs the kernel, first after an idle
    pause, then right after another (bench/uprobe_register.c). The first
    registration after a pause waits for an RCU grace period (uprobes take
    a per-CPU rw-semaphore for writing, whose fast path is switched off
    through RCU), the next one rides on it: whatever cleartap does, a
    new program's first probe is live no sooner than one grace period
    after its exec."""
    scratch = os.path.join(env["scratch"], "uprobe-register")
    os.makedirs(scratch)
    victim = os.path.join(scratch, "victim")
    shutil.copy("/bin/true", victim)
    out = subprocess.run([env["uprobe_register"], victim, "0", str(rounds), str(pause_ms)],
                         check=True, capture_output=True, text=True).stdout
    samples = [tuple(float(x) / 1000 for x in line.split()) for line in out.splitlines()]
    first = sorted(s[0] for s in samples)
    following = sorted(s[1] for s in samples)
    median = lambda xs: xs[len(xs) // 2]
    result = {"rounds": rounds, "pause_ms": pause_ms, "first_ms_median": round(median(first), 3),
              "first_ms_max": round(first[-1], 3), "next_ms_median": round(median(following), 3),
              "samples_ms": [[round(a, 3), round(b, 3)] for a, b in samples]}
    print(f"uprobe registration: first after a {pause_ms} ms pause {result['first_ms_median']} ms median "
          f"(max {result['first_ms_max']}), the next one {result['next_ms_median']} ms")
    return result


def first_run_mode(env, count, body, hold):
    """`count` fresh copies of a Go HTTPS client (a new file each, never
    seen by cleartap), each run once to POST `body` bytes to a server that
    was running before cleartap started: how many were captured whole (both
    directions byte-exact against the client's own record of its tls.Conn),
    the time from spawning each to cleartap's "attached" line, and each
    client's own run time (what a hold costs it). A miss is measured, not a
    failure: it is what this scenario is for. Clients run in a session of
    their own (no controlling terminal: --hold-unchecked holds none that
    has one)."""
    scratch = os.path.join(env["scratch"], "first-run-hold" if hold else "first-run-race")
    os.makedirs(scratch)
    peer = build_tlspeer(env["scratch"])
    server_truth = os.path.join(scratch, "server")
    os.makedirs(server_truth, exist_ok=True)
    server = subprocess.Popen([peer, "server", env["cert"], env["key"], server_truth,
                               os.path.join(server_truth, "keys")], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline().split()[1])
    out_path = os.path.join(scratch, "cleartap.out")
    flags = ["--library", "go", "--format", "json"] + (["--hold-unchecked"] if hold else [])
    tracer = Cleartap(env["cleartap"], flags, out_path)
    runs = []
    for i in range(count):
        run_dir = os.path.join(scratch, f"client-{i}")
        os.makedirs(run_dir)
        binary = os.path.join(run_dir, "client")
        shutil.copy(peer, binary)
        start = time.monotonic()
        client = subprocess.Popen([binary, "client", f"https://127.0.0.1:{port}/echo", "1", str(body), "1", run_dir,
                                   os.path.join(run_dir, "keys")], stdout=subprocess.DEVNULL,
                                  start_new_session=True)
        client.wait()
        run_ms = round((time.monotonic() - start) * 1000, 2)
        attached = f"cleartap: attached to {binary} "
        deadline = time.monotonic() + 5
        seen = None
        while seen is None and time.monotonic() < deadline:
            seen = next((t for t, line in list(tracer.stderr_times) if line.startswith(attached)), None)
            time.sleep(0.005)
        runs.append({"pid": client.pid, "dir": run_dir, "exit": client.returncode, "run_ms": run_ms,
                     "attach_ms": None if seen is None else round((seen - start) * 1000, 2)})
    stats = tracer.stop()
    server.terminate()
    server.wait()
    whole = 0
    for r in runs:
        got = captured_streams(out_path, r["pid"])
        r["whole"] = (r["exit"] == 0 and bytes(got["send"]) == truth_of(r["dir"], ".sent")
                      and bytes(got["recv"]) == truth_of(r["dir"], ".recv"))
        whole += r["whole"]
        del r["dir"]
    latencies = sorted(r["attach_ms"] for r in runs if r["attach_ms"] is not None)
    run_times = sorted(r["run_ms"] for r in runs)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None
    result = {"hold": hold, "binaries": count, "body_bytes": body, "captured_whole": whole,
              "attach_ms_p50": pct(latencies, 0.5), "attach_ms_p99": pct(latencies, 0.99),
              "attach_ms_max": latencies[-1] if latencies else None,
              "client_run_ms_p50": pct(run_times, 0.5), "client_run_ms_p99": pct(run_times, 0.99),
              "not_attached": sum(r["attach_ms"] is None for r in runs), "runs": runs, "cleartap": stats,
              "note": "attach_ms: from spawning the client to reading cleartap's 'attached' line (stderr pipe "
                      "included); the client's own exchange often ends sooner"}
    print(f"first run{' with --hold-unchecked' if hold else ''}: {whole}/{count} fresh Go clients captured "
          f"whole; exec -> attached p50 {result['attach_ms_p50']} ms, p99 {result['attach_ms_p99']} ms, max "
          f"{result['attach_ms_max']} ms; client run p50 {result['client_run_ms_p50']} ms, "
          f"p99 {result['client_run_ms_p99']} ms")
    return result
