"""An independent worker: Python grpcio stubs generated from proto/sweep.proto at run time, no
scoresweep code. It runs a sweep of sleep trials against `coordinator serve` the way a stranger
would, reading only the .proto's comments, and checks the refusals the protocol promises.

usage: stranger_client.py PROTO_DIR URL TOKEN_FILE
Exits non-zero (with the reason) on the first broken promise.
"""

import importlib
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="scoresweep-py-")
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", os.path.join(proto_dir, "sweep.proto")]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on sweep.proto")
    sys.path.insert(0, out)
    return importlib.import_module("sweep_pb2"), importlib.import_module("sweep_pb2_grpc")


def expect_code(what, call, code):
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            sys.exit(f"{what}: expected {code}, got {e.code()}: {e.details()}")
        return e.details()
    sys.exit(f"{what}: expected {code}, the call succeeded")


def main():
    proto_dir, url, token_file = sys.argv[1:4]
    pb, rpc = stubs(proto_dir)
    token = open(token_file).read().strip()
    channel = grpc.insecure_channel(url.removeprefix("http://"))
    stub = rpc.SweepStub(channel)
    auth = [("authorization", f"Bearer {token}")]

    # Without the token, or with another one: UNAUTHENTICATED, nothing registered.
    hello = pb.RegisterRequest(protocol_version=3, name="stranger", cores=1, version="py", device="cpu")
    expect_code("register without a token", lambda: stub.Register(hello), grpc.StatusCode.UNAUTHENTICATED)
    expect_code("register with a wrong token", lambda: stub.Register(hello, metadata=[("authorization", "Bearer nope")]), grpc.StatusCode.UNAUTHENTICATED)
    # Another protocol version: FAILED_PRECONDITION.
    old = pb.RegisterRequest(protocol_version=1, name="stranger", cores=1, version="py")
    expect_code("register with protocol 1", lambda: stub.Register(old, metadata=auth), grpc.StatusCode.FAILED_PRECONDITION)
    # A lease for an id the coordinator never issued: NOT_FOUND.
    expect_code("lease by an unknown id", lambda: stub.Lease(pb.LeaseRequest(worker_id="stranger#1"), metadata=auth), grpc.StatusCode.NOT_FOUND)

    worker = stub.Register(hello, metadata=auth).worker_id
    done = 0
    reply = stub.Lease(pb.LeaseRequest(worker_id=worker), metadata=auth)
    while True:
        kind = reply.WhichOneof("reply")
        if kind == "done":
            break
        if kind == "wait_seconds" or kind is None:
            time.sleep(max(reply.wait_seconds, 0.05))
            reply = stub.Lease(pb.LeaseRequest(worker_id=worker), metadata=auth)
            continue
        lease = reply.lease
        if "[sleep]" not in lease.trial_toml and "sleep" not in lease.trial_toml:
            sys.exit(f"expected sleep trials, got: {lease.trial_toml}")
        # Someone else's heartbeat for this attempt: PERMISSION_DENIED; for an attempt that
        # does not exist: NOT_FOUND.
        expect_code(
            "heartbeat of the attempt by another worker",
            lambda: stub.Heartbeat(pb.HeartbeatRequest(worker_id="stranger#99", attempt_id=lease.attempt_id), metadata=auth),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        expect_code(
            "heartbeat of an unknown attempt",
            lambda: stub.Heartbeat(pb.HeartbeatRequest(worker_id=worker, attempt_id=lease.attempt_id + 10**9), metadata=auth),
            grpc.StatusCode.NOT_FOUND,
        )
        hb = stub.Heartbeat(pb.HeartbeatRequest(worker_id=worker, attempt_id=lease.attempt_id, step=1, total_steps=1, train_loss=0.0), metadata=auth)
        if hb.cancel:
            sys.exit("a fresh attempt was told to cancel")
        note = f"written by a Python client for {lease.trial_hash}\n".encode()
        chunks = [
            pb.ArtifactChunk(worker_id=worker, attempt_id=lease.attempt_id, name="note.txt", media_type="text/plain", total_bytes=len(note), data=b""),
            pb.ArtifactChunk(worker_id=worker, attempt_id=lease.attempt_id, data=note),
        ]
        up = stub.UploadArtifact(iter(chunks), metadata=auth)
        if up.bytes != len(note):
            sys.exit(f"upload: {up.bytes} bytes acknowledged, {len(note)} sent")
        report = pb.ReportRequest(
            worker_id=worker,
            attempt_id=lease.attempt_id,
            trial_hash=lease.trial_hash,
            status=pb.STATUS_DONE,
            metrics_json=json.dumps({"slept_seconds": 0.0}),
            curve_json="[]",
            wall_seconds=0.01,
            lease_next=True,
            artifacts=["note.txt"],
            device="cpu",
        )
        # The same report under another trial's hash: FAILED_PRECONDITION.
        wrong = pb.ReportRequest()
        wrong.CopyFrom(report)
        wrong.trial_hash = "0" * 64
        wrong.lease_next = False
        expect_code("report naming another trial", lambda: stub.Report(wrong, metadata=auth), grpc.StatusCode.FAILED_PRECONDITION)
        r = stub.Report(report, metadata=auth)
        if not r.recorded:
            sys.exit(f"report not recorded: {r.note}")
        done += 1
        # Reporting again changes nothing.
        again = pb.ReportRequest()
        again.CopyFrom(report)
        again.lease_next = False
        if stub.Report(again, metadata=auth).recorded:
            sys.exit("a second report of the same attempt was recorded")
        reply = r.next
    print(f"stranger: {done} trials reported")


if __name__ == "__main__":
    main()
