//! Static zones: every `<zone>.zone` file (RFC 1035 master file) in the zones directory, served
//! authoritatively by hickory's in-memory zone handler through a `Catalog`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name};
use hickory_proto::serialize::txt::Parser;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// A zone file that cannot be served. The message names the file and, when it can be found,
/// the line.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("cannot read zones directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read zone file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("zone file {path}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    #[error("zone file {path}: the file name must be <zone>.zone, e.g. example.internal.zone")]
    Name { path: PathBuf },
}

/// The static zones, ready to answer.
pub struct StaticZones {
    pub catalog: Catalog,
    /// Zone origins, longest first, for matching query names.
    pub origins: Vec<LowerName>,
    /// Record count per zone, for logging.
    pub summary: Vec<(String, usize)>,
}

impl StaticZones {
    pub fn empty() -> Self {
        Self {
            catalog: Catalog::new(),
            origins: Vec::new(),
            summary: Vec::new(),
        }
    }

    /// Whether `name` is in one of the static zones.
    pub fn contains(&self, name: &LowerName) -> bool {
        self.origin_of(name).is_some()
    }

    /// The most specific static zone holding `name`.
    pub fn origin_of(&self, name: &LowerName) -> Option<&LowerName> {
        // Sorted longest first.
        self.origins.iter().find(|o| o.zone_of(name))
    }

    /// Loads every `*.zone` file in `dir`. A missing directory means no zones.
    pub fn load_dir(dir: &Path) -> Result<Self, ZoneError> {
        let mut zones = Self::empty();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(zones),
            Err(source) => {
                return Err(ZoneError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "zone"))
            .collect();
        files.sort();
        for path in files {
            let (origin, handler, count) = load_file(&path)?;
            let lower = LowerName::new(&origin);
            zones.summary.push((origin.to_string(), count));
            zones.catalog.upsert(lower.clone(), vec![handler]);
            zones.origins.push(lower);
        }
        zones
            .origins
            .sort_by_key(|o| std::cmp::Reverse(o.num_labels()));
        Ok(zones)
    }
}

fn load_file(path: &Path) -> Result<(Name, Arc<dyn ZoneHandler>, usize), ZoneError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| ZoneError::Name {
            path: path.to_path_buf(),
        })?;
    let origin = Name::from_ascii(format!("{}.", stem.trim_end_matches('.'))).map_err(|_| {
        ZoneError::Name {
            path: path.to_path_buf(),
        }
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |text: &str| {
        Parser::new(text, Some(path.to_path_buf()), Some(origin.clone()))
            .parse()
            .map_err(|e| e.to_string())
    };
    // parse() returns the $ORIGIN in effect at the end of the file; the zone's origin is the
    // one from the file name.
    let (_, records) = parse(&text).map_err(|reason| ZoneError::Parse {
        path: path.to_path_buf(),
        line: failing_line(&text, &parse),
        reason,
    })?;
    let count = records
        .values()
        .map(|rs| rs.records_without_rrsigs().count())
        .sum();
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .map_err(|reason| ZoneError::Parse {
        path: path.to_path_buf(),
        line: None,
        reason,
    })?;
    Ok((origin, Arc::new(handler), count))
}

/// The parser reports no positions, so find the first line whose inclusion makes the file
/// fail to parse (only cutting where parentheses are balanced, so multi-line records stay
/// whole).
fn failing_line<T>(text: &str, parse: &impl Fn(&str) -> Result<T, String>) -> Option<usize> {
    let mut depth = 0i32;
    let mut end = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        end += line.len();
        let code = line.split(';').next().unwrap_or("");
        depth += code.matches('(').count() as i32 - code.matches(')').count() as i32;
        if depth <= 0 && parse(&text[..end]).is_err() {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 10.0.0.53\nwww IN A 10.0.0.80\n";

    #[test]
    fn loads_zone_files_named_after_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.internal.zone"), GOOD).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a zone").unwrap();
        let z = StaticZones::load_dir(dir.path()).unwrap();
        assert_eq!(z.summary, [("example.internal.".to_string(), 4)]);
        let www = LowerName::from(Name::from_ascii("WWW.example.internal.").unwrap());
        assert!(z.contains(&www));
        assert!(!z.contains(&LowerName::from(Name::from_ascii("example.com.").unwrap())));
        assert!(StaticZones::load_dir(&dir.path().join("missing"))
            .unwrap()
            .origins
            .is_empty());
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = format!("{GOOD}mail IN MX not-a-number mail\nok IN A 10.0.0.1\n");
        let path = dir.path().join("bad.internal.zone");
        std::fs::write(&path, bad).unwrap();
        let err = StaticZones::load_dir(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("bad.internal.zone") && err.contains("line 6"),
            "{err}"
        );
    }
}
