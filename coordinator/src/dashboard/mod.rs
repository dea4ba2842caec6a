//! The dashboard: a read-only web page of a run, served by `coordinator run` and `serve` while
//! the run goes on (live) and by `coordinator dashboard OUT` for a finished or interrupted one.
//!
//! HTTP/1.1 on hyper (already in the build through tonic), one listener of its own. Routes:
//! `/` (the page), `/app.js`, `/app.css` (the page's script and style, compiled into the
//! binary: nothing is fetched from elsewhere), `/api/run` (the run as JSON, see [`snapshot`]:
//! progress with the pruned count, trials with their sample grid's name, claims, workers,
//! early-stopping decisions), `/api/trial?hash=H` (one trial's curve, samples and artifact
//! names), `/api/artifact?hash=H&name=N` (a file the trial's worker uploaded, see below),
//! `/api/events` (server-sent events: a `change` event after each change of the run, fed by
//! [`crate::service::Shared::activity`], at most one per [`MIN_EVENT_GAP`]; the page then
//! fetches `/api/run`).
//!
//! Artifacts: `/api/artifact` serves `<out>/artifacts/H/N` only when the state database's
//! `artifacts` table records name `N` for trial `H` (the full hash; both values strictly
//! percent-decoded — `%` and two hex digits, `+` a plus sign — and compared byte for byte);
//! anything else, `../state.db` encoded or not included, answers 404 and opens no file. A
//! picture (PNG, JPEG, GIF, WebP: [`snapshot::image_type`]) is served as its image type, which
//! the page shows as an image trial's sample grid; any other file as
//! `application/octet-stream` with `Content-Disposition: attachment`, whatever media type its
//! worker gave. The file is streamed in [`ARTIFACT_CHUNK`] frames, never read whole.
//!
//! Cost to the run: rebuilding `/api/run` reads the whole database, which grows with the
//! sweep. A live dashboard rebuilds at most [`DUTY`] of the time: after a rebuild that took T,
//! the next waits until T·(1/DUTY − 1) has passed (a run of 1,000 trials rebuilds in a few
//! milliseconds, so every [`MIN_EVENT_GAP`]; a database of 80,000 trials every half minute).
//! Change events wait for that too, and `/api/run` answers the last build meanwhile; once the
//! run is over the next request rebuilds at once. So a watching browser costs the scheduler
//! about DUTY of one core whatever the sweep's size. `coordinator bench` measures the two
//! parts, an open page between rebuilds and the round trips lost while a rebuild runs (the
//! rebuild spans are kept for it, [`Dashboard::rebuild_spans`]), and their steady-state sum
//! (BENCHMARKS.md).
//!
//! Access: a fresh random token per dashboard. The printed link carries it
//! (`/?token=T`, the Jupyter convention); the answer sets it as an HttpOnly, SameSite=Strict
//! cookie and redirects to the address without it. Every route answers 401 without the cookie
//! (or an `Authorization: Bearer T` header). Only GET and HEAD are served: the dashboard
//! cannot change the run. Answers carry a Content-Security-Policy that allows only the
//! page's own script and style, so even a worker-supplied string that got into the document
//! as markup could not run; the page puts such strings into the document as text only.

pub mod snapshot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

type Body = UnsyncBoxBody<Bytes, Infallible>;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Least time between two `change` events of one event stream (a burst of reports is one
/// event, and one rebuild of `/api/run`).
pub const MIN_EVENT_GAP: Duration = Duration::from_millis(300);

/// Most of the time a live dashboard spends rebuilding `/api/run` (see the module doc).
pub const DUTY: f64 = 0.02;

/// A comment line on an idle event stream this often keeps proxies from closing it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("--dashboard `{0}` is not an address with a port (e.g. 127.0.0.1:0)")]
    BadAddress(String),
    #[error(
        "--dashboard {0} is not a loopback address: the dashboard serves plain HTTP, so it listens on loopback only (reach it from elsewhere through an SSH tunnel: ssh -L PORT:127.0.0.1:PORT this-host)"
    )]
    NotLoopback(String),
    #[error("failed to listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("no random token: {0}")]
    Token(std::io::Error),
}

/// What a live run adds to the database.
pub struct Live {
    /// Bumped after every change of the run ([`crate::service::Shared::activity`]).
    pub activity: tokio::sync::watch::Receiver<u64>,
    /// The run's lease length (a running attempt's last heartbeat is its deadline less this).
    pub lease_secs: f64,
}

/// The last `/api/run` answer and the state it was built from.
struct Built {
    /// The activity count it was built at.
    seq: u64,
    json: Bytes,
    state: Arc<results::state::State>,
}

struct Cache {
    built: Option<Built>,
    /// When the last rebuild ended and how long it took.
    last_build: Option<(std::time::Instant, Duration)>,
    /// Unix seconds and finished trials when the dashboard first looked (rate and ETA).
    first: Option<(f64, usize)>,
}

/// One dashboard: the run's database, its token and (while the run goes on) its live feed.
pub struct Dashboard {
    db: PathBuf,
    token: String,
    /// The cookie's name; it names the port, since browsers share cookies between the ports
    /// of one host.
    cookie: String,
    live: Option<Live>,
    /// A tokio mutex: held while a rebuild runs on the blocking pool, so that concurrent
    /// requests wait for that one rebuild rather than starting their own.
    cache: tokio::sync::Mutex<Cache>,
    /// When the latest rebuilds began and ended (at most [`REBUILD_LOG`]), for
    /// `coordinator bench` to tell how much of its measured window was spent rebuilding.
    rebuilds: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, std::time::Instant)>>,
}

/// Rebuilds a dashboard remembers ([`Dashboard::rebuild_spans`]).
const REBUILD_LOG: usize = 64;

/// A bound dashboard, ready for [`serve`].
pub struct Bound {
    pub listener: TcpListener,
    pub dashboard: Arc<Dashboard>,
    /// The link to print: `http://HOST:PORT/?token=TOKEN`.
    pub url: String,
}

/// `--dashboard ADDR`, checked: an IP address and port on loopback.
pub fn check_address(addr: &str) -> Result<SocketAddr, DashboardError> {
    let parsed: SocketAddr = addr.parse().map_err(|_| DashboardError::BadAddress(addr.to_string()))?;
    if !parsed.ip().is_loopback() {
        return Err(DashboardError::NotLoopback(addr.to_string()));
    }
    Ok(parsed)
}

/// Binds `addr` (loopback only) for the run whose state database is `db`.
pub async fn bind(addr: &str, db: PathBuf, live: Option<Live>) -> Result<Bound, DashboardError> {
    let parsed = check_address(addr)?;
    let listener = TcpListener::bind(parsed).await.map_err(|source| DashboardError::Listen { addr: addr.to_string(), source })?;
    let local = listener.local_addr().map_err(|source| DashboardError::Listen { addr: addr.to_string(), source })?;
    let token = crate::auth::new_token().map_err(DashboardError::Token)?;
    let url = format!("http://{local}/?token={token}");
    let cookie = format!("scoresweep_dashboard_{}", local.port());
    let dashboard =
        Arc::new(Dashboard { db, token, cookie, live, cache: tokio::sync::Mutex::new(Cache { built: None, last_build: None, first: None }), rebuilds: Default::default() });
    Ok(Bound { listener, dashboard, url })
}

/// Serves the dashboard until `shutdown` resolves (open event streams end with the runtime).
pub async fn serve(listener: TcpListener, dashboard: Arc<Dashboard>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let d = dashboard.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(d.respond(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

/// `coordinator dashboard OUT`: serves the page of the run in `out` (finished or interrupted)
/// from its state database until Ctrl-C, after printing the link.
pub fn serve_finished(out: &std::path::Path, addr: &str) -> anyhow::Result<()> {
    let db = crate::run::db_path(out);
    anyhow::ensure!(db.exists(), "{} has no state database (state.db)", out.display());
    // Read once now, so that a database the page cannot show is an error here, not a 500.
    results::state::State::load(&db)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let bound = bind(addr, db, None).await?;
        println!("dashboard: {}", bound.url);
        serve(bound.listener, bound.dashboard, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        anyhow::Ok(())
    })
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

/// An answer with the headers every answer carries.
fn answer(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_str(content_type).unwrap_or(header::HeaderValue::from_static("text/plain")));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    answer(status, "text/plain; charset=utf-8", full(message.into()))
}

/// The value of `name` in a query string, as sent (the first, when it comes more than once).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// `s` percent-decoded strictly (RFC 3986: `%` and two hex digits; `+` is a plus sign, as
/// `encodeURIComponent` writes a space `%20`); None for a stray `%` or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (hi, lo) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query value, percent-decoded (None when absent or not strictly decodable).
fn query_value(query: &str, name: &str) -> Option<String> {
    query_param(query, name).and_then(percent_decode)
}

/// `Content-Disposition: attachment` with the name as RFC 6266/5987 say (an ASCII fallback in
/// `filename`, the exact name percent-encoded in `filename*`).
fn attachment(name: &str) -> String {
    let ascii: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "._- ()".contains(c) { c } else { '_' }).collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Bytes read from an artifact's file per frame of its answer.
const ARTIFACT_CHUNK: usize = 64 << 10;

impl Dashboard {
    fn token_ok(&self, given: &str) -> bool {
        crate::auth::same(given.as_bytes(), self.token.as_bytes())
    }

    /// The request carries the token: as the cookie, or as a bearer header.
    fn authorized(&self, headers: &hyper::HeaderMap) -> bool {
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|t| self.token_ok(t)) {
            return true;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim().split_once('=').is_some_and(|(k, v)| k == self.cookie && self.token_ok(v)))
    }

    async fn respond(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if *req.method() != Method::GET && *req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "the dashboard is read-only: GET and HEAD only\n");
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if let Some(t) = query_param(&query, "token") {
            if !self.token_ok(t) {
                return text(StatusCode::UNAUTHORIZED, "wrong token: open the link the coordinator printed\n");
            }
            // The token moves into a cookie; the address bar (and history) keep no token.
            let mut r = text(StatusCode::SEE_OTHER, "");
            let h = r.headers_mut();
            h.insert(header::LOCATION, header::HeaderValue::from_str(&path).unwrap_or(header::HeaderValue::from_static("/")));
            let cookie = format!("{}={}; HttpOnly; SameSite=Strict; Path=/", self.cookie, self.token);
            if let Ok(v) = header::HeaderValue::from_str(&cookie) {
                h.insert(header::SET_COOKIE, v);
            }
            return r;
        }
        if !self.authorized(req.headers()) {
            return text(StatusCode::UNAUTHORIZED, "no token: open the link the coordinator printed (http://HOST:PORT/?token=…)\n");
        }
        match path.as_str() {
            "/" | "/index.html" => answer(StatusCode::OK, "text/html; charset=utf-8", full(INDEX_HTML)),
            "/app.js" => answer(StatusCode::OK, "text/javascript; charset=utf-8", full(APP_JS)),
            "/app.css" => answer(StatusCode::OK, "text/css; charset=utf-8", full(APP_CSS)),
            "/api/run" => match self.built().await {
                Ok((json, _)) => answer(StatusCode::OK, "application/json", full(json)),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to read the run: {e}\n")),
            },
            "/api/trial" => {
                let Some(hash) = query_value(&query, "hash") else {
                    return text(StatusCode::BAD_REQUEST, "/api/trial needs ?hash=TRIAL_HASH\n");
                };
                match self.built().await {
                    Ok((_, state)) => match snapshot::trial(&state, &hash) {
                        Some(v) => answer(StatusCode::OK, "application/json", full(v.to_string())),
                        None => text(StatusCode::NOT_FOUND, format!("no trial {hash}\n")),
                    },
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to read the run: {e}\n")),
                }
            }
            "/api/artifact" => self.artifact(&query, *req.method() == Method::HEAD).await,
            "/api/events" => self.clone().events(),
            _ => text(StatusCode::NOT_FOUND, format!("no page {path}\n")),
        }
    }

    /// The `/api/run` JSON and its state, rebuilt when the run changed since the last build.
    async fn built(self: &Arc<Self>) -> anyhow::Result<(Bytes, Arc<results::state::State>)> {
        let mut cache = self.cache.lock().await;
        let seq = self.live.as_ref().map_or(0, |l| *l.activity.borrow());
        // The last build while the run goes on and the rebuild budget is spent (module doc).
        let running = self.live.as_ref().is_some_and(|l| l.activity.has_changed().is_ok());
        let resting = running && Self::rest_until(&cache).is_some_and(|t| t > std::time::Instant::now());
        if let Some(b) = cache.built.as_ref().filter(|b| b.seq == seq || resting) {
            return Ok((b.json.clone(), b.state.clone()));
        }
        let started = std::time::Instant::now();
        let (db, live, lease_secs, first) = (self.db.clone(), self.live.is_some(), self.live.as_ref().map(|l| l.lease_secs), cache.first);
        let (json, state, first) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let state = results::state::State::load(&db)?;
            let running = snapshot::running_attempts(&db)?;
            let now = crate::state::now();
            let first = first.unwrap_or((now, snapshot::Progress::of(&state).finished()));
            let info = snapshot::RunInfo { live, now, first, lease_secs };
            let json = snapshot::run_json(&state, &running, &info).to_string();
            Ok((Bytes::from(json), Arc::new(state), first))
        })
        .await??;
        cache.first = Some(first);
        cache.built = Some(Built { seq, json: json.clone(), state: state.clone() });
        let ended = std::time::Instant::now();
        cache.last_build = Some((ended, ended - started));
        if let Ok(mut log) = self.rebuilds.lock() {
            if log.len() == REBUILD_LOG {
                log.pop_front();
            }
            log.push_back((started, ended));
        }
        Ok((json, state))
    }

    /// When the latest rebuilds of `/api/run` began and ended, oldest first.
    pub fn rebuild_spans(&self) -> Vec<(std::time::Instant, std::time::Instant)> {
        self.rebuilds.lock().map(|l| l.iter().copied().collect()).unwrap_or_default()
    }

    /// `/api/artifact?hash=H&name=N`: a file the trial's worker uploaded, served only when the
    /// state database records `N` for trial `H` (full hash; both strictly percent-decoded and
    /// compared byte for byte), else 404 — no other path is ever opened. Streamed from the file
    /// in [`ARTIFACT_CHUNK`] frames; a picture as its image type, anything else as a download.
    async fn artifact(&self, query: &str, head: bool) -> Response<Body> {
        let (Some(hash), Some(name)) = (query_param(query, "hash"), query_param(query, "name")) else {
            return text(StatusCode::BAD_REQUEST, "/api/artifact needs ?hash=TRIAL_HASH&name=NAME\n");
        };
        let not_found = || text(StatusCode::NOT_FOUND, "no such artifact: /api/artifact serves the files recorded for a trial (see /api/trial)\n");
        let (Some(hash), Some(name)) = (percent_decode(hash), percent_decode(name)) else {
            return not_found();
        };
        let db = self.db.clone();
        let found = match tokio::task::spawn_blocking(move || snapshot::recorded_artifact(&db, &hash, &name)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to read the run: {e}\n")),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to read the run: {e}\n")),
        };
        let Some(found) = found else { return not_found() };
        // Recorded, but the move into place may not have happened yet (artifacts.rs).
        let Ok(file) = tokio::fs::File::open(&found.path).await else {
            return text(StatusCode::NOT_FOUND, "this artifact is recorded but its file is not in place (yet)\n");
        };
        let Some(len) = file.metadata().await.ok().filter(|m| m.is_file()).map(|m| m.len()) else {
            return not_found();
        };
        let body = if head {
            full(Bytes::new())
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut file = file;
                loop {
                    let mut buf = vec![0u8; ARTIFACT_CHUNK];
                    match file.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Ok(Frame::data(Bytes::from(buf)))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            StreamBody::new(ReceiverStream::new(rx)).boxed_unsync()
        };
        let mut r = answer(StatusCode::OK, found.image.unwrap_or("application/octet-stream"), body);
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        if found.image.is_none() {
            let v = header::HeaderValue::from_str(&attachment(&found.name)).unwrap_or(header::HeaderValue::from_static("attachment"));
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        r
    }

    /// Until when the next rebuild waits: T·(1/DUTY − 1) after a rebuild that took T.
    fn rest_until(cache: &Cache) -> Option<std::time::Instant> {
        cache.last_build.map(|(ended, took)| ended + took.mul_f64(1.0 / DUTY - 1.0))
    }

    /// `/api/events`: `change` at once and after each change of the run; `end` when the run
    /// is over (or, for a finished run, at once).
    fn events(self: Arc<Self>) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let frame = |s: String| Ok(Frame::data(Bytes::from(s)));
        let activity = self.live.as_ref().map(|l| l.activity.clone());
        tokio::spawn(async move {
            let Some(mut activity) = activity else {
                let _ = tx.send(frame("event: end\ndata: finished\n\n".into())).await;
                return;
            };
            let seq = *activity.borrow_and_update();
            if tx.send(frame(format!("retry: 1000\nevent: change\ndata: {seq}\n\n"))).await.is_err() {
                return;
            }
            loop {
                match tokio::time::timeout(KEEP_ALIVE, activity.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        let _ = tx.send(frame("event: end\ndata: run over\n\n".into())).await;
                        return;
                    }
                    Err(_) => {
                        if tx.send(frame(": keep-alive\n\n".into())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                tokio::time::sleep(MIN_EVENT_GAP).await;
                // Announced once a fetch would rebuild (module doc).
                let rest = Self::rest_until(&*self.cache.lock().await);
                if let Some(t) = rest {
                    tokio::time::sleep_until(t.into()).await;
                }
                let seq = *activity.borrow_and_update();
                if tx.send(frame(format!("event: change\ndata: {seq}\n\n"))).await.is_err() {
                    return;
                }
            }
        });
        answer(StatusCode::OK, "text/event-stream", StreamBody::new(ReceiverStream::new(rx)).boxed_unsync())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("samples.png").as_deref(), Some("samples.png"));
        assert_eq!(percent_decode("a%20b%2Bc+d%C3%A9").as_deref(), Some("a b+c+dé"));
        assert_eq!(percent_decode("..%2F..%2fstate.db").as_deref(), Some("../../state.db"));
        assert_eq!(percent_decode("%252F").as_deref(), Some("%2F"), "decoded once");
        for bad in ["%", "a%2", "%zz", "%+1", "%-1", "%FF", "%C3", "%e9"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn attachment_names_the_file_exactly_and_in_ascii() {
        assert_eq!(attachment("notes (v2) é.txt"), "attachment; filename=\"notes (v2) _.txt\"; filename*=UTF-8''notes%20%28v2%29%20%C3%A9.txt");
        assert_eq!(attachment("a\"b;c.bin"), "attachment; filename=\"a_b_c.bin\"; filename*=UTF-8''a%22b%3Bc.bin");
    }

    #[test]
    fn only_pictures_are_images() {
        assert_eq!(snapshot::image_type("samples.png", "application/octet-stream"), Some("image/png"));
        assert_eq!(snapshot::image_type("GRID.JPG", ""), Some("image/jpeg"));
        assert_eq!(snapshot::image_type("grid", "image/webp; q=1"), Some("image/webp"));
        for (name, media) in [("x.svg", "image/svg+xml"), ("x.html", "text/html"), ("x.txt", "text/plain"), ("png", "")] {
            assert_eq!(snapshot::image_type(name, media), None, "{name}");
        }
    }
}
