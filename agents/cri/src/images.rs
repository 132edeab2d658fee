//! Images without a registry. keel's nodes get their images from OCI image archives (`*.tar`,
//! as `ops/images/build.sh`, `docker save` or `buildah push oci-archive:` write them) in the
//! agent's images folder; this module reads which images an archive holds and imports archives
//! into containerd's `k8s.io` namespace (the one its CRI plugin serves) with `ctr`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tracing::{info, instrument, warn};

/// containerd's namespace for images and containers made through CRI.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// An import that takes longer than this is stuck (a big archive takes seconds).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("images folder {}: {source}", dir.display())]
    Folder { dir: PathBuf, source: std::io::Error },
    #[error("image archive {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("image archive {}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{} not found: install the Debian package containerd (ops/install-deps.sh)", ctr.display())]
    CtrMissing { ctr: PathBuf },
    #[error("ctr images import {}: {message}", path.display())]
    Import { path: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A reference in the form containerd's CRI plugin stores it (docker's normalisation):
/// `busybox` is `docker.io/library/busybox:latest`, `keel.local/pause:3.10` stays as it is.
/// Two references name the same image when their normal forms are equal.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    // A tag is a ':' after the last '/': `localhost:5000/x` has a port, not a tag.
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last..].rfind(':') {
        Some(i) => (&name[..last + i], Some(&name[last + i + 1..])),
        None => (name, None),
    };
    let name = match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let name = match name.strip_prefix("docker.io/") {
        Some(rest) if !rest.contains('/') => format!("docker.io/library/{rest}"),
        _ => name,
    };
    // With a digest the tag says nothing more (containerd drops it too).
    match (digest, tag) {
        (Some(digest), _) => format!("{name}@{digest}"),
        (None, Some(tag)) => format!("{name}:{tag}"),
        (None, None) => format!("{name}:latest"),
    }
}

/// The images an archive names, normalised. Reads only the archive's `index.json` (OCI layout)
/// and `manifest.json` (docker save), seeking past the blobs.
pub fn archive_names(path: &Path) -> Result<Vec<String>> {
    let read_err = |source| Error::Read { path: path.to_path_buf(), source };
    let format_err = |message: String| Error::Format { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(file);
    let mut names = Vec::new();
    let mut found = false;
    for entry in archive.entries_with_seek().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let entry_path = entry.path().map_err(read_err)?.to_string_lossy().trim_start_matches("./").to_string();
        if entry_path != "index.json" && entry_path != "manifest.json" {
            continue;
        }
        found = true;
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(read_err)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format_err(format!("{entry_path}: {e}")))?;
        if entry_path == "index.json" {
            names.extend(index_names(&json));
        } else {
            names.extend(docker_manifest_names(&json));
        }
    }
    if !found {
        return Err(format_err("neither index.json (OCI image layout) nor manifest.json (docker save) in it".into()));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Names in an OCI `index.json`. containerd's importer names an image by the
/// `io.containerd.image.name` annotation; `org.opencontainers.image.ref.name` is often only a
/// tag, and counts here only when it is a whole reference.
fn index_names(index: &serde_json::Value) -> Vec<String> {
    let manifests = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    manifests
        .iter()
        .filter_map(|m| {
            let annotations = &m["annotations"];
            if let Some(name) = annotations["io.containerd.image.name"].as_str() {
                return Some(normalize(name));
            }
            annotations["org.opencontainers.image.ref.name"].as_str().filter(|r| r.contains('/')).map(normalize)
        })
        .collect()
}

/// Names in a docker-save `manifest.json`: `[{"RepoTags": ["busybox:1.36"], …}]`.
fn docker_manifest_names(manifest: &serde_json::Value) -> Vec<String> {
    let images = manifest.as_array().map(Vec::as_slice).unwrap_or_default();
    images
        .iter()
        .flat_map(|i| i["RepoTags"].as_array().map(Vec::as_slice).unwrap_or_default())
        .filter_map(|t| t.as_str())
        .map(normalize)
        .collect()
}

/// The `*.tar` files of a folder, by name.
pub fn archives_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let folder_err = |source| Error::Folder { dir: dir.to_path_buf(), source };
    let mut archives = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(folder_err)? {
        let path = entry.map_err(folder_err)?.path();
        if path.extension().is_some_and(|e| e == "tar") && path.is_file() {
            archives.push(path);
        }
    }
    archives.sort();
    Ok(archives)
}

/// The first archive in `dir` (by file name) that names `image`. Archives that cannot be read
/// are skipped with a warning: one broken file must not hide the others.
pub fn find_archive(dir: &Path, image: &str) -> Result<Option<PathBuf>> {
    let wanted = normalize(image);
    for archive in archives_in(dir)? {
        match archive_names(&archive) {
            Ok(names) if names.contains(&wanted) => return Ok(Some(archive)),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "skipping unreadable image archive"),
        }
    }
    Ok(None)
}

/// What [`ImageImporter::import_archives`] did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Each archive imported, with the images it named.
    pub imported: Vec<(PathBuf, Vec<String>)>,
    pub failed: Vec<(PathBuf, Error)>,
}

/// Imports archives into one containerd with its `ctr`.
#[derive(Debug, Clone)]
pub struct ImageImporter {
    ctr: PathBuf,
    address: PathBuf,
    snapshotter: Option<String>,
}

impl ImageImporter {
    /// For the containerd listening on `address`; `ctr` from `PATH`.
    pub fn new(address: impl Into<PathBuf>) -> ImageImporter {
        ImageImporter { ctr: PathBuf::from("ctr"), address: address.into(), snapshotter: None }
    }

    /// Unpacks into this snapshotter (the CRI plugin's), so the first container starts
    /// without unpacking. Without it ctr uses its default, overlayfs.
    pub fn with_snapshotter(mut self, snapshotter: impl Into<String>) -> ImageImporter {
        self.snapshotter = Some(snapshotter.into());
        self
    }

    pub fn with_ctr(mut self, ctr: impl Into<PathBuf>) -> ImageImporter {
        self.ctr = ctr.into();
        self
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Imports one archive; returns the images it names. Importing an archive again is
    /// cheap: containerd already has its blobs.
    #[instrument(skip(self), fields(address = %self.address.display()))]
    pub async fn import(&self, archive: &Path) -> Result<Vec<String>> {
        let path = archive.to_path_buf();
        let names = tokio::task::spawn_blocking(move || archive_names(&path))
            .await
            .map_err(|e| Error::Import { path: archive.to_path_buf(), message: format!("reading names: {e}") })??;
        let mut cmd = tokio::process::Command::new(&self.ctr);
        cmd.arg("--address").arg(&self.address).args(["--namespace", CRI_NAMESPACE, "images", "import"]);
        if let Some(snapshotter) = &self.snapshotter {
            cmd.args(["--snapshotter", snapshotter]);
        }
        cmd.arg(archive).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let import_err = |message: String| Error::Import { path: archive.to_path_buf(), message };
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::CtrMissing { ctr: self.ctr.clone() },
            _ => import_err(format!("starting {}: {e}", self.ctr.display())),
        })?;
        let output = tokio::time::timeout(IMPORT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| import_err(format!("no result after {IMPORT_TIMEOUT:?}")))?
            .map_err(|e| import_err(e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(import_err(format!("{}: {}", output.status, stderr.trim())));
        }
        info!(archive = %archive.display(), images = ?names, "imported image archive");
        Ok(names)
    }

    /// Imports every `*.tar` in `dir` (the agent does at start; `keel image import` too).
    /// An archive that fails is reported and the others are still imported.
    #[instrument(skip(self), fields(address = %self.address.display()))]
    pub async fn import_archives(&self, dir: &Path) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        for archive in archives_in(dir)? {
            match self.import(&archive).await {
                Ok(names) => report.imported.push((archive, names)),
                // Without ctr no other archive can work either.
                Err(e @ Error::CtrMissing { .. }) => return Err(e),
                Err(e) => {
                    warn!(archive = %archive.display(), error = %e, "image archive not imported");
                    report.failed.push((archive, e));
                }
            }
        }
        Ok(report)
    }
}

/// Imports every `*.tar` in `dir` into the containerd at `address` (snapshotter: ctr's default).
pub async fn import_archives(address: &Path, dir: &Path) -> Result<ImportReport> {
    ImageImporter::new(address).import_archives(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_containerd_stores_them() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("someone/app:v1", "docker.io/someone/app:v1"),
            ("keel.local/pause:3.10", "keel.local/pause:3.10"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("registry.k8s.io/pause:3.10@sha256:abc", "registry.k8s.io/pause@sha256:abc"),
        ] {
            assert_eq!(normalize(given), want, "{given}");
        }
    }

    fn tar_with(files: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let mut builder = tar::Builder::new(file.reopen().expect("reopen"));
        for (name, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, body.as_bytes()).expect("append");
        }
        builder.finish().expect("finish");
        file
    }

    #[test]
    fn archive_names_come_from_index_and_docker_manifest() {
        let index = r#"{"manifests":[
            {"annotations":{"io.containerd.image.name":"keel.local/pause:3.10","org.opencontainers.image.ref.name":"3.10"}},
            {"annotations":{"org.opencontainers.image.ref.name":"3.10"}},
            {"annotations":{"org.opencontainers.image.ref.name":"example.com/app:v2"}}]}"#;
        let manifest = r#"[{"RepoTags":["busybox:1.36"]}]"#;
        let archive = tar_with(&[("oci-layout", "{}"), ("index.json", index), ("manifest.json", manifest)]);
        assert_eq!(
            archive_names(archive.path()).expect("names"),
            ["docker.io/library/busybox:1.36", "example.com/app:v2", "keel.local/pause:3.10"]
        );
    }

    #[test]
    fn an_archive_without_an_index_is_a_format_error() {
        let archive = tar_with(&[("hello.txt", "hi")]);
        assert!(matches!(archive_names(archive.path()), Err(Error::Format { .. })));
    }
}
