"""`hrm-edge bench`: side-by-side measurements of product code paths. Never imported by product code."""
