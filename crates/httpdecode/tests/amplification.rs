//! HPACK amplification: header blocks of a few hundred KB that would decode
//! to hundreds of MB (one-byte references to a large table entry, many
//! literal fields, huge table size updates, Huffman-coded values). The heap
//! of the whole process is counted by this test's own allocator: decoding
//! each block through one connection must peak under 4 MiB, the exchange
//! must say its header list was truncated, and the next exchange on the
//! same connection must decode exactly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use httpdecode::wire::{frame, header_frames, int, literal, PREFACE};
use httpdecode::{Budget, Connection, Direction, Exchange, Limits};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only
// sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes allocated at the peak of `f`, beyond what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// One amplification case: what the client sends before the attack block
/// (SETTINGS payload the server announces), the attack block, the block of
/// the next request and the headers it must decode to.
struct Case {
    name: &'static str,
    server_settings: Vec<u8>,
    /// Earlier request blocks (stream 1, 3, ...), decoded normally.
    before: Vec<Vec<u8>>,
    attack: Vec<u8>,
    next: Vec<u8>,
    expected: Vec<(String, String)>,
}

fn cases() -> Vec<Case> {
    let field = |n: &str, v: &[u8]| (n.to_string(), String::from_utf8(v.to_vec()).unwrap());
    let mut out = Vec::new();

    // 200,000 one-byte references to a 4000-byte entry: 800 MB.
    let big = vec![b'a'; 4000];
    let mut attack = vec![0x82, 0x87, 0x84];
    literal(&mut attack, 0x40, "x", &big);
    attack.extend(std::iter::repeat_n(0x80 | 62, 200_000));
    out.push(Case {
        name: "one-byte references to a 4000-byte entry",
        server_settings: Vec::new(),
        before: Vec::new(),
        attack,
        next: vec![0x82, 0x87, 0x85, 0x80 | 62],
        expected: vec![field("x", &big)],
    });

    // With a 64 KiB table: a 65,000-byte entry inserted by one block, then
    // a 256 KiB block of references to it: 17 GB.
    let huge = vec![b'h'; 65_000];
    // A table size update to 65536 first.
    let mut before = vec![0x3f, 0xe1, 0xff, 0x03, 0x82, 0x87, 0x84];
    literal(&mut before, 0x40, "h", &huge);
    let mut attack = vec![0x82, 0x87, 0x84];
    attack.extend(std::iter::repeat_n(0x80 | 62, 256 * 1024 - 3));
    out.push(Case {
        name: "references to a 65,000-byte entry of a 64 KiB table",
        server_settings: vec![0, 1, 0, 1, 0, 0],
        before: vec![before],
        attack,
        next: vec![0x82, 0x87, 0x85, 0x80 | 62],
        expected: vec![field("h", &huge)],
    });

    // 25,000 literal fields inserted in the table.
    let mut attack = vec![0x82, 0x87, 0x84];
    for i in 0..25_000 {
        literal(&mut attack, 0x40, "k", format!("{i:05}").as_bytes());
    }
    let mut next = vec![0x82, 0x87, 0x85, 0x80 | 62, 0x80 | 63];
    literal(&mut next, 0x00, "y", b"z");
    out.push(Case {
        name: "25,000 literal fields",
        server_settings: Vec::new(),
        before: Vec::new(),
        attack,
        next,
        expected: vec![field("k", b"24999"), field("k", b"24998"), field("y", b"z")],
    });

    // The server allows any table; the client updates it to 2^28 - 1 and
    // fills 200 KB of it.
    let mut attack = vec![0x3f, 0xe0, 0xff, 0xff, 0x7f, 0x82, 0x87, 0x84];
    for i in 0..200u8 {
        literal(&mut attack, 0x40, "v", &[b'0' + i % 10; 1000]);
    }
    out.push(Case {
        name: "table size update to 2^28 - 1",
        server_settings: vec![0, 1, 0xff, 0xff, 0xff, 0xff],
        before: Vec::new(),
        attack,
        next: vec![0x82, 0x87, 0x85, 0x80 | 62],
        expected: vec![field("v", &[b'9'; 1000])],
    });

    // 320,000 Huffman-coded '0's (5 bits each: 200,000 zero bytes) in one
    // value, then one more small Huffman-coded value inserted.
    let mut attack = vec![0x82, 0x87, 0x84, 0x00, 1, b'h'];
    int(&mut attack, 0x80, 7, 200_000);
    attack.extend(std::iter::repeat_n(0, 200_000));
    attack.extend([0x40, 2, b'h', b'2', 0x80 | 10]);
    attack.extend([0; 10]);
    out.push(Case {
        name: "Huffman-coded value of 320,000 characters",
        server_settings: Vec::new(),
        before: Vec::new(),
        attack,
        next: vec![0x82, 0x87, 0x85, 0x80 | 62],
        expected: vec![field("h2", &[b'0'; 16])],
    });
    out
}

/// Feeds `bytes` as records of at most 16 KiB.
fn feed(c: &mut Connection, dir: Direction, bytes: &[u8]) -> Vec<Exchange> {
    bytes.chunks(16384).flat_map(|r| c.feed(dir, r, SystemTime::UNIX_EPOCH)).collect()
}

/// Decodes a case on a fresh connection; returns the attack exchange, the
/// next one, and the heap peak of decoding the attack block.
fn run(case: &Case, budget: &Budget) -> (Exchange, Exchange, usize) {
    let mut c = Connection::with_budget(Limits::default(), budget.clone());
    let mut client = PREFACE.to_vec();
    client.extend(frame(0x4, 0, 0, &[]));
    assert!(feed(&mut c, Direction::Send, &client).is_empty());
    assert!(feed(&mut c, Direction::Recv, &frame(0x4, 0, 0, &case.server_settings)).is_empty());
    let mut id = 1;
    for block in &case.before {
        assert!(feed(&mut c, Direction::Send, &header_frames(id, block, true)).is_empty());
        let ex = feed(&mut c, Direction::Recv, &header_frames(id, &[0x88], true));
        assert_eq!(ex.len(), 1);
        assert!(ex[0].notes.is_empty(), "{}: {:?}", case.name, ex[0].notes);
        id += 2;
    }
    let attack = header_frames(id, &case.attack, true);
    let response = header_frames(id, &[0x88], true);
    let (mut first, peak) = peak_during(|| {
        let mut out = feed(&mut c, Direction::Send, &attack);
        out.extend(feed(&mut c, Direction::Recv, &response));
        out
    });
    let mut next = feed(&mut c, Direction::Send, &header_frames(id + 2, &case.next, true));
    next.extend(feed(&mut c, Direction::Recv, &header_frames(id + 2, &[0x88], true)));
    assert_eq!((first.len(), next.len()), (1, 1), "{}", case.name);
    (first.remove(0), next.remove(0), peak)
}

#[test]
fn amplification_blocks_stay_within_the_header_list_budget() {
    let budget = Budget::new(64 << 20);
    for case in cases() {
        let (first, next, peak) = run(&case, &budget);
        println!("{}: peak {peak} bytes of heap", case.name);
        assert!(peak < 4 << 20, "{}: peak {peak} bytes of heap", case.name);
        assert!(first.header_list_truncated(), "{}: {:?}", case.name, first.notes);
        let size: usize = first.request_headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert!(size <= 64 * 1024, "{}", case.name);
        assert!(!first.over_budget(), "{}: {:?}", case.name, first.notes);
        assert_eq!(next.request_headers, case.expected, "{}", case.name);
        assert!(next.notes.is_empty(), "{}: {:?}", case.name, next.notes);
        assert_eq!(budget.used(), 0, "{}: charges given back", case.name);
    }
    assert_eq!(budget.refusals(), 0);
}
