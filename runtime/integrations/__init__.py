"""Integrations with other frameworks, each behind its own optional extra.

``scenecam_edge.integrations.ray``: a Ray Data predictor (``pip install 'scenecam-edge[ray]'``).
"""
