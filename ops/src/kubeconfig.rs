//! `keel kubeconfig`: a kubeconfig for kubectl and client libraries.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    /// API address of any member (`http://host:port` or `host:port`).
    #[arg(long, default_value = "http://127.0.0.1:6443")]
    server: String,
    /// Name of the cluster, user and context in the file.
    #[arg(long, default_value = "keel")]
    name: String,
}

pub fn render(server: &str, name: &str) -> Result<String> {
    let server = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    if !server.starts_with("http://") {
        bail!("--server {server:?}: keel serves plain HTTP for now (TLS is not done yet); use http://host:port");
    }
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\nusers:\n- name: {name}\n  user: {{}}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\ncurrent-context: {name}\n"
    ))
}

pub fn run(args: KubeconfigArgs) -> Result<()> {
    print!("{}", render(&args.server, &args.name)?);
    Ok(())
}
