"""Stand-in for ``ooo-storage serve [--sync]`` where the CLI lacks it (no CLI, or no ``--sync``).

    python bench/peers_serve.py --port P --data DIR [--sync]

Serves what ``ooo-storage serve --data DIR [--sync]`` is specified to serve (README "Durable
writes"): the server (through ``ServerRunner``) over a memory layer above ``LevelDBLayer(DIR,
sync=...)``, on 127.0.0.1, until SIGTERM. bench/peers.py uses the real CLI whenever it can.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import serve


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--sync", action="store_true", help="durable writes (group commit)")
    args = parser.parse_args()
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(args.data, sync=args.sync))
    async with store:
        await serve(store, "127.0.0.1", args.port)


if __name__ == "__main__":
    asyncio.run(main())
