#!/usr/bin/env python3
"""Send many files with the classroom client, one connection per file, in one process.

Usage: seed_many.py IP PORT FILE...

Calls tests/peers/seed_client.py's own send() for each file in turn, exactly
as that client would if started once per file, but without paying a Python
interpreter start-up per file (which would measure Python, not the protocol).
Run it from the directory holding the files: the client sends the name as typed.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'peers'))

import seed_client  # noqa: E402


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    ip, port = sys.argv[1], int(sys.argv[2])
    for name in sys.argv[3:]:
        seed_client.send(name, ip, port)


if __name__ == '__main__':
    main()
