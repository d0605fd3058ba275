"""Who is calling: OIDC/JWT bearer tokens and API keys, turned into a ``Principal``."""
