"""Process pools, packing and GC policy: the fast paths, kept out of the domain."""
