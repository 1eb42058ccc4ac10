"""Blinded reader study: build a reading list from reconstructions, serve it to readers, unblind the answers.

``study`` collects images and writes the study folder, ``store`` keeps the answers in SQLite,
``app`` is the reader web app (Starlette), ``results`` unblinds and computes the statistics,
``cli`` is ``recon-plugin review``.
"""
