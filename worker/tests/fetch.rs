//! `worker data fetch` against a local HTTP server the test runs: the real MNIST test split
//! (the repository's `data/mnist/`) downloaded through a connection the server drops halfway
//! (resumed with a Range request, then MD5-checked and loadable), a mirror serving wrong bytes
//! (refused, nothing kept under the final name), an unreachable mirror (a clear message), an
//! unknown set (exit code 2).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A one-thread HTTP/1.1 server for GET with optional `Range: bytes=N-`; `cut` sends only that
/// many body bytes of a file's first full response, then closes (a dropped connection).
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Request>>>,
}

/// A request the server saw: the file and the first byte asked for, if a range.
type Request = (String, Option<u64>);

fn serve(files: HashMap<String, Vec<u8>>, cut: HashMap<String, usize>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut cut = cut;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse::<u64>().ok();
                }
            }
            log2.lock().unwrap().push((path.clone(), range));
            let Some(body) = files.get(&path) else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let start = range.unwrap_or(0) as usize;
            let head = match range {
                Some(r) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {r}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - start,
                    body.len() - 1,
                    body.len()
                ),
                None => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
            };
            let _ = stream.write_all(head.as_bytes());
            let end = match (range, cut.remove(&path)) {
                (None, Some(n)) => n,
                _ => body.len(),
            };
            let _ = stream.write_all(&body[start..end]);
            let _ = stream.flush();
        }
    });
    Server { port, log }
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

fn fetch(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_worker")).args(["data", "fetch"]).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn fetch_resumes_a_dropped_download_and_checks_md5() {
    let names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];
    let files: HashMap<String, Vec<u8>> = names.iter().map(|n| (n.to_string(), std::fs::read(shipped().join(n)).unwrap())).collect();
    let server = serve(files.clone(), HashMap::from([(names[0].to_string(), 300_000)]));
    let dir = tempfile::tempdir().unwrap();
    let mirror = format!("http://127.0.0.1:{}/", server.port);
    let (code, err) = fetch(&["mnist", dir.path().to_str().unwrap(), "--mirror", &mirror, "--split", "t10k"]);
    assert_eq!(code, 0, "{err}");
    for n in names {
        assert_eq!(std::fs::read(dir.path().join(n)).unwrap(), files[n], "{n} differs from the served file");
        assert!(!dir.path().join(format!("{n}.part")).exists());
    }
    // The dropped first response was resumed from where it stopped, not restarted.
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains(&(names[0].to_string(), Some(300_000))), "no resume at byte 300000 in {log:?}");
    assert!(err.contains("attempt 1/4 stopped at 300000 bytes"), "{err}");
    let sums = std::fs::read_to_string(dir.path().join("MD5SUMS")).unwrap();
    assert!(sums.contains("9fb629c4189551a2d022fa330f9573f3  t10k-images-idx3-ubyte.gz"), "{sums}");
    // What was fetched loads like the shipped copy (the loader checks MD5SUMS too).
    let set = engine::data::idx::load_dir(dir.path()).unwrap();
    assert_eq!((set.n, set.h, set.w), (10_000, 28, 28));
    // A second run keeps the verified files and downloads nothing.
    let before = server.log.lock().unwrap().len();
    let (code, err) = fetch(&["mnist", dir.path().to_str().unwrap(), "--mirror", &mirror, "--split", "t10k"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already present, MD5 ok"), "{err}");
    assert_eq!(server.log.lock().unwrap().len(), before);
}

#[test]
fn a_mirror_with_other_bytes_is_refused_and_nothing_is_kept() {
    let mut bogus = vec![0x1fu8, 0x8b];
    bogus.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
    let files = HashMap::from([("train-images-idx3-ubyte.gz".to_string(), bogus.clone()), ("train-labels-idx1-ubyte.gz".to_string(), bogus)]);
    let server = serve(files, HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = fetch(&["mnist", dir.path().to_str().unwrap(), "--mirror", &format!("http://127.0.0.1:{}", server.port), "--split", "train"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("MD5 checksum mismatch") && err.contains("f68b3c2dcbeaaa9fbdd348bbdeb94873"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_unreachable_mirror_and_an_unknown_set_fail_clearly() {
    // A port nobody listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = fetch(&["fashion", dir.path().to_str().unwrap(), "--mirror", &format!("http://127.0.0.1:{port}/"), "--attempts", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the mirror") && err.contains("offline?") && err.contains("gave up after 2 attempt(s)"), "{err}");
    let (code, err) = fetch(&["cifar", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown data set `cifar` (known: mnist, fashion)"), "{err}");
    let (code, err) = fetch(&["mnist", dir.path().to_str().unwrap(), "--mirror", "ftp://example"]);
    assert_eq!(code, 2, "{err}");
}
