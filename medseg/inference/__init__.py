"""Whole-scan inference: lung mask, ROI sliding window, predictor and the ``infer`` pipeline."""
