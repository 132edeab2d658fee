//! A pod's volumes on the node, laid out as kubelet lays them out
//! (`<root>/pods/<uid>/volumes/<plugin>/<name>`), and each container's mounts of them:
//!
//! * emptyDir: a directory of the pod's (a tmpfs for `medium: Memory`), shared by its
//!   containers and removed with the pod;
//! * hostPath: the node's path, created for the `…OrCreate` types, checked for the others;
//! * configMap, secret, downwardAPI and projected (those three kinds of source): files written
//!   as kubelet's atomic writer does — a timestamped directory, a `..data` link switched in
//!   one rename, and a link per file — so a container never sees half an update, and a changed
//!   ConfigMap or Secret reaches mounted files at the pod's next turn;
//! * persistentVolumeClaim: the path of the hostPath or local PersistentVolume the claim is
//!   bound to (the member sends the node its pods' claims and their volumes); the pod waits
//!   while the claim is unbound.
//!
//! Projected serviceAccountToken sources carry tokens the caller fetched ([`crate::tokens`]).
//! Not yet: volume kinds that need attaching (CSI, iSCSI, NFS…).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod, Volume};
use keel_container::Mount;

use crate::objects::Objects;
use crate::tokens::{PodTokens, TokenSpec};

/// Why a pod's volumes cannot be set up (kubelet's FailedMount).
#[derive(Debug, PartialEq, Eq)]
pub struct MountError(pub String);

const DEFAULT_MODE: u32 = 0o644;

pub fn pod_dir(pods_root: &Path, uid: &str) -> PathBuf {
    pods_root.join(uid)
}

/// One file of a configMap, secret or downwardAPI volume: its path in the volume, content and
/// mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

fn keyed_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
) -> Result<Files, MountError> {
    let mut files = Files::new();
    match items {
        Some(items) => {
            for item in items {
                let Some(content) = data.get(&item.key) else {
                    return Err(MountError(format!("{what} has no key {:?}", item.key)));
                };
                let mode = item.mode.map_or(mode, |m| m as u32);
                files.insert(item.path.clone(), (content.clone(), mode));
            }
        }
        None => {
            for (key, content) in data {
                files.insert(key.clone(), (content.clone(), mode));
            }
        }
    }
    Ok(files)
}

fn config_map_data(objects: &Objects, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let cm = objects.config_map(namespace, name)?;
    let mut data: BTreeMap<String, Vec<u8>> =
        cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    data.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    Some(data)
}

fn secret_data(objects: &Objects, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let secret = objects.secret(namespace, name)?;
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    data.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    Some(data)
}

fn downward_files(pod: &Pod, items: &[DownwardAPIVolumeFile], mode: u32, host_ip: &str) -> Result<Files, MountError> {
    let mut files = Files::new();
    for item in items {
        let content = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => render_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => render_map(pod.metadata.annotations.as_ref()),
                path => crate::env::field(pod, path, host_ip)
                    .ok_or_else(|| MountError(format!("unsupported fieldRef {path:?} in a downwardAPI volume")))?,
            }
        } else if item.resource_field_ref.is_some() {
            return Err(MountError("resourceFieldRef in downwardAPI volumes is not supported yet".into()));
        } else {
            String::new()
        };
        files.insert(item.path.clone(), (content.into_bytes(), item.mode.map_or(mode, |m| m as u32)));
    }
    Ok(files)
}

/// `key="value"` lines, sorted, as kubelet writes labels and annotations.
fn render_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.iter().flat_map(|m| m.iter()).map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

fn mode_of(default: Option<i32>) -> u32 {
    default.map_or(DEFAULT_MODE, |m| m as u32)
}

/// The files of a configMap, secret, downwardAPI or projected volume; `None` when the
/// volume is of another kind.
fn files_of(
    volume: &Volume,
    pod: &Pod,
    objects: &Objects,
    host_ip: &str,
    tokens: &PodTokens,
) -> Result<Option<Files>, MountError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(cm) = &volume.config_map {
        return match config_map_data(objects, &namespace, &cm.name) {
            Some(data) => keyed_files(&data, cm.items.as_ref(), mode_of(cm.default_mode), "configmap").map(Some),
            None if cm.optional == Some(true) => Ok(Some(Files::new())),
            None => Err(MountError(format!("configmap {:?} not found", cm.name))),
        };
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        return match secret_data(objects, &namespace, &name) {
            Some(data) => keyed_files(&data, secret.items.as_ref(), mode_of(secret.default_mode), "secret").map(Some),
            None if secret.optional == Some(true) => Ok(Some(Files::new())),
            None => Err(MountError(format!("secret {name:?} not found"))),
        };
    }
    if let Some(downward) = &volume.downward_api {
        let items = downward.items.clone().unwrap_or_default();
        return downward_files(pod, &items, mode_of(downward.default_mode), host_ip).map(Some);
    }
    if let Some(projected) = &volume.projected {
        let mode = mode_of(projected.default_mode);
        let mut files = Files::new();
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                match config_map_data(objects, &namespace, &cm.name) {
                    Some(data) => files.extend(keyed_files(&data, cm.items.as_ref(), mode, "configmap")?),
                    None if cm.optional == Some(true) => {}
                    None => return Err(MountError(format!("configmap {:?} not found", cm.name))),
                }
            }
            if let Some(secret) = &source.secret {
                match secret_data(objects, &namespace, &secret.name) {
                    Some(data) => files.extend(keyed_files(&data, secret.items.as_ref(), mode, "secret")?),
                    None if secret.optional == Some(true) => {}
                    None => return Err(MountError(format!("secret {:?} not found", secret.name))),
                }
            }
            if let Some(downward) = &source.downward_api {
                files.extend(downward_files(pod, downward.items.as_deref().unwrap_or_default(), mode, host_ip)?);
            }
            if let Some(token) = &source.service_account_token {
                let spec = TokenSpec {
                    audience: token.audience.clone().unwrap_or_default(),
                    expiration_seconds: token.expiration_seconds.unwrap_or(3600),
                };
                let value = tokens
                    .get(&spec)
                    .ok_or_else(|| MountError(format!("no service account token for {:?} yet", token.path)))?;
                files.insert(token.path.clone(), (value.clone().into_bytes(), mode));
            }
        }
        return Ok(Some(files));
    }
    Ok(None)
}

/// What `dir` holds now under its `..data` link, if the atomic writer made it.
fn current_files(dir: &Path) -> Option<Files> {
    let data = std::fs::read_link(dir.join("..data")).ok()?;
    let root = dir.join(data);
    let mut out = Files::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&root).ok()?.to_string_lossy().into_owned();
                out.insert(rel, (std::fs::read(&path).ok()?, meta.permissions().mode() & 0o7777));
            }
        }
    }
    Some(out)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> MountError {
    MountError(format!("{what} {}: {e}", path.display()))
}

/// Writes `files` into `dir` as kubelet's atomic writer does; nothing when they are there.
fn write_atomically(dir: &Path, files: &Files) -> Result<(), MountError> {
    if current_files(dir).as_ref() == Some(files) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let stamp = format!("..{}", jiff_free_stamp());
    let fresh = dir.join(&stamp);
    for (rel, (content, mode)) in files {
        if rel.split('/').any(|part| part == ".." || part.is_empty()) || rel.starts_with('/') {
            return Err(MountError(format!("file path {rel:?} leaves the volume")));
        }
        let path = fresh.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        std::fs::write(&path, content).map_err(|e| io("writing", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(|e| io("chmod", &path, e))?;
    }
    std::fs::create_dir_all(&fresh).map_err(|e| io("creating", &fresh, e))?;
    // The switch: a new link renamed over `..data` in one step.
    let old = std::fs::read_link(dir.join("..data")).ok();
    let link_tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(&stamp, &link_tmp).map_err(|e| io("linking", &link_tmp, e))?;
    std::fs::rename(&link_tmp, dir.join("..data")).map_err(|e| io("switching", dir, e))?;
    // Top-level names point through `..data`.
    for top in files.keys().filter_map(|rel| rel.split('/').next()).collect::<std::collections::BTreeSet<_>>() {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link).map_err(|e| io("linking", &link, e))?;
        }
    }
    // Names that are gone, and the previous generation.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !files.keys().any(|k| k.split('/').next() == Some(name.as_str())) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// A name for a generation directory, unique and increasing.
fn jiff_free_stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}_{:09}", now.as_secs(), now.subsec_nanos())
}

/// A hostPath, checked (or made) as its type says.
fn host_path(host: &HostPathVolumeSource) -> Result<PathBuf, MountError> {
    let path = PathBuf::from(&host.path);
    match host.type_.as_deref().unwrap_or("") {
        "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(|e| io("creating", &path, e))?,
        "FileOrCreate" if !path.exists() => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
            }
            std::fs::write(&path, b"").map_err(|e| io("creating", &path, e))?;
        }
        "Directory" if !path.is_dir() => {
            return Err(MountError(format!("hostPath {} is not a directory", host.path)));
        }
        "File" if !path.is_file() => return Err(MountError(format!("hostPath {} is not a file", host.path))),
        "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => {
            return Err(MountError(format!("hostPath {} does not exist", host.path)));
        }
        _ => {}
    }
    Ok(path)
}

/// Where a claim's data is on this node: the hostPath or local volume it is bound to.
fn claimed_path(objects: &Objects, namespace: &str, claim_name: &str) -> Result<PathBuf, MountError> {
    let claim = objects
        .claim(namespace, claim_name)
        .ok_or_else(|| MountError(format!("persistentvolumeclaim {claim_name:?} not found")))?;
    let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
    let Some(volume_name) = volume_name else {
        return Err(MountError(format!("persistentvolumeclaim {claim_name:?} is not bound to a volume yet")));
    };
    let volume = objects
        .volume(&volume_name)
        .ok_or_else(|| MountError(format!("persistentvolume {volume_name:?} (of claim {claim_name:?}) not found")))?;
    let spec = volume.spec.clone().unwrap_or_default();
    if let Some(claim_ref) = &spec.claim_ref
        && (claim_ref.name.as_deref() != Some(claim_name) || claim_ref.namespace.as_deref() != Some(namespace))
    {
        return Err(MountError(format!("persistentvolume {volume_name:?} is bound to another claim")));
    }
    if let Some(host) = &spec.host_path {
        return host_path(host);
    }
    if let Some(local) = &spec.local {
        let path = PathBuf::from(&local.path);
        if !path.exists() {
            return Err(MountError(format!("local volume {volume_name:?}: {} does not exist", local.path)));
        }
        return Ok(path);
    }
    Err(MountError(format!(
        "persistentvolume {volume_name:?}: only hostPath and local volumes can be mounted by keel's agent"
    )))
}

/// Sets up every volume of `pod` under its directory and returns each volume's host path.
pub fn prepare(
    pods_root: &Path,
    pod: &Pod,
    objects: &Objects,
    host_ip: &str,
    tokens: &PodTokens,
) -> Result<HashMap<String, PathBuf>, MountError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let volumes_dir = pod_dir(pods_root, &uid).join("volumes");
    let mut paths = HashMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(empty) = &volume.empty_dir {
            let dir = volumes_dir.join("kubernetes.io~empty-dir").join(&volume.name);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| io("chmod", &dir, e))?;
                if empty.medium.as_deref() == Some("Memory") {
                    let mut options = "mode=0777".to_string();
                    if let Some(limit) = empty.size_limit.as_ref().and_then(|q| crate::env::parse_quantity(&q.0)) {
                        options.push_str(&format!(",size={}", limit as u64));
                    }
                    let status = std::process::Command::new("mount")
                        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
                        .arg(&dir)
                        .status()
                        .map_err(|e| MountError(format!("mounting a tmpfs on {}: {e}", dir.display())))?;
                    if !status.success() {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(MountError(format!(
                            "mounting a tmpfs on {}: mount exited with {status}",
                            dir.display()
                        )));
                    }
                }
            }
            paths.insert(volume.name.clone(), dir);
        } else if let Some(host) = &volume.host_path {
            paths.insert(volume.name.clone(), host_path(host)?);
        } else if let Some(files) = files_of(volume, pod, objects, host_ip, tokens)? {
            let plugin = if volume.config_map.is_some() {
                "kubernetes.io~configmap"
            } else if volume.secret.is_some() {
                "kubernetes.io~secret"
            } else if volume.downward_api.is_some() {
                "kubernetes.io~downward-api"
            } else {
                "kubernetes.io~projected"
            };
            let dir = volumes_dir.join(plugin).join(&volume.name);
            write_atomically(&dir, &files)?;
            paths.insert(volume.name.clone(), dir);
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            paths.insert(volume.name.clone(), claimed_path(objects, namespace, &claim.claim_name)?);
        }
    }
    Ok(paths)
}

/// The mounts of `container`: its volumeMounts onto the prepared paths (subPath included).
pub fn mounts(container: &Container, paths: &HashMap<String, PathBuf>) -> Result<Vec<Mount>, MountError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(base) = paths.get(&m.name) else {
            return Err(MountError(format!("volumeMount {:?} names no volume of the pod", m.name)));
        };
        let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                    return Err(MountError(format!("subPath {sub:?} leaves the volume")));
                }
                let path = base.join(sub);
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(|e| io("creating", &path, e))?;
                }
                path
            }
            None => base.clone(),
        };
        out.push(Mount { container_path: m.mount_path.clone(), host_path, readonly: m.read_only.unwrap_or(false) });
    }
    Ok(out)
}

/// Removes a gone pod's directory, unmounting its tmpfs emptyDirs first.
pub fn remove(pods_root: &Path, uid: &str) {
    let dir = pod_dir(pods_root, uid);
    let memory = dir.join("volumes").join("kubernetes.io~empty-dir");
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        let prefix = memory.display().to_string();
        for target in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&prefix)) {
            let _ = std::process::Command::new("umount").arg(target).status();
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "removing a gone pod's directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::node::{Sync, SyncObject};
    use serde_json::json;

    fn objects_with(cm: serde_json::Value) -> Objects {
        let objects = Objects::default();
        objects
            .apply(Sync {
                upserts: vec![SyncObject { kind: "ConfigMap".into(), json: serde_json::to_vec(&cm).expect("json") }],
                removals: vec![],
                in_sync: true,
            })
            .expect("applied");
        objects
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                {"name": "scratch", "mountPath": "/scratch", "subPath": "part"}
            ]}], "volumes": volumes}
        }))
        .expect("pod")
    }

    #[test]
    fn config_maps_are_written_atomically_and_updated() {
        let root = tempfile::tempdir().expect("temp dir");
        let objects = objects_with(
            json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"color": "blue", "size": "L"}}),
        );
        let p = pod(json!([
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
        ]));
        let paths = prepare(root.path(), &p, &objects, "10.0.0.1", &PodTokens::new()).expect("prepared");
        let cfg = &paths["cfg"];
        assert_eq!(std::fs::read_to_string(cfg.join("color")).expect("color"), "blue");
        assert!(std::fs::symlink_metadata(cfg.join("color")).expect("link").file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(paths["info"].join("labels")).expect("labels"), "app=\"web\"\n");
        let mounts = mounts(&p.spec.as_ref().expect("spec").containers[0], &paths).expect("mounts");
        assert_eq!(mounts[0].container_path, "/etc/cfg");
        assert!(mounts[0].readonly);
        assert!(mounts[1].host_path.ends_with("scratch/part") && mounts[1].host_path.is_dir());

        // An update replaces the files in one switch; a key that went away goes.
        let objects = objects_with(json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"color": "red"}}));
        prepare(root.path(), &p, &objects, "10.0.0.1", &PodTokens::new()).expect("updated");
        assert_eq!(std::fs::read_to_string(cfg.join("color")).expect("color"), "red");
        assert!(!cfg.join("size").exists());
        let generations = std::fs::read_dir(cfg).expect("dir").flatten().filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("..") && n != "..data"
        });
        assert_eq!(generations.count(), 1, "the old generation is removed");

        remove(root.path(), "u1");
        assert!(!pod_dir(root.path(), "u1").exists());
    }

    #[test]
    fn missing_sources_and_escaping_paths_are_refused() {
        let root = tempfile::tempdir().expect("temp dir");
        let objects = Objects::default();
        let missing =
            pod(json!([{"name": "cfg", "configMap": {"name": "absent"}}, {"name": "scratch", "emptyDir": {}}]));
        assert_eq!(
            prepare(root.path(), &missing, &objects, "10.0.0.1", &PodTokens::new()).expect_err("missing"),
            MountError("configmap \"absent\" not found".into())
        );
        let optional = pod(
            json!([{"name": "cfg", "configMap": {"name": "absent", "optional": true}}, {"name": "scratch", "emptyDir": {}}]),
        );
        assert!(prepare(root.path(), &optional, &objects, "10.0.0.1", &PodTokens::new()).is_ok());
        let objects = objects_with(json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"k": "v"}}));
        let escaping = pod(json!([
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "../../etc/passwd"}]}},
            {"name": "scratch", "emptyDir": {}}
        ]));
        assert!(prepare(root.path(), &escaping, &objects, "10.0.0.1", &PodTokens::new()).is_err());
    }
}
