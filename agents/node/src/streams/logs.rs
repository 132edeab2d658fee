//! `kubectl logs`: the container's CRI log file, read (and followed) line by line.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_container::ContainerState;
use keel_proto::node::{LogOptions, StreamOpen};
use tokio::io::{AsyncBufReadExt as _, AsyncSeekExt as _, BufReader};

use super::{Control, Frames, Gone, attempts};
use crate::pods::Context;

/// Log bytes in one frame at most.
const FRAME_BYTES: usize = 32 * 1024;
/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How often a followed log's container is checked for having stopped.
const FOLLOW_STATE_CHECK: Duration = Duration::from_secs(1);

fn log_path(ctx: &Context, open: &StreamOpen, attempt: u32) -> PathBuf {
    ctx.pods_root
        .join(format!("{}_{}_{}", open.namespace, open.pod, open.uid))
        .join(&open.container)
        .join(format!("{attempt}.log"))
}

pub(super) async fn logs(
    ctx: &Context,
    open: &StreamOpen,
    options: &LogOptions,
    frames: &mut Frames,
) -> Result<Result<(), String>, Gone> {
    let containers = match attempts(ctx, open).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let Some(current) = containers.last() else {
        return Ok(Err(format!("container {:?} in pod {:?} is waiting to start", open.container, open.pod)));
    };
    let (attempt, follow) = if options.previous {
        match current.attempt.checked_sub(1) {
            Some(previous) => (previous, false),
            None => {
                return Ok(Err(format!(
                    "previous terminated container {:?} in pod {:?} not found",
                    open.container, open.pod
                )));
            }
        }
    } else {
        (current.attempt, options.follow && current.state == ContainerState::Running)
    };
    let path = log_path(ctx, open, attempt);
    let filter = match LineFilter::new(options) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let start = match options.tail_lines {
        Some(lines) if lines >= 0 => {
            let path = path.clone();
            let lines = lines as u64;
            match tokio::task::spawn_blocking(move || tail_offset(&path, lines)).await {
                Ok(Ok(offset)) => offset,
                Ok(Err(e)) => return Ok(Err(e)),
                Err(e) => return Ok(Err(format!("reading the log's tail: {e}"))),
            }
        }
        _ => 0,
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!(
                "container {:?} in pod {:?} has no log (the runtime keeps none for it: {})",
                open.container,
                open.pod,
                path.display()
            )));
        }
        Err(e) => return Ok(Err(format!("opening {}: {e}", path.display()))),
    };
    let mut reader = BufReader::new(file);
    if let Err(e) = reader.seek(SeekFrom::Start(start)).await {
        return Ok(Err(format!("seeking in {}: {e}", path.display())));
    }
    frames.opened().await?;
    let mut out = LogWriter { filter, pending: Vec::new(), line: Vec::new(), written: 0, at_line_start: true };
    let mut last_state_check = tokio::time::Instant::now();
    let mut stopped = !follow;
    loop {
        let read = match reader.read_until(b'\n', &mut out.line).await {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("reading {}: {e}", path.display()))),
        };
        if read > 0 && out.line.ends_with(b"\n") {
            out.take_line();
            if out.limit_reached() {
                break;
            }
            if out.pending.len() >= FRAME_BYTES {
                frames.data(std::mem::take(&mut out.pending)).await?;
            }
            continue;
        }
        // The end of what is written so far (an unfinished line stays in `line`).
        if !out.pending.is_empty() {
            frames.data(std::mem::take(&mut out.pending)).await?;
        }
        if stopped {
            break;
        }
        if last_state_check.elapsed() >= FOLLOW_STATE_CHECK {
            last_state_check = tokio::time::Instant::now();
            // Following ends when the container stops or was replaced; one more read drains
            // what it wrote last.
            let still_running = match attempts(ctx, open).await {
                Ok(now) => now.last().is_some_and(|c| c.attempt == attempt && c.state == ContainerState::Running),
                Err(_) => true,
            };
            if !still_running {
                stopped = true;
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            control = frames.control.recv() => match control {
                Some(Control::Credit(n)) => frames.credit += n,
                Some(Control::Input(_) | Control::InputEnd) => {}
                None => return Err(Gone),
            }
        }
    }
    if !out.pending.is_empty() {
        frames.data(std::mem::take(&mut out.pending)).await?;
    }
    Ok(Ok(()))
}

/// Where the last `lines` lines of a file start.
fn tail_offset(path: &Path, lines: u64) -> Result<u64, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Reported when the file is opened for reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let len = file.metadata().map_err(|e| format!("reading {}: {e}", path.display()))?.len();
    if lines == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = len;
    let mut seen = 0u64;
    while pos > 0 {
        let step = (buf.len() as u64).min(pos);
        pos -= step;
        file.seek(SeekFrom::Start(pos)).map_err(|e| format!("seeking in {}: {e}", path.display()))?;
        file.read_exact(&mut buf[..step as usize]).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for i in (0..step as usize).rev() {
            let at = pos + i as u64;
            // The file's final newline ends its last line rather than starting one.
            if buf[i] == b'\n' && at + 1 != len {
                seen += 1;
                if seen == lines {
                    return Ok(at + 1);
                }
            }
        }
    }
    Ok(0)
}

/// `sinceSeconds`/`sinceTime`, `timestamps` and `limitBytes`, applied line by line.
struct LineFilter {
    since: Option<jiff::Timestamp>,
    timestamps: bool,
    limit_bytes: Option<u64>,
}

impl LineFilter {
    fn new(options: &LogOptions) -> Result<LineFilter, String> {
        let since = if !options.since_time.is_empty() {
            Some(
                options
                    .since_time
                    .parse::<jiff::Timestamp>()
                    .map_err(|e| format!("sinceTime {:?} is not an RFC 3339 time: {e}", options.since_time))?,
            )
        } else {
            options.since_seconds.map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0)))
        };
        Ok(LineFilter {
            since,
            timestamps: options.timestamps,
            limit_bytes: options.limit_bytes.filter(|l| *l > 0).map(|l| l as u64),
        })
    }
}

/// Turns CRI log lines (`<RFC 3339 time> <stdout|stderr> <P|F> <text>`) into the log the
/// client sees: partial lines joined, optionally time-stamped.
struct LogWriter {
    filter: LineFilter,
    pending: Vec<u8>,
    line: Vec<u8>,
    written: u64,
    /// Whether the next text begins a line (a timestamp goes before it).
    at_line_start: bool,
}

impl LogWriter {
    fn take_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let Some(entry) = parse_cri_line(&line) else {
            return;
        };
        if let Some(since) = self.filter.since
            && entry.time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            return;
        }
        let mut text = Vec::with_capacity(entry.text.len() + 40);
        if self.filter.timestamps && self.at_line_start {
            text.extend_from_slice(entry.time.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(entry.text);
        if entry.full {
            text.push(b'\n');
        }
        self.at_line_start = entry.full;
        if let Some(limit) = self.filter.limit_bytes {
            let room = limit.saturating_sub(self.written) as usize;
            text.truncate(room);
        }
        self.written += text.len() as u64;
        self.pending.extend_from_slice(&text);
    }

    fn limit_reached(&self) -> bool {
        self.filter.limit_bytes.is_some_and(|l| self.written >= l)
    }
}

struct CriLine<'a> {
    time: &'a str,
    full: bool,
    text: &'a [u8],
}

fn parse_cri_line(line: &[u8]) -> Option<CriLine<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(CriLine { time, full: !tag.starts_with(b"P"), text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(options: LogOptions) -> LogWriter {
        LogWriter {
            filter: LineFilter::new(&options).unwrap(),
            pending: Vec::new(),
            line: Vec::new(),
            written: 0,
            at_line_start: true,
        }
    }

    fn feed(w: &mut LogWriter, lines: &[&str]) -> String {
        for line in lines {
            w.line = format!("{line}\n").into_bytes();
            w.take_line();
        }
        String::from_utf8(std::mem::take(&mut w.pending)).unwrap()
    }

    const LOG: &[&str] = &[
        "2026-11-23T10:00:00.000000001Z stdout F one",
        "2026-11-23T10:00:01.000000001Z stderr P tw",
        "2026-11-23T10:00:01.000000002Z stderr F o",
        "2026-11-23T10:00:02.000000001Z stdout F ",
        "2026-11-23T10:00:03.000000001Z stdout F three",
    ];

    #[test]
    fn partial_lines_join_and_empty_lines_stay() {
        assert_eq!(feed(&mut writer(LogOptions::default()), LOG), "one\ntwo\n\nthree\n");
    }

    #[test]
    fn timestamps_prefix_each_line_once() {
        let out = feed(&mut writer(LogOptions { timestamps: true, ..Default::default() }), &LOG[..3]);
        assert_eq!(out, "2026-11-23T10:00:00.000000001Z one\n2026-11-23T10:00:01.000000001Z two\n");
    }

    #[test]
    fn since_time_drops_older_lines() {
        let options = LogOptions { since_time: "2026-11-23T10:00:02Z".into(), ..Default::default() };
        assert_eq!(feed(&mut writer(options), LOG), "\nthree\n");
    }

    #[test]
    fn limit_bytes_truncates() {
        let mut w = writer(LogOptions { limit_bytes: Some(6), ..Default::default() });
        assert_eq!(feed(&mut w, LOG), "one\ntw");
        assert!(w.limit_reached());
    }

    #[test]
    fn bad_since_time_is_an_error() {
        assert!(LineFilter::new(&LogOptions { since_time: "yesterday".into(), ..Default::default() }).is_err());
    }

    #[test]
    fn tail_offset_counts_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "a\nbb\nccc\n").unwrap();
        assert_eq!(tail_offset(&path, 1).unwrap(), 5);
        assert_eq!(tail_offset(&path, 2).unwrap(), 2);
        assert_eq!(tail_offset(&path, 3).unwrap(), 0);
        assert_eq!(tail_offset(&path, 10).unwrap(), 0);
        assert_eq!(tail_offset(&path, 0).unwrap(), 9);
        // A last line still being written counts as a line.
        std::fs::write(&path, "a\nbb").unwrap();
        assert_eq!(tail_offset(&path, 1).unwrap(), 2);
    }
}
