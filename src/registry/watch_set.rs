//! The decisions of one watch session, without I/O: which etcd watch is which source, when a
//! revision's events are complete, and what a `created` or `canceled` response means. The
//! watcher feeds in etcd's watch responses as plain data ([`Response`]) and carries out the
//! [`Action`] each one returns.

use std::collections::{HashMap, VecDeque};

use super::{EntryError, Source};
use crate::cache::Update;

/// One etcd watch response, as data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response<'a> {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub cancel_reason: &'a str,
    /// Set on a cancel because the start revision was compacted away.
    pub compact_revision: i64,
    /// More of this revision follows in further responses.
    pub fragment: bool,
    pub header: Option<Header>,
    pub events: Vec<Event<'a>>,
}

/// The response header: the store's current revision and the cluster that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub revision: i64,
    pub cluster_id: u64,
}

/// One event of a watch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub is_put: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub mod_revision: i64,
}

/// What the watcher does with a response.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Nothing (a `created` while others are still to come).
    Nothing,
    /// Every watch of the session is created (or refused): the watch is established.
    Established,
    /// The `created` of source `source` (if known) carries a revision below `applied`, the last
    /// one already applied from it: a lagging follower, or an etcd rebuilt with a lower history.
    /// The watcher asks through the leader before concluding; `established` as for
    /// [`Action::Established`].
    Behind {
        source: Option<usize>,
        applied: i64,
        established: bool,
    },
    /// etcd confirms the watch is current (events, a progress notification, the first parts of
    /// a fragmented response): apply `updates` (each with the revision of the event that made
    /// it) and move each listed source's resume point to its revision (both empty until a
    /// response is complete).
    Apply {
        updates: Vec<(i64, Update)>,
        revisions: Vec<(usize, i64)>,
    },
    /// Source `source`'s start revision `wanted` was compacted (oldest kept: `compacted`):
    /// re-list `relist`, that source and every other one whose watch starts below the
    /// compaction.
    Relist {
        source: usize,
        relist: Vec<usize>,
        wanted: i64,
        compacted: i64,
    },
    /// etcd refuses source `source`'s watch (permission denied): leave it out, the others go
    /// on; `established` as for [`Action::Established`].
    Refused {
        source: usize,
        reason: String,
        established: bool,
    },
    /// The history the resume points refer to is gone (another cluster): re-list everything.
    History(String),
    /// etcd canceled a watch for another reason: the session ends.
    Canceled(String),
}

/// Events of one watch whose last fragment has not arrived.
#[derive(Default)]
struct Partial {
    updates: Vec<(i64, Update)>,
    revision: i64,
}

/// The watches of one session, all on one stream.
pub struct WatchSet {
    sources: Vec<Source>,
    /// The revision each source's watch starts at (0: not watched this session).
    starts: Vec<i64>,
    /// Sources whose `created` has not arrived yet, in request order: etcd handles a stream's
    /// create requests in order, so the n-th `created` is the n-th source watched.
    pending: VecDeque<usize>,
    by_watch: HashMap<i64, usize>,
    /// Fragments of a response whose last part has not arrived, per watch id.
    partial: HashMap<i64, Partial>,
    /// The cluster the applied revisions came from.
    cluster_id: Option<u64>,
}

impl WatchSet {
    /// A session over `sources` (indexes as the watcher's), whose applied revisions came from
    /// cluster `cluster_id`.
    pub fn new(sources: Vec<Source>, cluster_id: Option<u64>) -> Self {
        Self {
            starts: vec![0; sources.len()],
            sources,
            pending: VecDeque::new(),
            by_watch: HashMap::new(),
            partial: HashMap::new(),
            cluster_id,
        }
    }

    /// Source `i`'s watch was requested from revision `start`.
    pub fn watching(&mut self, i: usize, start: i64) {
        self.starts[i] = start;
        self.pending.push_back(i);
    }

    /// Takes one response; `skipped` hears of every value that does not parse (the mirror
    /// keeps what the key held before).
    pub fn receive(
        &mut self,
        resp: &Response<'_>,
        skipped: &mut dyn FnMut(&Source, &[u8], &EntryError),
    ) -> Action {
        if resp.created {
            if let Some(i) = self.pending.pop_front() {
                self.by_watch.insert(resp.watch_id, i);
            }
        }
        let index = self.by_watch.get(&resp.watch_id).copied();
        if resp.canceled {
            return self.canceled(resp, index);
        }
        if resp.created {
            let start = index.map_or(1, |i| self.starts[i]);
            let established = self.pending.is_empty();
            // An etcd rebuilt from scratch (or another cluster behind the same address) has
            // revisions below ours or another cluster id: resuming would miss everything.
            if let Some(h) = resp.header {
                if self.cluster_id.is_some_and(|id| id != h.cluster_id) {
                    return Action::History("etcd cluster id changed".into());
                }
                if h.revision < start - 1 {
                    return Action::Behind {
                        source: index,
                        applied: start - 1,
                        established,
                    };
                }
            }
            return if established {
                Action::Established
            } else {
                Action::Nothing
            };
        }
        // Progress notifications carry no events but still confirm we are current.
        let Some(i) = index else {
            return Action::Apply {
                updates: Vec::new(),
                revisions: Vec::new(),
            };
        };
        let source = &self.sources[i];
        let part = self.partial.entry(resp.watch_id).or_default();
        for event in &resp.events {
            // Resume point: the last event actually received. The header revision is the
            // store's current one and can run ahead of events etcd still has queued for a
            // catching-up watcher (and, before etcd 3.4.24, of progress notifications), so it
            // is never used.
            part.revision = part.revision.max(event.mod_revision);
            if event.is_put {
                match source.put(event.key, event.value) {
                    Ok(update) => part.updates.extend(update.map(|u| (event.mod_revision, u))),
                    Err(error) => skipped(source, event.key, &error),
                }
            } else {
                // Keys that never parsed were never in the mirror: nothing to delete.
                part.updates
                    .extend(source.delete(event.key).map(|u| (event.mod_revision, u)));
            }
        }
        if resp.fragment {
            // More of this revision follows: nothing counts until the last part is in.
            return Action::Apply {
                updates: Vec::new(),
                revisions: Vec::new(),
            };
        }
        let done = self.partial.remove(&resp.watch_id).unwrap_or_default();
        let revisions = if done.revision > 0 {
            vec![(i, done.revision)]
        } else {
            Vec::new()
        };
        Action::Apply {
            updates: done.updates,
            revisions,
        }
    }

    fn canceled(&mut self, resp: &Response<'_>, index: Option<usize>) -> Action {
        let prefix = index.map_or("", |i| self.sources[i].prefix.as_str());
        if let (Some(i), true) = (index, resp.compact_revision > 0) {
            // Every source resuming below the compaction would hit it too: re-list those now
            // rather than one failed session each.
            let relist: Vec<usize> = (0..self.starts.len())
                .filter(|&j| j == i || self.starts[j] < resp.compact_revision)
                .collect();
            return Action::Relist {
                source: i,
                relist,
                wanted: self.starts[i],
                compacted: resp.compact_revision,
            };
        }
        let reason = format!("{prefix}: {}", resp.cancel_reason);
        match index {
            // etcd refused this one watch (permission denied): the others go on.
            Some(i) if resp.created => {
                self.by_watch.remove(&resp.watch_id);
                Action::Refused {
                    source: i,
                    reason,
                    established: self.pending.is_empty(),
                }
            }
            _ => Action::Canceled(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Layout;

    const KRATOS: usize = 1;

    /// Native (index 0) from revision 41, Kratos (index 1) from revision 21.
    fn set() -> WatchSet {
        let sources = vec![
            Source::native("/ruddr/services/"),
            Source::framework(Layout::Kratos, "/microservices/"),
        ];
        let mut w = WatchSet::new(sources, Some(7));
        w.watching(0, 41);
        w.watching(KRATOS, 21);
        w
    }

    fn created(id: i64, revision: i64) -> Response<'static> {
        Response {
            watch_id: id,
            created: true,
            header: Some(Header {
                revision,
                cluster_id: 7,
            }),
            ..Response::default()
        }
    }

    fn put<'a>(key: &'a str, value: &'a str, revision: i64) -> Event<'a> {
        Event {
            is_put: true,
            key: key.as_bytes(),
            value: value.as_bytes(),
            mod_revision: revision,
        }
    }

    fn events(id: i64, events: Vec<Event<'_>>, fragment: bool) -> Response<'_> {
        Response {
            watch_id: id,
            fragment,
            events,
            ..Response::default()
        }
    }

    fn receive(w: &mut WatchSet, resp: &Response<'_>) -> Action {
        w.receive(resp, &mut |_, key, e| {
            panic!("{} skipped: {e}", String::from_utf8_lossy(key))
        })
    }

    /// Both watches created (ids 100 and 101).
    fn established() -> WatchSet {
        let mut w = set();
        assert_eq!(receive(&mut w, &created(100, 50)), Action::Nothing);
        assert_eq!(receive(&mut w, &created(101, 50)), Action::Established);
        w
    }

    const WEB: &str = r#"{"address":"10.0.0.1"}"#;

    #[test]
    fn created_messages_are_skipped_until_all_are_in() {
        let mut w = set();
        assert_eq!(receive(&mut w, &created(100, 50)), Action::Nothing);
        assert_eq!(receive(&mut w, &created(101, 50)), Action::Established);
    }

    #[test]
    fn normal_events_move_the_resume_point_of_their_source() {
        let mut w = established();
        let resp = events(
            100,
            vec![
                put("/ruddr/services/web/a", WEB, 41),
                put("/ruddr/services/web/b", WEB, 42),
            ],
            false,
        );
        let Action::Apply { updates, revisions } = receive(&mut w, &resp) else {
            panic!()
        };
        // Each update carries its own event's revision (the change log shows it).
        let at: Vec<i64> = updates.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, [41, 42]);
        assert_eq!(revisions, [(0, 42)]);
        // A delete of a key that never parsed is no update, but still moves the point.
        let del = Event {
            is_put: false,
            key: b"/microservices/x",
            value: b"",
            mod_revision: 40,
        };
        assert_eq!(
            receive(&mut w, &events(101, vec![del], false)),
            Action::Apply {
                updates: vec![],
                revisions: vec![(KRATOS, 40)]
            }
        );
    }

    #[test]
    fn bad_values_are_reported_and_left_out() {
        let mut w = established();
        let mut bad = Vec::new();
        let resp = events(
            100,
            vec![
                put("/ruddr/services/web/a", "nope", 41),
                put("/ruddr/services/web/b", WEB, 42),
            ],
            false,
        );
        let action = w.receive(&resp, &mut |s, k, e| {
            bad.push((s.id, String::from_utf8_lossy(k).to_string(), e.to_string()))
        });
        let Action::Apply { updates, revisions } = action else {
            panic!()
        };
        assert_eq!((updates.len(), revisions), (1, vec![(0, 42)]));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].1, "/ruddr/services/web/a");
        assert!(
            bad[0].2.contains("not a valid registration"),
            "{}",
            bad[0].2
        );
    }

    #[test]
    fn fragments_count_only_when_complete() {
        let mut w = established();
        let first = events(100, vec![put("/ruddr/services/web/a", WEB, 45)], true);
        assert_eq!(
            receive(&mut w, &first),
            Action::Apply {
                updates: vec![],
                revisions: vec![]
            },
            "nothing to apply yet"
        );
        // Another watch's events in between are their own.
        let other = events(101, vec![], false);
        assert!(matches!(
            receive(&mut w, &other),
            Action::Apply { updates, revisions } if updates.is_empty() && revisions.is_empty()
        ));
        let last = events(100, vec![put("/ruddr/services/web/b", WEB, 45)], false);
        let Action::Apply { updates, revisions } = receive(&mut w, &last) else {
            panic!()
        };
        assert_eq!((updates.len(), revisions), (2, vec![(0, 45)]));
    }

    #[test]
    fn progress_notifications_confirm_without_moving_anything() {
        let mut w = established();
        let progress = Response {
            watch_id: -1,
            header: Some(Header {
                revision: 90,
                cluster_id: 7,
            }),
            ..Response::default()
        };
        assert_eq!(
            receive(&mut w, &progress),
            Action::Apply {
                updates: vec![],
                revisions: vec![]
            }
        );
    }

    #[test]
    fn a_compaction_relists_that_source_and_those_below_it_only() {
        let mut w = established();
        let cancel = |compact_revision| Response {
            watch_id: 101,
            canceled: true,
            compact_revision,
            ..Response::default()
        };
        // Kratos starts at 21, native at 41: a compaction at 30 re-lists Kratos only.
        assert_eq!(
            receive(&mut w, &cancel(30)),
            Action::Relist {
                source: KRATOS,
                relist: vec![KRATOS],
                wanted: 21,
                compacted: 30
            }
        );
        // At 45, native (from 41) is below it too.
        let Action::Relist { relist, .. } = receive(&mut w, &cancel(45)) else {
            panic!()
        };
        assert_eq!(relist, [0, KRATOS]);
    }

    #[test]
    fn a_permission_refusal_is_reported_for_that_source() {
        let mut w = set();
        assert_eq!(receive(&mut w, &created(100, 50)), Action::Nothing);
        let refused = Response {
            watch_id: 101,
            created: true,
            canceled: true,
            cancel_reason: "etcdserver: permission denied",
            ..Response::default()
        };
        assert_eq!(
            receive(&mut w, &refused),
            Action::Refused {
                source: KRATOS,
                reason: "/microservices/: etcdserver: permission denied".into(),
                established: true,
            }
        );
        // The refused watch id no longer maps to the source.
        assert!(matches!(
            receive(&mut w, &events(101, vec![], false)),
            Action::Apply { revisions, .. } if revisions.is_empty()
        ));
    }

    #[test]
    fn other_cancels_end_the_session() {
        let mut w = established();
        let resp = Response {
            watch_id: 100,
            canceled: true,
            cancel_reason: "no leader",
            ..Response::default()
        };
        assert_eq!(
            receive(&mut w, &resp),
            Action::Canceled("/ruddr/services/: no leader".into())
        );
    }

    #[test]
    fn another_cluster_or_an_older_history_is_caught_at_creation() {
        let mut w = set();
        let mut other = created(100, 50);
        other.header = Some(Header {
            revision: 30,
            cluster_id: 8,
        });
        assert_eq!(
            receive(&mut w, &other),
            Action::History("etcd cluster id changed".into())
        );
        let mut w = set();
        assert_eq!(
            receive(&mut w, &created(100, 5)),
            Action::Behind {
                source: Some(0),
                applied: 40,
                established: false
            }
        );
    }
}
