//! `keel image import`: loads OCI image archives into a containerd, as the agent does with its
//! images folder at start (keel uses no registry).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import OCI image archives (`*.tar` files, or every one in a folder) into containerd.
    Import {
        /// Archives or folders of archives.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// containerd's socket: the agent's own is `<agent data dir>/containerd/containerd.sock`.
        #[arg(long, default_value = "/var/lib/keel/agent/containerd/containerd.sock")]
        address: PathBuf,
    },
}

pub async fn run(args: ImageArgs) -> Result<()> {
    let ImageCommand::Import { paths, address } = args.command;
    let importer = keel_cri::ImageImporter::new(&address);
    let mut failed = 0;
    for path in paths {
        if path.is_dir() {
            let report = importer
                .import_archives(&path)
                .await
                .with_context(|| format!("importing the archives of {}", path.display()))?;
            for (archive, names) in &report.imported {
                println!("{}: {}", archive.display(), names.join(", "));
            }
            for (archive, error) in &report.failed {
                eprintln!("error: {}: {error}", archive.display());
                failed += 1;
            }
        } else {
            match importer.import(&path).await {
                Ok(names) => println!("{}: {}", path.display(), names.join(", ")),
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} archive(s) could not be imported");
    }
    Ok(())
}
