#!/usr/bin/env python3
"""A classroom-protocol client, written from the assignment text alone.

Usage: seed_client.py <filename> [IP] [PORT]

Sends the file name exactly as typed (directories included), the header in
one send, waits for b'go ahead' with one recv(1024), streams the file in
1024-byte chunks and closes. The port argument exists so that tests can use a
server on a free port.
"""

import os
import socket
import sys

BUFFER_SIZE = 1024


def get_file_size(file_name: str) -> int:
    return os.path.getsize(file_name)


def send(file_name: str, ip: str, port: int) -> None:
    file_size = get_file_size(file_name)
    header = file_size.to_bytes(8, byteorder='big') + file_name.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.connect((ip, port))
        client.send(header)
        if client.recv(BUFFER_SIZE) != b'go ahead':
            raise OSError('Bad server response - was not go ahead!')
        with open(file_name, 'rb') as file:
            while True:
                chunk = file.read(BUFFER_SIZE)
                if len(chunk) == 0:
                    break
                client.sendall(chunk)


if __name__ == '__main__':
    send(sys.argv[1],
         sys.argv[2] if len(sys.argv) > 2 else '127.0.0.1',
         int(sys.argv[3]) if len(sys.argv) > 3 else 12000)
