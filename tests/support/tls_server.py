"""HTTPS test server on the system libssl (Python's ssl uses SSL_read_ex and
SSL_write_ex). It keeps ground truth: every byte it receives from and sends
to a peer is appended to OUTDIR/<peer port>.recv / .sent.

Usage: tls_server.py CERT KEY OUTDIR. Prints the port it listens on.
Requests: `POST /<n> HTTP/1.1` with Content-Length; the response carries n
bytes of pseudo-random (non-UTF-8) body. Connections are kept alive.
"""
import os
import random
import socket
import ssl
import sys
import threading

cert, key, outdir = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)


def record(port, kind, data):
    with open(os.path.join(outdir, f"{port}.{kind}"), "ab") as f:
        f.write(data)


def read_request(conn, buf, port):
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b"", b""
        record(port, "recv", chunk)
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    rest = bytearray(rest)  # appended to in place: multi-MiB bodies stay linear
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b"", b""
        record(port, "recv", chunk)
        rest += chunk
    return lines[0], head, bytes(rest[length:])


def serve(raw, peer):
    port = peer[1]
    with open(os.path.join(outdir, f"{port}.peer"), "w") as f:
        f.write(f"{peer[0]}:{peer[1]}")
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        return
    buf = b""
    rng = random.Random(port)
    try:
        while True:
            request_line, head, buf = read_request(conn, buf, port)
            if request_line is None:
                break
            size = int(request_line.split(b" ")[1].lstrip(b"/") or b"0")
            body = rng.randbytes(size)
            response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body
            # Written down first: a client that has the response may look.
            record(port, "sent", response)
            conn.sendall(response)
            if b"connection: close" in head.lower():
                break
    except (ssl.SSLError, OSError):
        pass
    finally:
        conn.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
print(listener.getsockname()[1], flush=True)
while True:
    raw, peer = listener.accept()
    threading.Thread(target=serve, args=(raw, peer), daemon=True).start()
