#!/usr/bin/env python3
"""bench_peers.py - hugevm and QEMU side by side (make bench-peers, issue 15).

The same guest RAM content (a file of BENCH_PEERS_MIB, default 2048 MiB:
random bytes, or 90% zero pages and 10% random ones) is migrated over
loopback TCP, saved to a file and restored, by hugevm and by QEMU:

  QEMU     TCG guest, no disk, idle in SeaBIOS; its RAM a memory-backend-file
           of the content file (share=off, prealloc=on: present and private,
           the file itself never written); receivers a memory-backend-memfd
           with prealloc=on, made to touch every page from user space
           (bench-peers-touch.c; BENCH_PEERS_QEMU_TOUCH=0: QEMU's own
           MADV_POPULATE_WRITE, which leaves the first user access to each
           page trapping on a shadow-paging host such as this one, where
           hugevm's --resident does not); max-bandwidth raised (7.2 caps
           at 128 MiB/s), downtime-limit 50; one channel, and multifd with
           2 channels; save
           = stop, then migrate to exec:cat > FILE; restore = -incoming defer,
           migrate-incoming exec:cat FILE.
  hugevm   `hugevm migrate --fill FILE` (soft vCPU, a writer of 1 write/s on
           0.1% of memory: nearly idle) to `hugevm receive --resident`;
           `hugevm save --fill FILE`; `hugevm restore --resident`.  One
           channel (--channels 1) against QEMU's one, two (--channels 2)
           against QEMU's multifd with 2.

Both senders have their memory touched from user space before the timing,
as a guest that ran has: hugevm's --fill copies through a buffer, QEMU
migrates once to /dev/null first.

Runs are interleaved (the order of the cases alternates run by run), the
figures are medians of BENCH_PEERS_RUNS runs (default 3), the ratio
hugevm/QEMU the median of the per-run ratios (below 1.0: hugevm faster).
Each run checks that the data moved: QEMU's query-migrate page counts
(ram.normal against the content's non-zero pages, normal + duplicate
against all pages) and hugevm's reports (pages with data, zero pages, the
receiver's verified digest).  Figures are merged into BUILD/bench.json as
peer_qemu_<case> entries: value = hugevm's figure, limit = QEMU's, ratio =
hugevm/QEMU (entries of other names are kept).

Every process started here is killed and every file removed on every exit
path (normal end, an error, SIGINT, SIGTERM).
"""
import atexit
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PAGE = 4096
VGA_HOLE = range(0xa0, 0xc0)  # gfns hugevm's guest has no RAM at (src/domain.h)
QEMU = os.environ.get("BENCH_PEERS_QEMU", "qemu-system-x86_64")
TOUCH = os.environ.get("BENCH_PEERS_QEMU_TOUCH", "1") != "0"
qemu_env = None  # with TOUCH: LD_PRELOAD of bench-peers-touch.c

procs = []      # every child still to be reaped
workdir = None


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    procs.clear()
    if workdir and os.path.isdir(workdir):
        shutil.rmtree(workdir, ignore_errors=True)


def on_signal(sig, frame):
    raise SystemExit(128 + sig)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    procs.append(p)
    return p


def reap(p, timeout=60):
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    if p in procs:
        procs.remove(p)
    return rc


class Fail(Exception):
    pass


# ---- content ----------------------------------------------------------------------------

def make_content(path, kind, size, seed):
    """Write the content file; return its page counts: nonzero (all pages),
    nonzero_ram (without hugevm's VGA hole), pages, ram_pages."""
    r = random.Random(seed)
    pages = size // PAGE
    nonzero = nonzero_hole = 0
    zero_page = bytes(PAGE)
    chunk = 256  # pages per write
    with open(path, "wb") as f:
        for base in range(0, pages, chunk):
            n = min(chunk, pages - base)
            if kind == "random":
                buf = r.randbytes(n * PAGE)
                nonzero += n
                nonzero_hole += sum(1 for g in range(base, base + n) if g in VGA_HOLE)
            else:  # zero90: one page in ten random
                parts = []
                for g in range(base, base + n):
                    if r.random() < 0.1:
                        parts.append(r.randbytes(PAGE))
                        nonzero += 1
                        nonzero_hole += g in VGA_HOLE
                    else:
                        parts.append(zero_page)
                buf = b"".join(parts)
            f.write(buf)
    return {"pages": pages, "nonzero": nonzero, "ram_pages": pages - len(VGA_HOLE),
            "nonzero_ram": nonzero - nonzero_hole}


# ---- QEMU ---------------------------------------------------------------------------------

class QMP:
    def __init__(self, path, deadline=30):
        t = time.time() + deadline
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.time() > t:
                    raise Fail("QMP socket %s never came up" % path)
                time.sleep(0.05)
        self.f = self.s.makefile("rwb")
        self.events = []
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            raise Fail("QEMU closed its QMP socket")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise Fail("QMP %s: %s" % (name, m["error"].get("desc")))
            elif "return" in m:
                return m["return"]

    def wait_event(self, pred, timeout):
        t = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if pred(e):
                    return self.events.pop(i)
            if time.time() > t:
                raise Fail("no such QMP event within %d s" % timeout)
            self.s.settimeout(max(0.1, t - time.time()))
            try:
                self.events.append(self.read())
            except socket.timeout:
                pass
            finally:
                self.s.settimeout(None)

    def close(self):
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


def qemu_start(name, mem_mib, backend, incoming=False):
    sock = os.path.join(workdir, name + ".qmp")
    argv = [QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "none",
            "-monitor", "none", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1",
            "-machine", "pc,memory-backend=ram", "-m", "%dM" % mem_mib,
            "-object", backend, "-qmp", "unix:%s,server=on,wait=off" % sock]
    if incoming:
        argv += ["-incoming", "defer"]
    p = spawn(argv, stdout=subprocess.DEVNULL, env=qemu_env,
              stderr=open(os.path.join(workdir, name + ".err"), "w"))
    try:
        q = QMP(sock, deadline=120)  # prealloc of a 2 GiB memfd takes its time here
    except Fail:
        err = open(os.path.join(workdir, name + ".err")).read()
        raise Fail("QEMU %s did not start: %s" % (name, err.strip()[-400:]))
    return p, q


def qemu_source(content, mem_mib):
    p, q = qemu_start("src", mem_mib, "memory-backend-file,id=ram,size=%dM,mem-path=%s,share=off,"
                      "prealloc=on" % (mem_mib, content))
    time.sleep(1.0)  # SeaBIOS: POST done, idle (no bootable device)
    # QEMU's own reads of its RAM once, as hugevm's sender has its memory
    # written from user space (--fill): prealloc populates from the kernel,
    # and on a shadow-paging host the first user access to each page still
    # traps (README: --resident).  A migration to /dev/null, then the guest
    # runs on.
    qemu_params(q, 1)
    q.cmd("migrate", uri="exec:cat > /dev/null")
    qemu_wait_done(q)
    q.cmd("cont")
    return p, q


def qemu_dest(mem_mib):
    return qemu_start("dst", mem_mib, "memory-backend-memfd,id=ram,size=%dM,prealloc=on" % mem_mib,
                      incoming=True)


def qemu_params(q, channels):
    caps = [{"capability": "events", "state": True}]
    if channels > 1:
        caps.append({"capability": "multifd", "state": True})
    q.cmd("migrate-set-capabilities", capabilities=caps)
    params = {"max-bandwidth": 100 << 30, "downtime-limit": 50}
    if channels > 1:
        params["multifd-channels"] = channels
    q.cmd("migrate-set-parameters", **params)


def qemu_wait_done(q, timeout=600):
    t = time.time() + timeout
    while True:
        info = q.cmd("query-migrate")
        st = info.get("status")
        if st == "completed":
            # 7.2 shows "completed" a moment before it sets total-time and
            # downtime (migration_calculate_complete): ask again after it
            time.sleep(0.2)
            return q.cmd("query-migrate")
        if st in ("failed", "cancelled"):
            raise Fail("QEMU migration %s: %s" % (st, info.get("error-desc", "")))
        if time.time() > t:
            raise Fail("QEMU migration not done within %d s" % timeout)
        time.sleep(0.05)


def qemu_stop(p, q):
    try:
        q.cmd("quit")
    except (Fail, OSError):
        pass
    q.close()
    reap(p, timeout=30)


def check_qemu_ram(info, c, what):
    ram = info.get("ram", {})
    normal, dup = ram.get("normal", 0), ram.get("duplicate", 0)
    # SeaBIOS writes a few pages of its own; ROM blocks add a few hundred.
    slack = 2048
    if normal + dup < c["pages"]:
        raise Fail("%s: QEMU moved %d pages (normal %d + zero %d), fewer than the guest's %d"
                   % (what, normal + dup, normal, dup, c["pages"]))
    if abs(normal - c["nonzero"]) > slack:
        raise Fail("%s: QEMU sent %d pages with data, the content has %d"
                   % (what, normal, c["nonzero"]))
    return normal, dup


def qemu_migrate(content, c, mem_mib, channels):
    sp, sq = qemu_source(content, mem_mib)
    dp, dq = qemu_dest(mem_mib)
    try:
        port = free_port()
        qemu_params(dq, channels)
        qemu_params(sq, channels)
        dq.cmd("migrate-incoming", uri="tcp:127.0.0.1:%d" % port)
        sq.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        info = qemu_wait_done(sq)
        dq.wait_event(lambda e: e["event"] == "MIGRATION" and
                      e["data"]["status"] in ("completed", "failed"), 120)
        if dq.cmd("query-migrate").get("status") != "completed":
            raise Fail("QEMU's receiver did not complete")
        normal, dup = check_qemu_ram(info, c, "QEMU migrate (%d channel(s))" % channels)
        return {"s": info["total-time"] / 1e3, "downtime_ms": float(info["downtime"]),
                "pages_data": normal, "pages_zero": dup}
    finally:
        qemu_stop(sp, sq)
        qemu_stop(dp, dq)


def qemu_save_restore(content, c, mem_mib):
    img = os.path.join(workdir, "qemu.sav")
    sp, sq = qemu_source(content, mem_mib)
    try:
        qemu_params(sq, 1)
        sq.cmd("stop")
        sq.cmd("migrate", uri="exec:cat > %s" % img)
        info = qemu_wait_done(sq)
        normal, dup = check_qemu_ram(info, c, "QEMU save")
        save_s = info["total-time"] / 1e3
    finally:
        qemu_stop(sp, sq)
    size = os.path.getsize(img)
    if size < c["nonzero"] * PAGE:
        raise Fail("QEMU's saved file has %d bytes, less than the content's data" % size)
    dp, dq = qemu_dest(mem_mib)
    try:
        qemu_params(dq, 1)
        t0 = time.time()
        dq.cmd("migrate-incoming", uri="exec:cat %s" % img)
        e = dq.wait_event(lambda e: e["event"] == "MIGRATION" and
                          e["data"]["status"] in ("completed", "failed"), 600)
        if e["data"]["status"] != "completed":
            raise Fail("QEMU restore failed")
        t1 = e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
    finally:
        qemu_stop(dp, dq)
        os.unlink(img)
    return {"save_s": save_s, "restore_s": t1 - t0, "pages_data": normal, "pages_zero": dup,
            "file_bytes": size}


# ---- hugevm -------------------------------------------------------------------------------

def hugevm_json(argv, what, timeout=600):
    out = os.path.join(workdir, "hv.out")
    err = os.path.join(workdir, "hv.err")
    with open(out, "w") as fo, open(err, "w") as fe:
        p = spawn(argv, stdout=fo, stderr=fe)
        rc = reap(p, timeout)
    text = open(out).read()
    if rc != 0:
        raise Fail("%s: exit %d: %s %s" % (what, rc, open(err).read().strip()[-400:], text[-400:]))
    return json.loads(text)


def host_mem(mem_mib):
    # the guest and a little room (p2m tables): a resident machine commits it all
    return "%dM" % (mem_mib + max(128, mem_mib // 16))


def hugevm_migrate(hv, content, c, mem_mib, downtime, channels=1):
    portf = os.path.join(workdir, "port")
    rout = os.path.join(workdir, "recv.out")
    rerr = os.path.join(workdir, "recv.err")
    if os.path.exists(portf):
        os.unlink(portf)
    with open(rout, "w") as fo, open(rerr, "w") as fe:
        rp = spawn([hv, "receive", "--insecure", "--resident", "--host-mem", host_mem(mem_mib),
                    "--port-file", portf, "--attempts", "1", "--run", "0.1", "--json"],
                   stdout=fo, stderr=fe)
    try:
        t = time.time() + 300  # the resident commit comes first
        while not (os.path.exists(portf) and open(portf).read().strip()):
            if rp.poll() is not None or time.time() > t:
                raise Fail("hugevm receive did not listen: %s" % open(rerr).read()[-400:])
            time.sleep(0.05)
        port = int(open(portf).read())
        argv = [hv, "migrate", "--to", "127.0.0.1:%d" % port, "--insecure", "--backend", "soft",
                "--guest-mem", "%dM" % mem_mib, "--fill", content, "--vcpus", "1",
                "--write-rate", "1", "--wss", "0.001", "--after", "0.2",
                "--channels", str(channels), "--json"]
        if downtime:
            argv += ["--downtime", downtime]
        s = hugevm_json(argv, "hugevm migrate")
        if reap(rp, 120) != 0:
            raise Fail("hugevm receive failed: %s" % open(rerr).read()[-400:])
        r = json.load(open(rout))
    finally:
        if rp.poll() is None:
            rp.kill()
        reap(rp)
    m = s["migration"]
    if m.get("channels") != channels or r.get("channels") != channels:
        raise Fail("hugevm migrated over %s channel(s), not %d: %s"
                   % (m.get("channels"), channels, m.get("channels_why")))
    if not (m["ok"] and m["verified"] and m["checksums_match"] and r["ok"] and r["verified"]):
        raise Fail("hugevm migration not verified: %s" % m.get("error"))
    sent = sum(x["pages_data"] + x["pages_zero"] for x in m["rounds"])
    if sent < c["ram_pages"]:
        raise Fail("hugevm sent %d pages, fewer than the guest's %d" % (sent, c["ram_pages"]))
    # the nearly idle writer may make up to its working set (0.1%) non-zero
    if not c["nonzero_ram"] <= r["pages_data"] <= c["nonzero_ram"] + c["ram_pages"] // 1000 + 64:
        raise Fail("hugevm's receiver got %d pages with data, the content has %d"
                   % (r["pages_data"], c["nonzero_ram"]))
    return {"s": m["total_s"], "downtime_ms": m["downtime_ms"], "pages_data": r["pages_data"],
            "pages_zero": r["pages_xalloc"]}


def hugevm_save_restore(hv, content, c, mem_mib):
    img = os.path.join(workdir, "hugevm.hvs")
    try:
        s = hugevm_json([hv, "save", img, "--guest-mem", "%dM" % mem_mib, "--fill", content,
                         "--json"], "hugevm save")
        if s["pages_data"] != c["nonzero_ram"] or s["pages_data"] + s["pages_zero"] != c["ram_pages"]:
            raise Fail("hugevm save wrote %d data + %d zero pages, the content has %d of %d"
                       % (s["pages_data"], s["pages_zero"], c["nonzero_ram"], c["ram_pages"]))
        r = hugevm_json([hv, "restore", img, "--resident", "--host-mem", host_mem(mem_mib),
                         "--no-audit", "--json"], "hugevm restore")
        if r["pages_data"] != s["pages_data"]:
            raise Fail("hugevm restore filled %d data pages of the file's %d"
                       % (r["pages_data"], s["pages_data"]))
    finally:
        if os.path.exists(img):
            os.unlink(img)
    return {"save_s": s["seconds"], "restore_s": r["seconds"], "pages_data": s["pages_data"],
            "pages_zero": s["pages_zero"], "file_bytes": s["bytes"]}


# ---- the run --------------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def merge_json(path, entries):
    old = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except ValueError:
            print("bench-peers: %s is not JSON: rewritten with these figures only" % path)
            old = []
    keep = [e for e in old if not str(e.get("name", "")).startswith("peer_qemu_")]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("[\n" + ",\n".join("  " + json.dumps(e) for e in keep + entries) + "\n]\n")
    os.replace(tmp, path)


def main():
    global workdir
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    hv = os.path.join(build, "tools", "hugevm")
    if not os.access(hv, os.X_OK):
        raise Fail("%s is not built (make)" % hv)
    runs = int(os.environ.get("BENCH_PEERS_RUNS", "3"))
    mem_mib = int(os.environ.get("BENCH_PEERS_MIB", "2048"))
    contents = os.environ.get("BENCH_PEERS_CONTENT", "random,zero90").split(",")
    downtime = os.environ.get("BENCH_PEERS_HUGEVM_DOWNTIME", "")
    base = os.environ.get("BENCH_PEERS_DIR", "/dev/shm")
    if runs < 1 or mem_mib < 64 or mem_mib % 2 or any(k not in ("random", "zero90") for k in contents):
        raise Fail("BENCH_PEERS_RUNS >= 1, BENCH_PEERS_MIB even and >= 64, "
                   "BENCH_PEERS_CONTENT of random,zero90")
    workdir = tempfile.mkdtemp(prefix="hugevm-peers.", dir=base)
    if TOUCH:
        global qemu_env
        so = os.path.join(workdir, "touch.so")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-peers-touch.c")
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-o", so, src,
                        "-ldl"], check=True)
        qemu_env = dict(os.environ, LD_PRELOAD=so)
    qv = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print("bench-peers: %d MiB guest, %d interleaved runs per case; %s; hugevm %s; files in %s"
          % (mem_mib, runs, qv, hv, workdir))
    print("QEMU's prealloc touching from user space (BENCH_PEERS_QEMU_TOUCH): %s"
          % ("yes" if TOUCH else "no (as shipped)"))
    loads = [load()]
    results = {}
    for kind in contents:
        content = os.path.join(workdir, "content-" + kind)
        t = time.time()
        c = make_content(content, kind, mem_mib << 20, seed=15)
        print("content %s: %d of %d pages non-zero (written in %.1f s)"
              % (kind, c["nonzero"], c["pages"], time.time() - t))
        cases = [
            ("qemu_mig1", lambda: qemu_migrate(content, c, mem_mib, 1)),
            ("hugevm_mig", lambda: hugevm_migrate(hv, content, c, mem_mib, downtime)),
            ("qemu_mig2", lambda: qemu_migrate(content, c, mem_mib, 2)),
            ("hugevm_mig2", lambda: hugevm_migrate(hv, content, c, mem_mib, downtime, 2)),
            ("qemu_sr", lambda: qemu_save_restore(content, c, mem_mib)),
            ("hugevm_sr", lambda: hugevm_save_restore(hv, content, c, mem_mib)),
        ]
        res = {name: [] for name, _ in cases}
        for i in range(runs):
            order = cases if i % 2 == 0 else cases[::-1]
            for name, fn in order:
                r = fn()
                loads.append(load())
                res[name].append(r)
                print("  run %d %-10s %s" % (i + 1, name, " ".join(
                    "%s=%.4g" % (k, v) for k, v in r.items())), flush=True)
        os.unlink(content)
        results[kind] = res

    # figures: (case, unit, hugevm list, qemu list)
    rows, entries = [], []
    for kind, res in results.items():
        hm, hs = res["hugevm_mig"], res["hugevm_sr"]
        pairs = [
            ("migrate_%s" % kind, "s", [x["s"] for x in hm], [x["s"] for x in res["qemu_mig1"]],
             "QEMU 1 channel"),
            ("migrate_%s_downtime" % kind, "ms", [x["downtime_ms"] for x in hm],
             [x["downtime_ms"] for x in res["qemu_mig1"]], "QEMU 1 channel"),
            ("migrate_multifd2_%s" % kind, "s", [x["s"] for x in res["hugevm_mig2"]],
             [x["s"] for x in res["qemu_mig2"]], "QEMU multifd 2 channels (hugevm: 2 channels)"),
            ("migrate_multifd2_%s_downtime" % kind, "ms",
             [x["downtime_ms"] for x in res["hugevm_mig2"]],
             [x["downtime_ms"] for x in res["qemu_mig2"]],
             "QEMU multifd 2 channels (hugevm: 2 channels)"),
            ("save_%s" % kind, "s", [x["save_s"] for x in hs],
             [x["save_s"] for x in res["qemu_sr"]], "QEMU stop + migrate to exec:cat"),
            ("restore_%s" % kind, "s", [x["restore_s"] for x in hs],
             [x["restore_s"] for x in res["qemu_sr"]], "QEMU -incoming exec:cat"),
        ]
        for case, unit, h, q, qname in pairs:
            ratio = statistics.median([a / b if b > 0 else float("inf") for a, b in zip(h, q)])
            hmed, qmed = statistics.median(h), statistics.median(q)
            rows.append((case, unit, hmed, min(h), max(h), qmed, min(q), max(q), ratio, qname))
            entries.append({"name": "peer_qemu_%s_%s" % (case, unit), "value": round(hmed, 6),
                            "unit": unit, "limit": round(qmed, 6),
                            "limit_name": "%s (%s%s)" % (
                                qname, qv.replace("QEMU emulator version ", "QEMU "),
                                ", prealloc touching from user space" if TOUCH else ""),
                            # QEMU reports whole ms: a 0 ms downtime gives no ratio
                            "ratio": round(ratio, 4) if math.isfinite(ratio) else None})
    path = os.path.join(build, "bench.json")
    merge_json(path, entries)

    print("\nhugevm against %s, %d MiB, medians of %d interleaved runs (min-max); "
          "ratio = median of per-run hugevm/QEMU (goal: <= 1.0)" % (qv, mem_mib, runs))
    print("%-30s %-5s %-24s %-24s %s" % ("case", "unit", "hugevm", "QEMU", "ratio"))
    for case, unit, hmed, hmin, hmax, qmed, qmin, qmax, ratio, qname in rows:
        print("%-30s %-5s %-24s %-24s %.2f%s" % (
            case, unit, "%.3g (%.3g-%.3g)" % (hmed, hmin, hmax),
            "%.3g (%.3g-%.3g)" % (qmed, qmin, qmax), ratio, "" if ratio <= 1.0 else "  behind"))
    print("load average during the runs: %.2f-%.2f (1 min; %d cores)"
          % (min(loads), max(loads), os.cpu_count()))
    print("figures merged into %s as peer_qemu_* (value hugevm, limit QEMU, ratio hugevm/QEMU)"
          % path)


if __name__ == "__main__":
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        main()
    except Fail as e:
        print("bench-peers: FAILED: %s" % e, file=sys.stderr)
        sys.exit(1)
