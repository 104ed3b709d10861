"""End-to-end stages composed from the library (each a plain function; the CLI only calls them)."""
