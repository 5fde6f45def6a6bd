"""The connector service's HTTP routes, one module per group (included by its ``create_app``)."""
