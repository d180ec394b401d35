"""TCP reassembly (sans-IO): segments in, stream events out."""
