"""Dataspace Protocol 2025-1 at the connector: catalog and contract negotiation (docs/dsp.md).

* :mod:`~dataspace.connectors.dsp.messages`: the DSP messages the connector sends, checks
  of those it reads, and its typed errors;
* :mod:`~dataspace.connectors.dsp.offers`: ODRL usage policies as DSP Offers, a request's
  offer as contract terms, signed terms as a DSP Agreement;
* :mod:`~dataspace.connectors.dsp.catalog`: the DSP Catalog/Dataset and the DCAT-AP
  catalog of a site;
* :mod:`~dataspace.connectors.dsp.negotiation` (over :mod:`~dataspace.connectors.dsp.store`):
  the provider's state machine, mapped onto ``dataspace.policy``'s contracts;
* :mod:`~dataspace.connectors.dsp.client`: the consumer's messages and the callback client.

The HTTP routes are ``dataspace.connectors.routes.dsp``. Only catalog and negotiation are
implemented; a DSP "transfer" has no counterpart (no data moves; a federated run under an
agreed contract is started with ``dataspace train``).
"""
