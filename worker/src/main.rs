//! The `worker` binary: `worker trial FILE.toml --out DIR` runs one trial standalone;
//! `worker --coordinator URL` joins a sweep and runs trials leased over gRPC (see `agent`);
//! `worker bench` times one engine case; `worker devices` lists the GPUs it can see; `worker
//! data fetch mnist|fashion DIR` downloads a full data set (see `fetch`). Trials run
//! on `--device` (`auto`: the first GPU of a `cuda` build with a driver, else the CPU). The
//! engine itself (crate `engine`) knows nothing of
//! gRPC: this binary is the only place where the two meet.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use engine::device::{self, DeviceChoice};
use engine::{outcome, outputs, trial};
use schema::TrialConfig;

mod agent;
mod fetch;

#[derive(Parser)]
#[command(name = "worker", version, about = "scoresweep worker: trains and samples score models")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Join the coordinator at this URL (e.g. http://127.0.0.1:50051) and run leased trials.
    #[arg(long)]
    coordinator: Option<String>,
    /// Where trials run: cpu, cuda, cuda:N, or auto (the first GPU if there is one, else the CPU).
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    #[command(flatten)]
    agent: agent::AgentArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run one trial file and write metrics.json, curve.csv, samples.csv, model.safetensors.
    Trial {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Print progress every N training steps (0: only checkpoints).
        #[arg(long, default_value_t = 0)]
        progress_every: u64,
    },
    /// List the GPUs this worker can see (and whether it was built with CUDA).
    Devices,
    /// Time one engine case (JSON line on stdout); see benches/compare.sh for the side-by-side run.
    Bench {
        /// dsm | ssm | ssm_vr | ism | sample | image_mlp | image_mlp_candle | unet | image_mlp_sample | unet_sample
        #[arg(long)]
        case: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Data dimension (ism only).
        #[arg(long, default_value_t = 2)]
        dim: usize,
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Data sets: `worker data fetch mnist|fashion DIR`.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a data set's four standard IDX files into DIR (resumable, MD5-checked, with
    /// progress), then train on it with `data.dir = "DIR"`.
    Fetch {
        /// mnist | fashion
        set: String,
        dir: PathBuf,
        /// Base URL of a mirror holding the standard file names (default: the set's own).
        #[arg(long)]
        mirror: Option<String>,
        /// Which split's files to fetch.
        #[arg(long, value_enum, default_value = "all")]
        split: fetch::Split,
        /// Attempts per file; each resumes where the last stopped.
        #[arg(long, default_value_t = 4)]
        attempts: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.coordinator) {
        (Some(Command::Trial { file, out, progress_every }), _) => run_trial(&file, &out, progress_every, cli.device),
        (Some(Command::Devices), _) => list_devices(),
        (Some(Command::Bench { case, threads, dim, iters }), _) => run_bench(&case, threads, dim, iters),
        (Some(Command::Data { command: DataCommand::Fetch { set, dir, mirror, split, attempts } }), _) => {
            match fetch::fetch(&fetch::FetchArgs { set, dir, mirror, split, attempts }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(fetch::FetchError::Usage(m)) => {
                    eprintln!("error: {m}");
                    ExitCode::from(2)
                }
                Err(fetch::FetchError::Failed(e)) => {
                    eprintln!("worker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        (None, Some(url)) => match agent::run(&url, &cli.agent, cli.device) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e:#}");
                ExitCode::FAILURE
            }
        },
        (None, None) => {
            eprintln!("worker: give a subcommand (`worker trial FILE --out DIR`) or --coordinator URL");
            ExitCode::from(2)
        }
    }
}

/// `worker devices`: one `key: value` line each (`cuda:`, `gpus:`, `gpu N:`, `note:`).
fn list_devices() -> ExitCode {
    let found = device::detect();
    println!("cuda: {}", if device::CUDA_COMPILED { "compiled in" } else { "not compiled in" });
    println!("gpus: {}", found.gpus.len());
    for g in &found.gpus {
        println!("gpu {}: {}, {:.1} GiB", g.index, g.name, g.memory_bytes as f64 / (1u64 << 30) as f64);
    }
    if let Some(note) = &found.note {
        println!("note: {note}");
    }
    ExitCode::SUCCESS
}

fn run_trial(file: &std::path::Path, out: &std::path::Path, progress_every: u64, choice: DeviceChoice) -> ExitCode {
    let cfg = match TrialConfig::from_file(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let found = device::detect();
    let dev = match device::select(choice, &found) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --device {choice}: {e}");
            return ExitCode::from(2);
        }
    };
    match found.gpus.iter().find(|g| device::label(&dev) == format!("cuda:{}", g.index)) {
        Some(g) => eprintln!("device = {} ({})", device::label(&dev), g.name),
        None => eprintln!("device = {}", device::label(&dev)),
    }
    let cancel = AtomicBool::new(false);
    let mut last_eval = u64::MAX;
    let mut report = |p: &outcome::Progress| {
        let at_checkpoint = !p.latest.is_empty() && p.step != last_eval;
        if at_checkpoint || (progress_every > 0 && p.step.is_multiple_of(progress_every)) {
            let latest: Vec<String> = p.latest.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
            eprintln!("[{}/{}] loss={:.5} {}", p.step, p.total_steps, p.train_loss, latest.join(" "));
            if at_checkpoint {
                last_eval = p.step;
            }
        }
    };
    let outcome = match trial::run_trial(&cfg, &dev, &mut report, &cancel) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("worker: trial failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = outputs::write_outputs(&outcome, out) {
        eprintln!("worker: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("status = {}; device = {}; trainer = {}; wrote {}", outcome.status, outcome.device, outcome.trainer, out.display());
    ExitCode::SUCCESS
}

fn run_bench(case: &str, threads: usize, dim: usize, iters: usize) -> ExitCode {
    use engine::bench;
    let Some(c) = bench::Case::parse(case) else {
        eprintln!("error: unknown bench case `{case}` (dsm, ssm, ssm_vr, ism, sample, image_mlp, image_mlp_candle, unet, image_mlp_sample, unet_sample)");
        return ExitCode::from(2);
    };
    if threads == 0 || dim == 0 {
        eprintln!("error: --threads and --dim must be at least 1");
        return ExitCode::from(2);
    }
    // candle's CPU kernels size their thread pools from RAYON_NUM_THREADS; set it before any
    // tensor work starts (still single-threaded here).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    match bench::run(c, dim, iters) {
        Ok(r) => {
            println!("{}", r.json(threads));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("worker: bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
