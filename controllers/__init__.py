"""The healing controller: observe Ray/Serve state, decide with pure policies, act, record.

Users reach it through :mod:`controllers.client` (``ensure_controller``, ``get_controller``,
``remove_controller``) and read its trail with :mod:`controllers.audit` (``read_audit``); the
other modules are its parts: the actor (:mod:`controllers.host`) runs one :mod:`controllers.loop` per model.
"""

__all__: list[str] = []
