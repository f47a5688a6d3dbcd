//! Paged, consistent listing of one prefix: pages of `etcd.list_page_size` keys, every page
//! after the first read at the first page's revision, so a list of any size is one snapshot and
//! a watch can start right after it. Used by the watcher and by `ruddr services`.

use etcd_client::{GetOptions, KeyValue, KvClient};
use tokio_util::task::AbortOnDropHandle;
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
/// The next page is asked for before this one is read, so etcd serves it while ruddr parses
/// (at 1,000,000 keys, reading took a quarter of the list). A page that exceeds the client's
/// message limit is read again in halves (down to one key), so a few large values do not stop
/// the list. If the list's revision is compacted while paging, `each` gets
/// [`Listed::Restart`] and the list starts over at the current revision.
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
    let get = |kv: &KvClient, start: Vec<u8>, limit: i64, revision: Option<i64>| {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if let Some(r) = revision {
            opts = opts.with_revision(r);
        }
        let mut kv = kv.clone();
        // A task of its own, so that it runs while this one reads the previous page; aborted if
        // the list is dropped.
        AbortOnDropHandle::new(tokio::spawn(async move {
            let get = kv.get(start, Some(opts));
            match timeout {
                Some(t) => super::deadline(t, get).await,
                None => get.await,
            }
        }))
    };
    'list: loop {
        let mut start = prefix.as_bytes().to_vec();
        let mut header: Option<ListHeader> = None;
        let mut page = get(kv, start.clone(), limit, None);
        loop {
            let asked = std::time::Instant::now();
            let got = match (&mut page).await {
                Ok(got) => got,
                Err(e) => Err(etcd_client::Error::IoError(std::io::Error::other(format!(
                    "a list page's task failed: {e}"
                )))),
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
                            let revision = header.as_ref().map(|h| h.revision);
                            page = get(kv, start.clone(), limit, revision);
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
            let next = match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key of this one, at the first
                    // page's revision.
                    start = last.key().to_vec();
                    start.push(0);
                    Some(get(kv, start.clone(), limit, Some(h.revision)))
                }
                // More keys said to follow an empty page: a list that ended here would drop
                // them from the mirror.
                None if resp.more() => {
                    return Err(RegistryError::from(etcd_client::Error::IoError(
                        std::io::Error::other("etcd returned an empty list page with more to come"),
                    )))
                }
                _ => None,
            };
            for kv in resp.kvs() {
                each(Listed::Kv(kv));
            }
            match next {
                Some(p) => page = p,
                None => break 'list Ok(*h),
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
