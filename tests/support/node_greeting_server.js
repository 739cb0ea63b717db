// A node TLS server that writes a greeting from its 'secureConnection'
// callback, which node runs inside the SSL_read that finishes the
// handshake: the server of tests/e2e_tls_libraries.rs
// (node_writes_inside_the_handshake_read_are_both_captured).
//
//   node node_greeting_server.js DIR CERT KEY COUNT   prints its port
//
// Each connection: the greeting, then the request (one line) is answered
// with "BYE <n>\n". What the server wrote and read, per connection, goes
// into DIR as <remote port>.sent / .recv. Exits after COUNT connections.
"use strict";
const fs = require("fs");
const path = require("path");
const tls = require("tls");

const [dir, cert, key, count] = process.argv.slice(2);
let left = Number(count);
let served = 0;

const server = tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (socket) => {
  const name = path.join(dir, String(socket.remotePort));
  const greeting = Buffer.from(`GREETING ${served++} FROM THE SECURE CALLBACK\n`);
  socket.write(greeting);
  fs.appendFileSync(`${name}.sent`, greeting);
  let request = Buffer.alloc(0);
  socket.on("data", (data) => {
    fs.appendFileSync(`${name}.recv`, data);
    request = Buffer.concat([request, data]);
    if (!request.includes(10)) return;
    const bye = Buffer.from(`BYE ${request.length}\n`);
    fs.appendFileSync(`${name}.sent`, bye);
    socket.end(bye);
  });
  socket.on("close", () => {
    if (--left === 0) server.close();
  });
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
