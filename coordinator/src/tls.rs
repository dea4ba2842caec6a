//! Optional TLS for the control plane (rustls with the *ring* provider, through tonic): the
//! user gives a certificate chain and its private key (`--tls-cert`, `--tls-key`, PEM); both are
//! checked before anything is written, and the run then serves `https://`. Workers verify the
//! coordinator with a CA certificate (`worker --tls-ca FILE`; launched workers get the PEM text
//! of `--tls-ca`, default the `--tls-cert` file, in `SCORESWEEP_TLS_CA`). The token is still
//! required: TLS protects it on the wire, it does not replace it.

use std::path::{Path, PathBuf};

use tonic::transport::{Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} is not a PEM {what} (no `-----BEGIN {marker}` line)", path.display())]
    NotPem { what: &'static str, path: PathBuf, marker: &'static str },
    #[error("the TLS certificate {} and key {} are not usable together: {message}", cert.display(), key.display())]
    Unusable { cert: PathBuf, key: PathBuf, message: String },
    #[error("--tls-cert and --tls-key go together (got only {0})")]
    Half(&'static str),
}

/// A server certificate chain and key, checked.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: String,
}

fn read(what: &'static str, path: &Path, marker: &'static str) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })?;
    if !text.contains(&format!("-----BEGIN {marker}")) {
        return Err(TlsError::NotPem { what, path: path.to_path_buf(), marker });
    }
    Ok(text)
}

/// Reads a CA certificate (PEM) for workers.
pub fn read_ca(path: &Path) -> Result<String, TlsError> {
    read("CA certificate", path, "CERTIFICATE")
}

impl ServerTls {
    /// `--tls-cert`/`--tls-key`: none, both (read and checked by building the rustls
    /// configuration), or an error.
    pub fn from_flags(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Half("--tls-cert")),
            (None, Some(_)) => Err(TlsError::Half("--tls-key")),
            (Some(c), Some(k)) => ServerTls::load(c, k).map(Some),
        }
    }

    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let tls = ServerTls { cert_pem: read("certificate", cert, "CERTIFICATE")?, key_pem: read("private key", key, "")? };
        if !tls.key_pem.contains("PRIVATE KEY-----") {
            return Err(TlsError::NotPem { what: "private key", path: key.to_path_buf(), marker: "… PRIVATE KEY" });
        }
        tonic::transport::Server::builder().tls_config(tls.config()).map_err(|e| TlsError::Unusable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: error_chain(&e),
        })?;
        Ok(tls)
    }

    /// The certificate chain (PEM), the default CA for launched workers.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// The warning a run without TLS prints when it listens beyond loopback: the token (and every
/// result) crosses the network in clear. None with TLS or on a loopback address.
pub fn cleartext_warning(bound: std::net::SocketAddr, tls: bool) -> Option<String> {
    (!tls && !bound.ip().is_loopback()).then(|| {
        format!(
            "WARNING: serving without TLS on {bound}: the run's token and results cross the network in clear, and anyone who sees the token can \
             lease, report and upload. Give --tls-cert/--tls-key (README, \"TLS\": one openssl command makes a self-signed certificate), \
             or listen on 127.0.0.1 only."
        )
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
