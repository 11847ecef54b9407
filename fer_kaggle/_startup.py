"""A Ctrl-C while the program starts (torch takes seconds to import) ends it quietly, as one later does."""
import contextlib
import os
import signal
import sys
import threading


def _stop(signum, frame):
    print("\ninterrupted while starting: nothing was written", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)


@contextlib.contextmanager
def quiet_interrupts(as_program=True):
    """Within the block, SIGINT exits with status 130 and one line, where Python would print the traceback
    of a KeyboardInterrupt raised inside some import. Only for the program (a library's importer keeps its
    own Ctrl-C), only where the default handler is in place, and only on the main thread."""
    if not as_program or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
