//! Statement starts and ends, paired per thread (a MySQL connection is a
//! thread; a PostgreSQL backend a process), with duration and outcome.
//! Bounded: past `MAX_PENDING` statements in flight, the one whose thread
//! was least recently seen is reported without its end, and counted.
//! `SqlAssembler` feeds it the kernel's records and adds, for PostgreSQL,
//! the session read from the backend's process title.

use std::io;
use std::time::{Duration, SystemTime};

use lru::LruCache;

use crate::context::clock::Clock;
use crate::context::{bounded, Bounded, QueryRecord, Replaced};
use crate::events::{sql, Event, QueryStart};
use crate::output::Output;

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
    pending: Bounded<u32, Query>,
}

impl Default for Queries {
    fn default() -> Self {
        Queries { pending: Bounded::new(MAX_PENDING) }
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
        let at = q.time;
        match self.pending.push(q.tid, q)? {
            Replaced::Same(previous) => Some(previous.ended(at, false)),
            Replaced::Evicted(_, oldest) => Some(oldest),
        }
    }

    pub fn end(&mut self, tid: u32, at: SystemTime, failed: bool) -> Option<Query> {
        self.pending.pop(&tid).map(|q| q.ended(at, failed))
    }

    /// Statements reported without their end because the table was full.
    pub fn evicted(&self) -> u64 {
        self.pending.evicted()
    }

    pub fn fail(&mut self, tid: u32) {
        if let Some(q) = self.pending.get_mut(&tid) {
            q.failed = true;
        }
    }

    pub fn drain(&mut self) -> Vec<Query> {
        self.pending.drain_by_key(|q| q.time)
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

/// The SQL source's records (statement start, end, failure) ->
/// statements with duration and outcome, and for PostgreSQL the session's
/// user, database and client.
#[derive(Default)]
pub struct SqlAssembler {
    queries: Queries,
    clock: Clock,
    backends: Backends,
}

impl super::Assembler for SqlAssembler {
    /// A record of the SQL source (others are ignored): what it completes
    /// is written to `out`.
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::QueryStart(q) => {
                let query = self.start(&q);
                if let Some(done) = self.queries.start(query) {
                    self.write(done, out)?;
                }
            }
            Event::QueryEnd(e) => {
                let at = self.clock.wall(e.task.ts_ns);
                if let Some(done) = self.queries.end(e.task.tid, at, e.failed != 0) {
                    self.write(done, out)?;
                }
            }
            Event::QueryFail(e) => self.queries.fail(e.task.tid),
            _ => {}
        }
        Ok(())
    }

    /// Shutdown: the statements still in flight, end not seen.
    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for query in self.queries.drain() {
            self.write(query, out)?;
        }
        super::report_evicted(self.queries.evicted(), || {
            format!("statements reported without their end: more than {MAX_PENDING} were in flight at once")
        });
        Ok(())
    }
}

impl SqlAssembler {
    fn start(&mut self, q: &QueryStart) -> Query {
        let (server, command) = match (q.server, q.command) {
            (sql::MARIADB | sql::MYSQL, c) => {
                let server = if q.server == sql::MARIADB { "mariadb" } else { "mysql" };
                let command = match c {
                    sql::COM_STMT_PREPARE => "prepare",
                    sql::COM_STMT_EXECUTE => "execute",
                    _ => "query",
                };
                (server, command)
            }
            _ => {
                let pid = q.task.pid;
                // The title the kernel read with the statement; /proc where
                // it could not (the backend's memory was not readable).
                self.backends.remember(pid, || match q.title {
                    [] => std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                    title => title.to_vec(),
                });
                ("postgres", "statement")
            }
        };
        let statement_id = (q.command == sql::COM_STMT_EXECUTE).then_some(q.stmt_id);
        let time = self.clock.wall(q.task.ts_ns);
        Query::start(
            time,
            server,
            q.task.pid,
            q.task.tid,
            command,
            statement_id,
            q.text.to_vec(),
            q.truncated,
        )
    }

    fn write(&mut self, query: Query, out: &mut dyn Output) -> io::Result<()> {
        let session = self.backends.session(query.pid);
        let record = QueryRecord {
            query: &query,
            user: session.user.as_deref(),
            database: session.database.as_deref(),
            client: session.client.as_deref(),
        };
        out.query(&record)
    }
}

/// What a PostgreSQL backend's process title says about its session.
#[derive(Default, Clone)]
struct Session {
    user: Option<String>,
    database: Option<String>,
    client: Option<String>,
}

/// PostgreSQL backends' sessions by pid, read from their process title at
/// their first statement. Bounded: a backend evicted from a full table
/// (least recently seen first) is read again at its next statement.
struct Backends {
    sessions: LruCache<u32, Session>,
}

const MAX_BACKENDS: usize = 4096;

impl Default for Backends {
    fn default() -> Self {
        Backends { sessions: bounded(MAX_BACKENDS) }
    }
}

impl Backends {
    /// Backends are forked per connection and set their title at login.
    fn remember(&mut self, pid: u32, title: impl FnOnce() -> Vec<u8>) {
        self.sessions.get_or_insert(pid, || match postgres_backend(&String::from_utf8_lossy(&title())) {
            Some((user, database, client)) => {
                Session { user: Some(user), database: Some(database), client: Some(client) }
            }
            None => Session::default(),
        });
    }

    fn session(&self, pid: u32) -> Session {
        self.sessions.peek(&pid).cloned().unwrap_or_default()
    }
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

    #[test]
    fn a_full_backend_table_forgets_the_least_recently_seen_backend() {
        let mut b = Backends::default();
        let title = |pid: u32| move || format!("postgres: u{pid} db [local] idle").into_bytes();
        for pid in 1..=MAX_BACKENDS as u32 {
            b.remember(pid, title(pid));
        }
        // Seen again: not read again, and now the most recent.
        b.remember(1, || panic!("read again"));
        b.remember(100_000, title(100_000));
        assert_eq!(b.session(1).user.as_deref(), Some("u1"));
        assert_eq!(b.session(2).user, None);
        assert_eq!(b.session(100_000).database.as_deref(), Some("db"));
        // An evicted backend is read again at its next statement.
        b.remember(2, title(2));
        assert_eq!(b.session(2).user.as_deref(), Some("u2"));
    }
}
