//! The node agent's real container runtime: [`CriRuntime`] implements
//! [`keel_container::ContainerRuntime`] with CRI v1 calls on containerd's unix socket;
//! [`Containerd`] runs the agent's own containerd (generated config, CNI bridge network,
//! restarts); [`images`] gives containerd its images from OCI archives, since keel uses no
//! registry.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_cri::{Containerd, ContainerdOptions};
//! let data_dir = std::path::Path::new("/var/lib/keel/agent");
//! let containerd = Containerd::start(data_dir, ContainerdOptions::default()).await?;
//! containerd.importer().import_archives(&data_dir.join("images")).await?;
//! let runtime = containerd.runtime(data_dir.join("images"));
//! # let _ = runtime; Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod containerd;
mod convert;
pub mod images;
pub mod masquerade;
pub mod runtime;

pub use containerd::{Containerd, ContainerdOptions, Snapshotter};
pub use images::{ImageImporter, ImportReport, import_archives};
pub use runtime::{Condition, CriRuntime};
