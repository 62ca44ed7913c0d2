"""What the controller watches besides replica health (pure: no Ray).

- :mod:`~controllers.monitors.data`: data quality and input drift over a window of live rows, and the
  alerts (data and model incidents) that checks open and clear.
- :mod:`~controllers.monitors.performance`: model performance from delayed labels, the error-stream
  change test, prediction drift and the label-free accuracy estimate.
"""
