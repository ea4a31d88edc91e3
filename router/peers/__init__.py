"""Example peers: a bot, a contact center, a channel and a flow to try the router with.

`router peers --config PATH` serves them on the URLs the configuration names, so that a
message sent to a freshly started router shows a whole conversation instead of retrying
against nothing. They talk to the router only over its public HTTP contract.
"""
