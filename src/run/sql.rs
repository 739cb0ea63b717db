//! `cleartap mysql` and `cleartap postgres`: server-side statements with
//! duration and outcome.

use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;
use lru::LruCache;

use super::{filters, pump, Destination, Handler};
use crate::assembly::sql::{self as queries, postgres_backend, Queries, Query};
use crate::cli::SourceArgs;
use crate::context::clock::Clock;
use crate::context::{bounded, QueryRecord};
use crate::events::{sql, Event, QueryStart};
use crate::kernel;
use crate::output::Output;
use crate::sources::executables::ExecutableAttacher;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::sql::{self as servers, Family, SqlBinary, SqlProbes};

pub fn run(args: &SourceArgs, family: Family) -> Result<()> {
    capture(args, family, Destination::stdout(args.output.style(0))?)
}

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, family: Family, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = SqlProbes::load(&mut storage, &filters, args.output.ringbuf_size)?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &[], shared, false)?;
    let links = watch.attach()?;
    let mut attacher = servers::attacher(&probes, family);
    let found = attacher.scan_host();
    if found.is_empty() {
        eprintln!("cleartap: no {family:?} server running yet; watching for servers that start");
    }
    found.iter().for_each(announce);
    let mut handler = SqlHandler {
        attacher,
        queries: Queries::default(),
        clock: Clock::now(),
        backends: Backends::default(),
    };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

fn announce(bin: &SqlBinary) {
    eprintln!(
        "cleartap: attached to {} ({})",
        crate::output::escape::for_terminal(&bin.display_path),
        bin.server
    );
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

struct SqlHandler<'p> {
    attacher: ExecutableAttacher<'p, SqlBinary>,
    queries: Queries,
    clock: Clock,
    backends: Backends,
}

impl SqlHandler<'_> {
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
                self.backends
                    .remember(pid, || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
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

impl Handler for SqlHandler<'_> {
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
            Event::Exec(e) => {
                if let Some(bin) = self.attacher.consider(e.pid, Some(&String::from_utf8_lossy(e.path))) {
                    announce(&bin);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.attacher.detach_all();
    }

    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for query in self.queries.drain() {
            self.write(query, out)?;
        }
        let evicted = self.queries.evicted();
        if evicted > 0 {
            eprintln!(
                "cleartap: {evicted} statements reported without their end: more than {} were in flight at once",
                queries::MAX_PENDING
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
