"""dmsim: a feature phone that runs real OMA-DM sessions against the server."""
