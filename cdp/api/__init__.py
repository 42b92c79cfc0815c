"""The HTTP API (aiohttp): ingest, the Segment-compatible routes and the admin routes.

An event's way in: a route module (``ingest``: ``POST /cdp/ingest``; ``tracking``:
``/v1/*``, with ``tracking_spec`` mapping Segment's calls) validates it into a
``StreamEvent``, and ``publisher`` stores it with ``lua/publish-n.lua`` in its
partition stream before the request is answered. ``app`` assembles the routes and
the middlewares (errors as JSON; ``auth``: the admin token for ``@admin`` handlers);
``server`` runs the process. ``requests`` and ``body`` hold what every route uses to
read a request; ``openapi.json`` documents every route.
"""
