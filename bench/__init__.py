"""`make bench`: regenerate docs/RESULTS.md and its plots from scratch on this machine."""
