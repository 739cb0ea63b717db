//! The TLS source's data records -> records with the gap before each
//! (`gaps`), and, as `--decode` says, the HTTP exchanges their connection's
//! stream completes (`streams`).

use std::io;

use super::gaps::{self, GapTracker};
use super::streams::{self, HttpStreams};
use crate::cli::Decode;
use crate::context::libraries::{KnownLibrary, LibraryResolver};
use crate::context::{Enricher, HttpRecord, TlsRecord};
use crate::events::TlsData;
use crate::output::Output;

pub struct TlsAssembler {
    enricher: Enricher,
    gaps: GapTracker,
    decode: Decode,
    streams: HttpStreams,
}

impl TlsAssembler {
    /// `shown`: the bytes of a body the outputs show (`--body`).
    pub fn new(decode: Decode, shown: usize) -> Self {
        TlsAssembler {
            enricher: Enricher::new(LibraryResolver::new(Vec::new())),
            gaps: GapTracker::default(),
            decode,
            streams: HttpStreams::new(shown),
        }
    }

    /// A file attached: its records are named after it.
    pub fn add_library(&mut self, library: KnownLibrary) {
        self.enricher.add_library(library);
    }

    /// "openssl 3.0.22 at /usr/lib/.../libssl.so.3", for messages.
    pub fn library_name(&self, id: u16) -> String {
        self.enricher.library_name(id)
    }

    /// One piece of plaintext: `seen` gets its record first, then the
    /// record and the exchanges it completes go to `out`.
    pub fn data(
        &mut self,
        d: &TlsData,
        out: &mut dyn Output,
        seen: impl FnOnce(&TlsRecord),
    ) -> io::Result<()> {
        let h = &d.header;
        let gap = self.gaps.record(
            h.pid,
            h.conn,
            h.call_seq,
            u64::from(h.offset),
            d.data.len() as u64,
            u64::from(h.call_len),
        );
        let record = TlsRecord { gap, ..self.enricher.tls(d) };
        seen(&record);
        if self.decode != Decode::Http {
            out.tls(&record)?;
        }
        if self.decode != Decode::Raw {
            for (exchange, connection) in self.streams.feed(&record) {
                out.http(&HttpRecord { exchange: &exchange, connection: &connection })?;
            }
        }
        Ok(())
    }

    /// Shutdown: exchanges that only the end of the stream completes (a
    /// response delimited by the connection's close), and what the bounded
    /// tables had to give up.
    pub fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for (exchange, connection) in self.streams.close_all(std::time::SystemTime::now()) {
            out.http(&HttpRecord { exchange: &exchange, connection: &connection })?;
        }
        let (refusals, bytes) = self.streams.refused();
        if refusals > 0 {
            crate::note!(
                "cleartap: HTTP decoding: {refusals} allocations ({bytes} bytes) refused by the decoders' \
                 memory budget; the exchanges affected carry a note"
            );
        }
        super::report_evicted(self.streams.evicted(), || {
            format!(
                "connections closed early by HTTP decoding: more than {} were decoded at once (each closed \
                 as at its end: what that completed is shown)",
                streams::MAX_CONNECTIONS
            )
        });
        super::report_evicted(self.gaps.evicted(), || {
            format!(
                "connections forgotten by gap tracking: more than {} were tracked at once (a loss just before \
                 their next record is not marked)",
                gaps::MAX_CONNECTIONS
            )
        });
        Ok(())
    }
}
