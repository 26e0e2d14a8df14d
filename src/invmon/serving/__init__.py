"""Serving: the KServe predictor, its HTTP edge and request batching, the model server, and the
one client that predict, audit and the deploy smoke test use."""
