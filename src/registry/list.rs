//! Paged, consistent listing of one prefix: pages of `etcd.list_page_size` keys, every page
//! after the first read at the first page's revision, so a list of any size is one snapshot and
//! a watch can start right after it. Used by the watcher and by `ruddr services`.

use etcd_client::{GetOptions, KeyValue, KvClient};
use tracing::{debug, warn};

use super::{ErrorKind, RegistryError};

/// How often a list starts over because its revision was compacted while paging, before the
/// error is handed to the caller (which backs off and tries again).
const MAX_RESTARTS: u32 = 5;

/// What a list hands its consumer, in key order.
pub enum Listed<'a> {
    /// Forget what this list handed over so far: it starts over at a newer revision (the one
    /// it was reading was compacted while paging).
    Restart,
    Kv(&'a KeyValue),
}

/// The list's header: the revision all pages were read at, and of which cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListHeader {
    pub revision: i64,
    pub cluster_id: u64,
    pub keys: usize,
    pub pages: usize,
    /// Time spent waiting for etcd's pages (the rest of a list is ruddr reading them).
    pub waited: std::time::Duration,
}

/// The end of the range of keys starting with `prefix` (etcd's `WithPrefix`): the prefix with
/// its last byte below 0xff incremented; `\0` (to the end of the keyspace) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Lists every key under `prefix`, page by page, handing each to `each`. `timeout` bounds each
/// page's request.
///
/// A page that exceeds the client's message limit is read again in halves (down to one key),
/// so a few large values do not stop the list. If the list's revision is compacted while
/// paging, `each` gets [`Listed::Restart`] and the list starts over at the current revision.
pub async fn list(
    kv: &mut KvClient,
    prefix: &str,
    page_size: u32,
    timeout: Option<std::time::Duration>,
    mut each: impl FnMut(Listed<'_>),
) -> Result<ListHeader, RegistryError> {
    let end = prefix_end(prefix.as_bytes());
    let mut restarts = 0;
    let mut limit = i64::from(page_size.max(1));
    'list: loop {
        let mut start = prefix.as_bytes().to_vec();
        let mut header: Option<ListHeader> = None;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if let Some(h) = &header {
                opts = opts.with_revision(h.revision);
            }
            let get = kv.get(start.clone(), Some(opts));
            let asked = std::time::Instant::now();
            let got = match timeout {
                Some(t) => super::deadline(t, get).await,
                None => get.await,
            };
            let waited = asked.elapsed();
            let resp = match got {
                Ok(resp) => resp,
                Err(e) => {
                    let e = RegistryError::from(e);
                    match e.kind() {
                        ErrorKind::TooLarge if limit > 1 => {
                            warn!(
                                %prefix,
                                keys = limit,
                                "a list page exceeds etcd.max_message_bytes; reading smaller pages",
                            );
                            limit = (limit / 2).max(1);
                            continue;
                        }
                        ErrorKind::Compacted if header.is_some() && restarts < MAX_RESTARTS => {
                            restarts += 1;
                            debug!(%prefix, error = %e, "list revision compacted while paging; starting over");
                            each(Listed::Restart);
                            continue 'list;
                        }
                        _ => return Err(e),
                    }
                }
            };
            let h = header.get_or_insert_with(|| ListHeader {
                revision: resp.header().map_or(0, |h| h.revision()),
                cluster_id: resp.header().map_or(0, |h| h.cluster_id()),
                keys: 0,
                pages: 0,
                waited: std::time::Duration::ZERO,
            });
            h.pages += 1;
            h.waited += waited;
            h.keys += resp.kvs().len();
            for kv in resp.kvs() {
                each(Listed::Kv(kv));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key of this one.
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break 'list Ok(*h),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/ruddr/services/"), b"/ruddr/services0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
