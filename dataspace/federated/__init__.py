"""Federated training: Flower ServerApp/ClientApp, Opacus-style DP-SGD, model templates.

Apps (what runs) are kept apart from the engines (how they run):

* apps: :mod:`.client_app` (the connector's own ClientApp: the site fixes the
  mechanism, every release charged via :mod:`.guard` by the ledger's privacy
  filter before any read, DP statistics once per contract, DP-SGD, DP losses, one
  evaluation per round; docs/threat-model.md), :mod:`.server_app` (weighted
  FedAvg, per-round evaluation, run directory with per-round global models and
  per-site updates, resume);
* building blocks: :mod:`.templates` (model registry: ``bc-mlp``,
  ``bc-chunk``), :mod:`.data` (site store to tensors, hash-based held-out
  split), :mod:`.normalize` (DP statistics), :mod:`.public_stats` (the consumer's
  public statistics: no stats release, plan without it), :mod:`.dp` (privacy plan with
  :mod:`dataspace.accountant`, book-keeping clipping and Opacus modes), :mod:`.noise`
  (the site's secret ChaCha20 noise, fresh for every release);
* engines: :mod:`.run` (one process), :mod:`.deploy` (SuperLink + SuperNodes,
  TLS, node auth; keys from :mod:`.pki`), :mod:`.site_worker` (warm per-site
  worker behind a lean ClientApp), :mod:`.fab` (FAB signatures in Flower's format);
* outputs: :mod:`.report`; helpers for demos and tests: :mod:`.shards`,
  :mod:`.federation`.
"""
