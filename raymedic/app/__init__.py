"""The app layer: the ``raymedic`` command line (:mod:`raymedic.app.cli`), the steps that bring the
service up and down (:mod:`raymedic.app.service`), the demo (:mod:`raymedic.app.demo`) and a small
JSON-over-HTTP client (:mod:`raymedic.app.http`).

Nothing is imported here: ``raymedic --help`` loads only what the parser needs.
"""
