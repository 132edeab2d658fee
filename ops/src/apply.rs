//! `keel apply -f <file|dir> [--atomic]`: applies manifests through the gRPC object API.
//! With `--atomic` every object lands at one store revision or none does — something the
//! Kubernetes API cannot offer, since each of its writes is a separate transaction.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_proto::objects::ApplyRequest;
use keel_proto::objects::objects_client::ObjectsClient;
use serde::Deserialize;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Manifest files or folders of them (`.yaml`, `.yml`, `.json`), several documents each.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// API address of any member.
    #[arg(long, default_value = "127.0.0.1:6443")]
    server: String,
    /// All objects in one transaction: every one applied, or none.
    #[arg(long)]
    atomic: bool,
    /// Check everything (admission and validation included) without writing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, default_value = "keel-apply")]
    field_manager: String,
}

fn manifest_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_manifest =
                entry.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || is_manifest {
                manifest_files(&entry, out)?;
            }
        }
        return Ok(());
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    out.push(path.to_path_buf());
    Ok(())
}

/// Every object in a file; `List` objects are unpacked into their items.
pub fn read_objects(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut objects = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .with_context(|| format!("{}: document {} is not valid YAML", path.display(), i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
                    && map.contains_key("items") =>
            {
                objects.extend(map["items"].as_array().cloned().unwrap_or_default());
            }
            Value::Object(_) => objects.push(value),
            _ => bail!("{}: document {} is not an object", path.display(), i + 1),
        }
    }
    Ok(objects)
}

fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?").to_lowercase();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    match object.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{kind}/{name} (namespace {ns})"),
        None => format!("{kind}/{name}"),
    }
}

pub async fn run(args: ApplyArgs) -> Result<()> {
    let mut files = Vec::new();
    for path in &args.files {
        manifest_files(path, &mut files)?;
    }
    let mut objects = Vec::new();
    for file in &files {
        objects.extend(read_objects(file)?);
    }
    if objects.is_empty() {
        bail!(
            "no objects found in {}",
            args.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let server = if args.server.contains("://") { args.server.clone() } else { format!("http://{}", args.server) };
    let mut client = ObjectsClient::connect(server.clone()).await.with_context(|| format!("cannot reach {server}"))?;
    let batches: Vec<Vec<Value>> =
        if args.atomic { vec![objects] } else { objects.into_iter().map(|o| vec![o]).collect() };
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for batch in batches {
        let request = ApplyRequest {
            objects: batch.iter().map(|o| serde_json::to_vec(o).unwrap_or_default()).collect(),
            dry_run: args.dry_run,
            field_manager: args.field_manager.clone(),
        };
        let response = match client.apply_atomic(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let what = if batch.len() == 1 { describe(&batch[0]) } else { format!("{} objects", batch.len()) };
                bail!("applying {what} failed, nothing was written: {}", status.message());
            }
        };
        for object in &response.objects {
            let object: Value = serde_json::from_slice(object).unwrap_or(Value::Null);
            println!(
                "{} applied at revision {}{suffix}",
                describe(&object),
                object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("?")
            );
        }
        if args.atomic {
            println!("{} objects applied atomically at revision {}{suffix}", response.objects.len(), response.revision);
        }
    }
    Ok(())
}
