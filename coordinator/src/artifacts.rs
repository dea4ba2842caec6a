//! Artifacts: files a running attempt uploads (`UploadArtifact`, a stream of chunks) before the
//! report that names them, e.g. `model.safetensors`.
//!
//! An upload streams into `<out>/artifacts/.partial/<attempt>/.<name>.<n>.tmp` (sha256 and size
//! counted on the way), is renamed to `.partial/<attempt>/<name>` when complete, and is
//! remembered in memory for its attempt. When the report naming it is recorded as `done` or
//! `diverged`, the file moves to `<out>/artifacts/<trial_hash>/<name>` (after the commit that
//! records its `artifacts` row); any other report (failed, cancelled, ignored) drops the
//! attempt's partial files. An upload over the limit (`--max-artifact-bytes`) is refused with
//! `RESOURCE_EXHAUSTED` and leaves nothing behind; the attempt and its later report are not
//! affected. `.partial` is cleared when a run starts and ends, after [`Artifacts::recover`].
//!
//! Disk is bounded per attempt and per run: an attempt uploads at most [`MAX_FILES_PER_ATTEMPT`]
//! files, at most [`ATTEMPT_BUDGET_FILES`] × the per-file limit in all, [`MAX_ACTIVE_UPLOADS`]
//! at a time, and no upload starts or goes on while the output's file system has less than
//! [`DEFAULT_MIN_FREE_BYTES`] free. An attempt's partial files go as soon as it ends (reported,
//! cancelled, expired), and an ended attempt uploads nothing more.
//!
//! Durability: a complete upload is written to disk (`fsync` of the file and its directory)
//! before the report that names it can commit its row, and the move into place is made durable
//! too. A crash between the commit and the move leaves the file in `.partial/<attempt>/`, and
//! the next start (or the end of the run) moves every recorded artifact whose file is missing
//! there into place before clearing `.partial`; a move that fails is said in the report's reply
//! and retried then.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::state::Artifact;

/// Default of `--max-artifact-bytes`: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Most files one attempt may upload.
pub const MAX_FILES_PER_ATTEMPT: usize = 32;
/// An attempt may upload this many times `--max-artifact-bytes` in all.
pub const ATTEMPT_BUDGET_FILES: u64 = 4;
/// Uploads of one attempt at the same time.
pub const MAX_ACTIVE_UPLOADS: usize = 2;
/// Free space the output's file system keeps: uploads are refused below it (1 GiB).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;

/// Longest artifact name, in bytes (UTF-8): the temporary file `.<name>.<n>.tmp` must stay
/// within the 255 bytes a file name may have on Linux file systems.
pub const MAX_NAME_BYTES: usize = 200;

/// Why an upload was refused (the gRPC adapter maps each to a status code).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("artifact name {0:?}: {1}")]
    BadName(String, &'static str),
    #[error("artifact `{name}` ({size} bytes) exceeds the artifact size limit of {limit} bytes (--max-artifact-bytes)")]
    TooLarge { name: String, size: String, limit: u64 },
    #[error("artifact `{name}`: {message}")]
    Malformed { name: String, message: String },
    #[error("artifact `{name}`: {why}")]
    Budget { name: String, why: String },
    #[error("artifact `{name}`: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `name` is a plain file name: not empty, at most [`MAX_NAME_BYTES`] bytes, no
/// path separator, no `..`, not starting with a dot, no control characters, and no character
/// that reorders or hides text ([`results::escape::is_invisible`]: bidi controls, zero-width
/// characters), so that a name reads as what it is.
pub fn check_name(name: &str) -> Result<(), UploadError> {
    let bad = |why| Err(UploadError::BadName(name.to_string(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("longer than 200 bytes (UTF-8)");
    }
    if name.contains(['/', '\\']) {
        return bad("contains a path separator");
    }
    if name.contains("..") {
        return bad("contains `..`");
    }
    if name.starts_with('.') {
        return bad("starts with a dot");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if name.chars().any(results::escape::is_invisible) {
        return bad("contains an invisible or bidirectional control character");
    }
    Ok(())
}

/// The artifacts of a run: where they go, the size limit, and the uploads waiting for their
/// report.
pub struct Artifacts {
    /// `<out>/artifacts`.
    root: PathBuf,
    /// Largest artifact accepted, in bytes.
    pub max_bytes: u64,
    /// Complete uploads by attempt, then name.
    uploads: Mutex<HashMap<u64, BTreeMap<String, Artifact>>>,
    /// Makes temporary file names unique.
    seq: AtomicU64,
    /// What each attempt has used: files begun, bytes received, uploads active.
    used: Mutex<HashMap<u64, Used>>,
    /// Attempts that have ended: they upload nothing more.
    ended: Mutex<std::collections::HashSet<u64>>,
    /// Free bytes the output's file system keeps (see [`DEFAULT_MIN_FREE_BYTES`]).
    pub min_free_bytes: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Used {
    files: usize,
    bytes: u64,
    active: usize,
}

/// An upload in progress: a temporary file removed on drop unless finished.
pub struct Upload<'a> {
    store: &'a Artifacts,
    attempt: u64,
    name: String,
    media_type: String,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    received: u64,
    total: u64,
}

/// Where the run in `out` keeps trial `trial_hash`'s recorded artifact `name`:
/// `<out>/artifacts/<trial_hash>/<name>` (what [`Artifacts::path`] answers for that run).
pub fn kept_path(out: &Path, trial_hash: &str, name: &str) -> PathBuf {
    root(out).join(trial_hash).join(name)
}

fn root(out: &Path) -> PathBuf {
    out.join("artifacts")
}

impl Artifacts {
    /// Artifacts under `<out>/artifacts`, each at most `max_bytes`.
    pub fn new(out: &Path, max_bytes: u64) -> Artifacts {
        Artifacts {
            root: root(out),
            max_bytes,
            uploads: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            used: Mutex::new(HashMap::new()),
            ended: Mutex::new(std::collections::HashSet::new()),
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }

    fn partial_dir(&self, attempt: u64) -> PathBuf {
        self.root.join(".partial").join(attempt.to_string())
    }

    /// Where a recorded artifact lives ([`kept_path`]).
    pub fn path(&self, trial_hash: &str, name: &str) -> PathBuf {
        self.root.join(trial_hash).join(name)
    }

    /// Drops every partial upload (at the start and the end of a run, when no attempt of this
    /// coordinator is running).
    pub fn clear_partial(&self) {
        let _ = std::fs::remove_dir_all(self.root.join(".partial"));
        self.uploads.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn too_large(&self, name: &str, size: String) -> UploadError {
        UploadError::TooLarge { name: name.to_string(), size, limit: self.max_bytes }
    }

    /// Starts an upload from its first chunk's header; refused when the name is not a plain
    /// file name or the announced size is over the limit.
    pub async fn begin(&self, attempt: u64, name: &str, media_type: &str, total_bytes: u64) -> Result<Upload<'_>, UploadError> {
        check_name(name)?;
        if total_bytes > self.max_bytes {
            return Err(self.too_large(name, total_bytes.to_string()));
        }
        self.check_free(name)?;
        {
            let budget = |why: String| Err(UploadError::Budget { name: name.to_string(), why });
            if self.ended.lock().unwrap_or_else(|p| p.into_inner()).contains(&attempt) {
                return budget(format!("attempt {attempt} has ended"));
            }
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            let u = used.entry(attempt).or_default();
            let limit = self.max_bytes.saturating_mul(ATTEMPT_BUDGET_FILES);
            if u.files >= MAX_FILES_PER_ATTEMPT {
                return budget(format!("attempt {attempt} has uploaded {MAX_FILES_PER_ATTEMPT} files, the most one attempt may"));
            }
            if u.active >= MAX_ACTIVE_UPLOADS {
                return budget(format!("attempt {attempt} has {MAX_ACTIVE_UPLOADS} uploads going on, the most at a time"));
            }
            if u.bytes.saturating_add(total_bytes) > limit {
                return budget(format!("attempt {attempt} would upload more than {limit} bytes in all ({ATTEMPT_BUDGET_FILES} × --max-artifact-bytes)"));
            }
            u.files += 1;
            u.active += 1;
        }
        let dir = self.partial_dir(attempt);
        let io = |source| UploadError::Io { name: name.to_string(), source };
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", self.seq.fetch_add(1, Ordering::Relaxed)));
        let file = match tokio::fs::File::create(&tmp).await {
            Ok(f) => f,
            Err(e) => {
                self.release(attempt, 0);
                return Err(io(e));
            }
        };
        Ok(Upload {
            store: self,
            attempt,
            name: name.to_string(),
            media_type: media_type.to_string(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            received: 0,
            total: total_bytes,
        })
    }

    /// The complete uploads of `attempt` among `names`, and the names that have none.
    pub fn lookup(&self, attempt: u64, names: &[String]) -> (Vec<Artifact>, Vec<String>) {
        let uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let mine = uploads.get(&attempt);
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match mine.and_then(|m| m.get(n)) {
                Some(a) if !found.contains(a) => found.push(a.clone()),
                Some(_) => {}
                None => missing.push(n.clone()),
            }
        }
        (found, missing)
    }

    /// After the commit that recorded `keep` for `attempt`'s trial: moves those files to
    /// `artifacts/<trial_hash>/`, then drops the attempt's other partial files.
    /// On failure the attempt's files stay in `.partial` for [`Artifacts::recover`].
    pub fn keep(&self, attempt: u64, trial_hash: &str, keep: &[Artifact]) -> std::io::Result<()> {
        if !keep.is_empty() {
            let dir = self.root.join(trial_hash);
            std::fs::create_dir_all(&dir)?;
            for a in keep {
                std::fs::rename(self.partial_dir(attempt).join(&a.name), dir.join(&a.name))?;
            }
            sync_dir(&dir)?;
            sync_dir(&self.root)?;
        }
        self.discard(attempt);
        Ok(())
    }

    /// Moves into place every recorded artifact (`recorded`: trial hash, name, and the attempt
    /// whose result recorded it) whose file is missing but still waits in `.partial` (a crash or
    /// a failed move after the commit). Returns the artifacts moved and those whose file is lost.
    pub fn recover(&self, recorded: &[(String, String, u64)]) -> (usize, Vec<String>) {
        let (mut moved, mut lost) = (0, Vec::new());
        for (hash, name, attempt) in recorded {
            let dest = self.path(hash, name);
            if dest.exists() {
                continue;
            }
            let src = self.partial_dir(*attempt).join(name);
            let ok =
                src.exists() && std::fs::create_dir_all(self.root.join(hash)).and_then(|()| std::fs::rename(&src, &dest)).and_then(|()| sync_dir(&self.root.join(hash))).is_ok();
            if ok {
                moved += 1;
            } else {
                lost.push(format!("artifacts/{hash}/{name}"));
            }
        }
        (moved, lost)
    }

    /// Refused while the output's file system has less than [`Artifacts::min_free_bytes`]
    /// free (a run-wide floor: uploads never fill the disk the state database is on).
    fn check_free(&self, name: &str) -> Result<(), UploadError> {
        match free_bytes(self.root.parent().unwrap_or(&self.root)) {
            Some(free) if free < self.min_free_bytes => {
                Err(UploadError::Budget { name: name.to_string(), why: format!("the output's file system has {free} bytes free, less than the {} it keeps", self.min_free_bytes) })
            }
            _ => Ok(()),
        }
    }

    /// An upload of `attempt` is over (`bytes` more received than counted so far).
    fn release(&self, attempt: u64, bytes: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = used.get_mut(&attempt) {
            u.active = u.active.saturating_sub(1);
            u.bytes = u.bytes.saturating_add(bytes);
        }
    }

    /// Drops `attempt`'s partial files (its report was not recorded with a result, or it
    /// ended); it uploads nothing more.
    pub fn discard(&self, attempt: u64) {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).insert(attempt);
        let had = self.uploads.lock().unwrap_or_else(|p| p.into_inner()).remove(&attempt).is_some();
        let dir = self.partial_dir(attempt);
        if had || dir.exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Free bytes for an unprivileged user on the file system of `path` (None if unknown).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the right type; statvfs writes
    // it in full when it returns 0, and only then is it read.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Makes a directory's entries (a rename into it) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Upload<'_> {
    /// Appends one chunk's data; refused (the file removed) once over the limit.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), UploadError> {
        use tokio::io::AsyncWriteExt;
        if data.len() > sweep_proto::MAX_CHUNK_BYTES {
            return Err(UploadError::Malformed { name: self.name.clone(), message: format!("a chunk of {} bytes is over the 1 MiB chunk limit", data.len()) });
        }
        let received = self.received + data.len() as u64;
        if received > self.store.max_bytes {
            return Err(self.store.too_large(&self.name, format!("at least {received}")));
        }
        // The floor is checked again every 64 MiB.
        if received >> 26 != self.received >> 26 {
            self.store.check_free(&self.name)?;
        }
        let file = self.file.as_mut().expect("an open upload");
        file.write_all(data).await.map_err(|source| UploadError::Io { name: self.name.clone(), source })?;
        self.hasher.update(data);
        self.received = received;
        Ok(())
    }

    /// Completes the upload: checks the size announced, moves the file into place and
    /// remembers it for its attempt's report.
    pub async fn finish(mut self) -> Result<Artifact, UploadError> {
        use tokio::io::AsyncWriteExt;
        if self.received != self.total {
            return Err(UploadError::Malformed { name: self.name.clone(), message: format!("received {} bytes, announced {}", self.received, self.total) });
        }
        let mut file = self.file.take().expect("an open upload");
        let io = |name: &str| {
            let name = name.to_string();
            move |source| UploadError::Io { name, source }
        };
        file.flush().await.map_err(io(&self.name))?;
        // On disk before its report can commit the row that names it.
        file.sync_all().await.map_err(io(&self.name))?;
        drop(file);
        if self.store.ended.lock().unwrap_or_else(|p| p.into_inner()).contains(&self.attempt) {
            return Err(UploadError::Budget { name: self.name.clone(), why: format!("attempt {} ended during the upload", self.attempt) });
        }
        let dir = self.store.partial_dir(self.attempt);
        let dest = dir.join(&self.name);
        tokio::fs::rename(&self.tmp, &dest).await.map_err(io(&self.name))?;
        tokio::task::spawn_blocking(move || sync_dir(&dir)).await.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r).map_err(io(&self.name))?;
        let sha256 = std::mem::take(&mut self.hasher).finalize().iter().map(|b| format!("{b:02x}")).collect();
        let artifact = Artifact { name: self.name.clone(), media_type: self.media_type.clone(), bytes: self.received, sha256 };
        self.store.uploads.lock().unwrap_or_else(|p| p.into_inner()).entry(self.attempt).or_default().insert(self.name.clone(), artifact.clone());
        self.tmp = PathBuf::new();
        Ok(artifact)
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.store.release(self.attempt, self.received);
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash between the commit that records an artifact and the move into place leaves the
    /// file in `.partial`: the next start moves it to `artifacts/<hash>/<name>` before clearing
    /// `.partial`, and names what is lost.
    #[test]
    fn recorded_artifacts_left_in_partial_are_recovered() {
        let out = std::env::temp_dir().join(format!("scoresweep-artifacts-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let a = Artifacts::new(&out, DEFAULT_MAX_BYTES);
        std::fs::create_dir_all(a.partial_dir(7)).unwrap();
        std::fs::write(a.partial_dir(7).join("model.bin"), b"weights").unwrap();
        let recorded = [("h1".to_string(), "model.bin".to_string(), 7), ("h2".to_string(), "gone.bin".to_string(), 8)];
        assert_eq!(a.recover(&recorded), (1, vec!["artifacts/h2/gone.bin".to_string()]));
        a.clear_partial();
        assert_eq!(std::fs::read(a.path("h1", "model.bin")).unwrap(), b"weights");
        assert_eq!(a.recover(&recorded[..1]), (0, vec![]), "already in place");
        let _ = std::fs::remove_dir_all(&out);
    }

    /// Issue 20, item 8: per-attempt file count and byte budget, at most two uploads at a
    /// time, a run-wide free-space floor, and nothing more once the attempt has ended.
    #[test]
    fn uploads_are_bounded_per_attempt_and_by_free_space() {
        let out = std::env::temp_dir().join(format!("scoresweep-artifacts-budget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let a = Artifacts::new(&out, 10);
            let budget = |r: Result<Upload<'_>, UploadError>| matches!(r, Err(UploadError::Budget { .. }));
            // Four full files fill the budget of 4 × 10 bytes; a fifth is refused.
            for i in 0..4 {
                let mut u = a.begin(1, &format!("f{i}"), "x", 10).await.unwrap();
                u.write(&[0u8; 10]).await.unwrap();
                u.finish().await.unwrap();
            }
            assert!(budget(a.begin(1, "f4", "x", 1).await), "over the attempt's bytes");
            // Empty files: 32 per attempt.
            for i in 0..MAX_FILES_PER_ATTEMPT {
                a.begin(2, &format!("e{i}"), "x", 0).await.unwrap().finish().await.unwrap();
            }
            assert!(budget(a.begin(2, "one-more", "x", 0).await), "over the attempt's file count");
            // Two at a time.
            let (u1, u2) = (a.begin(3, "a", "x", 1).await.unwrap(), a.begin(3, "b", "x", 1).await.unwrap());
            assert!(budget(a.begin(3, "c", "x", 1).await), "a third at once");
            drop((u1, u2));
            let mut u3 = a.begin(3, "c", "x", 1).await.expect("one ended: room again");
            u3.write(b"z").await.unwrap();
            // The attempt ends during an upload: it cannot finish, and nothing new starts.
            a.discard(3);
            assert!(budget(u3.finish().await.map(|_| unreachable!())), "finished after the attempt ended");
            assert!(budget(a.begin(3, "d", "x", 1).await));
            assert!(!a.partial_dir(3).exists(), "no partial file re-created");
            // The free-space floor.
            let mut b = Artifacts::new(&out, 10);
            b.min_free_bytes = u64::MAX;
            let err = b.begin(9, "m", "x", 1).await.err().expect("refused").to_string();
            assert!(err.contains("free"), "{err}");
        });
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn names_must_be_plain_file_names() {
        for ok in ["model.safetensors", "curve v2.csv", "modèle.bin", &"x".repeat(200), &"€".repeat(66)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        // 67 × '€' is 67 characters but 201 bytes; bidi and zero-width characters hide what a
        // name is (`model\u{202E}nib.exe` shows as `modelexe.bin`).
        for bad in ["", "a/b", "a\\b", "..", "x..y", ".hidden", "a\nb", &"x".repeat(201), &"€".repeat(67), "model\u{202E}nib.exe", "a\u{200B}b", "\u{FEFF}x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
