"""A TLS client on the system libssl that is told when to talk.

Usage: tls_client.py PORT. Connects at once and prints its local port.
Then, for each line `<request body size> <response size> [<write size>]`
on stdin, sends one request on the same connection and prints `done` after
the response. With a write size, the body goes out in SSL writes of that
many bytes (a stream) rather than in one.
"""
import socket
import ssl
import sys

# (i * 7 + 3) % 256 repeats every 256 bytes: a multi-MiB body is cheap.
PATTERN = bytes((i * 7 + 3) % 256 for i in range(256))
port = int(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
print(conn.getsockname()[1], flush=True)
for line in sys.stdin:
    body_size, response_size, *write_size = (int(x) for x in line.split())
    head = b"POST /%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (response_size, body_size)
    if write_size:
        # The pattern repeats every 256 bytes: one piece serves every write.
        piece = PATTERN * (write_size[0] // 256 + 1)
        conn.sendall(head)
        for at in range(0, body_size, write_size[0]):
            conn.sendall(piece[:min(write_size[0], body_size - at)])
    else:
        body = (PATTERN * (body_size // 256 + 1))[:body_size]
        conn.sendall(head + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += conn.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    rest = bytearray(rest)  # appended to in place: multi-MiB bodies stay linear
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < length:
        rest += conn.recv(65536)
    print("done", flush=True)
conn.close()
