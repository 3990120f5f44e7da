"""The suite's fixtures and hooks, a module per concern; tests/conftest.py loads them as plugins.

- `origin`: the image origin, a real HTTP server with hostile routes;
- `receivers`: webhook receivers that answer from a script;
- `services`: `imgcrunch serve` as a real process;
- `stores`: PostgreSQL, Redis and an S3 server, each fresh per test.
"""
