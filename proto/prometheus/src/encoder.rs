//! The Prometheus text exposition format, version 0.0.4: per family a `# HELP` and a
//! `# TYPE` line, then its samples, one per line, as `name{label="value",…} value`.
//! Histograms are written as their `_bucket` (cumulative, with `le`), `_sum` and `_count`
//! samples. Every sample of a family must follow its `# TYPE` line without another family
//! in between, which is why a family is written through one [`Family`] at a time.

use std::fmt::Write as _;

use crate::metric::Histogram;

/// A family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Unsigned(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Unsigned(v as u64)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Signed(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Unsigned(u64::from(v))
    }
}

/// Writes families into one exposition.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
    /// Families written so far: a name written twice would make the exposition invalid.
    /// Kept in debug builds only, where the tests would catch it.
    #[cfg(debug_assertions)]
    written: Vec<&'static str>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Starts family `name`; its samples are written through what this returns, before the
    /// next family starts.
    pub fn family(&mut self, name: &'static str, help: &str, kind: Kind) -> Family<'_> {
        #[cfg(debug_assertions)]
        {
            assert!(!self.written.contains(&name), "metric family {name} written twice");
            self.written.push(name);
        }
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family { out: &mut self.out, name }
    }

    /// The exposition written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'e> {
    out: &'e mut String,
    name: &'static str,
}

impl Family<'_> {
    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        write_sample(self.out, self.name, "", labels, None, value.into());
    }

    /// One histogram: its cumulative buckets, sum and count.
    pub fn histogram(&mut self, labels: &[(&str, &str)], histogram: &Histogram) {
        let counts = histogram.bucket_counts();
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (bound, count) in histogram.bounds().iter().zip(&counts) {
            cumulative += count;
            le.clear();
            write_float(&mut le, *bound);
            write_sample(self.out, self.name, "_bucket", labels, Some(&le), Value::Unsigned(cumulative));
        }
        let total: u64 = counts.iter().sum();
        write_sample(self.out, self.name, "_bucket", labels, Some("+Inf"), Value::Unsigned(total));
        write_sample(self.out, self.name, "_sum", labels, None, Value::Float(histogram.sum_seconds()));
        write_sample(self.out, self.name, "_count", labels, None, Value::Unsigned(total));
    }
}

fn write_sample(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: Value) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (label, value)) in all.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(label);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    if !labels.is_empty() || le.is_some() {
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Unsigned(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Signed(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float(v) => write_float(out, v),
    }
    out.push('\n');
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` spelling where it matters to parsers: the
/// shortest digits that read back as `v`, and `+Inf`, `-Inf`, `NaN`.
fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// In label values a backslash, a double quote and a line feed are escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// In help text a backslash and a line feed are escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counters_and_gauges_are_written_with_help_type_and_labels() {
        let mut e = Encoder::new();
        let mut f = e.family("requests_total", "Requests served.", Kind::Counter);
        f.sample(&[("verb", "GET"), ("code", "200")], 3u64);
        f.sample(&[("verb", "POST"), ("code", "201")], 0u64);
        e.family("up", "Whether it is up.", Kind::Gauge).sample(&[], true);
        e.family("temperature", "Degrees.", Kind::Gauge).sample(&[], -1.5);
        e.family("balance", "Owed.", Kind::Gauge).sample(&[], -7i64);
        assert_eq!(
            e.finish(),
            "# HELP requests_total Requests served.\n\
             # TYPE requests_total counter\n\
             requests_total{verb=\"GET\",code=\"200\"} 3\n\
             requests_total{verb=\"POST\",code=\"201\"} 0\n\
             # HELP up Whether it is up.\n\
             # TYPE up gauge\n\
             up 1\n\
             # HELP temperature Degrees.\n\
             # TYPE temperature gauge\n\
             temperature -1.5\n\
             # HELP balance Owed.\n\
             # TYPE balance gauge\n\
             balance -7\n"
        );
    }

    #[test]
    fn histograms_are_written_cumulatively_with_sum_and_count() {
        static BOUNDS: &[f64] = &[0.005, 0.25, 1.0];
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(3));
        let mut e = Encoder::new();
        e.family("latency_seconds", "Latency.", Kind::Histogram).histogram(&[("op", "put")], &h);
        assert_eq!(
            e.finish(),
            "# HELP latency_seconds Latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{op=\"put\",le=\"0.005\"} 2\n\
             latency_seconds_bucket{op=\"put\",le=\"0.25\"} 2\n\
             latency_seconds_bucket{op=\"put\",le=\"1\"} 3\n\
             latency_seconds_bucket{op=\"put\",le=\"+Inf\"} 4\n\
             latency_seconds_sum{op=\"put\"} 3.503\n\
             latency_seconds_count{op=\"put\"} 4\n"
        );
        let mut e = Encoder::new();
        e.family("bare_seconds", "No labels.", Kind::Histogram).histogram(&[], &Histogram::new(BOUNDS));
        let text = e.finish();
        assert!(text.contains("bare_seconds_bucket{le=\"+Inf\"} 0\n"), "{text}");
        assert!(text.contains("bare_seconds_sum 0\n") && text.contains("bare_seconds_count 0\n"), "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Encoder::new();
        e.family("odd", "Back\\slash and\nnewline.", Kind::Gauge).sample(&[("path", "a\"b\\c\nd")], 1u64);
        assert_eq!(
            e.finish(),
            "# HELP odd Back\\\\slash and\\nnewline.\n# TYPE odd gauge\nodd{path=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn special_floats_are_spelled_as_prometheus_reads_them() {
        let spell = |v: f64| {
            let mut s = String::new();
            write_float(&mut s, v);
            s
        };
        assert_eq!(spell(f64::INFINITY), "+Inf");
        assert_eq!(spell(f64::NEG_INFINITY), "-Inf");
        assert_eq!(spell(f64::NAN), "NaN");
        assert_eq!(spell(2.0), "2");
        assert_eq!(spell(0.001), "0.001");
        assert_eq!(spell(8.192), "8.192");
        assert_eq!(spell(1_700_000_000.25), "1700000000.25");
    }

    #[test]
    #[should_panic(expected = "written twice")]
    #[cfg(debug_assertions)]
    fn a_family_written_twice_is_caught() {
        let mut e = Encoder::new();
        e.family("twice", "Once only.", Kind::Counter).sample(&[], 1u64);
        e.family("twice", "Once only.", Kind::Counter).sample(&[], 1u64);
    }
}
