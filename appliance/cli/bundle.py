"""`appliance bundle`: build bundles (connected side) and import them (site side)."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p = sub.add_parser("bundle", help="create and import offline bundles",
                       description="Offline bundles carry models and files onto an air-gapped "
                       "site. `create` runs on a connected machine; `import` on the site.")
    bs = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    c = bs.add_parser("create", help="build a bundle from a recipe (connected side)",
                      description="Build a bundle directory from a TOML recipe. Sources named "
                      "pypi:... are downloaded from the package index (connected side only).")
    c.add_argument("recipe", type=Path, help="recipe TOML file")
    c.add_argument("--out", type=Path, required=True, help="directory to create")
    c.add_argument("--json", action="store_true", help="print the bundle manifest as JSON")
    c.set_defaults(func=create)

    i = bs.add_parser("import", help="verify and import a bundle",
                      description="Verify every file's sha256 while copying it into the "
                      "content store; resume an interrupted import; make the contents "
                      "visible only when everything verified. Works while the server runs.")
    add_common(i)
    i.add_argument("path", type=Path, help="bundle directory (e.g. on a mounted USB stick)")
    i.set_defaults(func=import_)

    ls = bs.add_parser("list", help="list imported bundles",
                       description="List the bundles imported into this data directory.")
    add_common(ls)
    ls.set_defaults(func=list_)


def create(args: argparse.Namespace) -> int:
    from appliance.bundle.create import create_bundle, source_sizes
    from appliance.bundle.recipe import load_recipe

    try:
        recipe = load_recipe(args.recipe)
        resolved, total = source_sizes(recipe)
        bar = ProgressBar(f"bundle {recipe.name}", enabled=not args.json)
        done = 0

        def step(_: str, n: int) -> None:
            nonlocal done
            done += n
            bar.update(done, total)
        manifest = create_bundle(recipe, args.out, progress=step, resolved=resolved)
        bar.close()
    except ApplianceError as exc:
        return fail(exc.message, 2 if exc.status == 400 else 1)
    if args.json:
        print_json(manifest)
    else:
        print(f"bundle {manifest.name} {manifest.version} written to {args.out} "
              f"({len(manifest.files)} files, {manifest.total_size / 1e6:.1f} MB)")
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
                               progress=bar.update)
    except ApplianceError as exc:
        bar.close()
        return fail(exc.message, 1)
    bar.close()
    if args.json:
        print_json(result)
    elif result.already_imported:
        print(f"bundle {result.name} {result.version} was already imported ({result.bundle_id})")
    else:
        print(f"imported bundle {result.name} {result.version} as {result.bundle_id}: "
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
