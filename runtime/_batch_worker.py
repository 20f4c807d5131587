"""Entry point of a local batch worker process: `python -m lnrt._batch_worker FD` (see
`lnrt.batch_engines.LocalEngine`)."""
import sys

from .batch_engines import local_worker_main

if __name__ == "__main__":
    local_worker_main(int(sys.argv[1]))
