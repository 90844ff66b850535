"""The math verifier's worker process: python -m sdzero.verifiers._math_worker READ_FD WRITE_FD."""

import sys
from multiprocessing.connection import Connection

from sdzero.verifiers.math import _worker

if __name__ == "__main__":
    _worker(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
