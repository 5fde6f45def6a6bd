"""The hub's HTTP routes, one module per group (included by ``dataspace.hub.app``)."""
