"""tls_server.py listening on another address than 127.0.0.1 (e.g. inside
a network namespace the test made).

Usage: tls_server_on.py ADDRESS CERT KEY OUTDIR. Prints the port, as
tls_server.py does, and keeps its ground truth the same way.
"""
import os
import runpy
import socket
import sys

address = sys.argv[1]
bind = socket.socket.bind


def bind_to_address(sock, addr):
    host, port = addr
    assert host == "127.0.0.1", addr
    bind(sock, (address, port))


socket.socket.bind = bind_to_address
server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls_server.py")
sys.argv = [server] + sys.argv[2:]
runpy.run_path(server, run_name="__main__")
