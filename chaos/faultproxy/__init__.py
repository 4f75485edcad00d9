"""The pieces of the fault proxy; chaos/proxy.py is the command (its docstring is the manual) and runs them.

# Layout
- `rules`: the rule model: a rule's fields checked, whether it is in force, which rule decides a request.
- `aws`: AWS on the wire: a request's service and operation (`identify`), each service's error answer
  (`error_response`, the tables SQS_ERRORS, DDB_ERRORS, ASG_ERRORS).
- `http1`: HTTP/1.1 framing: requests and responses read whole (`Stream`, `Message`, `read_request`, ...).
- `server`: the proxy (`Proxy`: whole-endpoint faults, rules, the data path, the control port) and `serve`.

Standard library only: the Rust tests start chaos/proxy.py with any python3 (tests/it/common/proxy.rs).
chaos/tests/ has the unit tests of `rules` and `aws`.
"""
