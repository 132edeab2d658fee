//! A strict reader of the Prometheus text exposition format (0.0.4), written apart from
//! keel's encoder so that a test checks the format against the specification rather than
//! against the code that writes it: every sample line is `name{labels} value`, every family
//! has exactly one `# TYPE` that comes before its samples, a family's samples are contiguous,
//! and a histogram's buckets are cumulative with `+Inf` equal to `_count`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name to its `# TYPE`.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of the samples of `name` whose labels include `labels`; `None` if there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// [`Exposition::sum`], 0 when no sample matches (a counter not yet incremented).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels).unwrap_or(0.0)
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// Parses `{a="1",b="x\"y"}` at the start of `rest`; returns the labels and what follows.
fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    if chars.next().map(|(_, c)| c) != Some('{') {
        return Err("labels do not start with {".into());
    }
    loop {
        let start = match chars.peek() {
            Some((_, '}')) => {
                let (i, _) = chars.next().ok_or("unterminated labels")?;
                return Ok((labels, &rest[i + 1..]));
            }
            Some((i, _)) => *i,
            None => return Err("unterminated labels".into()),
        };
        let mut end = start;
        while let Some((i, c)) = chars.peek().copied() {
            if c == '=' {
                end = i;
                break;
            }
            chars.next();
        }
        let name = &rest[start..end];
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        if chars.next().map(|(_, c)| c) != Some('=') || chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} is not followed by =\""));
        }
        let mut value = String::new();
        loop {
            match chars.next().map(|(_, c)| c) {
                Some('\\') => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?} in label {name}")),
                },
                Some('"') => break,
                Some('\n') | None => return Err(format!("unterminated value of label {name}")),
                Some(c) => value.push(c),
            }
        }
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        match chars.peek().map(|(_, c)| *c) {
            Some(',') => {
                chars.next();
            }
            Some('}') => {}
            other => return Err(format!("expected , or }} after label {name}, found {other:?}")),
        }
    }
}

/// Parses and checks an exposition; the error names the offending line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut with_samples: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            if words.first() == Some(&"TYPE") {
                let (Some(name), Some(kind)) = (words.get(1), words.get(2)) else {
                    return Err(at("a TYPE line needs a name and a type".into()));
                };
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                    return Err(at(format!("unknown type {kind}")));
                }
                if with_samples.contains(*name) {
                    return Err(at(format!("TYPE of {name} after its samples")));
                }
                if exposition.types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(at(format!("second TYPE for {name}")));
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.strip_prefix(' ').ok_or_else(|| at("no space before the value".into()))?.split(' ');
        let value = fields.next().and_then(parse_value).ok_or_else(|| at("bad value".into()))?;
        if let Some(timestamp) = fields.next()
            && timestamp.parse::<i64>().is_err()
        {
            return Err(at("bad timestamp".into()));
        }
        if fields.next().is_some() {
            return Err(at("more than a value and a timestamp".into()));
        }
        let family = if exposition.types.contains_key(name) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|f| matches!(exposition.types.get(*f).map(String::as_str), Some("histogram" | "summary")))
                .map(String::from)
                .ok_or_else(|| at(format!("{name} has no TYPE before it")))?
        };
        if name.ends_with("_bucket") && exposition.types[&family] == "histogram" && !labels.contains_key("le") {
            return Err(at("a bucket without le".into()));
        }
        if current.as_deref() != Some(family.as_str()) {
            if with_samples.contains(&family) {
                return Err(at(format!("the samples of {family} are not together")));
            }
            with_samples.insert(family.clone());
            current = Some(family);
        }
        exposition.samples.push(Sample { name: name.to_string(), labels, value });
    }
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// Buckets ascend in `le` with counts that never drop, and `+Inf` equals `_count`.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (family, _) in exposition.types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket = format!("{family}_bucket");
        let count_name = format!("{family}_count");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exposition.samples.iter().filter(|s| s.name == bucket) {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").and_then(|le| parse_value(&le)).ok_or(format!("{bucket} with a bad le"))?;
            series.entry(labels).or_default().push((le, s.value));
        }
        for (labels, buckets) in series {
            if buckets.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                return Err(format!("{family}{labels:?}: buckets not cumulative in ascending le: {buckets:?}"));
            }
            let inf =
                buckets.last().filter(|b| b.0 == f64::INFINITY).ok_or(format!("{family}{labels:?} has no +Inf"))?;
            let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = exposition
                .samples
                .iter()
                .find(|s| s.name == count_name && s.labels == labels)
                .map(|s| s.value)
                .ok_or(format!("{family}{pairs:?} has no _count"))?;
            if count != inf.1 {
                return Err(format!("{family}{pairs:?}: +Inf bucket {} but _count {count}", inf.1));
            }
        }
    }
    Ok(())
}

/// `GET /metrics` over plain HTTP, as Prometheus scrapes: (status line, content type, body).
pub fn scrape_http(api: &str) -> (String, String, String) {
    super::http_get(api, "/metrics")
}

/// `/metrics` of the member whose API listens on `api`, over plain HTTP, parsed and checked.
pub fn scrape(api: &str) -> Exposition {
    let (status, _, body) = scrape_http(api);
    assert!(status.contains(" 200 "), "GET /metrics on {api}: {status}");
    parse(&body).unwrap_or_else(|e| panic!("/metrics of {api} is not a valid exposition: {e}\n{body}"))
}
