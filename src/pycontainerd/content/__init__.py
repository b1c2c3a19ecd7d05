"""Content: blobs addressed by digest, and the ingests that write them."""
