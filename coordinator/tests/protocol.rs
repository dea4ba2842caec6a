//! The protocol against a client that breaks it: a tonic client sends what a buggy or hostile
//! program on the port could, and nothing of it may change a result. A Lease needs a
//! registered worker id; Heartbeat, Report, Cancel and UploadArtifact about an attempt must come
//! from the worker that leased it and name its trial (refused otherwise, with nothing changed);
//! a `done` report without the metrics its trial must produce, or with values that are not
//! finite numbers, or that does not decode, is recorded as a failed attempt with the reason and
//! never as a result.

use std::path::Path;
use std::sync::Arc;

use coordinator::artifacts::{Artifacts, DEFAULT_MAX_BYTES};
use coordinator::service::{Shared, serve};
use coordinator::state::State;
use coordinator::sweep::Sweep;
use schema::Status;
use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};
use tonic::Code;
use tonic::transport::Channel;

type Client = SweepClient<Channel>;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-protocol-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const SLEEP: &str = "[base]\nseed = 0\n[base.sleep]\nseconds = 0.001\n";

/// Serves the sweep `src` (synced into a fresh database under `dir`), runs `f` with a client,
/// and returns once the server has stopped and the database is closed.
fn with_server<Fut: std::future::Future<Output = ()>>(dir: &Path, src: &str, f: impl FnOnce(Client) -> Fut) -> Arc<Shared> {
    with_server_at(dir, src, |c, _| f(c))
}

/// [`with_server`], also giving `f` the server's URL.
fn with_server_at<Fut: std::future::Future<Output = ()>>(dir: &Path, src: &str, f: impl FnOnce(Client, String) -> Fut) -> Arc<Shared> {
    let path = dir.join("sweep.toml");
    std::fs::write(&path, src).unwrap();
    let sweep = Sweep::parse(src, &path).unwrap();
    let mut st = State::open(&dir.join("state.db"), sweep.retries + 1, sweep.timeout).unwrap();
    st.sync(&sweep, false).unwrap();
    let shared = Shared::new(st, &sweep.trials, 60.0, Artifacts::new(dir, DEFAULT_MAX_BYTES));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, shared.clone(), async {
            let _ = stopped.await;
        }));
        f(SweepClient::connect(url.clone()).await.unwrap(), url).await;
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
    shared.store.close();
    shared
}

fn query<T: rusqlite::types::FromSql>(dir: &Path, sql: &str) -> T {
    rusqlite::Connection::open(dir.join("state.db")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

async fn register(c: &mut Client, name: &str) -> String {
    let r = pb::RegisterRequest { protocol_version: sweep_proto::PROTOCOL_VERSION, name: name.into(), ..Default::default() };
    c.register(r).await.unwrap().into_inner().worker_id
}

async fn lease(c: &mut Client, worker: &str) -> pb::Lease {
    match c.lease(pb::LeaseRequest { worker_id: worker.into() }).await.unwrap().into_inner().reply {
        Some(lease_reply::Reply::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

/// A well-formed `done` report of a sleep trial.
fn done(worker: &str, l: &pb::Lease) -> pb::ReportRequest {
    pb::ReportRequest {
        worker_id: worker.into(),
        attempt_id: l.attempt_id,
        trial_hash: l.trial_hash.clone(),
        status: sweep_proto::status_to_wire(Status::Done),
        metrics_json: r#"{"slept_seconds": 0.001}"#.into(),
        curve_json: "[]".into(),
        wall_seconds: 0.01,
        ..Default::default()
    }
}

fn heartbeat(worker: &str, attempt: u64) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest { worker_id: worker.into(), attempt_id: attempt, ..Default::default() }
}

fn upload(worker: &str, attempt: u64) -> Vec<pb::ArtifactChunk> {
    vec![pb::ArtifactChunk {
        worker_id: worker.into(),
        attempt_id: attempt,
        name: "model.bin".into(),
        media_type: "application/octet-stream".into(),
        total_bytes: 3,
        data: b"abc".to_vec(),
    }]
}

/// Asserts that `got` is refused with `code` and a message containing every fragment.
fn refused<T: std::fmt::Debug>(what: &str, got: Result<T, tonic::Status>, code: Code, fragments: &[&str]) {
    let err = got.err().unwrap_or_else(|| panic!("{what}: accepted"));
    assert_eq!(err.code(), code, "{what}: {err:?}");
    for f in fragments {
        assert!(err.message().contains(f), "{what}: `{f}` not in `{}`", err.message());
    }
}

#[test]
fn a_lease_needs_a_registered_worker() {
    let dir = tmpdir("lease");
    with_server(&dir, SLEEP, |mut c| async move {
        refused("lease by a never registered id", c.lease(pb::LeaseRequest { worker_id: "local0#1".into() }).await, Code::NotFound, &["unknown worker id `local0#1`", "Register"]);
        // An id is issued by Register and is not the bare name.
        let id = register(&mut c, "local0").await;
        assert!(id.starts_with("local0#") && id.len() > "local0#1.".len(), "{id}");
        lease(&mut c, &id).await;
    });
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts"), 1, "only the registered worker's lease");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM workers"), 1);
}

/// The answer to a call that must be refused.
type Refused = Result<(), tonic::Status>;

#[test]
fn requests_about_an_attempt_must_come_from_its_holder() {
    let dir = tmpdir("holder");
    with_server(&dir, &format!("seeds = [0, 1]\n{SLEEP}"), |mut c| {
        let dir = &dir;
        async move {
            let holder = register(&mut c, "holder").await;
            let intruder = register(&mut c, "intruder").await;
            let l = lease(&mut c, &holder).await;
            let other = lease(&mut c, &intruder).await;
            let a = l.attempt_id;
            let not_holder = ["was leased to another worker"];
            // (what, the refused call's result, code, message fragments)
            let other_hash = [other.trial_hash.as_str()];
            let mut wrong_trial = done(&holder, &l);
            wrong_trial.trial_hash = other.trial_hash.clone();
            let cases: Vec<(&str, Refused, Code, &[&str])> = vec![
                ("heartbeat by another worker", c.heartbeat(heartbeat(&intruder, a)).await.map(drop), Code::PermissionDenied, &not_holder),
                ("heartbeat by an unknown id", c.heartbeat(heartbeat("ghost#1", a)).await.map(drop), Code::PermissionDenied, &not_holder),
                ("heartbeat of an unknown attempt", c.heartbeat(heartbeat(&holder, 999)).await.map(drop), Code::NotFound, &["unknown attempt 999"]),
                (
                    "ok report `{}` by an unknown id",
                    c.report(pb::ReportRequest { metrics_json: "{}".into(), ..done("ghost#1", &l) }).await.map(drop),
                    Code::PermissionDenied,
                    &not_holder,
                ),
                ("well-formed report by another worker", c.report(done(&intruder, &l)).await.map(drop), Code::PermissionDenied, &not_holder),
                ("report of an unknown attempt", c.report(pb::ReportRequest { attempt_id: 999, ..done(&holder, &l) }).await.map(drop), Code::NotFound, &["unknown attempt 999"]),
                ("report naming another trial", c.report(wrong_trial).await.map(drop), Code::FailedPrecondition, &other_hash),
                ("cancel by another worker", c.cancel(pb::CancelRequest { worker_id: intruder.clone(), attempt_id: a }).await.map(drop), Code::PermissionDenied, &not_holder),
                ("upload by another worker", c.upload_artifact(tokio_stream::iter(upload(&intruder, a))).await.map(drop), Code::PermissionDenied, &["model.bin", "refused"]),
                ("upload by an unknown id", c.upload_artifact(tokio_stream::iter(upload("ghost#1", a))).await.map(drop), Code::PermissionDenied, &["refused"]),
            ];
            for (what, got, code, fragments) in cases {
                refused(what, got, code, fragments);
            }
            // The holder's attempt is untouched: still running, its deadline not extended by
            // anyone else, no result, no artifact.
            assert_eq!(query::<f64>(dir, &format!("SELECT deadline FROM attempts WHERE id = {a}")), l.deadline_unix);
            assert_eq!(query::<String>(dir, &format!("SELECT outcome FROM attempts WHERE id = {a}")), "running");
            assert_eq!(query::<i64>(dir, "SELECT COUNT(*) FROM results"), 0);
            assert!(!c.heartbeat(heartbeat(&holder, a)).await.unwrap().into_inner().cancel);
            let r = c.report(done(&holder, &l)).await.unwrap().into_inner();
            assert!(r.recorded, "{r:?}");
        }
    });
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 1, "only the holder's report");
    assert_eq!(query::<String>(&dir, "SELECT w.name FROM results r JOIN attempts a ON a.id = r.attempt_id JOIN workers w ON w.id = a.worker"), "holder");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running'"), 1, "the intruder's own attempt still runs");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts"), 2, "nothing was cancelled, ignored or re-leased");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM artifacts"), 0);
    assert!(!dir.join("artifacts/.partial/1/model.bin").exists(), "no upload from another worker kept");
}

/// A malformed `done` (or diverged) report of the holder: (what, the report's edit, the
/// fragment of the recorded reason).
type Edit = fn(&mut pb::ReportRequest);

#[test]
fn malformed_reports_become_failed_attempts_and_never_results() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("metrics `{}` (no required metric)", |r| r.metrics_json = "{}".into(), "missing: slept_seconds"),
        ("a required metric null (not finite)", |r| r.metrics_json = r#"{"slept_seconds": null}"#.into(), "`slept_seconds` is not a finite number"),
        ("a metric as a string", |r| r.metrics_json = r#"{"slept_seconds": "0.5"}"#.into(), "`slept_seconds` is a string"),
        ("another metric as an object", |r| r.metrics_json = r#"{"slept_seconds": 1, "x": {}}"#.into(), "`x` is an object"),
        ("metrics not an object", |r| r.metrics_json = "[1, 2]".into(), "not a JSON object"),
        ("metrics not JSON", |r| r.metrics_json = "slept_seconds=1".into(), "metrics_json"),
        ("a curve that is not JSON", |r| r.curve_json = "[{".into(), "curve_json"),
        ("a curve row that is not an object", |r| r.curve_json = "[1]".into(), "curve row 0"),
        ("a curve value that is a string", |r| r.curve_json = r#"[{"step": "0"}]"#.into(), "curve row 0"),
        ("ragged samples", |r| r.samples = Some(pb::Points { dim: 2, f32_le: vec![0; 12] }), "samples"),
        (
            "samples and data of other dimensions",
            |r| {
                r.samples = Some(pb::Points::from_f32(2, &[1.0, 2.0]));
                r.data = Some(pb::Points::from_f32(1, &[1.0]));
            },
            "dimension",
        ),
        ("a non-finite wall time", |r| r.wall_seconds = f64::NAN, "wall_seconds"),
        ("diverged without its step", |r| r.status = sweep_proto::status_to_wire(Status::Diverged), "diverged_step"),
        ("a status a worker cannot report", |r| r.status = sweep_proto::status_to_wire(Status::Queued), "status queued"),
        ("an unknown status value", |r| r.status = 99, "99"),
    ];
    let dir = tmpdir("malformed");
    let n = cases.len();
    with_server(&dir, &format!("retries = {n}\n{SLEEP}"), |mut c| {
        let cases = &cases;
        async move {
            let w = register(&mut c, "w").await;
            for (what, edit, _) in cases {
                let l = lease(&mut c, &w).await;
                let mut r = done(&w, &l);
                edit(&mut r);
                let reply = c.report(r).await.unwrap_or_else(|e| panic!("{what}: refused instead of recorded as failed: {e:?}")).into_inner();
                assert!(reply.recorded, "{what}: {reply:?}");
            }
            // The trial is still queued (each attempt failed), and a well-formed report is taken.
            let l = lease(&mut c, &w).await;
            assert!(c.report(done(&w, &l)).await.unwrap().into_inner().recorded);
        }
    });
    let conn = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let errors: Vec<(String, String)> = conn
        .prepare("SELECT outcome, error FROM attempts ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(errors.len(), n + 1);
    for ((what, _, fragment), (outcome, error)) in cases.iter().zip(&errors) {
        assert_eq!(outcome, "failed", "{what}");
        assert!(error.starts_with("malformed report") && error.contains(fragment), "{what}: `{fragment}` not in `{error}`");
    }
    assert_eq!(errors[n].0, "done");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 1, "only the well-formed report became a result");
    assert_eq!(query::<String>(&dir, "SELECT metrics_json FROM results"), r#"{"slept_seconds": 0.001}"#);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM curves") + query::<i64>(&dir, "SELECT COUNT(*) FROM samples"), 0);
}

#[test]
fn a_train_trial_must_report_the_metrics_of_its_configuration() {
    let src = "retries = 0\n[base]\nseed = 0\n[base.data]\npreset = \"seed1d\"\n[base.model]\nkind = \"mlp\"\n[base.objective]\nkind = \"ssm_vr\"\n[base.train]\nsteps = 10\n[base.sampler]\nkind = \"none\"\n";
    let dir = tmpdir("train");
    with_server(&dir, src, |mut c| async move {
        let w = register(&mut c, "w").await;
        let l = lease(&mut c, &w).await;
        // What a sleep trial reports, and the always-present training metrics: not enough for
        // an SSM trial on data with an exact score.
        let mut r = done(&w, &l);
        r.metrics_json = r#"{"slept_seconds": 1, "steps_done": 10, "train_seconds": 1, "eval_seconds": 1, "sample_seconds": 0}"#.into();
        assert!(c.report(r).await.unwrap().into_inner().recorded);
    });
    let error: String = query(&dir, "SELECT error FROM attempts");
    for k in ["l_esm", "gap", "l_ssm"] {
        assert!(error.contains(k), "`{k}` not in `{error}`");
    }
    assert!(!error.contains("missing: steps_done"), "{error}");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 0);
    assert_eq!(query::<String>(&dir, "SELECT status FROM trials"), "failed", "no retries left: failed, without a result");
}

/// Raw bytes as a gRPC message, to send what no generated client would.
#[derive(Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Message size limits and undecodable input: garbage bytes on the port, an HTTP/2 connection
/// that sends nonsense, a Report over the 64 MiB limit and a Report that is not protobuf are
/// each refused (the connection closed, or the call answered with an error status), and none of
/// them changes the run: the attempt they aimed at is still running, and its real report is
/// recorded afterwards like any other.
#[test]
fn oversized_and_undecodable_messages_are_refused_and_the_run_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tmpdir("limits");
    with_server_at(&dir, &format!("seeds = [0, 1]\n{SLEEP}"), |mut c, url| async move {
        let w = register(&mut c, "w").await;
        let l = lease(&mut c, &w).await;
        let addr = url.trim_start_matches("http://").to_string();
        // Garbage bytes, then an HTTP/2 preface followed by garbage frames.
        let junk: Vec<u8> = (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for prefix in [&b""[..], &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]] {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let _ = s.write_all(prefix).await;
            let _ = s.write_all(&junk).await;
            let mut sink = Vec::new();
            let closed = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut sink)).await;
            assert!(closed.is_ok(), "the server kept a garbage connection open");
        }
        // A Report over the limit: refused before it is decoded.
        let mut big = done(&w, &l);
        big.metrics_json = format!("{{\"slept_seconds\": 0.001, \"pad\": \"{}\"}}", "x".repeat((64 << 20) + 1024));
        let mut unlimited = c.clone().max_encoding_message_size(usize::MAX);
        let err = unlimited.report(big).await.expect_err("an oversized report was accepted");
        assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
        // A Report that is not protobuf.
        let mut raw = tonic::client::Grpc::new(Channel::from_shared(url.clone()).unwrap().connect().await.unwrap());
        raw.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/scoresweep.v1.Sweep/Report");
        let err = raw.unary(tonic::Request::new(vec![0xff; 64]), path, Raw).await.expect_err("garbage decoded");
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        // Nothing changed: the attempt still runs, and its real report is recorded.
        let hb = c.heartbeat(heartbeat(&w, l.attempt_id)).await.unwrap().into_inner();
        assert!(!hb.cancel);
        c.report(done(&w, &l)).await.unwrap();
        let l2 = lease(&mut c, &w).await;
        c.report(done(&w, &l2)).await.unwrap();
    });
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 2);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts"), 2, "one attempt per trial: the refused messages made none");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts WHERE outcome = 'done'"), 2);
}

/// Checkpoint about an attempt is refused as Heartbeat is (another worker's, an unknown one,
/// another trial), and over its bounds (metrics, names, index); a sweep without `[early_stop]`
/// answers continue and records nothing; a PRUNED report the coordinator never asked for is a
/// failed attempt, not a result.
#[test]
fn checkpoints_are_bound_bounded_and_pruning_is_the_coordinators_call() {
    let dir = tmpdir("checkpoint");
    with_server(&dir, SLEEP, |mut c| async move {
        let (w1, w2) = (register(&mut c, "a").await, register(&mut c, "b").await);
        let l = lease(&mut c, &w1).await;
        let ck = |worker: &str, attempt: u64, hash: &str| pb::CheckpointRequest {
            worker_id: worker.into(),
            attempt_id: attempt,
            trial_hash: hash.into(),
            index: 1,
            step: 10,
            total_steps: 100,
            metrics: [("l_esm".to_string(), 0.5)].into_iter().collect(),
        };
        refused("another worker's attempt", c.checkpoint(ck(&w2, l.attempt_id, &l.trial_hash)).await, Code::PermissionDenied, &["another worker"]);
        refused("an unknown attempt", c.checkpoint(ck(&w1, 9999, &l.trial_hash)).await, Code::NotFound, &["unknown attempt"]);
        refused("another trial", c.checkpoint(ck(&w1, l.attempt_id, "beef")).await, Code::FailedPrecondition, &["not beef"]);
        let mut many = ck(&w1, l.attempt_id, &l.trial_hash);
        many.metrics = (0..300).map(|i| (format!("m{i}"), 1.0)).collect();
        refused("too many metrics", c.checkpoint(many).await, Code::ResourceExhausted, &["metrics"]);
        let mut long = ck(&w1, l.attempt_id, &l.trial_hash);
        long.metrics = [("x".repeat(1000), 1.0)].into_iter().collect();
        refused("a long metric name", c.checkpoint(long).await, Code::ResourceExhausted, &["metric name"]);
        let mut far = ck(&w1, l.attempt_id, &l.trial_hash);
        far.index = u32::MAX;
        refused("an index past any curve", c.checkpoint(far).await, Code::ResourceExhausted, &["index"]);
        let r = c.checkpoint(ck(&w1, l.attempt_id, &l.trial_hash)).await.unwrap().into_inner();
        assert!(!r.stop && r.note.contains("does not stop trials early"), "{r:?}");
        assert!(!l.report_checkpoints, "no [early_stop]: leases do not ask for checkpoints");
        let mut pruned = done(&w1, &l);
        pruned.status = sweep_proto::status_to_wire(Status::Pruned);
        c.report(pruned).await.unwrap();
    });
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM checkpoints") + query::<i64>(&dir, "SELECT COUNT(*) FROM decisions"), 0);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 0);
    let err: String = query(&dir, "SELECT error FROM attempts");
    assert!(err.contains("never answered stop"), "{err}");
}
