import signal
import sys

from ._startup import quiet_interrupts

if __name__ == "__main__":  # guarded: a spawned unit worker (executor.LocalPool) imports this module too
    with quiet_interrupts():
        from .cli import main
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a Ctrl-C now would only interrupt Python's own exit
    sys.exit(code)
