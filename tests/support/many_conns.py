"""Opens N TLS connections to 127.0.0.1:PORT at once, then on each sends one
request naming this process and the connection's local port, and reads the
response: what cleartap attributes each record to can be checked against
what the record says.

Usage: many_conns.py PORT N. Prints `ok` when every response arrived.
"""
import os
import socket
import ssl
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) for _ in range(count)]
for conn in conns:
    who = b"who: pid=%d port=%d" % (os.getpid(), conn.getsockname()[1])
    conn.sendall(b"POST /16 HTTP/1.1\r\nHost: t\r\n%s\r\nContent-Length: 0\r\n\r\n" % who)
for conn in conns:
    buf = b""
    while buf.count(b"\r\n\r\n") < 1 or len(buf.split(b"\r\n\r\n", 1)[1]) < 16:
        chunk = conn.recv(4096)
        if not chunk:
            sys.exit("connection closed early")
        buf += chunk
    conn.close()
print("ok", flush=True)
