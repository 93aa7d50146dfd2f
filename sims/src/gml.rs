//! A small reader for GML (Graph Modelling Language), the format of the Internet Topology
//! Zoo: nested `key value` pairs where a value is a number, a quoted string or a `[ ... ]`
//! list of pairs. Nodes become meshd nodes and edges peerings; repeated edges and self-loops
//! are dropped; where both ends have `Longitude`/`Latitude`, the latency is the great-circle
//! distance at the speed of light in fibre.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::graph::{Edge, Graph, FIBRE_KM_PER_MS};

/// A GML value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number.
    Num(f64),
    /// A string (quotes removed).
    Str(String),
    /// A nested list of pairs.
    List(Vec<(String, Value)>),
}

/// What can go wrong reading GML.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GmlError {
    /// Bad syntax.
    #[error("GML syntax error at byte {0}: {1}")]
    Syntax(usize, &'static str),
    /// No `graph [ ... ]`.
    #[error("no graph in GML")]
    NoGraph,
    /// An edge names a node that isn't there.
    #[error("edge to unknown node id {0}")]
    UnknownNode(i64),
}

/// Latency of a link with no coordinates at one end.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(1);
/// Shortest latency of a geographic link (two PoPs in one city still have equipment between).
pub const MIN_LATENCY: Duration = Duration::from_micros(100);

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b' ' | b'\t' | b'\r' | b'\n' => self.i += 1,
                b'#' => {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn list(&mut self, top: bool) -> Result<Vec<(String, Value)>, GmlError> {
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.i >= self.s.len() {
                return if top {
                    Ok(out)
                } else {
                    Err(GmlError::Syntax(self.i, "unclosed ["))
                };
            }
            if self.s[self.i] == b']' {
                if top {
                    return Err(GmlError::Syntax(self.i, "unexpected ]"));
                }
                self.i += 1;
                return Ok(out);
            }
            let start = self.i;
            while self.i < self.s.len()
                && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
            {
                self.i += 1;
            }
            if start == self.i {
                return Err(GmlError::Syntax(self.i, "expected a key"));
            }
            let key = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
            self.skip_ws();
            let v = self.value()?;
            out.push((key, v));
        }
    }

    fn value(&mut self) -> Result<Value, GmlError> {
        match self.s.get(self.i) {
            None => Err(GmlError::Syntax(self.i, "expected a value")),
            Some(b'[') => {
                self.i += 1;
                Ok(Value::List(self.list(false)?))
            }
            Some(b'"') => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != b'"' {
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err(GmlError::Syntax(start, "unclosed string"));
                }
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Value::Str(v))
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
                    )
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .map(Value::Num)
                    .ok_or(GmlError::Syntax(start, "bad number"))
            }
        }
    }
}

/// Parses GML text into its top-level pairs.
pub fn parse(text: &str) -> Result<Vec<(String, Value)>, GmlError> {
    Parser {
        s: text.as_bytes(),
        i: 0,
    }
    .list(true)
}

fn get<'a>(pairs: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn num(pairs: &[(String, Value)], key: &str) -> Option<f64> {
    match get(pairs, key)? {
        Value::Num(n) => Some(*n),
        Value::Str(s) => s.parse().ok(),
        Value::List(_) => None,
    }
}

/// Great-circle distance in km between (lon, lat) points in degrees.
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lon1, lat1) = (a.0.to_radians(), a.1.to_radians());
    let (lon2, lat2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// Reads a GML graph. `name` names the topology in outputs.
pub fn read_graph(text: &str, name: &str) -> Result<Graph, GmlError> {
    let top = parse(text)?;
    let Some(Value::List(graph)) = get(&top, "graph") else {
        return Err(GmlError::NoGraph);
    };
    let mut index: HashMap<i64, u32> = HashMap::new();
    let mut coords: Vec<Option<(f64, f64)>> = Vec::new();
    for (k, v) in graph {
        if let (true, Value::List(node)) = (k == "node", v) {
            let id = num(node, "id").ok_or(GmlError::Syntax(0, "node without id"))? as i64;
            let c = num(node, "Longitude").zip(num(node, "Latitude"));
            index.insert(id, coords.len() as u32);
            coords.push(c);
        }
    }
    let mut g = Graph::new(coords.len(), name);
    let mut seen = HashSet::new();
    for (k, v) in graph {
        if let (true, Value::List(edge)) = (k == "edge", v) {
            let s = num(edge, "source").ok_or(GmlError::Syntax(0, "edge without source"))? as i64;
            let t = num(edge, "target").ok_or(GmlError::Syntax(0, "edge without target"))? as i64;
            let a = *index.get(&s).ok_or(GmlError::UnknownNode(s))?;
            let b = *index.get(&t).ok_or(GmlError::UnknownNode(t))?;
            let key = (a.min(b), a.max(b));
            if a == b || !seen.insert(key) {
                continue;
            }
            let latency = match (coords[a as usize], coords[b as usize]) {
                (Some(p), Some(q)) => {
                    Duration::from_secs_f64(great_circle_km(p, q) / FIBRE_KM_PER_MS / 1000.0)
                        .max(MIN_LATENCY)
                }
                _ => DEFAULT_LATENCY,
            };
            g.edges.push(Edge {
                a: key.0,
                b: key.1,
                latency,
            });
        }
    }
    if coords.iter().all(Option::is_some) && !coords.is_empty() {
        g.positions = Some(coords.into_iter().map(|c| c.expect("all some")).collect());
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_gml() {
        let text = r#"graph [
  directed 0 # a comment
  label "two [cities]"
  node [ id 10 label "A" Longitude -74.0 Latitude 40.7 ]
  node [ id 11 label "B" Longitude -87.65 Latitude 41.85
     graphics [ x 1.5 y -2e1 ] ]
  node [ id 12 ]
  edge [ source 10 target 11 LinkLabel "OC-192" ]
  edge [ source 11 target 10 ]
  edge [ source 11 target 12 ]
  edge [ source 12 target 12 ]
]"#;
        let g = read_graph(text, "t").unwrap();
        assert_eq!(g.n, 3);
        assert_eq!(g.edges.len(), 2);
        // New York - Chicago is about 1,140 km: 5.7 ms in fibre.
        let ms = g.edges[0].latency.as_secs_f64() * 1000.0;
        assert!((5.4..6.0).contains(&ms), "{ms}");
        assert_eq!(g.edges[1].latency, DEFAULT_LATENCY);
        assert!(g.positions.is_none());
        assert!(read_graph("graph [ node [ id 1 ]", "x").is_err());
        assert_eq!(
            read_graph("graph [ edge [ source 1 target 2 ] ]", "x").unwrap_err(),
            GmlError::UnknownNode(1)
        );
    }
}
