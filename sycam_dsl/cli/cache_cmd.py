"""``sycam-dsl cache info|clear``: the terminal store's folder, entries and size, or remove them."""

from __future__ import annotations

import argparse

from .options import add_store_location


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("The terminal store keeps the terminals that terminals, eval, explain and synth compute, per "
                     "image, in $SYCAM_DSL_CACHE (default ~/.cache/sycam-dsl) up to a size bound "
                     "($SYCAM_DSL_CACHE_SIZE, default 2GB; the least recently used entries go first). info: its "
                     "folder, entries, size and bound; clear: remove every entry. Only the store's own files count and "
                     "go (by folder, name and format); links in the cache folder are never followed.")
    p.add_argument("action", choices=("info", "clear"), help="info or clear")
    add_store_location(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Print one line: the store's state (info) or what was removed (clear)."""
    from ..cam.store import TerminalStore
    from ..util.sizes import format_size

    store = TerminalStore(args.cache_dir, args.cache_size)
    if args.action == "info":
        print(store.info().line())
        return
    removed = store.clear()
    print(f"removed {removed.entries:,} entries ({format_size(removed.bytes)}) from the terminal store {store.root}")
