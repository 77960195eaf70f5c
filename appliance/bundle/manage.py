"""Imported bundles: what each holds, removing one, and garbage collection of blobs.

Each bundle owns a reference (``blob_refs``) to every blob it listed; a blob shared by two
bundles is stored once and lives until the last of them is removed. Garbage collection
deletes blobs nobody references, under the state database's write lock; an import that
races it notices a vanished blob in its final transaction and asks for a retry.

The registry serves a blob under a repository only while ``image_blobs`` says one of that
repository's manifests names it; those rows belong to the bundle, like its manifests and tags.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from appliance.bundle.images import ImageDocument
from appliance.content.store import BlobStore
from appliance.kernel.errors import Conflict, NotFound
from appliance.store import audit

log = logging.getLogger(__name__)


class GcResult(msgspec.Struct):
    blobs_removed: int
    bytes_freed: int
    partials_removed: int = 0


def find_bundle(conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
    """A bundle by id, or by name (the latest import of that name)."""
    row: sqlite3.Row | None = conn.execute("SELECT * FROM bundles WHERE id=?", (ref,)).fetchone()
    if row is None:
        row = conn.execute("SELECT * FROM bundles WHERE name=? ORDER BY imported_at DESC",
                           (ref,)).fetchone()
    if row is None:
        raise NotFound(f"no bundle {ref!r}; see `appliance bundle list`")
    return row


def bundle_details(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """A bundle's record, contents and blobs (with how many bundles share each)."""
    row = find_bundle(conn, ref)
    bid = row["id"]
    models = [dict(r) for r in conn.execute(
        "SELECT name, version, task, format, size, active FROM models WHERE bundle_id=?"
        " ORDER BY name", (bid,))]
    images = [f"{r[0]}:{r[1]}" for r in conn.execute(
        "SELECT repository, tag FROM image_tags WHERE bundle_id=? ORDER BY 1, 2", (bid,))]
    blobs = conn.execute(
        "SELECT r.digest, b.size, (SELECT count(*) FROM blob_refs x WHERE x.digest=r.digest)"
        " AS refs FROM blob_refs r JOIN blobs b ON b.digest=r.digest WHERE r.owner=?",
        (bid,)).fetchall()
    return {**{k: row[k] for k in row.keys()}, "models": models, "images": images,
            "blobs": len(blobs), "bytes": sum(b["size"] for b in blobs),
            "shared_blobs": sum(1 for b in blobs if b["refs"] > 1),
            "bytes_only_here": sum(b["size"] for b in blobs if b["refs"] == 1)}


def remove_bundle(conn: sqlite3.Connection, ref: str, *, actor: str) -> str:
    """Forget a bundle and its models, images and blob references (blobs stay until gc)."""
    row = find_bundle(conn, ref)
    bid = row["id"]
    conn.execute("BEGIN IMMEDIATE")
    try:
        names = [r[0] for r in conn.execute(
            "SELECT DISTINCT name FROM models WHERE bundle_id=?", (bid,))]
        conn.execute("DELETE FROM models WHERE bundle_id=?", (bid,))
        for name in names:  # roll back to the newest version that remains, if any
            if conn.execute("SELECT 1 FROM models WHERE name=? AND active=1",
                            (name,)).fetchone() is None:
                conn.execute("UPDATE models SET active=1 WHERE id=(SELECT id FROM models"
                             " WHERE name=? ORDER BY created_at DESC LIMIT 1)", (name,))
        for table in ("image_tags", "image_manifests", "image_blobs", "scanner_databases"):
            conn.execute(f"DELETE FROM {table} WHERE bundle_id=?", (bid,))
        conn.execute("DELETE FROM blob_refs WHERE owner=?", (bid,))
        conn.execute("DELETE FROM bundles WHERE id=?", (bid,))
        audit.record(conn, actor=actor, action="bundle.remove", target=bid,
                     detail={"name": row["name"], "version": row["version"],
                             "models": names})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return str(bid)


def collect_garbage(conn: sqlite3.Connection, store: BlobStore, *,
                    partials: bool = False) -> GcResult:
    """Delete every blob no bundle references; with ``partials`` also interrupted copies."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute("SELECT digest, size FROM blobs WHERE digest NOT IN"
                            " (SELECT digest FROM blob_refs)").fetchall()
        for r in rows:
            store.remove(r["digest"])
        conn.executemany("DELETE FROM blobs WHERE digest=?", [(r["digest"],) for r in rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    removed = 0
    if partials and store.incoming.is_dir():
        for partial in store.incoming.iterdir():
            partial.unlink(missing_ok=True)
            removed += 1
    return GcResult(blobs_removed=len(rows), bytes_freed=sum(r["size"] for r in rows),
                    partials_removed=removed)


def backfill_image_blobs(conn: sqlite3.Connection, store: BlobStore) -> int:
    """Fill ``image_blobs`` for images imported before it existed; return the rows added.

    Reads the configs and layers of every stored manifest of a (repository, bundle) that has
    no row yet, so once every image has its rows it costs one query. A manifest that cannot be
    read is skipped: its blobs stay unserved rather than served under the wrong repository.
    """
    pending = conn.execute(
        "SELECT repository, digest, bundle_id FROM image_manifests m WHERE NOT EXISTS"
        " (SELECT 1 FROM image_blobs b WHERE b.repository=m.repository"
        " AND b.bundle_id=m.bundle_id)").fetchall()
    rows: list[tuple[str, str, str, str]] = []  # (repository, blob, bundle, manifest)
    for repo, manifest, bundle_id in pending:
        try:
            doc = msgspec.json.decode(store.path(manifest).read_bytes(), type=ImageDocument)
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("image %s: manifest %s is unreadable (%s); its blobs are not served",
                        repo, manifest, exc, extra={"repository": repo, "digest": manifest})
            continue
        rows += [(repo, blob.digest, bundle_id, manifest)
                 for blob in [*([doc.config] if doc.config else []), *doc.layers]]
    if not rows:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        # the bundle may have been removed while the manifests were read
        cursor = conn.executemany(
            "INSERT OR IGNORE INTO image_blobs SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM"
            " image_manifests WHERE repository=?1 AND bundle_id=?3 AND digest=?4) AND EXISTS"
            " (SELECT 1 FROM blob_refs WHERE digest=?2 AND owner=?3)", rows)
        added = cursor.rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added


def check_blobs_present(conn: sqlite3.Connection, store: BlobStore,
                        blobs: list[tuple[str, int]]) -> None:
    """Inside the import's transaction: every blob it will reference is still on disk."""
    for digest, size in blobs:
        if not store.has(digest, size):
            raise Conflict(f"blob {digest} vanished while importing (garbage collection ran "
                           "at the same time); run the import again")


def data_blob_store(data_dir: Path) -> BlobStore:
    return BlobStore(data_dir / "blobs")
