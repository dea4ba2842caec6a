//! The control plane's token: every `run` and `serve` generates a fresh random token, stores it
//! mode 0600 as `<out>/token` (written to a temporary name and renamed, never world-readable),
//! hands it to the workers it launches through the environment (`SCORESWEEP_TOKEN`, never a
//! command line, where `ps` shows it), and refuses every call without it with
//! `UNAUTHENTICATED`. Workers started elsewhere read it from the same variable or
//! `--token-file`. Comparison is constant-time.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tonic::{Request, Status};

/// The environment variable that carries the token to workers.
pub const TOKEN_ENV: &str = "SCORESWEEP_TOKEN";

/// The token file's name in the output directory.
pub const TOKEN_FILE: &str = "token";

/// 256 random bits from the OS, as 64 hex digits.
pub fn new_token() -> std::io::Result<String> {
    random_hex(32)
}

/// `n` random bytes from the OS's random source (`/dev/urandom`), as 2n hex digits: run tokens
/// and the secret part of worker ids.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `token` to `<out>/token` with mode 0600 (created so; then renamed into place).
pub fn write_token(out: &Path, token: &str) -> std::io::Result<PathBuf> {
    let path = out.join(TOKEN_FILE);
    let tmp = out.join(".token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Equal in time independent of where the inputs differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A tonic interceptor that admits a call only with `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Check {
    expected: String,
}

impl Check {
    pub fn new(token: &str) -> Check {
        Check { expected: format!("Bearer {token}") }
    }
}

impl tonic::service::Interceptor for Check {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match req.metadata().get("authorization") {
            Some(v) if same(v.as_bytes(), self.expected.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong token (the run's token is in its output directory, file `token`)")),
            None => Err(Status::unauthenticated(format!("no token: pass the run's token (file `token` in its output directory) as {TOKEN_ENV} or --token-file"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tonic::service::Interceptor;

    #[test]
    fn tokens_are_random_hex_and_the_file_is_private() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let dir = std::env::temp_dir().join(format!("scoresweep-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write_token(&dir, &a).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), a);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_check_admits_only_the_token() {
        let mut check = Check::new("abc");
        let with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        for (header, ok) in [(Some("Bearer abc"), true), (Some("Bearer abd"), false), (Some("Bearer ab"), false), (Some("abc"), false), (None, false)] {
            let got = check.call(with(header));
            assert_eq!(got.is_ok(), ok, "{header:?}");
            if let Err(s) = got {
                assert_eq!(s.code(), tonic::Code::Unauthenticated);
            }
        }
    }
}
