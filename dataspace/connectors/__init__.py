"""Format readers, the site store, enrollment, the catalog entry and the connector service."""
