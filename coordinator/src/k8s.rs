//! `coordinator k8s-manifest`: a Kubernetes Secret holding the run's token (and the CA
//! certificate of a TLS coordinator) and a Job of N worker pods that join the coordinator at a
//! given URL, as YAML for `kubectl apply -f -`. The token reaches the pods through
//! `secretKeyRef` environment variables, never their arguments. Each pod is named after itself
//! (`--name $(POD_NAME)`), restarts in place when its worker dies (`restartPolicy: OnFailure`),
//! and completes when the coordinator says the sweep is done.
//!
//! Not tested against a cluster (there is none here): the tests check that the output parses
//! as YAML and holds the objects and fields above.

/// What the manifest is made of.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Job name; the Secret is `<name>-token`.
    pub name: String,
    pub namespace: Option<String>,
    /// Container image holding the worker executable.
    pub image: String,
    /// The worker executable's path in the image.
    pub worker_path: String,
    /// Pods (workers) running at once, and completions.
    pub workers: usize,
    /// The URL workers dial (`http://` or `https://`).
    pub coordinator: String,
    pub token: String,
    /// PEM of the CA certificate an `https://` coordinator is verified with.
    pub tls_ca: Option<String>,
    /// CPU request and limit per pod (e.g. `"2"`).
    pub cpu: Option<String>,
    /// Memory request and limit per pod (e.g. `"4Gi"`).
    pub memory: Option<String>,
    /// `nvidia.com/gpu` per pod.
    pub gpus: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("--coordinator must be an http:// or https:// URL that the pods can reach (got `{0}`)")]
    BadUrl(String),
    #[error("an https:// coordinator needs --tls-ca (the CA certificate the workers verify it with)")]
    HttpsWithoutCa,
    #[error("--workers must be at least 1")]
    NoWorkers,
    #[error("--name `{0}` is not a Kubernetes name (lowercase letters, digits and `-`, at most 57 characters, starting with a letter)")]
    BadName(String),
    #[error("the token is empty")]
    NoToken,
}

/// A YAML scalar: a JSON string is a valid YAML double-quoted scalar.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Manifest {
    fn check(&self) -> Result<(), ManifestError> {
        let url = self.coordinator.as_str();
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace)) {
            return Err(ManifestError::BadUrl(url.to_string()));
        }
        if url.starts_with("https://") && self.tls_ca.is_none() {
            return Err(ManifestError::HttpsWithoutCa);
        }
        if self.workers == 0 {
            return Err(ManifestError::NoWorkers);
        }
        let n = &self.name;
        if n.is_empty()
            || n.len() > 57
            || !n.starts_with(|c: char| c.is_ascii_lowercase())
            || !n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || n.ends_with('-')
        {
            return Err(ManifestError::BadName(n.clone()));
        }
        if self.token.trim().is_empty() {
            return Err(ManifestError::NoToken);
        }
        Ok(())
    }

    /// The Secret and the Job, as one YAML stream.
    pub fn render(&self) -> Result<String, ManifestError> {
        self.check()?;
        let secret = format!("{}-token", self.name);
        let ns = self.namespace.as_ref().map(|n| format!("  namespace: {}\n", q(n))).unwrap_or_default();
        let labels = format!("  labels:\n    app.kubernetes.io/name: scoresweep-worker\n    app.kubernetes.io/instance: {}\n", q(&self.name));
        let mut y = String::new();
        y.push_str("# scoresweep workers: kubectl apply -f this file (it holds the run's token: keep it private)\n");
        y.push_str(&format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n{ns}{labels}type: Opaque\nstringData:\n  token: {}\n", q(&secret), q(self.token.trim())));
        if let Some(ca) = &self.tls_ca {
            y.push_str(&format!("  ca.crt: {}\n", q(ca)));
        }
        y.push_str("---\n");
        y.push_str(&format!("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {}\n{ns}{labels}", q(&self.name)));
        y.push_str(&format!("spec:\n  parallelism: {w}\n  completions: {w}\n  backoffLimit: {}\n", 4 * self.workers, w = self.workers));
        y.push_str("  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: scoresweep-worker\n");
        y.push_str(&format!("        app.kubernetes.io/instance: {}\n", q(&self.name)));
        y.push_str("    spec:\n      restartPolicy: OnFailure\n      containers:\n        - name: worker\n");
        y.push_str(&format!("          image: {}\n          command: [{}]\n", q(&self.image), q(&self.worker_path)));
        y.push_str(&format!("          args: [\"--coordinator\", {}, \"--name\", \"$(POD_NAME)\", \"--max-unreachable\", \"300\"]\n", q(&self.coordinator)));
        y.push_str("          env:\n            - name: POD_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name\n");
        let from_secret = |var: &str, key: &str| {
            format!("            - name: {var}\n              valueFrom:\n                secretKeyRef:\n                  name: {}\n                  key: {key}\n", q(&secret))
        };
        y.push_str(&from_secret(crate::auth::TOKEN_ENV, "token"));
        if self.tls_ca.is_some() {
            y.push_str(&from_secret(crate::launch::TLS_CA_ENV, "ca.crt"));
        }
        let mut limits = Vec::new();
        if let Some(c) = &self.cpu {
            limits.push(format!("cpu: {}", q(c)));
        }
        if let Some(m) = &self.memory {
            limits.push(format!("memory: {}", q(m)));
        }
        let gpu = (self.gpus > 0).then(|| format!("nvidia.com/gpu: {}", self.gpus));
        if !limits.is_empty() || gpu.is_some() {
            y.push_str("          resources:\n");
            if !limits.is_empty() {
                y.push_str("            requests:\n");
                for l in &limits {
                    y.push_str(&format!("              {l}\n"));
                }
            }
            y.push_str("            limits:\n");
            for l in limits.iter().chain(gpu.iter()) {
                y.push_str(&format!("              {l}\n"));
            }
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "sigma-workers".into(),
            namespace: Some("ml".into()),
            image: "registry.example/scoresweep-worker:0.1".into(),
            worker_path: "/usr/local/bin/worker".into(),
            workers: 3,
            coordinator: "https://coord.example:50051".into(),
            token: "f00d".repeat(16),
            tls_ca: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
            cpu: Some("2".into()),
            memory: Some("4Gi".into()),
            gpus: 1,
        }
    }

    #[test]
    fn the_manifest_parses_and_holds_the_secret_and_the_job() {
        let m = manifest();
        let text = m.render().unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 2, "{text}");
        let (secret, job) = (&docs[0], &docs[1]);
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["metadata"]["name"], "sigma-workers-token");
        assert_eq!(secret["metadata"]["namespace"], "ml");
        assert_eq!(secret["stringData"]["token"].as_str(), Some(m.token.as_str()));
        assert_eq!(secret["stringData"]["ca.crt"].as_str(), m.tls_ca.as_deref(), "the PEM survives quoting");
        assert_eq!(job["apiVersion"], "batch/v1");
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["spec"]["parallelism"], 3);
        assert_eq!(job["spec"]["completions"], 3);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "OnFailure");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/scoresweep-worker:0.1");
        assert_eq!(c["command"][0], "/usr/local/bin/worker");
        let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(&args[..4], ["--coordinator", "https://coord.example:50051", "--name", "$(POD_NAME)"]);
        assert!(!text.lines().filter(|l| !l.trim_start().starts_with("token:")).any(|l| l.contains(&m.token)), "the token only in the Secret");
        let env = c["env"].as_sequence().unwrap();
        let var = |name: &str| env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(var("SCORESWEEP_TOKEN")["valueFrom"]["secretKeyRef"]["name"], "sigma-workers-token");
        assert_eq!(var("SCORESWEEP_TOKEN")["valueFrom"]["secretKeyRef"]["key"], "token");
        assert_eq!(var("SCORESWEEP_TLS_CA")["valueFrom"]["secretKeyRef"]["key"], "ca.crt");
        assert_eq!(var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
        assert_eq!(c["resources"]["requests"]["memory"], "4Gi");
    }

    #[test]
    fn a_plain_manifest_has_no_tls_or_resources() {
        let m = Manifest { coordinator: "http://10.0.0.5:50051".into(), tls_ca: None, cpu: None, memory: None, gpus: 0, namespace: None, ..manifest() };
        let text = m.render().unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect();
        let c = &docs[1]["spec"]["template"]["spec"]["containers"][0];
        assert!(c.get("resources").is_none() && docs[0]["stringData"].get("ca.crt").is_none());
        assert!(docs[0]["metadata"].get("namespace").is_none());
    }

    #[test]
    fn bad_settings_are_refused() {
        let cases: [(Manifest, ManifestError); 5] = [
            (Manifest { coordinator: "coord:50051".into(), ..manifest() }, ManifestError::BadUrl("coord:50051".into())),
            (Manifest { tls_ca: None, ..manifest() }, ManifestError::HttpsWithoutCa),
            (Manifest { workers: 0, ..manifest() }, ManifestError::NoWorkers),
            (Manifest { name: "Sweep_1".into(), ..manifest() }, ManifestError::BadName("Sweep_1".into())),
            (Manifest { token: " ".into(), ..manifest() }, ManifestError::NoToken),
        ];
        for (m, want) in cases {
            assert_eq!(m.render().unwrap_err(), want);
        }
    }

    use serde::Deserialize;
}
