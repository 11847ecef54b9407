"""Layer 0, used by every other: the user's errors, the run's settings and the run folder's files.

    errors     FerKaggleError, DamagedFile, TimeLimitReached; a machine's fault in one line
    config     Config (every setting, and what each changes) and the presets
    atomic     every file written atomically and read back checked
    runfolder  the run folder's layout: the one owner of every path in it
"""
