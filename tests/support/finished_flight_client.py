"""A TLS 1.3 client whose first request leaves in the same send as its
Finished message, so the server reads both at once: the SSL_read that
finishes the server's handshake then also returns the request.

Usage: finished_flight_client.py PORT REQUEST. Prints its local port, then
what it received, once the server's last line ("BYE <n>") came.
"""
import socket
import ssl
import sys

port, request = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing)
sock = socket.create_connection(("127.0.0.1", port))
print(sock.getsockname()[1], flush=True)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        sock.sendall(outgoing.read())
        incoming.write(sock.recv(65536))
tls.write(request)
sock.sendall(outgoing.read())  # Finished and the request: one send
received = b""
while b"BYE " not in received or not received.endswith(b"\n"):
    try:
        received += tls.read(65536)
    except ssl.SSLWantReadError:
        data = sock.recv(65536)
        if not data:
            sys.exit(f"the server closed the connection after {received!r}")
        incoming.write(data)
sock.close()
sys.stdout.buffer.write(received)
