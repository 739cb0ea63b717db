//! Statement starts and ends, paired per thread (a MySQL connection is a
//! thread; a PostgreSQL backend a process), with duration and outcome.
//! Bounded: past `MAX_PENDING` statements in flight, the one whose thread
//! was least recently seen is reported without its end, and counted.

use std::time::{Duration, SystemTime};

use lru::LruCache;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub time: SystemTime,
    pub server: &'static str,
    pub pid: u32,
    pub tid: u32,
    /// `query`, `prepare`, `execute` (MySQL protocol), or `statement` (PostgreSQL).
    pub command: &'static str,
    pub statement_id: Option<u32>,
    pub text: Vec<u8>,
    pub truncated: bool,
    pub duration: Option<Duration>,
    /// None when the end was not seen (server stopped, cleartap stopped,
    /// or evicted from a full table).
    pub success: Option<bool>,
    failed: bool,
}

impl Query {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        time: SystemTime,
        server: &'static str,
        pid: u32,
        tid: u32,
        command: &'static str,
        statement_id: Option<u32>,
        text: Vec<u8>,
        truncated: bool,
    ) -> Query {
        Query {
            time,
            server,
            pid,
            tid,
            command,
            statement_id,
            text,
            truncated,
            duration: None,
            success: None,
            failed: false,
        }
    }

    fn ended(self, at: SystemTime, failed: bool) -> Query {
        let failed = failed || self.failed;
        Query { duration: at.duration_since(self.time).ok(), success: Some(!failed), ..self }
    }
}

/// Statements in flight at once (threads inside a statement).
pub const MAX_PENDING: usize = 16384;

pub struct Queries {
    pending: LruCache<u32, Query>,
    evicted: u64,
}

impl Default for Queries {
    fn default() -> Self {
        Queries { pending: crate::context::bounded(MAX_PENDING), evicted: 0 }
    }
}

impl Queries {
    /// A statement starts on `q.tid`. PostgreSQL reports the same text for
    /// Parse, Bind and Execute of one statement: a repeat is the same
    /// statement. A different one ends the previous (pipelined messages).
    /// A full table reports its least recently seen statement, end not
    /// seen, to make room (counted in `evicted`).
    pub fn start(&mut self, q: Query) -> Option<Query> {
        if let Some(p) = self.pending.get(&q.tid) {
            if p.server == "postgres" && p.text == q.text {
                return None;
            }
        }
        let (at, tid) = (q.time, q.tid);
        let (key, out) = self.pending.push(tid, q)?;
        if key == tid {
            return Some(out.ended(at, false));
        }
        self.evicted += 1;
        Some(out)
    }

    pub fn end(&mut self, tid: u32, at: SystemTime, failed: bool) -> Option<Query> {
        self.pending.pop(&tid).map(|q| q.ended(at, failed))
    }

    /// Statements reported without their end because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn fail(&mut self, tid: u32) {
        if let Some(q) = self.pending.get_mut(&tid) {
            q.failed = true;
        }
    }

    pub fn drain(&mut self) -> Vec<Query> {
        let mut all: Vec<_> = std::iter::from_fn(|| self.pending.pop_lru()).map(|(_, q)| q).collect();
        all.sort_by_key(|q| q.time);
        all
    }
}

/// (user, database, client) from a PostgreSQL backend's process title:
/// `postgres: [cluster: ]user database client activity`.
pub fn postgres_backend(title: &str) -> Option<(String, String, String)> {
    let rest = title.trim_end_matches('\0').strip_prefix("postgres: ")?;
    let mut words = rest.split_whitespace().peekable();
    if words.peek()?.ends_with(':') {
        words.next(); // cluster_name
    }
    let user = words.next()?.to_string();
    let database = words.next()?.to_string();
    let client = words.next()?.to_string();
    Some((user, database, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(tid: u32, text: &str, secs: u64, server: &'static str) -> Query {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        Query::start(t, server, 1, tid, "statement", None, text.as_bytes().to_vec(), false)
    }

    #[test]
    fn concurrent_threads_never_mix() {
        let mut qs = Queries::default();
        assert!(qs.start(q(1, "select 1", 10, "mariadb")).is_none());
        assert!(qs.start(q(2, "select 2", 11, "mariadb")).is_none());
        qs.fail(2);
        let two = qs.end(2, SystemTime::UNIX_EPOCH + Duration::from_secs(15), false).unwrap();
        let one = qs.end(1, SystemTime::UNIX_EPOCH + Duration::from_secs(12), false).unwrap();
        assert_eq!(
            (two.text.as_slice(), two.success, two.duration),
            (&b"select 2"[..], Some(false), Some(Duration::from_secs(4)))
        );
        assert_eq!((one.success, one.duration), (Some(true), Some(Duration::from_secs(2))));
    }

    #[test]
    fn a_full_table_reports_its_least_recently_seen_statement_unended_and_counts_it() {
        let mut qs = Queries::default();
        for tid in 1..=MAX_PENDING as u32 {
            assert!(qs.start(q(tid, "select 1", u64::from(tid), "mariadb")).is_none());
        }
        // Thread 1 is seen again (its statement failing): thread 2 is now the oldest.
        qs.fail(1);
        let evicted = qs.start(q(100_000, "select 2", 100_000, "mariadb")).unwrap();
        assert_eq!((evicted.tid, evicted.success, evicted.duration), (2, None, None));
        assert_eq!(qs.evicted(), 1);
        assert!(qs.end(2, SystemTime::UNIX_EPOCH, false).is_none());
        let one = qs.end(1, SystemTime::UNIX_EPOCH + Duration::from_secs(3), false).unwrap();
        assert_eq!((one.success, one.duration), (Some(false), Some(Duration::from_secs(2))));
        // A new statement on a thread in the table ends its previous one: no eviction.
        assert!(qs.start(q(3, "select 3", 200_000, "mariadb")).unwrap().success.is_some());
        assert_eq!(qs.evicted(), 1);
        assert_eq!(qs.drain().len(), MAX_PENDING - 1);
    }

    #[test]
    fn postgres_parse_bind_execute_is_one_statement() {
        let mut qs = Queries::default();
        assert!(qs.start(q(7, "select $1", 1, "postgres")).is_none());
        assert!(qs.start(q(7, "select $1", 2, "postgres")).is_none());
        let first = qs.start(q(7, "select 2", 3, "postgres")).unwrap();
        assert_eq!(
            (first.text.as_slice(), first.duration),
            (&b"select $1"[..], Some(Duration::from_secs(2)))
        );
        assert_eq!(qs.drain().len(), 1);
    }

    #[test]
    fn backend_titles() {
        assert_eq!(
            postgres_backend("postgres: 15/main: alice shop [local] idle"),
            Some(("alice".into(), "shop".into(), "[local]".into()))
        );
        assert_eq!(
            postgres_backend("postgres: bob db 127.0.0.1(5000) SELECT"),
            Some(("bob".into(), "db".into(), "127.0.0.1(5000)".into()))
        );
        assert_eq!(postgres_backend("postgres: checkpointer"), None);
        assert_eq!(postgres_backend("/usr/lib/postgresql/15/bin/postgres -D x"), None);
    }
}
