"""``ooo-storage token``: make bearer tokens for an ``--auth`` policy file.

::

    ooo-storage token new [--name N]   print a fresh token, then the TOML lines to paste
    ooo-storage token hash             read a token on stdin, print its sha256 (what the file keeps)

``token new`` prints the token alone on the first line, so that a script can take it with
``head -1`` (a reader that stops early ends it quietly, status 0); the lines after it are a
``[[tokens]]`` entry for the policy file, which keeps only the SHA-256 of the token
(``protocol/access.py``): whoever reads the file cannot use the token. The entry's rule is a
placeholder granting ``read`` on ``CHANGE-ME/*``: edit it before relying on it.
The token is shown once; a lost token is replaced, not recovered.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from ..protocol.access import token_digest

__all__ = ["add_parsers", "new_token", "toml_entry"]

TOKEN_BYTES = 32
"""Random bytes in a token: 256 bits, as URL-safe base64 (43 characters, no ``.``, so a token is
never mistaken for a JWT)."""
PLACEHOLDER_RULE = '{ paths = ["CHANGE-ME/*"], rights = ["read"] }'


def new_token() -> str:
    """A fresh random bearer token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def toml_entry(token: str, name: str) -> str:
    """The ``[[tokens]]`` entry of ``token`` for a policy file (without the token itself)."""
    # A JSON string is a valid TOML basic string (same escapes), whatever the name holds.
    return "\n".join(
        (
            "[[tokens]]",
            f"name = {json.dumps(name, ensure_ascii=False)}",
            f'sha256 = "{token_digest(token)}"',
            "# what this token may do: edit the paths and rights (read, write, delete, admin)",
            f"rules = [{PLACEHOLDER_RULE}]",
        )
    )


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "make bearer tokens for an --auth policy file"
    token = subparsers.add_parser("token", help=summary, description=summary)
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    text = "print a fresh random token on the first line, then the TOML lines to paste into the file"
    new = actions.add_parser("new", help=text, description=text)
    new.add_argument("--name", type=_name, help="the token's name in the policy file and in logs "
                     "(default: token-<first 8 hex digits of its sha256>)")
    new.set_defaults(func=run_new)
    text = "read a token on stdin and print its sha256, as the policy file keeps it"
    digest = actions.add_parser("hash", help=text, description=text)
    digest.set_defaults(func=run_hash)


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a token's name cannot be empty")
    return text


def run_new(args: argparse.Namespace) -> int:
    token = new_token()
    name = args.name or f"token-{token_digest(token)[:8]}"
    try:
        print(token)
        print(toml_entry(token, name))
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's last flush
    except BrokenPipeError:  # `ooo-storage token new | head -1`: the reader took what it wanted
        sys.stderr.close()  # nothing more can be reported; keep the interpreter from complaining
    return 0


def run_hash(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip()
    if not token:
        print("ooo-storage: token hash: give the token on stdin (echo \"$TOKEN\" | ooo-storage token hash)",
              file=sys.stderr)
        return 2
    print(token_digest(token))
    return 0
