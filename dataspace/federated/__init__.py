"""Federated training: Flower ServerApp/ClientApp, Opacus DP-SGD, model templates."""
