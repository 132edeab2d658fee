//! Node pressure, measured against hard thresholds as kubelet's eviction manager measures it:
//! `memory.available` (the kernel's MemAvailable), `nodefs.available` and
//! `nodefs.inodesFree` (the filesystem under the agent's data directory) and `pid.available`
//! (pid_max less the processes running). kubelet's defaults apply unless `--eviction-hard`
//! says otherwise. A signal under its threshold turns the node's MemoryPressure, DiskPressure
//! or PIDPressure condition True, which the node lifecycle controller turns into a NoSchedule
//! taint. keel does not evict pods under pressure yet.

use std::path::Path;

/// A threshold: an absolute amount (bytes, inodes or processes) or a share of the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Amount(u64),
    Percent(f64),
}

impl Threshold {
    fn crossed(self, available: u64, total: u64) -> bool {
        match self {
            Threshold::Amount(amount) => available < amount,
            Threshold::Percent(p) => total > 0 && (available as f64) < total as f64 * p / 100.0,
        }
    }
}

/// `--eviction-hard`: the signals kubelet knows, with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub memory_available: Threshold,
    pub nodefs_available: Threshold,
    pub nodefs_inodes_free: Threshold,
    pub pid_available: Threshold,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            memory_available: Threshold::Amount(100 * 1024 * 1024),
            nodefs_available: Threshold::Percent(10.0),
            nodefs_inodes_free: Threshold::Percent(5.0),
            // kubelet sets none by default; a node this close to pid_max cannot start pods.
            pid_available: Threshold::Percent(5.0),
        }
    }
}

fn parse_amount(text: &str) -> Result<u64, String> {
    let suffixes: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, unit) = suffixes.iter().find_map(|(s, m)| text.strip_suffix(s).map(|n| (n, *m))).unwrap_or((text, 1));
    number.trim().parse::<u64>().map(|n| n.saturating_mul(unit)).map_err(|_| format!("{text:?} is not an amount"))
}

impl Thresholds {
    /// Parses kubelet's syntax, `memory.available<100Mi,nodefs.available<10%`; signals not
    /// named keep their defaults.
    pub fn parse(spec: &str) -> Result<Thresholds, String> {
        let mut out = Thresholds::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| format!("{part:?}: expected signal<threshold"))?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 = p.parse().map_err(|_| format!("{part:?}: {value:?} is not a percentage"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("{part:?}: a percentage is between 0 and 100"));
                    }
                    Threshold::Percent(p)
                }
                None => Threshold::Amount(parse_amount(value).map_err(|e| format!("{part:?}: {e}"))?),
            };
            match signal.trim() {
                "memory.available" => out.memory_available = threshold,
                "nodefs.available" => out.nodefs_available = threshold,
                "nodefs.inodesFree" => out.nodefs_inodes_free = threshold,
                "pid.available" => out.pid_available = threshold,
                other => {
                    return Err(format!(
                        "unknown eviction signal {other:?} (memory.available, nodefs.available, nodefs.inodesFree, pid.available)"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// What is under pressure, with the signal that says so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: Option<String>,
    pub disk: Option<String>,
    pub pid: Option<String>,
}

/// What the machine has left now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    pub memory_available: u64,
    pub memory_total: u64,
    pub fs_available: u64,
    pub fs_total: u64,
    pub inodes_free: u64,
    pub inodes_total: u64,
    pub pids_running: u64,
    pub pid_max: u64,
}

impl Signals {
    /// Reads this machine; a signal that cannot be read counts as plenty.
    pub fn measure(root: &Path) -> Signals {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| -> u64 {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |v| v * 1024)
        };
        let mut signals =
            Signals { memory_available: kib("MemAvailable:"), memory_total: kib("MemTotal:"), ..Signals::default() };
        if let Ok(fs) = nix::sys::statvfs::statvfs(root) {
            let block = fs.fragment_size();
            signals.fs_available = fs.blocks_available() * block;
            signals.fs_total = fs.blocks() * block;
            signals.inodes_free = fs.files_available();
            signals.inodes_total = fs.files();
        }
        signals.pid_max =
            std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        signals.pids_running = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count()
                    as u64
            })
            .unwrap_or(0);
        signals
    }

    pub fn pressure(&self, thresholds: &Thresholds) -> Pressure {
        let mib = |b: u64| b / (1024 * 1024);
        let mut pressure = Pressure::default();
        if self.memory_total > 0 && thresholds.memory_available.crossed(self.memory_available, self.memory_total) {
            pressure.memory = Some(format!("memory.available is {}Mi", mib(self.memory_available)));
        }
        if self.fs_total > 0 && thresholds.nodefs_available.crossed(self.fs_available, self.fs_total) {
            pressure.disk =
                Some(format!("nodefs.available is {}Mi of {}Mi", mib(self.fs_available), mib(self.fs_total)));
        } else if self.inodes_total > 0 && thresholds.nodefs_inodes_free.crossed(self.inodes_free, self.inodes_total) {
            pressure.disk = Some(format!("nodefs.inodesFree is {} of {}", self.inodes_free, self.inodes_total));
        }
        let pids_available = self.pid_max.saturating_sub(self.pids_running);
        if self.pid_max > 0 && thresholds.pid_available.crossed(pids_available, self.pid_max) {
            pressure.pid = Some(format!("pid.available is {pids_available} of {}", self.pid_max));
        }
        pressure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plenty() -> Signals {
        Signals {
            memory_available: 8 << 30,
            memory_total: 16 << 30,
            fs_available: 50 << 30,
            fs_total: 100 << 30,
            inodes_free: 900,
            inodes_total: 1000,
            pids_running: 200,
            pid_max: 32768,
        }
    }

    #[test]
    fn defaults_are_kubelets() {
        let t = Thresholds::default();
        assert_eq!(t.memory_available, Threshold::Amount(100 << 20));
        assert_eq!(t.nodefs_available, Threshold::Percent(10.0));
        assert_eq!(Thresholds::parse("").unwrap(), t);
    }

    #[test]
    fn each_signal_turns_its_condition() {
        let t = Thresholds::default();
        assert_eq!(plenty().pressure(&t), Pressure::default());
        let low_memory = Signals { memory_available: 50 << 20, ..plenty() };
        assert!(low_memory.pressure(&t).memory.unwrap().contains("50Mi"));
        let full_disk = Signals { fs_available: 5 << 30, ..plenty() };
        assert!(full_disk.pressure(&t).disk.is_some());
        let no_inodes = Signals { inodes_free: 10, ..plenty() };
        assert!(no_inodes.pressure(&t).disk.unwrap().contains("inodesFree"));
        let many_processes = Signals { pids_running: 32000, ..plenty() };
        assert!(many_processes.pressure(&t).pid.is_some());
    }

    #[test]
    fn eviction_hard_parses_kubelets_syntax() {
        let t = Thresholds::parse("memory.available<1Gi, nodefs.available<20%,pid.available<1000").unwrap();
        assert_eq!(t.memory_available, Threshold::Amount(1 << 30));
        assert_eq!(t.nodefs_available, Threshold::Percent(20.0));
        assert_eq!(t.pid_available, Threshold::Amount(1000));
        assert_eq!(t.nodefs_inodes_free, Threshold::Percent(5.0));
        assert!(Thresholds::parse("memory.available=1Gi").is_err());
        assert!(Thresholds::parse("cpu.available<1").is_err());
        assert!(Thresholds::parse("nodefs.available<120%").is_err());
        assert!(Thresholds::parse("memory.available<lots").is_err());
    }

    #[test]
    fn this_machine_can_be_measured() {
        let s = Signals::measure(Path::new("/"));
        assert!(s.memory_total > 0 && s.fs_total > 0 && s.pid_max > 0 && s.pids_running > 0, "{s:?}");
    }
}
