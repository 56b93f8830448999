"""The arithmetic of quality checks, pure Python with no Django: how alike two annotators' regions
are, how far a group of annotators agrees beyond chance, and how k annotations of one task become
one consensus result.

- `matching` pairs the regions of two annotators of a task and scores their agreement;
- `agreement` holds the chance-corrected coefficients (Cohen's and Fleiss' kappa, Krippendorff's
  alpha) over a table of category labels;
- `consensus` turns several annotations into one: majority vote and Dawid-Skene for classes,
  region fusion for geometry.

The jobs that read annotations and store verdicts call these; nothing here reads the database.
See docs/quality.md for the formulas and their limits.
"""
