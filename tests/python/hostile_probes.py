"""Hostile and careless clients against a real coordinator (issue 20): Python grpcio stubs
generated from proto/sweep.proto at run time, no scoresweep code. Each probe prints what it
tried and what held, and the script exits non-zero on the first broken promise.

usage:
  hostile_probes.py probes PROTO_DIR URL TOKEN_FILE OUT_DIR
      against `coordinator serve` of sleep trials (retries >= 3, --lease-secs 8: longer than a held Lease call): items 1, 4, 6,
      7, 8, 10 and 12 of issue 20, then reports every remaining trial so the run ends.
  hostile_probes.py outputs OUT_DIR
      after that run has ended: what items 4 and 12 left in trials.csv and report.md.
  hostile_probes.py soak PROTO_DIR URL TOKEN_FILE SECONDS
      beside a real sweep run by honest workers: registers, hoards, floods uploads and sends
      oversized reports in bounded loops (loopback only) until SECONDS pass or the coordinator
      is gone; cancels at most 3 leases in all (each counts an attempt).

The protocol version is $SCORESWEEP_PROTOCOL_VERSION (default 3).
"""

import csv
import importlib
import json
import os
import re
import sqlite3
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc

PROTOCOL = int(os.environ.get("SCORESWEEP_PROTOCOL_VERSION", "3"))
MiB = 1 << 20


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="scoresweep-hostile-")
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", os.path.join(proto_dir, "sweep.proto")]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on sweep.proto")
    sys.path.insert(0, out)
    return importlib.import_module("sweep_pb2"), importlib.import_module("sweep_pb2_grpc")


def broken(what):
    print(f"BROKEN: {what}", flush=True)
    sys.exit(f"broken promise: {what}")


def held(item, what):
    print(f"item {item}: {what}", flush=True)


def code_of(call):
    """The status code of a call (OK when it succeeds) and its reply or error details."""
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as e:
        return e.code(), e.details()


def expect(what, call, *codes):
    code, detail = code_of(call)
    if code not in codes:
        broken(f"{what}: expected {' or '.join(c.name for c in codes)}, got {code.name}: {str(detail)[:300]}")
    return detail


class Client:
    def __init__(self, proto_dir, url, token_file):
        self.pb, rpc = stubs(proto_dir)
        token = open(token_file).read().strip()
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(url.removeprefix("http://"), options=opts)
        self.stub = rpc.SweepStub(self.channel)
        self.auth = [("authorization", f"Bearer {token}")]

    def register(self, name, **kw):
        req = self.pb.RegisterRequest(protocol_version=PROTOCOL, name=name, cores=1, version="py", device=kw.pop("device", "cpu"), **kw)
        return self.stub.Register(req, metadata=self.auth).worker_id

    def lease(self, worker):
        return self.stub.Lease(self.pb.LeaseRequest(worker_id=worker), metadata=self.auth, timeout=30)

    def lease_one(self, worker, deadline=30.0):
        """A lease for `worker`, waiting while the coordinator says wait; None when done."""
        t = time.time()
        while time.time() - t < deadline:
            r = self.lease(worker)
            kind = r.WhichOneof("reply")
            if kind == "lease":
                return r.lease
            if kind == "done":
                return None
            time.sleep(max(r.wait_seconds, 0.05))
        broken(f"no lease for {worker} in {deadline} s")

    def heartbeat(self, worker, attempt):
        return self.stub.Heartbeat(self.pb.HeartbeatRequest(worker_id=worker, attempt_id=attempt, step=1, total_steps=1), metadata=self.auth)

    def report(self, worker, lease, status=None, metrics=None, **kw):
        r = self.pb.ReportRequest(
            worker_id=worker,
            attempt_id=lease.attempt_id,
            trial_hash=lease.trial_hash,
            status=self.pb.STATUS_DONE if status is None else status,
            metrics_json=json.dumps({"slept_seconds": 0.0} if metrics is None else metrics),
            curve_json=kw.pop("curve_json", "[]"),
            wall_seconds=0.01,
            device=kw.pop("device", "cpu"),
            **kw,
        )
        return self.stub.Report(r, metadata=self.auth, timeout=60)

    def cancel(self, worker, attempt):
        return self.stub.Cancel(self.pb.CancelRequest(worker_id=worker, attempt_id=attempt), metadata=self.auth)

    def upload(self, worker, attempt, name, data, total=None):
        first = self.pb.ArtifactChunk(worker_id=worker, attempt_id=attempt, name=name, media_type="application/octet-stream", total_bytes=len(data) if total is None else total, data=data)
        return self.stub.UploadArtifact(iter([first]), metadata=self.auth, timeout=30)


def db(out_dir, sql, *args):
    con = sqlite3.connect(f"file:{os.path.join(out_dir, 'state.db')}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def probe_late_report(c, out_dir):
    """Item 1: a late report of an attempt that lost its lease changes nothing for the trial's
    new holder."""
    pb = c.pb
    a = c.register("late-a")
    lease_a = c.lease_one(a)
    if lease_a is None:
        broken("item 1: no trial to lease")
    secs = max(0.0, lease_a.deadline_unix - time.time())
    time.sleep(secs + 1.5)  # A misses its heartbeats: the lease expires.
    b = c.register("late-b")
    while True:  # B leases until it holds A's trial; others it reports at once.
        lease_b = c.lease_one(b)
        if lease_b is None:
            broken("item 1: the expired trial never came back to the queue")
        if lease_b.trial_hash == lease_a.trial_hash:
            break
        c.report(b, lease_b)
    # A's late reports close A's own attempt at most (the answer may say so); they must not
    # re-queue, fail or cancel the trial B runs.
    for status in (pb.STATUS_CANCELLED, pb.STATUS_FAILED):
        code_of(lambda: c.report(a, lease_a, status=status, error="late"))
    b_attempt = db(out_dir, "SELECT outcome FROM attempts WHERE id = ?", lease_b.attempt_id)
    if b_attempt != [("running",)]:
        broken(f"item 1: after A's late reports B's attempt is {b_attempt}, not running")
    hb = c.heartbeat(b, lease_b.attempt_id)
    if hb.cancel:
        broken("item 1: after A's late reports, B was told to cancel the trial it holds")
    state = db(out_dir, "SELECT status FROM trials WHERE hash = ?", lease_a.trial_hash)
    if state != [("running",)]:
        broken(f"item 1: after A's late reports the trial is {state}, not running with B")
    if not c.report(b, lease_b).recorded:
        broken("item 1: B's result was not recorded")
    done = db(out_dir, "SELECT COUNT(*) FROM results WHERE trial_hash = ?", lease_a.trial_hash)[0][0]
    if done != 1:
        broken(f"item 1: {done} results for the trial, not 1")
    held(1, "A's lease expired and B took the trial; A's late CANCELLED and FAILED left the trial running with B, B was not told to cancel, B's result is the trial's one result")


def probe_metric_names(c):
    """Item 4: metric and curve names that collide with the table's own columns are recorded
    (the table is checked by `outputs` once the run has ended)."""
    w = c.register("names")
    lease = c.lease_one(w)
    metrics = {"slept_seconds": 0.0, "wall_seconds": 7.0, "status": 1.0, "metric.status": 2.0, "hash": 3.0, "curve.hash": 4.0, "worker": 5.0}
    curve = json.dumps([{"step": 1, "hash": 1.0, "curve.hash": 2.0, "status": 3.0}])
    r = c.report(w, lease, metrics=metrics, curve_json=curve)
    if not r.recorded:
        broken(f"item 4: a result with colliding metric names was not recorded: {r.note}")
    held(4, f"a result with metrics {sorted(metrics)} and curve keys hash, curve.hash, status was recorded (the table is checked after the run)")


def probe_gpus(c):
    """Item 6: a GPU count the worker does not list, or too many GPUs, is refused; the
    coordinator still leases."""
    pb = c.pb
    huge = pb.RegisterRequest(protocol_version=PROTOCOL, name="gpus", cores=1, gpus=2**32 - 1, version="py", device="cpu")
    expect("item 6: gpus = 4294967295 without a list", lambda: c.stub.Register(huge, metadata=c.auth), grpc.StatusCode.INVALID_ARGUMENT)
    many = pb.RegisterRequest(protocol_version=PROTOCOL, name="gpus", cores=1, gpus=17, version="py", gpu_devices=[pb.GpuInfo(index=i, name="g", memory_bytes=1) for i in range(17)])
    expect("item 6: 17 GPUs", lambda: c.stub.Register(many, metadata=c.auth), grpc.StatusCode.RESOURCE_EXHAUSTED)
    long = pb.RegisterRequest(protocol_version=PROTOCOL, name="gpus", cores=1, gpus=1, version="py", gpu_devices=[pb.GpuInfo(index=0, name="g" * MiB, memory_bytes=1)])
    expect("item 6: a 1 MiB GPU name", lambda: c.stub.Register(long, metadata=c.auth), grpc.StatusCode.RESOURCE_EXHAUSTED)
    w = c.register("after-gpus")
    lease = c.lease_one(w)
    if lease is None or not c.report(w, lease).recorded:
        broken("item 6: the coordinator did not lease after the refused registrations")
    held(6, "gpus = 4294967295 with no list: INVALID_ARGUMENT; 17 GPUs and a 1 MiB GPU name: RESOURCE_EXHAUSTED; the coordinator leased and recorded after them")


def probe_identity_first(c):
    """Item 7: a report from a worker that does not hold the attempt is refused before its
    body is read, whatever its size; a message over 64 MiB is refused; fields over their
    limits are refused for the holder too."""
    v = c.register("victim")
    s = c.register("stranger")
    lease = c.lease_one(v)
    big = "[" + "x" * (30 * MiB)
    t = time.time()
    expect("item 7: a stranger's 30 MiB malformed report", lambda: c.report(s, lease, curve_json=big), grpc.StatusCode.PERMISSION_DENIED)
    stranger_s = time.time() - t
    many = {f"m{i}": 1.0 for i in range(1025)}
    expect("item 7: a stranger's report with 1025 metrics", lambda: c.report(s, lease, metrics=many), grpc.StatusCode.PERMISSION_DENIED)
    huge = "[" + "x" * (70 * MiB)
    expect("item 7: a 70 MiB message", lambda: c.report(v, lease, curve_json=huge), grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE)
    expect("item 7: the holder's report with 1025 metrics", lambda: c.report(v, lease, metrics=many), grpc.StatusCode.RESOURCE_EXHAUSTED)
    expect("item 7: a 300-byte worker id", lambda: c.lease("w" * 300), grpc.StatusCode.RESOURCE_EXHAUSTED)
    if not c.report(v, lease).recorded:
        broken("item 7: the holder's good report after the refusals was not recorded")
    held(7, f"a stranger's 30 MiB report: PERMISSION_DENIED in {stranger_s:.2f} s; a stranger's 1025 metrics: PERMISSION_DENIED (not parsed); 70 MiB: refused; the holder's 1025 metrics and a 300-byte id: RESOURCE_EXHAUSTED; the holder's good report recorded")


def probe_uploads(c, out_dir):
    """Item 8: uploads are bounded per file, per attempt, and end with their attempt."""
    w = c.register("uploader")
    lease = c.lease_one(w)
    a = lease.attempt_id
    expect("item 8: a 1 TB upload announced", lambda: c.upload(w, a, "huge.bin", b"x", total=10**12), grpc.StatusCode.RESOURCE_EXHAUSTED)
    ok = 0
    while True:
        code, r = code_of(lambda: c.upload(w, a, f"f{ok}.bin", b"data"))
        if code != grpc.StatusCode.OK:
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                broken(f"item 8: upload {ok + 1} refused with {code.name}, not RESOURCE_EXHAUSTED: {r}")
            break
        ok += 1
        if ok > 1000:
            broken("item 8: more than 1000 uploads accepted for one attempt")
    partial = os.path.join(out_dir, "artifacts", ".partial", str(a))
    if not os.path.isdir(partial):
        broken(f"item 8: the attempt's uploads are not in {partial}")
    c.cancel(w, a)
    if os.path.exists(partial):
        broken(f"item 8: the cancelled attempt's partial uploads are still in {partial}")
    code, r = code_of(lambda: c.upload(w, a, "after.bin", b"data"))
    if code == grpc.StatusCode.OK:
        broken("item 8: an upload for a cancelled attempt was accepted")
    if os.path.exists(partial):
        broken("item 8: an upload after the cancel re-created the partial directory")
    held(8, f"a 1 TB upload: RESOURCE_EXHAUSTED; {ok} files accepted for one attempt, the next RESOURCE_EXHAUSTED; the cancel removed its partial files, and a later upload ({code.name}) re-created nothing")


def probe_hoarding(c, out_dir):
    """Item 10: one lease per declared slot; a cancel counts as an attempt; slots are bounded."""
    pb = c.pb
    w = c.register("hoarder")
    lease = c.lease_one(w)
    second = c.lease(w)
    if second.WhichOneof("reply") == "lease":
        broken("item 10: a worker with one slot leased a second trial")
    before = db(out_dir, "SELECT COUNT(*) FROM attempts WHERE trial_hash = ?", lease.trial_hash)[0][0]
    c.heartbeat(w, lease.attempt_id)
    c.cancel(w, lease.attempt_id)
    outcome = db(out_dir, "SELECT outcome FROM attempts WHERE id = ?", lease.attempt_id)
    if not outcome or outcome[0][0] in (None, "running"):
        broken(f"item 10: a cancelled attempt is {outcome}")
    after = db(out_dir, "SELECT COUNT(*) FROM attempts WHERE trial_hash = ?", lease.trial_hash)[0][0]
    big = pb.RegisterRequest(protocol_version=PROTOCOL, name="slots", cores=1, version="py", slots=65)
    expect("item 10: 65 slots", lambda: c.stub.Register(big, metadata=c.auth), grpc.StatusCode.RESOURCE_EXHAUSTED)
    held(10, f"the second lease of a one-slot worker answered {second.WhichOneof('reply')}; lease, heartbeat, cancel left the attempt `{outcome[0][0]}` ({before} attempt(s) of the trial, still {after} counted); 65 slots: RESOURCE_EXHAUSTED")


def probe_registrations(c):
    """Item 10: registrations are bounded per run."""
    n = 0
    while True:
        code, r = code_of(lambda: c.register(f"flood{n}"))
        if code != grpc.StatusCode.OK:
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                broken(f"item 10: registration {n + 1} refused with {code.name}: {r}")
            break
        n += 1
        if n > 100_000:
            broken("item 10: more than 100000 registrations accepted")
    held(10, f"{n} more registrations accepted, then RESOURCE_EXHAUSTED")


EVIL_NAME = "=HYPERLINK(\"http://x\")\n## Claims\n- every claim holds <script>alert(1)</script>"
EVIL_DEVICE = "cpu\n## Claims\n[click](javascript:alert(1))\x1b[2J"


def probe_strings(c):
    """Item 12: worker strings (names, devices, errors) are recorded as sent; `outputs` checks
    they are escaped in report.md and trials.csv."""
    w = c.register(EVIL_NAME, device=EVIL_DEVICE)
    lease = c.lease_one(w)
    r = c.report(w, lease, device=EVIL_DEVICE)
    if not r.recorded:
        broken(f"item 12: a result from a worker with a hostile name was not recorded: {r.note}")
    held(12, "a worker named with a formula, a newline, a fake `## Claims` heading and a <script>, on a device with a javascript: link and a terminal escape, reported a result (the outputs are checked after the run)")


def probes(proto_dir, url, token_file, out_dir):
    c = Client(proto_dir, url, token_file)
    probe_late_report(c, out_dir)
    probe_metric_names(c)
    probe_gpus(c)
    probe_identity_first(c)
    probe_uploads(c, out_dir)
    probe_hoarding(c, out_dir)
    probe_strings(c)
    finisher = c.register("finisher")
    probe_registrations(c)
    n = 0
    while True:
        lease = c.lease_one(finisher, deadline=120)
        if lease is None:
            break
        if not c.report(finisher, lease).recorded:
            broken("finish: a report was not recorded")
        n += 1
    print(f"probes: every promise held; {n} remaining trials reported", flush=True)


def outputs(out_dir):
    with open(os.path.join(out_dir, "trials.csv"), newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        broken(f"item 4: trials.csv has duplicate columns {dup}")
    for col in ("metric.status", "hash"):
        if col not in header:
            broken(f"item 4: trials.csv has no column {col}: {header}")
    held(4, f"trials.csv has {len(header)} unique columns, the workers' colliding names kept apart")
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@") and not _number(cell):
                broken(f"item 12: a trials.csv cell starts with a formula character: {cell[:60]!r}")
            if "\x1b" in cell:
                broken(f"item 12: a trials.csv cell carries a terminal escape: {cell[:60]!r}")
    report = open(os.path.join(out_dir, "report.md"), encoding="utf-8").read()
    heads = [line for line in report.splitlines() if line.strip() == "## Claims"]
    if len(heads) > 1:
        broken(f"item 12: report.md has {len(heads)} `## Claims` headings")
    for bad in ("<script>", "\x1b"):
        if bad in report:
            broken(f"item 12: report.md carries {bad!r}")
    # A link Markdown would follow: `](javascript:` whose `]` is not escaped.
    if re.search(r"(?<!\\)\]\(\s*javascript:", report):
        broken("item 12: report.md carries a javascript: link")
    if "HYPERLINK" not in report and "HYPERLINK" not in "".join(",".join(r) for r in rows):
        broken("item 12: the hostile worker's name is nowhere in the outputs (it must be shown, escaped)")
    held(12, "trials.csv has no cell starting with = + - @ (other than numbers) and no escape; report.md has one `## Claims` heading, no <script>, no javascript: link, no escape")


def _number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def soak(proto_dir, url, token_file, seconds):
    c = Client(proto_dir, url, token_file)
    pb = c.pb
    end = time.time() + seconds
    counts = {}
    cancels = 0
    registered = 0

    def saw(what, code):
        key = f"{what}: {code.name}"
        counts[key] = counts.get(key, 0) + 1

    def gone(code):
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    big = "[" + "x" * (30 * MiB)
    huge = "[" + "x" * (70 * MiB)
    rounds = 0
    while time.time() < end and rounds < 40:
        rounds += 1
        code, w = code_of(lambda: c.register(f"hostile{registered}", slots=1))
        if gone(code):
            break
        if code != grpc.StatusCode.OK:
            broken(f"soak: registration {registered + 1} refused with {code.name}: {w}")
        registered += 1
        # Refused registrations.
        many = pb.RegisterRequest(protocol_version=PROTOCOL, name="g", gpus=2**32 - 1, version="py")
        code, _ = code_of(lambda: c.stub.Register(many, metadata=c.auth))
        saw("register with 2^32-1 GPUs", code)
        if code == grpc.StatusCode.OK:
            broken("soak: a registration with 2^32-1 GPUs and no list was accepted")
        # Reports for attempts it does not hold, small and large.
        for size, body in (("small", "[x"), ("30 MiB", big)):
            fake = pb.Lease(trial_hash="0" * 64, attempt_id=rounds)
            code, r = code_of(lambda: c.report(w, fake, curve_json=body))
            saw(f"a {size} report of an attempt it does not hold", code)
            if code == grpc.StatusCode.OK and r.recorded:
                broken("soak: a report of an attempt it does not hold was recorded")
        code, _ = code_of(lambda: c.report(w, pb.Lease(trial_hash="0" * 64, attempt_id=1), curve_json=huge))
        saw("a 70 MiB report", code)
        if code == grpc.StatusCode.OK:
            broken("soak: a 70 MiB report was accepted")
        if cancels >= 3:
            time.sleep(0.1)
            continue
        # Hoard: lease, ask for more, flood uploads, hold idle uploads open, then cancel.
        code, r = code_of(lambda: c.lease(w))
        if gone(code):
            break
        if code != grpc.StatusCode.OK or r.WhichOneof("reply") != "lease":
            time.sleep(0.1)
            continue
        lease = r.lease
        code, r2 = code_of(lambda: c.lease(w))
        if code == grpc.StatusCode.OK and r2.WhichOneof("reply") == "lease":
            broken("soak: a one-slot worker leased a second trial")
        saw("a second lease of a one-slot worker", code)
        for i in range(40):
            code, _ = code_of(lambda: c.upload(w, lease.attempt_id, f"flood{i}.bin", b"x" * 1024))
            saw("an upload flood", code)
        idle = []
        for i in range(4):
            ev = threading.Event()

            def chunks(i=i, ev=ev):
                yield pb.ArtifactChunk(worker_id=w, attempt_id=lease.attempt_id, name=f"idle{i}.bin", total_bytes=10, data=b"abc")
                ev.wait(5)

            t = threading.Thread(target=lambda i=i: code_of(lambda: c.stub.UploadArtifact(chunks(), metadata=c.auth, timeout=10)), daemon=True)
            t.start()
            idle.append((t, ev))
        time.sleep(0.3)
        for t, ev in idle:
            ev.set()
            t.join()
        code, _ = code_of(lambda: c.cancel(w, lease.attempt_id))
        saw("a cancel of its lease", code)
        cancels += 1
    for k in sorted(counts):
        print(f"soak: {k} x{counts[k]}", flush=True)
    print(f"soak: {rounds} rounds, {registered} registrations, {cancels} leases cancelled; every promise held", flush=True)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "probes" and len(sys.argv) == 6:
        probes(*sys.argv[2:6])
    elif mode == "outputs" and len(sys.argv) == 3:
        outputs(sys.argv[2])
    elif mode == "soak" and len(sys.argv) == 6:
        soak(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
