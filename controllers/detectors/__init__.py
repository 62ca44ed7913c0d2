"""Statistics the healing controller decides with: small pure classes and functions (NumPy/SciPy, no Ray).

- :mod:`~controllers.detectors.cusum`: the sequential detectors, :class:`FeatureCusum` (inputs) and
  :class:`ErrorCusum` (a model's error stream), and their configs.
- :mod:`~controllers.detectors.calibration`: the seeded simulations that set their thresholds.
- :mod:`~controllers.detectors.designs`: what a CUSUM is designed to catch, in log-likelihood ratios
  (the configs; both of the above read them).
- :mod:`~controllers.detectors.page_hinkley`: the Page–Hinkley test (the controller's optional error
  test and the drift bench's reference detector).
- :mod:`~controllers.detectors.two_sample`: window tests against a reference sample (KS, PSI,
  Wasserstein, chi-squared, Jensen–Shannon).
- :mod:`~controllers.detectors.intervals`: Wilson bounds for a proportion (accuracies on few labels).

Import from the modules; this package imports nothing, so reading one statistic does not load the rest.
"""
