//! Hostile strings against the text output: real programs whose process
//! name, HTTP requests and replies (HTTP/1.1 and HTTP/2), shell lines,
//! exec paths and argv, and SQL carry terminal control sequences (title
//! and clipboard writes, screen clears, carriage returns, C1 controls).
//! None of those bytes may reach the reader's terminal; each must show in
//! its escaped form (`output::escape`).

mod support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::{
    capture_test, read_in_background, spawn_cleartap, spawn_listening, type_into_script, Certificate, Mariadb,
};

/// A running `cleartap <subcommand> --format text`.
struct TextCapture {
    child: Child,
    stdout: thread::JoinHandle<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
    stderr_reader: thread::JoinHandle<()>,
}

struct TextCaptured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl TextCapture {
    fn start(args: &[&str]) -> TextCapture {
        let mut child = spawn_cleartap(args, "text");
        let stdout = read_in_background(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let stderr_reader = thread::spawn(move || loop {
            let mut line = Vec::new();
            match err.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let _ = tx.send(line);
                }
            }
        });
        let capture = TextCapture { child, stdout, stderr: rx, stderr_reader };
        let mut before = Vec::new();
        loop {
            match capture.stderr.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line == b"ready\n" => return capture,
                Ok(line) => before.extend(line),
                Err(_) => {
                    let mut child = capture.child;
                    let _ = child.kill();
                    panic!("cleartap did not become ready; stderr:\n{}", String::from_utf8_lossy(&before));
                }
            }
        }
    }

    /// SIGINT, then all it printed; it must exit cleanly.
    fn stop(mut self) -> TextCaptured {
        // No pause: a stop drains what the kernel wrote (see support's stop_with).
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let stdout = self.stdout.join().unwrap();
        self.stderr_reader.join().unwrap();
        let stderr: Vec<u8> = self.stderr.try_iter().flatten().collect();
        assert!(status.success(), "cleartap exited with {status}: {}", String::from_utf8_lossy(&stderr));
        TextCaptured { stdout, stderr }
    }
}

impl TextCaptured {
    /// Standard output, checked to hold nothing a terminal acts on.
    fn text(&self) -> String {
        assert_inert(&self.stdout, "stdout");
        assert_inert(&self.stderr, "stderr");
        String::from_utf8(self.stdout.clone()).unwrap()
    }
}

/// No ESC, BEL, CR, other C0 control but newline and tab, DEL or C1
/// control anywhere: the output is UTF-8 (so no lone C1 byte such as 0x9b:
/// invalid bytes are escaped) of printable characters (so no C1 control
/// encoded as UTF-8 either), newlines and tabs.
#[track_caller]
fn assert_inert(bytes: &[u8], what: &str) {
    for raw in [0x1b, 0x07, 0x0d] {
        if let Some(at) = bytes.iter().position(|&b| b == raw) {
            panic!("{what}: raw byte {raw:#04x} at {at}: {:?}", context(bytes, at));
        }
    }
    let text = std::str::from_utf8(bytes)
        .unwrap_or_else(|e| panic!("{what} is not UTF-8: {e}: {:?}", context(bytes, e.valid_up_to())));
    for (at, c) in text.char_indices() {
        let control = c.is_control() && c != '\n' && c != '\t';
        assert!(!control, "{what}: {c:?} at {at}: {:?}", context(bytes, at));
    }
}

fn context(bytes: &[u8], at: usize) -> String {
    String::from_utf8_lossy(&bytes[at.saturating_sub(60)..(at + 60).min(bytes.len())]).into_owned()
}

/// Each program a test needs, or a failure saying how to install it.
#[track_caller]
fn require_tools(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
        assert!(
            found,
            "{tool} is not installed: install the test dependencies with scripts/install-deps --test"
        );
    }
}

/// The line of `text` containing `needle`, exactly one.
#[track_caller]
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "one line with {needle:?} expected in:\n{text}");
    lines[0]
}

/// A line from after its timestamp (the first space).
fn untimed(line: &str) -> &str {
    line.split_once(' ').map_or(line, |(_, rest)| rest)
}

/// The hostile process name both TLS peers and the exec caller take
/// (prctl(PR_SET_NAME), 11 of the 15 bytes a name holds): OSC "set the
/// window title" ended by BEL, a CSI as UTF-8 C1, a carriage return.
const HOSTILE_COMM: &[u8] = b"ct\x1b]0;x\x07\xc2\x9b\r";
const HOSTILE_COMM_SHOWN: &str = "ct\\x1b]0;x\\x07\\u{9b}\\r";

/// A TLS server and client on Python's ssl (the system libssl) that name
/// themselves `HOSTILE_COMM` and speak, over three connections in turn:
/// HTTP/1.1 with C1 controls and a bidi override in the headers and a
/// backslash in the path (all the HTTP/1 decoder lets through: a request
/// target is printable ASCII), bytes that are not HTTP, and HTTP/2 built
/// by hand with ESC, BEL and CR in every request and reply field. Each
/// connection stays open to the end: a freed SSL object's address, reused
/// by the next connection, would continue the previous connection's
/// stream for the decoder (`assembly::streams` keys streams by pid and SSL
/// pointer).
const PEERS_PY: &str = r#"
import ctypes, socket, ssl, sys

libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0) == 0  # PR_SET_NAME

def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

def literal(name, value):  # HPACK: literal without indexing, new name, no Huffman
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

H1_REQUEST = (b"GET /h1/\\x1b HTTP/1.1\r\nHost: h1\xc2\x9b.test\r\n"
              b"X-Evil: \xc2\x9b2J\xc2\x9d0;t\xc2\x9c\r\nContent-Length: 0\r\n\r\n")
H1_RESPONSE = b"HTTP/1.1 200 OK\r\nX-Reply: \xc2\x85next\xe2\x80\xae\r\nContent-Length: 2\r\n\r\nok"
RAW_REQUEST = b"\x1b]0;raw\x07\r\n\x1b[2J\x9b"
RAW_RESPONSE = b"\x1b]52;c;cmF3=\x07\rover"
H2_REQUEST = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
              + frame(1, 5, 1, literal(b":method", b"POST\x1b]0;m\x07")
                      + literal(b":scheme", b"https")
                      + literal(b":authority", b"h2.test\x1b[8m")
                      + literal(b":path", b"/h2/\x1b]52;c;aGk=\x07\r")
                      + literal(b"x-\x1b[1mname", b"v\x1b]0;t\x07\r\xc2\x9b")))
H2_RESPONSE = (frame(4, 0, 0, b"") + frame(4, 1, 0, b"")
               + frame(1, 5, 1, literal(b":status", b"200") + literal(b"x-reply", b"\x1b]52;c;cmVwbHk=\x07\rover")))
TALKS = [(H1_REQUEST, H1_RESPONSE), (RAW_REQUEST, RAW_RESPONSE), (H2_REQUEST, H2_RESPONSE)]

def read(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        buf += chunk
    assert len(buf) == n, buf
    return buf

if sys.argv[2] == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    print(listener.getsockname()[1], flush=True)
    conns = []
    for request, response in TALKS:
        conns.append(ctx.wrap_socket(listener.accept()[0], server_side=True))
        assert read(conns[-1], len(request)) == request
        conns[-1].sendall(response)
    assert all(conn.recv(1) == b"" for conn in conns)  # the client is done
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conns = []
    for request, response in TALKS:
        conns.append(ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[3])))))
        conns[-1].sendall(request)
        assert read(conns[-1], len(response)) == response
    print("done", flush=True)
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tls_hostile_comm_http1_http2_and_raw_payloads() {
    let Some(_one) = capture_test() else { return };
    require_tools(&["python3", "openssl"]);
    let cert = Certificate::new();
    let name = hex(HOSTILE_COMM);
    let (mut server, port) = spawn_listening(
        Command::new("python3").args(["-c", PEERS_PY, &name, "server"]).arg(cert.cert()).arg(cert.key()),
    );
    let port = port.to_string();

    let capture = TextCapture::start(&["tls", "--body", "1000"]);
    let client =
        Command::new("python3").args(["-c", PEERS_PY, &name, "client", &port]).stdout(Stdio::piped()).spawn();
    let client = client.expect("python3");
    let client_pid = client.id();
    let client = client.wait_with_output().unwrap();
    assert!(client.status.success(), "client: {}", String::from_utf8_lossy(&client.stderr));
    assert_eq!(client.stdout, b"done\n");
    assert!(server.wait().unwrap().success(), "the server failed");
    let got = capture.stop();
    let text = got.text();
    let server_pid = server.id();

    // The process name on every record of both peers, escaped.
    for pid in [server_pid, client_pid] {
        let tls = format!(" {HOSTILE_COMM_SHOWN}[{pid}/{pid}] uid=0 openssl ");
        assert!(text.matches(&tls).count() >= 6, "{tls:?} on each send and recv:\n{text}");
        let http = |protocol: &str| format!(" {protocol} {HOSTILE_COMM_SHOWN}[{pid}] ");
        assert_eq!(text.matches(&http("HTTP/1.1")).count(), 1, "{pid}:\n{text}");
        assert_eq!(text.matches(&http("HTTP/2")).count(), 1, "{pid}:\n{text}");
    }

    // HTTP/1.1, from both peers: C1 controls, a bidi override, a backslash.
    assert_eq!(text.matches("\n  GET https://h1\\u{9b}.test/h1/\\\\x1b -> 200 (").count(), 2, "{text}");
    assert_eq!(text.matches("\n  > Host: h1\\u{9b}.test\n").count(), 2, "{text}");
    assert_eq!(text.matches("\n  > X-Evil: \\u{9b}2J\\u{9d}0;t\\u{9c}\n").count(), 2, "{text}");
    assert_eq!(text.matches("\n  < X-Reply: \\u{85}next\\u{202e}\n").count(), 2, "{text}");

    // HTTP/2: ESC, BEL and CR in the method, authority, path, header
    // names and values of the request and the reply.
    assert_eq!(
        text.matches("\n  POST\\x1b]0;m\\x07 https://h2.test\\x1b[8m/h2/\\x1b]52;c;aGk=\\x07\\r -> 200 (")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("\n  > x-\\x1b[1mname: v\\x1b]0;t\\x07\\r\\u{9b}\n").count(), 2, "{text}");
    assert_eq!(text.matches("\n  < x-reply: \\x1b]52;c;cmVwbHk=\\x07\\rover\n").count(), 2, "{text}");

    // Not HTTP: the raw payloads, escaped, with a lone 0x9b as a byte.
    assert_eq!(text.matches("\n\\x1b]0;raw\\x07\\r\n\\x1b[2J\\x9b\n").count(), 2, "{text}");
    assert_eq!(text.matches("\n\\x1b]52;c;cmF3=\\x07\\rover\n").count(), 2, "{text}");
}

#[test]
fn exec_hostile_comm_path_and_argv() {
    let Some(_one) = capture_test() else { return };
    require_tools(&["python3"]);
    let dir = tempfile::tempdir().unwrap();
    let mut program = dir.path().as_os_str().as_bytes().to_vec();
    program.extend_from_slice(b"/t\x1b]0;x\x07\r\xc2\x9b\xff");
    let program = Path::new(OsStr::from_bytes(&program));
    std::os::unix::fs::symlink("/bin/true", program).unwrap();
    // Named hostile, it execs the hostile path with hostile arguments.
    let script = "import ctypes, os, sys\n\
                  ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)\n\
                  os.execv(bytes.fromhex(sys.argv[2]), [bytes.fromhex(a) for a in sys.argv[3:]])\n";
    let argv: [&[u8]; 3] = [b"t\x1b]0;x\x07", b"\r\n\t\\", b"\xc2\x85\xff"];
    let capture = TextCapture::start(&["exec"]);
    let mut child = Command::new("python3")
        .args(["-c", script, &hex(HOSTILE_COMM), &hex(program.as_os_str().as_bytes())])
        .args(argv.iter().map(|a| hex(a)))
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let got = capture.stop();
    let text = got.text();
    let line = line_with(&text, &format!("exec {HOSTILE_COMM_SHOWN}[{pid}]"));
    assert_eq!(
        untimed(line),
        format!(
            "exec {HOSTILE_COMM_SHOWN}[{pid}] ppid={} uid=0(root) {}/t\\x1b]0;x\\x07\\r\\u{{9b}}\\xff \
             [\"t\\x1b]0;x\\x07\", \"\\r\\n\\t\\\\\", \"\\u{{85}}\\xff\"] = ok",
            std::process::id(),
            dir.path().display()
        )
    );
}

#[test]
fn shell_hostile_command_line() {
    let Some(_one) = capture_test() else { return };
    require_tools(&["bash", "script"]);
    // A bash already running: its binary is attached at start.
    let _running = support::Holder::running(Command::new("bash").args(["-c", "sleep 30; true"]));
    let capture = TextCapture::start(&["shell"]);
    // Ctrl-V (quoted-insert) makes readline take ESC, BEL and CR as text.
    let lines: [&[u8]; 3] =
        [b": 'a\x16\x1b]0;x\x16\x07b\x16\rc'", ": '\u{9b}2J\u{202e}' \\\\".as_bytes(), b"exit"];
    let parent = type_into_script("bash --norc -i", &[("LC_ALL", "C.UTF-8")], &lines, b"\r");
    let got = capture.stop();
    let text = got.text();
    let mine: Vec<String> = text
        .split('\n')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].contains(&format!(" ppid={parent} ")))
        .map(|w| w[1].to_string())
        .collect();
    assert_eq!(
        mine,
        ["    : 'a\\x1b]0;x\\x07b\\rc'", "    : '\\u{9b}2J\\u{202e}' \\\\\\\\", "    exit"],
        "{text}"
    );
}

#[test]
fn sql_hostile_statement() {
    let Some(_one) = capture_test() else { return };
    require_tools(&["mariadb-install-db", "mariadbd", "mariadb"]);
    let server = Mariadb::start();
    let capture = TextCapture::start(&["mysql"]);
    assert!(server.query(b"select 'a\x1b]0;x\x07b\rc\xc2\x9bd' as hostile"));
    assert!(!server.query(b"select * from `no\x1b[2Jtable`"));
    let got = capture.stop();
    let text = got.text();
    let statement = |shown: &str| {
        let lines: Vec<&str> = text.split('\n').collect();
        let at = lines.iter().position(|l| *l == shown).unwrap_or_else(|| panic!("no {shown:?} in:\n{text}"));
        lines[at - 1].to_string()
    };
    let ok = statement("    select 'a\\x1b]0;x\\x07b\\rc\\u{9b}d' as hostile");
    assert!(ok.contains(" query ok "), "{ok}");
    let failed = statement("    select * from `no\\x1b[2Jtable`");
    assert!(failed.contains(" query FAILED "), "{failed}");
}
