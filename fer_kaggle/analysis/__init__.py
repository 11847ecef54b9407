"""Layer 8: what a finished run learned, for a course report.

    report   the report folder (index.html, report.md, figures)
    explain  saliency, occlusion and filters of a trained model
"""
