//! The real `kubectl` (v1.32, as installed on the machine), pointed at one member.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
    pub dir: PathBuf,
}

impl Kubectl {
    pub fn new(dir: &Path, api: &str) -> Kubectl {
        let kubeconfig = dir.join("kubeconfig");
        let output = Command::new(super::processes::keel_binary())
            .args(["kubeconfig", "--server", &format!("http://{api}")])
            .output()
            .expect("run keel kubeconfig");
        assert!(output.status.success(), "keel kubeconfig: {}", String::from_utf8_lossy(&output.stderr));
        std::fs::write(&kubeconfig, &output.stdout).expect("write kubeconfig");
        Kubectl { kubeconfig, cache: dir.join("kube-cache"), dir: dir.to_path_buf() }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        // Our flags before the caller's, so a caller's `-- command` stays last.
        command
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=20s")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl. A read the cluster could not confirm as linearizable (a loaded machine
    /// can leave a member briefly unsure of its leadership: 503, nothing was done) is asked
    /// again, as a client would, a few times.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut attempt = 0;
        loop {
            let output = self.command(args).output().expect("run kubectl");
            let unsure = String::from_utf8_lossy(&output.stderr).contains("cannot confirm leadership");
            if output.status.success() || !unsure || attempt == 4 {
                return output;
            }
            attempt += 1;
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// Runs kubectl and returns its standard output; panics with both streams on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kubectl {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs kubectl with `-o json` and parses what it prints.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl printed JSON")
    }

    /// Runs kubectl expecting failure; returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "kubectl {} should have failed but printed {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write manifest");
        path.display().to_string()
    }
}
