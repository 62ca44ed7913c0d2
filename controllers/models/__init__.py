"""Model-level healing: the orchestration (``healer``) over retrain jobs (``jobs``), canary
applications (``canaries``) and in-place version swaps (``swap``)."""

__all__: list[str] = []
