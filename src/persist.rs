//! The snapshot file: the mirror and its etcd revision on disk, so that a restart while etcd
//! is unreachable can serve the last known state at once.
//!
//! Format: one header line `ruddr-snapshot <version> <crc32 hex> <body length>` and a body:
//! version 4 (written now) is postcard, a compact binary serde format, with where each
//! source stands in etcd's history (so a restart can resume the watch rather than list);
//! version 3 (read still) is the same without those positions, version 2 (read still) is
//! postcard without instance localities, version 1 (read still) is JSON. A file whose header, length or checksum does not match is reported and ignored,
//! never trusted.
//! Writes stream the published snapshot (structurally shared, so nothing is copied) into a
//! temporary file, fill in the header last, sync and rename it over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::{
    DomainKey, DomainRecord, Instance, InstanceId, KeyOwner, Mirror, ServiceName, Snapshot,
    SourceId,
};
use crate::registry::Status;

const MAGIC: &str = "ruddr-snapshot";
/// How often unchanged but confirmed data is rewritten.
const REFRESH: Duration = Duration::from_secs(30);
/// The version written; [`JSON_VERSION`], [`NO_LOCALITY_VERSION`] and
/// [`NO_POSITIONS_VERSION`] files are still read.
const VERSION: u32 = 4;
/// Postcard, before the file said where each source stands in etcd's history: read as its own
/// type, and a restart from it lists every source.
const NO_POSITIONS_VERSION: u32 = 3;
const JSON_VERSION: u32 = 1;
/// Postcard, before instances had a locality: postcard is not self-describing, so the older
/// shape is read as its own type.
const NO_LOCALITY_VERSION: u32 = 2;

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
    #[error("the file has {size} bytes, above snapshot.max_bytes ({max_bytes})")]
    TooLarge { size: u64, max_bytes: u64 },
    #[error("body is not a valid snapshot: {0}")]
    Body(String),
}

/// The mirror as written to disk.
/// Only read: writes serialize the same shape straight from a snapshot (`View`).
#[derive(Debug, Deserialize)]
pub struct Persisted {
    pub revision: i64,
    pub written_at_unix_ms: u64,
    pub instances: Vec<(ServiceName, Instance)>,
    /// SkyDNS entries (absent in files written before sources existed).
    #[serde(default)]
    pub domains: Vec<(DomainKey, DomainRecord)>,
    /// The etcd cluster the revisions below belong to (0: unknown, list every source).
    #[serde(default)]
    pub cluster_id: u64,
    /// Per source, the fingerprint of its settings and the last revision whose changes the
    /// file holds (absent, or another fingerprint: list the source).
    #[serde(default)]
    pub positions: Vec<(SourceId, u32, i64)>,
    /// The instance ids each multi-instance key (go-micro) gave, so that a later change of
    /// the key replaces exactly those.
    #[serde(default)]
    pub owned: Vec<(KeyOwner, Vec<InstanceId>)>,
}

impl Persisted {
    pub fn written_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.written_at_unix_ms)
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
        if ![
            VERSION,
            JSON_VERSION,
            NO_LOCALITY_VERSION,
            NO_POSITIONS_VERSION,
        ]
        .contains(&version)
        {
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
        let body_error = |e: &dyn std::fmt::Display| SnapshotError::Body(e.to_string());
        if version == JSON_VERSION {
            return serde_json::from_slice(body).map_err(|e| body_error(&e));
        }
        if version == NO_LOCALITY_VERSION {
            let old: PersistedV2 = postcard::from_bytes(body).map_err(|e| body_error(&e))?;
            return Ok(old.into());
        }
        if version == NO_POSITIONS_VERSION {
            let old: PersistedV3 = postcard::from_bytes(body).map_err(|e| body_error(&e))?;
            return Ok(Persisted {
                revision: old.revision,
                written_at_unix_ms: old.written_at_unix_ms,
                instances: old.instances,
                domains: old.domains,
                cluster_id: 0,
                positions: Vec::new(),
                owned: Vec::new(),
            });
        }
        postcard::from_bytes(body).map_err(|e| body_error(&e))
    }
}

/// A version 3 file: [`Persisted`] without the positions and the key owners.
#[derive(Deserialize)]
struct PersistedV3 {
    revision: i64,
    written_at_unix_ms: u64,
    instances: Vec<(ServiceName, Instance)>,
    domains: Vec<(DomainKey, DomainRecord)>,
}

/// A version 2 file: [`Persisted`] with instances that have no locality.
#[derive(Deserialize)]
struct PersistedV2 {
    revision: i64,
    written_at_unix_ms: u64,
    instances: Vec<(ServiceName, InstanceV2)>,
    domains: Vec<(DomainKey, DomainRecord)>,
}

/// [`Instance`] as version 2 wrote it (the same fields in the same order, less `locality`).
#[derive(Deserialize)]
struct InstanceV2 {
    id: crate::cache::InstanceId,
    address: crate::cache::Address,
    port: Option<u16>,
    // Read without reserving the length the file claims (see `bounded_map`).
    #[serde(deserialize_with = "crate::cache::bounded_map")]
    ports: crate::cache::Ports,
    tags: Vec<String>,
    weight: u16,
    priority: u16,
    health: crate::cache::Health,
    meta: crate::cache::Meta,
    source: crate::cache::SourceId,
}

impl From<PersistedV2> for Persisted {
    fn from(old: PersistedV2) -> Self {
        let instances = old
            .instances
            .into_iter()
            .map(|(svc, i)| {
                let instance = Instance {
                    id: i.id,
                    address: i.address,
                    port: i.port,
                    ports: i.ports,
                    tags: i.tags,
                    weight: i.weight,
                    priority: i.priority,
                    health: i.health,
                    meta: i.meta,
                    source: i.source,
                    locality: None,
                };
                (svc, instance)
            })
            .collect();
        Persisted {
            revision: old.revision,
            written_at_unix_ms: old.written_at_unix_ms,
            instances,
            domains: old.domains,
            cluster_id: 0,
            positions: Vec::new(),
            owned: Vec::new(),
        }
    }
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none yet. A file larger than
/// `max_bytes` is refused before it is read.
pub fn load(path: &Path, max_bytes: u64) -> Result<Option<Persisted>, SnapshotError> {
    let read_err = |source| SnapshotError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let size = file.metadata().map_err(read_err)?.len();
    if size > max_bytes {
        return Err(SnapshotError::TooLarge { size, max_bytes });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` bounds the read even if the file grows meanwhile.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, max_bytes.saturating_add(1)),
        &mut bytes,
    )
    .map_err(read_err)?;
    if bytes.len() as u64 > max_bytes {
        return Err(SnapshotError::TooLarge {
            size: bytes.len() as u64,
            max_bytes,
        });
    }
    Persisted::decode(&bytes).map(Some)
}

/// What a write produced.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub revision: i64,
    pub instances: usize,
    pub bytes: u64,
}

/// The header line, fixed width (the length zero-padded), so it can be written last over a
/// placeholder of the same size.
fn header(crc: u32, len: u64) -> String {
    format!("{MAGIC} {VERSION} {crc:08x} {len:020}\n")
}

/// Writes `snapshot` to `path` atomically: streamed into a temp file in the same directory,
/// header filled in, fsync, rename, fsync the directory. A crash leaves either the old file or
/// the new one, never a mix.
pub fn write(path: &Path, snapshot: &Snapshot) -> std::io::Result<Written> {
    use std::io::{Seek, SeekFrom};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let placeholder = header(0, 0);
    tmp.as_file_mut().write_all(placeholder.as_bytes())?;
    // Buffered before the checksum: the encoder writes field by field, and hashing megabyte
    // chunks instead makes the write several times faster.
    let mut body = std::io::BufWriter::with_capacity(
        1 << 20,
        Hashing {
            inner: tmp.as_file_mut(),
            crc: crc32fast::Hasher::new(),
            len: 0,
        },
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let view = View {
        revision: snapshot.revision,
        written_at_unix_ms: now.as_millis() as u64,
        instances: Instances(snapshot),
        domains: Domains(snapshot),
        cluster_id: snapshot.positions.cluster_id,
        positions: &snapshot.positions.revisions,
        owned: Owned(snapshot),
    };
    postcard::to_io(&view, &mut body).map_err(std::io::Error::other)?;
    let hashed = body.into_inner().map_err(|e| e.into_error())?;
    let (crc, len) = (hashed.crc.finalize(), hashed.len);
    let file = tmp.as_file_mut();
    file.seek(SeekFrom::Start(0))?;
    file.write_all(header(crc, len).as_bytes())?;
    file.sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Written {
        revision: snapshot.revision,
        instances: snapshot.instance_count(),
        bytes: placeholder.len() as u64 + len,
    })
}

/// A writer that checksums and counts what goes through it.
struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// [`Persisted`]'s shape, serialized straight from a snapshot.
#[derive(Serialize)]
struct View<'a> {
    revision: i64,
    written_at_unix_ms: u64,
    instances: Instances<'a>,
    domains: Domains<'a>,
    cluster_id: u64,
    positions: &'a [(SourceId, u32, i64)],
    owned: Owned<'a>,
}

/// Every multi-instance key with the ids it gave.
struct Owned<'a>(&'a Snapshot);

impl Serialize for Owned<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.owned_keys())
    }
}

/// Every instance as `(service, instance)`, in no particular order (sorting a million names
/// for every write would cost more than writing them).
struct Instances<'a>(&'a Snapshot);

impl Serialize for Instances<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length first: postcard (like most binary formats) needs it up front.
        let mut seq = s.serialize_seq(Some(self.0.instance_count()))?;
        for svc in self.0.services.values() {
            for i in svc.instances.values() {
                seq.serialize_element(&(&svc.name, i))?;
            }
        }
        seq.end()
    }
}

struct Domains<'a>(&'a Snapshot);

impl Serialize for Domains<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.domains.len()))?;
        for entry in self.0.domains.iter() {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

/// Writes the mirror to `path` whenever it changed, and once more at shutdown. Only data
/// confirmed by etcd is written, so an empty mirror at start never replaces a good snapshot.
///
/// Writes run on a blocking thread from the published snapshot, off the query path and the
/// watch. At most one write per `min_interval`, and never more often than every
/// [`WRITE_SHARE_INVERSE`] times the last write took: a large registry under churn spends at
/// most about a twentieth of a core on snapshots, however small `min_interval` is.
pub async fn run_writer(
    path: PathBuf,
    min_interval: Duration,
    mirror: Arc<Mirror>,
    status: Arc<Status>,
    shutdown: CancellationToken,
) {
    let mut written = mirror.load().changes;
    let mut last_write: Option<std::time::Instant> = None;
    let mut interval = min_interval;
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        let snapshot = mirror.load_full();
        // Rewrite unchanged data now and then while etcd confirms it, so that the file's time
        // says when the data was last known good (a restart counts staleness from it).
        let confirmed_old = status.is_connected()
            && last_write.is_none_or(|t| t.elapsed() >= REFRESH.max(interval));
        let changed = snapshot.changes != written;
        if (changed || confirmed_old) && status.is_synced() && !status.is_from_snapshot() {
            let changes = snapshot.changes;
            let path2 = path.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                let written = write(&path2, &snapshot);
                // What the churn since the last write freed (old snapshots' copies of changed
                // services), handed back while this thread is off the query path anyway.
                drop(snapshot);
                crate::memory::trim();
                written
            })
            .await;
            let took = started.elapsed();
            match result {
                Ok(Ok(w)) => {
                    written = changes;
                    last_write = Some(std::time::Instant::now());
                    interval = min_interval.max(took * WRITE_SHARE_INVERSE);
                    debug!(
                        path = %path.display(),
                        revision = w.revision,
                        instances = w.instances,
                        bytes = w.bytes,
                        ?took,
                        next_in = ?interval,
                        "snapshot written",
                    );
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

/// The writer waits at least this many times as long as its last write took.
pub const WRITE_SHARE_INVERSE: u32 = 20;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::{Health, InstanceId, Update};

    /// A file of format `version` around `body`, with a header that matches it.
    pub(crate) fn seal(version: u32, body: &[u8]) -> Vec<u8> {
        let mut file = format!(
            "{MAGIC} {version} {:08x} {}\n",
            crc32fast::hash(body),
            body.len()
        )
        .into_bytes();
        file.extend_from_slice(body);
        file
    }

    fn mirror() -> Mirror {
        let m = Mirror::new();
        let inst = |id: &str, addr: &str| Instance {
            id: InstanceId::new(id).unwrap(),
            address: crate::cache::Address::parse(addr).unwrap(),
            port: Some(80),
            ports: [("grpc".to_string(), 9090)].into_iter().collect(),
            tags: vec!["v2".into()],
            weight: 7,
            priority: 1,
            health: Health::Warning,
            meta: [("az".to_string(), "a".to_string())].into_iter().collect(),
            source: crate::cache::SourceId::NATIVE,
            locality: Some("eu-1a".into()),
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

    fn write_to_vec(m: &Mirror) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror.snapshot");
        write(&path, &m.load()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn version_1_json_files_are_still_read() {
        let body = br#"{"revision":7,"written_at_unix_ms":1000,"instances":[["web",{"id":"a","address":"10.0.0.1","port":80,"ports":{},"tags":[],"weight":1,"priority":0,"health":"passing","meta":{"az":"b"}}]]}"#;
        let file = seal(1, body);
        let p = Persisted::decode(&file).unwrap();
        assert_eq!(p.revision, 7);
        assert_eq!(p.instances[0].1.meta.get("az"), Some("b"));
        assert!(p.domains.is_empty());
    }

    #[test]
    fn version_2_files_without_localities_are_still_read() {
        #[derive(Serialize)]
        struct V2<'a> {
            revision: i64,
            written_at_unix_ms: u64,
            instances: Vec<(&'a str, V2Instance<'a>)>,
            domains: Vec<(DomainKey, DomainRecord)>,
        }
        #[derive(Serialize)]
        struct V2Instance<'a> {
            id: &'a str,
            address: crate::cache::Address,
            port: Option<u16>,
            ports: crate::cache::Ports,
            tags: Vec<String>,
            weight: u16,
            priority: u16,
            health: Health,
            meta: crate::cache::Meta,
            source: crate::cache::SourceId,
        }
        let v2 = V2 {
            revision: 5,
            written_at_unix_ms: 1000,
            instances: vec![(
                "web",
                V2Instance {
                    id: "a",
                    address: crate::cache::Address::parse("10.0.0.1").unwrap(),
                    port: Some(80),
                    ports: Default::default(),
                    tags: vec!["t".into()],
                    weight: 2,
                    priority: 3,
                    health: Health::Warning,
                    meta: [("k".to_string(), "v".to_string())].into_iter().collect(),
                    source: crate::cache::SourceId(4),
                },
            )],
            domains: vec![],
        };
        let body = postcard::to_allocvec(&v2).unwrap();
        let file = seal(2, &body);
        let p = Persisted::decode(&file).unwrap();
        let (svc, i) = &p.instances[0];
        assert_eq!(svc.as_str(), "web");
        assert_eq!((i.weight, i.priority, i.source.0), (2, 3, 4));
        assert_eq!(i.meta.get("k"), Some("v"));
        assert_eq!(i.locality, None);
    }

    #[test]
    fn round_trip() {
        let m = mirror();
        let record = crate::cache::DomainRecord {
            host: Some(crate::cache::Address::parse("db.example").unwrap()),
            port: Some(5432),
            priority: 10,
            weight: 0,
            text: Some("t".into()),
            ttl: Some(60),
            target_strip: 1,
        };
        let key = (crate::cache::SourceId(9), "local/skydns/db".to_string());
        m.apply(
            [Update::DomainPut {
                key: key.clone(),
                record: record.clone(),
            }],
            42,
        );
        let (_dir, path, _) = write_to_vec(&m);
        let back = load(&path, u64::MAX).unwrap().unwrap();
        assert_eq!(back.revision, 42);
        assert_eq!(back.instances.len(), 2);
        let mut ids: Vec<&str> = back.instances.iter().map(|(_, i)| i.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        assert!(back
            .instances
            .iter()
            .all(|(_, i)| i.locality.as_deref() == Some("eu-1a")));
        assert_eq!(back.domains, vec![(key, record)]);
        let restored = Mirror::new();
        restored.apply(
            [Update::Reset {
                source: None,
                instances: back.instances,
                domains: back.domains,
                keep: Vec::new(),
            }],
            back.revision,
        );
        assert_eq!(
            restored.load().service("web").unwrap().instances,
            m.load().service("web").unwrap().instances
        );
    }

    #[test]
    fn positions_and_key_owners_round_trip_and_version_3_files_have_none() {
        let m = mirror();
        let web = ServiceName::new("web").unwrap();
        let id = |s: &str| InstanceId::new(s).unwrap();
        let micro = crate::cache::SourceId(5);
        let node = |name: &str| Instance {
            source: micro,
            ..Instance::for_test(name, "10.0.0.9", Some(8080))
        };
        m.apply(
            [
                Update::Replace {
                    service: web.clone(),
                    source: micro,
                    key: id("k1"),
                    instances: vec![node("n1"), node("n2")],
                },
                Update::Position {
                    source: crate::cache::SourceId::NATIVE,
                    fingerprint: 1,
                    revision: 40,
                    cluster_id: 77,
                },
                Update::Position {
                    source: micro,
                    fingerprint: 2,
                    revision: 42,
                    cluster_id: 77,
                },
            ],
            42,
        );
        let (_dir, path, bytes) = write_to_vec(&m);
        let back = load(&path, u64::MAX).unwrap().unwrap();
        assert_eq!(back.cluster_id, 77);
        assert_eq!(
            back.positions,
            [(crate::cache::SourceId::NATIVE, 1, 40), (micro, 2, 42)]
        );
        assert_eq!(
            back.owned,
            [((micro, web.clone(), id("k1")), vec![id("n1"), id("n2")])]
        );
        // Another cluster's position forgets the old cluster's.
        m.apply(
            [Update::Position {
                source: micro,
                fingerprint: 2,
                revision: 3,
                cluster_id: 78,
            }],
            3,
        );
        assert_eq!(m.load().positions.revisions, [(micro, 2, 3)]);
        assert_eq!(m.load().positions.of(micro, 2), Some(3));
        assert_eq!(m.load().positions.of(micro, 9), None, "other settings");
        // A re-list of a source (or its removal) forgets its position until the list's own.
        m.apply(
            [Update::Reset {
                source: Some(micro),
                instances: Vec::new(),
                domains: Vec::new(),
                keep: Vec::new(),
            }],
            4,
        );
        assert!(m.load().positions.revisions.is_empty());

        // The same body without the last three fields, as version 3 wrote it.
        let v4 = &bytes[bytes.iter().position(|b| *b == b'\n').unwrap() + 1..];
        let tail = postcard::to_allocvec(&(
            77u64,
            vec![
                (crate::cache::SourceId::NATIVE, 1u32, 40i64),
                (micro, 2, 42),
            ],
            vec![((micro, web, id("k1")), vec![id("n1"), id("n2")])],
        ))
        .unwrap();
        let body = &v4[..v4.len() - tail.len()];
        let file = seal(3, body);
        let old = Persisted::decode(&file).unwrap();
        assert_eq!(old.instances.len(), back.instances.len());
        assert_eq!(
            (old.cluster_id, old.positions.len(), old.owned.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn damaged_files_are_rejected() {
        let (_dir, path, bytes) = write_to_vec(&mirror());
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
        let mut other = bytes.clone();
        other[15] = b'9'; // "ruddr-snapshot 2" -> "ruddr-snapshot 9"
        assert!(matches!(
            Persisted::decode(&other),
            Err(SnapshotError::Version(9))
        ));
        assert!(matches!(
            load(&path, 100),
            Err(SnapshotError::TooLarge { max_bytes: 100, .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_and_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror.snapshot");
        assert!(load(&path, u64::MAX).unwrap().is_none());
        let m = mirror();
        let w = write(&path, &m.load()).unwrap();
        write(&path, &m.load()).unwrap();
        assert_eq!(w.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(load(&path, u64::MAX).unwrap().unwrap().instances.len(), 2);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    /// How long writing and reading a 1,000,000-instance snapshot takes (a figure for the
    /// README, not a timed assertion):
    /// `cargo test --release --lib snapshot_of_a_million -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn snapshot_of_a_million() {
        let m = Mirror::new();
        let updates = (0..1_000_000u32).map(|n| {
            let (svc, id) = (n / 5, n % 5);
            let mut i = Instance {
                id: InstanceId::new(&format!("i{id}")).unwrap(),
                address: crate::cache::Address::Ip(std::net::IpAddr::from(
                    (0x0a00_0000 + n).to_be_bytes(),
                )),
                port: Some(8080),
                ports: Default::default(),
                tags: vec![],
                weight: 1,
                priority: 0,
                health: Health::Passing,
                meta: [("pad".to_string(), "x".repeat(90))].into_iter().collect(),
                source: crate::cache::SourceId::NATIVE,
                locality: None,
            };
            i.port = Some(8080 + id as u16);
            Update::Put {
                service: ServiceName::new(&format!("svc{svc}")).unwrap(),
                instance: i,
            }
        });
        m.apply(updates, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.snapshot");
        let t = std::time::Instant::now();
        let w = write(&path, &m.load()).unwrap();
        eprintln!("write: {:?}, {} bytes", t.elapsed(), w.bytes);
        let t = std::time::Instant::now();
        let p = load(&path, u64::MAX).unwrap().unwrap();
        eprintln!("read: {:?}, {} instances", t.elapsed(), p.instances.len());
    }
}
