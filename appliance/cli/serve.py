"""`appliance serve`: run the appliance (gateway, engines, API) in this process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from appliance import __version__
from appliance.cli.common import add_common, fail, settings_from
from appliance.kernel.errors import ConfigError
from appliance.kernel.lock import DataDirLock
from appliance.kernel.logs import configure_logging
from appliance.settings import Settings

log = logging.getLogger("appliance.serve")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="run the appliance",
        description="Run the appliance: the OpenAI-compatible gateway on /v1, the control "
        "API on /api, the local engines, metrics on /metrics. On first start with an empty "
        "data directory it imports the starter bundle.")
    add_common(p, json_flag=False)
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on "
                   "(default 127.0.0.1:8080)")
    p.add_argument("--tls", action="store_true", default=None,
                   help="serve HTTPS: a site CA and server certificate are created in the data "
                   "dir on first start (or tls.cert_file/tls.key_file are used); TLS 1.3 only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args, listen=args.listen,
                                 tls={"enabled": True} if args.tls else None)
    except ConfigError as exc:
        return fail(exc.message, 2)
    data_dir = settings.data_path
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create data directory {data_dir}: {exc}", 2)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except ConfigError as exc:
        return fail(exc.message, 2)
    listener = configure_logging(level=settings.log_level, log_file=data_dir / "appliance.log")
    try:
        import uvloop

        return uvloop.run(_serve(settings))
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.listen, exc)
        return 1
    except ConfigError as exc:
        return fail(exc.message, 2)
    finally:
        listener.stop()
        lock.release()


async def _serve(settings: Settings) -> int:
    from aiohttp import web

    from appliance.app import build_app

    ssl_context = None
    app = build_app(settings)
    if settings.tls.enabled:
        from appliance.identity.http import IDENTITY
        from appliance.identity.tls import site_tls

        material = await asyncio.to_thread(site_tls, settings)
        ssl_context = material.context
        app[IDENTITY].ca_pem = material.ca_pem
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    host, port = settings.host_port
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("appliance %s listening on %s://%s:%d (data dir %s)", __version__,
             "https" if ssl_context else "http", host, port,
             settings.data_path)
    scheme = "https" if ssl_context else "http"
    print(f"appliance {__version__} listening on {scheme}://{host}:{port}", file=sys.stderr,
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new connections, draining in-flight requests (up to %.0f s)",
             settings.server.shutdown_timeout_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    await runner.cleanup()
    log.info("stopped cleanly")
    return 0
