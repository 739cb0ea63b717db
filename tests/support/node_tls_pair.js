// HTTP/1.1 over node's tls module, several connections at once on one event
// loop: the server and the client of tests/e2e_tls_libraries.rs
// (node_connections_are_tied_to_their_own_sockets).
//
//   node node_tls_pair.js server DIR CERT KEY    prints its port, serves COUNT connections
//   node node_tls_pair.js client DIR PORT
//
// Both sides write what they really moved, per connection, into DIR as
// <local port>-<remote port>.sent / .recv (the plaintext they passed to
// write() and got from 'data'), and the connection's fd in this process as
// <local port>-<remote port>.fd (from /proc/self/fd and /proc/self/net/tcp,
// while the socket is open). Requests and responses go out in 3,000-byte
// pieces, one per turn of the event loop, so the connections' writes and
// reads interleave.
"use strict";
const fs = require("fs");
const path = require("path");
const tls = require("tls");

const REQUEST_BODIES = [700, 5000, 12000, 33000];
const RESPONSE_BODIES = [40000, 9000, 1500, 21000];
const COUNT = REQUEST_BODIES.length;
const PIECE = 3000;

const [mode, dir, ...rest] = process.argv.slice(2);

// Bytes of connection `which` (`seed` tells the direction): different on
// every connection, so a record tied to the wrong one shows.
function body(len, seed) {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 101 + 7) & 0xff;
  return b;
}

// The fd of this process's TCP socket localPort -> remotePort.
function socketFd(localPort, remotePort) {
  const fdOfInode = new Map();
  for (const fd of fs.readdirSync("/proc/self/fd")) {
    let link;
    try {
      link = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m) fdOfInode.set(m[1], Number(fd));
  }
  for (const table of ["/proc/self/net/tcp", "/proc/self/net/tcp6"]) {
    for (const line of fs.readFileSync(table, "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const port = (addr) => parseInt(addr.split(":").pop(), 16);
      if (port(f[1]) === localPort && port(f[2]) === remotePort && fdOfInode.has(f[9])) {
        return fdOfInode.get(f[9]);
      }
    }
  }
  throw new Error(`no fd holds the socket ${localPort} -> ${remotePort}`);
}

// One side of a connection: what it moved, written out when it closes.
function track(sock, onClosed) {
  const name = `${sock.localPort}-${sock.remotePort}`;
  const fd = socketFd(sock.localPort, sock.remotePort);
  const sent = [];
  const recv = [];
  const write = (b) => {
    sent.push(b);
    sock.write(b);
  };
  sock.on("close", () => {
    fs.writeFileSync(path.join(dir, `${name}.sent`), Buffer.concat(sent));
    fs.writeFileSync(path.join(dir, `${name}.recv`), Buffer.concat(recv));
    fs.writeFileSync(path.join(dir, `${name}.fd`), String(fd));
    onClosed();
  });
  return { recv, write };
}

// Writes `bytes` in pieces, one per turn of the event loop.
function writeInPieces(write, bytes, then) {
  const next = (at) => {
    if (at >= bytes.length) return then && then();
    write(bytes.subarray(at, at + PIECE));
    setImmediate(next, at + PIECE);
  };
  next(0);
}

// Calls back with (head, body) once a whole message (head, blank line,
// Content-Length bytes) has arrived in `recv`.
function onMessage(sock, recv, handle) {
  let done = false;
  sock.on("data", (chunk) => {
    recv.push(chunk);
    const all = Buffer.concat(recv);
    const end = all.indexOf("\r\n\r\n");
    if (done || end < 0) return;
    const head = all.subarray(0, end).toString("latin1");
    const length = Number(/content-length: (\d+)/i.exec(head)[1]);
    if (all.length < end + 4 + length) return;
    done = true;
    handle(head, all.subarray(end + 4));
  });
}

function serve(cert, key) {
  let closed = 0;
  const server = tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (sock) => {
    const side = track(sock, () => {
      if (++closed === COUNT) server.close();
    });
    onMessage(sock, side.recv, (head) => {
      const which = Number(/^POST \/(\d+) /.exec(head)[1]);
      const reply = body(RESPONSE_BODIES[which], 2 * which + 1);
      side.write(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${reply.length}\r\n\r\n`));
      writeInPieces(side.write, reply);
    });
    sock.on("end", () => sock.end());
  });
  server.listen(0, "127.0.0.1", () => console.log(server.address().port));
}

function request(port, which) {
  const sock = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
    const side = track(sock, () => {});
    onMessage(sock, side.recv, () => sock.end());
    const payload = body(REQUEST_BODIES[which], 2 * which);
    side.write(Buffer.from(`POST /${which} HTTP/1.1\r\nHost: t\r\nContent-Length: ${payload.length}\r\n\r\n`));
    writeInPieces(side.write, payload);
  });
}

if (mode === "server") serve(rest[0], rest[1]);
else if (mode === "client") for (let i = 0; i < COUNT; i++) request(Number(rest[0]), i);
else throw new Error(`unknown mode ${mode}`);
