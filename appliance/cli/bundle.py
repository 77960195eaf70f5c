"""`appliance bundle`: build bundles (connected side) and import them (site side)."""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable
from pathlib import Path

from appliance.bundle.parts import DEFAULT_PART_SIZE, parse_size
from appliance.bundle.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    read_public_key,
    trust_key,
    trusted_keys,
)
from appliance.cli.common import (
    add_common,
    fail,
    print_json,
    print_table,
    run_with_store,
    settings_from,
)
from appliance.cli.progress import ProgressBar
from appliance.kernel.errors import ApplianceError, ConfigError
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="create, sign, verify and import offline bundles",
                       description="Offline bundles carry models and files onto an air-gapped "
                       "site. `create` runs on a connected machine; `import` on the site.")
    bs = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    c = bs.add_parser("create", help="build a bundle from a recipe (connected side)",
                      description="Build a bundle directory from a TOML recipe. Sources named "
                      "pypi:... are downloaded from the package index (connected side only).")
    c.add_argument("recipe", type=Path, help="recipe TOML file")
    c.add_argument("--out", type=Path, required=True, help="directory to create")
    c.add_argument("--sign-key", type=Path, metavar="PREFIX.key",
                   help="Ed25519 private key (from `bundle keygen`) to sign the manifest with")
    c.add_argument("--part-size", type=_size, metavar="SIZE", nargs="?", const=DEFAULT_PART_SIZE,
                   help="split blobs larger than SIZE into parts, for FAT32 media (SIZE like "
                   "4000M or 3.9GiB; default without a value: just under 4 GiB)")
    c.add_argument("--json", action="store_true", help="print the bundle manifest as JSON")
    c.set_defaults(func=create)

    k = bs.add_parser("keygen", help="make an Ed25519 signing key pair (connected side)",
                      description="Write PREFIX.key (private, mode 0600; keep it on the "
                      "connected side) and PREFIX.pub (give it to sites: `bundle trust`).")
    k.add_argument("--out", type=Path, required=True, metavar="PREFIX", help="file prefix")
    k.add_argument("--json", action="store_true", help="print the key id and paths as JSON")
    k.set_defaults(func=keygen)

    v = bs.add_parser("verify", help="check a bundle's signature and every file's sha256",
                      description="Verify a bundle without importing it: the signature over "
                      "bundle.json and the sha256 of every file (and part) it lists.")
    add_common(v)
    v.add_argument("path", type=Path, help="bundle directory or tar")
    v.add_argument("--trust", type=Path, action="append", default=[], metavar="KEY.pub",
                   help="public key to trust (repeatable; default: the data dir's trusted keys)")
    v.add_argument("--allow-unsigned", action="store_true",
                   help="accept a bundle without a trusted signature")
    v.set_defaults(func=verify)

    t = bs.add_parser("trust", help="trust a bundle signing key on this site (audited)",
                      description="Add a public key whose signed bundles may be imported.")
    add_common(t)
    t.add_argument("key", type=Path, metavar="KEY.pub", help="public key from `bundle keygen`")
    t.add_argument("--name", default="", help="a label for the key (default: the file name)")
    t.set_defaults(func=trust)

    i = bs.add_parser("import", help="verify and import a bundle",
                      description="Verify every file's sha256 while copying it into the "
                      "content store; resume an interrupted import; make the contents "
                      "visible only when everything verified. Works while the server runs.")
    add_common(i)
    i.add_argument("path", type=Path,
                   help="bundle directory (e.g. on a mounted USB stick) or a tar of one")
    i.add_argument("--allow-unsigned", action="store_true",
                   help="import even without a signature by a trusted key")
    i.set_defaults(func=import_)

    sh = bs.add_parser("show", help="what an imported bundle holds",
                       description="A bundle's record, models, images and blobs (and how many "
                       "of them other bundles share).")
    add_common(sh)
    sh.add_argument("bundle", help="bundle id, or name (the latest import of it)")
    sh.set_defaults(func=show)

    rm = bs.add_parser("remove", help="forget an imported bundle and free its blobs (audited)",
                       description="Remove a bundle's models, images and blob references, "
                       "then garbage-collect blobs no other bundle uses. A model version it "
                       "brought that was active rolls back to the newest remaining version.")
    add_common(rm)
    rm.add_argument("bundle", help="bundle id, or name (the latest import of it)")
    rm.add_argument("--keep-blobs", action="store_true",
                    help="only forget the bundle; leave blob garbage collection for later")
    rm.set_defaults(func=remove)

    gc = bs.add_parser("gc", help="delete blobs no bundle references",
                       description="Garbage-collect the content store: delete every blob no "
                       "imported bundle references.")
    add_common(gc)
    gc.add_argument("--partials", action="store_true",
                    help="also delete interrupted copies (an unfinished import then restarts "
                    "from the beginning)")
    gc.set_defaults(func=gc_)

    ls = bs.add_parser("list", help="list imported bundles",
                       description="List the bundles imported into this data directory.")
    add_common(ls)
    ls.set_defaults(func=list_)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def create(args: argparse.Namespace) -> int:
    from appliance.bundle.create import create_bundle, source_sizes
    from appliance.bundle.recipe import load_recipe

    try:
        key = load_private_key(args.sign_key) if args.sign_key else None
        recipe = load_recipe(args.recipe)
        resolved, total = source_sizes(recipe)
        bar = ProgressBar(f"bundle {recipe.name}", enabled=not args.json)
        done = 0

        def step(_: str, n: int) -> None:
            nonlocal done
            done += n
            bar.update(done, total)
        manifest = create_bundle(recipe, args.out, progress=step, resolved=resolved,
                                 sign_key=key, part_size=args.part_size or 0)
        bar.close()
    except ApplianceError as exc:
        return fail(exc.message, 2 if exc.status == 400 else 1)
    if args.json:
        print_json(manifest)
    else:
        signed = f", signed by {key_id(key.public_key())}" if key else ", unsigned"
        print(f"bundle {manifest.name} {manifest.version} written to {args.out} "
              f"({len(manifest.files)} files, {manifest.total_size / 1e6:.1f} MB{signed})")
    return 0


def keygen(args: argparse.Namespace) -> int:
    try:
        key_path, pub_path, kid = generate_keypair(args.out)
    except ApplianceError as exc:
        return fail(exc.message, 2)
    if args.json:
        print_json({"key_id": kid, "private_key": str(key_path), "public_key": str(pub_path)})
    else:
        print(f"key {kid}: private {key_path} (keep it secret), public {pub_path}")
    return 0


def verify(args: argparse.Namespace) -> int:
    from appliance.bundle.importer import check_bundle_dir, verify_bundle
    from appliance.store.state import open_sync

    try:
        if args.trust:
            keys = [read_public_key(p) for p in args.trust]
            trusted = {key_id(k): k for k in keys}
        else:
            conn = open_sync(settings_from(args).data_path)
            try:
                trusted = trusted_keys(conn)
            finally:
                conn.close()
        bar = ProgressBar(f"verify {args.path.name}", enabled=not args.json)
        manifest, signer = verify_bundle(check_bundle_dir(args.path), trusted=trusted,
                                         allow_unsigned=args.allow_unsigned,
                                         progress=bar.update)
        bar.close()
    except ApplianceError as exc:
        return fail(exc.message, 2 if exc.status == 400 else 1)
    if args.json:
        print_json({"name": manifest.name, "version": manifest.version, "signed_by": signer,
                    "files": len(manifest.files), "bytes": manifest.total_size, "ok": True})
    else:
        who = f"signed by trusted key {signer}" if signer else "NOT signed by a trusted key"
        print(f"bundle {manifest.name} {manifest.version}: {who}; all {len(manifest.files)} "
              f"files match their sha256 ({manifest.total_size / 1e6:.1f} MB)")
    return 0


def trust(args: argparse.Namespace) -> int:
    from appliance.identity.audit import cli_actor
    from appliance.store.state import open_sync

    try:
        public = read_public_key(args.key)
        conn = open_sync(settings_from(args).data_path)
        try:
            kid, added = trust_key(conn, public, name=args.name or args.key.name,
                                   actor=cli_actor())
        finally:
            conn.close()
    except ApplianceError as exc:
        return fail(exc.message, 2 if exc.status == 400 else 1)
    if args.json:
        print_json({"key_id": kid, "added": added})
    else:
        print(f"key {kid} {'is now trusted' if added else 'was already trusted'}")
    return 0


def import_(args: argparse.Namespace) -> int:
    from appliance.bundle.importer import check_bundle_dir, import_bundle

    try:
        settings = settings_from(args)
    except ConfigError as exc:
        return fail(exc.message, 2)
    bar = ProgressBar(f"import {args.path.name}", enabled=not args.json)
    try:
        result = import_bundle(settings.data_path, check_bundle_dir(args.path),
                               progress=bar.update, allow_unsigned=args.allow_unsigned)
    except ApplianceError as exc:
        bar.close()
        return fail(exc.message, 1)
    bar.close()
    if not result.already_imported:
        from appliance.identity.audit import cli_actor, write_sync

        write_sync(settings.data_path, actor=cli_actor(), action="bundle.import",
                   target=result.bundle_id, detail={"name": result.name,
                                                    "version": result.version,
                                                    "signed_by": result.signed_by,
                                                    "models": result.models})
    if args.json:
        print_json(result)
    elif result.already_imported:
        print(f"bundle {result.name} {result.version} was already imported ({result.bundle_id})")
    else:
        signed = f"signed by {result.signed_by}" if result.signed_by else "UNSIGNED"
        print(f"imported bundle {result.name} {result.version} ({signed}) as "
              f"{result.bundle_id}: "
              f"{len(result.models)} model(s) ({', '.join(result.models) or 'none'}), "
              f"{result.bytes_copied / 1e6:.1f} MB copied, "
              f"{result.bytes_skipped / 1e6:.1f} MB already present")
    return 0


def list_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        rows = await store.fetchall(
            "SELECT id, name, version, created, imported_at, source_path FROM bundles"
            " ORDER BY imported_at")
        data = [dict(r) for r in rows]
        if args.json:
            print_json(data)
        else:
            print_table(["id", "name", "version", "created", "source"],
                        [(d["id"], d["name"], d["version"], d["created"], d["source_path"])
                         for d in data])
        return 0
    return run_with_store(args, body)


def _with_conn(args: argparse.Namespace, body: Callable[[sqlite3.Connection, Path], int]
               ) -> int:
    from appliance.store.state import open_sync

    try:
        data = settings_from(args).data_path
        conn = open_sync(data)
        try:
            return body(conn, data)
        finally:
            conn.close()
    except ApplianceError as exc:
        return fail(exc.message, 2 if exc.status == 400 else 1)


def show(args: argparse.Namespace) -> int:
    from appliance.bundle.manage import bundle_details

    def body(conn: sqlite3.Connection, data: Path) -> int:
        d = bundle_details(conn, args.bundle)
        if args.json:
            print_json(d)
            return 0
        print(f"bundle {d['name']} {d['version']} ({d['id']}), created {d['created']}, "
              f"signed by {d['signed_by'] or 'nobody (imported unsigned)'}")
        print(f"  from {d['source_path']}")
        for m in d["models"]:
            print(f"  model {m['name']} {m['version']} ({m['task']}, {m['format']}, "
                  f"{m['size'] / 1e6:.1f} MB){' active' if m['active'] else ''}")
        for image in d["images"]:
            print(f"  image {image}")
        print(f"  {d['blobs']} blobs, {d['bytes'] / 1e6:.1f} MB; {d['shared_blobs']} shared with "
              f"other bundles; {d['bytes_only_here'] / 1e6:.1f} MB freed by removing it")
        return 0
    return _with_conn(args, body)


def remove(args: argparse.Namespace) -> int:
    from appliance.bundle.manage import collect_garbage, data_blob_store, remove_bundle
    from appliance.store.audit import cli_actor

    def body(conn: sqlite3.Connection, data: Path) -> int:
        bid = remove_bundle(conn, args.bundle, actor=cli_actor())
        gc = None if args.keep_blobs else collect_garbage(conn, data_blob_store(data))
        if args.json:
            print_json({"removed": bid, "gc": gc})
        else:
            freed = f"; {gc.blobs_removed} blobs ({gc.bytes_freed / 1e6:.1f} MB) deleted" \
                if gc else ""
            print(f"bundle {bid} removed{freed}")
        return 0
    return _with_conn(args, body)


def gc_(args: argparse.Namespace) -> int:
    from appliance.bundle.manage import collect_garbage, data_blob_store

    def body(conn: sqlite3.Connection, data: Path) -> int:
        gc = collect_garbage(conn, data_blob_store(data), partials=args.partials)
        if args.json:
            print_json(gc)
        else:
            print(f"{gc.blobs_removed} unreferenced blobs deleted, {gc.bytes_freed / 1e6:.1f} MB "
                  f"freed; {gc.partials_removed} partial copies deleted")
        return 0
    return _with_conn(args, body)
