"""Measuring policies through the services: Pass@1 (`evaluate`), the value-prediction analysis
(`value_probe` samples, `analysis` scores), the HTML report (`report`).
"""
