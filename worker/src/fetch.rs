//! `worker data fetch mnist|fashion DIR`: downloads a data set's standard IDX files from a
//! mirror into DIR, so that `data.dir = "DIR"` trains on the full set. Each file is written to
//! `NAME.part`, resumed with an HTTP Range request after a dropped connection (within one run,
//! a few bounded retries with backoff, or by running the command again), checked against the
//! published MD5 before it takes its final name, and listed in `DIR/MD5SUMS` (which the loader
//! checks on every read). A file already present with the right checksum is kept; one with the
//! wrong checksum is refused, never overwritten. Progress goes to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use engine::data::idx::md5_hex;

/// A downloadable data set: its default mirror and its files with their published MD5s.
pub struct DataSet {
    pub name: &'static str,
    pub mirror: &'static str,
    pub files: [(&'static str, &'static str); 4],
}

/// The sets `worker data fetch` knows, checksums as published with them.
pub const SETS: [DataSet; 2] = [
    DataSet {
        name: "mnist",
        mirror: "https://ossci-datasets.s3.amazonaws.com/mnist/",
        files: [
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ],
    },
    DataSet {
        name: "fashion",
        mirror: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files: [
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ],
    },
];

/// Which split's files to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    All,
    Train,
    T10k,
}

/// What `worker data fetch` was asked for.
pub struct FetchArgs {
    pub set: String,
    pub dir: PathBuf,
    /// Base URL the file names are appended to (the set's default mirror when absent).
    pub mirror: Option<String>,
    pub split: Split,
    /// Attempts per file (each resumes where the last one stopped).
    pub attempts: u32,
}

/// Why a fetch failed: bad arguments (exit code 2) or a failed download or check (1).
pub enum FetchError {
    Usage(String),
    Failed(anyhow::Error),
}

/// Fetches the files; prints one line per file and progress while downloading.
pub fn fetch(args: &FetchArgs) -> Result<(), FetchError> {
    let set = SETS.iter().find(|s| s.name == args.set).ok_or_else(|| {
        let known: Vec<&str> = SETS.iter().map(|s| s.name).collect();
        FetchError::Usage(format!("unknown data set `{}` (known: {})", args.set, known.join(", ")))
    })?;
    let mirror = args.mirror.clone().unwrap_or_else(|| set.mirror.to_string());
    if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
        return Err(FetchError::Usage(format!("--mirror {mirror}: must be an http:// or https:// URL")));
    }
    if args.attempts == 0 {
        return Err(FetchError::Usage("--attempts must be at least 1".into()));
    }
    let base = if mirror.ends_with('/') { mirror } else { format!("{mirror}/") };
    std::fs::create_dir_all(&args.dir).with_context(|| format!("failed to create {}", args.dir.display())).map_err(FetchError::Failed)?;
    let wanted: Vec<&(&str, &str)> = set
        .files
        .iter()
        .filter(|(name, _)| match args.split {
            Split::All => true,
            Split::Train => name.starts_with("train-"),
            Split::T10k => name.starts_with("t10k-"),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("failed to start the HTTP runtime").map_err(FetchError::Failed)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("scoresweep-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("failed to build the HTTP client")
        .map_err(FetchError::Failed)?;
    let mut result = Ok(());
    for (name, md5) in wanted {
        let url = format!("{base}{name}");
        match runtime.block_on(fetch_one(&client, &url, &args.dir, name, md5, args.attempts)) {
            Ok(note) => eprintln!("fetch: {name}: {note}"),
            Err(e) => {
                result = Err(FetchError::Failed(e.context(format!("failed to fetch {name} from {url}"))));
                break;
            }
        }
    }
    // Whatever happened, list the verified files: the loader checks them on every read.
    write_md5sums(&args.dir, set).map_err(FetchError::Failed)?;
    result
}

/// Downloads one file (or keeps a verified copy); returns what was done.
async fn fetch_one(client: &reqwest::Client, url: &str, dir: &Path, name: &str, md5: &str, attempts: u32) -> anyhow::Result<String> {
    let dest = dir.join(name);
    if dest.exists() {
        let got = md5_hex(&std::fs::read(&dest).with_context(|| format!("failed to read {}", dest.display()))?);
        if got == md5 {
            return Ok("already present, MD5 ok".into());
        }
        bail!("{} exists with MD5 {got}, not the published {md5}: remove it (or move it away) and run again", dest.display());
    }
    let part = dir.join(format!("{name}.part"));
    let mut last_err = None;
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(500 << (attempt - 2).min(4))).await;
        }
        match download(client, url, &part).await {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(e) => {
                let have = std::fs::metadata(&part).map_or(0, |m| m.len());
                eprintln!("fetch: {name}: attempt {attempt}/{attempts} stopped at {have} bytes: {e:#}");
                last_err = Some(e);
            }
        }
    }
    if let Some(e) = last_err {
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        let hint = if have > 0 { format!("; {have} bytes kept in {}: run again to resume", part.display()) } else { " (offline? another mirror: --mirror URL)".into() };
        return Err(e.context(format!("gave up after {attempts} attempt(s){hint}")));
    }
    let bytes = std::fs::read(&part).with_context(|| format!("failed to read {}", part.display()))?;
    let got = md5_hex(&bytes);
    if got != md5 {
        std::fs::remove_file(&part).with_context(|| format!("failed to remove {}", part.display()))?;
        bail!("MD5 checksum mismatch: got {got}, published {md5} ({} bytes; the mirror serves another file; nothing kept)", bytes.len());
    }
    std::fs::rename(&part, &dest).with_context(|| format!("failed to rename {} to {}", part.display(), dest.display()))?;
    sync_dir(dir);
    Ok(format!("{} bytes, MD5 ok", bytes.len()))
}

/// One GET of `url` into `part`, resuming from its length with a Range request. A server
/// that ignores the range (200) restarts the file; 416 with a complete file is success.
async fn download(client: &reqwest::Client, url: &str, part: &Path) -> anyhow::Result<()> {
    let have = std::fs::metadata(part).map_or(0, |m| m.len());
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|e| anyhow!("cannot reach the mirror: {}", error_chain(&e)))?;
    let status = resp.status();
    let (mut file, mut done, total) = match status.as_u16() {
        206 => {
            let file = std::fs::OpenOptions::new().append(true).open(part).with_context(|| format!("failed to open {}", part.display()))?;
            (file, have, resp.content_length().map(|n| n + have))
        }
        200 => (std::fs::File::create(part).with_context(|| format!("failed to create {}", part.display()))?, 0, resp.content_length()),
        416 if have > 0 => return Ok(()),
        _ => bail!("HTTP {status}"),
    };
    let mut shown = Instant::now();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                file.flush().ok();
                bail!("connection lost: {}", error_chain(&e));
            }
        };
        file.write_all(&chunk).with_context(|| format!("failed to write {}", part.display()))?;
        done += chunk.len() as u64;
        if shown.elapsed() >= Duration::from_millis(500) {
            shown = Instant::now();
            eprintln!("fetch: {}: {}", part.file_name().and_then(|n| n.to_str()).unwrap_or("?"), progress(done, total));
        }
    }
    file.sync_all().with_context(|| format!("failed to sync {}", part.display()))?;
    if let Some(t) = total
        && done < t
    {
        bail!("connection closed at {done} of {t} bytes");
    }
    Ok(())
}

/// "1.2 / 9.9 MB (12%)", or "1.2 MB" without a length.
fn progress(done: u64, total: Option<u64>) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    match total {
        Some(t) if t > 0 => format!("{:.1} / {:.1} MB ({:.0}%)", mb(done), mb(t), 100.0 * done as f64 / t as f64),
        _ => format!("{:.1} MB", mb(done)),
    }
}

/// An error and its sources on one line (reqwest hides the cause, e.g. "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Writes `MD5SUMS` for the set's files present in `dir` (written to a temporary file, then
/// renamed: never half-written).
fn write_md5sums(dir: &Path, set: &DataSet) -> anyhow::Result<()> {
    let present: Vec<String> = set.files.iter().filter(|(n, _)| dir.join(n).is_file()).map(|(n, m)| format!("{m}  {n}\n")).collect();
    if present.is_empty() {
        return Ok(());
    }
    let tmp = dir.join("MD5SUMS.tmp");
    std::fs::write(&tmp, present.concat()).with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("MD5SUMS")).with_context(|| format!("failed to write {}", dir.join("MD5SUMS").display()))?;
    sync_dir(dir);
    Ok(())
}

/// fsync a directory so a rename in it survives a machine crash (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
