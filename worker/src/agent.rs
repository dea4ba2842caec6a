//! gRPC agent of `worker --coordinator URL` (owned by the runner work; placeholder until it lands).

#[derive(clap::Args, Default)]
pub struct AgentArgs {}

pub fn run(url: &str, _args: &AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("agent mode is not built yet (coordinator {url})")
}
