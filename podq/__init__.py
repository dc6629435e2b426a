"""podq's Python client and what ships with it for users of a podq controller.

`podq.client` speaks the controller's HTTP API (sync and async, on httpx); it imports neither the
controller's server nor polars, so a platform can install podq and import only this.
"""
