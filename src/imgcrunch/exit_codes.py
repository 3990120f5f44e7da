"""The command line's exit codes, shared by `imgcrunch process` and the API client commands.

A module of its own so that `submit`, `status` and `download` load neither pyvips nor
SQLAlchemy: a CI step that only talks to a server starts in a fraction of the time.
"""

OK = 0
SOME_FAILED = 1  # every image was tried; some failed (their reasons are in the output CSV)
UNUSABLE = 2  # the CSV was refused, or the request could not be processed at all
UNREACHABLE = 3  # the server could not be reached (submit, status, download)
