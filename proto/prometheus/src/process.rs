//! The `process_*` metrics every Prometheus client library exports, read from `/proc` at
//! each scrape as Go's client does (its `procfs` package). On a system without `/proc`
//! nothing is written.

use std::fs;

use crate::encoder::{Encoder, Kind};

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel's USER_HZ, which is 100 on every
/// architecture keel builds for. Go's `procfs` assumes the same rather than asking sysconf.
const USER_HZ: f64 = 100.0;

/// This process, as `/proc/self` describes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process;

impl crate::Collect for Process {
    fn collect(&self, encoder: &mut Encoder) {
        let Some(stat) = fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)) else {
            return;
        };
        encoder
            .family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", Kind::Counter)
            .sample(&[], (stat.user_ticks + stat.system_ticks) as f64 / USER_HZ);
        let rss = fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_resident_bytes(&s));
        if let Some(rss) = rss {
            encoder
                .family("process_resident_memory_bytes", "Resident memory size in bytes.", Kind::Gauge)
                .sample(&[], rss);
        }
        encoder
            .family("process_virtual_memory_bytes", "Virtual memory size in bytes.", Kind::Gauge)
            .sample(&[], stat.virtual_bytes);
        if let Some(boot) = fs::read_to_string("/proc/stat").ok().and_then(|s| parse_boot_time(&s)) {
            encoder
                .family(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    Kind::Gauge,
                )
                .sample(&[], boot as f64 + stat.start_ticks as f64 / USER_HZ);
        }
        if let Ok(fds) = fs::read_dir("/proc/self/fd") {
            encoder
                .family("process_open_fds", "Number of open file descriptors.", Kind::Gauge)
                .sample(&[], fds.count());
        }
        if let Some(max) = fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_max_fds(&s)) {
            encoder.family("process_max_fds", "Maximum number of open file descriptors.", Kind::Gauge).sample(&[], max);
        }
    }
}

/// What `/proc/<pid>/stat` says that the metrics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub user_ticks: u64,
    pub system_ticks: u64,
    /// Ticks after boot at which the process started.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; field n is at n - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat { user_ticks: field(14)?, system_ticks: field(15)?, start_ticks: field(22)?, virtual_bytes: field(23)? })
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn parse_resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|t| t.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`; none when unlimited.
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis in it, as a thread may be named.
        let stat = "4242 (keel (srv) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 75 0 0 20 0 9 0 \
                    123456 987654321 3000 18446744073709551615 1 1 0 0 0 0 0 4096 17922 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat { user_ticks: 250, system_ticks: 75, start_ticks: 123456, virtual_bytes: 987654321 })
        );
        assert_eq!(parse_stat("4242 (keel) S 1 2"), None);
        assert_eq!(parse_stat("no name at all"), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_read() {
        let status = "Name:\tkeel\nVmPeak:\t  200000 kB\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        assert_eq!(parse_resident_bytes(status), Some(51200 * 1024));
        assert_eq!(parse_resident_bytes("Name:\tkernel-thread\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files\n"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_is_described_on_linux() {
        let mut encoder = Encoder::new();
        crate::Collect::collect(&Process, &mut encoder);
        let text = encoder.finish();
        for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing:\n{text}");
        }
        let start: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("a start time");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        // This test process started moments ago, not at boot and not in the future.
        assert!(start <= now + 1.0 && now - start < 3600.0, "start {start}, now {now}");
    }
}
