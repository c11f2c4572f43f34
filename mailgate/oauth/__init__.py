"""OAuth2 for the IMAP mailboxes and the relay (SPEC §10): Microsoft 365, Google, or any server.

    providers.py  which endpoints and scopes an account uses
    store.py      the token files (0600, tmp + fsync + rename) and their lock
    endpoint.py   token requests over HTTP, their answers sorted into refused and unavailable
    device.py     `mailgate oauth login`: the device authorisation grant (RFC 8628)
    refresher.py  a current access token on request, refreshed ahead of expiry; failure episodes
    alert.py      the operator's mail when a token stops working
    sasl.py       logging in with a token: OAUTHBEARER or XOAUTH2, over IMAP and SMTP
    accounts.py   the accounts of one process; what status, /healthz and /metrics show
"""
