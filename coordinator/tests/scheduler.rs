//! The scheduler's moving parts, in process: group commit in the state store (one commit per
//! batch, a failing request rolled back alone), long-polled leases (held while attempts run,
//! answered as soon as a trial is re-queued or the sweep ends), the next lease riding on a
//! report, a panicking request that leaves the store working, the refusal of a state
//! database in another layout, the lease outcomes and status classes (a diverged trial is
//! unusable for `status` and the run summary alike), and artifact uploads (kept under
//! `artifacts/<hash>/` with their sha256, or refused over the size limit without harm to the
//! attempt's report).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::artifacts::{Artifacts, DEFAULT_MAX_BYTES};
use coordinator::resources::Offer;
use coordinator::service::{Shared, serve};
use coordinator::state::{AttemptResult, LeaseOutcome, Registration, State};
use coordinator::store::Store;
use coordinator::sweep::Sweep;
use schema::Status;
use sha2::{Digest, Sha256};
use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-sched-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A sweep of `n` one-millisecond sleep trials, synced into a fresh state database.
fn setup(dir: &Path, n: usize, retries: u32) -> (State, Sweep) {
    let seeds: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let src = format!("name = \"t\"\nretries = {retries}\nseeds = [{}]\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.001\n", seeds.join(","));
    let path = dir.join("t.toml");
    std::fs::write(&path, &src).unwrap();
    let sweep = Sweep::parse(&src, &path).unwrap();
    let mut st = State::open(&dir.join("state.db"), sweep.retries + 1, sweep.timeout).unwrap();
    st.sync(&sweep, false).unwrap();
    (st, sweep)
}

fn count(dir: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(dir.join("state.db")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Holds the store's drain task inside a request until `release` is dropped, so that the requests
/// sent meanwhile queue up and form the next batch.
fn hold(store: &Arc<Store>, rt: &tokio::runtime::Runtime) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let s = store.clone();
    let h = rt.spawn(async move {
        s.call(move |_| {
            let _ = entered_tx.send(());
            let _ = wait.lock().unwrap().recv();
            Ok(())
        })
        .await
        .unwrap();
    });
    entered.recv_timeout(Duration::from_secs(10)).expect("the holding request started");
    (release, h)
}

#[test]
fn queued_requests_share_one_commit_and_all_get_answers() {
    let dir = tmpdir("batch");
    let (st, _) = setup(&dir, 60, 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = Arc::new(Store::new(st));
    let (release, held) = hold(&store, &rt);
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let s = store.clone();
            rt.spawn(async move { s.call(move |st| st.lease(&format!("w{i}"), &Offer::default(), 60.0)).await })
        })
        .collect();
    // Let every call reach the queue, then let the store go on.
    std::thread::sleep(Duration::from_millis(200));
    drop(release);
    let leased: Vec<String> = rt.block_on(async {
        held.await.unwrap();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap().unwrap().expect("a queued trial").hash);
        }
        out
    });
    let distinct: std::collections::HashSet<_> = leased.iter().collect();
    assert_eq!(distinct.len(), 50, "each request leased its own trial");
    let stats = store.stats();
    assert_eq!((stats.requests, stats.batches), (51, 2), "the holding request alone, then the 50 queued ones in one commit");
    store.close();
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running'"), 50);
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM trials WHERE status = 'running'"), 50);
}

#[test]
fn a_failing_request_is_rolled_back_alone() {
    let dir = tmpdir("rollback");
    let (st, _) = setup(&dir, 10, 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = Arc::new(Store::new(st));
    let (release, held) = hold(&store, &rt);
    let spawn_lease = |fail: bool| {
        let s = store.clone();
        rt.spawn(async move {
            s.call(move |st| {
                let got = st.lease("w", &Offer::default(), 60.0)?;
                if fail {
                    // After a change: the request must leave nothing behind.
                    return Err(rusqlite::Error::InvalidQuery);
                }
                Ok(got)
            })
            .await
        })
    };
    let (a, b, c) = (spawn_lease(false), spawn_lease(true), spawn_lease(false));
    std::thread::sleep(Duration::from_millis(200));
    drop(release);
    let (a, b, c) = rt.block_on(async {
        held.await.unwrap();
        (a.await.unwrap(), b.await.unwrap(), c.await.unwrap())
    });
    assert!(a.unwrap().is_some() && c.unwrap().is_some(), "the other requests of the batch committed");
    assert!(b.is_err(), "the failing request reports its error");
    store.close();
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM attempts"), 2, "no attempt row from the failed request");
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM trials WHERE status = 'running'"), 2);
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM trials WHERE status = 'queued'"), 8);
}

fn lease_of(r: pb::LeaseReply) -> pb::Lease {
    match r.reply {
        Some(lease_reply::Reply::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

/// Registers a worker named `name` and returns its id.
async fn register(c: &mut SweepClient<tonic::transport::Channel>, name: &str) -> String {
    let r = pb::RegisterRequest { protocol_version: sweep_proto::PROTOCOL_VERSION, name: name.into(), ..Default::default() };
    c.register(r).await.unwrap().into_inner().worker_id
}

/// A report of a sleep trial (its required metric included).
fn report(worker: &str, l: &pb::Lease, status: Status, lease_next: bool) -> pb::ReportRequest {
    pb::ReportRequest {
        worker_id: worker.into(),
        attempt_id: l.attempt_id,
        trial_hash: l.trial_hash.clone(),
        status: sweep_proto::status_to_wire(status),
        metrics_json: r#"{"slept_seconds": 0.001}"#.into(),
        curve_json: "[]".into(),
        error: "boom".into(),
        lease_next,
        ..Default::default()
    }
}

#[test]
fn leases_long_poll_and_the_next_lease_rides_on_the_report() {
    let dir = tmpdir("poll");
    // Three trials, one retry each.
    let (st, sweep) = setup(&dir, 3, 1);
    let shared = Shared::new(st, &sweep.trials, 60.0, Artifacts::new(&dir, DEFAULT_MAX_BYTES));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, shared.clone(), async {
            let _ = stopped.await;
        }));
        let mut a = SweepClient::connect(url.clone()).await.unwrap();
        let mut b = SweepClient::connect(url.clone()).await.unwrap();
        let mut c = SweepClient::connect(url).await.unwrap();
        let (ia, ib, ic) = (register(&mut a, "a").await, register(&mut b, "b").await, register(&mut c, "c").await);
        let la = lease_of(a.lease(pb::LeaseRequest { worker_id: ia.clone() }).await.unwrap().into_inner());
        let lb = lease_of(b.lease(pb::LeaseRequest { worker_id: ib.clone() }).await.unwrap().into_inner());

        // B finishes and gets the third trial with its report, in one call.
        let rb = b.report(report(&ib, &lb, Status::Done, true)).await.unwrap().into_inner();
        assert!(rb.recorded);
        let lb2 = lease_of(rb.next.expect("a next lease"));
        assert_ne!(lb2.trial_hash, la.trial_hash);
        assert_ne!(lb2.trial_hash, lb.trial_hash);

        // Nothing queued, two attempts running: C's Lease is held...
        let started = Instant::now();
        let held = {
            let ic = ic.clone();
            tokio::spawn(async move { c.lease(pb::LeaseRequest { worker_id: ic }).await.map(|r| r.into_inner()) })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "a lease with nothing queued is held while attempts run");
        // ...until A's attempt fails and its trial goes back to the queue: C gets it at once,
        // well before the 5 s long-poll limit.
        let ra = a.report(report(&ia, &la, Status::Failed, false)).await.unwrap().into_inner();
        assert!(ra.recorded && ra.next.is_none(), "no next lease unless asked");
        let lc = lease_of(held.await.unwrap().unwrap());
        assert_eq!(lc.trial_hash, la.trial_hash, "the re-queued trial");
        assert!(started.elapsed() < Duration::from_secs(3), "answered by the re-queue, not the timeout");

        // Last two finish; a report asking for more when nothing is queued says "ask Lease".
        let r = b.report(report(&ib, &lb2, Status::Done, true)).await.unwrap().into_inner();
        assert!(matches!(r.next, Some(pb::LeaseReply { reply: Some(lease_reply::Reply::WaitSeconds(_)) })), "{:?}", r.next);
        // A Lease held now ends with "done" the moment the last attempt finishes, and so does
        // the next lease asked for with that last report.
        let mut a2 = a.clone();
        let waiting = {
            let ia = ia.clone();
            tokio::spawn(async move { a2.lease(pb::LeaseRequest { worker_id: ia }).await.map(|r| r.into_inner()) })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        let t = Instant::now();
        let mut c2 = b.clone();
        let last = c2.report(report(&ic, &lc, Status::Done, true)).await.unwrap().into_inner();
        assert!(matches!(last.next, Some(pb::LeaseReply { reply: Some(lease_reply::Reply::Done(true)) })), "the last report learns the sweep is over: {:?}", last.next);
        let done = waiting.await.unwrap().unwrap();
        assert!(matches!(done.reply, Some(lease_reply::Reply::Done(true))), "{done:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
    shared.store.close();
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM results"), 3);
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM attempts"), 4, "three trials, one retried");
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM attempts WHERE outcome = 'failed'"), 1);
}

#[test]
fn a_state_database_in_another_layout_is_refused() {
    let dir = tmpdir("layout");
    let db = dir.join("state.db");
    rusqlite::Connection::open(&db).unwrap().execute_batch("CREATE TABLE trials(hash TEXT PRIMARY KEY, idx INTEGER NOT NULL);").unwrap();
    let err = State::open(&db, 1, 60.0).err().expect("refused").to_string();
    assert!(err.contains("layout") && err.contains("state.db"), "{err}");
    // The previous layout (2: `leased` trials, JSON samples) is refused as well, by name.
    let db = dir.join("v2.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE trials(id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, status TEXT NOT NULL); CREATE TABLE samples(trial_id INTEGER PRIMARY KEY, samples_json TEXT NOT NULL); PRAGMA user_version = 2;").unwrap();
    drop(conn);
    let err = State::open(&db, 1, 60.0).err().expect("refused").to_string();
    assert!(err.contains("v2.db") && err.contains("layout 2") && err.contains(&format!("layout {}", coordinator::state::SCHEMA_VERSION)) && err.contains("--out"), "{err}");
}

#[test]
fn a_panicking_request_does_not_stall_the_store() {
    let dir = tmpdir("panic");
    let (st, _) = setup(&dir, 4, 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = Store::new(st);
    rt.block_on(async {
        let s = store.clone();
        let bad = tokio::spawn(async move { s.call(|_| -> rusqlite::Result<()> { panic!("a bug in a request") }).await });
        assert!(bad.await.map(|r| r.is_err()).unwrap_or(true), "the panicking request gets no answer");
        let got = tokio::time::timeout(Duration::from_secs(5), store.call(|st| st.lease("w", &Offer::default(), 60.0))).await.expect("the store still answers");
        assert!(got.unwrap().is_some());
    });
    store.close();
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM attempts"), 1, "the lease after the panic was committed");
}

#[test]
fn lease_outcomes_and_a_diverged_trial_counts_as_unusable_everywhere() {
    let dir = tmpdir("classes");
    let (mut st, _) = setup(&dir, 2, 0);
    // Two slots: it holds both trials at once.
    let w = st.atomic(|st| st.register(&Registration { name: "w".into(), cores: 1, version: "test".into(), slots: 2, ..Default::default() })).unwrap().unwrap();
    let lease = |st: &mut State| match st.atomic(|st| st.next_lease(&w, 60.0)).unwrap().unwrap() {
        LeaseOutcome::Leased(l) => l,
        other => panic!("expected a lease, got {other:?}"),
    };
    let (a, b) = (lease(&mut st), lease(&mut st));
    assert_eq!(st.atomic(|st| st.next_lease(&w, 60.0)).unwrap(), Ok(LeaseOutcome::Wait { running: 2 }));
    let done = AttemptResult { status: Status::Done, ..AttemptResult::cancelled() };
    let diverged = AttemptResult { status: Status::Diverged, diverged_step: Some(7), ..AttemptResult::cancelled() };
    assert_eq!(st.atomic(|st| st.report(&w, a.attempt, &a.hash, &done)).unwrap(), Ok(true));
    assert_eq!(st.atomic(|st| st.report(&w, b.attempt, &b.hash, &diverged)).unwrap(), Ok(true));
    assert_eq!(st.atomic(|st| st.next_lease(&w, 60.0)).unwrap(), Ok(LeaseOutcome::Done));
    // `coordinator status` counts...
    let c = st.counts().unwrap();
    assert_eq!((c.done, c.failed, c.running, c.queued, c.finished()), (1, 1, 0, 0, 2), "{c:?}");
    drop(st);
    // ...and the run summary agree.
    let summary = results::write_all(&dir.join("state.db"), &dir.join("out")).unwrap();
    assert_eq!((summary.trials, summary.done, summary.failed), (2, 1, 1));
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM trials WHERE status = 'diverged'"), 1);
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM results WHERE status = 'diverged' AND diverged_step = 7"), 1);
}

/// Resource matching: the trials of a `gpu = true` sweep are never leased to a CPU worker
/// (it waits, and the shortage is visible at once) and go to a GPU worker as soon as one
/// registers; the trials of a CPU sweep go to either.
#[test]
fn gpu_trials_go_only_to_gpu_workers() {
    // Two trials that need what the sweep says and two (a variant) that need the other.
    // Each step: (who asks, what it must get: a trial needing a GPU, one not, or a wait), then
    // the trials still waiting for a GPU worker that has not registered (`gpu_shortage`).
    #[derive(Debug, PartialEq, Clone, Copy)]
    enum Got {
        Gpu,
        Cpu,
        Wait,
    }
    use Got::*;
    type Step = (&'static str, Got, usize);
    let cases: [(bool, &[Step]); 2] = [
        // gpu = false, one variant with gpu = true: the CPU worker takes the CPU trials, then
        // waits; the GPU worker takes the GPU trials first, then helps with the CPU ones.
        (false, &[("cpu", Cpu, 2), ("gpu", Gpu, 0), ("cpu", Cpu, 0), ("gpu", Gpu, 0), ("cpu", Wait, 0), ("gpu", Wait, 0)]),
        // gpu = true, one variant with gpu = false: the CPU worker only ever gets the variant.
        (true, &[("cpu", Cpu, 2), ("cpu", Cpu, 2), ("cpu", Wait, 2), ("gpu", Gpu, 0), ("gpu", Gpu, 0), ("gpu", Wait, 0)]),
    ];
    for (sweep_gpu, steps) in cases {
        let dir = tmpdir(&format!("gpu-{sweep_gpu}"));
        let src = format!(
            "name = \"g\"\ngpu = {sweep_gpu}\nseeds = [0, 1]\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.001\n[[variants]]\n\"sleep.seconds\" = 0.002\ngpu = {}\n",
            !sweep_gpu
        );
        let path = dir.join("g.toml");
        std::fs::write(&path, &src).unwrap();
        let sweep = Sweep::parse(&src, &path).unwrap();
        let needs: Vec<bool> = sweep.trials.iter().map(|t| t.gpu).collect();
        assert_eq!(needs, [sweep_gpu, sweep_gpu, !sweep_gpu, !sweep_gpu], "the variant's `gpu` is not a trial key: {:?}", sweep.trials[2].flat);
        let mut st = State::open(&dir.join("state.db"), 1, sweep.timeout).unwrap();
        st.sync(&sweep, false).unwrap();
        // Four slots each: a worker holds what it leases here (nothing is reported).
        let reg = |name: &str, gpus: u32| Registration { name: name.into(), cores: 16, gpus, version: "test".into(), device: "test".into(), slots: 4 };
        let cpu = st.atomic(|st| st.register(&reg("cpu", 0))).unwrap().unwrap();
        let mut gpu = None;
        for (i, &(who, want, shortage)) in steps.iter().enumerate() {
            let worker = if who == "cpu" { cpu.clone() } else { gpu.get_or_insert_with(|| st.atomic(|st| st.register(&reg("gpu", 1))).unwrap().unwrap()).clone() };
            let got = match st.atomic(|st| st.next_lease(&worker, 60.0)).unwrap().unwrap() {
                LeaseOutcome::Leased(l) => {
                    if sweep.trials.iter().find(|t| t.hash == l.hash).unwrap().gpu {
                        Gpu
                    } else {
                        Cpu
                    }
                }
                LeaseOutcome::Wait { .. } => Wait,
                other => panic!("gpu sweep {sweep_gpu}, step {i}: {other:?}"),
            };
            assert_eq!(got, want, "gpu sweep {sweep_gpu}, step {i}: {who} worker");
            assert_eq!(st.gpu_shortage().unwrap(), shortage, "gpu sweep {sweep_gpu}, step {i}: trials waiting for a GPU worker");
        }
    }
}

/// Serves a fresh sweep of `n` trials whose artifacts may be at most `max_bytes`, runs `f` with
/// a client, and returns the shared state once the server has stopped.
fn with_server<Fut: std::future::Future<Output = ()>>(dir: &Path, n: usize, max_bytes: u64, f: impl FnOnce(SweepClient<tonic::transport::Channel>) -> Fut) -> Arc<Shared> {
    let (st, sweep) = setup(dir, n, 0);
    let shared = Shared::new(st, &sweep.trials, 60.0, Artifacts::new(dir, max_bytes));
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

/// An artifact as the worker sends it: a header chunk, then data in chunks of at most 1 MiB.
fn chunks(worker: &str, l: &pb::Lease, name: &str, total_bytes: u64, data: &[u8]) -> Vec<pb::ArtifactChunk> {
    let header =
        pb::ArtifactChunk { worker_id: worker.into(), attempt_id: l.attempt_id, name: name.into(), media_type: "application/octet-stream".into(), total_bytes, data: vec![] };
    let body = data.chunks(sweep_proto::MAX_CHUNK_BYTES).map(|d| pb::ArtifactChunk { worker_id: worker.into(), attempt_id: l.attempt_id, data: d.to_vec(), ..Default::default() });
    std::iter::once(header).chain(body).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_uploaded_artifact_is_kept_under_its_trial_with_its_sha256() {
    let dir = tmpdir("artifact");
    let data: Vec<u8> = (0..(2 * sweep_proto::MAX_CHUNK_BYTES + 12345)).map(|i| (i * 7 % 251) as u8).collect();
    let want_sha = sha256_hex(&data);
    let mut hash = String::new();
    with_server(&dir, 2, DEFAULT_MAX_BYTES, |mut c| {
        let (data, want_sha, hash) = (&data, &want_sha, &mut hash);
        async move {
            let w = register(&mut c, "w").await;
            let l = lease_of(c.lease(pb::LeaseRequest { worker_id: w.clone() }).await.unwrap().into_inner());
            *hash = l.trial_hash.clone();
            let reply = c.upload_artifact(tokio_stream::iter(chunks(&w, &l, "model.bin", data.len() as u64, data))).await.unwrap().into_inner();
            assert_eq!((reply.bytes, &reply.sha256), (data.len() as u64, want_sha));
            // Refusals: a bad name, an unknown attempt.
            let err = c.upload_artifact(tokio_stream::iter(chunks(&w, &l, "../evil", 1, b"x"))).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            let mut ghost = l.clone();
            ghost.attempt_id = 999;
            let err = c.upload_artifact(tokio_stream::iter(chunks(&w, &ghost, "a.bin", 1, b"x"))).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
            assert!(err.message().contains("unknown attempt 999"), "{}", err.message());
            let mut r = report(&w, &l, Status::Done, false);
            r.artifacts = vec!["model.bin".into()];
            r.samples = Some(pb::Points::from_f32(2, &[1.0, 2.0, 3.0, 4.0]));
            r.data = Some(pb::Points::from_f32(2, &[0.5, 0.5]));
            let r = c.report(r).await.unwrap().into_inner();
            assert!(r.recorded && r.note.is_empty(), "{r:?}");
        }
    });
    let kept = dir.join("artifacts").join(&hash).join("model.bin");
    assert_eq!(std::fs::read(&kept).unwrap(), data, "{} holds the upload", kept.display());
    assert_eq!(count(&dir, &format!("SELECT COUNT(*) FROM artifacts WHERE trial_hash = '{hash}' AND name = 'model.bin' AND bytes = {} AND sha256 = '{want_sha}'", data.len())), 1);
    assert!(walk(&dir.join("artifacts/.partial")).is_empty(), "no partial file left");
    // The results read the samples BLOBs and list the artifact.
    let state = results::state::State::load(&dir.join("state.db")).unwrap();
    let t = state.trials.iter().find(|t| t.hash == hash).unwrap();
    let s = t.samples.as_ref().expect("samples");
    assert_eq!((s.dim, s.samples.clone(), s.data.clone()), (2, vec![vec![1.0, 2.0], vec![3.0, 4.0]], vec![vec![0.5, 0.5]]));
    results::write_all(&dir.join("state.db"), &dir).unwrap();
    let report_md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report_md.contains(&format!("artifacts/{hash}/model.bin")) && report_md.contains(&data.len().to_string()), "{report_md}");
}

#[test]
fn an_artifact_over_the_limit_is_refused_and_the_report_is_still_recorded() {
    let dir = tmpdir("toolarge");
    let limit = 1000;
    with_server(&dir, 1, limit, |mut c| async move {
        let w = register(&mut c, "w").await;
        let l = lease_of(c.lease(pb::LeaseRequest { worker_id: w.clone() }).await.unwrap().into_inner());
        // Announced over the limit: refused from the header.
        let err = c.upload_artifact(tokio_stream::iter(chunks(&w, &l, "model.bin", 5000, &[0u8; 5000]))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        for part in ["model.bin", "5000", "1000", "--max-artifact-bytes"] {
            assert!(err.message().contains(part), "`{part}` not in: {}", err.message());
        }
        // Announced small, sent large: refused once over the limit.
        let err = c.upload_artifact(tokio_stream::iter(chunks(&w, &l, "liar.bin", 10, &[1u8; 3000]))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("liar.bin") && err.message().contains("1000"), "{}", err.message());
        // The attempt goes on: its report (still naming the refused file) is recorded.
        let mut r = report(&w, &l, Status::Done, true);
        r.artifacts = vec!["model.bin".into()];
        let r = c.report(r).await.unwrap().into_inner();
        assert!(r.recorded, "{r:?}");
        assert!(r.note.contains("model.bin"), "the reply says the artifact was not recorded: {}", r.note);
        assert!(matches!(r.next, Some(pb::LeaseReply { reply: Some(lease_reply::Reply::Done(true)) })), "{:?}", r.next);
    });
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM results"), 1);
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM trials WHERE status = 'done'"), 1);
    assert_eq!(count(&dir, "SELECT COUNT(*) FROM artifacts"), 0);
    let leftovers: Vec<_> = walk(&dir.join("artifacts"));
    assert!(leftovers.is_empty(), "nothing left behind: {leftovers:?}");
}

/// Every file under `dir` (none if it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
