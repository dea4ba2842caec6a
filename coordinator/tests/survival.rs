//! The coordinator survives its own workers (issue 20): a late report of an attempt that lost
//! its lease closes only that attempt; a transient storage error answers a retryable status and
//! loses nothing; a worker holds no more attempts than it declared, a cancel counts as an
//! attempt, registrations are bounded; every field of a request is bounded (GPU lists, names,
//! metrics, curves, errors), and a registration cannot make a lease allocate without bound.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coordinator::artifacts::{Artifacts, DEFAULT_MAX_BYTES};
use coordinator::limits;
use coordinator::service::{Shared, serve};
use coordinator::state::{AttemptResult, LeaseOutcome, Refusal, Registration, State};
use coordinator::sweep::Sweep;
use schema::Status;
use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};
use tonic::Code;
use tonic::transport::Channel;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-survival-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A sweep of `n` sleep trials with `retries`, synced into a fresh state database.
fn setup(dir: &Path, n: usize, retries: u32) -> (State, Sweep) {
    let seeds: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let src = format!("name = \"s\"\nretries = {retries}\nseeds = [{}]\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.001\n", seeds.join(","));
    let path = dir.join("s.toml");
    std::fs::write(&path, &src).unwrap();
    let sweep = Sweep::parse(&src, &path).unwrap();
    let mut st = State::open(&dir.join("state.db"), sweep.retries + 1, sweep.timeout).unwrap();
    st.sync(&sweep, false).unwrap();
    (st, sweep)
}

fn query<T: rusqlite::types::FromSql>(dir: &Path, sql: &str) -> T {
    rusqlite::Connection::open(dir.join("state.db")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn register(st: &mut State, name: &str, slots: u32) -> String {
    st.atomic(|st| st.register(&Registration { name: name.into(), cores: 1, version: "test".into(), slots, ..Default::default() })).unwrap().unwrap()
}

fn lease(st: &mut State, worker: &str, secs: f64) -> LeaseOutcome {
    st.atomic(|st| st.next_lease(worker, secs)).unwrap().unwrap()
}

fn leased(st: &mut State, worker: &str, secs: f64) -> coordinator::state::Lease {
    match lease(st, worker, secs) {
        LeaseOutcome::Leased(l) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn done() -> AttemptResult {
    AttemptResult { status: Status::Done, metrics_json: r#"{"slept_seconds": 0.001}"#.into(), ..AttemptResult::cancelled() }
}

fn failed() -> AttemptResult {
    AttemptResult { status: Status::Failed, error: "late".into(), ..AttemptResult::cancelled() }
}

/// A's lease expires and the trial goes to B; A's late report (cancelled, or failed with no
/// attempt left) closes A's attempt only: the trial stays B's, runs once, and B's result is
/// recorded. Before the fix the late cancel re-queued the trial while B ran it (a third
/// worker got it too), and the late failure marked it failed while B ran it.
#[test]
fn a_late_report_of_a_stale_attempt_closes_only_that_attempt() {
    for late in [AttemptResult::cancelled(), failed()] {
        let dir = tmpdir(&format!("late-{}", late.status));
        // One retry: A's attempt and B's are the trial's two.
        let (mut st, _) = setup(&dir, 1, 1);
        let (a, b, c) = (register(&mut st, "a", 1), register(&mut st, "b", 1), register(&mut st, "c", 1));
        let la = leased(&mut st, &a, 0.05);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(st.atomic(|st| st.expire()).unwrap(), vec![la.attempt], "A missed its heartbeats");
        let lb = leased(&mut st, &b, 60.0);
        assert_eq!(lb.hash, la.hash, "the trial went to B");
        st.atomic(|st| st.report(&a, la.attempt, &la.hash, &late)).unwrap().unwrap();
        assert_eq!(query::<String>(&dir, "SELECT status FROM trials"), "running", "{}: B still runs the trial", late.status);
        assert_eq!(query::<i64>(&dir, "SELECT attempts FROM trials"), 2);
        assert!(matches!(lease(&mut st, &c, 60.0), LeaseOutcome::Wait { .. }), "{}: nobody else is given the trial", late.status);
        assert_eq!(st.atomic(|st| st.report(&b, lb.attempt, &lb.hash, &done())).unwrap(), Ok(true), "B's result is recorded");
        assert_eq!(lease(&mut st, &c, 60.0), LeaseOutcome::Done);
        drop(st);
        assert_eq!(query::<String>(&dir, "SELECT status FROM trials"), "done");
        assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 1);
        assert_eq!(query::<String>(&dir, &format!("SELECT outcome FROM attempts WHERE id = {}", la.attempt)), late.status.as_str(), "A's attempt is closed with what it said");
    }
}

/// One attempt per worker unless it registered more slots; a cancel counts as an attempt
/// (lease → cancel → lease held a trial for ever without using one up); a cancel the
/// coordinator asked for while stopping does not; registrations are bounded per run.
#[test]
fn a_worker_cannot_hoard_trials_or_hold_one_for_ever() {
    let dir = tmpdir("hoard");
    let (mut st, _) = setup(&dir, 4, 0);
    let one = register(&mut st, "one", 0);
    leased(&mut st, &one, 60.0);
    assert!(matches!(lease(&mut st, &one, 60.0), LeaseOutcome::Wait { .. }), "a second lease waits while the first runs");
    let two = register(&mut st, "two", 2);
    leased(&mut st, &two, 60.0);
    leased(&mut st, &two, 60.0);
    assert!(matches!(lease(&mut st, &two, 60.0), LeaseOutcome::Wait { .. }), "slots = 2: a third waits");
    drop(st);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM trials WHERE status = 'queued'"), 1, "one trial left for others");

    // Cancels count: one retry means two cancels end the trial.
    let dir = tmpdir("cancel");
    let (mut st, _) = setup(&dir, 1, 1);
    let w = register(&mut st, "w", 1);
    for _ in 0..2 {
        let l = leased(&mut st, &w, 60.0);
        st.atomic(|st| st.cancel(&w, l.attempt)).unwrap().unwrap();
    }
    assert_eq!(lease(&mut st, &w, 60.0), LeaseOutcome::Done, "the trial is no longer leased");
    drop(st);
    assert_eq!(query::<String>(&dir, "SELECT status FROM trials"), "failed");
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts WHERE outcome = 'cancelled'"), 2);

    // A cancel the coordinator asked for (second Ctrl-C) gives the attempt back.
    let dir = tmpdir("asked");
    let (mut st, _) = setup(&dir, 1, 0);
    let w = register(&mut st, "w", 1);
    let l = leased(&mut st, &w, 60.0);
    let (cancel, _) = st.atomic(|st| st.heartbeat(&w, l.attempt, 60.0, true)).unwrap().unwrap();
    assert!(cancel);
    st.atomic(|st| st.report(&w, l.attempt, &l.hash, &AttemptResult::cancelled())).unwrap().unwrap();
    drop(st);
    assert_eq!((query::<String>(&dir, "SELECT status FROM trials"), query::<i64>(&dir, "SELECT attempts FROM trials")), ("queued".into(), 0));

    // Registrations per run.
    let dir = tmpdir("registrations");
    let (mut st, sweep) = setup(&dir, 1, 0);
    st.atomic(|st| {
        for i in 0..limits::MAX_REGISTRATIONS_PER_RUN {
            st.register(&Registration { name: format!("w{i}"), ..Default::default() })?.unwrap();
        }
        Ok(())
    })
    .unwrap();
    let refused = st.atomic(|st| st.register(&Registration { name: "one-too-many".into(), ..Default::default() })).unwrap();
    assert_eq!(refused, Err(Refusal::TooManyWorkers { max: limits::MAX_REGISTRATIONS_PER_RUN }));
    // A new run (the sweep synced again) takes registrations again.
    std::thread::sleep(Duration::from_millis(10));
    st.sync(&sweep, false).unwrap();
    assert!(st.atomic(|st| st.register(&Registration { name: "next-run".into(), ..Default::default() })).unwrap().is_ok());
}

/// A worker row of an older database that claims 2³² − 1 GPUs (the Register that wrote it is
/// refused now) does not make a lease build a list that large.
#[test]
fn a_huge_gpu_count_in_the_database_does_not_abort_a_lease() {
    let dir = tmpdir("gpus-row");
    let (mut st, _) = setup(&dir, 1, 0);
    let w = register(&mut st, "w", 1);
    rusqlite::Connection::open(dir.join("state.db")).unwrap().execute("UPDATE workers SET gpus = 4294967295", []).unwrap();
    assert_eq!(st.offer(&w).unwrap().gpus.len(), limits::MAX_GPU_DEVICES);
    leased(&mut st, &w, 60.0);
}

type Client = SweepClient<Channel>;

/// Serves a sweep of `n` trials (with `busy_ms` as the database's busy timeout), runs `f` with
/// a client and the directory, and returns once the server has stopped.
fn with_server<Fut: std::future::Future<Output = ()>>(dir: &Path, n: usize, busy_ms: u64, f: impl FnOnce(Client) -> Fut) -> Arc<Shared> {
    let (st, sweep) = setup(dir, n, 0);
    st.set_busy_timeout(Duration::from_millis(busy_ms)).unwrap();
    let shared = Shared::new(st, &sweep.trials, 60.0, Artifacts::new(dir, DEFAULT_MAX_BYTES));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, shared.clone(), async {
            let _ = stopped.await;
        }));
        f(SweepClient::connect(url).await.unwrap()).await;
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
    shared.store.close();
    shared
}

fn hello(name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest { protocol_version: sweep_proto::PROTOCOL_VERSION, name: name.into(), version: "test".into(), device: "cpu".into(), ..Default::default() }
}

async fn lease_rpc(c: &mut Client, worker: &str) -> pb::Lease {
    match c.lease(pb::LeaseRequest { worker_id: worker.into() }).await.unwrap().into_inner().reply {
        Some(lease_reply::Reply::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn report_of(worker: &str, l: &pb::Lease) -> pb::ReportRequest {
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

fn refused<T: std::fmt::Debug>(what: &str, got: Result<T, tonic::Status>, code: Code, fragment: &str) {
    let err = got.err().unwrap_or_else(|| panic!("{what}: accepted"));
    assert_eq!(err.code(), code, "{what}: {err:?}");
    assert!(err.message().contains(fragment), "{what}: `{fragment}` not in `{}`", err.message());
}

/// A busy database (another writer holds its lock past the busy timeout) answers UNAVAILABLE,
/// which workers retry, and the same report is recorded once the lock is gone. Before the fix
/// the answer was INTERNAL, on which workers drop a finished report.
#[test]
fn a_transient_storage_error_is_retryable_and_loses_nothing() {
    let dir = tmpdir("busy");
    let shared = with_server(&dir, 1, 50, |mut c| {
        let dir = dir.clone();
        async move {
            let w = c.register(hello("w")).await.unwrap().into_inner().worker_id;
            let l = lease_rpc(&mut c, &w).await;
            let blocker = rusqlite::Connection::open(dir.join("state.db")).unwrap();
            blocker.execute_batch("BEGIN IMMEDIATE; INSERT INTO events(at, kind, detail) VALUES (0, 'test', 'holding the lock');").unwrap();
            refused("report while the database is locked", c.report(report_of(&w, &l)).await, Code::Unavailable, "transient");
            blocker.execute_batch("COMMIT").unwrap();
            let r = c.report(report_of(&w, &l)).await.unwrap().into_inner();
            assert!(r.recorded, "the same report, sent again, is recorded: {r:?}");
        }
    });
    drop(shared);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 1);
}

/// Every field of Register and Report is bounded and the GPU list is the one the worker gives:
/// 2³² − 1 GPUs, 17 GPU entries, a 129-byte name, too many slots are refused (nothing
/// registered); a report with 1025 metrics, 100 001 curve rows, 64 KiB + 1 of error text or 65
/// artifact names is refused with RESOURCE_EXHAUSTED and changes nothing, and the same attempt
/// then reports within the limits; a report from someone who does not hold the attempt is
/// refused before its curve is parsed (a malformed curve is not even looked at).
#[test]
fn registrations_and_reports_are_bounded() {
    let dir = tmpdir("bounds");
    with_server(&dir, 1, 10_000, |mut c| async move {
        let gpu = |i: u32| pb::GpuInfo { index: i, name: format!("GPU {i}"), memory_bytes: 80 << 30 };
        refused("gpus = 2^32-1", c.register(pb::RegisterRequest { gpus: u32::MAX, ..hello("g") }).await, Code::InvalidArgument, "gpu_devices lists 0");
        refused("17 GPUs", c.register(pb::RegisterRequest { gpus: 17, gpu_devices: (0..17).map(gpu).collect(), ..hello("g") }).await, Code::ResourceExhausted, "gpu_devices");
        refused("a long name", c.register(hello(&"n".repeat(limits::MAX_NAME_BYTES + 1))).await, Code::ResourceExhausted, "name");
        refused("many slots", c.register(pb::RegisterRequest { slots: limits::MAX_SLOTS + 1, ..hello("s") }).await, Code::ResourceExhausted, "slots");
        let g = c.register(pb::RegisterRequest { gpus: 1, gpu_devices: vec![gpu(0)], ..hello("g") }).await.unwrap().into_inner().worker_id;
        let l = lease_rpc(&mut c, &g).await;

        let many_metrics = format!("{{{}}}", (0..=limits::MAX_METRICS).map(|i| format!("\"m{i}\": 1")).collect::<Vec<_>>().join(","));
        let many_rows = format!("[{}]", vec!["{}"; limits::MAX_CURVE_ROWS + 1].join(","));
        type Edit = Box<dyn Fn(&mut pb::ReportRequest)>;
        let cases: [(&str, Edit, &str); 4] = [
            ("1025 metrics", Box::new(move |r| r.metrics_json = many_metrics.clone()), "metrics_json"),
            ("100 001 curve rows", Box::new(move |r| r.curve_json = many_rows.clone()), "curve_json"),
            ("a long error", Box::new(|r| r.error = "e".repeat(limits::MAX_ERROR_BYTES + 1)), "error"),
            ("65 artifact names", Box::new(|r| r.artifacts = (0..=limits::MAX_REPORT_ARTIFACTS).map(|i| format!("a{i}")).collect()), "artifacts"),
        ];
        for (what, change, field) in cases {
            let mut r = report_of(&g, &l);
            change(&mut r);
            refused(what, c.report(r).await, Code::ResourceExhausted, field);
        }
        // A stranger's report: refused as not the holder before anything in it is parsed,
        // whatever its size: a malformed curve, small or large, and metrics over their limit
        // (which a parse would refuse as RESOURCE_EXHAUSTED) all answer PERMISSION_DENIED.
        let stranger = c.register(hello("stranger")).await.unwrap().into_inner().worker_id;
        let mut metrics = 0;
        for change in [
            Box::new(|r: &mut pb::ReportRequest| r.curve_json = "[x".into()) as Edit,
            Box::new(|r: &mut pb::ReportRequest| r.curve_json = format!("[{}", "x".repeat(1 << 20))),
            Box::new(|r: &mut pb::ReportRequest| r.metrics_json = format!("{{{}}}", (0..=limits::MAX_METRICS).map(|i| format!("\"m{i}\": 1")).collect::<Vec<_>>().join(","))),
        ] {
            let mut r = report_of(&stranger, &l);
            change(&mut r);
            metrics += 1;
            refused(&format!("a stranger's report #{metrics}"), c.report(r).await, Code::PermissionDenied, "leased to another worker");
        }
        let r = c.report(report_of(&g, &l)).await.unwrap().into_inner();
        assert!(r.recorded, "{r:?}");
    });
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM workers"), 2, "only the bounded registrations");
    assert_eq!(query::<i64>(&dir, "SELECT gpus FROM workers WHERE name = 'g'"), 1);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM results"), 1);
    assert_eq!(query::<i64>(&dir, "SELECT COUNT(*) FROM attempts"), 1, "the refused reports closed nothing");
}

/// Item 9: an upload that stops sending is dropped after the idle limit (DEADLINE_EXCEEDED, its
/// temporary file removed, its slot freed), and an attempt has at most
/// `MAX_ACTIVE_UPLOADS` uploads open at once: one more is refused while they are.
#[test]
fn idle_uploads_time_out_and_open_uploads_are_bounded() {
    use coordinator::artifacts::MAX_ACTIVE_UPLOADS;
    let dir = tmpdir("idle-uploads");
    let (st, sweep) = setup(&dir, 1, 0);
    let mut shared = Shared::new(st, &sweep.trials, 60.0, Artifacts::new(&dir, DEFAULT_MAX_BYTES));
    Arc::get_mut(&mut shared).expect("not shared yet").upload_idle = Duration::from_millis(400);
    let partial = dir.join("artifacts/.partial");
    let files_in = |d: &Path| walk(d).len();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, shared.clone(), async {
            let _ = stopped.await;
        }));
        let mut c = SweepClient::connect(url).await.unwrap();
        let w = c.register(hello("w")).await.unwrap().into_inner().worker_id;
        let l = lease_rpc(&mut c, &w).await;
        let first =
            |name: &str| pb::ArtifactChunk { worker_id: w.clone(), attempt_id: l.attempt_id, name: name.into(), total_bytes: 10, data: b"abc".to_vec(), ..Default::default() };
        // Uploads that send one chunk and then nothing, their senders kept open.
        let mut held = Vec::new();
        let mut calls = Vec::new();
        for i in 0..MAX_ACTIVE_UPLOADS {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(first(&format!("idle{i}.bin"))).await.unwrap();
            held.push(tx);
            let mut c = c.clone();
            calls.push(tokio::spawn(async move { c.upload_artifact(tokio_stream::wrappers::ReceiverStream::new(rx)).await }));
        }
        let started = std::time::Instant::now();
        // Both open (their temporary files exist), so one more is refused.
        while files_in(&partial) < MAX_ACTIVE_UPLOADS && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(files_in(&partial), MAX_ACTIVE_UPLOADS, "the open uploads' temporary files");
        let extra = c.upload_artifact(tokio_stream::iter(vec![first("extra.bin")])).await;
        refused("an upload beyond the open ones", extra, Code::ResourceExhausted, "uploads going on");
        for call in calls {
            refused("an idle upload", call.await.unwrap(), Code::DeadlineExceeded, "no data for 0.4 s");
        }
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(10), "dropped after the idle limit, not held: {waited:?}");
        assert_eq!(files_in(&partial), 0, "the idle uploads' files are removed");
        drop(held);
        // Their slots are free again: a complete upload goes through.
        let mut done = first("model.bin");
        done.total_bytes = 3;
        let reply = c.upload_artifact(tokio_stream::iter(vec![done])).await.unwrap().into_inner();
        assert_eq!(reply.bytes, 3);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
    shared.store.close();
}

/// Every file under `d` (none when it does not exist).
fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(d) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}
