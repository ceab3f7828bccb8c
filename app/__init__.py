"""viraltrace: live share-cascade tracking.

The ``app`` package is the stateless HTTP service: tracking endpoints, the
share-token signer and the event publisher. Nothing here connects to a
broker or database at import time; ``app.main.create_app`` builds the
service from one ``Settings`` object.
"""
