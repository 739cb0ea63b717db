"""A TLS echo server and its client in one process, on the system libssl.

Usage: echo_pair.py CERT KEY FILE... For each FILE, the client connects,
sends the file's bytes, reads them back from the server, checks them,
closes, and prints its local port. Nothing here is HTTP unless a file is.
"""
import socket
import ssl
import sys
import threading

cert, key, files = sys.argv[1], sys.argv[2], sys.argv[3:]
payloads = [open(f, "rb").read() for f in files]
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
listener = socket.create_server(("127.0.0.1", 0))


def read_exactly(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def serve():
    for payload in payloads:
        raw, _ = listener.accept()
        with server_ctx.wrap_socket(raw, server_side=True) as conn:
            conn.sendall(read_exactly(conn, len(payload)))


threading.Thread(target=serve, daemon=True).start()
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE
for payload in payloads:
    with client_ctx.wrap_socket(socket.create_connection(listener.getsockname())) as conn:
        conn.sendall(payload)
        assert read_exactly(conn, len(payload)) == payload
        print(conn.getsockname()[1], flush=True)
