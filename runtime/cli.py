"""`python -m runtime`: load a GGUF, serve the API and chat page, open the browser.

This is the only place that turns furoshiki's exceptions into one-line
messages; set FUROSHIKI_DEBUG=1 to see full tracebacks instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import webbrowser
from pathlib import Path

import click

from runtime import __version__, packed
from runtime.config import (
    API_KEY_ENV,
    DEFAULT_CTX,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    EngineConfig,
    ServerConfig,
    is_loopback_host,
)
from runtime.errors import ConfigError, FuroshikiError

log = logging.getLogger("furoshiki")
PORT_ATTEMPTS = 10


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="furoshiki: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("waitress").setLevel(logging.WARNING)


def _check_exposure(host: str, api_key: str | None, public_without_key: bool) -> None:
    if is_loopback_host(host) or api_key or public_without_key:
        return
    raise ConfigError(
        f"--host {host} would let other machines use this model with no password. "
        f"Set --api-key (or {API_KEY_ENV}), or pass --public-without-key to accept that risk")


def _bind(app, server_config: ServerConfig, max_queue: int, port_fixed: bool):
    """Bind the port; when the user did not choose one, step past ports in use."""
    from dataclasses import replace

    from runtime.server import ServerThread

    attempts = 1 if port_fixed or server_config.port == 0 else PORT_ATTEMPTS
    for i in range(attempts):
        config = replace(server_config, port=server_config.port + i)
        try:
            return ServerThread(app, config, max_queue), config
        except ConfigError:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "-m", "model_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="GGUF model file to serve [default: the model packed into this executable].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --api-key.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (the next free one is used if the default is taken).")
@click.option("--ctx-size", "-c", default=DEFAULT_CTX, show_default=True, type=click.IntRange(16, 1 << 22),
              help="Context size in tokens.")
@click.option("--threads", "-t", type=click.IntRange(1, 1024), help="CPU threads [default: physical cores].")
@click.option("--gpu", type=click.Choice(["auto", "cpu", "cuda", "vulkan", "metal"]), default="auto",
              show_default=True, help="Which GPU backend to use; cpu uses none.")
@click.option("--gpu-layers", type=click.IntRange(0), metavar="N",
              help="Layers to offload, overriding the automatic fit to free GPU memory.")
@click.option("--no-browser", is_flag=True, help="Do not open the chat page in a browser.")
@click.option("--api-key", envvar=API_KEY_ENV, show_envvar=True,
              help="Require this key (Authorization: Bearer KEY) on every endpoint but /health and the page.")
@click.option("--max-queue", default=DEFAULT_MAX_QUEUE, show_default=True, type=click.IntRange(1, 256),
              help="Requests that may wait for the model; more get 503 with Retry-After.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser pages from this origin (e.g. http://localhost:3000). Repeatable.")
@click.option("--public-without-key", is_flag=True,
              help="Allow a non-loopback --host without --api-key (anyone on the network can use it).")
@click.option("--embeddings", is_flag=True, help="Serve /v1/embeddings instead of text generation.")
@click.option("--title", help="Title shown on the chat page.")
@click.option("--verbose", "-v", is_flag=True, help="Show llama.cpp's own log.")
@click.option("--info", "show_info", is_flag=True, help="Packed executable: show its model, payload and versions.")
@click.option("--json", "as_json", is_flag=True, help="With --info: print JSON.")
@click.option("--verify", is_flag=True, help="Packed executable: recompute the model's sha256 and report.")
@click.option("--extract-model", metavar="OUT.gguf", type=click.Path(dir_okay=False),
              help="Packed executable: write the embedded model back out as a GGUF file.")
@click.version_option(__version__, prog_name="furoshiki")
@click.pass_context
def serve(ctx: click.Context, model_path: str | None, host: str, port: int, ctx_size: int, threads: int | None,
          gpu: str, gpu_layers: int | None, no_browser: bool, api_key: str | None, max_queue: int,
          cors_origins: tuple[str, ...], public_without_key: bool, embeddings: bool, title: str | None,
          verbose: bool, show_info: bool, as_json: bool, verify: bool, extract_model: str | None) -> None:
    """Serve a GGUF model: an OpenAI-compatible API and a chat page, on this machine only by default."""
    _setup_logging(verbose)
    embedded: packed.Embedded = ctx.obj
    if show_info or verify or extract_model:
        _packed_action(embedded, show_info, as_json, verify, extract_model, (gpu, gpu_layers, ctx_size, threads))
        return
    from runtime.app import create_app
    from runtime.engine import Engine, default_threads
    from runtime.placement import place

    source = embedded.model_source(model_path)
    if not os.path.isfile(source.path):
        raise ConfigError(f"model file not found: {source.path}")
    _check_exposure(host, api_key, public_without_key)
    threads = threads or default_threads()
    placement = place(source, embedded.manifest, gpu, gpu_layers, ctx_size, threads, verbose)
    plan = placement.plan
    for origin in cors_origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ConfigError(f"--cors-origin {origin!r} must look like http://host:port (no path)")

    engine = Engine(EngineConfig(
        model_path=source.path, model_offset=source.offset, model_length=source.length, ctx_size=plan.ctx,
        threads=threads, max_queue=max_queue, embeddings=embeddings, verbose=verbose, gpu=gpu,
        n_gpu_layers=plan.n_gpu_layers, devices=tuple(plan.devices) or None,
        tensor_split=tuple(plan.tensor_split) if plan.tensor_split else None))
    server_config = ServerConfig(host=host, port=port, api_key=api_key, cors_origins=cors_origins, title=title,
                                 defaults=embedded.manifest.get("defaults", {}), hardware=placement.to_dict())
    log.info("model: %s", source.describe())
    log.info("%s", placement.summary)
    port_fixed = ctx.get_parameter_source("port") != click.core.ParameterSource.DEFAULT
    # The app only reads the config for the page and guards, so bind first and
    # rebuild it with the port that was actually free.
    server, server_config = _bind(create_app(server_config, engine), server_config, max_queue, port_fixed)
    server.server.application = create_app(server_config, engine)
    run_until_interrupted(server, engine, server_config, open_browser=not no_browser)


def _packed_action(embedded: packed.Embedded, show_info: bool, as_json: bool, verify: bool,
                   extract_model: str | None, placing: tuple) -> None:
    payload = embedded.payload()
    if show_info:
        from runtime.engine import default_threads
        from runtime.placement import place

        gpu, gpu_layers, ctx_size, threads = placing
        threads = threads or default_threads()
        data = packed.info(embedded)
        data["hardware"] = place(embedded.model_source(None), embedded.manifest, gpu, gpu_layers, ctx_size,
                                 threads).to_dict()
        click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else packed.format_info(data))
    if verify:
        with _progress(payload.length, "verifying") as bar:
            payload.verify(bar.update)
        click.echo(f"OK: model payload matches sha256 {payload.sha256} ({payload.length:,} bytes)")
    if extract_model:
        out = Path(extract_model)
        if out.exists():
            raise ConfigError(f"{out} already exists; remove it or choose another name")
        with _progress(payload.length, "extracting") as bar:
            payload.extract(out, bar.update)
        click.echo(f"wrote {out} ({payload.length:,} bytes, sha256 {payload.sha256})")


def _progress(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=None, leave=False)


def run_until_interrupted(server, engine, server_config: ServerConfig, open_browser: bool) -> None:
    # SIGTERM (service managers, `kill`) takes the same clean path as Ctrl-C. SIGINT is set too:
    # a process started in the background by a shell inherits it as ignored, yet the log says
    # "press Ctrl-C to stop".
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        signal.signal(signal.SIGINT, signal.default_int_handler)
    server.start()
    log.info("loading %s …", engine.config.model_path)
    try:
        info = engine.load()
        url = server_config.browser_url
        log.info("ready: %s (ctx %d) at %s  — press Ctrl-C to stop", info.model_id, info.n_ctx, url)
        if server_config.api_key:
            log.info("an API key is required: send 'Authorization: Bearer <key>'")
        if open_browser:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        while server.is_alive():
            server.join(0.5)
    except KeyboardInterrupt:
        log.info("stopping …")
    finally:
        engine.close()
        server.stop()


def _manifest_defaults(manifest: dict) -> dict:
    """A packed executable's build-time choices become its flags' defaults."""
    d = manifest.get("defaults", {})
    found = {"ctx_size": d.get("ctx_size"), "port": d.get("port"), "title": manifest.get("title")}
    return {k: v for k, v in found.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    from runtime import hardware

    if os.environ.get(hardware.PROBE_ENV):  # this process is the GPU probe child
        hardware.probe_main()
    exe = packed.current_executable()
    prog = os.path.basename(sys.executable) if getattr(sys, "frozen", False) else "python -m runtime"

    def invoke():
        embedded = packed.Embedded(exe)
        return serve.main(args=argv, prog_name=prog, standalone_mode=False, obj=embedded,
                   default_map=_manifest_defaults(embedded.manifest))

    run_reporting_errors(invoke)


def run_reporting_errors(invoke) -> None:
    """Run a click command; furoshiki's errors become one line and exit status 2 (FUROSHIKI_DEBUG=1:
    the traceback)."""
    try:
        code = invoke()
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except FuroshikiError as exc:
        if os.environ.get("FUROSHIKI_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)
