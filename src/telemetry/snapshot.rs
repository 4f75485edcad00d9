//! The figures of a Prometheus text exposition, as values: what the EMF records read. Parsing the exporter's
//! own text (rather than keeping a second set of counters beside it) means EMF and `/metrics` can never
//! disagree, and the exporter stays the only recorder.

use std::collections::BTreeMap;

/// One series: its name and its labels (sorted, so a lookup does not depend on the order they were recorded in).
type Series = (String, Vec<(String, String)>);

/// The value of every series in one rendering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    series: BTreeMap<Series, f64>,
}

impl Snapshot {
    /// Read a text exposition. Comment lines, blank lines and lines that do not parse are skipped: the text
    /// comes from our own exporter, and a figure that cannot be read is reported as absent, never invented.
    pub fn parse(text: &str) -> Snapshot {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Snapshot { series }
    }

    /// One series' value, if it exists.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.series.get(&(name.to_string(), labels)).copied()
    }

    /// One series' value, 0 when it does not exist yet (a counter nothing has counted).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over every series of one name, whatever their labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

/// `name{k="v",...} value` or `name value` (a trailing timestamp, which our exporter never writes, is refused).
fn parse_line(line: &str) -> Option<(Series, f64)> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = match rest.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let mut labels = labels;
    labels.sort();
    Some(((name.to_string(), labels), value))
}

/// The labels after `{`, up to and including `}`; returns them and what follows.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_series_with_and_without_labels() {
        let s = Snapshot::parse(
            "# HELP x_total help\n# TYPE x_total counter\n\
             x_total{a=\"1\",b=\"two words\"} 3\nx_total{a=\"2\",b=\"q\\\"uote\\\\\"} 4.5\n\
             g 0.25\nh_bucket{le=\"+Inf\"} 7\n\nbroken{a=\"1\" 2\nnan_value x\n",
        );
        // Labels match whatever order they are asked in.
        assert_eq!(
            s.get("x_total", &[("b", "two words"), ("a", "1")]),
            Some(3.0)
        );
        assert_eq!(
            s.get("x_total", &[("a", "2"), ("b", "q\"uote\\")]),
            Some(4.5)
        );
        assert_eq!(s.sum("x_total"), 7.5);
        assert_eq!(s.get("g", &[]), Some(0.25));
        assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), Some(7.0));
        assert_eq!(s.get("x_total", &[("a", "3")]), None);
        assert_eq!(s.value("x_total", &[("a", "3")]), 0.0);
        assert_eq!(s.get("broken", &[("a", "1")]), None);
        assert_eq!(s.get("nan_value", &[]), None);
        assert_eq!(s.sum("missing"), 0.0);
    }
}
