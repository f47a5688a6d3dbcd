//! The snapshot file: the mirror and its etcd revision on disk, so that a restart while etcd
//! is unreachable can serve the last known state at once.
//!
//! Format: one header line `ruddr-snapshot 1 <crc32 hex> <body length>` and a JSON body. A file
//! whose header, length or checksum does not match is reported and ignored, never trusted.
//! Writes go to a temporary file that is synced and renamed over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::{DomainKey, DomainRecord, Instance, Mirror, ServiceName, Snapshot};
use crate::registry::Status;

const MAGIC: &str = "ruddr-snapshot";
/// How often unchanged but confirmed data is rewritten.
const REFRESH: Duration = Duration::from_secs(30);
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a ruddr snapshot (bad header)")]
    Header,
    #[error("unsupported snapshot version {0}")]
    Version(u32),
    #[error("truncated or padded: header says {want} bytes, body has {got}")]
    Length { want: usize, got: usize },
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("body is not a valid snapshot: {0}")]
    Body(#[from] serde_json::Error),
}

/// The mirror as written to disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct Persisted {
    pub revision: i64,
    pub written_at_unix_ms: u64,
    pub instances: Vec<(ServiceName, Instance)>,
    /// SkyDNS entries (absent in files written before sources existed).
    #[serde(default)]
    pub domains: Vec<(DomainKey, DomainRecord)>,
}

impl Persisted {
    pub fn from_snapshot(s: &Snapshot) -> Self {
        let mut instances: Vec<(ServiceName, Instance)> = s
            .services
            .values()
            .flat_map(|svc| {
                svc.instances
                    .values()
                    .map(|i| (svc.name.clone(), i.clone()))
            })
            .collect();
        instances.sort_by(|a, b| (&a.0, &a.1.id, a.1.source).cmp(&(&b.0, &b.1.id, b.1.source)));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            revision: s.revision,
            written_at_unix_ms: now.as_millis() as u64,
            instances,
            domains: s
                .domains
                .iter()
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
        }
    }

    pub fn written_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.written_at_unix_ms)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data to memory cannot fail.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut out = format!(
            "{MAGIC} {VERSION} {:08x} {}\n",
            crc32fast::hash(&body),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let nl = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(SnapshotError::Header)?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| SnapshotError::Header)?;
        let body = &bytes[nl + 1..];
        let mut parts = header.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err(SnapshotError::Header);
        }
        let version: u32 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(SnapshotError::Header)?;
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        let crc = parts
            .next()
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            .ok_or(SnapshotError::Header)?;
        let len: usize = parts
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or(SnapshotError::Header)?;
        if body.len() != len {
            return Err(SnapshotError::Length {
                want: len,
                got: body.len(),
            });
        }
        if crc32fast::hash(body) != crc {
            return Err(SnapshotError::Checksum);
        }
        Ok(serde_json::from_slice(body)?)
    }
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Persisted>, SnapshotError> {
    match std::fs::read(path) {
        Ok(bytes) => Persisted::decode(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the mirror to `path` whenever it changed, at most once per `min_interval`, and once
/// more at shutdown. Only data confirmed by etcd is written, so an empty mirror at start never
/// replaces a good snapshot.
pub async fn run_writer(
    path: PathBuf,
    min_interval: Duration,
    mirror: Arc<Mirror>,
    status: Arc<Status>,
    shutdown: CancellationToken,
) {
    let mut written = mirror.load().changes;
    let mut last_write: Option<std::time::Instant> = None;
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(min_interval) => false,
        };
        let snapshot = mirror.load_full();
        // Rewrite unchanged data now and then while etcd confirms it, so that the file's time
        // says when the data was last known good (a restart counts staleness from it).
        let confirmed_old = status.is_connected()
            && last_write.is_none_or(|t| t.elapsed() >= REFRESH.max(min_interval));
        let changed = snapshot.changes != written;
        if (changed || confirmed_old) && status.is_synced() && !status.is_from_snapshot() {
            let changes = snapshot.changes;
            let path2 = path.clone();
            let result = tokio::task::spawn_blocking(move || {
                let p = Persisted::from_snapshot(&snapshot);
                write_atomic(&path2, &p.encode()).map(|()| (p.revision, p.instances.len()))
            })
            .await;
            match result {
                Ok(Ok((revision, instances))) => {
                    written = changes;
                    last_write = Some(std::time::Instant::now());
                    debug!(path = %path.display(), revision, instances, "snapshot written");
                }
                Ok(Err(error)) => warn!(path = %path.display(), %error, "cannot write snapshot"),
                Err(error) => warn!(%error, "snapshot writer task failed"),
            }
        }
        if stop {
            info!(path = %path.display(), "snapshot writer stopped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Health, InstanceId, Update};
    use std::collections::BTreeMap;

    fn mirror() -> Mirror {
        let m = Mirror::new();
        let inst = |id: &str, addr: &str| Instance {
            id: InstanceId::new(id).unwrap(),
            address: crate::cache::Address::parse(addr).unwrap(),
            port: Some(80),
            ports: BTreeMap::from([("grpc".into(), 9090)]),
            tags: vec!["v2".into()],
            weight: 7,
            priority: 1,
            health: Health::Warning,
            meta: BTreeMap::from([("az".into(), "a".into())]),
            source: crate::cache::SourceId::NATIVE,
        };
        let web = ServiceName::new("web").unwrap();
        m.apply(
            [
                Update::Put {
                    service: web.clone(),
                    instance: inst("a", "10.0.0.1"),
                },
                Update::Put {
                    service: web,
                    instance: inst("b", "fd00::2"),
                },
            ],
            42,
        );
        m
    }

    #[test]
    fn round_trip() {
        let m = mirror();
        let p = Persisted::from_snapshot(&m.load());
        let back = Persisted::decode(&p.encode()).unwrap();
        assert_eq!(back.revision, 42);
        assert_eq!(back.instances, p.instances);
        let restored = Mirror::new();
        restored.apply(
            [Update::Reset {
                source: None,
                instances: back.instances,
                domains: back.domains,
            }],
            back.revision,
        );
        assert_eq!(
            restored.load().services["web"].instances,
            m.load().services["web"].instances
        );
    }

    #[test]
    fn damaged_files_are_rejected() {
        let bytes = Persisted::from_snapshot(&mirror().load()).encode();
        let truncated = &bytes[..bytes.len() - 10];
        assert!(matches!(
            Persisted::decode(truncated),
            Err(SnapshotError::Length { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0x20;
        assert!(matches!(
            Persisted::decode(&flipped),
            Err(SnapshotError::Checksum)
        ));
        assert!(matches!(
            Persisted::decode(b"garbage"),
            Err(SnapshotError::Header)
        ));
        assert!(matches!(Persisted::decode(b""), Err(SnapshotError::Header)));
        let other =
            String::from_utf8_lossy(&bytes).replacen("ruddr-snapshot 1", "ruddr-snapshot 9", 1);
        assert!(matches!(
            Persisted::decode(other.as_bytes()),
            Err(SnapshotError::Version(9))
        ));
    }

    #[test]
    fn atomic_write_replaces_and_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror.snapshot");
        assert!(load(&path).unwrap().is_none());
        write_atomic(&path, &Persisted::from_snapshot(&mirror().load()).encode()).unwrap();
        write_atomic(&path, &Persisted::from_snapshot(&mirror().load()).encode()).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().instances.len(), 2);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }
}
