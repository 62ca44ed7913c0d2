"""Pure decisions of the healing controller (no Ray): replica health (``replica``), vanished replicas
(``vanish``), call statistics (``calls``), ensemble weights (``weights``), the retraining playbook
(``playbook``) and live trials (``rollout``). Each takes plain data and ``now``."""

__all__: list[str] = []
