"""Patient-record schema, synthetic hospitals, and (later) reading a hospital's own files."""
