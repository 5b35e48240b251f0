"""The pure core: the rules of the protocol, with no I/O, no asyncio, no aiohttp and no plyvel.

``keys`` (grammar, matching, the pattern index), ``clock`` (stamps), ``objects`` (Object, Event and
the one bytes→Object path), ``jsontext`` (exact numbers), ``merge`` (PATCH), ``jsonpatch`` (RFC
6902 diff and apply), ``filters`` (the filter rules of §6), ``views`` (what a stream shows and the
change each event makes), ``frames`` (websocket frames on the wire), ``pages`` (glob pages:
cursors, page selection, next-page headers), ``origins`` (the Origin and Host rules). Every rule
here is a plain function or a small state machine, tested directly (tests/protocol/).
"""
