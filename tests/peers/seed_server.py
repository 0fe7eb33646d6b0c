#!/usr/bin/env python3
"""A classroom-protocol server, written from the assignment text alone.

Usage: seed_server.py [IP] [PORT]

Behaves as the assignment's server does: one client at a time, the header
read with a single recv(1024), the reply b'go ahead', the file written to
'<name>.temp' in the working directory and deleted if anything goes wrong.
The port argument (0 picks a free one) and the 'listening on IP:PORT' line
exist so that tests can run it without a fixed port.
"""

import os
import socket
import sys

BUFFER_SIZE = 1024


def get_file_info(data: bytes) -> tuple[str, int]:
    return data[8:].decode(), int.from_bytes(data[:8], byteorder='big')


def serve(ip: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((ip, port))
        server.listen()
        host, bound_port = server.getsockname()
        print(f'listening on {host}:{bound_port}', flush=True)
        while True:
            client, address = server.accept()
            file_name = None
            try:
                header = client.recv(BUFFER_SIZE)
                file_name, file_size = get_file_info(header)
                client.sendall(b'go ahead')
                with open(file_name + '.temp', 'wb') as file:
                    received = 0
                    while received < file_size:
                        chunk = client.recv(BUFFER_SIZE)
                        if not chunk:
                            raise OSError('client closed before sending the whole file')
                        received += len(chunk)
                        file.write(chunk)
                print(f'stored {file_name}.temp {file_size}', flush=True)
            except Exception as error:
                print(f'failed: {error}', file=sys.stderr, flush=True)
                if file_name is not None and os.path.exists(file_name + '.temp'):
                    os.remove(file_name + '.temp')
            finally:
                client.close()


if __name__ == '__main__':
    serve(sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
          int(sys.argv[2]) if len(sys.argv) > 2 else 12000)
