"""The checks of SPEC §4.3–4.6, one concept per module, each a small named function:

    machine.py     is it machine mail (auto-replies, bulk, DSNs)?           §4.3
    bounce.py      is it a bounce of our own notification?                  §4.3
    sender.py      is the sender an active, authenticated contact within    §4.4
                   the rate limit?
    notice.py      may an unknown sender be told how to get access?        §4.4
    reference.py   which ticket does it answer, and may the sender see it?  §4.5–4.6
    agent.py       is it a proven agent's mail?                             §11

`mailgate.core.pipeline` asks them in order; none of them writes anything but bounce.py
(which marks our own outbound rows bounced).
"""
