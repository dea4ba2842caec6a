//! The `worker trial` command line: outputs on success, located errors with exit code 2 and
//! nothing written on bad input, and `status = diverged` with the step on blow-up; `worker
//! devices` and `--device` (a build without the `cuda` feature has no GPU and runs on the CPU).

use std::path::Path;
use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker"))
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TINY: &str = "seed = 2\n[data]\npreset = \"seed1d\"\n[model]\nkind = \"mlp\"\nhidden = 16\n[objective]\nkind = \"dsm\"\nnoise = { ladder = \"geometric\", sigma_max = 4.0, sigma_min = 0.2, levels = 4 }\n[train]\nsteps = 40\nbatch = 64\neval_every = 20\n[eval]\nn = 2000\n[sampler]\nkind = \"annealed_langevin\"\nsteps_per_level = 5\nn = 50\n";

#[test]
fn trial_writes_its_outputs() {
    let dir = tmpdir("ok");
    let file = dir.join("t.toml");
    std::fs::write(&file, TINY).unwrap();
    let out = dir.join("out");
    let st = worker().args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["status"], "ok");
    // `--device auto` (the default): the CPU here, with the hand-derived DSM step.
    if !cfg!(feature = "cuda") {
        assert_eq!((metrics["device"].as_str(), metrics["trainer"].as_str()), (Some("cpu"), Some("fast_dsm")));
    }
    for k in ["l_esm", "l_ism", "gap", "gap_se", "c_true", "l_dsm", "dsm_gap", "c_dsm", "fd", "swd", "mmd", "mode_weight_err"] {
        assert!(metrics[k].is_number(), "metrics.json lacks {k}");
    }
    let curve = std::fs::read_to_string(out.join("curve.csv")).unwrap();
    let mut lines = curve.lines();
    assert!(lines.next().unwrap().starts_with("step,train_loss,l_esm,l_esm_se,l_ism,l_ism_se,gap,gap_se,c_true"));
    assert_eq!(lines.count(), 3, "checkpoints at steps 0, 20, 40");
    assert_eq!(std::fs::read_to_string(out.join("samples.csv")).unwrap().lines().count(), 51);
    assert!(std::fs::metadata(out.join("model.safetensors")).unwrap().len() > 0);
}

/// (edit of TINY, key, line:column in the message).
#[test]
fn bad_trials_exit_2_with_location_and_write_nothing() {
    let cases = [
        (TINY.replace("sigma_min = 0.2", "sigma_min = -0.2"), "objective.noise.sigma_min", ":9:"),
        (TINY.replace("levels = 4", "levels = 0"), "objective.noise.levels", ":9:"),
        (TINY.replace("kind = \"dsm\"", "kind = \"ism\"").replace("hidden = 16", "hidden = 16\nactivation = \"relu\""), "model.activation", ":7:"),
        (TINY.replace("batch = 64", "batch = 64\nbatchsize = 3"), "train.batchsize", ":13:"),
    ];
    for (i, (src, key, at)) in cases.iter().enumerate() {
        let dir = tmpdir(&format!("bad{i}"));
        let file = dir.join("bad.toml");
        std::fs::write(&file, src).unwrap();
        let out = dir.join("out");
        let st = worker().args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert_eq!(st.status.code(), Some(2), "{err}");
        assert!(err.contains("bad.toml") && err.contains(key) && err.contains(at), "case {i}: {err}");
        assert!(!Path::new(&out).exists(), "case {i}: output written for a bad trial");
    }
}

#[test]
fn divergence_is_reported_with_its_step() {
    let dir = tmpdir("nan");
    let file = dir.join("t.toml");
    std::fs::write(&file, TINY.replace("eval_every = 20", "eval_every = 20\nlr = 1e12")).unwrap();
    let out = dir.join("out");
    let st = worker().args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "diverged", "{m}");
    let step = m["diverged_step"].as_u64().unwrap();
    assert!(step > 0 && step < 40, "diverged at {step}");
}

/// A trial's metrics do not depend on the thread count it runs with (ARCHITECTURE.md:
/// determinism): the same trial under RAYON_NUM_THREADS = 1, 2 and 3 gives the same metrics
/// bit for bit (timings aside), for the hand-derived DSM and SSM steps at a batch that is split
/// into slices, and for candle's autograd (ESM).
#[test]
fn metrics_do_not_depend_on_the_thread_count() {
    let big = TINY.replace("batch = 64", "batch = 1024").replace("steps = 40", "steps = 30");
    let cases = [("dsm", big.clone()), ("ssm", big.replace("kind = \"dsm\"", "kind = \"ssm_vr\"")), ("esm", big.replace("kind = \"dsm\"", "kind = \"esm\""))];
    for (name, src) in cases {
        let dir = tmpdir(&format!("threads-{name}"));
        let file = dir.join("t.toml");
        std::fs::write(&file, &src).unwrap();
        let mut seen: Option<serde_json::Map<String, serde_json::Value>> = None;
        for threads in ["1", "2", "3"] {
            let out = dir.join(format!("out{threads}"));
            let st = worker().env("RAYON_NUM_THREADS", threads).args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
            assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
            let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
            let mut m = m.as_object().unwrap().clone();
            m.retain(|k, _| !k.ends_with("_seconds"));
            assert!(m["l_esm"].is_number(), "{name}: {m:?}");
            match &seen {
                None => seen = Some(m),
                Some(first) => assert_eq!(first, &m, "{name}: metrics differ between 1 and {threads} threads"),
            }
        }
    }
}

/// Without the `cuda` feature the worker sees no GPU and says why; `--device cpu` and `auto` run
/// on the CPU; `--device cuda` is refused with exit code 2 before anything is written, and a
/// device that is not one is refused by the command line.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_build_without_cuda_reports_no_gpu_and_runs_on_the_cpu() {
    let st = worker().arg("devices").output().unwrap();
    assert!(st.status.success());
    let text = String::from_utf8_lossy(&st.stdout);
    assert_eq!(text, "cuda: not compiled in\ngpus: 0\nnote: built without the `cuda` feature\n");

    let dir = tmpdir("device");
    let file = dir.join("t.toml");
    std::fs::write(&file, TINY.replace("steps = 40", "steps = 2").replace("eval_every = 20", "eval_every = 2")).unwrap();
    for device in ["cpu", "auto"] {
        let out = dir.join(format!("out-{device}"));
        let st = worker().args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", device]).output().unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(st.status.success(), "{err}");
        assert!(err.contains("device = cpu"), "{device}: {err}");
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(m["device"], "cpu", "{device}: {m}");
    }
    let out = dir.join("out-cuda");
    let st = worker().args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cuda"]).output().unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(2), "{err}");
    assert!(err.contains("--device cuda:0: cannot use cuda:0: built without the `cuda` feature"), "{err}");
    assert!(!out.exists());
    let st = worker().args(["trial", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "gpu"]).output().unwrap();
    assert_eq!(st.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&st.stderr).contains("expected cpu, cuda, cuda:N or auto"));
}
