"""flagware: feature gates, experiments and server-side events for any WSGI app."""
