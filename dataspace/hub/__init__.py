"""The hub service: catalog, contract registry, run registry, audit log server."""
